//! The accept loop shared by both systems.
//!
//! One port serves HTTP/1.1 (keep-alive, WebSocket upgrades) and HTTP/2 (prior knowledge on
//! plaintext, ALPN `h2` on TLS): hyper-util's auto builder picks per connection. Upgrades need
//! `serve_connection_with_upgrades`, and the header-read timeout only works with a timer set on
//! the builder; both are wired here so no caller can forget them.
//!
//! Shutdown: when the process's [`Lifecycle`] is cancelled the loop stops accepting and every
//! open connection is asked to finish gracefully (HTTP/2 GOAWAY, HTTP/1.1 close after the
//! in-flight response), within the lifecycle's drain bound. Upgraded WebSocket sessions watch
//! the same lifecycle themselves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::EdgeSettings;
use crate::http::Body;
use crate::lifecycle::Lifecycle;

/// Time a client has to send request headers (and to finish a TLS handshake).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent HTTP/2 streams per connection.
const H2_MAX_STREAMS: u32 = 1024;

/// What a handler learns about the connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Serves `handler` on `listener` until `life` is cancelled, then drains connections.
/// Connection tasks are tracked by `life`, so its `wait` waits for them.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: F,
    life: Lifecycle,
) where
    F: Fn(Request<Incoming>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .keep_alive_interval(Some(Duration::from_secs(20)));
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = tokio::select! {
            _ = life.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            peer,
            tls: tls.is_some(),
        };
        let handler = handler.clone();
        let builder = builder.clone();
        let conn_life = life.clone();
        let tls = tls.clone();
        let handshake_timeout = HEADER_READ_TIMEOUT;
        life.spawn(async move {
            let life = conn_life;
            match tls {
                None => serve_conn(stream, info, handler, &builder, &life).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_conn(s, info, handler, &builder, &life).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_conn<I, F, Fut>(
    io: I,
    info: ConnInfo,
    handler: F,
    builder: &auto::Builder<TokioExecutor>,
    life: &Lifecycle,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let service = service_fn(move |req| {
        // Boxed at once: hyper spawns every HTTP/2 stream's future, and tokio moves a spawned
        // future by value; a pointer is cheaper to move than a handler's state (measured: the
        // copies were the largest single cost of small requests).
        let fut = Box::pin(handler(req, info));
        async move { Ok::<_, std::convert::Infallible>(fut.await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(peer = %info.peer, error = %e, "connection ended with an error");
            }
        }
        _ = life.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(life.drain(), conn.as_mut()).await;
        }
    }
}

/// The listeners of one process: plaintext and/or TLS, bound by the caller (tests bind
/// 127.0.0.1:0) or by [`Listeners::bind`].
#[derive(Default)]
pub struct Listeners {
    pub plain: Option<TcpListener>,
    pub tls: Option<(TcpListener, TlsAcceptor)>,
}

/// Why listeners could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// The addresses actually bound.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bound {
    pub plain: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
}

impl Listeners {
    /// Binds the listeners `settings` asks for, loading the TLS files; the TLS listener
    /// offers `alpn`.
    pub async fn bind(settings: &EdgeSettings, alpn: &[&[u8]]) -> Result<Self, ListenError> {
        let plain = match settings.listen {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let tls = match &settings.tls {
            Some(files) => {
                let cfg = crate::tls::server_config_from_files(&files.cert, &files.key, alpn)?;
                Some((bind(files.addr).await?, TlsAcceptor::from(cfg)))
            }
            None => None,
        };
        Ok(Self { plain, tls })
    }

    /// Serves `handler` on every listener (tasks tracked by `life`) until `life` ends.
    pub fn serve<F, Fut>(self, handler: F, life: &Lifecycle) -> std::io::Result<Bound>
    where
        F: Fn(Request<Incoming>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let mut bound = Bound::default();
        if let Some(l) = self.plain {
            bound.plain = Some(l.local_addr()?);
            life.spawn(serve(l, None, handler.clone(), life.clone()));
        }
        if let Some((l, acceptor)) = self.tls {
            bound.tls = Some(l.local_addr()?);
            life.spawn(serve(l, Some(acceptor), handler, life.clone()));
        }
        Ok(bound)
    }
}

/// Binds `addr`, naming it in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))
}

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
//!
//! Limits ([`ListenLimits`], from the flags): with nothing in front of the services, every
//! socket a stranger opens costs a file descriptor until we close it, so nothing here waits on a
//! client without a deadline. Each listener holds at most `max_connections` (a semaphore permit
//! per connection task; over the cap a new connection is accepted and closed at once, and
//! counted), because once descriptors run out `accept` fails for everyone. The permit travels
//! with the socket ([`Counted`]), so an upgraded WebSocket session, which outlives hyper's
//! connection task, holds it until the socket closes. From accept, a client
//! has one header-read timeout to finish the TLS handshake and send its first request's headers:
//! hyper-util's auto builder reads the protocol preface with no deadline of its own (a silent
//! socket, or 23 of the 24 bytes of the HTTP/2 preface, was held forever), so a timer beside the
//! connection drops it unless the service has been called by then. After that, HTTP/1.1's
//! header-read timeout starts whenever the connection goes idle, so it is also the keep-alive
//! idle timeout; HTTP/2 pings an idle peer and closes it when the ping goes unanswered, and an
//! HTTP/2 connection with no open stream for `h2_idle_timeout` gets GOAWAY (a peer that answers
//! every ping but never sends a request would otherwise hold its slot forever). What one
//! HTTP/2 connection may buffer is bounded by its stream cap and the window sizes below.
//!
//! TLS: the acceptor's certificate comes from a [`CertReloader`] (swapped by SIGHUP and by the
//! file poll this module starts, see `tls`), so the handshake's only shared state is one read
//! lock. A connection whose client presented a verified certificate (`--tls-client-ca`) says
//! so in [`ConnInfo::client_cert`], and each of its requests carries [`ClientCert`] in its
//! extensions, which is what the agents' routes check. With `--hsts-max-age-secs` every TLS
//! response carries `Strict-Transport-Security`. The optional redirect listener answers every
//! request with 308 to the same host and path on the TLS port.

use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::EdgeSettings;
use crate::http::Body;
use crate::lifecycle::Lifecycle;
use crate::tls::CertReloader;

/// Request body data one HTTP/2 stream may have in flight before the handler reads it.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
/// Request body data one HTTP/2 connection may have in flight, all streams together: what h2
/// buffers for a connection whose handlers are not reading.
const H2_CONN_WINDOW: u32 = 1024 * 1024;
/// Response data h2 queues per stream before the response body is polled again.
const H2_SEND_BUF: usize = 64 * 1024;

/// What a listener allows its clients; from the shared flags (`edge/src/config.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenLimits {
    /// Open connections per listener; over it a new connection is closed at once.
    pub max_connections: usize,
    /// From accept to the first request's headers (TLS handshake and protocol detection
    /// included); on HTTP/1.1 also from each response to the next request's headers, so it is
    /// the keep-alive idle timeout too.
    pub header_read_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub h2_max_streams: u32,
    /// Silence on an HTTP/2 connection before the server pings it.
    pub h2_keep_alive_interval: Duration,
    /// Time an HTTP/2 ping has to be answered before the connection is closed.
    pub h2_keep_alive_timeout: Duration,
    /// Time an HTTP/2 connection may stay without an open stream before it gets GOAWAY.
    pub h2_idle_timeout: Duration,
    /// Time to receive a whole request body (System 1's `POST /metrics`).
    pub body_timeout: Duration,
}

impl ListenLimits {
    /// The flags' defaults.
    pub const DEFAULT: Self = Self {
        max_connections: 16_384,
        header_read_timeout: Duration::from_secs(10),
        h2_max_streams: 100,
        h2_keep_alive_interval: Duration::from_secs(20),
        h2_keep_alive_timeout: Duration::from_secs(20),
        h2_idle_timeout: Duration::from_secs(120),
        body_timeout: Duration::from_secs(30),
    };
}

impl Default for ListenLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What the listeners of one process refused, counted.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Connections closed at accept because their listener was at `max_connections`.
    pub refused: AtomicU64,
    /// Connections closed because no request had begun within the header-read timeout (TLS
    /// handshakes that did not finish in it included), or, on HTTP/1.1, because the next
    /// request's headers did not arrive within it.
    pub timed_out: AtomicU64,
    /// HTTP/2 connections closed (GOAWAY) after `h2_idle_timeout` without an open stream.
    pub idle_closed: AtomicU64,
    /// The TLS listener's certificate, whose reloads and refused reloads are counted.
    pub tls: OnceLock<Arc<CertReloader>>,
}

impl ConnStats {
    /// The counters as JSON members for `/stats`, with the hub's counts of WebSocket peers
    /// dropped for not taking a write in time and of sample events shed for slow readers:
    /// `"connectionsRefused":N,"connectionsTimedOut":N,"connectionsIdleClosed":N,"writeTimeouts":N,"samplesShed":N,"tlsReloads":N,"tlsReloadFailures":N`.
    pub fn json_members(&self, write_timeouts: u64, samples_shed: u64) -> String {
        let tls = self.tls.get();
        format!(
            "\"connectionsRefused\":{},\"connectionsTimedOut\":{},\"connectionsIdleClosed\":{},\"writeTimeouts\":{},\"samplesShed\":{},\"tlsReloads\":{},\"tlsReloadFailures\":{}",
            self.refused.load(Ordering::Relaxed),
            self.timed_out.load(Ordering::Relaxed),
            self.idle_closed.load(Ordering::Relaxed),
            write_timeouts,
            samples_shed,
            tls.map_or(0, |t| t.reloads()),
            tls.map_or(0, |t| t.failures()),
        )
    }
}

/// How often the accept loop logs that it is refusing connections.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// What a handler learns about the connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The TLS client presented a certificate that chains to `--tls-client-ca` (rustls
    /// verified it during the handshake; an unverifiable one fails the handshake).
    pub client_cert: bool,
}

/// In the extensions of every request on a connection with a verified client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientCert;

/// Serves `handler` on `listener` until `life` is cancelled, then drains connections.
/// Connection tasks are tracked by `life`, so its `wait` waits for them. On TLS, `hsts` is
/// added to every response as `Strict-Transport-Security`.
#[allow(clippy::too_many_arguments)]
pub async fn serve<F, Fut>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    hsts: Option<HeaderValue>,
    handler: F,
    limits: ListenLimits,
    stats: Arc<ConnStats>,
    life: Lifecycle,
) where
    F: Fn(Request<Incoming>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .max_send_buf_size(H2_SEND_BUF)
        .keep_alive_interval(Some(limits.h2_keep_alive_interval))
        .keep_alive_timeout(limits.h2_keep_alive_timeout);
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let mut last_refusal_log: Option<Instant> = None;
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
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Closed at once: holding it, or reading from it, is what the cap protects against.
            drop(stream);
            let refused = stats.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if last_refusal_log.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
                last_refusal_log = Some(Instant::now());
                tracing::warn!(
                    max_connections = limits.max_connections,
                    refused,
                    "at the connection cap; closing new connections"
                );
            }
            continue;
        };
        let deadline = Instant::now() + limits.header_read_timeout;
        let idle_timeout = limits.h2_idle_timeout;
        let _ = stream.set_nodelay(true);
        let stream = Counted {
            io: stream,
            _permit: permit,
        };
        let mut info = ConnInfo {
            peer,
            tls: tls.is_some(),
            client_cert: false,
        };
        let hsts = hsts.clone();
        let handler = handler.clone();
        let builder = builder.clone();
        let conn_life = life.clone();
        let tls = tls.clone();
        let stats = stats.clone();
        life.spawn(async move {
            let life = conn_life;
            let first = FirstRequest {
                deadline,
                idle_timeout,
                stats: &stats,
            };
            match tls {
                None => serve_conn(stream, info, handler, &builder, &life, first, None).await,
                Some(acceptor) => {
                    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            info.client_cert = s.get_ref().1.peer_certificates().is_some();
                            serve_conn(s, info, handler, &builder, &life, first, hsts).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => {
                            stats.timed_out.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
}

/// A socket holding its listener's connection permit: wherever the socket goes (into hyper,
/// into an upgraded WebSocket session), the slot is taken until it is dropped.
struct Counted<I> {
    io: I,
    _permit: OwnedSemaphorePermit,
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// When a connection's first request must have begun, how long an HTTP/2 connection may then
/// stay without a stream, and where to count the connections closed for either.
struct FirstRequest<'a> {
    deadline: Instant,
    idle_timeout: Duration,
    stats: &'a ConnStats,
}

/// The open HTTP/2 streams of one connection, and when the last one ended: what the idle timer
/// reads. HTTP/1.1 requests don't touch it (there the header-read timeout is the idle timeout).
struct Streams {
    open: AtomicUsize,
    /// Milliseconds from `base` to the end of the last stream; `NONE` before any HTTP/2 stream.
    idle_since_ms: AtomicU64,
    base: Instant,
}

impl Streams {
    const NONE: u64 = u64::MAX;

    fn new() -> Self {
        Self {
            open: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(Self::NONE),
            base: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// When the connection will have been idle for `timeout`, if it has no open stream now;
    /// `None` while streams are open or before the first HTTP/2 stream.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.idle_since_ms.load(Ordering::Acquire) {
            Self::NONE => None,
            ms => Some(self.base + Duration::from_millis(ms) + timeout),
        }
    }
}

/// Held by an HTTP/2 stream from its request to the end of its response body.
struct StreamGuard(Arc<Streams>);

impl StreamGuard {
    fn open(streams: &Arc<Streams>) -> Self {
        streams.open.fetch_add(1, Ordering::AcqRel);
        Self(streams.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        // The time first, then the count: a timer that sees zero open streams sees this end.
        self.0
            .idle_since_ms
            .store(self.0.now_ms(), Ordering::Release);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its stream counted as open until it is finished or dropped
/// (a streaming response outlives its handler).
struct Guarded {
    body: Body,
    _guard: StreamGuard,
}

impl hyper::body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

async fn serve_conn<I, F, Fut>(
    io: I,
    info: ConnInfo,
    handler: F,
    builder: &auto::Builder<TokioExecutor>,
    life: &Lifecycle,
    first: FirstRequest<'_>,
    hsts: Option<HeaderValue>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    // Set by the service's first call; the only per-request cost of the deadline is this load.
    let started = Arc::new(AtomicBool::new(false));
    let seen = started.clone();
    let streams = Arc::new(Streams::new());
    let counted = streams.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        if !seen.load(Ordering::Relaxed) {
            seen.store(true, Ordering::Relaxed);
        }
        if info.client_cert {
            req.extensions_mut().insert(ClientCert);
        }
        let hsts = hsts.clone();
        let guard = (req.version() == hyper::Version::HTTP_2).then(|| StreamGuard::open(&counted));
        // Boxed at once: hyper spawns every HTTP/2 stream's future, and tokio moves a spawned
        // future by value; a pointer is cheaper to move than a handler's state (measured: the
        // copies were the largest single cost of small requests).
        let fut = Box::pin(handler(req, info));
        async move {
            let mut resp = fut.await;
            if let Some(v) = hsts {
                resp.headers_mut()
                    .insert(hyper::header::STRICT_TRANSPORT_SECURITY, v);
            }
            Ok::<_, std::convert::Infallible>(match guard {
                None => resp,
                Some(g) => {
                    resp.map(|body| http_body_util::BodyExt::boxed(Guarded { body, _guard: g }))
                }
            })
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let first_due = tokio::time::sleep_until(first.deadline);
    tokio::pin!(first_due);
    let mut waiting_first = true;
    // Re-armed to each possible idle deadline; idle counts only from an HTTP/2 stream's end.
    let idle_due = tokio::time::sleep(first.idle_timeout);
    tokio::pin!(idle_due);
    let mut watching_idle = true;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    // hyper's own HTTP/1.1 header-read timeout, which may fire in the same tick
                    // as the timer below, counts as the same refusal.
                    if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) {
                        first.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::debug!(peer = %info.peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = first_due.as_mut(), if waiting_first => {
                if started.load(Ordering::Relaxed) {
                    waiting_first = false;
                    continue;
                }
                // Dropping the connection closes the socket, mid-preface or not.
                first.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %info.peer, "no request within the header-read timeout");
                return;
            }
            _ = idle_due.as_mut(), if watching_idle => {
                match streams.idle_deadline(first.idle_timeout) {
                    Some(at) if at <= Instant::now() => {
                        // GOAWAY: the peer may open no new stream; the connection ends.
                        watching_idle = false;
                        first.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(peer = %info.peer, "HTTP/2 connection idle; closing");
                        conn.as_mut().graceful_shutdown();
                    }
                    Some(at) => idle_due.as_mut().reset(at),
                    None => idle_due.as_mut().reset(Instant::now() + first.idle_timeout),
                }
            }
            _ = life.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(life.drain(), conn.as_mut()).await;
                return;
            }
        }
    }
}

/// The listeners of one process: plaintext and/or TLS, bound by the caller (tests bind
/// 127.0.0.1:0) or by [`Listeners::bind`], and the limits each of them applies.
#[derive(Default)]
pub struct Listeners {
    pub plain: Option<TcpListener>,
    pub tls: Option<(TcpListener, TlsAcceptor)>,
    pub limits: ListenLimits,
    /// The TLS listener's reloadable certificate (counted in `/stats`), when it has one.
    pub tls_certs: Option<Arc<CertReloader>>,
    /// How often the certificate files are polled for a change (`None`: never; SIGHUP only).
    pub tls_reload_every: Option<Duration>,
    /// `Strict-Transport-Security` for every TLS response.
    pub hsts: Option<HeaderValue>,
    /// A plaintext listener that redirects every request to the TLS one.
    pub redirect: Option<TcpListener>,
}

/// Why listeners could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// The addresses actually bound, and what their listeners refused.
#[derive(Clone, Debug, Default)]
pub struct Bound {
    pub plain: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub redirect: Option<SocketAddr>,
    pub conns: Arc<ConnStats>,
    /// The TLS certificate, whose `reload` SIGHUP calls.
    pub tls_certs: Option<Arc<CertReloader>>,
}

/// `Strict-Transport-Security: max-age=N`.
pub fn hsts_header(max_age_secs: u64) -> HeaderValue {
    // Digits and ASCII only: always a valid header value.
    HeaderValue::try_from(format!("max-age={max_age_secs}"))
        .unwrap_or_else(|_| HeaderValue::from_static("max-age=0"))
}

impl Listeners {
    /// Binds the listeners `settings` asks for, loading the TLS files (and the client CA
    /// bundle); the TLS listener offers `alpn`.
    pub async fn bind(settings: &EdgeSettings, alpn: &[&[u8]]) -> Result<Self, ListenError> {
        let plain = match settings.listen {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let mut out = Self {
            plain,
            limits: settings.conn,
            ..Self::default()
        };
        if let Some(files) = &settings.tls {
            let opts = &settings.tls_options;
            let certs = Arc::new(CertReloader::load(&files.cert, &files.key)?);
            let client = match &opts.client_ca {
                Some(ca) => Some(crate::tls::client_verifier(ca, opts.client_auth)?),
                None => None,
            };
            let cfg = crate::tls::server_config(certs.clone(), client, alpn);
            out.tls = Some((bind(files.addr).await?, TlsAcceptor::from(cfg)));
            out.tls_certs = Some(certs);
            out.tls_reload_every = opts.reload_every;
            out.hsts = opts.hsts_max_age_secs.map(hsts_header);
            if let Some(a) = opts.redirect {
                out.redirect = Some(bind(a).await?);
            }
        }
        Ok(out)
    }

    /// Serves `handler` on every listener (tasks tracked by `life`) until `life` ends; each
    /// listener holds up to `limits.max_connections` of its own. Polls the certificate files
    /// when asked to.
    pub fn serve<F, Fut>(self, handler: F, life: &Lifecycle) -> std::io::Result<Bound>
    where
        F: Fn(Request<Incoming>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let mut bound = Bound::default();
        if let Some(l) = self.plain {
            bound.plain = Some(l.local_addr()?);
            life.spawn(serve(
                l,
                None,
                None,
                handler.clone(),
                self.limits,
                bound.conns.clone(),
                life.clone(),
            ));
        }
        if let Some((l, acceptor)) = self.tls {
            let tls_addr = l.local_addr()?;
            bound.tls = Some(tls_addr);
            life.spawn(serve(
                l,
                Some(acceptor),
                self.hsts,
                handler,
                self.limits,
                bound.conns.clone(),
                life.clone(),
            ));
            if let Some(r) = self.redirect {
                bound.redirect = Some(r.local_addr()?);
                let port = tls_addr.port();
                life.spawn(serve(
                    r,
                    None,
                    None,
                    move |req: Request<Incoming>, _: ConnInfo| {
                        std::future::ready(redirect_to_https(&req, port))
                    },
                    self.limits,
                    bound.conns.clone(),
                    life.clone(),
                ));
            }
        }
        if let Some(certs) = self.tls_certs {
            let _ = bound.conns.tls.set(certs.clone());
            if let Some(every) = self.tls_reload_every {
                life.spawn(crate::tls::watch(
                    certs.clone(),
                    every,
                    life.token().clone(),
                ));
            }
            bound.tls_certs = Some(certs);
        }
        Ok(bound)
    }
}

/// 308 to `https://<host>[:tls_port]<path and query>`: the host from `Host` (or the request
/// target), its port replaced by the TLS listener's (left out when 443). 400 without a host.
pub fn redirect_to_https<B>(req: &Request<B>, tls_port: u16) -> Response<Body> {
    let given = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let host = given
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .filter(|a| !a.as_str().contains('@') && !a.host().is_empty());
    let Some(host) = host else {
        return crate::http::Refusal::BadRequest(
            "this port only redirects to HTTPS and needs a Host header to redirect to".into(),
        )
        .into_response();
    };
    let port = match tls_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let location = format!("https://{}{port}{path}", host.host());
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            let mut r = crate::http::error(
                hyper::StatusCode::PERMANENT_REDIRECT,
                &format!("this port only redirects: use {location}"),
            );
            r.headers_mut().insert(hyper::header::LOCATION, v);
            r
        }
        Err(_) => crate::http::Refusal::BadRequest("unusable Host header".into()).into_response(),
    }
}

/// Connections the kernel holds for the accept loop (capped by `net.core.somaxconn`). The
/// usual 1,024 overflows when thousands of agents connect at once (a fleet reconnecting after
/// a restart): the kernel then drops handshakes, falls back to SYN cookies and some clients see
/// their connection fail later.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with a [`LISTEN_BACKLOG`] queue, naming it in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    };
    socket
        .and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(addr)?;
            s.listen(LISTEN_BACKLOG)
        })
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))
}

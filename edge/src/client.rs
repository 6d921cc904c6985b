//! A small WebSocket client over plaintext or TLS, for the built-in simulated agents, the
//! bench and the tests: the same code path a real agent takes through our listeners.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use fastwebsockets::{handshake, WebSocket, WebSocketError};
use http_body_util::Empty;
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

/// A connected client socket.
pub type ClientSocket = WebSocket<TokioIo<Upgraded>>;

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("handshake: {0}")]
    Handshake(#[from] WebSocketError),
    #[error("bad request: {0}")]
    Request(String),
}

/// Trusts the CA certificates in `pem` and offers `alpn`.
pub fn tls_config(ca_pem: &[u8], alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, ClientError> {
    tls_config_with_cert(ca_pem, alpn, None)
}

/// Like [`tls_config`], presenting the client certificate chain and key `(cert_pem, key_pem)`
/// when given (mutual TLS, `--tls-client-ca`).
pub fn tls_config_with_cert(
    ca_pem: &[u8],
    alpn: &[&[u8]],
    identity: Option<(&[u8], &[u8])>,
) -> Result<Arc<ClientConfig>, ClientError> {
    crate::tls::install_provider();
    let tls_err = |e: &dyn std::fmt::Display| ClientError::Tls(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| tls_err(&e))?;
        roots.add(cert).map_err(|e| tls_err(&e))?;
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let mut cfg = match identity {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls_err(&e))?;
            let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| tls_err(&e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_err(&e))?
        }
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

/// Opens a WebSocket to `addr` at `path` (with query), over TLS when `tls` is given (the
/// server name is `host`). Extra request headers go in `headers`.
pub async fn connect(
    addr: SocketAddr,
    host: &str,
    path: &str,
    tls: Option<Arc<ClientConfig>>,
    headers: &[(&str, &str)],
) -> Result<ClientSocket, ClientError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| ClientError::Connect(addr, e))?;
    handshake_on(tcp, host, path, tls, headers).await
}

/// Like [`connect`], over a TCP stream the caller opened (to set socket options).
pub async fn handshake_on(
    tcp: TcpStream,
    host: &str,
    path: &str,
    tls: Option<Arc<ClientConfig>>,
    headers: &[(&str, &str)],
) -> Result<ClientSocket, ClientError> {
    let _ = tcp.set_nodelay(true);
    let mut req = Request::builder()
        .method("GET")
        .uri(path)
        .header(HOST, host)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", handshake::generate_key())
        .header("Sec-WebSocket-Version", "13");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::Request(e.to_string()))?;
    let ws = match tls {
        None => handshake::client(&SpawnExecutor, req, tcp).await?.0,
        Some(cfg) => {
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| ClientError::Tls(e.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| ClientError::Tls(e.to_string()))?;
            handshake::client(&SpawnExecutor, req, stream).await?.0
        }
    };
    Ok(ws)
}

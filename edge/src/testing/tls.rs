//! TLS test helpers: certificate files a test rewrites in place (as an ACME client does),
//! client configurations with or without a client certificate, what a fresh handshake is
//! served, and a bare HTTP/1.1 GET over TLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::WAIT;

/// A certificate file and a key file in a directory of their own, removed on drop.
pub struct CertFiles {
    dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// The files, holding `cert_pem` and `key_pem`.
    pub fn new(cert_pem: &str, key_pem: &str) -> Self {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tls-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the certificate directory");
        let files = Self {
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
            dir,
        };
        files.write(cert_pem, key_pem);
        files
    }

    /// A further file `name` in the same directory holding `text` (a client CA bundle).
    pub fn extra(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    /// Rewrites both files (the key first, then the certificate; each replaced whole by a
    /// rename, as renewal tools do).
    pub fn write(&self, cert_pem: &str, key_pem: &str) {
        for (path, text) in [(&self.key, key_pem), (&self.cert, cert_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).expect("write");
            std::fs::rename(&tmp, path).expect("rename");
        }
    }
}

impl Drop for CertFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The DER of the first certificate in `pem`.
pub fn der(pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("PEM")
        .to_vec()
}

/// A client trusting `ca_pem` (HTTP/1.1), presenting `identity` (certificate, key) if given.
pub fn client(ca_pem: &str, identity: Option<&devcerts::Issued>) -> Arc<ClientConfig> {
    crate::client::tls_config_with_cert(
        ca_pem.as_bytes(),
        &[b"http/1.1"],
        identity.map(|i| (i.cert_pem.as_bytes(), i.key_pem.as_bytes())),
    )
    .expect("client config")
}

/// A TLS connection to `addr` as `localhost`.
pub async fn connect(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// The chain a new full handshake with `addr` is served (DER, leaf first). Never a resumed
/// session: a resumed one reports the certificate of the session it resumes.
pub async fn served_chain(addr: SocketAddr, cfg: Arc<ClientConfig>) -> Vec<Vec<u8>> {
    let mut cfg = (*cfg).clone();
    cfg.resumption = rustls::client::Resumption::disabled();
    let s = connect(addr, Arc::new(cfg)).await.expect("TLS handshake");
    s.get_ref()
        .1
        .peer_certificates()
        .expect("server certificates")
        .iter()
        .map(|c| c.to_vec())
        .collect()
}

/// A response as read off the wire.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    /// The header block, lower-cased.
    pub head: String,
    pub body: String,
}

impl Raw {
    /// The value of header `name` (lower-case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim())
        })
    }
}

/// `GET path` with `Host: host` and extra header lines `headers` on `io`; the whole response.
pub async fn get_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    host: &str,
    path: &str,
    headers: &str,
) -> std::io::Result<Raw> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{headers}\r\n");
    io.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    // A TLS peer that closes without close_notify after the response is fine here.
    match tokio::time::timeout(WAIT, io.read_to_end(&mut buf)).await {
        Err(_) => return Err(std::io::Error::other("no response in time")),
        Ok(Err(e)) if e.kind() != std::io::ErrorKind::UnexpectedEof || buf.is_empty() => {
            return Err(e)
        }
        Ok(_) => {}
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    Ok(Raw {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    })
}

/// `GET path` over TLS to `addr` (as `localhost`).
pub async fn https_get(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    path: &str,
    headers: &str,
) -> std::io::Result<Raw> {
    get_on(connect(addr, cfg).await?, "localhost", path, headers).await
}

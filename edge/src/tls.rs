//! TLS server configuration (rustls with the `ring` provider) from PEM files or PEM text.
//!
//! One crypto provider is compiled in (ring, also what rcgen uses), and [`install_provider`]
//! makes it the process default before any `ServerConfig` is built, so the builder never has to
//! guess between providers.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
pub use tokio_rustls::TlsAcceptor;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("no certificate found in {0}")]
    NoCertificate(String),
    #[error("no private key found in {0}: {1}")]
    Key(String, String),
    #[error("invalid certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Makes ring the process-wide rustls provider. Safe to call more than once.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// ALPN for HTTP/2 and HTTP/1.1 (System 1).
pub const ALPN_H2_HTTP11: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN for HTTP/1.1 only (WebSocket upgrades, System 2).
pub const ALPN_HTTP11: &[&[u8]] = &[b"http/1.1"];

/// Builds a server config from PEM files.
pub fn server_config_from_files(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    server_config_from_pem(
        &read(cert)?,
        &read(key)?,
        alpn,
        &cert.display().to_string(),
        &key.display().to_string(),
    )
}

/// Builds a server config from PEM text; `cert_name`/`key_name` appear in errors.
pub fn server_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    alpn: &[&[u8]],
    cert_name: &str,
    key_name: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    install_provider();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_name.to_string()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsError::Key(key_name.to_string(), e.to_string()))?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

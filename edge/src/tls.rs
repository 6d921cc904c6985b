//! TLS server configuration (rustls with the `ring` provider) from PEM files or PEM text, the
//! certificate that renews without a restart, and client-certificate authentication.
//!
//! One crypto provider is compiled in (ring, also what rcgen uses), and [`install_provider`]
//! makes it the process default before any `ServerConfig` is built, so the builder never has to
//! guess between providers.
//!
//! Renewal: an ACME client (or an operator) rewrites the certificate and key files in place.
//! The listener's `ServerConfig` does not hold the pair itself but a [`CertReloader`], which
//! rustls asks for the certificate at every handshake: one read lock and one `Arc` clone. A
//! reload reads both files, checks that they parse and that the key belongs to the first
//! certificate, and swaps the pair in; handshakes after the swap get the new chain, live
//! connections keep the keys they negotiated. A pair that fails (a file unreadable or empty,
//! a key that does not match) is refused with a log line naming the file and the reason and
//! counted, and the old pair keeps serving. Reloads come from SIGHUP (`process`) and from a
//! poll of the files' contents ([`watch`]), both through the same loader. The poll tries a
//! changed pair once its contents are the same at two polls in a row, so a pair caught
//! half-rewritten (the new certificate, still the old key) is not refused for it; a refused
//! pair is tried again only once its files change again. Expiry is not checked: an expired pair is loaded like any other (clients
//! decide), so renewing late still works.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
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
    #[error("the key in {key} does not fit the certificate in {cert}: {reason}")]
    Mismatch {
        cert: String,
        key: String,
        reason: String,
    },
    #[error("client CA bundle {path}: {reason}")]
    ClientCa { path: String, reason: String },
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

fn read(p: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(p).map_err(|source| TlsError::Read {
        path: p.display().to_string(),
        source,
    })
}

/// Builds a server config from PEM files (a fixed pair; the listeners use [`CertReloader`]).
pub fn server_config_from_files(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
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
    let ck = certified_key(cert_pem, key_pem, cert_name, key_name)?;
    let resolver = Arc::new(CertReloader::fixed(ck));
    Ok(server_config(resolver, None, alpn))
}

/// The chain in `cert_pem` (every certificate, leaf first, served whole) with the key in
/// `key_pem`, checked to belong to the leaf; `cert_name`/`key_name` appear in errors.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
    key_name: &str,
) -> Result<CertifiedKey, TlsError> {
    install_provider();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_name.to_string()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsError::Key(key_name.to_string(), e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(certs, key, &provider).map_err(|e| TlsError::Mismatch {
        cert: cert_name.to_string(),
        key: key_name.to_string(),
        reason: e.to_string(),
    })
}

/// A server config whose certificate comes from `certs` at each handshake, asking clients for
/// a certificate when `client` is given, offering `alpn`.
pub fn server_config(
    certs: Arc<CertReloader>,
    client: Option<Arc<dyn ClientCertVerifier>>,
    alpn: &[&[u8]],
) -> Arc<ServerConfig> {
    install_provider();
    let builder = ServerConfig::builder();
    let builder = match client {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(certs);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Whether a TLS client must present a certificate (`--tls-client-auth`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientAuth {
    /// Every TLS handshake must present a certificate chaining to `--tls-client-ca`.
    #[default]
    Required,
    /// A certificate is verified when presented; connections without one are served, and only
    /// agents' routes refuse them.
    Optional,
}

/// A verifier for client certificates chaining to a CA in the PEM bundle at `path`.
pub fn client_verifier(
    path: &Path,
    mode: ClientAuth,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    install_provider();
    let name = path.display().to_string();
    let pem = read(path)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| TlsError::ClientCa {
            path: name.clone(),
            reason: e.to_string(),
        })?;
        roots.add(cert).map_err(|e| TlsError::ClientCa {
            path: name.clone(),
            reason: e.to_string(),
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::ClientCa {
            path: name,
            reason: "no certificate in it".into(),
        });
    }
    let builder = WebPkiClientVerifier::builder(Arc::new(roots));
    let builder = match mode {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    builder.build().map_err(|e| TlsError::ClientCa {
        path: name,
        reason: e.to_string(),
    })
}

/// The certificate chain and key every new handshake gets, swapped whole by a reload.
#[derive(Debug)]
pub struct CertReloader {
    /// The files, or `None` for a pair given as text (nothing to reload).
    files: Option<(PathBuf, PathBuf)>,
    current: RwLock<Arc<CertifiedKey>>,
    prints: Mutex<Prints>,
    reloads: AtomicU64,
    failures: AtomicU64,
}

impl CertReloader {
    /// Loads the pair at `cert`/`key`; fails (the service does not start) when it is bad.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let ck = certified_key(
            &cert_pem,
            &key_pem,
            &cert.display().to_string(),
            &key.display().to_string(),
        )?;
        Ok(Self {
            files: Some((cert.to_path_buf(), key.to_path_buf())),
            current: RwLock::new(Arc::new(ck)),
            prints: Mutex::new(Prints {
                seen: fingerprint(&cert_pem, &key_pem),
                tried: fingerprint(&cert_pem, &key_pem),
            }),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// A pair that never changes.
    pub fn fixed(ck: CertifiedKey) -> Self {
        Self {
            files: None,
            current: RwLock::new(Arc::new(ck)),
            prints: Mutex::new(Prints { seen: 0, tried: 0 }),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// The chain and key new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Pairs loaded since start.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Pairs refused since start (the old pair kept serving).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Reads both files and swaps the pair in when it is good (SIGHUP); a bad pair is logged,
    /// counted and returned, and the old one keeps serving. Blocking file reads.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.reload_if(false).map(|_| ())
    }

    /// The poll: like [`reload`](Self::reload), but only when the files' contents differ from
    /// the pair last tried and are the same as at the previous call (a pair being rewritten is
    /// not tried half-written); true when a new pair was loaded.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        self.reload_if(true)
    }

    fn reload_if(&self, only_changed: bool) -> Result<bool, TlsError> {
        let Some((cert, key)) = &self.files else {
            return Ok(false);
        };
        let files = read(cert).and_then(|c| Ok((c, read(key)?)));
        let print = match &files {
            Ok((c, k)) => fingerprint(c, k),
            Err(_) => UNREADABLE,
        };
        {
            let mut prints = self.prints.lock().unwrap_or_else(PoisonError::into_inner);
            if only_changed {
                // Unchanged since the last try; or changed since the last poll, so perhaps
                // half-rewritten: wait for the files to settle.
                let settled = prints.seen == print;
                prints.seen = print;
                if prints.tried == print || !settled {
                    return Ok(false);
                }
            }
            *prints = Prints {
                seen: print,
                tried: print,
            };
        }
        let loaded = files.and_then(|(c, k)| {
            certified_key(
                &c,
                &k,
                &cert.display().to_string(),
                &key.display().to_string(),
            )
        });
        match loaded {
            Ok(ck) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ck);
                let n = self.reloads.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(cert = %cert.display(), key = %key.display(), reloads = n, "TLS certificate reloaded");
                Ok(true)
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "TLS certificate reload refused; the previous certificate keeps serving");
                Err(e)
            }
        }
    }
}

/// Fingerprints of the certificate and key files' contents together.
#[derive(Debug, Clone, Copy)]
struct Prints {
    /// At the last poll.
    seen: u64,
    /// Last loaded or refused: a refused pair is refused (and counted) once, not every poll.
    tried: u64,
}

/// The fingerprint of files that could not be read.
const UNREADABLE: u64 = u64::MAX;

impl ResolvesServerCert for CertReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn fingerprint(cert: &[u8], key: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    cert.hash(&mut h);
    key.hash(&mut h);
    h.finish().min(UNREADABLE - 1)
}

/// Polls `certs`' files every `every` until `stop`, loading a changed pair (file reads on the
/// blocking pool).
pub async fn watch(
    certs: Arc<CertReloader>,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let c = certs.clone();
        let _ = tokio::task::spawn_blocking(move || c.reload_if_changed()).await;
    }
}

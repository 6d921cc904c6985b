//! The systems under test when no URL is given: System 1, System 2 and the reference relay
//! ([`crate::relay`]) started in this process on their own runtime (threads named `sut-*`, so their CPU time can be told apart from the
//! load generator's), and a redis-server child process on a free port for System 1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use metrics_edge::service::Service;
use tokio_util::sync::CancellationToken;

/// Why an embedded system could not start.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error(
        "System 1 needs Redis: set REDIS_URL, or install the Debian package `redis-server` \
         (./scripts/setup, or apt-get install redis-server) so the bench can start its own"
    )]
    NoRedisServer,
    #[error("starting redis-server: {0}")]
    RedisStart(String),
    #[error("{0}")]
    Config(String),
    #[error("starting the system: {0}")]
    Start(String),
    #[error("development certificates: {0}")]
    Certs(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A redis-server child process, stopped when dropped.
pub struct RedisChild {
    child: Child,
    pub url: String,
    pub pid: u32,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

impl RedisChild {
    /// Starts `redis-server` on a free loopback port, keeping nothing on disk.
    pub fn start() -> Result<Self, SystemError> {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => SystemError::NoRedisServer,
                _ => SystemError::RedisStart(e.to_string()),
            })?;
        let mut me = Self {
            pid: child.id(),
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(addr) {
            if let Ok(Some(status)) = me.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = me.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(SystemError::RedisStart(format!(
                    "exited with {status}: {err}"
                )));
            }
            if Instant::now() > deadline {
                return Err(SystemError::RedisStart(format!(
                    "no answer on port {port} within 10 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(me)
    }
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which system to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    System1,
    System2,
    /// The reference relay, measured with agents on this transport.
    Relay(crate::transport::Transport),
}

/// A system running in this process.
pub struct Embedded {
    pub plain: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    /// The CA that signed the TLS listener's certificate.
    pub ca_pem: Option<Vec<u8>>,
    shutdown: CancellationToken,
    done: Option<std::sync::mpsc::Receiver<()>>,
    _rt: Option<tokio::runtime::Runtime>,
    _certs: Option<TempDir>,
}

/// A folder removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dev_certs() -> Result<(TempDir, PathBuf, PathBuf, Vec<u8>), SystemError> {
    let c = devcerts::generate(&[]).map_err(|e| SystemError::Certs(e.to_string()))?;
    let dir = std::env::temp_dir().join(format!(
        "bench-certs-{}-{}",
        std::process::id(),
        metrics_model::now_us()
    ));
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = (dir.join("server.pem"), dir.join("server-key.pem"));
    std::fs::write(&cert, &c.server_cert_pem)?;
    std::fs::write(&key, &c.server_key_pem)?;
    Ok((TempDir(dir), cert, key, c.ca_cert_pem.into_bytes()))
}

impl Embedded {
    /// Starts `which` on 127.0.0.1 (random ports), with a TLS listener too when `tls`.
    /// System 1 uses Redis at `redis_url` under the key prefix `prefix`.
    pub fn start(
        which: Which,
        tls: bool,
        redis_url: &str,
        prefix: &str,
        threads: usize,
    ) -> Result<Self, SystemError> {
        if matches!(which, Which::Relay(_)) && tls {
            return Err(SystemError::Config(
                "the reference relay speaks plaintext only: use --relay-transport ws, h1 or h2c"
                    .into(),
            ));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("sut")
            .enable_all()
            .build()?;
        let certs = if tls { Some(dev_certs()?) } else { None };
        let tls_files = certs
            .as_ref()
            .map(|(_, c, k, _)| metrics_edge::config::TlsFiles {
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                cert: c.clone(),
                key: k.clone(),
            });
        let shutdown = CancellationToken::new();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (addrs_tx, addrs_rx) = std::sync::mpsc::channel();
        let stop = shutdown.clone();
        type Waiting = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
        type Started = Result<(Option<SocketAddr>, Option<SocketAddr>, Waiting), String>;
        let started: std::pin::Pin<Box<dyn std::future::Future<Output = Started> + Send>> =
            match which {
                Which::System1 => {
                    let mut s = ingest::Settings::local(redis_url);
                    s.edge.tls = tls_files;
                    s.prefix = prefix.to_string();
                    Box::pin(async move {
                        let l = ingest::server::bind(&s).await.map_err(|e| e.to_string())?;
                        let server =
                            ingest::Server::start(s, l, stop).map_err(|e| e.to_string())?;
                        let addrs = (server.running.plain_addr, server.running.tls_addr);
                        Ok((addrs.0, addrs.1, Box::pin(server.wait()) as Waiting))
                    })
                }
                Which::System2 => {
                    let mut s = aggregator::Settings::local();
                    s.edge.tls = tls_files;
                    Box::pin(async move {
                        let l = aggregator::server::bind(&s)
                            .await
                            .map_err(|e| e.to_string())?;
                        let server =
                            aggregator::Server::start(s, l, stop).map_err(|e| e.to_string())?;
                        let addrs = (server.running.plain_addr, server.running.tls_addr);
                        Ok((addrs.0, addrs.1, Box::pin(server.wait()) as Waiting))
                    })
                }
                Which::Relay(_) => Box::pin(async move {
                    // The systems' bind: the same accept queue for the yardstick.
                    let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
                    let l = metrics_edge::listener::bind(local)
                        .await
                        .map_err(|e| e.to_string())?;
                    let addr = l.local_addr().map_err(|e| e.to_string())?;
                    let serving = crate::relay::serve(l, stop);
                    Ok((Some(addr), None, Box::pin(serving) as Waiting))
                }),
            };
        rt.spawn(async move {
            match started.await {
                Ok((plain, tls, wait)) => {
                    let _ = addrs_tx.send(Ok((plain, tls)));
                    wait.await;
                }
                Err(e) => {
                    let _ = addrs_tx.send(Err(e));
                }
            }
            let _ = done_tx.send(());
        });
        let (plain, tls_addr) = addrs_rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| SystemError::Start("the system did not start within 30 s".into()))?
            .map_err(SystemError::Start)?;
        let (dir, ca) = match certs {
            Some((d, _, _, ca)) => (Some(d), Some(ca)),
            None => (None, None),
        };
        Ok(Self {
            plain,
            tls: tls_addr,
            ca_pem: ca,
            shutdown,
            done: Some(done_rx),
            _rt: Some(rt),
            _certs: dir,
        })
    }

    /// The base URL agents use for `transport`.
    pub fn url(&self, websocket: bool, tls: bool) -> Option<String> {
        let addr = if tls { self.tls? } else { self.plain? };
        let scheme = match (websocket, tls) {
            (true, true) => "wss",
            (true, false) => "ws",
            (false, true) => "https",
            (false, false) => "http",
        };
        let host = if tls {
            "localhost".to_string()
        } else {
            addr.ip().to_string()
        };
        Some(format!("{scheme}://{host}:{}", addr.port()))
    }

    /// Stops the system and waits (bounded) for it to drain.
    pub fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(d) = self.done.take() {
            let _ = d.recv_timeout(Duration::from_secs(15));
        }
        if let Some(rt) = self._rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(rt) = self._rt.take() {
            rt.shutdown_background();
        }
    }
}

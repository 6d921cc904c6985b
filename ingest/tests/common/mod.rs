//! Test harness: a redis-server of our own on a free port (which a test may stop and restart),
//! System 1 in-process on 127.0.0.1:0, HTTP/1.1, h2c and h2-over-TLS clients.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
pub use metrics_edge::testing::*;

use ingest::{Role, Server, Settings};

/// A redis-server child process on its own port (and, with AOF, its own data directory).
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    /// Persistence flags, and the data directory they write to.
    persistence: Vec<String>,
    dir: Option<std::path::PathBuf>,
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port()
}

impl Redis {
    /// No persistence: a restart starts empty.
    pub fn start() -> Self {
        let mut r = Self {
            port: free_port(),
            child: None,
            persistence: vec!["--appendonly".into(), "no".into()],
            dir: None,
        };
        r.restart();
        r
    }

    /// With the append-only file (`appendfsync` = `fsync`: `always`, `everysec`) in a data
    /// directory of its own, which a [`Redis::restart`] after a [`Redis::stop`] reads back.
    pub fn start_aof(fsync: &str) -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("ingest-test-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("redis data dir");
        let mut r = Self {
            port,
            child: None,
            persistence: [
                "--dir",
                dir.to_str().expect("utf-8 temp dir"),
                "--appendonly",
                "yes",
                "--appendfsync",
                fsync,
            ]
            .map(String::from)
            .to_vec(),
            dir: Some(dir),
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and waits until it answers.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(&self.persistence)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server must be installed for these tests (Debian package: redis-server)",
            );
        self.child = Some(child);
        for _ in 0..200 {
            if let Ok(mut c) = redis::Client::open(self.url()).and_then(|c| c.get_connection()) {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    /// Kills the server (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("test connection to redis")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// System 1 started for a test: addresses, hub, shutdown.
pub type TestServer = Started;

/// Settings for tests: short windows, quick claims, a small deadline.
pub fn settings(redis: &Redis) -> Settings {
    let mut s = Settings::local(&redis.url());
    s.edge.windows = metrics_model::window::WindowSpec::parse_list("200ms,1s").expect("windows");
    s.claim_idle = Duration::from_millis(500);
    s.lease = Duration::from_millis(600);
    s.deadline = Duration::from_millis(800);
    s.redis_timeout = Duration::from_millis(1500);
    s
}

pub async fn start(settings: Settings) -> TestServer {
    start_with_tls(settings, None).await
}

pub async fn start_role(mut settings: Settings, role: Role) -> TestServer {
    settings.role = role;
    start(settings).await
}

pub async fn start_with_tls(
    settings: Settings,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> TestServer {
    metrics_edge::testing::start::<Server>(settings, tls).await
}

/// An HTTP response as a test sees it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
    /// The body as sent (protobuf answers are not text).
    pub bytes: Bytes,
    pub version: http::Version,
}

/// How to reach the server.
#[derive(Clone)]
pub enum Transport {
    Http1,
    H2c,
    H2Tls(Arc<rustls::ClientConfig>),
}

/// Sends one request on a fresh connection.
pub async fn request(addr: SocketAddr, t: &Transport, req: Request<Full<Bytes>>) -> Reply {
    let resp = send(addr, t, req).await;
    let status = resp.status().as_u16();
    let version = resp.version();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        bytes: body,
        version,
    }
}

/// Sends one request on a fresh connection; the response with its body still to read (for
/// trailers, say).
pub async fn send(
    addr: SocketAddr,
    t: &Transport,
    req: Request<Full<Bytes>>,
) -> hyper::Response<hyper::body::Incoming> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    match t {
        Transport::Http1 => {
            let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .expect("h1 handshake");
            tokio::spawn(conn);
            s.send_request(req).await.expect("h1 request")
        }
        Transport::H2c => {
            let (mut s, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .expect("h2c handshake");
            tokio::spawn(conn);
            s.send_request(req).await.expect("h2c request")
        }
        Transport::H2Tls(cfg) => {
            let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
            let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .expect("TLS handshake");
            assert_eq!(
                tls.get_ref().1.alpn_protocol(),
                Some(&b"h2"[..]),
                "ALPN picked h2"
            );
            let (mut s, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .expect("h2 handshake");
            tokio::spawn(conn);
            s.send_request(req).await.expect("h2 request")
        }
    }
}

/// `POST /metrics` with a content type.
pub async fn post(
    addr: SocketAddr,
    t: &Transport,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Reply {
    let req = Request::post(format!("http://{addr}/metrics"))
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("request");
    request(addr, t, req).await
}

/// `POST /metrics` of JSON over `t`, which must be accepted (202).
pub async fn post_accepted(addr: SocketAddr, t: &Transport, body: impl Into<Bytes>) {
    let r = post(addr, t, "application/json", body).await;
    assert_eq!(r.status, 202, "{}", r.body);
}

/// `n` one-sample requests at once over `t`, server ids `{prefix}{i % servers}`; each must be
/// accepted.
pub async fn post_concurrently(addr: SocketAddr, t: Transport, n: u64, prefix: &str, servers: u64) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let (t, body) = (t.clone(), sample(&format!("{prefix}{}", i % servers), 1.0));
        tasks.push(tokio::spawn(
            async move { post_accepted(addr, &t, body).await },
        ));
    }
    for task in tasks {
        task.await.expect("request");
    }
}

/// A sample as the Node.js agents send it.
pub fn sample(server: &str, cpu: f64) -> String {
    format!(
        r#"{{"serverId":"{server}","metrics":{{"cpu":{cpu},"network":{{"in":812,"out":230}}}}}}"#
    )
}

/// Entries in the stream.
pub fn xlen(redis: &Redis) -> u64 {
    redis::cmd("XLEN")
        .arg("metrics:samples")
        .query(&mut redis.conn())
        .expect("XLEN")
}

/// Entries pending in the workers' group (read, not yet acknowledged).
pub fn pending(redis: &Redis) -> u64 {
    let v: redis::Value = redis::cmd("XPENDING")
        .arg("metrics:samples")
        .arg("workers")
        .query(&mut redis.conn())
        .unwrap_or(redis::Value::Nil);
    match v {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    }
}

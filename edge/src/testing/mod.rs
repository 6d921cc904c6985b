//! Test helpers shared by both systems' test suites (feature `test-util`): a WebSocket peer
//! whose frames are read by a task into a channel (frame reads are not cancel-safe, channel
//! receives are), a bare HTTP/1.1 GET, listeners on free loopback ports, and for the browser
//! tests a headless Chromium ([`chromium`]) driven over the DevTools protocol ([`cdp`]), and the
//! deployment files read and run ([`deploy`]).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

pub mod cdp;
pub mod chromium;
pub mod deploy;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload, WebSocketError, WebSocketWrite};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::client::{self, ClientError};

/// A child process that is killed and reaped when dropped, so a test that fails halfway
/// leaves nothing running (a service whose Redis or peer vanished with the test would wait
/// for ever). Derefs to the [`std::process::Child`].
pub struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    pub fn new(child: std::process::Child) -> Self {
        Self(Some(child))
    }

    /// The child, no longer killed on drop (for `wait_with_output`, which takes it).
    pub fn into_inner(mut self) -> std::process::Child {
        self.0.take().expect("the child is held until into_inner")
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("the child is held until into_inner")
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut().expect("the child is held until into_inner")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A plaintext listener on 127.0.0.1:0, and a TLS one with `tls` when given, applying
/// `limits`.
pub async fn local_listeners(
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: crate::listener::ListenLimits,
) -> crate::listener::Listeners {
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    // The production bind, so the tests' listeners queue as many connections as the services'.
    let plain = crate::listener::bind(local).await.expect("bind");
    let tls = match tls {
        Some(cfg) => Some((
            crate::listener::bind(local).await.expect("bind tls"),
            tokio_rustls::TlsAcceptor::from(cfg),
        )),
        None => None,
    };
    crate::listener::Listeners {
        plain: Some(plain),
        tls,
        limits,
        ..Default::default()
    }
}

/// A server of either system started for a test; dropping it shuts the server down.
pub struct Started {
    pub addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    /// The plaintext listener redirecting to the TLS one (`--redirect-listen`).
    pub redirect_addr: Option<SocketAddr>,
    /// The admin listener (`GET /metrics`), when the settings ask for one.
    pub admin_addr: Option<SocketAddr>,
    pub hub: Arc<crate::hub::Hub>,
    /// What the listeners refused.
    pub conns: Arc<crate::listener::ConnStats>,
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Resolves once the server has drained.
    pub done: tokio::task::JoinHandle<()>,
}

impl Drop for Started {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts a server of either system on [`local_listeners`] (TLS too with `tls`) applying
/// `limits` (the settings' `edge.conn`), and waits for its end on a task of its own.
pub async fn start<S: crate::service::Service>(
    settings: S::Settings,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Started {
    let limits = S::edge(&settings).conn;
    start_on::<S>(settings, local_listeners(tls, limits).await)
}

/// Starts a server of either system on `listeners` the test bound itself (for example on the
/// address of a server it stopped), and waits for its end on a task of its own.
pub fn start_on<S: crate::service::Service>(
    settings: S::Settings,
    listeners: crate::listener::Listeners,
) -> Started {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = S::start(settings, listeners, shutdown.clone()).expect("server starts");
    let running = server.running();
    Started {
        addr: running.plain_addr.expect("plain addr"),
        tls_addr: running.tls_addr,
        redirect_addr: running.redirect_addr,
        admin_addr: running.admin_addr,
        hub: running.hub.clone(),
        conns: running.conns.clone(),
        shutdown,
        done: tokio::spawn(server.wait()),
    }
}

/// A development CA's server configuration offering `alpn`, and a client configuration that
/// trusts the CA and offers h2 and http/1.1.
pub fn dev_tls(alpn: &[&[u8]]) -> (Arc<rustls::ServerConfig>, Arc<ClientConfig>) {
    let certs = devcerts::generate(&[]).expect("certs");
    let server = crate::tls::server_config_from_pem(
        certs.server_cert_pem.as_bytes(),
        certs.server_key_pem.as_bytes(),
        alpn,
        "cert",
        "key",
    )
    .expect("server config");
    let client = client::tls_config(certs.ca_cert_pem.as_bytes(), &[b"h2", b"http/1.1"])
        .expect("client config");
    (server, client)
}

/// How long a test waits for anything before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// A client socket: a writer half here, frames read by a task into a channel (reads are not
/// cancel-safe, a channel receive is).
pub struct Peer {
    pub tx: WebSocketWrite<tokio::io::WriteHalf<TokioIo<Upgraded>>>,
    pub rx: mpsc::UnboundedReceiver<Incoming>,
}

#[derive(Debug)]
pub enum Incoming {
    Event(Value),
    Ping,
    Close(u16),
    Gone,
}

pub async fn connect(addr: SocketAddr, path: &str) -> Result<Peer, ClientError> {
    connect_with(addr, path, None, &[]).await
}

pub async fn connect_with(
    addr: SocketAddr,
    path: &str,
    tls: Option<Arc<ClientConfig>>,
    headers: &[(&str, &str)],
) -> Result<Peer, ClientError> {
    let ws = client::connect(addr, "localhost", path, tls, headers).await?;
    Ok(spawn_reader(ws))
}

pub fn spawn_reader(mut ws: client::ClientSocket) -> Peer {
    ws.set_auto_pong(false);
    ws.set_auto_close(false);
    let (mut r, tx) = ws.split(tokio::io::split);
    let (send, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut noop = |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
        loop {
            match r.read_frame(&mut noop).await {
                Ok(f) => match f.opcode {
                    OpCode::Text => {
                        let v: Value =
                            serde_json::from_slice(&f.payload).expect("server sent JSON");
                        let items = match v {
                            Value::Array(a) => a,
                            one => vec![one],
                        };
                        for e in items {
                            let _ = send.send(Incoming::Event(e));
                        }
                    }
                    OpCode::Close => {
                        let code = if f.payload.len() >= 2 {
                            u16::from_be_bytes([f.payload[0], f.payload[1]])
                        } else {
                            1005
                        };
                        let _ = send.send(Incoming::Close(code));
                        break;
                    }
                    OpCode::Ping => {
                        let _ = send.send(Incoming::Ping);
                    }
                    _ => {}
                },
                Err(_) => {
                    let _ = send.send(Incoming::Gone);
                    break;
                }
            }
        }
    });
    Peer { tx, rx }
}

impl Peer {
    pub async fn send_text(&mut self, text: &str) {
        self.send_raw(OpCode::Text, text.as_bytes(), true)
            .await
            .expect("send");
    }

    pub async fn send_raw(
        &mut self,
        op: OpCode,
        bytes: &[u8],
        fin: bool,
    ) -> Result<(), WebSocketError> {
        self.tx
            .write_frame(Frame::new(fin, op, None, Payload::Owned(bytes.to_vec())))
            .await?;
        self.tx.flush().await
    }

    /// The next event (ignoring pings), failing the test after `WAIT`.
    pub async fn next(&mut self) -> Incoming {
        loop {
            match tokio::time::timeout(WAIT, self.rx.recv()).await {
                Ok(Some(Incoming::Ping)) => continue,
                Ok(Some(x)) => return x,
                Ok(None) => return Incoming::Gone,
                Err(_) => panic!("nothing received within {WAIT:?}"),
            }
        }
    }

    /// The next event whose `type` is `kind`, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            match self.next().await {
                Incoming::Event(e) if e["type"] == kind => return e,
                Incoming::Event(_) => continue,
                other => panic!("expected a {kind} event, got {other:?}"),
            }
        }
    }

    /// Reads until a `window` event of each of `servers` distinct servers (`*` aside) has
    /// come, within `within`; panics naming how many came if the socket is lost or time runs
    /// out. Returns the bytes of those window events.
    pub async fn windows_of(&mut self, servers: usize, within: Duration) -> usize {
        let mut got = std::collections::HashSet::new();
        let mut bytes = 0usize;
        let deadline = tokio::time::Instant::now() + within;
        while got.len() < servers {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {servers} windows arrived",
                got.len()
            );
            match self.next().await {
                Incoming::Event(e) if e["type"] == "window" && e["serverId"] != "*" => {
                    bytes += e.to_string().len();
                    got.insert(e["serverId"].as_str().unwrap_or_default().to_string());
                }
                Incoming::Event(_) => {}
                other => panic!(
                    "the dashboard lost its socket after {} windows: {other:?}",
                    got.len()
                ),
            }
        }
        bytes
    }

    /// Like `next_of`, also matching `serverId`.
    pub async fn next_for(&mut self, kind: &str, server: &str) -> Value {
        loop {
            let e = self.next_of(kind).await;
            if e["serverId"] == server {
                return e;
            }
        }
    }

    /// Events that arrive within `d`.
    pub async fn collect_for(&mut self, d: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        let end = tokio::time::Instant::now() + d;
        while let Ok(Some(x)) = tokio::time::timeout_at(end, self.rx.recv()).await {
            if let Incoming::Event(e) = x {
                out.push(e);
            }
        }
        out
    }

    /// The close code the server sent, skipping events.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next().await {
                Incoming::Event(_) => continue,
                Incoming::Close(c) => return Some(c),
                _ => return None,
            }
        }
    }
}

/// The headers of a WebSocket upgrade, for [`http_get`].
pub const UPGRADE: &str = "Upgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

/// Fails unless `r` is an upgrade the server refused with `status`.
pub fn refused_with(r: Result<Peer, ClientError>, status: &str, what: &str) {
    match r {
        Err(ClientError::Handshake(e)) => assert!(e.to_string().contains(status), "{what}: {e}"),
        other => panic!("{what}: expected {status}, got {:?}", other.map(|_| ())),
    }
}

/// Fails unless a dashboard upgrade on `/ws` from a foreign `Origin` is refused with 403
/// naming the origin and the flag that would allow it.
pub async fn assert_foreign_origin_refused(addr: SocketAddr) {
    let (status, body) = http_get(
        addr,
        "/ws",
        &format!("{UPGRADE}Origin: http://evil.example\r\n"),
    )
    .await;
    assert_eq!(status, 403);
    assert!(body.contains("http://evil.example"), "{body}");
    assert!(body.contains("--allowed-origins"), "{body}");
    let evil = [("origin", "http://evil.example")];
    refused_with(
        connect_with(addr, "/ws", None, &evil).await,
        "403",
        "evil /ws",
    );
}

/// Fails unless dashboards on `/ws` are served with the service's own origin (the test
/// client's Host is `localhost`), with `listed` (an origin in `--allowed-origins`), and
/// with no `Origin` at all.
pub async fn assert_allowed_origins_served(addr: SocketAddr, listed: &str) {
    for origin in ["http://localhost", listed] {
        let mut d = connect_with(addr, "/ws", None, &[("origin", origin)])
            .await
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
        d.next_of("hello").await;
    }
    let mut d = connect(addr, "/ws").await.expect("no Origin");
    d.next_of("hello").await;
}

/// Waits up to [`WAIT`] for `value()` to equal `expected` (a counter the server bumps right
/// around the moment the client observes the effect), failing with the last value.
pub async fn eventually_eq<T: PartialEq + std::fmt::Debug>(
    what: &str,
    expected: T,
    value: impl Fn() -> T,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = value();
        if v == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {v:?} after {WAIT:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the listeners of `srv` to have refused `refused` connections at the cap and
/// closed `timed_out` for their deadline, and checks `/stats` says the same.
pub async fn assert_conn_counts(srv: &Started, refused: u64, timed_out: u64) {
    use std::sync::atomic::Ordering::Relaxed;
    eventually_eq("connections refused", refused, || {
        srv.conns.refused.load(Relaxed)
    })
    .await;
    eventually_eq("connections timed out", timed_out, || {
        srv.conns.timed_out.load(Relaxed)
    })
    .await;
    let (_, stats) = http_get(srv.addr, "/stats", "").await;
    let stats: Value = serde_json::from_str(&stats).expect("stats JSON");
    assert_eq!(
        (&stats["connectionsRefused"], &stats["connectionsTimedOut"]),
        (&Value::from(refused), &Value::from(timed_out)),
        "{stats}"
    );
}

/// `GET /metrics` from `srv`'s admin listener, checked line by line against the Prometheus
/// text format ([`parse_exposition`]): every sample as `name{labels} value`, in a family
/// announced by `# HELP` and `# TYPE`.
pub async fn scrape(srv: &Started) -> Exposition {
    let addr = srv.admin_addr.expect("started with an admin listener");
    let (status, body) = http_get(addr, "/metrics", "").await;
    assert_eq!(status, 200, "{body}");
    parse_exposition(&body)
}

/// Runs `scripts/check-metrics` (`promtool check metrics`) on `text`, failing on any problem
/// it reports. Without promtool the check is skipped with a note, except under CI (`CI` set),
/// where `scripts/test` installs it.
pub fn check_with_promtool(text: &str) {
    use std::io::Write as _;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/check-metrics");
    let have = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok();
    if !have {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool missing under CI (Debian package prometheus)"
        );
        eprintln!("promtool not installed: exposition checked by parse_exposition only");
        return;
    }
    let mut child = std::process::Command::new(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("scripts/check-metrics");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("check-metrics");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Samples of a scrape, by `name{labels}` as written (labels in the order the server writes
/// them).
#[derive(Debug)]
pub struct Exposition {
    pub text: String,
    pub samples: std::collections::HashMap<String, f64>,
}

impl Exposition {
    /// The value of `series` (`name` or `name{l="v"}`), 0 when absent (counters not yet
    /// counted are left out of labelled families).
    pub fn value(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    /// Whether `series` was written.
    pub fn has(&self, series: &str) -> bool {
        self.samples.contains_key(series)
    }
}

/// Parses Prometheus text (0.0.4) strictly: panics on a sample outside its announced family,
/// a family announced twice, a metric name or label out of the format's grammar, a value that
/// is not a number, or a counter going by a name without `_total`.
pub fn parse_exposition(text: &str) -> Exposition {
    use std::collections::{HashMap, HashSet};
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut samples = HashMap::new();
    let mut families: HashMap<String, String> = HashMap::new();
    let mut helped: HashSet<String> = HashSet::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            assert!(name_ok(name), "bad name in `{line}`");
            assert!(helped.insert(name.to_string()), "HELP twice: `{line}`");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(helped.contains(name), "TYPE before HELP: `{line}`");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "type `{kind}`"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter `{name}` without _total");
            }
            assert!(
                families
                    .insert(name.to_string(), kind.to_string())
                    .is_none(),
                "TYPE twice: `{line}`"
            );
            current = Some((name.to_string(), kind.to_string()));
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "line `{line}`");
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in `{line}`")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, Some(l.strip_suffix('}').expect("labels end with }"))),
            None => (series, None),
        };
        assert!(name_ok(name), "bad name in `{line}`");
        if let Some(labels) = labels {
            let mut rest = labels;
            while !rest.is_empty() {
                let (k, v) = rest.split_once("=\"").expect("label=\"value\"");
                assert!(name_ok(k), "bad label `{k}` in `{line}`");
                let end = v.find('"').expect("closing quote");
                rest = v[end + 1..].trim_start_matches(',');
            }
        }
        let (family, kind) = current
            .as_ref()
            .unwrap_or_else(|| panic!("no TYPE for `{line}`"));
        let fits = match kind.as_str() {
            "histogram" => [
                format!("{family}_bucket"),
                format!("{family}_sum"),
                format!("{family}_count"),
            ]
            .contains(&name.to_string()),
            _ => name == family,
        };
        assert!(fits, "`{line}` outside its family `{family}`");
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "series twice: `{line}`"
        );
    }
    Exposition {
        text: text.to_string(),
        samples,
    }
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text[9..12].parse().expect("status code");
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

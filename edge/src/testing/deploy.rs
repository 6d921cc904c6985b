//! The deployment files, read and run: `deploy/systemd/*.service` and `deploy/env/*.env` parsed
//! the way systemd reads them, and the process a unit describes started for real, with the
//! unit's own `ExecStart=` flags and its `EnvironmentFile=` variables, only the addresses moved
//! to free loopback ports and the `LoadCredential=` files replaced by a development certificate.
//!
//! A deployment file that passes `systemd-analyze verify` can still start a binary that refuses
//! its flags, listen where nobody connects, or be killed before its drain ends; running the
//! files is what catches that. [`Unit::problems`] holds the numbers the files must agree on
//! (stop timeout above the drain, open-file limit above the connection limit, the capability
//! for a port below 1024, the sandbox).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The repository's root (the folder holding `deploy/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("edge/ has a parent")
        .to_path_buf()
}

/// A systemd unit's `[Service]` section, in order (a key may repeat).
#[derive(Clone, Debug)]
pub struct Unit {
    pub name: String,
    pub service: Vec<(String, String)>,
}

impl Unit {
    /// `deploy/systemd/{name}`.
    pub fn load(name: &str) -> Self {
        let path = repo_root().join("deploy/systemd").join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Self::parse(name, &text)
    }

    /// What [`Unit::problems`] finds in `deploy/systemd/{name}` with `from` replaced by `to`:
    /// how the tests show that each check can fail.
    pub fn problems_if_edited(name: &str, prefix: &str, from: &str, to: &str) -> Vec<String> {
        let path = repo_root().join("deploy/systemd").join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        assert!(text.contains(from), "{name} has no `{from}` to edit");
        Self::parse(name, &text.replace(from, to)).problems(prefix)
    }

    /// A variable the unit's environment files set; panics naming the files when none does.
    pub fn var(&self, key: &str) -> String {
        self.environment()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("{key} is not in {:?}", self.env_files()))
    }

    /// Parses unit text: sections, `Key=value`, `#`/`;` comments, `\` continuations.
    pub fn parse(name: &str, text: &str) -> Self {
        let mut service = Vec::new();
        let mut section = String::new();
        let mut pending = String::new();
        for raw in text.lines() {
            let line = raw.trim();
            if pending.is_empty() && (line.starts_with('#') || line.starts_with(';')) {
                continue;
            }
            if let Some(cont) = line.strip_suffix('\\') {
                pending.push_str(cont);
                pending.push(' ');
                continue;
            }
            let line = format!("{pending}{line}");
            pending.clear();
            if line.starts_with('[') {
                section = line.trim_matches(|c| c == '[' || c == ']').to_string();
            } else if let Some((k, v)) = line.split_once('=') {
                if section == "Service" {
                    service.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
        }
        Self {
            name: name.to_string(),
            service,
        }
    }

    /// The last value of `key` (what systemd uses for single-valued settings).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.service
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.service
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// `ExecStart=` split into words, with `%i` (the instance), `%d` (the credentials
    /// directory) and `%%` expanded. Quotes and `$VARIABLES` are refused: the parser keeps to
    /// what the units use.
    pub fn exec_start(&self, instance: Option<&str>, credentials: &Path) -> Vec<String> {
        let line = self
            .get("ExecStart")
            .unwrap_or_else(|| panic!("{}: no ExecStart=", self.name));
        assert!(
            !line.contains(['"', '\'', '$']),
            "{}: ExecStart= with quotes or variables is not handled by this test: {line}",
            self.name
        );
        line.split_whitespace()
            .map(|w| {
                let mut out = String::new();
                let mut chars = w.chars();
                while let Some(c) = chars.next() {
                    if c != '%' {
                        out.push(c);
                        continue;
                    }
                    match chars.next() {
                        Some('i') => out.push_str(instance.unwrap_or_else(|| {
                            panic!("{}: %i in a unit that is not a template", self.name)
                        })),
                        Some('d') => out.push_str(&credentials.to_string_lossy()),
                        Some('%') => out.push('%'),
                        other => panic!("{}: specifier %{other:?} not handled", self.name),
                    }
                }
                out
            })
            .collect()
    }

    /// `EnvironmentFile=` paths under `/etc/metrics/`, mapped to `deploy/env/`.
    pub fn env_files(&self) -> Vec<PathBuf> {
        self.all("EnvironmentFile")
            .into_iter()
            .map(|p| {
                let p = p.trim_start_matches('-');
                let file = p.strip_prefix("/etc/metrics/").unwrap_or_else(|| {
                    panic!(
                        "{}: EnvironmentFile={p} is not under /etc/metrics/",
                        self.name
                    )
                });
                repo_root().join("deploy/env").join(file)
            })
            .collect()
    }

    /// The variables of every `EnvironmentFile=`, later files winning.
    pub fn environment(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        for f in self.env_files() {
            for (k, v) in env_file(&f) {
                env.retain(|(k2, _)| *k2 != k);
                env.push((k, v));
            }
        }
        env
    }

    /// `TimeoutStopSec=` (seconds, or with a unit: `30s`, `1min`, `500ms`).
    pub fn timeout_stop(&self) -> Option<Duration> {
        self.get("TimeoutStopSec").map(|v| {
            parse_timespan(v).unwrap_or_else(|| panic!("{}: TimeoutStopSec={v}", self.name))
        })
    }

    /// What the unit's settings must agree on, as readable complaints (empty: fine).
    /// `prefix` is the service's environment prefix (`INGEST`, `AGG`).
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        let env = self.environment();
        let var = |k: &str| env.iter().find(|(k2, _)| k2 == k).map(|(_, v)| v.clone());
        for (key, want) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            ("KillSignal", "SIGTERM"),
            ("Restart", "on-failure"),
        ] {
            if self.get(key) != Some(want) {
                out.push(format!("{key}={want} is missing"));
            }
        }
        if self.get("DynamicUser") != Some("yes") && self.get("User").is_none() {
            out.push("no DynamicUser=yes nor User=: it would run as root".into());
        }
        if self.get("RestartSec").is_none() {
            out.push("no RestartSec=".into());
        }
        // Stop must outlast the drain, or systemd SIGKILLs a process still draining.
        let drain_ms: u64 = var(&format!("{prefix}_DRAIN_MS"))
            .map(|v| v.parse().expect("DRAIN_MS is a number"))
            .unwrap_or(10_000);
        match self.timeout_stop() {
            Some(t) if t > Duration::from_millis(drain_ms) => {}
            t => out.push(format!(
                "TimeoutStopSec ({t:?}) must be above {prefix}_DRAIN_MS ({drain_ms} ms)"
            )),
        }
        // Open files: each listener may hold --max-connections sockets, plus Redis and margin.
        let args = self.exec_start(Some("x"), Path::new("/creds"));
        let listeners = listeners_of(&args);
        let max_conn: u64 = var(&format!("{prefix}_MAX_CONNECTIONS"))
            .map(|v| v.parse().expect("MAX_CONNECTIONS is a number"))
            .unwrap_or(16_384);
        let need = listeners as u64 * max_conn + 1024;
        let nofile: u64 = self
            .get("LimitNOFILE")
            .map(|v| v.parse().expect("LimitNOFILE is a number"))
            .unwrap_or(1024);
        if nofile < need {
            out.push(format!(
                "LimitNOFILE={nofile} is below {listeners} listener(s) x {prefix}_MAX_CONNECTIONS {max_conn} + 1024"
            ));
        }
        // A port below 1024 without root needs CAP_NET_BIND_SERVICE, kept in the bounding set.
        let low_port = ["--listen", "--tls-listen"].iter().any(|f| {
            flag(&args, f)
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .is_some_and(|a| a.port() < 1024)
        });
        if low_port {
            for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
                if !self
                    .all(key)
                    .iter()
                    .any(|v| v.contains("CAP_NET_BIND_SERVICE"))
                {
                    out.push(format!(
                        "a port below 1024 needs {key}=CAP_NET_BIND_SERVICE"
                    ));
                }
            }
        }
        out
    }
}

/// How many listeners `args` open: `--listen` unless `off` (absent: the default, on), and
/// `--tls-listen` when certificates are given. A worker opens none.
fn listeners_of(args: &[String]) -> usize {
    if args.get(1).map(String::as_str) == Some("worker") {
        return 0;
    }
    let plain = flag(args, "--listen") != Some("off");
    let tls = flag(args, "--tls-cert").is_some();
    usize::from(plain) + usize::from(tls)
}

/// The value after `name` in `args`.
pub fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.windows(2)
        .find(|w| w[0] == name)
        .map(|w| w[1].as_str())
}

/// A systemd time span: a number of seconds, or numbers with units (`1min 30s`, `500ms`).
fn parse_timespan(v: &str) -> Option<Duration> {
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let mut total = Duration::ZERO;
    for part in v.split_whitespace() {
        let split = part.find(|c: char| !c.is_ascii_digit())?;
        let (n, unit) = part.split_at(split);
        let n: u64 = n.parse().ok()?;
        total += match unit {
            "ms" | "msec" => Duration::from_millis(n),
            "s" | "sec" => Duration::from_secs(n),
            "m" | "min" => Duration::from_secs(n * 60),
            _ => return None,
        };
    }
    Some(total)
}

/// `KEY=value` lines of an environment file (`#` comments, blank lines skipped, no quotes).
pub fn env_file(path: &Path) -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: `{l}` is not KEY=value", path.display()));
            assert!(
                !v.starts_with(['"', '\'']),
                "{}: {k}: quotes are read differently by systemd and compose",
                path.display()
            );
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

/// A scratch directory under the system's temporary directory, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("metrics-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the files a unit's `LoadCredential=` lines name into `dir`, under their credential
/// names (what systemd does): the chain (`fullchain.pem`) gets `certs`' server certificate,
/// the key (`privkey.pem`) its key.
pub fn write_credentials(unit: &Unit, dir: &Path, certs: &devcerts::DevCerts) {
    for v in unit.all("LoadCredential") {
        let (id, source) = v
            .split_once(':')
            .unwrap_or_else(|| panic!("{}: LoadCredential={v}", unit.name));
        let pem = match Path::new(source).file_name().and_then(|f| f.to_str()) {
            Some("fullchain.pem") => &certs.server_cert_pem,
            Some("privkey.pem") => &certs.server_key_pem,
            _ => panic!("{}: which PEM is {source}?", unit.name),
        };
        std::fs::write(dir.join(id), pem).expect("credential file");
    }
}

/// A free port on 127.0.0.1 (bound, then released for the child to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A process started from a unit.
pub struct Deployed {
    pub unit: String,
    pub args: Vec<String>,
    /// Where the unit's `--listen` now listens (None: `off`, or not given).
    pub plain: Option<SocketAddr>,
    /// Where the unit's `--tls-listen` now listens.
    pub tls: Option<SocketAddr>,
    child: Child,
    logs: Scratch,
}

impl Deployed {
    /// Starts `unit` with `bin` in place of its `ExecStart=` path (whose file name must match),
    /// the unit's flags with `--listen`/`--tls-listen` moved to free loopback ports and `%d`
    /// pointing at `credentials`, and nothing in the environment but its `EnvironmentFile=`
    /// variables with `overrides` applied.
    pub fn start(
        bin: &Path,
        unit: &Unit,
        instance: Option<&str>,
        credentials: &Path,
        overrides: &[(&str, &str)],
    ) -> Self {
        let mut args = unit.exec_start(instance, credentials);
        let want = Path::new(&args[0]).file_name().map(|f| f.to_owned());
        assert_eq!(
            want.as_deref(),
            bin.file_name(),
            "{}: ExecStart= runs {}, the test has {}",
            unit.name,
            args[0],
            bin.display()
        );
        let (mut plain, mut tls) = (None, None);
        for i in 1..args.len() {
            let slot = match args[i - 1].as_str() {
                "--listen" if args[i] != "off" => &mut plain,
                "--tls-listen" => &mut tls,
                _ => continue,
            };
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            args[i] = addr.to_string();
            *slot = Some(addr);
        }
        let mut env = unit.environment();
        for (k, v) in overrides {
            env.retain(|(k2, _)| k2 != k);
            env.push((k.to_string(), v.to_string()));
        }
        let logs = Scratch::new("deploy-logs");
        let out = std::fs::File::create(logs.0.join("stdout")).expect("log file");
        let err = std::fs::File::create(logs.0.join("stderr")).expect("log file");
        let child = Command::new(bin)
            .args(&args[1..])
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        Self {
            unit: unit.name.clone(),
            args,
            plain,
            tls,
            child,
            logs,
        }
    }

    /// What the process printed so far (stdout, then stderr).
    pub fn output(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.logs.0.join(f)).unwrap_or_default();
        format!(
            "--- {} {:?}\n--- stdout:\n{}--- stderr:\n{}",
            self.unit,
            self.args,
            read("stdout"),
            read("stderr")
        )
    }

    /// Panics with the process's output if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("{} exited ({status}):\n{}", self.unit, self.output());
        }
    }

    /// Waits until `GET path` over TLS (HTTP/1.1) on the unit's TLS listener answers 200.
    pub async fn wait_ready(&mut self, client: &Arc<ClientConfig>, path: &str) {
        let addr = self
            .tls
            .unwrap_or_else(|| panic!("{} has no TLS listener", self.unit));
        let deadline = tokio::time::Instant::now() + super::WAIT * 3;
        loop {
            self.assert_running();
            if let Ok((200, _)) = https_get(addr, client, path, "").await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} never answered 200:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM (what `systemctl stop` sends, `KillSignal=`) and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill (Debian package procps)");
        assert!(sent.success(), "kill -TERM {pid}");
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!(
            "{} did not exit after SIGTERM:\n{}",
            self.unit,
            self.output()
        );
    }
}

impl Drop for Deployed {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A client configuration trusting `certs`' CA and offering HTTP/1.1 only (for GETs and
/// WebSocket upgrades over TLS).
pub fn client_http11(certs: &devcerts::DevCerts) -> Arc<ClientConfig> {
    crate::client::tls_config(certs.ca_cert_pem.as_bytes(), &[b"http/1.1"]).expect("client config")
}

/// `GET path` over TLS (HTTP/1.1, server name `localhost`); returns (status, body).
pub async fn https_get(
    addr: SocketAddr,
    client: &Arc<ClientConfig>,
    path: &str,
    headers: &str,
) -> std::io::Result<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
    let mut tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(name, tcp)
        .await?;
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n");
    tls.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    // A server closing without close_notify is an error to rustls; the bytes read count.
    let _ = tokio::time::timeout(super::WAIT, tls.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

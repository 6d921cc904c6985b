//! The dashboard page in a real headless Chromium, against a real server with simulated agents.
//!
//! The test starts the server in-process on 127.0.0.1, launches Chromium with a fresh profile
//! and drives it over the DevTools protocol (CDP), spoken through the workspace's own WebSocket
//! client. It asserts on what the page rendered (its DOM and canvas pixels), polling until the
//! live data has arrived or a deadline passes.
//!
//! Chromium is found through `$CHROMIUM`, then `/usr/bin/chromium`, then `chromium` on `PATH`.
//! Without it the test fails (install the Debian package `chromium`); it never passes silently.
//! Set `DASHBOARD_SCREENSHOT=/path/to/file.png` to also save a screenshot of the live page.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aggregator::{Listeners, Server, Service, Settings};
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use metrics_model::window::WindowSpec;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The whole test, browser start-up included, must finish within this.
const TEST_BUDGET: Duration = Duration::from_secs(90);
/// How long one page has to show what we wait for.
const PAGE_WAIT: Duration = Duration::from_secs(20);
/// Longest wait for one CDP answer.
const CDP_WAIT: Duration = Duration::from_secs(15);
const TOKEN: &str = "browser-test-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_live_data_in_headless_chromium() {
    let started = Instant::now();
    // Found before anything starts, so a missing browser fails with a clear message.
    let binary = chromium_binary();

    let mut settings = Settings::local();
    settings.edge.token = Some(TOKEN.to_string());
    settings.edge.windows = WindowSpec::parse_list("1s,10s").expect("windows");
    let shutdown = CancellationToken::new();
    // Stops the server and the agents however the test ends.
    let _stop = shutdown.clone().drop_guard();
    let listeners = Listeners {
        plain: Some(TcpListener::bind("127.0.0.1:0").await.expect("bind")),
        tls: None,
    };
    let server = Server::start(settings, listeners, shutdown.clone()).expect("server starts");
    let addr = server.running.plain_addr.expect("plain listener");
    tokio::spawn(aggregator::simulate::run(
        addr,
        3,
        20.0,
        Some(TOKEN.to_string()),
        shutdown.clone(),
    ));

    let mut browser = Chromium::launch(&binary);
    let outcome = tokio::time::timeout(TEST_BUDGET, scenarios(&browser, addr)).await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!(
            "{e}\n--- chromium stderr (tail) ---\n{}",
            browser.stderr_tail()
        ),
        Err(_) => panic!(
            "browser test still running after {TEST_BUDGET:?}\n--- chromium stderr (tail) ---\n{}",
            browser.stderr_tail()
        ),
    }
    browser.wait_exit(Duration::from_secs(5));
    drop(browser);
    eprintln!("browser test took {:.1?}", started.elapsed());
}

async fn scenarios(browser: &Chromium, addr: SocketAddr) -> Result<(), String> {
    let mut cdp = Cdp::connect(browser.devtools_url().await?).await?;
    let base = format!("http://{addr}/?token={TOKEN}");

    // 1. All servers: live status, counters, charts, filter options, latency.
    let page = cdp.open(&base).await?;
    let s = page
        .wait_for(&mut cdp, "live data from all three agents", |s| {
            s["state"] == "connected"
                && count(s, "samples") > 0
                && count(s, "windowEvents") > 0
                && has(&s["charts"], "cpu")
                && has(&s["options"], "sim-01")
                && s["plotted"] == "sim-01,sim-02,sim-03"
                && s["latency"].as_str().is_some_and(|l| l.contains("ms"))
                && s["windowRows"].as_u64() > Some(0)
        })
        .await?;
    check(s["status"] == "connected", "status text is `connected`", &s)?;
    check(s["system"] == "system2-websocket", "system name shown", &s)?;
    check(!has(&s["charts"], "send_us"), "send_us is not charted", &s)?;
    for m in ["memory", "network.in", "network.out", "latency_ms"] {
        check(has(&s["charts"], m), &format!("a chart for `{m}`"), &s)?;
    }
    check(
        s["options"] == json!(["", "sim-01", "sim-02", "sim-03"]),
        "filter lists All servers and the sorted server ids",
        &s,
    )?;
    check(s["errors"] == json!([]), "no errors shown", &s)?;
    check(
        s["cpuInk"].as_u64() > Some(200),
        "the cpu canvas has lines drawn on it",
        &s,
    )?;
    let latency = s["latency"].as_str().unwrap_or_default();
    check(
        latency.starts_with("p50 ") && latency.contains(" · p99 ") && latency.contains(" · last "),
        "latency reads `p50 .. ms · p99 .. ms · last .. ms`",
        &s,
    )?;
    if let Ok(path) = std::env::var("DASHBOARD_SCREENSHOT") {
        // Let a few more seconds of data draw, for a screenshot worth looking at.
        tokio::time::sleep(Duration::from_secs(3)).await;
        page.screenshot(&mut cdp, Path::new(&path)).await?;
    }

    // 2. Choosing a server in the filter subscribes to it and narrows the charts to it.
    page.eval(
        &mut cdp,
        r#"(() => { const f = document.getElementById("server-filter");
                   f.value = "sim-02"; f.dispatchEvent(new Event("change")); return true; })()"#,
    )
    .await?;
    let s = page
        .wait_for(&mut cdp, "the filter narrowed to sim-02", |s| {
            s["confirmed"] == "sim-02" && s["plotted"] == "sim-02"
        })
        .await?;
    check(
        s["url"]
            .as_str()
            .is_some_and(|u| u.contains("serverId=sim-02")),
        "the page URL keeps the filter",
        &s,
    )?;
    let before = count(&s, "samples");
    let s = page
        .wait_for(&mut cdp, "more samples after the filter change", |s| {
            count(s, "samples") > before + 20
        })
        .await?;
    check(s["plotted"] == "sim-02", "only sim-02 is plotted", &s)?;
    check(s["errors"] == json!([]), "no errors after subscribe", &s)?;
    page.close(&mut cdp).await?;

    // 3. A serverId in the page URL is carried over to /ws.
    let page = cdp.open(&format!("{base}&serverId=sim-02")).await?;
    let s = page
        .wait_for(&mut cdp, "a page filtered by its URL", |s| {
            s["state"] == "connected"
                && s["confirmed"] == "sim-02"
                && s["plotted"] == "sim-02"
                && has(&s["charts"], "cpu")
                && count(s, "samples") > 0
        })
        .await?;
    check(s["selected"] == "sim-02", "the filter shows sim-02", &s)?;
    // The other servers never send to this page: it learns them from the snapshot it asks for.
    page.wait_for(&mut cdp, "the filter offering every server", |s| {
        s["options"] == json!(["", "sim-01", "sim-02", "sim-03"])
    })
    .await?;
    page.close(&mut cdp).await?;

    // 4. Refused sockets (here: wrong token) show as disconnected, with an explanation.
    let page = cdp.open(&format!("http://{addr}/?token=wrong")).await?;
    let s = page
        .wait_for(&mut cdp, "a refused socket reported", |s| {
            s["errors"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|m| m.as_str().unwrap_or("").contains("cannot open"))
            })
        })
        .await?;
    check(
        count(&s, "samples") == 0,
        "no samples without the token",
        &s,
    )?;
    let s = page
        .wait_for(&mut cdp, "status disconnected", |s| {
            s["state"] == "disconnected" && s["status"] == "disconnected"
        })
        .await?;
    check(
        s["errors"].to_string().contains("token=…"),
        "the token is not echoed in the error log",
        &s,
    )?;
    page.close(&mut cdp).await?;

    // A clean exit lets Chromium reap its helper processes (a kill leaves them to init).
    let _ = cdp.call(None, "Browser.close", json!({})).await;
    Ok(())
}

/// What the test reads from the page, as one JSON object.
const PAGE_STATE_JS: &str = r##"(() => {
  const q = (id) => document.getElementById(id);
  const text = (id) => (q(id) ? q(id).textContent.trim() : null);
  let cpuInk = 0;
  const cpu = document.querySelector('#charts .chart[data-metric="cpu"] canvas');
  if (cpu && cpu.width && cpu.height) {
    const px = cpu.getContext("2d").getImageData(0, 0, cpu.width, cpu.height).data;
    for (let i = 3; i < px.length; i += 4) if (px[i] > 0) cpuInk++;
  }
  return JSON.stringify({
    url: location.href,
    status: text("status"),
    state: q("status") ? q("status").dataset.state : null,
    system: text("system"),
    samples: text("sample-count"),
    windowEvents: text("window-count"),
    dropped: text("dropped-count"),
    latency: text("latency"),
    charts: [...document.querySelectorAll("#charts .chart")].map((c) => c.dataset.metric),
    plotted: q("charts") ? q("charts").dataset.servers : null,
    options: q("server-filter") ? [...q("server-filter").options].map((o) => o.value) : null,
    selected: q("server-filter") ? q("server-filter").value : null,
    confirmed: q("server-filter") ? q("server-filter").dataset.filter : null,
    windowRows: q("windows") ? q("windows").querySelectorAll("tr:not(:has(td.none))").length : null,
    errors: q("errors") ? [...q("errors").querySelectorAll("li:not(.none)")].map((li) => li.textContent) : null,
    cpuInk,
  });
})()"##;

/// A counter shown with thousands separators, as a number (0 when missing).
fn count(state: &Value, key: &str) -> u64 {
    state[key]
        .as_str()
        .and_then(|s| s.replace(',', "").parse().ok())
        .unwrap_or(0)
}

fn has(list: &Value, item: &str) -> bool {
    list.as_array()
        .is_some_and(|l| l.iter().any(|v| v.as_str() == Some(item)))
}

fn check(ok: bool, what: &str, state: &Value) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("expected {what}; the page shows:\n{state:#}"))
    }
}

// ---- the browser -----------------------------------------------------------------------

/// `$CHROMIUM`, `/usr/bin/chromium`, or `chromium` on `PATH`; panics naming the package.
fn chromium_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "CHROMIUM={} is not a file; unset it to use /usr/bin/chromium from the Debian \
             package `chromium` (apt-get install -y chromium)",
            p.display()
        );
        return p;
    }
    let default = PathBuf::from("/usr/bin/chromium");
    if default.is_file() {
        return default;
    }
    if let Some(p) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
    {
        return p;
    }
    panic!(
        "headless Chromium is needed for this test and was not found: install the Debian \
         package `chromium` (apt-get install -y chromium), or set CHROMIUM to its binary"
    );
}

/// A headless Chromium with a fresh profile; killed (and its profile removed) on drop.
struct Chromium {
    child: Child,
    profile: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Chromium {
    fn launch(binary: &Path) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let profile = std::env::temp_dir().join(format!(
            "dashboard-browser-test-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&profile).expect("create the profile directory");
        let mut child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--no-proxy-server",
                "--mute-audio",
                // Pages must keep animating and running timers while the test watches them.
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                "--window-size=1400,1000",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        // Drain stderr so Chromium never blocks on it; keep the tail for failure messages.
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(pipe) = child.stderr.take() {
            let tail = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Ok(mut t) = tail.lock() {
                        t.push(line);
                        if t.len() > 40 {
                            t.remove(0);
                        }
                    }
                }
            });
        }
        Self {
            child,
            profile,
            stderr,
        }
    }

    /// The browser's DevTools endpoint, from the `DevToolsActivePort` file Chromium writes.
    async fn devtools_url(&self) -> Result<(SocketAddr, String), String> {
        let file = self.profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                let mut lines = text.lines().map(str::trim);
                let (port, path) = (lines.next(), lines.next());
                // The second line whole (`/devtools/browser/<uuid>`): the file may be read while
                // Chromium is still writing it.
                let whole = path.is_some_and(|p| p.len() >= "/devtools/browser/".len() + 36);
                if let (Some(port), Some(path), true) = (port, path, whole) {
                    let port: u16 = port.parse().map_err(|e| format!("{file:?}: {e}"))?;
                    return Ok((SocketAddr::from(([127, 0, 0, 1], port)), path.to_string()));
                }
            }
            if Instant::now() > deadline {
                return Err("Chromium did not open its DevTools port within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits up to `limit` for the browser to exit by itself (after `Browser.close`).
    fn wait_exit(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr_tail(&self) -> String {
        self.stderr.lock().map(|t| t.join("\n")).unwrap_or_default()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Helper processes may still be writing there for a moment.
        for _ in 0..10 {
            if std::fs::remove_dir_all(&self.profile).is_ok() || !self.profile.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

// ---- the DevTools protocol -------------------------------------------------------------

/// A CDP connection to the browser; pages are reached through flattened sessions.
struct Cdp {
    ws: FragmentCollector<TokioIo<Upgraded>>,
    next_id: u64,
}

/// A page (tab) and its CDP session.
struct Page {
    target: String,
    session: String,
}

impl Cdp {
    async fn connect((addr, path): (SocketAddr, String)) -> Result<Self, String> {
        // Chromium only accepts DevTools sockets whose Host is an IP or `localhost`.
        let ws = metrics_edge::client::connect(addr, "localhost", &path, None, &[])
            .await
            .map_err(|e| format!("DevTools socket: {e}"))?;
        Ok(Self {
            ws: FragmentCollector::new(ws),
            next_id: 1,
        })
    }

    /// Sends one command and returns its result, skipping the events that arrive meanwhile.
    async fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .write_frame(Frame::text(Payload::Owned(msg.to_string().into_bytes())))
            .await
            .map_err(|e| format!("{method}: {e}"))?;
        let deadline = tokio::time::Instant::now() + CDP_WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.read_frame())
                .await
                .map_err(|_| format!("{method}: no answer within {CDP_WAIT:?}"))?
                .map_err(|e| format!("{method}: {e}"))?;
            match frame.opcode {
                OpCode::Text => {}
                OpCode::Close => return Err(format!("{method}: DevTools closed the socket")),
                _ => continue,
            }
            let v: Value =
                serde_json::from_slice(&frame.payload).map_err(|e| format!("{method}: {e}"))?;
            if v["id"].as_u64() != Some(id) {
                continue; // an event, or a late answer
            }
            if let Some(err) = v.get("error") {
                return Err(format!("{method}: {err}"));
            }
            return Ok(v["result"].clone());
        }
    }

    /// Opens `url` in a new tab and attaches to it.
    async fn open(&mut self, url: &str) -> Result<Page, String> {
        let r = self
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await?;
        let target = r["targetId"]
            .as_str()
            .ok_or("createTarget: no targetId")?
            .to_string();
        let r = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await?;
        let session = r["sessionId"]
            .as_str()
            .ok_or("attachToTarget: no sessionId")?
            .to_string();
        Ok(Page { target, session })
    }
}

impl Page {
    /// Evaluates `expr` in the page and returns its value.
    async fn eval(&self, cdp: &mut Cdp, expr: &str) -> Result<Value, String> {
        let r = cdp
            .call(
                Some(&self.session),
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true }),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(format!("page script failed: {ex}"));
        }
        Ok(r["result"]["value"].clone())
    }

    async fn state(&self, cdp: &mut Cdp) -> Result<Value, String> {
        match self.eval(cdp, PAGE_STATE_JS).await? {
            Value::String(s) => serde_json::from_str(&s).map_err(|e| e.to_string()),
            // The page is still loading (no document yet).
            _ => Ok(Value::Null),
        }
    }

    /// Polls the page state until `ok` holds; fails after [`PAGE_WAIT`] with the last state.
    async fn wait_for(
        &self,
        cdp: &mut Cdp,
        what: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let s = self.state(cdp).await?;
            if ok(&s) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "waited {PAGE_WAIT:?} for {what}; the page shows:\n{s:#}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, cdp: &mut Cdp, path: &Path) -> Result<(), String> {
        let r = cdp
            .call(
                Some(&self.session),
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await?;
        let png = base64_decode(r["data"].as_str().ok_or("captureScreenshot: no data")?)?;
        std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("screenshot saved to {}", path.display());
        Ok(())
    }

    async fn close(self, cdp: &mut Cdp) -> Result<(), String> {
        cdp.call(
            None,
            "Target.closeTarget",
            json!({ "targetId": self.target }),
        )
        .await
        .map(drop)
    }
}

/// Standard base64 (CDP's screenshot encoding), without pulling in a crate for it.
fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(format!("bad base64 byte {c}")),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

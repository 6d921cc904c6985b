//! The Chrome DevTools protocol (CDP), as much as the browser tests need: one WebSocket to the
//! browser (the workspace's own client), commands answered by id with the events in between
//! skipped, and pages (tabs) reached through flattened sessions: open, evaluate, screenshot,
//! close.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// Longest wait for one CDP answer.
const CDP_WAIT: Duration = Duration::from_secs(15);

/// A CDP connection to the browser; pages are reached through flattened sessions.
pub struct Cdp {
    ws: FragmentCollector<TokioIo<Upgraded>>,
    next_id: u64,
}

/// A page (tab) and its CDP session.
pub struct Page {
    target: String,
    session: String,
}

impl Cdp {
    pub async fn connect((addr, path): (SocketAddr, String)) -> Result<Self, String> {
        // Chromium only accepts DevTools sockets whose Host is an IP or `localhost`.
        let ws = crate::client::connect(addr, "localhost", &path, None, &[])
            .await
            .map_err(|e| format!("DevTools socket: {e}"))?;
        Ok(Self {
            ws: FragmentCollector::new(ws),
            next_id: 1,
        })
    }

    /// Sends one command and returns its result, skipping the events that arrive meanwhile.
    pub async fn call(
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
    pub async fn open(&mut self, url: &str) -> Result<Page, String> {
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
    pub async fn eval(&self, cdp: &mut Cdp, expr: &str) -> Result<Value, String> {
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

    /// Evaluates `expr`, which returns a JSON string (`JSON.stringify(..)`), every 100 ms until
    /// `ok` holds of its value (`null` while the page is still loading); fails after `limit`
    /// naming `what` and showing the last value.
    /// Polls `state` until `ok` holds; fails after its wait with the last state.
    pub async fn wait_for_state(
        &self,
        cdp: &mut Cdp,
        state: PageState,
        what: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        self.wait_for_json(cdp, state.js, state.wait, what, ok)
            .await
    }

    pub async fn wait_for_json(
        &self,
        cdp: &mut Cdp,
        expr: &str,
        limit: Duration,
        what: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let v = match self.eval(cdp, expr).await? {
                Value::String(s) => serde_json::from_str(&s).map_err(|e| e.to_string())?,
                // The page is still loading (no document yet).
                _ => Value::Null,
            };
            if ok(&v) {
                return Ok(v);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "waited {limit:?} for {what}; the page shows:\n{v:#}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn screenshot(&self, cdp: &mut Cdp, path: &Path) -> Result<(), String> {
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

    /// Chooses `value` in the `<select>` with id `id` as a user would (its `change` event fires);
    /// fails when there is no such select or it offers no such option.
    pub async fn select(&self, cdp: &mut Cdp, id: &str, value: &str) -> Result<(), String> {
        let (id, value) = (json!(id), json!(value));
        let done = self
            .eval(
                cdp,
                &format!(
                    "(() => {{ const f = document.getElementById({id}); \
                     if (!f || ![...f.options].some((o) => o.value === {value})) return false; \
                     f.value = {value}; f.dispatchEvent(new Event(\"change\")); return true; }})()"
                ),
            )
            .await?;
        if done != json!(true) {
            return Err(format!("no <select id={id}> offering {value} on the page"));
        }
        Ok(())
    }

    /// When the environment variable `var` names a file, waits `settle` (for more live data to
    /// draw) and saves a screenshot there: how the docs' pictures are taken.
    pub async fn screenshot_if_asked(
        &self,
        cdp: &mut Cdp,
        var: &str,
        settle: Duration,
    ) -> Result<(), String> {
        if let Some(path) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            tokio::time::sleep(settle).await;
            self.screenshot(cdp, Path::new(&path)).await?;
        }
        Ok(())
    }

    pub async fn close(self, cdp: &mut Cdp) -> Result<(), String> {
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

/// What a test reads from a page: a JavaScript expression that yields the page's state as a
/// JSON string, and how long to wait for a state it expects.
#[derive(Clone, Copy, Debug)]
pub struct PageState {
    pub js: &'static str,
    pub wait: Duration,
}

impl PageState {
    /// The state `js` yields, waited for up to 20 s (the page's reconnect backoff reaches 5 s).
    pub const fn new(js: &'static str) -> Self {
        Self {
            js,
            wait: Duration::from_secs(20),
        }
    }
}

/// `Ok` when `ok`, else an error naming what was expected and showing the page's `state`.
pub fn check(ok: bool, what: &str, state: &Value) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("expected {what}; the page shows:\n{state:#}"))
    }
}

/// A counter the page shows with thousands separators (`state[key]`), as a number (0 when
/// missing).
pub fn count(state: &Value, key: &str) -> u64 {
    state[key]
        .as_str()
        .and_then(|s| s.replace(',', "").parse().ok())
        .unwrap_or(0)
}

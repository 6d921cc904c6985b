//! The dashboards: WebSocket clients of `/ws` that find the bench's samples in the event
//! stream, record their latency and remember which ones they saw.
//!
//! Two ways to read a frame ([`ParseMode`]): `full` parses every frame completely into JSON
//! values, as a browser's `JSON.parse` (or a client in any language that parses each event)
//! does, so the per-frame and per-event cost of the dashboard protocol is paid as a real
//! dashboard pays it; `scan` does not parse JSON: it finds each `"type":"sample"` event and,
//! inside it, the `serverId`, `bench_seq` and `send_us` fields, with SIMD substring search, so
//! a dashboard on a shared core costs as little as possible. Events of other runs and other
//! agents (a shared system) are skipped by their server id.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use fastwebsockets::OpCode;
use memchr::memmem::Finder;
use simd_json::prelude::*;
use simd_json::BorrowedValue;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::load::Plan;
use crate::record::{Bits, DashRecorder};
use crate::schedule::Latency;
use crate::transport::{connect_ws, ConnectError, Endpoint};

/// One sample event of this run, as found in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub seq: u64,
    pub send_us: u64,
}

/// How a dashboard reads each frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParseMode {
    /// Every frame parsed completely into JSON values (objects, strings, numbers), as a
    /// browser's `JSON.parse` does; the bench's fields are then read from those values.
    Full,
    /// Only the bench's fields, found by substring search; the rest of each frame is skipped.
    Scan,
}

/// Reads frames as [`ParseMode`] says: finds this run's samples and the `dropped` reports.
pub struct Reader {
    mode: ParseMode,
    scanner: Scanner,
    buffers: simd_json::Buffers,
}

impl Reader {
    pub fn new(mode: ParseMode, server_prefix: &str) -> Self {
        Self {
            mode,
            scanner: Scanner::new(server_prefix),
            buffers: simd_json::Buffers::default(),
        }
    }

    /// Calls `found` for each sample event of this run in `frame` (one event or an array);
    /// returns the `total` of the last `dropped` event, if any. `frame` may be changed (the
    /// full parse works in place). A frame that is not JSON is an error in `full` mode.
    pub fn read(
        &mut self,
        frame: &mut [u8],
        mut found: impl FnMut(Found),
    ) -> Result<Option<u64>, String> {
        match self.mode {
            ParseMode::Scan => {
                self.scanner.scan(frame, found);
                Ok(self.scanner.dropped_total(frame))
            }
            ParseMode::Full => {
                let v = simd_json::to_borrowed_value_with_buffers(frame, &mut self.buffers)
                    .map_err(|e| format!("a frame is not JSON: {e}"))?;
                let mut dropped = None;
                match &v {
                    BorrowedValue::Array(events) => {
                        for e in events.iter() {
                            self.event(e, &mut found, &mut dropped);
                        }
                    }
                    one => self.event(one, &mut found, &mut dropped),
                }
                Ok(dropped)
            }
        }
    }

    /// One parsed event: a sample of this run, or a `dropped` report.
    fn event(
        &self,
        e: &BorrowedValue<'_>,
        found: &mut impl FnMut(Found),
        dropped: &mut Option<u64>,
    ) {
        match e.get_str("type") {
            Some("sample") => {
                let ours = e
                    .get_str("serverId")
                    .is_some_and(|s| s.as_bytes().starts_with(&self.scanner.prefix));
                let Some(m) = e.get("metrics").filter(|_| ours) else {
                    return;
                };
                let field = |k: &str| m.get(k).and_then(whole);
                if let (Some(seq), Some(send_us)) = (field("bench_seq"), field("send_us")) {
                    found(Found { seq, send_us });
                }
            }
            Some("dropped") => {
                if let Some(t) = e.get("total").and_then(whole) {
                    *dropped = Some(t);
                }
            }
            _ => {}
        }
    }
}

/// A JSON number that is a whole non-negative integer (written as `42` or `42.0`).
fn whole(v: &BorrowedValue<'_>) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|x| x.is_finite() && *x >= 0.0 && x.fract() == 0.0 && *x < 2f64.powi(64))
            .map(|x| x as u64)
    })
}

/// Finds the samples of `server_prefix` in event frames.
pub struct Scanner {
    sample: Finder<'static>,
    server: Finder<'static>,
    seq: Finder<'static>,
    send: Finder<'static>,
    dropped: Finder<'static>,
    prefix: Vec<u8>,
}

fn digits(b: &[u8]) -> Option<u64> {
    let end = b
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(b.len());
    if end == 0 || end > 19 {
        return None;
    }
    let mut v = 0u64;
    for &c in &b[..end] {
        v = v * 10 + u64::from(c - b'0');
    }
    Some(v)
}

impl Scanner {
    pub fn new(server_prefix: &str) -> Self {
        Self {
            sample: Finder::new(b"\"type\":\"sample\"").into_owned(),
            server: Finder::new(b"\"serverId\":\"").into_owned(),
            seq: Finder::new(b"\"bench_seq\":").into_owned(),
            send: Finder::new(b"\"send_us\":").into_owned(),
            dropped: Finder::new(b"\"type\":\"dropped\"").into_owned(),
            prefix: server_prefix.as_bytes().to_vec(),
        }
    }

    /// Calls `f` for each sample event of this run in `frame` (one event or an array).
    pub fn scan(&self, frame: &[u8], mut f: impl FnMut(Found)) {
        let mut starts = self.sample.find_iter(frame).peekable();
        while let Some(s) = starts.next() {
            // The event runs to the next sample event (or the end); other events between
            // them carry none of the fields looked for.
            let end = starts.peek().copied().unwrap_or(frame.len());
            // `serverId` may come before `type` in other implementations: look back to the
            // start of the object too.
            let open = frame[..s].iter().rposition(|&b| b == b'{').unwrap_or(0);
            let ev = &frame[open..end];
            let Some(p) = self.server.find(ev) else {
                continue;
            };
            if !ev[p + self.server.needle().len()..].starts_with(&self.prefix) {
                continue;
            }
            let field = |finder: &Finder<'_>| {
                finder
                    .find(ev)
                    .and_then(|p| digits(&ev[p + finder.needle().len()..]))
            };
            if let (Some(seq), Some(send_us)) = (field(&self.seq), field(&self.send)) {
                f(Found { seq, send_us });
            }
        }
    }

    /// The `total` of the last `dropped` event in `frame`, if any.
    pub fn dropped_total(&self, frame: &[u8]) -> Option<u64> {
        let p = self.dropped.find_iter(frame).last()?;
        let rest = &frame[p..];
        let t = memchr::memmem::find(rest, b"\"total\":")?;
        digits(&rest[t + 8..])
    }
}

/// What one dashboard saw.
#[derive(Debug)]
pub struct Outcome {
    pub seen: Bits,
    /// Measured samples seen (each counted once).
    pub unique: u64,
    pub duplicates: u64,
    /// Samples the system said it shed for this dashboard (`dropped` events).
    pub dropped: u64,
    /// Frames that held samples of this run, and those samples (warm-up included): how many
    /// events the system puts in a frame.
    pub sample_frames: u64,
    pub framed_samples: u64,
    /// Why the stream ended early, if it did.
    pub error: Option<String>,
}

/// Counters the progress display and the end-of-run wait read while dashboards run.
#[derive(Debug, Default)]
pub struct Live {
    pub seen: AtomicU64,
}

/// Connects `n` dashboards that will never read: the run holds them until it ends, so the
/// system's writes to them back up as a stalled browser's would.
pub async fn connect_stalled(
    ep: &Endpoint,
    n: u64,
) -> Result<Vec<metrics_edge::client::ClientSocket>, ConnectError> {
    let mut held = Vec::with_capacity(n as usize);
    for _ in 0..n {
        held.push(
            connect_ws(
                &ep.dashboard,
                &ep.dashboard_path,
                ep.tokens.dashboard.as_deref(),
            )
            .await?,
        );
    }
    Ok(held)
}

/// Connects a dashboard; returns once the system said `hello`, with the task that reads.
pub async fn start(
    ep: &Endpoint,
    mut plan_rx: watch::Receiver<Option<Arc<Plan>>>,
    rec: Arc<Mutex<DashRecorder>>,
    live: Arc<Live>,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<Outcome>, ConnectError> {
    let mut ws = connect_ws(
        &ep.dashboard,
        &ep.dashboard_path,
        ep.tokens.dashboard.as_deref(),
    )
    .await?;
    ws.set_max_message_size(64 << 20);
    ws.set_auto_pong(true);
    // Wait for the first event (hello): the dashboard is registered from then on.
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), ws.read_frame()).await;
    match first {
        Ok(Ok(f)) if f.opcode == OpCode::Text => {}
        Ok(Ok(f)) if f.opcode == OpCode::Close => {
            return Err(ConnectError::Ws(
                ep.dashboard.addr,
                metrics_edge::client::ClientError::Request(format!(
                    "the dashboard stream closed at once: {}",
                    String::from_utf8_lossy(f.payload.get(2..).unwrap_or_default())
                )),
            ))
        }
        _ => {
            return Err(ConnectError::Ws(
                ep.dashboard.addr,
                metrics_edge::client::ClientError::Request("no hello event within 10 s".into()),
            ))
        }
    }
    Ok(tokio::spawn(async move {
        let plan = plan_rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|p| p.clone());
        let Some(plan) = plan else {
            return Outcome {
                seen: Bits::new(0),
                unique: 0,
                duplicates: 0,
                dropped: 0,
                sample_frames: 0,
                framed_samples: 0,
                error: Some("the run did not start".into()),
            };
        };
        let mut reader = Reader::new(plan.dashboard_parse, &plan.server_prefix);
        let first_sample = plan.first_measured * plan.batch;
        let mut out = Outcome {
            seen: Bits::new(plan.total_samples()),
            unique: 0,
            duplicates: 0,
            dropped: 0,
            sample_frames: 0,
            framed_samples: 0,
            error: None,
        };
        let mut found = Vec::with_capacity(1024);
        loop {
            let frame = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                f = ws.read_frame() => f,
            };
            let mut frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    out.error = Some(format!("dashboard stream failed: {e}"));
                    break;
                }
            };
            match frame.opcode {
                OpCode::Close => {
                    out.error = Some(format!(
                        "the system closed the dashboard stream: {}",
                        String::from_utf8_lossy(frame.payload.get(2..).unwrap_or_default())
                    ));
                    break;
                }
                OpCode::Text | OpCode::Binary => {}
                _ => continue,
            }
            let now = metrics_model::now_us();
            found.clear();
            match reader.read(frame.payload.to_mut(), |f| found.push(f)) {
                Ok(Some(d)) => out.dropped = d,
                Ok(None) => {}
                // As a page logs an unparsable frame and reads on: the first is reported.
                Err(e) => {
                    out.error.get_or_insert(e);
                }
            }
            if found.is_empty() {
                continue;
            }
            out.sample_frames += 1;
            out.framed_samples += found.len() as u64;
            let sec = plan.second(now);
            let mut fresh = 0;
            let mut r = rec.lock().expect("dashboard recorder lock");
            for f in &found {
                if f.seq < first_sample || f.seq >= plan.total_samples() {
                    continue;
                }
                if out.seen.insert(f.seq) {
                    out.duplicates += 1;
                    continue;
                }
                fresh += 1;
                let k = f.seq / plan.batch;
                r.record(sec, Latency::of(plan.intended_us(k), f.send_us, now));
            }
            drop(r);
            out.unique += fresh;
            live.seen.fetch_add(fresh, Relaxed);
        }
        let _ = ws
            .write_frame(fastwebsockets::Frame::close(1000, b"bench done"))
            .await;
        out
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_finds_this_runs_samples_in_single_events_and_arrays() {
        let s = Scanner::new("bench-ab-");
        let frame = br#"[{"type":"sample","serverId":"bench-ab-3","timestamp":1,"metrics":{"send_us":1764349200123456,"bench_seq":42,"cpu":4.5},"id":"1-0/0"},{"type":"window","window":"1s","serverId":"bench-ab-3","stats":{}},{"type":"sample","serverId":"other-1","metrics":{"send_us":5,"bench_seq":7}},{"type":"sample","serverId":"bench-ab-9","metrics":{"cpu":1,"bench_seq":43,"send_us":17}}]"#;
        let mut found = Vec::new();
        s.scan(frame, |f| found.push(f));
        assert_eq!(
            found,
            [
                Found {
                    seq: 42,
                    send_us: 1_764_349_200_123_456
                },
                Found {
                    seq: 43,
                    send_us: 17
                }
            ]
        );
        // Field order of another implementation: serverId before type.
        let mut found = Vec::new();
        s.scan(
            br#"{"serverId":"bench-ab-1","type":"sample","metrics":{"bench_seq":5,"send_us":9}}"#,
            |f| found.push(f),
        );
        assert_eq!(found, [Found { seq: 5, send_us: 9 }]);
        // A sample without the bench fields is not ours to count.
        let mut n = 0;
        s.scan(
            br#"{"type":"sample","serverId":"bench-ab-1","metrics":{"cpu":1}}"#,
            |_| n += 1,
        );
        assert_eq!(n, 0);
        assert_eq!(
            s.dropped_total(br#"[{"type":"dropped","count":3,"total":12}]"#),
            Some(12)
        );
    }

    #[test]
    fn a_full_parse_finds_what_the_scan_finds_and_refuses_what_is_not_json() {
        let frames: [&[u8]; 4] = [
            br#"[{"type":"sample","serverId":"bench-ab-3","timestamp":1,"metrics":{"send_us":1764349200123456,"bench_seq":42,"network.in":4.5},"id":"1-0/0"},{"type":"window","window":"1s","serverId":"bench-ab-3","stats":{"cpu":{"count":1}}},{"type":"sample","serverId":"other-1","metrics":{"send_us":5,"bench_seq":7}},{"type":"sample","serverId":"bench-ab-9","metrics":{"cpu":1,"bench_seq":43,"send_us":17.0}},{"type":"dropped","count":3,"total":12}]"#,
            br#"{"serverId":"bench-ab-1","type":"sample","metrics":{"bench_seq":5,"send_us":9}}"#,
            br#"{"type":"sample","serverId":"bench-ab-1","metrics":{"cpu":1}}"#,
            br#"{"type":"hello","system":"x","windows":[],"serverTime":1,"filter":null}"#,
        ];
        for frame in frames {
            let (mut scan, mut full) = (Vec::new(), Vec::new());
            let mut a = frame.to_vec();
            let d_scan = Reader::new(ParseMode::Scan, "bench-ab-")
                .read(&mut a, |f| scan.push(f))
                .expect("scan");
            let mut b = frame.to_vec();
            let d_full = Reader::new(ParseMode::Full, "bench-ab-")
                .read(&mut b, |f| full.push(f))
                .expect("full parse");
            assert_eq!(scan, full, "{}", String::from_utf8_lossy(frame));
            assert_eq!(d_scan, d_full);
        }
        let mut found = Vec::new();
        let mut first = frames[0].to_vec();
        let dropped = Reader::new(ParseMode::Full, "bench-ab-")
            .read(&mut first, |f| found.push(f))
            .expect("parses");
        assert_eq!(found.len(), 2);
        assert_eq!(dropped, Some(12));
        // Unlike the scan, the full parse reads the whole frame: a broken one is an error.
        let mut broken = br#"[{"type":"sample","serverId":"bench-ab-1","metrics":{"bench_seq":5,"send_us":9}},{"#.to_vec();
        let e = Reader::new(ParseMode::Full, "bench-ab-")
            .read(&mut broken, |_| {})
            .unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
    }
}

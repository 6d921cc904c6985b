//! WebSocket peers that stop reading must cost a bounded amount of memory and be disconnected
//! within the write timeout, while a normal dashboard keeps receiving every sample.
//!
//! Each test connects a peer that completes the handshake and then never reads (a small receive
//! buffer, so the server's writes block soon), makes the server owe it frames in one of three
//! ways (pings, snapshot requests, a fast sample feed), and feeds samples to a live dashboard
//! that must see every one, in order, until the hub no longer lists the stalled peer. The test
//! process's resident memory (the server runs in it) is read from /proc/self/status before, at
//! the peak and after, and must stay within [`MEMORY_BOUND`] of the baseline throughout: a
//! server that queues without bound fails here instead of exhausting the machine.
//!
//! The tests run one at a time (RSS is the whole process's).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use metrics_edge::hub::Audience;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// How far the process's resident memory may rise above its baseline.
const MEMORY_BOUND: u64 = 64 << 20;
/// The write timeout these tests give the server.
const WRITE_TIMEOUT: Duration = Duration::from_millis(500);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The process's resident set, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib << 10
}

fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1 << 20)
}

fn slow_settings() -> aggregator::Settings {
    let mut s = settings();
    s.edge.ws.write_timeout = WRITE_TIMEOUT;
    s.edge.queue.sample_cap = 1024;
    s
}

/// A peer that completes the WebSocket handshake on a socket with a small receive buffer and
/// never reads; frames are written to it raw.
async fn stalled_peer(addr: SocketAddr) -> hyper_util::rt::TokioIo<hyper::upgrade::Upgraded> {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let tcp = sock.connect(addr).await.expect("connect");
    metrics_edge::client::handshake_on(tcp, "localhost", "/ws", None, &[])
        .await
        .expect("stalled peer")
        .into_inner()
}

/// `n` copies of one client frame (masked with the key 0, which leaves the payload as it is).
fn frames(opcode: u8, payload: &[u8], n: usize) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut one = vec![0x80 | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    one.extend_from_slice(payload);
    one.repeat(n)
}

/// Writes `chunk` to the stalled peer over and over (pausing `pause` between writes) until the
/// socket fails (the server dropped it) or stops taking bytes for [`WAIT`]; returns how many
/// times it was written.
fn flood(
    mut io: hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>,
    chunk: Vec<u8>,
    pause: Duration,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut sent = 0u64;
        while let Ok(Ok(())) = tokio::time::timeout(WAIT, io.write_all(&chunk)).await {
            sent += 1;
            tokio::time::sleep(pause).await;
        }
        sent
    })
}

/// A sample frame of `per_frame` samples from `servers` servers, numbered from `first`.
fn batch(first: u64, per_frame: u64, servers: u64) -> String {
    let fill: Vec<String> = (0..40).map(|i| format!("\"metric_{i}\":{i}.5")).collect();
    let fill = fill.join(",");
    let samples: Vec<String> = (0..per_frame)
        .map(|i| {
            let seq = first + i;
            format!(
                r#"{{"serverId":"srv-{:04}-{}","metrics":{{"seq":{seq},{fill}}}}}"#,
                seq % servers,
                "x".repeat(40)
            )
        })
        .collect();
    format!("[{}]", samples.join(","))
}

/// Memory seen over one test.
#[derive(Debug)]
struct Memory {
    baseline: u64,
    peak: u64,
}

impl Memory {
    fn new() -> Self {
        let baseline = rss();
        Self {
            baseline,
            peak: baseline,
        }
    }

    fn check(&mut self, when: &str) -> u64 {
        let now = rss();
        self.peak = self.peak.max(now);
        assert!(
            now <= self.baseline + MEMORY_BOUND,
            "{when}: resident memory {:.1} MiB, baseline {:.1} MiB: more than {} MiB above it",
            mib(now),
            mib(self.baseline),
            MEMORY_BOUND >> 20
        );
        now
    }
}

/// Feeds samples to `live` (each frame once the previous one arrived, all of them, in order)
/// until the hub lists no dashboard but `live`; fails past the write timeout plus [`WAIT`], or
/// when memory passes the bound. Returns how many samples the live dashboard got.
async fn feed_until_stalled_gone(
    srv: &TestServer,
    agent: &mut Peer,
    live: &mut Peer,
    mem: &mut Memory,
    servers: u64,
    first: u64,
) -> u64 {
    let per_frame = 50u64;
    let deadline = Instant::now() + WRITE_TIMEOUT + WAIT;
    let mut seen = first;
    let mut sent = first;
    while srv.hub.count(Audience::Dashboard) > 1 {
        assert!(
            Instant::now() < deadline,
            "the stalled peer is still connected {:?} after it stopped reading",
            WRITE_TIMEOUT + WAIT
        );
        mem.check("while the stalled peer is connected");
        agent.send_text(&batch(sent, per_frame, servers)).await;
        sent += per_frame;
        while seen < sent {
            match live.next().await {
                Incoming::Event(e) if e["type"] == "sample" => {
                    assert_eq!(e["metrics"]["seq"], seen, "in order, none missing");
                    seen += 1;
                }
                Incoming::Event(e) if e["type"] == "dropped" => {
                    panic!("live dashboard lost samples: {e}")
                }
                Incoming::Event(_) => {}
                other => panic!("live dashboard lost its socket: {other:?}"),
            }
        }
    }
    eventually_eq("peers dropped for a write timeout", 1, || {
        srv.hub.write_timeouts()
    })
    .await;
    let (_, stats) = http_get(srv.addr, "/stats", "").await;
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("stats JSON");
    assert_eq!(
        stats["writeTimeouts"], 1,
        "the stalled peer is counted: {stats}"
    );
    seen
}

/// Runs one case: a stalled peer writes `chunk` over and over, `pause` apart, and never reads.
async fn case(name: &str, servers: u64, chunk: Vec<u8>, pause: Duration) {
    let _one_at_a_time = SERIAL.lock().await;
    let srv = start(slow_settings()).await;
    let mut live = connect(srv.addr, "/ws").await.expect("live dashboard");
    live.next_of("hello").await;
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    // Every server once, so snapshots hold them all.
    let mut seen = 0;
    while seen < servers {
        let n = (servers - seen).min(200);
        agent.send_text(&batch(seen, n, servers)).await;
        for _ in 0..n {
            assert_eq!(live.next_of("sample").await["metrics"]["seq"], seen);
            seen += 1;
        }
    }
    live.send_text(r#"{"type":"snapshot.request"}"#).await;
    let snapshot_bytes = live.next_of("snapshot").await.to_string().len();
    let mut mem = Memory::new();

    let stall = flood(stalled_peer(srv.addr).await, chunk, pause);
    let seen = feed_until_stalled_gone(&srv, &mut agent, &mut live, &mut mem, servers, seen).await;
    let frames_sent = tokio::time::timeout(WAIT, stall)
        .await
        .expect("the stalled peer's socket fails once the server dropped it")
        .expect("flood task");
    let after = mem.check("after the stalled peer is gone");
    eprintln!(
        "{name}: snapshots of {snapshot_bytes} bytes; baseline {:.1} MiB, peak {:.1} MiB, after {:.1} MiB; {frames_sent} chunks sent \
         by the stalled peer, {seen} samples to the live dashboard",
        mib(mem.baseline),
        mib(mem.peak),
        mib(after)
    );

    // The live dashboard is still served.
    agent.send_text(&batch(seen, 1, servers)).await;
    assert_eq!(live.next_of("sample").await["metrics"]["seq"], seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_pings_and_never_reads_is_dropped() {
    let pings = frames(0x9, &[b'p'; 125], 8192);
    case("pings", 10, pings, Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_asks_for_snapshots_and_never_reads_is_dropped() {
    let requests = frames(0x1, br#"{"type":"snapshot.request"}"#, 64);
    case("snapshot requests", 100, requests, Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_that_never_reads_under_a_fast_feed_is_dropped() {
    // It only pings now and then (so a write fails once the server dropped it); the server
    // owes it the sample feed.
    let ping = frames(0x9, b"", 1);
    case("sample feed", 10, ping, Duration::from_millis(50)).await;
}

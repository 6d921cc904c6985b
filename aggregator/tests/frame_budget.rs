//! The dashboard frame budget over real sockets: with many dashboards and a small budget, each
//! dashboard's writer groups the samples published meanwhile into array frames; one dashboard
//! never waits; a pong owed ends a wait at once. (Structure only: how long anything took is in
//! BENCHMARKS.md.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use fastwebsockets::{Frame, OpCode, Payload};
use metrics_edge::client::ClientSocket;
use serde_json::Value;

/// A dashboard on `/ws`, past its `hello`.
async fn dashboard(srv: &metrics_edge::testing::Started) -> ClientSocket {
    let mut ws = metrics_edge::client::connect(srv.addr, "localhost", "/ws", None, &[])
        .await
        .expect("dashboard");
    let hello = ws.read_frame().await.expect("hello");
    let hello: Value = serde_json::from_slice(&hello.payload).expect("JSON");
    assert_eq!(hello["type"], "hello");
    ws
}

/// What one dashboard read: the `seq` of each sample, the number of text frames that held
/// samples, and whether a pong came.
#[derive(Default, Debug)]
struct Reading {
    seqs: Vec<u64>,
    sample_frames: usize,
    pong: bool,
}

/// Reads until the dashboard has seen sample `seq` `until` (or a pong, with `pong`).
async fn read_until(ws: &mut ClientSocket, r: &mut Reading, until: u64, pong: bool) {
    let deadline = Instant::now() + WAIT;
    while !(r.seqs.contains(&until) || pong && r.pong) {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, ws.read_frame())
            .await
            .unwrap_or_else(|_| panic!("sample {until} not seen within {WAIT:?}: {r:?}"))
            .expect("the dashboard's socket stays open");
        match frame.opcode {
            OpCode::Pong => r.pong = true,
            OpCode::Text => {
                let v: Value = serde_json::from_slice(&frame.payload).expect("every frame is JSON");
                let events = match v {
                    Value::Array(a) => a,
                    one => vec![one],
                };
                let before = r.seqs.len();
                for e in events {
                    if e["type"] == "sample" && e["serverId"] == "budget" {
                        r.seqs.push(e["metrics"]["seq"].as_u64().expect("seq"));
                    }
                }
                if r.seqs.len() > before {
                    r.sample_frames += 1;
                }
            }
            _ => {}
        }
    }
}

fn sample_seq(seq: u64) -> String {
    format!(r#"{{"serverId":"budget","metrics":{{"seq":{seq}}}}}"#)
}

fn with_budget(budget: u32) -> aggregator::Settings {
    let mut s = settings();
    s.edge.ws.frame_budget = budget;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_dashboards_under_a_small_budget_get_samples_grouped_into_fewer_frames() {
    // 50 dashboards at 1,000 frames/s together: 50 ms between one dashboard's frames.
    let srv = start(with_budget(1_000)).await;
    let mut dashes = Vec::new();
    for _ in 0..50 {
        dashes.push(dashboard(&srv).await);
    }
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    // 60 samples, each published alone, about 4 ms apart: without the budget each dashboard
    // would get about one frame per sample.
    let n = 60u64;
    for seq in 0..n {
        agent.send_text(&sample_seq(seq)).await;
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    let mut frames = 0;
    for ws in &mut dashes {
        let mut r = Reading::default();
        read_until(ws, &mut r, n - 1, false).await;
        assert_eq!(
            r.seqs,
            (0..n).collect::<Vec<u64>>(),
            "every sample once, in order"
        );
        frames += r.sample_frames;
    }
    let samples = n as usize * dashes.len();
    assert!(
        frames * 4 <= samples,
        "{samples} samples in {frames} frames: at least 4 a frame on average"
    );
    assert!(srv.hub.frame_gauge().waits() > 0, "writers waited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dashboard_never_waits() {
    // One dashboard at 5,000 frames/s: 200 µs, under the minimum wait.
    let srv = start(with_budget(5_000)).await;
    let mut ws = dashboard(&srv).await;
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    // Back to back: each frame after the first is due 200 µs after the one before, under the
    // shortest wait made.
    for seq in 0..40 {
        agent.send_text(&sample_seq(seq)).await;
    }
    let mut r = Reading::default();
    read_until(&mut ws, &mut r, 39, false).await;
    assert_eq!(r.seqs, (0..40).collect::<Vec<u64>>());
    assert_eq!(srv.hub.frame_gauge().active(), 1);
    assert_eq!(srv.hub.frame_gauge().waits(), 0, "the writer never waited");
    // A second after its last frame the writer stops counting (its idle timer, armed at the
    // first frame, found a later frame and ran again).
    eventually_eq("active writers", 0, || srv.hub.frame_gauge().active()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pong_ends_a_wait_at_once() {
    // 20 dashboards at 1 frame/s together: 20 s between one dashboard's frames, longer than
    // the test waits for anything.
    let srv = start(with_budget(1)).await;
    let mut dashes = Vec::new();
    for _ in 0..20 {
        dashes.push(dashboard(&srv).await);
    }
    // Each writer wrote its dashboard's `hello` at once and counts as active from then on.
    eventually_eq("active writers", 20, || srv.hub.frame_gauge().active()).await;
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    // Sample 1 waits out the 20 s interval on every dashboard ...
    agent.send_text(&sample_seq(1)).await;
    eventually_eq("writers waiting", true, || {
        srv.hub.frame_gauge().waits() >= 20
    })
    .await;
    // ... except on the one that pings: its pong goes out at once, the sample with it.
    let ws = &mut dashes[0];
    ws.write_frame(Frame::new(
        true,
        OpCode::Ping,
        None,
        Payload::Borrowed(b"p"),
    ))
    .await
    .expect("ping");
    let mut r = Reading::default();
    read_until(ws, &mut r, 1, true).await;
    assert!(r.pong, "the pong came back");
    read_until(ws, &mut r, 1, false).await;
    assert_eq!(r.seqs, vec![1], "the waiting sample went out with the pong");
}

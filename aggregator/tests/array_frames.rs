//! Events that queue up for a dashboard go out together, as one JSON array frame, in the order
//! they were published, over real sockets: a dashboard pays per frame as well as per event, so
//! a writer with more than one event queued must not send them one frame each.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fastwebsockets::OpCode;
use serde_json::Value;

/// Reads frames until `want` sample events have arrived (or `WAIT` passes); returns the
/// `seq` of every sample in arrival order and, per text frame, how many events it held and
/// whether it was an array.
async fn read_samples(ws: &mut metrics_edge::client::ClientSocket, want: usize) -> Reading {
    let mut r = Reading::default();
    let deadline = Instant::now() + WAIT;
    while r.seqs.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, ws.read_frame())
            .await
            .unwrap_or_else(|_| panic!("only {} of {want} samples within {WAIT:?}", r.seqs.len()))
            .expect("the dashboard's socket stays open");
        if frame.opcode != OpCode::Text {
            continue;
        }
        r.max_frame = r.max_frame.max(frame.payload.len());
        let v: Value = serde_json::from_slice(&frame.payload).expect("every frame is JSON");
        let events = match v {
            Value::Array(a) => {
                r.arrays.push(a.len());
                a
            }
            one => vec![one],
        };
        r.frames += 1;
        for e in events {
            match e["type"].as_str() {
                Some("sample") => r.seqs.push(e["metrics"]["seq"].as_u64().expect("seq")),
                Some("dropped") => panic!("nothing may be shed here: {e}"),
                _ => {}
            }
        }
    }
    r
}

#[derive(Default)]
struct Reading {
    seqs: Vec<u64>,
    frames: usize,
    /// The number of events of each array frame.
    arrays: Vec<usize>,
    max_frame: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_that_starts_reading_late_gets_the_queued_events_as_array_frames_in_order() {
    let srv = start(settings()).await;

    // The dashboard reads nothing until every sample is published: with a small receive
    // buffer the kernel holds little, so the rest queues on the server for its writer.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let tcp = sock.connect(srv.addr).await.expect("connect");
    let mut dash = metrics_edge::client::handshake_on(tcp, "localhost", "/ws", None, &[])
        .await
        .expect("dashboard");
    dash.set_max_message_size(64 << 20);

    // 8,000 samples of about 1 KB, one per agent frame, so each is published alone: ~8 MB,
    // more than the kernel's buffers hold (the sender's is at most 4 MiB by default), less
    // than the queue sheds at (16,384 samples, 16 MiB).
    let n = 8_000u64;
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    let pad: Vec<String> = (0..40).map(|i| format!("\"pad_{i}\":{i}.25")).collect();
    let pad = pad.join(",");
    for seq in 0..n {
        agent
            .send_text(&format!(
                r#"{{"serverId":"late-reader","metrics":{{"seq":{seq},{pad}}}}}"#
            ))
            .await;
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, stats) = http_get(srv.addr, "/stats", "").await;
        let stats: Value = serde_json::from_str(&stats).expect("stats JSON");
        if stats["samples"].as_u64() >= Some(n) {
            break;
        }
        assert!(Instant::now() < deadline, "not all samples taken: {stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let r = read_samples(&mut dash, n as usize).await;
    let expected: Vec<u64> = (0..n).collect();
    assert!(
        r.seqs == expected,
        "every sample once, in order (first difference at {:?})",
        r.seqs.iter().zip(&expected).position(|(a, b)| a != b)
    );
    assert!(
        r.arrays.iter().any(|&len| len > 1),
        "queued events went out as array frames ({} frames for {n} samples)",
        r.frames
    );
    assert!(
        r.frames < n as usize,
        "fewer frames than events: {} frames for {n} samples",
        r.frames
    );
    // Arrays are bounded by the writer's frame limit (one event may be larger on its own).
    let limit = metrics_edge::ws::WsConfig::default().max_out_frame;
    assert!(
        r.max_frame <= limit,
        "largest frame {} bytes, limit {limit}",
        r.max_frame
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_samples_of_one_agent_frame_reach_a_dashboard_as_one_array_frame() {
    let srv = start(settings()).await;
    let mut dash = metrics_edge::client::connect(srv.addr, "localhost", "/ws", None, &[])
        .await
        .expect("dashboard");
    let hello = dash.read_frame().await.expect("hello");
    let hello: Value = serde_json::from_slice(&hello.payload).expect("JSON");
    assert_eq!(hello["type"], "hello");

    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    let batch: Vec<String> = (0..50)
        .map(|seq| format!(r#"{{"serverId":"one-frame","metrics":{{"seq":{seq}}}}}"#))
        .collect();
    agent.send_text(&format!("[{}]", batch.join(","))).await;

    let r = read_samples(&mut dash, 50).await;
    assert_eq!(r.seqs, (0..50).collect::<Vec<u64>>());
    assert_eq!(
        (r.frames, r.arrays.as_slice()),
        (1, &[50][..]),
        "one publish, one frame"
    );
}

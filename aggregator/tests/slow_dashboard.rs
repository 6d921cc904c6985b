//! A dashboard that never reads must not delay another dashboard or ingest: its own queue sheds
//! old `sample` events (and says how many), everyone else gets everything.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_dashboard_does_not_hold_back_a_live_one() {
    let mut s = settings();
    s.edge.queue.sample_cap = 256;
    let srv = start(s).await;

    // The stalled dashboard: connected, never read (its frames pile up in kernel buffers and
    // then in its queue on the server).
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let tcp = sock.connect(srv.addr).await.expect("connect");
    let stalled = metrics_edge::client::handshake_on(tcp, "localhost", "/ws", None, &[])
        .await
        .expect("stalled dashboard");
    let mut live = connect(srv.addr, "/ws").await.expect("live dashboard");
    live.next_of("hello").await;

    // ~15 MB of sample events, far more than socket buffers hold. The agent sends a frame only
    // once the live dashboard has seen the previous one: if the stalled dashboard held anything
    // back, this would stop.
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    let pad = "x".repeat(50);
    let fill: Vec<String> = (0..40).map(|i| format!("\"metric_{i}\":{i}.5")).collect();
    let fill = fill.join(",");
    let per_frame = 100u64;
    let frames = 200u64;
    let mut seen = 0u64;
    for f in 0..frames {
        let batch: Vec<String> = (0..per_frame)
            .map(|i| {
                format!(
                    r#"{{"serverId":"s-{pad}","metrics":{{"seq":{},{fill}}}}}"#,
                    f * per_frame + i
                )
            })
            .collect();
        agent.send_text(&format!("[{}]", batch.join(","))).await;
        while seen < (f + 1) * per_frame {
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
    let total = frames * per_frame;

    // The stalled one, read at last, was told what it lost.
    let mut stalled = spawn_reader(stalled);
    let mut dropped = 0u64;
    let mut samples = 0u64;
    for e in stalled.collect_for(std::time::Duration::from_secs(2)).await {
        match e["type"].as_str() {
            Some("dropped") => dropped = e["total"].as_u64().expect("total"),
            Some("sample") => samples += 1,
            _ => {}
        }
    }
    assert!(
        dropped > 0,
        "the stalled dashboard was told about shed samples"
    );
    assert_eq!(
        samples + dropped,
        total,
        "every sample either delivered or counted as dropped"
    );
    // And the operator sees the same count in /stats.
    let (_, stats) = http_get(srv.addr, "/stats", "").await;
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("stats JSON");
    assert_eq!(stats["samplesShed"], dropped, "{stats}");
}

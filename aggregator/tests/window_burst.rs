//! Every server's window closes on the same boundary. With thousands of servers that is
//! thousands of `window` events at once; sent as one burst they land in a dashboard's queue
//! together, and a queue of events that may not be shed past its byte limit gets the dashboard
//! closed (1008) although it reads as fast as it can. The aggregator lets them out over
//! `--window-spread-ms` instead (`metrics_model::pacing`).

mod common;

use std::time::Duration;

use common::*;
use metrics_model::window::WindowSpec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_dashboard_gets_every_window_of_four_thousand_servers() {
    let servers = 4_000usize;
    let mut s = settings();
    s.edge.windows = WindowSpec::parse_list("1s").expect("windows");
    // The whole close is over 600 KB of window events, five times this limit; let out over
    // 500 ms, the dashboard may fall 80 ms behind before it nears the limit.
    s.edge.queue.max_bytes = 128 << 10;
    s.edge.window_spread_ms = 500;
    let srv = start(s).await;

    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;

    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    for chunk in (0..servers).collect::<Vec<_>>().chunks(500) {
        let batch: Vec<String> = chunk
            .iter()
            .map(|i| format!(r#"{{"serverId":"srv-{i}","metrics":{{"cpu":{i}.5}}}}"#))
            .collect();
        agent.send_text(&format!("[{}]", batch.join(","))).await;
    }

    // Windows of the servers, by the first window they were all in.
    let bytes = dash.windows_of(servers, Duration::from_secs(20)).await;
    assert!(bytes > 5 * (128 << 10), "the close was {bytes} bytes");
}

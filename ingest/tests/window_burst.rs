//! Every server's window closes on the same boundary. With thousands of servers the window
//! leader has thousands of `window` events to publish at once; published as one burst they
//! reach the broadcaster together and land in a dashboard's queue in the same instant, and a
//! queue of events that may not be shed past its byte limit gets the dashboard closed (1008)
//! although it reads as fast as it can. The leader lets them out over `--window-spread-ms`
//! instead (`metrics_model::pacing`), as System 2's aggregator does.

mod common;

use std::time::Duration;

use common::*;
use metrics_model::window::WindowSpec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_dashboard_gets_every_window_of_four_thousand_servers() {
    let servers = 4_000usize;
    let redis = Redis::start();
    let mut s = settings(&redis);
    s.edge.windows = WindowSpec::parse_list("1s").expect("windows");
    // The whole close is over 600 KB of window events, five times this limit; let out over
    // 500 ms, the dashboard may fall 80 ms behind before it nears the limit.
    s.edge.queue.max_bytes = 128 << 10;
    s.edge.window_spread_ms = 500;
    let srv = start(s).await;

    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    // The 4,000 sample events may be shed from the dashboard's queue (they are counted, and
    // the dashboard stays); window events may not.
    for chunk in (0..servers).collect::<Vec<_>>().chunks(500) {
        let batch: Vec<String> = chunk
            .iter()
            .map(|i| format!(r#"{{"serverId":"srv-{i}","metrics":{{"cpu":{i}.5}}}}"#))
            .collect();
        post_accepted(srv.addr, &Transport::H2c, format!("[{}]", batch.join(","))).await;
    }

    let bytes = dash.windows_of(servers, Duration::from_secs(20)).await;
    assert!(bytes > 5 * (128 << 10), "the close was {bytes} bytes");
}

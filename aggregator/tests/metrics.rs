//! The admin listener's `GET /metrics`: Prometheus text that promtool accepts, whose counters
//! move by what the test did (samples aggregated, a refused frame, dashboards and agents
//! connected, requests by route and status, samples shed for a stalled dashboard), and that
//! the public port does not serve.

mod common;

use common::*;

fn with_admin() -> aggregator::Settings {
    let mut s = settings();
    s.edge.admin.listen = Some("127.0.0.1:0".parse().expect("addr"));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened_and_only_on_the_admin_listener() {
    let srv = start(with_admin()).await;
    let admin = srv.admin_addr.expect("admin listener");

    // The public port does not serve the page; the admin port serves nothing else.
    let (status, body) = http_get(srv.addr, "/metrics", "").await;
    assert_eq!(status, 404, "public /metrics: {body}");
    assert!(!body.contains("# TYPE"), "{body}");
    assert_eq!(http_get(admin, "/healthz", "").await.0, 200);
    assert_eq!(http_get(admin, "/stats", "").await.0, 404);

    let before = scrape(&srv).await;
    check_with_promtool(&before.text);
    assert_eq!(before.value("aggregator_samples_total"), 0.0);

    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    for i in 0..3 {
        agent.send_text(&sample("m-1", f64::from(i))).await;
    }
    agent.send_text("{not json").await;
    agent.next_of("error").await;
    for _ in 0..3 {
        dash.next_of("sample").await;
    }
    eventually_eq(
        "samples aggregated",
        3.0,
        async_value(&srv, "aggregator_samples_total"),
    )
    .await;
    let m = scrape(&srv).await;
    check_with_promtool(&m.text);
    assert_eq!(m.value("aggregator_frames_refused_total"), 1.0);
    assert_eq!(m.value("websocket_clients{audience=\"dashboard\"}"), 1.0);
    assert_eq!(m.value("websocket_clients{audience=\"agent\"}"), 1.0);
    assert_eq!(
        m.value("http_requests_total{route=\"/metrics\",status=\"404\"}"),
        0.0,
        "paths not served go under `other`"
    );
    assert_eq!(
        m.value("http_requests_total{route=\"other\",status=\"404\"}"),
        1.0
    );
    assert_eq!(
        m.value("http_requests_total{route=\"/ws\",status=\"101\"}"),
        1.0
    );
    assert_eq!(
        m.value("http_requests_total{route=\"/ingest\",status=\"101\"}"),
        1.0
    );
    for series in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "aggregator_window_close_seconds_count",
        "hub_samples_shed_total",
        "http_connections_refused_total",
    ] {
        assert!(m.has(series), "{series} missing:\n{}", m.text);
    }
    assert!(m.value("process_open_fds") > 0.0);
}

/// Waits for a scrape's `series` to reach a value (each poll is a real scrape).
fn async_value<'a>(srv: &'a Started, series: &'a str) -> impl Fn() -> f64 + 'a {
    move || {
        let addr = srv.admin_addr.expect("admin");
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let (_, body) = http_get(addr, "/metrics", "").await;
                    parse_exposition(&body).value(series)
                })
            })
            .join()
            .expect("scrape")
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_shed_for_a_stalled_dashboard_are_exposed() {
    let mut s = with_admin();
    s.edge.queue.sample_cap = 64;
    let srv = start(s).await;

    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let tcp = sock.connect(srv.addr).await.expect("connect");
    let _stalled = metrics_edge::client::handshake_on(tcp, "localhost", "/ws", None, &[])
        .await
        .expect("stalled dashboard");
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    let fill: Vec<String> = (0..40).map(|i| format!("\"metric_{i}\":{i}.5")).collect();
    let fill = fill.join(",");
    for f in 0..40u64 {
        let batch: Vec<String> = (0..100u64)
            .map(|i| {
                format!(
                    r#"{{"serverId":"s","metrics":{{"seq":{},{fill}}}}}"#,
                    f * 100 + i
                )
            })
            .collect();
        agent.send_text(&format!("[{}]", batch.join(","))).await;
    }
    eventually_eq(
        "samples aggregated",
        4000.0,
        async_value(&srv, "aggregator_samples_total"),
    )
    .await;
    let shed = srv.hub.shed();
    assert!(shed > 0, "the stalled dashboard's queue shed samples");
    let m = scrape(&srv).await;
    check_with_promtool(&m.text);
    assert_eq!(m.value("hub_samples_shed_total"), srv.hub.shed() as f64);
    assert!(m.value("hub_samples_shed_total") >= shed as f64);
}

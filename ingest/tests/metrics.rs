//! The admin listener's `GET /metrics` for System 1: Prometheus text that promtool accepts,
//! whose counters move by what the test did (samples accepted, a refusal by status, a
//! dashboard connected, Redis pipelines observed, the stream and its groups read from Redis),
//! and that the public port does not serve (there `/metrics` only takes samples).

mod common;

use common::*;
use metrics_edge::testing::{check_with_promtool, http_get, parse_exposition, scrape};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened_and_only_on_the_admin_listener() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    s.edge.admin.listen = Some("127.0.0.1:0".parse().expect("addr"));
    let srv = start(s).await;
    let admin = srv.admin_addr.expect("admin listener");

    let (status, body) = http_get(srv.addr, "/metrics", "").await;
    assert_eq!(status, 405, "public GET /metrics: {body}");
    assert!(!body.contains("# TYPE"), "{body}");
    assert_eq!(http_get(admin, "/healthz", "").await.0, 200);

    let mut dash = metrics_edge::testing::connect(srv.addr, "/ws")
        .await
        .expect("dashboard");
    dash.next_of("hello").await;
    let t = Transport::Http1;
    post_accepted(
        srv.addr,
        &t,
        format!("[{},{}]", sample("a", 1.0), sample("b", 2.0)),
    )
    .await;
    post_accepted(srv.addr, &t, sample("a", 3.0)).await;
    let bad = post(srv.addr, &t, "application/json", "{\"serverId\":1}").await;
    assert_eq!(bad.status, 400, "{}", bad.body);

    let m = scrape(&srv).await;
    check_with_promtool(&m.text);
    assert_eq!(m.value("ingest_samples_accepted_total"), 3.0);
    assert_eq!(m.value("ingest_entries_written_total"), 2.0);
    assert_eq!(m.value("ingest_redis_pipeline_entries_count"), 2.0);
    assert_eq!(
        m.value("ingest_redis_pipeline_entries_bucket{le=\"1\"}"),
        2.0
    );
    assert_eq!(m.value("ingest_redis_write_seconds_count"), 2.0);
    assert_eq!(
        m.value("http_requests_total{route=\"/metrics\",status=\"202\"}"),
        2.0
    );
    assert_eq!(
        m.value("http_requests_total{route=\"/metrics\",status=\"400\"}"),
        1.0
    );
    assert_eq!(
        m.value("http_requests_total{route=\"/metrics\",status=\"405\"}"),
        1.0
    );
    assert_eq!(
        m.value("http_requests_total{route=\"/ws\",status=\"101\"}"),
        1.0
    );
    assert_eq!(m.value("websocket_clients{audience=\"dashboard\"}"), 1.0);
    assert_eq!(m.value("ingest_redis_up"), 1.0);
    assert_eq!(m.value("ingest_stream_length"), xlen(&redis) as f64);
    assert!(m.value("ingest_stream_length") >= 2.0);
    for group in ["workers", "windows"] {
        assert!(
            m.has(&format!("ingest_stream_group_pending{{group=\"{group}\"}}")),
            "group {group}:\n{}",
            m.text
        );
    }
    for series in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "ingest_window_close_seconds_count",
        "hub_samples_shed_total",
        "websocket_write_timeouts_total",
        "http_connections_timed_out_total",
    ] {
        assert!(m.has(series), "{series} missing:\n{}", m.text);
    }

    // Redis gone: the scrape still answers, within the Redis timeout, and says so.
    redis.pause();
    let (status, body) = http_get(admin, "/metrics", "").await;
    redis.resume();
    assert_eq!(status, 200);
    let m = parse_exposition(&body);
    assert_eq!(m.value("ingest_redis_up"), 0.0);
    assert!(!m.has("ingest_stream_length"));
}

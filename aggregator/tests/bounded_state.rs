//! Work and state that must not grow faster than what a peer sends, over real sockets: a
//! `register` or `subscribe` naming more servers than a filter holds (`--max-filter-ids`), a
//! stream of new server ids past `--max-servers`, and the all-servers snapshot (encoded off
//! the aggregator thread) staying right with many servers.

mod common;

use common::*;
use serde_json::Value;

/// `/stats` as JSON.
async fn stats(srv: &TestServer) -> Value {
    let (_, body) = http_get(srv.addr, "/stats", "").await;
    serde_json::from_str(&body).expect("stats JSON")
}

/// A JSON array of `n` server ids `prefix-i`.
fn id_list(prefix: &str, n: usize) -> String {
    let ids: Vec<String> = (0..n).map(|i| format!("\"{prefix}-{i}\"")).collect();
    format!("[{}]", ids.join(","))
}

/// Whether an `error` event's message names `what`.
fn names(e: &Value, what: &str) -> bool {
    e["message"].as_str().is_some_and(|m| m.contains(what))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_with_too_many_ids_is_refused_and_agents_still_go_end_to_end() {
    let mut s = settings();
    s.edge.queue.max_ids = 50;
    let srv = start(s).await;
    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;

    // 51 ids: refused, naming the limit; the socket stays an agent with nothing noted.
    let mut big = connect(srv.addr, "/ingest").await.expect("agent");
    big.send_text(&format!(
        r#"{{"type":"register","role":"producer","serverId":{}}}"#,
        id_list("many", 51)
    ))
    .await;
    let e = big.next_of("error").await;
    assert!(names(&e, "--max-filter-ids") && names(&e, "51"), "{e}");
    // A dashboard's subscribe and ?serverId= over the limit: refused the same way.
    dash.send_text(&format!(
        r#"{{"type":"subscribe","serverId":{}}}"#,
        id_list("many", 51)
    ))
    .await;
    let e = dash.next_of("error").await;
    assert!(names(&e, "--max-filter-ids"), "{e}");
    let query: Vec<String> = (0..51).map(|i| format!("q{i}")).collect();
    let (status, body) = http_get(
        srv.addr,
        &format!("/ws?serverId={}", query.join(",")),
        UPGRADE,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("--max-filter-ids"), "{body}");

    // The refused socket and a normal agent both still go end to end: samples reach the
    // (still unfiltered) dashboard and windows come back to each agent.
    big.send_text(&sample("many-1", 3.0)).await;
    assert_eq!(
        dash.next_for("sample", "many-1").await["metrics"]["cpu"],
        3.0
    );
    big.next_for("window", "many-1").await;
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    agent
        .send_text(&format!(
            r#"{{"type":"register","role":"producer","serverId":{}}}"#,
            id_list("web", 50)
        ))
        .await;
    agent.next_of("registered").await;
    agent.send_text(&sample("web-7", 5.0)).await;
    assert_eq!(
        dash.next_for("sample", "web-7").await["metrics"]["cpu"],
        5.0
    );
    assert_eq!(
        agent.next_for("window", "web-7").await["stats"]["cpu"]["max"],
        5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_servers_past_max_servers_are_refused_and_counted() {
    let mut s = settings();
    s.max_servers = 4;
    let srv = start(s).await;
    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    for i in 0..4 {
        agent.send_text(&sample(&format!("keep-{i}"), 1.0)).await;
    }
    stat_reaches(&srv, "servers", 4).await;

    // A stream of random server ids: each frame refused with an error naming the limit.
    let mut rogue = connect(srv.addr, "/ingest").await.expect("rogue agent");
    for i in 0..20 {
        rogue
            .send_text(&sample(&format!("rnd-{}", 7919 * i % 1000), 1.0))
            .await;
    }
    for _ in 0..20 {
        let e = rogue.next_of("error").await;
        assert!(names(&e, "--max-servers") && names(&e, "rnd-"), "{e}");
    }
    stat_reaches(&srv, "serversRefused", 20).await;
    let st = stats(&srv).await;
    assert_eq!(st["servers"], 4, "{st}");

    // The servers already kept keep working: aggregated, windowed, in snapshots.
    agent.send_text(&sample("keep-2", 42.0)).await;
    // (A window of the first samples may close first; the one with 42 follows.)
    while agent.next_for("window", "keep-2").await["stats"]["cpu"]["max"] != 42.0 {}
    dash.send_text(r#"{"type":"snapshot.request"}"#).await;
    let snap = dash.next_of("snapshot").await;
    let ids: Vec<&str> = snap["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .filter_map(|s| s["serverId"].as_str())
        .collect();
    assert_eq!(ids, ["keep-0", "keep-1", "keep-2", "keep-3"]);
}

/// Waits up to [`WAIT`] for `/stats`'s `key` to read `value`.
async fn stat_reaches(srv: &TestServer, key: &str, value: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let st = stats(srv).await;
        if st[key] == value {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{key}: {st}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_all_servers_snapshot_stays_right_with_many_servers() {
    let srv = start(settings()).await;
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    const N: usize = 500;
    // One frame of N samples, one per server, cpu = the server's number.
    let frame: Vec<String> = (0..N)
        .map(|i| sample(&format!("m-{i:04}"), i as f64))
        .collect();
    agent.send_text(&format!("[{}]", frame.join(","))).await;
    agent.next_for("window", "m-0000").await;
    agent.send_text(r#"{"type":"snapshot.request"}"#).await;
    let snap = agent.next_of("snapshot").await;
    assert_eq!(snap["serverId"], Value::Null);
    let servers = snap["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), N);
    for (i, s) in servers.iter().enumerate() {
        assert_eq!(s["serverId"], format!("m-{i:04}"), "sorted by id");
        assert_eq!(s["metrics"]["cpu"], i as f64);
        assert_eq!(s["metrics"]["network.in"], 812);
        assert_eq!(s["windows"][0]["stats"]["cpu"]["count"], 1, "{s}");
    }
    let all = snap["all"].as_array().expect("all");
    assert_eq!(all[0]["serverId"], "*");
    assert_eq!(all[0]["stats"]["cpu"]["count"], N);
    agent
        .send_text(r#"{"type":"snapshot.request","serverId":"m-0042"}"#)
        .await;
    let one = agent.next_of("snapshot").await;
    assert_eq!(one["servers"].as_array().map(Vec::len), Some(1));
    assert_eq!(one["servers"][0]["metrics"]["cpu"], 42.0);
}

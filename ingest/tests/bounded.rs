//! Redis does not grow without bound with the number of servers ever seen: a server's
//! snapshot hash expires `--snapshot-ttl-ms` after its latest sample, and it leaves the set of
//! servers that snapshots read; nor with the number of metric names one server sends: its
//! snapshot hash keeps at most `--max-fields-per-server` of them.

mod common;

use std::time::Duration;

use common::*;

fn exists(redis: &Redis, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query::<u64>(&mut redis.conn())
        .expect("EXISTS")
        == 1
}

fn seen(redis: &Redis) -> u64 {
    redis::cmd("ZCARD")
        .arg("metrics:servers:seen")
        .query(&mut redis.conn())
        .expect("ZCARD")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_of_silent_servers_expire() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    s.snapshot_ttl = Duration::from_millis(1_000);
    let srv = start(s).await;
    post_concurrently(srv.addr, Transport::H2c, 40, "gone-", 20).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen(&redis) < 20 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen(&redis), 20);
    let ttl: i64 = redis::cmd("PTTL")
        .arg("metrics:server:gone-0")
        .query(&mut redis.conn())
        .expect("PTTL");
    assert!(ttl > 0 && ttl <= 1_000, "the snapshot hash expires: {ttl}");

    // One live server keeps sending; the twenty fall silent.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while (exists(&redis, "metrics:server:gone-0") || seen(&redis) > 1)
        && tokio::time::Instant::now() < deadline
    {
        post_accepted(srv.addr, &Transport::H2c, sample("alive", 1.0)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..20 {
        assert!(
            !exists(&redis, &format!("metrics:server:gone-{i}")),
            "gone-{i}"
        );
    }
    assert!(exists(&redis, "metrics:server:alive"));
    assert_eq!(seen(&redis), 1, "only the live server is left to snapshot");

    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    dash.send_text(r#"{"type":"snapshot.request"}"#).await;
    let snap = dash.next_of("snapshot").await;
    let ids: Vec<&str> = snap["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .filter_map(|s| s["serverId"].as_str())
        .collect();
    assert_eq!(ids, ["alive"]);
}

fn metric_fields(redis: &Redis, key: &str) -> Vec<String> {
    let mut names: Vec<String> = redis::cmd("HKEYS")
        .arg(key)
        .query::<Vec<String>>(&mut redis.conn())
        .expect("HKEYS")
        .into_iter()
        .filter(|f| !f.starts_with('_'))
        .collect();
    names.sort();
    names
}

async fn worker_stats(addr: std::net::SocketAddr) -> serde_json::Value {
    let (_, body) = http_get(addr, "/stats", "").await;
    serde_json::from_str::<serde_json::Value>(&body).expect("stats")["worker"].clone()
}

/// A server's snapshot hash keeps at most `--max-fields-per-server` metric names, the first
/// ones seen; samples with further names are still stored and published whole, and the
/// names left out are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_snapshot_keeps_at_most_max_fields_names() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    s.max_fields_per_server = 10;
    let srv = start(s).await;
    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    // Five samples of eight new names each, one at a time (a batch writes only a server's
    // latest sample into its hash).
    for round in 0..5u64 {
        let metrics: Vec<String> = (0..8).map(|i| format!("\"m{round}{i}\":{i}")).collect();
        let body = format!(
            r#"{{"serverId":"many","metrics":{{{}}}}}"#,
            metrics.join(",")
        );
        post_accepted(srv.addr, &Transport::H2c, body).await;
        let e = dash.next_of("sample").await;
        assert_eq!(
            e["metrics"].as_object().expect("metrics").len(),
            8,
            "published whole: {e}"
        );
        let deadline = tokio::time::Instant::now() + WAIT;
        while worker_stats(srv.addr).await["samples"] != round + 1 {
            assert!(tokio::time::Instant::now() < deadline, "processed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let kept = metric_fields(&redis, "metrics:server:many");
    let first: Vec<String> = (0..8)
        .map(|i| format!("m0{i}"))
        .chain(["m10".into(), "m11".into()])
        .collect();
    assert_eq!(kept, first, "the first ten names seen");
    // A known name is still updated.
    post_accepted(
        srv.addr,
        &Transport::H2c,
        r#"{"serverId":"many","metrics":{"m00":42,"new":1}}"#,
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v: Option<String> = redis::cmd("HGET")
            .arg("metrics:server:many")
            .arg("m00")
            .query(&mut redis.conn())
            .expect("HGET");
        if v.as_deref() == Some("42") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "m00 updated: {v:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric_fields(&redis, "metrics:server:many"), first);
    let w = worker_stats(srv.addr).await;
    assert_eq!(w["snapshotFieldsRefused"], 6 + 8 + 8 + 8 + 1, "{w}");
    assert_eq!(w["serversAtFieldLimit"], 1, "{w}");
}

/// Calls of `cmd` Redis has served (`INFO commandstats`).
fn calls(redis: &Redis, cmd: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.conn())
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Posts `body` and waits until the worker has processed `samples` samples in all.
async fn post_processed(addr: std::net::SocketAddr, body: &str, samples: u64) {
    post_accepted(addr, &Transport::H2c, body.to_string()).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while worker_stats(addr).await["samples"] != samples {
        assert!(tokio::time::Instant::now() < deadline, "processed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Once the field-bound script has admitted every name of a server's sample, samples with the
/// same names (in any order) skip it; a hash deleted under the worker sends it back to the
/// script, and the bound still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_names_skip_the_snapshot_script_until_the_hash_is_gone() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    s.max_fields_per_server = 4;
    let srv = start(s).await;
    let key = "metrics:server:known";
    post_processed(
        srv.addr,
        r#"{"serverId":"known","metrics":{"a":1,"b":2}}"#,
        1,
    )
    .await;
    let scripted = calls(&redis, "evalsha");
    assert!(scripted >= 1, "the first sample goes through the script");
    post_processed(
        srv.addr,
        r#"{"serverId":"known","metrics":{"b":3,"a":4}}"#,
        2,
    )
    .await;
    post_processed(
        srv.addr,
        r#"{"serverId":"known","metrics":{"a":5,"b":6}}"#,
        3,
    )
    .await;
    assert_eq!(
        calls(&redis, "evalsha"),
        scripted,
        "known names skip the script"
    );
    let a: Option<String> = redis::cmd("HGET")
        .arg(key)
        .arg("a")
        .query(&mut redis.conn())
        .expect("HGET");
    assert_eq!(a.as_deref(), Some("5"), "and are written all the same");

    // The hash deleted by hand: the plain write recreates it, sees fields added, and the next
    // sample goes through the script again.
    let _: () = redis::cmd("DEL")
        .arg(key)
        .query(&mut redis.conn())
        .expect("DEL");
    post_processed(
        srv.addr,
        r#"{"serverId":"known","metrics":{"a":7,"b":8}}"#,
        4,
    )
    .await;
    post_processed(
        srv.addr,
        r#"{"serverId":"known","metrics":{"c":1,"d":1,"e":1,"f":1}}"#,
        5,
    )
    .await;
    assert_eq!(calls(&redis, "evalsha"), scripted + 1, "back to the script");
    let kept = metric_fields(&redis, key);
    assert!(
        kept.len() <= 4 + 4,
        "within one sample's names of the bound: {kept:?}"
    );
    post_processed(
        srv.addr,
        r#"{"serverId":"known","metrics":{"g":1,"h":1,"i":1,"j":1}}"#,
        6,
    )
    .await;
    assert_eq!(metric_fields(&redis, key), kept, "and no further");
}

//! Redis does not grow without bound with the number of servers ever seen: a server's
//! snapshot hash expires `--snapshot-ttl-ms` after its latest sample, and it leaves the set of
//! servers that snapshots read.

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

//! Fault and load behaviour against a real redis-server: a worker killed with SIGKILL in the
//! middle of a batch loses nothing acknowledged; concurrent requests share pipelines.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use ingest::Role;

/// Spawns the real `ingest worker` binary against `redis`; killed when dropped, so a test
/// that fails leaves none behind (each would retry its test's vanished Redis for ever).
fn spawn_worker(redis: &Redis, name: &str, pause_ms: Option<u64>) -> KillOnDrop {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ingest"));
    cmd.args([
        "worker",
        "--listen",
        "off",
        "--redis-url",
        &redis.url(),
        "--node-id",
        name,
        "--claim-idle-ms",
        "500",
        "--lease-ms",
        "600",
        "--windows",
        "200ms",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(p) = pause_ms {
        cmd.env("INGEST_FAULT_PAUSE_MS", p.to_string());
    }
    KillOnDrop::new(cmd.spawn().expect("spawn the ingest binary"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_batch_loses_nothing_acknowledged() {
    let redis = Redis::start();
    let s = settings(&redis);
    let front = start_role(s.clone(), Role::Front).await;
    let dashboards = start_role(s, Role::Broadcaster).await;
    let mut dash = connect(dashboards.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;

    // Worker A reads a batch, then stalls before publishing it: killed right there.
    let mut a = spawn_worker(&redis, "worker-a", Some(60_000));
    let mut acknowledged = HashSet::new();
    for i in 0..20 {
        let r = post(
            front.addr,
            &Transport::H2c,
            "application/json",
            sample(&format!("s{i}"), f64::from(i)),
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body);
        acknowledged.insert(format!("s{i}"));
    }
    let mut waited = 0;
    while pending(&redis) == 0 {
        assert!(waited < 200, "worker A never read a batch");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    a.kill().expect("SIGKILL worker A");
    a.wait().expect("reap worker A");
    assert!(pending(&redis) > 0, "worker A died with entries pending");

    // Worker B claims what A left and publishes everything.
    let b = spawn_worker(&redis, "worker-b", None);
    let mut seen = HashSet::new();
    while seen.len() < acknowledged.len() {
        let e = dash.next_of("sample").await;
        seen.insert(e["serverId"].as_str().expect("server").to_string());
    }
    assert_eq!(seen, acknowledged);
    let mut waited = 0;
    while pending(&redis) > 0 {
        assert!(waited < 100, "entries left pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_share_the_stream_and_windows_count_each_sample_once() {
    let redis = Redis::start();
    let s = settings(&redis);
    let front = start_role(s.clone(), Role::Front).await;
    let dashboards = start_role(s, Role::Broadcaster).await;
    let mut dash = connect(dashboards.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    let workers = [
        spawn_worker(&redis, "w1", None),
        spawn_worker(&redis, "w2", None),
    ];

    let total = 300u64;
    post_concurrently(front.addr, Transport::H2c, total, "m", 5).await;
    // Every sample once (by id), and the "*" windows of the shortest length count each once.
    let mut ids = HashSet::new();
    let mut windowed = 0u64;
    while ids.len() < total as usize || windowed < total {
        match dash.next().await {
            Incoming::Event(e) if e["type"] == "sample" => {
                assert!(
                    ids.insert(e["id"].as_str().expect("id").to_string()),
                    "sample sent twice: {e}"
                );
            }
            Incoming::Event(e)
                if e["type"] == "window" && e["serverId"] == "*" && e["window"] == "200ms" =>
            {
                windowed += e["stats"]["cpu"]["count"].as_u64().expect("count");
            }
            Incoming::Event(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        windowed, total,
        "each sample counted once across the workers' windows"
    );
    let consumers: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg("metrics:samples")
        .arg("workers")
        .query(&mut redis.conn())
        .expect("XINFO");
    assert_eq!(consumers.len(), 2, "both workers read from the group");
    drop(workers);
}

fn info_field(redis: &Redis, section: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query(&mut redis.conn())
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| {
            let digits: String = rest
                .trim_start_matches(|c: char| !c.is_ascii_digit())
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_pipelines() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    s.writers = 2;
    let front = start_role(s, Role::Front).await;
    // Warm the writers' connections.
    post_accepted(front.addr, &Transport::H2c, sample("w", 1.0)).await;
    let xadd_before = info_field(&redis, "commandstats", "cmdstat_xadd:calls=");
    let reads_before = info_field(&redis, "stats", "total_reads_processed:");

    let n = 400;
    post_concurrently(front.addr, Transport::Http1, n, "p", 10).await;
    let xadds = info_field(&redis, "commandstats", "cmdstat_xadd:calls=") - xadd_before;
    // Our own INFO calls add a read each; nothing else talks to this Redis.
    let reads = info_field(&redis, "stats", "total_reads_processed:") - reads_before;
    println!("{n} requests: {xadds} XADD, {reads} reads by Redis");
    assert_eq!(xadds, n, "one XADD per request");
    assert!(
        reads * 2 <= n,
        "{n} requests took {reads} reads by Redis: writes were not coalesced into pipelines"
    );
}

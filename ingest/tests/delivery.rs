//! Nothing acknowledged is dropped on the way out, and nothing undecodable is acknowledged
//! silently: the readers decode whatever the front door accepted, an entry no reader can
//! decode goes to the dead-letter stream (counted), replay moves past such entries, and a new
//! window leader takes over every entry its predecessor left pending.

mod common;

use std::time::Duration;

use common::*;
use ingest::Role;
use serde_json::Value;

/// Writes `n` raw values into the sample stream, as something other than our front door might.
fn xadd_raw(redis: &Redis, values: &[&[u8]]) -> Vec<String> {
    let mut pipe = redis::pipe();
    for v in values {
        pipe.cmd("XADD")
            .arg("metrics:samples")
            .arg("*")
            .arg("e")
            .arg(*v);
    }
    pipe.query(&mut redis.conn()).expect("XADD")
}

/// The dead-letter stream's entries, each as its fields.
fn dead_letters(redis: &Redis) -> Vec<std::collections::HashMap<String, String>> {
    let letters: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("metrics:deadletter")
        .arg("-")
        .arg("+")
        .query(&mut redis.conn())
        .expect("XRANGE");
    letters
        .into_iter()
        .map(|(_, f)| f.into_iter().collect())
        .collect()
}

/// Sample events for `server` a dashboard sees until `n` arrived (or the wait runs out).
async fn count_samples(dash: &mut Peer, server: &str, n: usize) -> usize {
    let mut seen = 0;
    while seen < n {
        match tokio::time::timeout(WAIT, dash.next()).await {
            Ok(Incoming::Event(e)) if e["type"] == "sample" && e["serverId"] == server => seen += 1,
            Ok(Incoming::Event(_)) => {}
            _ => break,
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_default_batch_limit_reaches_dashboards_whole() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    s.edge.limits.max_batch = 20_000;
    let srv = start(s).await;
    let mut dash = connect(srv.addr, "/ws?serverId=big")
        .await
        .expect("dashboard");
    dash.next_of("hello").await;
    let n = 12_000;
    let body = format!("[{}]", vec![sample("big", 1.0); n].join(","));
    let r = post(srv.addr, &Transport::H2c, "application/json", body).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(count_samples(&mut dash, "big", n).await, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_no_reader_can_decode_is_dead_lettered_and_counted() {
    let redis = Redis::start();
    let srv = start(settings(&redis)).await;
    let mut dash = connect(srv.addr, "/ws?serverId=fine")
        .await
        .expect("dashboard");
    dash.next_of("hello").await;
    let bad = xadd_raw(&redis, &[b"not an entry of ours"]);
    post_accepted(srv.addr, &Transport::H2c, sample("fine", 1.0)).await;
    assert_eq!(count_samples(&mut dash, "fine", 1).await, 1);

    let letters = dead_letters(&redis);
    assert_eq!(letters.len(), 1, "{letters:?}");
    let fields = &letters[0];
    assert_eq!(fields["id"], bad[0]);
    assert_eq!(fields["e"], "not an entry of ours");
    assert!(fields["error"].contains("header"), "{fields:?}");

    let (status, body) = http_get(srv.addr, "/stats", "").await;
    assert_eq!(status, 200);
    let stats: Value = serde_json::from_str(&body).expect("stats JSON");
    assert_eq!(stats["worker"]["deadLettered"], 1, "{stats}");
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg("metrics:samples")
        .arg("workers")
        .query(&mut redis.conn())
        .expect("XPENDING");
    let redis::Value::Array(summary) = pending else {
        panic!("XPENDING summary: {pending:?}")
    };
    assert_eq!(
        summary.first(),
        Some(&redis::Value::Int(0)),
        "the bad entry is acknowledged once set aside"
    );
}

/// The workers publish stored lines without decoding them (only each server's latest sample
/// is decoded, for its snapshot). An entry in our own form whose number does not decode, or
/// whose lines are not in that form, is set aside whole all the same: none of its samples
/// reaches a dashboard, and the good entries around it do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_the_workers_do_not_decode_whole_are_set_aside_whole() {
    let redis = Redis::start();
    let srv = start(settings(&redis)).await;
    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    let line = |server: &str, cpu: &str| {
        format!(r#"{{"serverId":"{server}","timestamp":7,"metrics":{{"cpu":{cpu}}}}}"#)
    };
    // Out of range on its server's latest line; a line not in the stored form after a good one.
    let huge = format!("1 n\n{}\n{}\n", line("gone", "1"), line("gone", "1e999"));
    let broken = format!("1 n\n{}\n{}x\n", line("gone", "2"), line("other", "3"));
    let bad = xadd_raw(&redis, &[huge.as_bytes(), broken.as_bytes()]);
    post_accepted(srv.addr, &Transport::H2c, sample("fine", 1.0)).await;

    // The worker's pipeline publishes a batch's samples before it writes the batch's dead
    // letters, so a later good sample can arrive first: wait for both, then send one more.
    eventually_eq("both bad entries set aside", 2, || {
        dead_letters(&redis).len()
    })
    .await;
    let errors: std::collections::HashMap<String, String> = dead_letters(&redis)
        .into_iter()
        .map(|f| (f["id"].clone(), f["error"].clone()))
        .collect();
    post_accepted(srv.addr, &Transport::H2c, sample("fine-after", 1.0)).await;
    let mut seen = Vec::new();
    while !seen.iter().any(|s| s == "fine-after") {
        match dash.next().await {
            Incoming::Event(e) if e["type"] == "sample" => {
                seen.push(e["serverId"].as_str().expect("serverId").to_string())
            }
            Incoming::Event(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(
        seen.iter().all(|s| s.starts_with("fine")),
        "nothing of the set-aside entries published: {seen:?}"
    );
    assert!(
        errors[&bad[0]].starts_with(&format!("entry {}: ", bad[0])),
        "{errors:?}"
    );
    assert_eq!(
        errors[&bad[1]],
        format!("entry {}, sample line 2: trailing bytes", bad[1])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_moves_past_a_page_of_undecodable_entries() {
    let redis = Redis::start();
    let srv = start(settings(&redis)).await;
    let mut live = connect(srv.addr, "/ws?serverId=r")
        .await
        .expect("dashboard");
    live.next_of("hello").await;
    post_accepted(srv.addr, &Transport::H2c, sample("r", 1.0)).await;
    let first = live.next_for("sample", "r").await;
    let since = first["id"].as_str().expect("System 1 samples carry an id");

    // More undecodable entries than one page of the replay's reads, then a good sample.
    let garbage = vec![&b"garbage"[..]; 600];
    xadd_raw(&redis, &garbage);
    post_accepted(srv.addr, &Transport::H2c, sample("r", 2.0)).await;
    live.next_for("sample", "r").await;

    let mut back = connect(srv.addr, &format!("/ws?serverId=r&since={since}"))
        .await
        .expect("reconnecting dashboard");
    back.next_of("hello").await;
    // The replay starts at or below `since` (samples published out of order below it are
    // not missed), so the first sample may come again: a duplicate, by id.
    let mut cpus = Vec::new();
    let done = loop {
        match back.next().await {
            Incoming::Event(e) if e["type"] == "sample" => cpus.push(e["metrics"]["cpu"].clone()),
            Incoming::Event(e) if e["type"] == "replayed" => break e,
            Incoming::Event(_) | Incoming::Ping => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(cpus.last(), Some(&serde_json::json!(2)), "{cpus:?}");
    assert!(cpus.len() <= 2, "the good samples only: {cpus:?}");
    assert_eq!(done["count"], cpus.len(), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_window_leader_takes_over_every_pending_entry() {
    let redis = Redis::start();
    // More entries than one claim used to take, left pending by a leader that died.
    let n = 10_050usize;
    let now = metrics_model::now_ms();
    let mut buf = sample("w", 1.0).into_bytes();
    let one = metrics_model::decode::Decoder::default()
        .decode_json(&mut buf, now)
        .expect("sample");
    let entry = ingest::wire::encode_entry(now, "gone", &one);
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("metrics:samples")
        .arg("windows")
        .arg("0")
        .arg("MKSTREAM")
        .query(&mut redis.conn())
        .expect("group");
    for chunk in vec![&entry[..]; n].chunks(2_000) {
        xadd_raw(&redis, chunk);
    }
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("windows")
        .arg("dead-leader")
        .arg("COUNT")
        .arg(n + 10)
        .arg("STREAMS")
        .arg("metrics:samples")
        .arg(">")
        .query(&mut redis.conn())
        .expect("the dead leader's read");

    let s = settings(&redis);
    let dashboards = start_role(s.clone(), Role::Broadcaster).await;
    let mut dash = connect(dashboards.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    let _worker = start_role(s, Role::Worker).await;
    let mut counted = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while counted < n as u64 && tokio::time::Instant::now() < deadline {
        let e = dash.next_of("window").await;
        if e["serverId"] == "*" && e["window"] == "1s" {
            counted += e["stats"]["cpu"]["count"].as_u64().expect("count");
        }
    }
    assert_eq!(counted, n as u64, "every pending sample counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_never_trims_what_no_worker_processed_and_trims_the_rest() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    s.maxlen = 1_000;
    // Agents are acknowledged while no worker runs: three times the retention.
    let front = start_role(s.clone(), Role::Front).await;
    let dashboards = start_role(s.clone(), Role::Broadcaster).await;
    let mut dash = connect(dashboards.addr, "/ws?serverId=kept0")
        .await
        .expect("dashboard");
    dash.next_of("hello").await;
    let n = 3_000;
    for _ in 0..n / 200 {
        post_concurrently(front.addr, Transport::H2c, 200, "kept", 1).await;
    }
    assert_eq!(xlen(&redis), n, "nothing trimmed before a worker ran");

    let _worker = start_role(s, Role::Worker).await;
    assert_eq!(
        count_samples(&mut dash, "kept0", n as usize).await,
        n as usize
    );
    // Once processed, the stream is trimmed back to about --maxlen.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while xlen(&redis) > 1_200 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = xlen(&redis);
    assert!((1_000..=1_200).contains(&left), "{left} entries left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_replay_is_paced_by_the_dashboard_and_delivered_whole() {
    let redis = Redis::start();
    // 100,000 samples in the stream, ten times what the dashboard's queue may hold at once.
    let now = metrics_model::now_ms();
    let body = format!("[{}]", vec![sample("long", 1.0); 100].join(","));
    let mut buf = body.into_bytes();
    let hundred = metrics_model::decode::Decoder::default()
        .decode_json(&mut buf, now)
        .expect("samples");
    let entry = ingest::wire::encode_entry(now, "elsewhere", &hundred);
    for chunk in vec![&entry[..]; 1_000].chunks(200) {
        xadd_raw(&redis, chunk);
    }
    let mut s = settings(&redis);
    s.role = Role::Broadcaster;
    // A dashboard may have at most 10,000 never-shed events queued (a tenth of the replay).
    s.edge.queue.other_cap = 10_000;
    let srv = start(s).await;
    let mut dash = connect(srv.addr, "/ws?serverId=long&since=0-1")
        .await
        .expect("replaying dashboard");
    dash.next_of("hello").await;
    let mut replayed = 0u64;
    let done = loop {
        match dash.next().await {
            Incoming::Event(e) if e["type"] == "sample" => replayed += 1,
            Incoming::Event(e) if e["type"] == "replayed" => break e,
            Incoming::Event(_) => {}
            other => panic!("the dashboard was cut off after {replayed} samples: {other:?}"),
        }
    };
    assert_eq!(replayed, 100_000);
    assert_eq!(done["count"], 100_000, "{done}");
}

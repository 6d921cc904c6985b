//! Every resource bounded in bytes, System 1: flattening can make a request's stream entry
//! about seventeen times its body (one long group name repeated in every short leaf), so
//! entries, worker reads and Pub/Sub messages are bounded in bytes, not only in counts.

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Request;
use hyper_util::rt::TokioIo;
use ingest::Role;
use serde_json::Value;
use tokio::sync::mpsc;

/// An entry as `XRANGE` returns it: id, then field/value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// Redis's default `client-output-buffer-limit pubsub` hard limit, 32 MB.
const PUBSUB_HARD_LIMIT: usize = 32 << 20;

/// A sample whose stored form is about nineteen times its JSON: a 120-character group name
/// over 256 one- and two-character leaves.
fn wide(server: &str) -> String {
    let leaves: Vec<String> = (0..256).map(|i| format!("\"{i:x}\":1")).collect();
    format!(
        r#"{{"serverId":"{server}","metrics":{{"{}":{{{}}}}}}}"#,
        "g".repeat(120),
        leaves.join(",")
    )
}

/// A JSON array of `n` copies of `one`.
fn batch(one: &str, n: usize) -> String {
    format!("[{}]", vec![one; n].join(","))
}

/// What `samples` take as one stream entry written by `node` now.
fn stored_size(body: &str, node: &str) -> usize {
    let now = metrics_model::now_ms();
    let mut buf = body.as_bytes().to_vec();
    let samples = metrics_model::decode::Decoder::default()
        .decode_json(&mut buf, now)
        .expect("valid samples");
    ingest::wire::encode_entry(now, node, &samples).len()
}

async fn stats(addr: std::net::SocketAddr) -> Value {
    let (status, body) = http_get(addr, "/stats", "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("stats JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_flattens_past_the_entry_limit_is_refused_and_agents_go_on() {
    let redis = Redis::start();
    let s = settings(&redis);
    let node = s.node_id.clone();
    let srv = start(s).await;
    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;

    // Just under the 1 MiB body limit; about 19 MiB once flattened.
    let one = wide("blown");
    let body = batch(&one, (1 << 20) / (one.len() + 1) - 1);
    assert!(body.len() <= 1 << 20);
    let size = stored_size(&body, &node);
    assert!(size > 16 * body.len(), "{size} from {}", body.len());
    let r = post(srv.addr, &Transport::H2c, "application/json", body).await;
    assert_eq!(r.status, 413, "{}", r.body);
    for part in [
        "4194304 bytes",
        "--max-entry-bytes",
        &format!("{size} bytes"),
    ] {
        assert!(r.body.contains(part), "names {part}: {}", r.body);
    }
    assert_eq!(xlen(&redis), 0, "nothing of it stored");

    // A normal agent's sample goes end to end.
    post_accepted(srv.addr, &Transport::H2c, sample("agent", 7.5)).await;
    let e = dash.next_of("sample").await;
    assert_eq!(
        (&e["serverId"], &e["metrics"]["cpu"]),
        (&Value::from("agent"), &Value::from(7.5))
    );
    assert_eq!(stats(srv.addr).await["front"]["tooLarge"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_chunk_past_the_entry_limit_is_split_into_entries_under_it() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    // The floor: one wide sample (about 32 KiB stored) per entry.
    let max_entry = 64 << 10;
    s.max_entry_bytes = max_entry;
    let srv = start(s).await;

    let tcp = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("h1");
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
    let body = StreamBody::new(Box::pin(futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
    )));
    let req = Request::post(format!("http://{}/metrics/stream", srv.addr))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .expect("request");
    // One chunk of 40 lines: about 1.3 MB once flattened, twenty times the entry limit.
    let lines = 40u64;
    let chunk = format!("{}\n", vec![wide("streamed"); lines as usize].join("\n"));
    tx.send(Ok(Frame::data(Bytes::from(chunk))))
        .await
        .expect("send");
    drop(tx);
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let acks = resp.into_body().collect().await.expect("acks").to_bytes();
    let mut total = 0;
    for line in String::from_utf8_lossy(&acks).lines() {
        let v: Value = serde_json::from_str(line).expect("JSON line");
        assert!(v.get("error").is_none(), "no line refused: {v}");
        total = v["total"].as_u64().expect("total");
    }
    assert_eq!(total, lines, "every line acknowledged: {acks:?}");

    let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
        .arg("metrics:samples")
        .arg("-")
        .arg("+")
        .query(&mut redis.conn())
        .expect("XRANGE");
    assert!(entries.len() > 1, "split into several entries");
    let mut samples = 0;
    for (id, fields) in &entries {
        let value = &fields[0].1;
        assert!(
            value.len() <= max_entry,
            "entry {id}: {} bytes",
            value.len()
        );
        samples += value
            .split(|&b| b == b'\n')
            .skip(1)
            .filter(|l| !l.is_empty())
            .count();
    }
    assert_eq!(samples as u64, lines, "each sample stored once");
}

/// Every message published on the events channel, as a subscriber of our own sees it: the
/// largest one, and the sample and window events in all.
struct Subscriber {
    largest: Arc<AtomicUsize>,
    events: Arc<AtomicU64>,
    windows: Arc<AtomicU64>,
}

impl Subscriber {
    async fn start(redis: &Redis) -> Self {
        let client = redis::Client::open(redis.url()).expect("client");
        let mut ps = client.get_async_pubsub().await.expect("pubsub");
        ps.subscribe("metrics:events").await.expect("subscribe");
        let (largest, events) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicU64::new(0)));
        let windows = Arc::new(AtomicU64::new(0));
        let (l, e, w) = (largest.clone(), events.clone(), windows.clone());
        tokio::spawn(async move {
            let mut messages = ps.on_message();
            while let Some(m) = messages.next().await {
                let p = m.get_payload_bytes();
                l.fetch_max(p.len(), Relaxed);
                let n = p
                    .split(|&b| b == b'\n')
                    .filter(|l| l.starts_with(b"S\t"))
                    .count();
                e.fetch_add(n as u64, Relaxed);
                let n = p
                    .split(|&b| b == b'\n')
                    .filter(|l| l.starts_with(b"W\t"))
                    .count();
                w.fetch_add(n as u64, Relaxed);
            }
        });
        Self {
            largest,
            events,
            windows,
        }
    }
}

/// The ids of the Pub/Sub clients connected to Redis.
fn pubsub_clients(redis: &Redis) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut redis.conn())
        .expect("CLIENT LIST");
    let mut ids: Vec<String> = list
        .lines()
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    ids.sort();
    ids
}

/// A burst of the largest entries the front door allows, all waiting when the worker starts:
/// with messages bounded in bytes, no message passes `--pubsub-message-bytes`, neither the
/// broadcaster nor another subscriber is disconnected by Redis's Pub/Sub output limit, and
/// every sample is published to it. (Before, the worker published the whole read as one
/// message of over 32 MB, and Redis cut both subscribers off.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_the_largest_entries_never_disconnects_the_broadcaster() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    // A debug build takes a while over 40 MB: no timeout or claim should replay a batch here.
    s.redis_timeout = Duration::from_secs(20);
    s.claim_idle = Duration::from_secs(20);
    let (max_entry, max_message) = (4 << 20, 1 << 20);
    let front = start_role(s.clone(), Role::Front).await;
    // As many wide samples per request as the entry limit allows.
    let one = wide("burst");
    let per_sample = stored_size(&batch(&one, 2), &s.node_id) - stored_size(&one, &s.node_id);
    let per_request = (max_entry - 1024) / per_sample;
    let body = batch(&one, per_request);
    assert!(stored_size(&body, &s.node_id) <= max_entry);
    let requests = PUBSUB_HARD_LIMIT / max_entry + 2;
    for _ in 0..requests {
        post_accepted(front.addr, &Transport::H2c, body.clone()).await;
    }
    let total = (requests * per_request) as u64;

    let broadcaster = start_role(s.clone(), Role::Broadcaster).await;
    let sub = Subscriber::start(&redis).await;
    let mut connected = Value::Null;
    for _ in 0..200 {
        connected = stats(broadcaster.addr).await["broadcaster"]["connected"].clone();
        if connected == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(connected, true, "the broadcaster subscribed");
    let clients = pubsub_clients(&redis);
    assert_eq!(clients.len(), 2, "the broadcaster and ours");

    let worker = start_role(s, Role::Worker).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while sub.events.load(Relaxed) < total && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let largest = sub.largest.load(Relaxed);
    assert!(largest <= max_message, "a message of {largest} bytes");
    assert_eq!(
        sub.events.load(Relaxed),
        total,
        "every sample published once; worker: {}",
        stats(worker.addr).await["worker"]
    );
    // The same two connections, neither ever cut off: the broadcaster received every message.
    assert_eq!(pubsub_clients(&redis), clients, "the same two connections");
    // Its count includes window events; it may still be relaying the last messages.
    let mut b = Value::Null;
    while tokio::time::Instant::now() < deadline {
        b = stats(broadcaster.addr).await["broadcaster"].clone();
        if b["events"].as_u64().expect("events") >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        (&b["reconnects"], &b["connected"]),
        (&Value::from(0), &Value::from(true)),
        "{b}"
    );
    assert!(b["events"].as_u64().expect("events") >= total, "{b}");
}

/// While Redis is stalled, the front door's queue to it holds at most `--writer-queue-bytes`:
/// requests past it get 503 with `Retry-After` at once, naming the flag; once Redis is back,
/// agents are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_to_redis_is_bounded_in_bytes() {
    let mut redis = Redis::start();
    let mut s = settings(&redis);
    s.role = Role::Front;
    s.max_entry_bytes = 64 << 10;
    // Room for one wide sample (about 32 KiB stored), not two.
    s.writer_queue_bytes = 64 << 10;
    let srv = start(s).await;
    post_accepted(srv.addr, &Transport::H2c, wide("before")).await;

    redis.pause();
    let mut tasks = Vec::new();
    for i in 0..3 {
        let addr = srv.addr;
        tasks.push(tokio::spawn(async move {
            post(
                addr,
                &Transport::H2c,
                "application/json",
                wide(&format!("w{i}")),
            )
            .await
        }));
    }
    let mut full = 0;
    for t in tasks {
        let r = t.await.expect("request");
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.headers["retry-after"], "1");
        if r.body.contains("--writer-queue-bytes") {
            full += 1;
        }
    }
    assert_eq!(
        full, 2,
        "one request held the queue, the other two were refused for it"
    );
    redis.resume();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = post(
            srv.addr,
            &Transport::H2c,
            "application/json",
            sample("after", 1.0),
        )
        .await;
        if r.status == 202 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "served again: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stats(srv.addr).await["front"]["queueFull"], 2);
    redis.stop();
}

/// One window close over many servers makes a window event per server: as one message (and
/// one window-log entry) they passed `--pubsub-message-bytes`, and with enough servers would
/// pass Redis's Pub/Sub limit. The window leader splits them into messages under the bound,
/// and every window still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_of_many_servers_are_published_in_bounded_messages() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    let max_message = 64 << 10;
    s.pubsub_message_bytes = max_message;
    s.edge.windows = metrics_model::window::WindowSpec::parse_list("1s").expect("windows");
    let sub = Subscriber::start(&redis).await;
    let srv = start(s).await;
    let servers = 1_000usize;
    for r in 0..10 {
        let body: Vec<String> = (0..servers / 10)
            .map(|i| format!(r#"{{"serverId":"srv-{r}-{i}","metrics":{{"cpu":{i},"mem":1.5}}}}"#))
            .collect();
        post_accepted(srv.addr, &Transport::H2c, format!("[{}]", body.join(","))).await;
    }
    // A window per server and one across them ("*"), at least once each.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sub.windows.load(Relaxed) < servers as u64 + 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sub.windows.load(Relaxed) > servers as u64,
        "{} window events",
        sub.windows.load(Relaxed)
    );
    let largest = sub.largest.load(Relaxed);
    assert!(largest <= max_message, "a message of {largest} bytes");
    let logged: u64 = redis::cmd("XLEN")
        .arg("metrics:windows:log")
        .query(&mut redis.conn())
        .expect("XLEN");
    assert!(
        logged > 1,
        "the windows were split over {logged} log entries"
    );
}

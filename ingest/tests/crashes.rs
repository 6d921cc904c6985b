//! Crashes and lost links against a real redis-server and real processes: the broadcaster's
//! catch-up when workers publish out of order, Redis killed and restarted on its append-only
//! file, the window leader and the broadcaster killed, System 1 stopped with SIGTERM under
//! load. Each test counts, by sample id, what every acknowledged sample became on a dashboard.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ingest::Role;
use serde_json::Value;

/// A child process of the `ingest` binary, killed when dropped.
struct Proc {
    child: Child,
    /// Its plain listener, when it has one.
    addr: Option<SocketAddr>,
}

impl Proc {
    /// Starts `ingest ARGS` (with `env`); waits for its listener's address when `listens`.
    fn start(args: &[&str], env: &[(&str, &str)], listens: bool) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ingest"));
        cmd.args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn the ingest binary");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = listens.then(|| loop {
            let line = lines
                .next()
                .expect("the process printed its address")
                .expect("stdout");
            if let Some(rest) = line.strip_prefix("listening on http://") {
                let a = rest.split('/').next().expect("address");
                break a.parse().expect("socket address");
            }
        });
        // Keep reading so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Self { child, addr }
    }

    fn addr(&self) -> SocketAddr {
        self.addr.expect("listens")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Waits up to `limit` for the process to exit.
    fn exited_within(&mut self, limit: Duration) -> bool {
        let end = std::time::Instant::now() + limit;
        while std::time::Instant::now() < end {
            if self.child.try_wait().expect("wait").is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `ingest worker` against `redis` (no claims within a test unless `claim_idle_ms` says so).
fn worker(redis: &Redis, name: &str, claim_idle_ms: u64, env: &[(&str, &str)]) -> Proc {
    let claim = claim_idle_ms.to_string();
    Proc::start(
        &[
            "worker",
            "--listen",
            "off",
            "--redis-url",
            &redis.url(),
            "--node-id",
            name,
            "--claim-idle-ms",
            &claim,
            "--lease-ms",
            "600",
            "--windows",
            "200ms",
        ],
        env,
        false,
    )
}

/// One sample `POST /metrics` over HTTP/1.1 on a fresh connection: its status, or `None`
/// when the connection failed (the server is gone or going).
async fn try_post(addr: SocketAddr, server: &str) -> Option<u16> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    let io = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = hyper::Request::post(format!("http://{addr}/metrics"))
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(sample(server, 1.0))))
            .ok()?;
        let resp = s.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await.ok()?;
        Some(status)
    };
    tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .ok()
        .flatten()
}

/// Load: `tasks` posters, each posting `per_task` one-sample requests in turn (server ids
/// `{prefix}{task}-{n}`, each once); returns the server ids that got `202`.
fn load(
    addr: SocketAddr,
    prefix: &str,
    tasks: usize,
    per_task: usize,
) -> (
    Arc<Mutex<HashSet<String>>>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let handles = (0..tasks)
        .map(|t| {
            let (acked, prefix) = (acked.clone(), prefix.to_string());
            tokio::spawn(async move {
                for n in 0..per_task {
                    let id = format!("{prefix}{t}-{n}");
                    if try_post(addr, &id).await == Some(202) {
                        acked.lock().expect("lock").insert(id);
                    }
                }
            })
        })
        .collect();
    (acked, handles)
}

async fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + limit;
    while !ok() {
        assert!(
            tokio::time::Instant::now() < end,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the broadcaster at `addr` has subscribed and caught up (its first catch-up
/// relays what is in the stream above its first watermark, published or not: a test that
/// wants a sample held back posts it only after this).
async fn caught_up(addr: SocketAddr) {
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = metrics_edge::testing::http_get(addr, "/stats", "").await;
        let stats: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if status == 200 && stats["broadcaster"]["connected"] == true {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the broadcaster never subscribed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a dashboard received: sample ids (by server id) with how often, and window events.
#[derive(Default)]
struct Received {
    /// server id -> sample ids received for it (a repeat is the same id again).
    samples: HashMap<String, Vec<String>>,
    windows: Vec<Value>,
    max_id: Option<ingest::keys::Position>,
}

impl Received {
    fn take(&mut self, e: Value) {
        match e["type"].as_str() {
            Some("sample") => {
                let id = e["id"].as_str().expect("sample id").to_string();
                let p = ingest::keys::Position::parse(&id).expect("position");
                self.max_id = Some(self.max_id.map_or(p, |m| m.max(p)));
                self.samples
                    .entry(e["serverId"].as_str().expect("server").to_string())
                    .or_default()
                    .push(id);
            }
            Some("window") => self.windows.push(e),
            _ => {}
        }
    }

    /// Reads `dash` until `done(self)`, failing when nothing comes for 15 s.
    async fn read_until(&mut self, dash: &mut Peer, done: impl Fn(&Self) -> bool) {
        while !done(self) {
            match tokio::time::timeout(Duration::from_secs(15), dash.rx.recv()).await {
                Ok(Some(Incoming::Event(e))) => self.take(e),
                Ok(Some(Incoming::Ping)) => {}
                Ok(other) => panic!("dashboard: {other:?}"),
                Err(_) => panic!(
                    "the dashboard waits in vain; it has samples of {} servers and {} windows",
                    self.samples.len(),
                    self.windows.len()
                ),
            }
        }
    }

    fn has_all(&self, servers: &HashSet<String>) -> bool {
        servers.iter().all(|s| self.samples.contains_key(s))
    }

    /// Samples received more than once, and the acknowledged ones never received.
    fn repeats_and_missing(&self, acked: &HashSet<String>) -> (usize, Vec<String>) {
        let repeats = self.samples.values().map(|ids| ids.len() - 1).sum();
        let missing = acked
            .iter()
            .filter(|s| !self.samples.contains_key(*s))
            .cloned()
            .collect();
        (repeats, missing)
    }
}

/// Entries the workers' group has not read yet, plus those pending: 0 when all are done.
fn unfinished(redis: &Redis) -> u64 {
    let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg("metrics:samples")
        .query(&mut redis.conn())
        .unwrap_or_default();
    let lag = groups
        .iter()
        .find(|g| g.get("name") == Some(&redis::Value::BulkString(b"workers".to_vec())))
        .and_then(|g| match g.get("lag") {
            Some(redis::Value::Int(n)) => Some(*n as u64),
            _ => None,
        })
        .unwrap_or(u64::MAX);
    lag.saturating_add(pending(redis))
}

/// The window log's entries after `after` (an entry id; `-` for all): ids and window events.
fn window_log(redis: &Redis, after: &str) -> Vec<(String, Vec<Value>)> {
    let start = if after == "-" {
        "-".to_string()
    } else {
        format!("({after}")
    };
    let entries: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
        .arg("metrics:windows:log")
        .arg(start)
        .arg("+")
        .query(&mut redis.conn())
        .expect("XRANGE");
    entries
        .into_iter()
        .map(|(id, fields)| {
            let lines = String::from_utf8(fields["e"].clone()).expect("utf-8");
            let windows = lines
                .lines()
                .filter_map(|l| l.splitn(4, '\t').nth(3))
                .map(|json| serde_json::from_str(json).expect("window JSON"))
                .collect();
            (id, windows)
        })
        .collect()
}

fn last_window_log_id(redis: &Redis) -> String {
    window_log(redis, "-")
        .last()
        .map_or("0-0".to_string(), |(id, _)| id.clone())
}

/// Workers publish out of order (one holds an early batch while another publishes later
/// ones), and the broadcaster's link to Redis is cut meanwhile: the early batch, the samples
/// acknowledged during the cut, and the windows closed during it all reach a connected
/// dashboard once the link is back, each sample once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcaster_recovers_out_of_order_samples_and_windows_after_losing_its_link() {
    let redis = Redis::start();
    // The broadcaster logs in as a user of its own, so the test can lock it out of Redis
    // (and cut its connections) while the workers go on.
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "bcast", "on", ">pw", "~*", "&*", "+@all"][..])
        .query(&mut redis.conn())
        .expect("ACL SETUSER");
    let mut s = settings(&redis);
    s.edge.windows = metrics_model::window::WindowSpec::parse_list("200ms").expect("windows");
    let front = start_role(s.clone(), Role::Front).await;
    let mut bs = s;
    bs.redis_url = format!("redis://bcast:pw@127.0.0.1:{}", redis.port);
    let broadcaster = start_role(bs, Role::Broadcaster).await;
    caught_up(broadcaster.addr).await;
    let mut dash = connect(broadcaster.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    let mut got = Received::default();

    // The slow worker takes sample "early" and holds it for 6 s before publishing it.
    let _slow = worker(&redis, "slow", 60_000, &[("INGEST_FAULT_PAUSE_MS", "6000")]);
    post_accepted(front.addr, &Transport::Http1, sample("early", 1.0)).await;
    wait_until(
        "the slow worker took the early sample",
        Duration::from_secs(10),
        || pending(&redis) == 1,
    )
    .await;
    // A second worker publishes later samples meanwhile: positions arrive out of order.
    let _fast = worker(&redis, "fast", 60_000, &[]);
    let before: HashSet<String> = (0..20).map(|i| format!("before{i}")).collect();
    for s in &before {
        post_accepted(front.addr, &Transport::Http1, sample(s, 1.0)).await;
    }
    got.read_until(&mut dash, |g| g.has_all(&before)).await;
    assert!(
        !got.samples.contains_key("early"),
        "the early sample is still held by the slow worker"
    );

    // Cut the broadcaster off; the early sample, new samples and windows are published.
    let cut_at = last_window_log_id(&redis);
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "bcast", "off"][..])
        .query(&mut redis.conn())
        .expect("ACL off");
    let _: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "USER", "bcast"][..])
        .query(&mut redis.conn())
        .expect("CLIENT KILL");
    assert_eq!(pending(&redis), 1, "the early sample is not published yet");
    let during: HashSet<String> = (0..20).map(|i| format!("during{i}")).collect();
    for s in &during {
        post_accepted(front.addr, &Transport::Http1, sample(s, 1.0)).await;
    }
    wait_until(
        "the workers published everything",
        Duration::from_secs(20),
        || unfinished(&redis) == 0,
    )
    .await;
    wait_until(
        "windows of the cut were published",
        Duration::from_secs(10),
        || {
            window_log(&redis, &cut_at)
                .iter()
                .flat_map(|(_, w)| w)
                .any(|w| w["serverId"] == "during0")
        },
    )
    .await;
    let missed_windows: Vec<Value> = window_log(&redis, &cut_at)
        .into_iter()
        .flat_map(|(_, w)| w)
        .collect();

    // Let the broadcaster back in: it catches up.
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "bcast", "on"][..])
        .query(&mut redis.conn())
        .expect("ACL on");
    let acked: HashSet<String> = before
        .iter()
        .chain(&during)
        .cloned()
        .chain(["early".to_string()])
        .collect();
    let want_windows: HashSet<String> = missed_windows.iter().map(|w| w.to_string()).collect();
    got.read_until(&mut dash, |g| {
        g.has_all(&acked)
            && want_windows.is_subset(&g.windows.iter().map(|w| w.to_string()).collect())
    })
    .await;
    // A last sample, live: anything the catch-up would repeat has arrived before it.
    post_accepted(front.addr, &Transport::Http1, sample("last", 1.0)).await;
    got.read_until(&mut dash, |g| g.samples.contains_key("last"))
        .await;
    let (repeats, missing) = got.repeats_and_missing(&acked);
    println!(
        "{} samples acknowledged, {} windows published during the cut; {repeats} repeats",
        acked.len(),
        missed_windows.len()
    );
    assert!(
        missing.is_empty(),
        "never reached the dashboard: {missing:?}"
    );
    // No worker re-published anything (no claims: --claim-idle-ms 60000), and the
    // broadcaster relays each position once, catch-up or live.
    assert_eq!(repeats, 0, "samples relayed twice: {:?}", got.samples);
}

/// Every entry's samples in the stream, by server id.
fn stream_servers(redis: &Redis) -> HashSet<String> {
    let entries: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
        .arg("metrics:samples")
        .arg("-")
        .arg("+")
        .query(&mut redis.conn())
        .expect("XRANGE");
    entries
        .iter()
        .flat_map(|(_, f)| {
            let text = String::from_utf8_lossy(&f["e"]).into_owned();
            text.lines()
                .skip(1)
                .map(|l| {
                    let v: Value = serde_json::from_str(l).expect("stored sample");
                    v["serverId"].as_str().expect("server").to_string()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn join(posters: Vec<tokio::task::JoinHandle<()>>) {
    for p in posters {
        p.await.expect("poster");
    }
}

fn snapshot(acked: &Arc<Mutex<HashSet<String>>>) -> HashSet<String> {
    acked.lock().expect("lock").clone()
}

/// Redis SIGKILLed under load and started again on its data directory, with
/// `appendfsync always`: every sample acknowledged before, during or after reaches a
/// dashboard that reconnects with `?since=`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_with_aof_always_loses_no_acknowledged_sample() {
    let mut redis = Redis::start_aof("always");
    let system = start(settings(&redis)).await;
    let mut dash = connect(system.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    let mut got = Received::default();
    let (acked, posters) = load(system.addr, "a", 4, 75);
    got.read_until(&mut dash, |g| g.samples.len() >= 60).await;
    redis.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    join(posters).await;
    let before = snapshot(&acked).len();
    // Load again once the front door answers: those acknowledged count too.
    let (again, posters) = load(system.addr, "c", 4, 25);
    join(posters).await;
    let mut acked = snapshot(&acked);
    let after = snapshot(&again);
    assert!(!after.is_empty(), "the front door recovers with Redis");
    acked.extend(after);
    println!(
        "{before} acknowledged around the Redis kill, {} in all",
        acked.len()
    );
    // The dashboard goes away once the workers are done (a batch delivered just before the
    // kill is claimed back after --claim-idle-ms and published after later ones: a replay from
    // the `?since=` id alone would skip it), and comes back with the greatest id it saw.
    wait_until(
        "the workers processed everything",
        Duration::from_secs(20),
        || unfinished(&redis) == 0,
    )
    .await;
    while let Ok(Some(Incoming::Event(e))) =
        tokio::time::timeout(Duration::from_millis(500), dash.rx.recv()).await
    {
        got.take(e);
    }
    drop(dash);
    let since = got.max_id.expect("samples seen").to_string();
    let mut dash = connect(system.addr, &format!("/ws?since={since}"))
        .await
        .expect("dashboard again");
    got.read_until(&mut dash, |g| g.has_all(&acked)).await;
    let (repeats, missing) = got.repeats_and_missing(&acked);
    println!(
        "{} acknowledged across a Redis restart; {repeats} received twice (a worker's batch published but not yet acknowledged when Redis died is published again)",
        acked.len()
    );
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
}

/// The broadcaster process SIGKILLed under load and started again: a dashboard that
/// reconnects with `?since=` the greatest id it saw gets every sample; those it had already
/// (from the watermark the old broadcaster had confirmed before relaying that id) come again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcaster_killed_and_restarted_dashboards_resume_with_since_missing_nothing() {
    let redis = Redis::start();
    let s = settings(&redis);
    let front = start_role(s.clone(), Role::Front).await;
    // One worker: samples are published in stream order, so "the last id seen" is a cursor.
    let _worker = start_role(s, Role::Worker).await;
    let (url, listen) = (redis.url(), format!("127.0.0.1:{}", free_port()));
    let args = ["broadcaster", "--listen", &listen, "--redis-url", &url];
    let mut b = Proc::start(&args, &[], true);
    caught_up(b.addr()).await;
    let mut dash = connect(b.addr(), "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    let mut got = Received::default();
    let (acked, posters) = load(front.addr, "b", 4, 60);
    got.read_until(&mut dash, |g| g.samples.len() >= 40).await;
    b.kill();
    // What was already on its way to the dashboard still counts.
    while let Ok(Some(Incoming::Event(e))) =
        tokio::time::timeout(Duration::from_secs(5), dash.rx.recv()).await
    {
        got.take(e);
    }
    let b = Proc::start(&args, &[], true);
    join(posters).await;
    let acked = snapshot(&acked);
    assert_eq!(
        acked.len(),
        240,
        "the front door acknowledged every request"
    );
    let since = got.max_id.expect("samples seen").to_string();
    let mut dash = connect(b.addr(), &format!("/ws?since={since}"))
        .await
        .expect("dashboard again");
    got.read_until(&mut dash, |g| g.has_all(&acked)).await;
    post_accepted(front.addr, &Transport::Http1, sample("last", 1.0)).await;
    got.read_until(&mut dash, |g| g.samples.contains_key("last"))
        .await;
    let (repeats, missing) = got.repeats_and_missing(&acked);
    println!(
        "{} acknowledged across a broadcaster restart; {repeats} received twice (the replay starts at a watermark confirmed before the resume id was relayed)",
        acked.len()
    );
    assert!(
        missing.is_empty(),
        "never reached the dashboard: {missing:?}"
    );
}

/// Reads `dash` until the `replayed` event: the samples before it (server id, sample id), and
/// the event.
async fn read_replay(dash: &mut Peer) -> (Vec<(String, String)>, Value) {
    let mut samples = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(15), dash.rx.recv()).await {
            Ok(Some(Incoming::Event(e))) if e["type"] == "sample" => samples.push((
                e["serverId"].as_str().expect("server").to_string(),
                e["id"].as_str().expect("id").to_string(),
            )),
            Ok(Some(Incoming::Event(e))) if e["type"] == "replayed" => return (samples, e),
            Ok(Some(Incoming::Event(_) | Incoming::Ping)) => {}
            Ok(other) => panic!("dashboard: {other:?}"),
            Err(_) => panic!("no replayed event; samples so far: {samples:?}"),
        }
    }
}

/// Workers publish out of order while a dashboard is away: one worker holds an early sample
/// (paused between reading and publishing it) while another publishes later ones; the
/// dashboard gets the later ones and leaves; the holder is SIGKILLed and a third worker
/// re-claims the early sample and publishes it. The dashboard reconnects with `?since=` the
/// greatest id it saw (above the early sample's) and still gets the early sample; the later
/// ones come again, counted as duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_replay_includes_a_sample_published_out_of_order_below_since() {
    let redis = Redis::start();
    let s = settings(&redis);
    let front = start_role(s.clone(), Role::Front).await;
    let dashboards = start_role(s, Role::Broadcaster).await;
    caught_up(dashboards.addr).await;
    let mut dash = connect(dashboards.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;

    let mut holder = worker(
        &redis,
        "holder",
        60_000,
        &[("INGEST_FAULT_PAUSE_MS", "60000")],
    );
    post_accepted(front.addr, &Transport::Http1, sample("early", 1.0)).await;
    wait_until(
        "the holder read the early sample",
        Duration::from_secs(10),
        || pending(&redis) == 1,
    )
    .await;
    let _later_worker = worker(&redis, "later", 60_000, &[]);
    const LATER: usize = 10;
    let later: HashSet<String> = (0..LATER).map(|i| format!("later-{i}")).collect();
    for server in &later {
        post_accepted(front.addr, &Transport::Http1, sample(server, 2.0)).await;
    }
    let mut got = Received::default();
    got.read_until(&mut dash, |g| g.has_all(&later)).await;
    assert!(
        !got.samples.contains_key("early"),
        "the early sample is still held"
    );
    drop(dash);
    let since = got.max_id.expect("samples seen");

    // While the dashboard is away, the early sample is re-claimed and published.
    holder.kill();
    let _reclaimer = worker(&redis, "reclaimer", 100, &[]);
    wait_until(
        "the early sample re-claimed and acknowledged",
        Duration::from_secs(20),
        || unfinished(&redis) == 0,
    )
    .await;

    let mut dash = connect(dashboards.addr, &format!("/ws?since={since}"))
        .await
        .expect("dashboard again");
    let (replayed, end) = read_replay(&mut dash).await;
    let early: Vec<&String> = replayed
        .iter()
        .filter(|(server, _)| server == "early")
        .map(|(_, id)| id)
        .collect();
    let duplicates = replayed
        .iter()
        .filter(|(server, _)| server != "early")
        .count();
    println!(
        "resumed at {since}: replayed from {} {} samples, the early one ({early:?}) and {duplicates} the dashboard had",
        end["from"], end["count"]
    );
    assert_eq!(
        early.len(),
        1,
        "the early sample replayed once: {replayed:?}"
    );
    let early_id = ingest::keys::Position::parse(early[0]).expect("id");
    assert!(early_id < since, "the early sample is below since");
    assert_eq!(end["count"], replayed.len(), "{end}");
    assert_eq!(end["complete"], true, "{end}");
    assert!(
        duplicates <= LATER,
        "only samples the dashboard had come again: {replayed:?}"
    );
}

/// `ingest all` SIGTERMed under load: every `202` is in the stream and reaches a worker
/// started afterwards, dashboards get 1001, the process exits within `--drain-ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_keeps_every_acknowledged_sample_and_closes_dashboards_with_1001() {
    let redis = Redis::start();
    let url = redis.url();
    let drain_ms = 3_000u64;
    let drain = drain_ms.to_string();
    let mut system = Proc::start(
        &[
            "all",
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            &url,
            "--drain-ms",
            &drain,
        ],
        &[],
        true,
    );
    let addr = system.addr();
    let mut dash = connect(addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    let (acked, posters) = load(addr, "t", 8, 400);
    wait_until("requests acknowledged", Duration::from_secs(20), || {
        acked.lock().expect("lock").len() >= 100
    })
    .await;
    system.signal("-TERM");
    let exited = tokio::task::spawn_blocking(move || {
        let ok = system.exited_within(Duration::from_millis(drain_ms) + Duration::from_secs(10));
        (ok, system)
    });
    assert_eq!(
        dash.close_code().await,
        Some(1001),
        "dashboard closed as going away"
    );
    let (ok, _system) = exited.await.expect("waiter");
    assert!(ok, "the process exits within --drain-ms (+10 s)");
    join(posters).await;
    let acked = snapshot(&acked);
    let stored = stream_servers(&redis);
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "202'd but not in the stream: {lost:?}");
    // A worker started afterwards processes every one of them.
    let _worker = start_role(settings(&redis), Role::Worker).await;
    wait_until(
        "a new worker processed the stream",
        Duration::from_secs(20),
        || unfinished(&redis) == 0,
    )
    .await;
    println!(
        "{} acknowledged before SIGTERM, all stored and processed",
        acked.len()
    );
}

/// The window leader SIGKILLed: another worker takes the lease; per-server windows count
/// each sample at most once, and exactly once when its window closed before the death or it
/// arrived after the takeover. Samples reach dashboards either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_leader_killed_windows_count_each_sample_at_most_once() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    s.edge.windows = metrics_model::window::WindowSpec::parse_list("200ms").expect("windows");
    let front = start_role(s.clone(), Role::Front).await;
    let dashboards = start_role(s, Role::Broadcaster).await;
    let mut dash = connect(dashboards.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    let mut leader = worker(&redis, "w1", 500, &[]);
    let leader_is = |name: &str| {
        redis::cmd("GET")
            .arg("metrics:windows:leader")
            .query::<Option<String>>(&mut redis.conn())
            .ok()
            .flatten()
            .as_deref()
            == Some(name)
    };
    wait_until("w1 leads", Duration::from_secs(10), || leader_is("w1")).await;
    let _other = worker(&redis, "w2", 500, &[]);

    // Counted per server: each server sends one sample.
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut got = Received::default();
    let names = |p: &str| {
        (0..20)
            .map(|i| format!("{p}{i}"))
            .collect::<HashSet<String>>()
    };
    let (before, at_death, after) = (names("p"), names("k"), names("q"));
    let has_windows = |counts: &HashMap<String, u64>, set: &HashSet<String>| {
        set.iter().all(|s| counts.contains_key(s))
    };
    for s in &before {
        post_accepted(front.addr, &Transport::Http1, sample(s, 1.0)).await;
    }
    let read = |got: &mut Received, counts: &mut HashMap<String, u64>, e: Value| {
        if e["type"] == "window" {
            let n = e["stats"]["cpu"]["count"].as_u64().expect("count");
            *counts
                .entry(e["serverId"].as_str().expect("server").to_string())
                .or_default() += n;
        }
        got.take(e);
    };
    while !has_windows(&counts, &before) {
        match dash.next().await {
            Incoming::Event(e) => read(&mut got, &mut counts, e),
            other => panic!("{other:?}"),
        }
    }
    for s in &at_death {
        post_accepted(front.addr, &Transport::Http1, sample(s, 1.0)).await;
    }
    leader.kill();
    for s in &after {
        post_accepted(front.addr, &Transport::Http1, sample(s, 1.0)).await;
    }
    let all: HashSet<String> = before
        .iter()
        .chain(&at_death)
        .chain(&after)
        .cloned()
        .collect();
    while !(has_windows(&counts, &after) && got.has_all(&all)) {
        match dash.next().await {
            Incoming::Event(e) => read(&mut got, &mut counts, e),
            other => panic!("{other:?}"),
        }
    }
    assert!(leader_is("w2"), "w2 took the lease");
    for s in before.iter().chain(&after) {
        assert_eq!(counts[s], 1, "{s} counted once");
    }
    let lost = at_death.iter().filter(|s| !counts.contains_key(*s)).count();
    for s in &at_death {
        assert!(
            counts.get(s).copied().unwrap_or(0) <= 1,
            "{s} counted twice"
        );
    }
    println!(
        "{lost} of {} samples in windows open at the leader's death went uncounted",
        at_death.len()
    );
    let (_, missing) = got.repeats_and_missing(&all);
    assert!(missing.is_empty(), "samples reach dashboards: {missing:?}");
}

//! Workers: consume the stream in the `workers` group, publish `sample` events, keep per-server
//! snapshots, acknowledge; one worker at a time (the lease holder) also runs the window roll-up
//! from its own `windows` group.
//!
//! Each sample is enriched with its arrival time at the front door and that front door's node
//! id (the snapshot hash keeps both as `_arrival` and `_node`).
//!
//! Per consumed batch: one pipeline of `HSET` (one per server in the batch), `SADD`, one
//! `PUBLISH` per 2,048 events of the batch, and one `XACK`, sent after the events are
//! published. A worker killed mid-batch leaves its entries pending; every worker periodically
//! claims entries idle longer than `--claim-idle` (`XAUTOCLAIM`) and processes them, so nothing
//! acknowledged to an agent is lost. The price is at-least-once delivery: events of a batch that
//! was published but not yet acknowledged when its worker died are published again by the
//! worker that claims it, so a dashboard can see those samples twice (with the same `id`).
//!
//! Windows need every sample of a server in one place, which a consumer group does not give
//! (it spreads entries over workers). So windows come from a second group, `windows`, read by
//! exactly one worker: whoever holds the lease key. A new leader first claims what the old
//! one left pending. The roll-up state of windows still open when a leader dies is lost; the
//! next leader starts fresh windows (samples are not lost: they still reach dashboards).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::keys::{raw_entries, RawEntry};
use deadpool_redis::redis::{self, Value};
use deadpool_redis::{Connection, Pool};
use metrics_model::decode::Decoder;
use metrics_model::rollup::{ClosedWindow, Rollup};
use metrics_model::window::WindowSpec;
use metrics_model::{event, now_ms, Sample};
use tokio_util::sync::CancellationToken;

use crate::keys::{Keys, Position, WINDOWS_GROUP, WORKERS_GROUP};

/// Worker settings.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Consumer name, unique per worker process.
    pub name: String,
    /// Entries per read.
    pub batch: usize,
    /// Pending entries idle this long are claimed from their (presumably dead) consumer.
    pub claim_idle: Duration,
    pub windows: Vec<WindowSpec>,
    pub max_series: usize,
    /// Window leader lease.
    pub lease: Duration,
    /// Fault injection for tests: sleep this long between reading a batch and publishing it,
    /// so a test can kill the worker with the batch pending.
    pub pause_after_read: Option<Duration>,
}

/// Counters.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub entries: AtomicU64,
    pub samples: AtomicU64,
    pub claimed: AtomicU64,
    pub publishes: AtomicU64,
    pub windows: AtomicU64,
    pub errors: AtomicU64,
}

/// Most events in one Pub/Sub message: a message lands in a dashboard's queue at once, so it
/// must stay well below the queue's size (`--dashboard-queue`, default 16,384).
pub const MAX_EVENTS_PER_MESSAGE: u64 = 2048;

/// A stored entry, decoded.
pub struct Decoded {
    pub id: String,
    pub arrival_ms: u64,
    /// The front door that accepted it.
    pub node: String,
    pub samples: Vec<Sample>,
}

/// Decodes a stream entry written by the front door (taking its value out of `e`).
pub fn decode_entry(e: &mut RawEntry, decoder: &mut Decoder) -> Result<Decoded, String> {
    let mut value = match e.value.take() {
        Some(v) => v,
        None => {
            return Err(format!(
                "entry {} has no `{}` field",
                e.id,
                crate::keys::ENTRY_FIELD
            ))
        }
    };
    let (arrival_ms, node, ndjson) = crate::keys::split_entry_value(&mut value)
        .ok_or_else(|| format!("entry {} has no header line", e.id))?;
    let samples = decoder
        .decode_ndjson(ndjson, arrival_ms)
        .map_err(|err| format!("entry {}: {err}", e.id))?;
    Ok(Decoded {
        id: e.id.clone(),
        arrival_ms,
        node,
        samples,
    })
}

/// One line of a Pub/Sub batch: `kind TAB server TAB position TAB json`.
pub fn event_line(out: &mut Vec<u8>, kind: u8, server: &str, pos: Option<Position>, json: &[u8]) {
    out.push(kind);
    out.push(b'\t');
    out.extend_from_slice(server.as_bytes());
    out.push(b'\t');
    if let Some(p) = pos {
        out.extend_from_slice(p.to_string().as_bytes());
    }
    out.push(b'\t');
    out.extend_from_slice(json);
    out.push(b'\n');
}

/// Creates a consumer group if missing (from the start of the stream, so entries written
/// before any worker ran are processed too).
pub async fn ensure_group(
    conn: &mut Connection,
    keys: &Keys,
    group: &str,
) -> redis::RedisResult<()> {
    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&keys.stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match r {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Runs a worker until `shutdown`: the sample loop and the window loop.
pub async fn run(
    pool: Pool,
    keys: Keys,
    opts: WorkerOptions,
    stats: Arc<WorkerStats>,
    shutdown: CancellationToken,
) {
    let samples = tokio::spawn(sample_loop(
        pool.clone(),
        keys.clone(),
        opts.clone(),
        stats.clone(),
        shutdown.clone(),
    ));
    let windows = tokio::spawn(window_loop(pool, keys, opts, stats, shutdown));
    let _ = samples.await;
    let _ = windows.await;
}

async fn backoff(shutdown: &CancellationToken, attempt: &mut u32) {
    let ms = (100u64 << (*attempt).min(5)).min(3_000);
    *attempt += 1;
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
        _ = shutdown.cancelled() => {}
    }
}

async fn sample_loop(
    pool: Pool,
    keys: Keys,
    opts: WorkerOptions,
    stats: Arc<WorkerStats>,
    shutdown: CancellationToken,
) {
    let mut attempt = 0u32;
    let mut decoder = Decoder::default();
    'connect: while !shutdown.is_cancelled() {
        let mut conn = match pool.get().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "worker cannot reach Redis");
                backoff(&shutdown, &mut attempt).await;
                continue;
            }
        };
        if let Err(e) = ensure_group(&mut conn, &keys, WORKERS_GROUP).await {
            tracing::warn!(error = %e, "creating the consumer group failed");
            drop(Connection::take(conn));
            backoff(&shutdown, &mut attempt).await;
            continue;
        }
        let mut last_claim = tokio::time::Instant::now();
        loop {
            if shutdown.is_cancelled() {
                break 'connect;
            }
            let mut entries = Vec::new();
            if last_claim.elapsed() >= opts.claim_idle / 2 {
                last_claim = tokio::time::Instant::now();
                match claim(
                    &mut conn,
                    &keys,
                    WORKERS_GROUP,
                    &opts.name,
                    opts.claim_idle,
                    opts.batch,
                )
                .await
                {
                    Ok(c) => {
                        stats.claimed.fetch_add(c.len() as u64, Ordering::Relaxed);
                        entries = c;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "XAUTOCLAIM failed");
                        break;
                    }
                }
            }
            if entries.is_empty() {
                match read(
                    &mut conn,
                    &keys,
                    WORKERS_GROUP,
                    &opts.name,
                    opts.batch,
                    1000,
                )
                .await
                {
                    Ok(e) => entries = e,
                    Err(e) => {
                        tracing::warn!(error = %e, "XREADGROUP failed");
                        break;
                    }
                }
            }
            if entries.is_empty() {
                continue;
            }
            if let Some(pause) = opts.pause_after_read {
                tokio::time::sleep(pause).await;
            }
            if let Err(e) =
                publish_batch(&mut conn, &keys, &mut entries, &mut decoder, &stats).await
            {
                tracing::warn!(error = %e, "publishing a batch failed; it stays pending and will be claimed");
                break;
            }
            attempt = 0;
        }
        stats.errors.fetch_add(1, Ordering::Relaxed);
        drop(Connection::take(conn));
        backoff(&shutdown, &mut attempt).await;
    }
}

/// `XREADGROUP ... STREAMS stream >`; empty on timeout.
async fn read(
    conn: &mut Connection,
    keys: &Keys,
    group: &str,
    consumer: &str,
    count: usize,
    block_ms: u64,
) -> redis::RedisResult<Vec<RawEntry>> {
    let reply: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block_ms)
        .arg("STREAMS")
        .arg(&keys.stream)
        .arg(">")
        .query_async(conn)
        .await?;
    // `[[stream, entries]]`, or nil when BLOCK timed out.
    let Value::Array(streams) = reply else {
        return Ok(Vec::new());
    };
    Ok(streams
        .into_iter()
        .flat_map(|s| match s {
            Value::Array(mut kv) if kv.len() == 2 => kv.pop().map(raw_entries).unwrap_or_default(),
            _ => Vec::new(),
        })
        .collect())
}

/// Claims entries of `group` idle longer than `idle` (any consumer) for `consumer`.
async fn claim(
    conn: &mut Connection,
    keys: &Keys,
    group: &str,
    consumer: &str,
    idle: Duration,
    count: usize,
) -> redis::RedisResult<Vec<RawEntry>> {
    let reply: Value = redis::cmd("XAUTOCLAIM")
        .arg(&keys.stream)
        .arg(group)
        .arg(consumer)
        .arg(idle.as_millis() as u64)
        .arg("0-0")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    // `[next-cursor, entries, deleted-ids]`
    Ok(match reply {
        Value::Array(mut parts) if parts.len() >= 2 => raw_entries(parts.swap_remove(1)),
        _ => Vec::new(),
    })
}

async fn publish_batch(
    conn: &mut Connection,
    keys: &Keys,
    entries: &mut [RawEntry],
    decoder: &mut Decoder,
    stats: &WorkerStats,
) -> redis::RedisResult<()> {
    let mut lines = Vec::with_capacity(entries.len() * 256);
    let mut messages = Vec::new();
    // Latest sample per server in this batch, for the snapshot hashes.
    let mut latest: HashMap<String, (Sample, Position, u64, Arc<str>)> = HashMap::new();
    let mut n = 0u64;
    let mut json = Vec::with_capacity(256);
    for e in entries.iter_mut() {
        let d = match decode_entry(e, decoder) {
            Ok(d) => d,
            Err(msg) => {
                // Our own writes always decode; one that does not is reported, not retried forever.
                tracing::error!(entry = %e.id, error = %msg, "undecodable stream entry acknowledged without events");
                stats.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let node: Arc<str> = Arc::from(d.node.as_str());
        for (i, s) in d.samples.into_iter().enumerate() {
            let Some(pos) = Position::from_entry(&d.id, i as u32) else {
                continue;
            };
            json.clear();
            event::sample(&mut json, &s, Some(&pos.to_string()));
            event_line(&mut lines, b'S', &s.server_id, Some(pos), &json);
            n += 1;
            if n.is_multiple_of(MAX_EVENTS_PER_MESSAGE) {
                messages.push(std::mem::take(&mut lines));
            }
            latest.insert(s.server_id.clone(), (s, pos, d.arrival_ms, node.clone()));
        }
    }
    let mut pipe = redis::pipe();
    for (server, (s, pos, arrival, node)) in &latest {
        let key = keys.server(server);
        let mut cmd = redis::cmd("HSET");
        cmd.arg(&key)
            .arg("_timestamp")
            .arg(s.timestamp)
            .arg("_arrival")
            .arg(*arrival)
            .arg("_node")
            .arg(&**node)
            .arg("_id")
            .arg(pos.to_string());
        for (name, v) in s.metrics.iter() {
            let mut b = Vec::with_capacity(24);
            event::write_f64(&mut b, v);
            cmd.arg(name).arg(b);
        }
        pipe.add_command(cmd).ignore();
        pipe.cmd("SADD").arg(&keys.servers).arg(server).ignore();
    }
    if !lines.is_empty() {
        messages.push(lines);
    }
    for m in &messages {
        pipe.cmd("PUBLISH").arg(&keys.channel).arg(m).ignore();
    }
    let mut ack = redis::cmd("XACK");
    ack.arg(&keys.stream).arg(WORKERS_GROUP);
    for e in entries.iter() {
        ack.arg(&e.id);
    }
    pipe.add_command(ack).ignore();
    pipe.query_async::<()>(conn).await?;
    stats
        .entries
        .fetch_add(entries.len() as u64, Ordering::Relaxed);
    stats.samples.fetch_add(n, Ordering::Relaxed);
    stats.publishes.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Takes or renews the lease; true while this worker is the window leader.
async fn hold_lease(
    conn: &mut Connection,
    keys: &Keys,
    me: &str,
    ttl: Duration,
) -> redis::RedisResult<bool> {
    let ms = ttl.as_millis() as u64;
    let got: Option<String> = redis::cmd("SET")
        .arg(&keys.leader)
        .arg(me)
        .arg("NX")
        .arg("PX")
        .arg(ms)
        .query_async(conn)
        .await?;
    if got.is_some() {
        return Ok(true);
    }
    // Renew only if we still hold it (compare-and-expire, atomically).
    let renewed: i64 = redis::cmd("EVAL")
        .arg("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end")
        .arg(1)
        .arg(&keys.leader)
        .arg(me)
        .arg(ms)
        .query_async(conn)
        .await?;
    Ok(renewed == 1)
}

async fn window_loop(
    pool: Pool,
    keys: Keys,
    opts: WorkerOptions,
    stats: Arc<WorkerStats>,
    shutdown: CancellationToken,
) {
    let mut attempt = 0u32;
    let mut decoder = Decoder::default();
    let mut closed: Vec<ClosedWindow> = Vec::new();
    'connect: while !shutdown.is_cancelled() {
        let mut conn = match pool.get().await {
            Ok(c) => c,
            Err(_) => {
                backoff(&shutdown, &mut attempt).await;
                continue;
            }
        };
        if ensure_group(&mut conn, &keys, WINDOWS_GROUP).await.is_err() {
            drop(Connection::take(conn));
            backoff(&shutdown, &mut attempt).await;
            continue;
        }
        let mut rollup: Option<Rollup> = None;
        let mut renewed = tokio::time::Instant::now() - opts.lease;
        loop {
            if shutdown.is_cancelled() {
                break 'connect;
            }
            if renewed.elapsed() >= opts.lease / 3 {
                match hold_lease(&mut conn, &keys, &opts.name, opts.lease).await {
                    Ok(true) => {
                        renewed = tokio::time::Instant::now();
                        if rollup.is_none() {
                            tracing::info!(worker = %opts.name, "window leader");
                            rollup =
                                Some(Rollup::new(opts.windows.clone(), opts.max_series, now_ms()));
                            // Whatever a previous leader left pending is ours now.
                            match claim(
                                &mut conn,
                                &keys,
                                WINDOWS_GROUP,
                                &opts.name,
                                Duration::ZERO,
                                10_000,
                            )
                            .await
                            {
                                Ok(mut entries) => {
                                    if let Some(r) = rollup.as_mut() {
                                        for e in &mut entries {
                                            if let Ok(d) = decode_entry(e, &mut decoder) {
                                                r.add(d.arrival_ms, &d.samples, &mut closed);
                                            }
                                        }
                                    }
                                    if ack(&mut conn, &keys, WINDOWS_GROUP, &entries)
                                        .await
                                        .is_err()
                                    {
                                        break;
                                    }
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    Ok(false) => {
                        if rollup.take().is_some() {
                            tracing::info!(worker = %opts.name, "lost the window lease");
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(opts.lease / 3) => {}
                            _ = shutdown.cancelled() => {}
                        }
                        continue;
                    }
                    Err(_) => break,
                }
            }
            let Some(r) = rollup.as_mut() else { continue };
            let until_close = r.next_close().saturating_sub(now_ms()).clamp(1, 250);
            let mut entries = match read(
                &mut conn,
                &keys,
                WINDOWS_GROUP,
                &opts.name,
                opts.batch,
                until_close,
            )
            .await
            {
                Ok(e) => e,
                Err(_) => break,
            };
            for e in &mut entries {
                match decode_entry(e, &mut decoder) {
                    Ok(d) => r.add(d.arrival_ms, &d.samples, &mut closed),
                    Err(msg) => {
                        tracing::error!(entry = %e.id, error = %msg, "undecodable stream entry")
                    }
                }
            }
            r.close_due(now_ms(), 5, &mut closed);
            if !closed.is_empty()
                && publish_windows(&mut conn, &keys, &mut closed, &stats)
                    .await
                    .is_err()
            {
                break;
            }
            if !entries.is_empty()
                && ack(&mut conn, &keys, WINDOWS_GROUP, &entries)
                    .await
                    .is_err()
            {
                break;
            }
            attempt = 0;
        }
        drop(Connection::take(conn));
        backoff(&shutdown, &mut attempt).await;
    }
}

async fn ack(
    conn: &mut Connection,
    keys: &Keys,
    group: &str,
    entries: &[RawEntry],
) -> redis::RedisResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut cmd = redis::cmd("XACK");
    cmd.arg(&keys.stream).arg(group);
    for e in entries {
        cmd.arg(&e.id);
    }
    cmd.query_async::<()>(conn).await
}

async fn publish_windows(
    conn: &mut Connection,
    keys: &Keys,
    closed: &mut Vec<ClosedWindow>,
    stats: &WorkerStats,
) -> redis::RedisResult<()> {
    let mut lines = Vec::with_capacity(closed.len() * 512);
    let mut pipe = redis::pipe();
    for w in closed.iter() {
        event_line(&mut lines, b'W', &w.server, None, &w.json);
        if &*w.server != "*" {
            // The last window of each length, for snapshots.
            let label = window_label(&w.json).unwrap_or("window");
            pipe.cmd("HSET")
                .arg(keys.server(&w.server))
                .arg(format!("_window:{label}"))
                .arg(&w.json)
                .ignore();
        }
    }
    pipe.cmd("PUBLISH").arg(&keys.channel).arg(&lines).ignore();
    pipe.query_async::<()>(conn).await?;
    stats
        .windows
        .fetch_add(closed.len() as u64, Ordering::Relaxed);
    closed.clear();
    Ok(())
}

/// The `"window"` label inside an encoded window event.
fn window_label(json: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(json).ok()?;
    let rest = text.split_once("\"window\":\"")?.1;
    rest.split_once('"').map(|x| x.0)
}

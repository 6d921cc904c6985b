//! The sample loop of a worker: read (or claim) a batch from the `workers` group, publish its
//! `sample` events, update the per-server snapshot hashes, acknowledge, all in one pipeline.
//!
//! Per batch: one `HSET` per server in the batch, `SADD`, one `PUBLISH` per
//! [`MAX_EVENTS_PER_MESSAGE`] events, and one `XACK` after them. Every half `--claim-idle-ms`
//! the loop first claims entries left pending that long by a silent (presumably dead) worker.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis;
use deadpool_redis::{Connection, Pool};
use metrics_edge::hub::EventKind;
use metrics_model::decode::Decoder;
use metrics_model::{event, Sample};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::group::{self, ack_cmd};
use super::{retention, Session, WorkerError, WorkerOptions, WorkerStats};
use crate::keys::{Keys, Position, WORKERS_GROUP};
use crate::wire::{self, EntryError, RawEntry};

/// Most events in one Pub/Sub message: a message lands in a dashboard's queue at once, so it
/// must stay well below the queue's size (`--dashboard-queue`, default 16,384).
pub const MAX_EVENTS_PER_MESSAGE: u64 = 2048;

/// How often a worker applies the stream's retention.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Approximate cap of the dead-letter stream, in entries.
const DEAD_LETTER_MAXLEN: u64 = 10_000;

/// One worker's sample loop.
pub(super) struct SampleLoop {
    pub pool: Pool,
    pub keys: Keys,
    pub opts: WorkerOptions,
    pub stats: Arc<WorkerStats>,
    pub decoder: Decoder,
    /// When this connection last claimed idle entries.
    pub last_claim: Instant,
    /// When this connection last trimmed the stream.
    pub last_trim: Instant,
    /// When a backlog past `--maxlen` was last logged.
    pub last_backlog_log: Option<Instant>,
    /// When this worker last refreshed each server's snapshot expiry.
    pub refreshed: Refreshed,
}

/// When each server's snapshot expiry was last refreshed by this worker (ms).
#[derive(Default)]
pub(super) struct Refreshed(HashMap<String, u64>);

impl Refreshed {
    /// Whether `server`'s expiry is due for a refresh at `now` (a tenth of the TTL after the
    /// last one), noting it as refreshed if so.
    fn due(&mut self, server: &str, now: u64, ttl: u64) -> bool {
        match self.0.get_mut(server) {
            Some(last) if now.saturating_sub(*last) < ttl / 10 => false,
            Some(last) => {
                *last = now;
                true
            }
            None => {
                self.0.insert(server.to_string(), now);
                true
            }
        }
    }

    /// Forgets servers last refreshed before `t`.
    fn forget_before(&mut self, t: u64) {
        self.0.retain(|_, last| *last >= t);
    }
}

impl Session for SampleLoop {
    const GROUP: &'static str = WORKERS_GROUP;

    fn redis(&self) -> (&Pool, &Keys) {
        (&self.pool, &self.keys)
    }

    fn begin(&mut self) {
        self.last_claim = Instant::now();
        self.last_trim = Instant::now();
    }

    /// One batch: claimed entries first when it is time, else new ones. An error leaves the
    /// batch in hand pending, to be claimed.
    async fn step(
        &mut self,
        conn: &mut Connection,
        _shutdown: &CancellationToken,
    ) -> Result<(), WorkerError> {
        if self.last_trim.elapsed() >= TRIM_EVERY {
            self.last_trim = Instant::now();
            self.trim(conn).await?;
        }
        let (keys, opts) = (&self.keys, &self.opts);
        let mut entries = Vec::new();
        if self.last_claim.elapsed() >= opts.claim_idle / 2 {
            self.last_claim = Instant::now();
            let claimed = group::claim(
                conn,
                keys,
                WORKERS_GROUP,
                &opts.name,
                opts.claim_idle,
                opts.batch,
                "0-0",
            )
            .await?;
            self.stats.note_claimed(&claimed);
            entries = claimed.entries;
        }
        if entries.is_empty() {
            entries = group::read(conn, keys, WORKERS_GROUP, &opts.name, opts.batch, 1000).await?;
        }
        if entries.is_empty() {
            return Ok(());
        }
        if let Some(pause) = opts.pause_after_read {
            tokio::time::sleep(pause).await;
        }
        self.publish_batch(conn, &mut entries).await
    }
}

impl SampleLoop {
    /// Applies the stream's retention, logging (at most every 30 s) a backlog that keeps it
    /// over `--maxlen`.
    async fn trim(&mut self, conn: &mut Connection) -> Result<(), WorkerError> {
        let t = retention::trim(conn, &self.keys, self.opts.maxlen).await?;
        // Servers whose snapshot hash has expired leave the set of servers too.
        let silent_since =
            metrics_model::now_ms().saturating_sub(self.opts.snapshot_ttl.as_millis() as u64);
        self.refreshed.forget_before(silent_since);
        redis::cmd("ZREMRANGEBYSCORE")
            .arg(&self.keys.servers)
            .arg("-inf")
            .arg(format!("({silent_since}"))
            .query_async::<()>(conn)
            .await?;
        self.stats.trimmed.fetch_add(t.removed, Ordering::Relaxed);
        if t.held_unprocessed > 0
            && self
                .last_backlog_log
                .is_none_or(|l| l.elapsed() >= Duration::from_secs(30))
        {
            self.last_backlog_log = Some(Instant::now());
            tracing::warn!(
                over_maxlen = t.held_unprocessed,
                maxlen = self.opts.maxlen,
                "the stream is over --maxlen because entries are not processed yet; it is kept (nothing is lost) until the workers catch up"
            );
        }
        Ok(())
    }

    async fn publish_batch(
        &mut self,
        conn: &mut Connection,
        entries: &mut [RawEntry],
    ) -> Result<(), WorkerError> {
        let (keys, stats) = (&self.keys, &self.stats);
        let mut lines = Vec::with_capacity(entries.len() * 256);
        let mut messages = Vec::new();
        // Latest sample per server in this batch, for the snapshot hashes.
        let mut latest: HashMap<String, Latest> = HashMap::new();
        let mut n = 0u64;
        let mut json = Vec::with_capacity(256);
        let mut undecodable = Vec::new();
        for e in entries.iter_mut() {
            let d = match wire::decode_entry(e, &mut self.decoder) {
                Ok(d) => d,
                Err(err) => {
                    // Not retried forever, never acknowledged silently: moved aside below.
                    undecodable.push((e.id.clone(), err));
                    continue;
                }
            };
            let node: Arc<str> = Arc::from(d.node.as_str());
            for (i, s) in d.samples.into_iter().enumerate() {
                let Some(pos) = Position::from_entry(&d.id, i as u32) else {
                    continue;
                };
                json.clear();
                wire::sample_event(&mut json, &s, pos);
                wire::write_line(
                    &mut lines,
                    EventKind::Sample,
                    &s.server_id,
                    Some(pos),
                    &json,
                );
                n += 1;
                if n.is_multiple_of(MAX_EVENTS_PER_MESSAGE) {
                    messages.push(std::mem::take(&mut lines));
                }
                let latest_of_server = Latest {
                    sample: s,
                    pos,
                    arrival: d.arrival_ms,
                    node: node.clone(),
                };
                latest.insert(latest_of_server.sample.server_id.clone(), latest_of_server);
            }
        }
        let mut pipe = redis::pipe();
        let (now, ttl) = (
            metrics_model::now_ms(),
            self.opts.snapshot_ttl.as_millis() as u64,
        );
        for (server, l) in &latest {
            let key = keys.server(server);
            pipe.add_command(l.hset(&key)).ignore();
            // The expiry and the last-seen time are refreshed a few times per TTL, not per
            // batch: two more commands per server per batch would show in Redis's CPU.
            if self.refreshed.due(server, now, ttl) {
                pipe.cmd("PEXPIRE").arg(&key).arg(ttl).ignore();
                pipe.cmd("ZADD")
                    .arg(&keys.servers)
                    .arg(now)
                    .arg(server)
                    .ignore();
            }
        }
        if !lines.is_empty() {
            messages.push(lines);
        }
        for m in &messages {
            pipe.cmd("PUBLISH").arg(&keys.channel).arg(m).ignore();
        }
        if !undecodable.is_empty() {
            dead_letter(conn, keys, &undecodable, &mut pipe).await?;
        }
        pipe.add_command(ack_cmd(keys, WORKERS_GROUP, entries))
            .ignore();
        pipe.query_async::<()>(conn).await?;
        stats
            .entries
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        stats.samples.fetch_add(n, Ordering::Relaxed);
        stats.publishes.fetch_add(1, Ordering::Relaxed);
        stats
            .dead_lettered
            .fetch_add(undecodable.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Adds to `pipe` (which acknowledges them) a copy of each undecodable entry in the
/// dead-letter stream, with the reason. The entry's value is read again from the stream,
/// since decoding works in place.
async fn dead_letter(
    conn: &mut Connection,
    keys: &Keys,
    undecodable: &[(String, EntryError)],
    pipe: &mut redis::Pipeline,
) -> Result<(), WorkerError> {
    let mut read = redis::pipe();
    for (id, _) in undecodable {
        read.cmd("XRANGE").arg(&keys.stream).arg(id).arg(id);
    }
    let originals: Vec<redis::Value> = read.query_async(conn).await?;
    for ((id, err), original) in undecodable.iter().zip(originals) {
        tracing::error!(entry = %id, error = %err, stream = %keys.deadletter, "undecodable stream entry moved to the dead-letter stream");
        let value = wire::raw_entries(original)
            .pop()
            .and_then(|e| e.value)
            .unwrap_or_default();
        pipe.cmd("XADD")
            .arg(&keys.deadletter)
            .arg("MAXLEN")
            .arg("~")
            .arg(DEAD_LETTER_MAXLEN)
            .arg("*")
            .arg("id")
            .arg(id)
            .arg("error")
            .arg(err.to_string())
            .arg(wire::ENTRY_FIELD)
            .arg(value)
            .ignore();
    }
    Ok(())
}

/// A server's latest sample in a batch, for its snapshot hash.
struct Latest {
    sample: Sample,
    pos: Position,
    arrival: u64,
    node: Arc<str>,
}

impl Latest {
    /// `HSET` of the latest values and where they came from.
    fn hset(&self, key: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(key)
            .arg("_timestamp")
            .arg(self.sample.timestamp)
            .arg("_arrival")
            .arg(self.arrival)
            .arg("_node")
            .arg(&*self.node)
            .arg("_id")
            .arg(self.pos.to_string());
        for (name, v) in self.sample.metrics.iter() {
            let mut b = Vec::with_capacity(24);
            event::write_f64(&mut b, v);
            cmd.arg(name).arg(b);
        }
        cmd
    }
}

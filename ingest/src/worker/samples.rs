//! The sample loop of a worker: read (or claim) a batch from the `workers` group, publish its
//! `sample` events, update the per-server snapshot hashes, acknowledge, all in one pipeline.
//! A stored line becomes its event by a splice, not a decode ([`wire::scan_entry`]); only each
//! server's latest sample in the batch is decoded, for its snapshot.
//!
//! Per batch: one snapshot update per server in the batch ([`SNAPSHOT_SCRIPT`]), one `PUBLISH`
//! per message, and one `XACK` after them. These costs are per batch whatever its size, so
//! `--worker-gather-ms` lets a steady flow gather between reads (at most one read a gather);
//! an idle worker blocks in `XREADGROUP` and takes a new entry the moment it is written.
//! Every half `--claim-idle-ms` the loop first claims entries left pending that long by a
//! silent (presumably dead) worker.
//!
//! Everything is bounded in bytes, because an entry can be large (`--max-entry-bytes`):
//! - a batch is read in rounds, each `XREADGROUP` asking for no more entries than what is left
//!   of `--worker-read-bytes` holds at the largest entry size, so a batch never holds more than
//!   that budget, while a backlog of small entries still fills batches of `--worker-batch`;
//! - a message holds at most [`MAX_EVENTS_PER_MESSAGE`] events and `--pubsub-message-bytes`
//!   bytes (a line is never split: one sample's line is at most about 40 KiB, and the flag's
//!   floor is 64 KiB), so no single message can take the broadcaster past Redis's
//!   `client-output-buffer-limit pubsub` (32 MB), which would disconnect it;
//! - a server's snapshot hash keeps at most `--max-fields-per-server` metric names: the first
//!   ones seen stay, later new names are left out of the hash (their samples are stored and
//!   published as usual), counted, and logged once per server. This is decided in the
//!   worker, not at the front door, because only Redis knows which names a hash already has.
//!   The script costs Redis about ten times a plain `HSET`, so once it has admitted every
//!   name of a server's sample, this worker writes that server's samples with the same names
//!   with `HSET` (they add no field). Should the hash vanish under it (deleted by hand; expiry
//!   is ruled out, see `Refreshed::forget_before`), that `HSET` makes it again: the reply says
//!   how many fields it added, which go into the count as the script would have counted them,
//!   and the script decides that server's next sample, so the bound holds.

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

/// Writes a server's latest values into its snapshot hash, keeping at most `ARGV[1]` fields
/// written by this script. `ARGV[2..]` are field/value pairs, the four reserved fields first
/// (so they are always kept). The hash counts what the script added in `_fields`, so the
/// usual case costs one `HGET` and one `HSET`; only near the bound is each field checked with
/// `HEXISTS`: present fields are updated, new ones admitted while there is room, the rest
/// left out. Returns how many were left out. Never fails on what an agent sent: a metric
/// that happens to be named `_fields` is overwritten by the count.
pub const SNAPSHOT_SCRIPT: &str = r#"
local key, limit = KEYS[1], tonumber(ARGV[1])
local n = tonumber(redis.call('HGET', key, '_fields')) or 0
if n + (#ARGV - 1) / 2 <= limit then
  local added = redis.call('HSET', key, unpack(ARGV, 2))
  redis.call('HSET', key, '_fields', n + added)
  return 0
end
local kept, dropped = {}, 0
for i = 2, #ARGV, 2 do
  local keep = redis.call('HEXISTS', key, ARGV[i]) == 1
  if not keep and n < limit then
    n = n + 1
    keep = true
  end
  if keep then
    kept[#kept + 1] = ARGV[i]
    kept[#kept + 1] = ARGV[i + 1]
  else
    dropped = dropped + 1
  end
end
if #kept > 0 then
  redis.call('HSET', key, unpack(kept))
end
redis.call('HSET', key, '_fields', n)
return dropped
"#;

/// Fields of a snapshot hash besides the metrics that [`SNAPSHOT_SCRIPT`] writes and counts.
const RESERVED_FIELDS: usize = 4;

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
    /// The SHA1 of [`SNAPSHOT_SCRIPT`], once loaded on this connection.
    pub script: Option<String>,
    /// When the last read of new entries was sent (`--worker-gather-ms` counts from it).
    pub last_read: Instant,
}

/// What this worker knows of each server's snapshot hash: when it last refreshed its expiry
/// (ms), whether it found it at `--max-fields-per-server` (logged once), and which set of
/// metric names [`SNAPSHOT_SCRIPT`] last admitted whole (a fingerprint).
#[derive(Default)]
pub(super) struct Refreshed(HashMap<String, Known>);

#[derive(Default)]
struct Known {
    refreshed_at: u64,
    at_limit: bool,
    /// The names of a sample whose every field the script admitted: they are all in the hash,
    /// so a sample with the same names changes none of its field count and is written with a
    /// plain `HSET` (a tenth of the script's cost in Redis).
    admitted: Option<u64>,
}

impl Refreshed {
    /// Whether `server`'s expiry is due for a refresh at `now` (a tenth of the TTL after the
    /// last one), noting it as refreshed if so.
    fn due(&mut self, server: &str, now: u64, ttl: u64) -> bool {
        match self.0.get_mut(server) {
            Some(k) if now.saturating_sub(k.refreshed_at) < ttl / 10 => false,
            Some(k) => {
                k.refreshed_at = now;
                true
            }
            None => {
                self.0.insert(
                    server.to_string(),
                    Known {
                        refreshed_at: now,
                        ..Known::default()
                    },
                );
                true
            }
        }
    }

    /// Notes `server` as at the field limit; true the first time.
    fn first_at_limit(&mut self, server: &str) -> bool {
        let k = self.0.entry(server.to_string()).or_default();
        !std::mem::replace(&mut k.at_limit, true)
    }

    /// Whether the hash of `server` is known to hold every name of `names` already.
    fn admitted(&self, server: &str, names: u64) -> bool {
        self.0
            .get(server)
            .is_some_and(|k| k.admitted == Some(names))
    }

    /// Notes what a snapshot write learned: `names` all admitted, or nothing known (`None`).
    fn set_admitted(&mut self, server: &str, names: Option<u64>) {
        if let Some(k) = self.0.get_mut(server) {
            k.admitted = names;
        }
    }

    /// Forgets servers last refreshed before `t` (their hashes may have expired since, so
    /// what was admitted is not known any more).
    fn forget_before(&mut self, t: u64) {
        self.0.retain(|_, k| k.refreshed_at >= t);
    }
}

/// A fingerprint of a sample's set of metric names, whatever their order (an agent may
/// serialise a map in a different order each time). Names within a sample are unique (decoding
/// refuses duplicates), so a sum of per-name hashes with the count identifies the set.
fn names_fingerprint(sample: &Sample) -> u64 {
    use std::hash::BuildHasher;
    let hasher =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
    sample
        .metrics
        .iter()
        .fold(sample.metrics.len() as u64, |acc, (name, _)| {
            acc.wrapping_add(hasher.hash_one(name))
        })
}

impl Session for SampleLoop {
    const GROUP: &'static str = WORKERS_GROUP;

    fn redis(&self) -> (&Pool, &Keys) {
        (&self.pool, &self.keys)
    }

    fn begin(&mut self) {
        self.last_claim = Instant::now();
        self.last_trim = Instant::now();
        self.script = None;
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
            // At most one read a gather: entries written meanwhile wait for it and go as one
            // batch. After a longer wait (the read blocked on an idle stream) this is past.
            let (due, now) = (self.last_read + opts.gather, Instant::now());
            if due > now {
                tokio::time::sleep_until(due).await;
            }
            self.last_read = due.max(now);
            entries = group::read(conn, keys, WORKERS_GROUP, &opts.name, opts.batch, 1000).await?;
            fill(conn, keys, opts, &mut entries).await?;
        }
        if entries.is_empty() {
            return Ok(());
        }
        if self.script.is_none() {
            // Loaded per connection: a restarted Redis has forgotten it.
            let sha = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(SNAPSHOT_SCRIPT)
                .query_async::<String>(conn)
                .await?;
            self.script = Some(sha);
        }
        if let Some(pause) = opts.pause_after_read {
            tokio::time::sleep(pause).await;
        }
        self.publish_batch(conn, &mut entries).await
    }
}

/// While the last read came back full (a backlog), reads more into `entries`, each round asking
/// for as many entries as what is left of `--worker-read-bytes` holds at `--max-entry-bytes`,
/// up to `--worker-batch` in all.
async fn fill(
    conn: &mut Connection,
    keys: &Keys,
    opts: &WorkerOptions,
    entries: &mut Vec<RawEntry>,
) -> Result<(), WorkerError> {
    let size = |e: &RawEntry| e.value.as_ref().map_or(0, Vec::len);
    let mut held: usize = entries.iter().map(size).sum();
    let mut asked = opts.batch;
    while entries.len() >= asked && entries.len() < opts.fill {
        let room = opts.read_bytes.saturating_sub(held) / opts.max_entry;
        let n = room.min(opts.fill - entries.len());
        if n == 0 {
            break;
        }
        let more = group::read_now(conn, keys, WORKERS_GROUP, &opts.name, n).await?;
        held += more.iter().map(size).sum::<usize>();
        asked = entries.len() + n;
        entries.extend(more);
    }
    Ok(())
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
        let mut n = 0u64;
        let (max_message, mut in_message) = (self.opts.pubsub_message_bytes, 0u64);
        let mut json = Vec::with_capacity(256);
        let mut undecodable = Vec::new();
        let mut scanned = Vec::with_capacity(entries.len());
        for e in entries.iter() {
            let Some(value) = e.value.as_deref() else {
                undecodable.push((e.id.clone(), EntryError::NoField(e.id.clone())));
                continue;
            };
            match wire::scan_entry(&e.id, value) {
                Ok(d) => scanned.push((e.id.as_str(), d)),
                // Not retried forever, never acknowledged silently: moved aside below.
                Err(err) => undecodable.push((e.id.clone(), err)),
            }
        }
        // Each server's latest sample is decoded, for its snapshot hash. One that does not
        // decode (the scan passes valid JSON, not every number: 1e999) has its entry moved
        // aside whole, as before the scan, and the latest are looked for again.
        let latest = loop {
            let mut newest: HashMap<&str, (usize, usize)> = HashMap::new();
            for (k, (_, d)) in scanned.iter().enumerate() {
                for (i, l) in d.lines.iter().enumerate() {
                    newest.insert(d.server(l), (k, i));
                }
            }
            let mut latest: Vec<(String, Latest)> = Vec::with_capacity(newest.len());
            let mut bad = None;
            for (server, (k, i)) in newest {
                let (id, d) = &scanned[k];
                let mut line = d.line(&d.lines[i]).to_vec();
                let decoded = self.decoder.decode_ndjson(&mut line, d.arrival_ms);
                match (decoded, Position::from_entry(id, i as u32)) {
                    (Ok(mut one), Some(pos)) if one.len() == 1 => latest.push((
                        server.to_string(),
                        Latest {
                            sample: one.remove(0),
                            pos,
                            arrival: d.arrival_ms,
                            node: Arc::from(d.node),
                        },
                    )),
                    (Err(err), _) => {
                        bad = Some((k, err));
                        break;
                    }
                    _ => {}
                }
            }
            match bad {
                None => break latest,
                Some((k, err)) => {
                    let (id, _) = scanned.remove(k);
                    undecodable.push((id.to_string(), EntryError::Samples(id.to_string(), err)));
                }
            }
        };
        for (id, d) in &scanned {
            for (i, l) in d.lines.iter().enumerate() {
                let Some(pos) = Position::from_entry(id, i as u32) else {
                    continue;
                };
                json.clear();
                d.sample_event(&mut json, l, pos);
                let before = lines.len();
                wire::write_line(&mut lines, EventKind::Sample, d.server(l), Some(pos), &json);
                n += 1;
                if lines.len() > max_message && before > 0 {
                    // The line goes on into the next message.
                    let line = lines.split_off(before);
                    messages.push(std::mem::replace(&mut lines, line));
                    in_message = 0;
                }
                in_message += 1;
                if in_message == MAX_EVENTS_PER_MESSAGE {
                    messages.push(std::mem::take(&mut lines));
                    in_message = 0;
                }
            }
        }
        let mut pipe = redis::pipe();
        let (now, ttl) = (
            metrics_model::now_ms(),
            self.opts.snapshot_ttl.as_millis() as u64,
        );
        let limit = self.opts.max_fields + RESERVED_FIELDS;
        let sha = self.script.as_deref().unwrap_or_default();
        // Per server, in the order of the replies: its names' fingerprint, and whether it was
        // written with a plain HSET (the reply counts fields added) or the script (fields left
        // out).
        let mut writes = Vec::with_capacity(latest.len());
        for (server, l) in &latest {
            let key = keys.server(server);
            let names = names_fingerprint(&l.sample);
            let plain = self.refreshed.admitted(server, names);
            // Not ignored: each answers how many fields it added or left out.
            if plain {
                pipe.add_command(l.hset_cmd(&key));
            } else {
                pipe.add_command(l.snapshot_cmd(sha, &key, limit));
            }
            writes.push((names, plain));
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
        let mut largest = 0;
        for m in &messages {
            largest = largest.max(m.len());
            pipe.cmd("PUBLISH").arg(&keys.channel).arg(m).ignore();
        }
        if !undecodable.is_empty() {
            dead_letter(conn, keys, &undecodable, &mut pipe).await?;
        }
        pipe.add_command(ack_cmd(keys, WORKERS_GROUP, entries))
            .ignore();
        let replies: Vec<u64> = pipe.query_async(conn).await?;
        // Hashes a plain write found gone and made again: their count, as the script keeps it.
        let mut recount = redis::pipe();
        for (((server, _), (names, plain)), n) in latest.iter().zip(writes).zip(replies) {
            if plain {
                // A field added means the hash was not what this worker knew (it was deleted
                // under it): the write made it again with every field it carried, which the
                // count takes in, and the script decides the next sample.
                if n > 0 {
                    self.refreshed.set_admitted(server, None);
                    recount
                        .cmd("HINCRBY")
                        .arg(keys.server(server))
                        .arg("_fields")
                        .arg(n)
                        .ignore();
                }
                continue;
            }
            let dropped = n;
            self.refreshed
                .set_admitted(server, (dropped == 0).then_some(names));
            if dropped == 0 {
                continue;
            }
            stats.fields_refused.fetch_add(dropped, Ordering::Relaxed);
            if self.refreshed.first_at_limit(server) {
                stats.servers_at_field_limit.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    server = %server,
                    max_fields = self.opts.max_fields,
                    "a server's snapshot hash is at --max-fields-per-server; its new metric names are stored and published but left out of its snapshot (logged once per server)"
                );
            }
        }
        if recount.cmd_iter().next().is_some() {
            recount.query_async::<()>(conn).await?;
        }
        stats
            .largest_message
            .fetch_max(largest as u64, Ordering::Relaxed);
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
    /// The [`SNAPSHOT_SCRIPT`] call writing the latest values and where they came from, at
    /// most `limit` fields.
    fn snapshot_cmd(&self, sha: &str, key: &str, limit: usize) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(sha).arg(1).arg(key).arg(limit);
        self.fields(&mut cmd);
        cmd
    }

    /// The same fields as one `HSET`, for a hash known to hold all of them already.
    fn hset_cmd(&self, key: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(key);
        self.fields(&mut cmd);
        cmd
    }

    /// The reserved fields, then each metric's latest value.
    fn fields(&self, cmd: &mut redis::Cmd) {
        cmd.arg("_timestamp")
            .arg(self.sample.timestamp)
            .arg("_arrival")
            .arg(self.arrival)
            .arg("_node")
            .arg(&*self.node)
            .arg("_id")
            .arg(self.pos.to_string());
        // The command copies each argument: one buffer serves every value.
        let mut b = Vec::with_capacity(24);
        for (name, v) in self.sample.metrics.iter() {
            b.clear();
            event::write_f64(&mut b, v);
            cmd.arg(name).arg(&b[..]);
        }
    }
}

//! The broadcaster: Redis Pub/Sub in, dashboards out, with catch-up from Redis after a lost
//! link.
//!
//! It subscribes to the events channel (reconnecting by itself with backoff when Redis goes
//! away) and hands each published batch to the same dashboard hub System 2 uses, so `/ws`, the
//! filter, the token and the slow-consumer policy are identical. Batches arrive as lines of
//! `kind TAB server TAB position TAB json`; the JSON is sliced out, never parsed.
//!
//! # Nothing published while the link was down is lost
//!
//! Pub/Sub drops whatever is published while nobody listens, and workers publish out of order
//! (several workers, a batch re-claimed from a dead one, a slow batch), so "the highest position
//! relayed" says nothing about what was missed below it. The broadcaster keeps instead a **low
//! watermark** `W` per log, with this invariant: every event at or below `W` has been relayed
//! (or was published before this broadcaster first subscribed). Above `W` it remembers the
//! positions it relayed (a set, pruned below `W` as `W` moves up).
//!
//! - Samples: `W` comes from the workers' consumer group. Below the smallest pending entry
//!   (or, with none pending, up to the group's last-delivered id) every entry was acknowledged,
//!   and a worker acknowledges a batch in the pipeline that publishes it, after the `PUBLISH`:
//!   so every sample below it was published.
//! - Windows: the window leader appends each batch of closed windows to the window log and
//!   publishes it in one script (`worker::windows`), the message led by a mark line naming the
//!   log entry. Every log entry up to the log's last id was published.
//!
//! Published is not yet relayed: the link may have died before. So every [`PROBE_EVERY`] the
//! broadcaster reads both candidates *and* publishes a probe on its own probe channel, in one
//! script (one instant); the candidates become `W` only when the probe comes back on the
//! subscription. Redis writes a subscriber's messages in the order it executes the `PUBLISH`es,
//! so receiving the probe proves every event published before the candidates were read came
//! through on this connection. A probe not back within [`PROBE_TIMEOUT`] ends the connection
//! (a silently dead link is not waited on forever).
//!
//! After every subscription, the first included, the broadcaster first reads both logs back from `W` (samples
//! from the stream, as the `?since` replay does, [`crate::replay`]; windows from the window
//! log), then goes on live. Subscribed first, then caught up: messages published meanwhile wait
//! in the subscription. An event is relayed only if it is above `W` and not yet in the set,
//! whether it comes from a catch-up or live, so nothing comes twice through this broadcaster:
//! not what the catch-up read ahead of the workers (their live copies are skipped), not what was
//! relayed live before the link died (the catch-up skips it), not a batch a re-claiming worker
//! publishes again. Nothing is dropped: only positions at or below `W` (relayed, by the
//! invariant) or already in the set (relayed) are skipped. The invariant holds by induction:
//! the first `W` is read before the first subscription (so everything below it was published
//! before), and the first catch-up reads what is above it (without it, a sample published
//! between that read and the subscription would be neither relayed nor above the next `W`:
//! the Redis-restart test lost one so about 1 run in 5); a new `W` was confirmed on a live link; below it, an event is below the old `W` (relayed), or
//! was in its log when the catch-up read it (relayed), or was published after that read and
//! before the probe (received).
//!
//! # The resume history
//!
//! Each time the samples watermark moves up, the broadcaster appends `(its token, the greatest
//! position it has relayed, W)` to `{prefix}:broadcaster:resume` (capped at about
//! `--resume-history` entries), and before its first subscription it appends its first `W`
//! marked as its start. A dashboard's `?since=X` replay starts from the `W` of the latest entry
//! whose greatest relayed position was below `X`, so samples published out of order below `X`
//! reach it too (the argument is in [`crate::replay`]). An entry that cannot be written is
//! logged and skipped: the older entries stay valid, a replay only starts lower.
//!
//! The set holds at most [`MAX_SEEN`] positions; past that the lowest are forgotten, which can
//! only let a late duplicate through, never drop an event. Entries trimmed by retention before
//! a catch-up reads them are gone (logged); the window log keeps about `--window-log-len`
//! batches.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_redis::redis::{self, Value};
use deadpool_redis::Pool;
use futures_util::StreamExt;
use metrics_edge::backoff::Backoff;
use metrics_edge::hub::{Event, Hub};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::keys::{Keys, Position, WORKERS_GROUP};
use crate::replay::{Pages, ReplayError};
use crate::wire::{batch_mark, parse_batch, raw_entries, ENTRY_FIELD};

/// How often the broadcaster probes its link and moves its watermarks up.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);

/// A probe not back on the subscription within this ends the connection.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most positions remembered above a watermark (per log).
pub const MAX_SEEN: usize = 1 << 20;

/// Window-log entries per `XRANGE` page of a catch-up.
const LOG_PAGE: usize = 100;

/// Reads the watermark candidates and publishes a probe, atomically. `KEYS`: the sample
/// stream, the window log, the probe channel; `ARGV`: the workers' group, the probe's payload.
/// Returns `{samples, windows}`: `P<id>` (smallest pending entry) or `D<id>` (nothing pending;
/// the group's last-delivered id) or empty (no group); the window log's last id or empty.
const WATERMARKS: &str = r"
local samples, windows = '', ''
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  for _, g in ipairs(groups) do
    local name, last
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
    end
    if name == ARGV[1] then
      local p = redis.call('XPENDING', KEYS[1], ARGV[1])
      if p[1] > 0 then samples = 'P' .. p[2] else samples = 'D' .. last end
    end
  end
end
local w = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #w > 0 then windows = w[1][1] end
redis.call('PUBLISH', KEYS[3], ARGV[2])
return {samples, windows}
";

/// Broadcaster counters and state.
#[derive(Debug, Default)]
pub struct BroadcastStats {
    pub connected: AtomicBool,
    pub batches: AtomicU64,
    pub events: AtomicU64,
    pub reconnects: AtomicU64,
    /// Events relayed from a catch-up (samples and windows).
    pub caught_up: AtomicU64,
    /// Events not relayed because this broadcaster had relayed them already.
    pub skipped: AtomicU64,
}

/// Relays Pub/Sub to `hub` until `shutdown`, reconnecting with backoff and catching up from
/// Redis after each (re)subscription (see the module doc).
pub async fn run(
    url: String,
    pool: Pool,
    keys: Keys,
    hub: Arc<Hub>,
    stats: Arc<BroadcastStats>,
    read: ReadLimits,
    shutdown: CancellationToken,
) {
    let token = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let link = Link {
        url: &url,
        pool: &pool,
        keys: &keys,
        hub: &hub,
        stats: &stats,
        probe: keys.probe(&token),
        token: &token,
        resume_history: read.resume_history,
        page: read.page,
    };
    let mut backoff = Backoff::default();
    let mut marks: Option<Marks> = None;
    while !shutdown.is_cancelled() {
        match link
            .subscribe_once(&shutdown, &mut backoff, &mut marks)
            .await
        {
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "Pub/Sub connection lost; reconnecting"),
        }
        stats.connected.store(false, Ordering::Relaxed);
        if shutdown.is_cancelled() {
            break;
        }
        stats.reconnects.fetch_add(1, Ordering::Relaxed);
        backoff.wait(&shutdown).await;
    }
}

/// What was relayed from one log: everything at or below `through`, and `seen` above it.
#[derive(Debug)]
struct Relayed {
    through: Position,
    seen: BTreeSet<Position>,
    /// The greatest position relayed (zero: none).
    max: Position,
}

impl Default for Relayed {
    /// Nothing relayed: the whole log is above the watermark.
    fn default() -> Self {
        Self {
            through: Position {
                ms: 0,
                seq: 0,
                index: 0,
            },
            seen: BTreeSet::new(),
            max: Position {
                ms: 0,
                seq: 0,
                index: 0,
            },
        }
    }
}

impl Relayed {
    /// Whether `p` is to be relayed now (it was not yet), noting it as relayed.
    fn admit(&mut self, p: Position) -> bool {
        if p <= self.through || !self.seen.insert(p) {
            return false;
        }
        if self.seen.len() > MAX_SEEN {
            self.seen.pop_first();
        }
        self.max = self.max.max(p);
        true
    }

    /// Moves the watermark up to `w` (never down), forgetting positions at or below it.
    fn advance(&mut self, w: Position) {
        if w > self.through {
            self.through = w;
            self.seen = self.seen.split_off(&w);
            self.seen.remove(&w);
        }
    }
}

/// The two watermarks.
#[derive(Debug, Default)]
struct Marks {
    samples: Relayed,
    windows: Relayed,
}

/// Watermark candidates read at one instant (`None`: nothing known for that log).
#[derive(Clone, Copy, Debug)]
struct Candidates {
    samples: Option<Position>,
    windows: Option<Position>,
}

impl Marks {
    fn advance(&mut self, c: Candidates) {
        if let Some(w) = c.samples {
            self.samples.advance(w);
        }
        if let Some(w) = c.windows {
            self.windows.advance(w);
        }
    }
}

/// The position just before entry `id`'s first sample.
fn before_entry(id: &str) -> Option<Position> {
    let p = Position::from_entry(id, 0)?;
    Some(match (p.ms, p.seq) {
        (0, 0) => p,
        (ms, 0) => Position {
            ms: ms - 1,
            seq: u64::MAX,
            index: u32::MAX,
        },
        (ms, seq) => Position {
            ms,
            seq: seq - 1,
            index: u32::MAX,
        },
    })
}

/// Parses the [`WATERMARKS`] reply.
fn candidates(reply: Vec<String>) -> Candidates {
    let samples = reply.first().and_then(|s| match s.split_at_checked(1) {
        Some(("P", id)) => before_entry(id),
        Some(("D", id)) => Position::from_entry(id, u32::MAX),
        _ => None,
    });
    let windows = reply.get(1).and_then(|id| Position::from_entry(id, 0));
    Candidates { samples, windows }
}

/// An outstanding probe.
struct Probe {
    payload: String,
    sent: Instant,
    candidates: Candidates,
}

struct Link<'a> {
    url: &'a str,
    pool: &'a Pool,
    keys: &'a Keys,
    hub: &'a Hub,
    stats: &'a BroadcastStats,
    /// This process's probe channel.
    probe: String,
    /// This process's name in the resume history.
    token: &'a str,
    /// Entries kept (about) in the resume history.
    resume_history: u64,
    /// Entries per page of a catch-up ([`crate::replay::page_entries`]).
    page: usize,
}

/// How the broadcaster reads Redis back: the resume history it keeps and the page size of its
/// catch-ups.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    /// Entries kept (about) in the resume history (`--resume-history`).
    pub resume_history: u64,
    /// Entries per page of a catch-up ([`crate::replay::page_entries`]).
    pub page: usize,
}

fn io_error(kind: std::io::ErrorKind, what: &str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(kind, what.to_string()))
}

impl Link<'_> {
    /// Reads the watermark candidates and publishes `payload` on the probe channel.
    async fn read_marks(&self, payload: &str) -> Result<Candidates, ReplayError> {
        let mut conn = self.pool.get().await?;
        let reply: Vec<String> = redis::cmd("EVAL")
            .arg(WATERMARKS)
            .arg(3)
            .arg(&self.keys.stream)
            .arg(&self.keys.window_log)
            .arg(&self.probe)
            .arg(WORKERS_GROUP)
            .arg(payload)
            .query_async(&mut conn)
            .await?;
        Ok(candidates(reply))
    }

    /// Appends `(token, relayed, watermark)` to the resume history (see the module doc).
    async fn record(&self, relayed: &Relayed, start: bool) -> Result<(), ReplayError> {
        let mut conn = self.pool.get().await?;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.keys.resume)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.resume_history)
            .arg("*")
            .arg("g")
            .arg(self.token)
            .arg("m")
            .arg(relayed.max.to_string())
            .arg("w")
            .arg(relayed.through.to_string());
        if start {
            cmd.arg("s").arg("1");
        }
        let _: Value = cmd.query_async(&mut conn).await?;
        Ok(())
    }

    /// Relays `events` that were not relayed yet (samples by `samples`; windows as given).
    fn relay(&self, samples: &mut Relayed, mut events: Vec<Event>) -> usize {
        let before = events.len();
        events.retain(|e| e.position.is_none_or(|p| samples.admit(p)));
        self.stats
            .skipped
            .fetch_add((before - events.len()) as u64, Ordering::Relaxed);
        for chunk in events.chunks(2048) {
            self.hub.publish(chunk);
        }
        events.len()
    }

    /// Relays every sample above the samples watermark read back from the stream, and every
    /// window batch above the windows watermark read back from the window log, skipping what
    /// was relayed already.
    /// Without `read_samples` only the window log is read (no sample was ever published).
    async fn catch_up(&self, marks: &mut Marks, read_samples: bool) -> Result<(), ReplayError> {
        let since = marks.samples.through;
        let mut samples = 0usize;
        if read_samples {
            let mut pages = Pages::new(self.pool, self.keys, since, self.page).await?;
            if pages.truncated {
                tracing::warn!(%since, "stream retention dropped samples published while disconnected");
            }
            while let Some(events) = pages.next().await? {
                samples += self.relay(&mut marks.samples, events);
            }
        }
        let mut windows = 0usize;
        let mut cursor = format!("({}", marks.windows.through.entry());
        loop {
            let page: Value = {
                let mut conn = self.pool.get().await?;
                redis::cmd("XRANGE")
                    .arg(&self.keys.window_log)
                    .arg(&cursor)
                    .arg("+")
                    .arg("COUNT")
                    .arg(LOG_PAGE)
                    .query_async(&mut conn)
                    .await?
            };
            let page = raw_entries(page);
            for e in &page {
                cursor = format!("({}", e.id);
                let Some(pos) = Position::from_entry(&e.id, 0) else {
                    continue;
                };
                if !marks.windows.admit(pos) {
                    continue;
                }
                let Some(lines) = e.value.clone() else {
                    tracing::error!(entry = %e.id, field = ENTRY_FIELD, "window log entry without its field");
                    continue;
                };
                let events = parse_batch(Bytes::from(lines));
                windows += events.len();
                self.hub.publish(&events);
            }
            if page.len() < LOG_PAGE {
                break;
            }
        }
        self.stats
            .caught_up
            .fetch_add((samples + windows) as u64, Ordering::Relaxed);
        tracing::info!(
            samples,
            windows,
            "caught up from Redis after (re)subscribing"
        );
        Ok(())
    }

    async fn subscribe_once(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
        marks: &mut Option<Marks>,
    ) -> redis::RedisResult<()> {
        let io = |e: ReplayError| match e {
            ReplayError::Redis(e) => e,
            ReplayError::Pool(e) => io_error(std::io::ErrorKind::NotConnected, &e.to_string()),
        };
        // First subscription of this process: what was published before the watermarks are
        // read is not ours to relay (dashboards that were connected elsewhere reconnect with
        // `?since=`), so the watermarks start where the logs are now.
        let first = marks.is_none();
        // Whether the workers' group existed when the first watermarks were read.
        let mut grouped = true;
        if first {
            let c = self.read_marks("0").await.map_err(io)?;
            grouped = c.samples.is_some();
            let mut m = Marks::default();
            m.advance(c);
            // Written before anything is relayed: a replay must know this broadcaster exists.
            self.record(&m.samples, true).await.map_err(io)?;
            *marks = Some(m);
        }
        let Some(marks) = marks.as_mut() else {
            return Ok(());
        };
        let client = redis::Client::open(self.url)?;
        let mut pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
            .await
            .map_err(|_| {
                io_error(
                    std::io::ErrorKind::TimedOut,
                    "connecting to Redis timed out",
                )
            })??;
        pubsub
            .subscribe(&[self.keys.channel.as_str(), self.probe.as_str()])
            .await?;
        backoff.reset();
        tracing::info!(channel = %self.keys.channel, "subscribed");
        // Subscribed first, then caught up: messages published meanwhile wait in the
        // subscription and are filtered against what the catch-up sent.
        // Also after the first subscription: what was published between reading the first
        // watermarks and subscribing is above them, and was never relayed. Workers publish
        // only what their group delivered: with no group then, and still none now that we
        // are subscribed, nothing was published before, and the stream (maybe a backlog no
        // worker has read yet) is not read ahead.
        if !grouped {
            grouped = self.read_marks("0").await.map_err(io)?.samples.is_some();
        }
        self.catch_up(marks, grouped).await.map_err(io)?;
        // Subscribed and caught up.
        self.stats.connected.store(true, Ordering::Relaxed);
        let mut messages = pubsub.on_message();
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probe: Option<Probe> = None;
        let mut probes = 0u64;
        loop {
            tokio::select! {
                m = messages.next() => {
                    let Some(msg) = m else {
                        return Err(io_error(std::io::ErrorKind::ConnectionReset, "Pub/Sub stream ended"));
                    };
                    let payload = msg.get_payload_bytes();
                    if msg.get_channel_name() == self.probe {
                        if probe.as_ref().is_some_and(|p| p.payload.as_bytes() == payload) {
                            if let Some(p) = probe.take() {
                                let before = marks.samples.through;
                                marks.advance(p.candidates);
                                if marks.samples.through > before {
                                    if let Err(e) = self.record(&marks.samples, false).await {
                                        tracing::warn!(error = %e, "could not append to the resume history");
                                    }
                                }
                            }
                        }
                        continue;
                    }
                    if let Some(mark) = batch_mark(payload) {
                        if !marks.windows.admit(mark) {
                            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                    let events = parse_batch(Bytes::copy_from_slice(payload));
                    let n = self.relay(&mut marks.samples, events);
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    self.stats.events.fetch_add(n as u64, Ordering::Relaxed);
                }
                _ = tick.tick() => {
                    if let Some(p) = &probe {
                        if p.sent.elapsed() > PROBE_TIMEOUT {
                            return Err(io_error(std::io::ErrorKind::TimedOut, "a probe did not come back on the subscription"));
                        }
                        continue;
                    }
                    probes += 1;
                    let payload = probes.to_string();
                    let sent = Instant::now();
                    match self.read_marks(&payload).await {
                        Ok(candidates) => probe = Some(Probe { payload, sent, candidates }),
                        Err(e) => tracing::warn!(error = %e, "could not read the watermarks"),
                    }
                }
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(s: &str) -> Position {
        Position::parse(s).expect("position")
    }

    #[test]
    fn relayed_admits_each_position_once_and_nothing_at_or_below_the_watermark() {
        let mut r = Relayed::default();
        assert!(r.admit(pos("5-0/0")));
        assert!(r.admit(pos("3-0/1")), "out of order is still new");
        assert!(!r.admit(pos("5-0/0")), "a repeat");
        r.advance(pos("4-0/4294967295"));
        assert_eq!(r.seen.len(), 1, "pruned below the watermark");
        assert!(!r.admit(pos("3-0/7")), "at or below the watermark: relayed");
        assert!(r.admit(pos("4-1/0")));
        r.advance(pos("2-0/0"));
        assert_eq!(r.through, pos("4-0/4294967295"), "never moves down");
    }

    #[test]
    fn watermark_candidates_parse() {
        let c = candidates(vec!["P10-0".into(), "7-3".into()]);
        assert_eq!(c.samples, Some(pos("9-18446744073709551615/4294967295")));
        assert_eq!(c.windows, Some(pos("7-3/0")));
        let c = candidates(vec!["P10-2".into(), String::new()]);
        assert_eq!(c.samples, Some(pos("10-1/4294967295")));
        assert_eq!(c.windows, None);
        let c = candidates(vec!["D12-0".into(), String::new()]);
        assert_eq!(c.samples, Some(pos("12-0/4294967295")));
        let c = candidates(vec![String::new(), String::new()]);
        assert_eq!(c.samples, None);
    }
}

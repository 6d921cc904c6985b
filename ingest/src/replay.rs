//! Reading the stream back: a dashboard's `?since=ID` replay, and the broadcaster's catch-up
//! after a Redis reconnect.
//!
//! The stream is read a page at a time ([`Pages`]), each page on a connection taken from the
//! pool for that read only, so a long replay holds neither much memory nor a connection.
//!
//! A dashboard that reconnects with `?since=X` (the greatest `id` of the `sample` events it
//! saw) is registered with its live events held aside, is sent every sample read back from the
//! stream after a start position `F <= X` ([`resume_point`]), and only then gets the held live
//! events, minus those the replay already covered. The hold starts before the stream is read,
//! so nothing falls between the two; positions decide what was already sent, so nothing comes
//! twice from this replay, including samples the replay read from the stream before their live
//! event (which trails the stream by a worker's processing time) arrived. A `replayed` event
//! tells the dashboard from where it replayed, how many samples came from the stream and
//! whether the replay is known complete.
//!
//! # Why the replay starts below `since`
//!
//! Workers publish out of order (several workers; a batch re-claimed from a dead worker after
//! `--claim-idle-ms`), so when the dashboard saw `X` a sample below `X` may not have been
//! published yet: replaying only what is after `X` would lose it. The broadcaster
//! ([`crate::broadcast`]) keeps a confirmed low watermark `W` (everything at or below it has
//! been relayed, or was published before that broadcaster started), and each time `W` moves up
//! it appends `(g, m, W)` to the resume history `{prefix}:broadcaster:resume`: `g` names the
//! broadcaster process, `m` is the greatest position it had relayed when it adopted `W`. Its
//! first entry (marked `s`, with `m` = 0) holds the `W` it read before subscribing, and is
//! written before it relays anything.
//!
//! If `m < X`, `X` had not been relayed by `g` when `g` adopted `W`, and `W` never moves down,
//! so every sample `g` relayed after `X` is above `W`; every sample first published after `W`
//! was read is above `W` too (at or below it, everything had been acknowledged, so
//! published). So the samples the dashboard missed, those relayed after it stopped
//! receiving and those published while it (or every broadcaster) was away, are all above
//! `W`, and what it got before `X` came in relay order before `X`. [`resume_point`] reads the
//! history backwards and takes, for each broadcaster that may have sent `X` (the one that
//! started last before the millisecond of `X`'s entry, and every one started since: one
//! broadcaster runs at a time, or a dashboard reconnects to the one it left), its latest
//! entry with `m < X`; the replay starts at the smallest of those `W` (and at most `X`). A
//! dashboard that got `X` from a replay got everything after that replay's start up to `X` in
//! stream order (entry ids grow with time, so no entry below `X` appears after `X` was read),
//! and the same argument covers the live events after it. When the history does not reach
//! back that far (trimmed to about `--resume-history` entries, lost with Redis, or `X` older
//! than every broadcaster), the replay starts at the smallest `W` found (or `X`) and says
//! `complete: false`: it may be missing samples.
//!
//! The samples between `F` and `X` that the dashboard already had come again: duplicates, by
//! `id`, which the page drops (its set of recent ids); the `replayed` event's `from` says where
//! the replay started, `count` how many samples it sent in all. Held live events at or below
//! `F` are dropped at release: the broadcaster never relays a sample at or below a watermark
//! it (or a broadcaster before it) adopted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_redis::redis::{self, Value};
use deadpool_redis::Pool;
use metrics_edge::hub::{Client, Event, EventKind};
use metrics_model::event;

use crate::keys::{Keys, Position};
use crate::wire::{self, raw_entries};

/// Most entries per `XRANGE` page.
const PAGE: usize = 100;

/// Bytes of entries one page of a replay or catch-up may hold.
pub const REPLAY_READ_BYTES: usize = 64 << 20;

/// Entries per `XRANGE` page of a replay or catch-up: at most [`PAGE`], and few enough that a
/// page of the largest entries the front doors write (`max_entry`, `--max-entry-bytes`) stays
/// within `read_bytes` ([`REPLAY_READ_BYTES`]): 16 at the defaults. Each replaying dashboard
/// holds one page at a time, so its memory is bounded in bytes.
pub fn page_entries(read_bytes: usize, max_entry: usize) -> usize {
    (read_bytes / max_entry.max(1)).clamp(1, PAGE)
}

/// Entries of the resume history per `XREVRANGE` page.
const HISTORY_PAGE: usize = 256;

/// Replayed events sent before waiting for the client's writer to take them.
const SEND_CHUNK: u64 = 512;

/// Waits until the client's queue holds at most [`SEND_CHUNK`] events; false when the client
/// left meanwhile.
async fn room(client: &Client) -> bool {
    while client.backlog() > SEND_CHUNK as usize {
        if client.has_left() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    !client.has_left()
}

/// Why the stream could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("Redis is unavailable: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("reading the stream: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Reads the stream back after a position, a page at a time, as `sample` events: nothing
/// holds more than one page, and no pooled connection is held between pages.
pub struct Pages<'a> {
    pool: &'a Pool,
    keys: &'a Keys,
    since: Position,
    /// The `XRANGE` start of the next page (exclusive of what was read).
    cursor: String,
    /// The last position read (`since` until something newer was).
    pub last: Position,
    /// Retention had already dropped entries after `since`.
    pub truncated: bool,
    /// Entries per `XRANGE` ([`page_entries`]).
    page: usize,
    done: bool,
    decoder: metrics_model::decode::Decoder,
}

impl<'a> Pages<'a> {
    /// Starts reading after `since`, first checking whether retention dropped part of it.
    pub async fn new(
        pool: &'a Pool,
        keys: &'a Keys,
        since: Position,
        page: usize,
    ) -> Result<Self, ReplayError> {
        let truncated = trimmed_after(pool, keys, since).await?;
        Ok(Self {
            pool,
            keys,
            page: page.clamp(1, PAGE),
            since,
            cursor: since.entry(),
            last: since,
            truncated,
            done: false,
            decoder: wire::entry_decoder(),
        })
    }

    /// The `sample` events of the next page of entries, in stream order; `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Vec<Event>>, ReplayError> {
        if self.done {
            return Ok(None);
        }
        let page: Value = {
            let mut conn = self.pool.get().await?;
            redis::cmd("XRANGE")
                .arg(&self.keys.stream)
                .arg(&self.cursor)
                .arg("+")
                .arg("COUNT")
                .arg(self.page)
                .query_async(&mut conn)
                .await?
        };
        let mut page = raw_entries(page);
        self.done = page.len() < self.page;
        let mut events = Vec::new();
        let mut json = Vec::with_capacity(256);
        for e in &mut page {
            // The cursor moves past every entry, decodable or not, so a bad one cannot stall
            // the read.
            self.cursor = format!("({}", e.id);
            let d = match wire::decode_entry(e, &mut self.decoder) {
                Ok(d) => d,
                Err(err) => {
                    tracing::error!(error = %err, "undecodable stream entry skipped by replay");
                    continue;
                }
            };
            for (i, s) in d.samples.iter().enumerate() {
                let Some(pos) = d.position(i) else { continue };
                if pos <= self.since {
                    continue;
                }
                self.last = self.last.max(pos);
                json.clear();
                wire::sample_event(&mut json, s, pos);
                events.push(Event {
                    kind: EventKind::Sample,
                    server: Arc::from(s.server_id.as_str()),
                    json: Bytes::copy_from_slice(&json),
                    position: Some(pos),
                });
            }
        }
        Ok(Some(events))
    }
}

/// Whether retention dropped stream entries after `since`: its oldest entry is after `since`
/// and (Redis 7 and later, which count the entries ever added) some entries were dropped.
async fn trimmed_after(pool: &Pool, keys: &Keys, since: Position) -> Result<bool, ReplayError> {
    let mut conn = pool.get().await?;
    let info: Value = match redis::cmd("XINFO")
        .arg("STREAM")
        .arg(&keys.stream)
        .query_async(&mut conn)
        .await
    {
        Ok(v) => v,
        // No stream yet ("ERR no such key"): nothing was dropped.
        Err(e) if e.code() == Some("ERR") => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let pairs: Vec<(Value, Value)> = match info {
        Value::Map(m) => m,
        Value::Array(a) => {
            let mut it = a.into_iter();
            let mut v = Vec::new();
            while let (Some(k), Some(x)) = (it.next(), it.next()) {
                v.push((k, x));
            }
            v
        }
        _ => Vec::new(),
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| text(k).as_deref() == Some(name))
            .map(|(_, v)| v.clone())
    };
    let after = |id: &str| {
        Position::from_entry(id, 0).is_some_and(|o| (o.ms, o.seq) > (since.ms, since.seq))
    };
    let oldest = match field("first-entry") {
        Some(Value::Array(e)) => e.first().and_then(text),
        _ => None,
    };
    let int = |name: &str| match field(name) {
        Some(Value::Int(n)) => Some(n),
        _ => None,
    };
    // Retention trims from the front (nothing else deletes from this stream): entries were
    // dropped after `since` if some were dropped at all and the oldest kept is after it.
    let dropped = match (int("entries-added"), int("length")) {
        (Some(added), Some(len)) => added > len,
        _ => true,
    };
    Ok(dropped && oldest.is_some_and(|id| after(&id)))
}

/// Where a `?since=X` replay starts (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumePoint {
    /// The replay sends the samples after this position (at most `X`).
    pub from: Position,
    /// The resume history reached back to every broadcaster that may have sent `X`: nothing
    /// the dashboard missed is at or below `from`.
    pub exact: bool,
}

/// One entry of the resume history, as [`resume_point`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The entry's id (its time is when it was written).
    pub id: Position,
    /// The broadcaster process.
    pub generation: String,
    /// The greatest position it had relayed when it adopted `watermark`.
    pub relayed: Position,
    pub watermark: Position,
    /// Its first entry, written before it subscribed.
    pub start: bool,
}

/// Folds the resume history, newest entry first, into where a `?since` replay starts.
#[derive(Debug)]
pub struct ResumeSearch {
    since: Position,
    /// Per broadcaster seen: its latest watermark adopted while it had relayed only below
    /// `since` (none yet: still looking).
    candidates: HashMap<String, Option<Position>>,
    /// The broadcaster that started last before `since`'s millisecond was reached.
    reached: bool,
}

impl ResumeSearch {
    pub fn new(since: Position) -> Self {
        Self {
            since,
            candidates: HashMap::new(),
            reached: false,
        }
    }

    /// Takes the next older entry; true once the search is done.
    pub fn take(&mut self, e: &HistoryEntry) -> bool {
        let slot = self.candidates.entry(e.generation.clone()).or_insert(None);
        if slot.is_none() && e.relayed < self.since {
            *slot = Some(e.watermark);
        }
        if e.start && e.id.ms < self.since.ms {
            self.reached = true;
        }
        self.done()
    }

    fn done(&self) -> bool {
        self.reached && self.candidates.values().all(Option::is_some)
    }

    /// The start: exact when the search finished, else a best effort at or below `since`.
    pub fn finish(&self) -> ResumePoint {
        let from = self
            .candidates
            .values()
            .flatten()
            .copied()
            .fold(self.since, Position::min);
        ResumePoint {
            from,
            exact: self.done(),
        }
    }
}

/// Reads the resume history backwards to find where a `?since=X` replay starts.
pub async fn resume_point(
    pool: &Pool,
    keys: &Keys,
    since: Position,
) -> Result<ResumePoint, ReplayError> {
    let mut search = ResumeSearch::new(since);
    let mut end = "+".to_string();
    loop {
        let page: Vec<(String, HashMap<String, String>)> = {
            let mut conn = pool.get().await?;
            redis::cmd("XREVRANGE")
                .arg(&keys.resume)
                .arg(&end)
                .arg("-")
                .arg("COUNT")
                .arg(HISTORY_PAGE)
                .query_async(&mut conn)
                .await?
        };
        let n = page.len();
        for (id, f) in page {
            end = format!("({id}");
            let parse = |k: &str| f.get(k).and_then(|v| Position::parse(v));
            let (Some(pos), Some(g), Some(relayed), Some(watermark)) = (
                Position::from_entry(&id, 0),
                f.get("g"),
                parse("m"),
                parse("w"),
            ) else {
                tracing::error!(entry = %id, "malformed resume history entry skipped");
                continue;
            };
            let e = HistoryEntry {
                id: pos,
                generation: g.clone(),
                relayed,
                watermark,
                start: f.contains_key("s"),
            };
            if search.take(&e) {
                return Ok(search.finish());
            }
        }
        if n < HISTORY_PAGE {
            return Ok(search.finish());
        }
    }
}

/// Sends `client` every sample after `since` read back from the stream, then releases its
/// held live events. It sends [`SEND_CHUNK`] events at a time, each once the client's writer
/// has taken the previous ones (a slow dashboard slows its replay instead of filling its
/// queue), and stops when the dashboard leaves. Returns how many samples were replayed.
pub async fn replay(
    pool: &Pool,
    keys: &Keys,
    client: &Client,
    since: Position,
    page: usize,
) -> Result<u64, ReplayError> {
    let start = resume_point(pool, keys, since).await?;
    if !start.exact {
        tracing::warn!(%since, from = %start.from, "the resume history does not reach back to since; the replay may miss samples");
    }
    let mut pages = Pages::new(pool, keys, start.from, page).await?;
    let mut count = 0u64;
    while let Some(events) = pages.next().await? {
        for e in events
            .into_iter()
            .filter(|e| client.wants_server(&e.server))
        {
            client.send(e.json);
            count += 1;
            if count.is_multiple_of(SEND_CHUNK) && !room(client).await {
                return Ok(count);
            }
        }
        if client.has_left() {
            return Ok(count);
        }
    }
    client.send(event::to_vec(|b| {
        event::replayed(
            b,
            &since.to_string(),
            &start.from.to_string(),
            count,
            start.exact && !pages.truncated,
        )
    }));
    client.release(Some(pages.last));
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(s: &str) -> Position {
        Position::parse(s).expect("position")
    }

    #[test]
    fn a_page_of_the_largest_entries_stays_within_the_read_budget() {
        // The defaults: 64 MiB over 4 MiB entries.
        assert_eq!(page_entries(64 << 20, 4 << 20), 16);
        // Small entries: never more than 100 per page; huge ones: still one.
        assert_eq!(page_entries(64 << 20, 64 << 10), 100);
        assert_eq!(page_entries(1 << 20, 4 << 20), 1);
        assert_eq!(page_entries(1 << 20, 0), 100);
    }

    fn entry(id: &str, g: &str, m: &str, w: &str, start: bool) -> HistoryEntry {
        HistoryEntry {
            id: pos(id),
            generation: g.into(),
            relayed: pos(m),
            watermark: pos(w),
            start,
        }
    }

    #[test]
    fn the_latest_watermark_adopted_before_since_was_relayed() {
        let mut s = ResumeSearch::new(pos("100-0/3"));
        assert!(!s.take(&entry("300-0", "a", "120-0/0", "99-0/0", false)));
        assert!(!s.take(&entry("200-0", "a", "90-0/0", "80-0/0", false)));
        assert!(!s.take(&entry("150-0", "a", "70-0/0", "60-0/0", false)));
        assert!(s.take(&entry("10-0", "a", "0-0/0", "5-0/0", true)));
        assert_eq!(
            s.finish(),
            ResumePoint {
                from: pos("80-0/0"),
                exact: true
            }
        );
    }

    #[test]
    fn a_restart_since_takes_the_lowest_of_both_broadcasters() {
        let mut s = ResumeSearch::new(pos("100-0/3"));
        // b started after since's entry: it may have sent it (a replay) or not; a sent it.
        assert!(!s.take(&entry("500-0", "b", "0-0/0", "400-0/0", true)));
        assert!(!s.take(&entry("150-0", "a", "120-0/0", "95-0/0", false)));
        assert!(!s.take(&entry("120-0", "a", "99-0/0", "70-0/0", false)));
        assert!(s.take(&entry("50-0", "a", "0-0/0", "1-0/0", true)));
        assert_eq!(
            s.finish(),
            ResumePoint {
                from: pos("70-0/0"),
                exact: true
            }
        );
    }

    #[test]
    fn a_history_that_does_not_reach_back_is_not_exact() {
        let mut s = ResumeSearch::new(pos("100-0/3"));
        assert!(!s.take(&entry("150-0", "a", "99-0/0", "90-0/0", false)));
        assert_eq!(
            s.finish(),
            ResumePoint {
                from: pos("90-0/0"),
                exact: false
            }
        );
        assert_eq!(
            ResumeSearch::new(pos("100-0/3")).finish(),
            ResumePoint {
                from: pos("100-0/3"),
                exact: false
            },
            "no history: from since, not exact"
        );
    }
}

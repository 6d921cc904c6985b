//! Reading the stream back: a dashboard's `?since=ID` replay, and the broadcaster's catch-up
//! after a Redis reconnect.
//!
//! The stream is read a page at a time ([`Pages`]), each page on a connection taken from the
//! pool for that read only, so a long replay holds neither much memory nor a connection.
//!
//! A dashboard that reconnects with `?since=ID` (the `id` of the last `sample` event it saw) is
//! registered with its live events held aside, is sent every later sample read back from the
//! stream (as far back as the stream's retention goes), and only then gets the held live
//! events, minus those the replay already covered. The hold starts before the stream is read,
//! so nothing falls between the two; positions decide what was already sent, so nothing comes
//! twice, including samples the replay read from the stream before their live event (which
//! trails the stream by a worker's processing time) arrived. A `replayed` event tells the
//! dashboard how many samples came from the stream and whether the retention had already
//! dropped some of what it asked for.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_redis::redis::{self, Value};
use deadpool_redis::Pool;
use metrics_edge::hub::{Client, Event, EventKind};
use metrics_model::event;

use crate::keys::{Keys, Position};
use crate::wire::{self, raw_entries};

/// Entries per `XRANGE` page.
const PAGE: usize = 100;

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
    done: bool,
    decoder: metrics_model::decode::Decoder,
}

impl<'a> Pages<'a> {
    /// Starts reading after `since`, first checking whether retention dropped part of it.
    pub async fn new(pool: &'a Pool, keys: &'a Keys, since: Position) -> Result<Self, ReplayError> {
        let mut conn = pool.get().await?;
        let first: Value = redis::cmd("XRANGE")
            .arg(&keys.stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        let oldest = raw_entries(first)
            .first()
            .and_then(|e| Position::from_entry(&e.id, 0));
        Ok(Self {
            pool,
            keys,
            since,
            cursor: since.entry(),
            last: since,
            truncated: oldest.is_some_and(|o| (o.ms, o.seq) > (since.ms, since.seq)),
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
                .arg(PAGE)
                .query_async(&mut conn)
                .await?
        };
        let mut page = raw_entries(page);
        self.done = page.len() < PAGE;
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

/// Sends `client` every sample after `since` read back from the stream, then releases its
/// held live events. It sends [`SEND_CHUNK`] events at a time, each once the client's writer
/// has taken the previous ones (a slow dashboard slows its replay instead of filling its
/// queue), and stops when the dashboard leaves. Returns how many samples were replayed.
pub async fn replay(
    pool: &Pool,
    keys: &Keys,
    client: &Client,
    since: Position,
) -> Result<u64, ReplayError> {
    let filter = client.filter();
    let wanted = |server: &str| {
        filter
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|s| s == server))
    };
    let mut pages = Pages::new(pool, keys, since).await?;
    let mut count = 0u64;
    while let Some(events) = pages.next().await? {
        for e in events.into_iter().filter(|e| wanted(&e.server)) {
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
        event::replayed(b, &since.to_string(), count, !pages.truncated)
    }));
    client.release(Some(pages.last));
    Ok(count)
}

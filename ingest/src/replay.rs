//! Reading the stream back: a dashboard's `?since=ID` replay, and the broadcaster's catch-up
//! after a Redis reconnect.
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

use bytes::Bytes;
use deadpool_redis::redis::{self, Value};
use deadpool_redis::Pool;
use metrics_edge::hub::{Client, Event, EventKind};
use metrics_model::event;

use crate::keys::{Keys, Position};
use crate::wire::{self, raw_entries};

/// Entries per `XRANGE` page.
const PAGE: usize = 500;

/// Why the stream could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("Redis is unavailable: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("reading the stream: {0}")]
    Redis(#[from] redis::RedisError),
}

/// What a read of the stream after a position found.
pub struct Reread {
    /// Sample events after the position, in stream order.
    pub events: Vec<Event>,
    /// The last position read (the starting one when nothing was newer).
    pub last: Position,
    /// Retention had already dropped entries after the position.
    pub truncated: bool,
}

/// Reads back every sample after `since` from the stream, as `sample` events.
pub async fn read_since(pool: &Pool, keys: &Keys, since: Position) -> Result<Reread, ReplayError> {
    let mut conn = pool.get().await?;
    // Did retention already drop part of what was asked for?
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
    let truncated = oldest.is_some_and(|o| (o.ms, o.seq) > (since.ms, since.seq));
    let mut decoder = wire::entry_decoder();
    let mut start = since.entry();
    let mut out = Reread {
        events: Vec::new(),
        last: since,
        truncated,
    };
    let mut json = Vec::with_capacity(256);
    loop {
        let page: Value = redis::cmd("XRANGE")
            .arg(&keys.stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(&mut conn)
            .await?;
        let mut page = raw_entries(page);
        let n = page.len();
        for e in &mut page {
            // The cursor moves past every entry, decodable or not, so a bad one cannot stall
            // the read.
            start = format!("({}", e.id);
            let d = match wire::decode_entry(e, &mut decoder) {
                Ok(d) => d,
                Err(err) => {
                    tracing::error!(error = %err, "undecodable stream entry skipped by replay");
                    continue;
                }
            };
            for (i, s) in d.samples.iter().enumerate() {
                let Some(pos) = d.position(i) else { continue };
                if pos <= since {
                    continue;
                }
                out.last = out.last.max(pos);
                json.clear();
                wire::sample_event(&mut json, s, pos);
                out.events.push(Event {
                    kind: EventKind::Sample,
                    server: Arc::from(s.server_id.as_str()),
                    json: Bytes::copy_from_slice(&json),
                    position: Some(pos),
                });
            }
        }
        if n < PAGE {
            break;
        }
    }
    Ok(out)
}

/// Sends `client` every sample after `since` read back from the stream, then releases its
/// held live events. Returns how many samples were replayed.
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
    let reread = read_since(pool, keys, since).await?;
    let (last, truncated) = (reread.last, reread.truncated);
    let mut count = 0u64;
    for e in reread.events {
        if wanted(&e.server) {
            client.send(e.json);
            count += 1;
        }
    }
    client.send(event::to_vec(|b| {
        event::replayed(b, &since.to_string(), count, !truncated)
    }));
    client.release(Some(last));
    Ok(count)
}

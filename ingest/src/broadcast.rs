//! The broadcaster: Redis Pub/Sub in, dashboards out, with replay from the stream.
//!
//! It subscribes to the events channel (reconnecting by itself with backoff when Redis goes
//! away) and hands each published batch to the same dashboard hub System 2 uses, so `/ws`, the
//! filter, the token and the slow-consumer policy are identical. Batches arrive as lines of
//! `kind TAB server TAB position TAB json`; the JSON is sliced out, never parsed.
//!
//! Replay: a dashboard that reconnects with `?since=ID` (the `id` of the last `sample` event it
//! saw) is registered with its live events held aside, is sent every later sample read back from
//! the stream (as far back as the stream's retention goes), and only then gets the held live
//! events, minus those the replay already covered. The hold starts before the stream is read,
//! so nothing falls between the two; positions decide what was already sent, so nothing comes
//! twice, including samples the replay read from the stream before their live event (which
//! trails the stream by a worker's processing time) arrived. A `replayed` event tells the dashboard how many samples came from the stream and
//! whether the retention had already dropped some of what it asked for.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_redis::redis::{self, Value};
use deadpool_redis::Pool;
use futures_util::StreamExt;
use metrics_edge::dashboard::{BoxFuture, SnapshotSource};
use metrics_edge::hub::{Client, Event, EventKind, Hub};
use metrics_model::decode::Decoder;
use metrics_model::{event, now_ms};
use tokio_util::sync::CancellationToken;

use crate::keys::{raw_entries, Keys, Position};
use crate::worker::decode_entry;

/// Broadcaster counters and state.
#[derive(Debug, Default)]
pub struct BroadcastStats {
    pub connected: AtomicBool,
    pub batches: AtomicU64,
    pub events: AtomicU64,
    pub reconnects: AtomicU64,
}

/// Splits one published batch into hub events.
pub fn parse_batch(payload: Bytes) -> Vec<Event> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < payload.len() {
        let end = payload[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(payload.len(), |i| start + i);
        if let Some(e) = parse_line(&payload, start, end) {
            out.push(e);
        }
        start = end + 1;
    }
    out
}

fn parse_line(payload: &Bytes, start: usize, end: usize) -> Option<Event> {
    let line = &payload[start..end];
    let mut tabs = line
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\t')
        .map(|(i, _)| i);
    let (t1, t2, t3) = (tabs.next()?, tabs.next()?, tabs.next()?);
    let kind = match line.first()? {
        b'S' => EventKind::Sample,
        b'W' => EventKind::Window,
        _ => return None,
    };
    let server = std::str::from_utf8(&line[t1 + 1..t2]).ok()?;
    let position = std::str::from_utf8(&line[t2 + 1..t3])
        .ok()
        .and_then(Position::parse);
    Some(Event {
        kind,
        server: Arc::from(server),
        json: payload.slice(start + t3 + 1..end),
        position,
    })
}

/// Relays Pub/Sub to `hub` until `shutdown`, reconnecting with backoff.
///
/// Pub/Sub drops whatever is published while nobody listens, so after a reconnect the
/// broadcaster first reads back from the stream every sample after the last one it relayed
/// (as the `?since` replay does for a dashboard), then goes on live, skipping what the
/// catch-up already covered: a Redis restart or a network blip costs dashboards no sample
/// that is still in the stream.
pub async fn run(
    url: String,
    pool: Pool,
    keys: Keys,
    hub: Arc<Hub>,
    stats: Arc<BroadcastStats>,
    shutdown: CancellationToken,
) {
    let mut attempt = 0u32;
    let mut last: Option<Position> = None;
    while !shutdown.is_cancelled() {
        let link = Link {
            url: &url,
            pool: &pool,
            keys: &keys,
            hub: &hub,
            stats: &stats,
        };
        match link
            .subscribe_once(&shutdown, &mut attempt, &mut last)
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
        let ms = (100u64 << attempt.min(5)).min(3_000);
        attempt += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

struct Link<'a> {
    url: &'a str,
    pool: &'a Pool,
    keys: &'a Keys,
    hub: &'a Hub,
    stats: &'a BroadcastStats,
}

impl Link<'_> {
    async fn subscribe_once(
        &self,
        shutdown: &CancellationToken,
        attempt: &mut u32,
        last: &mut Option<Position>,
    ) -> redis::RedisResult<()> {
        let client = redis::Client::open(self.url)?;
        let mut pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connecting to Redis timed out",
                ))
            })??;
        pubsub.subscribe(&self.keys.channel).await?;
        self.stats.connected.store(true, Ordering::Relaxed);
        *attempt = 0;
        tracing::info!(channel = %self.keys.channel, "subscribed");
        // Subscribed first, then caught up: messages published meanwhile wait in the
        // subscription and are filtered against what the catch-up sent.
        let mut caught_up: Option<Position> = None;
        if let Some(since) = *last {
            match read_since(self.pool, self.keys, since).await {
                Ok(r) => {
                    if r.truncated {
                        tracing::warn!(%since, "stream retention dropped samples published while disconnected");
                    }
                    tracing::info!(
                        count = r.events.len(),
                        "caught up from the stream after reconnecting"
                    );
                    for chunk in r.events.chunks(2048) {
                        self.hub.publish(chunk);
                    }
                    caught_up = Some(r.last);
                    *last = Some(r.last);
                }
                Err(e) => tracing::warn!(error = %e, "could not catch up from the stream"),
            }
        }
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                m = messages.next() => match m {
                    Some(msg) => {
                        let mut events = parse_batch(Bytes::copy_from_slice(msg.get_payload_bytes()));
                        if let Some(c) = caught_up {
                            events.retain(|e| e.position.is_none_or(|p| p > c));
                        }
                        if let Some(p) = events.iter().filter_map(|e| e.position).max() {
                            *last = Some(last.map_or(p, |l| l.max(p)));
                        }
                        self.stats.batches.fetch_add(1, Ordering::Relaxed);
                        self.stats.events.fetch_add(events.len() as u64, Ordering::Relaxed);
                        self.hub.publish(&events);
                    }
                    None => return Err(redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "Pub/Sub stream ended"))),
                },
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    }
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
pub async fn read_since(pool: &Pool, keys: &Keys, since: Position) -> Result<Reread, String> {
    let mut conn = pool
        .get()
        .await
        .map_err(|e| format!("Redis is unavailable: {e}"))?;
    // Did retention already drop part of what was asked for?
    let first: Value = redis::cmd("XRANGE")
        .arg(&keys.stream)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let oldest = raw_entries(first)
        .first()
        .and_then(|e| Position::from_entry(&e.id, 0));
    let truncated = oldest.is_some_and(|o| (o.ms, o.seq) > (since.ms, since.seq));
    let mut decoder = Decoder::default();
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
            .arg(500)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let mut page = raw_entries(page);
        let n = page.len();
        for e in &mut page {
            let Ok(d) = decode_entry(e, &mut decoder) else {
                continue;
            };
            for (i, s) in d.samples.iter().enumerate() {
                let Some(pos) = Position::from_entry(&d.id, i as u32) else {
                    continue;
                };
                if pos <= since {
                    continue;
                }
                out.last = out.last.max(pos);
                json.clear();
                event::sample(&mut json, s, Some(&pos.to_string()));
                out.events.push(Event {
                    kind: EventKind::Sample,
                    server: Arc::from(s.server_id.as_str()),
                    json: Bytes::copy_from_slice(&json),
                    position: Some(pos),
                });
            }
            start = format!("({}", e.id);
        }
        if n < 500 {
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
) -> Result<u64, String> {
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
    let mut done = Vec::with_capacity(128);
    done.extend_from_slice(b"{\"type\":\"replayed\",\"since\":");
    event::write_str(&mut done, &since.to_string());
    done.extend_from_slice(b",\"count\":");
    event::write_u64(&mut done, count);
    done.extend_from_slice(b",\"complete\":");
    done.extend_from_slice(if truncated { b"false" } else { b"true" });
    done.push(b'}');
    client.send(done);
    client.release(Some(last));
    Ok(count)
}

/// Snapshots from the per-server Redis hashes the workers keep.
pub struct RedisSnapshots {
    pub pool: Pool,
    pub keys: Keys,
}

impl SnapshotSource for RedisSnapshots {
    fn snapshot(&self, server_id: Option<String>) -> BoxFuture<Result<Bytes, String>> {
        let pool = self.pool.clone();
        let keys = self.keys.clone();
        Box::pin(async move {
            let mut conn = pool
                .get()
                .await
                .map_err(|e| format!("Redis is unavailable: {e}"))?;
            let servers: Vec<String> = match &server_id {
                Some(s) => vec![s.clone()],
                None => {
                    let mut all: Vec<String> = redis::cmd("SMEMBERS")
                        .arg(&keys.servers)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| e.to_string())?;
                    all.sort();
                    all.truncate(10_000);
                    all
                }
            };
            let mut pipe = redis::pipe();
            for s in &servers {
                pipe.cmd("HGETALL").arg(keys.server(s));
            }
            let hashes: Vec<Vec<(String, Value)>> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            let mut b = Vec::with_capacity(1024);
            b.extend_from_slice(b"{\"type\":\"snapshot\",\"serverId\":");
            match &server_id {
                Some(s) => event::write_str(&mut b, s),
                None => b.extend_from_slice(b"null"),
            }
            b.extend_from_slice(b",\"serverTime\":");
            event::write_u64(&mut b, now_ms());
            b.extend_from_slice(b",\"servers\":[");
            let mut first = true;
            for (s, fields) in servers.iter().zip(hashes) {
                if fields.is_empty() {
                    if server_id.is_some() {
                        return Err(format!("no data for server `{s}`"));
                    }
                    continue;
                }
                if !first {
                    b.push(b',');
                }
                first = false;
                write_server(&mut b, s, &fields);
            }
            b.extend_from_slice(b"]}");
            Ok(Bytes::from(b))
        })
    }
}

fn text(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn write_server(b: &mut Vec<u8>, server: &str, fields: &[(String, Value)]) {
    b.extend_from_slice(b"{\"serverId\":");
    event::write_str(b, server);
    let get = |k: &str| {
        fields
            .iter()
            .find(|(f, _)| f == k)
            .and_then(|(_, v)| text(v))
    };
    b.extend_from_slice(b",\"timestamp\":");
    b.extend_from_slice(get("_timestamp").unwrap_or(b"null"));
    b.extend_from_slice(b",\"id\":");
    match get("_id").and_then(|v| std::str::from_utf8(v).ok()) {
        Some(id) => event::write_str(b, id),
        None => b.extend_from_slice(b"null"),
    }
    b.extend_from_slice(b",\"metrics\":{");
    let mut first = true;
    let mut metrics: Vec<_> = fields.iter().filter(|(f, _)| !f.starts_with('_')).collect();
    metrics.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, v) in metrics {
        let Some(v) = text(v) else { continue };
        if !first {
            b.push(b',');
        }
        first = false;
        event::write_str(b, name);
        b.push(b':');
        b.extend_from_slice(v);
    }
    b.extend_from_slice(b"},\"windows\":[");
    let mut first = true;
    let mut windows: Vec<_> = fields
        .iter()
        .filter(|(f, _)| f.starts_with("_window:"))
        .collect();
    windows.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, v) in windows {
        let Some(v) = text(v) else { continue };
        if !first {
            b.push(b',');
        }
        first = false;
        b.extend_from_slice(v);
    }
    b.extend_from_slice(b"]}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_into_events_without_parsing_json() {
        let payload = Bytes::from_static(
            b"S\tweb-1\t17-0/2\t{\"type\":\"sample\"}\nW\t*\t\t{\"type\":\"window\"}\nbogus\n",
        );
        let events = parse_batch(payload);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].kind, EventKind::Sample);
        assert_eq!(&*events[0].server, "web-1");
        assert_eq!(
            events[0].position,
            Some(Position {
                ms: 17,
                seq: 0,
                index: 2
            })
        );
        assert_eq!(&events[0].json[..], b"{\"type\":\"sample\"}");
        assert_eq!(events[1].kind, EventKind::Window);
        assert_eq!(events[1].position, None);
    }
}

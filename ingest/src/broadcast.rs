//! The broadcaster: Redis Pub/Sub in, dashboards out, with replay from the stream.
//!
//! It subscribes to the events channel (reconnecting by itself with backoff when Redis goes
//! away) and hands each published batch to the same dashboard hub System 2 uses, so `/ws`, the
//! filter, the token and the slow-consumer policy are identical. Batches arrive as lines of
//! `kind TAB server TAB position TAB json`; the JSON is sliced out, never parsed.
//!
//! Pub/Sub drops whatever is published while nobody listens, so after a reconnect the
//! broadcaster first reads back from the stream what it missed (the same read as a dashboard's
//! `?since=` replay, [`crate::replay`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_redis::redis;
use deadpool_redis::Pool;
use futures_util::StreamExt;
use metrics_edge::backoff::Backoff;
use metrics_edge::hub::Hub;
use tokio_util::sync::CancellationToken;

use crate::keys::{Keys, Position};
use crate::replay::{Pages, ReplayError};
use crate::wire::parse_batch;

/// Broadcaster counters and state.
#[derive(Debug, Default)]
pub struct BroadcastStats {
    pub connected: AtomicBool,
    pub batches: AtomicU64,
    pub events: AtomicU64,
    pub reconnects: AtomicU64,
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
    let mut backoff = Backoff::default();
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
            .subscribe_once(&shutdown, &mut backoff, &mut last)
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

struct Link<'a> {
    url: &'a str,
    pool: &'a Pool,
    keys: &'a Keys,
    hub: &'a Hub,
    stats: &'a BroadcastStats,
}

impl Link<'_> {
    /// Relays every sample after `since` read back from the stream, a page at a time;
    /// returns the last position relayed.
    async fn catch_up(&self, since: Position) -> Result<Position, ReplayError> {
        let mut pages = Pages::new(self.pool, self.keys, since).await?;
        if pages.truncated {
            tracing::warn!(%since, "stream retention dropped samples published while disconnected");
        }
        let mut count = 0usize;
        while let Some(events) = pages.next().await? {
            count += events.len();
            for chunk in events.chunks(2048) {
                self.hub.publish(chunk);
            }
        }
        tracing::info!(count, "caught up from the stream after reconnecting");
        Ok(pages.last)
    }

    async fn subscribe_once(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
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
        backoff.reset();
        tracing::info!(channel = %self.keys.channel, "subscribed");
        // Subscribed first, then caught up: messages published meanwhile wait in the
        // subscription and are filtered against what the catch-up sent.
        let mut caught_up: Option<Position> = None;
        if let Some(since) = *last {
            match self.catch_up(since).await {
                Ok(to) => {
                    caught_up = Some(to);
                    *last = Some(to);
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

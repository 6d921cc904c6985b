//! Snapshots for System 1's dashboards, from the per-server hashes the workers keep: the latest
//! value of every metric, where the latest sample came from, and the last closed window of each
//! length (across servers from the `*` hash). Encoded by the same `SnapshotEncoder` as System
//! 2's, so the event has one shape in both systems.

use bytes::Bytes;
use deadpool_redis::redis::{self, Value};
use deadpool_redis::Pool;
use metrics_edge::dashboard::{BoxFuture, SnapshotError, SnapshotSource};
use metrics_model::event::SnapshotEncoder;
use metrics_model::now_ms;

use crate::keys::Keys;

/// Most servers in a snapshot of all servers (the most recently seen).
const MAX_SERVERS: usize = 10_000;

/// Snapshots from the per-server Redis hashes.
pub struct RedisSnapshots {
    pub pool: Pool,
    pub keys: Keys,
}

impl SnapshotSource for RedisSnapshots {
    fn snapshot(&self, server_id: Option<String>) -> BoxFuture<Result<Bytes, SnapshotError>> {
        let pool = self.pool.clone();
        let keys = self.keys.clone();
        Box::pin(async move {
            snapshot(&pool, &keys, server_id.as_deref())
                .await
                .map(Bytes::from)
        })
    }
}

fn unavailable(e: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Unavailable(format!("Redis: {e}"))
}

async fn snapshot(
    pool: &Pool,
    keys: &Keys,
    server_id: Option<&str>,
) -> Result<Vec<u8>, SnapshotError> {
    let mut conn = pool.get().await.map_err(unavailable)?;
    let servers: Vec<String> = match server_id {
        Some(s) => vec![s.to_string()],
        None => {
            // The most recently seen servers, never the whole set.
            let mut all: Vec<String> = redis::cmd("ZREVRANGE")
                .arg(&keys.servers)
                .arg(0)
                .arg(MAX_SERVERS - 1)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            all.sort();
            all
        }
    };
    let mut pipe = redis::pipe();
    for s in &servers {
        pipe.cmd("HGETALL").arg(keys.server(s));
    }
    pipe.cmd("HGETALL").arg(keys.server("*"));
    let mut hashes: Vec<Vec<(String, Value)>> =
        pipe.query_async(&mut conn).await.map_err(unavailable)?;
    let across = hashes.pop().unwrap_or_default();
    let mut snap = SnapshotEncoder::new(server_id, now_ms());
    for (s, fields) in servers.iter().zip(&hashes) {
        if fields.is_empty() {
            continue;
        }
        let h = Hash(fields);
        let metrics = h.metrics();
        snap.server(
            s,
            h.number("_timestamp"),
            h.text("_id"),
            metrics.iter().map(|(k, v)| (*k, *v)),
            h.windows(),
        );
    }
    if let (Some(s), true) = (server_id, snap.is_empty()) {
        return Err(SnapshotError::UnknownServer(s.to_string()));
    }
    let all = match server_id {
        None => Hash(&across).windows(),
        Some(_) => Vec::new(),
    };
    Ok(snap.finish(all))
}

/// A snapshot hash as `HGETALL` returns it.
struct Hash<'a>(&'a [(String, Value)]);

impl<'a> Hash<'a> {
    fn bytes(v: &'a Value) -> Option<&'a [u8]> {
        match v {
            Value::BulkString(b) => Some(b),
            Value::SimpleString(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    fn text(&self, field: &str) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(f, _)| f == field)
            .and_then(|(_, v)| Self::bytes(v))
            .and_then(|b| std::str::from_utf8(b).ok())
    }

    fn number(&self, field: &str) -> Option<u64> {
        self.text(field).and_then(|t| t.parse().ok())
    }

    /// The metrics (fields not starting with `_`), by name.
    fn metrics(&self) -> Vec<(&'a str, f64)> {
        let mut m: Vec<(&str, f64)> = self
            .0
            .iter()
            .filter(|(f, _)| !f.starts_with('_'))
            .filter_map(|(f, v)| {
                let x = std::str::from_utf8(Self::bytes(v)?).ok()?.parse().ok()?;
                Some((f.as_str(), x))
            })
            .collect();
        m.sort_by(|a, b| a.0.cmp(b.0));
        m
    }

    /// The last window of each length (`_window:LABEL` fields), by label.
    fn windows(&self) -> Vec<&'a [u8]> {
        let mut w: Vec<(&str, &[u8])> = self
            .0
            .iter()
            .filter(|(f, _)| f.starts_with("_window:"))
            .filter_map(|(f, v)| Some((f.as_str(), Self::bytes(v)?)))
            .collect();
        w.sort_by(|a, b| a.0.cmp(b.0));
        w.into_iter().map(|(_, v)| v).collect()
    }
}

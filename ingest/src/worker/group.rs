//! The Redis commands of a consumer-group reader: create the group, read new entries, claim a
//! silent consumer's pending entries, acknowledge, and hold the window leader's lease. Each is
//! one round trip, and none is ever cancelled half-way (a dropped command would leave its
//! reply on the connection): callers check for shutdown between them.

use std::time::Duration;

use deadpool_redis::redis::{self, Value};
use deadpool_redis::Connection;

use crate::keys::Keys;
use crate::wire::{raw_entries, RawEntry};

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

/// `XREADGROUP ... STREAMS stream >`; empty on timeout.
pub async fn read(
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
    // nil when BLOCK timed out.
    Ok(entries_of(reply))
}

/// `XREADGROUP ... STREAMS stream >` without waiting; empty when nothing is new.
pub async fn read_now(
    conn: &mut Connection,
    keys: &Keys,
    group: &str,
    consumer: &str,
    count: usize,
) -> redis::RedisResult<Vec<RawEntry>> {
    let reply: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(&keys.stream)
        .arg(">")
        .query_async(conn)
        .await?;
    Ok(entries_of(reply))
}

/// The entries of an `XREADGROUP` reply (`[[stream, entries]]`, or nil).
fn entries_of(reply: Value) -> Vec<RawEntry> {
    let Value::Array(streams) = reply else {
        return Vec::new();
    };
    streams
        .into_iter()
        .flat_map(|s| match s {
            Value::Array(mut kv) if kv.len() == 2 => kv.pop().map(raw_entries).unwrap_or_default(),
            _ => Vec::new(),
        })
        .collect()
}

/// What one `XAUTOCLAIM` returned.
pub struct Claimed {
    /// Where the next call goes on (`0-0`: the pending list was scanned to its end).
    pub next: String,
    pub entries: Vec<RawEntry>,
    /// Pending entries the stream no longer holds (trimmed before anyone processed them).
    pub deleted: usize,
}

/// Claims entries of `group` idle longer than `idle` (any consumer) for `consumer`, scanning
/// the pending list from `start`.
pub async fn claim(
    conn: &mut Connection,
    keys: &Keys,
    group: &str,
    consumer: &str,
    idle: Duration,
    count: usize,
    start: &str,
) -> redis::RedisResult<Claimed> {
    let reply: Value = redis::cmd("XAUTOCLAIM")
        .arg(&keys.stream)
        .arg(group)
        .arg(consumer)
        .arg(idle.as_millis() as u64)
        .arg(start)
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    // `[next-cursor, entries, deleted-ids]`
    let mut claimed = Claimed {
        next: "0-0".into(),
        entries: Vec::new(),
        deleted: 0,
    };
    if let Value::Array(parts) = reply {
        let mut parts = parts.into_iter();
        if let Some(Value::BulkString(b)) = parts.next() {
            claimed.next = String::from_utf8_lossy(&b).into_owned();
        }
        if let Some(entries) = parts.next() {
            claimed.entries = raw_entries(entries);
        }
        if let Some(Value::Array(deleted)) = parts.next() {
            claimed.deleted = deleted.len();
        }
    }
    Ok(claimed)
}

/// The `XACK` of `entries` in `group`, to send alone or add to a pipeline.
pub fn ack_cmd(keys: &Keys, group: &str, entries: &[RawEntry]) -> redis::Cmd {
    let mut cmd = redis::cmd("XACK");
    cmd.arg(&keys.stream).arg(group);
    for e in entries {
        cmd.arg(&e.id);
    }
    cmd
}

/// Acknowledges `entries` in `group`.
pub async fn ack(
    conn: &mut Connection,
    keys: &Keys,
    group: &str,
    entries: &[RawEntry],
) -> redis::RedisResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    ack_cmd(keys, group, entries).query_async::<()>(conn).await
}

/// Takes or renews the lease; true while `me` is the window leader.
pub async fn hold_lease(
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

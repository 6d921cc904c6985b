//! Stream retention that never loses an unprocessed sample.
//!
//! The front door writes entries without a cap (`XADD` with no `MAXLEN`): Redis 7's `MAXLEN`
//! does not know about consumer groups, and would trim entries no worker has read yet after
//! the agent was told `202`. Instead the workers trim, about once a second: to `--maxlen`
//! entries (the replay window for `?since=`), but never past the first entry some group
//! (`workers` or `windows`) has not yet acknowledged. When the workers fall behind, the stream
//! grows past `--maxlen` rather than losing samples; it is logged, and should Redis run out
//! of memory (`maxmemory` with `noeviction`), `XADD` fails and agents get `503` with
//! `Retry-After`: back-pressure, not loss.
//!
//! When both groups have acknowledged everything, the trim keeps the newest `--maxlen`
//! entries (`XTRIM MAXLEN ~`); otherwise it trims by id (`MINID ~`) to where about `--maxlen`
//! entries remain by their arrival times, or to the first entry still needed, whichever is
//! older. The `~` forms remove only whole radix-tree nodes, so a few more entries than asked
//! may stay, never fewer.

use deadpool_redis::redis::{self, Value};
use deadpool_redis::Connection;

use crate::keys::{Keys, Position, WINDOWS_GROUP, WORKERS_GROUP};

/// What one trim found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Entries removed.
    pub removed: u64,
    /// Entries the stream still holds over `--maxlen` because they are not processed yet.
    pub held_unprocessed: u64,
}

/// Trims the stream to about `maxlen` entries, never past what both groups acknowledged.
pub async fn trim(conn: &mut Connection, keys: &Keys, maxlen: u64) -> redis::RedisResult<Trimmed> {
    let info: Value = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(&keys.stream)
        .query_async(conn)
        .await?;
    let info = fields(&info);
    let length = int(info.get("length").copied()).unwrap_or(0);
    if length <= maxlen {
        return Ok(Trimmed::default());
    }
    let (Some(first), Some(last)) = (
        id(info.get("recorded-first-entry-id").copied()),
        id(info.get("last-generated-id").copied()),
    ) else {
        return Ok(Trimmed::default());
    };
    let Some(safe) = first_unacknowledged(conn, keys).await? else {
        // A group is missing (no worker has started it yet): nothing is known to be done.
        return Ok(Trimmed::default());
    };
    let mut cmd = redis::cmd("XTRIM");
    cmd.arg(&keys.stream);
    let wanted = cutoff(first, last, length, maxlen);
    if safe > last {
        // Both groups have acknowledged everything: the newest `maxlen` entries stay.
        cmd.arg("MAXLEN").arg("~").arg(maxlen);
    } else {
        // Some entries are still needed: trim by id, by the arrival times, never past them.
        cmd.arg("MINID").arg("~").arg(wanted.min(safe).entry());
    }
    let removed: u64 = cmd.query_async(conn).await?;
    let held_unprocessed = if safe < wanted {
        length.saturating_sub(removed).saturating_sub(maxlen)
    } else {
        0
    };
    Ok(Trimmed {
        removed,
        held_unprocessed,
    })
}

/// The id below which about `length - maxlen` entries lie, assuming they arrived at an even
/// rate between `first` and `last` (ids are arrival times).
fn cutoff(first: Position, last: Position, length: u64, maxlen: u64) -> Position {
    let over = length.saturating_sub(maxlen) as u128;
    let span = last.ms.saturating_sub(first.ms) as u128;
    let ms = first.ms + (span * over / length.max(1) as u128) as u64;
    Position {
        ms,
        seq: 0,
        index: 0,
    }
}

/// The first entry either group still needs: its oldest pending entry, or the entry after
/// the last one delivered to it. `None` when a group does not exist yet.
async fn first_unacknowledged(
    conn: &mut Connection,
    keys: &Keys,
) -> redis::RedisResult<Option<Position>> {
    let groups: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&keys.stream)
        .query_async(conn)
        .await?;
    let Value::Array(groups) = groups else {
        return Ok(None);
    };
    let mut safe: Option<Position> = None;
    let mut seen = 0;
    for g in &groups {
        let g = fields(g);
        let Some(name) = text(g.get("name").copied()) else {
            continue;
        };
        if name != WORKERS_GROUP && name != WINDOWS_GROUP {
            continue;
        }
        seen += 1;
        let needed = if int(g.get("pending").copied()).unwrap_or(0) > 0 {
            let summary: Value = redis::cmd("XPENDING")
                .arg(&keys.stream)
                .arg(name)
                .query_async(conn)
                .await?;
            match summary {
                Value::Array(parts) => id(parts.get(1)),
                _ => None,
            }
        } else {
            // Everything up to the last delivered entry is acknowledged; the next is needed.
            id(g.get("last-delivered-id").copied()).map(|p| Position {
                seq: p.seq.saturating_add(1),
                ..p
            })
        };
        let Some(needed) = needed else {
            return Ok(None);
        };
        safe = Some(safe.map_or(needed, |s| s.min(needed)));
    }
    Ok(if seen == 2 { safe } else { None })
}

/// A flat `[field, value, ...]` reply (or a RESP3 map) as (field, value) pairs.
fn fields(v: &Value) -> std::collections::HashMap<String, &Value> {
    let mut out = std::collections::HashMap::new();
    match v {
        Value::Array(items) => {
            for pair in items.chunks(2) {
                if let [k, v] = pair {
                    if let Some(k) = text(Some(k)) {
                        out.insert(k.to_string(), v);
                    }
                }
            }
        }
        Value::Map(items) => {
            for (k, v) in items {
                if let Some(k) = text(Some(k)) {
                    out.insert(k.to_string(), v);
                }
            }
        }
        _ => {}
    }
    out
}

fn text(v: Option<&Value>) -> Option<&str> {
    match v {
        Some(Value::BulkString(b)) => std::str::from_utf8(b).ok(),
        Some(Value::SimpleString(s)) => Some(s),
        _ => None,
    }
}

fn int(v: Option<&Value>) -> Option<u64> {
    match v {
        Some(Value::Int(n)) => u64::try_from(*n).ok(),
        other => text(other).and_then(|t| t.parse().ok()),
    }
}

fn id(v: Option<&Value>) -> Option<Position> {
    text(v).and_then(|s| Position::from_entry(s, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_keeps_about_maxlen_of_an_even_stream() {
        let p = |ms| Position {
            ms,
            seq: 0,
            index: 0,
        };
        assert_eq!(cutoff(p(1_000), p(2_000), 1_000, 250).ms, 1_750);
        assert_eq!(cutoff(p(1_000), p(1_000), 1_000, 250).ms, 1_000);
        assert_eq!(cutoff(p(1_000), p(2_000), 100, 250).ms, 1_000);
    }
}

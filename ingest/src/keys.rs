//! Redis key layout and entry format, in one place so every role agrees.
//!
//! - stream `{prefix}:samples`: one entry per accepted request (or per streamed chunk), with one
//!   field `e`: a header line `ARRIVAL_MS NODE_ID` then the request's samples as NDJSON,
//!   normalised (flattened metrics, timestamp filled in). One field rather than three because
//!   every reader pays per field to parse the reply (measured: Redis reply parsing was a tenth
//!   of System 1's CPU);
//! - consumer groups `workers` (sample events, snapshots; shared by all workers) and `windows`
//!   (the window roll-up; read by the current leader only);
//! - hash `{prefix}:server:{serverId}`: latest value of each metric, plus `_timestamp`,
//!   `_arrival`, `_node` (the front door that accepted it), `_id`;
//! - channel `{prefix}:events`: batches of dashboard events, one line per event:
//!   `kind TAB serverId TAB position TAB json`, so the broadcaster routes without parsing JSON;
//! - set `{prefix}:servers`: every server id seen;
//! - key `{prefix}:windows:leader`: the window leader's lease.

/// The stream entry's only field.
pub const ENTRY_FIELD: &str = "e";

/// Encodes an entry's value: header line, then one normalised sample per line.
pub fn entry_value(arrival_ms: u64, node: &str, samples: &[metrics_model::Sample]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + samples.len() * 160);
    out.extend_from_slice(arrival_ms.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(node.as_bytes());
    out.push(b'\n');
    for s in samples {
        metrics_model::event::agent_sample(&mut out, s);
        out.push(b'\n');
    }
    out
}

/// Splits an entry's value into arrival time, node id and the NDJSON samples.
pub fn split_entry_value(v: &mut [u8]) -> Option<(u64, String, &mut [u8])> {
    let nl = v.iter().position(|&b| b == b'\n')?;
    let (head, rest) = v.split_at_mut(nl);
    let head = std::str::from_utf8(head).ok()?;
    let (arrival, node) = head.split_once(' ')?;
    Some((arrival.parse().ok()?, node.to_string(), &mut rest[1..]))
}

/// A stream entry as read back: its id and the value of its field, if present.
#[derive(Clone, Debug, Default)]
pub struct RawEntry {
    pub id: String,
    pub value: Option<Vec<u8>>,
}

/// Reads entries out of an `XRANGE`-shaped reply (`[[id, [field, value, ...]], ...]`) without
/// building a map per entry: the generic stream reply types allocate a `HashMap` and strings for
/// every entry, which showed in profiles at tens of thousands of entries per second.
pub fn raw_entries(reply: redis::Value) -> Vec<RawEntry> {
    use redis::Value;
    let text = |v: Value| match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    };
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let mut pair = pair.into_iter();
            let id = String::from_utf8(text(pair.next()?)?).ok()?;
            let mut value = None;
            if let Some(Value::Array(fields)) = pair.next() {
                let mut fields = fields.into_iter();
                while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
                    if text(k).as_deref() == Some(ENTRY_FIELD.as_bytes()) {
                        value = text(v);
                    }
                }
            }
            Some(RawEntry { id, value })
        })
        .collect()
}

/// All key names for one prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    pub stream: String,
    pub channel: String,
    pub leader: String,
    /// Set of every server id seen (for snapshots of all servers).
    pub servers: String,
    server_prefix: String,
}

/// Consumer group of the sample workers.
pub const WORKERS_GROUP: &str = "workers";
/// Consumer group of the window leader.
pub const WINDOWS_GROUP: &str = "windows";

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            stream: format!("{prefix}:samples"),
            channel: format!("{prefix}:events"),
            leader: format!("{prefix}:windows:leader"),
            servers: format!("{prefix}:servers"),
            server_prefix: format!("{prefix}:server:"),
        }
    }

    /// The snapshot hash of `server`.
    pub fn server(&self, server: &str) -> String {
        format!("{}{server}", self.server_prefix)
    }
}

/// A position in the stream: entry id (`ms-seq`) and the sample's index in the entry, printed as
/// `ms-seq/index` (the `id` of System 1's `sample` events, and the position field of a channel
/// line). The type lives in the dashboard hub, which stitches replays to the live feed with it.
pub use metrics_edge::hub::LogPosition as Position;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_values_round_trip() {
        let mut buf = b"{\"serverId\":\"a\",\"metrics\":{\"cpu\":1}}".to_vec();
        let samples = metrics_model::decode::Decoder::default()
            .decode_json(&mut buf, 7)
            .expect("valid");
        let mut v = entry_value(1_764_349_200_123, "node-1", &samples);
        let (arrival, node, rest) = split_entry_value(&mut v).expect("well formed");
        assert_eq!((arrival, node.as_str()), (1_764_349_200_123, "node-1"));
        assert_eq!(
            rest,
            b"{\"serverId\":\"a\",\"timestamp\":7,\"metrics\":{\"cpu\":1}}\n"
        );
        assert!(split_entry_value(&mut b"no header".to_vec()).is_none());
    }

    #[test]
    fn raw_entries_read_ids_and_the_entry_field() {
        use redis::Value;
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("x"), bulk("y"), bulk("e"), bulk("v1")]),
            ]),
            Value::Array(vec![bulk("2-0"), Value::Nil]),
            Value::Int(7),
        ]);
        let got = raw_entries(reply);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].id.as_str(), got[0].value.as_deref()),
            ("1-0", Some(&b"v1"[..]))
        );
        assert_eq!((got[1].id.as_str(), got[1].value.as_deref()), ("2-0", None));
        assert!(raw_entries(Value::Nil).is_empty());
    }
}

//! Redis key layout, in one place so every role agrees (the formats of what is stored and
//! published there are in [`crate::wire`]).
//!
//! - stream `{prefix}:samples`: one entry per accepted request (or per streamed chunk);
//! - consumer groups `workers` (sample events, snapshots; shared by all workers) and `windows`
//!   (the window roll-up; read by the current leader only);
//! - hash `{prefix}:server:{serverId}`: latest value of each metric, plus `_timestamp`,
//!   `_arrival`, `_node` (the front door that accepted it), `_id`, and `_window:{label}` (the
//!   last closed window of each length); hash `{prefix}:server:*` holds the across-servers
//!   windows;
//! - channel `{prefix}:events`: batches of dashboard events (Pub/Sub lines);
//! - set `{prefix}:servers`: every server id seen;
//! - key `{prefix}:windows:leader`: the window leader's lease.

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

/// A position in the stream: entry id (`ms-seq`) and the sample's index in the entry.
/// Printed as `ms-seq/index`, the `id` of System 1's `sample` events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub ms: u64,
    pub seq: u64,
    pub index: u32,
}

impl Position {
    /// Parses `ms-seq` (a stream entry id) with `index`.
    pub fn from_entry(entry: &str, index: u32) -> Option<Self> {
        let (ms, seq) = entry.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
            index,
        })
    }

    /// Parses `ms-seq/index` (or a bare entry id, meaning its last sample).
    pub fn parse(s: &str) -> Option<Self> {
        match s.split_once('/') {
            Some((entry, idx)) => Self::from_entry(entry, idx.parse().ok()?),
            None => Self::from_entry(s, u32::MAX),
        }
    }

    /// The stream entry id.
    pub fn entry(&self) -> String {
        format!("{}-{}", self.ms, self.seq)
    }
}

impl From<Position> for (u64, u64, u32) {
    fn from(p: Position) -> Self {
        (p.ms, p.seq, p.index)
    }
}

impl From<(u64, u64, u32)> for Position {
    fn from((ms, seq, index): (u64, u64, u32)) -> Self {
        Self { ms, seq, index }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}/{}", self.ms, self.seq, self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_and_order() {
        let p = Position::parse("1764349200123-4/7").expect("valid");
        assert_eq!((p.ms, p.seq, p.index), (1_764_349_200_123, 4, 7));
        assert_eq!(p.to_string(), "1764349200123-4/7");
        assert_eq!(p.entry(), "1764349200123-4");
        assert!(Position::parse("1764349200123-4/8").expect("valid") > p);
        assert!(Position::parse("1764349200124-0/0").expect("valid") > p);
        assert_eq!(Position::parse("1-2").expect("bare").index, u32::MAX);
        assert!(Position::parse("nope").is_none());
        assert!(Position::parse("1-2/x").is_none());
    }
}

//! Where an event sits in a durable log, so a replay can be stitched to the live feed.
//!
//! System 1's log is a Redis stream: an entry id `ms-seq` and the sample's index in the entry.
//! The hub only compares positions (to skip live events a replay already sent), but the type
//! lives here, with its text form `ms-seq/index` (the `id` of System 1's `sample` events), so
//! the hub and the system that writes the log agree on one type rather than a tuple.

use std::fmt;

/// A position in the log: entry id (`ms-seq`) and the sample's index in the entry.
/// Ordered as the log is: by entry, then by index. Printed as `ms-seq/index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPosition {
    pub ms: u64,
    pub seq: u64,
    pub index: u32,
}

impl LogPosition {
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

    /// The stream entry id, `ms-seq`.
    pub fn entry(&self) -> String {
        format!("{}-{}", self.ms, self.seq)
    }
}

impl fmt::Display for LogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}/{}", self.ms, self.seq, self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_and_order() {
        let p = LogPosition::parse("1764349200123-4/7").expect("valid");
        assert_eq!((p.ms, p.seq, p.index), (1_764_349_200_123, 4, 7));
        assert_eq!(p.to_string(), "1764349200123-4/7");
        assert_eq!(p.entry(), "1764349200123-4");
        assert!(LogPosition::parse("1764349200123-4/8").expect("valid") > p);
        assert!(LogPosition::parse("1764349200124-0/0").expect("valid") > p);
        assert_eq!(LogPosition::parse("1-2").expect("bare").index, u32::MAX);
        assert!(LogPosition::parse("nope").is_none());
        assert!(LogPosition::parse("1-2/x").is_none());
    }
}

//! System 1's two wire formats, both directions, in one place: the stream entry (written by the
//! front door, read by the workers, the window leader and replay) and the Pub/Sub line (written
//! by the workers, read by the broadcaster). Whatever one side writes, the other must read, so
//! encoder and decoder sit side by side and the tests round-trip them, limits included.
//!
//! **Stream entry**: one field `e` whose value is a header line `ARRIVAL_MS NODE_ID`, then the
//! samples as NDJSON, normalised (flattened metrics, timestamp filled in). One field rather
//! than three because every reader pays per field to parse the reply (measured: Redis reply
//! parsing was a tenth of System 1's CPU). A sample's position is its entry id and its index in
//! the entry (`ms-seq/index`, the `id` of System 1's `sample` events).
//!
//! An entry holds what the front door accepted under its own limits (`--max-batch` per request,
//! any number of lines per streamed chunk), so readers decode entries with no sample-count
//! limit: an accepted sample is never refused on the way out. Its size is bounded in bytes
//! instead ([`EntryWriter`], `--max-entry-bytes`): flattening repeats a group's name in every
//! leaf, so a body can grow about seventeen-fold on the way in, and the workers size their
//! reads by this bound.
//!
//! **Pub/Sub line**: one message carries a batch of events, one per line:
//! `KIND TAB SERVER TAB POSITION TAB JSON` (`S` sample or `W` window; the position is empty for
//! windows), so the broadcaster routes by server without parsing any JSON. A batch of windows
//! starts with a mark line `M TAB TAB ID/0 TAB` naming its entry in the window log (written by
//! the leader's script in `worker::windows`; see [`batch_mark`]); readers that do not know the
//! kind skip the line.

use std::sync::Arc;

use bytes::Bytes;
use metrics_edge::hub::{Event, EventKind};
use metrics_model::decode::{Decoder, Limits};
use metrics_model::{event, DecodeError, Sample};

use crate::keys::Position;

/// The stream entry's only field.
pub const ENTRY_FIELD: &str = "e";

/// Encodes an entry's value: header line, then one normalised sample per line.
pub fn encode_entry(arrival_ms: u64, node: &str, samples: &[Sample]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + samples.len() * 160);
    event::write_u64(&mut out, arrival_ms);
    out.push(b' ');
    out.extend_from_slice(node.as_bytes());
    out.push(b'\n');
    for s in samples {
        event::agent_sample(&mut out, s);
        out.push(b'\n');
    }
    out
}

/// A stream entry being encoded under a size limit: samples are appended one at a time, and one
/// that would take the entry past the limit is left out, so the limit is checked at the cost
/// of one comparison per sample, on bytes already being written.
pub struct EntryWriter {
    buf: Vec<u8>,
    count: usize,
    max: usize,
}

impl EntryWriter {
    /// An entry with its header line, room reserved for about `samples` samples.
    pub fn new(arrival_ms: u64, node: &str, max: usize, samples: usize) -> Self {
        let mut buf = Vec::with_capacity((32 + samples.saturating_mul(160)).min(max));
        event::write_u64(&mut buf, arrival_ms);
        buf.push(b' ');
        buf.extend_from_slice(node.as_bytes());
        buf.push(b'\n');
        Self { buf, count: 0, max }
    }

    /// Appends `s`, or, if the entry would then pass the limit, leaves the entry as it was
    /// and returns the size it would have had.
    pub fn push(&mut self, s: &Sample) -> Result<(), usize> {
        let before = self.buf.len();
        event::agent_sample(&mut self.buf, s);
        self.buf.push(b'\n');
        let after = self.buf.len();
        if after > self.max {
            self.buf.truncate(before);
            return Err(after);
        }
        self.count += 1;
        Ok(())
    }

    /// Samples in the entry.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The entry's size so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True while no sample has been appended.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The entry's value.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Bytes `samples` take in an entry, measured one sample at a time in a scratch buffer (for
/// the refusal message of an entry over the limit; nothing the size of the entry is built).
pub fn encoded_len(samples: &[Sample]) -> usize {
    let mut scratch = Vec::with_capacity(4096);
    samples
        .iter()
        .map(|s| {
            scratch.clear();
            event::agent_sample(&mut scratch, s);
            scratch.len() + 1
        })
        .sum()
}

/// A stream entry as read back: its id and the value of its field, if present.
#[derive(Clone, Debug, Default)]
pub struct RawEntry {
    pub id: String,
    pub value: Option<Vec<u8>>,
}

/// A stream entry, decoded.
#[derive(Debug)]
pub struct StoredEntry {
    pub id: String,
    pub arrival_ms: u64,
    /// The front door that accepted it.
    pub node: String,
    pub samples: Vec<Sample>,
}

impl StoredEntry {
    /// The position of the entry's `index`th sample.
    pub fn position(&self, index: usize) -> Option<Position> {
        Position::from_entry(&self.id, index as u32)
    }
}

/// Why a stream entry could not be decoded (an entry this system did not write, or a bug).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EntryError {
    #[error("entry {0} has no `e` field")]
    NoField(String),
    #[error("entry {0} has no header line `ARRIVAL_MS NODE`")]
    NoHeader(String),
    #[error("entry {0}: {1}")]
    Samples(String, DecodeError),
}

/// The limits entries are decoded with: the front door already applied its own.
pub fn entry_limits() -> Limits {
    Limits {
        max_batch: usize::MAX,
        ..Limits::default()
    }
}

/// A decoder for stream entries (see [`entry_limits`]).
pub fn entry_decoder() -> Decoder {
    Decoder::new(entry_limits())
}

/// Decodes a stream entry written by [`encode_entry`], taking its value out of `e`.
pub fn decode_entry(e: &mut RawEntry, decoder: &mut Decoder) -> Result<StoredEntry, EntryError> {
    let mut value = e
        .value
        .take()
        .ok_or_else(|| EntryError::NoField(e.id.clone()))?;
    let (arrival_ms, node, ndjson) =
        split_header(&mut value).ok_or_else(|| EntryError::NoHeader(e.id.clone()))?;
    let samples = decoder
        .decode_ndjson(ndjson, arrival_ms)
        .map_err(|err| EntryError::Samples(e.id.clone(), err))?;
    Ok(StoredEntry {
        id: e.id.clone(),
        arrival_ms,
        node,
        samples,
    })
}

/// Splits an entry's value into arrival time, node id and the NDJSON samples.
fn split_header(v: &mut [u8]) -> Option<(u64, String, &mut [u8])> {
    let nl = v.iter().position(|&b| b == b'\n')?;
    let (head, rest) = v.split_at_mut(nl);
    let head = std::str::from_utf8(head).ok()?;
    let (arrival, node) = head.split_once(' ')?;
    Some((arrival.parse().ok()?, node.to_string(), &mut rest[1..]))
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

/// The `sample` event of a stored sample, carrying its position as `id`.
pub fn sample_event(out: &mut Vec<u8>, s: &Sample, pos: Position) {
    event::sample(out, s, Some(&pos.to_string()));
}

/// Appends one Pub/Sub line: `KIND TAB SERVER TAB POSITION TAB JSON`.
pub fn write_line(
    out: &mut Vec<u8>,
    kind: EventKind,
    server: &str,
    pos: Option<Position>,
    json: &[u8],
) {
    out.push(match kind {
        EventKind::Sample => b'S',
        EventKind::Window => b'W',
    });
    out.push(b'\t');
    out.extend_from_slice(server.as_bytes());
    out.push(b'\t');
    if let Some(p) = pos {
        out.extend_from_slice(p.to_string().as_bytes());
    }
    out.push(b'\t');
    out.extend_from_slice(json);
    out.push(b'\n');
}

/// Splits one published batch into hub events; the JSON is sliced out of `payload`, not
/// copied or parsed. A line that is not of this format is skipped.
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

/// The window-log position named by a batch's mark line, if it starts with one.
pub fn batch_mark(payload: &[u8]) -> Option<Position> {
    let rest = payload.strip_prefix(b"M\t\t")?;
    let end = rest.iter().position(|&b| b == b'\t')?;
    Position::parse(std::str::from_utf8(&rest[..end]).ok()?)
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

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;

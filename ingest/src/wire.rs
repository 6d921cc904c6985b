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
    #[error("entry {0}, sample line {1}: {2}")]
    Line(String, usize, &'static str),
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

/// A stream entry as the sample workers read it: its lines found and checked, none decoded (see
/// [`scan_entry`]).
#[derive(Debug)]
pub struct ScannedEntry<'a> {
    pub arrival_ms: u64,
    /// The front door that accepted it.
    pub node: &'a str,
    value: &'a [u8],
    pub lines: Vec<StoredLine>,
}

/// One sample line of a [`ScannedEntry`]: where it is in the entry's value, where its server
/// id is, and where `,"metrics":{` begins.
#[derive(Clone, Copy, Debug)]
pub struct StoredLine {
    start: usize,
    end: usize,
    server: (usize, usize),
    metrics_at: usize,
}

impl<'a> ScannedEntry<'a> {
    /// The line's server id.
    pub fn server(&self, l: &StoredLine) -> &'a str {
        // Checked by the scan: 1 to 128 bytes of `[A-Za-z0-9_.:-]`.
        std::str::from_utf8(&self.value[l.server.0..l.server.1]).unwrap_or_default()
    }

    /// The line as stored (no newline): `{"serverId":S,"timestamp":MS,"metrics":{...}}`.
    pub fn line(&self, l: &StoredLine) -> &'a [u8] {
        &self.value[l.start..l.end]
    }

    /// The `sample` event of the line, carrying its position as `id`: the stored line with
    /// `"type"` and `"id"` spliced in, byte for byte what [`sample_event`] writes for the
    /// decoded sample (the stored numbers are already in the events' form), at the cost of
    /// two copies.
    pub fn sample_event(&self, out: &mut Vec<u8>, l: &StoredLine, pos: Position) {
        let line = self.line(l);
        out.extend_from_slice(b"{\"type\":\"sample\",");
        out.extend_from_slice(&line[1..l.metrics_at]);
        out.extend_from_slice(b",\"id\":\"");
        write_position(out, pos);
        out.push(b'"');
        out.extend_from_slice(&line[l.metrics_at..]);
    }
}

/// Appends `ms-seq/index` without formatting machinery.
fn write_position(out: &mut Vec<u8>, pos: Position) {
    event::write_u64(out, pos.ms);
    out.push(b'-');
    event::write_u64(out, pos.seq);
    out.push(b'/');
    event::write_u64(out, u64::from(pos.index));
}

/// Reads an entry written by [`encode_entry`] without decoding its samples: the header, then
/// each line checked against the exact form [`event::agent_sample`] writes (names of
/// `[A-Za-z0-9_.:-]`, 1 to 128 bytes; 1 to 256 metrics; JSON numbers), so whatever passes is
/// valid JSON with no name repeated, and can go to dashboards as it is. Decoding every sample
/// only to write it out again cost the workers more than anything else they did with a batch.
/// The scan does not convert numbers: the one sample per server that the snapshot needs is
/// decoded (`worker::samples`), and a number out of range there (`1e999`, which our front door
/// never writes) sends its entry to the dead-letter stream as before; elsewhere in a batch it
/// would be published as stored.
pub fn scan_entry<'a>(id: &str, value: &'a [u8]) -> Result<ScannedEntry<'a>, EntryError> {
    let nl = value
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| EntryError::NoHeader(id.to_string()))?;
    let (arrival_ms, node) = std::str::from_utf8(&value[..nl])
        .ok()
        .and_then(|h| h.split_once(' '))
        .and_then(|(a, n)| Some((a.parse().ok()?, n)))
        .ok_or_else(|| EntryError::NoHeader(id.to_string()))?;
    let mut lines = Vec::new();
    let mut names = Vec::new();
    let mut start = nl + 1;
    while start < value.len() {
        let end = value[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(value.len(), |i| start + i);
        if end > start {
            let line = scan_line(&value[start..end], &mut names)
                .map_err(|why| EntryError::Line(id.to_string(), lines.len() + 1, why))?;
            lines.push(StoredLine {
                start,
                end,
                server: (start + line.0 .0, start + line.0 .1),
                metrics_at: line.1,
            });
        }
        start = end + 1;
    }
    if lines.is_empty() {
        return Err(EntryError::Line(id.to_string(), 1, "no sample"));
    }
    Ok(ScannedEntry {
        arrival_ms,
        node,
        value,
        lines,
    })
}

/// Checks one stored line; returns where its server id is and where `,"metrics":{` begins.
/// `names` is scratch space for the metric names' ranges.
fn scan_line(
    b: &[u8],
    names: &mut Vec<(usize, usize)>,
) -> Result<((usize, usize), usize), &'static str> {
    let mut i = 0;
    let expect = |i: &mut usize, lit: &[u8], why| {
        if b[*i..].starts_with(lit) {
            *i += lit.len();
            Ok(())
        } else {
            Err(why)
        }
    };
    expect(&mut i, b"{\"serverId\":\"", "not a stored sample")?;
    let server = name(b, &mut i).ok_or("bad server id")?;
    expect(&mut i, b"\",\"timestamp\":", "no timestamp")?;
    let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return Err("bad timestamp");
    }
    i += digits;
    let metrics_at = i;
    expect(&mut i, b",\"metrics\":{", "no metrics")?;
    names.clear();
    loop {
        expect(&mut i, b"\"", "bad metric name")?;
        names.push(name(b, &mut i).ok_or("bad metric name")?);
        expect(&mut i, b"\":", "bad metric name")?;
        number(b, &mut i).ok_or("bad number")?;
        if names.len() > Limits::default().max_metrics {
            return Err("too many metrics");
        }
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => break,
            _ => return Err("bad metrics"),
        }
    }
    if &b[i..] != b"}}" {
        return Err("trailing bytes");
    }
    if metrics_model::sample::first_repeat(b, names).is_some() {
        return Err("a metric name repeated");
    }
    Ok((server, metrics_at))
}

/// A name of 1 to 128 bytes of `[A-Za-z0-9_.:-]` followed by a quote: its range; `i` is left
/// at the quote.
fn name(b: &[u8], i: &mut usize) -> Option<(usize, usize)> {
    let start = *i;
    let len = b[start..]
        .iter()
        .take_while(|&&c| metrics_model::decode::is_name_byte(c))
        .count();
    if len == 0 || len > metrics_model::decode::MAX_NAME_LEN || b.get(start + len) != Some(&b'"') {
        return None;
    }
    *i = start + len;
    Some((start, start + len))
}

/// A JSON number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn number(b: &[u8], i: &mut usize) -> Option<()> {
    let digits = |i: &mut usize| {
        let n = b[*i..].iter().take_while(|c| c.is_ascii_digit()).count();
        *i += n;
        n
    };
    if b.get(*i) == Some(&b'-') {
        *i += 1;
    }
    let int_start = *i;
    let n = digits(i);
    if n == 0 || (n > 1 && b[int_start] == b'0') {
        return None;
    }
    if b.get(*i) == Some(&b'.') {
        *i += 1;
        if digits(i) == 0 {
            return None;
        }
    }
    if matches!(b.get(*i), Some(b'e' | b'E')) {
        *i += 1;
        if matches!(b.get(*i), Some(b'+' | b'-')) {
            *i += 1;
        }
        if digits(i) == 0 {
            return None;
        }
    }
    Some(())
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
        write_position(out, p);
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

//! Decoding and validation of the agents' JSON, per the wire contract in `docs/API.md`.
//!
//! Parsing goes through simd-json's tape (not its DOM): the tape keeps object keys in order and
//! keeps duplicates, so a key sent twice is reported instead of silently overwritten, and no
//! hash map is built per sample. simd-json copies its input into padded internal buffers anyway;
//! a [`Decoder`] owns those buffers and the tape, and [`with_decoder`] keeps one per thread so
//! the hot path allocates only the samples it returns.
//!
//! Every error names what was wrong: the field, the metric, and inside a batch the index of the
//! sample (arrays, 0-based) or its line (NDJSON, 1-based). A batch is all-or-nothing: the first
//! bad sample rejects it whole.
//!
//! A WebSocket frame may also be a control message; [`crate::control`] reads those (its types are
//! re-exported here, where callers have always found them).

use std::cell::RefCell;

use simd_json::prelude::*;
use simd_json::tape::{Tape, Value};
use simd_json::Buffers;

use crate::control::control_from_value;
pub use crate::control::{parse_filter_list, Control, Role, ServerFilter};
use crate::sample::{Metrics, Sample};

/// Size limits of the contract; the defaults are the contract's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Samples in one array or NDJSON body (1..=this).
    pub max_batch: usize,
    /// Flattened metrics in one sample (1..=this).
    pub max_metrics: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch: 10_000,
            max_metrics: 256,
        }
    }
}

/// Longest server id or metric name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Why a body, frame or sample was refused. The `Display` text is what the client sees.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("expected a sample object or an array of samples, found {0}")]
    NotSample(&'static str),
    #[error("empty batch: send 1 to {max} samples")]
    EmptyBatch { max: usize },
    #[error("batch of {len} samples is over the limit of {max}")]
    BatchTooLarge { len: usize, max: usize },
    #[error("sample at index {index}: {reason}")]
    AtIndex {
        index: usize,
        reason: Box<DecodeError>,
    },
    #[error("line {line}: {reason}")]
    AtLine {
        line: usize,
        reason: Box<DecodeError>,
    },
    #[error("unknown field `{0}` (allowed: serverId, timestamp, metrics)")]
    UnknownField(String),
    #[error("field `{0}` appears twice")]
    DuplicateField(String),
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("serverId must be a string, found {0}")]
    ServerIdType(&'static str),
    #[error("serverId must be 1 to 128 bytes of A-Z a-z 0-9 _ . : -")]
    ServerIdInvalid,
    #[error(
        "timestamp must be a non-negative integer (milliseconds since the Unix epoch), found {0}"
    )]
    Timestamp(String),
    #[error("metrics must be an object, found {0}")]
    MetricsType(&'static str),
    #[error("metrics must hold 1 to {max} values, found {found}")]
    MetricCount { found: usize, max: usize },
    #[error("metric name `{0}` is invalid: names are 1 to 128 bytes of A-Z a-z 0-9 _ . : -")]
    MetricName(String),
    #[error("metric `{name}` must be a finite number or an object of numbers, found {found}")]
    MetricValue { name: String, found: &'static str },
    #[error("metric `{0}` nests too deep: one level of objects only")]
    MetricDepth(String),
    #[error("metric `{0}` appears twice")]
    DuplicateMetric(String),
    #[error("field `type` must be \"metric\" on a sample, found {0}")]
    SampleType(String),
    #[error(
        "unknown message type `{0}` (expected metric, register, subscribe or snapshot.request)"
    )]
    UnknownType(String),
    #[error("{0}")]
    Control(String),
}

/// What one WebSocket text frame holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Samples(Vec<Sample>),
    Control(Control),
}

/// A reusable decoder: simd-json's buffers and tape, kept between calls.
pub struct Decoder {
    limits: Limits,
    buffers: Buffers,
    tape: Option<Tape<'static>>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

thread_local! {
    static DECODER: RefCell<Decoder> = RefCell::new(Decoder::default());
}

/// Runs `f` with this thread's decoder (default limits), so buffers are reused per thread
/// rather than per connection.
pub fn with_decoder<R>(f: impl FnOnce(&mut Decoder) -> R) -> R {
    DECODER.with(|d| f(&mut d.borrow_mut()))
}

impl Decoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            buffers: Buffers::new(4096),
            tape: None,
        }
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Changes the limits.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    fn parse<'a>(&mut self, buf: &'a mut [u8]) -> Result<Tape<'a>, DecodeError> {
        let mut tape = self.tape.take().unwrap_or_else(Tape::null).reset();
        match simd_json::fill_tape(buf, &mut self.buffers, &mut tape) {
            Ok(()) => Ok(tape),
            Err(e) => {
                self.tape = Some(tape.reset());
                Err(DecodeError::Json(e.to_string()))
            }
        }
    }

    fn recycle(&mut self, tape: Tape<'_>) {
        self.tape = Some(tape.reset());
    }

    /// Decodes with simd-json only, skipping the fast path: what [`Self::decode_json`] falls
    /// back to, and for tests and benchmarks.
    pub fn decode_json_slow(
        &mut self,
        buf: &mut [u8],
        arrival_ms: u64,
    ) -> Result<Vec<Sample>, DecodeError> {
        let tape = self.parse(buf)?;
        let out = samples_from_value(tape.as_value(), arrival_ms, self.limits, false);
        self.recycle(tape);
        out
    }

    /// Decodes a JSON body: one sample object, or an array of 1..=max_batch samples.
    /// `arrival_ms` stands in for a missing timestamp. The input is modified in place.
    pub fn decode_json(
        &mut self,
        buf: &mut [u8],
        arrival_ms: u64,
    ) -> Result<Vec<Sample>, DecodeError> {
        if let Some(v) = crate::fast::decode(buf, arrival_ms, self.limits, false, true) {
            return Ok(v);
        }
        self.decode_json_slow(buf, arrival_ms)
    }

    /// Decodes NDJSON: one sample object per line; blank lines are skipped. Errors name the
    /// 1-based line.
    pub fn decode_ndjson(
        &mut self,
        buf: &mut [u8],
        arrival_ms: u64,
    ) -> Result<Vec<Sample>, DecodeError> {
        let mut out = Vec::new();
        let mut rest: &mut [u8] = buf;
        let mut line_no = 0usize;
        while !rest.is_empty() {
            line_no += 1;
            let taken = std::mem::take(&mut rest);
            let (line, tail) = match taken.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let (l, t) = taken.split_at_mut(i);
                    (l, &mut t[1..])
                }
                None => (taken, &mut [][..]),
            };
            rest = tail;
            let line = trim_ascii_mut(line);
            if line.is_empty() {
                continue;
            }
            if out.len() == self.limits.max_batch {
                return Err(DecodeError::BatchTooLarge {
                    len: out.len() + 1,
                    max: self.limits.max_batch,
                });
            }
            let sample = self
                .decode_one(line, arrival_ms)
                .map_err(|e| DecodeError::AtLine {
                    line: line_no,
                    reason: Box::new(e),
                })?;
            out.push(sample);
        }
        if out.is_empty() {
            return Err(DecodeError::EmptyBatch {
                max: self.limits.max_batch,
            });
        }
        Ok(out)
    }

    /// Decodes exactly one sample object (one NDJSON line, one streamed line).
    pub fn decode_one(&mut self, buf: &mut [u8], arrival_ms: u64) -> Result<Sample, DecodeError> {
        if let Some(mut v) = crate::fast::decode(buf, arrival_ms, self.limits, false, false) {
            return Ok(v.remove(0));
        }
        let tape = self.parse(buf)?;
        let v = tape.as_value();
        let out = if v.is_object() {
            sample_from_value(v, arrival_ms, self.limits, false)
        } else {
            Err(DecodeError::NotSample(type_name(v)))
        };
        self.recycle(tape);
        out
    }

    /// Decodes a WebSocket text frame: a sample (optionally `"type":"metric"`), an array of
    /// samples, or a control message.
    pub fn decode_message(
        &mut self,
        buf: &mut [u8],
        arrival_ms: u64,
    ) -> Result<Message, DecodeError> {
        if let Some(v) = crate::fast::decode(buf, arrival_ms, self.limits, true, true) {
            return Ok(Message::Samples(v));
        }
        let tape = self.parse(buf)?;
        let v = tape.as_value();
        let out = match v.as_object().and_then(|o| o.get("type")) {
            Some(t) => match t.as_str() {
                Some("metric") => sample_from_value(v, arrival_ms, self.limits, true)
                    .map(|s| Message::Samples(vec![s])),
                Some(kind) => control_from_value(v, kind).map(Message::Control),
                None => Err(DecodeError::SampleType(type_name(t).to_string())),
            },
            None => samples_from_value(v, arrival_ms, self.limits, true).map(Message::Samples),
        };
        self.recycle(tape);
        out
    }
}

fn trim_ascii_mut(s: &mut [u8]) -> &mut [u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &mut s[start..end]
}

pub(crate) fn type_name(v: Value<'_, '_>) -> &'static str {
    match v.value_type() {
        ValueType::Null => "null",
        ValueType::Bool => "a boolean",
        ValueType::String => "a string",
        ValueType::Array => "an array",
        ValueType::Object => "an object",
        _ => "a number",
    }
}

fn samples_from_value(
    v: Value<'_, '_>,
    arrival_ms: u64,
    limits: Limits,
    allow_type: bool,
) -> Result<Vec<Sample>, DecodeError> {
    if v.is_object() {
        return sample_from_value(v, arrival_ms, limits, allow_type).map(|s| vec![s]);
    }
    let Some(arr) = v.as_array() else {
        return Err(DecodeError::NotSample(type_name(v)));
    };
    let len = arr.len();
    if len == 0 {
        return Err(DecodeError::EmptyBatch {
            max: limits.max_batch,
        });
    }
    if len > limits.max_batch {
        return Err(DecodeError::BatchTooLarge {
            len,
            max: limits.max_batch,
        });
    }
    let mut out = Vec::with_capacity(len);
    for (index, item) in arr.iter().enumerate() {
        let sample = if item.is_object() {
            sample_from_value(item, arrival_ms, limits, allow_type)
        } else {
            Err(DecodeError::NotSample(type_name(item)))
        };
        out.push(sample.map_err(|e| DecodeError::AtIndex {
            index,
            reason: Box::new(e),
        })?);
    }
    Ok(out)
}

/// True for 1..=128 bytes of `[A-Za-z0-9_.:-]`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_LEN && s.bytes().all(is_name_byte)
}

/// True for a byte of `[A-Za-z0-9_.:-]`, what names (server ids, metrics) are made of.
pub const fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
}

fn finite_number(v: Value<'_, '_>) -> Option<f64> {
    if let Some(i) = v.as_i64() {
        Some(i as f64)
    } else if let Some(u) = v.as_u64() {
        Some(u as f64)
    } else {
        v.as_f64().filter(|f| f.is_finite())
    }
}

fn sample_from_value(
    v: Value<'_, '_>,
    arrival_ms: u64,
    limits: Limits,
    allow_type: bool,
) -> Result<Sample, DecodeError> {
    let Some(obj) = v.as_object() else {
        return Err(DecodeError::NotSample(type_name(v)));
    };
    let mut server_id: Option<&str> = None;
    let mut timestamp: Option<u64> = None;
    let mut metrics: Option<Metrics> = None;
    let mut seen_type = false;
    for (key, val) in obj.iter() {
        match key {
            "serverId" => {
                if server_id.is_some() {
                    return Err(DecodeError::DuplicateField(key.to_string()));
                }
                let s = val
                    .into_string()
                    .ok_or_else(|| DecodeError::ServerIdType(type_name(val)))?;
                if !valid_name(s) {
                    return Err(DecodeError::ServerIdInvalid);
                }
                server_id = Some(s);
            }
            "timestamp" => {
                if timestamp.is_some() {
                    return Err(DecodeError::DuplicateField(key.to_string()));
                }
                let ts = val
                    .as_u64()
                    .or_else(|| val.as_i64().and_then(|i| u64::try_from(i).ok()));
                timestamp = Some(ts.ok_or_else(|| {
                    DecodeError::Timestamp(match val.as_f64() {
                        Some(f) => f.to_string(),
                        None => match val.as_i64() {
                            Some(i) => i.to_string(),
                            None => type_name(val).to_string(),
                        },
                    })
                })?);
            }
            "metrics" => {
                if metrics.is_some() {
                    return Err(DecodeError::DuplicateField(key.to_string()));
                }
                metrics = Some(metrics_from_value(val, limits)?);
            }
            "type" if allow_type => {
                if seen_type {
                    return Err(DecodeError::DuplicateField(key.to_string()));
                }
                seen_type = true;
                if val.as_str() != Some("metric") {
                    return Err(DecodeError::SampleType(match val.as_str() {
                        Some(s) => format!("\"{s}\""),
                        None => type_name(val).to_string(),
                    }));
                }
            }
            other => return Err(DecodeError::UnknownField(truncate(other))),
        }
    }
    let server_id = server_id.ok_or(DecodeError::MissingField("serverId"))?;
    let metrics = metrics.ok_or(DecodeError::MissingField("metrics"))?;
    Ok(Sample {
        server_id: server_id.to_string(),
        timestamp: timestamp.unwrap_or(arrival_ms),
        metrics,
    })
}

/// Names echoed in errors are cut so that a hostile 1 MiB key does not come back whole.
pub(crate) fn truncate(s: &str) -> String {
    if s.len() <= MAX_NAME_LEN {
        return s.to_string();
    }
    let mut end = MAX_NAME_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn metrics_from_value(v: Value<'_, '_>, limits: Limits) -> Result<Metrics, DecodeError> {
    let Some(obj) = v.as_object() else {
        return Err(DecodeError::MetricsType(type_name(v)));
    };
    let mut m = Metrics::with_capacity(obj.len());
    let too_many = |found| DecodeError::MetricCount {
        found,
        max: limits.max_metrics,
    };
    for (name, val) in obj.iter() {
        if !valid_name(name) {
            return Err(DecodeError::MetricName(truncate(name)));
        }
        if let Some(x) = finite_number(val) {
            if m.len() == limits.max_metrics {
                return Err(too_many(m.len() + 1));
            }
            m.push("", name, x);
        } else if let Some(inner) = val.as_object() {
            for (sub, sval) in inner.iter() {
                let full_len = name.len() + 1 + sub.len();
                if !valid_name(sub) || full_len > MAX_NAME_LEN {
                    return Err(DecodeError::MetricName(truncate(&format!("{name}.{sub}"))));
                }
                match finite_number(sval) {
                    Some(x) => {
                        if m.len() == limits.max_metrics {
                            return Err(too_many(m.len() + 1));
                        }
                        m.push(name, sub, x);
                    }
                    None if sval.is_object() => {
                        return Err(DecodeError::MetricDepth(format!("{name}.{sub}")));
                    }
                    None => {
                        return Err(DecodeError::MetricValue {
                            name: format!("{name}.{sub}"),
                            found: non_finite_name(sval),
                        })
                    }
                }
            }
        } else {
            return Err(DecodeError::MetricValue {
                name: name.to_string(),
                found: non_finite_name(val),
            });
        }
    }
    if m.is_empty() {
        return Err(too_many(0));
    }
    if let Some(dup) = m.find_duplicate() {
        return Err(DecodeError::DuplicateMetric(dup.to_string()));
    }
    Ok(m)
}

fn non_finite_name(v: Value<'_, '_>) -> &'static str {
    match v.as_f64() {
        Some(_) => "a non-finite number",
        None => type_name(v),
    }
}

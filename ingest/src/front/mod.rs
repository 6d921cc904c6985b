//! The front door: `POST /metrics` here, `POST /metrics/stream` in [`stream`].
//!
//! A hand-built hyper service (no framework). A request is answered `202` only after Redis
//! acknowledged the entry holding its samples; everything else is a [`Refusal`] naming the
//! problem: 400 (malformed or invalid, with the sample's index or line), 401 (not the agent
//! token: a dashboard's token does not write), 413 (body over
//! the limit, checked against `Content-Length` before reading and against the decoded size of
//! compressed bodies; and samples whose stream entry would pass `--max-entry-bytes`, naming
//! both sizes, since flattening can make an entry many times its body), 408 (body not received within `--body-timeout-ms`: a client trickling
//! or stalling its body would otherwise hold the request, and its buffer, for as long as it
//! likes), 415 (content type or encoding), 503 with `Retry-After` (Redis down or
//! slower than the deadline, or the writer's queue at `--writer-queue-bytes`).

pub mod protocols;
pub mod stream;

use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use metrics_edge::auth::{Auth, Role};
use metrics_edge::http::{self as h, Answer, Refusal};
use metrics_edge::lifecycle::Lifecycle;
use metrics_model::decode::{with_decoder, Limits};
use metrics_model::{now_ms, Sample};

use crate::store::{Entry, StoreError, Writer};
use crate::wire;

pub use stream::post_stream;

/// Front-door settings.
#[derive(Clone, Debug)]
pub struct FrontOptions {
    /// Largest request body, before and after decompression.
    pub max_body: usize,
    /// How long a request waits for Redis before it gets 503.
    pub deadline: Duration,
    /// How long a request's body may take to arrive before it gets 408.
    pub body_timeout: Duration,
    /// Largest stream entry (`--max-entry-bytes`).
    pub max_entry: usize,
    pub limits: Limits,
    /// How the agents' protocols map to samples.
    pub mapping: protocols::Mapping,
}

/// The front door's shared state.
pub struct Front {
    pub writer: Writer,
    pub auth: Auth,
    pub opts: FrontOptions,
    /// Streaming requests run tasks of their own, tracked here.
    pub life: Lifecycle,
    /// What the protocol routes carried and did not.
    pub protocols: protocols::ProtocolStats,
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::Unavailable(format!("{e}; retry later"))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Ndjson,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    fn name(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
        }
    }
}

/// `POST /metrics`: one JSON sample, an array, or NDJSON; `202 {"accepted":N}` once stored.
pub async fn post_metrics(front: &Arc<Front>, req: Request<Incoming>) -> Answer {
    let (format, enc) = check_headers(front, &req)?;
    let arrival = now_ms();
    let mut body = read_body(front, req, enc).await?;
    let limits = front.opts.limits;
    let samples = with_decoder(|d| {
        d.set_limits(limits);
        match format {
            Format::Json => d.decode_json(&mut body, arrival),
            Format::Ndjson => d.decode_ndjson(&mut body, arrival),
        }
    })?;
    let n = samples.len();
    store(front, &samples, arrival).await?;
    Ok(h::json(
        StatusCode::ACCEPTED,
        format!("{{\"status\":\"accepted\",\"accepted\":{n}}}"),
    ))
}

/// Writes `samples` as one entry and waits for Redis, at most the deadline.
pub(crate) async fn store(
    front: &Front,
    samples: &[Sample],
    arrival_ms: u64,
) -> Result<(), Refusal> {
    let entry = entry(front, samples, arrival_ms)?;
    match tokio::time::timeout(front.opts.deadline, front.writer.write(entry)).await {
        Ok(Ok(_id)) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(Refusal::Unavailable(format!(
            "Redis did not acknowledge within {} ms; retry later",
            front.opts.deadline.as_millis()
        ))),
    }
}

/// `samples` as one entry, or 413 if it would pass `--max-entry-bytes` (nothing is stored).
fn entry(front: &Front, samples: &[Sample], arrival_ms: u64) -> Result<Entry, Refusal> {
    let max = front.opts.max_entry;
    let mut w = wire::EntryWriter::new(arrival_ms, front.writer.node(), max, samples.len());
    for (i, s) in samples.iter().enumerate() {
        if let Err(so_far) = w.push(s) {
            front
                .writer
                .stats()
                .too_large
                .fetch_add(1, Ordering::Relaxed);
            let size = so_far + wire::encoded_len(&samples[i + 1..]);
            return Err(Refusal::TooLarge(format!(
                "the request's {} samples take {size} bytes as stored (metric names flattened, timestamps filled in), over the limit of {max} bytes (--max-entry-bytes); send fewer samples per request or shorter metric names",
                samples.len()
            )));
        }
    }
    Ok(Entry {
        count: w.count(),
        value: w.finish(),
    })
}

/// The token, the content type and encoding, and the declared length.
fn check_headers(front: &Front, req: &Request<Incoming>) -> Result<(Format, Encoding), Refusal> {
    front.auth.check(Role::Agent, req)?;
    let headers = req.headers();
    let format = content_type(headers)?;
    let encoding = content_encoding(headers)?;
    check_length(front, headers)?;
    Ok((format, encoding))
}

/// 413 when the declared `Content-Length` passes the body limit (before reading it).
pub(crate) fn check_length(front: &Front, headers: &HeaderMap) -> Result<(), Refusal> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > front.opts.max_body as u64 {
            return Err(too_large(front.opts.max_body));
        }
    }
    Ok(())
}

fn too_large(max: usize) -> Refusal {
    Refusal::TooLarge(format!("request body over the limit of {max} bytes"))
}

fn content_type(headers: &HeaderMap) -> Result<Format, Refusal> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Ok(Format::Json);
    };
    let text = v.to_str().unwrap_or("");
    let media = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/json" | "" => Ok(Format::Json),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Ok(Format::Ndjson),
        _ => Err(Refusal::UnsupportedMedia(format!(
            "unsupported Content-Type `{text}`: send application/json or application/x-ndjson"
        ))),
    }
}

pub(crate) fn content_encoding(headers: &HeaderMap) -> Result<Encoding, Refusal> {
    let Some(v) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    let text = v.to_str().unwrap_or("");
    match text.trim().to_ascii_lowercase().as_str() {
        "identity" | "" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "zstd" => Ok(Encoding::Zstd),
        _ => Err(Refusal::UnsupportedMedia(format!(
            "unsupported Content-Encoding `{text}`: send gzip, zstd or none"
        ))),
    }
}

/// Reads the body under the limit, then decompresses it under the same limit.
pub(crate) async fn read_body(
    front: &Front,
    req: Request<Incoming>,
    enc: Encoding,
) -> Result<Vec<u8>, Refusal> {
    let max = front.opts.max_body;
    let within = front.opts.body_timeout;
    let raw = tokio::time::timeout(within, Limited::new(req.into_body(), max).collect())
        .await
        .map_err(|_| {
            Refusal::RequestTimeout(format!(
                "request body not received within {} ms (--body-timeout-ms)",
                within.as_millis()
            ))
        })?
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large(max)
            } else {
                Refusal::BadRequest(format!("reading the request body: {e}"))
            }
        })?
        .to_bytes();
    if enc == Encoding::Identity {
        // A body that arrived in one frame is handed over without a copy.
        return Ok(match raw.try_into_mut() {
            Ok(b) => b.into(),
            Err(raw) => raw.to_vec(),
        });
    }
    decompress(&raw, enc, max)
}

/// Decompresses `raw` under the limit of `max` bytes (413 past it, 400 if malformed).
pub(crate) fn decompress(raw: &[u8], enc: Encoding, max: usize) -> Result<Vec<u8>, Refusal> {
    let mut out = Vec::with_capacity(raw.len().min(max) * 2);
    let decoded = match enc {
        Encoding::Identity => {
            out.extend_from_slice(raw);
            Ok(raw.len())
        }
        Encoding::Gzip => flate2::read::GzDecoder::new(raw)
            .take(max as u64 + 1)
            .read_to_end(&mut out),
        Encoding::Zstd => zstd::stream::read::Decoder::new(raw)
            .and_then(|d| d.take(max as u64 + 1).read_to_end(&mut out)),
    };
    match decoded {
        Ok(_) if out.len() > max => Err(Refusal::TooLarge(format!(
            "decompressed request body over the limit of {max} bytes"
        ))),
        Ok(_) => Ok(out),
        Err(e) => Err(Refusal::BadRequest(format!(
            "request body is not valid {}: {e}",
            enc.name()
        ))),
    }
}

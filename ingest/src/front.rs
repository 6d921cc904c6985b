//! The front door: `POST /metrics`, `POST /metrics/stream`, `GET /healthz`, `GET /readyz`.
//!
//! A hand-built hyper service (no framework). A request is answered `202` only after Redis
//! acknowledged the entry holding its samples; everything else gets a JSON error naming the
//! problem: 400 (malformed or invalid, with the sample's index or line), 401, 413 (body over
//! the limit, checked against `Content-Length` before reading and against the decoded size of
//! compressed bodies), 415 (content type or encoding), 503 with `Retry-After` (Redis down or
//! slower than the deadline).

use std::convert::Infallible;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use deadpool_redis::Pool;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as HttpBody, Frame, Incoming};
use metrics_edge::auth::Auth;
use metrics_edge::http::{self as h, Body};
use metrics_model::decode::{with_decoder, Limits};
use metrics_model::{event, now_ms, DecodeError, Sample};
use tokio::sync::mpsc;

use crate::store::{self, Entry, StoreError, Writer};

/// Front-door settings.
#[derive(Clone, Debug)]
pub struct FrontOptions {
    /// Largest request body, before and after decompression.
    pub max_body: usize,
    /// How long a request waits for Redis before it gets 503.
    pub deadline: Duration,
    pub limits: Limits,
}

/// The front door's shared state.
pub struct Front {
    pub writer: Writer,
    pub pool: Pool,
    pub auth: Auth,
    pub opts: FrontOptions,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Ndjson,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

/// A refusal: status and message.
struct Refusal(StatusCode, String);

impl Refusal {
    fn into_response(self) -> Response<Body> {
        let mut r = h::error(self.0, &self.1);
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.0 == StatusCode::UNAUTHORIZED {
            return h::unauthorized();
        }
        r
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal(StatusCode::SERVICE_UNAVAILABLE, format!("{e}; retry later"))
    }
}

impl From<DecodeError> for Refusal {
    fn from(e: DecodeError) -> Self {
        Refusal(StatusCode::BAD_REQUEST, e.to_string())
    }
}

/// Handles the front door's routes; `None` for paths it does not serve.
pub async fn handle(front: &Arc<Front>, req: Request<Incoming>) -> Option<Response<Body>> {
    let path = req.uri().path();
    Some(match (path, req.method()) {
        ("/metrics", &Method::POST) => match ingest(front, req).await {
            Ok(n) => h::json(
                StatusCode::ACCEPTED,
                format!("{{\"status\":\"accepted\",\"accepted\":{n}}}"),
            ),
            Err(r) => r.into_response(),
        },
        // Boxed: the streaming path is long-lived and rare; keep its state out of every request's future.
        ("/metrics/stream", &Method::POST) => match Box::pin(stream(front, req)).await {
            Ok(r) => r,
            Err(r) => r.into_response(),
        },
        ("/metrics" | "/metrics/stream", _) => h::method_not_allowed("POST"),
        ("/healthz", &Method::GET) => h::json(StatusCode::OK, "{\"status\":\"ok\"}"),
        ("/readyz", &Method::GET) => match store::ping(&front.pool, Duration::from_secs(1)).await {
            Ok(()) => h::json(StatusCode::OK, "{\"status\":\"ready\",\"redis\":\"ok\"}"),
            Err(e) => Refusal(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
        },
        _ => return None,
    })
}

fn check_headers(front: &Front, req: &Request<Incoming>) -> Result<(Format, Encoding), Refusal> {
    if !front.auth.allows(req) {
        return Err(Refusal(StatusCode::UNAUTHORIZED, String::new()));
    }
    let headers = req.headers();
    let format = content_type(headers)?;
    let encoding = content_encoding(headers)?;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > front.opts.max_body as u64 {
            return Err(too_large(front.opts.max_body));
        }
    }
    Ok((format, encoding))
}

fn too_large(max: usize) -> Refusal {
    Refusal(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body over the limit of {max} bytes"),
    )
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
        _ => Err(Refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "unsupported Content-Type `{text}`: send application/json or application/x-ndjson"
            ),
        )),
    }
}

fn content_encoding(headers: &HeaderMap) -> Result<Encoding, Refusal> {
    let Some(v) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    let text = v.to_str().unwrap_or("");
    match text.trim().to_ascii_lowercase().as_str() {
        "identity" | "" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "zstd" => Ok(Encoding::Zstd),
        _ => Err(Refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported Content-Encoding `{text}`: send gzip, zstd or none"),
        )),
    }
}

/// Reads the body under the limit, then decompresses it under the same limit.
async fn read_body(
    front: &Front,
    req: Request<Incoming>,
    enc: Encoding,
) -> Result<Vec<u8>, Refusal> {
    let max = front.opts.max_body;
    let raw = Limited::new(req.into_body(), max)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large(max)
            } else {
                Refusal(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body: {e}"),
                )
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
    let mut out = Vec::with_capacity(raw.len().min(max) * 2);
    let decoded = match enc {
        Encoding::Identity => unreachable!("handled above"),
        Encoding::Gzip => flate2::read::GzDecoder::new(&raw[..])
            .take(max as u64 + 1)
            .read_to_end(&mut out),
        Encoding::Zstd => match zstd::stream::read::Decoder::new(&raw[..]) {
            Ok(d) => d.take(max as u64 + 1).read_to_end(&mut out),
            Err(e) => Err(e),
        },
    };
    match decoded {
        Ok(_) if out.len() > max => Err(Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("decompressed request body over the limit of {max} bytes"),
        )),
        Ok(_) => Ok(out),
        Err(e) => Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!(
                "request body is not valid {}: {e}",
                if enc == Encoding::Gzip {
                    "gzip"
                } else {
                    "zstd"
                }
            ),
        )),
    }
}

async fn ingest(front: &Arc<Front>, req: Request<Incoming>) -> Result<usize, Refusal> {
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
    let entry = Entry {
        count: n,
        value: crate::keys::entry_value(arrival, front.writer.node(), &samples),
    };
    match tokio::time::timeout(front.opts.deadline, front.writer.write(entry)).await {
        Ok(Ok(_id)) => Ok(n),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "Redis did not acknowledge within {} ms; retry later",
                front.opts.deadline.as_millis()
            ),
        )),
    }
}

/// A response body fed by a channel: the streaming endpoint's acknowledgements.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// Queues the refusal of line `line` (numbered from 1) in its place among the acknowledgements.
async fn refuse(acks: &mpsc::Sender<Ack>, line: usize, message: String) {
    let _ = acks.send(Ack::Refused { line, message }).await;
}

enum Ack {
    Written {
        pending: store::Pending,
        count: usize,
    },
    Refused {
        line: usize,
        message: String,
    },
}

/// `POST /metrics/stream`: NDJSON in for as long as the agent runs, NDJSON acknowledgements out.
async fn stream(front: &Arc<Front>, req: Request<Incoming>) -> Result<Response<Body>, Refusal> {
    let (_format, enc) = check_headers(front, &req)?;
    if enc != Encoding::Identity {
        return Err(Refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Encoding is not supported on /metrics/stream; compress at the TLS or HTTP/2 layer instead".into(),
        ));
    }
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(256);
    let (ack_tx, mut ack_rx) = mpsc::channel::<Ack>(1024);
    let deadline = front.opts.deadline;
    // Acknowledgements, in the order the lines came.
    tokio::spawn(async move {
        let mut total = 0usize;
        while let Some(ack) = ack_rx.recv().await {
            let line = match ack {
                Ack::Written { pending, count } => {
                    match tokio::time::timeout(deadline, pending).await {
                        Ok(Ok(Ok(_))) => {
                            total += count;
                            format!("{{\"acked\":{count},\"total\":{total}}}\n")
                        }
                        Ok(Ok(Err(e))) => error_line(&format!("{count} samples not stored: {e}; send them again"), None),
                        _ => error_line(
                            &format!("{count} samples not acknowledged by Redis within {} ms; send them again", deadline.as_millis()),
                            None,
                        ),
                    }
                }
                Ack::Refused { line, message } => error_line(&message, Some(line)),
            };
            if out_tx.send(Bytes::from(line)).await.is_err() {
                break;
            }
        }
    });
    let front = front.clone();
    let mut body = req.into_body();
    tokio::spawn(async move {
        let max_line = front.opts.max_body;
        let mut buf = BytesMut::new();
        let mut line_no = 0usize;
        let mut skipping = false;
        loop {
            let chunk = match body.frame().await {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
                Some(Err(_)) | None => break,
            };
            buf.extend_from_slice(&chunk);
            let arrival = now_ms();
            let mut samples = Vec::new();
            while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let mut line = buf.split_to(pos + 1);
                line_no += 1;
                if skipping {
                    skipping = false;
                    continue;
                }
                let line = &mut line[..pos];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match with_decoder(|d| d.decode_one(line, arrival)) {
                    Ok(s) => samples.push(s),
                    Err(e) => {
                        refuse(&ack_tx, line_no, format!("line {line_no}: {e}")).await;
                    }
                }
            }
            if buf.len() > max_line {
                line_no += 1;
                refuse(
                    &ack_tx,
                    line_no,
                    format!("line {line_no}: over the limit of {max_line} bytes"),
                )
                .await;
                buf.clear();
                skipping = true;
            }
            if !samples.is_empty() && !submit(&front, &ack_tx, samples, arrival).await {
                break;
            }
        }
        // A last line without a newline still counts.
        if !skipping && !buf.iter().all(u8::is_ascii_whitespace) {
            line_no += 1;
            let arrival = now_ms();
            match with_decoder(|d| d.decode_one(&mut buf, arrival)) {
                Ok(s) => {
                    submit(&front, &ack_tx, vec![s], arrival).await;
                }
                Err(e) => {
                    refuse(&ack_tx, line_no, format!("line {line_no}: {e}")).await;
                }
            }
        }
    });
    let mut r = Response::new(BodyExt::boxed(ChannelBody(out_rx)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(r)
}

async fn submit(
    front: &Front,
    acks: &mpsc::Sender<Ack>,
    samples: Vec<Sample>,
    arrival_ms: u64,
) -> bool {
    let count = samples.len();
    let entry = Entry {
        count,
        value: crate::keys::entry_value(arrival_ms, front.writer.node(), &samples),
    };
    let ack = match front.writer.submit(entry).await {
        Ok(pending) => Ack::Written { pending, count },
        Err(e) => Ack::Refused {
            line: 0,
            message: format!("{count} samples not stored: {e}"),
        },
    };
    acks.send(ack).await.is_ok()
}

fn error_line(message: &str, line: Option<usize>) -> String {
    let mut b = Vec::with_capacity(message.len() + 32);
    b.extend_from_slice(b"{\"error\":");
    event::write_str(&mut b, message);
    if let Some(l) = line {
        b.extend_from_slice(b",\"line\":");
        event::write_u64(&mut b, l as u64);
    }
    b.extend_from_slice(b"}\n");
    String::from_utf8(b).unwrap_or_default()
}

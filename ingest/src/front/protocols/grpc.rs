//! OTLP over gRPC, served on the HTTP/2 listeners (cleartext and TLS) by the same hyper
//! service as everything else: gRPC is HTTP/2 with a 5-byte prefix on each message
//! (compressed flag, big-endian length) and the outcome in `grpc-status` / `grpc-message`
//! trailers. Requests are routed here by `content-type: application/grpc`.
//!
//! One method: `/opentelemetry.proto.collector.metrics.v1.MetricsService/Export`, one request
//! message, one response message. Messages may be gzip-compressed (`grpc-encoding: gzip`);
//! the decompressed size is held to `--max-body`. Outcomes: `OK` with the response (partial
//! success when anything was not carried); `INVALID_ARGUMENT` malformed; `RESOURCE_EXHAUSTED`
//! over a limit; `UNAUTHENTICATED`; `UNIMPLEMENTED` another method or encoding; `UNAVAILABLE`
//! when Redis is down or slow (the OTLP exporters retry it). Failures are answered
//! "trailers-only": the status in the response headers, no body.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming};
use metrics_edge::auth::Role;
use metrics_edge::http::{Answer, Body, Refusal};
use metrics_model::now_ms;
use prost::Message;

use super::otlp::{self, grpc_code, Format};
use super::Protocol;
use crate::front::{self, Encoding, Front};

/// The one method served.
pub const EXPORT: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// gRPC status codes used here.
const OK: u32 = 0;
const UNIMPLEMENTED: u32 = 12;

/// True for a gRPC request (`content-type: application/grpc[+proto]`).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// Serves one gRPC call.
pub async fn serve(front: Option<&Arc<Front>>, req: Request<Incoming>) -> Answer {
    if req.uri().path() != EXPORT {
        return Ok(status_only(
            UNIMPLEMENTED,
            &format!(
                "no method {} here; this service takes {EXPORT}",
                req.uri().path()
            ),
        ));
    }
    let Some(front) = front else {
        return Ok(status_only(
            UNIMPLEMENTED,
            "this process does not run the front role",
        ));
    };
    Ok(match export(front, req).await {
        Ok(resp) => {
            let mut framed = Vec::with_capacity(5 + resp.len());
            framed.push(0);
            framed.extend_from_slice(&(resp.len() as u32).to_be_bytes());
            framed.extend_from_slice(&resp);
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from(OK));
            let mut r = Response::new(BodyExt::boxed(Unary {
                data: Some(Bytes::from(framed)),
                trailers: Some(trailers),
            }));
            set_grpc_headers(r.headers_mut());
            r
        }
        Err(e) => status_only(grpc_code(e.status()), &e.to_string()),
    })
}

async fn export(front: &Front, req: Request<Incoming>) -> Result<Vec<u8>, Refusal> {
    front.auth.check(Role::Agent, &req)?;
    let enc = match req.headers().get("grpc-encoding").map(|v| v.as_bytes()) {
        None | Some(b"identity") => Encoding::Identity,
        Some(b"gzip") => Encoding::Gzip,
        Some(other) => {
            return Err(Refusal::UnsupportedMedia(format!(
                "grpc-encoding `{}` is not supported: send gzip or identity",
                String::from_utf8_lossy(other)
            )))
        }
    };
    let arrival = now_ms();
    let max = front.opts.max_body;
    let raw = front::read_body(front, req, Encoding::Identity).await?;
    let message = unframe(&raw, enc, max)?;
    let counts = otlp::export(
        front,
        Protocol::OtlpGrpc,
        &message,
        Format::Protobuf,
        arrival,
    )
    .await?;
    Ok(otlp::response(&counts).encode_to_vec())
}

/// The one message of a unary call's body, decompressed under `max` bytes.
pub fn unframe(raw: &[u8], enc: Encoding, max: usize) -> Result<Vec<u8>, Refusal> {
    if raw.len() < 5 {
        return Err(Refusal::BadRequest(format!(
            "gRPC body of {} bytes: a message needs a 5-byte prefix",
            raw.len()
        )));
    }
    let compressed = match raw[0] {
        0 => false,
        1 => true,
        f => {
            return Err(Refusal::BadRequest(format!(
                "gRPC message flag {f}: expected 0 or 1"
            )))
        }
    };
    let len = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]) as usize;
    let rest = &raw[5..];
    if len != rest.len() {
        return Err(Refusal::BadRequest(format!(
            "gRPC message prefix says {len} bytes, the body holds {} after it (one message per call)",
            rest.len()
        )));
    }
    if !compressed {
        return Ok(rest.to_vec());
    }
    if enc == Encoding::Identity {
        return Err(Refusal::BadRequest(
            "compressed gRPC message without grpc-encoding".into(),
        ));
    }
    front::decompress(rest, enc, max)
}

fn set_grpc_headers(h: &mut HeaderMap) {
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-accept-encoding", HeaderValue::from_static("gzip"));
}

/// A trailers-only answer: HTTP 200, the status in the headers, no body.
fn status_only(code: u32, message: &str) -> Response<Body> {
    let mut r = Response::new(metrics_edge::http::empty());
    *r.status_mut() = StatusCode::OK;
    set_grpc_headers(r.headers_mut());
    r.headers_mut()
        .insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        r.headers_mut().insert("grpc-message", v);
    }
    r
}

/// `grpc-message` is percent-encoded: bytes outside printable ASCII and `%` itself.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A response body of one data frame, then trailers.
struct Unary {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl HttpBody for Unary {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_checked_before_decoding() {
        let max = 1 << 20;
        assert_eq!(
            unframe(&[0, 0, 0, 0, 2, 7, 7], Encoding::Identity, max),
            Ok(vec![7, 7])
        );
        for (raw, want) in [
            (&[0u8, 0, 0][..], "5-byte prefix"),
            (&[2, 0, 0, 0, 0], "flag 2"),
            (&[0, 0, 0, 0, 9, 1], "says 9 bytes"),
            (&[1, 0, 0, 0, 1, 1], "without grpc-encoding"),
        ] {
            let e = unframe(raw, Encoding::Identity, max).expect_err("refused");
            assert!(e.to_string().contains(want), "{e}");
        }
        assert_eq!(percent_encode("a%b\né"), "a%25b%0A%C3%A9");
    }
}

//! An HTTP agent's POSTs: the parts of its request built once, and what each reply means
//! for the counts (acknowledged, refused with a status and a reason, or lost at the
//! transport).

use http_body_util::BodyExt;
use hyper::Request;

use super::{ack, Plan, REQUEST_TIMEOUT};
use crate::record::LoadRecorder;
use crate::transport::{Body, Endpoint, Transport};

/// The parts of an agent's `POST` that are the same for every request, built once.
#[derive(Clone)]
pub struct PostTemplate {
    uri: http::Uri,
    host: Option<http::HeaderValue>,
    auth: Option<http::HeaderValue>,
    content_type: http::HeaderValue,
    /// `Content-Encoding`, for remote write's snappy bodies.
    encoding: Option<http::HeaderValue>,
}

impl PostTemplate {
    /// For `ep`; HTTP/2 takes an absolute URI, HTTP/1.1 a path and a `Host` header.
    pub fn new(ep: &Endpoint, h2: bool) -> Self {
        let authority = format!("{}:{}", ep.ingest.name, ep.ingest.addr.port());
        let scheme = if ep.ingest.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let uri = if h2 {
            format!("{scheme}://{authority}{}", ep.ingest_path)
        } else {
            ep.ingest_path.clone()
        };
        Self {
            uri: uri.parse().expect("a URI made of a parsed URL's parts"),
            host: (!h2).then(|| authority.parse().expect("a valid Host header")),
            auth: ep.tokens.agent.as_ref().map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .expect("a token valid in a header")
            }),
            content_type: http::HeaderValue::from_static(match ep.transport {
                Transport::Stream => "application/x-ndjson",
                Transport::OtlpGrpc => "application/grpc",
                Transport::RemoteWrite => "application/x-protobuf",
                _ => "application/json",
            }),
            encoding: (ep.transport == Transport::RemoteWrite)
                .then(|| http::HeaderValue::from_static("snappy")),
        }
    }

    pub(super) fn request(&self, body: Body) -> Request<Body> {
        let mut r =
            Request::post(self.uri.clone()).header("content-type", self.content_type.clone());
        if let Some(h) = &self.host {
            r = r.header("host", h.clone());
        }
        if let Some(a) = &self.auth {
            r = r.header("authorization", a.clone());
        }
        if let Some(e) = &self.encoding {
            r = r.header("content-encoding", e.clone());
        }
        r.body(body).expect("a valid request")
    }
}

/// A refusal's body, as text (the systems name the problem there).
pub(super) async fn body_text(resp: hyper::Response<hyper::body::Incoming>) -> String {
    resp.into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default()
}

type Reply = Result<
    Result<hyper::Response<hyper::body::Incoming>, hyper::Error>,
    tokio::time::error::Elapsed,
>;

pub(super) async fn reply(plan: &Plan, rec: &LoadRecorder, k: u64, sent_us: u64, res: Reply) {
    let measured = plan.measured(k);
    match res {
        Ok(Ok(resp)) if resp.status().is_success() => {
            let now = metrics_model::now_us();
            // Read the (small) body so the connection can be reused.
            let _ = resp.into_body().collect().await;
            if measured {
                ack(plan, rec, k, sent_us, now);
            }
        }
        Ok(Ok(resp)) => {
            let status = resp.status();
            let body = body_text(resp).await;
            if measured {
                rec.reject(status.as_str(), plan.batch, || {
                    format!("{status}: {}", body.trim())
                });
            }
        }
        Ok(Err(e)) if measured => rec.error(plan.batch, || format!("request failed: {e}")),
        Err(_) if measured => rec.error(plan.batch, || {
            format!("no reply within {} s", REQUEST_TIMEOUT.as_secs())
        }),
        _ => {}
    }
}

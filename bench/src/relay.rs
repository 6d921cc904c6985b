//! The reference relay: the least work a service speaking docs/API.md's wire contract can do
//! on this machine, run by the bench as a yardstick for the two systems (`bench compare` shows
//! it beside them, and each system's figures as a fraction of it).
//!
//! Agents' WebSocket frames on `/ingest` (or `/`) and `POST /metrics` (HTTP/1.1 and h2c, as
//! System 1's agents send) are parsed and flattened with the model crate's decoder, the same
//! single-pass reader both systems use, encoded as `sample` events with the systems' encoder,
//! and broadcast as **one WebSocket frame per ingest message** (a JSON array when the message
//! held more than one sample) to every dashboard on `/ws`, which first gets a `hello`. An HTTP
//! request is answered `202` once its frame is handed to the broadcast.
//!
//! Left out on purpose, as the least work: windows, Redis, tokens and origins, filters,
//! snapshots, per-client queue policy, TLS, compressed bodies, pings. A dashboard that falls
//! more than [`BACKLOG`] frames behind loses the oldest and gets a `dropped` event counting
//! frames, not samples. It is a yardstick, not a service: nothing else should run it.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use fastwebsockets::upgrade::{is_upgrade_request, upgrade, UpgradeFut};
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload, WebSocketError};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_edge::http::{empty, error, json, Body};
use metrics_model::decode::{with_decoder, Message};
use metrics_model::sample::Sample;
use metrics_model::{event, now_ms};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Frames a dashboard may fall behind by before it loses the oldest.
pub const BACKLOG: usize = 16_384;

/// What the relay calls itself in `hello`.
const SYSTEM: &str = "reference-relay";

/// The broadcast every ingest message goes to, one frame each.
struct Relay {
    tx: broadcast::Sender<Bytes>,
}

/// Serves the relay on `listener` until `stop`.
pub async fn serve(listener: TcpListener, stop: CancellationToken) {
    let relay = Arc::new(Relay {
        tx: broadcast::channel(BACKLOG).0,
    });
    loop {
        let tcp = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::debug!(error = %e, "relay: accept failed");
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (relay, stop) = (relay.clone(), stop.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let relay = relay.clone();
                async move { Ok::<_, Infallible>(relay.route(req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

impl Relay {
    async fn route(self: Arc<Self>, mut req: Request<Incoming>) -> Response<Body> {
        let upgrading = is_upgrade_request(&req);
        let (get, post) = (req.method() == Method::GET, req.method() == Method::POST);
        let dashboard = match req.uri().path() {
            "/ws" if get && upgrading => Some(true),
            "/ingest" | "/" if get && upgrading => Some(false),
            "/metrics" if post => None,
            path => {
                let what = format!("no route for {} {path}", req.method());
                return error(StatusCode::NOT_FOUND, &what);
            }
        };
        let Some(dashboard) = dashboard else {
            return self.post(req).await;
        };
        let (response, fut) = match upgrade(&mut req) {
            Ok(x) => x,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        if dashboard {
            // Subscribed before the upgrade completes: nothing after `hello` is missed.
            let rx = self.tx.subscribe();
            tokio::spawn(log_end("dashboard", dashboard_session(fut, rx)));
        } else {
            tokio::spawn(log_end("agent", self.agent_session(fut)));
        }
        let (parts, _) = response.into_parts();
        Response::from_parts(parts, empty())
    }

    /// `POST /metrics`: a JSON sample or array, or NDJSON; `202` once broadcast.
    async fn post(&self, req: Request<Incoming>) -> Response<Body> {
        if req.headers().contains_key(header::CONTENT_ENCODING) {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the reference relay takes uncompressed bodies only",
            );
        }
        let ndjson = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/x-ndjson"));
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
        };
        let mut buf = body.to_vec();
        let arrival = now_ms();
        let decoded = with_decoder(|d| {
            if ndjson {
                d.decode_ndjson(&mut buf, arrival)
            } else {
                d.decode_json(&mut buf, arrival)
            }
        });
        match decoded {
            Ok(samples) => {
                self.broadcast(&samples);
                let mut out = Vec::with_capacity(40);
                out.extend_from_slice(b"{\"status\":\"accepted\",\"accepted\":");
                event::write_u64(&mut out, samples.len() as u64);
                out.push(b'}');
                json(StatusCode::ACCEPTED, out)
            }
            Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        }
    }

    /// An agent's socket: every sample message is broadcast; control messages are ignored
    /// and a frame that does not decode gets an `error` event.
    async fn agent_session(self: Arc<Self>, fut: UpgradeFut) -> Result<(), WebSocketError> {
        let mut ws = FragmentCollector::new(fut.await?);
        loop {
            let mut frame = ws.read_frame().await?;
            let failed = match frame.opcode {
                OpCode::Close => return Ok(()),
                OpCode::Text | OpCode::Binary => {
                    let buf = frame.payload.to_mut();
                    match with_decoder(|d| d.decode_message(buf, now_ms())) {
                        Ok(Message::Samples(samples)) => {
                            self.broadcast(&samples);
                            None
                        }
                        Ok(Message::Control(_)) => None,
                        Err(e) => Some(event::to_vec(|b| event::error(b, &e.to_string()))),
                    }
                }
                _ => None,
            };
            if let Some(ev) = failed {
                ws.write_frame(Frame::text(Payload::Owned(ev))).await?;
            }
        }
    }

    /// One frame for the message's samples, to every dashboard.
    fn broadcast(&self, samples: &[Sample]) {
        let per = samples.first().map_or(0, |s| 64 + s.metrics.len() * 28);
        let mut out = Vec::with_capacity(2 + samples.len() * per);
        if let [one] = samples {
            event::sample(&mut out, one, None);
        } else {
            out.push(b'[');
            for (i, s) in samples.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                event::sample(&mut out, s, None);
            }
            out.push(b']');
        }
        // No dashboard connected: nothing to send.
        let _ = self.tx.send(Bytes::from(out));
    }
}

/// A dashboard's socket: `hello`, then every broadcast frame as it comes. A reader task only
/// notices the peer leaving.
async fn dashboard_session(
    fut: UpgradeFut,
    mut rx: broadcast::Receiver<Bytes>,
) -> Result<(), WebSocketError> {
    let ws = fut.await?;
    let (mut r, mut w) = ws.split(tokio::io::split);
    let gone = CancellationToken::new();
    let watch = gone.clone();
    tokio::spawn(async move {
        let mut noop = |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
        while let Ok(f) = r.read_frame(&mut noop).await {
            if f.opcode == OpCode::Close {
                break;
            }
        }
        watch.cancel();
    });
    let hello = event::to_vec(|b| event::hello(b, SYSTEM, &[], now_ms(), None));
    w.write_frame(Frame::text(Payload::Owned(hello))).await?;
    let mut dropped = 0;
    loop {
        let next = tokio::select! {
            _ = gone.cancelled() => return Ok(()),
            f = rx.recv() => f,
        };
        match next {
            Ok(frame) => {
                w.write_frame(Frame::text(Payload::Borrowed(&frame)))
                    .await?
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                dropped += n;
                let mut ev = Vec::with_capacity(64);
                event::dropped(&mut ev, n, dropped);
                w.write_frame(Frame::text(Payload::Owned(ev))).await?;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// Runs a session, logging how it failed at debug.
async fn log_end(
    what: &'static str,
    session: impl std::future::Future<Output = Result<(), WebSocketError>>,
) {
    if let Err(e) = session.await {
        tracing::debug!(error = %e, "relay: {what} session ended");
    }
}

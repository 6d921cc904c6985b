//! The agents: each holds one connection and sends its share of the schedule, message `k`
//! going to agent `k % agents`, at the message's intended time whatever happened to the
//! previous one (open loop). Replies are recorded against the intended time as well as the
//! actual send time.
//!
//! Per transport: HTTP/2 multiplexes, so an agent never waits for a reply before its next
//! request; HTTP/1.1 has one request in flight per connection, so a slow reply delays the
//! agent's next request, and the delay shows in the corrected latency; WebSocket frames are
//! written in order with no reply; the streaming endpoint writes NDJSON lines into one request
//! body and matches the ordered acknowledgements to the lines. Each transport's own part is a
//! module below this one (`post`, `ws`, `stream`); here are what they share: the plan, the
//! message bodies, the acknowledgement records, and the pacer.

mod post;
mod protocols;
mod stream;
mod ws;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent::AgentMetrics;
use crate::record::LoadRecorder;
use crate::schedule::{Latency, Schedule};
use crate::transport::{
    connect_http, connect_ws, Body, ConnectError, Endpoint, HttpConn, Transport,
};

use post::reply;
pub use post::PostTemplate;
pub use stream::StreamAgent;
pub use ws::WsAgent;

/// How long a request may wait for its reply before it counts as a transport error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the agents share.
#[derive(Debug)]
pub struct Plan {
    pub schedule: Schedule,
    /// Samples per message.
    pub batch: u64,
    pub metrics: crate::agent::MetricSet,
    pub agents: u64,
    /// How the dashboards read each frame.
    pub dashboard_parse: crate::dashboard::ParseMode,
    /// Messages before this index are warm-up: sent, not recorded.
    pub first_measured: u64,
    /// Prefix of every agent's server id: `bench-<tag>-`.
    pub server_prefix: String,
    /// The run's start, monotonic and wall-clock (µs since the epoch).
    pub start: Instant,
    pub start_us: u64,
    /// Wall-clock start of the measured period (after warm-up).
    pub measure_us: u64,
}

impl Plan {
    /// Wall-clock intended send time of message `k`.
    pub fn intended_us(&self, k: u64) -> u64 {
        self.start_us + self.schedule.due(k).as_micros() as u64
    }

    /// Second of the measured period that wall-clock time `us` falls in.
    pub fn second(&self, us: u64) -> usize {
        (us.saturating_sub(self.measure_us) / 1_000_000) as usize
    }

    pub fn total_samples(&self) -> u64 {
        self.schedule.total() * self.batch
    }

    pub fn measured(&self, k: u64) -> bool {
        k >= self.first_measured
    }
}

/// A connected agent, before the run starts.
pub enum Conn {
    Http(HttpConn),
    Ws(WsAgent),
    Stream(StreamAgent),
}

/// Opens an agent's connection.
pub async fn connect(
    ep: &Endpoint,
    batch: u64,
    rec: &Arc<LoadRecorder>,
) -> Result<Conn, ConnectError> {
    Ok(match ep.transport {
        Transport::H1 => Conn::Http(connect_http(&ep.ingest, false).await?),
        Transport::H2c | Transport::H2tls | Transport::OtlpGrpc | Transport::RemoteWrite => {
            Conn::Http(connect_http(&ep.ingest, true).await?)
        }
        Transport::Ws | Transport::Wss => {
            let ws = connect_ws(&ep.ingest, &ep.ingest_path, ep.tokens.agent.as_deref()).await?;
            Conn::Ws(WsAgent::start(ws, rec.clone(), batch))
        }
        // The streaming request starts with the run (it needs the run's times).
        Transport::Stream => Conn::Http(connect_http(&ep.ingest, true).await?),
    })
}

/// Builds message `k`: `batch` samples of agent `a`, one object or a JSON array (or NDJSON
/// lines for the streaming endpoint).
fn message(
    plan: &Plan,
    metrics: &mut AgentMetrics,
    server_id: &str,
    k: u64,
    ndjson: bool,
) -> Vec<u8> {
    let batch = plan.batch;
    let mut out = Vec::with_capacity(batch as usize * 280 + 2);
    let send_us = metrics_model::now_us();
    if batch > 1 && !ndjson {
        out.push(b'[');
    }
    for i in 0..batch {
        if i > 0 && !ndjson {
            out.push(b',');
        }
        metrics.step();
        metrics.write_sample(plan.metrics, &mut out, server_id, k * batch + i, send_us);
        if ndjson {
            out.push(b'\n');
        }
    }
    if batch > 1 && !ndjson {
        out.push(b']');
    }
    out
}

fn full(body: Vec<u8>) -> Body {
    Full::new(Bytes::from(body)).boxed()
}

/// Runs agent `a`: sends each message the pacer hands it, until the pacer is done (the
/// schedule is over, or the run was cancelled), then waits for its outstanding replies.
pub async fn run_agent(
    a: u64,
    mut conn: Conn,
    ep: Arc<Endpoint>,
    plan: Arc<Plan>,
    rec: Arc<LoadRecorder>,
    mut due: mpsc::UnboundedReceiver<u64>,
) {
    let server_id = format!("{}{a}", plan.server_prefix);
    let mut metrics = AgentMetrics::new(a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED);
    let inflight = TaskTracker::new();
    let template = PostTemplate::new(&ep, ep.transport != Transport::H1);
    if ep.transport == Transport::Stream {
        if let Conn::Http(c) = conn {
            conn = Conn::Stream(StreamAgent::start(c, &ep, plan.clone(), rec.clone()));
        }
    }
    // The pacer hands this agent each of its messages when it is due.
    while let Some(k) = due.recv().await {
        let measured = plan.measured(k);
        let ndjson = matches!(conn, Conn::Stream(_));
        let mut body = message(&plan, &mut metrics, &server_id, k, ndjson);
        let grpc = ep.transport == Transport::OtlpGrpc;
        match ep.transport {
            Transport::OtlpGrpc => body = protocols::grpc_body(&mut body, metrics_model::now_us()),
            Transport::RemoteWrite => {
                body = protocols::remote_write_body(&mut body, metrics_model::now_us())
            }
            _ => {}
        }
        let sent_us = metrics_model::now_us();
        rec.sent_all.fetch_add(plan.batch, Relaxed);
        if measured {
            rec.sent.fetch_add(plan.batch, Relaxed);
            rec.sent_per_sec.add(plan.second(sent_us), plan.batch);
        }
        match &mut conn {
            Conn::Http(HttpConn::H2(send)) => {
                let req = template.request(full(body));
                let fut = send.send_request(req);
                let (plan, rec) = (plan.clone(), rec.clone());
                inflight.spawn(async move {
                    let res = tokio::time::timeout(REQUEST_TIMEOUT, fut).await;
                    if grpc {
                        protocols::reply(&plan, &rec, k, sent_us, res).await;
                    } else {
                        reply(&plan, &rec, k, sent_us, res).await;
                    }
                });
            }
            Conn::Http(HttpConn::H1(send)) => {
                let res = match send.ready().await {
                    Ok(()) => {
                        let req = template.request(full(body));
                        tokio::time::timeout(REQUEST_TIMEOUT, send.send_request(req)).await
                    }
                    Err(e) => Ok(Err(e)),
                };
                let broken = !matches!(res, Ok(Ok(_)));
                reply(&plan, &rec, k, sent_us, res).await;
                if broken {
                    match connect_http(&ep.ingest, false).await {
                        Ok(c) => conn = Conn::Http(c),
                        Err(e) => tracing::debug!("agent {a}: reconnect failed: {e}"),
                    }
                }
            }
            Conn::Ws(ws) => {
                let ok = ws.send(body).await;
                if measured {
                    if ok {
                        mark_acked(&plan, &rec, k);
                    } else {
                        let why = ws.close_reason().await;
                        rec.error(plan.batch, || {
                            why.unwrap_or_else(|| "the WebSocket closed during the run".into())
                        });
                    }
                }
            }
            Conn::Stream(s) => {
                if !s.send(k, sent_us, body).await && measured {
                    rec.error(plan.batch, || {
                        "the streaming request ended during the run".into()
                    });
                }
            }
        }
    }
    inflight.close();
    inflight.wait().await;
    match conn {
        Conn::Ws(ws) => ws.close().await,
        Conn::Stream(s) => s.finish().await,
        Conn::Http(_) => {}
    }
}

/// Counts message `k` as acknowledged (for WebSocket, which has no acks: written).
fn mark_acked(plan: &Plan, rec: &LoadRecorder, k: u64) {
    let first = k * plan.batch;
    rec.acked_set.set_range(first, first + plan.batch);
    rec.acked.fetch_add(plan.batch, Relaxed);
}

/// Records a message the system acknowledged at `now_us`, with its acknowledgement latency.
fn ack(plan: &Plan, rec: &LoadRecorder, k: u64, sent_us: u64, now_us: u64) {
    mark_acked(plan, rec, k);
    let l = Latency::of(plan.intended_us(k), sent_us, now_us);
    rec.ack_latency.lock().expect("recorder lock").record(l);
}

/// Hands every message to its agent at its due time, from a thread of its own.
///
/// Tokio's timer has a 1 ms tick: an agent sleeping on it sends up to a millisecond late, which
/// would show up in every corrected latency (System 2's p50 at 20,000 samples/s was 1.20 ms
/// that way, 0.23 ms with this thread). This thread sleeps with the OS timer
/// (tens of microseconds late) and releases, on each wake-up, every message due by then.
/// Returns the CPU seconds the thread used.
pub fn pace(
    plan: &Plan,
    agents: Vec<mpsc::UnboundedSender<u64>>,
    cancel: &CancellationToken,
) -> f64 {
    let total = plan.schedule.total();
    let n = agents.len() as u64;
    let mut k = 0u64;
    while k < total && !cancel.is_cancelled() {
        let now = Instant::now();
        let due = plan.start + plan.schedule.due(k);
        if due > now {
            // Bounded, so a cancel is seen within 50 ms even at a very low rate.
            std::thread::sleep((due - now).min(Duration::from_millis(50)));
            continue;
        }
        while k < total && plan.start + plan.schedule.due(k) <= now {
            let _ = agents[(k % n) as usize].send(k);
            k += 1;
        }
    }
    crate::cpu::this_thread()
}

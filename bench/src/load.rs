//! The agents: each holds one connection and sends its share of the schedule, message `k`
//! going to agent `k % agents`, at the message's intended time whatever happened to the
//! previous one (open loop). Replies are recorded against the intended time as well as the
//! actual send time.
//!
//! Per transport: HTTP/2 multiplexes, so an agent never waits for a reply before its next
//! request; HTTP/1.1 has one request in flight per connection, so a slow reply delays the
//! agent's next request, and the delay shows in the corrected latency; WebSocket frames are
//! written in order with no reply; the streaming endpoint writes NDJSON lines into one request
//! body and matches the ordered acknowledgements to the lines.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::Request;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent::AgentMetrics;
use crate::record::LoadRecorder;
use crate::schedule::{Latency, Schedule};
use crate::transport::{
    connect_http, connect_ws, Body, ConnectError, Endpoint, HttpConn, Transport,
};

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
        Transport::H2c | Transport::H2tls => Conn::Http(connect_http(&ep.ingest, true).await?),
        Transport::Ws | Transport::Wss => {
            let ws = connect_ws(&ep.ingest, &ep.ingest_path, ep.token.as_deref()).await?;
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
        let body = message(&plan, &mut metrics, &server_id, k, ndjson);
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
                    reply(&plan, &rec, k, sent_us, res).await;
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

/// The parts of an agent's `POST` that are the same for every request, built once.
#[derive(Clone)]
pub struct PostTemplate {
    uri: http::Uri,
    host: Option<http::HeaderValue>,
    auth: Option<http::HeaderValue>,
    content_type: http::HeaderValue,
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
            auth: ep.token.as_ref().map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .expect("a token valid in a header")
            }),
            content_type: http::HeaderValue::from_static(if ep.transport == Transport::Stream {
                "application/x-ndjson"
            } else {
                "application/json"
            }),
        }
    }

    fn request(&self, body: Body) -> Request<Body> {
        let mut r =
            Request::post(self.uri.clone()).header("content-type", self.content_type.clone());
        if let Some(h) = &self.host {
            r = r.header("host", h.clone());
        }
        if let Some(a) = &self.auth {
            r = r.header("authorization", a.clone());
        }
        r.body(body).expect("a valid request")
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

/// A refusal's body, as text (the systems name the problem there).
async fn body_text(resp: hyper::Response<hyper::body::Incoming>) -> String {
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

async fn reply(plan: &Plan, rec: &LoadRecorder, k: u64, sent_us: u64, res: Reply) {
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

/// A WebSocket agent: frames out, and a reader that answers pings and counts the `error`
/// events the system sends back (window events are read and dropped).
pub struct WsAgent {
    tx: Arc<
        tokio::sync::Mutex<
            fastwebsockets::WebSocketWrite<
                tokio::io::WriteHalf<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>,
            >,
        >,
    >,
    reader: tokio::task::JoinHandle<()>,
    /// Why the system closed the socket, once it did.
    closed: Arc<Mutex<Option<String>>>,
}

impl WsAgent {
    fn start(ws: metrics_edge::client::ClientSocket, rec: Arc<LoadRecorder>, batch: u64) -> Self {
        let (mut rx, tx) = ws.split(tokio::io::split);
        let tx = Arc::new(tokio::sync::Mutex::new(tx));
        let reply_tx = tx.clone();
        let closed: Arc<Mutex<Option<String>>> = Arc::default();
        let why = closed.clone();
        let reader = tokio::spawn(async move {
            loop {
                let reply_tx = reply_tx.clone();
                let mut obligated = move |f: Frame<'_>| {
                    let reply_tx = reply_tx.clone();
                    let f = Frame::new(f.fin, f.opcode, None, Payload::Owned(f.payload.to_vec()));
                    async move {
                        // A failed pong or close reply is not the reader's error: the close
                        // frame that prompted it carries the reason, and must come through.
                        let _ = reply_tx.lock().await.write_frame(f).await;
                        Ok::<(), std::io::Error>(())
                    }
                };
                let frame = match rx.read_frame(&mut obligated).await {
                    Ok(f) => f,
                    Err(e) => {
                        *why.lock().expect("lock") = Some(format!("reading failed: {e}"));
                        break;
                    }
                };
                match frame.opcode {
                    OpCode::Close => {
                        let p = &frame.payload[..];
                        let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                        let text = String::from_utf8_lossy(p.get(2..).unwrap_or_default());
                        *why.lock().expect("lock") = Some(match code {
                            Some(c) => format!("the system closed the socket: {c} {text}"),
                            None => "the system closed the socket".into(),
                        });
                        break;
                    }
                    OpCode::Text | OpCode::Binary => {
                        let p = &frame.payload[..];
                        if memchr::memmem::find(p, b"\"type\":\"error\"").is_some() {
                            // Refusals cannot be matched to a frame: each counts one frame.
                            let text = String::from_utf8_lossy(p).into_owned();
                            rec.reject("error", batch, || format!("error event: {text}"));
                        }
                    }
                    _ => {}
                }
            }
        });
        Self { tx, reader, closed }
    }

    /// Why the socket closed: the system's close frame when the reader has seen one (waiting
    /// briefly for it the first time, as the write may fail first).
    async fn close_reason(&self) -> Option<String> {
        for _ in 0..20 {
            if let Some(w) = self.closed.lock().expect("lock").clone() {
                return Some(w);
            }
            if self.reader.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.closed.lock().expect("lock").clone()
    }

    async fn send(&self, body: Vec<u8>) -> bool {
        self.tx
            .lock()
            .await
            .write_frame(Frame::text(Payload::Owned(body)))
            .await
            .is_ok()
    }

    async fn close(self) {
        let _ = self
            .tx
            .lock()
            .await
            .write_frame(Frame::close(1000, b"bench done"))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.reader).await;
    }
}

/// A message written to the stream and not yet acknowledged.
struct Pending {
    k: u64,
    sent_us: u64,
    /// Lines of the message not yet accounted for.
    lines: u64,
    /// Lines acknowledged so far.
    acked: u64,
}

/// A streaming agent: one `POST /metrics/stream` whose body it writes for the whole run.
pub struct StreamAgent {
    /// Lines (samples) per message.
    batch: u64,
    body: Option<mpsc::Sender<Bytes>>,
    pending: Arc<Mutex<VecDeque<Pending>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl StreamAgent {
    fn start(conn: HttpConn, ep: &Endpoint, plan: Arc<Plan>, rec: Arc<LoadRecorder>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
        let stream = futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
                .map(|o| o.map(|b| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b))))
        });
        let body: Body = StreamBody::new(stream).boxed();
        let pending: Arc<Mutex<VecDeque<Pending>>> = Arc::default();
        let req = PostTemplate::new(ep, true).request(body);
        let p = pending.clone();
        let batch = plan.batch;
        let reader = tokio::spawn(async move {
            let HttpConn::H2(mut send) = conn else {
                return;
            };
            let resp = match send.send_request(req).await {
                Ok(r) => r,
                Err(e) => {
                    rec.error(0, || format!("streaming request failed: {e}"));
                    return;
                }
            };
            if !resp.status().is_success() {
                let status = resp.status();
                let text = body_text(resp).await;
                rec.reject(status.as_str(), 0, || format!("{status}: {}", text.trim()));
                return;
            }
            let mut body = resp.into_body();
            let mut buf = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.extend_from_slice(&data);
                while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    stream_ack(&plan, &rec, &p, &line);
                }
            }
        });
        Self {
            batch,
            body: Some(tx),
            pending,
            reader,
        }
    }

    async fn send(&self, k: u64, sent_us: u64, body: Vec<u8>) -> bool {
        self.pending
            .lock()
            .expect("pending lock")
            .push_back(Pending {
                k,
                sent_us,
                lines: self.batch,
                acked: 0,
            });
        match &self.body {
            Some(tx) => tx.send(Bytes::from(body)).await.is_ok(),
            None => false,
        }
    }

    async fn finish(mut self) {
        self.body = None; // ends the request body
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, &mut self.reader).await;
    }
}

/// Applies one acknowledgement line: `{"acked":n,"total":t}` or `{"error":..., "line":l}`.
fn stream_ack(plan: &Plan, rec: &LoadRecorder, pending: &Mutex<VecDeque<Pending>>, line: &[u8]) {
    let num = |key: &[u8]| -> Option<u64> {
        let i = memchr::memmem::find(line, key)? + key.len();
        let digits: Vec<u8> = line[i..]
            .iter()
            .copied()
            .take_while(u8::is_ascii_digit)
            .collect();
        std::str::from_utf8(&digits).ok()?.parse().ok()
    };
    let now = metrics_model::now_us();
    let mut q = pending.lock().expect("pending lock");
    if let Some(mut n) = num(b"\"acked\":") {
        while n > 0 {
            let Some(front) = q.front_mut() else { break };
            let take = n.min(front.lines);
            front.lines -= take;
            front.acked += take;
            n -= take;
            if front.lines == 0 {
                let p = q.pop_front().expect("front exists");
                if plan.measured(p.k) {
                    if p.acked == plan.batch {
                        ack(plan, rec, p.k, p.sent_us, now);
                    } else {
                        // Partly refused: the refused lines were counted as such already.
                        rec.acked.fetch_add(p.acked, Relaxed);
                    }
                }
            }
        }
    } else if memchr::memmem::find(line, b"\"error\"").is_some() {
        let text = String::from_utf8_lossy(line).trim().to_string();
        // A refused line, or `N samples not stored`.
        let n = if num(b"\"line\":").is_some() {
            1
        } else {
            text.split("\"error\":\"")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(1)
        };
        let mut left = n;
        while left > 0 {
            let Some(front) = q.front_mut() else { break };
            let take = left.min(front.lines);
            front.lines -= take;
            left -= take;
            let measured = plan.measured(front.k);
            if measured {
                rec.reject("error", take, || text.clone());
            }
            if front.lines == 0 {
                let p = q.pop_front().expect("front exists");
                if measured && p.acked > 0 {
                    rec.acked.fetch_add(p.acked, Relaxed);
                }
            }
        }
    }
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

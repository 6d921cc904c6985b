//! A streaming agent: one `POST /metrics/stream` whose body it writes, as NDJSON lines, for
//! the whole run. The system acknowledges lines in order (`{"acked":n}`) or refuses them
//! (`{"error":...}`); the agent matches those to the messages it wrote.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::mpsc;

use super::post::{body_text, PostTemplate};
use super::{ack, Plan, REQUEST_TIMEOUT};
use crate::record::LoadRecorder;
use crate::transport::{Body, Endpoint, HttpConn};

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
    pub(super) fn start(
        conn: HttpConn,
        ep: &Endpoint,
        plan: Arc<Plan>,
        rec: Arc<LoadRecorder>,
    ) -> Self {
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

    pub(super) async fn send(&self, k: u64, sent_us: u64, body: Vec<u8>) -> bool {
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

    pub(super) async fn finish(mut self) {
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

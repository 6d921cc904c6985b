//! Connection limits over real sockets, System 1: the cap per listener, the deadline for the
//! first request (protocol detection included, HTTP/2 preface or not), the request body
//! deadline (408); and through all of it, an agent's `POST /metrics` still answered 202.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The HTTP/2 client preface minus its last byte: enough to keep protocol detection waiting.
const HALF_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r";
/// The whole preface, and then nothing: detected as HTTP/2, but no request ever begins.
const FULL_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Generous slack over a deadline before a test calls a socket "held".
const SLACK: Duration = Duration::from_secs(2);

fn limited(redis: &Redis, max_connections: usize, deadline: Duration) -> ingest::Settings {
    let mut s = settings(redis);
    s.edge.conn.max_connections = max_connections;
    s.edge.conn.header_read_timeout = deadline;
    s
}

/// Reads until the server closes `s`; what it sent, if it closed within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|()| got)
}

async fn open(addr: SocketAddr, first_bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    if !first_bytes.is_empty() {
        s.write_all(first_bytes).await.expect("write");
    }
    s
}

/// An h2c agent on one connection, posting a sample every 200 ms until stopped; counts 202s
/// and anything else.
struct Agent {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Agent {
    async fn start(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2c handshake");
        tokio::spawn(conn);
        let (stop, accepted, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (st, ok, bad) = (stop.clone(), accepted.clone(), failed.clone());
        let task = tokio::spawn(async move {
            while !st.load(Ordering::SeqCst) {
                let req = Request::post(format!("http://{addr}/metrics"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(sample("kept", 1.0))))
                    .expect("request");
                match send.send_request(req).await {
                    Ok(r) if r.status() == 202 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => bad.fetch_add(1, Ordering::SeqCst),
                };
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self {
            stop,
            accepted,
            failed,
            task,
        }
    }

    /// Stops it; how many requests were accepted (every one must have been).
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("agent task");
        assert_eq!(
            self.failed.load(Ordering::SeqCst),
            0,
            "an agent request failed"
        );
        self.accepted.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_preface_sockets_are_closed_and_over_cap_ones_refused() {
    let redis = Redis::start();
    let deadline = Duration::from_secs(3);
    let srv = start(limited(&redis, 8, deadline)).await;

    // One slot: an agent keeping its h2c connection, posting all along.
    let agent = Agent::start(srv.addr).await;

    // Seven more fill the cap: silent, half an HTTP/2 preface, a whole one and nothing after.
    let opened = Instant::now();
    let mut held = Vec::new();
    for first in [
        b"".as_slice(),
        HALF_PREFACE,
        FULL_PREFACE,
        b"",
        HALF_PREFACE,
    ] {
        held.push(open(srv.addr, first).await);
    }
    held.push(open(srv.addr, FULL_PREFACE).await);
    held.push(open(srv.addr, b"POST /metr").await);
    // Over the cap: closed at once, not at the deadline.
    for _ in 0..3 {
        let mut s = open(srv.addr, b"").await;
        assert!(
            closed_within(&mut s, WAIT).await.is_some(),
            "an over-cap socket is closed"
        );
    }
    eventually_eq("refused", 3, || srv.conns.refused.load(Ordering::Relaxed)).await;
    assert_eq!(
        srv.conns.timed_out.load(Ordering::Relaxed),
        0,
        "the over-cap sockets were refused by the cap, before any deadline"
    );

    for s in &mut held {
        let left = (opened + deadline + SLACK).saturating_duration_since(Instant::now());
        assert!(
            closed_within(s, left).await.is_some(),
            "a socket that began no request is closed by the deadline"
        );
    }
    assert_conn_counts(&srv, 3, 7).await;

    // Their slots are free again: a new connection is served.
    post_accepted(srv.addr, &Transport::Http1, sample("after", 2.0)).await;
    assert!(
        agent.finish().await >= 5,
        "the agent was served while the cap was reached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_or_trickles_gets_408_after_the_body_deadline() {
    let redis = Redis::start();
    let body_deadline = Duration::from_millis(1000);
    let mut s = settings(&redis);
    s.edge.conn.body_timeout = body_deadline;
    let srv = start(s).await;
    let agent = Agent::start(srv.addr).await;

    let body = sample("slow", 3.0);
    let head = format!(
        "POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let sent = Instant::now();
    let mut stalled = open(srv.addr, head.as_bytes()).await;
    stalled
        .write_all(&body.as_bytes()[..10])
        .await
        .expect("write");
    let (mut trickled, mut drip) = open(srv.addr, head.as_bytes()).await.into_split();
    let dripping = tokio::spawn(async move {
        for b in body.as_bytes() {
            if drip.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let answer = closed_within(&mut stalled, body_deadline + SLACK)
        .await
        .expect("answered and closed by the body deadline");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("1000 ms"),
        "the message names the deadline: {text}"
    );

    // The trickle, read while it drips: answered by the deadline too, body unfinished.
    let mut head = [0u8; 12];
    let left = (sent + body_deadline + SLACK).saturating_duration_since(Instant::now());
    tokio::time::timeout(left, trickled.read_exact(&mut head))
        .await
        .expect("answered by the body deadline")
        .expect("read");
    assert_eq!(&head, b"HTTP/1.1 408");
    dripping.abort();
    assert!(agent.finish().await >= 1);
}

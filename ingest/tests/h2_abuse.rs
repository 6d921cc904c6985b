//! The h2 crate's defences against HTTP/2 rapid reset (CVE-2023-44487) and CONTINUATION floods
//! are on by default in the listener; these tests hold them to it over a real socket, with raw
//! frames: the abusive connection gets GOAWAY ENHANCE_YOUR_CALM while another client is served.
//! And a connection that answers every keep-alive ping but opens no stream is closed after
//! `--h2-idle-timeout-ms`, while one whose stream is open (however quiet) is kept.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// HPACK: `:method GET`, `:scheme http`, `:path /` (static table), `:authority localhost`
/// (literal, not indexed).
const REQUEST_BLOCK: &[u8] = b"\x82\x86\x84\x01\x09localhost";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("small frame")
        .to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Reads frames until a GOAWAY (its error code) or the end of the connection (`None`).
/// The flooding connection (read half `r`, writer task `flood`) gets GOAWAY
/// `ENHANCE_YOUR_CALM` while another client's request is served, and the server serves
/// after it too.
async fn cut_off_while_others_are_served(
    addr: SocketAddr,
    r: &mut OwnedReadHalf,
    flood: tokio::task::JoinHandle<()>,
) {
    let other =
        tokio::spawn(
            async move { post_accepted(addr, &Transport::H2c, sample("calm", 1.0)).await },
        );
    let code = tokio::time::timeout(WAIT, goaway(r))
        .await
        .expect("the connection ends within the wait");
    assert_eq!(code, Some(ENHANCE_YOUR_CALM), "GOAWAY ENHANCE_YOUR_CALM");
    flood.abort();
    other.await.expect("the other client is served");
    post_accepted(addr, &Transport::H2c, sample("after", 2.0)).await;
}

async fn goaway(r: &mut OwnedReadHalf) -> Option<u32> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == GOAWAY && len >= 8 {
                let code: [u8; 4] = buf[13..17].try_into().expect("4 bytes");
                return Some(u32::from_be_bytes(code));
            }
            buf.drain(..9 + len);
        }
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn h2_connection(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut start = PREFACE.to_vec();
    start.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&start).await.expect("preface");
    s
}

fn limited(redis: &Redis) -> ingest::Settings {
    let mut s = settings(redis);
    // Far past the test's wait: whatever closes the connection, it is not this deadline.
    s.edge.conn.header_read_timeout = Duration::from_secs(60);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_goaway_while_others_are_served() {
    let redis = Redis::start();
    let srv = start(limited(&redis)).await;
    let (mut r, mut w) = h2_connection(srv.addr).await.into_split();
    let flood = tokio::spawn(async move {
        // Requests opened and cancelled at once, a hundred per write, until the server stops
        // reading.
        for batch in 0..50u32 {
            let mut bytes = Vec::new();
            for i in 0..100u32 {
                let stream = 2 * (batch * 100 + i) + 1;
                bytes.extend(frame(
                    HEADERS,
                    END_HEADERS | END_STREAM,
                    stream,
                    REQUEST_BLOCK,
                ));
                bytes.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
            }
            if w.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    cut_off_while_others_are_served(srv.addr, &mut r, flood).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_gets_goaway_while_others_are_served() {
    let redis = Redis::start();
    let srv = start(limited(&redis)).await;
    let (mut r, mut w) = h2_connection(srv.addr).await.into_split();
    let flood = tokio::spawn(async move {
        // A HEADERS frame without END_HEADERS, then CONTINUATION frames that never end it,
        // each one small header field (`x: aaaaaaaa`, literal, not indexed).
        let mut bytes = frame(HEADERS, 0, 1, REQUEST_BLOCK);
        let field = b"\x00\x01x\x08aaaaaaaa";
        for _ in 0..100_000 {
            bytes.extend(frame(CONTINUATION, 0, 1, field));
            if bytes.len() > 16 * 1024 {
                if w.write_all(&bytes).await.is_err() {
                    return;
                }
                bytes.clear();
            }
        }
    });
    cut_off_while_others_are_served(srv.addr, &mut r, flood).await;
}

/// A peer that answers every ping but never opens another stream held its connection slot
/// forever; now it gets GOAWAY after the idle timeout. A connection with an open (quiet)
/// `/metrics/stream` request is not idle and keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_answering_pings_is_closed_but_an_open_stream_is_kept() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::Frame;
    use hyper::Request;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let redis = Redis::start();
    let mut s = settings(&redis);
    s.edge.conn.h2_keep_alive_interval = Duration::from_millis(100);
    s.edge.conn.h2_keep_alive_timeout = Duration::from_secs(5);
    s.edge.conn.h2_idle_timeout = Duration::from_millis(800);
    let srv = start(s).await;
    let tcp = TcpStream::connect(srv.addr).await.expect("connect");
    let io = TokioIo::new(tcp);

    // One request, then silence on our side; hyper's client answers the server's pings.
    let (mut idle, idle_conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("h2c handshake");
    let idle_conn = tokio::spawn(idle_conn);
    let req = Request::post("/metrics")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(sample("idle", 1.0))))
        .expect("request");
    assert_eq!(
        idle.send_request(req).await.expect("response").status(),
        202
    );

    // A stream that stays open across the idle timeout, sending a line on each side of it.
    let tcp = TcpStream::connect(srv.addr).await.expect("connect");
    let (mut busy, busy_conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(busy_conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
    let body = StreamBody::new(Box::pin(futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
    )));
    let req = Request::post("/metrics/stream")
        .header("content-type", "application/x-ndjson")
        .body(body)
        .expect("request");
    let mut acks = busy.send_request(req).await.expect("headers").into_body();
    let mut acked = async |line: String| {
        tx.send(Ok(Frame::data(Bytes::from(line))))
            .await
            .expect("send");
        let mut buf = Vec::new();
        while !buf.ends_with(b"\n") {
            let f = tokio::time::timeout(WAIT, acks.frame())
                .await
                .expect("ack in time")
                .expect("stream open")
                .expect("frame");
            if let Ok(d) = f.into_data() {
                buf.extend_from_slice(&d);
            }
        }
        String::from_utf8(buf).expect("utf-8")
    };
    assert!(acked(format!("{}\n", sample("busy", 1.0)))
        .await
        .contains("\"acked\":1"));

    // The idle connection ends (GOAWAY, then close) although it answered every ping.
    tokio::time::timeout(WAIT, idle_conn)
        .await
        .expect("the idle connection is closed within the wait")
        .expect("connection task")
        .expect("a graceful close");
    eventually_eq("connections closed idle", 1, || {
        srv.conns
            .idle_closed
            .load(std::sync::atomic::Ordering::Relaxed)
    })
    .await;
    let (_, stats) = http_get(srv.addr, "/stats", "").await;
    assert!(stats.contains("\"connectionsIdleClosed\":1"), "{stats}");

    // The open stream outlived the idle timeout and still takes samples.
    assert!(acked(format!("{}\n", sample("busy", 2.0)))
        .await
        .contains("\"acked\":1"));
    drop(tx);
}

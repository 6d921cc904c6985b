//! `POST /metrics/stream` over HTTP/2: one long request body of NDJSON, acknowledgements streamed
//! back as the samples reach Redis; a bad line gets an error line and the stream goes on.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_lines_are_acknowledged_in_order_and_bad_lines_do_not_end_the_stream() {
    let redis = Redis::start();
    let srv = start(settings(&redis)).await;
    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;

    let tcp = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c");
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(16);
    let body = StreamBody::new(Box::pin(futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
    )));
    let req = Request::post("/metrics/stream")
        .header("content-type", "application/x-ndjson")
        .body(body)
        .expect("request");
    let resp = sender
        .send_request(req)
        .await
        .expect("response headers arrive while the body is open");
    assert_eq!(resp.status(), 200);
    let mut acks = resp.into_body();
    let mut next_line = async || -> serde_json::Value {
        let mut buf = Vec::new();
        loop {
            let f = tokio::time::timeout(WAIT, acks.frame())
                .await
                .expect("ack in time")
                .expect("stream open")
                .expect("frame");
            if let Ok(d) = f.into_data() {
                buf.extend_from_slice(&d);
                if buf.ends_with(b"\n") {
                    return serde_json::from_slice(&buf).expect("one JSON line per frame");
                }
            }
        }
    };

    let send = |text: String| {
        let tx = tx.clone();
        async move {
            tx.send(Ok(Frame::data(Bytes::from(text))))
                .await
                .expect("send")
        }
    };
    send(format!("{}\n{}\n", sample("st", 1.0), sample("st", 2.0))).await;
    assert_eq!(
        next_line().await,
        serde_json::json!({"acked": 2, "total": 2})
    );
    assert_eq!(dash.next_for("sample", "st").await["metrics"]["cpu"], 1);
    assert_eq!(dash.next_for("sample", "st").await["metrics"]["cpu"], 2);

    send("{\"serverId\":\"st\",\"metrics\":{\"cpu\":\"x\"}}\n".to_string()).await;
    let err = next_line().await;
    assert_eq!(err["line"], 3);
    assert_eq!(
        err["error"],
        "line 3: metric `cpu` must be a finite number or an object of numbers, found a string"
    );
    // A line split across frames.
    let third = sample("st", 3.0);
    let (a, b) = third.split_at(10);
    send(a.to_string()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    send(format!("{b}\n")).await;
    assert_eq!(
        next_line().await,
        serde_json::json!({"acked": 1, "total": 3})
    );
    assert_eq!(dash.next_for("sample", "st").await["metrics"]["cpu"], 3);
    drop(tx);
}

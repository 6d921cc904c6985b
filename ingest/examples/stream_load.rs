//! Load for `POST /metrics/stream`: `C` HTTP/2 cleartext connections, each with one streaming
//! request that sends NDJSON in chunks of `K` samples while at most `W` samples await their
//! acknowledgement, for `S` seconds. Prints acknowledged samples per second.
//!
//! `cargo run --release -p ingest --example stream_load -- 127.0.0.1:8081 [C=4] [S=5] [K=100] [W=5000]`

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{mpsc, Semaphore};

type Chunk = Result<Frame<Bytes>, std::convert::Infallible>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| a.get(i).cloned().unwrap_or_else(|| d.to_string());
    let addr: SocketAddr = arg(0, "127.0.0.1:8081").parse()?;
    let conns: usize = arg(1, "4").parse()?;
    let secs: f64 = arg(2, "5").parse()?;
    let per_chunk: usize = arg(3, "100").parse()?;
    let window: usize = arg(4, "5000").parse()?;
    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            tcp.set_nodelay(true).ok();
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .expect("h2c handshake");
            tokio::spawn(conn);
            let (tx, rx) = mpsc::channel::<Chunk>(64);
            let body = StreamBody::new(Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|f| (f, rx))
            })));
            let req = Request::post("/metrics/stream")
                .header("content-type", "application/x-ndjson")
                .body(body)
                .expect("request");
            let resp = sender.send_request(req).await.expect("response");
            let credits = Arc::new(Semaphore::new(window));
            let reader_credits = credits.clone();
            let reader_acked = acked.clone();
            let reader = tokio::spawn(async move {
                let mut body = resp.into_body();
                let mut buf = Vec::new();
                while let Some(Ok(f)) = body.frame().await {
                    let Ok(d) = f.into_data() else { continue };
                    buf.extend_from_slice(&d);
                    while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=i).collect();
                        let text = String::from_utf8_lossy(&line);
                        if let Some(n) = text
                            .strip_prefix("{\"acked\":")
                            .and_then(|r| r.split(',').next())
                            .and_then(|n| n.parse::<u64>().ok())
                        {
                            reader_acked.fetch_add(n, Ordering::Relaxed);
                            reader_credits.add_permits(n as usize);
                        } else {
                            eprintln!("stream {c}: {text}");
                        }
                    }
                }
            });
            let mut seq = 0u64;
            while Instant::now() < deadline {
                let permit = credits.acquire_many(per_chunk as u32).await.expect("semaphore");
                permit.forget();
                let mut chunk = Vec::with_capacity(per_chunk * 130);
                for _ in 0..per_chunk {
                    seq += 1;
                    chunk.extend_from_slice(
                        format!(
                            "{{\"serverId\":\"stream-{c}\",\"metrics\":{{\"cpu\":{},\"memory\":61.2,\"disk\":70.1,\"network\":{{\"in\":812,\"out\":230}},\"send_us\":{}}}}}\n",
                            seq % 100,
                            metrics_model::now_us()
                        )
                        .as_bytes(),
                    );
                }
                if tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.is_err() {
                    break;
                }
            }
            // Let the last acknowledgements arrive, then end the request.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while credits.available_permits() < window {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            drop(tx);
            let _ = reader.await;
        }));
    }
    for t in tasks {
        t.await?;
    }
    let n = acked.load(Ordering::Relaxed);
    println!(
        "acknowledged {n} samples in {:.2} s: {:.0} samples/s over {conns} streams",
        secs,
        n as f64 / secs
    );
    Ok(())
}

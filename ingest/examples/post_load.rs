//! Open-loop `POST /metrics` load over HTTP/2 cleartext: `R` requests per second in total,
//! scheduled by intended send time over `C` connections, `B` samples per request (each with
//! `send_us`), for `S` seconds. Prints accepted requests and the acknowledgement latency
//! (from the intended send time). Pair it with the `ws_count` example of metrics-edge for
//! ingest-to-dashboard latency.
//!
//! `cargo run --release -p ingest --example post_load -- 127.0.0.1:8081 [R=200] [C=8] [B=100] [S=5]`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| a.get(i).cloned().unwrap_or_else(|| d.to_string());
    let addr: SocketAddr = arg(0, "127.0.0.1:8081").parse()?;
    let rate: f64 = arg(1, "200").parse()?;
    let conns: usize = arg(2, "8").parse()?;
    let batch: usize = arg(3, "100").parse()?;
    let secs: f64 = arg(4, "5").parse()?;
    let start = Instant::now() + Duration::from_millis(100);
    let total = (rate * secs) as u64;
    let mut tasks = Vec::new();
    for c in 0..conns {
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            tcp.set_nodelay(true).ok();
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2c handshake");
            tokio::spawn(conn);
            let mut inflight = Vec::new();
            // Request k of this connection is due at start + (k * conns + c) / rate.
            let mut k = 0u64;
            loop {
                let n = k * conns as u64 + c as u64;
                if n >= total {
                    break;
                }
                let due = start + Duration::from_secs_f64(n as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let intended_us = metrics_model::now_us();
                let mut body = Vec::with_capacity(batch * 140);
                body.push(b'[');
                for i in 0..batch {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(
                        format!(
                            "{{\"serverId\":\"post-{c}\",\"metrics\":{{\"cpu\":{},\"memory\":61.2,\"network\":{{\"in\":812,\"out\":230}},\"send_us\":{}}}}}",
                            i % 100,
                            intended_us
                        )
                        .as_bytes(),
                    );
                }
                body.push(b']');
                let req = Request::post("/metrics")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .expect("request");
                let mut s = sender.clone();
                inflight.push(tokio::spawn(async move {
                    let ok = s.send_request(req).await.map(|r| r.status().as_u16() == 202).unwrap_or(false);
                    (ok, due.elapsed())
                }));
                k += 1;
            }
            let mut out = Vec::new();
            for t in inflight {
                out.push(t.await.expect("request task"));
            }
            out
        }));
    }
    let mut lat: Vec<Duration> = Vec::new();
    let mut ok = 0u64;
    for t in tasks {
        for (accepted, d) in t.await? {
            ok += u64::from(accepted);
            lat.push(d);
        }
    }
    lat.sort_unstable();
    let q =
        |p: f64| lat[((p * lat.len() as f64) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0;
    println!(
        "{ok} of {} requests accepted ({} samples/s offered); ack latency ms p50 {:.2} p99 {:.2} max {:.2}",
        lat.len(),
        rate * batch as f64,
        q(0.5),
        q(0.99),
        q(1.0)
    );
    Ok(())
}

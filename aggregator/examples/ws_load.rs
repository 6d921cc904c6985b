//! Closed-loop load for System 2: `C` agents on WebSocket `/ingest`, each sending frames of `K`
//! samples (with `send_us`) for `S` seconds, at most `F` frames per second per agent (0: as fast
//! as the socket takes them). Prints samples sent per second. Pair it with the `ws_count`
//! example of metrics-edge as the dashboard.
//!
//! `cargo run --release -p aggregator --example ws_load -- 127.0.0.1:8080 [C=4] [S=5] [K=100] [F=0]`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fastwebsockets::{Frame, Payload};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| a.get(i).cloned().unwrap_or_else(|| d.to_string());
    let addr: SocketAddr = arg(0, "127.0.0.1:8080").parse()?;
    let agents: usize = arg(1, "4").parse()?;
    let secs: f64 = arg(2, "5").parse()?;
    let per_frame: usize = arg(3, "100").parse()?;
    let fps: f64 = arg(4, "0").parse()?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in 0..agents {
        tasks.push(tokio::spawn(async move {
            let ws = metrics_edge::client::connect(addr, "localhost", "/ingest", None, &[])
                .await
                .expect("connect");
            // Window events come back on this socket; read them so they never back up.
            let (mut rx, mut tx) = ws.split(tokio::io::split);
            tokio::spawn(async move {
                let mut noop = |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
                while rx.read_frame(&mut noop).await.is_ok() {}
            });
            let mut sent = 0u64;
            let mut seq = 0u64;
            let period = (fps > 0.0).then(|| Duration::from_secs_f64(1.0 / fps));
            let mut next = Instant::now();
            while Instant::now() < deadline {
                if let Some(p) = period {
                    tokio::time::sleep_until(next.into()).await;
                    next += p;
                }
                let mut frame = Vec::with_capacity(per_frame * 140);
                frame.push(b'[');
                for i in 0..per_frame {
                    seq += 1;
                    if i > 0 {
                        frame.push(b',');
                    }
                    frame.extend_from_slice(
                        format!(
                            "{{\"serverId\":\"agent-{c}\",\"metrics\":{{\"cpu\":{},\"memory\":61.2,\"disk\":70.1,\"network\":{{\"in\":812,\"out\":230}},\"send_us\":{}}}}}",
                            seq % 100,
                            metrics_model::now_us()
                        )
                        .as_bytes(),
                    );
                }
                frame.push(b']');
                if tx.write_frame(Frame::text(Payload::Owned(frame))).await.is_err() {
                    break;
                }
                sent += per_frame as u64;
            }
            let _ = tx.write_frame(Frame::close(1000, b"done")).await;
            sent
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    println!(
        "sent {total} samples in {secs:.2} s: {:.0} samples/s from {agents} agents",
        total as f64 / secs
    );
    Ok(())
}

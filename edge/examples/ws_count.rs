//! A dashboard that counts: connects to a `/ws` stream, counts `sample` events (and `dropped`
//! reports) until no sample arrived for `--idle` seconds, then prints the total, the rate over
//! the busy period and, when samples carry `send_us`, the end-to-end latency percentiles.
//! Used to check that load reaches a dashboard; the full load tool is the bench.
//!
//! `cargo run --release -p metrics-edge --example ws_count -- 127.0.0.1:8081 [/ws] [idle-seconds]`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fastwebsockets::OpCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8081".into())
        .parse()?;
    let path = args.next().unwrap_or_else(|| "/ws".into());
    let idle = Duration::from_secs_f64(args.next().map_or(Ok(3.0), |s| s.parse())?);
    let mut ws = metrics_edge::client::connect(addr, "localhost", &path, None, &[]).await?;
    ws.set_max_message_size(64 << 20);
    let (mut samples, mut dropped) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut lat_us: Vec<u64> = Vec::new();
    loop {
        let frame = match tokio::time::timeout(idle, ws.read_frame()).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) if first.is_some() => break,
            Err(_) => continue,
        };
        if frame.opcode == OpCode::Close {
            break;
        }
        if frame.opcode != OpCode::Text {
            continue;
        }
        let now_us = metrics_model::now_us();
        let text = std::str::from_utf8(&frame.payload)?;
        // Count without a JSON parser: each sample event starts with this prefix.
        let n = text.matches("{\"type\":\"sample\"").count() as u64;
        if n > 0 {
            first.get_or_insert_with(Instant::now);
            last = Instant::now();
            samples += n;
            for part in text.split("\"send_us\":").skip(1) {
                let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
                if let Ok(sent) = digits.parse::<u64>() {
                    lat_us.push(now_us.saturating_sub(sent));
                }
            }
        }
        if let Some(i) = text.find("\"type\":\"dropped\"") {
            if let Some(t) = text[i..].split("\"total\":").nth(1) {
                dropped = t
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .unwrap_or(dropped);
            }
        }
    }
    let busy = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    println!(
        "samples {samples}  dropped {dropped}  busy {busy:.2} s  rate {:.0}/s",
        samples as f64 / busy.max(1e-9)
    );
    if !lat_us.is_empty() {
        lat_us.sort_unstable();
        let q = |p: f64| {
            lat_us[((p * lat_us.len() as f64) as usize).min(lat_us.len() - 1)] as f64 / 1000.0
        };
        println!(
            "latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            q(0.5),
            q(0.99),
            q(0.999),
            q(1.0)
        );
    }
    Ok(())
}

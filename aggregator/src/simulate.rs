//! Built-in simulated agents: fake servers whose metrics move like random walks, sent over a
//! real WebSocket to our own listener, so a fresh checkout shows live charts with no agent
//! installed. Each sample carries `send_us` (its send time in microseconds) so the dashboard
//! shows real end-to-end latency.

use std::net::SocketAddr;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload};
use metrics_model::{event, now_ms, now_us};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

/// A random-walk metric between `lo` and `hi`.
struct Walk {
    name: &'static str,
    value: f64,
    step: f64,
    lo: f64,
    hi: f64,
}

impl Walk {
    fn next(&mut self, rng: &mut SmallRng) -> f64 {
        self.value =
            (self.value + rng.random_range(-self.step..=self.step)).clamp(self.lo, self.hi);
        (self.value * 10.0).round() / 10.0
    }
}

fn walks(rng: &mut SmallRng) -> Vec<Walk> {
    let mut w = |name, lo: f64, hi: f64, step| Walk {
        name,
        value: rng.random_range(lo..hi),
        step,
        lo,
        hi,
    };
    vec![
        w("cpu", 0.0, 100.0, 4.0),
        w("memory", 10.0, 95.0, 1.0),
        w("disk", 20.0, 90.0, 0.2),
        w("requests", 50.0, 5000.0, 120.0),
        w("latency_ms", 1.0, 400.0, 15.0),
        w("errors", 0.0, 50.0, 2.0),
    ]
}

/// One sample as an agent sends it, nested `network` object included.
fn sample_json(
    server: &str,
    walks: &mut [Walk],
    net: (&mut f64, &mut f64),
    rng: &mut SmallRng,
) -> Vec<u8> {
    let mut b = Vec::with_capacity(256);
    b.extend_from_slice(b"{\"serverId\":");
    event::write_str(&mut b, server);
    b.extend_from_slice(b",\"timestamp\":");
    event::write_u64(&mut b, now_ms());
    b.extend_from_slice(b",\"metrics\":{");
    for w in walks.iter_mut() {
        b.push(b'"');
        b.extend_from_slice(w.name.as_bytes());
        b.extend_from_slice(b"\":");
        let v = w.next(rng);
        event::write_f64(&mut b, v);
        b.push(b',');
    }
    *net.0 = (*net.0 + rng.random_range(-50.0..=50.0)).clamp(0.0, 10_000.0);
    *net.1 = (*net.1 + rng.random_range(-20.0..=20.0)).clamp(0.0, 5_000.0);
    b.extend_from_slice(b"\"network\":{\"in\":");
    event::write_f64(&mut b, net.0.round());
    b.extend_from_slice(b",\"out\":");
    event::write_f64(&mut b, net.1.round());
    b.extend_from_slice(b"},\"send_us\":");
    event::write_u64(&mut b, now_us());
    b.extend_from_slice(b"}}");
    b
}

/// Runs `agents` simulated agents against `addr` until `shutdown`; reconnects after errors.
pub async fn run(
    addr: SocketAddr,
    agents: usize,
    rate: f64,
    token: Option<String>,
    shutdown: CancellationToken,
) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = Vec::new();
    for i in 0..agents {
        let shutdown = shutdown.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let server = format!("sim-{:02}", i + 1);
            let mut rng = SmallRng::seed_from_u64(i as u64 + 1);
            let mut w = walks(&mut rng);
            let (mut net_in, mut net_out) = (800.0, 200.0);
            let path = match &token {
                Some(t) => format!("/ingest?token={t}"),
                None => "/ingest".to_string(),
            };
            while !shutdown.is_cancelled() {
                let ws = metrics_edge::client::connect(addr, "localhost", &path, None, &[]).await;
                let ws = match ws {
                    Ok(ws) => ws,
                    Err(e) => {
                        tracing::warn!(agent = %server, error = %e, "simulated agent cannot connect");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                            _ = shutdown.cancelled() => break,
                        }
                    }
                };
                // Window events come back on this socket: read them on their own task, since
                // a frame read must not be cancelled half-way.
                let (mut rx, mut tx) = ws.split(tokio::io::split);
                let reader = tokio::spawn(async move {
                    let mut noop = |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
                    while let Ok(f) = rx.read_frame(&mut noop).await {
                        if f.opcode == OpCode::Close {
                            break;
                        }
                    }
                });
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            if reader.is_finished() {
                                break;
                            }
                            let frame = sample_json(&server, &mut w, (&mut net_in, &mut net_out), &mut rng);
                            if tx.write_frame(Frame::text(Payload::Owned(frame))).await.is_err() {
                                break;
                            }
                        }
                        _ = shutdown.cancelled() => {
                            let _ = tx.write_frame(Frame::close(1001, b"agent stopping")).await;
                            break;
                        }
                    }
                }
                reader.abort();
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

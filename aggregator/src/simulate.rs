//! Built-in simulated agents: fake servers whose metrics move like random walks, sent over a
//! real WebSocket to our own listener, so a fresh checkout shows live charts with no agent
//! installed. Each sample carries `send_us` (its send time in microseconds) so the dashboard
//! shows real end-to-end latency. The walk is the model's ([`metrics_model::random_walk`]), the
//! one the bench's agents use; its `Simulated` set gives each metric a chart of its own.

use std::net::SocketAddr;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload};
use metrics_model::random_walk::{MetricSet, RandomWalk, SampleHead};
use metrics_model::{now_ms, now_us};
use tokio_util::sync::CancellationToken;

/// The walk's next sample as an agent sends it, stamped now.
fn next_sample(server: &str, walk: &mut RandomWalk) -> Vec<u8> {
    walk.step();
    let mut b = Vec::with_capacity(256);
    let head = SampleHead {
        server_id: server,
        timestamp_ms: Some(now_ms()),
        send_us: now_us(),
        counters: &[],
    };
    walk.write_sample(&mut b, MetricSet::Simulated, &head);
    b
}

/// Runs `agents` simulated agents against `addr` until `shutdown`; each reconnects by itself
/// with backoff (100 ms doubling to 3 s, [`metrics_edge::backoff`]) when its socket fails or
/// the server goes away, as an agent should.
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
            let mut walk = RandomWalk::new(i as u64 + 1);
            let path = match &token {
                Some(t) => format!("/ingest?token={t}"),
                None => "/ingest".to_string(),
            };
            let mut backoff = metrics_edge::backoff::Backoff::default();
            let mut first = true;
            while !shutdown.is_cancelled() {
                if !first {
                    backoff.wait(&shutdown).await;
                }
                first = false;
                let ws = metrics_edge::client::connect(addr, "localhost", &path, None, &[]).await;
                let ws = match ws {
                    Ok(ws) => ws,
                    Err(e) => {
                        tracing::debug!(agent = %server, error = %e, "simulated agent cannot connect");
                        continue;
                    }
                };
                backoff.reset();
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
                            let frame = next_sample(&server, &mut walk);
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

//! Dashboards that only listen stay connected through many ping cycles and miss nothing.
//!
//! A listen-only dashboard sends the server nothing but pongs, so the server's liveness check
//! rests on its ping bookkeeping alone. With a short ping interval, this test holds dashboards
//! of several client behaviours through a couple of hundred ping cycles (at the default 15 s
//! interval, that is close to an hour) while an agent feeds samples, and counts every sample
//! each dashboard got. Pongs on loopback often come back within the millisecond the ping was
//! sent in, which is what once made the server stop pinging and then close such dashboards
//! for "no answer to ping".

mod common;

use std::time::Duration;

use common::*;
use fastwebsockets::{Frame, OpCode, Payload};
use metrics_edge::client::{self, ClientSocket};
use tokio::time::Instant;

/// How a dashboard client treats the server's pings.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// The library answers each ping at once (fastwebsockets' auto-pong, as most clients do).
    AutoPong,
    /// Answers each ping itself, after a pause shorter than the ping timeout.
    LatePong(Duration),
    /// Ignores the server's pings, but pings the server itself now and then.
    PingsOnItsOwn(Duration),
}

/// What a dashboard saw: sample events of the feed, and how the socket ended.
#[derive(Debug)]
struct Seen {
    samples: u64,
    pings: u64,
    closed: Option<u16>,
}

async fn dashboard(addr: std::net::SocketAddr, b: Behaviour, until: Instant) -> Seen {
    let mut ws: ClientSocket = client::connect(addr, "localhost", "/ws?serverId=feed", None, &[])
        .await
        .expect("dashboard connects");
    ws.set_auto_pong(matches!(b, Behaviour::AutoPong));
    ws.set_auto_close(false);
    let mut seen = Seen {
        samples: 0,
        pings: 0,
        closed: None,
    };
    let mut next_own_ping = Instant::now();
    loop {
        let own_ping = match b {
            Behaviour::PingsOnItsOwn(every) => Some(every),
            _ => None,
        };
        let frame = tokio::select! {
            f = ws.read_frame() => f,
            _ = tokio::time::sleep_until(until) => return seen,
            _ = tokio::time::sleep_until(next_own_ping), if own_ping.is_some() => {
                next_own_ping = Instant::now() + own_ping.unwrap_or_default();
                ws.write_frame(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b"me")))
                    .await
                    .expect("own ping");
                continue;
            }
        };
        let Ok(frame) = frame else { return seen };
        match frame.opcode {
            OpCode::Text => {
                let v: serde_json::Value =
                    serde_json::from_slice(&frame.payload).expect("server sent JSON");
                let events = match v {
                    serde_json::Value::Array(a) => a,
                    one => vec![one],
                };
                seen.samples += events.iter().filter(|e| e["type"] == "sample").count() as u64;
            }
            OpCode::Ping => {
                seen.pings += 1;
                if let Behaviour::LatePong(pause) = b {
                    let payload = frame.payload.to_vec();
                    tokio::time::sleep(pause).await;
                    ws.write_frame(Frame::pong(Payload::Owned(payload)))
                        .await
                        .expect("pong");
                }
            }
            OpCode::Close => {
                let p = &frame.payload;
                seen.closed = Some(if p.len() >= 2 {
                    u16::from_be_bytes([p[0], p[1]])
                } else {
                    1005
                });
                return seen;
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_only_dashboards_outlive_many_ping_cycles_and_miss_nothing() {
    const INTERVAL: Duration = Duration::from_millis(100);
    const FEED: Duration = Duration::from_secs(15);
    let mut s = settings();
    s.edge.ws.ping_interval = INTERVAL;
    s.edge.ws.ping_timeout = 3 * INTERVAL;
    let srv = start(s).await;

    let behaviours = [
        Behaviour::AutoPong,
        Behaviour::AutoPong,
        Behaviour::LatePong(INTERVAL / 2),
        Behaviour::PingsOnItsOwn(INTERVAL / 2),
    ];
    // Every dashboard listens until a while after the feed ends (time for stragglers).
    let until = Instant::now() + FEED + Duration::from_secs(2);
    let dashboards: Vec<_> = behaviours
        .iter()
        .map(|&b| tokio::spawn(dashboard(srv.addr, b, until)))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The agent sends 100 samples a second for the whole feed.
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    let mut sent = 0u64;
    let start = Instant::now();
    while start.elapsed() < FEED {
        agent.send_text(&sample("feed", sent as f64)).await;
        sent += 1;
        tokio::time::sleep_until(start + Duration::from_millis(10 * sent)).await;
    }

    for (b, d) in behaviours.iter().zip(dashboards) {
        let seen = d.await.expect("dashboard task");
        assert_eq!(seen.closed, None, "{b:?} was closed: {seen:?}");
        assert_eq!(seen.samples, sent, "{b:?} missed samples: {seen:?}");
        // fastwebsockets answers pings itself under auto-pong and does not hand them over;
        // the late ponger sees them, and must have been pinged all along.
        if let Behaviour::LatePong(_) = b {
            assert!(
                seen.pings >= 50,
                "{b:?} should have been pinged all along: {seen:?}"
            );
        }
    }
}

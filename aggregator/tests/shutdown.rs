//! System 2 stopped with SIGTERM under load, as a real process: dashboards and agent sockets
//! get close 1001 and the process exits within `--drain-ms`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use fastwebsockets::OpCode;

/// An agent sending samples until the server closes its socket (at most 20,000); the close
/// code it got.
async fn agent(addr: SocketAddr, id: usize) -> Option<u16> {
    let mut peer = connect(addr, "/ingest").await.expect("agent connects");
    let frame = sample(&format!("agent{id}"), 1.0);
    for _ in 0..20_000 {
        if peer
            .send_raw(OpCode::Text, frame.as_bytes(), true)
            .await
            .is_err()
        {
            break;
        }
        match peer.rx.try_recv() {
            Ok(Incoming::Close(c)) => return Some(c),
            Ok(Incoming::Gone) => return None,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(15), peer.rx.recv()).await {
            Ok(Some(Incoming::Close(c))) => return Some(c),
            Ok(Some(Incoming::Event(_) | Incoming::Ping)) => continue,
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_closes_dashboards_and_agents_with_1001_within_the_drain() {
    let drain_ms = 3_000u64;
    let mut child = metrics_edge::testing::KillOnDrop::new(
        Command::new(env!("CARGO_BIN_EXE_aggregator"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--drain-ms",
                &drain_ms.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the aggregator binary"),
    );
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr: SocketAddr = loop {
        let line = lines.next().expect("printed its address").expect("stdout");
        if let Some(rest) = line.strip_prefix("dashboard: http://") {
            break rest.split('/').next().expect("addr").parse().expect("addr");
        }
    };
    std::thread::spawn(move || for _ in lines.by_ref() {});

    let mut dash = connect(addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    let agents: Vec<_> = (0..3).map(|i| tokio::spawn(agent(addr, i))).collect();
    for _ in 0..50 {
        dash.next_of("sample").await;
    }
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "SIGTERM sent");
    let waiter = tokio::task::spawn_blocking(move || {
        let end =
            std::time::Instant::now() + Duration::from_millis(drain_ms) + Duration::from_secs(10);
        while std::time::Instant::now() < end {
            if child.try_wait().expect("wait").is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    });
    assert_eq!(dash.close_code().await, Some(1001), "dashboard");
    for a in agents {
        assert_eq!(a.await.expect("agent"), Some(1001), "agent socket");
    }
    assert!(
        waiter.await.expect("waiter"),
        "exits within --drain-ms (+10 s)"
    );
}

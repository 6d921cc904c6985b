//! Connection limits over real sockets: the cap per listener, the deadline for the first
//! request (protocol detection and the TLS handshake included), the HTTP/1.1 keep-alive idle
//! timeout; and through all of it, agents and dashboards still served.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use metrics_edge::tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The HTTP/2 client preface minus its last byte: enough to keep protocol detection waiting.
const HALF_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r";

/// Generous slack over a deadline before a test calls a socket "held".
const SLACK: Duration = Duration::from_secs(2);

fn limited(max_connections: usize, header_read_timeout: Duration) -> aggregator::Settings {
    let mut s = settings();
    s.edge.conn.max_connections = max_connections;
    s.edge.conn.header_read_timeout = header_read_timeout;
    s
}

/// Reads (and discards) until the server closes `s`; true if it did within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

async fn open(addr: SocketAddr, first_bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    if !first_bytes.is_empty() {
        s.write_all(first_bytes).await.expect("write");
    }
    s
}

/// An agent's sample reaches the dashboard.
async fn sample_goes_through(agent: &mut Peer, dash: &mut Peer, server: &str) {
    agent.send_text(&sample(server, 7.0)).await;
    assert_eq!(dash.next_for("sample", server).await["metrics"]["cpu"], 7.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_preface_sockets_are_closed_and_over_cap_ones_refused() {
    let deadline = Duration::from_secs(3);
    let srv = start(limited(8, deadline)).await;

    // Two slots: a dashboard and an agent, connected before the flood.
    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    sample_goes_through(&mut agent, &mut dash, "before").await;

    // Six more fill the cap: three silent, three stuck in the HTTP/2 preface.
    let opened = Instant::now();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(open(srv.addr, b"").await);
        held.push(open(srv.addr, HALF_PREFACE).await);
    }
    // Over the cap: closed at once, not at the deadline.
    for _ in 0..4 {
        let mut s = open(srv.addr, b"").await;
        assert!(
            closed_within(&mut s, WAIT).await,
            "an over-cap socket is closed"
        );
    }
    eventually_eq("refused", 4, || srv.conns.refused.load(Ordering::Relaxed)).await;
    assert_eq!(
        srv.conns.timed_out.load(Ordering::Relaxed),
        0,
        "the over-cap sockets were refused by the cap, before any deadline"
    );

    // The upgraded sessions keep their slots and keep working while the cap is reached.
    sample_goes_through(&mut agent, &mut dash, "during").await;

    for s in &mut held {
        let left = (opened + deadline + SLACK).saturating_duration_since(Instant::now());
        assert!(
            closed_within(s, left).await,
            "a socket that sent no request is closed by the deadline"
        );
    }
    assert_conn_counts(&srv, 4, 6).await;

    // Their slots are free again: a new agent is served.
    let mut late = connect(srv.addr, "/ingest").await.expect("agent after");
    sample_goes_through(&mut late, &mut dash, "after").await;
    sample_goes_through(&mut agent, &mut dash, "still").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_completes_is_closed_by_the_deadline() {
    let deadline = Duration::from_millis(1000);
    let (server_tls, client_tls) = dev_tls(tls::ALPN_HTTP11);
    let srv = start_with_tls(limited(64, deadline), Some(server_tls)).await;
    let tls_addr = srv.tls_addr.expect("tls addr");

    let opened = Instant::now();
    let mut silent = open(tls_addr, b"").await;
    // The first bytes of a ClientHello record, and then nothing.
    let mut partial = open(tls_addr, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;

    let mut dash = connect_with(tls_addr, "/ws", Some(client_tls.clone()), &[])
        .await
        .expect("dashboard over TLS");
    dash.next_of("hello").await;
    let mut agent = connect_with(tls_addr, "/ingest", Some(client_tls), &[])
        .await
        .expect("agent over TLS");
    sample_goes_through(&mut agent, &mut dash, "tls").await;

    for s in [&mut silent, &mut partial] {
        let left = (opened + deadline + SLACK).saturating_duration_since(Instant::now());
        assert!(
            closed_within(s, left).await,
            "an unfinished handshake is closed by the deadline"
        );
    }
    eventually_eq("timed_out", 2, || {
        srv.conns.timed_out.load(Ordering::Relaxed)
    })
    .await;
    sample_goes_through(&mut agent, &mut dash, "tls-after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    let deadline = Duration::from_millis(1000);
    let srv = start(limited(64, deadline)).await;
    let mut s = open(
        srv.addr,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    let mut head = [0u8; 12];
    tokio::time::timeout(WAIT, s.read_exact(&mut head))
        .await
        .expect("response in time")
        .expect("read");
    assert_eq!(&head, b"HTTP/1.1 200");
    let answered = Instant::now();
    let left = (answered + deadline + SLACK).saturating_duration_since(Instant::now());
    assert!(
        closed_within(&mut s, left).await,
        "an idle keep-alive connection is closed after the header-read timeout"
    );
}

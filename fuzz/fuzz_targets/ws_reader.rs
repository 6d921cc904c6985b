//! The WebSocket reader as both services run it (`metrics_edge::ws`), fed arbitrary bytes as a
//! client's stream.
//!
//! Each input goes over an in-memory duplex (`tokio::io::duplex`): a valid upgrade request, then
//! the input as the client's frames, then end of stream. The server side is what
//! `metrics_edge::dashboard::upgrade` does: hyper's HTTP/1.1 connection with upgrades,
//! fastwebsockets' upgrade, then `ws::split` and `MessageReader::next` until the session ends.
//! Properties: nothing panics or hangs; every message handed on is within the size limit; the
//! session ends with a close code the server may send (RFC 6455 7.4) and a close frame that fits
//! a control frame (125 bytes), or with no close when the stream just ended.

#![no_main]

use std::sync::OnceLock;

use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use metrics_edge::hub::{Audience, Hub, QueueLimits};
use metrics_edge::ws::{self, WsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// Small, so that the 1009 path is in reach of short inputs.
const MAX_MESSAGE: usize = 256;

const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

async fn session(data: &[u8]) {
    let cfg = WsConfig {
        max_message: MAX_MESSAGE,
        ..WsConfig::default()
    };
    let (client, server) = tokio::io::duplex(1 << 16);
    let (up_tx, up_rx) = oneshot::channel();
    // hyper's services are `Fn`: the sender is taken out from behind a lock, once.
    let up_tx = std::sync::Mutex::new(Some(up_tx));
    let service = service_fn(move |mut req: Request<Incoming>| {
        let answer = fastwebsockets::upgrade::upgrade(&mut req).map(|(response, fut)| {
            if let Some(tx) = up_tx.lock().ok().and_then(|mut t| t.take()) {
                let _ = tx.send(fut);
            }
            let (parts, _) = response.into_parts();
            Response::from_parts(parts, Empty::<Bytes>::new())
        });
        async move { answer }
    });
    let conn = tokio::spawn(
        http1::Builder::new()
            .serve_connection(TokioIo::new(server), service)
            .with_upgrades(),
    );
    // The server writes only its 101 (pongs and closes go to the hub's queue, which this test
    // does not drain); read it off so that it never blocks.
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let drain = tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = client_rd.read_to_end(&mut sink).await;
    });
    let mut wire = UPGRADE.to_vec();
    wire.extend_from_slice(data);
    client_wr.write_all(&wire).await.expect("duplex write");

    let fut = up_rx.await.expect("the upgrade request is valid");
    let upgraded = fut.await.expect("upgrade").into_inner().into_inner();
    // End of stream only now: hyper cancels an upgrade whose peer closed before it completed.
    client_wr.shutdown().await.expect("duplex shutdown");
    let hub = Hub::new(QueueLimits::default());
    let reg = hub.register(Audience::Dashboard, None);
    let (mut reader, writer, _, _) = ws::split(upgraded, &cfg);
    loop {
        match reader.next(reg.client()).await {
            Ok(msg) => assert!(msg.len() <= MAX_MESSAGE, "message of {} bytes", msg.len()),
            Err(end) => {
                if let Some(c) = end.close {
                    assert!(
                        matches!(c.code, 1000..=1003 | 1007..=1011 | 3000..=4999),
                        "close code {} may not be sent ({})",
                        c.code,
                        c.reason
                    );
                    assert!(
                        2 + c.reason.len() <= 125,
                        "close reason of {} bytes does not fit a control frame: {}",
                        c.reason.len(),
                        c.reason
                    );
                }
                break;
            }
        }
    }
    // Wind everything down inside this run: a task left on the shared runtime would hold this
    // input's buffers into the next one (and show as a leak).
    drop((reader, writer, client_wr));
    let _ = conn.await;
    let _ = drain.await;
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(session(data));
});

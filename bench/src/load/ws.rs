//! A WebSocket agent: its frames go out in order with no reply. A reader task answers pings,
//! counts the `error` events the system sends back, and keeps the reason when the system
//! closes the socket, so a failed write can say why.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload};

use crate::record::LoadRecorder;

/// A WebSocket agent: frames out, and a reader that answers pings and counts the `error`
/// events the system sends back (window events are read and dropped).
pub struct WsAgent {
    tx: Arc<
        tokio::sync::Mutex<
            fastwebsockets::WebSocketWrite<
                tokio::io::WriteHalf<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>,
            >,
        >,
    >,
    reader: tokio::task::JoinHandle<()>,
    /// Why the system closed the socket, once it did.
    closed: Arc<Mutex<Option<String>>>,
}

impl WsAgent {
    pub(super) fn start(
        ws: metrics_edge::client::ClientSocket,
        rec: Arc<LoadRecorder>,
        batch: u64,
    ) -> Self {
        let (mut rx, tx) = ws.split(tokio::io::split);
        let tx = Arc::new(tokio::sync::Mutex::new(tx));
        let reply_tx = tx.clone();
        let closed: Arc<Mutex<Option<String>>> = Arc::default();
        let why = closed.clone();
        let reader = tokio::spawn(async move {
            loop {
                let reply_tx = reply_tx.clone();
                let mut obligated = move |f: Frame<'_>| {
                    let reply_tx = reply_tx.clone();
                    let f = Frame::new(f.fin, f.opcode, None, Payload::Owned(f.payload.to_vec()));
                    async move {
                        // A failed pong or close reply is not the reader's error: the close
                        // frame that prompted it carries the reason, and must come through.
                        let _ = reply_tx.lock().await.write_frame(f).await;
                        Ok::<(), std::io::Error>(())
                    }
                };
                let frame = match rx.read_frame(&mut obligated).await {
                    Ok(f) => f,
                    Err(e) => {
                        *why.lock().expect("lock") = Some(format!("reading failed: {e}"));
                        break;
                    }
                };
                match frame.opcode {
                    OpCode::Close => {
                        let p = &frame.payload[..];
                        let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                        let text = String::from_utf8_lossy(p.get(2..).unwrap_or_default());
                        *why.lock().expect("lock") = Some(match code {
                            Some(c) => format!("the system closed the socket: {c} {text}"),
                            None => "the system closed the socket".into(),
                        });
                        break;
                    }
                    OpCode::Text | OpCode::Binary => {
                        let p = &frame.payload[..];
                        if memchr::memmem::find(p, b"\"type\":\"error\"").is_some() {
                            // Refusals cannot be matched to a frame: each counts one frame.
                            let text = String::from_utf8_lossy(p).into_owned();
                            rec.reject("error", batch, || format!("error event: {text}"));
                        }
                    }
                    _ => {}
                }
            }
        });
        Self { tx, reader, closed }
    }

    /// Why the socket closed: the system's close frame when the reader has seen one (waiting
    /// briefly for it the first time, as the write may fail first).
    pub(super) async fn close_reason(&self) -> Option<String> {
        for _ in 0..20 {
            if let Some(w) = self.closed.lock().expect("lock").clone() {
                return Some(w);
            }
            if self.reader.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.closed.lock().expect("lock").clone()
    }

    pub(super) async fn send(&self, body: Vec<u8>) -> bool {
        self.tx
            .lock()
            .await
            .write_frame(Frame::text(Payload::Owned(body)))
            .await
            .is_ok()
    }

    pub(super) async fn close(self) {
        let _ = self
            .tx
            .lock()
            .await
            .write_frame(Frame::close(1000, b"bench done"))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.reader).await;
    }
}

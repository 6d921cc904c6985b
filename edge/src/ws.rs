//! WebSocket sessions: the upgrade, a reader that reassembles messages under a size cap and maps
//! protocol faults to the close codes the contract names, and a writer that drains the client's
//! hub queue, batches events into frames and keeps the peer alive with pings.
//!
//! fastwebsockets' `read_frame` is not cancel-safe (it consumes a frame header before awaiting
//! the payload), so the socket is split: the reader runs in the session task and is only ever
//! cancelled when the session is over anyway; the writer is its own task woken by the hub.
//! fastwebsockets caps single frames only; fragmented messages are reassembled here and capped
//! as a whole, so a peer cannot grow a message past the limit in small pieces.
//!
//! A peer that stops reading must not hold its writer forever: every write (a frame, a ping, a
//! close, a flush) has `write_timeout` to complete, and a peer whose socket does not take it in
//! time is dropped (no close frame: one could not be written either), counted in the hub and
//! logged at debug. That also bounds how long the ping deadline can wait behind a blocked
//! write: the liveness check runs between writes, so it is late by at most one write timeout.
//! The timeout is per frame (batches are at most `max_out_frame`), not per event.
//!
//! Close codes: 1007 for a text message that is not UTF-8, 1009 for a frame or message over the
//! limit, 1002 for protocol errors, 1001 on server shutdown or when the peer stops answering
//! pings, 1008 for a dashboard too slow to keep its window events.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fastwebsockets::{
    Frame, OpCode, Payload, Role, WebSocket, WebSocketError, WebSocketRead, WebSocketWrite,
};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::hub::{Client, CloseReason};
use crate::lifecycle::Lifecycle;

type Io = TokioIo<Upgraded>;
/// The read half of an upgraded socket.
pub type ReadHalf = WebSocketRead<tokio::io::ReadHalf<Io>>;
/// The write half of an upgraded socket.
pub type WriteHalf = WebSocketWrite<tokio::io::WriteHalf<Io>>;

/// Session limits and liveness settings.
#[derive(Clone, Copy, Debug)]
pub struct WsConfig {
    /// Largest frame or reassembled message, in bytes.
    pub max_message: usize,
    /// Ping a peer that has been silent this long.
    pub ping_interval: Duration,
    /// Close a peer that stays silent this long after a ping.
    pub ping_timeout: Duration,
    /// Largest outgoing frame when batching events into a JSON array.
    pub max_out_frame: usize,
    /// Drop a peer whose socket does not take a frame (or a flush) within this.
    pub write_timeout: Duration,
}

impl WsConfig {
    /// The default of [`WsConfig::write_timeout`].
    pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_message: 1 << 20,
            ping_interval: Duration::from_secs(15),
            ping_timeout: Duration::from_secs(10),
            max_out_frame: 256 << 10,
            write_timeout: Self::DEFAULT_WRITE_TIMEOUT,
        }
    }
}

/// Close codes used by the sessions.
pub mod code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// How a read ended the session.
#[derive(Debug)]
pub struct End {
    /// Close frame to send, if the socket is still writable.
    pub close: Option<CloseReason>,
}

/// Reads whole messages off the socket.
pub struct MessageReader {
    ws: ReadHalf,
    /// A fragmented message being reassembled, and whether it is text.
    partial: Option<(bool, BytesMut)>,
    max: usize,
    last_seen: Arc<AtomicU64>,
    epoch: Instant,
}

impl MessageReader {
    /// Reads the next text or binary message. Pings are answered through `client`.
    pub async fn next(&mut self, client: &Client) -> Result<BytesMut, End> {
        let mut noop = |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
        loop {
            let mut frame = match self.ws.read_frame(&mut noop).await {
                Ok(f) => f,
                Err(e) => {
                    return Err(End {
                        close: close_for(&e),
                    })
                }
            };
            // RFC 6455 5.1: a server closes on an unmasked client frame. fastwebsockets reads
            // the mask bit but does not check it; the frame's header says whether it had one.
            let mut head = [0u8; 16];
            frame.fmt_head(&mut head);
            if head[1] & 0x80 == 0 {
                return Err(protocol("client frames must be masked"));
            }
            // RFC 6455 5.5: control frames carry at most 125 bytes (pings are checked by
            // fastwebsockets; pongs and closes here).
            if matches!(frame.opcode, OpCode::Pong | OpCode::Close) && frame.payload.len() > 125 {
                return Err(protocol("control frame over 125 bytes"));
            }
            self.last_seen
                .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            let fin = frame.fin;
            let opcode = frame.opcode;
            let payload = into_bytes(frame.payload);
            match opcode {
                OpCode::Ping => client.pong(payload.freeze()),
                OpCode::Pong => {}
                OpCode::Close => {
                    return Err(End {
                        close: echo_close(&payload),
                    })
                }
                OpCode::Text | OpCode::Binary => {
                    if self.partial.is_some() {
                        return Err(protocol("a new message started inside a fragmented one"));
                    }
                    if fin {
                        return Ok(payload);
                    }
                    self.partial = Some((opcode == OpCode::Text, payload));
                }
                OpCode::Continuation => {
                    let Some((text, mut buf)) = self.partial.take() else {
                        return Err(protocol("continuation frame without a message"));
                    };
                    if buf.len() + payload.len() > self.max {
                        return Err(End {
                            close: Some(reason(
                                code::TOO_BIG,
                                format!("message over {} bytes", self.max),
                            )),
                        });
                    }
                    buf.extend_from_slice(&payload);
                    if fin {
                        if text && std::str::from_utf8(&buf).is_err() {
                            return Err(End {
                                close: Some(reason(
                                    code::INVALID_DATA,
                                    "text message is not valid UTF-8",
                                )),
                            });
                        }
                        return Ok(buf);
                    }
                    self.partial = Some((text, buf));
                }
            }
        }
    }
}

fn protocol(why: &str) -> End {
    End {
        close: Some(reason(code::PROTOCOL, why)),
    }
}

fn reason(code: u16, reason: impl Into<String>) -> CloseReason {
    CloseReason {
        code,
        reason: reason.into(),
    }
}

fn into_bytes(p: Payload<'_>) -> BytesMut {
    match p {
        Payload::Bytes(b) => b,
        other => BytesMut::from(&other[..]),
    }
}

fn close_for(e: &WebSocketError) -> Option<CloseReason> {
    use WebSocketError as E;
    match e {
        E::InvalidUTF8 => Some(reason(
            code::INVALID_DATA,
            "text message is not valid UTF-8",
        )),
        E::FrameTooLarge => Some(reason(code::TOO_BIG, "frame over the size limit")),
        E::IoError(_) | E::UnexpectedEOF | E::ConnectionClosed => None,
        other => Some(reason(code::PROTOCOL, other.to_string())),
    }
}

/// Answers a peer's close: echo its code when it is one we may send, else 1000.
fn echo_close(payload: &[u8]) -> Option<CloseReason> {
    if payload.len() >= 2 {
        let c = u16::from_be_bytes([payload[0], payload[1]]);
        if payload.len() > 2 && std::str::from_utf8(&payload[2..]).is_err() {
            return Some(reason(code::INVALID_DATA, "close reason is not UTF-8"));
        }
        let allowed = matches!(c, 1000..=1003 | 1007..=1011 | 3000..=4999);
        return Some(if allowed {
            reason(c, "")
        } else {
            reason(code::PROTOCOL, format!("invalid close code {c}"))
        });
    }
    if payload.len() == 1 {
        return Some(reason(code::PROTOCOL, "close frame of one byte"));
    }
    Some(reason(code::NORMAL, ""))
}

/// What a session does with each message it reads.
pub trait MessageHandler: Send {
    /// Handles one message; replies go through `client`.
    fn on_message(
        &mut self,
        client: &Arc<Client>,
        data: &mut BytesMut,
    ) -> impl Future<Output = ()> + Send;
}

/// Splits an upgraded socket into a reader and a writer.
pub fn split(
    upgraded: Upgraded,
    cfg: &WsConfig,
) -> (MessageReader, WriteHalf, Arc<AtomicU64>, Instant) {
    let mut ws = WebSocket::after_handshake(TokioIo::new(upgraded), Role::Server);
    ws.set_auto_pong(false);
    ws.set_auto_close(false);
    ws.set_writev(false);
    // fastwebsockets refuses frames of `max` bytes or more; allow exactly `max_message`.
    ws.set_max_message_size(cfg.max_message + 1);
    let (r, w) = ws.split(tokio::io::split);
    let epoch = Instant::now();
    let last_seen = Arc::new(AtomicU64::new(0));
    let reader = MessageReader {
        ws: r,
        partial: None,
        max: cfg.max_message,
        last_seen: last_seen.clone(),
        epoch,
    };
    (reader, w, last_seen, epoch)
}

/// Runs a session to its end: reads messages into `handler`, writes the client's queue.
pub async fn run_session<H: MessageHandler>(
    upgraded: Upgraded,
    client: Arc<Client>,
    cfg: WsConfig,
    life: &Lifecycle,
    mut handler: H,
) {
    let (mut reader, writer, last_seen, epoch) = split(upgraded, &cfg);
    let end = CancellationToken::new();
    let writer_task = life.spawn(run_writer(
        writer,
        client.clone(),
        cfg,
        last_seen,
        epoch,
        life.token().clone(),
        end.clone(),
    ));
    loop {
        let msg = tokio::select! {
            m = reader.next(&client) => m,
            _ = end.cancelled() => break,
        };
        match msg {
            Ok(mut data) => handler.on_message(&client, &mut data).await,
            Err(e) => {
                if let Some(close) = e.close {
                    client.close(close);
                } else {
                    end.cancel();
                }
                break;
            }
        }
    }
    // Let the writer flush what is queued and the close frame, briefly.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer_task).await;
}

async fn run_writer(
    ws: WriteHalf,
    client: Arc<Client>,
    cfg: WsConfig,
    last_seen: Arc<AtomicU64>,
    epoch: Instant,
    shutdown: CancellationToken,
    end: CancellationToken,
) {
    let mut out = Out {
        ws,
        limit: cfg.write_timeout,
    };
    let mut tick = tokio::time::interval(cfg.ping_interval.min(cfg.ping_timeout) / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pinged_at: Option<u64> = None;
    let mut buf = Vec::with_capacity(16 << 10);
    let result: Result<(), WriteError> = async {
        loop {
            tokio::select! {
                _ = client.notified() => {}
                _ = end.cancelled() => {}
                _ = shutdown.cancelled() => {
                    out.close(code::GOING_AWAY, "server shutting down").await?;
                    return Ok(());
                }
                _ = tick.tick() => {
                    let now = epoch.elapsed().as_millis() as u64;
                    let seen = last_seen.load(Ordering::Relaxed);
                    // A ping is outstanding while nothing was heard since it went out; heard
                    // "since" includes the same millisecond: on a fast link the pong often
                    // comes back within the millisecond the ping went out (a strict comparison
                    // once stopped the pings, then closed live peers for not answering). An
                    // outstanding ping gets `ping_timeout` to be answered; a peer silent for
                    // `ping_interval` gets a ping.
                    match pinged_at {
                        Some(p) if p > seen && now - p >= cfg.ping_timeout.as_millis() as u64 => {
                            out.close(code::GOING_AWAY, "no answer to ping").await?;
                            return Ok(());
                        }
                        Some(p) if p > seen => {}
                        _ if now.saturating_sub(seen) >= cfg.ping_interval.as_millis() as u64 => {
                            pinged_at = Some(now);
                            out.frame(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b"ka"))).await?;
                            out.flush().await?;
                        }
                        _ => {}
                    }
                    continue;
                }
            }
            let d = client.drain();
            if let Some(p) = &d.pong {
                out.frame(Frame::pong(Payload::Borrowed(p))).await?;
            }
            if d.dropped > 0 {
                let mut ev = Vec::with_capacity(64);
                metrics_model::event::dropped(&mut ev, d.dropped, d.dropped_total);
                out.frame(Frame::text(Payload::Owned(ev))).await?;
            }
            write_events(&mut out, &d.events, cfg.max_out_frame, &mut buf).await?;
            if d.overflowed {
                out.close(code::POLICY, "client too slow: window events backed up").await?;
                return Ok(());
            }
            if let Some(close) = d.close {
                out.close(close.code, &close.reason).await?;
                return Ok(());
            }
            out.flush().await?;
            if end.is_cancelled() {
                return Ok(());
            }
        }
    }
    .await;
    match result {
        Ok(()) => {}
        Err(WriteError::TimedOut) => {
            client.note_write_timeout();
            tracing::debug!(
                client = client.id(),
                timeout_ms = cfg.write_timeout.as_millis() as u64,
                "websocket peer dropped: a write did not complete within the write timeout"
            );
        }
        Err(WriteError::Socket(e)) => {
            tracing::debug!(client = client.id(), error = %e, "websocket writer ended");
        }
    }
    end.cancel();
}

/// Why the writer stopped writing.
#[derive(Debug)]
enum WriteError {
    Socket(WebSocketError),
    /// The peer's socket did not take a write within the write timeout.
    TimedOut,
}

/// The write half, each write bounded by the write timeout. A write cut short leaves a partial
/// frame on the wire, so after [`WriteError::TimedOut`] the socket is only fit to be dropped.
struct Out {
    ws: WriteHalf,
    limit: Duration,
}

impl Out {
    async fn bounded(
        limit: Duration,
        write: impl Future<Output = Result<(), WebSocketError>>,
    ) -> Result<(), WriteError> {
        match tokio::time::timeout(limit, write).await {
            Ok(r) => r.map_err(WriteError::Socket),
            Err(_) => Err(WriteError::TimedOut),
        }
    }

    async fn frame(&mut self, frame: Frame<'_>) -> Result<(), WriteError> {
        Self::bounded(self.limit, self.ws.write_frame(frame)).await
    }

    async fn flush(&mut self) -> Result<(), WriteError> {
        Self::bounded(self.limit, self.ws.flush()).await
    }

    async fn close(&mut self, c: u16, reason: &str) -> Result<(), WriteError> {
        self.frame(Frame::close(c, reason.as_bytes())).await?;
        self.flush().await
    }
}

/// Writes events, one per frame when alone, else batched as JSON arrays of at most `max` bytes.
async fn write_events(
    out: &mut Out,
    events: &[Bytes],
    max: usize,
    buf: &mut Vec<u8>,
) -> Result<(), WriteError> {
    if let [one] = events {
        return out.frame(Frame::text(Payload::Borrowed(one))).await;
    }
    let mut i = 0;
    while i < events.len() {
        buf.clear();
        buf.push(b'[');
        while i < events.len() {
            let e = &events[i];
            if buf.len() > 1 && buf.len() + e.len() + 2 > max {
                break;
            }
            if buf.len() > 1 {
                buf.push(b',');
            }
            buf.extend_from_slice(e);
            i += 1;
        }
        buf.push(b']');
        out.frame(Frame::text(Payload::Borrowed(buf))).await?;
    }
    Ok(())
}

/// The socket-level errors of an upgrade, for the handler's 400.
pub fn upgrade_error(e: &WebSocketError) -> String {
    format!("WebSocket upgrade refused: {e}")
}

//! WebSocket sessions: the upgrade, a reader that reassembles messages under a size cap and maps
//! protocol faults to the close codes the contract names, and a writer that drains the client's
//! hub queue, batches events into frames and keeps the peer alive with pings.
//!
//! The socket is split: the reader runs in the session task; the writer is its own task woken by
//! the hub and writes with fastwebsockets. The read side's frame layer is written here (see
//! `FrameReader`: an idle peer holds no read buffer). Single frames are capped at the message
//! limit; fragmented messages are reassembled and capped as a whole, so a peer cannot grow a
//! message past the limit in small pieces.
//!
//! A peer that stops reading must not hold its writer forever: every write (a frame, a ping, a
//! close, a flush) has `write_timeout` to complete, and a peer whose socket does not take it in
//! time is dropped (no close frame: one could not be written either), counted in the hub and
//! logged at debug. That also bounds how long the ping deadline can wait behind a blocked
//! write: the liveness check runs between writes, so it is late by at most one write timeout.
//! The timeout is per frame (batches are at most `max_out_frame`), not per event.
//!
//! With many dashboards, a writer that wrote its last frame less than its share of the frame
//! budget ago lets the events queue until that interval is over, so they go out as one array
//! frame (`crate::frame_budget`); a pong or a close owed ends the wait at once, and pings, the
//! ping deadline and shutdown are served during it.
//!
//! Close codes: 1007 for a text message that is not UTF-8, 1009 for a frame or message over the
//! limit, 1002 for protocol errors, 1001 on server shutdown or when the peer stops answering
//! pings, 1008 for a dashboard too slow to keep its window events.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError, WebSocketWrite};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use crate::frame_budget::{Pacer, DEFAULT_BUDGET};
use crate::hub::{Audience, Client, CloseReason};
use crate::lifecycle::Lifecycle;

type Io = TokioIo<Upgraded>;
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
    /// Frames per second the dashboard writers aim at together; 0: no budget (see
    /// [`crate::frame_budget`]).
    pub frame_budget: u32,
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
            frame_budget: DEFAULT_BUDGET,
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
    frames: FrameReader<tokio::io::ReadHalf<Io>>,
    /// A fragmented message being reassembled, and whether it is text.
    partial: Option<(bool, BytesMut)>,
    max: usize,
    last_seen: Arc<AtomicU64>,
    epoch: Instant,
}

impl MessageReader {
    /// Reads the next text or binary message. Pings are answered through `client`.
    pub async fn next(&mut self, client: &Client) -> Result<BytesMut, End> {
        loop {
            let RawFrame {
                fin,
                opcode,
                payload,
            } = self.frames.next(self.max).await?;
            self.last_seen
                .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            match opcode {
                // A copy (at most 125 bytes): the payload shares the read buffer, which should
                // not wait for the writer.
                OpCode::Ping => client.pong(Bytes::copy_from_slice(&payload)),
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
                        if opcode == OpCode::Text && std::str::from_utf8(&payload).is_err() {
                            return Err(invalid_utf8());
                        }
                        return Ok(payload);
                    }
                    self.partial = Some((opcode == OpCode::Text, payload));
                }
                OpCode::Continuation => {
                    let Some((text, mut buf)) = self.partial.take() else {
                        return Err(protocol("continuation frame without a message"));
                    };
                    if buf.len() + payload.len() > self.max {
                        return Err(too_big(format!("message over {} bytes", self.max)));
                    }
                    buf.extend_from_slice(&payload);
                    if fin {
                        if text && std::str::from_utf8(&buf).is_err() {
                            return Err(invalid_utf8());
                        }
                        return Ok(buf);
                    }
                    self.partial = Some((text, buf));
                }
            }
        }
    }
}

/// One frame off the wire, unmasked.
struct RawFrame {
    fin: bool,
    opcode: OpCode,
    payload: BytesMut,
}

/// The frame layer of the read side (RFC 6455 5.2), written here rather than taken from
/// fastwebsockets for memory: fastwebsockets gives each reader an 8 KiB buffer for the life of
/// the socket, more than everything else an idle connection holds. This reader's buffer is
/// released whenever it is empty after a frame, so a peer between messages (a dashboard that
/// only answers pings, an agent between samples) holds no read buffer of its own, only the
/// 512-byte first-read array inside the session task (against 8 KiB). The socket's
/// write side, and the upgrade, are still fastwebsockets'.
struct FrameReader<R> {
    io: R,
    buf: BytesMut,
}

/// What a read asks the socket for at least, so a burst of small frames takes one read.
const READ_CHUNK: usize = 4096;
/// The first read after an idle spell: a frame header and a small message.
const FIRST_READ: usize = 512;
/// The longest frame header: 2 bytes, an 8-byte length and the 4-byte mask.
const MAX_HEAD: usize = 14;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads one frame of at most `max` payload bytes. Cancel-safe: bytes read stay in `buf`.
    async fn next(&mut self, max: usize) -> Result<RawFrame, End> {
        self.fill(2).await?;
        let (b0, b1) = (self.buf[0], self.buf[1]);
        if b0 & 0x70 != 0 {
            return Err(protocol("reserved bits are not zero"));
        }
        let opcode = OpCode::try_from(b0 & 0x0f)
            .map_err(|_| protocol(&format!("unknown opcode {:#x}", b0 & 0x0f)))?;
        let fin = b0 & 0x80 != 0;
        // RFC 6455 5.1: a server closes on an unmasked client frame.
        if b1 & 0x80 == 0 {
            return Err(protocol("client frames must be masked"));
        }
        let extra = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let head = 2 + extra + 4;
        self.fill(head).await?;
        let len = match extra {
            0 => u64::from(b1 & 0x7f),
            2 => u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
            _ => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&self.buf[2..10]);
                u64::from_be_bytes(n)
            }
        };
        if is_control(opcode) {
            if !fin {
                return Err(protocol("control frame must not be fragmented"));
            }
            // RFC 6455 5.5: control frames carry at most 125 bytes.
            if len > 125 {
                return Err(protocol("control frame over 125 bytes"));
            }
        }
        let len = match usize::try_from(len) {
            Ok(n) if n <= max => n,
            _ => return Err(too_big("frame over the size limit".into())),
        };
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&self.buf[head - 4..head]);
        self.fill(head + len).await?;
        bytes::Buf::advance(&mut self.buf, head);
        let mut payload = self.buf.split_to(len);
        if self.buf.is_empty() {
            // Nothing read ahead: let go of the buffer (the payload keeps what it shares).
            self.buf = BytesMut::new();
        }
        fastwebsockets::unmask(&mut payload, mask);
        Ok(RawFrame {
            fin,
            opcode,
            payload,
        })
    }

    /// Reads until `buf` holds at least `n` bytes. While the buffer is released (between
    /// messages), the wait for the next byte holds no buffer of its own: the first read goes to
    /// a 512-byte array (which lives in the session task's future), and the buffer is made for
    /// what arrived.
    async fn fill(&mut self, n: usize) -> Result<(), End> {
        while self.buf.len() < n {
            if self.buf.capacity() == 0 {
                let mut first = [0u8; FIRST_READ];
                match self.io.read(&mut first).await {
                    Ok(0) | Err(_) => return Err(End { close: None }),
                    Ok(k) => {
                        // A full array means more is coming: room for a read chunk at once,
                        // so a frame of up to 4 KiB needs no second allocation.
                        let room = if k == FIRST_READ {
                            READ_CHUNK + MAX_HEAD
                        } else {
                            0
                        };
                        self.buf.reserve(k.max(n).max(room));
                        self.buf.extend_from_slice(&first[..k]);
                    }
                }
                continue;
            }
            let missing = n - self.buf.len();
            if self.buf.capacity() - self.buf.len() < missing {
                self.buf.reserve(missing.max(READ_CHUNK) + MAX_HEAD);
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Err(End { close: None }),
                Ok(_) => {}
            }
        }
        Ok(())
    }
}

fn is_control(op: OpCode) -> bool {
    matches!(op, OpCode::Close | OpCode::Ping | OpCode::Pong)
}

fn invalid_utf8() -> End {
    End {
        close: Some(reason(
            code::INVALID_DATA,
            "text message is not valid UTF-8",
        )),
    }
}

fn too_big(why: String) -> End {
    End {
        close: Some(reason(code::TOO_BIG, why)),
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
    let (r, w) = tokio::io::split(TokioIo::new(upgraded));
    let (_, mut w) = fastwebsockets::after_handshake_split(tokio::io::empty(), w, Role::Server);
    w.set_writev(false);
    let epoch = Instant::now();
    let last_seen = Arc::new(AtomicU64::new(0));
    let reader = MessageReader {
        frames: FrameReader {
            io: r,
            buf: BytesMut::new(),
        },
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
    let mut buf = Vec::new();
    let mut pace = Pacer::new(cfg.frame_budget, client.frame_gauge().clone());
    // Set while queued events wait out this writer's frame interval (the frame budget).
    let mut due: Option<tokio::time::Instant> = None;
    let result: Result<(), WriteError> = async {
        loop {
            let idle_at = pace.idle_at();
            tokio::select! {
                _ = client.notified(), if due.is_none() => {
                    if let Some(at) = pace.due(tokio::time::Instant::now()) {
                        due = Some(at);
                        continue;
                    }
                }
                // The end of the frame interval, or a pong or a close owed: those never wait.
                _ = until(due), if due.is_some() => {}
                _ = client.urgent(), if due.is_some() => {}
                _ = until(idle_at), if due.is_none() && idle_at.is_some() => {
                    pace.idle();
                    continue;
                }
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
            due = None;
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
            if !d.events.is_empty() {
                pace.wrote(
                    tokio::time::Instant::now(),
                    client.audience() == Audience::Dashboard,
                );
            }
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

/// Sleeps until `at`; never ends for `None` (a `select!` branch disabled by its condition).
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
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

#[cfg(test)]
mod frame_tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn masked(fin: bool, op: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | op];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        f
    }

    async fn read_all(
        wire: Vec<u8>,
        step: usize,
        max: usize,
    ) -> Vec<Result<(u8, Vec<u8>), String>> {
        let (mut tx, rx) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for c in wire.chunks(step) {
                if tx.write_all(c).await.is_err() {
                    return;
                }
            }
        });
        let mut r = FrameReader {
            io: rx,
            buf: BytesMut::new(),
        };
        let mut out = Vec::new();
        loop {
            match r.next(max).await {
                Ok(f) => out.push(Ok((f.opcode as u8, f.payload.to_vec()))),
                Err(End { close: Some(c) }) => {
                    out.push(Err(format!("{} {}", c.code, c.reason)));
                    break;
                }
                Err(End { close: None }) => break,
            }
        }
        writer.abort();
        out
    }

    #[tokio::test]
    async fn frames_arrive_whole_whatever_the_read_boundaries() {
        let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let medium: Vec<u8> = (0..300u32).map(|i| (i % 7) as u8).collect();
        let mut wire = masked(true, 1, b"{\"a\":1}", [1, 2, 3, 4]);
        wire.extend(masked(true, 9, b"ka", [9, 8, 7, 6]));
        wire.extend(masked(true, 2, &big, [0xde, 0xad, 0xbe, 0xef]));
        wire.extend(masked(false, 1, &medium, [5, 5, 5, 5]));
        wire.extend(masked(true, 0, b"", [0, 0, 0, 0]));
        for step in [1, 3, 13, 600, 100_000] {
            let got = read_all(wire.clone(), step, 1 << 20).await;
            let want = vec![
                Ok((1, b"{\"a\":1}".to_vec())),
                Ok((9, b"ka".to_vec())),
                Ok((2, big.clone())),
                Ok((1, medium.clone())),
                Ok((0, vec![])),
            ];
            assert_eq!(got, want, "reads of {step} bytes");
        }
    }

    #[tokio::test]
    async fn protocol_faults_close_with_their_code_and_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                vec![0xc1, 0x80, 0, 0, 0, 0],
                "1002 reserved bits are not zero",
            ),
            (vec![0x83, 0x80, 0, 0, 0, 0], "1002 unknown opcode 0x3"),
            (
                vec![0x81, 0x02, b'h', b'i'],
                "1002 client frames must be masked",
            ),
            (
                masked(false, 9, b"x", [1, 1, 1, 1]),
                "1002 control frame must not be fragmented",
            ),
            (
                masked(true, 10, &[0u8; 126], [1, 1, 1, 1]),
                "1002 control frame over 125 bytes",
            ),
            (
                masked(true, 2, &[0u8; 101], [1, 1, 1, 1]),
                "1009 frame over the size limit",
            ),
            (
                vec![
                    0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0,
                ],
                "1009 frame over the size limit",
            ),
        ];
        for (wire, want) in cases {
            let got = read_all(wire, 1, 100).await;
            assert_eq!(got, vec![Err(want.to_string())]);
        }
        // Exactly the limit is allowed.
        let got = read_all(masked(true, 2, &[7u8; 100], [1, 2, 3, 4]), 7, 100).await;
        assert_eq!(got, vec![Ok((2, vec![7u8; 100]))]);
    }

    #[tokio::test]
    async fn an_idle_reader_holds_no_buffer() {
        let (mut tx, rx) = tokio::io::duplex(4096);
        let mut r = FrameReader {
            io: rx,
            buf: BytesMut::new(),
        };
        tx.write_all(&masked(true, 1, &[b'x'; 3000], [1, 2, 3, 4]))
            .await
            .unwrap();
        let f = r.next(1 << 20).await.unwrap();
        assert_eq!(f.payload.len(), 3000);
        drop(f);
        assert_eq!(
            r.buf.capacity(),
            0,
            "nothing read ahead: the buffer is released"
        );
        // Two frames in one read: the second stays buffered until read.
        let mut two = masked(true, 1, b"a", [1, 2, 3, 4]);
        two.extend(masked(true, 1, b"b", [1, 2, 3, 4]));
        tx.write_all(&two).await.unwrap();
        assert_eq!(&r.next(10).await.unwrap().payload[..], b"a");
        assert!(r.buf.capacity() > 0);
        assert_eq!(&r.next(10).await.unwrap().payload[..], b"b");
        assert_eq!(r.buf.capacity(), 0);
    }
}

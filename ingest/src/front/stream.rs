//! `POST /metrics/stream`: NDJSON in for as long as the agent runs, NDJSON acknowledgements
//! out, over one HTTP/2 request (or a chunked HTTP/1.1 one).
//!
//! Two tasks per request, tracked by the process's lifecycle: the reader splits the body into
//! lines ([`Lines`]), decodes each, and writes the complete lines of each body chunk as one
//! stream entry (several when they would pass `--max-entry-bytes`: a chunk is split, never
//! refused, for its size); the acknowledger answers, in the order the lines came, `{"acked":N,"total":T}`
//! once Redis has an entry, or `{"error":M,"line":L}` for a refused line. A bad line is refused
//! alone; the stream goes on.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming};
use metrics_edge::http::{Answer, Refusal};
use metrics_model::decode::with_decoder;
use metrics_model::{event, now_ms, Sample};
use tokio::sync::mpsc;

use super::{check_headers, Encoding, Front};
use crate::store::{Entry, Pending};
use crate::wire;

/// `POST /metrics/stream`.
pub fn post_stream(front: &Arc<Front>, req: Request<Incoming>) -> Answer {
    let (_format, enc) = check_headers(front, &req)?;
    if enc != Encoding::Identity {
        return Err(Refusal::UnsupportedMedia(
            "Content-Encoding is not supported on /metrics/stream; compress at the TLS or HTTP/2 layer instead".into(),
        ));
    }
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(256);
    let (ack_tx, ack_rx) = mpsc::channel::<Ack>(1024);
    front
        .life
        .spawn(acknowledge(ack_rx, out_tx, front.opts.deadline));
    front
        .life
        .spawn(read_lines(front.clone(), req.into_body(), ack_tx));
    let mut r = Response::new(BodyExt::boxed(ChannelBody(out_rx)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(r)
}

/// What the acknowledger answers, in line order.
enum Ack {
    /// An entry handed to the writer: `acked` once Redis has it.
    Written { pending: Pending, count: usize },
    /// A refused line (`line` 0: not about one line).
    Refused { line: usize, message: String },
}

/// Answers each [`Ack`] in order, waiting for each write at most `deadline`.
async fn acknowledge(mut acks: mpsc::Receiver<Ack>, out: mpsc::Sender<Bytes>, deadline: Duration) {
    let mut total = 0u64;
    while let Some(ack) = acks.recv().await {
        let mut b = Vec::with_capacity(96);
        match ack {
            Ack::Written { pending, count } => {
                match tokio::time::timeout(deadline, pending).await {
                    Ok(Ok(Ok(_))) => {
                        total += count as u64;
                        event::stream_acked(&mut b, count as u64, total);
                    }
                    Ok(Ok(Err(e))) => event::stream_error(
                        &mut b,
                        &format!("{count} samples not stored: {e}; send them again"),
                        None,
                    ),
                    _ => event::stream_error(
                        &mut b,
                        &format!(
                        "{count} samples not acknowledged by Redis within {} ms; send them again",
                        deadline.as_millis()
                    ),
                        None,
                    ),
                }
            }
            Ack::Refused { line, message } => {
                event::stream_error(&mut b, &message, (line > 0).then_some(line as u64))
            }
        }
        b.push(b'\n');
        if out.send(Bytes::from(b)).await.is_err() {
            break;
        }
    }
}

/// Reads the body chunk by chunk; each chunk's good lines become one entry.
async fn read_lines(front: Arc<Front>, mut body: Incoming, acks: mpsc::Sender<Ack>) {
    let mut lines = Lines::new(front.opts.max_body);
    let mut parsed = Vec::new();
    loop {
        let chunk = match body.frame().await {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Some(Err(_)) | None => break,
        };
        let arrival = now_ms();
        lines.feed(&chunk, arrival, &mut parsed);
        if !submit(&front, &acks, &mut parsed, arrival).await {
            return;
        }
    }
    // A last line without a newline still counts.
    let arrival = now_ms();
    lines.finish(arrival, &mut parsed);
    submit(&front, &acks, &mut parsed, arrival).await;
}

/// Queues the refusals of `parsed` in place and its samples as entries, each under
/// `--max-entry-bytes` (a chunk whose samples would pass it becomes several entries, each
/// acknowledged on its own); false once the acknowledger is gone (the client left).
async fn submit(
    front: &Front,
    acks: &mpsc::Sender<Ack>,
    parsed: &mut Vec<Parsed>,
    arrival_ms: u64,
) -> bool {
    let max = front.opts.max_entry;
    let new_entry = |n| wire::EntryWriter::new(arrival_ms, front.writer.node(), max, n);
    let mut entry = new_entry(parsed.len());
    for p in parsed.drain(..) {
        match p {
            Parsed::Sample(s) => {
                if entry.push(&s).is_ok() {
                    continue;
                }
                if !entry.is_empty() {
                    let full = std::mem::replace(&mut entry, new_entry(1));
                    if !write(front, acks, full).await {
                        return false;
                    }
                }
                if let Err(size) = entry.push(&s) {
                    // Only a node id of kilobytes leaves no room for one sample.
                    let message = format!(
                        "a sample of server {} takes {size} bytes as stored, over the limit of {max} bytes (--max-entry-bytes)",
                        s.server_id
                    );
                    if acks.send(Ack::Refused { line: 0, message }).await.is_err() {
                        return false;
                    }
                }
            }
            Parsed::Refused { line, message } => {
                if acks.send(Ack::Refused { line, message }).await.is_err() {
                    return false;
                }
            }
        }
    }
    entry.is_empty() || write(front, acks, entry).await
}

/// Hands one entry to the writer and its acknowledgement to the acknowledger.
async fn write(front: &Front, acks: &mpsc::Sender<Ack>, entry: wire::EntryWriter) -> bool {
    let count = entry.count();
    let entry = Entry {
        count,
        value: entry.finish(),
    };
    let ack = match front.writer.submit(entry).await {
        Ok(pending) => Ack::Written { pending, count },
        Err(e) => Ack::Refused {
            line: 0,
            message: format!("{count} samples not stored: {e}"),
        },
    };
    acks.send(ack).await.is_ok()
}

/// One line of the stream, decoded or refused.
#[derive(Debug)]
pub enum Parsed {
    Sample(Sample),
    Refused { line: usize, message: String },
}

/// Splits a byte stream into numbered lines (from 1) under a length limit, decoding each. A
/// line over the limit is refused once and skipped to its end; blank lines are skipped.
pub struct Lines {
    buf: BytesMut,
    line_no: usize,
    /// Inside a line already refused as too long.
    skipping: bool,
    max_line: usize,
}

impl Lines {
    pub fn new(max_line: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            line_no: 0,
            skipping: false,
            max_line,
        }
    }

    /// Takes a chunk; appends what its complete lines hold to `out`.
    pub fn feed(&mut self, chunk: &[u8], arrival_ms: u64, out: &mut Vec<Parsed>) {
        self.buf.extend_from_slice(chunk);
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line = self.buf.split_to(pos + 1);
            if std::mem::take(&mut self.skipping) {
                // The rest of a line refused as too long (and counted then).
                continue;
            }
            self.line_no += 1;
            if pos > self.max_line {
                // Over the limit however the body was chunked, not only when cut mid-line.
                self.refuse_long(out);
                continue;
            }
            self.decode(&mut line[..pos], arrival_ms, out);
        }
        if self.buf.len() > self.max_line {
            // A line already refused may pass the limit again before its end: once is enough.
            if !self.skipping {
                self.line_no += 1;
                self.refuse_long(out);
            }
            self.buf.clear();
            self.skipping = true;
        }
    }

    fn refuse_long(&self, out: &mut Vec<Parsed>) {
        out.push(Parsed::Refused {
            line: self.line_no,
            message: format!(
                "line {}: over the limit of {} bytes",
                self.line_no, self.max_line
            ),
        });
    }

    /// The end of the stream: a last line without a newline.
    pub fn finish(&mut self, arrival_ms: u64, out: &mut Vec<Parsed>) {
        if self.skipping || self.buf.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        self.line_no += 1;
        let mut line = std::mem::take(&mut self.buf);
        self.decode(&mut line, arrival_ms, out);
    }

    fn decode(&self, line: &mut [u8], arrival_ms: u64, out: &mut Vec<Parsed>) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        out.push(match with_decoder(|d| d.decode_one(line, arrival_ms)) {
            Ok(s) => Parsed::Sample(s),
            Err(e) => Parsed::Refused {
                line: self.line_no,
                message: format!("line {}: {e}", self.line_no),
            },
        });
    }
}

/// A response body fed by a channel: the acknowledgements.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(out: &[Parsed]) -> Vec<String> {
        out.iter()
            .map(|p| match p {
                Parsed::Sample(s) => format!("ok {}", s.server_id),
                Parsed::Refused { line, .. } => format!("refused {line}"),
            })
            .collect()
    }

    #[test]
    fn lines_are_numbered_across_chunks_and_long_ones_skipped_whole() {
        let mut lines = Lines::new(64);
        let mut out = Vec::new();
        lines.feed(
            b"{\"serverId\":\"a\",\"metrics\":{\"x\":1}}\n\n{\"serverId\":\"b\",\"met",
            1,
            &mut out,
        );
        lines.feed(b"rics\":{\"x\":1}}\nnot json\n", 1, &mut out);
        assert_eq!(kinds(&out), ["ok a", "ok b", "refused 4"]);
        out.clear();
        lines.feed(&[b'x'; 100], 1, &mut out);
        lines.feed(
            b"still the long line\n{\"serverId\":\"c\",\"metrics\":{\"x\":1}}",
            1,
            &mut out,
        );
        assert_eq!(kinds(&out), ["refused 5"]);
        out.clear();
        lines.finish(1, &mut out);
        assert_eq!(kinds(&out), ["ok c"]);
        assert_eq!(lines.line_no, 6, "the long line counts once");
    }
}

//! The streaming endpoint's line reader (`ingest::front::stream::Lines`) against a plain
//! reference, and against the NDJSON body decoder.
//!
//! Input: byte 0 picks the line limit, byte 1 how the stream is cut into body chunks (0: one
//! chunk), the rest is the stream. Properties:
//! - however the stream is chunked, the answer is the same: line `n` (1-based, blank lines
//!   counted) is refused once if it holds more than the limit, skipped if blank, else decoded
//!   alone, a sample or a refusal naming line `n`;
//! - a stream that `Decoder::decode_ndjson` accepts whole as a body gives the same samples, line
//!   for line, when streamed.

#![no_main]

use ingest::front::stream::{Lines, Parsed};
use libfuzzer_sys::fuzz_target;
use metrics_model::decode::{with_decoder, Decoder, Limits};

const ARRIVAL_MS: u64 = 1_764_349_200_000;

/// What one line became, comparable.
#[derive(Debug, PartialEq)]
enum Out {
    Sample(String),
    Refused(usize, String),
}

fn outs(parsed: Vec<Parsed>) -> Vec<Out> {
    parsed
        .into_iter()
        .map(|p| match p {
            Parsed::Sample(s) => Out::Sample(format!("{s:?}")),
            Parsed::Refused { line, message } => Out::Refused(line, message),
        })
        .collect()
}

fn run(stream: &[u8], max_line: usize, chunks: impl Iterator<Item = usize>) -> Vec<Out> {
    let mut lines = Lines::new(max_line);
    let mut out = Vec::new();
    let mut rest = stream;
    for n in chunks {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        lines.feed(chunk, ARRIVAL_MS, &mut out);
        rest = tail;
    }
    lines.feed(rest, ARRIVAL_MS, &mut out);
    lines.finish(ARRIVAL_MS, &mut out);
    outs(out)
}

/// The contract, written plainly over the whole stream.
fn reference(stream: &[u8], max_line: usize) -> Vec<Out> {
    let mut out = Vec::new();
    let mut pieces: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
    // The text after the last newline is a line only if it holds something (or too much).
    if pieces
        .last()
        .is_some_and(|l| l.len() <= max_line && l.iter().all(u8::is_ascii_whitespace))
    {
        pieces.pop();
    }
    for (i, line) in pieces.into_iter().enumerate() {
        let n = i + 1;
        if line.len() > max_line {
            out.push(Out::Refused(
                n,
                format!("line {n}: over the limit of {max_line} bytes"),
            ));
        } else if !line.iter().all(u8::is_ascii_whitespace) {
            out.push(
                match with_decoder(|d| d.decode_one(&mut line.to_vec(), ARRIVAL_MS)) {
                    Ok(s) => Out::Sample(format!("{s:?}")),
                    Err(e) => Out::Refused(n, format!("line {n}: {e}")),
                },
            );
        }
    }
    out
}

/// Chunk lengths from a seed: 1 to 2*seed bytes each, varied.
fn chunking(seed: u8) -> impl Iterator<Item = usize> {
    let mut x = u32::from(seed) | 0x9e37_0000;
    std::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        1 + (x as usize) % (2 * usize::from(seed))
    })
}

fuzz_target!(|data: &[u8]| {
    let [limit, cut, stream @ ..] = data else {
        return;
    };
    let max_line = 8 + usize::from(*limit) * 2;
    let want = reference(stream, max_line);
    let whole = run(stream, max_line, std::iter::empty());
    assert_eq!(whole, want, "one chunk");
    if *cut > 0 {
        let cut_up = run(stream, max_line, chunking(*cut));
        assert_eq!(cut_up, want, "chunked with seed {cut}");
    }
    let byte_by_byte = run(stream, max_line, std::iter::repeat(1));
    assert_eq!(byte_by_byte, want, "byte by byte");

    // The same lines sent as one NDJSON body, with no line limit in play.
    let mut ndjson = Decoder::new(Limits {
        max_batch: usize::MAX,
        ..Limits::default()
    });
    if let Ok(samples) = ndjson.decode_ndjson(&mut stream.to_vec(), ARRIVAL_MS) {
        let streamed = run(stream, usize::MAX, std::iter::empty());
        let body: Vec<Out> = samples
            .iter()
            .map(|s| Out::Sample(format!("{s:?}")))
            .collect();
        assert_eq!(streamed, body, "NDJSON body and stream disagree");
    }
});

//! Inputs the fuzz targets in `fuzz/` found failing, kept as regression tests in the normal
//! suite (README, "Fuzzing"). Each test names the target that found it and what was wrong.

use ingest::front::stream::{Lines, Parsed};

fn kinds(out: &[Parsed]) -> Vec<String> {
    out.iter()
        .map(|p| match p {
            Parsed::Sample(s) => format!("ok {}", s.server_id),
            Parsed::Refused { line, message } => format!("refused {line}: {message}"),
        })
        .collect()
}

fn stream(max_line: usize, chunks: &[&[u8]]) -> Vec<String> {
    let mut lines = Lines::new(max_line);
    let mut out = Vec::new();
    for c in chunks {
        lines.feed(c, 1, &mut out);
    }
    lines.finish(1, &mut out);
    kinds(&out)
}

const SAMPLE: &[u8] = br#"{"serverId":"a","metrics":{"cpu":1}}"#;

/// `stream_lines` (its `long_line` seed, byte 0 = 20: a 48-byte limit): a line over the limit
/// that arrived whole in one body chunk was decoded instead of refused as too long, so the
/// same stream got different answers depending on how the network cut it.
#[test]
fn a_long_line_in_one_chunk_is_refused_as_too_long() {
    let body = [SAMPLE, b"\n", &[b'x'; 100], b"\n", SAMPLE, b"\n"].concat();
    let want = [
        "ok a",
        "refused 2: line 2: over the limit of 48 bytes",
        "ok a",
    ];
    assert_eq!(stream(48, &[&body]), want, "one chunk");
    let (a, b) = body.split_at(70);
    assert_eq!(stream(48, &[a, b]), want, "cut inside the long line");
}

/// `stream_lines`, the same property cut finer: a long line spread over three chunks passed
/// the limit twice and was refused twice, as lines 2 and 3, and every later line was numbered
/// one too high.
#[test]
fn a_long_line_over_three_chunks_is_refused_once() {
    let long = [b'x'; 60];
    let got = stream(48, &[SAMPLE, b"\n", &long, &long, b"\n", SAMPLE, b"\nx\n"]);
    assert_eq!(
        got,
        [
            "ok a",
            "refused 2: line 2: over the limit of 48 bytes",
            "ok a",
            "refused 4: line 4: invalid JSON: InternalError at character 0 ('x')",
        ]
    );
}

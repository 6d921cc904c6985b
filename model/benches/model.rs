//! Hot paths of the shared model, each beside the obvious alternative:
//! - decode + validate one 5-metric sample (target: 2 M samples/s on one core), single and in a
//!   batch of 100;
//! - a window update (target: 20 M updates/s on one core), our bit-bucket sketch beside an
//!   HDR histogram and beside a plain `Vec` push (what an exact sort-at-close would cost);
//! - encoding a `sample` event;
//! - the roll-up's add of a batch (both systems' window aggregation: a look-up per server and
//!   per metric, per server and for all servers, then a window update per window length).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use metrics_model::decode::Decoder;
use metrics_model::rollup::Rollup;
use metrics_model::window::{WindowSpec, WindowStats};
use metrics_model::{event, Sample};
use std::hint::black_box;

const SAMPLE: &[u8] = br#"{"serverId":"server-1","timestamp":1764349200123,"metrics":{"cpu":42.5,"memory":61.2,"disk":70.1,"network":{"in":812,"out":230}}}"#;

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    let mut d = Decoder::default();
    let mut buf = SAMPLE.to_vec();
    g.bench_function("one 5-metric sample", |b| {
        b.iter(|| {
            buf.copy_from_slice(SAMPLE);
            black_box(d.decode_json(&mut buf, 1).expect("valid"));
        })
    });
    g.bench_function("one 5-metric sample, simd-json path only", |b| {
        b.iter(|| {
            buf.copy_from_slice(SAMPLE);
            black_box(d.decode_json_slow(&mut buf, 1).expect("valid"));
        })
    });
    // The floor: simd-json's tape alone, with reused buffers, no validation or samples.
    let mut buffers = simd_json::Buffers::new(256);
    let mut tape = simd_json::tape::Tape::null().reset();
    g.bench_function("simd-json tape only (floor)", |b| {
        b.iter(|| {
            buf.copy_from_slice(SAMPLE);
            let mut t = std::mem::replace(&mut tape, simd_json::tape::Tape::null().reset()).reset();
            simd_json::fill_tape(&mut buf, &mut buffers, &mut t).expect("valid");
            black_box(t.0.len());
        })
    });
    let mut batch = b"[".to_vec();
    for i in 0..100 {
        if i > 0 {
            batch.push(b',');
        }
        batch.extend_from_slice(SAMPLE);
    }
    batch.push(b']');
    let mut work = batch.clone();
    g.throughput(Throughput::Elements(100));
    g.bench_function("batch of 100 samples", |b| {
        b.iter(|| {
            work.copy_from_slice(&batch);
            black_box(d.decode_json(&mut work, 1).expect("valid"));
        })
    });
    g.finish();
}

fn values(n: usize) -> Vec<f64> {
    // A random walk between 0 and 100 with one decimal, like a CPU gauge.
    let mut x = 50.0f64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            x = (x + ((seed % 81) as f64 - 40.0) / 10.0).clamp(0.0, 100.0);
            (x * 10.0).round() / 10.0
        })
        .collect()
}

fn window(c: &mut Criterion) {
    let v = values(4096);
    let mut g = c.benchmark_group("window update");
    g.throughput(Throughput::Elements(v.len() as u64));
    g.bench_function("WindowStats::record (ours)", |b| {
        let mut w = WindowStats::default();
        b.iter(|| {
            for &x in &v {
                w.record(black_box(x));
            }
        })
    });
    g.bench_function("hdrhistogram record (x1000 as integer)", |b| {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 1 << 40, 2).expect("hist");
        b.iter(|| {
            for &x in &v {
                let _ = h.record(black_box((x * 1000.0) as u64).max(1));
            }
        })
    });
    g.bench_function("Vec push (exact, sort at close)", |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(v.len()),
            |out: &mut Vec<f64>| {
                for &x in &v {
                    out.push(black_box(x));
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("window close");
    g.bench_function("summary of 4096 values", |b| {
        let mut w = WindowStats::default();
        for &x in &v {
            w.record(x);
        }
        b.iter(|| black_box(w.summary()))
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut buf = SAMPLE.to_vec();
    let s: Sample = Decoder::default()
        .decode_json(&mut buf, 1)
        .expect("valid")
        .remove(0);
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(256);
    g.bench_function("sample event", |b| {
        b.iter(|| {
            out.clear();
            event::sample(&mut out, black_box(&s), None);
            black_box(&out);
        })
    });
    g.finish();
}

fn rollup(c: &mut Criterion) {
    // The bench's full samples: 12 metrics each, 100 a batch from 20 servers.
    let body: String = (0..100)
        .map(|i| {
            format!(
                r#"{{"serverId":"server-{}","timestamp":1764349200123,"metrics":{{"cpu":{i}.5,"memory":61.2,"disk":70.1,"load":{{"m1":1.5,"m5":1.2,"m15":0.9}},"network":{{"in":812,"out":230,"errors":0}},"processes":{{"total":180,"running":3}},"uptime":86400}}}}"#,
                i % 20
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let samples = Decoder::default()
        .decode_ndjson(&mut body.into_bytes(), 1_764_349_200_000)
        .expect("valid");
    assert_eq!(samples[0].metrics.len(), 12);
    let windows = WindowSpec::parse_list("1s,10s,1m").expect("windows");
    let mut g = c.benchmark_group("rollup");
    g.throughput(Throughput::Elements(samples.len() as u64));
    let now = 1_764_349_200_000;
    let mut r = Rollup::new(windows, 1_000_000, now);
    let mut out = Vec::new();
    g.bench_function(
        "add 100 samples of 12 metrics (20 servers, 3 windows)",
        |b| {
            b.iter(|| {
                black_box(r.add_reporting(now + 10, black_box(&samples), &mut out));
            })
        },
    );
    g.finish();
}

criterion_group!(benches, decode, window, encode, rollup);
criterion_main!(benches);

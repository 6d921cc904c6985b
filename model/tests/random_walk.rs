//! The fake agents' samples decode as the systems decode an agent's, carry what the head says,
//! and keep each set's fields in a fixed order (the bench's dashboards and the page rely on
//! the names).

use metrics_model::decode::Decoder;
use metrics_model::random_walk::{MetricSet, RandomWalk, SampleHead};

const SETS: [MetricSet; 3] = [MetricSet::Full, MetricSet::Basic, MetricSet::Simulated];

/// The metric names of one sample, flattened, in the order written.
fn names(walk: &RandomWalk, set: MetricSet, head: &SampleHead<'_>) -> Vec<String> {
    let mut out = Vec::new();
    walk.write_sample(&mut out, set, head);
    let mut d = Decoder::default();
    let s = d.decode_one(&mut out, 0).expect("decodes");
    s.metrics.iter().map(|(name, _)| name.to_string()).collect()
}

#[test]
fn every_set_decodes_and_carries_the_head() {
    let mut walk = RandomWalk::new(7);
    let mut d = Decoder::default();
    for i in 0..600u64 {
        walk.step();
        let set = SETS[(i % 3) as usize];
        let head = SampleHead {
            server_id: "sim-01",
            timestamp_ms: (i % 2 == 0).then_some(1_764_349_200_123),
            send_us: 1_764_349_200_123_456,
            counters: &[("bench_seq", i)],
        };
        let mut out = Vec::new();
        walk.write_sample(&mut out, set, &head);
        let text = String::from_utf8(out.clone()).expect("utf8");
        let s = d
            .decode_one(&mut out, 42)
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(s.server_id, "sim-01");
        assert_eq!(s.timestamp, head.timestamp_ms.unwrap_or(42), "{text}");
        assert_eq!(s.metrics.len(), set.leaves() + 2, "{text}");
        assert_eq!(s.metrics.get("send_us"), Some(1_764_349_200_123_456.0));
        assert_eq!(s.metrics.get("bench_seq"), Some(i as f64));
        let cpu = s.metrics.get("cpu").expect("cpu");
        assert!((0.0..=100.0).contains(&cpu), "{text}");
    }
}

#[test]
fn each_set_writes_its_fields_in_order() {
    let walk = RandomWalk::new(1);
    let head = SampleHead {
        server_id: "bench-x-1",
        timestamp_ms: None,
        send_us: 1,
        counters: &[("bench_seq", 2)],
    };
    let expect = |set, tail: &[&str]| {
        let mut want = vec!["send_us", "bench_seq", "cpu", "memory", "disk"];
        want.extend_from_slice(tail);
        want.extend_from_slice(&["network.in", "network.out"]);
        assert_eq!(names(&walk, set, &head), want, "{set:?}");
    };
    expect(
        MetricSet::Full,
        &[
            "load1",
            "requests_per_s",
            "latency_ms.p50",
            "latency_ms.p99",
            "errors",
        ],
    );
    expect(MetricSet::Basic, &[]);
    expect(MetricSet::Simulated, &["requests", "latency_ms", "errors"]);
}

#[test]
fn a_seed_repeats_its_walk() {
    let (mut a, mut b) = (RandomWalk::new(99), RandomWalk::new(99));
    let head = SampleHead {
        server_id: "a",
        timestamp_ms: None,
        send_us: 0,
        counters: &[],
    };
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        a.step();
        b.step();
        a.write_sample(&mut x, MetricSet::Full, &head);
        b.write_sample(&mut y, MetricSet::Full, &head);
    }
    assert_eq!(x, y);
}

//! Window statistics against a plain reference (sort and index) on random data.

use metrics_model::window::{QuantileSketch, WindowSpec, WindowStats, MAX_BUCKETS};
use proptest::prelude::*;

/// Nearest-rank quantile of sorted data: the value of rank ceil(q * n).
fn reference(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[rank - 1]
}

fn close(est: f64, exact: f64) -> bool {
    (est - exact).abs() <= 0.01 * exact.abs() + 1e-300
}

fn check(values: &[f64]) -> Result<(), TestCaseError> {
    let mut w = WindowStats::default();
    for &v in values {
        w.record(v);
    }
    let s = w.summary().expect("non-empty");
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    prop_assert_eq!(s.count, values.len() as u64);
    prop_assert_eq!(s.min, sorted[0]);
    prop_assert_eq!(s.max, sorted[sorted.len() - 1]);
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    prop_assert!(
        (s.mean - mean).abs() <= 1e-9 * mean.abs().max(1.0),
        "mean {} vs {}",
        s.mean,
        mean
    );
    for (q, est) in [(0.5, s.p50), (0.95, s.p95), (0.99, s.p99)] {
        let exact = reference(&sorted, q);
        prop_assert!(close(est, exact), "q{} estimate {} exact {}", q, est, exact);
    }
    Ok(())
}

fn telemetry_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        0.0f64..100.0,
        -50.0f64..50.0,
        1e-3f64..1e9,
        (0i64..100_000).prop_map(|x| x as f64),
        Just(0.0),
    ]
}

proptest! {
    #[test]
    fn matches_reference(values in prop::collection::vec(telemetry_value(), 1..3000)) {
        check(&values)?;
    }

    /// Up to the documented span of 32 powers of two per sign (a ratio of ~4e9).
    #[test]
    fn matches_reference_on_wide_ranges(values in prop::collection::vec(
        prop_oneof![1e-3f64..1e-1, 1.0f64..10.0, 1e4f64..4e6, -4e6f64..-1e4, -1e-1f64..-1e-3], 1..2000)) {
        check(&values)?;
    }

    #[test]
    fn reset_forgets_everything(a in prop::collection::vec(telemetry_value(), 1..500),
                                b in prop::collection::vec(telemetry_value(), 1..500)) {
        let mut w = WindowStats::default();
        for &v in &a { w.record(v); }
        w.reset();
        prop_assert!(w.summary().is_none());
        for &v in &b { w.record(v); }
        let mut fresh = WindowStats::default();
        for &v in &b { fresh.record(v); }
        prop_assert_eq!(w.summary(), fresh.summary());
    }
}

/// Values past the sketch's span too (1e-12 to 1e14: 87 powers of two), so merges fold.
fn any_magnitude() -> impl Strategy<Value = f64> {
    prop_oneof![
        telemetry_value(),
        1e-12f64..1e-6,
        1e6f64..1e14,
        -1e14f64..-1e6,
        -1e-6f64..-1e-12,
    ]
}

/// `values` cut at `cuts` (taken modulo its length), in order.
fn parts(values: &[f64], cuts: &[usize]) -> Vec<Vec<f64>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (values.len() + 1)).collect();
    at.push(0);
    at.push(values.len());
    at.sort_unstable();
    at.windows(2).map(|w| values[w[0]..w[1]].to_vec()).collect()
}

proptest! {
    /// Merging the statistics of parts gives the statistics of the whole: the same sketch,
    /// bucket for bucket (folds past the cap included), so the same quantiles; the mean to
    /// within rounding, as the sum is taken in another order.
    #[test]
    fn merged_parts_equal_the_whole(values in prop::collection::vec(any_magnitude(), 1..2000),
                                    cuts in prop::collection::vec(0usize..2001, 0..6)) {
        let mut whole = WindowStats::default();
        for &v in &values { whole.record(v); }
        let mut merged = WindowStats::default();
        for part in parts(&values, &cuts) {
            let mut w = WindowStats::default();
            for &v in &part { w.record(v); }
            merged.merge(&w);
        }
        prop_assert_eq!(merged.sketch(), whole.sketch());
        let (m, w) = (merged.summary().expect("merged"), whole.summary().expect("whole"));
        prop_assert_eq!((m.count, m.min, m.max), (w.count, w.min, w.max));
        prop_assert_eq!((m.p50, m.p95, m.p99), (w.p50, w.p95, w.p99));
        let scale = values.iter().map(|v| v.abs()).sum::<f64>().max(1.0);
        prop_assert!((m.mean - w.mean).abs() * m.count as f64 <= 1e-12 * scale, "{} vs {}", m.mean, w.mean);
    }
}

#[test]
fn memory_is_bounded_whatever_the_range() {
    let mut s = QuantileSketch::default();
    let mut x = 1e-300f64;
    while x < 1e300 {
        s.add(x);
        s.add(-x);
        x *= 1.01;
    }
    assert!(
        s.heap_bytes() <= 2 * MAX_BUCKETS * 4 * 2,
        "{} bytes",
        s.heap_bytes()
    );
    // The top of the range keeps its accuracy.
    let p99 = s.quantile(0.99).expect("non-empty");
    assert!(p99 > 1e290, "{p99}");
}

#[test]
fn windows_parse_and_align() {
    let w = WindowSpec::parse_list("10s, 1s,60s").expect("valid");
    assert_eq!(
        w.iter().map(|w| w.millis).collect::<Vec<_>>(),
        [1000, 10_000, 60_000]
    );
    assert_eq!(w[1].start_of(1_764_349_209_999), 1_764_349_200_000);
    assert_eq!(WindowSpec::parse("500ms").expect("ok").millis, 500);
    assert_eq!(
        WindowSpec::parse_list("1s,1000ms").unwrap_err().to_string(),
        "window `1000ms` is listed twice"
    );
    assert!(WindowSpec::parse("5ms")
        .unwrap_err()
        .to_string()
        .contains("between 10ms and 24h"));
    assert!(WindowSpec::parse("1d")
        .unwrap_err()
        .to_string()
        .contains("not a duration"));
    assert!(WindowSpec::parse_list(" ").is_err());
}

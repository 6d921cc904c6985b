//! The terminal table: systems side by side, one row per figure.

use std::fmt::Write;

use super::{is_relay, LatencySummary, Report, SystemResult};

/// `1234` µs as `1.23 ms`, `850` µs as `850 µs`.
pub fn duration_us(us: u64) -> String {
    if us < 1000 {
        format!("{us} µs")
    } else if us < 10_000_000 {
        format!("{:.2} ms", us as f64 / 1000.0)
    } else {
        format!("{:.1} s", us as f64 / 1e6)
    }
}

/// A count with thousands separators.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn lat(l: &LatencySummary, f: impl Fn(&LatencySummary) -> u64) -> String {
    if l.count == 0 {
        "-".into()
    } else {
        duration_us(f(l))
    }
}

/// `x` as a multiple (`3.2x`), or `-`.
fn times(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.2}x"))
}

/// `x` µs per sample, or `-`.
fn per_sample(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.2} µs"))
}

/// The rows against the reference relay (`relay`: some system in the report has them).
fn relay_rows(s: &SystemResult, v: &mut Vec<(&'static str, String)>) {
    let r = s.vs_relay.as_ref();
    let yardstick = || {
        if is_relay(s) {
            "(yardstick)".to_string()
        } else {
            "-".to_string()
        }
    };
    let f = |x: Option<Option<f64>>, pct: bool| match x {
        None => yardstick(),
        Some(Some(x)) if pct => format!("{:.0}%", x * 100.0),
        Some(x) => times(x),
    };
    v.extend([
        ("seen/s, of the relay's", f(r.map(|r| r.seen_per_s), true)),
        ("p50, times the relay's", f(r.map(|r| r.p50), false)),
        ("p99, times the relay's", f(r.map(|r| r.p99), false)),
        (
            "CPU/sample, times the relay's",
            f(r.map(|r| r.cpu_per_sample), false),
        ),
        (
            "  with Redis",
            f(r.map(|r| r.cpu_per_sample_with_redis), false),
        ),
    ]);
}

fn rows(s: &SystemResult, relay: bool) -> Vec<(&'static str, String)> {
    let c = &s.counts;
    let l = &s.latency_us;
    let mut v = vec![
        ("target", s.target.clone()),
        ("transport", s.transport.clone()),
        (
            "measured",
            format!(
                "{:.1} s{}",
                s.duration_s,
                if s.stopped_early { " (stopped)" } else { "" }
            ),
        ),
        (
            "offered/s",
            count(s.throughput.offered_per_s.round() as u64),
        ),
        ("sent/s", count(s.throughput.sent_per_s.round() as u64)),
        (
            "seen/s (per dashboard)",
            count(s.throughput.seen_per_s.round() as u64),
        ),
        ("latency p50", lat(&l.corrected, |x| x.p50)),
        ("latency p90", lat(&l.corrected, |x| x.p90)),
        ("latency p99", lat(&l.corrected, |x| x.p99)),
        ("latency p99.9", lat(&l.corrected, |x| x.p999)),
        ("latency max", lat(&l.corrected, |x| x.max)),
        (
            "uncorrected p50 / p99",
            format!(
                "{} / {}",
                lat(&l.uncorrected, |x| x.p50),
                lat(&l.uncorrected, |x| x.p99)
            ),
        ),
    ];
    v.push((
        "ack p50 / p99",
        match &s.ack_latency_us {
            Some(a) => format!(
                "{} / {}",
                lat(&a.corrected, |x| x.p50),
                lat(&a.corrected, |x| x.p99)
            ),
            None => "- (no acks)".into(),
        },
    ));
    let rejected: u64 = c.rejected.values().sum();
    v.extend([
        ("sent", count(c.sent)),
        ("acknowledged", count(c.acked)),
        (
            "rejected",
            if rejected == 0 {
                "0".into()
            } else {
                c.rejected
                    .iter()
                    .map(|(k, n)| format!("{} {k}", count(*n)))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        ("transport errors", count(c.errors)),
        (
            "seen at dashboards",
            format!("{} of {}", count(c.seen), count(c.expected_seen)),
        ),
        ("lost", count(c.lost)),
        ("duplicated", count(c.duplicated)),
        (
            "shed for slow dashboards (warm-up too)",
            count(c.dropped_by_system),
        ),
        (
            "samples per dashboard frame",
            if c.dashboard_frames == 0 {
                "-".into()
            } else {
                format!(
                    "{:.1}",
                    c.dashboard_framed_samples as f64 / c.dashboard_frames as f64
                )
            },
        ),
        (
            "load generator CPU",
            format!(
                "{:.0}% of {} cores",
                s.cpu.load_generator_share * 100.0,
                s.cpu.cores
            ),
        ),
        ("dashboards CPU", format!("{:.1} s", s.cpu.dashboards_s)),
        (
            "system CPU",
            s.cpu.system_s.map_or("-".into(), |x| format!("{x:.1} s")),
        ),
        (
            "redis CPU",
            s.cpu.redis_s.map_or("-".into(), |x| format!("{x:.1} s")),
        ),
        (
            "system CPU per sample",
            per_sample(s.cpu.system_us_per_sample),
        ),
        (
            "redis CPU per sample",
            per_sample(s.cpu.redis_us_per_sample),
        ),
    ]);
    if relay {
        relay_rows(s, &mut v);
    }
    v
}

/// The table for `r`, with the parameters first.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{} ({})", r.title, r.started);
    if let Some(p) = r.params.as_object() {
        let parts: Vec<String> = p
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(s, "{}", parts.join("  "));
    }
    let _ = writeln!(
        s,
        "machine: {} x {}, {} GiB, {}",
        r.machine.cpus, r.machine.cpu_model, r.machine.memory_gib, r.machine.os
    );
    let _ = writeln!(s, "latency: ingest to dashboard, from the intended send time (coordinated-omission corrected)\n");
    let relay = r.systems.iter().any(|s| s.vs_relay.is_some());
    let cols: Vec<Vec<(&str, String)>> = r.systems.iter().map(|s| rows(s, relay)).collect();
    let Some(first) = cols.first() else {
        return s;
    };
    let w0 = first
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = cols
        .iter()
        .zip(&r.systems)
        .map(|(c, sys)| {
            c.iter()
                .map(|(_, v)| v.chars().count())
                .chain([sys.name.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let _ = write!(s, "{:w0$}", "");
    for (sys, w) in r.systems.iter().zip(&widths) {
        let _ = write!(s, "  {:>w$}", sys.name, w = *w);
    }
    s.push('\n');
    for (i, (k, _)) in first.iter().enumerate() {
        let _ = write!(s, "{k:w0$}");
        for (c, w) in cols.iter().zip(&widths) {
            let _ = write!(s, "  {:>w$}", c.get(i).map_or("", |x| x.1.as_str()), w = *w);
        }
        s.push('\n');
    }
    for sys in &r.systems {
        for (k, reason) in &sys.reasons {
            let _ = writeln!(s, "{}: first {k}: {reason}", sys.name);
        }
        for e in &sys.dashboard_errors {
            let _ = writeln!(s, "{}: dashboard: {e}", sys.name);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_formatted_for_people() {
        assert_eq!(count(0), "0");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(999), "999");
        assert_eq!(duration_us(850), "850 µs");
        assert_eq!(duration_us(1234), "1.23 ms");
        assert_eq!(duration_us(12_500_000), "12.5 s");
    }
}

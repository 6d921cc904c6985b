//! The figures runs are compared by (latency percentiles, samples seen and lost, CPU per
//! sample), and their spread over the repetitions of `bench run --repeat`: what `bench diff`
//! tabulates and what its `--fail-if` conditions name.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{LatencySummary, SystemResult};

/// One run's figures; `None` where the source does not have it (an `.hgrm` file has latency
/// only; a URL target has no CPU figure).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    /// Corrected latency percentiles and maximum, µs.
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
    /// Samples seen at the dashboards (each counted once per dashboard).
    pub seen: Option<f64>,
    /// Acknowledged samples not seen.
    pub lost: Option<f64>,
    /// CPU time of the system under test (and its Redis) per sample sent while the CPU was
    /// counted (warm-up included), µs; per acknowledged sample for reports that lack that count.
    pub cpu_per_sample: Option<f64>,
}

impl Figures {
    /// The latency figures of `l` (none when it holds no samples).
    pub fn of_latency(l: &LatencySummary) -> Self {
        if l.count == 0 {
            return Self::default();
        }
        Self {
            p50: Some(l.p50 as f64),
            p90: Some(l.p90 as f64),
            p99: Some(l.p99 as f64),
            p999: Some(l.p999 as f64),
            max: Some(l.max as f64),
            ..Self::default()
        }
    }

    /// Every figure of a bench result.
    pub fn of_result(s: &SystemResult) -> Self {
        let c = &s.counts;
        // Per sample sent while the CPU was counted (warm-up included), as the run's own
        // report states it; reports from before that figure existed: per acknowledged sample.
        let samples = if s.cpu.samples > 0 {
            s.cpu.samples
        } else {
            c.acked
        };
        let cpu = s
            .cpu
            .system_s
            .map(|sys| sys + s.cpu.redis_s.unwrap_or(0.0))
            .filter(|_| samples > 0)
            .map(|t| t / samples as f64 * 1e6);
        Self {
            seen: Some(c.seen as f64),
            lost: Some(c.lost as f64),
            cpu_per_sample: cpu,
            ..Self::of_latency(&s.latency_us.corrected)
        }
    }
}

/// A figure by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    P50,
    P90,
    P99,
    P999,
    Max,
    Seen,
    Lost,
    CpuPerSample,
}

impl Metric {
    pub const ALL: [Metric; 8] = [
        Metric::P50,
        Metric::P90,
        Metric::P99,
        Metric::P999,
        Metric::Max,
        Metric::Seen,
        Metric::Lost,
        Metric::CpuPerSample,
    ];

    /// The name in `--fail-if` and in the JSON (`p999` also reads `p99.9`).
    pub fn name(self) -> &'static str {
        match self {
            Metric::P50 => "p50",
            Metric::P90 => "p90",
            Metric::P99 => "p99",
            Metric::P999 => "p999",
            Metric::Max => "max",
            Metric::Seen => "seen",
            Metric::Lost => "lost",
            Metric::CpuPerSample => "cpu_per_sample",
        }
    }

    pub fn parse(s: &str) -> Option<Metric> {
        if s == "p99.9" {
            return Some(Metric::P999);
        }
        Metric::ALL.into_iter().find(|m| m.name() == s)
    }

    /// Whether the value is a duration in µs (latency and CPU per sample).
    pub fn is_time(self) -> bool {
        !matches!(self, Metric::Seen | Metric::Lost)
    }

    pub fn of(self, f: &Figures) -> Option<f64> {
        match self {
            Metric::P50 => f.p50,
            Metric::P90 => f.p90,
            Metric::P99 => f.p99,
            Metric::P999 => f.p999,
            Metric::Max => f.max,
            Metric::Seen => f.seen,
            Metric::Lost => f.lost,
            Metric::CpuPerSample => f.cpu_per_sample,
        }
    }
}

/// The lowest and highest value of a figure over repetitions, with their mean and (sample)
/// standard deviation.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Range {
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub stdev: f64,
}

impl Range {
    /// The range of `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Range> {
        if values.is_empty() {
            return None;
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = if values.len() > 1 {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Some(Range {
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            mean,
            stdev: var.sqrt(),
        })
    }

    /// Whether the two ranges share a value.
    pub fn overlaps(&self, other: &Range) -> bool {
        self.min <= other.max && other.min <= self.max
    }

    /// A single value as a range.
    pub fn point(v: f64) -> Range {
        Range {
            min: v,
            max: v,
            mean: v,
            stdev: 0.0,
        }
    }
}

/// The repetitions of one system in `bench run --repeat N`: each one's figures, which of them
/// the report's histograms and counts are (the one with the median p99), and the spread.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Repeats {
    pub runs: Vec<Figures>,
    /// Index into `runs` of the repetition the rest of the result describes.
    pub chosen: usize,
    /// Per figure name: its range over the repetitions.
    pub spread: BTreeMap<String, Range>,
}

impl Repeats {
    /// The repetitions' figures, choosing the one with the median p99.
    pub fn new(runs: Vec<Figures>) -> Self {
        let mut order: Vec<usize> = (0..runs.len()).collect();
        order.sort_by(|&a, &b| {
            let p = |i: usize| runs[i].p99.unwrap_or(f64::INFINITY);
            p(a).total_cmp(&p(b))
        });
        let chosen = order.get(order.len() / 2).copied().unwrap_or(0);
        let spread = Metric::ALL
            .into_iter()
            .filter_map(|m| {
                let vals: Vec<f64> = runs.iter().filter_map(|f| m.of(f)).collect();
                Range::of(&vals).map(|r| (m.name().to_string(), r))
            })
            .collect();
        Self {
            runs,
            chosen,
            spread,
        }
    }

    pub fn range(&self, m: Metric) -> Option<&Range> {
        self.spread.get(m.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p99(v: f64) -> Figures {
        Figures {
            p99: Some(v),
            lost: Some(0.0),
            ..Figures::default()
        }
    }

    #[test]
    fn repeats_choose_the_median_p99_and_record_the_spread() {
        let r = Repeats::new(vec![p99(300.0), p99(100.0), p99(200.0)]);
        assert_eq!(r.chosen, 2);
        let s = r.range(Metric::P99).expect("p99 spread");
        assert_eq!((s.min, s.max, s.mean), (100.0, 300.0, 200.0));
        assert!((s.stdev - 100.0).abs() < 1e-9);
        assert_eq!(r.range(Metric::Lost).map(|r| r.max), Some(0.0));
        assert!(r.range(Metric::Seen).is_none());
        assert!(s.overlaps(&Range::point(250.0)) && !s.overlaps(&Range::point(301.0)));
    }

    #[test]
    fn metric_names_read_back() {
        for m in Metric::ALL {
            assert_eq!(Metric::parse(m.name()), Some(m));
        }
        assert_eq!(Metric::parse("p99.9"), Some(Metric::P999));
        assert_eq!(Metric::parse("p98"), None);
    }
}

//! Whether runs can be compared without misleading: the same offered load and sample sizes
//! of the same order (problems, which stop `bench diff` unless `--force`), and what else
//! differs (notes).

use serde_json::Value;

use super::runs::Run;
use crate::report::table::count;

/// Sample counts further apart than this make tail percentiles (p99.9, max) incomparable.
pub const SAMPLE_RATIO: f64 = 2.0;

/// What the check found.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Findings {
    /// Differences that would mislead.
    pub problems: Vec<String>,
    /// Differences worth knowing.
    pub notes: Vec<String>,
}

/// The parameters besides the load that a reader should know differ.
const OTHER_PARAMS: &[&str] = &[
    "batch",
    "agents",
    "dashboards",
    "stalled_dashboards",
    "metrics",
    "duration_s",
    "system1_transport",
    "system2_transport",
    "dashboard_parse",
];

fn param<'a>(r: &'a Run, key: &str) -> Option<&'a Value> {
    r.report
        .as_ref()
        .and_then(|rep| rep.params.get(key))
        .filter(|v| !v.is_null())
}

/// A run's offered load: its rate, its bursts, and both as text.
type Load<'a> = (f64, Option<&'a Value>, String);

fn load_of(r: &Run) -> Option<Load<'_>> {
    let rate = param(r, "rate_per_s")?.as_f64()?;
    let burst = param(r, "burst");
    let mut text = format!("{}/s", count(rate.round() as u64));
    if let Some(b) = burst {
        text.push_str(&format!(" with bursts {b}"));
    }
    Some((rate, burst, text))
}

/// Checks `runs` against each other.
pub fn check(runs: &[Run]) -> Findings {
    let mut f = Findings::default();
    let loads: Vec<(&Run, Load)> = runs
        .iter()
        .filter_map(|r| load_of(r).map(|l| (r, l)))
        .collect();
    if let Some((_, (rate0, burst0, _))) = loads.first() {
        let differs = loads.iter().any(|(_, (rate, burst, _))| {
            (rate - rate0).abs() > rate0.abs() * 0.01 || burst != burst0
        });
        if differs {
            f.problems.push(format!(
                "the offered load differs: {}",
                loads
                    .iter()
                    .map(|(r, (_, _, t))| format!("{} {t}", r.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    for r in runs.iter().filter(|r| load_of(r).is_none()) {
        f.notes.push(format!(
            "{}: offered load unknown (an .hgrm file has latency only)",
            r.name
        ));
    }
    // A bench run's size is what its schedule offered (a run that lost samples is not smaller,
    // only worse); an .hgrm file's is what it measured.
    for c in runs.iter().flat_map(|r| &r.curves) {
        if c.result.latency_us.corrected.count == 0 {
            f.notes.push(format!("{}: no latency samples", c.label));
        }
    }
    let sizes: Vec<(&str, u64)> = runs
        .iter()
        .flat_map(|r| &r.curves)
        .map(|c| {
            let offered = c.result.counts.offered;
            let n = if c.from_bench && offered > 0 {
                offered
            } else {
                c.result.latency_us.corrected.count
            };
            (c.label.as_str(), n)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    let lo = sizes.iter().min_by_key(|(_, n)| *n);
    let hi = sizes.iter().max_by_key(|(_, n)| *n);
    if let (Some((lo_l, lo_n)), Some((hi_l, hi_n))) = (lo, hi) {
        if *hi_n as f64 > *lo_n as f64 * SAMPLE_RATIO {
            f.problems.push(format!(
                "the sample size differs: {hi_l} has {} samples, {lo_l} {} (more than {SAMPLE_RATIO}x apart: the tail percentiles of the smaller are less certain)",
                count(*hi_n),
                count(*lo_n)
            ));
        }
    }
    for key in OTHER_PARAMS {
        let vals: Vec<(&str, &Value)> = runs
            .iter()
            .filter_map(|r| param(r, key).map(|v| (r.name.as_str(), v)))
            .collect();
        if vals.windows(2).any(|w| w[0].1 != w[1].1) {
            f.notes.push(format!(
                "{key} differs: {}",
                vals.iter()
                    .map(|(n, v)| format!("{n} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    let machines: Vec<(&str, String)> = runs
        .iter()
        .filter_map(|r| {
            r.report.as_ref().map(|rep| {
                (
                    r.name.as_str(),
                    format!("{} x {}", rep.machine.cpus, rep.machine.cpu_model),
                )
            })
        })
        .collect();
    if machines.windows(2).any(|w| w[0].1 != w[1].1) {
        f.notes.push(format!(
            "the machines differ: {}",
            machines
                .iter()
                .map(|(n, m)| format!("{n} {m}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Report;

    fn run(name: &str, edit: impl FnOnce(&mut Report)) -> Run {
        let mut report: Report =
            serde_json::from_str(include_str!("../../tests/data/sample-report.json"))
                .expect("the sample report reads");
        edit(&mut report);
        Run::of_report(name.into(), name.into(), report, "report.json".as_ref())
    }

    #[test]
    fn a_run_that_lost_most_samples_is_worse_not_smaller() {
        let base = run("a", |_| {});
        let lossy = run("b", |r| {
            let c = &mut r.systems[1];
            c.latency_us.corrected.count /= 10;
            c.counts.seen /= 10;
            c.counts.lost = c.counts.acked - c.counts.seen;
        });
        let f = check(&[base, lossy]);
        assert!(f.problems.is_empty(), "{f:?}");
    }

    #[test]
    fn a_different_load_or_sample_size_is_a_problem_and_other_flags_a_note() {
        let base = run("a", |_| {});
        let faster = run("b", |r| {
            r.params["rate_per_s"] = 40_000.0.into();
            r.params["batch"] = 10.into();
            for s in &mut r.systems {
                s.counts.offered *= 3;
            }
        });
        let f = check(&[base, faster]);
        assert_eq!(f.problems.len(), 2, "{f:?}");
        assert!(f.problems[0].starts_with("the offered load differs: a 20,000/s, b 40,000/s"));
        assert!(
            f.problems[1].starts_with("the sample size differs"),
            "{f:?}"
        );
        assert!(
            f.notes.iter().any(|n| n == "batch differs: a 100, b 10"),
            "{f:?}"
        );
    }
}

//! `bench diff`: runs compared across time, builds and tools. It reads what earlier runs left
//! ([`runs`]: results folders, `.hgrm` files of any HdrHistogram-speaking tool), refuses runs
//! whose comparison would mislead unless told to go ahead ([`check`]), prints a table of the
//! differences and writes one self-contained page with every curve overlaid (the bench's
//! report page, in its diff mode), and fails when a `--fail-if` condition holds ([`gate`]).

pub mod check;
pub mod gate;
pub mod runs;
mod table;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use crate::report::figures::{Figures, Metric, Range};
use crate::report::{html, Machine, Report};
use gate::{Condition, Outcome, Value};
use runs::{Curve, HgrmUnit, Run};

/// The flags of `bench diff`.
#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    /// Results folders (of `bench compare` or `bench run`; each system in one is a curve) or
    /// `.hgrm` files (wrk2 --latency, HdrHistogram's outputPercentileDistribution). The first
    /// is the base the others are compared with.
    #[arg(required = true, num_args = 2..)]
    pub runs: Vec<PathBuf>,
    /// Fail (exit 1, with the reason on one line) when this holds for a curve against its base,
    /// as in `p99>+10%`, `p50>2ms`, `lost>0`, `seen<-5%`, `cpu_per_sample>+20%`. Repeat the
    /// flag for several; a difference within the spread of repeated runs does not fail a condition
    /// on a difference (a fixed limit still does).
    #[arg(long = "fail-if", env = "BENCH_FAIL_IF", value_delimiter = ';')]
    pub fail_if: Vec<Condition>,
    /// Compare even when the offered load or the sample size differ.
    #[arg(long, env = "BENCH_DIFF_FORCE")]
    pub force: bool,
    /// The unit of the values in `.hgrm` files.
    #[arg(long, env = "BENCH_HGRM_UNIT", value_enum, default_value_t = HgrmUnit::Ms)]
    pub hgrm_unit: HgrmUnit,
    /// Folder under which a new folder gets the diff's page and JSON.
    #[arg(long, env = "BENCH_RESULTS", default_value = "results")]
    pub results: PathBuf,
    /// Write diff.html and diff.json into exactly this folder.
    #[arg(long, env = "BENCH_OUT")]
    pub out: Option<PathBuf>,
}

/// Which run a curve belongs to and what it is compared with, and its figures.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub label: String,
    pub run: usize,
    /// The curve this one is compared with (none for the base run's own curves).
    pub base: Option<String>,
    pub figures: Figures,
    /// Per figure: this value over the base's (where the base's is above zero).
    pub ratio: BTreeMap<&'static str, f64>,
    /// Per figure: this value minus the base's.
    pub change: BTreeMap<&'static str, f64>,
    /// Per figure: whether the difference from the base is within the repetitions' spread.
    pub within_spread: BTreeMap<&'static str, bool>,
    /// Per figure: the range over repetitions, when the run was repeated.
    pub spread: Option<BTreeMap<String, Range>>,
}

/// What the page shows besides the curves: the table, the checks and the gate.
#[derive(Clone, Debug, Serialize)]
pub struct DiffSection {
    pub runs: Vec<String>,
    pub rows: Vec<Row>,
    pub problems: Vec<String>,
    pub forced: bool,
    pub notes: Vec<String>,
    pub gate: Vec<Outcome>,
    pub verdict: String,
    pub failed: bool,
}

/// The page's document: a report whose systems are the curves, and the diff.
#[derive(Serialize)]
struct Page<'a> {
    #[serde(flatten)]
    report: &'a Report,
    diff: &'a DiffSection,
}

/// The figure of `m` of `c`, with its spread when the run was repeated.
fn value(c: &Curve, f: &Figures, m: Metric) -> Option<Value> {
    m.of(f).map(|v| Value {
        v,
        spread: c.result.repeats.as_ref().and_then(|r| r.range(m).copied()),
    })
}

/// For each curve of the later runs, the base run's curve of the same system, else the base
/// run's only curve.
fn pairs(runs: &[Run]) -> Vec<(usize, &Curve, Option<&Curve>)> {
    let Some(base) = runs.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        for c in &r.curves {
            let b = if i == 0 {
                None
            } else {
                base.curves
                    .iter()
                    .find(|b| b.system == c.system)
                    .or_else(|| (base.curves.len() == 1).then(|| &base.curves[0]))
            };
            out.push((i, c, b));
        }
    }
    out
}

fn rows(runs: &[Run]) -> Vec<Row> {
    pairs(runs)
        .into_iter()
        .map(|(run, c, base)| {
            let f = c.figures();
            let mut ratio = BTreeMap::new();
            let mut change = BTreeMap::new();
            let mut within = BTreeMap::new();
            if let Some(b) = base {
                let bf = b.figures();
                for m in Metric::ALL {
                    if let (Some(x), Some(y)) = (value(b, &bf, m), value(c, &f, m)) {
                        if x.v > 0.0 {
                            ratio.insert(m.name(), y.v / x.v);
                        }
                        change.insert(m.name(), y.v - x.v);
                        within.insert(m.name(), gate::within_spread(&x, &y));
                    }
                }
            }
            Row {
                label: c.label.clone(),
                run,
                base: base.map(|b| b.label.clone()),
                figures: f,
                ratio,
                change,
                within_spread: within,
                spread: c.result.repeats.as_ref().map(|r| r.spread.clone()),
            }
        })
        .collect()
}

/// Every condition against every pair; an error when a figure a condition needs is missing.
fn evaluate(runs: &[Run], conditions: &[Condition]) -> anyhow::Result<Vec<Outcome>> {
    let mut out = Vec::new();
    let paired: Vec<_> = pairs(runs)
        .into_iter()
        .filter_map(|(_, c, b)| b.map(|b| (c, b)))
        .collect();
    if !conditions.is_empty() && paired.is_empty() {
        bail!("--fail-if: no curve of the later runs has a base to compare with: the base run has several systems and none has the same name (name one as FOLDER:SYSTEM, as in results/X:system2)");
    }
    for cond in conditions {
        for (c, b) in &paired {
            let m = cond.metric;
            let missing = |who: &Curve| {
                format!(
                    "--fail-if `{}`: {} has no {} figure{}",
                    cond.text,
                    who.label,
                    m.name(),
                    if who.from_bench {
                        " (a system reached by URL has no CPU figure)"
                    } else {
                        " (an .hgrm file has latency only)"
                    }
                )
            };
            let bv = value(b, &b.figures(), m).ok_or_else(|| anyhow::anyhow!(missing(b)))?;
            let nv = value(c, &c.figures(), m).ok_or_else(|| anyhow::anyhow!(missing(c)))?;
            out.push(cond.check(&b.label, &bv, &c.label, &nv));
        }
    }
    Ok(out)
}

/// The one line that sums the diff up (the gate's reason when it failed).
fn verdict(outcomes: &[Outcome], conditions: usize) -> (String, bool) {
    let failing: Vec<&Outcome> = outcomes.iter().filter(|o| o.fails()).collect();
    if let Some(first) = failing.first() {
        let more = match failing.len() - 1 {
            0 => String::new(),
            n => format!(" (and {n} more)"),
        };
        return (format!("regression: {}{more}", first.text), true);
    }
    if conditions == 0 {
        return ("no --fail-if conditions given".into(), false);
    }
    let noise = outcomes.iter().filter(|o| o.within_spread).count();
    let mut s = format!("pass: no --fail-if condition holds ({conditions} checked)");
    if noise > 0 {
        s.push_str(&format!(
            "; {noise} met only within the spread of the repetitions"
        ));
    }
    (s, false)
}

/// `bench diff`.
pub fn diff(a: &DiffArgs) -> anyhow::Result<()> {
    let runs = runs::load(&a.runs, a.hgrm_unit)?;
    let findings = check::check(&runs);
    if !findings.problems.is_empty() && !a.force {
        bail!(
            "these runs are not comparable: {} (--force compares them anyway)",
            findings.problems.join("; ")
        );
    }
    let outcomes = evaluate(&runs, &a.fail_if)?;
    let (verdict, failed) = verdict(&outcomes, a.fail_if.len());
    let section = DiffSection {
        runs: runs.iter().map(|r| r.name.clone()).collect(),
        rows: rows(&runs),
        problems: findings.problems.clone(),
        forced: a.force && !findings.problems.is_empty(),
        notes: findings.notes.clone(),
        gate: outcomes,
        verdict: verdict.clone(),
        failed,
    };
    let report = page_report(&runs);
    let dir = a
        .out
        .clone()
        .unwrap_or_else(|| crate::report::folder(&a.results, "diff"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let page = Page {
        report: &report,
        diff: &section,
    };
    let json = serde_json::to_string_pretty(&page)?;
    std::fs::write(dir.join("diff.json"), json)?;
    std::fs::write(dir.join("diff.html"), html::render_value(&page))?;
    print!("{}", table::render(&runs, &section));
    println!("report in {}/: diff.html, diff.json", dir.display());
    if failed {
        bail!("{verdict}");
    }
    println!("{verdict}");
    Ok(())
}

/// The report the page draws: one "system" per curve.
fn page_report(runs: &[Run]) -> Report {
    let params = runs
        .iter()
        .map(|r| {
            let what = r
                .report
                .as_ref()
                .map(|rep| format!("{} ({})", rep.command, rep.started))
                .unwrap_or_else(|| format!("{} (an .hgrm file)", r.arg));
            (r.name.clone(), serde_json::Value::from(what))
        })
        .collect::<serde_json::Map<_, _>>();
    Report {
        tool: format!("bench {}", env!("CARGO_PKG_VERSION")),
        title: "bench diff".into(),
        started: crate::commands::started_now(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        params: serde_json::Value::Object(params),
        machine: runs
            .iter()
            .find_map(|r| r.report.as_ref().map(|rep| rep.machine.clone()))
            .unwrap_or_else(Machine::detect),
        systems: runs
            .iter()
            .flat_map(|r| r.curves.iter().map(|c| c.result.clone()))
            .collect(),
        steps: Vec::new(),
    }
}

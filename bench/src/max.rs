//! `bench max`: per system, the highest rate the dashboards keep up with. Steps the rate up
//! by `--factor` from `--rate` while steps pass (dashboards see at least `--min-seen` % of the
//! samples and p99 stays under `--p99-ms`), down when the very first step fails; reports every
//! step and each system's best passing one. With `--tries N` a failing step is run again, up to
//! N runs in all, and passes when one does: a stall of a shared host then ends a search only
//! when it recurs, while a rate past the system's limit fails every run.

use anyhow::bail;
use tokio_util::sync::CancellationToken;

use crate::cli::MaxArgs;
use crate::commands::{measure, params, report, started_now, write_report};
use crate::report::{table::duration_us, Step};
use crate::run::{Measured, Runtimes};
use crate::setup::{chosen, ensure_files};
use crate::systems::{self, RedisChild};
use crate::workload::Workload;

/// Runs `bench max` as `a` says.
pub async fn max(a: &MaxArgs, rts: &Runtimes, cancel: &CancellationToken) -> anyhow::Result<()> {
    if a.factor.is_nan() || a.factor <= 1.0 {
        bail!("--factor must be above 1, got {}", a.factor);
    }
    let base = Workload::from_flags(&a.common.load)?;
    let systems = chosen(a.system, &a.common.side, a.with_relay);
    ensure_files(&base, &a.common.side, &systems)?;
    let started = started_now();
    let mut redis = None;
    let mut best: Vec<Measured> = Vec::new();
    let mut steps = Vec::new();
    for s in systems {
        let search = Search {
            a,
            base: &base,
            system: s,
            rts,
            cancel,
        };
        if let Some(m) = search.run(&mut redis, &mut steps).await? {
            best.push(m);
        }
    }
    drop(redis);
    let report = report(
        "bench max: the highest passing step of each system".into(),
        started,
        params(
            &base,
            &a.common.side,
            serde_json::json!({"p99_bound_ms": a.p99_ms, "min_seen_pct": a.min_seen, "step_factor": a.factor}),
        ),
        &best,
        steps.clone(),
    );
    println!("steps:");
    for s in &steps {
        println!("  {}", s.line());
    }
    if best.is_empty() {
        eprintln!("no step passed: lower --rate, or raise --p99-ms");
    }
    write_report(&a.common.output, "max", &report, &best)
}

/// The search on one system.
struct Search<'a> {
    a: &'a MaxArgs,
    base: &'a Workload,
    system: systems::Which,
    rts: &'a Runtimes,
    cancel: &'a CancellationToken,
}

impl Search<'_> {
    /// Runs the steps, adding each to `steps`; returns the best passing one.
    async fn run(
        &self,
        redis: &mut Option<RedisChild>,
        steps: &mut Vec<Step>,
    ) -> anyhow::Result<Option<Measured>> {
        let a = self.a;
        let mut rate = self.base.rate_per_s;
        let mut best: Option<Measured> = None;
        let mut going_down = false;
        for step in 1..=a.max_steps {
            if self.cancel.is_cancelled() {
                break;
            }
            let w = Workload {
                rate_per_s: rate,
                ..self.base.clone()
            };
            let (m, s) = self.step(&w, step, redis, steps).await?;
            let pass = s.pass;
            // Up while steps pass; if the very first fails, down until one passes.
            if pass {
                best = Some(m);
                if going_down {
                    break;
                }
                rate *= a.factor;
            } else if step == 1 || going_down {
                going_down = true;
                rate /= a.factor;
            } else {
                break;
            }
        }
        let all_passed = steps
            .last()
            .is_some_and(|s| s.pass && s.step == a.max_steps)
            && !going_down;
        if all_passed && !self.cancel.is_cancelled() {
            eprintln!(
                "every step passed up to --max-steps {}: the limit is higher; raise --rate or --max-steps",
                a.max_steps
            );
        }
        Ok(best)
    }

    /// Runs step `step` at `w`'s rate until a run passes or `--tries` runs failed, adding each
    /// run to `steps`; returns the last run.
    async fn step(
        &self,
        w: &Workload,
        step: u32,
        redis: &mut Option<RedisChild>,
        steps: &mut Vec<Step>,
    ) -> anyhow::Result<(Measured, Step)> {
        let a = self.a;
        let mut attempt = 1;
        loop {
            let m = measure(self.system, &a.common, w, redis, self.rts, self.cancel).await?;
            let mut s = judge(a, &m, step, w.rate_per_s);
            s.attempt = (a.tries > 1).then_some(attempt);
            eprintln!(
                "{} step {step}{}: {:.0} samples/s offered, {:.0}/s seen, {:.3}% seen, p99 {}: {}",
                s.system,
                tried(&s, a.tries),
                w.rate_per_s,
                s.seen_per_s,
                s.seen_pct,
                duration_us(s.p99_us),
                verdict(s.pass)
            );
            steps.push(s.clone());
            if s.pass || attempt >= a.tries || self.cancel.is_cancelled() {
                return Ok((m, s));
            }
            attempt += 1;
        }
    }
}

/// ` (run 2 of 3)` when a step may be run more than once.
fn tried(s: &Step, tries: u32) -> String {
    match s.attempt {
        Some(n) => format!(" (run {n} of {tries})"),
        None => String::new(),
    }
}

/// Step `step` at `rate`, measured as `m`, against the bounds of `a`.
fn judge(a: &MaxArgs, m: &Measured, step: u32, rate: f64) -> Step {
    let c = &m.result.counts;
    let seen_pct = if c.expected_seen == 0 {
        0.0
    } else {
        100.0 * (c.expected_seen - c.lost.min(c.expected_seen)) as f64 / c.expected_seen as f64
    };
    let sent_pct = 100.0 * c.sent as f64 / c.offered.max(1) as f64;
    let p99_us = m.result.latency_us.corrected.p99;
    let pass = seen_pct >= a.min_seen
        && sent_pct >= a.min_seen
        && c.acked > 0
        && p99_us <= (a.p99_ms * 1000.0) as u64
        && !m.result.stopped_early;
    Step {
        system: m.result.name.clone(),
        step,
        rate_per_s: rate,
        seen_per_s: m.result.throughput.seen_per_s,
        seen_pct,
        sent_pct,
        p99_us,
        pass,
        attempt: None,
    }
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "pass"
    } else {
        "fail"
    }
}

impl Step {
    /// The step as a row of the terminal's steps table.
    fn line(&self) -> String {
        format!(
            "{:<9} step {:>2}{}  {:>10.0} samples/s offered  {:>10.0}/s seen  {:>8.3}% seen  p99 {:>9}  {}",
            self.system,
            self.step,
            self.attempt.map_or(String::new(), |n| format!(" run {n}")),
            self.rate_per_s,
            self.seen_per_s,
            self.seen_pct,
            duration_us(self.p99_us),
            verdict(self.pass),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_keeps_the_field_names_of_earlier_reports() {
        // A step as `bench max` wrote it before the type existed (keys sorted).
        let old = serde_json::json!({
            "p99_us": 1234, "pass": true, "rate_per_s": 200.0, "seen_pct": 100.0,
            "seen_per_s": 199.5, "sent_pct": 100.0, "step": 1, "system": "System 2"
        });
        let step: Step = serde_json::from_value(old.clone()).expect("an old step reads");
        assert_eq!(step.system, "System 2");
        assert_eq!((step.step, step.p99_us, step.pass), (1, 1234, true));
        assert_eq!(serde_json::to_value(&step).expect("writes"), old);
    }
}

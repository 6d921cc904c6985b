//! The load a run offers: rate, batch, agents, dashboards, durations and bursts, checked as
//! the flags give them, and the schedule of messages it makes.

use anyhow::{bail, Context};

use crate::cli::LoadArgs;
use crate::schedule::Schedule;

/// The shape of the load.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Workload {
    /// Samples per second offered (during bursts: the base rate).
    pub rate_per_s: f64,
    /// Samples per message (request or frame).
    pub batch: u64,
    pub agents: u64,
    pub dashboards: u64,
    /// Dashboards connected that never read.
    pub stalled_dashboards: u64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub grace_s: f64,
    /// Bursts: peak rate, and how long a burst lasts in each period.
    pub burst: Option<Burst>,
    pub metrics: crate::agent::MetricSet,
    pub metrics_per_sample: usize,
    /// How the dashboards read each frame.
    pub dashboard_parse: crate::dashboard::ParseMode,
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Burst {
    pub peak_per_s: f64,
    pub period_s: f64,
    pub burst_s: f64,
}

impl Workload {
    /// The workload the flags describe, or which flag is wrong.
    pub fn from_flags(l: &LoadArgs) -> anyhow::Result<Workload> {
        if l.batch == 0 || l.batch > 10_000 {
            bail!(
                "--batch must be 1 to 10000 samples per message, got {}",
                l.batch
            );
        }
        if l.agents == 0 {
            bail!("--agents must be at least 1");
        }
        if l.rate.is_nan() || l.rate <= 0.0 || l.rate.is_infinite() {
            bail!(
                "--rate must be a positive number of samples per second, got {}",
                l.rate
            );
        }
        if l.duration.is_nan() || l.duration <= 0.0 || l.warmup < 0.0 || l.grace < 0.0 {
            bail!("--duration must be positive, --warmup and --grace zero or more");
        }
        let w = Workload {
            rate_per_s: l.rate,
            batch: l.batch,
            agents: l.agents,
            dashboards: l.dashboards,
            stalled_dashboards: l.stalled_dashboards,
            duration_s: l.duration,
            warmup_s: l.warmup,
            grace_s: l.grace,
            burst: l.burst_rate.map(|peak| Burst {
                peak_per_s: peak,
                period_s: l.burst_period,
                burst_s: l.burst_length,
            }),
            metrics: l.metrics,
            metrics_per_sample: l.metrics.leaves(),
            dashboard_parse: l.dashboard_parse,
        };
        let s = w.schedule()?;
        if s.total() < 1 {
            bail!("the schedule sends nothing: raise --rate or --duration");
        }
        if l.agents > s.total() {
            tracing::warn!("more agents than messages: some agents will send nothing");
        }
        Ok(w)
    }

    /// The schedule of messages for the whole run, warm-up included.
    pub fn schedule(&self) -> anyhow::Result<Schedule> {
        let per_msg = self.batch as f64;
        let secs = self.warmup_s + self.duration_s;
        let s = match self.burst {
            None => Schedule::steady(self.rate_per_s / per_msg, secs),
            Some(b) => Schedule::burst(
                self.rate_per_s / per_msg,
                b.peak_per_s / per_msg,
                b.period_s,
                b.burst_s,
                secs,
            ),
        };
        s.context("the load schedule")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_loads_are_refused_by_flag() {
        let mut l = LoadArgs {
            rate: 1000.0,
            batch: 0,
            agents: 1,
            dashboards: 1,
            stalled_dashboards: 0,
            duration: 1.0,
            warmup: 0.0,
            grace: 1.0,
            burst_rate: None,
            burst_period: 5.0,
            burst_length: 1.0,
            metrics: crate::agent::MetricSet::Full,
            dashboard_parse: crate::dashboard::ParseMode::Full,
        };
        assert!(Workload::from_flags(&l)
            .unwrap_err()
            .to_string()
            .contains("--batch"));
        l.batch = 1;
        l.rate = -1.0;
        assert!(Workload::from_flags(&l)
            .unwrap_err()
            .to_string()
            .contains("--rate"));
        l.rate = 1000.0;
        assert_eq!(
            Workload::from_flags(&l)
                .expect("valid")
                .schedule()
                .expect("s")
                .total(),
            1000
        );
    }
}

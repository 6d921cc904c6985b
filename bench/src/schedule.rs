//! The open-loop schedule: when each message of a run is due.
//!
//! A load generator that waits for one reply before sending the next request stops sending
//! exactly when the system under test stalls, so the stall hides in a handful of slow samples
//! (coordinated omission). The bench instead fixes, before the run starts, the time at which
//! every message is due, and measures latency from that intended time: a stall then shows up
//! in every sample that should have been sent during it. The schedule is a list of phases of
//! constant rate, so steady loads and bursts are the same code.

use std::time::Duration;

/// A stretch of the run at one rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Phase {
    /// Length of the phase, in seconds.
    pub secs: f64,
    /// Messages per second during the phase.
    pub rate: f64,
}

/// Why a schedule was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("a schedule needs at least one phase")]
    Empty,
    #[error("phase {0}: length must be a positive number of seconds, got {1}")]
    Length(usize, f64),
    #[error("phase {0}: rate must be a positive number of messages per second, got {1}")]
    Rate(usize, f64),
}

/// When each message is due, as an offset from the start of the run.
#[derive(Clone, Debug)]
pub struct Schedule {
    phases: Vec<Phase>,
    /// For each phase: its start time (seconds) and the index of its first message.
    starts: Vec<(f64, u64)>,
    total: u64,
}

impl Schedule {
    /// A schedule of `phases` run one after the other.
    pub fn new(phases: Vec<Phase>) -> Result<Self, ScheduleError> {
        if phases.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let mut starts = Vec::with_capacity(phases.len());
        let (mut t, mut k) = (0.0, 0u64);
        for (i, p) in phases.iter().enumerate() {
            if !(p.secs.is_finite() && p.secs > 0.0) {
                return Err(ScheduleError::Length(i, p.secs));
            }
            if !(p.rate.is_finite() && p.rate > 0.0) {
                return Err(ScheduleError::Rate(i, p.rate));
            }
            starts.push((t, k));
            t += p.secs;
            k += (p.secs * p.rate).round() as u64;
        }
        Ok(Self {
            phases,
            starts,
            total: k,
        })
    }

    /// `rate` messages per second for `secs` seconds.
    pub fn steady(rate: f64, secs: f64) -> Result<Self, ScheduleError> {
        Self::new(vec![Phase { secs, rate }])
    }

    /// Alternates `base` and `peak` rates: each `period` seconds start with `burst` seconds at
    /// `peak`, for `secs` seconds in all.
    pub fn burst(
        base: f64,
        peak: f64,
        period: f64,
        burst: f64,
        secs: f64,
    ) -> Result<Self, ScheduleError> {
        let mut phases = Vec::new();
        let mut t = 0.0;
        while t < secs - 1e-9 {
            let b = burst.min(secs - t);
            phases.push(Phase {
                secs: b,
                rate: peak,
            });
            t += b;
            let rest = (period - burst).min(secs - t);
            if rest > 1e-9 {
                phases.push(Phase {
                    secs: rest,
                    rate: base,
                });
                t += rest;
            }
        }
        Self::new(phases)
    }

    /// Number of messages in the whole schedule.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Length of the schedule in seconds.
    pub fn secs(&self) -> f64 {
        self.phases.iter().map(|p| p.secs).sum()
    }

    /// The phases, in order.
    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }

    /// When message `k` is due, from the start of the run.
    pub fn due(&self, k: u64) -> Duration {
        let i = self.starts.partition_point(|&(_, first)| first <= k) - 1;
        let (t0, k0) = self.starts[i];
        Duration::from_secs_f64(t0 + (k - k0) as f64 / self.phases[i].rate)
    }

    /// How many messages are due strictly before `secs` seconds into the run.
    pub fn count_before(&self, secs: f64) -> u64 {
        if secs <= 0.0 {
            return 0;
        }
        let i = self.starts.partition_point(|&(t, _)| t < secs) - 1;
        let (t0, k0) = self.starts[i];
        let in_phase = ((secs - t0) * self.phases[i].rate).ceil() as u64;
        let phase_len = self.starts.get(i + 1).map_or(self.total, |s| s.1) - k0;
        k0 + in_phase.min(phase_len)
    }
}

/// Latency of one observation, both ways: from the intended send time (corrected for
/// coordinated omission) and from the actual send time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency {
    pub corrected_us: u64,
    pub uncorrected_us: u64,
}

impl Latency {
    /// `intended_us`, `sent_us` and `observed_us` are wall-clock microseconds. A clock that
    /// reads earlier at the observer than at the sender gives 0, never a negative latency.
    pub fn of(intended_us: u64, sent_us: u64, observed_us: u64) -> Self {
        Self {
            corrected_us: observed_us.saturating_sub(intended_us.min(sent_us)),
            uncorrected_us: observed_us.saturating_sub(sent_us),
        }
    }
}

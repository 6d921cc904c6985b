//! The frame budget: with many dashboards, each dashboard's writer waits a minimum interval
//! between frames so that the events published meanwhile go out together, as one array frame.
//!
//! Why: every frame costs the server a write (a syscall, a timeout, a wake-up) and the
//! dashboard a read and a parse, whatever it carries. A dashboard that keeps up gets about one
//! frame per publish, so 1,000 dashboards at 200 publishes/s cost 200,000 frames/s on each side,
//! more than two cores can write and read: everything queues and the p99 reaches seconds
//! (BENCHMARKS.md, Many agents and fan-out). Grouping bounds the frames without bounding the
//! events.
//!
//! How: the process aims at `budget` frames per second (`--dashboard-frame-budget`) over all the
//! dashboard writers that are active (wrote a frame within the last [`IDLE`]); a writer that
//! wrote its last frame less than `active / budget` ago waits for the rest of that interval
//! before it drains its queue. One dashboard at 50,000 frames/s waits at most 20 µs, which is
//! below [`MIN_WAIT`], so it never waits at all; 1,000 dashboards wait about 20 ms between
//! frames (4 events a frame at 200 publishes/s). A writer that has been quiet for an interval
//! writes at once, so a lone event is never held. Only events wait: the writer breaks off the
//! wait for a pong or a close it owes (see `ws::run_writer`), and pings, the ping deadline,
//! the write timeout, shutdown and the queue's limits run as without a budget. Agents' sockets
//! are neither counted nor paced.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// A writer that wrote nothing for this long stops counting as active.
pub const IDLE: Duration = Duration::from_secs(1);

/// Waits shorter than this are not made (the timer's resolution is a millisecond): with fewer
/// active dashboards than `budget / 1000` nothing waits.
pub const MIN_WAIT: Duration = Duration::from_millis(1);

/// The default of `--dashboard-frame-budget`: frames per second over all dashboards.
pub const DEFAULT_BUDGET: u32 = 50_000;

/// What the writers of one hub share: how many are active, and how often one waited.
#[derive(Debug, Default)]
pub struct FrameGauge {
    active: AtomicUsize,
    waits: AtomicU64,
}

impl FrameGauge {
    /// Dashboard writers that wrote a frame within the last [`IDLE`].
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Times a writer held its events back to group them (one per wait, not per event).
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }
}

/// One writer's side of the budget.
#[derive(Debug)]
pub struct Pacer {
    /// Frames per second over all active writers; 0: no budget.
    budget: u32,
    gauge: Arc<FrameGauge>,
    /// When this writer last wrote events, while it counts as active.
    last: Option<Instant>,
}

impl Pacer {
    /// A writer's pacer under `budget` frames/s (0: never waits), counted in `gauge`.
    pub fn new(budget: u32, gauge: Arc<FrameGauge>) -> Self {
        Self {
            budget,
            gauge,
            last: None,
        }
    }

    /// When the events just queued may be written: `None` for now, else the end of this
    /// writer's interval. Counts a wait.
    pub fn due(&self, now: Instant) -> Option<Instant> {
        let last = self.last?;
        let interval = self.interval()?;
        let at = last + interval;
        if at.saturating_duration_since(now) < MIN_WAIT {
            return None;
        }
        self.gauge.waits.fetch_add(1, Ordering::Relaxed);
        Some(at)
    }

    /// `active / budget`, or `None` without a budget.
    fn interval(&self) -> Option<Duration> {
        if self.budget == 0 {
            return None;
        }
        let active = self.gauge.active().max(1) as u64;
        Some(Duration::from_nanos(
            active.saturating_mul(1_000_000_000) / u64::from(self.budget),
        ))
    }

    /// Notes a frame of events written at `now`: a dashboard's writer counts as active from
    /// here; any other writer (an agent's) does not count and never waits.
    pub fn wrote(&mut self, now: Instant, dashboard: bool) {
        if !dashboard || self.budget == 0 {
            self.idle();
            return;
        }
        if self.last.is_none() {
            self.gauge.active.fetch_add(1, Ordering::Relaxed);
        }
        self.last = Some(now);
    }

    /// When this writer stops counting as active if nothing is written before: `None` while
    /// it does not count.
    pub fn idle_at(&self) -> Option<Instant> {
        self.last.map(|l| l + IDLE)
    }

    /// Stops counting this writer as active.
    pub fn idle(&mut self) {
        if self.last.take().is_some() {
            self.gauge.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_only_when_many_writers_are_active_and_counts_them_once() {
        let gauge = Arc::new(FrameGauge::default());
        let t0 = Instant::now();
        let mut one = Pacer::new(50_000, gauge.clone());
        assert_eq!(
            one.due(t0),
            None,
            "a writer that never wrote writes at once"
        );
        one.wrote(t0, true);
        one.wrote(t0, true);
        assert_eq!(gauge.active(), 1);
        assert_eq!(
            one.due(t0),
            None,
            "one writer: 20 µs, below the minimum wait"
        );

        let mut many: Vec<Pacer> = (0..999)
            .map(|_| Pacer::new(50_000, gauge.clone()))
            .collect();
        for p in &mut many {
            p.wrote(t0, true);
        }
        assert_eq!(gauge.active(), 1_000);
        assert_eq!(one.due(t0), Some(t0 + Duration::from_millis(20)));
        assert_eq!(
            one.due(t0 + Duration::from_millis(25)),
            None,
            "a writer quiet for its interval writes at once"
        );
        assert_eq!(gauge.waits(), 1);

        many.truncate(10);
        assert_eq!(gauge.active(), 11, "dropped writers stop counting");
        many[0].idle();
        many[0].idle();
        assert_eq!(gauge.active(), 10);
        one.wrote(t0, false);
        assert_eq!(gauge.active(), 9, "an agent's writer does not count");
        assert_eq!(one.due(t0), None);

        let mut off = Pacer::new(0, gauge.clone());
        off.wrote(t0, true);
        assert_eq!(gauge.active(), 9, "without a budget nothing counts");
        assert_eq!(off.due(t0), None);
    }
}

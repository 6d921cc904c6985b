//! The progress line on a terminal during a run: elapsed time and the rates sent and seen,
//! updated a few times a second by the run's sending step.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::workload::Workload;

/// The progress bar: elapsed time, and the rates sent and seen since the last update.
pub struct Progress {
    bar: ProgressBar,
    warmup_s: f64,
    total_s: f64,
    dashboards: u64,
    /// The previous update, and the samples sent and seen by then.
    last_at: Instant,
    last_sent: u64,
    last_seen: u64,
}

impl Progress {
    /// A bar labelled `label` for `w`; hidden unless `show`.
    pub fn new(show: bool, label: &str, w: &Workload) -> Self {
        let total_s = w.warmup_s + w.duration_s;
        let bar = if show {
            let b = ProgressBar::new((total_s * 1000.0) as u64);
            b.set_style(
                ProgressStyle::with_template("{prefix:>8} [{bar:20}] {msg}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            b.set_prefix(label.to_string());
            b
        } else {
            ProgressBar::hidden()
        };
        Self {
            bar,
            warmup_s: w.warmup_s,
            total_s,
            dashboards: w.dashboards,
            last_at: Instant::now(),
            last_sent: 0,
            last_seen: 0,
        }
    }

    /// Shows `el` seconds since the start, with `sent` and `seen` so far.
    pub fn show(&mut self, el: f64, sent: u64, seen: u64) {
        self.bar.set_position((el * 1000.0) as u64);
        let dt = self.last_at.elapsed().as_secs_f64().max(1e-3);
        let phase = if el < self.warmup_s { " warm-up" } else { "" };
        let rate = |n: u64| {
            let r = n as f64 / dt;
            if r >= 1e6 {
                format!("{:.2}M", r / 1e6)
            } else if r >= 1e3 {
                format!("{:.1}k", r / 1e3)
            } else {
                format!("{r:.0}")
            }
        };
        self.bar.set_message(format!(
            "{el:.0}/{:.0} s{phase}  sent {}/s  seen {}/s",
            self.total_s,
            rate(sent - self.last_sent),
            rate((seen - self.last_seen) / self.dashboards.max(1)),
        ));
        (self.last_at, self.last_sent, self.last_seen) = (Instant::now(), sent, seen);
    }

    /// Shows `what` the run is doing instead of the rates.
    pub fn say(&self, what: &'static str) {
        self.bar.set_message(what);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

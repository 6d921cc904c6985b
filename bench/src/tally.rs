//! What a run's recordings add up to: the agents' and the dashboards' records, once the
//! dashboards have stopped, become the system's result (counts, throughput, latency, the
//! per-second timeline).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use crate::dashboard::Outcome;
use crate::load::Plan;
use crate::record::{differences, DashRecorder, LoadRecorder};
use crate::report::{Counts, LatencyBlock, SystemResult, Throughput, TimelinePoint};
use crate::run::{Measured, Target};
use crate::workload::Workload;

/// Everything a run recorded, once the dashboards have stopped: what its result is made of.
pub struct Recorded<'a> {
    pub w: &'a Workload,
    pub plan: &'a Plan,
    pub load: &'a LoadRecorder,
    pub dash: &'a DashRecorder,
    pub outcomes: &'a [Outcome],
    /// Seconds of the timeline recorded.
    pub seconds: usize,
    /// When the agents were done sending.
    pub sent_end: Instant,
    /// Ctrl-C ended the sending.
    pub stopped_early: bool,
}

/// The dashboards' counts, summed.
#[derive(Default)]
struct Tally {
    /// Acknowledged, not seen.
    lost: u64,
    /// Seen, not acknowledged.
    unacked_seen: u64,
    duplicated: u64,
    /// Seen, each sample once per dashboard.
    seen: u64,
    dropped: u64,
    sample_frames: u64,
    framed_samples: u64,
    errors: Vec<String>,
}

impl Recorded<'_> {
    /// Seconds measured: the duration, or up to a Ctrl-C.
    fn measured_s(&self) -> f64 {
        if self.stopped_early {
            let sending_s = self.sent_end.duration_since(self.plan.start).as_secs_f64();
            (sending_s - self.w.warmup_s).max(0.001)
        } else {
            self.w.duration_s
        }
    }

    /// The result of `t`'s run, with its histograms.
    pub fn measured(&self, t: &Target, cpu: crate::cpu::Usage) -> Measured {
        let (w, rec, measured_s) = (self.w, self.load, self.measured_s());
        let tally = self.tally();
        let d = w.dashboards.max(1) as f64;
        let sent = rec.sent.load(Relaxed);
        let acked = rec.acked.load(Relaxed);
        let offered = (self.plan.schedule.total() - self.plan.first_measured) * w.batch;
        let ack = t
            .endpoint
            .transport
            .acks()
            .then(|| rec.ack_latency.lock().expect("lock").clone());
        let latency = self.dash.latency.clone();
        let result = SystemResult {
            name: t.name.clone(),
            label: t.label.clone(),
            description: t.description.clone(),
            target: t.target.clone(),
            transport: t.endpoint.transport.label().to_string(),
            stopped_early: self.stopped_early,
            duration_s: measured_s,
            throughput: Throughput {
                offered_per_s: offered as f64 / w.duration_s,
                sent_per_s: sent as f64 / measured_s,
                acked_per_s: acked as f64 / measured_s,
                seen_per_s: tally.seen as f64 / d / measured_s,
            },
            counts: Counts {
                offered,
                sent,
                acked,
                rejected: rec.rejected.lock().expect("lock").clone(),
                errors: rec.errors.load(Relaxed),
                seen: tally.seen,
                expected_seen: acked * w.dashboards,
                lost: tally.lost,
                duplicated: tally.duplicated,
                unacked_seen: tally.unacked_seen,
                dropped_by_system: tally.dropped,
                dashboard_frames: tally.sample_frames,
                dashboard_framed_samples: tally.framed_samples,
                dashboards: w.dashboards,
            },
            reasons: rec.reasons.lock().expect("lock").clone(),
            dashboard_errors: tally.errors,
            latency_us: LatencyBlock::of(&latency),
            ack_latency_us: ack.as_ref().map(LatencyBlock::of),
            timeline: self.timeline(),
            cpu,
            repeats: None,
            vs_relay: None,
        };
        Measured {
            result,
            latency,
            ack,
        }
    }

    /// Each dashboard's samples against the acknowledged ones, summed over the dashboards.
    fn tally(&self) -> Tally {
        let acked_words = self.load.acked_set.snapshot();
        let mut t = Tally::default();
        for o in self.outcomes {
            let (l, u) = differences(&acked_words, &o.seen.0);
            t.lost += l;
            t.unacked_seen += u;
            t.duplicated += o.duplicates;
            t.seen += o.unique;
            t.dropped += o.dropped;
            t.sample_frames += o.sample_frames;
            t.framed_samples += o.framed_samples;
            if let Some(e) = &o.error {
                t.errors.push(e.clone());
            }
        }
        t
    }

    /// Per second: samples sent, samples one dashboard saw, and their p99.
    fn timeline(&self) -> Vec<TimelinePoint> {
        let d = self.w.dashboards.max(1) as f64;
        let sent_ps = self.load.sent_per_sec.values();
        // Per dashboard: differences of the rounded running total, so the seconds add up to
        // the total exactly.
        let mut running = (0u64, 0u64);
        // Samples seen after the measured seconds (late, in the grace period) get seconds of
        // their own: cut off, the seconds would not add up to what was seen.
        (0..self.seconds.max(self.dash.per_sec.len()))
            .map(|s| {
                let (seen, p99) = self.dash.per_sec.get(s).map_or((0, None), |(n, h)| {
                    (*n, (!h.is_empty()).then(|| h.value_at_quantile(0.99)))
                });
                let all = running.0 + seen;
                let per_dashboard = (all as f64 / d).round() as u64;
                let this = per_dashboard - running.1;
                running = (all, per_dashboard);
                TimelinePoint {
                    t: s as u64 + 1,
                    sent: sent_ps.get(s).copied().unwrap_or(0),
                    seen: this,
                    p99_us: p99,
                }
            })
            .filter(|p| p.sent > 0 || p.seen > 0)
            .collect()
    }
}

//! What a run records: HDR latency histograms at microsecond resolution, counters, the set of
//! acknowledged samples, and a per-second timeline.
//!
//! Agents and dashboards run on different threads and record concurrently: counters and the
//! acknowledged set are atomics; histograms sit behind a mutex taken once per reply (agents)
//! or once per frame (dashboards), which is rare next to the work of a sample.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use hdrhistogram::Histogram;

use crate::schedule::Latency;

/// Highest latency a histogram holds: one hour, in microseconds. Larger values count as this.
pub const MAX_US: u64 = 3_600_000_000;

/// A latency histogram: 1 µs to one hour, 3 significant digits.
#[derive(Clone, Debug)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

impl Hist {
    pub fn new() -> Self {
        Self(Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds"))
    }

    /// Records `us` microseconds (0 counts as 1, above an hour as an hour).
    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, MAX_US));
    }

    pub fn add(&mut self, other: &Hist) {
        // Same bounds on both sides, so this cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn value_at_quantile(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q)
    }

    pub fn max(&self) -> u64 {
        self.0.max()
    }

    pub fn inner(&self) -> &Histogram<u64> {
        &self.0
    }
}

/// Corrected and uncorrected histograms side by side.
#[derive(Clone, Debug, Default)]
pub struct LatencyPair {
    pub corrected: Hist,
    pub uncorrected: Hist,
}

impl LatencyPair {
    pub fn record(&mut self, l: Latency) {
        self.corrected.record(l.corrected_us);
        self.uncorrected.record(l.uncorrected_us);
    }

    pub fn add(&mut self, other: &LatencyPair) {
        self.corrected.add(&other.corrected);
        self.uncorrected.add(&other.uncorrected);
    }
}

/// A fixed-size set of sample numbers that many threads add to.
#[derive(Debug)]
pub struct AtomicBits(Vec<AtomicU64>);

impl AtomicBits {
    pub fn new(len: u64) -> Self {
        Self((0..len.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }

    /// Adds `from..to`, a word (64 numbers) at a time.
    pub fn set_range(&self, from: u64, to: u64) {
        let mut i = from;
        while i < to {
            let bit = i % 64;
            let n = (to - i).min(64 - bit);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            if let Some(w) = self.0.get((i / 64) as usize) {
                w.fetch_or(mask, Relaxed);
            }
            i += n;
        }
    }

    pub fn get(&self, i: u64) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w.load(Relaxed) & (1 << (i % 64)) != 0)
    }

    /// A plain copy of the words.
    pub fn snapshot(&self) -> Vec<u64> {
        self.0.iter().map(|w| w.load(Relaxed)).collect()
    }
}

/// A plain bitset owned by one dashboard.
#[derive(Clone, Debug)]
pub struct Bits(pub Vec<u64>);

impl Bits {
    pub fn new(len: u64) -> Self {
        Self(vec![0; len.div_ceil(64) as usize])
    }

    /// Sets bit `i`; returns whether it was already set. Out-of-range bits are ignored
    /// (and reported as new).
    pub fn insert(&mut self, i: u64) -> bool {
        match self.0.get_mut((i / 64) as usize) {
            Some(w) => {
                let m = 1 << (i % 64);
                let had = *w & m != 0;
                *w |= m;
                had
            }
            None => false,
        }
    }
}

/// `|a \ b|` and `|b \ a|`, word by word.
pub fn differences(a: &[u64], b: &[u64]) -> (u64, u64) {
    let (mut a_only, mut b_only) = (0u64, 0u64);
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        a_only += u64::from((x & !y).count_ones());
        b_only += u64::from((y & !x).count_ones());
    }
    (a_only, b_only)
}

/// Per-second counters, indexed by whole seconds since the measured period began.
#[derive(Debug)]
pub struct Timeline(Vec<AtomicU64>);

impl Timeline {
    pub fn new(secs: usize) -> Self {
        Self((0..secs).map(|_| AtomicU64::new(0)).collect())
    }

    pub fn add(&self, sec: usize, n: u64) {
        if let Some(c) = self.0.get(sec.min(self.0.len().saturating_sub(1))) {
            c.fetch_add(n, Relaxed);
        }
    }

    pub fn values(&self) -> Vec<u64> {
        self.0.iter().map(|c| c.load(Relaxed)).collect()
    }
}

/// What the agents record.
#[derive(Debug)]
pub struct LoadRecorder {
    /// Samples written to the wire.
    pub sent: AtomicU64,
    /// The same, warm-up included (for the progress display).
    pub sent_all: AtomicU64,
    /// Samples the system acknowledged (HTTP 202, a stream ack; for WebSocket, written).
    pub acked: AtomicU64,
    /// Samples whose request failed at the transport (connection refused or reset, timeout).
    pub errors: AtomicU64,
    pub acked_set: AtomicBits,
    pub sent_per_sec: Timeline,
    /// Refused samples, by status (`"503"`) or `"error"` for an error event on a WebSocket.
    pub rejected: Mutex<BTreeMap<String, u64>>,
    /// The first refusal message of each kind, to show the user why.
    pub reasons: Mutex<BTreeMap<String, String>>,
    pub ack_latency: Mutex<LatencyPair>,
}

impl LoadRecorder {
    pub fn new(samples: u64, secs: usize) -> Self {
        Self {
            sent: AtomicU64::new(0),
            sent_all: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            acked_set: AtomicBits::new(samples),
            sent_per_sec: Timeline::new(secs),
            rejected: Mutex::new(BTreeMap::new()),
            reasons: Mutex::new(BTreeMap::new()),
            ack_latency: Mutex::new(LatencyPair::default()),
        }
    }

    pub fn reject(&self, kind: &str, samples: u64, reason: impl FnOnce() -> String) {
        let mut r = self.rejected.lock().expect("recorder lock");
        *r.entry(kind.to_string()).or_default() += samples;
        drop(r);
        let mut m = self.reasons.lock().expect("recorder lock");
        if !m.contains_key(kind) {
            m.insert(kind.to_string(), reason());
        }
    }

    pub fn error(&self, samples: u64, reason: impl FnOnce() -> String) {
        self.errors.fetch_add(samples, Relaxed);
        let mut m = self.reasons.lock().expect("recorder lock");
        if !m.contains_key("transport") {
            m.insert("transport".into(), reason());
        }
    }
}

/// What the dashboards record together (each also keeps its own set of samples seen).
#[derive(Debug, Default)]
pub struct DashRecorder {
    pub latency: LatencyPair,
    /// Per second since the measured period began: samples seen and their corrected latency.
    pub per_sec: Vec<(u64, Hist)>,
}

impl DashRecorder {
    pub fn record(&mut self, sec: usize, l: Latency) {
        self.latency.record(l);
        if self.per_sec.len() <= sec {
            self.per_sec.resize_with(sec + 1, || (0, Hist::new()));
        }
        let s = &mut self.per_sec[sec];
        s.0 += 1;
        s.1.record(l.corrected_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitsets_count_what_only_one_side_has() {
        let acked = AtomicBits::new(200);
        acked.set_range(0, 100);
        acked.set_range(150, 160);
        let mut seen = Bits::new(200);
        for i in 0..95 {
            assert!(!seen.insert(i));
        }
        assert!(seen.insert(3), "a second insert is a duplicate");
        seen.insert(170);
        let (lost, unacked_seen) = differences(&acked.snapshot(), &seen.0);
        assert_eq!(lost, 5 + 10);
        assert_eq!(unacked_seen, 1);
        assert!(acked.get(155) && !acked.get(160));
    }

    #[test]
    fn ranges_set_exactly_their_bits() {
        for (from, to) in [
            (0, 0),
            (0, 1),
            (3, 64),
            (63, 65),
            (64, 192),
            (5, 300),
            (130, 131),
        ] {
            let bits = AtomicBits::new(320);
            bits.set_range(from, to);
            for i in 0..320 {
                assert_eq!(bits.get(i), (from..to).contains(&i), "{from}..{to} at {i}");
            }
        }
    }

    #[test]
    fn histograms_clamp_instead_of_failing() {
        let mut h = Hist::new();
        h.record(0);
        h.record(u64::MAX);
        assert_eq!(h.len(), 2);
        assert!(h.max() >= MAX_US);
    }
}

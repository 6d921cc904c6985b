//! Fake agents' metrics: one realistic set (cpu, memory, disk, load, requests/s, latency,
//! errors, network) moving as a random walk, written as a sample in the original agents' JSON.
//!
//! It exists once, here, for both fake agents of the project: the aggregator's built-in
//! simulated agents (`--simulate`, a live dashboard on a fresh checkout) and the bench's load
//! generator, where writing a sample is the hot path. So [`RandomWalk::write_sample`] appends to
//! the caller's buffer and allocates nothing, and numbers go through the same writer as the
//! dashboard events ([`crate::event::write_f64`]). A seed makes a walk repeatable.
//!
//! Every sample carries `send_us`, its wall-clock send time in microseconds (the latency
//! convention of `docs/API.md`), and any counters the caller adds after it (the bench's
//! `bench_seq`). Which of the walk's metrics a sample holds is a [`MetricSet`].

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::event::{write_f64, write_u64};

/// Which of the walk's metrics a sample carries, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricSet {
    /// cpu, memory, disk, load1, requests_per_s, latency_ms.p50/p99, errors, network.in/out:
    /// 10 leaves.
    Full,
    /// cpu, memory, disk, network.in/out (the README's example agent): 5 leaves.
    Basic,
    /// cpu, memory, disk, requests, latency_ms, errors, network.in/out: 8 leaves, each its own
    /// chart on the dashboard (the aggregator's simulated agents).
    Simulated,
}

impl MetricSet {
    /// Number of metric leaves the set writes (the caller's `send_us` and counters not
    /// included).
    pub fn leaves(self) -> usize {
        match self {
            MetricSet::Full => 10,
            MetricSet::Basic => 5,
            MetricSet::Simulated => 8,
        }
    }
}

/// What a sample carries besides the walk's metrics.
#[derive(Clone, Copy, Debug)]
pub struct SampleHead<'a> {
    /// Written as is, unescaped: it must be a valid name ([`crate::decode::valid_name`]), as
    /// the systems require anyway.
    pub server_id: &'a str,
    /// The sample's own time in ms; `None` leaves the receiving system to stamp its arrival.
    pub timestamp_ms: Option<u64>,
    /// Wall-clock send time, µs since the epoch.
    pub send_us: u64,
    /// Integer metrics written right after `send_us`, names as given (valid names).
    pub counters: &'a [(&'a str, u64)],
}

/// The random-walk state of one fake agent.
#[derive(Clone, Debug)]
pub struct RandomWalk {
    rng: SmallRng,
    cpu: f64,
    memory: f64,
    disk: f64,
    load1: f64,
    rps: f64,
    p50: f64,
    p99: f64,
    errors: f64,
    net_in: f64,
    net_out: f64,
}

fn walk(rng: &mut SmallRng, v: f64, step: f64, lo: f64, hi: f64) -> f64 {
    (v + rng.random_range(-step..=step)).clamp(lo, hi)
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Appends `name` (a JSON fragment: separator, key, colon) and `v`.
fn field(out: &mut Vec<u8>, name: &[u8], v: f64) {
    out.extend_from_slice(name);
    write_f64(out, v);
}

impl RandomWalk {
    /// A new walk from `seed`, its metrics at random starting points.
    pub fn new(seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        Self {
            cpu: rng.random_range(5.0..60.0),
            memory: rng.random_range(30.0..70.0),
            disk: rng.random_range(20.0..80.0),
            load1: rng.random_range(0.1..2.0),
            rps: rng.random_range(50.0..2000.0),
            p50: rng.random_range(2.0..20.0),
            p99: 0.0,
            errors: 0.0,
            net_in: rng.random_range(1e4..1e6),
            net_out: rng.random_range(1e4..1e6),
            rng,
        }
    }

    /// Moves every metric one step.
    pub fn step(&mut self) {
        let r = &mut self.rng;
        self.cpu = walk(r, self.cpu, 3.0, 0.0, 100.0);
        self.memory = walk(r, self.memory, 0.5, 5.0, 99.0);
        self.disk = walk(r, self.disk, 0.05, 1.0, 99.9);
        self.load1 = walk(r, self.load1, 0.1, 0.0, 16.0);
        self.rps = walk(r, self.rps, 40.0, 0.0, 20_000.0);
        self.p50 = walk(r, self.p50, 0.5, 0.5, 200.0);
        self.p99 = self.p50 * r.random_range(2.0..6.0);
        self.errors = if r.random_bool(0.05) {
            r.random_range(1.0..20.0_f64).floor()
        } else {
            0.0
        };
        self.net_in = walk(r, self.net_in, 2e4, 0.0, 1e8);
        self.net_out = walk(r, self.net_out, 2e4, 0.0, 1e8);
    }

    /// Appends the current values as one sample to `out`:
    /// `{"serverId":S[,"timestamp":MS],"metrics":{"send_us":US[,counters],<set>}}`.
    pub fn write_sample(&self, out: &mut Vec<u8>, set: MetricSet, head: &SampleHead<'_>) {
        debug_assert!(crate::decode::valid_name(head.server_id));
        out.extend_from_slice(b"{\"serverId\":\"");
        out.extend_from_slice(head.server_id.as_bytes());
        out.push(b'"');
        if let Some(ts) = head.timestamp_ms {
            out.extend_from_slice(b",\"timestamp\":");
            write_u64(out, ts);
        }
        out.extend_from_slice(b",\"metrics\":{\"send_us\":");
        write_u64(out, head.send_us);
        for &(name, v) in head.counters {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            write_u64(out, v);
        }
        field(out, b",\"cpu\":", round1(self.cpu));
        field(out, b",\"memory\":", round1(self.memory));
        field(out, b",\"disk\":", round1(self.disk));
        match set {
            MetricSet::Full => {
                field(out, b",\"load1\":", (self.load1 * 100.0).round() / 100.0);
                field(out, b",\"requests_per_s\":", self.rps.round());
                field(out, b",\"latency_ms\":{\"p50\":", round1(self.p50));
                field(out, b",\"p99\":", round1(self.p99));
                field(out, b"},\"errors\":", self.errors);
            }
            MetricSet::Basic => {}
            MetricSet::Simulated => {
                field(out, b",\"requests\":", self.rps.round());
                field(out, b",\"latency_ms\":", round1(self.p50));
                field(out, b",\"errors\":", self.errors);
            }
        }
        field(out, b",\"network\":{\"in\":", self.net_in.round());
        field(out, b",\"out\":", self.net_out.round());
        out.extend_from_slice(b"}}}");
    }
}

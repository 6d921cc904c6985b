//! A fake agent's metrics: a realistic set (cpu, memory, disk, load, requests/s, latency,
//! errors, network) that moves like a random walk, written in the sample format of the
//! original agents.
//!
//! Every sample also carries `send_us` (the wall-clock send time, the latency convention of
//! docs/API.md) and `bench_seq`, the sample's number in the run, which lets each dashboard
//! tell a lost sample from a duplicated one. Both are exact in a double.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Which metrics a sample carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetricSet {
    /// cpu, memory, disk, load1, requests_per_s, latency_ms.p50/p99, errors, network.in/out:
    /// 12 leaves with the bench's two, about 240 bytes.
    Full,
    /// cpu, memory, disk, network.in/out (the README's example agent): 7 leaves, about
    /// 160 bytes.
    Basic,
}

impl MetricSet {
    /// Number of metric leaves in one sample, `send_us` and `bench_seq` included.
    pub fn leaves(self) -> usize {
        match self {
            MetricSet::Full => 12,
            MetricSet::Basic => 7,
        }
    }
}

/// The random-walk state of one agent.
#[derive(Clone, Debug)]
pub struct AgentMetrics {
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

impl AgentMetrics {
    /// A new agent; `seed` makes runs repeatable.
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

    /// Appends one sample as JSON to `out`.
    pub fn write_sample(
        &self,
        set: MetricSet,
        out: &mut Vec<u8>,
        server_id: &str,
        seq: u64,
        send_us: u64,
    ) {
        let mut i = itoa::Buffer::new();
        let mut f = ryu::Buffer::new();
        out.extend_from_slice(b"{\"serverId\":\"");
        out.extend_from_slice(server_id.as_bytes());
        out.extend_from_slice(b"\",\"metrics\":{\"send_us\":");
        out.extend_from_slice(i.format(send_us).as_bytes());
        out.extend_from_slice(b",\"bench_seq\":");
        out.extend_from_slice(i.format(seq).as_bytes());
        let full = [
            (&b",\"cpu\":"[..], round1(self.cpu)),
            (b",\"memory\":", round1(self.memory)),
            (b",\"disk\":", round1(self.disk)),
            (b",\"load1\":", (self.load1 * 100.0).round() / 100.0),
            (b",\"requests_per_s\":", self.rps.round()),
            (b",\"latency_ms\":{\"p50\":", round1(self.p50)),
            (b",\"p99\":", round1(self.p99)),
            (b"},\"errors\":", self.errors),
            (b",\"network\":{\"in\":", self.net_in.round()),
            (b",\"out\":", self.net_out.round()),
        ];
        let basic = [
            (&b",\"cpu\":"[..], round1(self.cpu)),
            (b",\"memory\":", round1(self.memory)),
            (b",\"disk\":", round1(self.disk)),
            (b",\"network\":{\"in\":", self.net_in.round()),
            (b",\"out\":", self.net_out.round()),
        ];
        let fields: &[(&[u8], f64)] = match set {
            MetricSet::Full => &full,
            MetricSet::Basic => &basic,
        };
        for &(name, v) in fields {
            out.extend_from_slice(name);
            if v.fract() == 0.0 && v.abs() < 1e15 {
                out.extend_from_slice(i.format(v as i64).as_bytes());
            } else {
                out.extend_from_slice(f.format(v).as_bytes());
            }
        }
        out.extend_from_slice(b"}}}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_valid_for_both_systems_and_carry_the_bench_fields() {
        let mut a = AgentMetrics::new(7);
        let mut d = metrics_model::decode::Decoder::default();
        for seq in 0..500 {
            a.step();
            let set = if seq % 2 == 0 {
                MetricSet::Full
            } else {
                MetricSet::Basic
            };
            let mut out = Vec::new();
            a.write_sample(set, &mut out, "bench-x-1", seq, 1_764_349_200_123_456);
            let text = String::from_utf8(out.clone()).expect("utf8");
            let s = d
                .decode_one(&mut out, 0)
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            let s = &s;
            assert_eq!(s.server_id, "bench-x-1");
            assert_eq!(s.metrics.len(), set.leaves(), "{text}");
            assert!(s.metrics.get("network.in").is_some());
            assert_eq!(s.metrics.get("bench_seq"), Some(seq as f64));
            assert_eq!(s.metrics.get("send_us"), Some(1_764_349_200_123_456.0));
            let cpu = s.metrics.get("cpu").expect("cpu");
            assert!((0.0..=100.0).contains(&cpu));
        }
    }
}

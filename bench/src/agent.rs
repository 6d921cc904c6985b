//! A bench agent's samples: the model's random walk ([`metrics_model::random_walk`], the same
//! generator as the aggregator's simulated agents) in the sample format of the original agents.
//!
//! Every sample also carries `send_us` (the wall-clock send time, the latency convention of
//! docs/API.md) and `bench_seq`, the sample's number in the run, which lets each dashboard
//! tell a lost sample from a duplicated one. Both are exact in a double.

use metrics_model::random_walk::{self, RandomWalk, SampleHead};

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
        self.walk_set().leaves() + 2
    }

    fn walk_set(self) -> random_walk::MetricSet {
        match self {
            MetricSet::Full => random_walk::MetricSet::Full,
            MetricSet::Basic => random_walk::MetricSet::Basic,
        }
    }
}

/// The random-walk state of one agent.
#[derive(Clone, Debug)]
pub struct AgentMetrics {
    walk: RandomWalk,
}

impl AgentMetrics {
    /// A new agent; `seed` makes runs repeatable.
    pub fn new(seed: u64) -> Self {
        Self {
            walk: RandomWalk::new(seed),
        }
    }

    /// Moves every metric one step.
    pub fn step(&mut self) {
        self.walk.step();
    }

    /// Appends one sample as JSON to `out`: sample `seq` of the run, sent at `send_us`.
    pub fn write_sample(
        &self,
        set: MetricSet,
        out: &mut Vec<u8>,
        server_id: &str,
        seq: u64,
        send_us: u64,
    ) {
        let head = SampleHead {
            server_id,
            timestamp_ms: None,
            send_us,
            counters: &[("bench_seq", seq)],
        };
        self.walk.write_sample(out, set.walk_set(), &head);
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

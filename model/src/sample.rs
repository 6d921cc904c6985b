//! The validated sample: a server id, a timestamp and flattened metrics.
//!
//! Metric names are stored back to back in one `String` with their end offsets beside the
//! values, so a sample costs three allocations however many metrics it carries; decoding
//! millions of samples per second is dominated by allocation otherwise.

/// Flattened metrics of one sample, in the order the agent sent them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    names: String,
    /// (end offset of the name in `names`, value)
    entries: Vec<(u32, f64)>,
}

impl Metrics {
    /// An empty set with room for `n` metrics.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            names: String::with_capacity(n * 8),
            entries: Vec::with_capacity(n),
        }
    }

    /// Appends a metric whose name is `prefix.name` (or `name` when the prefix is empty).
    /// The caller has validated both parts.
    pub fn push(&mut self, prefix: &str, name: &str, value: f64) {
        if !prefix.is_empty() {
            self.names.push_str(prefix);
            self.names.push('.');
        }
        self.names.push_str(name);
        self.entries.push((self.names.len() as u32, value));
    }

    /// Number of metrics.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is no metric.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes these metrics hold on the heap (what a queued sample costs beyond its struct).
    pub fn heap_bytes(&self) -> usize {
        self.names.capacity() + self.entries.capacity() * std::mem::size_of::<(u32, f64)>()
    }

    /// The `i`-th metric name.
    pub fn name(&self, i: usize) -> &str {
        let start = if i == 0 {
            0
        } else {
            self.entries[i - 1].0 as usize
        };
        &self.names[start..self.entries[i].0 as usize]
    }

    /// Iterates `(name, value)` in sending order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, f64)> + '_ {
        let mut start = 0usize;
        self.entries.iter().map(move |&(end, v)| {
            let name = &self.names[start..end as usize];
            start = end as usize;
            (name, v)
        })
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The name of a metric that appears twice, if any.
    pub fn find_duplicate(&self) -> Option<&str> {
        let n = self.entries.len();
        if n <= 24 {
            for i in 1..n {
                let a = self.name(i);
                if (0..i).any(|j| self.name(j) == a) {
                    return Some(a);
                }
            }
            None
        } else {
            let mut seen = std::collections::HashSet::with_capacity(n);
            self.iter().map(|(k, _)| k).find(|k| !seen.insert(*k))
        }
    }
}

impl Sample {
    /// Bytes this sample holds in memory, its struct included.
    pub fn mem_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.server_id.capacity() + self.metrics.heap_bytes()
    }
}

/// One validated sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The agent's server id: 1..=128 bytes of `[A-Za-z0-9_.:-]`.
    pub server_id: String,
    /// Milliseconds since the Unix epoch: the agent's, or the arrival time when it sent none.
    pub timestamp: u64,
    /// Flattened metrics (`network.in`).
    pub metrics: Metrics,
}

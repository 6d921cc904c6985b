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

    /// An empty set with room for `n` metrics whose names take `name_bytes` together.
    pub fn with_room(n: usize, name_bytes: usize) -> Self {
        Self {
            names: String::with_capacity(name_bytes),
            entries: Vec::with_capacity(n),
        }
    }

    /// Bytes the names take together.
    pub fn name_bytes(&self) -> usize {
        self.names.len()
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
        let mut spans = [(0usize, 0usize); SMALL];
        let mut many = Vec::new();
        let mut start = 0;
        for (i, &(end, _)) in self.entries.iter().enumerate() {
            let span = (start, end as usize);
            match spans.get_mut(i) {
                Some(slot) if n <= SMALL => *slot = span,
                _ => many.push(span),
            }
            start = end as usize;
        }
        let spans = if n <= SMALL { &spans[..n] } else { &many[..] };
        first_repeat(self.names.as_bytes(), spans).map(|i| self.name(i))
    }
}

/// The index of the first of `spans` (byte ranges of `bytes`) whose bytes an earlier one has,
/// if any: pairwise, lengths first, for the usual few names (no hashing), a hash set for more.
/// Shared by the decoder and System 1's check of stored lines.
#[inline]
pub fn first_repeat(bytes: &[u8], spans: &[(usize, usize)]) -> Option<usize> {
    if spans.len() <= SMALL {
        for (i, &(s, e)) in spans.iter().enumerate().skip(1) {
            let a = &bytes[s..e];
            if spans[..i]
                .iter()
                .any(|&(s2, e2)| e2 - s2 == e - s && &bytes[s2..e2] == a)
            {
                return Some(i);
            }
        }
        None
    } else {
        let mut seen = std::collections::HashSet::with_capacity(spans.len());
        spans.iter().position(|&(s, e)| !seen.insert(&bytes[s..e]))
    }
}

/// Up to this many names, [`first_repeat`] compares pairs instead of hashing.
const SMALL: usize = 24;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(names: &[&str]) -> Metrics {
        let mut m = Metrics::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            m.push("", n, i as f64);
        }
        m
    }

    /// Names of the same length but other bytes are not duplicates; a repeat is found wherever
    /// it is, pairwise up to `SMALL` metrics and by hashing above.
    #[test]
    fn a_repeated_name_is_found_at_any_place_and_count() {
        assert_eq!(
            metrics(&["cpu", "mem", "dsk", "net"]).find_duplicate(),
            None
        );
        assert_eq!(
            metrics(&["cpu", "mem", "cpu"]).find_duplicate(),
            Some("cpu")
        );
        assert_eq!(metrics(&["a", "b", "c", "b"]).find_duplicate(), Some("b"));
        for n in [SMALL, SMALL + 1, 40] {
            let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
            let mut refs: Vec<&str> = names.iter().map(String::as_str).collect();
            assert_eq!(metrics(&refs).find_duplicate(), None, "{n} names");
            refs[n - 1] = refs[n / 2];
            assert_eq!(
                metrics(&refs).find_duplicate(),
                Some(refs[n / 2]),
                "{n} names"
            );
        }
        // A dotted name is one name: `a.b` pushed as prefix and name equals `a.b` pushed whole.
        let mut m = Metrics::with_capacity(2);
        m.push("a", "b", 1.0);
        m.push("", "a.b", 2.0);
        assert_eq!(m.find_duplicate(), Some("a.b"));
    }
}

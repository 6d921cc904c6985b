//! Window statistics: tumbling windows aligned to wall-clock boundaries, with exact
//! count/min/max/mean and p50/p95/p99 from a bounded-memory quantile sketch.
//!
//! # The sketch
//! A value's bucket is read straight off its IEEE-754 bits: the exponent and the top six
//! mantissa bits (`bits >> 46`). Inside a power of two that gives 64 equal buckets, so a bucket
//! is at most 1/64 of its lower bound wide and its midpoint is within 1/128 (0.78 %) of any value
//! in it: p50/p95/p99 come out within 1 % relative error, with no logarithm on the hot path
//! (one shift, one compare, one increment). Negative values use a second store on |x|; values
//! of magnitude below `f64::MIN_POSITIVE` (subnormals) count as zero.
//!
//! Each store is a dense array of `u32` counts over the range of buckets seen, capped at
//! [`MAX_BUCKETS`] buckets (32 powers of two, a ratio of about 4e9 between the smallest and the
//! largest value kept apart). Past the cap the smallest-magnitude buckets are folded into the
//! lowest kept one, as DDSketch does: only quantiles of those smallest values lose accuracy.
//! Buckets grow 64 at a time, so memory per sketch is at most 2 x 2112 x 4 B (about 16.5 KiB);
//! a percentage gauge between 0.1 and 100 holds 2.7 KB. Buffers are kept across windows, so
//! steady state allocates nothing.

/// Most buckets kept per sign.
pub const MAX_BUCKETS: usize = 2048;
const SHIFT: u32 = 46;

#[derive(Clone, Debug, Default, PartialEq)]
struct Store {
    offset: u32,
    counts: Vec<u32>,
    total: u64,
}

impl Store {
    #[inline]
    fn add(&mut self, key: u32) {
        self.total += 1;
        let i = key.wrapping_sub(self.offset) as usize;
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
            return;
        }
        self.grow_and_add(key);
    }

    #[cold]
    fn grow_and_add(&mut self, key: u32) {
        if self.counts.is_empty() {
            self.offset = key;
            self.counts.push(1);
            return;
        }
        let lo = self.offset;
        let hi = lo + self.counts.len() as u32 - 1;
        let new_len = (hi.max(key) - lo.min(key) + 1) as usize;
        if new_len > self.counts.capacity() {
            // Grow a power of two (64 buckets) at a time, not by doubling: memory follows the
            // range of values actually seen.
            let want = (new_len + 64).min(MAX_BUCKETS + 64);
            self.counts
                .reserve_exact(want.saturating_sub(self.counts.len()));
        }
        if key > hi {
            let new_lo = (key + 1).saturating_sub(MAX_BUCKETS as u32).max(lo);
            self.collapse_below(new_lo);
            self.counts.resize((key - self.offset + 1) as usize, 0);
            *self.counts.last_mut().expect("non-empty") += 1;
        } else {
            // key < lo: extend downwards, but never past the cap.
            let new_lo = key.max((hi + 1).saturating_sub(MAX_BUCKETS as u32));
            let grow = (lo - new_lo) as usize;
            if grow > 0 {
                self.counts.splice(0..0, std::iter::repeat_n(0, grow));
                self.offset = new_lo;
            }
            self.counts[0] += 1;
        }
    }

    /// Adds every count of `other`, as if its values had been added here one by one: the same
    /// buckets, and past the cap the smallest magnitudes fold into the lowest kept bucket, as
    /// [`Store::add`] folds them. Costs one pass over `other`'s buckets.
    fn merge(&mut self, other: &Store) {
        let Some(last) = other.counts.len().checked_sub(1) else {
            return;
        };
        self.total += other.total;
        let (o_lo, o_hi) = (other.offset, other.offset + last as u32);
        if self.counts.is_empty() {
            self.offset = o_lo;
            self.counts.extend_from_slice(&other.counts);
            return;
        }
        let hi = self.offset + self.counts.len() as u32 - 1;
        let new_hi = hi.max(o_hi);
        let floor = (new_hi + 1).saturating_sub(MAX_BUCKETS as u32);
        self.collapse_below(floor);
        let new_lo = self.offset.min(o_lo.max(floor));
        let new_len = (new_hi - new_lo + 1) as usize;
        if new_len > self.counts.capacity() {
            let want = (new_len + 64).min(MAX_BUCKETS + 64);
            self.counts
                .reserve_exact(want.saturating_sub(self.counts.len()));
        }
        if new_lo < self.offset {
            let grow = (self.offset - new_lo) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = new_lo;
        }
        self.counts.resize(new_len, 0);
        // `other`'s buckets below the floor fold into the lowest kept one.
        let below = (self.offset.saturating_sub(o_lo) as usize).min(other.counts.len());
        let folded: u32 = other.counts[..below].iter().sum();
        self.counts[0] += folded;
        let at = (o_lo.max(self.offset) - self.offset) as usize;
        for (d, c) in self.counts[at..].iter_mut().zip(&other.counts[below..]) {
            *d += c;
        }
    }

    /// Folds every bucket below `new_lo` into `new_lo`.
    fn collapse_below(&mut self, new_lo: u32) {
        if new_lo <= self.offset {
            return;
        }
        let n = ((new_lo - self.offset) as usize).min(self.counts.len());
        let folded: u32 = self.counts.drain(..n).sum();
        if self.counts.is_empty() {
            self.counts.push(0);
        }
        self.counts[0] += folded;
        self.offset = new_lo;
    }

    fn clear(&mut self) {
        self.counts.clear();
        self.total = 0;
    }

    fn heap_bytes(&self) -> usize {
        self.counts.capacity() * 4
    }
}

#[inline]
fn key_of(abs: f64) -> u32 {
    (abs.to_bits() >> SHIFT) as u32
}

fn midpoint(key: u32) -> f64 {
    let lower = f64::from_bits((key as u64) << SHIFT);
    let upper = f64::from_bits(((key as u64) + 1) << SHIFT);
    if upper.is_finite() {
        lower + (upper - lower) / 2.0
    } else {
        lower
    }
}

/// A bounded quantile sketch with 1 % relative accuracy (see module docs); two sketches merge
/// into what one would hold had it seen both sets of values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuantileSketch {
    pos: Store,
    neg: Store,
    zero: u64,
}

impl QuantileSketch {
    /// Records one finite value.
    #[inline]
    pub fn add(&mut self, x: f64) {
        let abs = x.abs();
        if abs < f64::MIN_POSITIVE {
            self.zero += 1;
        } else if x > 0.0 {
            self.pos.add(key_of(abs));
        } else {
            self.neg.add(key_of(abs));
        }
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.pos.total + self.neg.total + self.zero
    }

    /// Adds `other`'s values: the result equals a sketch that recorded both sets of values.
    pub fn merge(&mut self, other: &QuantileSketch) {
        self.pos.merge(&other.pos);
        self.neg.merge(&other.neg);
        self.zero += other.zero;
    }

    /// The nearest-rank `q`-quantile (0 < q <= 1): the value of rank `ceil(q * n)`, within 1 %.
    /// `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0u64;
        // Negative values ascend from the largest magnitude down.
        for (i, &c) in self.neg.counts.iter().enumerate().rev() {
            seen += c as u64;
            if seen >= rank {
                return Some(-midpoint(self.neg.offset + i as u32));
            }
        }
        seen += self.zero;
        if seen >= rank {
            return Some(0.0);
        }
        for (i, &c) in self.pos.counts.iter().enumerate() {
            seen += c as u64;
            if seen >= rank {
                return Some(midpoint(self.pos.offset + i as u32));
            }
        }
        None
    }

    /// Forgets every value, keeping the buffers.
    pub fn clear(&mut self) {
        self.pos.clear();
        self.neg.clear();
        self.zero = 0;
    }

    /// Heap memory held, in bytes.
    pub fn heap_bytes(&self) -> usize {
        self.pos.heap_bytes() + self.neg.heap_bytes()
    }
}

/// The summary of one closed window for one series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Running statistics of one series in one open window.
#[derive(Clone, Debug)]
pub struct WindowStats {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    sketch: QuantileSketch,
}

impl Default for WindowStats {
    fn default() -> Self {
        Self {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sketch: QuantileSketch::default(),
        }
    }
}

impl WindowStats {
    /// Records one finite value: O(1).
    #[inline]
    pub fn record(&mut self, x: f64) {
        self.count += 1;
        self.sum += x;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        self.sketch.add(x);
    }

    /// Values recorded since the last reset.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Adds `other`'s values, as if they had been recorded here (the sum, so the mean, in
    /// another order: equal to within rounding).
    pub fn merge(&mut self, other: &WindowStats) {
        if other.count == 0 {
            return;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sketch.merge(&other.sketch);
    }

    /// The quantile sketch of the values recorded since the last reset.
    pub fn sketch(&self) -> &QuantileSketch {
        &self.sketch
    }

    /// The summary, or `None` when nothing was recorded. Quantiles are clamped to [min, max].
    pub fn summary(&self) -> Option<Summary> {
        if self.count == 0 {
            return None;
        }
        let q = |p| {
            self.sketch
                .quantile(p)
                .unwrap_or(self.min)
                .clamp(self.min, self.max)
        };
        Some(Summary {
            count: self.count,
            min: self.min,
            max: self.max,
            mean: self.sum / self.count as f64,
            p50: q(0.50),
            p95: q(0.95),
            p99: q(0.99),
        })
    }

    /// Starts a new window, keeping the buffers.
    pub fn reset(&mut self) {
        self.count = 0;
        self.sum = 0.0;
        self.min = f64::INFINITY;
        self.max = f64::NEG_INFINITY;
        self.sketch.clear();
    }

    /// Heap memory held, in bytes.
    pub fn heap_bytes(&self) -> usize {
        self.sketch.heap_bytes()
    }
}

/// A window length and its label (`"1s"`, `"10s"`, `"60s"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowSpec {
    pub label: String,
    pub millis: u64,
}

/// Why a window list was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WindowSpecError {
    #[error("window `{0}` is not a duration like 500ms, 1s, 10s, 1m or 1h")]
    Syntax(String),
    #[error("window `{0}` must be between 10ms and 24h")]
    Range(String),
    #[error("window `{0}` is listed twice")]
    Duplicate(String),
    #[error("at least one window is needed")]
    Empty,
}

impl WindowSpec {
    /// Parses one duration: `500ms`, `1s`, `10s`, `1m`, `1h`.
    pub fn parse(s: &str) -> Result<Self, WindowSpecError> {
        let s = s.trim();
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let (num, unit) = s.split_at(digits);
        let n: u64 = num
            .parse()
            .map_err(|_| WindowSpecError::Syntax(s.to_string()))?;
        let scale = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(WindowSpecError::Syntax(s.to_string())),
        };
        let millis = n.saturating_mul(scale);
        if !(10..=86_400_000).contains(&millis) {
            return Err(WindowSpecError::Range(s.to_string()));
        }
        Ok(Self {
            label: s.to_string(),
            millis,
        })
    }

    /// Parses a comma-separated list, sorted by length, without duplicates.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, WindowSpecError> {
        let mut out: Vec<Self> = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let w = Self::parse(part)?;
            if out.iter().any(|o| o.millis == w.millis) {
                return Err(WindowSpecError::Duplicate(w.label));
            }
            out.push(w);
        }
        if out.is_empty() {
            return Err(WindowSpecError::Empty);
        }
        out.sort_by_key(|w| w.millis);
        Ok(out)
    }

    /// Start of the window holding `t_ms`.
    #[inline]
    pub fn start_of(&self, t_ms: u64) -> u64 {
        t_ms - t_ms % self.millis
    }
}

/// The default windows: 1s, 10s, 60s.
pub fn default_windows() -> Vec<WindowSpec> {
    WindowSpec::parse_list("1s,10s,60s").expect("valid default windows")
}

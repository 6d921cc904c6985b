//! The agents' own protocols (Influx line protocol, Prometheus remote write, OTLP over HTTP and
//! gRPC) turned into our samples, so those agents can send here unchanged.
//!
//! Each protocol module parses its body and reports every value it finds to a [`Batch`]: the
//! server it belongs to, its time, its metric name (the protocol's name with the chosen labels
//! folded in, see [`Mapping`]) and its number. The batch groups values by server and time into
//! samples (one sample per server and timestamp, split at `--max-metrics` leaves), and counts
//! whatever it cannot carry by [`Uncarried`] reason: nothing is dropped silently. The samples
//! are then stored like a JSON request's (one stream entry, acknowledged only once Redis has
//! it), and the counts go to [`ProtocolStats`] (`ingest_protocol_values_total` on the admin
//! listener) and, for OTLP, into the partial-success answer.

pub mod grpc;
pub mod influx;
pub mod otlp;
pub mod otlp_proto;
pub mod remote_write;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics_edge::http::Refusal;
use metrics_model::decode::{valid_name, Limits, MAX_NAME_LEN};
use metrics_model::{Metrics, Sample};

/// How protocol data becomes samples: the choices people disagree on (`--otlp-server-attributes`,
/// `--prom-server-label`, `--influx-server-tag`, `--default-server-id`, `--fold-labels`,
/// `--ignore-labels`, `--histogram-quantiles`).
#[derive(Clone, Debug)]
pub struct Mapping {
    /// OTLP resource attributes tried in order for the server id.
    pub otlp_server: Vec<String>,
    /// The Prometheus label holding the server id.
    pub prom_server: String,
    /// The Influx tag holding the server id.
    pub influx_server: String,
    /// The server id of values that carry none; without it they are not carried.
    pub default_server: Option<String>,
    /// Labels (point attributes, tags) folded into the metric name.
    pub fold: Fold,
    /// Labels never folded (with [`Fold::All`]).
    pub ignore: Vec<String>,
    /// Quantiles reported for histograms, as fractions (0.5, 0.99).
    pub quantiles: Vec<f64>,
}

impl Default for Mapping {
    fn default() -> Self {
        Self {
            otlp_server: vec!["host.name".into(), "service.instance.id".into()],
            prom_server: "instance".into(),
            influx_server: "host".into(),
            default_server: None,
            fold: Fold::All,
            ignore: vec!["job".into()],
            quantiles: vec![0.5, 0.9, 0.99],
        }
    }
}

/// Which labels are folded into metric names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fold {
    /// Every label but the server's and the ignored ones, in key order.
    All,
    /// These labels, in this order, when present.
    Only(Vec<String>),
}

impl Fold {
    /// `*`, or a comma-separated list (empty: fold none).
    pub fn parse(s: &str) -> Self {
        if s.trim() == "*" {
            Fold::All
        } else {
            Fold::Only(list(s))
        }
    }
}

/// A comma-separated list, trimmed, without empty items.
pub fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

/// Parses `--histogram-quantiles`: fractions in (0, 1).
pub fn parse_quantiles(s: &str) -> Result<Vec<f64>, String> {
    list(s)
        .iter()
        .map(|q| match q.parse::<f64>() {
            Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
            _ => Err(format!("quantile `{q}` is not a fraction between 0 and 1")),
        })
        .collect()
}

/// The protocols, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Influx,
    RemoteWrite,
    OtlpHttp,
    OtlpGrpc,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::Influx,
        Protocol::RemoteWrite,
        Protocol::OtlpHttp,
        Protocol::OtlpGrpc,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Influx => "influx",
            Protocol::RemoteWrite => "remote_write",
            Protocol::OtlpHttp => "otlp_http",
            Protocol::OtlpGrpc => "otlp_grpc",
        }
    }
}

/// Why a value was not carried into a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uncarried {
    /// No server id: none of the labels named for it, and no `--default-server-id`.
    NoServerId,
    /// The server id, made of valid characters, is still over 128 bytes.
    ServerIdTooLong,
    /// The metric name with its folded labels is over 128 bytes.
    NameTooLong,
    /// A second value of the same name, server and time (labels left unfolded differ).
    Duplicate,
    /// Not a finite number (a string field, NaN, a Prometheus staleness marker).
    NotANumber,
    /// No value (OTLP's "no recorded value", a metric without data).
    NoValue,
    /// A kind the mapping does not carry (Prometheus native histograms).
    Unsupported,
    /// A time before the epoch.
    BadTimestamp,
}

impl Uncarried {
    pub const ALL: [Uncarried; 8] = [
        Uncarried::NoServerId,
        Uncarried::ServerIdTooLong,
        Uncarried::NameTooLong,
        Uncarried::Duplicate,
        Uncarried::NotANumber,
        Uncarried::NoValue,
        Uncarried::Unsupported,
        Uncarried::BadTimestamp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Uncarried::NoServerId => "no_server_id",
            Uncarried::ServerIdTooLong => "server_id_too_long",
            Uncarried::NameTooLong => "name_too_long",
            Uncarried::Duplicate => "duplicate",
            Uncarried::NotANumber => "not_a_number",
            Uncarried::NoValue => "no_value",
            Uncarried::Unsupported => "unsupported",
            Uncarried::BadTimestamp => "bad_timestamp",
        }
    }

    fn explain(self) -> &'static str {
        match self {
            Uncarried::NoServerId => "no server id (see --otlp-server-attributes, --prom-server-label, --influx-server-tag, --default-server-id)",
            Uncarried::ServerIdTooLong => "server id over 128 bytes",
            Uncarried::NameTooLong => "metric name with its folded labels over 128 bytes",
            Uncarried::Duplicate => "same name, server and time as another value (see --fold-labels)",
            Uncarried::NotANumber => "not a finite number",
            Uncarried::NoValue => "no recorded value",
            Uncarried::Unsupported => "a kind not carried (native histogram)",
            Uncarried::BadTimestamp => "time before 1970",
        }
    }
}

/// Values carried and not carried, by protocol and reason (`ingest_protocol_values_total`).
#[derive(Debug, Default)]
pub struct ProtocolStats {
    carried: [AtomicU64; 4],
    uncarried: [[AtomicU64; 8]; 4],
}

impl ProtocolStats {
    fn add(&self, p: Protocol, counts: &Counts) {
        let i = Protocol::ALL.iter().position(|x| *x == p).unwrap_or(0);
        self.carried[i].fetch_add(counts.carried, Ordering::Relaxed);
        for (j, n) in counts.uncarried.iter().enumerate() {
            if *n > 0 {
                self.uncarried[i][j].fetch_add(*n, Ordering::Relaxed);
            }
        }
    }

    /// `(protocol, outcome, count)`: outcome `carried` or an [`Uncarried`] name.
    pub fn rows(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (i, p) in Protocol::ALL.iter().enumerate() {
            out.push((p.name(), "carried", self.carried[i].load(Ordering::Relaxed)));
            for (j, r) in Uncarried::ALL.iter().enumerate() {
                out.push((
                    p.name(),
                    r.name(),
                    self.uncarried[i][j].load(Ordering::Relaxed),
                ));
            }
        }
        out
    }

    /// Values of `p` not carried for `reason` so far.
    pub fn uncarried(&self, p: Protocol, reason: Uncarried) -> u64 {
        let i = Protocol::ALL.iter().position(|x| *x == p).unwrap_or(0);
        let j = Uncarried::ALL
            .iter()
            .position(|x| *x == reason)
            .unwrap_or(0);
        self.uncarried[i][j].load(Ordering::Relaxed)
    }
}

/// What one request carried and did not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub carried: u64,
    pub uncarried: [u64; 8],
}

impl Counts {
    /// Values not carried.
    pub fn rejected(&self) -> u64 {
        self.uncarried.iter().sum()
    }

    /// What was not carried, for a partial-success message; empty when everything was.
    pub fn message(&self) -> String {
        Uncarried::ALL
            .iter()
            .zip(self.uncarried)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{n} values: {}", r.explain()))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// One request's samples and counts.
#[derive(Debug)]
pub struct Mapped {
    pub samples: Vec<Sample>,
    pub counts: Counts,
}

struct Group {
    server: String,
    timestamp: u64,
    metrics: Vec<(String, f64)>,
}

/// Collects one request's values into samples.
pub struct Batch<'m> {
    pub mapping: &'m Mapping,
    arrival_ms: u64,
    groups: Vec<Group>,
    index: HashMap<(String, u64), usize>,
    /// The group of the previous value: protocols send a server's values of one time
    /// together, so most values find their group without hashing or allocating a key.
    last: Option<usize>,
    counts: Counts,
}

impl<'m> Batch<'m> {
    pub fn new(mapping: &'m Mapping, arrival_ms: u64) -> Self {
        Self {
            mapping,
            arrival_ms,
            groups: Vec::new(),
            index: HashMap::new(),
            last: None,
            counts: Counts::default(),
        }
    }

    /// Counts `n` values not carried.
    pub fn skip(&mut self, reason: Uncarried, n: u64) {
        let j = Uncarried::ALL
            .iter()
            .position(|x| *x == reason)
            .unwrap_or(0);
        self.counts.uncarried[j] += n;
    }

    /// Values so far (carried or not).
    pub fn seen(&self) -> u64 {
        self.counts.carried + self.counts.rejected()
    }

    /// The server id for `found` (a label's value), else the default; sanitised to our rules.
    pub fn server(&self, found: Option<&str>) -> Result<String, Uncarried> {
        let raw = match found.filter(|s| !s.is_empty()) {
            Some(s) => s,
            None => self
                .mapping
                .default_server
                .as_deref()
                .ok_or(Uncarried::NoServerId)?,
        };
        let id = sanitize(raw);
        if id.len() > MAX_NAME_LEN {
            return Err(Uncarried::ServerIdTooLong);
        }
        Ok(id)
    }

    /// Milliseconds for a protocol time in nanoseconds (0: the arrival time).
    pub fn time_from_nanos(&self, ns: u64) -> u64 {
        if ns == 0 {
            self.arrival_ms
        } else {
            ns / 1_000_000
        }
    }

    /// The arrival time, for values without a time.
    pub fn arrival_ms(&self) -> u64 {
        self.arrival_ms
    }

    /// The index of the group of `server` at `timestamp`, created if new.
    fn group(&mut self, server: &str, timestamp: u64) -> usize {
        if let Some(i) = self.last {
            let g = &self.groups[i];
            if g.timestamp == timestamp && g.server == server {
                return i;
            }
        }
        let key = (server.to_string(), timestamp);
        let i = match self.index.get(&key) {
            Some(i) => *i,
            None => {
                self.groups.push(Group {
                    server: key.0.clone(),
                    timestamp,
                    metrics: Vec::new(),
                });
                self.index.insert(key, self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        self.last = Some(i);
        i
    }

    /// Adds one value; a name or value it cannot carry is counted. (A name already given for
    /// the same server and time is found, and counted, by [`Batch::finish`].)
    pub fn value(&mut self, server: &str, timestamp: u64, name: Result<String, Uncarried>, v: f64) {
        let name = match name {
            Ok(n) => n,
            Err(r) => return self.skip(r, 1),
        };
        if !v.is_finite() {
            return self.skip(Uncarried::NotANumber, 1);
        }
        let i = self.group(server, timestamp);
        self.groups[i].metrics.push((name, v));
        self.counts.carried += 1;
    }

    /// The samples (a group of more than `limits.max_metrics` values becomes several samples of
    /// the same server and time), or 413 when there are more than `limits.max_batch`.
    pub fn finish(mut self, limits: Limits) -> Result<Mapped, Refusal> {
        let dups: u64 = self
            .groups
            .iter_mut()
            .map(|g| drop_duplicates(&mut g.metrics))
            .sum();
        self.counts.carried -= dups;
        self.skip(Uncarried::Duplicate, dups);
        let per = limits.max_metrics.max(1);
        let total: usize = self
            .groups
            .iter()
            .map(|g| g.metrics.len().div_ceil(per))
            .sum();
        if total > limits.max_batch {
            return Err(Refusal::TooLarge(format!(
                "the request's {} values make {total} samples (one per server and timestamp, {per} values each at most), over the limit of {} samples per request (--max-batch); send fewer points per request",
                self.counts.carried, limits.max_batch
            )));
        }
        let mut samples = Vec::with_capacity(total);
        for g in self.groups {
            for chunk in g.metrics.chunks(per) {
                let mut m = Metrics::with_capacity(chunk.len());
                for (n, v) in chunk {
                    m.push("", n, *v);
                }
                samples.push(Sample {
                    server_id: g.server.clone(),
                    timestamp: g.timestamp,
                    metrics: m,
                });
            }
        }
        Ok(Mapped {
            samples,
            counts: self.counts,
        })
    }
}

/// Removes the values whose name came earlier in `metrics` (the first stays); how many.
fn drop_duplicates(metrics: &mut Vec<(String, f64)>) -> u64 {
    let n = metrics.len();
    // The usual case, no duplicate among a few values, is found without allocating (as
    // `Metrics::find_duplicate` does); only then are the names sorted.
    let maybe = n > 24 || (1..n).any(|i| (0..i).any(|j| metrics[j].0 == metrics[i].0));
    if !maybe {
        return 0;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_unstable_by(|a, b| metrics[*a].0.cmp(&metrics[*b].0).then(a.cmp(b)));
    let mut dup = vec![false; n];
    let mut found = 0;
    for w in order.windows(2) {
        if metrics[w[0]].0 == metrics[w[1]].0 {
            dup[w[1]] = true;
            found += 1;
        }
    }
    if found > 0 {
        let mut i = 0;
        metrics.retain(|_| {
            i += 1;
            !dup[i - 1]
        });
    }
    found
}

/// `s` with every byte outside `A-Z a-z 0-9 _ . : -` replaced by `_` (a whole UTF-8 character
/// becomes one `_`); empty stays empty.
pub fn sanitize(s: &str) -> String {
    if valid_name(s) {
        return s.to_string();
    }
    sanitize_chars(s)
}

fn sanitize_chars(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Builds metric names: the protocol's name, then `key_value` for each folded label, then an
/// optional suffix (`count`, `p99`), joined by `.`, each part sanitised.
pub struct Namer<'a> {
    mapping: &'a Mapping,
    /// The label holding the server id (never folded).
    server_label: &'a [String],
}

impl<'a> Namer<'a> {
    pub fn new(mapping: &'a Mapping, server_label: &'a [String]) -> Self {
        Self {
            mapping,
            server_label,
        }
    }

    /// The prefix of a name: `base` and the folded labels of `labels` (key, value).
    pub fn prefix<'l, V: AsRef<str>>(
        &self,
        base: &str,
        labels: impl Iterator<Item = (&'l str, V)>,
    ) -> String {
        let mut out = sanitize(base);
        if out.is_empty() {
            out.push('_');
        }
        match &self.mapping.fold {
            Fold::All => {
                let mut kept: Vec<(&str, V)> = labels
                    .filter(|(k, _)| {
                        !self.server_label.iter().any(|s| s == k)
                            && !self.mapping.ignore.iter().any(|s| s == k)
                    })
                    .collect();
                kept.sort_by(|a, b| a.0.cmp(b.0));
                for (k, v) in kept {
                    push_label(&mut out, k, v.as_ref());
                }
            }
            Fold::Only(keys) => {
                let all: Vec<(&str, V)> = labels.collect();
                for k in keys {
                    if let Some((_, v)) = all.iter().find(|(key, _)| key == k) {
                        push_label(&mut out, k, v.as_ref());
                    }
                }
            }
        }
        out
    }

    /// `prefix` with `suffix` (sanitised), checked against the name rules.
    pub fn name(prefix: &str, suffix: Option<&str>) -> Result<String, Uncarried> {
        let mut n = prefix.to_string();
        if let Some(s) = suffix {
            n.push('.');
            push_sanitized(&mut n, s);
        }
        if n.len() > MAX_NAME_LEN {
            return Err(Uncarried::NameTooLong);
        }
        Ok(n)
    }
}

fn push_label(out: &mut String, k: &str, v: &str) {
    out.push('.');
    push_sanitized(out, k);
    out.push('_');
    push_sanitized(out, v);
}

fn push_sanitized(out: &mut String, s: &str) {
    if valid_name(s) {
        out.push_str(s);
    } else {
        out.push_str(&sanitize_chars(s));
    }
}

/// The suffix of quantile `q`: `p50`, `p99`, `p99_9`.
pub fn quantile_suffix(q: f64) -> String {
    let pct = format!("{:.4}", q * 100.0);
    let pct = pct.trim_end_matches('0').trim_end_matches('.');
    format!("p{}", pct.replace('.', "_"))
}

/// Estimates quantile `q` from buckets `(upper bound, count)` in ascending order (the last
/// bound may be infinite), interpolating linearly inside the bucket, as Prometheus's
/// `histogram_quantile` does; `lowest` is the lower bound of the first bucket. `None` when
/// there are no observations.
pub fn bucket_quantile(q: f64, lowest: f64, buckets: &[(f64, u64)]) -> Option<f64> {
    let total: u64 = buckets.iter().map(|b| b.1).sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    let mut lower = lowest;
    for (i, &(upper, n)) in buckets.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            if upper.is_infinite() {
                // Above the last finite bound: that bound is the best estimate.
                return Some(lower);
            }
            if i == 0 && lower.is_infinite() {
                return Some(upper);
            }
            let frac = (rank - below as f64) / n as f64;
            return Some(lower + (upper - lower) * frac);
        }
        below += n;
        lower = upper;
    }
    buckets.iter().rev().find(|b| b.0.is_finite()).map(|b| b.0)
}

/// `204 No Content`: Influx's and remote write's answer to a stored request.
pub fn no_content() -> http::Response<metrics_edge::http::Body> {
    let mut r = http::Response::new(metrics_edge::http::empty());
    *r.status_mut() = http::StatusCode::NO_CONTENT;
    r
}

/// A protocol's mapped request, stored like a JSON request's: one entry, acknowledged only
/// once Redis has it. Counts what was and was not carried either way (a refused request
/// carried nothing: its values are counted by whoever refused it).
pub async fn store_mapped(
    front: &super::Front,
    protocol: Protocol,
    mapped: &Mapped,
    arrival_ms: u64,
) -> Result<(), Refusal> {
    if !mapped.samples.is_empty() {
        super::store(front, &mapped.samples, arrival_ms).await?;
    }
    front.protocols.add(protocol, &mapped.counts);
    Ok(())
}

/// `server@timestamp name=value` for each value of `m` (for tests).
#[cfg(test)]
pub(crate) fn flat(m: &Mapped) -> Vec<String> {
    m.samples
        .iter()
        .flat_map(|s| {
            s.metrics
                .iter()
                .map(|(n, v)| format!("{}@{} {n}={v}", s.server_id, s.timestamp))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_group_by_server_and_time_and_split_past_the_leaf_limit() {
        let m = Mapping::default();
        let mut b = Batch::new(&m, 1000);
        for i in 0..300 {
            b.value("a", 5, Ok(format!("m{i}")), i as f64);
        }
        b.value("a", 6, Ok("m0".into()), 1.0);
        b.value("a", 6, Ok("m0".into()), 2.0);
        b.value("b", 5, Ok("x".into()), f64::NAN);
        b.value("b", 5, Err(Uncarried::NameTooLong), 1.0);
        let out = b.finish(Limits::default()).expect("mapped");
        let sizes: Vec<_> = out
            .samples
            .iter()
            .map(|s| (s.server_id.as_str(), s.timestamp, s.metrics.len()))
            .collect();
        assert_eq!(sizes, [("a", 5, 256), ("a", 5, 44), ("a", 6, 1)]);
        assert_eq!(out.counts.carried, 301);
        assert_eq!(out.counts.rejected(), 3);
        assert!(out
            .counts
            .message()
            .contains("1 values: not a finite number"));
    }

    #[test]
    fn a_repeated_name_keeps_its_first_value_and_is_counted_once_per_repeat() {
        let m = Mapping::default();
        let mut b = Batch::new(&m, 1000);
        b.value("a", 5, Ok("x".into()), 1.0);
        b.value("b", 5, Ok("y".into()), 1.0);
        b.value("a", 5, Ok("x".into()), 2.0);
        b.value("a", 5, Ok("x".into()), 3.0);
        let out = b.finish(Limits::default()).expect("mapped");
        assert_eq!(flat(&out), ["a@5 x=1", "b@5 y=1"]);
        assert_eq!(out.counts.carried, 2);
        let j = Uncarried::ALL
            .iter()
            .position(|x| *x == Uncarried::Duplicate)
            .expect("a duplicate reason");
        assert_eq!(out.counts.uncarried[j], 2);
        // More values than the quick scan looks at take the sorting path.
        let mut b = Batch::new(&m, 1000);
        for i in 0..30 {
            b.value("a", 5, Ok(format!("m{}", i % 20)), i as f64);
        }
        let out = b.finish(Limits::default()).expect("mapped");
        assert_eq!(out.counts.carried, 20);
        assert_eq!(out.counts.uncarried[j], 10);
        assert!(
            flat(&out).contains(&"a@5 m3=3".to_string()),
            "{:?}",
            flat(&out)
        );
    }

    #[test]
    fn names_fold_labels_in_key_order_without_the_server_label() {
        let m = Mapping::default();
        let server = vec!["instance".to_string()];
        let n = Namer::new(&m, &server);
        let p = n.prefix(
            "http requests",
            [
                ("status", "202".to_string()),
                ("instance", "h:1".to_string()),
                ("job", "x".to_string()),
                ("route", "/metrics".to_string()),
            ]
            .into_iter(),
        );
        assert_eq!(p, "http_requests.route__metrics.status_202");
        assert_eq!(
            Namer::name(&p, Some("p99")).as_deref(),
            Ok("http_requests.route__metrics.status_202.p99")
        );
        assert_eq!(
            Namer::name(&"x".repeat(129), None),
            Err(Uncarried::NameTooLong)
        );
    }

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        assert_eq!(quantile_suffix(0.5), "p50");
        assert_eq!(quantile_suffix(0.999), "p99_9");
        let b = [(10.0, 10), (20.0, 10), (f64::INFINITY, 0)];
        assert_eq!(bucket_quantile(0.5, 0.0, &b), Some(10.0));
        assert_eq!(bucket_quantile(0.75, 0.0, &b), Some(15.0));
        assert_eq!(bucket_quantile(0.5, 0.0, &[(1.0, 0)]), None);
        let tail = [(10.0, 1), (f64::INFINITY, 9)];
        assert_eq!(bucket_quantile(0.9, 0.0, &tail), Some(10.0));
    }
}

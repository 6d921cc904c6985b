//! The window roll-up both systems run: per (server, metric) and per metric across all servers
//! (`"*"`), for every configured window, with the latest value of each series for snapshots.
//!
//! System 2 runs one roll-up on its aggregator thread; System 1 runs one in each worker for the
//! partitions it owns. Same code, same windows, same events: the two systems publish the same
//! derived metrics for the same samples.
//!
//! Tumbling windows are aligned to wall-clock multiples of their length and a sample counts by
//! its arrival time at the ingest edge. A window closes when a sample from a later window is
//! added, or when [`Rollup::close_due`] runs after its end; a sample arriving for an already
//! closed window counts in the current one and is reported as `late`.
//!
//! # The all-servers series
//! A value is recorded once, in its server's series (every window). The `"*"` series of a
//! window is the merge of its servers' series at the window's close ([`WindowStats::merge`]:
//! the same sketch buckets, so the same quantiles, and the sum taken in another order). That is
//! one merge per series and window instead of a second record per value: at a few busy servers
//! the per-value work halves; with many servers sending a sample a second a merge (of a few
//! buckets) takes the place of the second record (10,000 agents measured no slower, see
//! BENCHMARKS.md). A value whose server series the budget refused goes to `"*"` directly.
//!
//! # Bounded state
//! Both what the roll-up keeps per server and per series are budgeted, and the budget is
//! checked before anything is created: at most `max_series` series and at most `max_servers`
//! servers (see [`Rollup::with_max_servers`]). A sample of a new server past the server budget
//! is not aggregated, and [`Rollup::add_reporting`] says so ([`Added::refused`]) so the caller can tell
//! the sender; servers silent for two of the longest windows are forgotten, which frees room.
//!
//! # Snapshots
//! [`Rollup::snapshot_view`] copies what a snapshot shows: per series a shared name and a
//! number, per window a shared, already encoded event, so the copy is reference counts and
//! floats. [`SnapshotView::encode`] (sorting and JSON) can then run on another thread than the
//! one that owns the roll-up.

use std::collections::HashMap;
use std::sync::Arc;

use crate::event;
use crate::sample::Sample;
use crate::window::{Summary, WindowSpec, WindowStats};

/// One closed window of one server (or `"*"`), encoded as a `window` event.
#[derive(Clone, Debug)]
pub struct ClosedWindow {
    pub server: Arc<str>,
    /// The window's label (`1s`), as in its `"window"` field.
    pub label: Arc<str>,
    pub json: Vec<u8>,
}

/// A snapshot asked for a server the roll-up has no data for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no data for server `{0}`")]
pub struct UnknownServer(pub String);

/// Counters of a roll-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RollupCounts {
    pub samples: u64,
    pub late: u64,
    pub series: u64,
    pub series_refused: u64,
    /// Servers with state now.
    pub servers: u64,
    /// Samples not aggregated because their server was new and the server budget was spent.
    pub servers_refused: u64,
}

/// What one [`Rollup::add`] could not take.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Added {
    /// The first server refused for the server budget, and how many of the samples were
    /// refused for it (`0`: none).
    pub refused: Option<(Arc<str>, usize)>,
}

/// What a `snapshot` event shows, copied out of a [`Rollup`] to be encoded elsewhere.
pub struct SnapshotView {
    server: Option<String>,
    servers: Vec<ServerView>,
    all: Vec<Arc<[u8]>>,
}

struct ServerView {
    id: Arc<str>,
    last_ts: u64,
    metrics: Vec<(Arc<str>, f64)>,
    windows: Vec<Arc<[u8]>>,
}

impl SnapshotView {
    /// Servers in the view.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// True when the view has no server.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The `snapshot` event (see [`event::SnapshotEncoder`]), servers sorted by id.
    pub fn encode(mut self, now_ms: u64) -> Vec<u8> {
        self.servers.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let mut snap = event::SnapshotEncoder::new(self.server.as_deref(), now_ms);
        for s in &self.servers {
            snap.server(
                &s.id,
                Some(s.last_ts),
                None,
                s.metrics.iter().map(|(name, v)| (&**name, *v)),
                s.windows.iter().map(|w| &w[..]),
            );
        }
        snap.finish(self.all.iter().map(|w| &w[..]))
    }
}

struct Series {
    stats: Vec<WindowStats>,
    last: f64,
    /// A server's series: where the all-servers series of the same name is in
    /// `Rollup::global` (its list only grows), so that look-up is made once, not per value.
    global: Option<usize>,
}

impl Series {
    fn record(&mut self, v: f64) {
        self.last = v;
        for st in &mut self.stats {
            st.record(v);
        }
    }
}

/// Series in first-seen order, found by name (shared with snapshot views).
#[derive(Default)]
struct SeriesSet {
    index: HashMap<Arc<str>, usize>,
    list: Vec<(Arc<str>, Series)>,
}

impl SeriesSet {
    /// Where the series `name` is in the list, made if the budget allows.
    fn index_of(&mut self, name: &str, windows: usize, budget: &mut Budget<'_>) -> Option<usize> {
        if let Some(&i) = self.index.get(name) {
            return Some(i);
        }
        if !budget.take() {
            return None;
        }
        let name: Arc<str> = Arc::from(name);
        let i = self.list.len();
        self.index.insert(name.clone(), i);
        self.list.push((
            name,
            Series {
                stats: (0..windows).map(|_| WindowStats::default()).collect(),
                last: 0.0,
                global: None,
            },
        ));
        Some(i)
    }

    fn summaries(&self, w: usize) -> Vec<(&str, Summary)> {
        self.list
            .iter()
            .filter_map(|(n, s)| s.stats[w].summary().map(|x| (&**n, x)))
            .collect()
    }

    fn reset(&mut self, w: usize) {
        for (_, s) in &mut self.list {
            s.stats[w].reset();
        }
    }
}

struct Budget<'a> {
    left: &'a mut usize,
    counts: &'a mut RollupCounts,
}

impl Budget<'_> {
    fn take(&mut self) -> bool {
        if *self.left == 0 {
            self.counts.series_refused += 1;
            return false;
        }
        *self.left -= 1;
        self.counts.series += 1;
        true
    }
}

struct ServerState {
    id: Arc<str>,
    last_ts: u64,
    last_arrival: u64,
    series: SeriesSet,
    /// Where the series of the server's last sample are in `series.list`, in that sample's
    /// order (`NO_SERIES`: refused for the budget). An agent sends the same names in the same
    /// order sample after sample, so a name compare here replaces a hash look-up per value.
    layout: Vec<usize>,
    /// The last `window` event of each window length, for snapshots.
    last_windows: Vec<Option<Arc<[u8]>>>,
}

/// A layout slot whose name has no series (refused for the budget): looked up every time.
const NO_SERIES: usize = usize::MAX;

/// Servers in first-seen order, found by id. The order makes a close deterministic: the
/// all-servers sums are added up server by server, and two roll-ups given the same samples
/// must publish the same bytes (a hash map's order differs from one map to the next).
#[derive(Default)]
struct Servers {
    index: HashMap<Arc<str>, usize>,
    list: Vec<ServerState>,
}

impl Servers {
    fn len(&self) -> usize {
        self.list.len()
    }

    fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    fn get(&self, id: &str) -> Option<&ServerState> {
        self.index.get(id).map(|&i| &self.list[i])
    }

    /// The server `id`, made with `make` if it is new.
    fn get_or_insert_with(
        &mut self,
        id: &str,
        make: impl FnOnce(Arc<str>) -> ServerState,
    ) -> &mut ServerState {
        let i = match self.index.get(id) {
            Some(&i) => i,
            None => {
                let id: Arc<str> = Arc::from(id);
                self.index.insert(id.clone(), self.list.len());
                self.list.push(make(id));
                self.list.len() - 1
            }
        };
        &mut self.list[i]
    }

    /// Keeps the servers `keep` says to, in their order.
    fn retain(&mut self, keep: impl FnMut(&ServerState) -> bool) {
        let before = self.list.len();
        self.list.retain(keep);
        if self.list.len() != before {
            self.index.clear();
            for (i, s) in self.list.iter().enumerate() {
                self.index.insert(s.id.clone(), i);
            }
        }
    }
}

/// Window state for a set of servers.
pub struct Rollup {
    windows: Vec<WindowSpec>,
    /// Each window's label, shared by its closed windows.
    labels: Vec<Arc<str>>,
    current: Vec<u64>,
    servers: Servers,
    global: SeriesSet,
    global_last: Vec<Option<Arc<[u8]>>>,
    series_left: usize,
    max_servers: usize,
    counts: RollupCounts,
    star: Arc<str>,
}

impl Rollup {
    /// A roll-up over `windows`, keeping at most `max_series` series (and as many servers,
    /// unless [`Rollup::with_max_servers`] says otherwise), starting at `now_ms`.
    pub fn new(windows: Vec<WindowSpec>, max_series: usize, now_ms: u64) -> Self {
        let n = windows.len();
        Self {
            current: windows.iter().map(|w| w.start_of(now_ms)).collect(),
            labels: windows
                .iter()
                .map(|w| Arc::from(w.label.as_str()))
                .collect(),
            windows,
            servers: Servers::default(),
            global: SeriesSet::default(),
            global_last: vec![None; n],
            series_left: max_series,
            max_servers: max_series,
            counts: RollupCounts::default(),
            star: Arc::from("*"),
        }
    }

    /// Keeps state for at most `max_servers` servers at once.
    pub fn with_max_servers(mut self, max_servers: usize) -> Self {
        self.max_servers = max_servers;
        self
    }

    /// Counters so far.
    pub fn counts(&self) -> RollupCounts {
        self.counts
    }

    /// When the next window is due to close (ms since the epoch), before any grace.
    pub fn next_close(&self) -> u64 {
        self.windows
            .iter()
            .zip(&self.current)
            .map(|(w, &start)| start + w.millis)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Adds samples that arrived at `arrival_ms`; windows it closes go to `out`. Samples
    /// refused for the server budget are only counted (see [`Rollup::add_reporting`]).
    pub fn add(&mut self, arrival_ms: u64, samples: &[Sample], out: &mut Vec<ClosedWindow>) {
        self.add_reporting(arrival_ms, samples, out);
    }

    /// [`Rollup::add`], returning what it refused for the server budget, so the caller can
    /// tell the sender.
    pub fn add_reporting(
        &mut self,
        arrival_ms: u64,
        samples: &[Sample],
        out: &mut Vec<ClosedWindow>,
    ) -> Added {
        let t = arrival_ms;
        for w in 0..self.windows.len() {
            if t >= self.current[w] + self.windows[w].millis {
                self.close(w, t, out);
            } else if t < self.current[w] {
                self.counts.late += samples.len() as u64;
            }
        }
        let nw = self.windows.len();
        let mut budget = Budget {
            left: &mut self.series_left,
            counts: &mut self.counts,
        };
        let mut added = Added::default();
        for s in samples {
            // The budget is checked before any state is made (the look-up only when full).
            if self.servers.len() >= self.max_servers
                && !self.servers.contains(s.server_id.as_str())
            {
                budget.counts.servers_refused += 1;
                match &mut added.refused {
                    Some((_, n)) => *n += 1,
                    None => added.refused = Some((Arc::from(s.server_id.as_str()), 1)),
                }
                continue;
            }
            let server = self
                .servers
                .get_or_insert_with(&s.server_id, |id| ServerState {
                    id,
                    last_ts: 0,
                    last_arrival: 0,
                    series: SeriesSet::default(),
                    layout: Vec::new(),
                    last_windows: vec![None; nw],
                });
            server.last_ts = s.timestamp;
            server.last_arrival = t;
            server.layout.truncate(s.metrics.len());
            for (i, (name, v)) in s.metrics.iter().enumerate() {
                // The server's series first, then the all-servers one, each within the budget;
                // a server's series remembers where the other is.
                let slot = match server.layout.get(i) {
                    Some(&at) if at != NO_SERIES && &*server.series.list[at].0 == name => Some(at),
                    _ => {
                        let at = server.series.index_of(name, nw, &mut budget);
                        let entry = at.unwrap_or(NO_SERIES);
                        match server.layout.get_mut(i) {
                            Some(x) => *x = entry,
                            None => server.layout.push(entry),
                        }
                        at
                    }
                };
                match slot {
                    // The all-servers series gets the server's window at its close (a merge per
                    // series and window, not a record per value).
                    Some(at) => {
                        let series = &mut server.series.list[at].1;
                        series.record(v);
                        if series.global.is_none() {
                            series.global = self.global.index_of(name, nw, &mut budget);
                        }
                    }
                    // No series of the server's own (budget): straight to the all-servers one.
                    None => {
                        if let Some(g) = self.global.index_of(name, nw, &mut budget) {
                            self.global.list[g].1.record(v);
                        }
                    }
                }
            }
        }
        self.counts.samples += samples.len() as u64;
        self.counts.servers = self.servers.len() as u64;
        added
    }

    /// Closes every window whose end plus `grace_ms` is at or before `now_ms`.
    pub fn close_due(&mut self, now_ms: u64, grace_ms: u64, out: &mut Vec<ClosedWindow>) {
        for w in 0..self.windows.len() {
            if now_ms >= self.current[w] + self.windows[w].millis + grace_ms {
                self.close(w, now_ms, out);
            }
        }
    }

    /// Emits and resets window `w`, then moves it to the window holding `now`.
    fn close(&mut self, w: usize, now: u64, out: &mut Vec<ClosedWindow>) {
        let spec = &self.windows[w];
        let (start, end) = (self.current[w], self.current[w] + spec.millis);
        let label = spec.label.as_str();
        for server in &mut self.servers.list {
            let stats = server.series.summaries(w);
            if stats.is_empty() {
                continue;
            }
            let json = event::to_vec(|b| event::window(b, label, &server.id, start, end, stats));
            server.last_windows[w] = Some(Arc::from(&json[..]));
            out.push(ClosedWindow {
                server: server.id.clone(),
                label: self.labels[w].clone(),
                json,
            });
            for (_, series) in &server.series.list {
                if let Some(g) = series.global {
                    self.global.list[g].1.stats[w].merge(&series.stats[w]);
                }
            }
            server.series.reset(w);
        }
        let stats = self.global.summaries(w);
        if !stats.is_empty() {
            let json = event::to_vec(|b| event::window(b, label, "*", start, end, stats));
            self.global_last[w] = Some(Arc::from(&json[..]));
            out.push(ClosedWindow {
                server: self.star.clone(),
                label: self.labels[w].clone(),
                json,
            });
            self.global.reset(w);
        }
        self.current[w] = spec.start_of(now);
        if w + 1 == self.windows.len() {
            self.evict_idle(now);
        }
    }

    /// Forgets servers silent for two of the longest windows, so memory follows live servers.
    fn evict_idle(&mut self, now: u64) {
        let longest = self.windows.last().map_or(0, |w| w.millis);
        let mut freed = 0usize;
        self.servers.retain(|s| {
            let keep = now.saturating_sub(s.last_arrival) < 2 * longest;
            if !keep {
                freed += s.series.list.len();
            }
            keep
        });
        self.series_left += freed;
        self.counts.series -= freed as u64;
        self.counts.servers = self.servers.len() as u64;
    }

    /// The `snapshot` event (see [`event::SnapshotEncoder`]): latest value of every metric
    /// and the last closed window of each length, for `server` or for all.
    pub fn snapshot(&self, server: Option<&str>, now_ms: u64) -> Result<Vec<u8>, UnknownServer> {
        Ok(self.snapshot_view(server)?.encode(now_ms))
    }

    /// What [`Rollup::snapshot`] shows, copied (reference counts and numbers) to be encoded
    /// with [`SnapshotView::encode`], on another thread if need be.
    pub fn snapshot_view(&self, server: Option<&str>) -> Result<SnapshotView, UnknownServer> {
        let view = |s: &ServerState| ServerView {
            id: s.id.clone(),
            last_ts: s.last_ts,
            metrics: s
                .series
                .list
                .iter()
                .map(|(name, series)| (name.clone(), series.last))
                .collect(),
            windows: s.last_windows.iter().flatten().cloned().collect(),
        };
        let servers = match server {
            Some(id) => match self.servers.get(id) {
                Some(s) => vec![view(s)],
                None => return Err(UnknownServer(id.to_string())),
            },
            None => self.servers.list.iter().map(view).collect(),
        };
        let all = match server {
            None => self.global_last.iter().flatten().cloned().collect(),
            Some(_) => Vec::new(),
        };
        Ok(SnapshotView {
            server: server.map(str::to_string),
            servers,
            all,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Decoder;

    fn samples(body: &str, ts: u64) -> Vec<Sample> {
        Decoder::default()
            .decode_ndjson(&mut body.as_bytes().to_vec(), ts)
            .expect("valid")
    }

    /// The `"*"` window of `out` for `label`, as text.
    fn star(out: &[ClosedWindow], label: &str) -> String {
        let w = out
            .iter()
            .find(|w| &*w.server == "*" && &*w.label == label)
            .expect("a * window");
        String::from_utf8(w.json.clone()).expect("utf-8")
    }

    /// A server's series remembers where the all-servers series is; one the budget refused at
    /// first is looked up again on later values, and made once the budget has room.
    #[test]
    fn all_servers_series_follow_each_value_and_the_budget() {
        let t0 = 1_764_349_200_000;
        let mut r = Rollup::new(WindowSpec::parse_list("1s").expect("windows"), 3, t0);
        let mut out = Vec::new();
        // a.x, *.x, a.y take the budget of 3; *.y is refused.
        let body = r#"{"serverId":"a","metrics":{"x":1,"y":2}}"#;
        r.add_reporting(t0 + 10, &samples(body, t0 + 10), &mut out);
        r.add_reporting(t0 + 20, &samples(body, t0 + 20), &mut out);
        assert_eq!(r.counts().series_refused, 2, "*.y refused at each value");
        r.close_due(t0 + 2_000, 0, &mut out);
        let w = star(&out, "1s");
        assert!(w.contains(r#""x""#) && !w.contains(r#""y""#), "{w}");
        assert!(w.contains(r#""count":2"#), "both values of x: {w}");

        // Silent for two windows, a is forgotten; its two series go back to the budget, which
        // b's sample then spends on b.y and *.y.
        out.clear();
        let later = t0 + 5_000;
        r.add_reporting(
            later,
            &samples(r#"{"serverId":"b","metrics":{"y":5}}"#, later),
            &mut out,
        );
        r.close_due(later + 2_000, 0, &mut out);
        assert_eq!(r.counts().servers, 0, "b forgotten by then too");
        let w = star(&out, "1s");
        assert!(w.contains(r#""y""#), "*.y made once there was room: {w}");
    }

    /// The per-server layout (the last sample's names in order) is only a short cut: samples
    /// whose names change order, number and set from one to the next give byte for byte the
    /// windows that the same values give one metric a sample (a look-up for every value).
    #[test]
    fn changing_layouts_give_the_windows_of_single_metric_samples() {
        use crate::sample::Metrics;
        let t0 = 1_764_349_200_000;
        let windows = WindowSpec::parse_list("1s,5s").expect("windows");
        // A budget that runs out on the way, so refused names are in the layouts too.
        let mut whole = Rollup::new(windows.clone(), 40, t0);
        let mut single = Rollup::new(windows, 40, t0);
        let (mut out_whole, mut out_single) = (Vec::new(), Vec::new());
        let names = [
            "cpu", "mem", "disk", "net.in", "net.out", "load", "temp", "cpu.x",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for k in 0..3_000u64 {
            let server = format!("srv-{}", next(5));
            // Most samples keep their server's usual layout; some drop, add or swap names.
            let mut chosen: Vec<usize> = (0..names.len()).collect();
            if next(4) == 0 {
                let a = next(names.len() as u64) as usize;
                let b = next(names.len() as u64) as usize;
                chosen.swap(a, b);
                chosen.truncate(1 + next(names.len() as u64) as usize);
            }
            let t = t0 + k * 3;
            let mut metrics = Metrics::with_capacity(chosen.len());
            for &m in &chosen {
                metrics.push("", names[m], (next(10_000) as f64) / 7.0 - 300.0);
            }
            for (name, v) in metrics.iter() {
                let mut one = Metrics::with_capacity(1);
                one.push("", name, v);
                let s = Sample {
                    server_id: server.clone(),
                    timestamp: t,
                    metrics: one,
                };
                single.add(t, &[s], &mut out_single);
            }
            let s = Sample {
                server_id: server,
                timestamp: t,
                metrics,
            };
            whole.add(t, &[s], &mut out_whole);
        }
        let end = t0 + 20_000;
        whole.close_due(end, 0, &mut out_whole);
        single.close_due(end, 0, &mut out_single);
        assert!(whole.counts().series_refused > 0, "the budget ran out");
        assert_eq!(whole.counts().series, single.counts().series);
        assert!(out_whole.len() > 20, "{} windows", out_whole.len());
        assert_eq!(out_whole.len(), out_single.len());
        // Servers close in hash order, which differs between two maps.
        out_whole.sort_by(|a, b| a.json.cmp(&b.json));
        out_single.sort_by(|a, b| a.json.cmp(&b.json));
        for (a, b) in out_whole.iter().zip(&out_single) {
            assert_eq!(
                String::from_utf8_lossy(&a.json),
                String::from_utf8_lossy(&b.json)
            );
        }
    }

    /// The `"*"` window is every server's values together: built from merges at the close, it
    /// equals statistics recorded value by value (integer values, so the sum is exact in any
    /// order), the values of a server whose own series the budget refused included.
    #[test]
    fn the_all_servers_window_holds_every_servers_values() {
        use crate::window::WindowStats;
        let t0 = 1_764_349_200_000;
        // Budget 7: a.x, *.x, b.x, c.x, d.x, e.x, f.x; g's own series is refused.
        let mut r = Rollup::new(WindowSpec::parse_list("1s,10s").expect("windows"), 7, t0);
        let mut out = Vec::new();
        let mut reference = WindowStats::default();
        for k in 0..700u64 {
            let server = ["a", "b", "c", "d", "e", "f", "g"][(k % 7) as usize];
            let v = ((k * 7919) % 1000) as f64 - 300.0;
            reference.record(v);
            let body = format!(r#"{{"serverId":"{server}","metrics":{{"x":{v}}}}}"#);
            let t = t0 + k;
            r.add(t, &samples(&body, t), &mut out);
        }
        assert!(r.counts().series_refused > 0, "g.x refused");
        r.close_due(t0 + 1_000, 0, &mut out);
        let want = event::to_vec(|b| {
            event::window(
                b,
                "1s",
                "*",
                t0,
                t0 + 1_000,
                vec![("x", reference.summary().expect("values"))],
            )
        });
        assert_eq!(star(&out, "1s"), String::from_utf8(want).expect("utf-8"));
    }
}

//! The in-memory aggregator: one thread that owns every window, fed through a lock-free ring.
//!
//! # Why lock-free here, and only here
//! Every connection task hands its decoded samples to the aggregator. With a mutex around the
//! window state, N busy connections would serialise on it, and a connection descheduled while
//! holding it would stall all the others. Instead the state has exactly one owner, the
//! aggregator thread, and connections push batches into a bounded crossbeam `ArrayQueue`
//! (a lock-free ring buffer): a push is a couple of atomic operations and never waits for
//! another connection. The aggregator pops batches without locking either, so window updates
//! run at full single-core speed with no synchronisation per sample. When the ring is full the
//! pushing connection waits (and so does its agent, through TCP): samples are never dropped.
//!
//! Sample events go from the connection straight to the dashboard hub, not through this thread,
//! so the aggregator adds nothing to ingest-to-dashboard latency.
//!
//! # Windows
//! Tumbling, aligned to wall-clock multiples of their length; a sample counts by its arrival
//! time at the ingest edge. A window closes when a sample from a later window arrives, or by
//! timer `CLOSE_GRACE_MS` after its end, so samples still in the ring at the boundary are
//! counted; the rare sample that arrives later still counts in the next window (`late`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use metrics_edge::hub::{Event, EventKind, Hub};
use metrics_model::event;
use metrics_model::window::{Summary, WindowSpec, WindowStats};
use metrics_model::{now_ms, Sample};

/// Time after a window's end before the timer closes it.
pub const CLOSE_GRACE_MS: u64 = 5;

/// Samples from one frame, stamped with their arrival time.
pub struct Batch {
    pub arrival_ms: u64,
    pub samples: Vec<Sample>,
}

/// Aggregator settings.
#[derive(Clone, Debug)]
pub struct AggregatorOptions {
    pub windows: Vec<WindowSpec>,
    /// Batches the hand-off ring holds.
    pub ring_capacity: usize,
    /// Most (server, metric) series kept; past it, new series are not aggregated (counted).
    pub max_series: usize,
}

impl Default for AggregatorOptions {
    fn default() -> Self {
        Self {
            windows: metrics_model::window::default_windows(),
            ring_capacity: 65_536,
            max_series: 1_000_000,
        }
    }
}

/// Counters, readable from any thread.
#[derive(Debug, Default)]
pub struct AggregatorStats {
    pub samples: AtomicU64,
    pub batches: AtomicU64,
    pub late: AtomicU64,
    pub windows_emitted: AtomicU64,
    pub series: AtomicU64,
    pub series_refused: AtomicU64,
    pub ring_full_waits: AtomicU64,
}

enum Command {
    Snapshot {
        server: Option<String>,
        reply: tokio::sync::oneshot::Sender<Result<Bytes, String>>,
    },
}

/// Handle to the aggregator thread.
pub struct Aggregator {
    ring: Arc<ArrayQueue<Batch>>,
    commands: Mutex<mpsc::Sender<Command>>,
    thread: Thread,
    join: Mutex<Option<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
    stats: Arc<AggregatorStats>,
}

impl Aggregator {
    /// Starts the aggregator thread; window events go to `hub`.
    pub fn start(opts: AggregatorOptions, hub: Arc<Hub>) -> std::io::Result<Arc<Self>> {
        let ring = Arc::new(ArrayQueue::new(opts.ring_capacity.max(1)));
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(AggregatorStats::default());
        let mut state = State::new(opts, hub, stats.clone());
        let (r, s) = (ring.clone(), stop.clone());
        let join = std::thread::Builder::new()
            .name("aggregator".into())
            .spawn(move || state.run(&r, &rx, &s))?;
        Ok(Arc::new(Self {
            ring,
            commands: Mutex::new(tx),
            thread: join.thread().clone(),
            join: Mutex::new(Some(join)),
            stop,
            stats,
        }))
    }

    /// Hands a batch to the aggregator, waiting while the ring is full.
    pub async fn submit(&self, mut batch: Batch) {
        loop {
            match self.ring.push(batch) {
                Ok(()) => {
                    self.thread.unpark();
                    return;
                }
                Err(b) => {
                    batch = b;
                    self.stats.ring_full_waits.fetch_add(1, Ordering::Relaxed);
                    self.thread.unpark();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }

    /// The latest values and closed windows of one server, or of all.
    pub async fn snapshot(&self, server: Option<String>) -> Result<Bytes, String> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let sent = self
            .commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Command::Snapshot { server, reply });
        if sent.is_err() {
            return Err("aggregator is shutting down".into());
        }
        self.thread.unpark();
        rx.await
            .unwrap_or_else(|_| Err("aggregator is shutting down".into()))
    }

    /// Counters.
    pub fn stats(&self) -> &AggregatorStats {
        &self.stats
    }

    /// Stops the thread after it has applied what is in the ring.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.thread.unpark();
        let join = self.join.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(j) = join {
            let _ = j.join();
        }
    }
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

struct Series {
    stats: Vec<WindowStats>,
    last: f64,
}

/// Series in first-seen order, found by name.
#[derive(Default)]
struct SeriesSet {
    index: HashMap<Box<str>, usize>,
    list: Vec<(Box<str>, Series)>,
}

impl SeriesSet {
    fn get_or_insert(
        &mut self,
        name: &str,
        windows: usize,
        budget: &mut Budget,
    ) -> Option<&mut Series> {
        if let Some(&i) = self.index.get(name) {
            return Some(&mut self.list[i].1);
        }
        if !budget.take() {
            return None;
        }
        self.index.insert(name.into(), self.list.len());
        self.list.push((
            name.into(),
            Series {
                stats: (0..windows).map(|_| WindowStats::default()).collect(),
                last: 0.0,
            },
        ));
        self.list.last_mut().map(|(_, s)| s)
    }

    fn summaries(&self, w: usize) -> Vec<(&str, Summary)> {
        self.list
            .iter()
            .filter_map(|(n, s)| s.stats[w].summary().map(|x| (&**n, x)))
            .collect()
    }
}

struct Budget<'a> {
    left: &'a mut usize,
    stats: &'a AggregatorStats,
}

impl Budget<'_> {
    fn take(&mut self) -> bool {
        if *self.left == 0 {
            self.stats.series_refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        *self.left -= 1;
        self.stats.series.fetch_add(1, Ordering::Relaxed);
        true
    }
}

struct ServerState {
    id: Arc<str>,
    last_ts: u64,
    last_arrival: u64,
    series: SeriesSet,
    /// The last `window` event of each window length, for snapshots.
    last_windows: Vec<Option<Bytes>>,
}

struct State {
    windows: Vec<WindowSpec>,
    labels: Vec<String>,
    current: Vec<u64>,
    servers: HashMap<Arc<str>, ServerState>,
    global: SeriesSet,
    global_last: Vec<Option<Bytes>>,
    hub: Arc<Hub>,
    stats: Arc<AggregatorStats>,
    series_left: usize,
    out: Vec<Event>,
}

impl State {
    fn new(opts: AggregatorOptions, hub: Arc<Hub>, stats: Arc<AggregatorStats>) -> Self {
        let now = now_ms();
        let n = opts.windows.len();
        Self {
            current: opts.windows.iter().map(|w| w.start_of(now)).collect(),
            labels: opts.windows.iter().map(|w| w.label.clone()).collect(),
            windows: opts.windows,
            servers: HashMap::new(),
            global: SeriesSet::default(),
            global_last: vec![None; n],
            hub,
            stats,
            series_left: opts.max_series,
            out: Vec::new(),
        }
    }

    fn run(
        &mut self,
        ring: &ArrayQueue<Batch>,
        commands: &mpsc::Receiver<Command>,
        stop: &AtomicBool,
    ) {
        loop {
            let mut did = 0usize;
            while let Some(batch) = ring.pop() {
                self.apply(&batch);
                did += 1;
                if did.is_multiple_of(1024) {
                    self.close_due(now_ms());
                }
            }
            while let Ok(cmd) = commands.try_recv() {
                self.command(cmd);
            }
            let now = now_ms();
            self.close_due(now);
            if stop.load(Ordering::Acquire) && ring.is_empty() {
                return;
            }
            if ring.is_empty() {
                let next = self.next_close();
                let wait = next.saturating_sub(now).clamp(1, 100);
                std::thread::park_timeout(Duration::from_millis(wait));
            }
        }
    }

    fn next_close(&self) -> u64 {
        self.windows
            .iter()
            .zip(&self.current)
            .map(|(w, &start)| start + w.millis + CLOSE_GRACE_MS)
            .min()
            .unwrap_or(u64::MAX)
    }

    fn apply(&mut self, batch: &Batch) {
        let t = batch.arrival_ms;
        for w in 0..self.windows.len() {
            if t >= self.current[w] + self.windows[w].millis {
                self.close(w, t);
            } else if t < self.current[w] {
                self.stats
                    .late
                    .fetch_add(batch.samples.len() as u64, Ordering::Relaxed);
            }
        }
        let nw = self.windows.len();
        let mut budget = Budget {
            left: &mut self.series_left,
            stats: &self.stats,
        };
        for s in &batch.samples {
            let server = match self.servers.get_mut(s.server_id.as_str()) {
                Some(x) => x,
                None => {
                    let id: Arc<str> = Arc::from(s.server_id.as_str());
                    self.servers.entry(id.clone()).or_insert(ServerState {
                        id,
                        last_ts: 0,
                        last_arrival: 0,
                        series: SeriesSet::default(),
                        last_windows: vec![None; nw],
                    })
                }
            };
            server.last_ts = s.timestamp;
            server.last_arrival = t;
            for (name, v) in s.metrics.iter() {
                if let Some(series) = server.series.get_or_insert(name, nw, &mut budget) {
                    series.last = v;
                    for st in &mut series.stats {
                        st.record(v);
                    }
                }
                if let Some(series) = self.global.get_or_insert(name, nw, &mut budget) {
                    series.last = v;
                    for st in &mut series.stats {
                        st.record(v);
                    }
                }
            }
        }
        self.stats
            .samples
            .fetch_add(batch.samples.len() as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
    }

    fn close_due(&mut self, now: u64) {
        for w in 0..self.windows.len() {
            if now >= self.current[w] + self.windows[w].millis + CLOSE_GRACE_MS {
                self.close(w, now);
            }
        }
    }

    /// Emits and resets window `w`, then moves it to the window holding `now`.
    fn close(&mut self, w: usize, now: u64) {
        let spec = &self.windows[w];
        let (start, end) = (self.current[w], self.current[w] + spec.millis);
        let label = &self.labels[w];
        let mut out = std::mem::take(&mut self.out);
        for server in self.servers.values_mut() {
            let stats = server.series.summaries(w);
            if stats.is_empty() {
                continue;
            }
            let json = Bytes::from(event::to_vec(|b| {
                event::window(b, label, &server.id, start, end, stats)
            }));
            server.last_windows[w] = Some(json.clone());
            out.push(Event {
                kind: EventKind::Window,
                server: server.id.clone(),
                json,
            });
            for (_, s) in &mut server.series.list {
                s.stats[w].reset();
            }
        }
        let stats = self.global.summaries(w);
        if !stats.is_empty() {
            let json = Bytes::from(event::to_vec(|b| {
                event::window(b, label, "*", start, end, stats)
            }));
            self.global_last[w] = Some(json.clone());
            out.push(Event {
                kind: EventKind::Window,
                server: Arc::from("*"),
                json,
            });
            for (_, s) in &mut self.global.list {
                s.stats[w].reset();
            }
        }
        self.stats
            .windows_emitted
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        self.hub.publish(&out);
        out.clear();
        self.out = out;
        self.current[w] = spec.start_of(now);
        if w + 1 == self.windows.len() {
            self.evict_idle(now);
        }
    }

    /// Forgets servers silent for two of the longest windows, so memory follows live servers.
    fn evict_idle(&mut self, now: u64) {
        let longest = self.windows.last().map_or(0, |w| w.millis);
        let before = self.servers.len();
        let mut freed = 0usize;
        self.servers.retain(|_, s| {
            let keep = now.saturating_sub(s.last_arrival) < 2 * longest;
            if !keep {
                freed += s.series.list.len();
            }
            keep
        });
        if before != self.servers.len() {
            self.series_left += freed;
            self.stats.series.fetch_sub(freed as u64, Ordering::Relaxed);
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Snapshot { server, reply } => {
                let _ = reply.send(self.snapshot(server.as_deref()));
            }
        }
    }

    fn snapshot(&self, server: Option<&str>) -> Result<Bytes, String> {
        let mut b = Vec::with_capacity(1024);
        b.extend_from_slice(b"{\"type\":\"snapshot\",\"serverId\":");
        match server {
            Some(s) => event::write_str(&mut b, s),
            None => b.extend_from_slice(b"null"),
        }
        b.extend_from_slice(b",\"serverTime\":");
        event::write_u64(&mut b, now_ms());
        b.extend_from_slice(b",\"servers\":[");
        let mut servers: Vec<&ServerState> = match server {
            Some(id) => match self.servers.get(id) {
                Some(s) => vec![s],
                None => return Err(format!("no data for server `{id}`")),
            },
            None => self.servers.values().collect(),
        };
        servers.sort_by(|a, b| a.id.cmp(&b.id));
        for (i, s) in servers.iter().enumerate() {
            if i > 0 {
                b.push(b',');
            }
            b.extend_from_slice(b"{\"serverId\":");
            event::write_str(&mut b, &s.id);
            b.extend_from_slice(b",\"timestamp\":");
            event::write_u64(&mut b, s.last_ts);
            b.extend_from_slice(b",\"metrics\":{");
            for (j, (name, series)) in s.series.list.iter().enumerate() {
                if j > 0 {
                    b.push(b',');
                }
                event::write_str(&mut b, name);
                b.push(b':');
                event::write_f64(&mut b, series.last);
            }
            b.extend_from_slice(b"},\"windows\":");
            write_windows(&mut b, &s.last_windows);
            b.push(b'}');
        }
        b.extend_from_slice(b"]");
        if server.is_none() {
            b.extend_from_slice(b",\"all\":");
            write_windows(&mut b, &self.global_last);
        }
        b.push(b'}');
        Ok(Bytes::from(b))
    }
}

/// `[<window event>, ...]`: the last closed window of each length.
fn write_windows(b: &mut Vec<u8>, windows: &[Option<Bytes>]) {
    b.push(b'[');
    let mut first = true;
    for w in windows.iter().flatten() {
        if !first {
            b.push(b',');
        }
        first = false;
        b.extend_from_slice(w);
    }
    b.push(b']');
}

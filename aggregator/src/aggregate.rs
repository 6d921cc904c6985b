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
//! # Bounded
//! The ring is bounded in batches (`--ring`) and in bytes (`--ring-bytes`): a batch reserves
//! its in-memory size ([`Sample::mem_bytes`]) before it is pushed and the aggregator returns
//! it when it pops the batch, so queued samples never hold more than `--ring-bytes` (plus one
//! batch, which an empty ring always takes so a batch larger than the budget still goes
//! through). The roll-up keeps at most `--max-series` series and `--max-servers` servers, and
//! checks both budgets before it creates any state; the agent whose samples name a server
//! past the budget gets an `error` event naming `--max-servers` (the refused samples are
//! counted in `/stats` as `serversRefused`).
//!
//! # Snapshots
//! A snapshot request costs this thread only a copy of what the snapshot shows (reference
//! counts and numbers, [`Rollup::snapshot_view`]); sorting and JSON encoding, the bulk of the
//! work with many servers, run on a blocking-pool thread of the requesting session.
//!
//! Sample events go from the connection straight to the dashboard hub, not through this thread,
//! so the aggregator adds nothing to ingest-to-dashboard latency.
//!
//! # Windows
//! The window state is `metrics_model::rollup::Rollup`, shared with System 1's workers. This
//! thread closes a window when a sample from a later window arrives, or by timer
//! `CLOSE_GRACE_MS` after its end, so samples still in the ring at the boundary are counted; the
//! rare sample that arrives later still counts in the next window (`late`).
//!
//! A close of many servers makes many `window` events at once (one per server and length), and
//! each goes to the dashboards and back to its agent's socket: 10,000 servers make 10,000
//! writes to 10,000 sockets in the same instant, and the sample events published meanwhile
//! wait behind them. So a close of more than [`SPREAD_MIN`] events is published in slices over
//! `window_spread` (`--window-spread-ms`, at most half the shortest window), in order, instead
//! of as one burst; a smaller close goes at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use metrics_edge::admin::Histogram;
use metrics_edge::dashboard::SnapshotError;
use metrics_edge::hub::{Client, Event, EventKind, Hub};
use metrics_model::rollup::{ClosedWindow, Rollup, SnapshotView, UnknownServer};
use metrics_model::window::WindowSpec;
use metrics_model::{event, now_ms, Sample};

/// The default of `--ring-bytes`.
pub const DEFAULT_RING_BYTES: usize = 256 << 20;

/// The default of `--max-servers`.
pub const DEFAULT_MAX_SERVERS: usize = 100_000;

/// Time after a window's end before the timer closes it.
pub const CLOSE_GRACE_MS: u64 = 5;

/// Closes of at most this many window events are published at once, larger ones in slices.
pub const SPREAD_MIN: usize = 256;

/// The default of `--window-spread-ms`.
pub const DEFAULT_WINDOW_SPREAD: Duration = Duration::from_millis(500);

/// Samples from one frame, stamped with their arrival time.
pub struct Batch {
    pub arrival_ms: u64,
    pub samples: Vec<Sample>,
    /// The sender, told with an `error` event when samples are refused for `--max-servers`.
    pub from: Option<Arc<Client>>,
}

impl Batch {
    /// Bytes the batch holds in memory: what it costs the ring's byte budget.
    pub fn mem_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + (self.samples.capacity() - self.samples.len()) * std::mem::size_of::<Sample>()
            + self.samples.iter().map(Sample::mem_bytes).sum::<usize>()
    }
}

/// A batch in the ring, with the bytes it reserved.
struct Queued {
    batch: Batch,
    bytes: usize,
}

/// Aggregator settings.
#[derive(Clone, Debug)]
pub struct AggregatorOptions {
    pub windows: Vec<WindowSpec>,
    /// Batches the hand-off ring holds.
    pub ring_capacity: usize,
    /// Bytes of batches the hand-off ring holds ([`Batch::mem_bytes`]).
    pub ring_bytes: usize,
    /// Most (server, metric) series kept; past it, new series are not aggregated (counted).
    pub max_series: usize,
    /// Most servers kept; past it, samples of new servers are not aggregated (counted, and
    /// the sender is told).
    pub max_servers: usize,
    /// A close of more than [`SPREAD_MIN`] window events is published in slices over this
    /// (at most half the shortest window); zero publishes every close at once.
    pub window_spread: Duration,
}

impl Default for AggregatorOptions {
    fn default() -> Self {
        Self {
            windows: metrics_model::window::default_windows(),
            ring_capacity: 65_536,
            ring_bytes: DEFAULT_RING_BYTES,
            max_series: 1_000_000,
            max_servers: DEFAULT_MAX_SERVERS,
            window_spread: DEFAULT_WINDOW_SPREAD,
        }
    }
}

/// The window events of a close still to be published, and the pace they go at.
struct Spread {
    pending: VecDeque<Event>,
    /// When the close being published started, and how many events it had.
    started: Instant,
    total: usize,
    over: Duration,
}

impl Spread {
    fn new(over: Duration) -> Self {
        Self {
            pending: VecDeque::new(),
            started: Instant::now(),
            total: 0,
            over,
        }
    }

    /// Takes the events of a new close. What is still pending of the previous one goes into
    /// `now` first: a close never waits behind another.
    fn add(&mut self, events: impl Iterator<Item = Event>, now: &mut Vec<Event>) {
        now.extend(self.pending.drain(..));
        self.pending.extend(events);
        self.started = Instant::now();
        self.total = self.pending.len();
    }

    /// Moves into `out` the events due by now: all of a small close, else the share of
    /// `over` that has passed (the first slice at once).
    fn due(&mut self, out: &mut Vec<Event>) {
        let n = if self.total <= SPREAD_MIN || self.over.is_zero() {
            self.pending.len()
        } else {
            let share = self.started.elapsed().as_secs_f64() / self.over.as_secs_f64();
            let slices = (self.over.as_millis() as usize).max(1);
            let sent = self.total - self.pending.len();
            let target = ((self.total as f64 * share).ceil() as usize)
                .max(self.total.div_ceil(slices))
                .min(self.total);
            target.saturating_sub(sent)
        };
        out.extend(self.pending.drain(..n.min(self.pending.len())));
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty()
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
    /// Servers with state now.
    pub servers: AtomicU64,
    /// Samples not aggregated because their server was new past `--max-servers`.
    pub servers_refused: AtomicU64,
    /// Times a connection waited for room in the ring (batches or bytes).
    pub ring_full_waits: AtomicU64,
    /// Bytes of batches in the ring now.
    pub ring_bytes: AtomicUsize,
    /// Agent frames refused whole for not decoding (an `error` event each).
    pub frames_refused: AtomicU64,
    /// Time to close due windows and publish them, in microseconds, per pass that closed any.
    pub close_cost: Histogram,
}

enum Command {
    Snapshot {
        server: Option<String>,
        reply: tokio::sync::oneshot::Sender<Result<SnapshotView, UnknownServer>>,
    },
}

/// Handle to the aggregator thread.
pub struct Aggregator {
    ring: Arc<ArrayQueue<Queued>>,
    ring_bytes: usize,
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
        let ring_bytes = opts.ring_bytes;
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
            ring_bytes,
            commands: Mutex::new(tx),
            thread: join.thread().clone(),
            join: Mutex::new(Some(join)),
            stop,
            stats,
        }))
    }

    /// Hands a batch to the aggregator, waiting while the ring is full (in batches or in
    /// bytes).
    pub async fn submit(&self, batch: Batch) {
        let bytes = batch.mem_bytes();
        // Reserve the bytes first: an empty ring takes any batch, so one larger than the
        // budget is never stuck.
        let budget = self.ring_bytes;
        let reserve = |used: usize| (used == 0 || used + bytes <= budget).then_some(used + bytes);
        while self
            .stats
            .ring_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, reserve)
            .is_err()
        {
            self.wait_for_room().await;
        }
        let mut item = Queued { batch, bytes };
        loop {
            match self.ring.push(item) {
                Ok(()) => {
                    self.thread.unpark();
                    return;
                }
                Err(back) => {
                    item = back;
                    self.wait_for_room().await;
                }
            }
        }
    }

    async fn wait_for_room(&self) {
        self.stats.ring_full_waits.fetch_add(1, Ordering::Relaxed);
        self.thread.unpark();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    /// The latest values and closed windows of one server, or of all: copied on the aggregator
    /// thread, encoded here on a blocking-pool thread.
    pub async fn snapshot(&self, server: Option<String>) -> Result<Bytes, SnapshotError> {
        let stopped = || SnapshotError::Unavailable("the aggregator is shutting down".into());
        let (reply, rx) = tokio::sync::oneshot::channel();
        let sent = self
            .commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Command::Snapshot { server, reply });
        if sent.is_err() {
            return Err(stopped());
        }
        self.thread.unpark();
        let view = match rx.await {
            Ok(v) => v?,
            Err(_) => return Err(stopped()),
        };
        if view.len() <= 1 {
            return Ok(Bytes::from(view.encode(now_ms())));
        }
        tokio::task::spawn_blocking(move || Bytes::from(view.encode(now_ms())))
            .await
            .map_err(|_| stopped())
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

struct State {
    rollup: Rollup,
    max_servers: usize,
    hub: Arc<Hub>,
    stats: Arc<AggregatorStats>,
    closed: Vec<ClosedWindow>,
    events: Vec<Event>,
    spread: Spread,
}

impl State {
    fn new(opts: AggregatorOptions, hub: Arc<Hub>, stats: Arc<AggregatorStats>) -> Self {
        let spread = Spread::new(spread_for(&opts.windows, opts.window_spread));
        Self {
            rollup: Rollup::new(opts.windows, opts.max_series, now_ms())
                .with_max_servers(opts.max_servers),
            max_servers: opts.max_servers,
            hub,
            stats,
            closed: Vec::new(),
            events: Vec::new(),
            spread,
        }
    }

    fn run(
        &mut self,
        ring: &ArrayQueue<Queued>,
        commands: &mpsc::Receiver<Command>,
        stop: &AtomicBool,
    ) {
        loop {
            let mut did = 0usize;
            while let Some(Queued { batch, bytes }) = ring.pop() {
                self.stats.ring_bytes.fetch_sub(bytes, Ordering::AcqRel);
                let added =
                    self.rollup
                        .add_reporting(batch.arrival_ms, &batch.samples, &mut self.closed);
                if let (Some((server, n)), Some(from)) = (added.refused, &batch.from) {
                    from.send(event::to_vec(|b| {
                        event::error(b, &refused_message(&server, n, self.max_servers))
                    }));
                }
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                did += 1;
                if did.is_multiple_of(1024) {
                    self.publish();
                }
            }
            while let Ok(cmd) = commands.try_recv() {
                match cmd {
                    Command::Snapshot { server, reply } => {
                        let _ = reply.send(self.rollup.snapshot_view(server.as_deref()));
                    }
                }
            }
            let now = now_ms();
            let started = Instant::now();
            self.rollup.close_due(now, CLOSE_GRACE_MS, &mut self.closed);
            let closing = !self.closed.is_empty();
            self.publish();
            if closing {
                self.stats
                    .close_cost
                    .observe(started.elapsed().as_micros() as u64);
            }
            if stop.load(Ordering::Acquire) && ring.is_empty() {
                self.spread.over = Duration::ZERO;
                self.publish();
                return;
            }
            if ring.is_empty() {
                let next = self.rollup.next_close() + CLOSE_GRACE_MS;
                // While a close is being spread, wake every millisecond for its next slice.
                let most = if self.spread.is_empty() { 100 } else { 1 };
                let wait = next.saturating_sub(now).clamp(1, most);
                std::thread::park_timeout(Duration::from_millis(wait));
            }
        }
    }

    /// Sends closed windows to the hub and refreshes the shared counters.
    fn publish(&mut self) {
        let c = self.rollup.counts();
        self.stats.samples.store(c.samples, Ordering::Relaxed);
        self.stats.late.store(c.late, Ordering::Relaxed);
        self.stats.series.store(c.series, Ordering::Relaxed);
        self.stats
            .series_refused
            .store(c.series_refused, Ordering::Relaxed);
        self.stats.servers.store(c.servers, Ordering::Relaxed);
        self.stats
            .servers_refused
            .store(c.servers_refused, Ordering::Relaxed);
        if !self.closed.is_empty() {
            self.stats
                .windows_emitted
                .fetch_add(self.closed.len() as u64, Ordering::Relaxed);
            let closed = self.closed.drain(..).map(|w| Event {
                kind: EventKind::Window,
                server: w.server,
                json: Bytes::from(w.json),
                position: None,
            });
            self.spread.add(closed, &mut self.events);
        }
        self.spread.due(&mut self.events);
        if !self.events.is_empty() {
            self.hub.publish(&self.events);
            self.events.clear();
        }
    }
}

/// The spread a close is published over: `wanted`, at most half the shortest window.
fn spread_for(windows: &[WindowSpec], wanted: Duration) -> Duration {
    let shortest = windows.iter().map(|w| w.millis).min().unwrap_or(1_000);
    wanted.min(Duration::from_millis(shortest / 2))
}

/// What an agent is told when samples of a new server are refused for `--max-servers`.
fn refused_message(server: &str, samples: usize, max: usize) -> String {
    format!(
        "server `{server}`: {samples} sample(s) not aggregated: the aggregator already keeps \
         {max} servers (--max-servers); they still went to dashboards as sample events, and \
         room frees up when servers fall silent for two of the longest windows"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: usize) -> impl Iterator<Item = Event> {
        (0..n).map(|i| Event {
            kind: EventKind::Window,
            server: Arc::from(format!("s{i}").as_str()),
            json: Bytes::from(format!("{{\"i\":{i}}}")),
            position: None,
        })
    }

    fn ids(v: &[Event]) -> Vec<String> {
        v.iter().map(|e| e.server.to_string()).collect()
    }

    #[test]
    fn a_large_close_goes_out_in_slices_in_order_and_a_small_one_at_once() {
        let hour = Duration::from_secs(3600);
        let mut s = Spread::new(hour);
        let mut out = Vec::new();
        s.add(events(SPREAD_MIN), &mut out);
        s.due(&mut out);
        assert_eq!(out.len(), SPREAD_MIN, "a small close goes at once");
        assert!(s.is_empty());

        out.clear();
        let n = 10_000;
        s.add(events(n), &mut out);
        assert!(out.is_empty());
        s.due(&mut out);
        // Spread over an hour: only the first slice is due now.
        assert!(!out.is_empty() && out.len() < n / 100, "{}", out.len());
        let first = out.len();
        // Once the spread is over, the rest is due, in order.
        s.started -= hour;
        s.due(&mut out);
        assert_eq!(out.len(), n);
        assert_eq!(ids(&out), ids(&events(n).collect::<Vec<_>>()));
        assert!(s.is_empty() && first > 0);

        // A new close takes what is left of the previous one along first.
        out.clear();
        s.add(events(n), &mut out);
        s.due(&mut out);
        let sent = out.len();
        out.clear();
        s.add(events(3), &mut out);
        assert_eq!(
            out.len(),
            n - sent,
            "the previous close's rest, before the new one"
        );
        s.due(&mut out);
        assert_eq!(out.len(), n - sent + 3);
        assert_eq!(ids(&out[n - sent..]), ["s0", "s1", "s2"]);

        // No spread: everything at once.
        let mut none = Spread::new(Duration::ZERO);
        out.clear();
        none.add(events(n), &mut out);
        none.due(&mut out);
        assert_eq!(out.len(), n);
    }

    #[test]
    fn the_spread_is_at_most_half_the_shortest_window() {
        let w = WindowSpec::parse_list("200ms,1s").expect("windows");
        assert_eq!(
            spread_for(&w, DEFAULT_WINDOW_SPREAD),
            Duration::from_millis(100)
        );
        let w = WindowSpec::parse_list("1s,10s").expect("windows");
        assert_eq!(
            spread_for(&w, DEFAULT_WINDOW_SPREAD),
            Duration::from_millis(500)
        );
        assert_eq!(
            spread_for(&w, Duration::from_millis(250)),
            Duration::from_millis(250)
        );
    }
}

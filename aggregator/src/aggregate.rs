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

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use metrics_edge::admin::Histogram;
use metrics_edge::dashboard::SnapshotError;
use metrics_edge::hub::{Audience, Client, Event, EventKind, Hub};
use metrics_model::rollup::{ClosedWindow, Rollup, SnapshotView, UnknownServer};
use metrics_model::window::WindowSpec;
use metrics_model::{event, now_ms, Sample};

use metrics_model::pacing::WindowPacer;

/// The default of `--ring-bytes`.
pub const DEFAULT_RING_BYTES: usize = 256 << 20;

/// The default of `--max-servers`.
pub const DEFAULT_MAX_SERVERS: usize = 100_000;

/// Time after a window's end before the timer closes it.
pub const CLOSE_GRACE_MS: u64 = 5;

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
    /// Milliseconds over which the window events of one close are let out
    /// ([`metrics_model::pacing`]); at most half the shortest window.
    pub window_spread_ms: u64,
}

impl Default for AggregatorOptions {
    fn default() -> Self {
        Self {
            windows: metrics_model::window::default_windows(),
            ring_capacity: 65_536,
            ring_bytes: DEFAULT_RING_BYTES,
            max_series: 1_000_000,
            max_servers: DEFAULT_MAX_SERVERS,
            window_spread_ms: metrics_model::pacing::DEFAULT_SPREAD_MS,
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
    /// Time to close due windows and publish what the pacer lets out at once (the first slice
    /// of a large close), in microseconds, per pass that closed any.
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
    /// Closed windows waiting for their slice ([`metrics_model::pacing`]), and those due now.
    pacer: WindowPacer,
    due: Vec<ClosedWindow>,
    events: Vec<Event>,
}

impl State {
    fn new(opts: AggregatorOptions, hub: Arc<Hub>, stats: Arc<AggregatorStats>) -> Self {
        let spread = metrics_model::pacing::spread_for(opts.window_spread_ms, &opts.windows);
        Self {
            pacer: WindowPacer::new(spread),
            due: Vec::new(),
            rollup: Rollup::new(opts.windows, opts.max_series, now_ms())
                .with_max_servers(opts.max_servers),
            max_servers: opts.max_servers,
            hub,
            stats,
            closed: Vec::new(),
            events: Vec::new(),
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
                self.pacer.flush(&mut self.due);
                self.send_due();
                return;
            }
            if ring.is_empty() {
                let next = self.rollup.next_close() + CLOSE_GRACE_MS;
                let wait = if self.pacer.is_empty() {
                    next.saturating_sub(now).clamp(1, 100)
                } else {
                    1
                };
                std::thread::park_timeout(Duration::from_millis(wait));
            }
        }
    }

    /// Hands closed windows to the pacer, sends those due to the hub and refreshes the shared
    /// counters.
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
        let now = now_ms();
        self.pacer.push(&mut self.closed, now);
        if !self.pacer.is_empty() {
            // Every dashboard gets every window event (filters apart): a close is spread by
            // what it costs to write to all of them.
            self.pacer.set_fanout(self.hub.count(Audience::Dashboard));
        }
        self.pacer.due(now, &mut self.due);
        self.send_due();
    }

    /// Sends the due windows to the hub.
    fn send_due(&mut self) {
        if self.due.is_empty() {
            return;
        }
        self.stats
            .windows_emitted
            .fetch_add(self.due.len() as u64, Ordering::Relaxed);
        self.events.extend(self.due.drain(..).map(|w| Event {
            kind: EventKind::Window,
            server: w.server,
            json: Bytes::from(w.json),
            position: None,
        }));
        self.hub.publish(&self.events);
        self.events.clear();
    }
}

/// What an agent is told when samples of a new server are refused for `--max-servers`.
fn refused_message(server: &str, samples: usize, max: usize) -> String {
    format!(
        "server `{server}`: {samples} sample(s) not aggregated: the aggregator already keeps \
         {max} servers (--max-servers); they still went to dashboards as sample events, and \
         room frees up when servers fall silent for two of the longest windows"
    )
}

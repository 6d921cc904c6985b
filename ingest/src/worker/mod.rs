//! Workers: consume the stream in the `workers` group, publish `sample` events, keep per-server
//! snapshots, acknowledge ([`samples`]); one worker at a time (the lease holder) also runs the
//! window roll-up from its own `windows` group ([`windows`]). [`group`] holds the Redis commands
//! both loops use.
//!
//! Each sample is enriched with its arrival time at the front door and that front door's node
//! id (the snapshot hash keeps both as `_arrival` and `_node`).
//!
//! A worker killed mid-batch leaves its entries pending; every worker periodically claims
//! entries idle longer than `--claim-idle-ms` (`XAUTOCLAIM`) and processes them, so nothing
//! acknowledged to an agent is lost. The price is at-least-once delivery: events of a batch that
//! was published but not yet acknowledged when its worker died are published again by the
//! worker that claims it, so a dashboard can see those samples twice (with the same `id`).
//!
//! Both loops reconnect by themselves: after a Redis error the connection is discarded (never
//! returned to the pool in an unknown state) and the loop backs off.

mod group;
mod retention;
mod samples;
mod windows;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis;
use deadpool_redis::{Connection, Pool};
use metrics_edge::backoff::Backoff;
use metrics_edge::lifecycle::Lifecycle;
use metrics_model::window::WindowSpec;
use tokio_util::sync::CancellationToken;

use crate::keys::Keys;
use crate::wire;

pub use samples::MAX_EVENTS_PER_MESSAGE;

/// Worker settings.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Consumer name, unique per worker process.
    pub name: String,
    /// Entries per read: at most `read_bytes / max_entry`, so that one read of entries of the
    /// largest size stays within `read_bytes` (the window loop and claims read this many).
    pub batch: usize,
    /// Most entries the sample loop gathers into one batch, in rounds of reads each sized by
    /// what is left of `read_bytes` (`--worker-batch`).
    pub fill: usize,
    /// Least time between the sample loop's reads (`--worker-gather-ms`).
    pub gather: Duration,
    /// Bytes of entries a batch may hold (`--worker-read-bytes`).
    pub read_bytes: usize,
    /// Largest entry the front doors write (`--max-entry-bytes`).
    pub max_entry: usize,
    /// Largest Pub/Sub message (`--pubsub-message-bytes`).
    pub pubsub_message_bytes: usize,
    /// Metric names a server's snapshot hash keeps (`--max-fields-per-server`).
    pub max_fields: usize,
    /// Pending entries idle this long are claimed from their (presumably dead) consumer.
    pub claim_idle: Duration,
    pub windows: Vec<WindowSpec>,
    pub max_series: usize,
    /// `--window-spread-ms`: the window leader lets the windows of one close out over this
    /// long ([`metrics_model::pacing`]).
    pub window_spread_ms: u64,
    /// Window leader lease.
    pub lease: Duration,
    /// Entries the stream keeps (see [`retention`]).
    pub maxlen: u64,
    /// How long a server's snapshot hash outlives its latest sample.
    pub snapshot_ttl: Duration,
    /// Batches of closed windows kept in the window log (about).
    pub window_log_len: u64,
    /// Fault injection for tests: sleep this long between reading a batch and publishing it,
    /// so a test can kill the worker with the batch pending.
    pub pause_after_read: Option<Duration>,
}

/// Counters.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub entries: AtomicU64,
    pub samples: AtomicU64,
    pub claimed: AtomicU64,
    pub publishes: AtomicU64,
    pub windows: AtomicU64,
    pub errors: AtomicU64,
    /// Entries no worker could decode, moved to the dead-letter stream.
    pub dead_lettered: AtomicU64,
    /// Pending entries the stream's retention trimmed before they were processed.
    pub trimmed_pending: AtomicU64,
    /// Entries trimmed from the stream once processed.
    pub trimmed: AtomicU64,
    /// The largest Pub/Sub message published so far, in bytes.
    pub largest_message: AtomicU64,
    /// Metric values left out of snapshot hashes at `--max-fields-per-server` (they were
    /// stored in the stream and published all the same).
    pub fields_refused: AtomicU64,
    /// Servers this worker found at `--max-fields-per-server` (each logged once).
    pub servers_at_field_limit: AtomicU64,
    /// Time to add a read's entries, close the due windows and publish what the pacer lets
    /// out, in microseconds, per pass of the window leader that published any.
    pub window_close: metrics_edge::admin::Histogram,
}

impl WorkerStats {
    /// Counts a claim, and logs entries retention took from under it.
    fn note_claimed(&self, c: &group::Claimed) {
        self.claimed
            .fetch_add(c.entries.len() as u64, Ordering::Relaxed);
        if c.deleted > 0 {
            self.trimmed_pending
                .fetch_add(c.deleted as u64, Ordering::Relaxed);
            tracing::error!(
                entries = c.deleted,
                "pending stream entries were trimmed before any worker processed them (by something other than the workers' retention)"
            );
        }
    }
}

/// Why a worker loop lost its connection.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("Redis is unavailable: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// Starts a worker's two loops on `life`; they stop between batches at shutdown.
pub fn start(
    pool: Pool,
    keys: Keys,
    opts: WorkerOptions,
    stats: Arc<WorkerStats>,
    life: &Lifecycle,
) {
    let sample_loop = samples::SampleLoop {
        pool: pool.clone(),
        keys: keys.clone(),
        opts: opts.clone(),
        stats: stats.clone(),
        decoder: wire::entry_decoder(),
        last_claim: tokio::time::Instant::now(),
        last_trim: tokio::time::Instant::now(),
        last_backlog_log: None,
        refreshed: samples::Refreshed::default(),
        script: None,
        last_read: tokio::time::Instant::now(),
    };
    life.spawn(reconnecting(
        sample_loop,
        life.token().clone(),
        stats.clone(),
    ));
    let opts_spread = metrics_model::pacing::spread_for(opts.window_spread_ms, &opts.windows);
    let window_loop = windows::WindowLoop {
        pool,
        keys,
        opts,
        stats: stats.clone(),
        decoder: Some(wire::entry_decoder()),
        rollup: None,
        closed: Vec::new(),
        pacer: metrics_model::pacing::WindowPacer::new(opts_spread),
        due: Vec::new(),
        gathering: false,
        renewed: None,
    };
    life.spawn(reconnecting(window_loop, life.token().clone(), stats));
}

/// A loop that works batch by batch on one connection of its consumer group.
trait Session {
    /// The consumer group it reads.
    const GROUP: &'static str;

    /// Where its connections come from and which keys they use.
    fn redis(&self) -> (&Pool, &Keys);

    /// A new connection begins (per-connection state starts over).
    fn begin(&mut self);

    /// One step (a batch, or waiting for the lease); an error ends the connection.
    fn step(
        &mut self,
        conn: &mut Connection,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Result<(), WorkerError>> + Send;
}

/// Runs `s` on fresh connections, backing off after each error, until shutdown.
async fn reconnecting<S: Session>(mut s: S, shutdown: CancellationToken, stats: Arc<WorkerStats>) {
    let mut backoff = Backoff::default();
    while !shutdown.is_cancelled() {
        match session(&mut s, &shutdown, &mut backoff).await {
            Ok(()) => return,
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(group = S::GROUP, error = %e, "worker lost Redis; reconnecting (a batch in hand stays pending and will be claimed)");
            }
        }
        backoff.wait(&shutdown).await;
    }
}

/// Steps `s` on one connection until shutdown (`Ok`) or an error; the connection is then
/// discarded, never returned to the pool in an unknown state.
async fn session<S: Session>(
    s: &mut S,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), WorkerError> {
    let (pool, keys) = s.redis();
    let mut conn = connect(pool, keys, S::GROUP).await?;
    s.begin();
    while !shutdown.is_cancelled() {
        if let Err(e) = s.step(&mut conn, shutdown).await {
            drop(Connection::take(conn));
            return Err(e);
        }
        backoff.reset();
    }
    Ok(())
}

/// A fresh connection with the consumer group in place.
async fn connect(pool: &Pool, keys: &Keys, group_name: &str) -> Result<Connection, WorkerError> {
    let mut conn = pool.get().await?;
    if let Err(e) = group::ensure_group(&mut conn, keys, group_name).await {
        drop(Connection::take(conn));
        return Err(e.into());
    }
    Ok(conn)
}

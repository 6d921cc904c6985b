//! Writing to Redis: the connection pool and the pipeline writer that coalesces the writes of
//! concurrent requests.
//!
//! Each request becomes one `XADD` (all its samples in one entry). Requests queue their entry
//! on a channel; a few writer tasks, each holding one pooled connection for as long as it works,
//! take everything queued at that moment and send it as one pipeline. Under load a request
//! therefore shares its round trip with every other request that arrived meanwhile, and with
//! `K` writers at most `K` pipelines are in flight.
//!
//! Why connections are held rather than taken per request: with redis 1.x, deadpool-redis
//! recycles a connection on every `pool.get()` with a round trip (`UNWATCH` + `PING`), which
//! would double the Redis traffic of a single-sample request. A writer drops its connection
//! (instead of returning it) after any error, so a broken connection is never reused.
//!
//! The queue is bounded in bytes as well as in entries (`--writer-queue-bytes`): an entry holds
//! its size in permits of a semaphore from the moment it is queued until its pipeline has been
//! answered, so what waits for Redis and what is in flight to it together never pass the
//! budget. A request that finds it full gets 503 with `Retry-After` at once rather than
//! waiting: the queue is full only when Redis is far behind.
//!
//! redis 1.x async connections time out responses after 500 ms by default; here the response
//! timeout is set deliberately (`--redis-timeout`), above the request deadline, so a slow Redis
//! surfaces as a 503 at the deadline and a dead connection is replaced soon after.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_redis::redis::{self, AsyncConnectionConfig};
use deadpool_redis::{Connection, Manager, Pool, Runtime};
use metrics_edge::admin::Histogram;
use metrics_edge::lifecycle::Lifecycle;
use tokio::sync::{mpsc, oneshot, Mutex, OwnedSemaphorePermit, Semaphore};

use crate::keys::Keys;
use crate::wire;

/// Why a write did not reach Redis.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Redis is unavailable: {0}")]
    Unavailable(String),
    #[error("Redis refused the write: {0}")]
    Redis(String),
    #[error("the writer is shutting down")]
    Closed,
    #[error("the queue to Redis holds {queued} bytes and cannot take this entry's {entry} bytes within its limit of {max} bytes (--writer-queue-bytes)")]
    QueueFull {
        queued: usize,
        entry: usize,
        max: usize,
    },
}

/// Pool settings.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    pub url: String,
    pub size: usize,
    pub response_timeout: Duration,
}

/// Builds a pool whose connections have a deliberate response timeout.
pub fn pool(opts: &PoolOptions) -> Result<Pool, StoreError> {
    let cfg = AsyncConnectionConfig::new()
        .set_response_timeout(Some(opts.response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(2)));
    let manager = Manager::new_with_config(opts.url.as_str(), cfg)
        .map_err(|e| StoreError::Unavailable(format!("bad REDIS_URL: {e}")))?;
    Pool::builder(manager)
        .max_size(opts.size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(2)))
        .create_timeout(Some(Duration::from_secs(2)))
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

/// `PING` through the pool, within `timeout`: is Redis answering?
///
/// Boxed: a pool checkout embeds the connection-creation future (kilobytes), and the routes that
/// call this share their future's size with the hot path, which tokio copies at every spawn.
pub fn ping(
    pool: &Pool,
    timeout: std::time::Duration,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send + '_>> {
    Box::pin(async move {
        match tokio::time::timeout(timeout, ping_now(pool)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "Redis did not answer PING within {} ms",
                timeout.as_millis()
            ))),
        }
    })
}

async fn ping_now(pool: &Pool) -> Result<(), StoreError> {
    let mut conn = pool
        .get()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

/// One stream entry to write.
#[derive(Debug)]
pub struct Entry {
    /// Samples in `value`.
    pub count: usize,
    /// The entry's value, from [`wire::EntryWriter`].
    pub value: Vec<u8>,
}

struct Job {
    entry: Entry,
    reply: oneshot::Sender<Result<String, StoreError>>,
    /// The entry's bytes in the queue's budget, given back when the job is dropped (after its
    /// pipeline was answered).
    _bytes: OwnedSemaphorePermit,
}

/// Writer settings.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Concurrent pipelines (each on its own connection).
    pub writers: usize,
    /// Most entries in one pipeline.
    pub max_pipeline: usize,
    /// This front door's id, stored with each entry.
    pub node: String,
    /// Bytes of entries queued or in flight (`--writer-queue-bytes`).
    pub queue_bytes: usize,
}

/// Counters of the writer.
#[derive(Debug)]
pub struct WriterStats {
    pub pipelines: AtomicU64,
    pub entries: AtomicU64,
    pub samples: AtomicU64,
    pub failures: AtomicU64,
    /// Entries refused because the queue's byte budget was spent.
    pub queue_full: AtomicU64,
    /// Requests refused because their entry would pass `--max-entry-bytes`.
    pub too_large: AtomicU64,
    /// Entries per pipeline sent (one observation per pipeline).
    pub pipeline_entries: Histogram,
    /// Time from sending a pipeline to its replies (or its failure), in microseconds.
    pub write_latency: Histogram,
}

/// Upper bounds of the pipeline-size buckets (entries).
const PIPELINE_BUCKETS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

impl Default for WriterStats {
    fn default() -> Self {
        Self {
            pipelines: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            queue_full: AtomicU64::new(0),
            too_large: AtomicU64::new(0),
            pipeline_entries: Histogram::new(PIPELINE_BUCKETS, 1.0),
            write_latency: Histogram::default(),
        }
    }
}

/// The outcome of a queued write.
pub type Pending = oneshot::Receiver<Result<String, StoreError>>;

/// Queues entries for the pipeline writers.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    stats: Arc<WriterStats>,
    node: Arc<str>,
    bytes: Arc<Semaphore>,
    queue_bytes: usize,
}

impl Writer {
    /// Starts `opts.writers` writer tasks on `pool`, tracked by `life`. They run until every
    /// clone of the writer is gone and the queue is written, so requests still draining at
    /// shutdown get their answer.
    pub fn start(pool: Pool, keys: Keys, opts: WriterOptions, life: &Lifecycle) -> Self {
        let (tx, rx) = mpsc::channel(65_536);
        let rx = Arc::new(Mutex::new(rx));
        let stats = Arc::new(WriterStats::default());
        let node = Arc::from(opts.node.as_str());
        let queue_bytes = opts.queue_bytes.min(Semaphore::MAX_PERMITS);
        let bytes = Arc::new(Semaphore::new(queue_bytes));
        for _ in 0..opts.writers.max(1) {
            life.spawn(run_writer(
                pool.clone(),
                keys.clone(),
                opts.clone(),
                rx.clone(),
                stats.clone(),
            ));
        }
        Self {
            tx,
            stats,
            node,
            bytes,
            queue_bytes,
        }
    }

    /// Writes one entry; returns its stream id once Redis has it.
    pub async fn write(&self, entry: Entry) -> Result<String, StoreError> {
        self.submit(entry)
            .await?
            .await
            .unwrap_or(Err(StoreError::Closed))
    }

    /// Queues one entry; the receiver yields its stream id once Redis has it. Lets a caller
    /// keep several writes in flight and collect the acknowledgements in order.
    /// An entry that does not fit in what is left of the queue's byte budget is refused at
    /// once ([`StoreError::QueueFull`]).
    pub async fn submit(&self, entry: Entry) -> Result<Pending, StoreError> {
        let size = entry.value.len();
        let permit = u32::try_from(size)
            .ok()
            .and_then(|n| self.bytes.clone().try_acquire_many_owned(n).ok());
        let Some(permit) = permit else {
            self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::QueueFull {
                queued: self.queue_bytes - self.bytes.available_permits(),
                entry: size,
                max: self.queue_bytes,
            });
        };
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                entry,
                reply,
                _bytes: permit,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(rx)
    }

    /// This front door's node id, written into each entry.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }
}

async fn run_writer(
    pool: Pool,
    keys: Keys,
    opts: WriterOptions,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    stats: Arc<WriterStats>,
) {
    let mut conn: Option<Connection> = None;
    let mut jobs: Vec<Job> = Vec::with_capacity(opts.max_pipeline);
    loop {
        {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(j) => jobs.push(j),
                None => return,
            }
            while jobs.len() < opts.max_pipeline {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match pool.get().await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    let err = StoreError::Unavailable(e.to_string());
                    for j in jobs.drain(..) {
                        let _ = j.reply.send(Err(err.clone()));
                    }
                    continue;
                }
            },
        };
        let mut pipe = redis::pipe();
        for j in &jobs {
            // No MAXLEN: the workers trim, never past what is not processed yet
            // (worker/retention.rs).
            pipe.cmd("XADD")
                .arg(&keys.stream)
                .arg("*")
                .arg(wire::ENTRY_FIELD)
                .arg(&j.entry.value);
        }
        // Never cancelled half-way: a dropped pipeline would leave its replies on the connection.
        stats.pipeline_entries.observe(jobs.len() as u64);
        let sent = Instant::now();
        let replies = pipe.query_async::<Vec<String>>(c).await;
        stats
            .write_latency
            .observe(sent.elapsed().as_micros() as u64);
        match replies {
            Ok(ids) if ids.len() == jobs.len() => {
                stats.pipelines.fetch_add(1, Ordering::Relaxed);
                stats
                    .entries
                    .fetch_add(jobs.len() as u64, Ordering::Relaxed);
                let samples: usize = jobs.iter().map(|j| j.entry.count).sum();
                stats.samples.fetch_add(samples as u64, Ordering::Relaxed);
                for (j, id) in jobs.drain(..).zip(ids) {
                    let _ = j.reply.send(Ok(id));
                }
            }
            other => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                let err = match other {
                    Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                        StoreError::Unavailable(e.to_string())
                    }
                    Err(e) => StoreError::Redis(e.to_string()),
                    Ok(ids) => StoreError::Redis(format!(
                        "{} replies for {} writes",
                        ids.len(),
                        jobs.len()
                    )),
                };
                for j in jobs.drain(..) {
                    let _ = j.reply.send(Err(err.clone()));
                }
                // Do not hand a connection in an unknown state back to the pool.
                if let Some(c) = conn.take() {
                    drop(Connection::take(c));
                }
            }
        }
    }
}

//! The window loop of a worker: whoever holds the lease key is the window leader and runs the
//! roll-up over the `windows` group; the others wait for the lease.
//!
//! Windows need every sample of a server in one place, which a consumer group does not give
//! (it spreads entries over workers), hence one leader at a time. A new leader first claims
//! what the previous one left pending. The roll-up state of windows still open when a leader
//! dies is lost; the next leader starts fresh windows (samples are not lost: they still reach
//! dashboards through the sample loop). So a leader change costs the window counts of the
//! samples the dead leader had acknowledged into windows not yet closed (at most one window
//! length of each); samples it had not acknowledged are counted by the next leader. A sample is
//! counted twice only if the leader died between publishing a batch's windows and
//! acknowledging the batch (two consecutive round trips).
//!
//! Two things keep the leader cheap and its closes gentle:
//! - it reads the stream in gathered batches, not entry by entry (windows need an entry only by
//!   their close): while entries keep coming it reads every [`GATHER_MS`];
//! - the windows of one close go out in slices over `--window-spread-ms`
//!   ([`metrics_model::pacing`]), as in System 2: with thousands of servers, one close published
//!   at once is a burst of megabytes that every broadcaster and dashboard must take in the same
//!   instant, and the samples behind it wait. A closed window waiting for its slice is lost
//!   with the leader as an open one is (its entries are acknowledged); a leader that loses the
//!   lease publishes what it still holds.
//!
//! Each batch of closed windows is appended to the window log (`{prefix}:windows:log`, capped
//! at about `--window-log-len` batches) and published, in one script, so both happen at the
//! same instant: the published message starts with a mark line carrying the log entry's id,
//! which is how a broadcaster that lost its Pub/Sub link knows which windows it missed and
//! reads them back from the log (see [`crate::broadcast`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis;
use deadpool_redis::{Connection, Pool};
use metrics_edge::hub::EventKind;
use metrics_model::decode::Decoder;
use metrics_model::now_ms;
use metrics_model::pacing::WindowPacer;
use metrics_model::rollup::{ClosedWindow, Rollup};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::group;
use super::{Session, WorkerError, WorkerOptions, WorkerStats};
use crate::keys::{Keys, WINDOWS_GROUP};
use crate::wire::{self, RawEntry};

/// Grace after a window's end before it is closed without a later sample.
const CLOSE_GRACE_MS: u64 = 5;

/// Entries a new leader claims per round trip while taking over.
const TAKE_OVER_PAGE: usize = 1_000;

/// How long the leader lets entries gather in the stream between reads while they keep
/// coming (see [`WindowLoop::roll`]).
const GATHER_MS: u64 = 20;

/// How often the leader lets out a slice of a close that is being spread.
const PACE_STEP_MS: u64 = 10;

/// Redis times a blocking read out in its periodic tasks (`hz`, 10 a second by default), so a
/// `BLOCK` shorter than this can end up to this much late: shorter waits are slept here.
const BLOCK_FLOOR_MS: u64 = 100;

/// One worker's window loop.
pub(super) struct WindowLoop {
    pub pool: Pool,
    pub keys: Keys,
    pub opts: WorkerOptions,
    pub stats: Arc<WorkerStats>,
    /// Taken while a batch is added off the runtime (see [`WindowLoop::add_and_close`]).
    pub decoder: Option<Decoder>,
    /// `Some` while this worker is the leader.
    pub rollup: Option<Rollup>,
    pub closed: Vec<ClosedWindow>,
    /// Closed windows waiting for their slice of `--window-spread-ms`.
    pub pacer: WindowPacer,
    /// Windows let out by the pacer and not yet published.
    pub due: Vec<ClosedWindow>,
    /// The last read found entries (and was not full): let more gather before the next.
    pub gathering: bool,
    /// When this connection last took or renewed the lease.
    pub renewed: Option<Instant>,
}

impl Session for WindowLoop {
    const GROUP: &'static str = WINDOWS_GROUP;

    fn redis(&self) -> (&Pool, &Keys) {
        (&self.pool, &self.keys)
    }

    fn begin(&mut self) {
        self.renewed = None;
    }

    /// Leads (one batch into the roll-up) or waits a third of the lease to try again.
    async fn step(
        &mut self,
        conn: &mut Connection,
        shutdown: &CancellationToken,
    ) -> Result<(), WorkerError> {
        if !self.keep_lease(conn).await? {
            tokio::select! {
                _ = tokio::time::sleep(self.opts.lease / 3) => {}
                _ = shutdown.cancelled() => {}
            }
            return Ok(());
        }
        self.roll(conn, shutdown).await
    }
}

impl WindowLoop {
    /// Renews the lease when a third of it has passed; true while this worker leads.
    async fn keep_lease(&mut self, conn: &mut Connection) -> Result<bool, WorkerError> {
        if self
            .renewed
            .is_some_and(|r| r.elapsed() < self.opts.lease / 3)
        {
            return Ok(self.rollup.is_some());
        }
        if !group::hold_lease(conn, &self.keys, &self.opts.name, self.opts.lease).await? {
            self.renewed = None;
            if self.rollup.take().is_some() {
                tracing::info!(worker = %self.opts.name, "lost the window lease");
            }
            // Windows this worker closed while it led are its own to publish: the next leader
            // starts fresh windows and will not close these.
            self.pacer.flush(&mut self.due);
            self.publish_due(conn).await?;
            return Ok(false);
        }
        self.renewed = Some(Instant::now());
        if self.rollup.is_none() {
            self.take_over(conn).await?;
        }
        Ok(true)
    }

    /// Becomes the leader: fresh windows, and everything a previous leader left pending (the
    /// whole pending list, a page at a time).
    async fn take_over(&mut self, conn: &mut Connection) -> Result<(), WorkerError> {
        tracing::info!(worker = %self.opts.name, "window leader");
        let opts = &self.opts;
        self.rollup = Some(Rollup::new(opts.windows.clone(), opts.max_series, now_ms()));
        let mut cursor = "0-0".to_string();
        loop {
            let claimed = group::claim(
                conn,
                &self.keys,
                WINDOWS_GROUP,
                &self.opts.name,
                Duration::ZERO,
                TAKE_OVER_PAGE,
                &cursor,
            )
            .await?;
            self.stats.note_claimed(&claimed);
            // Pages of a thousand entries: off the runtime like any other batch.
            let Some(entries) = self.add_and_close(claimed.entries).await else {
                return Ok(());
            };
            group::ack(conn, &self.keys, WINDOWS_GROUP, &entries).await?;
            if claimed.next == "0-0" {
                return Ok(());
            }
            cursor = claimed.next;
        }
    }

    /// Reads new entries, adds them, lets out the closed windows that are due, acknowledges.
    ///
    /// Windows need each entry only by their close, so the leader does not read each entry as
    /// it lands (a round trip per front-door flush, on top of the sample workers' own): after a
    /// read that found entries it lets more gather for [`GATHER_MS`] (less when a close or a
    /// slice of the pacer is due sooner); after an empty one it blocks until an entry comes or
    /// something is due (sleeping instead when that is sooner than [`BLOCK_FLOOR_MS`]).
    async fn roll(
        &mut self,
        conn: &mut Connection,
        shutdown: &CancellationToken,
    ) -> Result<(), WorkerError> {
        let Some(rollup) = self.rollup.as_ref() else {
            return Ok(());
        };
        let opts = &self.opts;
        let now = now_ms();
        let close_at = rollup.next_close().saturating_add(CLOSE_GRACE_MS);
        let mut due_at = close_at;
        if !self.pacer.is_empty() {
            due_at = due_at.min(now + PACE_STEP_MS);
        }
        let wait = due_at.saturating_sub(now);
        let entries = if self.gathering || !self.pacer.is_empty() || wait < BLOCK_FLOOR_MS {
            let wait = wait.min(GATHER_MS);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                _ = shutdown.cancelled() => {}
            }
            group::read_now(conn, &self.keys, WINDOWS_GROUP, &opts.name, opts.batch).await?
        } else {
            let block = wait.min(250);
            group::read(
                conn,
                &self.keys,
                WINDOWS_GROUP,
                &opts.name,
                opts.batch,
                block,
            )
            .await?
        };
        // A full read means a backlog: read again at once.
        self.gathering = !entries.is_empty() && entries.len() < opts.batch;
        let started = Instant::now();
        // The blocking pool only when there is work for it: entries, or a close due.
        let entries = if entries.is_empty() && now_ms() < close_at {
            entries
        } else {
            let Some(entries) = self.add_and_close(entries).await else {
                return Ok(());
            };
            entries
        };
        let now = now_ms();
        self.pacer.push(&mut self.closed, now);
        if shutdown.is_cancelled() {
            self.pacer.flush(&mut self.due);
        } else {
            self.pacer.due(now, &mut self.due);
        }
        if self.publish_due(conn).await? > 0 {
            self.stats
                .window_close
                .observe(started.elapsed().as_micros() as u64);
        }
        group::ack(conn, &self.keys, WINDOWS_GROUP, &entries).await?;
        Ok(())
    }

    /// Adds `entries` to the roll-up and closes the windows due, off the runtime's threads:
    /// a close of thousands of servers takes the CPU for tens of milliseconds (about 90 ms for
    /// 10,000 servers of 12 metrics here), which on a runtime thread would hold up every
    /// request and socket queued behind it. Gives the entries back to be acknowledged; `None`
    /// when the runtime is shutting down (the open windows are lost then in any case).
    async fn add_and_close(&mut self, mut entries: Vec<RawEntry>) -> Option<Vec<RawEntry>> {
        let mut rollup = self.rollup.take()?;
        let mut decoder = self.decoder.take().unwrap_or_else(wire::entry_decoder);
        let mut closed = std::mem::take(&mut self.closed);
        let done = tokio::task::spawn_blocking(move || {
            add_entries(&mut rollup, &mut decoder, &mut entries, &mut closed);
            rollup.close_due(now_ms(), CLOSE_GRACE_MS, &mut closed);
            (rollup, decoder, closed, entries)
        })
        .await;
        match done {
            Ok((rollup, decoder, closed, entries)) => {
                self.rollup = Some(rollup);
                self.decoder = Some(decoder);
                self.closed = closed;
                Some(entries)
            }
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => None,
            },
        }
    }

    /// Publishes the windows let out so far; on an error they stay, to go out on the next
    /// connection.
    async fn publish_due(&mut self, conn: &mut Connection) -> Result<usize, WorkerError> {
        let n = self.due.len();
        if n == 0 {
            return Ok(0);
        }
        let ttl_ms = self.opts.snapshot_ttl.as_millis() as u64;
        let log_len = self.opts.window_log_len;
        let max_message = self.opts.pubsub_message_bytes;
        publish_windows(conn, &self.keys, &self.due, ttl_ms, log_len, max_message).await?;
        self.stats.windows.fetch_add(n as u64, Ordering::Relaxed);
        self.due.clear();
        Ok(n)
    }
}

/// Adds the samples of `entries` to the roll-up (windows that close meanwhile go to `closed`).
fn add_entries(
    rollup: &mut Rollup,
    decoder: &mut Decoder,
    entries: &mut [RawEntry],
    closed: &mut Vec<ClosedWindow>,
) {
    for e in entries {
        match wire::decode_entry(e, decoder) {
            Ok(d) => rollup.add(d.arrival_ms, &d.samples, closed),
            Err(err) => tracing::error!(error = %err, "undecodable stream entry"),
        }
    }
}

/// Appends a batch of closed windows to the window log (`KEYS[1]`, capped at about `ARGV[1]`
/// entries) and publishes it on the events channel (`KEYS[2]`) behind a mark line naming the
/// log entry, atomically.
const LOG_AND_PUBLISH: &str = r"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2])
redis.call('PUBLISH', KEYS[2], 'M\t\t' .. id .. '/0\t\n' .. ARGV[2])
return id
";

/// Publishes closed windows in messages of at most `max_message` bytes (each also one entry of
/// the window log, so the log holds at most `log_len` such messages), and keeps the last one
/// of each length per server (and across servers, `*`) in the snapshot hashes. With many
/// servers one close makes many windows: one message for all of them could pass Redis's
/// Pub/Sub output limit and cut every broadcaster off.
async fn publish_windows(
    conn: &mut Connection,
    keys: &Keys,
    closed: &[ClosedWindow],
    ttl_ms: u64,
    log_len: u64,
    max_message: usize,
) -> Result<(), WorkerError> {
    let mut lines = Vec::with_capacity((closed.len() * 512).min(max_message));
    let mut pipe = redis::pipe();
    let log_and_publish = |pipe: &mut redis::Pipeline, lines: &[u8]| {
        pipe.cmd("EVAL")
            .arg(LOG_AND_PUBLISH)
            .arg(2)
            .arg(&keys.window_log)
            .arg(&keys.channel)
            .arg(log_len)
            .arg(lines)
            .ignore();
    };
    for w in closed {
        let before = lines.len();
        wire::write_line(&mut lines, EventKind::Window, &w.server, None, &w.json);
        // Over the bound: what came before this window is one message, this one starts the
        // next (a single window over it still goes, alone).
        if lines.len() > max_message && before > 0 {
            log_and_publish(&mut pipe, &lines[..before]);
            lines.drain(..before);
        }
        let key = keys.server(&w.server);
        pipe.cmd("HSET")
            .arg(&key)
            .arg(format!("_window:{}", w.label))
            .arg(&w.json)
            .ignore();
        pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms).ignore();
    }
    if !lines.is_empty() {
        log_and_publish(&mut pipe, &lines);
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

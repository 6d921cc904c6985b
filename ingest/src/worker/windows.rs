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

/// One worker's window loop.
pub(super) struct WindowLoop {
    pub pool: Pool,
    pub keys: Keys,
    pub opts: WorkerOptions,
    pub stats: Arc<WorkerStats>,
    pub decoder: Decoder,
    /// `Some` while this worker is the leader.
    pub rollup: Option<Rollup>,
    pub closed: Vec<ClosedWindow>,
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
        self.roll(conn).await
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
        let rollup =
            self.rollup
                .insert(Rollup::new(opts.windows.clone(), opts.max_series, now_ms()));
        let mut cursor = "0-0".to_string();
        loop {
            let mut claimed = group::claim(
                conn,
                &self.keys,
                WINDOWS_GROUP,
                &opts.name,
                Duration::ZERO,
                TAKE_OVER_PAGE,
                &cursor,
            )
            .await?;
            self.stats.note_claimed(&claimed);
            add_entries(
                rollup,
                &mut self.decoder,
                &mut claimed.entries,
                &mut self.closed,
            );
            group::ack(conn, &self.keys, WINDOWS_GROUP, &claimed.entries).await?;
            if claimed.next == "0-0" {
                return Ok(());
            }
            cursor = claimed.next;
        }
    }

    /// Reads new entries (waiting at most until the next window closes), adds them, publishes
    /// the windows that closed, acknowledges.
    async fn roll(&mut self, conn: &mut Connection) -> Result<(), WorkerError> {
        let Some(rollup) = self.rollup.as_mut() else {
            return Ok(());
        };
        let until_close = rollup.next_close().saturating_sub(now_ms()).clamp(1, 250);
        let opts = &self.opts;
        let mut entries = group::read(
            conn,
            &self.keys,
            WINDOWS_GROUP,
            &opts.name,
            opts.batch,
            until_close,
        )
        .await?;
        add_entries(rollup, &mut self.decoder, &mut entries, &mut self.closed);
        let started = Instant::now();
        rollup.close_due(now_ms(), CLOSE_GRACE_MS, &mut self.closed);
        if !self.closed.is_empty() {
            let ttl_ms = self.opts.snapshot_ttl.as_millis() as u64;
            let log_len = self.opts.window_log_len;
            let max_message = self.opts.pubsub_message_bytes;
            publish_windows(conn, &self.keys, &self.closed, ttl_ms, log_len, max_message).await?;
            self.stats
                .window_close
                .observe(started.elapsed().as_micros() as u64);
            self.stats
                .windows
                .fetch_add(self.closed.len() as u64, Ordering::Relaxed);
            self.closed.clear();
        }
        group::ack(conn, &self.keys, WINDOWS_GROUP, &entries).await?;
        Ok(())
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

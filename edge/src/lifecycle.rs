//! Shutdown, wired once for every task of a process.
//!
//! A [`Lifecycle`] holds the cancellation token every loop watches, the tracker every spawned
//! task is registered on, and the one drain bound (`--drain-ms`): listeners stop accepting and
//! ask connections to finish, WebSocket sessions close with 1001, background loops (the Redis
//! writers, workers, the broadcaster) stop between batches, and [`Lifecycle::wait`] waits for
//! all of them, up to the drain bound. A task spawned any other way would be cut off mid-write
//! at exit, so every long-lived task goes through [`Lifecycle::spawn`].

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The shutdown signal, the tracked tasks and the drain bound of one process.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    token: CancellationToken,
    tracker: TaskTracker,
    drain: Duration,
}

impl Lifecycle {
    /// A lifecycle ending when `token` is cancelled, giving tasks `drain` to finish.
    pub fn new(token: CancellationToken, drain: Duration) -> Self {
        Self {
            token,
            tracker: TaskTracker::new(),
            drain,
        }
    }

    /// The shutdown signal.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Resolves once shutdown has begun.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// Whether shutdown has begun.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// How long tasks get to finish after shutdown begins.
    pub fn drain(&self) -> Duration {
        self.drain
    }

    /// Spawns `task`, tracked: [`Lifecycle::wait`] waits for it.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Waits for shutdown, then up to the drain bound for every tracked task.
    pub async fn wait(&self) {
        self.token.cancelled().await;
        self.tracker.close();
        if tokio::time::timeout(self.drain, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                drain_ms = self.drain.as_millis() as u64,
                tasks = self.tracker.len(),
                "tasks still running after the drain bound; stopping anyway"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn wait_lets_tracked_tasks_finish_their_work() {
        let life = Lifecycle::new(CancellationToken::new(), Duration::from_secs(5));
        let finished = Arc::new(AtomicBool::new(false));
        let (l, f) = (life.clone(), finished.clone());
        life.spawn(async move {
            l.cancelled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            f.store(true, Ordering::SeqCst);
        });
        life.token().cancel();
        life.wait().await;
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn wait_stops_at_the_drain_bound() {
        let life = Lifecycle::new(CancellationToken::new(), Duration::from_millis(50));
        life.spawn(std::future::pending::<()>());
        life.token().cancel();
        life.wait().await;
        assert_eq!(life.tracker.len(), 1, "the stuck task is still there");
    }
}

//! Retry pacing for the loops that reconnect to Redis (the writers, the workers' two loops, the
//! broadcaster): 100 ms doubling to 3 s, cut short by shutdown, reset after a success. One
//! helper so every loop backs off alike.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exponential backoff between attempts.
#[derive(Clone, Debug)]
pub struct Backoff {
    attempt: u32,
    first: Duration,
    max: Duration,
}

impl Default for Backoff {
    /// 100 ms, doubling to 3 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(3))
    }
}

impl Backoff {
    /// Waits `first` after the first failure, doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            attempt: 0,
            first,
            max,
        }
    }

    /// The wait before the next attempt (and counts the attempt).
    pub fn next_delay(&mut self) -> Duration {
        let d = self
            .first
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Sleeps the next delay, or until `shutdown`.
    pub async fn wait(&mut self, shutdown: &CancellationToken) {
        let d = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = shutdown.cancelled() => {}
        }
    }

    /// After a success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let ms: Vec<u128> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3000, 3000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}

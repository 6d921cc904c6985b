//! Window events let out evenly instead of all at once.
//!
//! Every server's 1 s window closes at the same boundary, so with 10,000 servers a roll-up
//! (System 2's aggregator, System 1's window leader) has 10,000 window events to publish in the
//! same millisecond (20,000 at a 10 s boundary).
//! Published together, they land in every dashboard's queue as one burst of megabytes: the
//! samples published right after wait behind it, and a dashboard's queue of events that may not
//! be shed can pass its byte limit and get the dashboard closed. The pacer releases the events
//! of a close in a straight line over `--window-spread-ms` instead (a window event arrives at
//! most that late), so dashboards and agents take them in slices between samples.

use std::collections::VecDeque;

use crate::rollup::ClosedWindow;
use crate::window::WindowSpec;

/// The default of `--window-spread-ms`.
pub const DEFAULT_SPREAD_MS: u64 = 500;

/// Queued window deliveries (windows times the clients each goes to, see
/// [`WindowPacer::set_fanout`]) up to this many go out at once: a slice this small (a few
/// hundred KB of events) costs the writers and a dashboard nothing, and windows that close a
/// few at a time (servers whose samples cross a boundary one by one) are then never held back.
/// Past it a close is spread, so 20 windows for 1,000 dashboards (20,000 events, 20 MB) are
/// spread as 10,000 windows for one dashboard are.
pub const AT_ONCE: usize = 256;

/// The spread actually used for `windows`: `wanted`, at most half the shortest window (a
/// close must be out before the next one).
pub fn spread_for(wanted: u64, windows: &[WindowSpec]) -> u64 {
    let shortest = windows.iter().map(|w| w.millis).min().unwrap_or(0);
    wanted.min(shortest / 2)
}

/// Closed windows waiting to be published, and the line they are let out along.
#[derive(Debug)]
pub struct WindowPacer {
    spread_ms: u64,
    queue: VecDeque<ClosedWindow>,
    /// The current line: `total` events from `start` to `start + spread_ms`, `released` so far.
    start: u64,
    total: usize,
    released: usize,
    /// Clients each window goes to (at least 1).
    fanout: usize,
}

impl WindowPacer {
    /// A pacer spreading each close over `spread_ms` (0: publish at once).
    pub fn new(spread_ms: u64) -> Self {
        Self {
            spread_ms,
            queue: VecDeque::new(),
            start: 0,
            total: 0,
            released: 0,
            fanout: 1,
        }
    }

    /// How many clients each window event goes to (the dashboards connected, say), so that
    /// [`AT_ONCE`] bounds what a slice costs the writers in all: a close of a few windows is
    /// spread when many dashboards each get all of it.
    pub fn set_fanout(&mut self, clients: usize) {
        self.fanout = clients.max(1);
    }

    /// Takes windows just closed at `now_ms`; what is still queued from an earlier close joins
    /// them on a new line that ends `spread_ms` from now.
    pub fn push(&mut self, closed: &mut Vec<ClosedWindow>, now_ms: u64) {
        if closed.is_empty() {
            return;
        }
        self.queue.extend(closed.drain(..));
        self.start = now_ms;
        self.total = self.queue.len();
        self.released = 0;
    }

    /// The windows due by `now_ms`, in the order they closed.
    pub fn due(&mut self, now_ms: u64, out: &mut Vec<ClosedWindow>) {
        let elapsed = now_ms.saturating_sub(self.start);
        let small = self.queue.len().saturating_mul(self.fanout) <= AT_ONCE;
        let n = if self.spread_ms == 0 || elapsed >= self.spread_ms || small {
            self.queue.len()
        } else {
            // Due by now on the line, rounded up so the first slice goes out at once.
            let on_line = (self.total as u64 * (elapsed + 1)).div_ceil(self.spread_ms) as usize;
            on_line.saturating_sub(self.released).min(self.queue.len())
        };
        self.released += n;
        out.extend(self.queue.drain(..n));
    }

    /// Everything still queued (on shutdown).
    pub fn flush(&mut self, out: &mut Vec<ClosedWindow>) {
        out.extend(self.queue.drain(..));
    }

    /// Whether windows are waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(n: usize, tag: &str) -> Vec<ClosedWindow> {
        (0..n)
            .map(|i| ClosedWindow {
                server: format!("{tag}{i}").into(),
                label: "1s".into(),
                json: Vec::new(),
            })
            .collect()
    }

    fn names(w: &[ClosedWindow]) -> Vec<String> {
        w.iter().map(|w| w.server.to_string()).collect()
    }

    #[test]
    fn a_close_goes_out_in_even_slices_over_the_spread() {
        let mut p = WindowPacer::new(100);
        p.push(&mut windows(10_000, "s"), 1_000);
        let mut out = Vec::new();
        let mut per_ms = Vec::new();
        for t in 1_000..1_100 {
            let before = out.len();
            p.due(t, &mut out);
            per_ms.push(out.len() - before);
        }
        assert_eq!(out.len(), 10_000, "all out by the end of the spread");
        assert!(p.is_empty());
        // The last 256 or fewer go together.
        assert!(per_ms[..98].iter().all(|&n| n == 100), "{per_ms:?}");
        assert_eq!(per_ms[98..], [200, 0]);
        assert_eq!(names(&out[..3]), ["s0", "s1", "s2"], "in close order");
    }

    #[test]
    fn a_late_check_takes_everything_due_and_no_more() {
        let mut p = WindowPacer::new(100);
        p.push(&mut windows(1_000, "s"), 0);
        let mut out = Vec::new();
        p.due(49, &mut out);
        assert_eq!(out.len(), 500);
        p.due(49, &mut out);
        assert_eq!(out.len(), 500, "nothing more in the same millisecond");
        p.due(500, &mut out);
        assert_eq!(out.len(), 1_000);
    }

    #[test]
    fn a_new_close_joins_what_is_left_on_a_new_line() {
        let mut p = WindowPacer::new(10);
        p.push(&mut windows(1_000, "a"), 0);
        let mut out = Vec::new();
        p.due(4, &mut out);
        assert_eq!(out.len(), 500);
        p.push(&mut windows(500, "b"), 5);
        p.due(5, &mut out);
        assert_eq!(out.len(), 600, "the line starts again over what is queued");
        for t in 6..15 {
            p.due(t, &mut out);
        }
        assert_eq!(out.len(), 1_500);
        assert_eq!(names(&out[499..501]), ["a499", "a500"]);
        assert_eq!(names(&out[1_000..1_001]), ["b0"]);
    }

    #[test]
    fn a_small_queue_goes_out_at_once() {
        let mut p = WindowPacer::new(500);
        let mut out = Vec::new();
        for t in 0..10 {
            p.push(&mut windows(AT_ONCE / 2, "s"), t);
            p.due(t, &mut out);
            assert!(p.is_empty(), "a few windows at a time are never held back");
        }
        p.push(&mut windows(AT_ONCE + 100, "b"), 10);
        p.due(10, &mut out);
        assert!(!p.is_empty(), "a burst is spread");
        assert_eq!(out.len(), 10 * (AT_ONCE / 2) + 1);
    }

    /// A close of a few windows goes out at once to a few dashboards, and is spread when many
    /// dashboards each get all of it.
    #[test]
    fn many_clients_spread_a_small_close() {
        let mut out = Vec::new();
        let mut p = WindowPacer::new(500);
        p.set_fanout(10);
        p.push(&mut windows(21, "s"), 0);
        p.due(0, &mut out);
        assert_eq!(out.len(), 21, "210 deliveries go at once");
        out.clear();
        p.set_fanout(1_000);
        p.push(&mut windows(21, "s"), 1_000);
        p.due(1_000, &mut out);
        assert_eq!(out.len(), 1, "21,000 deliveries: the first slice only");
        for t in 1_001..1_500 {
            p.due(t, &mut out);
        }
        assert_eq!(out.len(), 21, "all out within the spread");
        assert!(out.len() > 1 && p.is_empty());
    }

    #[test]
    fn no_spread_publishes_at_once_and_flush_empties() {
        let mut p = WindowPacer::new(0);
        p.push(&mut windows(7, "s"), 0);
        let mut out = Vec::new();
        p.due(0, &mut out);
        assert_eq!(out.len(), 7);
        let mut p = WindowPacer::new(1_000);
        p.push(&mut windows(7, "s"), 0);
        p.flush(&mut out);
        assert_eq!(out.len(), 14);
        assert!(p.is_empty());
    }
}

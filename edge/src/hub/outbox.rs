//! One client's queue and the policy that keeps it bounded, so a slow client costs only its own
//! queue and never slows a publisher.
//!
//! The queue holds at most `sample_cap` `sample` events; when a new one arrives on a full queue
//! the oldest `sample` is dropped and counted, and the writer reports the count to that client
//! with a `dropped` event. `window` and control events are never dropped; a client that lets
//! more than `other_cap` of them pile up is too slow to be served at all and is disconnected
//! (close 1008) rather than being allowed to grow without bound. The pong owed to the peer and a
//! requested close ride along, so the writer has one place to wait on.
//!
//! Bounded in bytes as well as in events: only the latest ping is answered (RFC 6455 5.5.3
//! allows it), so a peer that pings without reading owes itself one pong, not one per ping; and
//! a client has at most one snapshot queued (a snapshot can be megabytes): while one waits for
//! the writer, a further `snapshot.request` is refused with one `error` event, and requests
//! after that until the writer takes the snapshot are folded into that same refusal.
//!
//! Replay: while a replay is sent, published events are held aside; on release they are queued
//! except those the replay already sent (by log position), and such events arriving late from
//! the live feed are skipped from then on, so the seam has no gap and no repeat.
//!
//! The queue has its own short mutex, contended only by publishers and the client's writer; it
//! is the last lock in the hub's lock order (see the hub's module doc), and nothing is called
//! while it is held.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use super::{Event, EventKind, LogPosition, QueueLimits};

/// A close the server asks for: the close frame's code and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
}

/// What a writer takes from its queue in one go.
#[derive(Default)]
pub struct Drained {
    /// Events in publication order.
    pub events: Vec<Bytes>,
    /// The payload of the latest ping, owed a pong.
    pub pong: Option<Bytes>,
    /// Sample events shed since the last drain, and in all.
    pub dropped: u64,
    pub dropped_total: u64,
    /// The client fell too far behind on events that may not be shed.
    pub overflowed: bool,
    /// Close the socket with this code and reason after writing the rest.
    pub close: Option<CloseReason>,
}

/// One client's queue, and the wake-up of the writer that drains it.
pub(super) struct Outbox {
    queue: Mutex<Queue>,
    notify: Notify,
    /// Also woken for a pong or a close: what a writer holding its events back for the frame
    /// budget must not hold back.
    urgent: Notify,
    limits: QueueLimits,
}

#[derive(Default)]
struct Queue {
    seq: u64,
    samples: VecDeque<(u64, Bytes)>,
    others: VecDeque<(u64, Bytes)>,
    /// Bytes of the events in `samples` and `others`.
    bytes: usize,
    pong: Option<Bytes>,
    snapshot: SnapshotSlot,
    dropped_pending: u64,
    dropped_total: u64,
    overflowed: bool,
    close: Option<CloseReason>,
    /// While a replay runs, published events wait here instead of the queues.
    held: Option<Vec<Event>>,
    /// After a replay: events at or before this log position were sent by the replay, and
    /// are skipped when they also arrive live (the live feed can trail the log).
    replayed_through: Option<LogPosition>,
}

/// Whether a snapshot waits in the queue for the writer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum SnapshotSlot {
    #[default]
    Free,
    Queued,
    /// Queued, and a further request was refused with an `error` event, also queued.
    QueuedAndRefused,
}

/// What became of a snapshot request (see [`Outbox::snapshot_slot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotTurn {
    /// None is queued: build one and queue it with [`Outbox::send_snapshot`].
    Build,
    /// One is queued: send the client an `error` event saying so.
    Refuse,
    /// One is queued and the client was already told; nothing to send.
    Folded,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Outbox {
    /// An empty queue with `limits`.
    pub(super) fn new(limits: QueueLimits) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            urgent: Notify::new(),
            limits,
        }
    }

    /// Queues `wanted`, the client's share of one publish in order, in one go; returns how many.
    pub(super) fn offer<'a>(&self, wanted: impl Iterator<Item = &'a Event>) -> usize {
        let mut wanted = wanted.peekable();
        if wanted.peek().is_none() {
            return 0;
        }
        let mut n = 0;
        let mut q = lock(&self.queue);
        if let Some(held) = q.held.as_mut() {
            for e in wanted {
                held.push(e.clone());
                n += 1;
            }
            if held.len() > self.limits.other_cap + self.limits.sample_cap {
                q.overflowed = true;
                q.held = Some(Vec::new());
            }
            return n;
        }
        let through = q.replayed_through;
        for e in wanted {
            if through.is_some() && e.position.is_some_and(|p| Some(p) <= through) {
                continue;
            }
            n += 1;
            q.push(self.limits, e.kind, e.json.clone());
        }
        drop(q);
        self.notify.notify_one();
        n
    }

    /// Holds published events aside (a replay is about to be sent with [`Outbox::send`]).
    pub(super) fn hold(&self) {
        lock(&self.queue).held.get_or_insert_with(Vec::new);
    }

    /// Ends a hold: queues the held events except those at or before `replayed_through` (the
    /// last log position the replay sent), and from now on skips such events when they arrive
    /// late from the live feed.
    pub(super) fn release(&self, replayed_through: Option<LogPosition>) {
        let mut q = lock(&self.queue);
        let Some(held) = q.held.take() else { return };
        q.replayed_through = replayed_through;
        let done = |e: &Event| {
            replayed_through.is_some() && e.position.is_some_and(|p| Some(p) <= replayed_through)
        };
        for e in held.into_iter().filter(|e| !done(e)) {
            q.push(self.limits, e.kind, e.json);
        }
        drop(q);
        self.notify.notify_one();
    }

    /// Queues an event for this client only; never shed.
    pub(super) fn send(&self, json: Bytes) {
        lock(&self.queue).push_other(self.limits, json);
        self.notify.notify_one();
    }

    /// Owes the peer a pong for its latest ping (an earlier one still owed is dropped).
    pub(super) fn pong(&self, payload: Bytes) {
        lock(&self.queue).pong = Some(payload);
        self.notify.notify_one();
        self.urgent.notify_one();
    }

    /// Decides what to do with a `snapshot.request`: build one when none is queued; otherwise
    /// refuse it, once until the writer takes the queued snapshot (the caller queues the
    /// `error` event), then fold further requests into that refusal.
    pub(super) fn snapshot_slot(&self) -> SnapshotTurn {
        let mut q = lock(&self.queue);
        match q.snapshot {
            SnapshotSlot::Free => SnapshotTurn::Build,
            SnapshotSlot::Queued => {
                q.snapshot = SnapshotSlot::QueuedAndRefused;
                SnapshotTurn::Refuse
            }
            SnapshotSlot::QueuedAndRefused => SnapshotTurn::Folded,
        }
    }

    /// Queues a snapshot; the slot is taken until the writer drains it.
    pub(super) fn send_snapshot(&self, json: Bytes) {
        let mut q = lock(&self.queue);
        q.snapshot = SnapshotSlot::Queued;
        q.push_other(self.limits, json);
        drop(q);
        self.notify.notify_one();
    }

    /// Asks the writer to close once the queue is written (the first ask wins).
    pub(super) fn close(&self, close: CloseReason) {
        let mut q = lock(&self.queue);
        if q.close.is_none() {
            q.close = Some(close);
        }
        drop(q);
        self.notify.notify_one();
        self.urgent.notify_one();
    }

    /// Waits until something was queued.
    pub(super) async fn notified(&self) {
        self.notify.notified().await
    }

    /// Waits until a pong or a close was asked for (possibly already written: a stale wake-up
    /// costs one early drain).
    pub(super) async fn urgent(&self) {
        self.urgent.notified().await
    }

    /// Takes everything queued, events in publication order.
    pub(super) fn drain(&self) -> Drained {
        let mut q = lock(&self.queue);
        let samples = std::mem::take(&mut q.samples);
        let others = std::mem::take(&mut q.others);
        q.bytes = 0;
        q.snapshot = SnapshotSlot::Free;
        let d = Drained {
            events: Vec::new(),
            pong: q.pong.take(),
            dropped: std::mem::take(&mut q.dropped_pending),
            dropped_total: q.dropped_total,
            overflowed: q.overflowed,
            close: q.close.take(),
        };
        drop(q);
        merge(d, samples, others)
    }

    /// Sample events shed so far.
    pub(super) fn dropped_total(&self) -> u64 {
        lock(&self.queue).dropped_total
    }

    /// Events queued and not yet taken by the writer.
    pub(super) fn backlog(&self) -> usize {
        let q = lock(&self.queue);
        q.samples.len() + q.others.len()
    }
}

impl Queue {
    /// Queues one event: a `sample` sheds the oldest queued sample when the queue is full
    /// (counted); anything else is never shed (see [`Queue::push_other`]).
    fn push(&mut self, limits: QueueLimits, kind: EventKind, json: Bytes) {
        match kind {
            EventKind::Sample => {
                self.seq += 1;
                if self.samples.len() >= limits.sample_cap {
                    self.shed_oldest_sample();
                }
                self.bytes += json.len();
                self.samples.push_back((self.seq, json));
                self.within_bytes(limits);
            }
            EventKind::Window => self.push_other(limits, json),
        }
    }

    /// Queues an event that may not be shed; past `other_cap` of them the client is flagged as
    /// overflowed (its writer closes it) and the event is not kept.
    fn push_other(&mut self, limits: QueueLimits, json: Bytes) {
        self.seq += 1;
        if self.others.len() >= limits.other_cap {
            self.overflowed = true;
            return;
        }
        self.bytes += json.len();
        self.others.push_back((self.seq, json));
        self.within_bytes(limits);
    }

    /// Sheds the oldest samples while the queue holds more than `max_bytes`; when events that
    /// may not be shed alone pass it, flags the client as overflowed and lets go of them.
    fn within_bytes(&mut self, limits: QueueLimits) {
        while self.bytes > limits.max_bytes && !self.samples.is_empty() {
            self.shed_oldest_sample();
        }
        if self.bytes > limits.max_bytes {
            self.overflowed = true;
            self.others.clear();
            self.bytes = 0;
        }
    }

    fn shed_oldest_sample(&mut self) {
        if let Some((_, old)) = self.samples.pop_front() {
            self.bytes -= old.len();
            self.dropped_pending += 1;
            self.dropped_total += 1;
        }
    }
}

/// Merges the two queues by sequence number: every event in publication order.
fn merge(mut d: Drained, mut a: VecDeque<(u64, Bytes)>, mut b: VecDeque<(u64, Bytes)>) -> Drained {
    d.events.reserve(a.len() + b.len());
    loop {
        let take_a = match (a.front(), b.front()) {
            (Some(x), Some(y)) => x.0 < y.0,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_a { a.pop_front() } else { b.pop_front() };
        if let Some((_, bytes)) = next {
            d.events.push(bytes);
        }
    }
    d
}

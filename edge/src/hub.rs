//! Dashboard fan-out: every event goes to every client whose filter matches, through a bounded
//! queue per client, so a slow dashboard never slows ingest or the other dashboards.
//!
//! Events are encoded once and shared (`Bytes`), so fan-out costs a reference count per client.
//! Each client's queue holds at most `sample_cap` `sample` events; when a new one arrives on a
//! full queue the oldest `sample` is dropped and counted, and the writer reports the count to
//! that client with a `dropped` event. `window` and control events are never dropped; a client
//! that lets more than `other_cap` of them pile up is too slow to be served at all and is
//! disconnected (close 1008) rather than being allowed to grow without bound.
//!
//! The client list sits behind an `RwLock` that publishers only read: registering and leaving
//! (rare) take the write side. Each client's queue has its own short mutex, contended only by
//! publishers and that client's writer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::Bytes;
use tokio::sync::Notify;

/// What an event is, which decides whether it may be shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Sample,
    Window,
}

/// One encoded dashboard event.
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: EventKind,
    /// The server the event is about; `*` for across-all-servers windows.
    pub server: Arc<str>,
    pub json: Bytes,
    /// Position in a durable log (System 1's stream: entry ms, entry seq, index), used to
    /// stitch a replay to the live feed without gaps or repeats. `None` for live-only events.
    pub position: Option<(u64, u64, u32)>,
}

/// Who is on the other end of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Audience {
    /// Gets `sample` and `window` events matching its filter.
    Dashboard = 0,
    /// An agent: gets only the `window` events of the servers it sends.
    Producer = 1,
}

/// Limits of one client's queue.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    pub sample_cap: usize,
    pub other_cap: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            sample_cap: 16_384,
            other_cap: 65_536,
        }
    }
}

#[derive(Default)]
struct Outbox {
    seq: u64,
    samples: VecDeque<(u64, Bytes)>,
    others: VecDeque<(u64, Bytes)>,
    pongs: Vec<Bytes>,
    dropped_pending: u64,
    dropped_total: u64,
    overflowed: bool,
    close: Option<(u16, String)>,
    /// While a replay runs, published events wait here instead of the queues.
    held: Option<Vec<Event>>,
    /// After a replay: events at or before this log position were sent by the replay, and
    /// are skipped when they also arrive live (the live feed can trail the log).
    replayed_through: Option<(u64, u64, u32)>,
}

/// What a writer takes from its queue in one go.
#[derive(Default)]
pub struct Drained {
    /// Events in publication order.
    pub events: Vec<Bytes>,
    /// Pong payloads owed to the peer.
    pub pongs: Vec<Bytes>,
    /// Sample events shed since the last drain, and in all.
    pub dropped: u64,
    pub dropped_total: u64,
    /// The client fell too far behind on events that may not be shed.
    pub overflowed: bool,
    /// Close the socket with this code and reason after writing the rest.
    pub close: Option<(u16, String)>,
}

/// One connected socket, as the hub sees it.
pub struct Client {
    id: u64,
    audience: AtomicU8,
    /// `None`: every server. Producers start with an empty list and grow it.
    filter: RwLock<Option<Vec<Arc<str>>>>,
    outbox: Mutex<Outbox>,
    notify: Notify,
    limits: QueueLimits,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    /// This client's id, unique in its hub.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Who the client is.
    pub fn audience(&self) -> Audience {
        if self.audience.load(Ordering::Relaxed) == Audience::Producer as u8 {
            Audience::Producer
        } else {
            Audience::Dashboard
        }
    }

    /// Turns the client into a dashboard with `filter` (or back into a producer).
    pub fn set_audience(&self, audience: Audience, filter: Option<Vec<String>>) {
        self.audience.store(audience as u8, Ordering::Relaxed);
        self.set_filter(match audience {
            Audience::Dashboard => filter,
            Audience::Producer => Some(Vec::new()),
        });
    }

    /// Replaces the server filter (`None`: every server).
    pub fn set_filter(&self, filter: Option<Vec<String>>) {
        let f = filter.map(|ids| ids.into_iter().map(Arc::from).collect());
        *self.filter.write().unwrap_or_else(|e| e.into_inner()) = f;
    }

    /// The current filter.
    pub fn filter(&self) -> Option<Vec<String>> {
        self.filter
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|ids| ids.iter().map(|s| s.to_string()).collect())
    }

    /// Adds `server` to a producer's filter, so its windows come back on this socket.
    pub fn note_server(&self, server: &str) {
        {
            let f = self.filter.read().unwrap_or_else(|e| e.into_inner());
            if let Some(ids) = f.as_ref() {
                if ids.iter().any(|s| &**s == server) {
                    return;
                }
            } else {
                return;
            }
        }
        let mut f = self.filter.write().unwrap_or_else(|e| e.into_inner());
        if let Some(ids) = f.as_mut() {
            if !ids.iter().any(|s| &**s == server) {
                ids.push(Arc::from(server));
            }
        }
    }

    fn wants(&self, audience: Audience, filter: &Option<Vec<Arc<str>>>, e: &Event) -> bool {
        if audience == Audience::Producer && e.kind != EventKind::Window {
            return false;
        }
        match filter {
            None => true,
            Some(ids) => ids.contains(&e.server),
        }
    }

    /// Queues the events this client wants; returns how many.
    fn offer(&self, events: &[Event]) -> usize {
        let audience = self.audience();
        let filter = self.filter.read().unwrap_or_else(|e| e.into_inner());
        let mut wanted = events
            .iter()
            .filter(|e| self.wants(audience, &filter, e))
            .peekable();
        if wanted.peek().is_none() {
            return 0;
        }
        let mut n = 0;
        let mut out = lock(&self.outbox);
        if let Some(held) = out.held.as_mut() {
            for e in wanted {
                held.push(e.clone());
                n += 1;
            }
            if held.len() > self.limits.other_cap + self.limits.sample_cap {
                out.overflowed = true;
                out.held = Some(Vec::new());
            }
            return n;
        }
        let through = out.replayed_through;
        for e in wanted {
            if through.is_some() && e.position.is_some_and(|p| Some(p) <= through) {
                continue;
            }
            n += 1;
            out.seq += 1;
            let seq = out.seq;
            push(&mut out, self.limits, e.kind, seq, e.json.clone());
        }
        drop(out);
        self.notify.notify_one();
        n
    }

    /// Holds published events aside (a replay is about to be sent with [`Client::send`]).
    pub fn hold(&self) {
        lock(&self.outbox).held.get_or_insert_with(Vec::new);
    }

    /// Ends a hold: queues the held events except those at or before `replayed_through` (the
    /// last log position the replay sent), and from now on skips such events when they arrive
    /// late from the live feed.
    pub fn release(&self, replayed_through: Option<(u64, u64, u32)>) {
        let mut out = lock(&self.outbox);
        let Some(held) = out.held.take() else { return };
        out.replayed_through = replayed_through;
        let done = |e: &Event| {
            replayed_through.is_some() && e.position.is_some_and(|p| Some(p) <= replayed_through)
        };
        for e in held.into_iter().filter(|e| !done(e)) {
            out.seq += 1;
            let seq = out.seq;
            push(&mut out, self.limits, e.kind, seq, e.json);
        }
        drop(out);
        self.notify.notify_one();
    }

    /// Queues an event for this client only (hello, error, snapshot); never shed.
    pub fn send(&self, json: impl Into<Bytes>) {
        let mut out = lock(&self.outbox);
        out.seq += 1;
        let seq = out.seq;
        push_other(&mut out, self.limits, seq, json.into());
        drop(out);
        self.notify.notify_one();
    }

    /// Owes the peer a pong.
    pub fn pong(&self, payload: Bytes) {
        lock(&self.outbox).pongs.push(payload);
        self.notify.notify_one();
    }

    /// Asks the writer to close with `code` once the queue is written.
    pub fn close(&self, code: u16, reason: &str) {
        let mut out = lock(&self.outbox);
        if out.close.is_none() {
            out.close = Some((code, reason.to_string()));
        }
        drop(out);
        self.notify.notify_one();
    }

    /// Waits until something was queued.
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// Takes everything queued, events in publication order.
    pub fn drain(&self) -> Drained {
        let mut out = lock(&self.outbox);
        let samples = std::mem::take(&mut out.samples);
        let others = std::mem::take(&mut out.others);
        let d = Drained {
            events: Vec::new(),
            pongs: std::mem::take(&mut out.pongs),
            dropped: std::mem::take(&mut out.dropped_pending),
            dropped_total: out.dropped_total,
            overflowed: out.overflowed,
            close: out.close.take(),
        };
        drop(out);
        merge(d, samples, others)
    }

    /// Sample events shed so far.
    pub fn dropped_total(&self) -> u64 {
        lock(&self.outbox).dropped_total
    }
}

/// Queues one event: a `sample` sheds the oldest queued sample when the queue is full (counted);
/// anything else is never shed (see [`push_other`]).
fn push(out: &mut Outbox, limits: QueueLimits, kind: EventKind, seq: u64, json: Bytes) {
    match kind {
        EventKind::Sample => {
            if out.samples.len() >= limits.sample_cap {
                out.samples.pop_front();
                out.dropped_pending += 1;
                out.dropped_total += 1;
            }
            out.samples.push_back((seq, json));
        }
        EventKind::Window => push_other(out, limits, seq, json),
    }
}

fn push_other(out: &mut Outbox, limits: QueueLimits, seq: u64, json: Bytes) {
    if out.others.len() >= limits.other_cap {
        out.overflowed = true;
        return;
    }
    out.others.push_back((seq, json));
}

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

/// The set of connected clients.
pub struct Hub {
    clients: RwLock<Vec<Arc<Client>>>,
    next_id: AtomicU64,
    limits: QueueLimits,
    published: AtomicU64,
}

/// Removes its client from the hub when dropped.
pub struct Registration {
    hub: Arc<Hub>,
    client: Arc<Client>,
}

impl Registration {
    /// The registered client.
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut clients = self.hub.clients.write().unwrap_or_else(|e| e.into_inner());
        clients.retain(|c| c.id != self.client.id);
    }
}

impl Hub {
    /// An empty hub whose clients get `limits`.
    pub fn new(limits: QueueLimits) -> Arc<Self> {
        Arc::new(Self {
            clients: RwLock::new(Vec::new()),
            next_id: AtomicU64::new(1),
            limits,
            published: AtomicU64::new(0),
        })
    }

    /// Adds a client; it leaves when the registration is dropped.
    pub fn register(
        self: &Arc<Self>,
        audience: Audience,
        filter: Option<Vec<String>>,
    ) -> Registration {
        self.register_with(audience, filter, false)
    }

    /// Like [`Hub::register`]; with `held`, published events wait aside from the first one on
    /// (see [`Client::hold`]), so a replay sent before [`Client::release`] has no gap and no
    /// repeat at its seam.
    pub fn register_with(
        self: &Arc<Self>,
        audience: Audience,
        filter: Option<Vec<String>>,
        held: bool,
    ) -> Registration {
        let client = Arc::new(Client {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            audience: AtomicU8::new(audience as u8),
            filter: RwLock::new(None),
            outbox: Mutex::new(Outbox::default()),
            notify: Notify::new(),
            limits: self.limits,
        });
        client.set_audience(audience, filter);
        if held {
            client.hold();
        }
        self.clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(client.clone());
        Registration {
            hub: self.clone(),
            client,
        }
    }

    /// Offers `events` to every client.
    pub fn publish(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        self.published
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        let clients = self.clients.read().unwrap_or_else(|e| e.into_inner());
        for c in clients.iter() {
            c.offer(events);
        }
    }

    /// Connected clients of `audience`.
    pub fn count(&self, audience: Audience) -> usize {
        self.clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|c| c.audience() == audience)
            .count()
    }

    /// Events published so far.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, server: &str, n: u32) -> Event {
        Event {
            kind,
            server: Arc::from(server),
            json: Bytes::from(format!("{n}")),
            position: Some((u64::from(n), 0, 0)),
        }
    }

    #[test]
    fn full_queue_sheds_oldest_samples_but_keeps_windows() {
        let hub = Hub::new(QueueLimits {
            sample_cap: 3,
            other_cap: 100,
        });
        let reg = hub.register(Audience::Dashboard, None);
        hub.publish(&[ev(EventKind::Sample, "a", 1), ev(EventKind::Window, "a", 2)]);
        hub.publish(&[
            ev(EventKind::Sample, "a", 3),
            ev(EventKind::Sample, "a", 4),
            ev(EventKind::Sample, "a", 5),
        ]);
        let d = reg.client().drain();
        let got: Vec<_> = d
            .events
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert_eq!(got, ["2", "3", "4", "5"]);
        assert_eq!(d.dropped, 1);
        assert_eq!(d.dropped_total, 1);
        assert!(reg.client().drain().events.is_empty());
    }

    #[test]
    fn filters_and_producers() {
        let hub = Hub::new(QueueLimits::default());
        let only_b = hub.register(Audience::Dashboard, Some(vec!["b".into()]));
        let agent = hub.register(Audience::Producer, None);
        agent.client().note_server("a");
        hub.publish(&[
            ev(EventKind::Sample, "a", 1),
            ev(EventKind::Window, "a", 2),
            ev(EventKind::Sample, "b", 3),
            ev(EventKind::Window, "*", 4),
        ]);
        let b: Vec<_> = only_b.client().drain().events;
        assert_eq!(b, vec![Bytes::from("3")]);
        assert_eq!(agent.client().drain().events, vec![Bytes::from("2")]);
        assert_eq!(hub.count(Audience::Dashboard), 1);
        drop(only_b);
        assert_eq!(hub.count(Audience::Dashboard), 0);
    }

    #[test]
    fn held_events_are_released_without_the_replayed_ones() {
        let hub = Hub::new(QueueLimits::default());
        let reg = hub.register(Audience::Dashboard, None);
        reg.client().hold();
        hub.publish(&[ev(EventKind::Sample, "a", 1), ev(EventKind::Sample, "a", 2)]);
        reg.client().send(Bytes::from("replayed"));
        assert_eq!(reg.client().drain().events, vec![Bytes::from("replayed")]);
        reg.client().release(Some((1, 0, 0)));
        // Replayed already, arriving late from the live feed: skipped.
        hub.publish(&[ev(EventKind::Sample, "a", 1)]);
        hub.publish(&[ev(EventKind::Sample, "a", 3)]);
        assert_eq!(
            reg.client().drain().events,
            vec![Bytes::from("2"), Bytes::from("3")]
        );
    }

    #[test]
    fn window_overflow_is_flagged() {
        let hub = Hub::new(QueueLimits {
            sample_cap: 2,
            other_cap: 2,
        });
        let reg = hub.register(Audience::Dashboard, None);
        for i in 0..3 {
            hub.publish(&[ev(EventKind::Window, "a", i)]);
        }
        assert!(reg.client().drain().overflowed);
    }
}

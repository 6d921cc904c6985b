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
//! Routing: dashboards (few) sit in a list every publish visits, while agents (which only want
//! the windows of the servers they send, and may number tens of thousands) are indexed by server
//! id, so a publish costs O(dashboards + agents of its windows' servers) and never scales with
//! the number of connected agents; a batch without windows touches no agent.
//!
//! That registry sits behind an `RwLock` that publishers only read (once per publish):
//! registering, leaving and changing a client's audience or filter (rare) take the write side,
//! which keeps the index in step with what every client wants. Each client's queue has its own
//! short mutex, contended only by publishers and that client's writer.
//!
//! Lock order: the registry lock, then a client's filter lock, then that client's queue mutex
//! (its outbox). Every path that holds more than one of them starts in a method of [`Hub`]: a
//! publish reads the registry, then each client's filter, then locks its queue; registering,
//! leaving and changing an audience or filter write the registry, then the client's filter.
//! That is why those changes are the hub's methods, not the client's.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use tokio::sync::Notify;

mod position;

pub use position::LogPosition;

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
    /// Position in a durable log (System 1's stream), used to stitch a replay to the live feed
    /// without gaps or repeats. `None` for live-only events.
    pub position: Option<LogPosition>,
}

/// Who is on the other end of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Audience {
    /// Gets `sample` and `window` events matching its filter.
    Dashboard = 0,
    /// An agent: gets only the `window` events of the servers it sends.
    Agent = 1,
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
    close: Option<CloseReason>,
    /// While a replay runs, published events wait here instead of the queues.
    held: Option<Vec<Event>>,
    /// After a replay: events at or before this log position were sent by the replay, and
    /// are skipped when they also arrive live (the live feed can trail the log).
    replayed_through: Option<LogPosition>,
}

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
    /// Pong payloads owed to the peer.
    pub pongs: Vec<Bytes>,
    /// Sample events shed since the last drain, and in all.
    pub dropped: u64,
    pub dropped_total: u64,
    /// The client fell too far behind on events that may not be shed.
    pub overflowed: bool,
    /// Close the socket with this code and reason after writing the rest.
    pub close: Option<CloseReason>,
}

/// One connected socket, as the hub sees it.
pub struct Client {
    id: u64,
    /// The id of the hub that registered it: only that hub re-files it.
    hub: u64,
    /// Written only under the hub's registry lock (see [`Hub::reroute`]).
    audience: AtomicU8,
    /// `None`: every server. Agents start with an empty list and grow it. Written only under
    /// the hub's registry lock (taken first), so the registry's index always agrees with it.
    filter: RwLock<Option<Vec<Arc<str>>>>,
    outbox: Mutex<Outbox>,
    notify: Notify,
    limits: QueueLimits,
}

type Filter = Option<Vec<Arc<str>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// The filter a client of `audience` starts with: a dashboard's own, an agent's empty list.
fn initial_filter(audience: Audience, filter: Option<Vec<String>>) -> Filter {
    match audience {
        Audience::Dashboard => to_filter(filter),
        Audience::Agent => Some(Vec::new()),
    }
}

fn to_filter(filter: Option<Vec<String>>) -> Filter {
    filter.map(|ids| ids.into_iter().map(Arc::from).collect())
}

impl Client {
    /// This client's id, unique in its hub.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Who the client is.
    pub fn audience(&self) -> Audience {
        if self.audience.load(Ordering::Relaxed) == Audience::Agent as u8 {
            Audience::Agent
        } else {
            Audience::Dashboard
        }
    }

    /// The current filter.
    pub fn filter(&self) -> Option<Vec<String>> {
        read(&self.filter)
            .as_ref()
            .map(|ids| ids.iter().map(|s| s.to_string()).collect())
    }

    fn wants(&self, audience: Audience, filter: &Filter, e: &Event) -> bool {
        if audience == Audience::Agent && e.kind != EventKind::Window {
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
        let filter = read(&self.filter);
        self.enqueue(events.iter().filter(|e| self.wants(audience, &filter, e)))
    }

    /// Queues `wanted`, this client's share of one publish in order, in one go; returns how many.
    fn enqueue<'a>(&self, wanted: impl Iterator<Item = &'a Event>) -> usize {
        let mut wanted = wanted.peekable();
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
    pub fn release(&self, replayed_through: Option<LogPosition>) {
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

    /// Asks the writer to close with `close` once the queue is written (the first ask wins).
    pub fn close(&self, close: CloseReason) {
        let mut out = lock(&self.outbox);
        if out.close.is_none() {
            out.close = Some(close);
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

/// Who gets what, kept in step with every registered client's audience and filter.
#[derive(Default)]
struct Registry {
    /// Every dashboard, whatever its filter: offered every publish (they are few).
    dashboards: Vec<Arc<Client>>,
    /// Every agent, by client id.
    agents: HashMap<u64, Arc<Client>>,
    /// Agents whose filter is `None` (a `subscribe` to every server): offered every window.
    all_windows: Vec<Arc<Client>>,
    /// Server id -> the agents whose filter lists it, each once: the only agents a window
    /// of that server is offered to.
    by_server: HashMap<Arc<str>, Vec<Arc<Client>>>,
}

/// Each server of `ids` once.
fn distinct(ids: &[Arc<str>]) -> impl Iterator<Item = &Arc<str>> {
    let mut seen = HashSet::new();
    ids.iter().filter(move |s| seen.insert(*s))
}

/// Takes client `id` out of `list`.
fn take(list: &mut Vec<Arc<Client>>, id: u64) -> Option<Arc<Client>> {
    let i = list.iter().position(|c| c.id == id)?;
    Some(list.swap_remove(i))
}

impl Registry {
    /// Files `c` where its audience and `filter` (its current one) say.
    fn insert(&mut self, c: Arc<Client>, filter: &Filter) {
        if c.audience() == Audience::Dashboard {
            self.dashboards.push(c);
            return;
        }
        match filter {
            None => self.all_windows.push(c.clone()),
            Some(ids) => {
                for s in distinct(ids) {
                    self.by_server.entry(s.clone()).or_default().push(c.clone());
                }
            }
        }
        self.agents.insert(c.id, c);
    }

    /// Undoes [`Registry::insert`] for `c` with its current audience and `filter`; `None` when
    /// `c` is not registered.
    fn remove(&mut self, c: &Client, filter: &Filter) -> Option<Arc<Client>> {
        if c.audience() == Audience::Dashboard {
            return take(&mut self.dashboards, c.id);
        }
        let me = self.agents.remove(&c.id)?;
        match filter {
            None => {
                take(&mut self.all_windows, c.id);
            }
            Some(ids) => {
                for s in distinct(ids) {
                    if let Some(list) = self.by_server.get_mut(s) {
                        take(list, c.id);
                        if list.is_empty() {
                            self.by_server.remove(s);
                        }
                    }
                }
            }
        }
        Some(me)
    }

    /// Files registered agent `c` under `server`, just added to its filter list.
    fn index(&mut self, c: &Client, server: Arc<str>) {
        if c.audience() != Audience::Agent {
            return;
        }
        if let Some(me) = self.agents.get(&c.id) {
            self.by_server.entry(server).or_default().push(me.clone());
        }
    }
}

/// Tells hubs apart, so a hub never re-files another hub's client.
static NEXT_HUB_ID: AtomicU64 = AtomicU64::new(1);

/// The set of connected clients.
pub struct Hub {
    id: u64,
    registry: RwLock<Registry>,
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
        self.hub.leave(&self.client);
    }
}

impl Hub {
    /// An empty hub whose clients get `limits`.
    pub fn new(limits: QueueLimits) -> Arc<Self> {
        Arc::new(Self {
            id: NEXT_HUB_ID.fetch_add(1, Ordering::Relaxed),
            registry: RwLock::new(Registry::default()),
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
            hub: self.id,
            audience: AtomicU8::new(audience as u8),
            filter: RwLock::new(initial_filter(audience, filter)),
            outbox: Mutex::new(Outbox::default()),
            notify: Notify::new(),
            limits: self.limits,
        });
        if held {
            client.hold();
        }
        let mut registry = write(&self.registry);
        registry.insert(client.clone(), &read(&client.filter));
        drop(registry);
        Registration {
            hub: self.clone(),
            client,
        }
    }

    /// Takes `client` out of the registry (its registration was dropped).
    fn leave(&self, client: &Client) {
        let mut registry = write(&self.registry);
        registry.remove(client, &read(&client.filter));
    }

    /// Turns `client` into a dashboard with `filter`, or back into an agent (whose list of
    /// noted servers starts over).
    pub fn set_audience(&self, client: &Client, audience: Audience, filter: Option<Vec<String>>) {
        self.reroute(client, Some(audience), initial_filter(audience, filter));
    }

    /// Replaces `client`'s server filter (`None`: every server).
    pub fn set_filter(&self, client: &Client, filter: Option<Vec<String>>) {
        self.reroute(client, None, to_filter(filter));
    }

    /// Sets `client`'s audience (`None`: keeps it) and filter, and re-files it in the registry
    /// under the same write lock, unless it has left. Another hub's client is left as it is:
    /// changing it here would put it out of step with its own hub's index.
    fn reroute(&self, client: &Client, audience: Option<Audience>, filter: Filter) {
        if client.hub != self.id {
            return;
        }
        let mut registry = write(&self.registry);
        let mut f = write(&client.filter);
        let me = registry.remove(client, &f);
        if let Some(a) = audience {
            client.audience.store(a as u8, Ordering::Relaxed);
        }
        *f = filter;
        if let Some(me) = me {
            registry.insert(me, &f);
        }
    }

    /// Adds `server` to an agent's filter, so its windows come back on its socket.
    pub fn note_server(&self, client: &Client, server: &str) {
        let noted = |f: &Filter| {
            f.as_ref()
                .is_none_or(|ids| ids.iter().any(|s| &**s == server))
        };
        if client.hub != self.id || noted(&read(&client.filter)) {
            return;
        }
        let mut registry = write(&self.registry);
        let mut f = write(&client.filter);
        if noted(&f) {
            return;
        }
        let Some(ids) = f.as_mut() else { return };
        let server: Arc<str> = Arc::from(server);
        ids.push(server.clone());
        registry.index(client, server);
    }

    /// Offers `events` to every dashboard, and their windows to the agents that want them.
    pub fn publish(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        self.published
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        let registry = read(&self.registry);
        for c in &registry.dashboards {
            c.offer(events);
        }
        if registry.agents.is_empty() || !events.iter().any(|e| e.kind == EventKind::Window) {
            return;
        }
        for c in &registry.all_windows {
            c.offer(events);
        }
        // (client id, event index) for each window and each agent filed under its server;
        // sorted, an agent's windows are queued together and in publication order.
        let mut routed: Vec<(u64, usize, &Arc<Client>)> = Vec::new();
        for (i, e) in events.iter().enumerate() {
            if e.kind != EventKind::Window {
                continue;
            }
            if let Some(list) = registry.by_server.get(&e.server) {
                routed.extend(list.iter().map(|c| (c.id, i, c)));
            }
        }
        routed.sort_unstable_by_key(|&(id, i, _)| (id, i));
        for run in routed.chunk_by(|a, b| a.0 == b.0) {
            run[0].2.enqueue(run.iter().map(|&(_, i, _)| &events[i]));
        }
    }

    /// Connected clients of `audience`.
    pub fn count(&self, audience: Audience) -> usize {
        let registry = read(&self.registry);
        match audience {
            Audience::Dashboard => registry.dashboards.len(),
            Audience::Agent => registry.agents.len(),
        }
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
            position: Some(LogPosition {
                ms: u64::from(n),
                seq: 0,
                index: 0,
            }),
        }
    }

    fn texts(d: &Drained) -> Vec<String> {
        d.events
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    fn drained(c: &Client) -> Vec<String> {
        texts(&c.drain())
    }

    fn hub_with(sample_cap: usize, other_cap: usize) -> Arc<Hub> {
        Hub::new(QueueLimits {
            sample_cap,
            other_cap,
        })
    }

    #[test]
    fn full_queue_sheds_oldest_samples_but_keeps_windows() {
        let hub = hub_with(3, 100);
        let reg = hub.register(Audience::Dashboard, None);
        hub.publish(&[ev(EventKind::Sample, "a", 1), ev(EventKind::Window, "a", 2)]);
        hub.publish(&[
            ev(EventKind::Sample, "a", 3),
            ev(EventKind::Sample, "a", 4),
            ev(EventKind::Sample, "a", 5),
        ]);
        let d = reg.client().drain();
        assert_eq!(texts(&d), ["2", "3", "4", "5"]);
        assert_eq!(d.dropped, 1);
        assert_eq!(d.dropped_total, 1);
        assert!(reg.client().drain().events.is_empty());
    }

    #[test]
    fn filters_and_agents() {
        let hub = Hub::new(QueueLimits::default());
        let only_b = hub.register(Audience::Dashboard, Some(vec!["b".into()]));
        let agent = hub.register(Audience::Agent, None);
        hub.note_server(agent.client(), "a");
        hub.publish(&[
            ev(EventKind::Sample, "a", 1),
            ev(EventKind::Window, "a", 2),
            ev(EventKind::Sample, "b", 3),
            ev(EventKind::Window, "*", 4),
            ev(EventKind::Window, "b", 5),
        ]);
        let b: Vec<_> = only_b.client().drain().events;
        assert_eq!(b, vec![Bytes::from("3"), Bytes::from("5")]);
        assert_eq!(agent.client().drain().events, vec![Bytes::from("2")]);
        assert_eq!(hub.count(Audience::Dashboard), 1);
        drop(only_b);
        assert_eq!(hub.count(Audience::Dashboard), 0);

        // An agent never gets samples; noting more servers brings their windows too.
        hub.publish(&[ev(EventKind::Sample, "a", 6)]);
        assert!(drained(agent.client()).is_empty());
        hub.note_server(agent.client(), "b");
        hub.note_server(agent.client(), "a");
        hub.publish(&[
            ev(EventKind::Window, "b", 7),
            ev(EventKind::Sample, "b", 8),
            ev(EventKind::Window, "a", 9),
            ev(EventKind::Window, "c", 10),
            ev(EventKind::Window, "b", 11),
        ]);
        // Each window once, in publication order, whatever order the servers were noted in.
        assert_eq!(drained(agent.client()), ["7", "9", "11"]);
        assert_eq!(agent.client().filter(), Some(vec!["a".into(), "b".into()]));
        assert_consistent(&hub);
    }

    #[test]
    fn held_events_are_released_without_the_replayed_ones() {
        let hub = Hub::new(QueueLimits::default());
        let reg = hub.register(Audience::Dashboard, None);
        reg.client().hold();
        hub.publish(&[ev(EventKind::Sample, "a", 1), ev(EventKind::Sample, "a", 2)]);
        reg.client().send(Bytes::from("replayed"));
        assert_eq!(reg.client().drain().events, vec![Bytes::from("replayed")]);
        reg.client().release(Some(LogPosition {
            ms: 1,
            seq: 0,
            index: 0,
        }));
        // Replayed already, arriving late from the live feed: skipped.
        hub.publish(&[ev(EventKind::Sample, "a", 1)]);
        hub.publish(&[ev(EventKind::Sample, "a", 3)]);
        assert_eq!(
            reg.client().drain().events,
            vec![Bytes::from("2"), Bytes::from("3")]
        );
    }

    /// The registry agrees with every registered client's audience and filter.
    fn assert_consistent(hub: &Hub) {
        let r = read(&hub.registry);
        assert!(r
            .dashboards
            .iter()
            .all(|c| c.audience() == Audience::Dashboard));
        let mut filed = 0;
        for (id, c) in &r.agents {
            assert_eq!((*id, c.audience()), (c.id, Audience::Agent));
            match &*read(&c.filter) {
                None => assert!(r.all_windows.iter().any(|a| a.id == c.id)),
                Some(ids) => {
                    for s in distinct(ids) {
                        let n = r.by_server[s].iter().filter(|x| x.id == c.id).count();
                        assert_eq!(n, 1, "client {} under {s}", c.id);
                        filed += 1;
                    }
                }
            }
        }
        assert_eq!(r.by_server.values().map(Vec::len).sum::<usize>(), filed);
        assert!(r.by_server.values().all(|l| !l.is_empty()));
        assert!(r.all_windows.iter().all(|c| r.agents.contains_key(&c.id)));
    }

    #[test]
    fn subscribe_on_an_agent_socket_keeps_routing_windows_only() {
        let hub = Hub::new(QueueLimits::default());
        let agent = hub.register(Audience::Agent, None);
        hub.note_server(agent.client(), "a");
        hub.set_filter(agent.client(), None);
        assert_consistent(&hub);
        hub.publish(&[
            ev(EventKind::Sample, "a", 1),
            ev(EventKind::Window, "b", 2),
            ev(EventKind::Window, "*", 3),
        ]);
        assert_eq!(drained(agent.client()), ["2", "3"]);
        // A filter listing a server twice still gets its windows once.
        hub.set_filter(agent.client(), Some(vec!["c".into(), "c".into()]));
        assert_consistent(&hub);
        hub.publish(&[ev(EventKind::Window, "a", 4), ev(EventKind::Window, "c", 5)]);
        assert_eq!(drained(agent.client()), ["5"]);
        assert_eq!(hub.count(Audience::Agent), 1);
        drop(agent);
        assert_consistent(&hub);
        assert!(read(&hub.registry).by_server.is_empty());
        assert!(read(&hub.registry).all_windows.is_empty());
    }

    #[test]
    fn switching_audience_moves_the_client() {
        let hub = Hub::new(QueueLimits::default());
        let reg = hub.register(Audience::Agent, None);
        let c = reg.client();
        hub.note_server(c, "a");
        let batch = |n: u32| {
            [
                ev(EventKind::Sample, "a", n),
                ev(EventKind::Sample, "b", n + 1),
                ev(EventKind::Window, "a", n + 2),
                ev(EventKind::Window, "b", n + 3),
            ]
        };

        hub.set_audience(c, Audience::Dashboard, Some(vec!["b".into()]));
        assert_eq!(hub.count(Audience::Dashboard), 1);
        assert_eq!(hub.count(Audience::Agent), 0);
        assert_consistent(&hub);
        hub.publish(&batch(10));
        assert_eq!(drained(c), ["11", "13"]);

        // Back to an agent: the noted servers start over, then only their windows come.
        hub.set_audience(c, Audience::Agent, None);
        assert_eq!(hub.count(Audience::Dashboard), 0);
        assert_eq!(hub.count(Audience::Agent), 1);
        hub.publish(&batch(20));
        assert!(drained(c).is_empty());
        hub.note_server(c, "a");
        assert_consistent(&hub);
        hub.publish(&batch(30));
        assert_eq!(drained(c), ["32"]);

        hub.set_audience(c, Audience::Dashboard, None);
        assert_consistent(&hub);
        hub.publish(&batch(40));
        assert_eq!(drained(c), ["40", "41", "42", "43"]);
    }

    #[test]
    fn a_dropped_registration_gets_nothing_and_stays_out() {
        let hub = Hub::new(QueueLimits::default());
        let dash = hub.register(Audience::Dashboard, None);
        let agent = hub.register(Audience::Agent, None);
        hub.note_server(agent.client(), "a");
        let all = hub.register(Audience::Agent, None);
        hub.set_filter(all.client(), None);
        let (d, a, w) = (
            dash.client().clone(),
            agent.client().clone(),
            all.client().clone(),
        );
        assert_eq!(hub.count(Audience::Dashboard), 1);
        assert_eq!(hub.count(Audience::Agent), 2);
        drop((dash, agent, all));
        assert_eq!(hub.count(Audience::Dashboard), 0);
        assert_eq!(hub.count(Audience::Agent), 0);
        assert!(read(&hub.registry).by_server.is_empty());

        // Changes on a client that left update it but do not put it back.
        hub.note_server(&a, "b");
        hub.set_audience(&d, Audience::Agent, None);
        hub.note_server(&d, "a");
        hub.set_audience(&w, Audience::Dashboard, None);
        assert_eq!(hub.count(Audience::Dashboard), 0);
        assert_eq!(hub.count(Audience::Agent), 0);
        assert_consistent(&hub);
        hub.publish(&[ev(EventKind::Sample, "a", 1), ev(EventKind::Window, "a", 2)]);
        for c in [&d, &a, &w] {
            assert!(drained(c).is_empty());
        }
        assert_eq!(a.filter(), Some(vec!["a".into(), "b".into()]));
    }

    #[test]
    fn a_held_agent_gets_its_windows_on_release() {
        let hub = Hub::new(QueueLimits::default());
        let agent = hub.register_with(Audience::Agent, None, true);
        hub.note_server(agent.client(), "a");
        hub.publish(&[ev(EventKind::Window, "a", 1), ev(EventKind::Window, "b", 2)]);
        assert!(drained(agent.client()).is_empty());
        agent.client().release(None);
        assert_eq!(drained(agent.client()), ["1"]);
    }

    #[test]
    fn a_hub_leaves_another_hubs_client_alone() {
        let (one, two) = (
            Hub::new(QueueLimits::default()),
            Hub::new(QueueLimits::default()),
        );
        let agent = one.register(Audience::Agent, None);
        two.note_server(agent.client(), "a");
        two.set_audience(agent.client(), Audience::Dashboard, None);
        two.set_filter(agent.client(), None);
        assert_eq!(agent.client().audience(), Audience::Agent);
        assert_eq!(agent.client().filter(), Some(Vec::new()));
        assert_eq!(one.count(Audience::Agent), 1);
        assert_eq!(two.count(Audience::Dashboard), 0);
        assert_eq!(two.count(Audience::Agent), 0);
        assert_consistent(&one);
        assert_consistent(&two);
    }

    #[test]
    fn an_agent_gets_its_share_of_a_publish_in_one_go() {
        // Held events may not exceed 1: a batch over that is lost as a whole, as for dashboards.
        let hub = hub_with(0, 1);
        // Another agent of the same servers, so the routing interleaves the two.
        let other = hub.register(Audience::Agent, None);
        let agent = hub.register_with(Audience::Agent, None, true);
        for s in ["a", "b"] {
            hub.note_server(other.client(), s);
            hub.note_server(agent.client(), s);
        }
        hub.publish(&[
            ev(EventKind::Window, "a", 1),
            ev(EventKind::Window, "b", 2),
            ev(EventKind::Window, "a", 3),
        ]);
        agent.client().release(None);
        let d = agent.client().drain();
        assert!(d.overflowed);
        assert!(d.events.is_empty());
    }

    #[test]
    fn with_many_agents_a_sample_batch_reaches_only_the_dashboards() {
        const AGENTS: usize = 10_000;
        let hub = Hub::new(QueueLimits::default());
        let agents: Vec<_> = (0..AGENTS)
            .map(|i| {
                let r = hub.register(Audience::Agent, None);
                hub.note_server(r.client(), &format!("s{i}"));
                r
            })
            .collect();
        let every = hub.register(Audience::Dashboard, None);
        let one = hub.register(Audience::Dashboard, Some(vec!["s5".into()]));
        let none = hub.register(Audience::Dashboard, Some(vec!["x".into()]));
        assert_eq!(hub.count(Audience::Agent), AGENTS);
        assert_eq!(hub.count(Audience::Dashboard), 3);

        hub.publish(&[
            ev(EventKind::Sample, "s5", 1),
            ev(EventKind::Sample, "s7", 2),
        ]);
        assert_eq!(drained(every.client()), ["1", "2"]);
        assert_eq!(drained(one.client()), ["1"]);
        assert!(drained(none.client()).is_empty());
        assert!(agents.iter().all(|a| drained(a.client()).is_empty()));

        hub.publish(&[
            ev(EventKind::Window, "s42", 3),
            ev(EventKind::Window, "*", 4),
        ]);
        assert_eq!(drained(every.client()), ["3", "4"]);
        assert!(drained(one.client()).is_empty());
        for (i, a) in agents.iter().enumerate() {
            let want: &[&str] = if i == 42 { &["3"] } else { &[] };
            assert_eq!(drained(a.client()), want, "agent {i}");
        }
        assert_consistent(&hub);
        drop(agents);
        assert_eq!(hub.count(Audience::Agent), 0);
        assert!(read(&hub.registry).by_server.is_empty());
    }

    #[test]
    fn concurrent_changes_keep_the_index_consistent() {
        let hub = Hub::new(QueueLimits::default());
        let regs: Vec<_> = (0..8)
            .map(|_| hub.register(Audience::Agent, None))
            .collect();
        std::thread::scope(|s| {
            for (t, r) in regs.iter().enumerate() {
                let c = r.client().clone();
                let hub = hub.clone();
                s.spawn(move || {
                    for i in 0..300 {
                        match (i + t) % 4 {
                            0 => hub.note_server(&c, &format!("s{}", i % 7)),
                            1 => hub.set_audience(&c, Audience::Dashboard, Some(vec!["s1".into()])),
                            2 => hub.set_audience(&c, Audience::Agent, None),
                            _ => hub.note_server(&c, "s1"),
                        }
                    }
                });
            }
            for _ in 0..2 {
                let hub = hub.clone();
                s.spawn(move || {
                    for i in 0..300 {
                        hub.publish(&[ev(EventKind::Window, &format!("s{}", i % 7), i)]);
                    }
                });
            }
        });
        assert_consistent(&hub);
        assert_eq!(
            hub.count(Audience::Dashboard) + hub.count(Audience::Agent),
            8
        );
        drop(regs);
        assert_consistent(&hub);
        assert_eq!(hub.count(Audience::Agent), 0);
    }

    #[test]
    fn window_overflow_is_flagged() {
        let hub = hub_with(2, 2);
        let reg = hub.register(Audience::Dashboard, None);
        for i in 0..3 {
            hub.publish(&[ev(EventKind::Window, "a", i)]);
        }
        assert!(reg.client().drain().overflowed);
    }
}

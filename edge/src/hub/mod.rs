//! Dashboard fan-out: every event goes to every client that wants it, through a bounded queue
//! per client, so a slow dashboard never slows ingest or the other dashboards.
//!
//! Events are encoded once and shared (`Bytes`), so fan-out costs a reference count per client.
//! The hub ties three parts together, one module each:
//!
//! - `outbox`: a client's queue and its policy: shed the oldest `sample` events past a cap
//!   (counted and reported), never shed `window` and control events but disconnect a client
//!   that lets too many pile up (close 1008), pongs and a requested close, and the hold and
//!   release that stitch a replay to the live feed;
//! - `registry`: who wants what: dashboards in a list every publish visits, agents indexed by
//!   server id, so a publish costs O(dashboards + agents of its windows' servers) and never
//!   scales with the number of connected agents; a batch without windows touches no agent;
//!   each client's filter is a set, so whether it wants an event is O(1) however long the
//!   filter;
//! - `position`: [`LogPosition`], where an event sits in a durable log.
//!
//! The registry sits behind an `RwLock` that publishers only read (once per publish):
//! registering, leaving and changing a client's audience or filter (rare) take the write side,
//! which keeps the index in step with what every client wants. A filter holds at most
//! [`QueueLimits::max_ids`] servers (`--max-filter-ids`): a longer one is refused before any
//! lock is taken, and the new filter's set is built (deduplicated) before the write lock, so
//! the lock is held for O(ids of the old and new filter), at most a few thousand steps. Each client's queue has its own
//! short mutex, contended only by publishers and that client's writer.
//!
//! Lock order: the registry lock, then a client's filter lock, then that client's queue mutex
//! (its outbox). Every path that holds more than one of them starts in a method of [`Hub`]: a
//! publish reads the registry, then each client's filter, then locks its queue; registering,
//! leaving and changing an audience or filter write the registry, then the client's filter.
//! That is why those changes are the hub's methods, not the client's.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use metrics_model::decode::MAX_NAME_LEN;

use crate::frame_budget::FrameGauge;

mod outbox;
mod position;
mod registry;
#[cfg(test)]
mod tests;

pub use outbox::{CloseReason, Drained, SnapshotTurn};
pub use position::LogPosition;

use outbox::Outbox;
use registry::{initial_filter, to_filter, wants, Filter, Registry};

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

/// Limits of one client: its queue and its filter.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    pub sample_cap: usize,
    pub other_cap: usize,
    /// Bytes of events queued per client, both kinds together: past it the oldest samples
    /// are shed, and if window and control events alone pass it the client is cut off.
    pub max_bytes: usize,
    /// Server ids in one client's filter: a dashboard's `?serverId=`, `subscribe` or
    /// `register`, an agent's `register`, and the servers an agent gets windows back for.
    pub max_ids: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            sample_cap: 16_384,
            other_cap: 65_536,
            max_bytes: 16 << 20,
            max_ids: QueueLimits::DEFAULT_MAX_IDS,
        }
    }
}

impl QueueLimits {
    /// The default of [`QueueLimits::max_ids`]: a filter of this many ids of the longest kind
    /// costs the hub about 0.5 MiB and a change of filter a few hundred microseconds under
    /// its write lock (BENCHMARKS.md).
    pub const DEFAULT_MAX_IDS: usize = 1_000;

    /// The most bytes of ids one filter keeps (what `max_ids` bounds).
    pub fn max_filter_bytes(&self) -> usize {
        self.max_ids * MAX_NAME_LEN
    }
}

/// Why the hub refused to change a client's filter. The text is what the peer sees.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A message (or `?serverId=`) named more servers than a filter may hold; nothing changed.
    #[error("{given} server ids is over the limit of {max} per filter (--max-filter-ids); nothing was changed")]
    TooManyIds { given: usize, max: usize },
    /// An agent sent a server past its filter's limit: its windows do not come back on this
    /// socket (its samples are aggregated as usual).
    #[error("this socket already gets the windows of {max} servers (--max-filter-ids): windows of `{server}` and of further new servers are not sent back on it (their samples are still aggregated); subscribe with serverId null for every server's windows")]
    AgentFull { server: String, max: usize },
}

/// One connected socket, as the hub sees it: who it is, what it wants, and its queue.
pub struct Client {
    id: u64,
    /// The id of the hub that registered it: only that hub re-files it.
    hub: u64,
    /// Written only under the hub's registry lock (see [`Hub::reroute`]).
    audience: AtomicU8,
    /// `None`: every server. Agents start with an empty list and grow it. Written only under
    /// the hub's registry lock (taken first), so the registry's index always agrees with it.
    filter: RwLock<Filter>,
    outbox: Outbox,
    /// Set when the client leaves its hub (its session ended).
    left: AtomicBool,
    /// The hub's count of peers dropped for not taking a write in time.
    write_timeouts: Arc<AtomicU64>,
    /// The hub's count of sample events shed for slow clients.
    shed: Arc<AtomicU64>,
    /// The hub's active dashboard writers, for the frame budget.
    frames: Arc<FrameGauge>,
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
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

    /// The current filter, sorted.
    pub fn filter(&self) -> Option<Vec<String>> {
        read(&self.filter).as_ref().map(|ids| {
            let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
            v.sort_unstable();
            v
        })
    }

    /// Whether this client's filter lets `server`'s events through: O(1).
    pub fn wants_server(&self, server: &str) -> bool {
        read(&self.filter)
            .as_ref()
            .is_none_or(|ids| ids.contains(server))
    }

    /// Queues the events this client wants; returns how many.
    fn offer(&self, events: &[Event]) -> usize {
        let audience = self.audience();
        let filter = read(&self.filter);
        self.outbox
            .offer(events.iter().filter(|e| wants(audience, &filter, e)))
    }

    /// Holds published events aside (a replay is about to be sent with [`Client::send`]).
    pub fn hold(&self) {
        self.outbox.hold();
    }

    /// Ends a hold: queues the held events except those at or before `replayed_through` (the
    /// last log position the replay sent), and from now on skips such events when they arrive
    /// late from the live feed.
    pub fn release(&self, replayed_through: Option<LogPosition>) {
        self.outbox.release(replayed_through);
    }

    /// Queues an event for this client only (hello, error, snapshot); never shed.
    pub fn send(&self, json: impl Into<Bytes>) {
        self.outbox.send(json.into());
    }

    /// Owes the peer a pong for its latest ping (an earlier one still owed is dropped).
    pub fn pong(&self, payload: Bytes) {
        self.outbox.pong(payload);
    }

    /// What to do with a `snapshot.request`: at most one snapshot is queued per client.
    pub fn snapshot_slot(&self) -> SnapshotTurn {
        self.outbox.snapshot_slot()
    }

    /// Queues a snapshot built after [`Client::snapshot_slot`] said [`SnapshotTurn::Build`].
    pub fn send_snapshot(&self, json: impl Into<Bytes>) {
        self.outbox.send_snapshot(json.into());
    }

    /// Counts this client's peer as dropped for not taking a write within the write timeout.
    pub fn note_write_timeout(&self) {
        self.write_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Asks the writer to close with `close` once the queue is written (the first ask wins).
    pub fn close(&self, close: CloseReason) {
        self.outbox.close(close);
    }

    /// Waits until something was queued.
    pub async fn notified(&self) {
        self.outbox.notified().await
    }

    /// Waits until a pong or a close was asked for: what a writer waiting out its frame
    /// interval breaks off for (a stale wake-up is possible and harmless).
    pub async fn urgent(&self) {
        self.outbox.urgent().await
    }

    /// The frame budget's gauge this client's writer counts itself in (shared by the hub).
    pub fn frame_gauge(&self) -> &Arc<FrameGauge> {
        &self.frames
    }

    /// Takes everything queued, events in publication order.
    pub fn drain(&self) -> Drained {
        let d = self.outbox.drain();
        if d.dropped > 0 {
            self.shed.fetch_add(d.dropped, Ordering::Relaxed);
        }
        d
    }

    /// Sample events shed so far.
    pub fn dropped_total(&self) -> u64 {
        self.outbox.dropped_total()
    }

    /// Events queued and not yet taken by the writer: what a sender that must not overrun
    /// the queue (a replay) waits on.
    pub fn backlog(&self) -> usize {
        self.outbox.backlog()
    }

    /// Whether the client's session has ended (it left the hub).
    pub fn has_left(&self) -> bool {
        self.left.load(Ordering::Relaxed)
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
    write_timeouts: Arc<AtomicU64>,
    shed: Arc<AtomicU64>,
    frames: Arc<FrameGauge>,
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
            write_timeouts: Arc::new(AtomicU64::new(0)),
            shed: Arc::new(AtomicU64::new(0)),
            frames: Arc::new(FrameGauge::default()),
        })
    }

    /// Adds a client; it leaves when the registration is dropped.
    ///
    /// # Panics
    /// When `filter` has more than [`QueueLimits::max_ids`] ids: check with
    /// [`Hub::check_filter`] first (the sessions refuse such a request before upgrading).
    pub fn register(
        self: &Arc<Self>,
        audience: Audience,
        filter: Option<Vec<String>>,
    ) -> Registration {
        self.register_with(audience, filter, false)
    }

    /// The limits of this hub's clients.
    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    /// Refuses a filter of more than [`QueueLimits::max_ids`] ids (counted as given, repeats
    /// included, so the check costs nothing whatever the message holds).
    pub fn check_filter(&self, filter: Option<&[String]>) -> Result<(), FilterError> {
        match filter {
            Some(ids) if ids.len() > self.limits.max_ids => Err(FilterError::TooManyIds {
                given: ids.len(),
                max: self.limits.max_ids,
            }),
            _ => Ok(()),
        }
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
        assert!(
            self.check_filter(filter.as_deref()).is_ok(),
            "filter over --max-filter-ids: check_filter before register"
        );
        let client = Arc::new(Client {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            hub: self.id,
            audience: AtomicU8::new(audience as u8),
            filter: RwLock::new(initial_filter(audience, filter)),
            outbox: Outbox::new(self.limits),
            left: AtomicBool::new(false),
            write_timeouts: self.write_timeouts.clone(),
            shed: self.shed.clone(),
            frames: self.frames.clone(),
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
        client.left.store(true, Ordering::Relaxed);
        let mut registry = write(&self.registry);
        registry.remove(client, &read(&client.filter));
    }

    /// Turns `client` into a dashboard with `filter`, or into an agent whose set of noted
    /// servers starts over from `filter` (`None`: none). A filter over the limit changes
    /// nothing.
    pub fn set_audience(
        &self,
        client: &Client,
        audience: Audience,
        filter: Option<Vec<String>>,
    ) -> Result<(), FilterError> {
        self.check_filter(filter.as_deref())?;
        // Built here, before `reroute` takes the write lock.
        let filter = initial_filter(audience, filter);
        self.reroute(client, Some(audience), filter);
        Ok(())
    }

    /// Replaces `client`'s server filter (`None`: every server). A filter over the limit
    /// changes nothing.
    pub fn set_filter(
        &self,
        client: &Client,
        filter: Option<Vec<String>>,
    ) -> Result<(), FilterError> {
        self.check_filter(filter.as_deref())?;
        let filter = to_filter(filter);
        self.reroute(client, None, filter);
        Ok(())
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

    /// Adds `server` to an agent's filter, so its windows come back on its socket: O(1), and
    /// nothing when it is noted already. An agent whose filter is full gets
    /// [`FilterError::AgentFull`] and its filter stays as it is.
    pub fn note_server(&self, client: &Client, server: &str) -> Result<(), FilterError> {
        let noted = |f: &Filter| f.as_ref().is_none_or(|ids| ids.contains(server));
        if client.hub != self.id || noted(&read(&client.filter)) {
            return Ok(());
        }
        let server: Arc<str> = Arc::from(server);
        let mut registry = write(&self.registry);
        let mut f = write(&client.filter);
        if noted(&f) {
            return Ok(());
        }
        let Some(ids) = f.as_mut() else {
            return Ok(());
        };
        if ids.len() >= self.limits.max_ids {
            return Err(FilterError::AgentFull {
                server: server.to_string(),
                max: self.limits.max_ids,
            });
        }
        ids.insert(server.clone());
        registry.index(client, server);
        Ok(())
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
                routed.extend(list.values().map(|c| (c.id, i, c)));
            }
        }
        routed.sort_unstable_by_key(|&(id, i, _)| (id, i));
        for run in routed.chunk_by(|a, b| a.0 == b.0) {
            let agent = run[0].2;
            agent.outbox.offer(run.iter().map(|&(_, i, _)| &events[i]));
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

    /// Peers dropped so far because a write to them did not complete within the write timeout.
    pub fn write_timeouts(&self) -> u64 {
        self.write_timeouts.load(Ordering::Relaxed)
    }

    /// Sample events shed so far for clients that read too slowly, all clients together.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// The frame budget's gauge: dashboard writers active now, and how often one held its
    /// events back to group them.
    pub fn frame_gauge(&self) -> &FrameGauge {
        &self.frames
    }
}

//! Who wants what: the hub's index of its clients, kept in step with every registered client's
//! audience and filter, so a publish visits only the clients that may want its events.
//!
//! Dashboards (few) sit in a list every publish visits. Agents (which only want the windows of
//! the servers they send, and may number tens of thousands) are indexed by server id, plus a
//! list of those that asked for every server's windows, so a publish costs
//! O(dashboards + agents of its windows' servers) and never scales with the number of connected
//! agents.
//!
//! A filter is a [`ServerSet`]: whether a client wants a server is one hash look-up (a scan of
//! at most [`FEW`] ids for small filters, which is faster than hashing), never a scan of a list
//! as long as the filter, so a dashboard with a large filter costs a publish O(1) per event.
//! Filters are capped ([`super::QueueLimits::max_ids`]) and built, deduplicated, before the
//! hub takes its write lock: under the lock a change costs O(ids of the old and new filter).
//!
//! The registry does no locking of its own: the hub holds it behind its `RwLock`, and changes
//! it only while it also holds the write side of the changed client's filter lock, which is how
//! the index always agrees with the filters (see the lock order in the hub's module doc).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{Audience, Client, Event, EventKind};

/// Up to this many ids a filter is a list scanned in order: comparing a few short strings is
/// cheaper than hashing one.
pub(super) const FEW: usize = 8;

/// A set of server ids, each once.
#[derive(Clone, Debug)]
pub(super) enum ServerSet {
    Few(Vec<Arc<str>>),
    Many(HashSet<Arc<str>>),
}

impl Default for ServerSet {
    fn default() -> Self {
        ServerSet::Few(Vec::new())
    }
}

impl ServerSet {
    /// The distinct ids of `ids`.
    pub(super) fn from_ids(ids: impl IntoIterator<Item = Arc<str>>) -> Self {
        let mut set = ServerSet::default();
        for s in ids {
            set.insert(s);
        }
        set
    }

    #[inline]
    pub(super) fn contains(&self, server: &str) -> bool {
        match self {
            ServerSet::Few(v) => v.iter().any(|s| &**s == server),
            ServerSet::Many(h) => h.contains(server),
        }
    }

    /// Adds `server`; false when it was there already.
    pub(super) fn insert(&mut self, server: Arc<str>) -> bool {
        match self {
            ServerSet::Few(v) if v.contains(&server) => false,
            ServerSet::Few(v) if v.len() < FEW => {
                v.push(server);
                true
            }
            ServerSet::Few(v) => {
                let mut h: HashSet<Arc<str>> = v.drain(..).collect();
                h.insert(server);
                *self = ServerSet::Many(h);
                true
            }
            ServerSet::Many(h) => h.insert(server),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            ServerSet::Few(v) => v.len(),
            ServerSet::Many(h) => h.len(),
        }
    }

    pub(super) fn iter(&self) -> Box<dyn Iterator<Item = &Arc<str>> + '_> {
        match self {
            ServerSet::Few(v) => Box::new(v.iter()),
            ServerSet::Many(h) => Box::new(h.iter()),
        }
    }
}

/// The servers a client wants: `None` for every server. Agents start with the servers they
/// registered with (usually none) and grow the set as they send.
pub(super) type Filter = Option<ServerSet>;

/// The filter a client of `audience` starts with: a dashboard's own (`None`: every server),
/// an agent's set of the servers it named (`None`: none yet).
pub(super) fn initial_filter(audience: Audience, filter: Option<Vec<String>>) -> Filter {
    match audience {
        Audience::Dashboard => to_filter(filter),
        Audience::Agent => Some(to_filter(filter).unwrap_or_default()),
    }
}

pub(super) fn to_filter(filter: Option<Vec<String>>) -> Filter {
    filter.map(|ids| ServerSet::from_ids(ids.into_iter().map(Arc::from)))
}

/// Whether a client of `audience` with `filter` wants `e`: agents only windows, and everyone
/// only the servers of its filter.
#[inline]
pub(super) fn wants(audience: Audience, filter: &Filter, e: &Event) -> bool {
    if audience == Audience::Agent && e.kind != EventKind::Window {
        return false;
    }
    match filter {
        None => true,
        Some(ids) => ids.contains(&e.server),
    }
}

/// Who gets what, kept in step with every registered client's audience and filter.
#[derive(Default)]
pub(super) struct Registry {
    /// Every dashboard, whatever its filter: offered every publish (they are few).
    pub(super) dashboards: Vec<Arc<Client>>,
    /// Every agent, by client id.
    pub(super) agents: HashMap<u64, Arc<Client>>,
    /// Agents whose filter is `None` (a `subscribe` to every server): offered every window.
    pub(super) all_windows: Vec<Arc<Client>>,
    /// Server id -> the agents whose filter lists it, by client id: the only agents a window
    /// of that server is offered to. A map, so an agent leaves each of its servers in O(1)
    /// however many agents send that server.
    pub(super) by_server: HashMap<Arc<str>, HashMap<u64, Arc<Client>>>,
}

/// Takes client `id` out of `list`.
fn take(list: &mut Vec<Arc<Client>>, id: u64) -> Option<Arc<Client>> {
    let i = list.iter().position(|c| c.id == id)?;
    Some(list.swap_remove(i))
}

impl Registry {
    /// Files `c` where its audience and `filter` (its current one) say.
    pub(super) fn insert(&mut self, c: Arc<Client>, filter: &Filter) {
        if c.audience() == Audience::Dashboard {
            self.dashboards.push(c);
            return;
        }
        match filter {
            None => self.all_windows.push(c.clone()),
            Some(ids) => {
                for s in ids.iter() {
                    self.by_server
                        .entry(s.clone())
                        .or_default()
                        .insert(c.id, c.clone());
                }
            }
        }
        self.agents.insert(c.id, c);
    }

    /// Undoes [`Registry::insert`] for `c` with its current audience and `filter`; `None` when
    /// `c` is not registered.
    pub(super) fn remove(&mut self, c: &Client, filter: &Filter) -> Option<Arc<Client>> {
        if c.audience() == Audience::Dashboard {
            return take(&mut self.dashboards, c.id);
        }
        let me = self.agents.remove(&c.id)?;
        match filter {
            None => {
                take(&mut self.all_windows, c.id);
            }
            Some(ids) => {
                for s in ids.iter() {
                    if let Some(list) = self.by_server.get_mut(s) {
                        list.remove(&c.id);
                        if list.is_empty() {
                            self.by_server.remove(s);
                        }
                    }
                }
            }
        }
        Some(me)
    }

    /// Files registered agent `c` under `server`, just added to its filter.
    pub(super) fn index(&mut self, c: &Client, server: Arc<str>) {
        if c.audience() != Audience::Agent {
            return;
        }
        if let Some(me) = self.agents.get(&c.id) {
            self.by_server
                .entry(server)
                .or_default()
                .insert(c.id, me.clone());
        }
    }
}

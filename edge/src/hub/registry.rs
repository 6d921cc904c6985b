//! Who wants what: the hub's index of its clients, kept in step with every registered client's
//! audience and filter, so a publish visits only the clients that may want its events.
//!
//! Dashboards (few) sit in a list every publish visits. Agents (which only want the windows of
//! the servers they send, and may number tens of thousands) are indexed by server id, plus a
//! list of those that asked for every server's windows, so a publish costs
//! O(dashboards + agents of its windows' servers) and never scales with the number of connected
//! agents.
//!
//! The registry does no locking of its own: the hub holds it behind its `RwLock`, and changes
//! it only while it also holds the write side of the changed client's filter lock, which is how
//! the index always agrees with the filters (see the lock order in the hub's module doc).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{Audience, Client, Event, EventKind};

/// The servers a client wants: `None` for every server. Agents start with an empty list and
/// grow it as they send.
pub(super) type Filter = Option<Vec<Arc<str>>>;

/// The filter a client of `audience` starts with: a dashboard's own, an agent's empty list.
pub(super) fn initial_filter(audience: Audience, filter: Option<Vec<String>>) -> Filter {
    match audience {
        Audience::Dashboard => to_filter(filter),
        Audience::Agent => Some(Vec::new()),
    }
}

pub(super) fn to_filter(filter: Option<Vec<String>>) -> Filter {
    filter.map(|ids| ids.into_iter().map(Arc::from).collect())
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
    /// Server id -> the agents whose filter lists it, each once: the only agents a window
    /// of that server is offered to.
    pub(super) by_server: HashMap<Arc<str>, Vec<Arc<Client>>>,
}

/// Each server of `ids` once.
pub(super) fn distinct(ids: &[Arc<str>]) -> impl Iterator<Item = &Arc<str>> {
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
    pub(super) fn insert(&mut self, c: Arc<Client>, filter: &Filter) {
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
    pub(super) fn index(&mut self, c: &Client, server: Arc<str>) {
        if c.audience() != Audience::Agent {
            return;
        }
        if let Some(me) = self.agents.get(&c.id) {
            self.by_server.entry(server).or_default().push(me.clone());
        }
    }
}

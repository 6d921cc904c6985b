//! The hub's tests: queue policy, routing by audience and filter, replay hold and release, and
//! the registry's index staying in step with every client under concurrent changes.

use super::registry::distinct;
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
        max_bytes: usize::MAX,
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

#[test]
fn a_queue_over_its_byte_budget_sheds_samples_then_cuts_off() {
    let hub = Hub::new(QueueLimits {
        sample_cap: 1_000,
        other_cap: 1_000,
        max_bytes: 10,
    });
    let reg = hub.register(Audience::Dashboard, None);
    // Samples of 4 bytes: the third pushes past 10 bytes and sheds the oldest.
    let sample = |n: u32| Event {
        kind: EventKind::Sample,
        server: Arc::from("a"),
        json: Bytes::from(format!("s{n:03}")),
        position: None,
    };
    hub.publish(&[sample(1), sample(2), sample(3)]);
    let d = reg.client().drain();
    assert_eq!(texts(&d), ["s002", "s003"]);
    assert_eq!((d.dropped, d.overflowed), (1, false));
    // A window event alone over the budget cannot be shed: the client is cut off.
    hub.publish(&[Event {
        kind: EventKind::Window,
        server: Arc::from("a"),
        json: Bytes::from_static(b"a window event over ten bytes"),
        position: None,
    }]);
    let d = reg.client().drain();
    assert!(d.overflowed);
    assert!(d.events.is_empty(), "what could not be kept is let go");
}

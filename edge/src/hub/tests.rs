//! The hub's tests: queue policy, routing by audience and filter, replay hold and release, and
//! the registry's index staying in step with every client under concurrent changes.

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
        ..QueueLimits::default()
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
    hub.note_server(agent.client(), "a").unwrap();
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
    hub.note_server(agent.client(), "b").unwrap();
    hub.note_server(agent.client(), "a").unwrap();
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
                for s in ids.iter() {
                    assert!(
                        r.by_server[s].contains_key(&c.id),
                        "client {} under {s}",
                        c.id
                    );
                    filed += 1;
                }
            }
        }
    }
    assert_eq!(r.by_server.values().map(|l| l.len()).sum::<usize>(), filed);
    assert!(r.by_server.values().all(|l| !l.is_empty()));
    assert!(r.all_windows.iter().all(|c| r.agents.contains_key(&c.id)));
}

#[test]
fn subscribe_on_an_agent_socket_keeps_routing_windows_only() {
    let hub = Hub::new(QueueLimits::default());
    let agent = hub.register(Audience::Agent, None);
    hub.note_server(agent.client(), "a").unwrap();
    hub.set_filter(agent.client(), None).unwrap();
    assert_consistent(&hub);
    hub.publish(&[
        ev(EventKind::Sample, "a", 1),
        ev(EventKind::Window, "b", 2),
        ev(EventKind::Window, "*", 3),
    ]);
    assert_eq!(drained(agent.client()), ["2", "3"]);
    // A filter listing a server twice still gets its windows once.
    hub.set_filter(agent.client(), Some(vec!["c".into(), "c".into()]))
        .unwrap();
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
    hub.note_server(c, "a").unwrap();
    let batch = |n: u32| {
        [
            ev(EventKind::Sample, "a", n),
            ev(EventKind::Sample, "b", n + 1),
            ev(EventKind::Window, "a", n + 2),
            ev(EventKind::Window, "b", n + 3),
        ]
    };

    hub.set_audience(c, Audience::Dashboard, Some(vec!["b".into()]))
        .unwrap();
    assert_eq!(hub.count(Audience::Dashboard), 1);
    assert_eq!(hub.count(Audience::Agent), 0);
    assert_consistent(&hub);
    hub.publish(&batch(10));
    assert_eq!(drained(c), ["11", "13"]);

    // Back to an agent: the noted servers start over, then only their windows come.
    hub.set_audience(c, Audience::Agent, None).unwrap();
    assert_eq!(hub.count(Audience::Dashboard), 0);
    assert_eq!(hub.count(Audience::Agent), 1);
    hub.publish(&batch(20));
    assert!(drained(c).is_empty());
    hub.note_server(c, "a").unwrap();
    assert_consistent(&hub);
    hub.publish(&batch(30));
    assert_eq!(drained(c), ["32"]);

    hub.set_audience(c, Audience::Dashboard, None).unwrap();
    assert_consistent(&hub);
    hub.publish(&batch(40));
    assert_eq!(drained(c), ["40", "41", "42", "43"]);
}

#[test]
fn a_dropped_registration_gets_nothing_and_stays_out() {
    let hub = Hub::new(QueueLimits::default());
    let dash = hub.register(Audience::Dashboard, None);
    let agent = hub.register(Audience::Agent, None);
    hub.note_server(agent.client(), "a").unwrap();
    let all = hub.register(Audience::Agent, None);
    hub.set_filter(all.client(), None).unwrap();
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
    hub.note_server(&a, "b").unwrap();
    hub.set_audience(&d, Audience::Agent, None).unwrap();
    hub.note_server(&d, "a").unwrap();
    hub.set_audience(&w, Audience::Dashboard, None).unwrap();
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
    hub.note_server(agent.client(), "a").unwrap();
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
    two.note_server(agent.client(), "a").unwrap();
    two.set_audience(agent.client(), Audience::Dashboard, None)
        .unwrap();
    two.set_filter(agent.client(), None).unwrap();
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
        hub.note_server(other.client(), s).unwrap();
        hub.note_server(agent.client(), s).unwrap();
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
            hub.note_server(r.client(), &format!("s{i}")).unwrap();
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
                        0 => hub.note_server(&c, &format!("s{}", i % 7)).unwrap(),
                        1 => hub
                            .set_audience(&c, Audience::Dashboard, Some(vec!["s1".into()]))
                            .unwrap(),
                        2 => hub.set_audience(&c, Audience::Agent, None).unwrap(),
                        _ => hub.note_server(&c, "s1").unwrap(),
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
        ..QueueLimits::default()
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

fn hub_with_ids(max_ids: usize) -> Arc<Hub> {
    Hub::new(QueueLimits {
        max_ids,
        ..QueueLimits::default()
    })
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("s{i}")).collect()
}

#[test]
fn a_filter_over_the_limit_is_refused_and_changes_nothing() {
    let hub = hub_with_ids(3);
    let dash = hub.register(Audience::Dashboard, Some(vec!["a".into()]));
    let agent = hub.register(Audience::Agent, None);
    hub.note_server(agent.client(), "a").unwrap();
    // Four ids, repeats counted as given: over 3.
    let four = vec!["x".into(), "y".into(), "x".into(), "z".into()];
    let e = hub
        .set_filter(dash.client(), Some(four.clone()))
        .unwrap_err();
    assert_eq!(e, FilterError::TooManyIds { given: 4, max: 3 });
    assert!(e.to_string().contains("--max-filter-ids"), "{e}");
    let e = hub
        .set_audience(agent.client(), Audience::Dashboard, Some(four.clone()))
        .unwrap_err();
    assert_eq!(e, FilterError::TooManyIds { given: 4, max: 3 });
    assert!(hub
        .set_audience(dash.client(), Audience::Agent, Some(four))
        .is_err());
    assert_eq!(dash.client().filter(), Some(vec!["a".into()]));
    assert_eq!(dash.client().audience(), Audience::Dashboard);
    assert_eq!(agent.client().filter(), Some(vec!["a".into()]));
    assert_eq!(agent.client().audience(), Audience::Agent);
    assert_consistent(&hub);
    // At the limit: taken.
    hub.set_filter(dash.client(), Some(names(3))).unwrap();
    assert_eq!(dash.client().filter(), Some(names(3)));
    assert!(hub.check_filter(Some(&names(4))).is_err());
    assert!(hub.check_filter(None).is_ok());
}

#[test]
fn an_agent_registers_all_its_servers_at_once() {
    let hub = hub_with_ids(1_000);
    let agent = hub.register(Audience::Dashboard, None);
    let mut ids = names(1_000);
    ids.extend(names(10)); // repeats are filed once
    assert!(hub
        .set_audience(agent.client(), Audience::Agent, Some(ids.clone()))
        .is_err());
    ids.truncate(1_000);
    hub.set_audience(agent.client(), Audience::Agent, Some(ids))
        .unwrap();
    assert_consistent(&hub);
    assert_eq!(read(&hub.registry).by_server.len(), 1_000);
    hub.publish(&[
        ev(EventKind::Window, "s999", 1),
        ev(EventKind::Window, "s1000", 2),
        ev(EventKind::Window, "s0", 3),
    ]);
    assert_eq!(drained(agent.client()), ["1", "3"]);
    assert!(agent.client().wants_server("s7"));
    assert!(!agent.client().wants_server("s1000"));
}

#[test]
fn an_agent_past_the_limit_keeps_its_servers_and_is_told() {
    let hub = hub_with_ids(2);
    let agent = hub.register(Audience::Agent, None);
    hub.note_server(agent.client(), "a").unwrap();
    hub.note_server(agent.client(), "b").unwrap();
    hub.note_server(agent.client(), "a").unwrap(); // noted already: fine
    let e = hub.note_server(agent.client(), "c").unwrap_err();
    assert_eq!(
        e,
        FilterError::AgentFull {
            server: "c".into(),
            max: 2
        }
    );
    assert!(e.to_string().contains("--max-filter-ids"), "{e}");
    assert_eq!(agent.client().filter(), Some(vec!["a".into(), "b".into()]));
    assert_consistent(&hub);
}

#[test]
fn large_filters_route_by_set_membership() {
    let hub = hub_with_ids(1_000);
    let big = hub.register(Audience::Dashboard, Some(names(1_000)));
    let small = hub.register(Audience::Dashboard, Some(names(2)));
    hub.publish(&[
        ev(EventKind::Sample, "s1", 1),
        ev(EventKind::Sample, "s500", 2),
        ev(EventKind::Sample, "nope", 3),
        ev(EventKind::Window, "s999", 4),
    ]);
    assert_eq!(drained(big.client()), ["1", "2", "4"]);
    assert_eq!(drained(small.client()), ["1"]);
    // A filter growing past the small-list size becomes a set and keeps its ids.
    let agent = hub.register(Audience::Agent, None);
    for s in names(20) {
        hub.note_server(agent.client(), &s).unwrap();
    }
    assert_eq!(agent.client().filter().map(|f| f.len()), Some(20));
    assert_consistent(&hub);
}

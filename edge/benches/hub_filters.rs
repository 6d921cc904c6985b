//! What one maximal control message costs: an agent registering with every server id a 1 MiB
//! frame can hold, and a dashboard whose filter lists many ids receiving a batch of events.
//! Timed once per size with `Instant` (before the fix, the largest register took 80 s, too long
//! for criterion's repetitions); run with `cargo bench -p metrics-edge --bench hub_filters`.
//! BENCHMARKS.md has the figures before and after.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use metrics_edge::hub::{Audience, Event, EventKind, Hub, QueueLimits};
use metrics_model::decode::{with_decoder, Control, Message};

/// Ids of the form `srv-0000001`: 14 bytes each in a JSON array, so a 1 MiB frame holds
/// about 75,000.
fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("srv-{i:07}")).collect()
}

/// A hub whose filters hold up to `max_ids`.
fn hub(max_ids: usize) -> Arc<Hub> {
    Hub::new(QueueLimits {
        sample_cap: 1 << 20,
        other_cap: 1 << 20,
        max_bytes: usize::MAX,
        max_ids,
    })
}

/// The register frame of an agent naming `n` servers.
fn register_frame(n: usize) -> BytesMut {
    let list: Vec<String> = ids(n).iter().map(|s| format!("\"{s}\"")).collect();
    BytesMut::from(
        format!(
            "{{\"type\":\"register\",\"role\":\"producer\",\"serverId\":[{}]}}",
            list.join(",")
        )
        .as_bytes(),
    )
}

/// Decoding an agent's `register` frame of `n` ids and applying it as `handle_control` does,
/// on a hub whose filters hold `max_ids`; whether the hub took it.
fn register_agent(n: usize, max_ids: usize) -> (Duration, bool) {
    let hub = hub(max_ids);
    let reg = hub.register(Audience::Agent, None);
    let mut frame = register_frame(n);
    let t = Instant::now();
    let Ok(Message::Control(Control::Register { filter, .. })) =
        with_decoder(|d| d.decode_message(&mut frame, 0))
    else {
        panic!("the frame decodes as a register message");
    };
    let took = hub
        .set_audience(reg.client(), Audience::Agent, filter)
        .is_ok();
    (t.elapsed(), took)
}

/// `n` servers noted one at a time (an agent sending `n` distinct servers).
fn note_one_by_one(n: usize) -> Duration {
    let hub = hub(n);
    let reg = hub.register(Audience::Agent, None);
    let ids = ids(n);
    let t = Instant::now();
    for s in &ids {
        hub.note_server(reg.client(), s).expect("within the limit");
    }
    t.elapsed()
}

/// One published batch of `events` sample events to a dashboard whose filter has `n` ids
/// (none of them the events' server: the worst case of a scan).
fn publish_filtered(n: usize, events: usize) -> Duration {
    let hub = hub(n);
    let reg = hub.register(Audience::Dashboard, Some(ids(n)));
    let batch: Vec<Event> = (0..events)
        .map(|i| Event {
            kind: EventKind::Sample,
            server: Arc::from("elsewhere"),
            json: Bytes::from(format!("{i}")),
            position: None,
        })
        .collect();
    let t = Instant::now();
    hub.publish(black_box(&batch));
    let d = t.elapsed();
    black_box(reg.client().backlog());
    d
}

fn main() {
    let default = QueueLimits::DEFAULT_MAX_IDS;
    println!("decode + apply an agent's register naming n servers (--max-filter-ids {default}):");
    for n in [1_000, 10_000, 75_000] {
        let (d, took) = register_agent(n, default);
        let what = if took { "applied" } else { "refused" };
        println!("  n = {n:>6}: {d:?} ({what})");
    }
    println!("the same with the limit raised to n (every message applied):");
    for n in [1_000, 10_000, 75_000] {
        println!("  n = {n:>6}: {:?}", register_agent(n, n).0);
    }
    println!("note n servers one at a time:");
    for n in [1_000, 75_000] {
        println!("  n = {n:>6}: {:?}", note_one_by_one(n));
    }
    println!("publish 1,000 events to one dashboard whose filter has n ids:");
    for n in [1, 8, 1_000, 10_000, 75_000, 150_000] {
        let d = publish_filtered(n, 1_000);
        println!("  n = {n:>6}: {d:?} ({:?} per event)", d / 1_000);
    }
}

//! System 1's two wire formats (`ingest::wire`), both directions.
//!
//! The input is read three ways:
//! - as a stream entry's value: whatever `decode_entry` accepts, `encode_entry` writes back in a
//!   form that decodes to the same entry, and that form is a fixed point (encoding what it
//!   decodes to gives the same bytes);
//! - as a published Pub/Sub batch: `parse_batch` never panics, and writing its events back with
//!   `write_line` gives a batch that parses to the same events, again a fixed point;
//! - as a recipe for samples and events the system could produce: decoding what the encoders
//!   write gives them back.

#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use ingest::wire::{self, RawEntry};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use metrics_edge::hub::{Event, EventKind, LogPosition};
use metrics_model::decode::MAX_NAME_LEN;
use metrics_model::{Metrics, Sample};

fn decode(value: &[u8]) -> Option<wire::StoredEntry> {
    let mut raw = RawEntry {
        id: "1764349200123-0".into(),
        value: Some(value.to_vec()),
    };
    wire::decode_entry(&mut raw, &mut wire::entry_decoder()).ok()
}

fn encode(e: &wire::StoredEntry) -> Vec<u8> {
    wire::encode_entry(e.arrival_ms, &e.node, &e.samples)
}

fn entry_round_trip(data: &[u8]) {
    let Some(first) = decode(data) else {
        return;
    };
    let written = encode(&first);
    let again = decode(&written).expect("an encoded entry decodes");
    assert_eq!(
        (again.arrival_ms, &again.node, &again.samples),
        (first.arrival_ms, &first.node, &first.samples)
    );
    // -0 is written as `-0` and read back as the integer 0: equal as a number, not as bytes.
    let negative_zero = first.samples.iter().any(|s| {
        s.metrics
            .iter()
            .any(|(_, v)| v == 0.0 && v.is_sign_negative())
    });
    if !negative_zero {
        assert_eq!(encode(&again), written, "encoding is not a fixed point");
    }
}

fn write_batch(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        wire::write_line(&mut out, e.kind, &e.server, e.position, &e.json);
    }
    out
}

fn same_events(a: &[Event], b: &[Event]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.kind == y.kind && x.server == y.server && x.json == y.json && x.position == y.position
        })
}

fn batch_round_trip(data: &[u8]) {
    let events = wire::parse_batch(Bytes::copy_from_slice(data));
    let written = write_batch(&events);
    let again = wire::parse_batch(Bytes::from(written.clone()));
    assert!(same_events(&events, &again), "{events:?}\n{again:?}");
    assert_eq!(write_batch(&again), written, "writing is not a fixed point");
}

const NAME_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-";

fn name(u: &mut Unstructured<'_>, max: usize) -> Result<String> {
    let len = u.int_in_range(1..=max)?;
    (0..len)
        .map(|_| Ok(char::from(*u.choose(NAME_CHARS)?)))
        .collect()
}

fn sample(u: &mut Unstructured<'_>) -> Result<Sample> {
    let server_id = name(u, MAX_NAME_LEN)?;
    let timestamp = u.arbitrary()?;
    let mut metrics = Metrics::with_capacity(4);
    let mut names = std::collections::HashSet::new();
    for _ in 0..u.int_in_range(1..=8)? {
        let grouped = u.arbitrary::<bool>()?;
        let (prefix, n) = if grouped {
            let p = name(u, 16)?;
            (p, name(u, 16)?)
        } else {
            (String::new(), name(u, MAX_NAME_LEN)?)
        };
        let full = if prefix.is_empty() {
            n.clone()
        } else {
            format!("{prefix}.{n}")
        };
        let v = f64::from_bits(u.arbitrary()?);
        if !v.is_finite() || !names.insert(full) {
            continue;
        }
        metrics.push(&prefix, &n, v);
    }
    if metrics.is_empty() {
        metrics.push("", "x", 0.0);
    }
    Ok(Sample {
        server_id,
        timestamp,
        metrics,
    })
}

fn encoders_round_trip(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let samples = (0..u.int_in_range(1..=4)?)
        .map(|_| sample(&mut u))
        .collect::<Result<Vec<_>>>()?;
    let arrival_ms = u.arbitrary()?;
    let node = name(&mut u, 32)?;
    let e =
        decode(&wire::encode_entry(arrival_ms, &node, &samples)).expect("an encoded entry decodes");
    assert_eq!(
        (e.arrival_ms, &e.node, &e.samples),
        (arrival_ms, &node, &samples)
    );

    let mut events = Vec::new();
    for s in &samples {
        let position = if u.arbitrary()? {
            Some(LogPosition {
                ms: u.arbitrary()?,
                seq: u.arbitrary()?,
                index: u.arbitrary()?,
            })
        } else {
            None
        };
        let mut json = Vec::new();
        match position {
            Some(p) => wire::sample_event(&mut json, s, p),
            None => metrics_model::event::agent_sample(&mut json, s),
        }
        events.push(Event {
            kind: if u.arbitrary()? {
                EventKind::Sample
            } else {
                EventKind::Window
            },
            server: Arc::from(s.server_id.as_str()),
            json: Bytes::from(json),
            position,
        });
    }
    let parsed = wire::parse_batch(Bytes::from(write_batch(&events)));
    assert!(same_events(&events, &parsed), "{events:?}\n{parsed:?}");
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    entry_round_trip(data);
    batch_round_trip(data);
    let _ = encoders_round_trip(data);
});

//! The sample decoder's two paths must agree on every input: the hand-written fast path
//! (`Decoder::decode_json`, which falls back to simd-json when it does not accept) and the
//! simd-json path alone (`Decoder::decode_json_slow`). Both accept with the same samples (to
//! the bit: the same names, timestamps and f64 bit patterns), or both reject. The one-sample
//! and WebSocket-message entry points are held to the same answer, under the default limits
//! and under small ones (so the batch and metric-count limits are reached).

#![no_main]

use libfuzzer_sys::fuzz_target;
use metrics_model::decode::{Decoder, Limits, Message};
use metrics_model::Sample;

const ARRIVAL_MS: u64 = 1_764_349_200_000;

fn same(a: &[Sample], b: &[Sample]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.server_id == y.server_id
                && x.timestamp == y.timestamp
                && x.metrics.len() == y.metrics.len()
                && x.metrics
                    .iter()
                    .zip(y.metrics.iter())
                    .all(|((n, v), (m, w))| n == m && v.to_bits() == w.to_bits())
        })
}

/// True when the input's first JSON token opens an object.
fn is_object(data: &[u8]) -> bool {
    data.iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|&b| b == b'{')
}

fn check(d: &mut Decoder, data: &[u8]) {
    let slow = d.decode_json_slow(&mut data.to_vec(), ARRIVAL_MS);
    let fast = d.decode_json(&mut data.to_vec(), ARRIVAL_MS);
    match (&fast, &slow) {
        (Ok(f), Ok(s)) => assert!(same(f, s), "paths disagree:\nfast {f:?}\nslow {s:?}"),
        (Err(_), Err(_)) => {}
        _ => panic!("one path accepts, the other rejects:\nfast {fast:?}\nslow {slow:?}"),
    }

    // One sample (an NDJSON line, a streamed line): accepted exactly when the general path
    // accepts an object, with the same sample.
    let one = d.decode_one(&mut data.to_vec(), ARRIVAL_MS);
    match (&one, &slow) {
        (Ok(o), Ok(s)) => assert!(
            is_object(data) && same(std::slice::from_ref(o), s),
            "decode_one {o:?}, general path {s:?}"
        ),
        (Ok(o), Err(e)) => panic!("decode_one accepts {o:?}, general path rejects: {e}"),
        (Err(e), Ok(s)) => assert!(
            !is_object(data),
            "decode_one rejects ({e}) an object the general path accepts: {s:?}"
        ),
        (Err(_), Err(_)) => {}
    }

    // A WebSocket frame: whatever it decodes as samples, the general path decodes the same
    // (a `"type":"metric"` member aside, which only frames may carry).
    if let Ok(Message::Samples(m)) = d.decode_message(&mut data.to_vec(), ARRIVAL_MS) {
        if let Ok(s) = &slow {
            assert!(same(&m, s), "decode_message {m:?}, general path {s:?}");
        }
    }

    // NDJSON: never panics; whatever it accepts is within the limits.
    if let Ok(v) = d.decode_ndjson(&mut data.to_vec(), ARRIVAL_MS) {
        let limits = d.limits();
        assert!(!v.is_empty() && v.len() <= limits.max_batch);
        assert!(v
            .iter()
            .all(|s| (1..=limits.max_metrics).contains(&s.metrics.len())));
    }
}

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static DECODERS: std::cell::RefCell<(Decoder, Decoder)> = std::cell::RefCell::new((
            Decoder::default(),
            Decoder::new(Limits { max_batch: 2, max_metrics: 3 }),
        ));
    }
    DECODERS.with(|d| {
        let (default, small) = &mut *d.borrow_mut();
        check(default, data);
        check(small, data);
    });
});

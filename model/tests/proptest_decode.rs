//! Property tests: valid samples survive encode -> decode unchanged; no input makes the
//! decoder panic.

use metrics_model::decode::Decoder;
use metrics_model::event;
use metrics_model::{Metrics, Sample};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_:-][A-Za-z0-9_.:-]{0,20}"
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<i32>().prop_map(f64::from),
        -1e12f64..1e12,
        (0u64..(1 << 53)).prop_map(|x| x as f64),
        Just(0.0),
    ]
}

fn sample() -> impl Strategy<Value = Sample> {
    (
        name(),
        0u64..4_000_000_000_000,
        prop::collection::btree_map(name(), value(), 1..20),
    )
        .prop_map(|(server_id, timestamp, m)| {
            let mut metrics = Metrics::with_capacity(m.len());
            for (k, v) in m {
                metrics.push("", &k, v);
            }
            Sample {
                server_id,
                timestamp,
                metrics,
            }
        })
        .prop_filter("flattened names unique", |s| {
            s.metrics.find_duplicate().is_none()
        })
}

/// The agent's JSON for a sample (the sample event minus its `type`).
fn agent_json(s: &Sample) -> Vec<u8> {
    let mut ev = Vec::new();
    event::sample(&mut ev, s, None);
    let text = String::from_utf8(ev).expect("utf8");
    text.replacen("\"type\":\"sample\",", "", 1).into_bytes()
}

proptest! {
    #[test]
    fn valid_samples_round_trip(samples in prop::collection::vec(sample(), 1..5)) {
        let mut d = Decoder::default();
        for s in &samples {
            let mut buf = agent_json(s);
            let got = d.decode_json(&mut buf, 1).expect("valid sample decodes");
            prop_assert_eq!(&got[0], s);
        }
        let mut arr = b"[".to_vec();
        for (i, s) in samples.iter().enumerate() {
            if i > 0 { arr.push(b','); }
            arr.extend(agent_json(s));
        }
        arr.push(b']');
        let got = d.decode_json(&mut arr, 1).expect("valid batch decodes");
        prop_assert_eq!(got, samples);
    }

    #[test]
    fn no_input_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let mut d = Decoder::default();
        let _ = d.decode_json(&mut bytes.clone(), 1);
        let _ = d.decode_ndjson(&mut bytes.clone(), 1);
        let _ = d.decode_message(&mut bytes.clone(), 1);
    }

    #[test]
    fn no_json_shaped_input_panics(s in r#"[\[\]{}",:0-9a-z.\-e ]{0,200}"#) {
        let mut d = Decoder::default();
        let _ = d.decode_json(&mut s.clone().into_bytes(), 1);
        let _ = d.decode_message(&mut s.clone().into_bytes(), 1);
        let wrapped = format!(r#"{{"serverId":"a","metrics":{s}}}"#);
        let _ = d.decode_json(&mut wrapped.into_bytes(), 1);
    }
}

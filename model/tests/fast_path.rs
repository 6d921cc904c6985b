//! The fast single-pass decoder must agree with the simd-json path on every input: whenever
//! the fast path accepts, simd-json returns the same samples; everything else falls back.

use metrics_model::decode::Decoder;
use proptest::prelude::*;

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("cpu".to_string()),
        Just("mem".to_string()),
        Just("network".to_string()),
        Just("network.in".to_string()),
        Just("in".to_string()),
        Just("a b".to_string()),
        Just("caf\u{e9}".to_string()),
        Just("x\\u0041".to_string()),
        Just(String::new()),
        "[A-Za-z0-9_.:-]{1,6}",
    ]
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("-0".to_string()),
        Just("-0.0".to_string()),
        Just("01".to_string()),
        Just("1.".to_string()),
        Just(".5".to_string()),
        Just("1e400".to_string()),
        Just("-1e-400".to_string()),
        Just("1E5".to_string()),
        Just("-12.5e-3".to_string()),
        Just("18446744073709551615".to_string()),
        Just("18446744073709551616".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("9007199254740993".to_string()),
        Just("1764349200123456".to_string()),
        Just("\"7\"".to_string()),
        Just("true".to_string()),
        Just("null".to_string()),
        any::<i64>().prop_map(|x| x.to_string()),
        any::<f64>().prop_map(|x| format!("{x:e}")),
        (-1e6f64..1e6).prop_map(|x| x.to_string()),
    ]
}

fn ws() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just(""), Just(" "), Just("\n"), Just("\t "), Just("\r\n")]
}

fn metric_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => number(),
        1 => prop::collection::vec((key(), number()), 0..3).prop_map(|kv| {
            let inner: Vec<String> = kv.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", inner.join(","))
        }),
        1 => Just("{\"x\":{\"y\":1}}".to_string()),
    ]
}

fn sample_text() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((key(), metric_value(), ws()), 0..6),
        prop_oneof![
            Just("\"server-1\""),
            Just("\"bad id\""),
            Just("7"),
            Just("\"\"")
        ],
        prop_oneof![
            Just(None),
            Just(Some("1764349200123")),
            Just(Some("1.5")),
            Just(Some("-1")),
            Just(Some("01"))
        ],
        prop::sample::subsequence(
            vec!["server", "ts", "metrics", "extra", "type", "server"],
            0..6,
        ),
        ws(),
    )
        .prop_map(|(metrics, server, ts, order, w)| {
            let m: Vec<String> = metrics
                .into_iter()
                .map(|(k, v, w)| format!("{w}\"{k}\"{w}:{w}{v}{w}"))
                .collect();
            let mut fields = Vec::new();
            for f in order {
                match f {
                    "server" => fields.push(format!("\"serverId\":{server}")),
                    "ts" => {
                        if let Some(t) = ts {
                            fields.push(format!("\"timestamp\":{t}"))
                        }
                    }
                    "metrics" => fields.push(format!("\"metrics\":{{{}}}", m.join(","))),
                    "type" => fields.push("\"type\":\"metric\"".to_string()),
                    _ => fields.push("\"extra\":1".to_string()),
                }
            }
            format!("{w}{{{w}{}{w}}}{w}", fields.join(&format!("{w},{w}")))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn fast_and_simd_json_paths_agree(samples in prop::collection::vec(sample_text(), 1..4), array in any::<bool>()) {
        let text = if array || samples.len() > 1 {
            format!("[{}]", samples.join(","))
        } else {
            samples[0].clone()
        };
        let mut d = Decoder::default();
        let fast = d.decode_json(&mut text.clone().into_bytes(), 42).map_err(|e| e.to_string());
        let slow = d.decode_json_slow(&mut text.clone().into_bytes(), 42).map_err(|e| e.to_string());
        prop_assert_eq!(fast, slow, "input: {}", text);
    }
}

#[test]
fn generated_inputs_include_valid_ones() {
    // Guard against a generator that only ever produces errors.
    let mut d = Decoder::default();
    let mut ok =
        br#" { "serverId" : "server-1", "metrics" : { "cpu" : -0, "n" : { "in" : 1E5 } } } "#
            .to_vec();
    let v = d.decode_json(&mut ok, 1).expect("valid");
    assert_eq!(
        v[0].metrics.get("cpu").map(f64::to_bits),
        Some(0f64.to_bits())
    );
    assert_eq!(v[0].metrics.get("n.in"), Some(100_000.0));
}

//! Every rule of the wire contract (docs/API.md), with the error text a client sees.

use metrics_model::decode::{Control, Decoder, Limits, Message, Role};
use metrics_model::{DecodeError, Sample};

const ARRIVAL: u64 = 1_764_349_200_999;

fn one(json: &str) -> Result<Sample, String> {
    let mut buf = json.as_bytes().to_vec();
    Decoder::default()
        .decode_json(&mut buf, ARRIVAL)
        .map(|mut v| {
            assert_eq!(v.len(), 1);
            v.remove(0)
        })
        .map_err(|e| e.to_string())
}

fn err(json: &str) -> String {
    one(json).expect_err("should be refused")
}

#[test]
fn the_node_agent_sample_decodes_and_flattens() {
    let s = one(r#"{"serverId":"server-1","timestamp":1764349200123,"metrics":{"cpu":42.5,"memory":61.2,"disk":70.1,"network":{"in":812,"out":230}}}"#).expect("valid");
    assert_eq!(s.server_id, "server-1");
    assert_eq!(s.timestamp, 1_764_349_200_123);
    let m: Vec<_> = s.metrics.iter().collect();
    assert_eq!(
        m,
        [
            ("cpu", 42.5),
            ("memory", 61.2),
            ("disk", 70.1),
            ("network.in", 812.0),
            ("network.out", 230.0)
        ]
    );
}

#[test]
fn missing_timestamp_means_arrival_time() {
    let s = one(r#"{"serverId":"a","metrics":{"cpu":1}}"#).expect("valid");
    assert_eq!(s.timestamp, ARRIVAL);
}

#[test]
fn send_us_is_exact() {
    let s = one(r#"{"serverId":"a","metrics":{"send_us":1764349200123456}}"#).expect("valid");
    assert_eq!(s.metrics.get("send_us"), Some(1_764_349_200_123_456.0));
}

#[test]
fn server_id_rules() {
    assert_eq!(err(r#"{"metrics":{"cpu":1}}"#), "missing field `serverId`");
    assert_eq!(
        err(r#"{"serverId":7,"metrics":{"cpu":1}}"#),
        "serverId must be a string, found a number"
    );
    for bad in ["", "has space", "slash/no", "é"] {
        let j = format!(r#"{{"serverId":"{bad}","metrics":{{"cpu":1}}}}"#);
        assert_eq!(
            err(&j),
            "serverId must be 1 to 128 bytes of A-Z a-z 0-9 _ . : -",
            "{bad}"
        );
    }
    let long = "a".repeat(129);
    assert!(err(&format!(r#"{{"serverId":"{long}","metrics":{{"cpu":1}}}}"#)).contains("serverId"));
    let ok = "a".repeat(128);
    assert!(one(&format!(r#"{{"serverId":"{ok}","metrics":{{"cpu":1}}}}"#)).is_ok());
    assert!(one(r#"{"serverId":"A-z_0.9:x","metrics":{"cpu":1}}"#).is_ok());
}

#[test]
fn timestamp_rules() {
    assert_eq!(
        err(r#"{"serverId":"a","timestamp":1.5,"metrics":{"cpu":1}}"#),
        "timestamp must be a non-negative integer (milliseconds since the Unix epoch), found 1.5"
    );
    assert!(err(r#"{"serverId":"a","timestamp":-1,"metrics":{"cpu":1}}"#).contains("found -1"));
    assert!(
        err(r#"{"serverId":"a","timestamp":"now","metrics":{"cpu":1}}"#).contains("found a string")
    );
}

#[test]
fn metrics_rules() {
    assert_eq!(err(r#"{"serverId":"a"}"#), "missing field `metrics`");
    assert_eq!(
        err(r#"{"serverId":"a","metrics":[1]}"#),
        "metrics must be an object, found an array"
    );
    assert_eq!(
        err(r#"{"serverId":"a","metrics":{}}"#),
        "metrics must hold 1 to 256 values, found 0"
    );
    assert_eq!(
        err(r#"{"serverId":"a","metrics":{"cpu":"high"}}"#),
        "metric `cpu` must be a finite number or an object of numbers, found a string"
    );
    assert_eq!(
        err(r#"{"serverId":"a","metrics":{"cpu":null}}"#),
        "metric `cpu` must be a finite number or an object of numbers, found null"
    );
    assert_eq!(
        err(r#"{"serverId":"a","metrics":{"net":{"in":{"x":1}}}}"#),
        "metric `net.in` nests too deep: one level of objects only"
    );
    assert_eq!(
        err(r#"{"serverId":"a","metrics":{"net":{"in":true}}}"#),
        "metric `net.in` must be a finite number or an object of numbers, found a boolean"
    );
    assert!(
        err(r#"{"serverId":"a","metrics":{"cpu":1e400}}"#).starts_with("invalid JSON")
            || err(r#"{"serverId":"a","metrics":{"cpu":1e400}}"#).contains("non-finite")
    );
    assert_eq!(
        err(r#"{"serverId":"a","metrics":{"bad name":1}}"#),
        "metric name `bad name` is invalid: names are 1 to 128 bytes of A-Z a-z 0-9 _ . : -"
    );
    assert!(err(r#"{"serverId":"a","metrics":{"":1}}"#).contains("metric name ``"));
    let long = "m".repeat(129);
    assert!(err(&format!(r#"{{"serverId":"a","metrics":{{"{long}":1}}}}"#)).contains("is invalid"));
    // The flattened name counts: 64 + 1 + 64 = 129 bytes.
    let (p, c) = ("p".repeat(64), "c".repeat(64));
    assert!(err(&format!(
        r#"{{"serverId":"a","metrics":{{"{p}":{{"{c}":1}}}}}}"#
    ))
    .contains("is invalid"));
}

#[test]
fn duplicate_names_after_flattening_are_refused() {
    assert_eq!(
        err(r#"{"serverId":"a","metrics":{"network.in":1,"network":{"in":2}}}"#),
        "metric `network.in` appears twice"
    );
    assert_eq!(
        err(r#"{"serverId":"a","metrics":{"cpu":1,"cpu":2}}"#),
        "metric `cpu` appears twice"
    );
    assert_eq!(
        err(r#"{"serverId":"a","serverId":"b","metrics":{"cpu":1}}"#),
        "field `serverId` appears twice"
    );
    // More than the small-set threshold, duplicate at the end.
    let mut m: Vec<String> = (0..40).map(|i| format!("\"m{i}\":{i}")).collect();
    m.push("\"m3\":0".into());
    let j = format!(r#"{{"serverId":"a","metrics":{{{}}}}}"#, m.join(","));
    assert_eq!(err(&j), "metric `m3` appears twice");
}

#[test]
fn metric_count_limit() {
    let m: Vec<String> = (0..256).map(|i| format!("\"m{i}\":{i}")).collect();
    assert!(one(&format!(
        r#"{{"serverId":"a","metrics":{{{}}}}}"#,
        m.join(",")
    ))
    .is_ok());
    let m: Vec<String> = (0..257).map(|i| format!("\"m{i}\":{i}")).collect();
    assert_eq!(
        err(&format!(
            r#"{{"serverId":"a","metrics":{{{}}}}}"#,
            m.join(",")
        )),
        "metrics must hold 1 to 256 values, found 257"
    );
}

#[test]
fn unknown_fields_are_named() {
    assert_eq!(
        err(r#"{"serverId":"a","metrics":{"cpu":1},"host":"x"}"#),
        "unknown field `host` (allowed: serverId, timestamp, metrics)"
    );
    // `type` is only for WebSocket frames.
    assert!(
        err(r#"{"type":"metric","serverId":"a","metrics":{"cpu":1}}"#)
            .contains("unknown field `type`")
    );
}

#[test]
fn not_json_and_not_samples() {
    assert!(err("{").starts_with("invalid JSON"));
    assert_eq!(
        err("42"),
        "expected a sample object or an array of samples, found a number"
    );
}

fn batch(json: &str, limits: Limits) -> Result<Vec<Sample>, DecodeError> {
    let mut buf = json.as_bytes().to_vec();
    Decoder::new(limits).decode_json(&mut buf, ARRIVAL)
}

#[test]
fn arrays_are_all_or_nothing_and_name_the_index() {
    let ok = batch(
        r#"[{"serverId":"a","metrics":{"cpu":1}},{"serverId":"b","metrics":{"cpu":2}}]"#,
        Limits::default(),
    )
    .expect("valid");
    assert_eq!(ok.len(), 2);
    let e = batch(
        r#"[{"serverId":"a","metrics":{"cpu":1}},{"serverId":"b","metrics":{"cpu":"x"}}]"#,
        Limits::default(),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "sample at index 1: metric `cpu` must be a finite number or an object of numbers, found a string"
    );
    assert_eq!(
        batch("[]", Limits::default()).unwrap_err().to_string(),
        "empty batch: send 1 to 10000 samples"
    );
    let e = batch("[1]", Limits::default()).unwrap_err().to_string();
    assert_eq!(
        e,
        "sample at index 0: expected a sample object or an array of samples, found a number"
    );
    let small = Limits {
        max_batch: 2,
        ..Limits::default()
    };
    let three = r#"[{"serverId":"a","metrics":{"cpu":1}},{"serverId":"a","metrics":{"cpu":1}},{"serverId":"a","metrics":{"cpu":1}}]"#;
    assert_eq!(
        batch(three, small).unwrap_err().to_string(),
        "batch of 3 samples is over the limit of 2"
    );
}

#[test]
fn ten_thousand_is_the_default_batch_limit() {
    let s = r#"{"serverId":"a","metrics":{"cpu":1}}"#;
    let ok = format!("[{}]", vec![s; 10_000].join(","));
    assert_eq!(batch(&ok, Limits::default()).expect("valid").len(), 10_000);
    let over = format!("[{}]", vec![s; 10_001].join(","));
    assert!(batch(&over, Limits::default())
        .unwrap_err()
        .to_string()
        .contains("over the limit of 10000"));
}

#[test]
fn ndjson_names_the_line_and_skips_blank_lines() {
    let mut d = Decoder::default();
    let mut ok = b"{\"serverId\":\"a\",\"metrics\":{\"cpu\":1}}\r\n\n{\"serverId\":\"b\",\"metrics\":{\"cpu\":2}}\n".to_vec();
    let v = d.decode_ndjson(&mut ok, ARRIVAL).expect("valid");
    assert_eq!(v.len(), 2);
    assert_eq!(v[1].server_id, "b");
    let mut bad =
        b"{\"serverId\":\"a\",\"metrics\":{\"cpu\":1}}\n\n{\"serverId\":\"b\",\"metrics\":{}}\n"
            .to_vec();
    assert_eq!(
        d.decode_ndjson(&mut bad, ARRIVAL).unwrap_err().to_string(),
        "line 3: metrics must hold 1 to 256 values, found 0"
    );
    let mut empty = b"\n \n".to_vec();
    assert!(d
        .decode_ndjson(&mut empty, ARRIVAL)
        .unwrap_err()
        .to_string()
        .starts_with("empty batch"));
    let mut arr = b"[{\"serverId\":\"a\",\"metrics\":{\"cpu\":1}}]".to_vec();
    assert_eq!(
        d.decode_ndjson(&mut arr, ARRIVAL).unwrap_err().to_string(),
        "line 1: expected a sample object or an array of samples, found an array"
    );
}

fn message(json: &str) -> Result<Message, String> {
    let mut buf = json.as_bytes().to_vec();
    Decoder::default()
        .decode_message(&mut buf, ARRIVAL)
        .map_err(|e| e.to_string())
}

#[test]
fn websocket_messages() {
    let Message::Samples(v) =
        message(r#"{"type":"metric","serverId":"a","metrics":{"cpu":1}}"#).expect("ok")
    else {
        panic!("samples expected")
    };
    assert_eq!(v[0].server_id, "a");
    assert!(matches!(
        message(r#"[{"serverId":"a","metrics":{"cpu":1}},{"type":"metric","serverId":"b","metrics":{"cpu":1}}]"#),
        Ok(Message::Samples(v)) if v.len() == 2
    ));
    assert_eq!(
        message(r#"{"type":"register","role":"dashboard","serverId":"a"}"#),
        Ok(Message::Control(Control::Register {
            role: Role::Dashboard,
            filter: Some(vec!["a".into()])
        }))
    );
    assert_eq!(
        message(r#"{"type":"register","role":"producer","serverId":null}"#),
        Ok(Message::Control(Control::Register {
            role: Role::Agent,
            filter: None
        }))
    );
    assert_eq!(
        message(r#"{"type":"subscribe","serverId":"a,b"}"#),
        Ok(Message::Control(Control::Subscribe {
            filter: Some(vec!["a".into(), "b".into()])
        }))
    );
    assert_eq!(
        message(r#"{"type":"subscribe","serverId":["a"]}"#),
        Ok(Message::Control(Control::Subscribe {
            filter: Some(vec!["a".into()])
        }))
    );
    assert_eq!(
        message(r#"{"type":"snapshot.request"}"#),
        Ok(Message::Control(Control::SnapshotRequest {
            server_id: None
        }))
    );
    assert_eq!(
        message(r#"{"type":"snapshot.request","serverId":"a"}"#),
        Ok(Message::Control(Control::SnapshotRequest {
            server_id: Some("a".into())
        }))
    );
    assert_eq!(
        message(r#"{"type":"hello"}"#).unwrap_err(),
        "unknown message type `hello` (expected metric, register, subscribe or snapshot.request)"
    );
    assert!(message(r#"{"type":"register","role":"boss"}"#)
        .unwrap_err()
        .contains("producer"));
    assert!(message(r#"{"type":"subscribe","serverId":"bad id"}"#)
        .unwrap_err()
        .contains("bad id"));
    assert!(message(r#"{"type":"subscribe","extra":1}"#)
        .unwrap_err()
        .contains("unknown field `extra`"));
    assert_eq!(
        message(r#"{"type":7,"serverId":"a","metrics":{"cpu":1}}"#).unwrap_err(),
        "field `type` must be \"metric\" on a sample, found a number"
    );
}

#[test]
fn echoed_names_are_truncated() {
    let key = "k".repeat(10_000);
    let e = err(&format!(
        r#"{{"serverId":"a","metrics":{{"cpu":1}},"{key}":1}}"#
    ));
    assert!(e.len() < 300, "{} bytes", e.len());
}

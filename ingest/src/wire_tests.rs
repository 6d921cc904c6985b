//! Round trips of both wire formats, limits included.

use super::*;
use metrics_model::decode::Limits;

fn decode_front(body: &str, limits: Limits) -> Vec<Sample> {
    let mut buf = body.as_bytes().to_vec();
    Decoder::new(limits)
        .decode_json(&mut buf, 7)
        .expect("valid")
}

fn stored(value: Vec<u8>) -> StoredEntry {
    let mut raw = RawEntry {
        id: "1764349200123-4".into(),
        value: Some(value),
    };
    decode_entry(&mut raw, &mut entry_decoder()).expect("decodes")
}

#[test]
fn entries_round_trip() {
    let samples = decode_front(
        r#"{"serverId":"a","metrics":{"cpu":1,"network":{"in":2.5}}}"#,
        Limits::default(),
    );
    let v = encode_entry(1_764_349_200_123, "node-1", &samples);
    assert_eq!(
        std::str::from_utf8(&v).expect("utf8"),
        "1764349200123 node-1\n{\"serverId\":\"a\",\"timestamp\":7,\"metrics\":{\"cpu\":1,\"network.in\":2.5}}\n"
    );
    let e = stored(v);
    assert_eq!(
        (e.arrival_ms, e.node.as_str()),
        (1_764_349_200_123, "node-1")
    );
    assert_eq!(e.samples, samples);
    assert_eq!(e.position(0).expect("pos").to_string(), "1764349200123-4/0");
}

/// Whatever the front door accepted under the largest limits it can be given, the readers
/// decode: a request of more samples than the default batch limit, a streamed chunk of many
/// lines, and samples with the most metrics.
#[test]
fn readers_decode_whatever_the_front_door_accepted() {
    let n = 25_000;
    let body = format!(
        "[{}]",
        vec![r#"{"serverId":"s","metrics":{"cpu":1}}"#; n].join(",")
    );
    let samples = decode_front(
        &body,
        Limits {
            max_batch: n,
            ..Limits::default()
        },
    );
    assert_eq!(stored(encode_entry(1, "n", &samples)).samples.len(), n);

    let metrics: Vec<String> = (0..Limits::default().max_metrics)
        .map(|i| format!("\"m{i}\":{i}.5"))
        .collect();
    let wide = format!(r#"{{"serverId":"w","metrics":{{{}}}}}"#, metrics.join(","));
    let samples = decode_front(&wide, Limits::default());
    let back = stored(encode_entry(1, "n", &samples));
    assert_eq!(back.samples, samples);
}

#[test]
fn malformed_entries_name_the_entry() {
    let mut dec = entry_decoder();
    let mut none = RawEntry {
        id: "1-0".into(),
        value: None,
    };
    assert_eq!(
        decode_entry(&mut none, &mut dec).unwrap_err(),
        EntryError::NoField("1-0".into())
    );
    let mut headless = RawEntry {
        id: "2-0".into(),
        value: Some(b"no header".to_vec()),
    };
    assert_eq!(
        decode_entry(&mut headless, &mut dec).unwrap_err(),
        EntryError::NoHeader("2-0".into())
    );
    let mut bad = RawEntry {
        id: "3-0".into(),
        value: Some(b"1 n\n{\"serverId\":\"a\"}\n".to_vec()),
    };
    let e = decode_entry(&mut bad, &mut dec).unwrap_err();
    assert!(e.to_string().starts_with("entry 3-0: "), "{e}");
}

#[test]
fn raw_entries_read_ids_and_the_entry_field() {
    use redis::Value;
    let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
    let reply = Value::Array(vec![
        Value::Array(vec![
            bulk("1-0"),
            Value::Array(vec![bulk("x"), bulk("y"), bulk("e"), bulk("v1")]),
        ]),
        Value::Array(vec![bulk("2-0"), Value::Nil]),
        Value::Int(7),
    ]);
    let got = raw_entries(reply);
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[0].id.as_str(), got[0].value.as_deref()),
        ("1-0", Some(&b"v1"[..]))
    );
    assert_eq!((got[1].id.as_str(), got[1].value.as_deref()), ("2-0", None));
    assert!(raw_entries(Value::Nil).is_empty());
}

#[test]
fn lines_round_trip_without_parsing_json() {
    let pos = Position::parse("17-0/2").expect("pos");
    let mut batch = Vec::new();
    write_line(
        &mut batch,
        EventKind::Sample,
        "web-1",
        Some(pos),
        b"{\"type\":\"sample\"}",
    );
    write_line(
        &mut batch,
        EventKind::Window,
        "*",
        None,
        b"{\"type\":\"window\"}",
    );
    batch.extend_from_slice(b"bogus\n");
    let events = parse_batch(Bytes::from(batch));
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].kind, EventKind::Sample);
    assert_eq!(&*events[0].server, "web-1");
    assert_eq!(events[0].position, Some(pos));
    assert_eq!(&events[0].json[..], b"{\"type\":\"sample\"}");
    assert_eq!(events[1].kind, EventKind::Window);
    assert_eq!(&*events[1].server, "*");
    assert_eq!(events[1].position, None);
}

#[test]
fn a_window_batch_mark_names_its_log_entry_and_is_skipped_as_an_event() {
    let mut batch = b"M\t\t1764349200123-4/0\t\n".to_vec();
    write_line(&mut batch, EventKind::Window, "*", None, b"{}");
    assert_eq!(
        batch_mark(&batch),
        Some(Position::parse("1764349200123-4/0").expect("pos"))
    );
    let events = parse_batch(Bytes::from(batch));
    assert_eq!(events.len(), 1, "the mark is not an event");
    assert_eq!(events[0].kind, EventKind::Window);
    assert_eq!(batch_mark(b"W\t*\t\t{}\n"), None);
}

#[test]
fn entry_writer_writes_what_encode_entry_does_and_stops_at_the_limit() {
    let samples = decode_front(
        r#"[{"serverId":"a","metrics":{"cpu":1}},{"serverId":"b","metrics":{"cpu":2}}]"#,
        Limits::default(),
    );
    let whole = encode_entry(5, "n", &samples);
    let mut w = EntryWriter::new(5, "n", whole.len(), 2);
    assert!(w.push(&samples[0]).is_ok());
    assert!(w.push(&samples[1]).is_ok());
    assert_eq!(w.finish(), whole);

    let mut w = EntryWriter::new(5, "n", whole.len() - 1, 2);
    assert!(w.push(&samples[0]).is_ok());
    let len = w.len();
    assert_eq!(
        w.push(&samples[1]),
        Err(whole.len()),
        "the size it would have had"
    );
    assert_eq!(
        (w.len(), w.count()),
        (len, 1),
        "the entry is left as it was"
    );
    let header = "5 n\n".len();
    assert_eq!(header + encoded_len(&samples), whole.len());
}

/// The floor of `--max-entry-bytes` and `--pubsub-message-bytes` holds the widest sample the
/// decoder accepts, as an entry and as a Pub/Sub line: a streamed line is never refused for its
/// size alone, and a Pub/Sub line never needs splitting.
#[test]
fn the_widest_sample_fits_the_floor_of_the_byte_limits() {
    let name = |i: usize| format!("{i:0>128}");
    let metrics: Vec<String> = (0..Limits::default().max_metrics)
        .map(|i| format!("\"{}\":-1.2345678901234567e-300", name(i)))
        .collect();
    let body = format!(
        r#"{{"serverId":"{}","timestamp":18446744073709551615,"metrics":{{{}}}}}"#,
        "s".repeat(128),
        metrics.join(",")
    );
    let samples = decode_front(&body, Limits::default());
    let entry = encode_entry(u64::MAX, &"n".repeat(128), &samples);
    assert!(
        entry.len() < crate::config::MIN_MESSAGE_BYTES,
        "{}",
        entry.len()
    );
    let pos = Position::parse("18446744073709551615-18446744073709551615/4294967295").expect("pos");
    let mut json = Vec::new();
    sample_event(&mut json, &samples[0], pos);
    let mut line = Vec::new();
    write_line(
        &mut line,
        EventKind::Sample,
        &samples[0].server_id,
        Some(pos),
        &json,
    );
    assert!(
        line.len() < crate::config::MIN_MESSAGE_BYTES,
        "{}",
        line.len()
    );
}

/// `--max-entry-bytes`'s default leaves room for a full `--max-body` of ordinary samples (the
/// API's example sample, grouped metrics included), while the seventeen-fold blow-up of one
/// long group name over many short leaves does not fit.
#[test]
fn the_default_entry_limit_fits_ordinary_bodies_and_not_the_blow_up() {
    let max_entry = 4 << 20;
    let max_body = 1 << 20;
    let one = r#"{"serverId":"server-1","timestamp":1764349200123,"metrics":{"cpu":42.5,"memory":61.2,"disk":70.1,"network":{"in":812,"out":230}}}"#;
    let n = max_body / (one.len() + 1);
    let body = format!("[{}]", vec![one; n].join(","));
    assert!(body.len() <= max_body);
    let samples = decode_front(&body, Limits::default());
    let ordinary = encode_entry(1_764_349_200_123, "host-12345", &samples).len();
    assert!(ordinary * 2 < max_entry, "{ordinary}");

    let group = "g".repeat(120);
    let leaves: Vec<String> = (0..256).map(|i| format!("\"{i:x}\":1")).collect();
    let one = format!(
        r#"{{"serverId":"s","metrics":{{"{group}":{{{}}}}}}}"#,
        leaves.join(",")
    );
    let n = max_body / (one.len() + 1);
    let body = format!("[{}]", vec![one.as_str(); n].join(","));
    let samples = decode_front(&body, Limits::default());
    let blown = encode_entry(1_764_349_200_123, "host-12345", &samples).len();
    assert!(blown > 12 * body.len(), "{blown} from {}", body.len());
    assert!(blown > max_entry);
}

/// The workers publish a stored line spliced, not decoded and written again: the event must be
/// byte for byte what the decoded sample gives, whatever the values (integers, short decimals,
/// the shortest-representation path, exponents, negative zero) and names.
#[test]
fn spliced_sample_events_are_the_decoded_ones() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut values = vec![
        0.0,
        -0.0,
        1.0,
        -3.25,
        0.1,
        42.5,
        1e-7,
        1e300,
        -2.5e-300,
        9.007_199_254_740_993e15,
    ];
    for _ in 0..2_000 {
        let r = next();
        values.push(match r % 4 {
            0 => (r >> 8) as i64 as f64,
            1 => ((r >> 8) % 1_000_000) as f64 / 10f64.powi((r % 5) as i32),
            2 => f64::from_bits(r >> 2).min(f64::MAX),
            _ => -(((r >> 11) as f64) / (1u64 << 53) as f64),
        });
    }
    values.retain(|v| v.is_finite());
    let long = "n".repeat(metrics_model::decode::MAX_NAME_LEN);
    let mut body = Vec::new();
    for (i, chunk) in values.chunks(7).enumerate() {
        let metrics: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let name = if j == 0 {
                    long.clone()
                } else {
                    format!("m-{j}.a_b:c")
                };
                format!("\"{name}\":{}", serde_json::to_string(v).expect("number"))
            })
            .collect();
        body.push(format!(
            r#"{{"serverId":"srv:{i}.x-y_z","timestamp":{},"metrics":{{{}}}}}"#,
            1_764_349_200_000u64 + i as u64,
            metrics.join(",")
        ));
    }
    let samples = decode_front(&format!("[{}]", body.join(",")), Limits::default());
    let value = encode_entry(1_764_349_200_123, "node-1", &samples);
    let id = "1764349200123-4";
    let scanned = scan_entry(id, &value).expect("scans");
    assert_eq!(
        (scanned.arrival_ms, scanned.node),
        (1_764_349_200_123, "node-1")
    );
    assert_eq!(scanned.lines.len(), samples.len());
    let (mut spliced, mut written) = (Vec::new(), Vec::new());
    for (i, (l, s)) in scanned.lines.iter().zip(&samples).enumerate() {
        let pos = Position::from_entry(id, i as u32).expect("pos");
        assert_eq!(scanned.server(l), s.server_id);
        spliced.clear();
        written.clear();
        scanned.sample_event(&mut spliced, l, pos);
        sample_event(&mut written, s, pos);
        assert_eq!(
            String::from_utf8_lossy(&spliced),
            String::from_utf8_lossy(&written)
        );
    }
}

/// A line that is not in the stored form is refused with its entry, line and what is wrong,
/// so the entry goes to the dead-letter stream instead of an invalid event to dashboards.
#[test]
fn lines_not_in_the_stored_form_are_refused_by_name() {
    let ok = r#"{"serverId":"a","timestamp":7,"metrics":{"cpu":1.5}}"#;
    let many: Vec<String> = (0..=Limits::default().max_metrics)
        .map(|i| format!("\"m{i}\":1"))
        .collect();
    let too_many = format!(
        r#"{{"serverId":"a","timestamp":7,"metrics":{{{}}}}}"#,
        many.join(",")
    );
    let long = format!(
        r#"{{"serverId":"a","timestamp":7,"metrics":{{"{}":1}}}}"#,
        "n".repeat(metrics_model::decode::MAX_NAME_LEN + 1)
    );
    // Past 24 names the repeat is found by hashing.
    let wide: Vec<String> = (0..30).map(|i| format!("\"m{}\":1", i % 29)).collect();
    let wide_repeat = format!(
        r#"{{"serverId":"a","timestamp":7,"metrics":{{{}}}}}"#,
        wide.join(",")
    );
    let m = |metrics: &str| format!(r#"{{"serverId":"a","timestamp":7,"metrics":{metrics}}}"#);
    for (line, why) in [
        (
            r#"{"serverId":"a","timestamp":7}"#.to_string(),
            "no metrics",
        ),
        (
            r#"{"timestamp":7,"serverId":"a","metrics":{"cpu":1}}"#.to_string(),
            "not a stored sample",
        ),
        (
            r#"{"serverId":"a\",\"x","timestamp":7,"metrics":{"cpu":1}}"#.to_string(),
            "bad server id",
        ),
        (
            r#"{"serverId":"a","timestamp":-7,"metrics":{"cpu":1}}"#.to_string(),
            "bad timestamp",
        ),
        (m("{}"), "bad metric name"),
        (m(r#"{"c u":1}"#), "bad metric name"),
        (long, "bad metric name"),
        (m(r#"{"cpu":01}"#), "bad number"),
        (m(r#"{"cpu":1.}"#), "bad number"),
        (m(r#"{"cpu":null}"#), "bad number"),
        (m(r#"{"cpu":1e}"#), "bad number"),
        (m(r#"{"cpu":1 }"#), "bad metrics"),
        (m(r#"{"cpu":1}"#) + ",", "trailing bytes"),
        (too_many, "too many metrics"),
        (m(r#"{"cpu":1,"mem":2,"cpu":3}"#), "a metric name repeated"),
        (wide_repeat, "a metric name repeated"),
    ] {
        let value = format!("1 n\n{ok}\n{line}\n");
        let e = scan_entry("9-0", value.as_bytes()).expect_err(&line);
        assert_eq!(e, EntryError::Line("9-0".into(), 2, why), "{line}");
        assert_eq!(e.to_string(), format!("entry 9-0, sample line 2: {why}"));
    }
    assert_eq!(
        scan_entry("9-1", b"1 n\n").expect_err("empty"),
        EntryError::Line("9-1".into(), 1, "no sample")
    );
    assert_eq!(
        scan_entry("9-2", b"no header").expect_err("headless"),
        EntryError::NoHeader("9-2".into())
    );
}

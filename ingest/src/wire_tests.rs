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

//! Dashboard event encoding, shared by both systems so dashboards cannot tell them apart.
//!
//! Events are written by hand into a byte buffer: server ids and metric names are already
//! validated to `[A-Za-z0-9_.:-]` and need no escaping, numbers go through `itoa`/`ryu`, and one
//! encoded event is shared by every dashboard it goes to. Integral values below 2^53 print as
//! integers, so a value comes out as the agent wrote it (`"send_us":1764349200123456`).

use crate::sample::Sample;
use crate::window::Summary;

/// Writes a JSON number; non-finite values (never accepted on ingest) become `null`.
pub fn write_f64(out: &mut Vec<u8>, x: f64) {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if x.fract() == 0.0 && x.abs() < EXACT {
        if x == 0.0 && x.is_sign_negative() {
            out.extend_from_slice(b"-0");
        } else {
            out.extend_from_slice(itoa::Buffer::new().format(x as i64).as_bytes());
        }
    } else if x.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(x).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Writes an unsigned integer.
pub fn write_u64(out: &mut Vec<u8>, x: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(x).as_bytes());
}

/// Writes `s` as a JSON string, escaping what JSON requires.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(b"0123456789abcdef"[(b >> 4) as usize]);
                out.push(b"0123456789abcdef"[(b & 15) as usize]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// `{"type":"sample","serverId":S,"timestamp":MS[,"id":ID],"metrics":{...}}`
pub fn sample(out: &mut Vec<u8>, s: &Sample, id: Option<&str>) {
    out.extend_from_slice(b"{\"type\":\"sample\",\"serverId\":\"");
    out.extend_from_slice(s.server_id.as_bytes());
    out.extend_from_slice(b"\",\"timestamp\":");
    write_u64(out, s.timestamp);
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        write_str(out, id);
    }
    out.extend_from_slice(b",\"metrics\":{");
    for (i, (name, v)) in s.metrics.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        write_f64(out, v);
    }
    out.extend_from_slice(b"}}");
}

/// `{"count":n,"min":x,"max":x,"mean":x,"p50":x,"p95":x,"p99":x}`
pub fn summary(out: &mut Vec<u8>, s: &Summary) {
    out.extend_from_slice(b"{\"count\":");
    write_u64(out, s.count);
    for (k, v) in [
        (&b",\"min\":"[..], s.min),
        (b",\"max\":", s.max),
        (b",\"mean\":", s.mean),
        (b",\"p50\":", s.p50),
        (b",\"p95\":", s.p95),
        (b",\"p99\":", s.p99),
    ] {
        out.extend_from_slice(k);
        write_f64(out, v);
    }
    out.push(b'}');
}

/// `{"type":"window","window":W,"serverId":S,"start":MS,"end":MS,"stats":{NAME:{...}}}`
pub fn window<'a>(
    out: &mut Vec<u8>,
    window: &str,
    server_id: &str,
    start: u64,
    end: u64,
    stats: impl IntoIterator<Item = (&'a str, Summary)>,
) {
    out.extend_from_slice(b"{\"type\":\"window\",\"window\":");
    write_str(out, window);
    out.extend_from_slice(b",\"serverId\":");
    write_str(out, server_id);
    out.extend_from_slice(b",\"start\":");
    write_u64(out, start);
    out.extend_from_slice(b",\"end\":");
    write_u64(out, end);
    out.extend_from_slice(b",\"stats\":{");
    for (i, (name, s)) in stats.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, name);
        out.push(b':');
        summary(out, &s);
    }
    out.extend_from_slice(b"}}");
}

/// `{"type":"hello","system":S,"windows":[...],"serverTime":MS,"filter":null|[...],"queue":N}`
pub fn hello(
    out: &mut Vec<u8>,
    system: &str,
    windows: &[String],
    server_time: u64,
    filter: Option<&[String]>,
) {
    out.extend_from_slice(b"{\"type\":\"hello\",\"system\":");
    write_str(out, system);
    out.extend_from_slice(b",\"windows\":[");
    for (i, w) in windows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, w);
    }
    out.extend_from_slice(b"],\"serverTime\":");
    write_u64(out, server_time);
    out.extend_from_slice(b",\"filter\":");
    write_filter(out, filter);
    out.push(b'}');
}

/// `null` or `["a","b"]`
pub fn write_filter(out: &mut Vec<u8>, filter: Option<&[String]>) {
    match filter {
        None => out.extend_from_slice(b"null"),
        Some(ids) => {
            out.push(b'[');
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, id);
            }
            out.push(b']');
        }
    }
}

/// `{"type":"subscribed","filter":null|[...]}`: the answer to a live `subscribe`.
pub fn subscribed(out: &mut Vec<u8>, filter: Option<&[String]>) {
    out.extend_from_slice(b"{\"type\":\"subscribed\",\"filter\":");
    write_filter(out, filter);
    out.push(b'}');
}

/// `{"type":"error","message":M}`
pub fn error(out: &mut Vec<u8>, message: &str) {
    out.extend_from_slice(b"{\"type\":\"error\",\"message\":");
    write_str(out, message);
    out.push(b'}');
}

/// `{"type":"dropped","count":N,"total":T}`: sample events this client lost to its full queue.
pub fn dropped(out: &mut Vec<u8>, count: u64, total: u64) {
    out.extend_from_slice(b"{\"type\":\"dropped\",\"count\":");
    write_u64(out, count);
    out.extend_from_slice(b",\"total\":");
    write_u64(out, total);
    out.push(b'}');
}

/// Convenience: one encoded event as a fresh vector.
pub fn to_vec(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = Vec::with_capacity(128);
    f(&mut v);
    v
}

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
    } else if !x.is_finite() {
        out.extend_from_slice(b"null");
    } else if !write_short_decimal(out, x) {
        out.extend_from_slice(ryu::Buffer::new().format_finite(x).as_bytes());
    }
}

/// Telemetry values mostly have one to four decimals (`42.5`, `61.25`). When `x` is exactly the
/// double nearest to `m / 10^k` for an integer `m` below 2^53 and k <= 4, that decimal parses
/// back to `x`, and printing it with integer arithmetic is several times cheaper than the general
/// shortest-representation search (ryu), which the profile showed dominating event encoding.
fn write_short_decimal(out: &mut Vec<u8>, x: f64) -> bool {
    const POW10: [f64; 5] = [1.0, 10.0, 100.0, 1_000.0, 10_000.0];
    const EXACT: f64 = 9_007_199_254_740_992.0;
    for (k, &p) in POW10.iter().enumerate().skip(1) {
        let m = (x * p).round();
        if m.abs() >= EXACT {
            return false;
        }
        if m / p == x {
            // The digits of |m| once, with the point k digits from the right ("0.0d" when |m|
            // has k digits or fewer), put together on the stack and appended in one copy.
            let mut digits = itoa::Buffer::new();
            let digits = digits.format(m.abs() as u64).as_bytes();
            let mut text = [0u8; 32];
            let mut n = 0;
            if m < 0.0 {
                text[0] = b'-';
                n = 1;
            }
            if digits.len() > k {
                let int = digits.len() - k;
                text[n..n + int].copy_from_slice(&digits[..int]);
                text[n + int] = b'.';
                n += int + 1;
                text[n..n + k].copy_from_slice(&digits[int..]);
                n += k;
            } else {
                let zeros = k - digits.len();
                text[n..n + 2].copy_from_slice(b"0.");
                text[n + 2..n + 2 + zeros].fill(b'0');
                n += 2 + zeros;
                text[n..n + digits.len()].copy_from_slice(digits);
                n += digits.len();
            }
            out.extend_from_slice(&text[..n]);
            return true;
        }
    }
    false
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
    out.extend_from_slice(b"{\"type\":\"sample\",");
    sample_fields(out, s, id);
}

/// The sample as an agent sends it, normalised (metrics flattened, timestamp filled in):
/// `{"serverId":S,"timestamp":MS,"metrics":{...}}`. System 1 stores samples this way.
pub fn agent_sample(out: &mut Vec<u8>, s: &Sample) {
    out.push(b'{');
    sample_fields(out, s, None);
}

fn sample_fields(out: &mut Vec<u8>, s: &Sample, id: Option<&str>) {
    out.extend_from_slice(b"\"serverId\":\"");
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

/// `{"type":"hello","system":S,"windows":[...],"serverTime":MS,"filter":null|[...]}`
pub fn hello(
    out: &mut Vec<u8>,
    system: &str,
    windows: &[String],
    server_time: u64,
    filter: Option<&[String]>,
) {
    out.extend_from_slice(b"{\"type\":\"hello\",\"system\":");
    write_str(out, system);
    out.extend_from_slice(b",\"windows\":");
    write_str_array(out, windows);
    out.extend_from_slice(b",\"serverTime\":");
    write_u64(out, server_time);
    out.extend_from_slice(b",\"filter\":");
    write_filter(out, filter);
    out.push(b'}');
}

/// `null` or `["a","b"]`
pub fn write_filter(out: &mut Vec<u8>, filter: Option<&[String]>) {
    match filter {
        None => out.extend_from_slice(b"null"),
        Some(ids) => write_str_array(out, ids),
    }
}

/// `["a","b"]`
fn write_str_array(out: &mut Vec<u8>, items: &[String]) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, item);
    }
    out.push(b']');
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

/// `{"type":"replayed","since":ID,"from":ID,"count":N,"complete":B}`: the end of a `?since=`
/// replay (System 1), which sent the `count` samples after `from` (at most `since`: samples
/// published out of order below `since` are in it, so are duplicates of samples the dashboard
/// had); `complete` is false when retention had already dropped samples after `from`, or the
/// broadcasters' resume history did not reach back to `since`.
pub fn replayed(out: &mut Vec<u8>, since: &str, from: &str, count: u64, complete: bool) {
    out.extend_from_slice(b"{\"type\":\"replayed\",\"since\":");
    write_str(out, since);
    out.extend_from_slice(b",\"from\":");
    write_str(out, from);
    out.extend_from_slice(b",\"count\":");
    write_u64(out, count);
    out.extend_from_slice(b",\"complete\":");
    out.extend_from_slice(if complete { b"true" } else { b"false" });
    out.push(b'}');
}

/// `{"type":"registered","role":"producer"}`: the answer to an agent's `register` (the role
/// is spelled as the agents that send it spell it).
pub fn registered_agent(out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"type\":\"registered\",\"role\":\"producer\"}");
}

/// Writes the `snapshot` event, the same shape in both systems:
///
/// `{"type":"snapshot","serverId":S|null,"serverTime":MS,"servers":[SERVER,...],"all":[W,...]}`
/// with SERVER = `{"serverId":S,"timestamp":MS,"id":ID|null,"metrics":{NAME:X,...},"windows":[W,...]}`,
/// W a `window` event (the last closed one of each length), `all` the across-servers windows.
/// `id` is the stream position of the latest sample, which only System 1 has (`null` in
/// System 2).
pub struct SnapshotEncoder {
    out: Vec<u8>,
    servers: usize,
}

impl SnapshotEncoder {
    /// Starts a snapshot of `server_id` (`None`: every server) taken at `server_time`.
    pub fn new(server_id: Option<&str>, server_time: u64) -> Self {
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(b"{\"type\":\"snapshot\",\"serverId\":");
        match server_id {
            Some(s) => write_str(&mut out, s),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"serverTime\":");
        write_u64(&mut out, server_time);
        out.extend_from_slice(b",\"servers\":[");
        Self { out, servers: 0 }
    }

    /// Adds one server: its latest sample's time and stream position, the latest value of each
    /// metric, and its last closed windows.
    pub fn server<'a>(
        &mut self,
        server_id: &str,
        timestamp: Option<u64>,
        id: Option<&str>,
        metrics: impl IntoIterator<Item = (&'a str, f64)>,
        windows: impl IntoIterator<Item = &'a [u8]>,
    ) {
        let out = &mut self.out;
        if self.servers > 0 {
            out.push(b',');
        }
        self.servers += 1;
        out.extend_from_slice(b"{\"serverId\":");
        write_str(out, server_id);
        out.extend_from_slice(b",\"timestamp\":");
        match timestamp {
            Some(t) => write_u64(out, t),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"id\":");
        match id {
            Some(id) => write_str(out, id),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"metrics\":{");
        for (i, (name, v)) in metrics.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, name);
            out.push(b':');
            write_f64(out, v);
        }
        out.extend_from_slice(b"},\"windows\":");
        write_events(out, windows);
        out.push(b'}');
    }

    /// Servers added so far.
    pub fn len(&self) -> usize {
        self.servers
    }

    /// Whether no server was added.
    pub fn is_empty(&self) -> bool {
        self.servers == 0
    }

    /// Ends the event with the across-servers windows.
    pub fn finish<'a>(mut self, all: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
        self.out.extend_from_slice(b"],\"all\":");
        write_events(&mut self.out, all);
        self.out.push(b'}');
        self.out
    }
}

/// `[E,...]` of already encoded events.
fn write_events<'a>(out: &mut Vec<u8>, events: impl IntoIterator<Item = &'a [u8]>) {
    out.push(b'[');
    for (i, e) in events.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.push(b']');
}

/// `{"acked":N,"total":T}`: one acknowledgement line of System 1's streaming endpoint.
pub fn stream_acked(out: &mut Vec<u8>, count: u64, total: u64) {
    out.extend_from_slice(b"{\"acked\":");
    write_u64(out, count);
    out.extend_from_slice(b",\"total\":");
    write_u64(out, total);
    out.push(b'}');
}

/// `{"error":M[,"line":L]}`: a refusal line of System 1's streaming endpoint, naming the line
/// (numbered from 1) when it is about one.
pub fn stream_error(out: &mut Vec<u8>, message: &str, line: Option<u64>) {
    out.extend_from_slice(b"{\"error\":");
    write_str(out, message);
    if let Some(l) = line {
        out.extend_from_slice(b",\"line\":");
        write_u64(out, l);
    }
    out.push(b'}');
}

/// Convenience: one encoded event as a fresh vector.
pub fn to_vec(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = Vec::with_capacity(128);
    f(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_has_one_shape() {
        let mut s = SnapshotEncoder::new(None, 5);
        s.server("a", Some(3), Some("1-0/0"), [("cpu", 1.5)], [&b"{}"[..]]);
        s.server("b", None, None, [], []);
        assert_eq!(s.len(), 2);
        let json = String::from_utf8(s.finish([&b"{\"w\":1}"[..]])).expect("utf8");
        assert_eq!(
            json,
            concat!(
                r#"{"type":"snapshot","serverId":null,"serverTime":5,"servers":["#,
                r#"{"serverId":"a","timestamp":3,"id":"1-0/0","metrics":{"cpu":1.5},"windows":[{}]},"#,
                r#"{"serverId":"b","timestamp":null,"id":null,"metrics":{},"windows":[]}],"#,
                r#""all":[{"w":1}]}"#
            )
        );
        let mut b = Vec::new();
        replayed(&mut b, "1-0/0", "0-5/1", 2, false);
        assert_eq!(
            b,
            br#"{"type":"replayed","since":"1-0/0","from":"0-5/1","count":2,"complete":false}"#
        );
    }

    /// The next of a xorshift sequence: repeatable test values.
    fn xorshift(mut seed: u64) -> u64 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }

    fn text(x: f64) -> String {
        let mut v = Vec::new();
        write_f64(&mut v, x);
        String::from_utf8(v).expect("ascii")
    }

    #[test]
    fn numbers_print_as_agents_write_them() {
        assert_eq!(text(42.5), "42.5");
        assert_eq!(text(61.2), "61.2");
        assert_eq!(text(-0.05), "-0.05");
        assert_eq!(text(0.0001), "0.0001");
        assert_eq!(text(812.0), "812");
        assert_eq!(text(1_764_349_200_123_456.0), "1764349200123456");
        assert_eq!(text(-0.0), "-0");
        assert_eq!(text(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(text(f64::NAN), "null");
        assert_eq!(text(1e300), "1e300");
    }

    /// A value with one to four decimals prints as the shortest decimal that parses back to
    /// it, which is what ryu writes too in this range (integers apart).
    #[test]
    fn short_decimals_print_as_the_shortest_form() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..200_000u64 {
            seed = xorshift(seed);
            let scale = [10.0, 100.0, 1_000.0, 10_000.0][(i % 4) as usize];
            let magnitude = [1e3, 1e6, 1e12][(i / 4 % 3) as usize];
            let sign = if i % 7 == 0 { -1.0 } else { 1.0 };
            let x = sign * ((seed % magnitude as u64) as f64 + 1.0) / scale;
            if x.fract() == 0.0 {
                continue; // integers print without a point, where ryu writes `.0`
            }
            let t = text(x);
            assert_eq!(t, ryu::Buffer::new().format_finite(x), "{x:e}");
        }
        assert_eq!(text(0.05), "0.05");
        assert_eq!(text(-0.0007), "-0.0007");
        assert_eq!(text(-12.25), "-12.25");
        assert_eq!(text(100.1), "100.1");
    }

    #[test]
    fn every_printed_number_parses_back_exactly() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for i in 0..200_000u64 {
            seed = xorshift(seed);
            let x = match i % 4 {
                0 => f64::from_bits(seed),
                1 => (seed % 1_000_000) as f64 / 100.0,
                2 => (seed % 100_000) as f64 / 10_000.0 - 5.0,
                _ => (seed as f64 / u64::MAX as f64) * 1e6,
            };
            if !x.is_finite() {
                continue;
            }
            let t = text(x);
            let back: f64 = t.parse().expect("valid number");
            assert_eq!(
                back.to_bits(),
                if x == 0.0 {
                    back.to_bits()
                } else {
                    x.to_bits()
                },
                "{x:e} printed as {t}"
            );
        }
    }

    #[test]
    fn hello_and_subscribed_write_their_lists_as_string_arrays() {
        let windows = ["1s".to_string(), "10s".to_string()];
        let filter = ["a".to_string()];
        let text = |v: Vec<u8>| String::from_utf8(v).expect("utf8");
        assert_eq!(
            text(to_vec(|b| hello(b, "system2", &windows, 5, Some(&filter)))),
            r#"{"type":"hello","system":"system2","windows":["1s","10s"],"serverTime":5,"filter":["a"]}"#
        );
        assert_eq!(
            text(to_vec(|b| hello(b, "s", &[], 0, None))),
            r#"{"type":"hello","system":"s","windows":[],"serverTime":0,"filter":null}"#
        );
        assert_eq!(
            text(to_vec(|b| subscribed(b, Some(&windows)))),
            r#"{"type":"subscribed","filter":["1s","10s"]}"#
        );
    }
}

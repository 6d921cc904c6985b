//! Influx line protocol: `POST /api/v2/write` and `POST /write` (1.x), as Telegraf and the
//! Influx client libraries send it.
//!
//! `measurement[,tag=value...] field=value[,field=value...] [timestamp]`, one point a line.
//! A point's server is the tag `--influx-server-tag` (default `host`); each field becomes a
//! metric named `measurement[.tag_value...].field` (tags folded per `--fold-labels`). Floats,
//! integers (`1i`), unsigned (`1u`) and booleans (1/0) are carried; string fields are counted
//! as not carried. The timestamp's unit is the `precision` parameter (`ns` default; `us`, `ms`,
//! `s`, and 1.x's `n`, `u`, `m`, `h`); a line without one takes the arrival time.
//!
//! A body is all-or-nothing, like a JSON batch: the first malformed line refuses it whole
//! (400 naming the line). Answers: 204 stored, 400, 401, 413, 503 with `Retry-After`.
//! A token may be sent as `Authorization: Token T` (Influx 2.x clients) as well as `Bearer`.

use std::borrow::Cow;
use std::sync::Arc;

use http::{header, HeaderValue, Request};
use hyper::body::Incoming;
use metrics_edge::auth::Role;
use metrics_edge::http::{Answer, Refusal};
use metrics_model::now_ms;

use super::{store_mapped, Batch, Mapped, Mapping, Namer, Protocol, Uncarried};
use crate::front::{self, Front};

/// `POST /api/v2/write`, `POST /write`.
pub async fn post_write(front: &Arc<Front>, mut req: Request<Incoming>) -> Answer {
    token_scheme(&mut req);
    front.auth.check(Role::Agent, &req)?;
    let enc = front::content_encoding(req.headers())?;
    front::check_length(front, req.headers())?;
    let precision = precision(req.uri().query().unwrap_or(""))?;
    let arrival = now_ms();
    let body = front::read_body(front, req, enc).await?;
    let mapped =
        parse(&body, precision, &front.opts.mapping, arrival)?.finish(front.opts.limits)?;
    store_mapped(front, Protocol::Influx, &mapped, arrival).await?;
    Ok(super::no_content())
}

/// Influx 2.x clients send `Authorization: Token T`: read it as `Bearer T`.
fn token_scheme<B>(req: &mut Request<B>) {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Token "))
        .and_then(|t| HeaderValue::from_str(&format!("Bearer {}", t.trim())).ok());
    if let Some(v) = bearer {
        req.headers_mut().insert(header::AUTHORIZATION, v);
    }
}

/// Nanoseconds per unit of the `precision` parameter.
fn precision(query: &str) -> Result<u64, Refusal> {
    let p = metrics_edge::auth::query_param(query, "precision");
    Ok(match p.as_deref() {
        None | Some("ns" | "n") => 1,
        Some("us" | "u") => 1_000,
        Some("ms") => 1_000_000,
        Some("s") => 1_000_000_000,
        Some("m") => 60_000_000_000,
        Some("h") => 3_600_000_000_000,
        Some(other) => {
            return Err(Refusal::BadRequest(format!(
                "precision `{other}` is not one of ns, us, ms, s (or n, u, m, h)"
            )))
        }
    })
}

/// Parses a body into a batch; `precision` is nanoseconds per timestamp unit.
pub fn parse<'m>(
    body: &[u8],
    precision: u64,
    mapping: &'m Mapping,
    arrival_ms: u64,
) -> Result<Batch<'m>, Refusal> {
    let text = std::str::from_utf8(body).map_err(|e| {
        let line = body[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        Refusal::BadRequest(format!("line {line}: not valid UTF-8"))
    })?;
    let mut batch = Batch::new(mapping, arrival_ms);
    let server_tag = [mapping.influx_server.clone()];
    let namer = Namer::new(mapping, &server_tag);
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let point =
            Point::parse(line).map_err(|e| Refusal::BadRequest(format!("line {}: {e}", i + 1)))?;
        point.add(&mut batch, &namer, precision);
    }
    if batch.seen() == 0 {
        return Err(Refusal::BadRequest(
            "empty body: send at least one line `measurement,tag=v field=1 timestamp`".into(),
        ));
    }
    Ok(batch)
}

/// Runs [`parse`] and [`Batch::finish`] (for tests and benchmarks).
pub fn map(
    body: &[u8],
    precision: u64,
    mapping: &Mapping,
    arrival_ms: u64,
) -> Result<Mapped, Refusal> {
    parse(body, precision, mapping, arrival_ms)?.finish(Default::default())
}

/// A field's value.
#[derive(Debug, PartialEq)]
enum Field {
    Number(f64),
    Text,
}

/// One parsed line.
#[derive(Debug)]
struct Point<'a> {
    measurement: Cow<'a, str>,
    tags: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    fields: Vec<(Cow<'a, str>, Field)>,
    timestamp: Option<i64>,
}

impl<'a> Point<'a> {
    fn parse(line: &'a str) -> Result<Self, String> {
        let sections = split(line, b' ', true);
        let (key, fields, ts) = match sections.as_slice() {
            [k, f] => (*k, *f, None),
            [k, f, t] => (*k, *f, Some(*t)),
            [_] => return Err("no fields: expected `measurement field=value`".into()),
            _ => return Err("more than three space-separated sections (unescaped space?)".into()),
        };
        let mut key_parts = split(key, b',', false).into_iter();
        let measurement = unescape(key_parts.next().unwrap_or(""));
        if measurement.is_empty() {
            return Err("empty measurement name".into());
        }
        let mut tags = Vec::new();
        for t in key_parts {
            let (k, v) = pair(t).ok_or_else(|| format!("tag `{}` is not key=value", cut(t)))?;
            if k.is_empty() || v.is_empty() {
                return Err(format!("tag `{}` has an empty key or value", cut(t)));
            }
            tags.push((unescape(k), unescape(v)));
        }
        let mut parsed = Vec::new();
        for f in split(fields, b',', true) {
            let (k, v) = pair(f).ok_or_else(|| format!("field `{}` is not key=value", cut(f)))?;
            if k.is_empty() {
                return Err(format!("field `{}` has an empty key", cut(f)));
            }
            let value = field_value(v).ok_or_else(|| {
                format!(
                    "field `{}`: `{}` is not a number, integer (1i), unsigned (1u), boolean or quoted string",
                    cut(&unescape(k)),
                    cut(v)
                )
            })?;
            parsed.push((unescape(k), value));
        }
        let timestamp = match ts {
            None => None,
            Some(t) => Some(
                t.parse::<i64>()
                    .map_err(|_| format!("timestamp `{}` is not an integer", cut(t)))?,
            ),
        };
        Ok(Self {
            measurement,
            tags,
            fields: parsed,
            timestamp,
        })
    }

    fn add(self, batch: &mut Batch<'_>, namer: &Namer<'_>, precision: u64) {
        let n = self.fields.len() as u64;
        let found = self
            .tags
            .iter()
            .find(|(k, _)| *k == batch.mapping.influx_server.as_str())
            .map(|(_, v)| v.as_ref());
        let server = match batch.server(found) {
            Ok(s) => s,
            Err(r) => return batch.skip(r, n),
        };
        let timestamp = match self.timestamp {
            None => batch.arrival_ms(),
            Some(t) if t < 0 => return batch.skip(Uncarried::BadTimestamp, n),
            Some(t) => ((t as u128 * precision as u128) / 1_000_000).min(u64::MAX as u128) as u64,
        };
        let prefix = namer.prefix(
            &self.measurement,
            self.tags.iter().map(|(k, v)| (k.as_ref(), v.as_ref())),
        );
        for (k, v) in self.fields {
            match v {
                Field::Number(x) => {
                    batch.value(&server, timestamp, Namer::name(&prefix, Some(&k)), x);
                }
                Field::Text => batch.skip(Uncarried::NotANumber, 1),
            }
        }
    }
}

/// At most 64 characters of `s`, for error messages.
fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}

/// `k=v` at the first unescaped `=`.
fn pair(s: &str) -> Option<(&str, &str)> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'=' => return Some((&s[..i], &s[i + 1..])),
            _ => i += 1,
        }
    }
    None
}

/// Splits at unescaped `sep`, outside double quotes when `quotes`.
fn split(s: &str, sep: u8, quotes: bool) -> Vec<&str> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i, mut quoted) = (0, 0, false);
    while i < b.len() {
        match b[i] {
            b'\\' => {
                i += 2;
                continue;
            }
            b'"' if quotes => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&s[start.min(s.len())..]);
    out
}

/// Undoes `\,`, `\ `, `\=` and `\\`; other backslashes stay.
fn unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(&n) = chars.peek() {
                if matches!(n, ',' | ' ' | '=' | '\\') {
                    out.push(n);
                    chars.next();
                    continue;
                }
            }
        }
        out.push(c);
    }
    Cow::Owned(out)
}

fn field_value(v: &str) -> Option<Field> {
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        return Some(Field::Text);
    }
    match v {
        "t" | "T" | "true" | "True" | "TRUE" => return Some(Field::Number(1.0)),
        "f" | "F" | "false" | "False" | "FALSE" => return Some(Field::Number(0.0)),
        _ => {}
    }
    if let Some(i) = v.strip_suffix('i') {
        return i.parse::<i64>().ok().map(|x| Field::Number(x as f64));
    }
    if let Some(u) = v.strip_suffix('u') {
        return u.parse::<u64>().ok().map(|x| Field::Number(x as f64));
    }
    // Rust's float syntax is wider than Influx's (`inf`, `NaN`): those are refused.
    if v.bytes()
        .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E')
    {
        return None;
    }
    v.parse::<f64>().ok().map(Field::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telegraf_lines_become_samples() {
        let body = b"# comment\n\
cpu,cpu=cpu0,host=web\\ 1 usage_idle=97.5,usage_user=1.25 1700000000000000000\n\
mem,host=web\\ 1 used=1024i,free=5u,ok=true,note=\"a b, c=d\" 1700000000000000000\n\
disk,host=db,path=/var\\,x free=1e3\n\
net,host=db bytes\\ in=1,\xc3\xa9t\xc3\xa9=2\n";
        let m = map(body, 1, &Mapping::default(), 42).expect("mapped");
        assert_eq!(
            super::super::flat(&m),
            [
                "web_1@1700000000000 cpu.cpu_cpu0.usage_idle=97.5",
                "web_1@1700000000000 cpu.cpu_cpu0.usage_user=1.25",
                "web_1@1700000000000 mem.used=1024",
                "web_1@1700000000000 mem.free=5",
                "web_1@1700000000000 mem.ok=1",
                "db@42 disk.path__var_x.free=1000",
                "db@42 net.bytes_in=1",
                "db@42 net._t_=2",
            ]
        );
        assert_eq!(m.counts.rejected(), 1, "the string field is counted");
    }

    #[test]
    fn precision_scales_timestamps() {
        let m = map(
            b"x,host=a v=1 1700000000",
            1_000_000_000,
            &Mapping::default(),
            0,
        )
        .expect("mapped");
        assert_eq!(m.samples[0].timestamp, 1_700_000_000_000);
    }

    #[test]
    fn malformed_lines_name_the_line() {
        for (body, want) in [
            (&b"x,host=a v=1\ny\n"[..], "line 2: no fields"),
            (b"x,host=a v=abc", "line 1: field `v`"),
            (b"x,host=a v=1 12x", "line 1: timestamp `12x`"),
            (b"x,host v=1", "line 1: tag `host`"),
            (b"x v=1\n\xff", "line 2: not valid UTF-8"),
            (b"\n\n", "empty body"),
        ] {
            let e = map(body, 1, &Mapping::default(), 0).expect_err("refused");
            assert!(e.to_string().starts_with(want), "{e} / {want}");
        }
    }
}

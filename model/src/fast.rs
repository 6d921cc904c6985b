//! A single-pass decoder for the common shape of a sample, in front of simd-json.
//!
//! Measured on this project's machine, simd-json spends ~450 ns building the tape of a
//! 130-byte, 5-metric sample before any validation runs: alone it caps decoding near the
//! 2 M samples/s target. Agents send one small, fixed shape, so this scanner reads exactly
//! that shape in one pass, validating as it goes, and returns `None` at the first thing it does
//! not handle: escapes, unusual names, numbers it cannot convert exactly, duplicates, any
//! error at all. `None` sends the input to the simd-json path, which is the authority on
//! what is valid and on the error message. A property test checks that whenever this path
//! returns a sample, simd-json returns the same one.

use crate::decode::{is_name_byte, Limits, MAX_NAME_LEN};
use crate::sample::{Metrics, Sample};

/// `[A-Za-z0-9_.:-]`, as a table: one load per byte instead of five comparisons.
const NAME_CHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = is_name_byte(c as u8);
        c += 1;
    }
    t
};

/// Powers of ten exactly representable in an f64.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

struct Cursor<'a> {
    /// The whole input, checked as UTF-8 once so names can be sliced out without re-checking.
    text: &'a str,
    b: &'a [u8],
    i: usize,
    /// Metrics and name bytes of the previous sample: the samples of one message are alike,
    /// so each is made with the room the last one needed instead of growing to it.
    room: (usize, usize),
}

impl<'a> Cursor<'a> {
    #[inline]
    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// After an object member: `,` (another member follows: `Some(true)`) or `}` (the object
    /// ended: `Some(false)`); anything else fails.
    #[inline]
    fn next_member(&mut self) -> Option<bool> {
        let c = self.peek()?;
        self.i += 1;
        match c {
            b',' => Some(true),
            b'}' => Some(false),
            _ => None,
        }
    }

    /// A string of name characters only (no escapes): the only strings samples need.
    #[inline]
    fn name(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        while let Some(&c) = self.b.get(self.i) {
            if !NAME_CHAR[c as usize] {
                if c != b'"' {
                    return None;
                }
                let len = self.i - start;
                self.i += 1;
                return (1..=MAX_NAME_LEN)
                    .contains(&len)
                    .then(|| &self.text[start..start + len]);
            }
            self.i += 1;
        }
        None
    }

    /// A JSON number, converted as simd-json does: integers exactly, others correctly rounded.
    #[inline]
    fn number(&mut self) -> Option<f64> {
        self.ws();
        let start = self.i;
        let b = self.b;
        let mut i = self.i;
        let neg = b.get(i) == Some(&b'-');
        if neg {
            i += 1;
        }
        let int_start = i;
        let mut int: u64 = 0;
        while let Some(&c) = b.get(i) {
            if !c.is_ascii_digit() {
                break;
            }
            int = int.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            i += 1;
        }
        let digits = i - int_start;
        if digits == 0 || (digits > 1 && b[int_start] == b'0') {
            return None;
        }
        let mut is_float = false;
        // Fraction digits are accumulated into `mant` for the exact fast path below.
        let mut mant = Some(int);
        let mut frac_digits = 0usize;
        if b.get(i) == Some(&b'.') {
            is_float = true;
            i += 1;
            let f = i;
            while let Some(&c) = b.get(i) {
                if !c.is_ascii_digit() {
                    break;
                }
                mant = mant
                    .and_then(|m| m.checked_mul(10))
                    .and_then(|m| m.checked_add(u64::from(c - b'0')));
                i += 1;
            }
            frac_digits = i - f;
            if frac_digits == 0 {
                return None;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            is_float = true;
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let e = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == e {
                return None;
            }
            mant = None;
        }
        self.i = i;
        if !is_float {
            // simd-json: i64 when it fits, else u64; -0 is the integer 0.
            return if neg {
                (int <= i64::MAX as u64).then(|| -(int as i64) as f64)
            } else {
                Some(int as f64)
            };
        }
        // Clinger's fast path: an integer mantissa below 2^53 divided by an exact power of ten
        // is correctly rounded by one IEEE division, the same value a full parser gives.
        if let Some(m) = mant {
            if m <= (1u64 << 53) && frac_digits < POW10.len() {
                let x = m as f64 / POW10[frac_digits];
                return Some(if neg { -x } else { x });
            }
        }
        self.text[start..i]
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
    }

    /// A non-negative integer, as simd-json reads `timestamp`.
    fn timestamp(&mut self) -> Option<u64> {
        self.ws();
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(&c) = self.b.get(self.i) {
            if !c.is_ascii_digit() {
                break;
            }
            v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            self.i += 1;
        }
        let n = self.i - start;
        if n == 0 || (n > 1 && self.b[start] == b'0') {
            return None;
        }
        // A fraction or exponent makes it a float: the slow path reports it.
        if matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some(v)
    }

    fn metrics(&mut self, limits: Limits) -> Option<Metrics> {
        self.eat(b'{')?;
        let mut m = Metrics::with_room(self.room.0, self.room.1);
        if self.peek()? == b'}' {
            return None; // empty: the slow path names the error
        }
        loop {
            let name = self.name()?;
            self.eat(b':')?;
            if self.peek()? == b'{' {
                self.i += 1;
                if self.peek()? == b'}' {
                    self.i += 1; // an empty group adds nothing
                } else {
                    loop {
                        let sub = self.name()?;
                        if name.len() + 1 + sub.len() > MAX_NAME_LEN {
                            return None;
                        }
                        self.eat(b':')?;
                        let v = self.number()?;
                        push(&mut m, limits, name, sub, v)?;
                        if !self.next_member()? {
                            break;
                        }
                    }
                }
            } else {
                let v = self.number()?;
                push(&mut m, limits, "", name, v)?;
            }
            if !self.next_member()? {
                break;
            }
        }
        if m.is_empty() || m.find_duplicate().is_some() {
            return None;
        }
        self.room = (m.len(), m.name_bytes());
        Some(m)
    }

    fn sample(&mut self, arrival_ms: u64, limits: Limits, allow_type: bool) -> Option<Sample> {
        self.eat(b'{')?;
        let mut server: Option<&str> = None;
        let mut ts: Option<u64> = None;
        let mut metrics: Option<Metrics> = None;
        let mut typed = false;
        loop {
            let key = self.name()?;
            self.eat(b':')?;
            match key {
                "serverId" if server.is_none() => server = Some(self.name()?),
                "timestamp" if ts.is_none() => ts = Some(self.timestamp()?),
                "metrics" if metrics.is_none() => metrics = Some(self.metrics(limits)?),
                "type" if allow_type && !typed => {
                    if self.name()? != "metric" {
                        return None;
                    }
                    typed = true;
                }
                _ => return None,
            }
            if !self.next_member()? {
                break;
            }
        }
        Some(Sample {
            server_id: server?.to_string(),
            timestamp: ts.unwrap_or(arrival_ms),
            metrics: metrics?,
        })
    }

    fn end(&mut self) -> Option<()> {
        self.ws();
        (self.i == self.b.len()).then_some(())
    }
}

/// One sample object, or an array of them, in the common shape; `None` means "ask simd-json".
/// Adds a metric unless the sample already has as many as the limits allow (the slow path then
/// reports the error).
#[inline]
fn push(m: &mut Metrics, limits: Limits, prefix: &str, name: &str, v: f64) -> Option<()> {
    (m.len() < limits.max_metrics).then(|| m.push(prefix, name, v))
}

pub(crate) fn decode(
    input: &[u8],
    arrival_ms: u64,
    limits: Limits,
    allow_type: bool,
    allow_array: bool,
) -> Option<Vec<Sample>> {
    let text = std::str::from_utf8(input).ok()?;
    let mut c = Cursor {
        text,
        b: input,
        i: 0,
        room: (8, 64),
    };
    match c.peek()? {
        b'{' => {
            let s = c.sample(arrival_ms, limits, allow_type)?;
            c.end()?;
            Some(vec![s])
        }
        b'[' if allow_array => {
            c.i += 1;
            let mut out = Vec::new();
            loop {
                if out.len() == limits.max_batch {
                    return None;
                }
                let start = c.i;
                let s = c.sample(arrival_ms, limits, allow_type)?;
                if out.capacity() == 0 {
                    // Room for as many samples as the first one's length says the input holds.
                    let each = (c.i - start).max(1);
                    out.reserve_exact(((input.len() - start) / each + 1).min(limits.max_batch));
                }
                out.push(s);
                match c.peek()? {
                    b',' => c.i += 1,
                    b']' => {
                        c.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
            c.end()?;
            Some(out)
        }
        _ => None,
    }
}

//! The HdrHistogram percentile distribution text (`.hgrm`), as HdrHistogram's own
//! `outputPercentileDistribution` writes it, so the usual plotters read it; and read back,
//! ours or another tool's (wrk2 `--latency` prints the same table), for `bench diff`.

use std::fmt::Write;

use crate::record::Hist;

/// One line of the distribution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Highest value in the step, µs.
    pub value: u64,
    /// Quantile reached (0..=1).
    pub quantile: f64,
    /// Samples at or below `value`.
    pub total: u64,
}

/// The distribution at 5 ticks per half distance, HdrHistogram's default.
pub fn points(h: &Hist) -> Vec<Point> {
    let mut total = 0u64;
    let mut out = Vec::new();
    for v in h.inner().iter_quantiles(5) {
        total += v.count_since_last_iteration();
        out.push(Point {
            value: h.inner().highest_equivalent(v.value_iterated_to()),
            quantile: v.quantile_iterated_to(),
            total,
        });
    }
    out
}

/// The `.hgrm` text with values divided by `scale` (1000.0: microseconds shown as
/// milliseconds).
pub fn render(h: &Hist, scale: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let i = h.inner();
    for p in points(h) {
        let value = p.value as f64 / scale;
        if p.quantile < 1.0 {
            let _ = writeln!(
                s,
                "{value:12.3} {:2.12} {:10} {:14.2}",
                p.quantile,
                p.total,
                1.0 / (1.0 - p.quantile)
            );
        } else {
            let _ = writeln!(s, "{value:12.3} {:2.12} {:10}", p.quantile, p.total);
        }
    }
    let sub_buckets = 2u64.pow((2.0 * 10f64.powi(i.sigfig() as i32)).log2().ceil() as u32);
    let _ = writeln!(
        s,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        if i.is_empty() { 0.0 } else { i.mean() / scale },
        if i.is_empty() { 0.0 } else { i.stdev() / scale }
    );
    let _ = writeln!(
        s,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        i.max() as f64 / scale,
        i.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        i.buckets(),
        sub_buckets
    );
    s
}

/// Why an `.hgrm` text could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("no `Value Percentile TotalCount` header line: not an HdrHistogram percentile distribution (wrk2 --latency, outputPercentileDistribution)")]
    NoHeader,
    #[error("line {line}: {why}")]
    Row { line: usize, why: String },
    #[error("no rows under the `Value Percentile TotalCount` header")]
    Empty,
}

/// A percentile distribution read back: its rows (values in µs) and footer.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    pub points: Vec<Point>,
    /// From the `#[Mean = .., StdDeviation = ..]` footer, µs.
    pub mean: Option<f64>,
    pub stdev: Option<f64>,
    /// From the `#[Max = .., Total count = ..]` footer.
    pub max: Option<u64>,
    pub count: Option<u64>,
}

/// The number after `key =` in a footer line such as `#[Max = 10.007, Total count = 10000]`.
fn footer_value(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    let rest = rest.trim_start().strip_prefix('=')?;
    let end = rest.find([',', ']']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// Reads the table of a percentile distribution out of `text` (anything before its header,
/// such as the rest of wrk2's output, is skipped; it ends at the `#[` footer or the first line
/// that is not a row). Values are multiplied by `scale` to give µs (1000 for milliseconds,
/// the unit of wrk2's and the bench's files).
pub fn parse(text: &str, scale: f64) -> Result<Parsed, ParseError> {
    let mut lines = text.lines().enumerate();
    lines
        .by_ref()
        .find(|(_, l)| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.starts_with(&["Value", "Percentile", "TotalCount"])
        })
        .ok_or(ParseError::NoHeader)?;
    let mut out = Parsed {
        points: Vec::new(),
        mean: None,
        stdev: None,
        max: None,
        count: None,
    };
    let mut in_footer = false;
    for (i, line) in lines {
        let t = line.trim();
        if t.starts_with("#[") {
            in_footer = true;
            out.mean = out.mean.or(footer_value(t, "Mean").map(|v| v * scale));
            out.stdev = out
                .stdev
                .or(footer_value(t, "StdDeviation").map(|v| v * scale));
            out.max = out
                .max
                .or(footer_value(t, "Max").map(|v| (v * scale).round() as u64));
            out.count = out
                .count
                .or(footer_value(t, "Total count").map(|v| v as u64));
            continue;
        }
        if t.is_empty() && !in_footer {
            continue;
        }
        if in_footer {
            break;
        }
        let row = |why: &str| ParseError::Row {
            line: i + 1,
            why: format!("{why}: `{t}`"),
        };
        let w: Vec<&str> = t.split_whitespace().collect();
        if w.len() < 3 || w.len() > 4 {
            if out.points.is_empty() {
                return Err(row(
                    "expected `Value Percentile TotalCount [1/(1-Percentile)]`",
                ));
            }
            break; // the end of the table (wrk2 goes on with its own lines)
        }
        let value: f64 = w[0].parse().map_err(|_| row("the value is not a number"))?;
        let quantile: f64 = w[1]
            .parse()
            .map_err(|_| row("the percentile is not a number"))?;
        let total: u64 = w[2]
            .parse()
            .map_err(|_| row("the total count is not a whole number"))?;
        if !(0.0..=1.0).contains(&quantile) || !value.is_finite() || value < 0.0 {
            return Err(row(
                "the percentile must be 0 to 1 and the value zero or more",
            ));
        }
        let value = (value * scale).round() as u64;
        if let Some(prev) = out.points.last() {
            if quantile < prev.quantile || total < prev.total || value < prev.value {
                return Err(row("rows must not go down in value, percentile or count"));
            }
        }
        out.points.push(Point {
            value,
            quantile,
            total,
        });
    }
    if out.points.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(out)
}

impl Parsed {
    /// The smallest value at or above quantile `q`.
    pub fn value_at(&self, q: f64) -> u64 {
        self.points
            .iter()
            .find(|p| p.quantile >= q)
            .or(self.points.last())
            .map_or(0, |p| p.value)
    }

    /// Its summary, as the bench's own results have it.
    pub fn summary(&self) -> super::LatencySummary {
        let last = self.points.last().copied();
        super::LatencySummary {
            count: self.count.or(last.map(|p| p.total)).unwrap_or(0),
            min: self.points.first().map_or(0, |p| p.value),
            mean: self.mean.unwrap_or(0.0),
            stdev: self.stdev.unwrap_or(0.0),
            p50: self.value_at(0.5),
            p90: self.value_at(0.9),
            p99: self.value_at(0.99),
            p999: self.value_at(0.999),
            max: self.max.or(last.map(|p| p.value)).unwrap_or(0),
            curve: self
                .points
                .iter()
                .map(|p| (p.quantile * 100.0, p.value))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_has_the_hdrhistogram_layout_and_adds_up() {
        let mut h = Hist::new();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        let text = render(&h, 1000.0);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].trim_start().starts_with("Value"), "{}", lines[0]);
        assert!(lines[1].is_empty());
        // Rows: value, percentile, total count, 1/(1-p) except on the last row.
        let rows: Vec<Vec<&str>> = lines[2..]
            .iter()
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert!(rows.len() > 20);
        let last = rows.last().expect("rows");
        assert_eq!(last.len(), 3);
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "10000");
        let mut prev = 0u64;
        for r in &rows {
            let total: u64 = r[2].parse().expect("count");
            assert!(total >= prev);
            prev = total;
        }
        // The median row is near 5 ms (values are in µs, shown in ms).
        let median = rows
            .iter()
            .find(|r| r[1].starts_with("0.500"))
            .expect("a 50% row");
        let v: f64 = median[0].parse().expect("value");
        assert!((v - 5.0).abs() < 0.01, "{v}");
        assert!(
            text.contains("#[Max     =       10.007, Total count    =        10000]"),
            "{text}"
        );
        assert!(text.contains("SubBuckets     =         2048]"));
    }

    #[test]
    fn what_render_writes_parses_back() {
        let mut h = Hist::new();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        let p = parse(&render(&h, 1000.0), 1000.0).expect("parses");
        let s = p.summary();
        assert_eq!(s.count, 10_000);
        assert_eq!(s.max, h.max());
        assert_eq!(p.points.len(), points(&h).len());
        // The first row at or past the percentile: within a tick of the histogram's own.
        for (got, q) in [(s.p50, 0.5), (s.p99, 0.99)] {
            let want = h.value_at_quantile(q);
            assert!(
                got >= want && got <= want + want / 100,
                "p{q}: {got} vs {want}"
            );
        }
        assert!((s.mean - h.inner().mean()).abs() < 1.0);
    }

    #[test]
    fn wrk2_output_is_read_around_its_other_lines() {
        let p = parse(include_str!("../../tests/data/wrk2.hgrm"), 1000.0).expect("parses");
        let s = p.summary();
        assert_eq!(s.count, 24_000);
        assert_eq!((s.min, s.p50, s.p90, s.max), (167, 902, 1602, 14_227));
        assert!((s.mean - 1004.0).abs() < 1e-6, "{}", s.mean);
        // Its last row ends with `inf` and the table with the footer; what follows is skipped.
        assert_eq!(p.points.last().map(|x| x.quantile), Some(1.0));
    }

    #[test]
    fn bad_distributions_are_refused_naming_the_line() {
        assert_eq!(parse("hello\n", 1.0), Err(ParseError::NoHeader));
        let head = "       Value   Percentile   TotalCount 1/(1-Percentile)\n\n";
        assert_eq!(parse(head, 1.0), Err(ParseError::Empty));
        let e = parse(
            &format!("{head}  1.0 0.5 10 2.0\n  0.5 0.9 20 10.0\n"),
            1000.0,
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("line 4: rows must not go down"),
            "{e}"
        );
        let e = parse(&format!("{head}  1.0 half 10 2.0\n"), 1.0).unwrap_err();
        assert!(e.to_string().contains("percentile is not a number"), "{e}");
        let e = parse(&format!("{head}  1.0 1.5 10\n"), 1.0).unwrap_err();
        assert!(e.to_string().contains("0 to 1"), "{e}");
    }

    #[test]
    fn an_empty_histogram_still_renders() {
        let text = render(&Hist::new(), 1000.0);
        assert!(text.contains("Total count    =            0"));
    }
}

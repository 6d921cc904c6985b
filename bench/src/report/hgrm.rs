//! The HdrHistogram percentile distribution text (`.hgrm`), as HdrHistogram's own
//! `outputPercentileDistribution` writes it, so the usual plotters read it.

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
    fn an_empty_histogram_still_renders() {
        let text = render(&Hist::new(), 1000.0);
        assert!(text.contains("Total count    =            0"));
    }
}

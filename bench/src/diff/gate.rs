//! The regression gate of `bench diff --fail-if`: conditions such as `p99>+10%`, `p50>2ms`,
//! `lost>0`, `seen<-5%`, checked for every curve of the newer runs against its base curve.
//! A condition on a difference (`p99>+10%`) met within the spread of repeated runs
//! (`bench run --repeat`) is reported but does not fail: it is noise, not a regression. A fixed
//! limit (`p50>2ms`) is not excused by the spread.

use std::str::FromStr;

use serde::Serialize;

use crate::report::figures::{Metric, Range};
use crate::report::table::{count, duration_us};

/// Why a `--fail-if` condition could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GateError {
    #[error("--fail-if `{0}`: expected METRIC OP VALUE, such as p99>+10%, p50>2ms, lost>0 or seen<-5% (OP one of > >= < <=)")]
    NoOperator(String),
    #[error("--fail-if `{cond}`: unknown metric `{metric}`; one of p50, p90, p99, p99.9 (or p999), max, seen, lost, cpu_per_sample")]
    Metric { cond: String, metric: String },
    #[error("--fail-if `{cond}`: `{value}` is not a number, a change (+10%, -5%, +1ms) or a duration (2ms, 500us, 1s)")]
    Value { cond: String, value: String },
    #[error("--fail-if `{cond}`: {metric} is a duration: give a unit (us, ms or s), as in {metric}>2ms, or a change in percent (+10%)")]
    NeedsUnit { cond: String, metric: &'static str },
    #[error("--fail-if `{cond}`: {metric} is a count of samples: no unit")]
    NoUnit { cond: String, metric: &'static str },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Op {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
}

impl Op {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Lt => a < b,
            Op::Le => a <= b,
        }
    }
}

/// What the threshold is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Threshold {
    /// The change from the base in percent (`+10%`).
    Percent(f64),
    /// The change from the base in the metric's unit, µs or samples (`+1ms`, `-100`).
    Change(f64),
    /// The new value itself (`2ms`, `0`).
    Value(f64),
}

/// One `--fail-if` condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub text: String,
    pub metric: Metric,
    pub op: Op,
    pub threshold: Threshold,
}

impl FromStr for Condition {
    type Err = GateError;

    fn from_str(s: &str) -> Result<Self, GateError> {
        let text: String = s.split_whitespace().collect();
        let (at, op, len) = ["<=", ">=", "<", ">"]
            .iter()
            .filter_map(|o| text.find(o).map(|i| (i, *o)))
            .min_by_key(|(i, o)| (*i, std::cmp::Reverse(o.len())))
            .map(|(i, o)| {
                let op = match o {
                    "<=" => Op::Le,
                    ">=" => Op::Ge,
                    "<" => Op::Lt,
                    _ => Op::Gt,
                };
                (i, op, o.len())
            })
            .ok_or_else(|| GateError::NoOperator(s.to_string()))?;
        let (name, value) = (&text[..at], &text[at + len..]);
        let metric = Metric::parse(name).ok_or_else(|| GateError::Metric {
            cond: s.to_string(),
            metric: name.to_string(),
        })?;
        let bad_value = || GateError::Value {
            cond: s.to_string(),
            value: value.to_string(),
        };
        let signed = value.starts_with(['+', '-']);
        let threshold = if let Some(pct) = value.strip_suffix('%') {
            Threshold::Percent(pct.parse().map_err(|_| bad_value())?)
        } else {
            let digits_end = value
                .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-')))
                .unwrap_or(value.len());
            let (num, unit) = value.split_at(digits_end);
            let n: f64 = num.parse().map_err(|_| bad_value())?;
            let scale = match (metric.is_time(), unit) {
                (true, "us" | "µs") => 1.0,
                (true, "ms") => 1e3,
                (true, "s") => 1e6,
                (true, "") => {
                    return Err(GateError::NeedsUnit {
                        cond: s.to_string(),
                        metric: metric.name(),
                    })
                }
                (false, "") => 1.0,
                (false, _) => {
                    return Err(GateError::NoUnit {
                        cond: s.to_string(),
                        metric: metric.name(),
                    })
                }
                (true, _) => return Err(bad_value()),
            };
            if signed {
                Threshold::Change(n * scale)
            } else {
                Threshold::Value(n * scale)
            }
        };
        let (Threshold::Percent(p) | Threshold::Change(p) | Threshold::Value(p)) = threshold;
        if !p.is_finite() {
            return Err(bad_value());
        }
        Ok(Condition {
            text: s.to_string(),
            metric,
            op,
            threshold,
        })
    }
}

/// A value of `metric` for people.
pub fn show(metric: Metric, v: f64) -> String {
    if metric.is_time() {
        duration_us(v.round().max(0.0) as u64)
    } else {
        count(v.round().max(0.0) as u64)
    }
}

/// One figure of one curve, with its spread over repetitions when it has one.
#[derive(Clone, Copy, Debug)]
pub struct Value {
    pub v: f64,
    pub spread: Option<Range>,
}

impl Value {
    fn range(&self) -> Range {
        self.spread.unwrap_or(Range::point(self.v))
    }
}

/// Whether the difference of `new` from `base` is within the spread of repeated runs: some
/// repetitions of one overlap those of the other (never when neither was repeated).
pub fn within_spread(base: &Value, new: &Value) -> bool {
    (base.spread.is_some() || new.spread.is_some()) && base.range().overlaps(&new.range())
}

/// A condition checked for one pair of curves.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub condition: String,
    pub base: String,
    pub new: String,
    pub metric: &'static str,
    pub base_value: f64,
    pub new_value: f64,
    /// The condition holds.
    pub met: bool,
    /// ...but the difference is within the spread of the repetitions, so it does not fail.
    pub within_spread: bool,
    /// One line for people.
    pub text: String,
}

impl Outcome {
    pub fn fails(&self) -> bool {
        self.met && !self.within_spread
    }
}

impl Condition {
    /// Checks the condition for `new` against `base` (labels for the message).
    pub fn check(&self, base_label: &str, base: &Value, new_label: &str, new: &Value) -> Outcome {
        let change = new.v - base.v;
        let pct = if base.v != 0.0 {
            change / base.v * 100.0
        } else if change == 0.0 {
            0.0
        } else {
            f64::INFINITY.copysign(change)
        };
        let (lhs, limit) = match self.threshold {
            Threshold::Percent(p) => (pct, p),
            Threshold::Change(c) => (change, c),
            Threshold::Value(v) => (new.v, v),
        };
        let met = self.op.holds(lhs, limit);
        // The spread excuses a difference from the base, not a fixed limit (`p50>2ms`,
        // `lost>0`): the base's noise says nothing about where such a limit lies.
        let relative = !matches!(self.threshold, Threshold::Value(_));
        let within = met && relative && within_spread(base, new);
        let m = self.metric;
        let pct_text = if pct.is_finite() {
            format!("{pct:+.1}%")
        } else {
            "from 0".into()
        };
        let mut text = format!(
            "{}: {} {} -> {} ({pct_text}) vs {base_label}",
            new_label,
            m.name(),
            show(m, base.v),
            show(m, new.v),
        );
        if met {
            text.push_str(&format!(", meets `{}`", self.text));
        }
        if within {
            text.push_str(", within the spread of the repetitions (not failing)");
        }
        Outcome {
            condition: self.text.clone(),
            base: base_label.to_string(),
            new: new_label.to_string(),
            metric: m.name(),
            base_value: base.v,
            new_value: new.v,
            met,
            within_spread: within,
            text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Condition {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn v(v: f64) -> Value {
        Value { v, spread: None }
    }

    #[test]
    fn conditions_parse() {
        let p = c("p99>+10%");
        assert_eq!(
            (p.metric, p.op, p.threshold),
            (Metric::P99, Op::Gt, Threshold::Percent(10.0))
        );
        assert_eq!(c("p50 > 2ms").threshold, Threshold::Value(2000.0));
        assert_eq!(c("p99.9>=+1.5ms").threshold, Threshold::Change(1500.0));
        assert_eq!(c("lost>0").threshold, Threshold::Value(0.0));
        let s = c("seen<-5%");
        assert_eq!((s.op, s.threshold), (Op::Lt, Threshold::Percent(-5.0)));
        assert_eq!(c("cpu_per_sample>+20%").metric, Metric::CpuPerSample);
        assert_eq!(c("max<=500us").op, Op::Le);
    }

    #[test]
    fn bad_conditions_name_what_is_wrong() {
        let e = |s: &str| s.parse::<Condition>().unwrap_err().to_string();
        assert!(
            e("p99").contains("expected METRIC OP VALUE"),
            "{}",
            e("p99")
        );
        assert!(e("p98>+10%").contains("unknown metric `p98`"));
        assert!(e("p99>ten%").contains("`ten%` is not a number"));
        assert!(e("p50>2").contains("give a unit"));
        assert!(e("lost>2ms").contains("a count of samples: no unit"));
        assert!(e("p50>2min").contains("`2min` is not"));
    }

    #[test]
    fn outcomes_compare_new_with_base() {
        let o = c("p99>+10%").check("A:system2", &v(1000.0), "B:system2", &v(1200.0));
        assert!(o.fails(), "{o:?}");
        assert!(
            o.text.contains("p99 1.00 ms -> 1.20 ms (+20.0%)"),
            "{}",
            o.text
        );
        assert!(!c("p99>+10%").check("a", &v(1000.0), "b", &v(1050.0)).met);
        assert!(c("lost>0").check("a", &v(0.0), "b", &v(3.0)).fails());
        assert!(!c("lost>0").check("a", &v(3.0), "b", &v(0.0)).met);
        assert!(c("seen<-5%").check("a", &v(1000.0), "b", &v(900.0)).fails());
        assert!(c("p50>+100us")
            .check("a", &v(1000.0), "b", &v(1101.0))
            .fails());
        // From zero, any rise is an infinite change.
        assert!(c("lost>+10%").check("a", &v(0.0), "b", &v(1.0)).fails());
    }

    #[test]
    fn a_difference_within_the_spread_does_not_fail() {
        let base = Value {
            v: 1000.0,
            spread: Range::of(&[900.0, 1000.0, 1250.0]),
        };
        let o = c("p99>+10%").check("a", &base, "b", &v(1200.0));
        assert!(o.met && o.within_spread && !o.fails(), "{o:?}");
        assert!(o.text.contains("within the spread"));
        let o = c("p99>+10%").check("a", &base, "b", &v(1300.0));
        assert!(o.fails());
        // A fixed limit is not excused by the base's spread.
        let o = c("p99>1100us").check("a", &base, "b", &v(1200.0));
        assert!(o.met && !o.within_spread && o.fails(), "{o:?}");
        let lossy = Value {
            v: 0.0,
            spread: Range::of(&[0.0, 0.0, 5.0]),
        };
        assert!(c("lost>0").check("a", &lossy, "b", &v(3.0)).fails());
    }
}

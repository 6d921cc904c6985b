//! The terminal table of `bench diff`: one row per curve, and under each curve of a later run
//! its ratios to its base (`~` marks a difference within the spread of repeated runs).

use std::fmt::Write;

use super::runs::Run;
use super::{gate, DiffSection};
use crate::report::figures::Metric;

const HEAD: [&str; 8] = [
    "p50",
    "p90",
    "p99",
    "p99.9",
    "max",
    "seen",
    "lost",
    "CPU/sample",
];

pub fn render(runs: &[Run], d: &DiffSection) -> String {
    let mut s = String::new();
    for (i, r) in runs.iter().enumerate() {
        let what = r
            .report
            .as_ref()
            .map(|rep| format!("{} ({})", rep.command, rep.started))
            .unwrap_or_else(|| "an .hgrm file".into());
        let role = if i == 0 { " (base)" } else { "" };
        let _ = writeln!(s, "{}{role}: {what}", r.name);
    }
    for p in &d.problems {
        let _ = writeln!(s, "not comparable (--force): {p}");
    }
    for n in &d.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s.push('\n');
    let mut table: Vec<Vec<String>> = vec![std::iter::once("".to_string())
        .chain(HEAD.iter().map(|h| h.to_string()))
        .collect()];
    for r in &d.rows {
        let mut line = vec![r.label.clone()];
        line.extend(
            Metric::ALL
                .iter()
                .map(|&m| m.of(&r.figures).map_or("-".into(), |v| gate::show(m, v))),
        );
        table.push(line);
        if let Some(base) = &r.base {
            let mut line = vec![format!("  vs {base}")];
            line.extend(Metric::ALL.iter().map(|m| {
                let noise = if r.within_spread.get(m.name()) == Some(&true) {
                    "~"
                } else {
                    ""
                };
                match (r.ratio.get(m.name()), r.change.get(m.name())) {
                    (Some(x), _) => format!("{noise}x{x:.2}"),
                    // From zero: the change itself.
                    (None, Some(d)) if *d == 0.0 => format!("{noise}="),
                    (None, Some(d)) => format!("{noise}+{}", gate::show(*m, *d)),
                    (None, None) => "-".into(),
                }
            }));
            table.push(line);
        }
    }
    let cols = table[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            table
                .iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &table {
        for (c, cell) in row.iter().enumerate() {
            if c == 0 {
                let _ = write!(s, "{cell:<w$}", w = widths[0]);
            } else {
                let _ = write!(s, "  {cell:>w$}", w = widths[c]);
            }
        }
        s.push('\n');
    }
    if d.rows.iter().any(|r| r.within_spread.values().any(|&w| w)) {
        s.push_str("~: within the spread of the repeated runs\n");
    }
    for o in &d.gate {
        if o.met {
            let _ = writeln!(s, "{}", o.text);
        }
    }
    s
}

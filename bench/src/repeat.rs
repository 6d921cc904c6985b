//! `bench run --repeat N`: of a system's repetitions, the report keeps the one with the median
//! p99 (its histograms and counts, a real run rather than a blend) and records every
//! repetition's figures and their spread next to it.

use crate::report::figures::{Figures, Repeats};
use crate::run::Measured;

/// The repetition with the median p99, carrying the figures of all of them; a single run
/// unchanged.
pub fn chosen(mut reps: Vec<Measured>) -> Measured {
    if reps.len() < 2 {
        return reps.pop().expect("at least one repetition");
    }
    let figures: Vec<Figures> = reps.iter().map(|m| Figures::of_result(&m.result)).collect();
    for (i, f) in figures.iter().enumerate() {
        eprintln!(
            "{} repetition {}: p50 {} p99 {} lost {}",
            reps[i].result.name,
            i + 1,
            f.p50
                .map_or("-".into(), |v| crate::report::table::duration_us(v as u64)),
            f.p99
                .map_or("-".into(), |v| crate::report::table::duration_us(v as u64)),
            f.lost.unwrap_or(0.0)
        );
    }
    let repeats = Repeats::new(figures);
    let mut m = reps.swap_remove(repeats.chosen);
    m.result.repeats = Some(repeats);
    m
}

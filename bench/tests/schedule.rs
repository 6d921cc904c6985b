//! The open-loop schedule and the coordinated-omission correction.

use std::time::Duration;

use bench::record::Hist;
use bench::schedule::{Latency, Phase, Schedule, ScheduleError};

#[test]
fn steady_schedule_spaces_messages_evenly() {
    let s = Schedule::steady(1000.0, 2.0).expect("valid");
    assert_eq!(s.total(), 2000);
    assert_eq!(s.due(0), Duration::ZERO);
    assert_eq!(s.due(1000), Duration::from_secs(1));
    assert_eq!(s.due(1999), Duration::from_secs_f64(1.999));
    assert_eq!(s.count_before(0.0), 0);
    assert_eq!(s.count_before(0.5), 500);
    assert_eq!(s.count_before(0.5005), 501);
    assert_eq!(s.count_before(10.0), 2000);
}

#[test]
fn burst_schedule_alternates_rates() {
    // 1 s at 100/s then 1 s at 10/s, twice.
    let s = Schedule::burst(10.0, 100.0, 2.0, 1.0, 4.0).expect("valid");
    assert_eq!(s.phases().len(), 4);
    assert_eq!(s.total(), 220);
    assert_eq!(s.due(100), Duration::from_secs(1));
    assert_eq!(s.due(101), Duration::from_secs_f64(1.1));
    assert_eq!(s.due(110), Duration::from_secs(2));
    assert_eq!(s.count_before(2.0), 110);
    assert_eq!(s.count_before(3.0), 210);
    // Due times never go backwards across phases.
    let mut last = Duration::ZERO;
    for k in 0..s.total() {
        assert!(s.due(k) >= last, "message {k}");
        last = s.due(k);
    }
}

#[test]
fn bad_schedules_are_refused_by_name() {
    assert_eq!(Schedule::new(vec![]).unwrap_err(), ScheduleError::Empty);
    let e = Schedule::new(vec![Phase {
        secs: 1.0,
        rate: 0.0,
    }])
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "phase 0: rate must be a positive number of messages per second, got 0"
    );
    assert!(Schedule::steady(10.0, f64::NAN).is_err());
}

/// A server that stalls for 500 ms in the middle of a 1,000 messages/s run, driven by a
/// sender that can only send once the previous reply came back (as a closed-loop client
/// would). Measured from the actual send time the stall is one slow message; measured from
/// the intended time every message that should have gone out during the stall is late.
#[test]
fn corrected_latency_counts_the_stall_for_every_message_it_delayed() {
    let s = Schedule::steady(1000.0, 2.0).expect("valid");
    let service_us = |t_us: u64| {
        if (1_000_000..1_500_000).contains(&t_us) {
            500_000
        } else {
            100
        }
    };
    let (mut corrected, mut uncorrected) = (Hist::new(), Hist::new());
    let mut free_at = 0u64; // when the sender can send again
    for k in 0..s.total() {
        let intended = s.due(k).as_micros() as u64;
        let sent = intended.max(free_at);
        let done = sent + service_us(sent);
        free_at = done;
        let l = Latency::of(intended, sent, done);
        corrected.record(l.corrected_us);
        uncorrected.record(l.uncorrected_us);
    }
    // Without correction the stall is a single sample: the p99 stays at the service time.
    assert!(uncorrected.value_at_quantile(0.99) < 1_000);
    assert!(uncorrected.max() >= 500_000);
    // With it, about a quarter of the run (500 ms of 2 s) waited behind the stall.
    assert!(corrected.value_at_quantile(0.90) > 100_000);
    assert!(corrected.value_at_quantile(0.70) < 1_000);
    assert_eq!(corrected.len(), 2000);
}

#[test]
fn latency_never_goes_negative() {
    let l = Latency::of(1_000, 1_200, 900);
    assert_eq!(
        l,
        Latency {
            corrected_us: 0,
            uncorrected_us: 0
        }
    );
    let l = Latency::of(1_000, 1_200, 1_500);
    assert_eq!(
        l,
        Latency {
            corrected_us: 500,
            uncorrected_us: 300
        }
    );
}

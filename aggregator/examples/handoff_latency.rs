//! Push latency of the hand-off under contention, per push, in an HDR histogram: the figure
//! a lock-free ring improves (a mutex holder that is descheduled stalls every other pusher).
//! Three producer threads and one consumer on this machine's two cores, so preemption
//! happens as it does under real load.
//!
//! `cargo run --release -p aggregator --example handoff_latency`

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use crossbeam_queue::ArrayQueue;
use hdrhistogram::Histogram;

const PRODUCERS: usize = 3;
const PER_PRODUCER: usize = 2_000_000;

fn measure(
    name: &str,
    push: Arc<dyn Fn(u64) + Send + Sync>,
    pop: Arc<dyn Fn() -> bool + Send + Sync>,
) {
    let done = Arc::new(AtomicBool::new(false));
    let consumer = {
        let done = done.clone();
        let pop = pop.clone();
        thread::spawn(move || {
            let mut n = 0usize;
            while n < PRODUCERS * PER_PRODUCER {
                if pop() {
                    n += 1;
                } else if done.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            }
        })
    };
    let start = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|_| {
            let push = push.clone();
            thread::spawn(move || {
                let mut h =
                    Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 3).expect("histogram");
                for i in 0..PER_PRODUCER {
                    let t = Instant::now();
                    push(i as u64);
                    let _ = h.record(t.elapsed().as_nanos() as u64 + 1);
                }
                h
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 3).expect("histogram");
    for p in producers {
        all.add(p.join().expect("producer")).expect("merge");
    }
    done.store(true, Ordering::Relaxed);
    consumer.join().expect("consumer");
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{name:<28} {:>6.1} M/s   push p50 {:>5} ns  p99 {:>6} ns  p99.9 {:>8} ns  p99.99 {:>9} ns  max {:>9} ns",
        (PRODUCERS * PER_PRODUCER) as f64 / secs / 1e6,
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.99),
        all.value_at_quantile(0.999),
        all.value_at_quantile(0.9999),
        all.max(),
    );
}

fn main() {
    let q = Arc::new(ArrayQueue::<u64>::new(65_536));
    let (qa, qb) = (q.clone(), q);
    measure(
        "crossbeam ArrayQueue (ours)",
        Arc::new(move |v| {
            let mut v = v;
            while let Err(back) = qa.push(v) {
                v = back;
                std::hint::spin_loop();
            }
        }),
        Arc::new(move || qb.pop().is_some()),
    );
    let m = Arc::new(Mutex::new(VecDeque::<u64>::with_capacity(65_536)));
    let (ma, mb) = (m.clone(), m);
    measure(
        "Mutex<VecDeque>",
        Arc::new(move |v| ma.lock().expect("lock").push_back(v)),
        Arc::new(move || mb.lock().expect("lock").pop_front().is_some()),
    );
}

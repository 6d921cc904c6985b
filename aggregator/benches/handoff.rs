//! The connection-to-aggregator hand-off, side by side: crossbeam's lock-free `ArrayQueue`
//! (what the aggregator uses), a `Mutex<VecDeque>`, and `std::sync::mpsc`. Two producer
//! threads push 100,000 items each while one consumer pops, as connection tasks and the
//! aggregator thread do.

use std::collections::VecDeque;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;

const PRODUCERS: usize = 2;
const PER_PRODUCER: usize = 100_000;

fn run_array_queue() {
    let q = Arc::new(ArrayQueue::<u64>::new(65_536));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let q = q.clone();
            thread::spawn(move || {
                for i in 0..PER_PRODUCER {
                    let mut v = (p * PER_PRODUCER + i) as u64;
                    while let Err(back) = q.push(v) {
                        v = back;
                        std::hint::spin_loop();
                    }
                }
            })
        })
        .collect();
    let mut got = 0;
    while got < PRODUCERS * PER_PRODUCER {
        if q.pop().is_some() {
            got += 1;
        } else {
            std::hint::spin_loop();
        }
    }
    producers
        .into_iter()
        .for_each(|t| t.join().expect("producer"));
}

fn run_mutex_deque() {
    let q = Arc::new(Mutex::new(VecDeque::<u64>::with_capacity(65_536)));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let q = q.clone();
            thread::spawn(move || {
                for i in 0..PER_PRODUCER {
                    q.lock()
                        .expect("lock")
                        .push_back((p * PER_PRODUCER + i) as u64);
                }
            })
        })
        .collect();
    let mut got = 0;
    while got < PRODUCERS * PER_PRODUCER {
        if q.lock().expect("lock").pop_front().is_some() {
            got += 1;
        } else {
            std::hint::spin_loop();
        }
    }
    producers
        .into_iter()
        .for_each(|t| t.join().expect("producer"));
}

fn run_mpsc() {
    let (tx, rx) = mpsc::channel::<u64>();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let tx = tx.clone();
            thread::spawn(move || {
                for i in 0..PER_PRODUCER {
                    tx.send((p * PER_PRODUCER + i) as u64).expect("send");
                }
            })
        })
        .collect();
    for _ in 0..PRODUCERS * PER_PRODUCER {
        rx.recv().expect("recv");
    }
    producers
        .into_iter()
        .for_each(|t| t.join().expect("producer"));
}

fn handoff(c: &mut Criterion) {
    let mut g = c.benchmark_group("hand-off, 2 producers + 1 consumer");
    g.throughput(Throughput::Elements((PRODUCERS * PER_PRODUCER) as u64));
    g.sample_size(20);
    g.bench_function("crossbeam ArrayQueue (ours)", |b| b.iter(run_array_queue));
    g.bench_function("Mutex<VecDeque>", |b| b.iter(run_mutex_deque));
    g.bench_function("std mpsc channel", |b| b.iter(run_mpsc));
    g.finish();
}

criterion_group!(benches, handoff);
criterion_main!(benches);

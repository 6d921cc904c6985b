//! The lock-free hand-off under concurrent producers: many tasks on several threads push into a
//! deliberately tiny ring (so it is full most of the time) and every sample is aggregated once;
//! the same with room for many batches but a byte budget of less than one batch.

use std::sync::atomic::Ordering;
use std::time::Duration;

use aggregator::aggregate::{Aggregator, AggregatorOptions, Batch};
use metrics_edge::hub::{Audience, Hub, QueueLimits};
use metrics_model::window::WindowSpec;
use metrics_model::{now_ms, Metrics, Sample};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_producers_lose_nothing() {
    lose_nothing(4, usize::MAX).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ring_full_in_bytes_makes_producers_wait_and_loses_nothing() {
    // Room for 65,536 batches but bytes for less than one: one batch at a time goes in.
    lose_nothing(65_536, 1).await;
}

/// Eight producers push 500 batches each through a ring of `ring_capacity` batches and
/// `ring_bytes` bytes; every sample is aggregated once and the ring was full at times.
async fn lose_nothing(ring_capacity: usize, ring_bytes: usize) {
    let hub = Hub::new(QueueLimits {
        sample_cap: 16,
        other_cap: 1 << 20,
        max_bytes: usize::MAX,
        ..QueueLimits::default()
    });
    let dash = hub.register(Audience::Dashboard, None);
    let agg = Aggregator::start(
        AggregatorOptions {
            windows: WindowSpec::parse_list("50ms").expect("window"),
            ring_capacity,
            ring_bytes,
            max_series: 10_000,
            ..AggregatorOptions::default()
        },
        hub.clone(),
    )
    .expect("start");

    let producers = 8u64;
    let batches = 500u64;
    let per_batch = 10u64;
    let mut tasks = Vec::new();
    for p in 0..producers {
        let agg = agg.clone();
        tasks.push(tokio::spawn(async move {
            for b in 0..batches {
                let samples = (0..per_batch)
                    .map(|i| {
                        let mut m = Metrics::with_capacity(1);
                        m.push("", "x", (p * 1_000_000 + b * per_batch + i) as f64);
                        Sample {
                            server_id: format!("p{p}"),
                            timestamp: 0,
                            metrics: m,
                        }
                    })
                    .collect();
                agg.submit(Batch {
                    arrival_ms: now_ms(),
                    samples,
                    from: None,
                })
                .await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("producer");
    }
    let total = producers * batches * per_batch;
    assert!(
        agg.stats().ring_full_waits.load(Ordering::Relaxed) > 0,
        "the ring was full at times"
    );

    // Sum the counts of every closed "*" window: each sample counted exactly once.
    let mut counted = 0u64;
    let mut per_server = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while counted < total && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        for e in dash.client().drain().events {
            let v: serde_json::Value = serde_json::from_slice(&e).expect("json");
            let n = v["stats"]["x"]["count"].as_u64().expect("count");
            if v["serverId"] == "*" {
                counted += n;
            } else {
                *per_server.entry(v["serverId"].to_string()).or_insert(0u64) += n;
            }
        }
    }
    assert_eq!(counted, total);
    assert_eq!(agg.stats().ring_bytes.load(Ordering::Relaxed), 0);
    assert_eq!(agg.stats().samples.load(Ordering::Relaxed), total);
    assert_eq!(per_server.len() as u64, producers);
    assert!(
        per_server.values().all(|&n| n == batches * per_batch),
        "{per_server:?}"
    );
    agg.stop();
}

//! What a deadpool-redis checkout costs with redis 1.x: sequential `XADD`s taking a connection
//! from the pool for every command (each checkout recycles the connection with `UNWATCH` +
//! `PING`, one more round trip) against the same `XADD`s on one held connection, which is what
//! the front door's writers do.
//!
//! `cargo run --release -p ingest --example pool_cost -- redis://127.0.0.1:6390 [N=20000]`

use std::time::{Duration, Instant};

use deadpool_redis::redis;
use ingest::store::{pool, PoolOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let url = a
        .first()
        .cloned()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let n: usize = a.get(1).map_or(Ok(20_000), |s| s.parse())?;
    let pool = pool(&PoolOptions {
        url,
        size: 4,
        response_timeout: Duration::from_secs(5),
    })?;
    let value = vec![b'x'; 150];
    let xadd = |key: &str| {
        let mut c = redis::cmd("XADD");
        c.arg(key)
            .arg("MAXLEN")
            .arg("~")
            .arg(100_000)
            .arg("*")
            .arg("e")
            .arg(&value);
        c
    };
    let t = Instant::now();
    for _ in 0..n {
        let mut conn = pool.get().await?;
        let _: String = xadd("pool-cost:get-per-command")
            .query_async(&mut conn)
            .await?;
    }
    let per_get = t.elapsed();
    let mut conn = pool.get().await?;
    let t = Instant::now();
    for _ in 0..n {
        let _: String = xadd("pool-cost:held").query_async(&mut conn).await?;
    }
    let held = t.elapsed();
    let _: () = redis::cmd("DEL")
        .arg("pool-cost:get-per-command")
        .arg("pool-cost:held")
        .query_async(&mut conn)
        .await?;
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "{n} sequential XADDs: pool.get() per command {:.0}/s ({:.1} us each), held connection {:.0}/s ({:.1} us each)",
        rate(per_get),
        per_get.as_secs_f64() * 1e6 / n as f64,
        rate(held),
        held.as_secs_f64() * 1e6 / n as f64
    );
    Ok(())
}

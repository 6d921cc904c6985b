//! `aggregator`: System 2 server binary. Parses flags, sets up logging, binds, serves until
//! SIGINT/SIGTERM, then drains.

use anyhow::Context;
use metrics_edge::process;
use metrics_edge::service::Service;
use tokio_util::sync::CancellationToken;

use aggregator::{server, Args, Server};

/// mimalloc: measured faster than the system allocator on these services' many small,
/// short-lived allocations (request bodies, events, futures); see BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = process::configure::<Args>().context("invalid configuration")?;
    let (simulate, rate) = (settings.simulate, settings.simulate_rate);
    let listeners = server::bind(&settings)
        .await
        .context("starting listeners")?;
    let shutdown = CancellationToken::new();
    let server = Server::start(settings, listeners, shutdown.clone())?;
    if let Some(certs) = server.running.tls_certs.clone() {
        process::reload_on_sighup(certs, shutdown.clone());
    }
    if let Some(a) = server.running.redirect_addr {
        println!("redirecting http://{a}/ to the TLS listener");
    }
    if let Some(a) = server.running.plain_addr {
        tracing::info!(addr = %a, "listening (HTTP/1.1, WebSocket)");
        println!("dashboard: http://{a}/   agents: ws://{a}/ingest   dashboards: ws://{a}/ws");
    }
    if let Some(a) = server.running.tls_addr {
        tracing::info!(addr = %a, "listening (TLS, HTTP/1.1, WebSocket)");
        let port = a.port();
        println!("dashboard: https://localhost:{port}/   agents: wss://localhost:{port}/ingest");
    }
    if simulate > 0 {
        println!("simulating {simulate} agents at {rate} samples/s each");
    }
    process::run_until_signal(shutdown, server.wait()).await;
    Ok(())
}

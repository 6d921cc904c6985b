//! `aggregator`: System 2 server binary. Parses flags, sets up logging, binds, serves until
//! SIGINT/SIGTERM, then drains.

use anyhow::Context;
use clap::Parser;
use metrics_edge::process;
use tokio_util::sync::CancellationToken;

use aggregator::{server, Args, Server};

/// mimalloc: measured faster than the system allocator on these services' many small,
/// short-lived allocations (request bodies, events, futures); see BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    process::init_tracing(args.log_json);
    let settings = args.validate().context("invalid configuration")?;
    metrics_edge::tls::install_provider();

    let listeners = server::bind(&settings)
        .await
        .context("starting listeners")?;
    let shutdown = CancellationToken::new();
    let (simulate, rate, token) = (
        settings.simulate,
        settings.simulate_rate,
        settings.token.clone(),
    );
    let server = Server::start(settings, listeners, shutdown.clone())?;
    if let Some(a) = server.plain_addr {
        tracing::info!(addr = %a, "listening (HTTP/1.1, WebSocket)");
        println!("dashboard: http://{a}/   agents: ws://{a}/ingest   dashboards: ws://{a}/ws");
    }
    if let Some(a) = server.tls_addr {
        tracing::info!(addr = %a, "listening (TLS, HTTP/1.1, WebSocket)");
        println!(
            "dashboard: https://localhost:{}/   agents: wss://localhost:{}/ingest",
            a.port(),
            a.port()
        );
    }
    if simulate > 0 {
        if let Some(addr) = server.plain_addr {
            println!("simulating {simulate} agents at {rate} samples/s each");
            tokio::spawn(aggregator::simulate::run(
                addr,
                simulate,
                rate,
                token,
                shutdown.clone(),
            ));
        }
    }
    let signal = shutdown.clone();
    tokio::spawn(async move {
        process::shutdown_signal().await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    server.wait().await;
    Ok(())
}

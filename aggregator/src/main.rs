//! `aggregator`: System 2 server binary. Parses flags, sets up logging, binds, serves until
//! SIGINT/SIGTERM, then drains.

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use aggregator::{Args, Listeners, Server};

/// mimalloc: measured faster than the system allocator on these services' many small,
/// short-lived allocations (request bodies, events, futures); see BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let settings = args.validate().context("invalid configuration")?;
    metrics_edge::tls::install_provider();

    let listeners = Listeners::bind(&settings)
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
        wait_for_signal().await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    server.wait().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

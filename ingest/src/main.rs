//! `ingest`: System 1 binary. One subcommand per role (`front`, `worker`, `broadcaster`) and
//! `all` (the default) for the three in one process.

use anyhow::Context;
use clap::Parser;
use metrics_edge::process;
use tokio_util::sync::CancellationToken;

use ingest::{server, Args, Server};

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
    let role = settings.role;
    let redis = settings.redis_url.clone();
    let server = Server::start(settings, listeners, shutdown.clone())?;
    tracing::info!(?role, %redis, "started");
    if let Some(a) = server.plain_addr {
        println!("listening on http://{a}/ (HTTP/1.1 and h2c): POST /metrics, dashboard at /, stream at /ws");
    }
    if let Some(a) = server.tls_addr {
        println!(
            "listening on https://localhost:{}/ (TLS, ALPN h2 and http/1.1)",
            a.port()
        );
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

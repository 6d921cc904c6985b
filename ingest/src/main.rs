//! `ingest`: System 1 binary. One subcommand per role (`front`, `worker`, `broadcaster`) and
//! `all` (the default) for the three in one process.

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use ingest::{Args, Listeners, Server};

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
        let _ = tokio::signal::ctrl_c().await;
        signal.cancel();
    });
    #[cfg(unix)]
    {
        let signal = shutdown.clone();
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::spawn(async move {
                term.recv().await;
                signal.cancel();
            });
        }
    }
    server.wait().await;
    Ok(())
}

//! `ingest`: System 1 binary. One subcommand per role (`front`, `worker`, `broadcaster`) and
//! `all` (the default) for the three in one process.

use anyhow::Context;
use metrics_edge::process;
use metrics_edge::service::Service;
use tokio_util::sync::CancellationToken;

use ingest::{server, Args, Server};

/// mimalloc: measured faster than the system allocator on these services' many small,
/// short-lived allocations (request bodies, events, futures); see BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = process::configure::<Args>().context("invalid configuration")?;
    let (role, redis) = (settings.role, settings.redis_url_redacted());
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
    tracing::info!(?role, %redis, "started");
    if let Some(a) = server.running.plain_addr {
        println!("listening on http://{a}/ (HTTP/1.1 and h2c): POST /metrics, dashboard at /, stream at /ws");
    }
    if let Some(a) = server.running.tls_addr {
        let port = a.port();
        println!("listening on https://localhost:{port}/ (TLS, ALPN h2 and http/1.1)");
    }
    process::run_until_signal(shutdown, server.wait()).await;
    Ok(())
}

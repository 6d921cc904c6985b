//! What every binary of the project does around its server: logging set-up, the TLS crypto
//! provider and the shutdown signal, wired once here so both systems behave alike.

use std::future::Future;

use tokio_util::sync::CancellationToken;

use crate::config::ServiceArgs;
use tracing_subscriber::EnvFilter;

/// A binary's start: parses `A` from the arguments and environment (printing help or the
/// error and exiting on a bad command line), starts logging as asked and installs the TLS
/// crypto provider, then validates the flags.
pub fn configure<A: ServiceArgs>() -> Result<A::Settings, A::Error> {
    let args: A = crate::config::parse(&A::SERVICE);
    init(args.edge().log_json);
    args.validate()
}

/// Process start-up shared by the binaries: logs (text or JSON; levels from `RUST_LOG`,
/// default `info`) and the TLS crypto provider.
pub fn init(log_json: bool) {
    init_tracing(log_json);
    crate::tls::install_provider();
}

/// Text or JSON logs; levels from `RUST_LOG` (default `info`).
pub fn init_tracing(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
}

/// Runs `server` (a server's `wait`, which returns once its shutdown has drained) and cancels
/// `shutdown` on SIGINT or SIGTERM.
pub async fn run_until_signal(shutdown: CancellationToken, server: impl Future<Output = ()>) {
    tokio::pin!(server);
    tokio::select! {
        _ = &mut server => return,
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            shutdown.cancel();
        }
    }
    server.await
}

/// Reloads the TLS certificate and key from their files on every SIGHUP (a bad pair is
/// refused, logged and counted by `certs`; the old one keeps serving), until `stop`.
pub fn reload_on_sighup(certs: std::sync::Arc<crate::tls::CertReloader>, stop: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; certificates reload from the file poll only");
                return;
            }
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    got = hup.recv() => if got.is_none() { return },
                }
                tracing::info!("SIGHUP: reloading the TLS certificate");
                let c = certs.clone();
                let _ = tokio::task::spawn_blocking(move || c.reload()).await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (certs, stop);
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

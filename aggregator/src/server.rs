//! Routing and lifecycle of the System 2 server.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the dashboard page; with `Upgrade: websocket`, an agent socket (or a dashboard after `register`) |
//! | `GET /ingest` | agent socket |
//! | `GET /ws` | dashboard stream (`?serverId=a,b`) |
//! | `GET /healthz` | liveness |
//! | `GET /stats` | counters (JSON) |

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use metrics_edge::auth::Auth;
use metrics_edge::dashboard::{
    self, BoxFuture, DashboardContext, DashboardHandler, SnapshotSource,
};
use metrics_edge::http::{self as h, Body};
use metrics_edge::hub::{Audience, Hub};
use metrics_edge::listener::{self, ConnInfo, ListenError};
use metrics_edge::tls;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::aggregate::Aggregator;
use crate::config::Settings;
use crate::ingest::IngestHandler;

/// The system's name in `hello` events.
pub const SYSTEM: &str = "system2-websocket";

pub use metrics_edge::listener::Listeners;

/// Binds what `settings` asks for, loading the TLS files.
pub async fn bind(settings: &Settings) -> Result<Listeners, ListenError> {
    let tls = settings
        .tls
        .as_ref()
        .map(|(addr, cert, key)| (*addr, cert.as_path(), key.as_path()));
    Listeners::bind(settings.listen, tls, tls::ALPN_HTTP11).await
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

struct App {
    auth: Auth,
    ctx: DashboardContext,
    aggregator: Arc<Aggregator>,
    settings: Settings,
}

struct AggregatorSnapshots(Arc<Aggregator>);

impl SnapshotSource for AggregatorSnapshots {
    fn snapshot(&self, server_id: Option<String>) -> BoxFuture<Result<Bytes, String>> {
        let agg = self.0.clone();
        Box::pin(async move { agg.snapshot(server_id).await })
    }
}

/// A running server.
pub struct Server {
    pub plain_addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
    pub hub: Arc<Hub>,
    pub aggregator: Arc<Aggregator>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Server {
    /// Starts serving on `listeners` until `shutdown` is cancelled.
    pub fn start(
        settings: Settings,
        listeners: Listeners,
        shutdown: CancellationToken,
    ) -> Result<Self, ServerError> {
        let hub = Hub::new(settings.queue);
        let aggregator = Aggregator::start(settings.aggregator.clone(), hub.clone())?;
        let tracker = TaskTracker::new();
        let ctx = DashboardContext {
            system: SYSTEM,
            windows: settings
                .aggregator
                .windows
                .iter()
                .map(|w| w.label.clone())
                .collect(),
            hub: hub.clone(),
            ws: settings.ws,
            snapshots: Arc::new(AggregatorSnapshots(aggregator.clone())),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
        };
        let app = Arc::new(App {
            auth: Auth::new(settings.token.clone()),
            ctx,
            aggregator: aggregator.clone(),
            settings,
        });
        let handler = move |req: Request<Incoming>, _info: ConnInfo| {
            let app = app.clone();
            async move { route(&app, req) }
        };
        let bound = listeners.serve(handler, &shutdown, &tracker)?;
        Ok(Self {
            plain_addr: bound.plain,
            tls_addr: bound.tls,
            hub,
            aggregator,
            shutdown,
            tracker,
        })
    }

    /// Waits for shutdown, then for connections to drain (bounded), then stops the aggregator.
    pub async fn wait(self) {
        listener::drain(&self.shutdown, &self.tracker).await;
        let agg = self.aggregator.clone();
        let _ = tokio::task::spawn_blocking(move || agg.stop()).await;
    }
}

fn route(app: &App, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let is_upgrade = fastwebsockets::upgrade::is_upgrade_request(&req);
    match (path, req.method()) {
        ("/healthz", &Method::GET) => h::json(StatusCode::OK, "{\"status\":\"ok\"}"),
        ("/stats", &Method::GET) => stats(app),
        ("/", &Method::GET) if !is_upgrade => metrics_edge::page::index(),
        ("/" | "/ingest" | "/ws", &Method::GET) => {
            if !app.auth.allows(&req) {
                return h::unauthorized();
            }
            if path == "/ws" {
                let filter = match dashboard::filter_from_query(&req) {
                    Ok(f) => f,
                    Err(msg) => return h::error(StatusCode::BAD_REQUEST, &msg),
                };
                let ctx = app.ctx.clone();
                dashboard::upgrade(
                    req,
                    &app.ctx,
                    Audience::Dashboard,
                    filter,
                    false,
                    move |_| DashboardHandler::new(ctx),
                )
            } else {
                let handler = IngestHandler::new(
                    app.ctx.clone(),
                    app.aggregator.clone(),
                    app.settings.limits,
                );
                dashboard::upgrade(req, &app.ctx, Audience::Agent, None, false, move |_| {
                    handler
                })
            }
        }
        ("/" | "/ingest" | "/ws" | "/healthz" | "/stats", _) => h::method_not_allowed("GET"),
        _ => h::not_found(path),
    }
}

fn stats(app: &App) -> Response<Body> {
    use std::sync::atomic::Ordering::Relaxed;
    let s = app.aggregator.stats();
    let hub = &app.ctx.hub;
    let body = format!(
        "{{\"samples\":{},\"batches\":{},\"late\":{},\"windowEvents\":{},\"series\":{},\"seriesRefused\":{},\"ringFullWaits\":{},\"dashboards\":{},\"agents\":{},\"eventsPublished\":{}}}",
        s.samples.load(Relaxed),
        s.batches.load(Relaxed),
        s.late.load(Relaxed),
        s.windows_emitted.load(Relaxed),
        s.series.load(Relaxed),
        s.series_refused.load(Relaxed),
        s.ring_full_waits.load(Relaxed),
        hub.count(Audience::Dashboard),
        hub.count(Audience::Agent),
        hub.published(),
    );
    h::json(StatusCode::OK, body)
}

//! Routing and lifecycle of the System 2 server.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the dashboard page; with `Upgrade: websocket`, an agent socket (or a dashboard after `register`) |
//! | `GET /ingest` | agent socket |
//! | `GET /ws` | dashboard stream (`?serverId=a,b`) |
//! | `GET /healthz` | liveness |
//! | `GET /stats` | counters (JSON) |

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use metrics_edge::auth::Auth;
use metrics_edge::dashboard::{
    self, BoxFuture, DashboardContext, DashboardHandler, SnapshotError, SnapshotSource,
};
use metrics_edge::http::{self as h, Answer, Body, Refusal};
use metrics_edge::hub::{Audience, Hub};
use metrics_edge::lifecycle::Lifecycle;
use metrics_edge::listener::{ConnInfo, ListenError};
use metrics_edge::service::{Running, Service};
use metrics_edge::tls;
use tokio_util::sync::CancellationToken;

use crate::agent::AgentHandler;
use crate::aggregate::Aggregator;
use crate::config::Settings;

/// The system's name in `hello` events.
pub const SYSTEM: &str = "system2-websocket";

pub use metrics_edge::listener::Listeners;

/// Binds what `settings` asks for, loading the TLS files.
pub async fn bind(settings: &Settings) -> Result<Listeners, ListenError> {
    Listeners::bind(&settings.edge, tls::ALPN_HTTP11).await
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
    fn snapshot(&self, server_id: Option<String>) -> BoxFuture<Result<Bytes, SnapshotError>> {
        let agg = self.0.clone();
        Box::pin(async move { agg.snapshot(server_id).await })
    }
}

/// A running System 2 server.
pub struct Server {
    pub running: Running,
    pub aggregator: Arc<Aggregator>,
}

impl Service for Server {
    type Settings = Settings;
    type Error = ServerError;

    /// Starts serving on `listeners` until `shutdown` is cancelled; with `--simulate`, starts
    /// the simulated agents too.
    fn start(
        settings: Settings,
        listeners: Listeners,
        shutdown: CancellationToken,
    ) -> Result<Self, ServerError> {
        let life = Lifecycle::new(shutdown, settings.edge.drain);
        let hub = Hub::new(settings.edge.queue);
        let aggregator = Aggregator::start(settings.aggregator(), hub.clone())?;
        let ctx = DashboardContext {
            system: SYSTEM,
            windows: settings.edge.window_labels(),
            hub: hub.clone(),
            ws: settings.edge.ws,
            snapshots: Arc::new(AggregatorSnapshots(aggregator.clone())),
            life: life.clone(),
        };
        let app = Arc::new(App {
            auth: Auth::new(settings.edge.token.clone()),
            ctx,
            aggregator: aggregator.clone(),
            settings,
        });
        let handler = {
            let app = app.clone();
            move |req: Request<Incoming>, _info: ConnInfo| {
                let app = app.clone();
                async move { h::respond(route(&app, req)) }
            }
        };
        let running = Running::serve(listeners, handler, hub, life.clone())?;
        let s = &app.settings;
        if let (Some(addr), true) = (running.plain_addr, s.simulate > 0) {
            life.spawn(crate::simulate::run(
                addr,
                s.simulate,
                s.simulate_rate,
                s.edge.token.clone(),
                life.token().clone(),
            ));
        }
        Ok(Self {
            running,
            aggregator,
        })
    }

    fn running(&self) -> &Running {
        &self.running
    }

    /// Waits for shutdown, then for connections and tasks to drain (bounded), then stops the
    /// aggregator.
    async fn wait(self) {
        self.running.wait().await;
        let agg = self.aggregator;
        let _ = tokio::task::spawn_blocking(move || agg.stop()).await;
    }
}

/// The route table.
fn route(app: &App, req: Request<Incoming>) -> Answer {
    let path = req.uri().path();
    let is_upgrade = fastwebsockets::upgrade::is_upgrade_request(&req);
    match (path, req.method()) {
        ("/healthz", &Method::GET) => Ok(h::json(StatusCode::OK, "{\"status\":\"ok\"}")),
        ("/stats", &Method::GET) => Ok(stats(app)),
        ("/", &Method::GET) if !is_upgrade => Ok(metrics_edge::page::index()),
        ("/ws", &Method::GET) => {
            app.auth.check(&req)?;
            let filter = dashboard::filter_from_query(&req)?;
            let ctx = app.ctx.clone();
            Ok(dashboard::upgrade(
                req,
                &app.ctx,
                Audience::Dashboard,
                filter,
                false,
                move |_| DashboardHandler::new(ctx),
            ))
        }
        ("/" | "/ingest", &Method::GET) => {
            app.auth.check(&req)?;
            let handler = AgentHandler::new(
                app.ctx.clone(),
                app.aggregator.clone(),
                app.settings.edge.limits,
            );
            Ok(dashboard::upgrade(
                req,
                &app.ctx,
                Audience::Agent,
                None,
                false,
                move |_| handler,
            ))
        }
        ("/" | "/ingest" | "/ws" | "/healthz" | "/stats", _) => {
            Err(Refusal::MethodNotAllowed("GET"))
        }
        _ => Err(Refusal::NotFound(path.to_string())),
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

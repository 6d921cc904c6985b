//! Routing and lifecycle of the System 2 server.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the dashboard page (public); with `Upgrade: websocket`, an agent socket (or a dashboard after `register`): agent or dashboard token |
//! | `GET /ingest` | agent socket: agent token |
//! | `GET /ws` | dashboard stream (`?serverId=a,b`): dashboard token, allowed `Origin` |
//! | `GET /healthz` | liveness |
//! | `GET /stats` | counters (JSON) |
//!
//! With `--admin-listen`, `GET /metrics` (Prometheus text, see [`metrics`]) on a listener of
//! its own; never on the public port.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use metrics_edge::admin::{Admin, BoxFuture as AdminFuture, Exposition, Kind};
use metrics_edge::auth::{Auth, Role};
use metrics_edge::dashboard::{
    self, BoxFuture, DashboardContext, DashboardHandler, SnapshotError, SnapshotSource,
};
use metrics_edge::http::{self as h, Answer, Body, Refusal};
use metrics_edge::hub::{Audience, Hub};
use metrics_edge::lifecycle::Lifecycle;
use metrics_edge::listener::{ConnInfo, ConnStats, ListenError};
use metrics_edge::service::{stats_members, Running, Service};
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
    /// The listeners' counters, known once they serve.
    conns: OnceLock<Arc<ConnStats>>,
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

    fn edge(settings: &Settings) -> &metrics_edge::config::EdgeSettings {
        &settings.edge
    }

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
            grant: metrics_edge::auth::Grant::ALL,
        };
        let app = Arc::new(App {
            auth: settings.edge.auth(),
            ctx,
            aggregator: aggregator.clone(),
            settings,
            conns: OnceLock::new(),
        });
        let handler = {
            let app = app.clone();
            move |req: Request<Incoming>, _info: ConnInfo| {
                let app = app.clone();
                async move { h::respond(route(&app, req)) }
            }
        };
        let admin = Admin {
            routes: ROUTES,
            settings: app.settings.edge.admin,
            scrape: {
                let agg = aggregator.clone();
                Arc::new(move || {
                    let text = metrics(&agg);
                    Box::pin(std::future::ready(text)) as AdminFuture<String>
                })
            },
        };
        let running = Running::serve(listeners, handler, hub, life.clone(), admin)?;
        let _ = app.conns.set(running.conns.clone());
        let s = &app.settings;
        if let (Some(addr), true) = (running.plain_addr, s.simulate > 0) {
            life.spawn(crate::simulate::run(
                addr,
                s.simulate,
                s.simulate_rate,
                app.auth.token(Role::Agent).map(str::to_string),
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

/// The routes requests are counted under on the admin listener.
const ROUTES: &[&str] = &["/", "/ingest", "/ws", "/healthz", "/stats"];

/// The aggregator's metrics, as Prometheus text (the shared ones follow, see
/// `metrics_edge::admin::Shared`).
fn metrics(agg: &Aggregator) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let s = agg.stats();
    let mut e = Exposition::new();
    e.counter(
        "aggregator_samples_total",
        "Samples aggregated.",
        s.samples.load(Relaxed),
    )
    .counter(
        "aggregator_batches_total",
        "Batches (agent frames) taken from the ring.",
        s.batches.load(Relaxed),
    )
    .counter(
        "aggregator_frames_refused_total",
        "Agent frames refused whole for not decoding (each answered with an error event).",
        s.frames_refused.load(Relaxed),
    )
    .by_label(
        "aggregator_samples_refused_total",
        "Samples (late: sample-window pairs; series_limit: values) not aggregated, by reason: late (older than the window being filled), series_limit (--max-series reached), server_limit (--max-servers reached).",
        Kind::Counter,
        "reason",
        &[
            ("late", s.late.load(Relaxed) as f64),
            ("series_limit", s.series_refused.load(Relaxed) as f64),
            ("server_limit", s.servers_refused.load(Relaxed) as f64),
        ],
    )
    .counter(
        "aggregator_windows_closed_total",
        "Windows closed and published.",
        s.windows_emitted.load(Relaxed),
    )
    .histogram(
        "aggregator_window_close_seconds",
        "Time to close the due windows and publish what --window-spread-ms lets out at once (the first slice of a large close), per pass of the aggregator that closed any.",
        &s.close_cost,
    )
    .gauge(
        "aggregator_series",
        "(server, metric) series aggregated now.",
        s.series.load(Relaxed) as f64,
    )
    .gauge(
        "aggregator_servers",
        "Servers with state now.",
        s.servers.load(Relaxed) as f64,
    )
    .counter(
        "aggregator_ring_full_waits_total",
        "Times a connection waited for room in the ring (batches or bytes).",
        s.ring_full_waits.load(Relaxed),
    )
    .gauge(
        "aggregator_ring_bytes",
        "Bytes of batches in the ring now.",
        s.ring_bytes.load(Relaxed) as f64,
    );
    e.finish()
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
            let grant = app.auth.admit(&[Role::Dashboard], &req)?;
            let filter = dashboard::filter_from_query(&req)?;
            let ctx = app.ctx.for_socket(grant);
            Ok(dashboard::upgrade(
                req,
                &app.ctx,
                Audience::Dashboard,
                filter,
                false,
                move |_| DashboardHandler::new(ctx),
            ))
        }
        ("/" | "/ingest", &Method::GET) => agent_socket(app, req),
        ("/" | "/ingest" | "/ws" | "/healthz" | "/stats", _) => {
            Err(Refusal::MethodNotAllowed("GET"))
        }
        _ => Err(Refusal::NotFound(path.to_string())),
    }
}

/// An agent socket: `/ingest` needs the agent token; `/` takes the agent or the dashboard
/// token, since a socket there may `register` as a dashboard. A socket without the agent role
/// (the dashboard token only) gets the dashboard handler, which answers samples with an
/// `error` event; one without the dashboard role may not register as a dashboard
/// (`handle_control`). Either way the sample path is untouched.
fn agent_socket(app: &App, req: Request<Incoming>) -> Answer {
    let roles: &[Role] = match req.uri().path() {
        "/ingest" => &[Role::Agent],
        _ => &[Role::Agent, Role::Dashboard],
    };
    let grant = app.auth.admit(roles, &req)?;
    let ctx = app.ctx.for_socket(grant);
    if grant.agent {
        let handler = AgentHandler::new(ctx, app.aggregator.clone(), app.settings.edge.limits);
        Ok(dashboard::upgrade(
            req,
            &app.ctx,
            Audience::Agent,
            None,
            false,
            move |_| handler,
        ))
    } else {
        Ok(dashboard::upgrade(
            req,
            &app.ctx,
            Audience::Agent,
            None,
            false,
            move |_| DashboardHandler::new(ctx),
        ))
    }
}

fn stats(app: &App) -> Response<Body> {
    use std::sync::atomic::Ordering::Relaxed;
    let s = app.aggregator.stats();
    let hub = &app.ctx.hub;
    let body = format!(
        "{{\"samples\":{},\"batches\":{},\"late\":{},\"windowEvents\":{},\"series\":{},\"seriesRefused\":{},\"servers\":{},\"serversRefused\":{},\"ringFullWaits\":{},\"ringBytes\":{},\"dashboards\":{},\"agents\":{},\"eventsPublished\":{},{}}}",
        s.samples.load(Relaxed),
        s.batches.load(Relaxed),
        s.late.load(Relaxed),
        s.windows_emitted.load(Relaxed),
        s.series.load(Relaxed),
        s.series_refused.load(Relaxed),
        s.servers.load(Relaxed),
        s.servers_refused.load(Relaxed),
        s.ring_full_waits.load(Relaxed),
        s.ring_bytes.load(Relaxed),
        hub.count(Audience::Dashboard),
        hub.count(Audience::Agent),
        hub.published(),
        stats_members(app.conns.get(), hub),
    );
    h::json(StatusCode::OK, body)
}

//! Wiring of the roles into one process: listeners, the route table, background tasks,
//! shutdown.
//!
//! | route | role | what |
//! |---|---|---|
//! | `POST /metrics`, `POST /metrics/stream` | front | ingest (see `front`): agent token |
//! | `GET /` | broadcaster | the dashboard page (public) |
//! | `GET /ws` | broadcaster | dashboard stream (`?serverId=`, `?since=`): dashboard token, allowed `Origin` |
//! | `GET /readyz` | any | Redis answers `PING` (503 with `Retry-After` when not) |
//! | `GET /healthz` | any | process alive |
//! | `GET /stats` | any | counters |
//!
//! A route of a role this process does not run answers 404 naming the role to start.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use metrics_edge::auth::{self, query_param, Auth, Grant};
use metrics_edge::dashboard::{self, DashboardContext, DashboardHandler};
use metrics_edge::http::{self as h, Answer, Body, Refusal};
use metrics_edge::hub::{Audience, Hub};
use metrics_edge::lifecycle::Lifecycle;
use metrics_edge::listener::{ConnInfo, ConnStats, ListenError};
use metrics_edge::service::{stats_members, Running, Service};
use metrics_edge::tls;
use metrics_model::event;
use tokio_util::sync::CancellationToken;

use crate::broadcast::{self, BroadcastStats};
use crate::config::{Role, Settings};
use crate::front::{self, Front, FrontOptions};
use crate::keys::{Keys, Position};
use crate::replay;
use crate::snapshot::RedisSnapshots;
use crate::store::{self, PoolOptions, StoreError, Writer, WriterOptions};
use crate::worker::{self, WorkerOptions, WorkerStats};

/// The system's name in `hello` events.
pub const SYSTEM: &str = "system1-redis";

pub use metrics_edge::listener::Listeners;

/// Binds what `settings` asks for, loading the TLS files (nothing for a worker-only process).
pub async fn bind(settings: &Settings) -> Result<Listeners, ListenError> {
    if settings.role == Role::Worker {
        return Ok(Listeners::default());
    }
    Listeners::bind(&settings.edge, tls::ALPN_H2_HTTP11).await
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct App {
    front: Option<Arc<Front>>,
    dashboards: Option<DashboardContext>,
    auth: Auth,
    pool: deadpool_redis::Pool,
    keys: Keys,
    worker_stats: Arc<WorkerStats>,
    broadcast_stats: Arc<BroadcastStats>,
    hub: Arc<Hub>,
    /// The listeners' counters, known once they serve.
    conns: OnceLock<Arc<ConnStats>>,
}

/// A running System 1 process.
pub struct Server {
    pub running: Running,
    pub worker_stats: Arc<WorkerStats>,
    pub broadcast_stats: Arc<BroadcastStats>,
}

impl Service for Server {
    type Settings = Settings;
    type Error = ServerError;

    fn edge(settings: &Settings) -> &metrics_edge::config::EdgeSettings {
        &settings.edge
    }

    /// Starts the roles of `settings` until `shutdown` is cancelled.
    fn start(
        settings: Settings,
        listeners: Listeners,
        shutdown: CancellationToken,
    ) -> Result<Self, ServerError> {
        let life = Lifecycle::new(shutdown, settings.edge.drain);
        let keys = Keys::new(&settings.prefix);
        let pool = store::pool(&PoolOptions {
            url: settings.redis_url.clone(),
            size: settings.writers + 8,
            response_timeout: settings.redis_timeout,
        })?;
        let hub = Hub::new(settings.edge.queue);
        let (front_on, worker_on, broadcast_on) = match settings.role {
            Role::All => (true, true, true),
            Role::Front => (true, false, false),
            Role::Worker => (false, true, false),
            Role::Broadcaster => (false, false, true),
        };
        let auth = settings.edge.auth();
        let front = front_on.then(|| {
            let writer = Writer::start(
                pool.clone(),
                keys.clone(),
                WriterOptions {
                    writers: settings.writers,
                    max_pipeline: settings.max_pipeline,
                    node: settings.node_id.clone(),
                },
                &life,
            );
            Arc::new(Front {
                writer,
                auth: auth.clone(),
                opts: FrontOptions {
                    max_body: settings.max_body,
                    deadline: settings.deadline,
                    body_timeout: settings.edge.conn.body_timeout,
                    limits: settings.edge.limits,
                },
                life: life.clone(),
            })
        });
        let worker_stats = Arc::new(WorkerStats::default());
        if worker_on {
            let opts = WorkerOptions {
                name: settings.node_id.clone(),
                batch: settings.worker_batch,
                claim_idle: settings.claim_idle,
                windows: settings.edge.windows.clone(),
                max_series: settings.edge.max_series,
                lease: settings.lease,
                maxlen: settings.maxlen,
                snapshot_ttl: settings.snapshot_ttl,
                window_log_len: settings.window_log_len,
                pause_after_read: settings.fault_pause,
            };
            worker::start(
                pool.clone(),
                keys.clone(),
                opts,
                worker_stats.clone(),
                &life,
            );
        }
        let broadcast_stats = Arc::new(BroadcastStats::default());
        let dashboards = broadcast_on.then(|| {
            life.spawn(broadcast::run(
                settings.redis_url.clone(),
                pool.clone(),
                keys.clone(),
                hub.clone(),
                broadcast_stats.clone(),
                settings.resume_history,
                life.token().clone(),
            ));
            DashboardContext {
                system: SYSTEM,
                windows: settings.edge.window_labels(),
                hub: hub.clone(),
                ws: settings.edge.ws,
                snapshots: Arc::new(RedisSnapshots {
                    pool: pool.clone(),
                    keys: keys.clone(),
                }),
                life: life.clone(),
                grant: Grant::ALL,
            }
        });
        let app = Arc::new(App {
            front,
            dashboards,
            auth,
            pool,
            keys,
            worker_stats: worker_stats.clone(),
            broadcast_stats: broadcast_stats.clone(),
            hub: hub.clone(),
            conns: OnceLock::new(),
        });
        let handler = {
            let app = app.clone();
            move |req: Request<Incoming>, _info: ConnInfo| {
                let app = app.clone();
                async move { h::respond(route(&app, req).await) }
            }
        };
        let running = Running::serve(listeners, handler, hub, life)?;
        let _ = app.conns.set(running.conns.clone());
        Ok(Self {
            running,
            worker_stats,
            broadcast_stats,
        })
    }

    fn running(&self) -> &Running {
        &self.running
    }

    /// Waits for shutdown, then for connections and tasks to finish (bounded): the Redis
    /// writers flush what the draining requests queued.
    async fn wait(self) {
        self.running.wait().await
    }
}

/// The route table.
async fn route(app: &Arc<App>, req: Request<Incoming>) -> Answer {
    let path = req.uri().path();
    match (path, req.method()) {
        ("/metrics", &Method::POST) => front::post_metrics(front(app, path)?, req).await,
        ("/metrics/stream", &Method::POST) => front::post_stream(front(app, path)?, req),
        ("/metrics" | "/metrics/stream", _) => Err(Refusal::MethodNotAllowed("POST")),
        ("/", &Method::GET) if !fastwebsockets::upgrade::is_upgrade_request(&req) => {
            dashboards(app, path)?;
            Ok(metrics_edge::page::index())
        }
        ("/ws", &Method::GET) => dashboard_stream(app, req),
        ("/readyz", &Method::GET) => ready(app).await,
        ("/healthz", &Method::GET) => Ok(h::json(StatusCode::OK, "{\"status\":\"ok\"}")),
        ("/stats", &Method::GET) => Ok(stats(app)),
        ("/" | "/ws" | "/readyz" | "/healthz" | "/stats", _) => {
            Err(Refusal::MethodNotAllowed("GET"))
        }
        _ => Err(Refusal::NotFound(path.to_string())),
    }
}

/// The front door, or a 404 saying this process does not run it.
fn front<'a>(app: &'a App, path: &str) -> Result<&'a Arc<Front>, Refusal> {
    app.front.as_ref().ok_or_else(|| {
        Refusal::NotFound(format!("{path} (this process does not run the front role)"))
    })
}

/// The dashboard context, or a 404 saying this process does not run the broadcaster.
fn dashboards<'a>(app: &'a App, path: &str) -> Result<&'a DashboardContext, Refusal> {
    app.dashboards.as_ref().ok_or_else(|| {
        Refusal::NotFound(format!(
            "{path} (this process does not run the broadcaster role)"
        ))
    })
}

/// `GET /readyz`: does Redis answer?
async fn ready(app: &App) -> Answer {
    store::ping(&app.pool, Duration::from_secs(1)).await?;
    Ok(h::json(
        StatusCode::OK,
        "{\"status\":\"ready\",\"redis\":\"ok\"}",
    ))
}

/// `GET /ws`: a dashboard, replayed from `?since=` when given.
fn dashboard_stream(app: &Arc<App>, req: Request<Incoming>) -> Answer {
    let ctx = dashboards(app, req.uri().path())?;
    let grant = app.auth.admit(&[auth::Role::Dashboard], &req)?;
    let filter = dashboard::filter_from_query(&req)?;
    let since = match query_param(req.uri().query().unwrap_or(""), "since") {
        None => None,
        Some(s) => Some(Position::parse(&s).ok_or_else(|| {
            Refusal::BadRequest(format!(
                "since `{s}` is not a sample id like 1764349200123-0/4"
            ))
        })?),
    };
    let handler_ctx = ctx.for_socket(grant);
    let (pool, keys, life) = (app.pool.clone(), app.keys.clone(), ctx.life.clone());
    Ok(dashboard::upgrade(
        req,
        ctx,
        Audience::Dashboard,
        filter,
        since.is_some(),
        move |client| {
            if let Some(since) = since {
                life.spawn(async move {
                    if let Err(e) = replay::replay(&pool, &keys, &client, since).await {
                        client.send(event::to_vec(|b| {
                            event::error(b, &format!("replay failed: {e}"))
                        }));
                        client.release(None);
                    }
                });
            }
            DashboardHandler::new(handler_ctx)
        },
    ))
}

fn stats(app: &App) -> Response<Body> {
    let w = &app.worker_stats;
    let b = &app.broadcast_stats;
    let (pipelines, entries, samples, failures) = match &app.front {
        Some(f) => {
            let s = f.writer.stats();
            (
                s.pipelines.load(Relaxed),
                s.entries.load(Relaxed),
                s.samples.load(Relaxed),
                s.failures.load(Relaxed),
            )
        }
        None => (0, 0, 0, 0),
    };
    let body = format!(
        "{{\"front\":{{\"pipelines\":{pipelines},\"entries\":{entries},\"samples\":{samples},\"failures\":{failures}}},\"worker\":{{\"entries\":{},\"samples\":{},\"claimed\":{},\"publishes\":{},\"windows\":{},\"errors\":{},\"deadLettered\":{},\"trimmedPending\":{},\"trimmed\":{}}},\"broadcaster\":{{\"connected\":{},\"batches\":{},\"events\":{},\"reconnects\":{},\"caughtUp\":{},\"skipped\":{}}},{}}}",
        w.entries.load(Relaxed),
        w.samples.load(Relaxed),
        w.claimed.load(Relaxed),
        w.publishes.load(Relaxed),
        w.windows.load(Relaxed),
        w.errors.load(Relaxed),
        w.dead_lettered.load(Relaxed),
        w.trimmed_pending.load(Relaxed),
        w.trimmed.load(Relaxed),
        b.connected.load(Relaxed),
        b.batches.load(Relaxed),
        b.events.load(Relaxed),
        b.reconnects.load(Relaxed),
        b.caught_up.load(Relaxed),
        b.skipped.load(Relaxed),
        stats_members(app.conns.get(), &app.hub),
    );
    h::json(StatusCode::OK, body)
}

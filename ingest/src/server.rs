//! Wiring of the roles into one process: listeners, routes, background tasks, shutdown.
//!
//! | route | role | what |
//! |---|---|---|
//! | `POST /metrics`, `POST /metrics/stream` | front | ingest (see `front`) |
//! | `GET /readyz` | front | Redis answers `PING` |
//! | `GET /` | broadcaster | the dashboard page |
//! | `GET /ws` | broadcaster | dashboard stream (`?serverId=`, `?since=`) |
//! | `GET /healthz` | any | process alive |
//! | `GET /stats` | any | counters |

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use metrics_edge::auth::{query_param, Auth};
use metrics_edge::dashboard::{self, DashboardContext, DashboardHandler};
use metrics_edge::http::{self as h, Body};
use metrics_edge::hub::{Audience, Hub};
use metrics_edge::listener::{self, ConnInfo, ListenError};
use metrics_edge::tls;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broadcast::{self, BroadcastStats, RedisSnapshots};
use crate::config::{Role, Settings};
use crate::front::{self, Front, FrontOptions};
use crate::keys::{Keys, Position};
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
    let tls = settings
        .tls
        .as_ref()
        .map(|(addr, cert, key)| (*addr, cert.as_path(), key.as_path()));
    Listeners::bind(settings.listen, tls, tls::ALPN_H2_HTTP11).await
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
}

/// A running System 1 process.
pub struct Server {
    pub plain_addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
    pub hub: Arc<Hub>,
    pub writer: Option<Writer>,
    pub worker_stats: Arc<WorkerStats>,
    pub broadcast_stats: Arc<BroadcastStats>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Server {
    /// Starts the roles of `settings` until `shutdown` is cancelled.
    pub fn start(
        settings: Settings,
        listeners: Listeners,
        shutdown: CancellationToken,
    ) -> Result<Self, ServerError> {
        let keys = Keys::new(&settings.prefix);
        let pool = store::pool(&PoolOptions {
            url: settings.redis_url.clone(),
            size: settings.writers + 8,
            response_timeout: settings.redis_timeout,
        })?;
        let tracker = TaskTracker::new();
        let hub = Hub::new(settings.queue);
        let (front_on, worker_on, broadcast_on) = match settings.role {
            Role::All => (true, true, true),
            Role::Front => (true, false, false),
            Role::Worker => (false, true, false),
            Role::Broadcaster => (false, false, true),
        };
        let auth = Auth::new(settings.token.clone());
        let writer = front_on.then(|| {
            Writer::start(
                pool.clone(),
                keys.clone(),
                WriterOptions {
                    writers: settings.writers,
                    max_pipeline: settings.max_pipeline,
                    maxlen: settings.maxlen,
                    node: settings.node_id.clone(),
                },
            )
        });
        let front = writer.clone().map(|writer| {
            Arc::new(Front {
                writer,
                pool: pool.clone(),
                auth: auth.clone(),
                opts: FrontOptions {
                    max_body: settings.max_body,
                    deadline: settings.deadline,
                    limits: settings.limits,
                },
            })
        });
        let worker_stats = Arc::new(WorkerStats::default());
        if worker_on {
            tracker.spawn(worker::run(
                pool.clone(),
                keys.clone(),
                WorkerOptions {
                    name: settings.node_id.clone(),
                    batch: settings.worker_batch,
                    claim_idle: settings.claim_idle,
                    windows: settings.windows.clone(),
                    max_series: settings.max_series,
                    lease: settings.lease,
                    pause_after_read: settings.fault_pause,
                },
                worker_stats.clone(),
                shutdown.clone(),
            ));
        }
        let broadcast_stats = Arc::new(BroadcastStats::default());
        let dashboards = broadcast_on.then(|| {
            tracker.spawn(broadcast::run(
                settings.redis_url.clone(),
                pool.clone(),
                keys.clone(),
                hub.clone(),
                broadcast_stats.clone(),
                shutdown.clone(),
            ));
            DashboardContext {
                system: SYSTEM,
                windows: settings.windows.iter().map(|w| w.label.clone()).collect(),
                hub: hub.clone(),
                ws: settings.ws,
                snapshots: Arc::new(RedisSnapshots {
                    pool: pool.clone(),
                    keys: keys.clone(),
                }),
                shutdown: shutdown.clone(),
                tracker: tracker.clone(),
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
        });
        let handler = move |req: Request<Incoming>, _info: ConnInfo| {
            let app = app.clone();
            async move { route(&app, req).await }
        };
        let bound = listeners.serve(handler, &shutdown, &tracker)?;
        Ok(Self {
            plain_addr: bound.plain,
            tls_addr: bound.tls,
            hub,
            writer,
            worker_stats,
            broadcast_stats,
            shutdown,
            tracker,
        })
    }

    /// Waits for shutdown, then for connections and tasks to finish (bounded).
    pub async fn wait(self) {
        listener::drain(&self.shutdown, &self.tracker).await;
    }
}

async fn route(app: &Arc<App>, req: Request<Incoming>) -> Response<Body> {
    if let Some(front) = &app.front {
        if matches!(req.uri().path(), "/metrics" | "/metrics/stream" | "/readyz") {
            if let Some(r) = front::handle(front, req).await {
                return r;
            }
            return h::not_found("/");
        }
    }
    let path = req.uri().path().to_string();
    match (path.as_str(), req.method()) {
        ("/healthz", &Method::GET) => h::json(StatusCode::OK, "{\"status\":\"ok\"}"),
        ("/stats", &Method::GET) => stats(app),
        ("/readyz", &Method::GET) => match store::ping(&app.pool, Duration::from_secs(1)).await {
            Ok(()) => h::json(StatusCode::OK, "{\"status\":\"ready\",\"redis\":\"ok\"}"),
            Err(e) => h::error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        },
        ("/" | "/ws", &Method::GET) if app.dashboards.is_some() => dashboards(app, req, &path),
        _ => h::not_found(&path),
    }
}

fn dashboards(app: &Arc<App>, req: Request<Incoming>, path: &str) -> Response<Body> {
    let Some(ctx) = &app.dashboards else {
        return h::not_found(path);
    };
    let is_upgrade = fastwebsockets::upgrade::is_upgrade_request(&req);
    if path == "/" && !is_upgrade {
        return metrics_edge::page::index();
    }
    if !app.auth.allows(&req) {
        return h::unauthorized();
    }
    let filter = match dashboard::filter_from_query(&req) {
        Ok(f) => f,
        Err(msg) => return h::error(StatusCode::BAD_REQUEST, &msg),
    };
    let since = match query_param(req.uri().query().unwrap_or(""), "since") {
        None => None,
        Some(s) => match Position::parse(&s) {
            Some(p) => Some(p),
            None => {
                return h::error(
                    StatusCode::BAD_REQUEST,
                    &format!("since `{s}` is not a sample id like 1764349200123-0/4"),
                )
            }
        },
    };
    let handler_ctx = ctx.clone();
    let pool = app.pool.clone();
    let keys = app.keys.clone();
    dashboard::upgrade(
        req,
        ctx,
        Audience::Dashboard,
        filter,
        since.is_some(),
        move |client| {
            if let Some(since) = since {
                tokio::spawn(async move {
                    if let Err(e) = broadcast::replay(&pool, &keys, &client, since).await {
                        let mut b = Vec::new();
                        metrics_model::event::error(&mut b, &format!("replay failed: {e}"));
                        client.send(b);
                        client.release(None);
                    }
                });
            }
            DashboardHandler::new(handler_ctx)
        },
    )
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
        "{{\"front\":{{\"pipelines\":{pipelines},\"entries\":{entries},\"samples\":{samples},\"failures\":{failures}}},\"worker\":{{\"entries\":{},\"samples\":{},\"claimed\":{},\"publishes\":{},\"windows\":{},\"errors\":{}}},\"broadcaster\":{{\"connected\":{},\"batches\":{},\"events\":{},\"reconnects\":{}}}}}",
        w.entries.load(Relaxed),
        w.samples.load(Relaxed),
        w.claimed.load(Relaxed),
        w.publishes.load(Relaxed),
        w.windows.load(Relaxed),
        w.errors.load(Relaxed),
        b.connected.load(Relaxed),
        b.batches.load(Relaxed),
        b.events.load(Relaxed),
        b.reconnects.load(Relaxed),
    );
    h::json(StatusCode::OK, body)
}

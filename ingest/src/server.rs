//! Wiring of the roles into one process: listeners, the route table, background tasks,
//! shutdown.
//!
//! | route | role | what |
//! |---|---|---|
//! | `POST /metrics`, `POST /metrics/stream` | front | ingest (see `front`): agent token |
//! | `POST /v1/metrics`, gRPC `MetricsService/Export` | front | OTLP/HTTP, OTLP/gRPC (`front::protocols`) |
//! | `POST /api/v1/write` | front | Prometheus remote write 1.0 |
//! | `POST /api/v2/write`, `POST /write` | front | Influx line protocol |
//! | `GET /` | broadcaster | the dashboard page (public) |
//! | `GET /ws` | broadcaster | dashboard stream (`?serverId=`, `?since=`): dashboard token, allowed `Origin` |
//! | `GET /readyz` | any | Redis answers `PING` (503 with `Retry-After` when not) |
//! | `GET /healthz` | any | process alive |
//! | `GET /stats` | any | counters |
//!
//! A route of a role this process does not run answers 404 naming the role to start.
//!
//! With `--admin-listen`, `GET /metrics` (Prometheus text, see [`metrics`]) on a listener of
//! its own; the public `/metrics` only takes samples (`GET` there: 405).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use metrics_edge::admin::{Admin, BoxFuture as AdminFuture, Exposition, Kind};
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
use crate::front::{self, protocols, Front, FrontOptions};
use crate::keys::{Keys, Position};
use crate::replay;
use crate::snapshot::RedisSnapshots;
use crate::store::{self, PoolOptions, StoreError, Writer, WriterOptions};
use crate::worker::{self, WorkerOptions, WorkerStats};
use deadpool_redis::redis;

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
    /// Entries per page of a `?since=` replay ([`replay::page_entries`]).
    replay_page: usize,
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
                    queue_bytes: settings.writer_queue_bytes,
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
                    max_entry: settings.max_entry_bytes,
                    limits: settings.edge.limits,
                    mapping: settings.mapping.clone(),
                },
                life: life.clone(),
                protocols: Default::default(),
            })
        });
        let worker_stats = Arc::new(WorkerStats::default());
        if worker_on {
            let opts = WorkerOptions {
                name: settings.node_id.clone(),
                batch: settings.read_count(),
                fill: settings.worker_batch,
                gather: settings.worker_gather,
                read_bytes: settings.worker_read_bytes,
                max_entry: settings.max_entry_bytes,
                pubsub_message_bytes: settings.pubsub_message_bytes,
                max_fields: settings.max_fields_per_server,
                claim_idle: settings.claim_idle,
                windows: settings.edge.windows.clone(),
                max_series: settings.edge.max_series,
                window_spread_ms: settings.edge.window_spread_ms,
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
        let replay_page = replay::page_entries(replay::REPLAY_READ_BYTES, settings.max_entry_bytes);
        let dashboards = broadcast_on.then(|| {
            life.spawn(broadcast::run(
                settings.redis_url.clone(),
                pool.clone(),
                keys.clone(),
                hub.clone(),
                broadcast_stats.clone(),
                broadcast::ReadLimits {
                    resume_history: settings.resume_history,
                    page: replay_page,
                },
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
            replay_page,
        });
        let handler = {
            let app = app.clone();
            move |req: Request<Incoming>, _info: ConnInfo| {
                let app = app.clone();
                async move { h::respond(route(&app, req).await) }
            }
        };
        let admin = Admin {
            routes: ROUTES,
            settings: settings.edge.admin,
            scrape: {
                let (app, timeout) = (app.clone(), settings.redis_timeout);
                Arc::new(move || {
                    let app = app.clone();
                    Box::pin(async move { metrics(&app, timeout).await }) as AdminFuture<String>
                })
            },
        };
        let running = Running::serve(listeners, handler, hub, life, admin)?;
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

/// The routes requests are counted under on the admin listener.
const ROUTES: &[&str] = &[
    "/metrics",
    "/metrics/stream",
    "/v1/metrics",
    "/api/v1/write",
    "/api/v2/write",
    "/write",
    protocols::grpc::EXPORT,
    "/",
    "/ws",
    "/readyz",
    "/healthz",
    "/stats",
];

/// This process's metrics as Prometheus text (the shared ones follow, see
/// `metrics_edge::admin::Shared`): the writer's, the worker's and the broadcaster's counters,
/// and the stream's length and its consumer groups' lag and pending entries, asked of Redis
/// now (at most `timeout`; `ingest_redis_up 0` when Redis did not answer in time).
async fn metrics(app: &App, timeout: Duration) -> String {
    let mut e = Exposition::new();
    if let Some(f) = &app.front {
        let s = f.writer.stats();
        e.counter(
            "ingest_samples_accepted_total",
            "Samples Redis acknowledged (each answered 202 or acked on a stream).",
            s.samples.load(Relaxed),
        )
        .counter(
            "ingest_entries_written_total",
            "Stream entries Redis acknowledged.",
            s.entries.load(Relaxed),
        )
        .counter(
            "ingest_pipelines_total",
            "Redis pipelines that succeeded.",
            s.pipelines.load(Relaxed),
        )
        .counter(
            "ingest_pipeline_failures_total",
            "Redis pipelines that failed (their requests got 503).",
            s.failures.load(Relaxed),
        )
        .by_label(
            "ingest_writes_refused_total",
            "Writes refused before Redis, by reason: writer_queue_full (--writer-queue-bytes spent: 503), entry_too_large (over --max-entry-bytes: 413). Every other refusal is in http_requests_total by status.",
            Kind::Counter,
            "reason",
            &[
                ("writer_queue_full", s.queue_full.load(Relaxed) as f64),
                ("entry_too_large", s.too_large.load(Relaxed) as f64),
            ],
        )
        .family(
            "ingest_protocol_values_total",
            "Values of OTLP, remote-write and Influx requests, by protocol and outcome: carried into samples, or why not (no_server_id, duplicate, not_a_number, ...). Values of refused requests are not counted here.",
            Kind::Counter,
        );
        for (protocol, outcome, n) in f.protocols.rows() {
            e.sample(
                "ingest_protocol_values_total",
                &[("protocol", protocol), ("outcome", outcome)],
                n as f64,
            );
        }
        e.histogram(
            "ingest_redis_pipeline_entries",
            "Entries per Redis pipeline.",
            &s.pipeline_entries,
        )
        .histogram(
            "ingest_redis_write_seconds",
            "Time from sending a pipeline to Redis to its replies (or its failure).",
            &s.write_latency,
        );
    }
    let w = &app.worker_stats;
    for (name, help, v) in [
        (
            "ingest_worker_entries_total",
            "Stream entries the workers processed.",
            &w.entries,
        ),
        (
            "ingest_worker_samples_total",
            "Samples the workers published as sample events.",
            &w.samples,
        ),
        (
            "ingest_worker_claimed_total",
            "Entries claimed from a stalled worker.",
            &w.claimed,
        ),
        (
            "ingest_worker_publishes_total",
            "Pub/Sub messages the workers published.",
            &w.publishes,
        ),
        (
            "ingest_windows_closed_total",
            "Windows closed and published by the window leader.",
            &w.windows,
        ),
        (
            "ingest_worker_errors_total",
            "Worker loops that lost their Redis connection.",
            &w.errors,
        ),
        (
            "ingest_dead_lettered_total",
            "Entries no worker could decode, moved to the dead-letter stream.",
            &w.dead_lettered,
        ),
        (
            "ingest_trimmed_pending_total",
            "Pending entries retention trimmed before they were processed.",
            &w.trimmed_pending,
        ),
        (
            "ingest_trimmed_total",
            "Entries trimmed from the stream once processed.",
            &w.trimmed,
        ),
        (
            "ingest_snapshot_fields_refused_total",
            "Metric values left out of snapshot hashes at --max-fields-per-server.",
            &w.fields_refused,
        ),
    ] {
        e.counter(name, help, v.load(Relaxed));
    }
    e.histogram(
        "ingest_window_close_seconds",
        "Time to add a read's entries, close the due windows and publish what the pacer lets out, per pass of the window leader that published any.",
        &w.window_close,
    );
    let b = &app.broadcast_stats;
    e.gauge(
        "ingest_broadcaster_connected",
        "1 while the broadcaster's Pub/Sub subscription is up.",
        f64::from(u8::from(b.connected.load(Relaxed))),
    );
    for (name, help, v) in [
        (
            "ingest_broadcaster_batches_total",
            "Pub/Sub messages the broadcaster received.",
            &b.batches,
        ),
        (
            "ingest_broadcaster_events_total",
            "Events the broadcaster handed to the hub.",
            &b.events,
        ),
        (
            "ingest_broadcaster_reconnects_total",
            "Times the broadcaster resubscribed.",
            &b.reconnects,
        ),
        (
            "ingest_broadcaster_caught_up_total",
            "Gaps the broadcaster filled from the stream.",
            &b.caught_up,
        ),
        (
            "ingest_broadcaster_skipped_total",
            "Events the broadcaster skipped as already sent.",
            &b.skipped,
        ),
    ] {
        e.counter(name, help, v.load(Relaxed));
    }
    let redis = tokio::time::timeout(timeout, stream_info(app)).await;
    let up = matches!(redis, Ok(Ok(_)));
    e.gauge(
        "ingest_redis_up",
        "1 when Redis answered this scrape's XLEN and XINFO GROUPS in time (--redis-timeout-ms).",
        f64::from(u8::from(up)),
    );
    if let Ok(Ok((len, groups))) = redis {
        e.gauge(
            "ingest_stream_length",
            "Entries in the sample stream (XLEN).",
            len as f64,
        );
        for (name, help, get) in [
            (
                "ingest_stream_group_lag",
                "Entries of the stream not yet delivered to the consumer group (XINFO GROUPS lag).",
                (|g| g.lag.unwrap_or(0)) as fn(&redis::streams::StreamInfoGroup) -> usize,
            ),
            (
                "ingest_stream_group_pending",
                "Entries delivered to the consumer group and not yet acknowledged.",
                |g| g.pending,
            ),
            (
                "ingest_stream_group_consumers",
                "Consumers of the consumer group.",
                |g| g.consumers,
            ),
        ] {
            e.family(name, help, Kind::Gauge);
            for g in &groups {
                e.sample(name, &[("group", &g.name)], get(g) as f64);
            }
        }
    }
    e.finish()
}

/// The sample stream's length and its consumer groups.
async fn stream_info(
    app: &App,
) -> Result<(u64, Vec<redis::streams::StreamInfoGroup>), Box<dyn std::error::Error + Send + Sync>> {
    let mut c = app.pool.get().await?;
    let len: u64 = redis::cmd("XLEN")
        .arg(&app.keys.stream)
        .query_async(&mut c)
        .await?;
    let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&app.keys.stream)
        .query_async(&mut c)
        .await
        .or_else(|e| {
            // No stream yet: no groups.
            if e.to_string().contains("no such key") {
                Ok(Default::default())
            } else {
                Err(e)
            }
        })?;
    Ok((len, groups.groups))
}

/// The route table.
async fn route(app: &Arc<App>, req: Request<Incoming>) -> Answer {
    if protocols::grpc::is_grpc(&req) {
        return protocols::grpc::serve(app.front.as_ref(), req).await;
    }
    let path = req.uri().path();
    match (path, req.method()) {
        ("/metrics", &Method::POST) => front::post_metrics(front(app, path)?, req).await,
        ("/v1/metrics", &Method::POST) => {
            protocols::otlp::post_metrics(front(app, path)?, req).await
        }
        ("/api/v1/write", &Method::POST) => {
            protocols::remote_write::post_write(front(app, path)?, req).await
        }
        ("/api/v2/write" | "/write", &Method::POST) => {
            protocols::influx::post_write(front(app, path)?, req).await
        }
        ("/v1/metrics" | "/api/v1/write" | "/api/v2/write" | "/write", _) => {
            Err(Refusal::MethodNotAllowed("POST"))
        }
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
    let page = app.replay_page;
    Ok(dashboard::upgrade(
        req,
        ctx,
        Audience::Dashboard,
        filter,
        since.is_some(),
        move |client| {
            if let Some(since) = since {
                life.spawn(async move {
                    if let Err(e) = replay::replay(&pool, &keys, &client, since, page).await {
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
    let (pipelines, entries, samples, failures, queue_full, too_large) = match &app.front {
        Some(f) => {
            let s = f.writer.stats();
            (
                s.pipelines.load(Relaxed),
                s.entries.load(Relaxed),
                s.samples.load(Relaxed),
                s.failures.load(Relaxed),
                s.queue_full.load(Relaxed),
                s.too_large.load(Relaxed),
            )
        }
        None => (0, 0, 0, 0, 0, 0),
    };
    let body = format!(
        "{{\"front\":{{\"pipelines\":{pipelines},\"entries\":{entries},\"samples\":{samples},\"failures\":{failures},\"queueFull\":{queue_full},\"tooLarge\":{too_large}}},\"worker\":{{\"entries\":{},\"samples\":{},\"claimed\":{},\"publishes\":{},\"windows\":{},\"errors\":{},\"deadLettered\":{},\"trimmedPending\":{},\"trimmed\":{},\"largestMessage\":{},\"snapshotFieldsRefused\":{},\"serversAtFieldLimit\":{}}},\"broadcaster\":{{\"connected\":{},\"batches\":{},\"events\":{},\"reconnects\":{},\"caughtUp\":{},\"skipped\":{}}},{}}}",
        w.entries.load(Relaxed),
        w.samples.load(Relaxed),
        w.claimed.load(Relaxed),
        w.publishes.load(Relaxed),
        w.windows.load(Relaxed),
        w.errors.load(Relaxed),
        w.dead_lettered.load(Relaxed),
        w.trimmed_pending.load(Relaxed),
        w.trimmed.load(Relaxed),
        w.largest_message.load(Relaxed),
        w.fields_refused.load(Relaxed),
        w.servers_at_field_limit.load(Relaxed),
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

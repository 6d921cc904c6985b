//! Observability of the services themselves: the admin listener (`--admin-listen`) serving
//! `GET /metrics` in the Prometheus text format (version 0.0.4) and `GET /healthz`, the
//! per-request counters, spans and access log every public request goes through, and the
//! process's own CPU, memory and file descriptors.
//!
//! The admin listener is separate from the public port so that the numbers an operator reads
//! (what was refused, who is connected, how far the workers lag) are not served to the
//! agents and browsers that reach the public one; it is off by default, and when on it has no
//! token, so it belongs on loopback or a private interface (see README).
//!
//! Most of what is exposed already exists as atomics behind each service's JSON `/stats`; they
//! are read at scrape time, never counted twice. What is new on a hot path costs a few atomic
//! increments: one per request ([`RequestCounts`]), two per observation of a [`Histogram`]
//! (one per Redis pipeline, never per sample).
//!
//! The text is written by hand ([`Exposition`]) rather than by the `prometheus-client` crate:
//! that crate writes OpenMetrics (a counter's `# TYPE foo counter` over a `foo_total` sample,
//! `# EOF`), which `promtool check metrics` reads as untyped metrics without help, and its
//! histograms take a lock per observation.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tracing::Instrument;

use crate::http::{self as h, Body};
use crate::hub::{Audience, Hub};
use crate::lifecycle::Lifecycle;
use crate::listener::{ConnInfo, ConnStats, ListenLimits};

/// The `Content-Type` of `GET /metrics`.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A future the scrape waits for.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a service adds to each scrape: its own metrics, as exposition text.
pub type Scrape = Arc<dyn Fn() -> BoxFuture<String> + Send + Sync>;

/// The admin flags, validated (`--admin-listen`, `--access-log`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdminSettings {
    /// Where `GET /metrics` is served; `None`: nowhere.
    pub listen: Option<SocketAddr>,
    /// One `info` line per public request (target `access`).
    pub access_log: bool,
}

/// What a service hands [`crate::service::Running::serve`] for its observability.
#[derive(Clone)]
pub struct Admin {
    /// The public routes requests are counted under (anything else: `other`).
    pub routes: &'static [&'static str],
    pub settings: AdminSettings,
    /// The service's own metrics.
    pub scrape: Scrape,
}

/// Prometheus text exposition, written in order: each family's `# HELP` and `# TYPE`, then
/// its samples.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

/// A metric's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// The text so far.
    pub fn finish(self) -> String {
        self.out
    }

    /// Starts a family: `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        push_value(&mut self.out, value);
        self.out.push('\n');
        self
    }

    /// A counter family of one unlabelled sample.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        self.family(name, help, Kind::Counter)
            .sample(name, &[], value as f64)
    }

    /// A counter family of one unlabelled sample with a fractional value.
    pub fn counter_f(&mut self, name: &str, help: &str, value: f64) -> &mut Self {
        self.family(name, help, Kind::Counter)
            .sample(name, &[], value)
    }

    /// A family of one sample per value of one label: `name{label="v"} n` for each `(v, n)`.
    pub fn by_label(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        label: &str,
        values: &[(&str, f64)],
    ) -> &mut Self {
        self.family(name, help, kind);
        for &(v, n) in values {
            self.sample(name, &[(label, v)], n);
        }
        self
    }

    /// A gauge family of one unlabelled sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> &mut Self {
        self.family(name, help, Kind::Gauge)
            .sample(name, &[], value)
    }

    /// A histogram family.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) -> &mut Self {
        self.family(name, help, Kind::Histogram);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        let mut le = String::new();
        for (i, bound) in h.bounds.iter().enumerate() {
            cumulative += h.counts[i].load(Relaxed);
            le.clear();
            push_value(&mut le, *bound as f64 * h.scale);
            self.sample(&bucket, &[("le", &le)], cumulative as f64);
        }
        cumulative += h.counts[h.bounds.len()].load(Relaxed);
        self.sample(&bucket, &[("le", "+Inf")], cumulative as f64);
        self.sample(
            &format!("{name}_sum"),
            &[],
            h.sum.load(Relaxed) as f64 * h.scale,
        );
        self.sample(&format!("{name}_count"), &[], cumulative as f64)
    }
}

fn push_value(out: &mut String, v: f64) {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// A histogram of integer observations (entries, microseconds) with fixed upper bounds, shown
/// multiplied by `scale` (1e-6 turns microseconds into the seconds Prometheus expects).
/// Observing costs two relaxed atomic increments.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    scale: f64,
    /// One per bound, then one for the values over the last.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    /// Buckets with the upper bounds `bounds` (ascending), shown times `scale`.
    pub fn new(bounds: &'static [u64], scale: f64) -> Self {
        Self {
            bounds,
            scale,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Records `v`.
    pub fn observe(&self, v: u64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }
}

impl Default for Histogram {
    /// A latency histogram: microseconds observed, [`LATENCY_US`] buckets, shown in seconds.
    fn default() -> Self {
        Self::new(LATENCY_US, 1e-6)
    }
}

/// Bounds for latencies in microseconds, 100 µs to 10 s (shown in seconds).
pub const LATENCY_US: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

/// The lowest status code counted, and how many codes there are per route (100–599).
const FIRST_STATUS: u16 = 100;
const STATUSES: usize = 500;

/// Requests answered, by route and status: a fixed table of counters, so counting a request
/// is one relaxed increment, no lock and no hashing.
pub struct RequestCounts {
    routes: &'static [&'static str],
    counts: Box<[AtomicU64]>,
}

impl RequestCounts {
    pub fn new(routes: &'static [&'static str]) -> Self {
        Self {
            routes,
            counts: (0..(routes.len() + 1) * STATUSES)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// The index of `path`'s route (the last index: `other`).
    pub fn route(&self, path: &str) -> usize {
        self.routes
            .iter()
            .position(|r| *r == path)
            .unwrap_or(self.routes.len())
    }

    /// Counts one answer on route `route` (from [`RequestCounts::route`]).
    pub fn count(&self, route: usize, status: StatusCode) {
        let s = usize::from(status.as_u16().saturating_sub(FIRST_STATUS)).min(STATUSES - 1);
        self.counts[route * STATUSES + s].fetch_add(1, Relaxed);
    }

    /// Requests answered so far on `path`'s route with `status`.
    pub fn get(&self, path: &str, status: u16) -> u64 {
        let s = usize::from(status.saturating_sub(FIRST_STATUS)).min(STATUSES - 1);
        self.counts[self.route(path) * STATUSES + s].load(Relaxed)
    }

    fn write(&self, e: &mut Exposition) {
        e.family(
            "http_requests_total",
            "Requests answered on the public listeners, by route (other: any path not served) and status.",
            Kind::Counter,
        );
        let mut code = String::new();
        for (i, c) in self.counts.iter().enumerate() {
            let n = c.load(Relaxed);
            if n == 0 {
                continue;
            }
            let route = self.routes.get(i / STATUSES).copied().unwrap_or("other");
            code.clear();
            let _ = write!(code, "{}", FIRST_STATUS as usize + i % STATUSES);
            e.sample(
                "http_requests_total",
                &[("route", route), ("status", &code)],
                n as f64,
            );
        }
    }
}

/// Wraps a public handler: counts each answer by route and status, runs it in a `request`
/// span (debug level) that logs its status and latency, and with `access_log` logs one `info`
/// line per request (target `access`). With debug logs and the access log off, a request
/// costs an `Arc` clone and one counter increment.
pub fn observe<F, Fut>(
    handler: F,
    requests: Arc<RequestCounts>,
    access_log: bool,
) -> impl Fn(Request<Incoming>, ConnInfo) -> BoxFuture<Response<Body>> + Clone + Send + Sync + 'static
where
    F: Fn(Request<Incoming>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    move |req: Request<Incoming>, info: ConnInfo| {
        let route = requests.route(req.uri().path());
        let detail = (access_log || tracing::enabled!(tracing::Level::DEBUG)).then(|| {
            (
                Instant::now(),
                req.method().clone(),
                req.uri().path().to_owned(),
            )
        });
        let span = tracing::debug_span!(
            "request",
            method = %req.method(),
            path = %req.uri().path(),
            peer = %info.peer,
        );
        let fut = handler(req, info);
        let requests = requests.clone();
        Box::pin(
            async move {
                let resp = fut.await;
                let status = resp.status();
                requests.count(route, status);
                if let Some((start, method, path)) = detail {
                    let latency_us = start.elapsed().as_micros() as u64;
                    tracing::debug!(status = status.as_u16(), latency_us, "answered");
                    if access_log {
                        tracing::info!(
                            target: "access",
                            %method,
                            %path,
                            status = status.as_u16(),
                            latency_us,
                            peer = %info.peer,
                            "request"
                        );
                    }
                }
                resp
            }
            .instrument(span),
        )
    }
}

/// What both services expose alike: requests, the listeners' refusals, the hub, the process.
pub struct Shared {
    pub requests: Arc<RequestCounts>,
    pub conns: Arc<ConnStats>,
    pub hub: Arc<Hub>,
}

impl Shared {
    pub fn write(&self, e: &mut Exposition) {
        self.requests.write(e);
        let c = &self.conns;
        e.counter(
            "http_connections_refused_total",
            "Connections closed at accept because their listener was at --max-connections.",
            c.refused.load(Relaxed),
        )
        .counter(
            "http_connections_timed_out_total",
            "Connections closed for not sending a request's headers within --header-read-timeout-ms (TLS handshake included).",
            c.timed_out.load(Relaxed),
        )
        .counter(
            "http_connections_idle_closed_total",
            "HTTP/2 connections closed (GOAWAY) after --h2-idle-timeout-ms without an open stream.",
            c.idle_closed.load(Relaxed),
        )
        .counter(
            "tls_certificate_reloads_total",
            "TLS certificate and key pairs loaded since start (file change or SIGHUP).",
            c.tls.get().map_or(0, |t| t.reloads()),
        )
        .counter(
            "tls_certificate_reload_failures_total",
            "TLS certificate reloads refused (file unreadable, key does not fit); the previous pair kept serving.",
            c.tls.get().map_or(0, |t| t.failures()),
        );
        let hub = &self.hub;
        e.by_label(
            "websocket_clients",
            "WebSocket clients connected now, by audience (dashboard, agent).",
            Kind::Gauge,
            "audience",
            &[
                ("dashboard", hub.count(Audience::Dashboard) as f64),
                ("agent", hub.count(Audience::Agent) as f64),
            ],
        )
        .counter(
            "websocket_write_timeouts_total",
            "WebSocket peers dropped for not taking a frame within --write-timeout-ms.",
            hub.write_timeouts(),
        )
        .gauge(
            "websocket_dashboard_writers_active",
            "Dashboard writers that wrote a frame within the last second (what --dashboard-frame-budget is shared by).",
            hub.frame_gauge().active() as f64,
        )
        .counter(
            "websocket_frame_waits_total",
            "Times a dashboard writer held its events back for --dashboard-frame-budget, so they went out together.",
            hub.frame_gauge().waits(),
        )
        .counter(
            "hub_samples_shed_total",
            "Sample events dropped from the queues of clients that did not keep up (--dashboard-queue, --dashboard-queue-bytes).",
            hub.shed(),
        )
        .counter(
            "hub_events_published_total",
            "Events published to the hub (before per-client filters).",
            hub.published(),
        );
        process(e);
    }
}

/// The process's CPU time, memory, threads and file descriptors, from `/proc/self` (Linux;
/// elsewhere these are left out).
pub fn process(e: &mut Exposition) {
    /// Clock ticks per second of `/proc/*/stat` (USER_HZ: 100 on every Linux ABI we build for).
    const TICKS: f64 = 100.0;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            e.counter_f(
                "process_cpu_seconds_total",
                "User and system CPU time spent, in seconds.",
                (utime + stime) / TICKS,
            );
        }
        if let Some(vsize) = field(23) {
            e.gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                vsize,
            );
        }
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        if let (Some(boot), Some(start)) = (boot, field(22)) {
            e.gauge(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds.",
                boot + start / TICKS,
            );
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let kb = |key: &str| {
            status.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
        };
        if let Some(rss) = kb("VmRSS:") {
            e.gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                rss * 1024.0,
            );
        }
        if let Some(threads) = kb("Threads:") {
            e.gauge("process_threads", "Threads of the process.", threads);
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        e.gauge(
            "process_open_fds",
            "Open file descriptors (sockets included).",
            dir.count() as f64,
        );
    }
    let max = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<f64>().ok())
        });
    if let Some(max) = max {
        e.gauge(
            "process_max_fds",
            "The soft limit on open file descriptors.",
            max,
        );
    }
}

/// Serves the admin routes on `listener` until `life` ends, with the public listeners'
/// header-read timeout (its connections counted apart from theirs). `GET /metrics`: the
/// service's metrics then the shared ones; `GET /healthz`: alive.
pub fn serve(
    listener: tokio::net::TcpListener,
    scrape: Scrape,
    shared: Arc<Shared>,
    limits: ListenLimits,
    life: &Lifecycle,
) {
    let handler = move |req: Request<Incoming>, _info: ConnInfo| {
        let (scrape, shared) = (scrape.clone(), shared.clone());
        async move {
            match (req.uri().path(), req.method()) {
                ("/metrics", &Method::GET) => {
                    let mut text = scrape().await;
                    let mut e = Exposition::new();
                    shared.write(&mut e);
                    text.push_str(&e.finish());
                    let mut r = Response::new(h::full(text));
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
                    );
                    r
                }
                ("/healthz", &Method::GET) => h::json(StatusCode::OK, "{\"status\":\"ok\"}"),
                ("/metrics" | "/healthz", _) => {
                    h::respond(Err(h::Refusal::MethodNotAllowed("GET")))
                }
                (path, _) => h::respond(Err(h::Refusal::NotFound(path.to_string()))),
            }
        }
    };
    life.spawn(crate::listener::serve(
        listener,
        None,
        None,
        handler,
        limits,
        Arc::new(ConnStats::default()),
        life.clone(),
    ));
}

/// Binds the admin listener (synchronously, so a service's `start` can), naming the address
/// in the error; warns when it is not on loopback, since it has no token.
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let named = |e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("binding --admin-listen {addr}: {e}"))
    };
    let l = std::net::TcpListener::bind(addr).map_err(named)?;
    l.set_nonblocking(true).map_err(named)?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the admin listener (GET /metrics) has no token and is not on loopback: keep it on a private network");
    }
    tokio::net::TcpListener::from_std(l).map_err(named)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_scaled() {
        static B: &[u64] = &[10, 100];
        let h = Histogram::new(B, 1e-3);
        for v in [5, 10, 50, 1000] {
            h.observe(v);
        }
        let mut e = Exposition::new();
        e.histogram("x_seconds", "X.", &h);
        let text = e.finish();
        assert!(text.contains("x_seconds_bucket{le=\"0.01\"} 2\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"0.1\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("x_seconds_sum 1.065\n"), "{text}");
        assert!(text.contains("x_seconds_count 4\n"), "{text}");
        assert_eq!(h.count(), 4);
    }

    #[test]
    fn requests_counted_by_route_and_status() {
        static R: &[&str] = &["/a", "/b"];
        let r = RequestCounts::new(R);
        r.count(r.route("/a"), StatusCode::OK);
        r.count(r.route("/nowhere"), StatusCode::NOT_FOUND);
        r.count(r.route("/elsewhere"), StatusCode::NOT_FOUND);
        assert_eq!(r.get("/a", 200), 1);
        assert_eq!(r.get("/x", 404), 2);
        let mut e = Exposition::new();
        r.write(&mut e);
        let text = e.finish();
        assert!(text.contains("http_requests_total{route=\"/a\",status=\"200\"} 1\n"));
        assert!(text.contains("http_requests_total{route=\"other\",status=\"404\"} 2\n"));
        assert!(!text.contains("route=\"/b\""));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::new();
        e.sample("x", &[("l", "a\"b\\c\nd")], 1.5);
        assert_eq!(e.finish(), "x{l=\"a\\\"b\\\\c\\nd\"} 1.5\n");
    }
}

//! What both services' servers are once started: listeners serving a handler, a dashboard hub,
//! and the lifecycle everything runs on ([`Running`]); and the one thing a caller does with a
//! server, whichever system it is: learn where it listens and wait for its end ([`Service`]).
//! The binaries, the bench and the test harnesses start either system through these.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::admin::{self, Admin, RequestCounts};
use crate::http::Body;
use crate::hub::Hub;
use crate::lifecycle::Lifecycle;
use crate::listener::{ConnInfo, ConnStats, Listeners};

/// A server's listening part.
pub struct Running {
    pub plain_addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
    /// The plaintext listener that redirects to the TLS one.
    pub redirect_addr: Option<SocketAddr>,
    /// The TLS listener's certificate: `reload()` it on SIGHUP.
    pub tls_certs: Option<Arc<crate::tls::CertReloader>>,
    /// The dashboard hub its sessions are registered on.
    pub hub: Arc<Hub>,
    /// What the listeners refused (over the connection cap, past the header-read timeout).
    pub conns: Arc<ConnStats>,
    /// Where `GET /metrics` is served (`--admin-listen`), if anywhere.
    pub admin_addr: Option<SocketAddr>,
    /// Public requests answered, by route and status.
    pub requests: Arc<RequestCounts>,
    life: Lifecycle,
}

impl Running {
    /// Serves `handler` on `listeners`, every task on `life`: each request counted (and
    /// logged, see [`admin::observe`]), and `GET /metrics` on the admin listener when
    /// `admin.settings.listen` names one.
    pub fn serve<F, Fut>(
        listeners: Listeners,
        handler: F,
        hub: Arc<Hub>,
        life: Lifecycle,
        admin: Admin,
    ) -> std::io::Result<Self>
    where
        F: Fn(Request<Incoming>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        // Bound first: a taken admin port fails the start before anything is served.
        let admin_listener = admin.settings.listen.map(admin::bind).transpose()?;
        let limits = listeners.limits;
        let requests = Arc::new(RequestCounts::new(admin.routes));
        let observed = admin::observe(handler, requests.clone(), admin.settings.access_log);
        let bound = listeners.serve(observed, &life)?;
        let admin_addr = match admin_listener {
            Some(l) => {
                let addr = l.local_addr()?;
                let shared = Arc::new(admin::Shared {
                    requests: requests.clone(),
                    conns: bound.conns.clone(),
                    hub: hub.clone(),
                });
                admin::serve(l, admin.scrape, shared, limits, &life);
                tracing::info!(%addr, "admin listener: GET /metrics, GET /healthz");
                Some(addr)
            }
            None => None,
        };
        Ok(Self {
            plain_addr: bound.plain,
            tls_addr: bound.tls,
            redirect_addr: bound.redirect,
            tls_certs: bound.tls_certs,
            conns: bound.conns,
            admin_addr,
            requests,
            hub,
            life,
        })
    }

    /// The lifecycle the server runs on.
    pub fn life(&self) -> &Lifecycle {
        &self.life
    }

    /// Waits for shutdown, then for every task to finish (bounded by the drain).
    pub async fn wait(&self) {
        self.life.wait().await
    }
}

/// A server of either system.
pub trait Service: Sized + Send + 'static {
    /// Its validated configuration.
    type Settings;
    /// Why it could not start.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The settings both systems share, inside this system's settings.
    fn edge(settings: &Self::Settings) -> &crate::config::EdgeSettings;

    /// Starts serving on `listeners`, every task on a lifecycle ending with `shutdown`.
    fn start(
        settings: Self::Settings,
        listeners: Listeners,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<Self, Self::Error>;

    /// Its listening part.
    fn running(&self) -> &Running;

    /// Resolves once the server has shut down and drained.
    fn wait(self) -> impl Future<Output = ()> + Send + 'static;
}

/// The listeners' counters (`None` before they serve) and the hub's, as `/stats` members.
pub fn stats_members(conns: Option<&Arc<crate::listener::ConnStats>>, hub: &Hub) -> String {
    match conns {
        Some(c) => c.json_members(hub.write_timeouts(), hub.shed()),
        None => {
            crate::listener::ConnStats::default().json_members(hub.write_timeouts(), hub.shed())
        }
    }
}

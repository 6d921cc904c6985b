//! The flags both services take, defined once.
//!
//! Listeners and their connection limits, TLS files, the tokens and allowed origins, WebSocket limits and liveness, the dashboard queue, sample
//! limits, windows, logging and the shutdown drain mean the same in System 1 and System 2, so
//! they are one clap struct ([`EdgeArgs`]) that each service flattens into its own, validated
//! once into [`EdgeSettings`]. What differs between the services is only the default ports and
//! the prefix of the environment variables (`AGG_LISTEN`, `INGEST_LISTEN`); a service names both
//! in a [`Service`] and builds its command line with [`command`], which fills them in, so
//! `--help` shows each service's own defaults and variables.
//!
//! Every duration flag is in milliseconds and says so in its name (`--ping-interval-ms`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgMatches, Command, FromArgMatches};
use metrics_model::window::{WindowSpec, WindowSpecError};
use metrics_model::Limits;

use crate::admin::AdminSettings;
use crate::auth::{AllowedOrigins, Auth, OriginError};
use crate::frame_budget::DEFAULT_BUDGET;
use crate::hub::QueueLimits;
use crate::listener::ListenLimits;
use crate::tls::ClientAuth;
use crate::ws::WsConfig;

/// What tells one service's command line from the other's.
#[derive(Clone, Copy, Debug)]
pub struct Service {
    /// Prefix of every environment variable: `AGG` gives `AGG_LISTEN`.
    pub env_prefix: &'static str,
    /// Default plaintext listener.
    pub listen: &'static str,
    /// Default TLS listener.
    pub tls_listen: &'static str,
}

/// A service's command line: its own flags around the shared [`EdgeArgs`], and how it checks
/// them (see `process::configure`).
pub trait ServiceArgs: clap::CommandFactory + FromArgMatches {
    /// The service's defaults and environment prefix.
    const SERVICE: Service;
    /// The validated settings.
    type Settings;
    /// Why the flags were refused.
    type Error;
    /// The shared flags.
    fn edge(&self) -> &EdgeArgs;
    /// Checks the flags.
    fn validate(&self) -> Result<Self::Settings, Self::Error>;
}

/// Flags shared by both services (flattened into each service's `Args`).
#[derive(clap::Args, Debug, Clone)]
pub struct EdgeArgs {
    /// Plaintext listener (HTTP/1.1, h2c where the service speaks HTTP/2, WebSocket). "off"
    /// disables it.
    #[arg(long, global = true)]
    pub listen: String,
    /// TLS listener, used when --tls-cert and --tls-key are given.
    #[arg(long, global = true)]
    pub tls_listen: SocketAddr,
    /// PEM certificate chain for the TLS listener (see certs/README.md).
    #[arg(long, global = true)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS listener.
    #[arg(long, global = true)]
    pub tls_key: Option<PathBuf>,
    /// Milliseconds between checks of the certificate and key files' contents; a changed pair
    /// is loaded for new connections without a restart (SIGHUP also reloads). 0: SIGHUP only.
    #[arg(long, default_value_t = 5_000, global = true)]
    pub tls_reload_ms: u64,
    /// PEM bundle of the CAs client certificates must chain to (mutual TLS for agents).
    #[arg(long, global = true)]
    pub tls_client_ca: Option<PathBuf>,
    /// With --tls-client-ca: `required` (every TLS handshake must present a certificate) or
    /// `optional` (dashboards may connect without one; agents' routes still need one).
    #[arg(long, value_enum, default_value_t = ClientAuth::Required, global = true)]
    pub tls_client_auth: ClientAuth,
    /// Adds `Strict-Transport-Security: max-age=N` to every TLS response (unset: no header).
    #[arg(long, global = true)]
    pub hsts_max_age_secs: Option<u64>,
    /// A plaintext listener that answers every request with 308 to the same host and path on
    /// the TLS listener's port (needs --tls-cert).
    #[arg(long, global = true)]
    pub redirect_listen: Option<SocketAddr>,
    /// Bearer token (header or ?token=) for agents and dashboards alike: the token of each role
    /// that has no --agent-token or --dashboard-token of its own. A role with no token: open.
    #[arg(long, hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Token agents need to send samples (System 2's /ingest and sockets on /, System 1's
    /// POST /metrics and /metrics/stream); unset: --token.
    #[arg(long, hide_env_values = true, global = true)]
    pub agent_token: Option<String>,
    /// Token dashboards need to read (/ws, and registering as a dashboard on /); unset: --token.
    #[arg(long, hide_env_values = true, global = true)]
    pub dashboard_token: Option<String>,
    /// Origins (scheme://host[:port], comma-separated) a browser may open a dashboard socket
    /// from, besides this service's own (the request's Host). Upgrades without Origin (agents,
    /// curl, websocat) are not affected.
    #[arg(long, global = true)]
    pub allowed_origins: Option<String>,
    /// Most samples in one request, array frame or body.
    #[arg(long, default_value_t = 10_000, global = true)]
    pub max_batch: usize,
    /// Largest WebSocket frame or message from a client, in bytes (over it: close 1009).
    #[arg(long, default_value_t = 1 << 20, global = true)]
    pub max_message: usize,
    /// Sample events queued per dashboard before its oldest are dropped (and counted).
    #[arg(long, default_value_t = 16_384, global = true)]
    pub dashboard_queue: usize,
    /// Bytes of events queued per dashboard or agent socket, all kinds together: past it the
    /// oldest sample events are dropped (and counted); a client whose window and control
    /// events alone pass it is closed (1008).
    #[arg(long, default_value_t = 16 << 20, global = true)]
    pub dashboard_queue_bytes: usize,
    /// Frames per second all dashboard sockets together aim at: each active dashboard's
    /// writer waits (active dashboards / budget) between frames, so the events published
    /// meanwhile go out as one array frame; waits under 1 ms are not made, so a few
    /// dashboards never wait. 0: no budget (a frame per drain of the queue).
    #[arg(long, default_value_t = DEFAULT_BUDGET, global = true)]
    pub dashboard_frame_budget: u32,
    /// Most server ids in one client's filter: a `register` or `subscribe` message or a
    /// `?serverId=` naming more is refused whole (an `error` event; a 400 at the upgrade) and
    /// changes nothing; an agent socket gets windows back for at most this many of the
    /// servers it sends (told once with an `error` event; the samples are still aggregated).
    #[arg(long, default_value_t = QueueLimits::DEFAULT_MAX_IDS, global = true)]
    pub max_filter_ids: usize,
    /// Milliseconds of silence before the server pings a WebSocket peer.
    #[arg(long, default_value_t = 15_000, global = true)]
    pub ping_interval_ms: u64,
    /// Milliseconds a pinged WebSocket peer has to answer before it is closed (1001).
    #[arg(long, default_value_t = 10_000, global = true)]
    pub ping_timeout_ms: u64,
    /// Milliseconds a WebSocket peer's socket has to take one frame (or a ping, or a close);
    /// a peer that does not is dropped without a close frame (counted, logged at debug).
    #[arg(long, default_value_t = ms(WsConfig::DEFAULT_WRITE_TIMEOUT), global = true)]
    pub write_timeout_ms: u64,
    /// Aggregation windows, comma-separated (tumbling, aligned to the wall clock).
    #[arg(long, default_value = "1s,10s,60s", global = true)]
    pub windows: String,
    /// Most (server, metric) series aggregated at once.
    #[arg(long, default_value_t = 1_000_000, global = true)]
    pub max_series: usize,
    /// Milliseconds over which the window events of one close are sent out, evenly, instead of
    /// all at once (every server's windows close on the same boundary); a window event arrives
    /// at most this late. A close of at most 256 windows goes out at once (System 2: at most
    /// 256 windows times the dashboards connected, so a few windows for many dashboards are
    /// spread too). At most half the shortest window; 0 sends them at once.
    #[arg(long, default_value_t = metrics_model::pacing::DEFAULT_SPREAD_MS, global = true)]
    pub window_spread_ms: u64,
    /// Open connections per listener; past it a new connection is closed at once (and
    /// counted). Keep it below the open-file limit.
    #[arg(long, default_value_t = ListenLimits::DEFAULT.max_connections, global = true)]
    pub max_connections: usize,
    /// Milliseconds a client has from connecting to its first request's headers (TLS handshake
    /// included), and on HTTP/1.1 from each response to the next request's headers (the
    /// keep-alive idle timeout).
    #[arg(long, default_value_t = ms(ListenLimits::DEFAULT.header_read_timeout), global = true)]
    pub header_read_timeout_ms: u64,
    /// Milliseconds to receive a whole request body (System 1's POST /metrics; over it: 408).
    #[arg(long, default_value_t = ms(ListenLimits::DEFAULT.body_timeout), global = true)]
    pub body_timeout_ms: u64,
    /// Concurrent HTTP/2 streams per connection.
    #[arg(long, default_value_t = ListenLimits::DEFAULT.h2_max_streams, global = true)]
    pub h2_max_streams: u32,
    /// Milliseconds of silence on an HTTP/2 connection before the server pings it.
    #[arg(long, default_value_t = ms(ListenLimits::DEFAULT.h2_keep_alive_interval), global = true)]
    pub h2_keepalive_interval_ms: u64,
    /// Milliseconds an HTTP/2 ping has to be answered before the connection is closed.
    #[arg(long, default_value_t = ms(ListenLimits::DEFAULT.h2_keep_alive_timeout), global = true)]
    pub h2_keepalive_timeout_ms: u64,
    /// Milliseconds an HTTP/2 connection may stay without an open stream before it gets GOAWAY
    /// (pings answered or not).
    #[arg(long, default_value_t = ms(ListenLimits::DEFAULT.h2_idle_timeout), global = true)]
    pub h2_idle_timeout_ms: u64,
    /// Milliseconds in-flight requests, sessions and background tasks get to finish at
    /// shutdown (SIGINT, SIGTERM).
    #[arg(long, default_value_t = 10_000, global = true)]
    pub drain_ms: u64,
    /// Log as JSON lines instead of text (levels from RUST_LOG).
    #[arg(long, global = true)]
    pub log_json: bool,
    /// Admin listener serving `GET /metrics` (Prometheus text) and `GET /healthz`, apart from
    /// the public port. It has no token: keep it on loopback or a private interface. "off"
    /// (the default) disables it.
    #[arg(long, default_value = "off", global = true)]
    pub admin_listen: String,
    /// Log one line per public request at info (target `access`: method, path, status,
    /// latency, peer). Off by default; costs nothing when off.
    #[arg(long, global = true)]
    pub access_log: bool,
}

/// The certificate and key files of a TLS listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What the TLS listener does besides serving its certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// How often the certificate files are checked for a change (`None`: SIGHUP only).
    pub reload_every: Option<Duration>,
    /// CAs client certificates must chain to; also makes agents' routes require one.
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub hsts_max_age_secs: Option<u64>,
    /// The plaintext redirect-to-HTTPS listener.
    pub redirect: Option<SocketAddr>,
}

/// [`EdgeArgs`], validated.
#[derive(Clone, Debug)]
pub struct EdgeSettings {
    pub listen: Option<SocketAddr>,
    pub tls: Option<TlsFiles>,
    pub tls_options: TlsOptions,
    /// The shared token; each role's own, when set, overrides it (see [`EdgeSettings::auth`]).
    pub token: Option<String>,
    pub agent_token: Option<String>,
    pub dashboard_token: Option<String>,
    pub allowed_origins: AllowedOrigins,
    pub limits: Limits,
    pub ws: WsConfig,
    pub queue: QueueLimits,
    pub windows: Vec<WindowSpec>,
    pub max_series: usize,
    /// `--window-spread-ms` as given; whoever paces closes caps it at half the shortest window
    /// (`metrics_model::pacing::spread_for`).
    pub window_spread_ms: u64,
    pub drain: Duration,
    /// What each listener allows its clients.
    pub conn: ListenLimits,
    /// The admin listener and the access log.
    pub admin: AdminSettings,
}

/// Why the shared flags were refused; every message names the flag.
#[derive(Debug, thiserror::Error)]
pub enum EdgeConfigError {
    #[error("--windows: {0}")]
    Windows(#[from] WindowSpecError),
    #[error("--listen: `{0}` is not an address like 127.0.0.1:8080 (or \"off\")")]
    Listen(String),
    #[error("--admin-listen: `{0}` is not an address like 127.0.0.1:9464 (or \"off\")")]
    AdminListen(String),
    #[error("--tls-cert and --tls-key go together")]
    TlsPair,
    #[error("--{0} needs the TLS listener (--tls-cert and --tls-key)")]
    NeedsTls(&'static str),
    #[error("--tls-reload-ms must be 0 (SIGHUP only) or at least 100")]
    TlsReload,
    #[error("--{0} must be at least {1}")]
    TooSmall(&'static str, u64),
    #[error(transparent)]
    Origins(#[from] OriginError),
}

/// Checks `v >= min` for each `(flag, v, min)`, naming the first flag that is not.
pub fn at_least(checks: &[(&'static str, u64, u64)]) -> Result<(), EdgeConfigError> {
    match checks.iter().find(|(_, v, min)| v < min) {
        Some(&(name, _, min)) => Err(EdgeConfigError::TooSmall(name, min)),
        None => Ok(()),
    }
}

impl EdgeArgs {
    /// Checks the shared flags.
    pub fn validate(&self) -> Result<EdgeSettings, EdgeConfigError> {
        let listen = match self.listen.trim() {
            "off" | "" => None,
            a => Some(
                a.parse()
                    .map_err(|_| EdgeConfigError::Listen(a.to_string()))?,
            ),
        };
        let admin_listen = match self.admin_listen.trim() {
            "off" | "" => None,
            a => Some(
                a.parse()
                    .map_err(|_| EdgeConfigError::AdminListen(a.to_string()))?,
            ),
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                addr: self.tls_listen,
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            _ => return Err(EdgeConfigError::TlsPair),
        };
        if tls.is_none() {
            let needs = [
                ("tls-client-ca", self.tls_client_ca.is_some()),
                ("hsts-max-age-secs", self.hsts_max_age_secs.is_some()),
                ("redirect-listen", self.redirect_listen.is_some()),
            ];
            if let Some((flag, _)) = needs.iter().find(|(_, given)| *given) {
                return Err(EdgeConfigError::NeedsTls(flag));
            }
        }
        if (1..100).contains(&self.tls_reload_ms) {
            return Err(EdgeConfigError::TlsReload);
        }
        at_least(&[
            ("max-batch", self.max_batch as u64, 1),
            ("max-message", self.max_message as u64, 256),
            ("dashboard-queue", self.dashboard_queue as u64, 16),
            (
                "dashboard-queue-bytes",
                self.dashboard_queue_bytes as u64,
                65_536,
            ),
            ("max-filter-ids", self.max_filter_ids as u64, 1),
            ("ping-interval-ms", self.ping_interval_ms, 10),
            ("ping-timeout-ms", self.ping_timeout_ms, 10),
            ("write-timeout-ms", self.write_timeout_ms, 10),
            ("max-series", self.max_series as u64, 1),
            ("max-connections", self.max_connections as u64, 1),
            ("header-read-timeout-ms", self.header_read_timeout_ms, 10),
            ("body-timeout-ms", self.body_timeout_ms, 10),
            ("h2-max-streams", u64::from(self.h2_max_streams), 1),
            (
                "h2-keepalive-interval-ms",
                self.h2_keepalive_interval_ms,
                10,
            ),
            ("h2-keepalive-timeout-ms", self.h2_keepalive_timeout_ms, 10),
            ("h2-idle-timeout-ms", self.h2_idle_timeout_ms, 10),
        ])?;
        Ok(EdgeSettings {
            listen,
            tls,
            tls_options: TlsOptions {
                reload_every: (self.tls_reload_ms > 0)
                    .then(|| Duration::from_millis(self.tls_reload_ms)),
                client_ca: self.tls_client_ca.clone(),
                client_auth: self.tls_client_auth,
                hsts_max_age_secs: self.hsts_max_age_secs,
                redirect: self.redirect_listen,
            },
            token: self.token.clone().filter(|t| !t.is_empty()),
            agent_token: self.agent_token.clone().filter(|t| !t.is_empty()),
            dashboard_token: self.dashboard_token.clone().filter(|t| !t.is_empty()),
            allowed_origins: AllowedOrigins::parse(self.allowed_origins.as_deref().unwrap_or(""))?,
            limits: Limits {
                max_batch: self.max_batch,
                ..Limits::default()
            },
            ws: WsConfig {
                max_message: self.max_message,
                ping_interval: Duration::from_millis(self.ping_interval_ms),
                ping_timeout: Duration::from_millis(self.ping_timeout_ms),
                write_timeout: Duration::from_millis(self.write_timeout_ms),
                frame_budget: self.dashboard_frame_budget,
                ..WsConfig::default()
            },
            queue: QueueLimits {
                sample_cap: self.dashboard_queue,
                // Window and control events are never shed; past this a client is cut off.
                other_cap: (self.dashboard_queue * 16).max(65_536),
                max_bytes: self.dashboard_queue_bytes,
                max_ids: self.max_filter_ids,
            },
            windows: WindowSpec::parse_list(&self.windows)?,
            max_series: self.max_series,
            window_spread_ms: self.window_spread_ms,
            drain: Duration::from_millis(self.drain_ms),
            conn: ListenLimits {
                max_connections: self.max_connections,
                header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
                h2_max_streams: self.h2_max_streams,
                h2_keep_alive_interval: Duration::from_millis(self.h2_keepalive_interval_ms),
                h2_keep_alive_timeout: Duration::from_millis(self.h2_keepalive_timeout_ms),
                h2_idle_timeout: Duration::from_millis(self.h2_idle_timeout_ms),
                body_timeout: Duration::from_millis(self.body_timeout_ms),
            },
            admin: AdminSettings {
                listen: admin_listen,
                access_log: self.access_log,
            },
        })
    }
}

impl EdgeSettings {
    /// True when neither listener is configured.
    pub fn no_listener(&self) -> bool {
        self.listen.is_none() && self.tls.is_none()
    }

    /// Who may open what: each role's token (its own, else the shared one) and the allowed
    /// origins.
    pub fn auth(&self) -> Auth {
        Auth::new(
            self.token.clone(),
            self.agent_token.clone(),
            self.dashboard_token.clone(),
            self.allowed_origins.clone(),
        )
        .agents_need_client_cert(self.tls.is_some() && self.tls_options.client_ca.is_some())
    }

    /// The labels of the configured windows, as `hello` events list them.
    pub fn window_labels(&self) -> Vec<String> {
        self.windows.iter().map(|w| w.label.clone()).collect()
    }
}

/// A flag default in milliseconds.
const fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// `T`'s command line with `service`'s defaults and an environment variable for every flag
/// that has none: `{prefix}_{FLAG}` (`--tls-listen` of `AGG`: `AGG_TLS_LISTEN`).
pub fn command<T: clap::CommandFactory>(service: &Service) -> Command {
    let mut cmd = T::command()
        .mut_arg("listen", |a| {
            a.default_value(service.listen).required(false)
        })
        .mut_arg("tls_listen", |a| {
            a.default_value(service.tls_listen).required(false)
        });
    let ids: Vec<String> = cmd
        .get_arguments()
        .filter(|a| a.get_env().is_none() && !a.is_positional())
        .map(|a| a.get_id().to_string())
        .filter(|id| id != "help" && id != "version")
        .collect();
    for id in ids {
        let env = format!("{}_{}", service.env_prefix, id.to_ascii_uppercase());
        // Leaked once per process, at start-up: clap keeps argument metadata as `'static`.
        let env: &'static str = Box::leak(env.into_boxed_str());
        cmd = cmd.mut_arg(id, |a| a.env(env));
    }
    cmd
}

/// Parses the process's arguments (and environment) into `T`; prints help or the error and
/// exits on a bad command line, as clap does.
pub fn parse<T: clap::CommandFactory + FromArgMatches>(service: &Service) -> T {
    from_matches(command::<T>(service).get_matches())
}

/// Parses `flags` (no program name) into `T`, as [`parse`] does, but returning clap's error;
/// for tests and embedding.
pub fn parse_flags<T>(service: &Service, flags: &[&str]) -> Result<T, clap::Error>
where
    T: clap::CommandFactory + FromArgMatches,
{
    let args = std::iter::once(service.env_prefix).chain(flags.iter().copied());
    let matches = command::<T>(service).try_get_matches_from(args)?;
    T::from_arg_matches(&matches)
}

fn from_matches<T: FromArgMatches>(matches: ArgMatches) -> T {
    T::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Args {
        #[command(flatten)]
        edge: EdgeArgs,
    }

    const SERVICE: Service = Service {
        env_prefix: "TESTSVC",
        listen: "127.0.0.1:9",
        tls_listen: "127.0.0.1:10",
    };

    fn args(flags: &[&str]) -> Args {
        parse_flags(&SERVICE, flags).expect("parses")
    }

    #[test]
    fn defaults_come_from_the_service() {
        let s = args(&[]).edge.validate().expect("valid");
        assert_eq!(s.listen, Some("127.0.0.1:9".parse().expect("addr")));
        assert!(s.tls.is_none());
        assert_eq!(s.ws.ping_interval, Duration::from_secs(15));
        assert_eq!(s.window_labels(), ["1s", "10s", "60s"]);
        assert_eq!(s.queue.sample_cap, 16_384);
        assert_eq!(s.conn, ListenLimits::DEFAULT);
    }

    #[test]
    fn connection_limits_come_from_their_flags() {
        let s = args(&[
            "--max-connections",
            "7",
            "--header-read-timeout-ms",
            "250",
            "--body-timeout-ms",
            "300",
            "--h2-max-streams",
            "8",
            "--h2-keepalive-interval-ms",
            "400",
            "--h2-keepalive-timeout-ms",
            "500",
            "--h2-idle-timeout-ms",
            "600",
        ])
        .edge
        .validate()
        .expect("valid");
        assert_eq!(
            s.conn,
            ListenLimits {
                max_connections: 7,
                header_read_timeout: Duration::from_millis(250),
                h2_max_streams: 8,
                h2_keep_alive_interval: Duration::from_millis(400),
                h2_keep_alive_timeout: Duration::from_millis(500),
                h2_idle_timeout: Duration::from_millis(600),
                body_timeout: Duration::from_millis(300),
            }
        );
        let e = args(&["--max-connections", "0"])
            .edge
            .validate()
            .unwrap_err();
        assert_eq!(e.to_string(), "--max-connections must be at least 1");
        let e = args(&["--h2-max-streams", "0"])
            .edge
            .validate()
            .unwrap_err();
        assert_eq!(e.to_string(), "--h2-max-streams must be at least 1");
        let e = args(&["--header-read-timeout-ms", "0"])
            .edge
            .validate()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--header-read-timeout-ms must be at least 10"
        );
    }

    #[test]
    fn every_flag_has_a_prefixed_variable() {
        let cmd = command::<Args>(&SERVICE);
        let env = |id: &str| {
            cmd.get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(env("tls_listen").as_deref(), Some("TESTSVC_TLS_LISTEN"));
        assert_eq!(
            env("ping_interval_ms").as_deref(),
            Some("TESTSVC_PING_INTERVAL_MS")
        );
        assert_eq!(env("log_json").as_deref(), Some("TESTSVC_LOG_JSON"));
        assert_eq!(
            env("max_connections").as_deref(),
            Some("TESTSVC_MAX_CONNECTIONS")
        );
    }

    #[test]
    fn role_tokens_override_the_shared_one() {
        let s = args(&["--token", "both", "--dashboard-token", "dash"])
            .edge
            .validate()
            .expect("valid");
        let auth = s.auth();
        assert_eq!(auth.token(Role::Agent), Some("both"));
        assert_eq!(auth.token(Role::Dashboard), Some("dash"));
        let s = args(&["--agent-token", "", "--token", "both"])
            .edge
            .validate()
            .expect("valid");
        assert_eq!(s.auth().token(Role::Agent), Some("both"));
        let e = args(&["--allowed-origins", "https://ok.example,evil.example"])
            .edge
            .validate()
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--allowed-origins: `evil.example`"),
            "{e}"
        );
    }

    #[test]
    fn tls_options_come_from_their_flags() {
        let tls = ["--tls-cert", "c.pem", "--tls-key", "k.pem"];
        let s = args(&tls).edge.validate().expect("valid");
        assert_eq!(
            s.tls_options,
            TlsOptions {
                reload_every: Some(Duration::from_secs(5)),
                ..TlsOptions::default()
            }
        );
        assert!(!s.auth().agent_cert());
        let mut flags = tls.to_vec();
        flags.extend([
            "--tls-reload-ms",
            "0",
            "--tls-client-ca",
            "ca.pem",
            "--tls-client-auth",
            "optional",
            "--hsts-max-age-secs",
            "600",
            "--redirect-listen",
            "127.0.0.1:80",
        ]);
        let s = args(&flags).edge.validate().expect("valid");
        assert_eq!(
            s.tls_options,
            TlsOptions {
                reload_every: None,
                client_ca: Some("ca.pem".into()),
                client_auth: ClientAuth::Optional,
                hsts_max_age_secs: Some(600),
                redirect: Some("127.0.0.1:80".parse().expect("addr")),
            }
        );
        assert!(s.auth().agent_cert());
        for (flag, value) in [
            ("--tls-client-ca", "ca.pem"),
            ("--hsts-max-age-secs", "1"),
            ("--redirect-listen", "127.0.0.1:80"),
        ] {
            let e = args(&[flag, value]).edge.validate().unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("{flag} needs the TLS listener (--tls-cert and --tls-key)")
            );
        }
        let mut flags = tls.to_vec();
        flags.extend(["--tls-reload-ms", "50"]);
        let e = args(&flags).edge.validate().unwrap_err();
        assert!(matches!(e, EdgeConfigError::TlsReload), "{e}");
    }

    #[test]
    fn refusals_name_the_flag() {
        let e = args(&["--windows", "1s,fast"]).edge.validate().unwrap_err();
        assert!(e.to_string().contains("--windows"), "{e}");
        let e = args(&["--listen", "nowhere"]).edge.validate().unwrap_err();
        assert!(e.to_string().contains("nowhere"), "{e}");
        let e = args(&["--tls-cert", "x.pem"]).edge.validate().unwrap_err();
        assert!(matches!(e, EdgeConfigError::TlsPair));
        let e = args(&["--max-message", "10"]).edge.validate().unwrap_err();
        assert_eq!(e.to_string(), "--max-message must be at least 256");
        let e = args(&["--ping-timeout-ms", "0"])
            .edge
            .validate()
            .unwrap_err();
        assert_eq!(e.to_string(), "--ping-timeout-ms must be at least 10");
        assert!(args(&["--listen", "off"])
            .edge
            .validate()
            .expect("valid")
            .no_listener());
    }
}

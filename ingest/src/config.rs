//! Configuration: one set of clap flags (each with an environment variable) shared by the roles,
//! validated by a pure function into [`Settings`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use metrics_edge::hub::QueueLimits;
use metrics_edge::ws::WsConfig;
use metrics_model::window::{WindowSpec, WindowSpecError};
use metrics_model::Limits;

/// System 1: agents POST samples over HTTP/1.1, HTTP/2 or HTTP/2+TLS; samples are stored in a
/// Redis Stream before the agent hears 202; workers aggregate and publish over Pub/Sub; a
/// WebSocket broadcaster serves dashboards.
#[derive(Parser, Debug, Clone)]
#[command(name = "ingest", version)]
pub struct Args {
    #[command(subcommand)]
    pub role: Option<Role>,
    /// Redis to use.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    pub redis_url: String,
    /// Prefix of every Redis key (stream, hashes, channel), so several deployments can share one Redis.
    #[arg(long, env = "INGEST_PREFIX", default_value = "metrics", global = true)]
    pub prefix: String,
    /// Plaintext listener: HTTP/1.1 and HTTP/2 with prior knowledge (h2c). "off" disables it.
    #[arg(
        long,
        env = "INGEST_LISTEN",
        default_value = "127.0.0.1:8081",
        global = true
    )]
    pub listen: String,
    /// TLS listener (ALPN h2 and http/1.1), used when --tls-cert and --tls-key are given.
    #[arg(
        long,
        env = "INGEST_TLS_LISTEN",
        default_value = "127.0.0.1:8444",
        global = true
    )]
    pub tls_listen: SocketAddr,
    /// PEM certificate chain for the TLS listener.
    #[arg(long, env = "INGEST_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS listener.
    #[arg(long, env = "INGEST_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
    /// Bearer token required from agents and dashboards. Unset: open.
    #[arg(long, env = "INGEST_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Largest request body in bytes, before and after decompression (over it: 413).
    #[arg(long, env = "INGEST_MAX_BODY", default_value_t = 1 << 20, global = true)]
    pub max_body: usize,
    /// Most samples in one request.
    #[arg(
        long,
        env = "INGEST_MAX_BATCH",
        default_value_t = 10_000,
        global = true
    )]
    pub max_batch: usize,
    /// Milliseconds a request waits for Redis before it gets 503.
    #[arg(
        long,
        env = "INGEST_DEADLINE_MS",
        default_value_t = 2_000,
        global = true
    )]
    pub deadline_ms: u64,
    /// Response timeout of Redis connections, in milliseconds (keep it above the deadline).
    #[arg(
        long,
        env = "INGEST_REDIS_TIMEOUT_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub redis_timeout_ms: u64,
    /// Pipelines in flight at once (each on its own pooled connection).
    #[arg(long, env = "INGEST_WRITERS", default_value_t = 4, global = true)]
    pub writers: usize,
    /// Most requests coalesced into one pipeline.
    #[arg(
        long,
        env = "INGEST_MAX_PIPELINE",
        default_value_t = 512,
        global = true
    )]
    pub max_pipeline: usize,
    /// Approximate cap of the stream, in entries (XADD MAXLEN ~). One entry is one request.
    #[arg(
        long,
        env = "INGEST_MAXLEN",
        default_value_t = 1_000_000,
        global = true
    )]
    pub maxlen: u64,
    /// This process's id in stream entries and as a consumer name. Default: host-pid.
    #[arg(long, env = "INGEST_NODE_ID", global = true)]
    pub node_id: Option<String>,
    /// Entries a worker reads at once.
    #[arg(
        long,
        env = "INGEST_WORKER_BATCH",
        default_value_t = 256,
        global = true
    )]
    pub worker_batch: usize,
    /// Milliseconds after which a pending entry of a silent worker is claimed by another.
    #[arg(
        long,
        env = "INGEST_CLAIM_IDLE_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub claim_idle_ms: u64,
    /// Milliseconds the window leader's lease lasts without renewal.
    #[arg(long, env = "INGEST_LEASE_MS", default_value_t = 3_000, global = true)]
    pub lease_ms: u64,
    /// Aggregation windows, comma-separated (the same roll-up as System 2).
    #[arg(
        long,
        env = "INGEST_WINDOWS",
        default_value = "1s,10s,60s",
        global = true
    )]
    pub windows: String,
    /// Most (server, metric) series aggregated at once.
    #[arg(
        long,
        env = "INGEST_MAX_SERIES",
        default_value_t = 1_000_000,
        global = true
    )]
    pub max_series: usize,
    /// Sample events queued per dashboard before its oldest are dropped (and counted).
    #[arg(
        long,
        env = "INGEST_DASHBOARD_QUEUE",
        default_value_t = 16_384,
        global = true
    )]
    pub dashboard_queue: usize,
    /// Log as JSON lines.
    #[arg(long, env = "INGEST_LOG_JSON", global = true)]
    pub log_json: bool,
    /// Fault injection (tests only): a worker sleeps this many ms between reading a batch and
    /// publishing it.
    #[arg(long, env = "INGEST_FAULT_PAUSE_MS", hide = true, global = true)]
    pub fault_pause_ms: Option<u64>,
}

/// Which parts run in this process.
#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Front door, worker and broadcaster in one process (the default).
    All,
    /// The HTTP front door only: POST /metrics, /metrics/stream, /healthz, /readyz.
    Front,
    /// A worker only (run several; they share the stream through a consumer group).
    Worker,
    /// The dashboard broadcaster only: GET / and /ws.
    Broadcaster,
}

/// Validated settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub role: Role,
    pub redis_url: String,
    pub prefix: String,
    pub listen: Option<SocketAddr>,
    pub tls: Option<(SocketAddr, PathBuf, PathBuf)>,
    pub token: Option<String>,
    pub max_body: usize,
    pub limits: Limits,
    pub deadline: Duration,
    pub redis_timeout: Duration,
    pub writers: usize,
    pub max_pipeline: usize,
    pub maxlen: u64,
    pub node_id: String,
    pub worker_batch: usize,
    pub claim_idle: Duration,
    pub lease: Duration,
    pub windows: Vec<WindowSpec>,
    pub max_series: usize,
    pub queue: QueueLimits,
    pub ws: WsConfig,
    pub fault_pause: Option<Duration>,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--windows: {0}")]
    Windows(#[from] WindowSpecError),
    #[error("--listen: `{0}` is not an address like 127.0.0.1:8081 (or \"off\")")]
    Listen(String),
    #[error("--tls-cert and --tls-key go together")]
    TlsPair,
    #[error("the {0} role needs a listener: give --listen or --tls-cert/--tls-key")]
    NoListener(&'static str),
    #[error("--{0} must be at least {1}")]
    TooSmall(&'static str, u64),
    #[error("--prefix must be 1 to 64 characters of A-Z a-z 0-9 _ . : -")]
    Prefix,
    #[error("--redis-timeout-ms ({0}) must be above --deadline-ms ({1})")]
    Timeouts(u64, u64),
}

impl Args {
    /// Checks the flags and builds the settings.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let role = self.role.unwrap_or(Role::All);
        let listen = match self.listen.trim() {
            "off" | "" => None,
            a => Some(a.parse().map_err(|_| ConfigError::Listen(a.to_string()))?),
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some((self.tls_listen, c.clone(), k.clone())),
            (None, None) => None,
            _ => return Err(ConfigError::TlsPair),
        };
        if role != Role::Worker && listen.is_none() && tls.is_none() {
            return Err(ConfigError::NoListener(match role {
                Role::Front => "front",
                Role::Broadcaster => "broadcaster",
                _ => "all",
            }));
        }
        if self.prefix.is_empty()
            || self.prefix.len() > 64
            || !metrics_model::decode::valid_name(&self.prefix)
        {
            return Err(ConfigError::Prefix);
        }
        for (name, v, min) in [
            ("max-body", self.max_body as u64, 1024),
            ("max-batch", self.max_batch as u64, 1),
            ("deadline-ms", self.deadline_ms, 10),
            ("writers", self.writers as u64, 1),
            ("max-pipeline", self.max_pipeline as u64, 1),
            ("maxlen", self.maxlen, 1000),
            ("worker-batch", self.worker_batch as u64, 1),
            ("claim-idle-ms", self.claim_idle_ms, 100),
            ("lease-ms", self.lease_ms, 300),
            ("dashboard-queue", self.dashboard_queue as u64, 16),
        ] {
            if v < min {
                return Err(ConfigError::TooSmall(name, min));
            }
        }
        if self.redis_timeout_ms <= self.deadline_ms {
            return Err(ConfigError::Timeouts(
                self.redis_timeout_ms,
                self.deadline_ms,
            ));
        }
        let node_id = self.node_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "node".into());
            format!("{host}-{}", std::process::id())
        });
        Ok(Settings {
            role,
            redis_url: self.redis_url.clone(),
            prefix: self.prefix.clone(),
            listen,
            tls,
            token: self.token.clone().filter(|t| !t.is_empty()),
            max_body: self.max_body,
            limits: Limits {
                max_batch: self.max_batch,
                ..Limits::default()
            },
            deadline: Duration::from_millis(self.deadline_ms),
            redis_timeout: Duration::from_millis(self.redis_timeout_ms),
            writers: self.writers,
            max_pipeline: self.max_pipeline,
            maxlen: self.maxlen,
            node_id,
            worker_batch: self.worker_batch,
            claim_idle: Duration::from_millis(self.claim_idle_ms),
            lease: Duration::from_millis(self.lease_ms),
            windows: WindowSpec::parse_list(&self.windows)?,
            max_series: self.max_series,
            queue: QueueLimits {
                sample_cap: self.dashboard_queue,
                other_cap: (self.dashboard_queue * 16).max(65_536),
            },
            ws: WsConfig::default(),
            fault_pause: self.fault_pause_ms.map(Duration::from_millis),
        })
    }
}

impl Settings {
    /// Settings for tests and embedding: all roles, plaintext on 127.0.0.1:0, Redis at `url`.
    pub fn local(redis_url: &str) -> Self {
        Args::parse_from([
            "ingest",
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            redis_url,
        ])
        .validate()
        .expect("default settings are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["ingest"];
        v.extend_from_slice(extra);
        Args::parse_from(v)
    }

    #[test]
    fn defaults_and_roles() {
        let s = args(&[]).validate().expect("valid");
        assert_eq!(s.role, Role::All);
        assert_eq!(s.deadline, Duration::from_secs(2));
        assert_eq!(
            args(&["worker", "--listen", "off"])
                .validate()
                .expect("worker")
                .role,
            Role::Worker
        );
        assert!(matches!(
            args(&["front", "--listen", "off"]).validate(),
            Err(ConfigError::NoListener("front"))
        ));
    }

    #[test]
    fn refusals_name_the_flag() {
        let e = args(&["--redis-timeout-ms", "100"]).validate().unwrap_err();
        assert!(e.to_string().contains("--redis-timeout-ms"), "{e}");
        let e = args(&["--prefix", "a b"]).validate().unwrap_err();
        assert!(e.to_string().contains("--prefix"), "{e}");
        let e = args(&["--tls-cert", "x.pem"]).validate().unwrap_err();
        assert!(matches!(e, ConfigError::TlsPair));
        let e = args(&["--maxlen", "10"]).validate().unwrap_err();
        assert_eq!(e.to_string(), "--maxlen must be at least 1000");
    }
}

//! Configuration: clap flags, each also read from an environment variable, validated by a pure
//! function into [`Settings`] so tests build settings without touching the process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use metrics_edge::hub::QueueLimits;
use metrics_edge::ws::WsConfig;
use metrics_model::window::{WindowSpec, WindowSpecError};
use metrics_model::Limits;

use crate::aggregate::AggregatorOptions;

/// System 2: agents stream samples over WebSocket into an in-memory windowed aggregator;
/// dashboards and agents get samples and window statistics back within milliseconds.
#[derive(Parser, Debug, Clone)]
#[command(name = "aggregator", version)]
pub struct Args {
    /// Plaintext listener (HTTP/1.1 + WebSocket). "off" disables it.
    #[arg(long, env = "AGG_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// TLS listener, used when --tls-cert and --tls-key are given.
    #[arg(long, env = "AGG_TLS_LISTEN", default_value = "127.0.0.1:8443")]
    pub tls_listen: SocketAddr,
    /// PEM certificate chain for the TLS listener (see certs/README.md).
    #[arg(long, env = "AGG_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS listener.
    #[arg(long, env = "AGG_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Bearer token required from agents and dashboards (header or ?token=). Unset: open.
    #[arg(long, env = "AGG_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Aggregation windows, comma-separated (tumbling, aligned to the wall clock).
    #[arg(long, env = "AGG_WINDOWS", default_value = "1s,10s,60s")]
    pub windows: String,
    /// Largest WebSocket frame or message from a client, in bytes (over it: close 1009).
    #[arg(long, env = "AGG_MAX_MESSAGE", default_value_t = 1 << 20)]
    pub max_message: usize,
    /// Most samples in one array frame.
    #[arg(long, env = "AGG_MAX_BATCH", default_value_t = 10_000)]
    pub max_batch: usize,
    /// Sample events queued per dashboard before its oldest are dropped (and counted).
    #[arg(long, env = "AGG_DASHBOARD_QUEUE", default_value_t = 16_384)]
    pub dashboard_queue: usize,
    /// Batches the connection-to-aggregator ring holds before connections wait.
    #[arg(long, env = "AGG_RING", default_value_t = 65_536)]
    pub ring: usize,
    /// Most (server, metric) series aggregated at once.
    #[arg(long, env = "AGG_MAX_SERIES", default_value_t = 1_000_000)]
    pub max_series: usize,
    /// Seconds of silence before the server pings a socket.
    #[arg(long, env = "AGG_PING_INTERVAL", default_value_t = 15)]
    pub ping_interval: u64,
    /// Seconds a pinged socket has to answer before it is closed.
    #[arg(long, env = "AGG_PING_TIMEOUT", default_value_t = 10)]
    pub ping_timeout: u64,
    /// Built-in simulated agents to start (0: none). They connect over the plaintext listener.
    #[arg(long, env = "AGG_SIMULATE", default_value_t = 0)]
    pub simulate: usize,
    /// Samples per second each simulated agent sends.
    #[arg(long, env = "AGG_SIMULATE_RATE", default_value_t = 10.0)]
    pub simulate_rate: f64,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "AGG_LOG_JSON")]
    pub log_json: bool,
}

/// Validated settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: Option<SocketAddr>,
    pub tls: Option<(SocketAddr, PathBuf, PathBuf)>,
    pub token: Option<String>,
    pub aggregator: AggregatorOptions,
    pub limits: Limits,
    pub ws: WsConfig,
    pub queue: QueueLimits,
    pub simulate: usize,
    pub simulate_rate: f64,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--windows: {0}")]
    Windows(#[from] WindowSpecError),
    #[error("--listen: `{0}` is not an address like 127.0.0.1:8080 (or \"off\")")]
    Listen(String),
    #[error("no listener: give --listen or --tls-cert/--tls-key")]
    NoListener,
    #[error("--{0} must be at least {1}")]
    TooSmall(&'static str, u64),
    #[error("--simulate needs the plaintext listener (--listen)")]
    SimulateNeedsPlain,
    #[error("--simulate-rate must be between 0.01 and 100000")]
    Rate,
}

impl Args {
    /// Checks the flags and builds the settings.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let listen = match self.listen.trim() {
            "off" | "" => None,
            a => Some(a.parse().map_err(|_| ConfigError::Listen(a.to_string()))?),
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some((self.tls_listen, c.clone(), k.clone())),
            _ => None,
        };
        if listen.is_none() && tls.is_none() {
            return Err(ConfigError::NoListener);
        }
        for (name, v, min) in [
            ("max-message", self.max_message as u64, 256),
            ("max-batch", self.max_batch as u64, 1),
            ("dashboard-queue", self.dashboard_queue as u64, 16),
            ("ring", self.ring as u64, 16),
            ("max-series", self.max_series as u64, 1),
            ("ping-interval", self.ping_interval, 1),
            ("ping-timeout", self.ping_timeout, 1),
        ] {
            if v < min {
                return Err(ConfigError::TooSmall(name, min));
            }
        }
        if self.simulate > 0 && listen.is_none() {
            return Err(ConfigError::SimulateNeedsPlain);
        }
        if !(0.01..=100_000.0).contains(&self.simulate_rate) {
            return Err(ConfigError::Rate);
        }
        Ok(Settings {
            listen,
            tls,
            token: self.token.clone().filter(|t| !t.is_empty()),
            aggregator: AggregatorOptions {
                windows: WindowSpec::parse_list(&self.windows)?,
                ring_capacity: self.ring,
                max_series: self.max_series,
            },
            limits: Limits {
                max_batch: self.max_batch,
                ..Limits::default()
            },
            ws: WsConfig {
                max_message: self.max_message,
                ping_interval: Duration::from_secs(self.ping_interval),
                ping_timeout: Duration::from_secs(self.ping_timeout),
                ..WsConfig::default()
            },
            queue: QueueLimits {
                sample_cap: self.dashboard_queue,
                other_cap: (self.dashboard_queue * 16).max(65_536),
            },
            simulate: self.simulate,
            simulate_rate: self.simulate_rate,
        })
    }
}

impl Settings {
    /// Settings for tests and embedding: plaintext on 127.0.0.1:0, default limits.
    pub fn local() -> Self {
        Args::parse_from(["aggregator", "--listen", "127.0.0.1:0"])
            .validate()
            .expect("default settings are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["aggregator"];
        v.extend_from_slice(extra);
        Args::parse_from(v)
    }

    #[test]
    fn defaults_are_valid() {
        let s = args(&[]).validate().expect("valid");
        assert_eq!(s.listen, Some("127.0.0.1:8080".parse().expect("addr")));
        assert!(s.tls.is_none());
        let labels: Vec<_> = s
            .aggregator
            .windows
            .iter()
            .map(|w| w.label.as_str())
            .collect();
        assert_eq!(labels, ["1s", "10s", "60s"]);
    }

    #[test]
    fn refusals_name_the_flag() {
        let e = args(&["--windows", "1s,fast"]).validate().unwrap_err();
        assert!(e.to_string().contains("--windows"), "{e}");
        let e = args(&["--listen", "off"]).validate().unwrap_err();
        assert!(matches!(e, ConfigError::NoListener));
        let e = args(&["--max-message", "10"]).validate().unwrap_err();
        assert_eq!(e.to_string(), "--max-message must be at least 256");
        let e = args(&["--listen", "nowhere"]).validate().unwrap_err();
        assert!(e.to_string().contains("nowhere"));
    }
}

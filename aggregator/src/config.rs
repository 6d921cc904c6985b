//! Configuration: clap flags, each also read from an environment variable (`AGG_*`), validated
//! by a pure function into [`Settings`] so tests build settings without touching the process.
//! The flags both systems share (listeners, TLS, token, limits, liveness, windows) are
//! [`EdgeArgs`], defined once in `metrics-edge`; this file holds System 2's own.

use clap::Parser;
use metrics_edge::config::{self, EdgeArgs, EdgeConfigError, EdgeSettings, Service, ServiceArgs};

use crate::aggregate::{AggregatorOptions, DEFAULT_MAX_SERVERS, DEFAULT_RING_BYTES};

/// System 2's defaults and environment prefix.
pub const SERVICE: Service = Service {
    env_prefix: "AGG",
    listen: "127.0.0.1:8080",
    tls_listen: "127.0.0.1:8443",
};

/// System 2: agents stream samples over WebSocket into an in-memory windowed aggregator;
/// dashboards and agents get samples and window statistics back within milliseconds.
#[derive(Parser, Debug, Clone)]
#[command(name = "aggregator", version)]
pub struct Args {
    #[command(flatten)]
    pub edge: EdgeArgs,
    /// Batches the connection-to-aggregator ring holds before connections wait.
    #[arg(long, default_value_t = 65_536)]
    pub ring: usize,
    /// Bytes of decoded samples the connection-to-aggregator ring holds before connections
    /// wait (an empty ring always takes one batch, however large).
    #[arg(long, default_value_t = DEFAULT_RING_BYTES)]
    pub ring_bytes: usize,
    /// Most servers the aggregator keeps state for; samples of a new server past it are not
    /// aggregated (counted in /stats as serversRefused; the agent gets an `error` event).
    /// Servers silent for two of the longest windows are forgotten.
    #[arg(long, default_value_t = DEFAULT_MAX_SERVERS)]
    pub max_servers: usize,
    /// Built-in simulated agents to start (0: none). They connect over the plaintext listener.
    #[arg(long, default_value_t = 0)]
    pub simulate: usize,
    /// Samples per second each simulated agent sends.
    #[arg(long, default_value_t = 10.0)]
    pub simulate_rate: f64,
}

/// Validated settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub edge: EdgeSettings,
    pub ring: usize,
    pub ring_bytes: usize,
    pub max_servers: usize,
    pub simulate: usize,
    pub simulate_rate: f64,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Edge(#[from] EdgeConfigError),
    #[error("no listener: give --listen or --tls-cert/--tls-key")]
    NoListener,
    #[error("--simulate needs the plaintext listener (--listen)")]
    SimulateNeedsPlain,
    #[error("--simulate-rate must be between 0.01 and 100000")]
    Rate,
}

impl ServiceArgs for Args {
    const SERVICE: Service = SERVICE;
    type Settings = Settings;
    type Error = ConfigError;

    fn edge(&self) -> &EdgeArgs {
        &self.edge
    }

    /// Checks the flags and builds the settings.
    fn validate(&self) -> Result<Settings, ConfigError> {
        let edge = self.edge.validate()?;
        if edge.no_listener() {
            return Err(ConfigError::NoListener);
        }
        config::at_least(&[
            ("ring", self.ring as u64, 16),
            ("ring-bytes", self.ring_bytes as u64, 1 << 20),
            ("max-servers", self.max_servers as u64, 1),
        ])?;
        if self.simulate > 0 && edge.listen.is_none() {
            return Err(ConfigError::SimulateNeedsPlain);
        }
        if !(0.01..=100_000.0).contains(&self.simulate_rate) {
            return Err(ConfigError::Rate);
        }
        Ok(Settings {
            edge,
            ring: self.ring,
            ring_bytes: self.ring_bytes,
            max_servers: self.max_servers,
            simulate: self.simulate,
            simulate_rate: self.simulate_rate,
        })
    }
}

impl Settings {
    /// Settings for tests and embedding: plaintext on 127.0.0.1:0, default limits.
    pub fn local() -> Self {
        config::parse_flags::<Args>(&SERVICE, &["--listen", "127.0.0.1:0"])
            .expect("default flags parse")
            .validate()
            .expect("default settings are valid")
    }

    /// What the aggregator thread needs.
    pub fn aggregator(&self) -> AggregatorOptions {
        AggregatorOptions {
            windows: self.edge.windows.clone(),
            ring_capacity: self.ring,
            ring_bytes: self.ring_bytes,
            max_series: self.edge.max_series,
            max_servers: self.max_servers,
            window_spread_ms: self.edge.window_spread_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> Args {
        config::parse_flags(&SERVICE, flags).expect("parses")
    }

    #[test]
    fn defaults_are_valid() {
        let s = args(&[]).validate().expect("valid");
        assert_eq!(s.edge.listen, Some("127.0.0.1:8080".parse().expect("addr")));
        assert!(s.edge.tls.is_none());
        assert_eq!(s.edge.window_labels(), ["1s", "10s", "60s"]);
        assert_eq!(s.ring, 65_536);
        assert_eq!(s.ring_bytes, 256 << 20);
        assert_eq!(s.max_servers, 100_000);
    }

    #[test]
    fn refusals_name_the_flag() {
        let e = args(&["--windows", "1s,fast"]).validate().unwrap_err();
        assert!(e.to_string().contains("--windows"), "{e}");
        let e = args(&["--listen", "off"]).validate().unwrap_err();
        assert!(matches!(e, ConfigError::NoListener));
        let e = args(&["--ring", "10"]).validate().unwrap_err();
        assert_eq!(e.to_string(), "--ring must be at least 16");
        let e = args(&["--max-servers", "0"]).validate().unwrap_err();
        assert_eq!(e.to_string(), "--max-servers must be at least 1");
        let e = args(&["--ring-bytes", "1000"]).validate().unwrap_err();
        assert_eq!(e.to_string(), "--ring-bytes must be at least 1048576");
        let e = args(&["--listen", "off", "--simulate", "2"]).validate();
        assert!(matches!(e, Err(ConfigError::NoListener)), "{e:?}");
    }
}

//! Test harness: a real server on 127.0.0.1:0 and real WebSocket clients.
#![allow(dead_code)]

use std::sync::Arc;

use aggregator::{Server, Settings};
pub use metrics_edge::testing::*;
use metrics_model::window::WindowSpec;

/// System 2 started for a test: addresses, hub, shutdown.
pub type TestServer = Started;

/// Settings with short windows so tests see `window` events quickly.
pub fn settings() -> Settings {
    let mut s = Settings::local();
    s.edge.windows = WindowSpec::parse_list("200ms,1s").expect("windows");
    s
}

pub async fn start(settings: Settings) -> TestServer {
    start_with_tls(settings, None).await
}

pub async fn start_with_tls(
    settings: Settings,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> TestServer {
    metrics_edge::testing::start::<Server>(settings, tls).await
}

/// A sample frame as the Node.js agents send it.
pub fn sample(server: &str, cpu: f64) -> String {
    format!(
        r#"{{"serverId":"{server}","timestamp":1764349200123,"metrics":{{"cpu":{cpu},"memory":61.2,"network":{{"in":812,"out":230}}}}}}"#
    )
}

//! Test harness: a real server on 127.0.0.1:0 and real WebSocket clients.
#![allow(dead_code)]

pub mod cdp;
pub mod chromium;

use std::net::SocketAddr;
use std::sync::Arc;

use aggregator::{Server, Settings};
pub use metrics_edge::testing::*;
use metrics_model::window::WindowSpec;
use tokio_util::sync::CancellationToken;

pub struct TestServer {
    pub addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub shutdown: CancellationToken,
    pub hub: Arc<metrics_edge::hub::Hub>,
    pub aggregator: Arc<aggregator::aggregate::Aggregator>,
    pub done: tokio::task::JoinHandle<()>,
}

/// Settings with short windows so tests see `window` events quickly.
pub fn settings() -> Settings {
    let mut s = Settings::local();
    s.aggregator.windows = WindowSpec::parse_list("200ms,1s").expect("windows");
    s
}

pub async fn start(settings: Settings) -> TestServer {
    start_with_tls(settings, None).await
}

pub async fn start_with_tls(
    settings: Settings,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> TestServer {
    let shutdown = CancellationToken::new();
    let server = Server::start(settings, local_listeners(tls).await, shutdown.clone())
        .expect("server starts");
    let addr = server.plain_addr.expect("plain addr");
    let tls_addr = server.tls_addr;
    let hub = server.hub.clone();
    let aggregator = server.aggregator.clone();
    let done = tokio::spawn(server.wait());
    TestServer {
        addr,
        tls_addr,
        shutdown,
        hub,
        aggregator,
        done,
    }
}

/// A sample frame as the Node.js agents send it.
pub fn sample(server: &str, cpu: f64) -> String {
    format!(
        r#"{{"serverId":"{server}","timestamp":1764349200123,"metrics":{{"cpu":{cpu},"memory":61.2,"network":{{"in":812,"out":230}}}}}}"#
    )
}

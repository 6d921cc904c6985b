//! Network plumbing shared by System 1 (`ingest`) and System 2 (`aggregator`).
//!
//! Both systems face the same clients, so everything between the socket and the metric model
//! lives here once:
//!
//! - [`tls`]: rustls server configuration from PEM files, with ALPN.
//! - [`listener`]: the accept loop: plaintext or TLS, HTTP/1.1 and HTTP/2 on one port, WebSocket
//!   upgrades, header-read timeout and graceful shutdown.
//! - [`auth`]: the optional bearer token, compared in constant time.
//! - [`ws`]: WebSocket sessions: message reassembly with size limits, the close codes the
//!   contract requires (1007, 1009, 1002), pings and the outgoing writer.
//! - [`hub`]: dashboard fan-out with a bounded queue per client that sheds old `sample` events
//!   and never `window` events; [`frame_budget`]: with many dashboards, their writers group
//!   events into fewer frames.
//! - [`dashboard`]: the `/ws` dashboard session, and [`page`]: the embedded dashboard page.
//! - [`http`]: response helpers (JSON errors, the page).
//! - [`config`]: the flags both services take; [`lifecycle`]: shutdown and task tracking;
//!   [`process`]: logging and the signal; [`backoff`]: reconnect pacing; [`service`]: what a
//!   started server of either system is.
//! - [`admin`]: the admin listener's `GET /metrics` (Prometheus text), request counters, spans
//!   and the access log.

pub mod admin;
pub mod auth;
pub mod backoff;
pub mod client;
pub mod config;
pub mod dashboard;
pub mod frame_budget;
pub mod http;
pub mod hub;
pub mod lifecycle;
pub mod listener;
pub mod page;
pub mod process;
pub mod service;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod tls;
pub mod ws;

//! System 2 of the comparison: WebSocket ingest into an in-memory aggregator.
//!
//! Agents stream JSON frames over WebSocket ([`agent`]); each frame is decoded on its
//! connection's task, its samples go straight to the dashboards as `sample` events and, through
//! a lock-free ring buffer, to one aggregator thread ([`aggregate`]) that keeps tumbling windows
//! per (server, metric) and per metric across servers. Closed windows go back to dashboards and
//! to the agents that sent those servers. Nothing is durable: that is System 1's job, and the
//! trade this system exists to measure.

pub mod agent;
pub mod aggregate;
pub mod config;
pub mod server;
pub mod simulate;

pub use config::{Args, Settings};
pub use metrics_edge::service::Service;
pub use server::{Listeners, Server};

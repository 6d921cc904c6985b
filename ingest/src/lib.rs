//! System 1 of the comparison: durable ingest through Redis.
//!
//! Agents `POST /metrics` over HTTP/1.1, HTTP/2 cleartext or HTTP/2 over TLS ([`front`]); each
//! request's samples become one Redis Stream entry, written through pipelines that coalesce the
//! writes of concurrent requests ([`store`]); the agent hears `202` only once Redis has the
//! entry. Workers in a consumer group ([`worker`]) turn entries into `sample` events, keep a
//! snapshot hash per server and publish over Pub/Sub; one of them (the window leader) also runs
//! the same window roll-up as System 2. A broadcaster ([`broadcast`]) relays Pub/Sub to
//! dashboards over WebSocket, and replays the stream to a dashboard that reconnects with
//! `?since=ID` ([`replay`]); snapshots come from the workers' hashes ([`snapshot`]). The formats
//! of what is stored in the stream and published on the channel are in [`wire`], the key
//! layout in [`keys`].

pub mod broadcast;
pub mod config;
pub mod front;
pub mod keys;
pub mod replay;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod wire;
pub mod worker;

pub use config::{Args, Role, Settings};
pub use metrics_edge::service::Service;
pub use server::{Listeners, Server};

//! The metric sample model shared by System 1 (HTTP + Redis) and System 2 (WebSocket + memory).
//!
//! Both systems accept the same agents, compute the same window statistics and speak the same
//! dashboard protocol, so everything that defines *what* a sample is and *how* it is reported
//! lives here, free of any I/O:
//!
//! - [`sample`]: the validated, flattened sample both systems carry internally.
//! - [`decode`]: JSON (single, array, NDJSON) to samples, enforcing the wire contract of
//!   `docs/API.md`, with errors that name the offending sample and field.
//! - [`control`]: the control messages on a WebSocket (register, subscribe, snapshot).
//! - [`window`]: tumbling wall-clock windows with exact count/min/max/mean and bounded-memory
//!   quantiles (p50/p95/p99 within 1 % relative error).
//! - [`event`]: the dashboard event encoding (`sample`, `window`, `hello`, ...).
//! - [`rollup`]: the window state over many servers that both systems run.
//! - [`pacing`]: the window events of one close let out evenly over `--window-spread-ms`.
//! - [`random_walk`]: fake agents' metrics, for the simulated agents and the bench's load.

pub mod control;
pub mod decode;
pub mod event;
mod fast;
pub mod pacing;
pub mod random_walk;
pub mod rollup;
pub mod sample;
pub mod window;

pub use decode::{DecodeError, Decoder, Limits};
pub use sample::{Metrics, Sample};
pub use window::{QuantileSketch, WindowSpec, WindowStats};

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch, from the system clock (the end-to-end latency clock).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

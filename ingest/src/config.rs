//! Configuration: one set of clap flags (each with an environment variable, `INGEST_*`) shared
//! by the roles, validated by a pure function into [`Settings`]. The flags both systems share
//! (listeners, TLS, token, limits, liveness, windows) are [`EdgeArgs`], defined once in
//! `metrics-edge`; this file holds System 1's own.

use std::time::Duration;

use crate::front::protocols::{self, Fold, Mapping};
use clap::{Parser, Subcommand};
use metrics_edge::config::{self, EdgeArgs, EdgeConfigError, EdgeSettings, Service, ServiceArgs};

/// System 1's defaults and environment prefix.
pub const SERVICE: Service = Service {
    env_prefix: "INGEST",
    listen: "127.0.0.1:8081",
    tls_listen: "127.0.0.1:8444",
};

/// System 1: agents POST samples over HTTP/1.1, HTTP/2 or HTTP/2+TLS; samples are stored in a
/// Redis Stream before the agent hears 202; workers aggregate and publish over Pub/Sub; a
/// WebSocket broadcaster serves dashboards.
#[derive(Parser, Debug, Clone)]
#[command(name = "ingest", version)]
pub struct Args {
    #[command(subcommand)]
    pub role: Option<Role>,
    #[command(flatten)]
    pub edge: EdgeArgs,
    /// Redis to use (`redis://[user:password@]host:port[/db]`; the password is never shown or
    /// logged).
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    pub redis_url: String,
    /// Prefix of every Redis key (stream, hashes, channel), so several deployments can share one Redis.
    #[arg(long, default_value = "metrics", global = true)]
    pub prefix: String,
    /// Largest request body in bytes, before and after decompression (over it: 413).
    #[arg(long, default_value_t = 1 << 20, global = true)]
    pub max_body: usize,
    /// Milliseconds a request waits for Redis before it gets 503.
    #[arg(long, default_value_t = 2_000, global = true)]
    pub deadline_ms: u64,
    /// Response timeout of Redis connections, in milliseconds (keep it above the deadline).
    #[arg(long, default_value_t = 5_000, global = true)]
    pub redis_timeout_ms: u64,
    /// Pipelines in flight at once (each on its own pooled connection).
    #[arg(long, default_value_t = 4, global = true)]
    pub writers: usize,
    /// Most requests coalesced into one pipeline.
    #[arg(long, default_value_t = 512, global = true)]
    pub max_pipeline: usize,
    /// Entries the stream keeps (one per request), the window `?since=` replay reaches back
    /// over. The workers trim to it, never past entries not yet processed: a backlog makes the
    /// stream longer, not lossy.
    #[arg(long, default_value_t = 1_000_000, global = true)]
    pub maxlen: u64,
    /// Milliseconds a server's snapshot (latest values, last windows) outlives its latest
    /// sample; then it leaves snapshots, and Redis forgets it.
    #[arg(long, default_value_t = 3_600_000, global = true)]
    pub snapshot_ttl_ms: u64,
    /// This process's id in stream entries and as a consumer name. Default: host-pid.
    #[arg(long, global = true)]
    pub node_id: Option<String>,
    /// Most entries a worker processes as one batch (read in rounds under
    /// `--worker-read-bytes`).
    #[arg(long, default_value_t = 256, global = true)]
    pub worker_batch: usize,
    /// Milliseconds a worker lets entries gather between reads while they keep coming (up to
    /// 1000): at most one read a gather, so a steady flow is taken in batches, and each batch
    /// costs a read, a pipeline, a Pub/Sub message and a dashboard frame whatever its size.
    /// A worker that has waited longer (an idle stream) reads at once and takes the next
    /// entry as soon as it is written. 0, the default, reads again as soon as a batch is done:
    /// the lowest latency. At 20,000 samples/s in requests of 10, 2 ms took a quarter off
    /// Redis's CPU and about a tenth off System 1's, for 1.5 ms more at the median.
    #[arg(long, default_value_t = 0, global = true, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub worker_gather_ms: u64,
    /// Largest stream entry, in bytes: a request's samples as stored (metric names flattened,
    /// timestamps filled in). A `POST /metrics` past it gets 413 naming both sizes; the streaming
    /// endpoint splits a chunk's lines into several entries under it. Every role must agree
    /// on it: the workers size their reads by it.
    #[arg(long, default_value_t = 4 << 20, global = true)]
    pub max_entry_bytes: usize,
    /// Bytes of entries a worker holds at once: each `XREADGROUP` asks for at most
    /// (what is left of this) / `--max-entry-bytes` entries. The default lets a read take a
    /// whole `--worker-batch` of the largest entries (1 GiB); lower it to bound a worker's
    /// memory tighter, at a cost in latency (reads of fewer entries, one round trip each).
    #[arg(long, default_value_t = 1 << 30, global = true)]
    pub worker_read_bytes: usize,
    /// Largest Pub/Sub message a worker publishes, in bytes (Redis disconnects a subscriber
    /// whose output buffer passes `client-output-buffer-limit pubsub`, 32 MB by default).
    #[arg(long, default_value_t = 1 << 20, global = true)]
    pub pubsub_message_bytes: usize,
    /// Bytes of entries queued for (or in) the front door's pipelines to Redis; past it a
    /// request gets 503 with `Retry-After`.
    #[arg(long, default_value_t = 64 << 20, global = true)]
    pub writer_queue_bytes: usize,
    /// Metric names a server's snapshot hash keeps: samples with further names are still
    /// stored in the stream and published, but their new names stay out of the snapshot
    /// (counted as `snapshotFieldsRefused` in /stats, logged once per server).
    #[arg(long, default_value_t = 1_000, global = true)]
    pub max_fields_per_server: usize,
    /// Milliseconds after which a pending entry of a silent worker is claimed by another.
    #[arg(long, default_value_t = 5_000, global = true)]
    pub claim_idle_ms: u64,
    /// Milliseconds the window leader's lease lasts without renewal.
    #[arg(long, default_value_t = 3_000, global = true)]
    pub lease_ms: u64,
    /// Messages of closed windows kept in `{prefix}:windows:log` (about), from which a
    /// broadcaster that lost its Pub/Sub link recovers the windows published meanwhile. The
    /// leader writes about one a second with a few servers whose windows close together: the
    /// default then covers about two minutes of disconnection and keeps the log small (a soak
    /// run with 50 servers measured about 94 KB a message). It writes more with many servers: a
    /// close of more than 256 windows goes out in slices over `--window-spread-ms`, a message
    /// each (up to 51 a close at the default spread), so with thousands of servers the default
    /// covers seconds; raise it with the number of servers.
    #[arg(long, default_value_t = 120, global = true)]
    pub window_log_len: u64,
    /// Watermark adoptions the broadcaster keeps (about) in `{prefix}:broadcaster:resume`,
    /// from which a `?since=` replay finds where to start so that samples published out of
    /// order below `since` are not missed (about 10 minutes of a busy system at 4 a second).
    #[arg(long, default_value_t = 4_096, global = true)]
    pub resume_history: u64,
    /// OTLP resource attributes whose value is a sample's server id, tried in order.
    #[arg(long, default_value = "host.name,service.instance.id", global = true)]
    pub otlp_server_attributes: String,
    /// The Prometheus remote-write label whose value is a sample's server id.
    #[arg(long, default_value = "instance", global = true)]
    pub prom_server_label: String,
    /// The Influx line-protocol tag whose value is a sample's server id.
    #[arg(long, default_value = "host", global = true)]
    pub influx_server_tag: String,
    /// Server id of OTLP, remote-write and Influx values that carry none; without it such
    /// values are not stored (counted in `ingest_protocol_values_total`, and reported to OTLP
    /// clients as partial success).
    #[arg(long, global = true)]
    pub default_server_id: Option<String>,
    /// Labels (OTLP point attributes, Prometheus labels, Influx tags) folded into metric
    /// names as `.key_value`: `*` for all but the server's and --ignore-labels (in key
    /// order), or a comma-separated list (in that order; empty: none).
    #[arg(long, default_value = "*", global = true)]
    pub fold_labels: String,
    /// Labels never folded into names under `--fold-labels '*'`.
    #[arg(long, default_value = "job", global = true)]
    pub ignore_labels: String,
    /// Quantiles stored for OTLP histograms (as `.p50`, `.p99`, ...), estimated from their
    /// buckets: comma-separated fractions.
    #[arg(long, default_value = "0.5,0.9,0.99", global = true)]
    pub histogram_quantiles: String,
    /// Fault injection (tests only): a worker sleeps this many ms between reading a batch and
    /// publishing it.
    #[arg(long, hide = true, global = true)]
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
    pub edge: EdgeSettings,
    pub redis_url: String,
    pub prefix: String,
    pub max_body: usize,
    pub deadline: Duration,
    pub redis_timeout: Duration,
    pub writers: usize,
    pub max_pipeline: usize,
    pub maxlen: u64,
    pub snapshot_ttl: Duration,
    pub node_id: String,
    pub worker_batch: usize,
    pub worker_gather: Duration,
    pub max_entry_bytes: usize,
    pub worker_read_bytes: usize,
    pub pubsub_message_bytes: usize,
    pub writer_queue_bytes: usize,
    pub max_fields_per_server: usize,
    pub claim_idle: Duration,
    pub lease: Duration,
    pub window_log_len: u64,
    pub resume_history: u64,
    pub fault_pause: Option<Duration>,
    /// How the agents' protocols (OTLP, remote write, Influx) map to samples.
    pub mapping: Mapping,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Edge(#[from] EdgeConfigError),
    #[error("the {0} role needs a listener: give --listen or --tls-cert/--tls-key")]
    NoListener(&'static str),
    #[error("--prefix must be 1 to 64 characters of A-Z a-z 0-9 _ . : -")]
    Prefix,
    #[error("--redis-timeout-ms ({0}) must be above --deadline-ms ({1})")]
    Timeouts(u64, u64),
    #[error("--{0} ({1}) must be at least --max-entry-bytes ({2}): an entry of the largest size must fit")]
    BelowEntry(&'static str, usize, usize),
    #[error("--{0} ({1}) must be at most {2}")]
    AtMost(&'static str, usize, usize),
    #[error("--histogram-quantiles: {0}")]
    Quantiles(String),
    #[error("--default-server-id must be 1 to 128 characters of A-Z a-z 0-9 _ . : -")]
    DefaultServerId,
}

/// The smallest `--max-entry-bytes` and `--pubsub-message-bytes`: any one sample fits (at
/// most 256 metrics of 128-byte names, a 128-byte server id: about 40 KiB encoded), so a
/// streamed line is never refused for size alone and a Pub/Sub line never split.
pub const MIN_MESSAGE_BYTES: usize = 64 << 10;

/// The largest `--pubsub-message-bytes`: Redis's soft Pub/Sub output limit (8 MB held for
/// 60 s) by default.
pub const MAX_PUBSUB_MESSAGE_BYTES: usize = 8 << 20;

impl ServiceArgs for Args {
    const SERVICE: Service = SERVICE;
    type Settings = Settings;
    type Error = ConfigError;

    fn edge(&self) -> &EdgeArgs {
        &self.edge
    }

    /// Checks the flags and builds the settings.
    fn validate(&self) -> Result<Settings, ConfigError> {
        let role = self.role.unwrap_or(Role::All);
        let edge = self.edge.validate()?;
        if role != Role::Worker && edge.no_listener() {
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
        config::at_least(&[
            ("max-body", self.max_body as u64, 1024),
            ("deadline-ms", self.deadline_ms, 10),
            ("writers", self.writers as u64, 1),
            ("max-pipeline", self.max_pipeline as u64, 1),
            ("maxlen", self.maxlen, 1000),
            ("worker-batch", self.worker_batch as u64, 1),
            (
                "max-entry-bytes",
                self.max_entry_bytes as u64,
                MIN_MESSAGE_BYTES as u64,
            ),
            (
                "pubsub-message-bytes",
                self.pubsub_message_bytes as u64,
                MIN_MESSAGE_BYTES as u64,
            ),
            (
                "max-fields-per-server",
                self.max_fields_per_server as u64,
                1,
            ),
            ("claim-idle-ms", self.claim_idle_ms, 100),
            ("lease-ms", self.lease_ms, 300),
            ("snapshot-ttl-ms", self.snapshot_ttl_ms, 1000),
            ("window-log-len", self.window_log_len, 10),
            ("resume-history", self.resume_history, 16),
        ])?;
        if self.redis_timeout_ms <= self.deadline_ms {
            return Err(ConfigError::Timeouts(
                self.redis_timeout_ms,
                self.deadline_ms,
            ));
        }
        for (flag, v) in [
            ("worker-read-bytes", self.worker_read_bytes),
            ("writer-queue-bytes", self.writer_queue_bytes),
        ] {
            if v < self.max_entry_bytes {
                return Err(ConfigError::BelowEntry(flag, v, self.max_entry_bytes));
            }
        }
        for (flag, v, max) in [
            (
                "pubsub-message-bytes",
                self.pubsub_message_bytes,
                MAX_PUBSUB_MESSAGE_BYTES,
            ),
            // Entry sizes are counted as semaphore permits (u32) in the writer.
            ("max-entry-bytes", self.max_entry_bytes, 1 << 30),
        ] {
            if v > max {
                return Err(ConfigError::AtMost(flag, v, max));
            }
        }
        let mapping = self.mapping()?;
        let node_id = self.node_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "node".into());
            format!("{host}-{}", std::process::id())
        });
        Ok(Settings {
            role,
            edge,
            redis_url: self.redis_url.clone(),
            prefix: self.prefix.clone(),
            max_body: self.max_body,
            deadline: Duration::from_millis(self.deadline_ms),
            redis_timeout: Duration::from_millis(self.redis_timeout_ms),
            writers: self.writers,
            max_pipeline: self.max_pipeline,
            maxlen: self.maxlen,
            snapshot_ttl: Duration::from_millis(self.snapshot_ttl_ms),
            node_id,
            worker_batch: self.worker_batch,
            worker_gather: Duration::from_millis(self.worker_gather_ms),
            max_entry_bytes: self.max_entry_bytes,
            worker_read_bytes: self.worker_read_bytes,
            pubsub_message_bytes: self.pubsub_message_bytes,
            writer_queue_bytes: self.writer_queue_bytes,
            max_fields_per_server: self.max_fields_per_server,
            claim_idle: Duration::from_millis(self.claim_idle_ms),
            lease: Duration::from_millis(self.lease_ms),
            window_log_len: self.window_log_len,
            resume_history: self.resume_history,
            fault_pause: self.fault_pause_ms.map(Duration::from_millis),
            mapping,
        })
    }
}

impl Args {
    fn mapping(&self) -> Result<Mapping, ConfigError> {
        if let Some(id) = &self.default_server_id {
            if !metrics_model::decode::valid_name(id) {
                return Err(ConfigError::DefaultServerId);
            }
        }
        Ok(Mapping {
            otlp_server: protocols::list(&self.otlp_server_attributes),
            prom_server: self.prom_server_label.trim().to_string(),
            influx_server: self.influx_server_tag.trim().to_string(),
            default_server: self.default_server_id.clone(),
            fold: Fold::parse(&self.fold_labels),
            ignore: protocols::list(&self.ignore_labels),
            quantiles: protocols::parse_quantiles(&self.histogram_quantiles)
                .map_err(ConfigError::Quantiles)?,
        })
    }
}

impl Settings {
    /// Entries one `XREADGROUP` may ask for: as many as `--worker-read-bytes` holds at
    /// `--max-entry-bytes` each, at most `--worker-batch`.
    pub fn read_count(&self) -> usize {
        (self.worker_read_bytes / self.max_entry_bytes).clamp(1, self.worker_batch)
    }

    /// The Redis URL with its password, if any, replaced by `***`: for logs.
    pub fn redis_url_redacted(&self) -> String {
        redact_url(&self.redis_url)
    }

    /// Settings for tests and embedding: all roles, plaintext on 127.0.0.1:0, Redis at `url`.
    pub fn local(redis_url: &str) -> Self {
        let flags = ["--listen", "127.0.0.1:0", "--redis-url", redis_url];
        config::parse_flags::<Args>(&SERVICE, &flags)
            .expect("default flags parse")
            .validate()
            .expect("default settings are valid")
    }
}

/// `url` with the password of its user-info part (`scheme://user:password@host`) replaced by
/// `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> Args {
        config::parse_flags(&SERVICE, flags).expect("parses")
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
    fn passwords_in_the_redis_url_are_redacted() {
        assert_eq!(
            redact_url("redis://:hunter2@db:6379/0"),
            "redis://:***@db:6379/0"
        );
        assert_eq!(
            redact_url("rediss://app:p@ss:w0rd@db/1"),
            "rediss://app:***@db/1"
        );
        assert_eq!(redact_url("redis://db:6379"), "redis://db:6379");
        assert_eq!(redact_url("redis://user@db"), "redis://user@db");
    }

    #[test]
    fn refusals_name_the_flag() {
        let e = args(&["--redis-timeout-ms", "100"]).validate().unwrap_err();
        assert!(e.to_string().contains("--redis-timeout-ms"), "{e}");
        let e = args(&["--prefix", "a b"]).validate().unwrap_err();
        assert!(e.to_string().contains("--prefix"), "{e}");
        let e = args(&["--tls-cert", "x.pem"]).validate().unwrap_err();
        assert!(matches!(e, ConfigError::Edge(EdgeConfigError::TlsPair)));
        let e = args(&["--maxlen", "10"]).validate().unwrap_err();
        assert_eq!(e.to_string(), "--maxlen must be at least 1000");
        let e = args(&["--worker-read-bytes", "1000000"])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("--worker-read-bytes"), "{e}");
        let e = args(&["--writer-queue-bytes", "1000000"])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("--writer-queue-bytes"), "{e}");
        let e = args(&["--pubsub-message-bytes", "1000"])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("--pubsub-message-bytes"), "{e}");
        let e = args(&["--pubsub-message-bytes", "33554432"])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("--pubsub-message-bytes"), "{e}");
        let e = config::parse_flags::<Args>(&SERVICE, &["--worker-gather-ms", "1001"])
            .expect_err("past a second");
        assert!(e.to_string().contains("--worker-gather-ms"), "{e}");
        let s = args(&["--worker-gather-ms", "2"])
            .validate()
            .expect("valid");
        assert_eq!(s.worker_gather, Duration::from_millis(2));
    }

    #[test]
    fn reads_are_sized_by_the_largest_entry() {
        let s = args(&[]).validate().expect("valid");
        assert_eq!(
            s.read_count(),
            256,
            "1 GiB / 4 MiB, the whole --worker-batch"
        );
        let s = args(&["--worker-read-bytes", "67108864"])
            .validate()
            .expect("valid");
        assert_eq!(s.read_count(), 16, "64 MiB / 4 MiB");
        let s = args(&["--max-entry-bytes", "65536"])
            .validate()
            .expect("valid");
        assert_eq!(s.read_count(), 256, "capped by --worker-batch");
    }
}

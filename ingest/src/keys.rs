//! Redis key layout, in one place so every role agrees (the formats of what is stored and
//! published there are in [`crate::wire`]).
//!
//! - stream `{prefix}:samples`: one entry per accepted request (or per streamed chunk);
//! - consumer groups `workers` (sample events, snapshots; shared by all workers) and `windows`
//!   (the window roll-up; read by the current leader only);
//! - hash `{prefix}:server:{serverId}` (expires `--snapshot-ttl-ms` after the server's latest
//!   sample): latest value of each metric, plus `_timestamp`,
//!   `_arrival`, `_node` (the front door that accepted it), `_id`, `_fields` (how many fields
//!   the workers wrote, for `--max-fields-per-server`), and `_window:{label}` (the
//!   last closed window of each length); hash `{prefix}:server:*` holds the across-servers
//!   windows;
//! - channel `{prefix}:events`: batches of dashboard events (Pub/Sub lines);
//! - stream `{prefix}:deadletter`: entries of the sample stream no reader could decode (fields
//!   `id`, the entry's id; `error`, why; `e`, its value when it had one), kept for an operator
//!   instead of being acknowledged silently; capped at about 10,000 entries;
//! - sorted set `{prefix}:servers:seen`: server ids by the time (ms) their latest sample was
//!   processed; ids silent longer than `--snapshot-ttl-ms` are removed, as their hashes expire
//!   (`{prefix}:servers`, a plain set of every id ever seen, is no longer written);
//! - key `{prefix}:windows:leader`: the window leader's lease;
//! - stream `{prefix}:windows:log`: every batch of closed windows the leader published (field
//!   `e`, the same lines as the Pub/Sub message), capped at about `--window-log-len` entries, so
//!   a broadcaster that lost its Pub/Sub link can read back the windows it missed;
//! - stream `{prefix}:broadcaster:resume`: the broadcasters' sample watermark adoptions (fields
//!   `g`, the broadcaster's token; `m`, the greatest position it had relayed; `w`, the
//!   watermark; `s`, present on its first entry), capped at about `--resume-history` entries,
//!   from which a `?since=` replay finds where to start (see [`crate::replay`]);
//! - channel `{prefix}:events:probe:{token}`: one per broadcaster process, which publishes its
//!   own probes there to learn that its subscription is live (see [`crate::broadcast`]).

/// All key names for one prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    pub stream: String,
    /// Entries no reader could decode.
    pub deadletter: String,
    pub channel: String,
    pub leader: String,
    /// Closed windows as published, for a broadcaster's catch-up.
    pub window_log: String,
    /// Broadcasters' watermark adoptions, for `?since=` replays.
    pub resume: String,
    /// Server ids by last-seen time (for snapshots of all servers).
    pub servers: String,
    server_prefix: String,
}

/// Consumer group of the sample workers.
pub const WORKERS_GROUP: &str = "workers";
/// Consumer group of the window leader.
pub const WINDOWS_GROUP: &str = "windows";

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            stream: format!("{prefix}:samples"),
            deadletter: format!("{prefix}:deadletter"),
            channel: format!("{prefix}:events"),
            leader: format!("{prefix}:windows:leader"),
            window_log: format!("{prefix}:windows:log"),
            resume: format!("{prefix}:broadcaster:resume"),
            servers: format!("{prefix}:servers:seen"),
            server_prefix: format!("{prefix}:server:"),
        }
    }

    /// The probe channel of the broadcaster process identified by `token`.
    pub fn probe(&self, token: &str) -> String {
        format!("{}:probe:{token}", self.channel)
    }

    /// The snapshot hash of `server`.
    pub fn server(&self, server: &str) -> String {
        format!("{}{server}", self.server_prefix)
    }
}

/// A position in the stream: entry id (`ms-seq`) and the sample's index in the entry, printed as
/// `ms-seq/index` (the `id` of System 1's `sample` events, and the position field of a channel
/// line). The type lives in the dashboard hub, which stitches replays to the live feed with it.
pub use metrics_edge::hub::LogPosition as Position;

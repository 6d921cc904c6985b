//! Setting up the systems a command measures, from the flags: each system in-process (System 1
//! with a redis-server child of the bench's own unless `REDIS_URL` is set) or at a URL, with
//! the CA and token to reach it, and enough open files for the agents and dashboards.

use std::sync::Arc;

use anyhow::{bail, Context};

use crate::cli::{OutputArgs, Side, Which};
use crate::run::Target;
use crate::systems::{self, Embedded, RedisChild};
use crate::transport::{Endpoint, Transport};
use crate::workload::Workload;

/// Whether the reference relay takes agents on `t` (plaintext WebSocket, HTTP/1.1, h2c).
pub fn relay_takes(t: Transport) -> bool {
    matches!(t, Transport::Ws | Transport::H1 | Transport::H2c)
}

/// The systems `which` names, in the order they run; with `relay`, the reference relay after
/// them, once for each transport they use that the relay takes.
pub fn chosen(which: Which, side: &Side, relay: bool) -> Vec<systems::Which> {
    let mut v = match which {
        Which::System1 => vec![systems::Which::System1],
        Which::System2 => vec![systems::Which::System2],
        Which::Both => vec![systems::Which::System1, systems::Which::System2],
        Which::Relay => return vec![systems::Which::Relay(side.relay_transport)],
    };
    if relay {
        let mut transports: Vec<Transport> = Vec::new();
        for s in &v {
            let t = SystemFlags::of(*s, side).transport;
            if !relay_takes(t) {
                eprintln!(
                    "the reference relay does not take {}: no relay figures for that system",
                    t.label()
                );
            } else if !transports.contains(&t) {
                transports.push(t);
            }
        }
        v.extend(transports.into_iter().map(systems::Which::Relay));
    }
    v
}

/// What the flags say about one system, and how the reports name it.
struct SystemFlags<'a> {
    /// Its URL, or `None` to run it in-process.
    url: Option<&'a String>,
    dashboard: Option<&'a str>,
    transport: Transport,
    name: String,
    label: String,
    /// What the system is made of.
    what: &'static str,
}

impl<'a> SystemFlags<'a> {
    fn of(which: systems::Which, side: &'a Side) -> Self {
        match which {
            systems::Which::System1 => Self {
                url: side.system1.as_ref(),
                dashboard: side.system1_dashboard.as_deref(),
                transport: side.system1_transport,
                name: "System 1".into(),
                label: "system1".into(),
                what: "Redis Streams, consumer-group workers, Pub/Sub, WebSocket broadcaster",
            },
            systems::Which::System2 => Self {
                url: side.system2.as_ref(),
                dashboard: side.system2_dashboard.as_deref(),
                transport: side.system2_transport,
                name: "System 2".into(),
                label: "system2".into(),
                what: "in-memory lock-free aggregator, WebSocket in and out",
            },
            systems::Which::Relay(t) => Self {
                url: None,
                dashboard: None,
                transport: t,
                name: format!("Relay ({})", t.label()),
                label: format!("relay-{}", t.label()),
                what: "reference relay: parse, flatten, one frame per message to every dashboard; no windows, Redis or queue policy",
            },
        }
    }

    /// The target, reached at `target` (`embedded` or the URL) through `ep`.
    fn target(&self, target: String, ep: Endpoint, redis_pid: Option<u32>) -> Target {
        Target {
            name: self.name.clone(),
            label: self.label.clone(),
            description: format!("{} -> {}", self.transport.describe(), self.what),
            embedded: self.url.is_none(),
            target,
            endpoint: Arc::new(ep),
            redis_pid,
        }
    }
}

/// Makes sure this process may open the files `w` needs against `systems`, raising the limit
/// when allowed: a socket per agent and dashboard, twice when a system runs in-process (it
/// holds the other ends).
pub fn ensure_files(w: &Workload, side: &Side, systems: &[systems::Which]) -> anyhow::Result<()> {
    use rlimit::Resource;
    let embedded = systems
        .iter()
        .any(|&s| SystemFlags::of(s, side).url.is_none());
    let need = (w.agents + w.dashboards) * (1 + u64::from(embedded)) + 512;
    let (soft, hard) = Resource::NOFILE.get().unwrap_or((1024, 1024));
    if soft >= need {
        return Ok(());
    }
    if hard >= need {
        let _ = Resource::NOFILE.set(need.max(soft), hard);
    } else {
        // Root may raise the hard limit too.
        let _ = Resource::NOFILE.set(need, need);
    }
    let (soft, _) = Resource::NOFILE.get().unwrap_or((soft, hard));
    if soft < need {
        bail!(
            "this run needs about {need} open files and the limit is {soft}: raise it with \
             `ulimit -n {need}` (or run as root), or use fewer --agents/--dashboards"
        );
    }
    Ok(())
}

/// A system set up for a run: the target, and what to stop afterwards.
pub struct Prepared {
    pub target: Target,
    pub embedded: Option<Embedded>,
}

/// The CA to trust for URL targets: `--ca`, or the development CA when it is there.
fn ca_pem(out: &OutputArgs) -> anyhow::Result<Option<Vec<u8>>> {
    let path = match &out.ca {
        Some(p) => p.clone(),
        None => {
            let dev = std::path::PathBuf::from("certs/ca.pem");
            if !dev.exists() {
                return Ok(None);
            }
            dev
        }
    };
    Ok(Some(std::fs::read(&path).with_context(|| {
        format!("reading the CA file {}", path.display())
    })?))
}

/// Sets up `which` as the flags say: at its URL, or started in-process (System 1 on `redis`,
/// started here when needed and kept for the next run).
pub fn prepare(
    which: systems::Which,
    side: &Side,
    out: &OutputArgs,
    redis: &mut Option<RedisChild>,
) -> anyhow::Result<Prepared> {
    let f = SystemFlags::of(which, side);
    let transport = f.transport;
    if let Some(url) = f.url {
        let ca = ca_pem(out)?;
        let ep = Endpoint::from_url(url, f.dashboard, transport, ca.as_deref(), out.tokens())?;
        return Ok(Prepared {
            target: f.target(url.clone(), ep, None),
            embedded: None,
        });
    }
    match (which, transport.websocket()) {
        (systems::Which::System1, true) => bail!(
            "System 1 takes HTTP: --system1-transport must be h1, h2c, h2tls, stream, otlp-grpc or remote-write, not {}",
            transport.label()
        ),
        (systems::Which::System2, false) => bail!(
            "System 2 takes WebSocket: --system2-transport must be ws or wss, not {}",
            transport.label()
        ),
        (systems::Which::Relay(t), _) if !relay_takes(t) => bail!(
            "the reference relay takes ws, h1 or h2c: --relay-transport must be one of them, not {}",
            t.label()
        ),
        _ => {}
    }
    let mut redis_pid = None;
    let redis_url = if which == systems::Which::System1 {
        match std::env::var("REDIS_URL") {
            Ok(u) if !u.is_empty() => u,
            _ => {
                if redis.is_none() {
                    *redis = Some(RedisChild::start()?);
                }
                let r = redis.as_ref().expect("just started");
                redis_pid = Some(r.pid);
                r.url.clone()
            }
        }
    } else {
        String::new()
    };
    let prefix = format!("bench{}", std::process::id());
    let sys = Embedded::start(
        which,
        transport.tls(),
        &redis_url,
        &prefix,
        out.system_threads,
    )?;
    let url = sys
        .url(transport.websocket(), transport.tls())
        .context("the embedded system has no listener for this transport")?;
    let mut ep = Endpoint::from_url(&url, None, transport, sys.ca_pem.as_deref(), out.tokens())?;
    // Connect to the address bound, whatever the certificate's name resolves to.
    if let Some(addr) = if transport.tls() { sys.tls } else { sys.plain } {
        ep.ingest.addr = addr;
        ep.dashboard.addr = addr;
    }
    Ok(Prepared {
        target: f.target("embedded".into(), ep, redis_pid),
        embedded: Some(sys),
    })
}

//! What the subcommands do: set up the runtimes and the systems, run the loads, write the
//! reports. Ctrl-C ends the current run early; the report still covers what was measured.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, LoadArgs, OutputArgs, Side, Which};
use crate::record::Hist;
use crate::report::{self, Machine, Report, Step};
use crate::run::{self, Measured, Runtimes, Target};
use crate::systems::{self, Embedded, RedisChild};
use crate::transport::Endpoint;
use crate::workload::Workload;

/// Runs `cli`.
pub fn main(cli: Cli) -> anyhow::Result<()> {
    metrics_edge::tls::install_provider();
    let output = match &cli.command {
        Command::Compare(a) => a.output.clone(),
        Command::Run(a) => a.output.clone(),
        Command::Max(a) => a.output.clone(),
    };
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(output.load_threads.max(1))
        .thread_name("bench-load")
        .enable_all()
        .build()?;
    let dash_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(output.dashboard_threads.max(1))
        .thread_name("bench-dash")
        .enable_all()
        .build()?;
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rts = Runtimes {
        load: load_rt.handle().clone(),
        dash: dash_rt.handle().clone(),
    };
    let cancel = CancellationToken::new();
    let result = control.block_on(async {
        let c = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\nstopping: finishing this run and writing the report (Ctrl-C again to quit now)");
                c.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
        match &cli.command {
            Command::Compare(a) => {
                compare(&a.side, &a.load, &a.output, Which::Both, "compare", &rts, &cancel).await
            }
            Command::Run(a) => compare(&a.side, &a.load, &a.output, a.system, "run", &rts, &cancel).await,
            Command::Max(a) => crate::max::max(a, &rts, &cancel).await,
        }
    });
    load_rt.shutdown_timeout(std::time::Duration::from_secs(1));
    dash_rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// The systems `which` names, in the order they run.
pub(crate) fn chosen(which: Which) -> Vec<systems::Which> {
    match which {
        Which::System1 => vec![systems::Which::System1],
        Which::System2 => vec![systems::Which::System2],
        Which::Both => vec![systems::Which::System1, systems::Which::System2],
    }
}

/// Makes sure this process may open the files `w` needs against `systems`, raising the limit
/// when allowed: a socket per agent and dashboard, twice when a system runs in-process (it
/// holds the other ends).
pub(crate) fn ensure_files(
    w: &Workload,
    side: &Side,
    systems: &[systems::Which],
) -> anyhow::Result<()> {
    use rlimit::Resource;
    let embedded = systems.iter().any(|s| match s {
        systems::Which::System1 => side.system1.is_none(),
        systems::Which::System2 => side.system2.is_none(),
    });
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
struct Prepared {
    target: Target,
    embedded: Option<Embedded>,
}

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

fn prepare(
    which: systems::Which,
    side: &Side,
    out: &OutputArgs,
    redis: &mut Option<RedisChild>,
) -> anyhow::Result<Prepared> {
    let (url, dash, transport, name, label, what) = match which {
        systems::Which::System1 => (
            &side.system1,
            &side.system1_dashboard,
            side.system1_transport,
            "System 1",
            "system1",
            "Redis Streams, consumer-group workers, Pub/Sub, WebSocket broadcaster",
        ),
        systems::Which::System2 => (
            &side.system2,
            &side.system2_dashboard,
            side.system2_transport,
            "System 2",
            "system2",
            "in-memory lock-free aggregator, WebSocket in and out",
        ),
    };
    let description = format!("{} -> {what}", transport.describe());
    if let Some(url) = url {
        let ep = Endpoint::from_url(
            url,
            dash.as_deref(),
            transport,
            ca_pem(out)?.as_deref(),
            out.token.clone(),
        )?;
        return Ok(Prepared {
            target: Target {
                name: name.to_string(),
                label: label.to_string(),
                description,
                target: url.clone(),
                endpoint: Arc::new(ep),
                redis_pid: None,
                embedded: false,
            },
            embedded: None,
        });
    }
    match (which, transport.websocket()) {
        (systems::Which::System1, true) => bail!(
            "System 1 takes HTTP: --system1-transport must be h1, h2c, h2tls or stream, not {}",
            transport.label()
        ),
        (systems::Which::System2, false) => bail!(
            "System 2 takes WebSocket: --system2-transport must be ws or wss, not {}",
            transport.label()
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
    let mut ep = Endpoint::from_url(
        &url,
        None,
        transport,
        sys.ca_pem.as_deref(),
        out.token.clone(),
    )?;
    // Connect to the address bound, whatever the certificate's name resolves to.
    if let Some(addr) = if transport.tls() { sys.tls } else { sys.plain } {
        ep.ingest.addr = addr;
        ep.dashboard.addr = addr;
    }
    Ok(Prepared {
        target: Target {
            name: name.to_string(),
            label: label.to_string(),
            description,
            target: "embedded".into(),
            endpoint: Arc::new(ep),
            redis_pid,
            embedded: true,
        },
        embedded: Some(sys),
    })
}

pub(crate) fn params(w: &Workload, side: &Side, extra: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::to_value(w).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "system1_transport".into(),
            side.system1_transport.label().into(),
        );
        o.insert(
            "system2_transport".into(),
            side.system2_transport.label().into(),
        );
        if let Some(e) = extra.as_object() {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
    }
    v
}

/// The report of `measured`, with this command line and this machine.
pub(crate) fn report(
    title: String,
    started: String,
    params: serde_json::Value,
    measured: &[Measured],
    steps: Vec<Step>,
) -> Report {
    Report {
        tool: format!("bench {}", env!("CARGO_PKG_VERSION")),
        title,
        started,
        command: command_line(),
        params,
        machine: Machine::detect(),
        systems: measured.iter().map(|m| m.result.clone()).collect(),
        steps,
    }
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

fn show_progress(out: &OutputArgs) -> bool {
    !out.no_progress && std::io::stderr().is_terminal()
}

fn out_dir(out: &OutputArgs, what: &str) -> std::path::PathBuf {
    out.out
        .clone()
        .unwrap_or_else(|| report::folder(&out.results, what))
}

pub(crate) async fn measure(
    which: systems::Which,
    side: &Side,
    out: &OutputArgs,
    w: &Workload,
    redis: &mut Option<RedisChild>,
    rts: &Runtimes,
    cancel: &CancellationToken,
) -> anyhow::Result<Measured> {
    let p = prepare(which, side, out, redis)?;
    eprintln!(
        "{}: {} at {} samples/s, {} per message, {} agents, {} dashboard(s), {} s (+{} s warm-up)",
        p.target.name,
        p.target.endpoint.transport.describe(),
        w.rate_per_s,
        w.batch,
        w.agents,
        w.dashboards,
        w.duration_s,
        w.warmup_s
    );
    let r = run::run(&p.target, w, rts, cancel, show_progress(out)).await;
    if let Some(e) = p.embedded {
        tokio::task::spawn_blocking(move || e.stop()).await.ok();
    }
    r
}

pub(crate) fn write_report(
    out: &OutputArgs,
    what: &str,
    report: &Report,
    measured: &[Measured],
) -> anyhow::Result<()> {
    let dir = out_dir(out, what);
    let hists: Vec<(String, &Hist, &Hist)> = measured
        .iter()
        .map(|m| {
            (
                m.result.label.clone(),
                &m.latency.corrected,
                &m.latency.uncorrected,
            )
        })
        .collect();
    let files = report::write_all(&dir, report, &hists)
        .with_context(|| format!("writing the reports to {}", dir.display()))?;
    println!("{}", report::table::render(report));
    println!("reports in {}/:", dir.display());
    for f in files {
        println!(
            "  {}",
            f.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
    }
    Ok(())
}

async fn compare(
    side: &Side,
    load: &LoadArgs,
    out: &OutputArgs,
    which: Which,
    what: &str,
    rts: &Runtimes,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let w = Workload::from_flags(load)?;
    let systems = chosen(which);
    ensure_files(&w, side, &systems)?;
    let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut redis = None;
    let mut measured = Vec::new();
    for s in systems {
        if cancel.is_cancelled() {
            break;
        }
        measured.push(measure(s, side, out, &w, &mut redis, rts, cancel).await?);
    }
    drop(redis);
    let report = report(
        format!("bench {what}"),
        started,
        params(&w, side, serde_json::json!({})),
        &measured,
        Vec::new(),
    );
    write_report(out, what, &report, &measured)
}

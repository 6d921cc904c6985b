//! What the subcommands do: set up the runtimes and the systems, run the loads, write the
//! reports. Ctrl-C ends the current run early; the report still covers what was measured.

use std::io::IsTerminal;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, CommonArgs, OutputArgs, Side, Which};
use crate::record::Hist;
use crate::report::{self, Machine, Report, Step};
use crate::run::{self, Measured, Runtimes};
use crate::setup::{chosen, ensure_files, prepare};
use crate::systems::{self, RedisChild};
use crate::workload::Workload;

/// `bench watch`: one small runtime; Ctrl-C ends the watch early and still writes the files.
fn watch(cli: &Cli) -> anyhow::Result<()> {
    let Command::Watch(a) = &cli.command else {
        unreachable!("only watch runs no load")
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cancel = CancellationToken::new();
    rt.block_on(async {
        let c = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                c.cancel();
            }
        });
        crate::watch::watch(a, &cancel).await
    })
}

/// Runs `cli`.
pub fn main(cli: Cli) -> anyhow::Result<()> {
    metrics_edge::tls::install_provider();
    if let Command::Diff(a) = &cli.command {
        return crate::diff::diff(a);
    }
    let Some(common) = cli.command.common() else {
        return watch(&cli);
    };
    let output = common.output.clone();
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
                compare(&a.common, Which::Both, !a.no_relay, "compare", 1, &rts, &cancel).await
            }
            Command::Run(a) => {
                compare(&a.common, a.system, a.with_relay, "run", a.repeat, &rts, &cancel).await
            }
            Command::Max(a) => crate::max::max(a, &rts, &cancel).await,
            Command::Watch(_) | Command::Diff(_) => {
                unreachable!("handled before the load runtimes start")
            }
        }
    });
    load_rt.shutdown_timeout(std::time::Duration::from_secs(1));
    dash_rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// The report's parameters: the workload, both transports, and `extra` (a command's own).
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
        systems: {
            let mut v: Vec<_> = measured.iter().map(|m| m.result.clone()).collect();
            report::relate_to_relay(&mut v);
            v
        },
        steps,
    }
}

/// When a command started, for the report.
pub(crate) fn started_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
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

/// Sets up `which`, runs `w` against it and stops it again.
pub(crate) async fn measure(
    which: systems::Which,
    c: &CommonArgs,
    w: &Workload,
    redis: &mut Option<RedisChild>,
    rts: &Runtimes,
    cancel: &CancellationToken,
) -> anyhow::Result<Measured> {
    let p = prepare(which, &c.side, &c.output, redis)?;
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
    let r = run::run(&p.target, w, rts, cancel, show_progress(&c.output)).await;
    if let Some(e) = p.embedded {
        tokio::task::spawn_blocking(move || e.stop()).await.ok();
    }
    r
}

/// Writes `report` and the histograms of `measured` into the results folder, and shows the
/// table and the files written.
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

/// `bench compare` and `bench run`: the load against each system `which` names (`repeat`
/// times each, and the relay with each system's transport when `with_relay`), one report.
async fn compare(
    c: &CommonArgs,
    which: Which,
    with_relay: bool,
    what: &str,
    repeat: u32,
    rts: &Runtimes,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let w = Workload::from_flags(&c.load)?;
    let systems = chosen(which, &c.side, with_relay);
    ensure_files(&w, &c.side, &systems)?;
    let started = started_now();
    let mut redis = None;
    let mut measured = Vec::new();
    for s in systems {
        if cancel.is_cancelled() {
            break;
        }
        let mut reps = Vec::new();
        for i in 0..repeat {
            if i > 0 && cancel.is_cancelled() {
                break;
            }
            if repeat > 1 {
                eprintln!("repetition {} of {repeat}", i + 1);
            }
            reps.push(measure(s, c, &w, &mut redis, rts, cancel).await?);
        }
        measured.push(crate::repeat::chosen(reps));
    }
    drop(redis);
    let report = report(
        format!("bench {what}"),
        started,
        params(&w, &c.side, serde_json::json!({})),
        &measured,
        Vec::new(),
    );
    write_report(&c.output, what, &report, &measured)
}

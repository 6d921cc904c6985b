//! The reports a run writes: a terminal table, HdrHistogram percentile distributions
//! (`.hgrm`), a JSON document and one self-contained HTML page, under one results folder.

pub mod figures;
pub mod hgrm;
pub mod html;
pub mod table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::record::{Hist, LatencyPair};

/// Percentiles of one latency histogram, in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub stdev: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    /// `[percentile, µs]` points of the percentile distribution, dense towards the tail.
    pub curve: Vec<(f64, u64)>,
}

impl LatencySummary {
    pub fn of(h: &Hist) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let i = h.inner();
        let curve = hgrm::points(h)
            .into_iter()
            .map(|p| (p.quantile * 100.0, p.value))
            .collect();
        Self {
            count: i.len(),
            min: i.min(),
            mean: i.mean(),
            stdev: i.stdev(),
            p50: i.value_at_quantile(0.5),
            p90: i.value_at_quantile(0.9),
            p99: i.value_at_quantile(0.99),
            p999: i.value_at_quantile(0.999),
            max: i.max(),
            curve,
        }
    }
}

/// Corrected (from the intended send time) and uncorrected (from the actual send).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencyBlock {
    pub corrected: LatencySummary,
    pub uncorrected: LatencySummary,
}

impl LatencyBlock {
    pub fn of(pair: &LatencyPair) -> Self {
        Self {
            corrected: LatencySummary::of(&pair.corrected),
            uncorrected: LatencySummary::of(&pair.uncorrected),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Throughput {
    pub offered_per_s: f64,
    pub sent_per_s: f64,
    pub acked_per_s: f64,
    /// Samples one dashboard saw per second (averaged over the dashboards).
    pub seen_per_s: f64,
}

/// Sample counts of the measured period (warm-up excluded).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Counts {
    /// What the schedule asked for.
    pub offered: u64,
    pub sent: u64,
    /// Acknowledged: HTTP 2xx, a stream ack; for WebSocket (no acks), written to the socket.
    pub acked: u64,
    /// Refused by the system, by HTTP status or `error` (an error event or line).
    pub rejected: BTreeMap<String, u64>,
    /// Lost at the transport: connection failed, no reply within the timeout.
    pub errors: u64,
    /// Samples seen at the dashboards, each counted once per dashboard.
    pub seen: u64,
    /// `acked` times the number of dashboards.
    pub expected_seen: u64,
    /// Acknowledged but not seen within the grace period, summed over the dashboards.
    pub lost: u64,
    /// Seen more than once by a dashboard, summed over the dashboards.
    pub duplicated: u64,
    /// Seen although not acknowledged (an ack lost to a timeout, say).
    pub unacked_seen: u64,
    /// Samples the system reported shedding for slow dashboards (`dropped` events).
    pub dropped_by_system: u64,
    /// Frames the dashboards read that held samples of this run, and the samples in them
    /// (warm-up included, summed over the dashboards): events per frame.
    #[serde(default)]
    pub dashboard_frames: u64,
    #[serde(default)]
    pub dashboard_framed_samples: u64,
    pub dashboards: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TimelinePoint {
    /// Second of the measured period (1 = the first).
    pub t: u64,
    /// Samples sent in that second.
    pub sent: u64,
    /// Samples one dashboard saw in that second.
    pub seen: u64,
    /// p99 corrected latency of the samples seen in that second.
    pub p99_us: Option<u64>,
}

/// One system's result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SystemResult {
    pub name: String,
    pub label: String,
    pub description: String,
    pub target: String,
    pub transport: String,
    pub stopped_early: bool,
    pub duration_s: f64,
    pub throughput: Throughput,
    pub counts: Counts,
    /// The first message of each kind of refusal or error.
    pub reasons: BTreeMap<String, String>,
    pub dashboard_errors: Vec<String>,
    pub latency_us: LatencyBlock,
    pub ack_latency_us: Option<LatencyBlock>,
    pub timeline: Vec<TimelinePoint>,
    pub cpu: crate::cpu::Usage,
    /// `bench run --repeat N`: every repetition's figures and their spread; the rest of this
    /// result (and the `.hgrm` files) is the repetition with the median p99.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeats: Option<figures::Repeats>,
    /// This system against the reference relay of the same run and transport.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs_relay: Option<VsRelay>,
}

/// A system's figures as a fraction (or multiple) of the reference relay's, measured in the
/// same run, with the same load and transport.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VsRelay {
    /// The relay's name in the report (`Relay (ws)`).
    pub relay: String,
    /// Samples seen per second over the relay's: 1 is as many, 0.6 is 60 % of them.
    pub seen_per_s: Option<f64>,
    /// Corrected p50 and p99 latency over the relay's: 3 is three times the relay's.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    /// System CPU per sample over the relay's (Redis not included): 2 is twice as much.
    pub cpu_per_sample: Option<f64>,
    /// The same with Redis's CPU added to the system's.
    pub cpu_per_sample_with_redis: Option<f64>,
}

/// Whether `s` is a reference relay's result.
pub fn is_relay(s: &SystemResult) -> bool {
    s.label.starts_with("relay")
}

/// Sets each system's [`VsRelay`] against the relay result of the same transport, if any.
pub fn relate_to_relay(systems: &mut [SystemResult]) {
    let relays: Vec<SystemResult> = systems.iter().filter(|s| is_relay(s)).cloned().collect();
    let ratio = |a: f64, b: f64| (a.is_finite() && b > 0.0).then(|| a / b);
    let lat = |s: &SystemResult, p99: bool| {
        let c = &s.latency_us.corrected;
        (c.count > 0).then_some(if p99 { c.p99 } else { c.p50 } as f64)
    };
    for s in systems.iter_mut().filter(|s| !is_relay(s)) {
        let Some(r) = relays.iter().find(|r| r.transport == s.transport) else {
            continue;
        };
        let both = |f: &dyn Fn(&SystemResult) -> Option<f64>| match (f(s), f(r)) {
            (Some(a), Some(b)) => ratio(a, b),
            _ => None,
        };
        let with_redis = |x: &SystemResult| {
            Some(x.cpu.system_us_per_sample? + x.cpu.redis_us_per_sample.unwrap_or(0.0))
        };
        s.vs_relay = Some(VsRelay {
            relay: r.name.clone(),
            seen_per_s: both(&|x| Some(x.throughput.seen_per_s)),
            p50: both(&|x| lat(x, false)),
            p99: both(&|x| lat(x, true)),
            cpu_per_sample: both(&|x| x.cpu.system_us_per_sample),
            cpu_per_sample_with_redis: both(&with_redis),
        });
    }
}

/// The machine the run was on.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub os: String,
    pub hostname: String,
}

impl Machine {
    pub fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or_else(|| "unknown".into(), |s| s.trim().to_string());
        let mem_kb: f64 = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_gib: (mem_kb / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            os: format!(
                "{} {}",
                std::env::consts::OS,
                read("/proc/sys/kernel/osrelease").trim()
            ),
            hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
        }
    }
}

/// A whole report: one or more systems under the same load.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub tool: String,
    pub title: String,
    pub started: String,
    pub command: String,
    pub params: serde_json::Value,
    pub machine: Machine,
    pub systems: Vec<SystemResult>,
    /// `bench max` only: each step of the search.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
}

/// One step of `bench max`: a run at one rate, and whether the system kept up. The HTML report
/// shows these fields as the steps table's columns, in this order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Step {
    /// The system's name (`System 1`).
    pub system: String,
    /// 1 for the first step of this system.
    pub step: u32,
    /// Samples per second offered.
    pub rate_per_s: f64,
    /// Samples one dashboard saw per second.
    pub seen_per_s: f64,
    /// Acknowledged samples the dashboards saw, in percent.
    pub seen_pct: f64,
    /// Offered samples sent, in percent.
    pub sent_pct: f64,
    /// Corrected p99 latency, ingest to dashboard.
    pub p99_us: u64,
    pub pass: bool,
    /// Which run of the step this was, when `--tries` allows more than one (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

/// Writes `report.json`, `report.html`, `summary.txt` and one `.hgrm` per system (corrected
/// and uncorrected) into `dir`; returns the files written.
pub fn write_all(
    dir: &Path,
    report: &Report,
    hists: &[(String, &Hist, &Hist)],
) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    let mut put = |name: &str, text: &str| -> std::io::Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, text)?;
        out.push(p);
        Ok(())
    };
    put("summary.txt", &table::render(report))?;
    for (label, corrected, uncorrected) in hists {
        put(&format!("{label}.hgrm"), &hgrm::render(corrected, 1000.0))?;
        put(
            &format!("{label}-uncorrected.hgrm"),
            &hgrm::render(uncorrected, 1000.0),
        )?;
    }
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    put("report.json", &json)?;
    put("report.html", &html::render(report))?;
    Ok(out)
}

/// A results folder name: `results/<UTC time>-<what>`.
pub fn folder(root: &Path, what: &str) -> PathBuf {
    let t = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp: String = t
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    root.join(format!("{stamp}-{what}"))
}

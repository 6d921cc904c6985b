//! `bench watch`: the soak test's recorder (`scripts/soak`). It samples the resident memory and
//! the open file descriptors of running processes once a second, writes them to a CSV and to a
//! page with a chart per measure (the bench report's style), and judges growth: a process whose
//! memory or descriptors at the end of the run are well above where they stood once it had
//! settled fails the soak, and so does a process that exits before the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::cli::WatchArgs;

/// One process to watch: a label and its pid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

/// Parses `NAME=PID`.
pub fn parse_watched(s: &str) -> Result<Watched, String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected NAME=PID"))?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "`{s}`: the name must be letters, digits, `-`, `_` or `.`"
        ));
    }
    let pid = pid
        .parse()
        .map_err(|_| format!("`{s}`: `{pid}` is not a process id"))?;
    Ok(Watched {
        name: name.to_string(),
        pid,
    })
}

/// One reading of one process.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Reading {
    /// Seconds since the watch began.
    pub t: f64,
    pub rss_kib: u64,
    pub fds: u64,
}

/// Reads `pid`'s resident memory (`VmRSS` in `/proc/PID/status`) and its count of open file
/// descriptors; `None` once the process is gone.
pub fn read_process(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

/// The growth allowed between the settled start and the end of the run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Allowance {
    /// Seconds from the start before the baseline is taken (start-up, warm-up, buffers
    /// reaching their working size).
    pub settle_s: f64,
    /// Seconds averaged (median) at each end.
    pub window_s: f64,
    /// Memory may grow by this share of the baseline...
    pub rss_pct: f64,
    /// ...or by this much, whichever is more.
    pub rss_mib: f64,
    /// Open descriptors may grow by this many.
    pub fds: u64,
}

/// What the watch concluded about one process.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub name: String,
    pub pid: u32,
    pub samples: usize,
    pub baseline_rss_kib: u64,
    pub end_rss_kib: u64,
    pub max_rss_kib: u64,
    pub baseline_fds: u64,
    pub end_fds: u64,
    pub max_fds: u64,
    /// Empty when the process passed; otherwise why it failed.
    pub problems: Vec<String>,
}

fn median(mut v: Vec<u64>) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

/// Judges one process's readings over a run of `duration_s` seconds.
pub fn judge(w: &Watched, readings: &[Reading], duration_s: f64, a: &Allowance) -> Verdict {
    let in_range = |from: f64, to: f64| -> Vec<&Reading> {
        readings
            .iter()
            .filter(|r| r.t >= from && r.t < to)
            .collect()
    };
    let base = in_range(a.settle_s, a.settle_s + a.window_s);
    let end = in_range(duration_s - a.window_s, f64::INFINITY);
    let mut v = Verdict {
        name: w.name.clone(),
        pid: w.pid,
        samples: readings.len(),
        baseline_rss_kib: median(base.iter().map(|r| r.rss_kib).collect()),
        end_rss_kib: median(end.iter().map(|r| r.rss_kib).collect()),
        max_rss_kib: readings.iter().map(|r| r.rss_kib).max().unwrap_or(0),
        baseline_fds: base.iter().map(|r| r.fds).max().unwrap_or(0),
        end_fds: end.iter().map(|r| r.fds).max().unwrap_or(0),
        max_fds: readings.iter().map(|r| r.fds).max().unwrap_or(0),
        problems: Vec::new(),
    };
    let last = readings.last().map_or(0.0, |r| r.t);
    // One reading a second: a process missing for more than a few seconds at the end is gone.
    if last + 3.0 < duration_s {
        v.problems.push(format!(
            "the process was gone after {last:.0} s of {duration_s:.0} s"
        ));
        return v;
    }
    if base.is_empty() {
        v.problems.push(format!(
            "no readings between {:.0} s and {:.0} s to take the baseline from: run longer than --settle + 2 x --window",
            a.settle_s,
            a.settle_s + a.window_s
        ));
        return v;
    }
    let allowed_kib = (v.baseline_rss_kib as f64 * a.rss_pct / 100.0).max(a.rss_mib * 1024.0);
    let grew_kib = v.end_rss_kib.saturating_sub(v.baseline_rss_kib);
    if grew_kib as f64 > allowed_kib {
        v.problems.push(format!(
            "memory grew by {:.1} MiB (from {:.1} to {:.1} MiB), more than the {:.1} MiB allowed",
            grew_kib as f64 / 1024.0,
            v.baseline_rss_kib as f64 / 1024.0,
            v.end_rss_kib as f64 / 1024.0,
            allowed_kib / 1024.0
        ));
    }
    if v.end_fds > v.baseline_fds + a.fds {
        v.problems.push(format!(
            "open file descriptors grew from {} to {}, more than {} allowed",
            v.baseline_fds, v.end_fds, a.fds
        ));
    }
    v
}

/// What `bench watch` writes to `watch.json` (and embeds in `watch.html`).
#[derive(Debug, Serialize)]
pub struct WatchReport {
    pub started: String,
    pub duration_s: f64,
    pub allowance: Allowance,
    pub passed: bool,
    pub verdicts: Vec<Verdict>,
    pub readings: BTreeMap<String, Vec<Reading>>,
}

const TEMPLATE: &str = include_str!("report/watch.html");
const MARKER: &str = "__WATCH_JSON__";

/// The page for `r`: the report's styles, a chart for memory and one for descriptors.
pub fn render(r: &WatchReport) -> String {
    let json = serde_json::to_string(r)
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        .replace('<', "\\u003c");
    TEMPLATE
        .replacen(
            crate::report::html::STYLE_MARKER,
            crate::report::html::STYLE,
            1,
        )
        .replacen(MARKER, &json, 1)
}

/// The CSV: one line per reading, `seconds,process,pid,rss_kib,fds`.
pub fn csv(watched: &[Watched], readings: &BTreeMap<String, Vec<Reading>>) -> String {
    let mut out = String::from("seconds,process,pid,rss_kib,fds\n");
    for w in watched {
        for r in readings.get(&w.name).into_iter().flatten() {
            let _ = writeln!(
                out,
                "{:.1},{},{},{},{}",
                r.t, w.name, w.pid, r.rss_kib, r.fds
            );
        }
    }
    out
}

/// Runs `bench watch`: samples until `--seconds` pass (or Ctrl-C), writes the files, prints the
/// verdicts; an error when a process failed.
pub async fn watch(a: &WatchArgs, cancel: &CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    for w in &a.processes {
        if read_process(w.pid).is_none() {
            anyhow::bail!(
                "process {} ({}) is not running, or its /proc is not readable",
                w.pid,
                w.name
            );
        }
    }
    let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let t0 = Instant::now();
    let mut readings: BTreeMap<String, Vec<Reading>> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(a.interval_ms.max(10)));
    let end = t0 + Duration::from_secs_f64(a.seconds);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => break,
        }
        let t = t0.elapsed().as_secs_f64();
        for w in &a.processes {
            if let Some((rss_kib, fds)) = read_process(w.pid) {
                readings
                    .entry(w.name.clone())
                    .or_default()
                    .push(Reading { t, rss_kib, fds });
            }
        }
        if Instant::now() >= end {
            break;
        }
    }
    let duration_s = t0.elapsed().as_secs_f64();
    let allowance = Allowance {
        settle_s: a.settle,
        window_s: a.window,
        rss_pct: a.max_rss_growth_pct,
        rss_mib: a.max_rss_growth_mib,
        fds: a.max_fd_growth,
    };
    let verdicts: Vec<Verdict> = a
        .processes
        .iter()
        .map(|w| {
            let r = readings.get(&w.name).map_or(&[][..], Vec::as_slice);
            judge(w, r, duration_s, &allowance)
        })
        .collect();
    let passed = verdicts.iter().all(|v| v.problems.is_empty());
    write(&a.out.join("watch.csv"), &csv(&a.processes, &readings))?;
    let report = WatchReport {
        started,
        duration_s,
        allowance,
        passed,
        verdicts,
        readings,
    };
    write(
        &a.out.join("watch.json"),
        &serde_json::to_string_pretty(&report)?,
    )?;
    write(&a.out.join("watch.html"), &render(&report))?;
    println!("{}", table(&report.verdicts));
    println!("wrote {}", a.out.join("watch.html").display());
    if passed {
        println!("soak: PASS ({duration_s:.0} s)");
        Ok(())
    } else {
        anyhow::bail!("soak: FAIL, see above")
    }
}

fn table(verdicts: &[Verdict]) -> String {
    let mib = |k: u64| k as f64 / 1024.0;
    let mut out = format!(
        "{:<14} {:>12} {:>10} {:>10} {:>9} {:>7} {:>7}  verdict\n",
        "process", "RSS settled", "RSS end", "RSS max", "FDs set.", "FDs end", "FDs max"
    );
    for v in verdicts {
        let _ = writeln!(
            out,
            "{:<14} {:>8.1} MiB {:>6.1} MiB {:>6.1} MiB {:>9} {:>7} {:>7}  {}",
            v.name,
            mib(v.baseline_rss_kib),
            mib(v.end_rss_kib),
            mib(v.max_rss_kib),
            v.baseline_fds,
            v.end_fds,
            v.max_fds,
            if v.problems.is_empty() {
                "ok".to_string()
            } else {
                v.problems.join("; ")
            }
        );
    }
    out
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w() -> Watched {
        Watched {
            name: "front".into(),
            pid: 1,
        }
    }

    const A: Allowance = Allowance {
        settle_s: 10.0,
        window_s: 10.0,
        rss_pct: 10.0,
        rss_mib: 8.0,
        fds: 16,
    };

    /// Readings every second for `secs` seconds, memory and descriptors from `f(t)`.
    fn run(secs: u32, f: impl Fn(f64) -> (u64, u64)) -> Vec<Reading> {
        (0..secs)
            .map(|i| {
                let t = f64::from(i);
                let (rss_kib, fds) = f(t);
                Reading { t, rss_kib, fds }
            })
            .collect()
    }

    #[test]
    fn flat_memory_after_start_up_passes() {
        // A jump during start-up (before --settle) is not growth.
        let r = run(60, |t| (if t < 5.0 { 10_000 } else { 100_000 }, 20));
        let v = judge(&w(), &r, 60.0, &A);
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        assert_eq!(
            (v.baseline_rss_kib, v.end_rss_kib, v.max_fds),
            (100_000, 100_000, 20)
        );
    }

    #[test]
    fn steady_growth_fails_naming_it() {
        // 1 MiB a second: 40 MiB between the windows, over max(10 %, 8 MiB).
        let r = run(60, |t| (100_000 + (t as u64) * 1024, 20));
        let v = judge(&w(), &r, 60.0, &A);
        assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
        assert!(
            v.problems[0].starts_with("memory grew by 40.0 MiB"),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn growth_within_the_allowance_passes_and_leaking_descriptors_fail() {
        // 5 MiB up in all: under the 8 MiB floor. Descriptors: 20 -> 80.
        let r = run(60, |t| {
            (100_000 + if t > 30.0 { 5 * 1024 } else { 0 }, 20 + t as u64)
        });
        let v = judge(&w(), &r, 60.0, &A);
        assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
        assert!(
            v.problems[0].contains("descriptors grew from 39 to 79"),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn a_process_that_exits_early_fails() {
        let r = run(30, |_| (100_000, 20));
        let v = judge(&w(), &r, 60.0, &A);
        assert_eq!(
            v.problems,
            vec!["the process was gone after 29 s of 60 s".to_string()]
        );
    }

    #[test]
    fn this_process_can_be_read_and_names_parse() {
        let (rss, fds) = read_process(std::process::id()).expect("our own /proc");
        assert!(rss > 0 && fds > 0);
        assert_eq!(
            parse_watched("front=42"),
            Ok(Watched {
                name: "front".into(),
                pid: 42
            })
        );
        assert!(parse_watched("front").unwrap_err().contains("NAME=PID"));
        assert!(parse_watched("a b=1").unwrap_err().contains("name"));
        assert!(parse_watched("x=y")
            .unwrap_err()
            .contains("not a process id"));
    }

    #[test]
    fn the_csv_has_a_line_per_reading() {
        let mut m = BTreeMap::new();
        m.insert("front".to_string(), run(2, |_| (5, 6)));
        assert_eq!(
            csv(&[w()], &m),
            "seconds,process,pid,rss_kib,fds\n0.0,front,1,5,6\n1.0,front,1,5,6\n"
        );
    }
}

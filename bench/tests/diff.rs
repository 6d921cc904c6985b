//! `bench diff` end to end, as a user runs it: two real `bench compare` runs diffed and the page
//! checked in headless Chromium (the curves of every run overlaid, the differences table); a run
//! against a wrk2 `.hgrm` file, refused for its different sample size until `--force`; the gate
//! failing a run made deliberately worse (System 2 with a tiny `--dashboard-queue`, which sheds
//! samples) with a one-line reason naming the metric; `--repeat` recording the spread; and bad
//! conditions refused naming what is wrong.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use metrics_edge::testing::cdp::{check, Cdp, PageState};
use metrics_edge::testing::chromium::{chromium_binary, Chromium, TEST_BUDGET};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn wrk2_sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/wrk2.hgrm")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `bench diff ARGS --out DIR`; returns the output and the folder.
fn diff(name: &str, args: &[&str]) -> (Output, PathBuf) {
    let dir = out_dir(name);
    let out = bench()
        .arg("diff")
        .args(args)
        .arg("--out")
        .arg(&dir)
        .output()
        .expect("the bench binary runs");
    (out, dir)
}

fn folder_name(p: &Path) -> String {
    p.file_name().expect("name").to_string_lossy().into_owned()
}

/// What the test reads from a diff page.
const DIFF_PAGE: PageState = PageState::new(
    r##"(() => {
  const q = (s) => [...document.querySelectorAll(s)];
  return JSON.stringify({
    rows: q("#diff-table tbody tr[data-label]").map((r) => r.dataset.label),
    ratios: q("#diff-table tr.ratio").map((r) => r.textContent),
    curves: q("#latency-chart path.series").length,
    legend: q("#latency-chart text").map((t) => t.textContent),
    throughput: q("#throughput-chart path.series").length,
    verdict: document.getElementById("verdict")?.textContent,
    notes: q("#diff-notes li").map((l) => l.textContent),
    errors: q(".error").map((e) => e.textContent),
    summaryHidden: document.getElementById("summary-section")?.hidden,
  });
})()"##,
);

/// Opens each page in one headless Chromium; returns each page's state once its table is drawn.
fn pages_in_chromium(pages: &[PathBuf]) -> Vec<Value> {
    let binary = chromium_binary();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let browser = Chromium::launch(&binary);
    let mut states = Vec::new();
    let run = async {
        let mut cdp = Cdp::connect(browser.devtools_url().await?).await?;
        for p in pages {
            let page = cdp.open(&format!("file://{}", p.display())).await?;
            let s = page
                .wait_for_state(&mut cdp, DIFF_PAGE, "the diff table drawn", |s| {
                    s["rows"].as_array().is_some_and(|r| !r.is_empty())
                })
                .await?;
            check(s["errors"] == serde_json::json!([]), "no part failed", &s)?;
            check(
                s["summaryHidden"] == true,
                "the diff table replaces the summary",
                &s,
            )?;
            states.push(s);
            page.close(&mut cdp).await?;
        }
        let _ = cdp.call(None, "Browser.close", serde_json::json!({})).await;
        Ok(())
    };
    let outcome = rt.block_on(async { tokio::time::timeout(TEST_BUDGET, run).await });
    browser.finish(outcome);
    states
}

fn labels(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("list")
        .iter()
        .map(|x| x.as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn diff_of_two_compare_runs_and_of_a_run_against_wrk2_renders_in_chromium() {
    // The two systems only (the relay's columns are `bench compare`'s test's business).
    let compare = || {
        let mut c = bench();
        c.args(["compare", "--no-relay"]).args(Load::SMALL.args());
        c
    };
    let (a, _, _) = run_to_report("diff-a", &mut compare());
    let (b, _, _) = run_to_report("diff-b", &mut compare());
    let (an, bn) = (folder_name(&a), folder_name(&b));

    let (out, two) = diff("diff-two", &[a.to_str().unwrap(), b.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for l in [format!("{an}:system1"), format!("{bn}:system2")] {
        assert!(stdout.contains(&l), "the table names {l}:\n{stdout}");
    }
    assert!(stdout.contains(&format!("vs {an}:system2")), "{stdout}");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(two.join("diff.json")).expect("diff.json"))
            .expect("JSON");
    let rows = doc["diff"]["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[3]["base"], format!("{an}:system2"));
    assert!(rows[3]["ratio"]["p99"].as_f64().expect("a p99 ratio") > 0.0);
    assert_eq!(doc["systems"].as_array().expect("curves").len(), 4);

    // A wrk2 file: too few samples in the short run to compare its tail, until --force.
    let wrk2 = wrk2_sample();
    let (out, _) = diff(
        "diff-wrk2-refused",
        &[a.to_str().unwrap(), wrk2.to_str().unwrap()],
    );
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("not comparable") && stderr.contains("sample size differs"),
        "{stderr}"
    );
    assert!(stderr.contains("--force"), "{stderr}");
    let (out, against_wrk2) = diff(
        "diff-wrk2",
        &["--force", wrk2.to_str().unwrap(), a.to_str().unwrap()],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("offered load unknown"), "{stdout}");

    let states = pages_in_chromium(&[two.join("diff.html"), against_wrk2.join("diff.html")]);
    let s = &states[0];
    assert_eq!(
        labels(&s["rows"]),
        [
            format!("{an}:system1"),
            format!("{an}:system2"),
            format!("{bn}:system1"),
            format!("{bn}:system2")
        ]
    );
    assert_eq!(s["ratios"].as_array().map(Vec::len), Some(2), "{s}");
    // Four runs' curves, corrected and uncorrected each.
    assert_eq!(s["curves"], 8, "{s}");
    assert_eq!(s["throughput"], 8, "{s}");
    assert!(
        labels(&s["legend"]).contains(&format!("{bn}:system1")),
        "{s}"
    );
    let s = &states[1];
    assert_eq!(
        labels(&s["rows"]),
        [
            "wrk2".to_string(),
            format!("{an}:system1"),
            format!("{an}:system2")
        ]
    );
    // The wrk2 curve has no uncorrected line: 1 + 2 x 2.
    assert_eq!(s["curves"], 5, "{s}");
    assert!(labels(&s["legend"]).contains(&"wrk2".to_string()), "{s}");
    assert!(
        s["notes"].to_string().contains("compared anyway: --force"),
        "{s}"
    );
    for d in [a, b, two, against_wrk2] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A System 2 for the bench to reach by URL, with `--dashboard-queue` `queue` when given;
/// stopped with `stop`.
fn system2(rt: &tokio::runtime::Runtime, stop: &CancellationToken, queue: Option<usize>) -> String {
    rt.block_on(async {
        let mut s = aggregator::Settings::local();
        if let Some(q) = queue {
            s.edge.queue.sample_cap = q;
        }
        let l = aggregator::server::bind(&s).await.expect("bind");
        let server =
            <aggregator::Server as aggregator::Service>::start(s, l, stop.clone()).expect("start");
        format!(
            "ws://{}",
            server.running.plain_addr.expect("plain listener")
        )
    })
}

#[test]
fn the_gate_fails_a_worse_run_and_repeats_record_the_spread() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    // Worse: the same System 2 with --dashboard-queue 16, under frames of 50 samples.
    let (normal, tiny) = (system2(&rt, &stop, None), system2(&rt, &stop, Some(16)));
    let load = Load {
        rate: 1000,
        batch: 50,
        agents: 4,
        duration: 1.0,
        warmup: 0.3,
        grace: 5.0,
    };
    let (base, _, r) = run_to_report(
        "gate-base",
        bench()
            .args(["run", "system2", "--repeat", "3", "--system2", &normal])
            .args(load.args()),
    );
    let rep = &r["systems"][0]["repeats"];
    assert_eq!(rep["runs"].as_array().map(Vec::len), Some(3), "{rep}");
    let p99 = &rep["spread"]["p99"];
    let runs: Vec<f64> = rep["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["p99"].as_f64().expect("a repetition's p99"))
        .collect();
    let lowest = runs.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = runs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(p99["min"].as_f64(), Some(lowest), "{rep}");
    assert_eq!(p99["max"].as_f64(), Some(highest), "{rep}");
    assert_eq!(rep["spread"]["lost"]["max"], 0.0, "{rep}");
    // The report is the median repetition's.
    let chosen = rep["chosen"].as_u64().expect("chosen") as usize;
    assert_eq!(
        rep["runs"][chosen]["p99"].as_f64(),
        r["systems"][0]["latency_us"]["corrected"]["p99"].as_f64()
    );

    let (new, _, r) = run_to_report(
        "gate-new",
        bench()
            .args(["run", "system2", "--system2", &tiny])
            .args(load.args()),
    );
    let counts = &r["systems"][0]["counts"];
    assert!(
        n(&counts["lost"]) > 0,
        "the tiny queue sheds samples: {counts}"
    );
    let (bs, ns) = (base.to_str().unwrap(), new.to_str().unwrap());

    let (out, dir) = diff(
        "gate",
        &["--fail-if", "seen<-99%", "--fail-if", "lost>0", bs, ns],
    );
    let (stdout, stderr) = text(&out);
    assert!(
        !out.status.success(),
        "the gate passed:\n{stdout}\n{stderr}"
    );
    let reason: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("regression"))
        .collect();
    assert_eq!(reason.len(), 1, "one line of reason:\n{stderr}");
    assert!(
        reason[0].contains(":system2: lost 0 -> ") && reason[0].ends_with("meets `lost>0`"),
        "{}",
        reason[0]
    );
    let _ = std::fs::remove_dir_all(dir);

    // The same run against itself: no change, so no condition holds, and every difference is
    // marked within the spread.
    let (out, dir) = diff(
        "gate-same",
        &["--fail-if", "p99>+0%", "--fail-if", "lost>0", bs, bs],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("pass: no --fail-if condition holds"),
        "{stdout}"
    );
    assert!(stdout.contains("~x1.00"), "{stdout}");
    let _ = std::fs::remove_dir_all(dir);

    // A condition on a difference that the run meets against itself (no change at all) is
    // within its spread, so it does not fail; a fixed limit it meets does.
    let (out, dir) = diff("gate-noise", &["--fail-if", "p99>=+0%", bs, bs]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 met only within the spread of the repetitions"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(dir);
    let (out, dir) = diff("gate-limit", &["--fail-if", "p99>=0us", bs, bs]);
    assert!(!out.status.success(), "{:?}", text(&out));

    // Conditions that cannot be read, and figures an .hgrm file does not have.
    let (out, _) = diff("gate-bad", &["--fail-if", "p98>+10%", bs, ns]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("unknown metric `p98`"),
        "{:?}",
        text(&out)
    );
    let wrk2 = wrk2_sample();
    let (out, _) = diff(
        "gate-hgrm",
        &["--force", "--fail-if", "lost>0", wrk2.to_str().unwrap(), bs],
    );
    assert!(!out.status.success());
    assert!(
        text(&out)
            .1
            .contains("wrk2 has no lost figure (an .hgrm file has latency only)"),
        "{:?}",
        text(&out)
    );
    for d in [base, new, dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

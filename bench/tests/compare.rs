//! The `bench` binary end to end, as a user runs it: a short `bench compare` against both
//! systems in-process (System 1 with a redis-server child the bench starts itself), every
//! transport, an external URL target, and Ctrl-C. The report files are read back and checked:
//! counts add up, nothing is lost at a low rate, the histograms match the counts, and the HTML
//! page renders its charts in a real headless Chromium.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;
use common::*;

/// Every acknowledged sample reached every dashboard exactly once, and the figures agree
/// with each other.
fn check_counts_add_up(sys: &Value, dashboards: u64) {
    let name = sys["name"].as_str().expect("name");
    let c = &sys["counts"];
    assert!(n(&c["offered"]) > 0, "{name}: {c}");
    assert_eq!(
        n(&c["sent"]),
        n(&c["offered"]),
        "{name}: all offered samples sent: {c}"
    );
    assert_eq!(
        n(&c["acked"]),
        n(&c["sent"]),
        "{name}: all sent samples acknowledged: {c}"
    );
    assert_eq!(n(&c["errors"]), 0, "{name}: {sys}");
    assert!(
        c["rejected"].as_object().expect("map").is_empty(),
        "{name}: {c}"
    );
    assert_eq!(n(&c["dashboards"]), dashboards);
    assert_eq!(n(&c["expected_seen"]), n(&c["acked"]) * dashboards);
    assert_eq!(
        n(&c["seen"]),
        n(&c["expected_seen"]),
        "{name}: every sample seen: {c}"
    );
    assert_eq!(n(&c["lost"]), 0, "{name}: {c}");
    assert_eq!(n(&c["duplicated"]), 0, "{name}: {c}");
    assert_eq!(n(&c["unacked_seen"]), 0, "{name}: {c}");
    // Each seen sample has one latency.
    let lat = &sys["latency_us"];
    assert_eq!(n(&lat["corrected"]["count"]), n(&c["seen"]), "{name}");
    assert_eq!(n(&lat["uncorrected"]["count"]), n(&c["seen"]), "{name}");
    let (p50, p99, max) = (
        n(&lat["corrected"]["p50"]),
        n(&lat["corrected"]["p99"]),
        n(&lat["corrected"]["max"]),
    );
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{name}: {lat}");
    // Correction only adds: from the intended time is never shorter than from the send.
    assert!(
        n(&lat["corrected"]["p50"]) >= n(&lat["uncorrected"]["p50"]),
        "{name}"
    );
    // The timeline's seconds add up to the counts.
    let tl = sys["timeline"].as_array().expect("timeline");
    let sent: u64 = tl.iter().map(|p| n(&p["sent"])).sum();
    let seen: u64 = tl.iter().map(|p| n(&p["seen"])).sum();
    assert_eq!(sent, n(&c["sent"]), "{name}: timeline {tl:?}");
    assert_eq!(seen, n(&c["seen"]) / dashboards, "{name}: timeline {tl:?}");
}

/// The `.hgrm` file's footer counts the same samples as the JSON.
fn check_hgrm(dir: &Path, label: &str, count: u64) {
    let text = std::fs::read_to_string(dir.join(format!("{label}.hgrm"))).expect("hgrm written");
    let footer = text
        .lines()
        .find(|l| l.starts_with("#[Max"))
        .expect("a #[Max line");
    let total: u64 = footer
        .rsplit('=')
        .next()
        .and_then(|s| s.trim().trim_end_matches(']').trim().parse().ok())
        .expect("a total count");
    assert_eq!(total, count, "{label}.hgrm: {footer}");
    let last_row = text
        .lines()
        .take_while(|l| !l.starts_with('#'))
        .filter(|l| !l.trim().is_empty())
        .last()
        .expect("rows");
    assert!(last_row.contains("1.000000000000"), "{last_row}");
}

fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let p = PathBuf::from("/usr/bin/chromium");
    assert!(
        p.is_file(),
        "this test renders the HTML report in headless Chromium: install the Debian package \
         `chromium` (apt-get install -y chromium), or set CHROMIUM to its binary"
    );
    p
}

/// Loads the report in headless Chromium and returns the DOM after its scripts ran.
fn rendered_dom(html: &Path) -> String {
    let profile = out_dir("chromium-profile");
    std::fs::create_dir_all(&profile).expect("profile folder");
    // To a file, not a pipe: a page bigger than the pipe buffer would block the browser.
    let dom_file = profile.join("dom.html");
    let mut child = metrics_edge::testing::KillOnDrop::new(
        Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                &format!("--user-data-dir={}", profile.display()),
                "--virtual-time-budget=5000",
                "--dump-dom",
            ])
            .arg(format!("file://{}", html.display()))
            .stdout(std::fs::File::create(&dom_file).expect("dom file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium starts"),
    );
    // Bounded: a browser that hangs fails the test instead of the suite.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish rendering the report within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let dom = std::fs::read_to_string(&dom_file).expect("the dumped DOM");
    let _ = std::fs::remove_dir_all(&profile);
    dom
}

#[test]
fn compare_writes_reports_that_add_up_and_render() {
    let load = Load {
        rate: 400,
        batch: 4,
        agents: 8,
        duration: 2.0,
        warmup: 0.5,
        grace: 5.0,
    };
    let (dir, out, r) = run_to_report(
        "compare",
        bench()
            .args(["compare", "--dashboards", "2"])
            .args(load.args()),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The terminal table shows both systems side by side.
    assert!(
        stdout.contains("System 1") && stdout.contains("System 2"),
        "{stdout}"
    );
    assert!(stdout.contains("latency p99"), "{stdout}");

    let systems = r["systems"].as_array().expect("systems");
    // System 1, System 2, then the reference relay with each one's transport.
    let labels: Vec<&str> = systems.iter().filter_map(|s| s["label"].as_str()).collect();
    assert_eq!(labels, ["system1", "system2", "relay-h2c", "relay-ws"]);
    assert_eq!(systems[0]["transport"], "h2c");
    assert_eq!(systems[1]["transport"], "ws");
    assert_eq!(systems[2]["transport"], "h2c");
    assert_eq!(systems[3]["transport"], "ws");
    // Each system against the relay of its transport, measured in the same run.
    for (s, relay) in [(&systems[0], "Relay (h2c)"), (&systems[1], "Relay (ws)")] {
        let v = &s["vs_relay"];
        assert_eq!(v["relay"], relay, "{v}");
        for k in ["seen_per_s", "p99", "cpu_per_sample"] {
            assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {v}");
        }
        assert!(s["cpu"]["system_us_per_sample"]
            .as_f64()
            .is_some_and(|x| x > 0.0));
    }
    assert!(systems[2]["vs_relay"].is_null());
    assert!(stdout.contains("p99, times the relay's"), "{stdout}");
    for s in systems {
        check_counts_add_up(s, 2);
        assert_eq!(s["target"], "embedded");
        let cpu = &s["cpu"];
        assert!(
            cpu["load_generator_share"].as_f64().expect("share") > 0.0,
            "{cpu}"
        );
        assert!(cpu["system_s"].as_f64().is_some(), "{cpu}");
        let label = s["label"].as_str().expect("label");
        check_hgrm(&dir, label, n(&s["latency_us"]["corrected"]["count"]));
    }
    // HTTP has acknowledgements; the WebSocket has none.
    assert!(n(&systems[0]["ack_latency_us"]["corrected"]["count"]) > 0);
    assert!(systems[1]["ack_latency_us"].is_null());
    assert!(n(&systems[2]["ack_latency_us"]["corrected"]["count"]) > 0);
    // Redis ran as the bench's own child, and its CPU was counted.
    assert!(systems[0]["cpu"]["redis_s"].as_f64().is_some());
    assert_eq!(r["params"]["rate_per_s"], 400.0);
    assert!(r["machine"]["cpus"].as_u64().expect("cpus") >= 1);

    // The HTML page is self-contained and draws its charts.
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html");
    assert!(!html.contains("__REPORT_JSON__"));
    assert!(!html.contains("src=\"http"), "the page fetches nothing");
    let dom = rendered_dom(&dir.join("report.html"));
    for id in ["latency-chart", "throughput-chart"] {
        let at = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| {
            panic!(
                "no #{id} in the rendered page:\n{}",
                &dom[..dom.len().min(3000)]
            )
        });
        assert!(dom[at..].contains("<path"), "#{id} has no curves");
    }
    assert!(dom.contains("System 1") && dom.contains("System 2"));
    assert!(
        dom.contains("Against the reference relay"),
        "the relay's table group"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The other transports: HTTP/1.1, HTTP/2 over TLS and the streaming endpoint into System 1,
/// WebSocket over TLS into System 2, and the reference relay's HTTP/1.1 (both dashboard parse
/// methods are used along the way).
#[test]
fn every_transport_delivers_every_sample() {
    for (system, flag, transport) in [
        ("system1", "--system1-transport", "h1"),
        ("system1", "--system1-transport", "h2tls"),
        ("system1", "--system1-transport", "stream"),
        ("system2", "--system2-transport", "wss"),
        ("relay", "--relay-transport", "h1"),
    ] {
        let load = Load {
            rate: 300,
            batch: 3,
            agents: 4,
            duration: 1.5,
            warmup: 0.3,
            grace: 5.0,
        };
        let (dir, _, r) = run_to_report(
            transport,
            bench()
                .args(["run", system, flag, transport])
                .args(load.args())
                .args([
                    "--dashboard-parse",
                    if system == "system1" { "scan" } else { "full" },
                ]),
        );
        let s = &r["systems"][0];
        assert_eq!(s["transport"], transport);
        check_counts_add_up(s, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Either side can be a URL: here a System 2 the test started itself, with separate agent and
/// dashboard tokens, which the bench presents each to its own role, and two stalled dashboards.
#[test]
fn a_url_target_is_measured_the_same_way() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let addr = rt.block_on(async {
        let mut s = aggregator::Settings::local();
        s.edge.agent_token = Some("agent-secret".into());
        s.edge.dashboard_token = Some("dashboard-secret".into());
        let l = aggregator::server::bind(&s).await.expect("bind");
        let server = <aggregator::Server as aggregator::Service>::start(s, l, shutdown.clone())
            .expect("start");
        server.running.plain_addr.expect("plain listener")
    });
    let (dir, out, r) = run_to_report(
        "url",
        bench()
            .args(["run", "system2"])
            .args(Load::SMALL.args())
            .arg("--system2")
            .arg(format!("ws://{addr}"))
            .args(["--agent-token", "agent-secret"])
            .args(["--dashboard-token", "dashboard-secret"])
            .args(["--stalled-dashboards", "2"]),
    );
    // Two more dashboards held without reading: the one that reads still sees everything.
    assert_eq!(r["params"]["stalled_dashboards"], 2);
    let s = &r["systems"][0];
    assert_eq!(s["target"], format!("ws://{addr}"));
    check_counts_add_up(s, 1);
    // The system runs elsewhere: its CPU is not the bench's to report.
    assert!(s["cpu"]["system_s"].is_null());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("ws://{addr}")));
    shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_flags_and_unreachable_targets_fail_with_a_reason() {
    let out = bench()
        .args(["run", "system2", "--batch", "0"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--batch must be 1 to 10000"));
    let out = bench()
        .args(["run", "system1", "--system1-transport", "ws"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("System 1 takes HTTP"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let out = bench()
        .args(["run", "system2", "--duration", "1", "--system2"])
        .arg(format!("ws://127.0.0.1:{port}"))
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connecting the dashboards") && err.contains(&port.to_string()),
        "{err}"
    );
}

/// Ctrl-C ends the run early and the report is still written, marked as stopped.
#[test]
fn ctrl_c_stops_the_run_and_still_writes_the_report() {
    let dir = out_dir("ctrlc");
    let load = Load {
        rate: 500,
        batch: 5,
        agents: 4,
        duration: 60.0,
        warmup: 0.2,
        grace: 1.0,
    };
    let mut child = metrics_edge::testing::KillOnDrop::new(
        bench()
            .args(["run", "system2"])
            .args(load.args())
            .arg("--out")
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    std::thread::sleep(Duration::from_secs(3));
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the bench did not stop after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.into_inner().wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report(&dir);
    let s = &r["systems"][0];
    assert_eq!(s["stopped_early"], true);
    let d = s["duration_s"].as_f64().expect("duration");
    assert!(d > 0.5 && d < 30.0, "measured {d} s of a 60 s run");
    assert!(n(&s["counts"]["sent"]) > 0);
    assert_eq!(n(&s["counts"]["lost"]), 0, "{}", s["counts"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bench max` steps the rate and reports each step; at these low rates every step passes.
#[test]
fn max_reports_each_step_and_the_best_passing_one() {
    let (dir, out, r) = run_to_report(
        "max",
        bench()
            .args(["max", "system2", "--factor", "2", "--max-steps", "2"])
            .args(Load::SMALL.args())
            .args(["--p99-ms", "1000"]),
    );
    let steps = r["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_eq!(steps[0]["rate_per_s"], 200.0);
    assert_eq!(steps[1]["rate_per_s"], 400.0);
    assert!(steps.iter().all(|s| s["pass"] == true), "{steps:?}");
    // The report's system is the best passing step.
    let s = &r["systems"][0];
    assert_eq!(s["throughput"]["offered_per_s"], 400.0);
    check_counts_add_up(s, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("every step passed"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bench max --tries`: a failing step is run again before it counts as failed, and every run
/// is reported with its number. A p99 bound no run can meet fails each run.
#[test]
fn max_runs_a_failing_step_again_up_to_its_tries() {
    let (dir, out, r) = run_to_report(
        "max",
        bench()
            .args(["max", "system2", "--factor", "2", "--max-steps", "2"])
            .args(["--tries", "2"])
            .args(Load::SMALL.args())
            .args(["--p99-ms", "0.001"]),
    );
    let steps = r["steps"].as_array().expect("steps");
    let runs: Vec<(u64, u64, f64)> = steps
        .iter()
        .map(|s| {
            assert_eq!(s["pass"], false, "{s}");
            (
                n(&s["step"]),
                n(&s["attempt"]),
                s["rate_per_s"].as_f64().expect("rate"),
            )
        })
        .collect();
    // The first step fails twice, so the search goes down, and fails twice again.
    assert_eq!(
        runs,
        vec![(1, 1, 200.0), (1, 2, 200.0), (2, 1, 100.0), (2, 2, 100.0)],
        "{steps:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("step 1 (run 2 of 2)"), "{stderr}");
    assert!(stderr.contains("no step passed"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

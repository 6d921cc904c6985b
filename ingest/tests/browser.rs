//! The dashboard page in a real headless Chromium against System 1: nothing acknowledged is
//! lost to a dashboard whose broadcaster restarts.
//!
//! A front door and a worker stay up; a broadcaster serves the page. The test stops the
//! broadcaster, posts samples while it is down, starts a new broadcaster on the same port and
//! checks, over the DevTools protocol, that the page reconnected with `?since=` (its filter
//! kept) and received every sample it missed, each counted once (the replay also resends
//! samples the page had, which it drops by id), with the replay shown in its status. Then it does
//! it again with the stream trimmed meanwhile, and checks the page warns that samples were lost.
//!
//! Chromium and the protocol are `metrics_edge::testing::{chromium, cdp}` (see the aggregator's
//! browser test for how the browser is found). Set `DASHBOARD_SCREENSHOT=/path/to/file.png` to
//! save a screenshot of the page at the end.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use common::*;
use ingest::{Listeners, Role, Server, Settings};
use metrics_edge::testing::cdp::{check, count, Cdp, PageState};
use metrics_edge::testing::chromium::{chromium_binary, Chromium, TEST_BUDGET};
use serde_json::{json, Value};

/// The page's state as this test reads it.
const STATE: PageState = PageState::new(PAGE_STATE_JS);
const SERVER: &str = "resume-1";
/// Samples posted while the broadcaster is down, the first time.
const MISSED: u64 = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_resumes_after_a_broadcaster_restart_with_every_missed_sample() {
    let started = Instant::now();
    // Found before anything starts, so a missing browser fails with a clear message.
    let binary = chromium_binary();
    let redis = Redis::start();
    let s = settings(&redis);
    let front = start_role(s.clone(), Role::Front).await;
    let _worker = start_role(s.clone(), Role::Worker).await;
    let broadcaster = start_role(s.clone(), Role::Broadcaster).await;

    let browser = Chromium::launch(&binary);
    let run = scenario(&browser, &redis, s, front.addr, broadcaster);
    let outcome = tokio::time::timeout(TEST_BUDGET, run).await;
    browser.finish(outcome);
    eprintln!("browser test took {:.1?}", started.elapsed());
}

async fn scenario(
    browser: &Chromium,
    redis: &Redis,
    settings: Settings,
    front: SocketAddr,
    broadcaster: TestServer,
) -> Result<(), String> {
    let mut cdp = Cdp::connect(browser.devtools_url().await?).await?;
    let addr = broadcaster.addr;
    let page = cdp
        .open(&format!("http://{addr}/?serverId={SERVER}"))
        .await?;
    page.wait_for_state(&mut cdp, STATE, "the page connected", |s| {
        s["state"] == "connected"
    })
    .await?;

    // 1. Live samples of one server.
    for i in 1..=5 {
        post_accepted(front, &Transport::H2c, sample(SERVER, f64::from(i))).await;
    }
    let live = page
        .wait_for_state(&mut cdp, STATE, "five live samples plotted", |s| {
            count(s, "samples") == 5 && s["plotted"] == SERVER
        })
        .await?;

    // 2. The broadcaster goes away; samples keep being accepted.
    let broadcaster = restart(broadcaster, &settings, || async {
        for i in 0..MISSED {
            post_accepted(front, &Transport::H2c, sample(SERVER, missed_cpu(i))).await;
        }
    })
    .await;
    let s = page
        .wait_for_state(
            &mut cdp,
            STATE,
            "every sample missed while the broadcaster was down",
            |s| {
                s["state"] == "connected"
                    && count(s, "samples") >= 5 + MISSED
                    && !s["replayed"].is_null()
            },
        )
        .await?;
    check(
        count(&s, "samples") == 5 + MISSED,
        "nothing received twice",
        &s,
    )?;
    for i in 0..MISSED {
        let cpu = missed_cpu(i);
        check(
            received(&s, cpu) == 1,
            &format!("the missed sample with cpu {cpu} received once"),
            &s,
        )?;
    }
    // Where it resumed: after the last sample it had seen, keeping its filter.
    let last_live = id_of(&s, 5.0).ok_or("the page kept no id for the 5th sample")?;
    let url = s["connections"]
        .as_array()
        .and_then(|c| c.last())
        .and_then(Value::as_str)
        .unwrap_or_default();
    check(
        url.contains(&format!("since={}", last_live.replace('/', "%2F")))
            && url.contains(&format!("serverId={SERVER}")),
        &format!("the page reconnected with since={last_live} and its serverId"),
        &s,
    )?;
    check(
        live["connections"]
            .as_array()
            .is_some_and(|c| c.len() == 1 && !c[0].to_string().contains("since=")),
        "one connection before the restart, without since",
        &live,
    )?;
    // The replay starts at a watermark confirmed before the 5th sample was relayed, so it
    // sends that one (at least) again: the page drops what it had, by id, and counts it.
    let sent = s["replayed"]["count"].as_u64().unwrap_or(0);
    check(
        sent > MISSED && s["replayed"]["complete"] == true,
        "a complete replay of the missed samples, and of some the page had",
        &s,
    )?;
    check(
        s["duplicates"].as_u64() == Some(sent - MISSED),
        "every replayed sample the page had dropped as a duplicate",
        &s,
    )?;
    check(
        s["resume"]["hidden"] == false
            && s["resume"]["complete"] == "true"
            && s["resume"]["text"]
                == format!(
                    "resumed: {MISSED} samples replayed ({} already shown, dropped)",
                    sent - MISSED
                ),
        "the replay shown next to the status",
        &s,
    )?;
    check(s["errors"] == json!([]), "no errors shown", &s)?;

    // 3. Down again, and the stream trimmed meanwhile: the page says samples were lost.
    let _broadcaster = restart(broadcaster, &settings, || async {
        for i in 0..6 {
            post_accepted(front, &Transport::H2c, sample(SERVER, 200.0 + f64::from(i))).await;
        }
        let _: u64 = redis::cmd("XTRIM")
            .arg("metrics:samples")
            .arg("MAXLEN")
            .arg(2)
            .query(&mut redis.conn())
            .expect("XTRIM");
    })
    .await;
    let s = page
        .wait_for_state(&mut cdp, STATE, "an incomplete replay reported", |s| {
            s["state"] == "connected" && s["resume"]["complete"] == "false"
        })
        .await?;
    check(
        s["replayed"]["count"] == 2 && received(&s, 204.0) == 1 && received(&s, 205.0) == 1,
        "what retention kept was replayed",
        &s,
    )?;
    check(
        s["resume"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("may be missing")),
        "a warning that samples were lost",
        &s,
    )?;
    check(
        s["errors"].to_string().contains("incomplete"),
        "the loss logged under Errors",
        &s,
    )?;

    if let Ok(path) = std::env::var("DASHBOARD_SCREENSHOT") {
        page.screenshot(&mut cdp, Path::new(&path)).await?;
    }
    page.close(&mut cdp).await?;
    // A clean exit lets Chromium reap its helper processes (a kill leaves them to init).
    let _ = cdp.call(None, "Browser.close", json!({})).await;
    Ok(())
}

/// The cpu value of the `i`th sample posted while the broadcaster is down.
fn missed_cpu(i: u64) -> f64 {
    100.0 + i as f64
}

/// Stops `old` (and waits for it to drain), runs `meanwhile`, and starts a new broadcaster on
/// the same address, so the page reconnects to it by itself.
async fn restart<F, Fut>(mut old: TestServer, settings: &Settings, meanwhile: F) -> TestServer
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let addr = old.addr;
    old.shutdown.cancel();
    tokio::time::timeout(WAIT, &mut old.done)
        .await
        .expect("the broadcaster drains in time")
        .expect("the broadcaster's task");
    drop(old);
    meanwhile().await;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind the stopped broadcaster's address");
    let mut settings = settings.clone();
    settings.role = Role::Broadcaster;
    let listeners = Listeners {
        plain: Some(listener),
        tls: None,
        limits: settings.edge.conn,
        ..Default::default()
    };
    start_on::<Server>(settings, listeners)
}

/// What the test reads from the page, as one JSON object. `window.dashboardDebug` is the page's
/// record of its connections and latest samples; a page without it reads as none. `null` while
/// the page is still loading.
const PAGE_STATE_JS: &str = r##"(() => {
  const q = (id) => document.getElementById(id);
  const d = window.dashboardDebug || null;
  const r = q("resume");
  if (!q("status") || !q("errors")) return null; // still loading
  return JSON.stringify({
    status: q("status").textContent.trim(),
    state: q("status").dataset.state,
    samples: q("sample-count").textContent.trim(),
    plotted: q("charts").dataset.servers,
    errors: [...q("errors").querySelectorAll("li:not(.none)")].map((li) => li.textContent),
    resume: r ? { text: r.textContent, hidden: r.hidden, complete: r.dataset.complete || null } : null,
    connections: d ? d.connections : [],
    replayed: d ? d.replayed : null,
    duplicates: d ? d.duplicates : null,
    received: d ? d.recent.filter(Boolean).map((e) => ({ id: e.id, serverId: e.serverId, cpu: e.metrics.cpu })) : [],
  });
})()"##;

/// How many of the page's recorded samples of [`SERVER`] have this cpu value.
fn received(state: &Value, cpu: f64) -> usize {
    samples_with(state, cpu).count()
}

/// The stream position of the page's recorded sample with this cpu value.
fn id_of(state: &Value, cpu: f64) -> Option<String> {
    samples_with(state, cpu)
        .find_map(|e| e["id"].as_str())
        .map(str::to_string)
}

fn samples_with(state: &Value, cpu: f64) -> impl Iterator<Item = &Value> {
    state["received"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |e| e["serverId"] == SERVER && e["cpu"].as_f64() == Some(cpu))
}

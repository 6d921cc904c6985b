//! The dashboard page in a real headless Chromium, against a real server with simulated agents.
//!
//! The test starts the server in-process on 127.0.0.1, launches Chromium with a fresh profile
//! and drives it over the DevTools protocol (CDP), spoken through the workspace's own WebSocket
//! client. It asserts on what the page rendered (its DOM and canvas pixels), polling until the
//! live data has arrived or a deadline passes.
//!
//! Chromium is found through `$CHROMIUM`, then `/usr/bin/chromium`, then `chromium` on `PATH`.
//! Without it the test fails (install the Debian package `chromium`); it never passes silently.
//! Set `DASHBOARD_SCREENSHOT=/path/to/file.png` to also save a screenshot of the live page.
//!
//! The browser and the protocol are test helpers both systems' browser tests share
//! (`metrics_edge::testing::{chromium, cdp}`). This file holds what the test looks for on the
//! page.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aggregator::{Listeners, Server, Service, Settings};
use metrics_edge::testing::cdp::{check, count, Cdp, PageState};
use metrics_edge::testing::chromium::{chromium_binary, Chromium, TEST_BUDGET};
use metrics_model::window::WindowSpec;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The page's state as this test reads it.
const STATE: PageState = PageState::new(PAGE_STATE_JS);
const TOKEN: &str = "browser-test-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_live_data_in_headless_chromium() {
    let started = Instant::now();
    // Found before anything starts, so a missing browser fails with a clear message.
    let binary = chromium_binary();

    let mut settings = Settings::local();
    settings.edge.token = Some(TOKEN.to_string());
    settings.edge.windows = WindowSpec::parse_list("1s,10s").expect("windows");
    let shutdown = CancellationToken::new();
    // Stops the server and the agents however the test ends.
    let _stop = shutdown.clone().drop_guard();
    let listeners = Listeners {
        plain: Some(TcpListener::bind("127.0.0.1:0").await.expect("bind")),
        tls: None,
        limits: settings.edge.conn,
        ..Default::default()
    };
    let server = Server::start(settings, listeners, shutdown.clone()).expect("server starts");
    let addr = server.running.plain_addr.expect("plain listener");
    tokio::spawn(aggregator::simulate::run(
        addr,
        3,
        20.0,
        Some(TOKEN.to_string()),
        shutdown.clone(),
    ));

    let browser = Chromium::launch(&binary);
    let outcome = tokio::time::timeout(TEST_BUDGET, scenarios(&browser, addr)).await;
    browser.finish(outcome);
    eprintln!("browser test took {:.1?}", started.elapsed());
}

/// Starts a server on `addr` (a free port when `None`); returns it, where it listens, and the
/// token that stops it.
async fn start_server(addr: Option<SocketAddr>) -> (Server, SocketAddr, CancellationToken) {
    let settings = Settings::local();
    let shutdown = CancellationToken::new();
    let bind = addr.unwrap_or_else(|| "127.0.0.1:0".parse().expect("addr"));
    let listeners = Listeners {
        plain: Some(TcpListener::bind(bind).await.expect("bind")),
        tls: None,
        limits: settings.edge.conn,
        ..Default::default()
    };
    let server = Server::start(settings, listeners, shutdown.clone()).expect("server starts");
    let addr = server.running.plain_addr.expect("plain listener");
    (server, addr, shutdown)
}

/// System 2 keeps nothing across a restart, so what must survive one is the clients' own
/// doing: the page and the (simulated) agents see the server go away (1001) and reconnect by
/// themselves with backoff; the page then shows new live samples. Windows start empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_and_agents_reconnect_by_themselves_after_a_restart() {
    let binary = chromium_binary();
    let (server, addr, stop_first) = start_server(None).await;
    let agents = CancellationToken::new();
    let _stop_agents = agents.clone().drop_guard();
    tokio::spawn(aggregator::simulate::run(
        addr,
        2,
        20.0,
        None,
        agents.clone(),
    ));
    let browser = Chromium::launch(&binary);
    let outcome = tokio::time::timeout(TEST_BUDGET, async {
        let mut cdp = Cdp::connect(browser.devtools_url().await?).await?;
        let page = cdp.open(&format!("http://{addr}/")).await?;
        page.wait_for_state(&mut cdp, STATE, "live data before the restart", |s| {
            s["state"] == "connected" && count(s, "samples") > 10
        })
        .await?;

        // Stopped: every socket is closed (1001) and the port refuses connections.
        stop_first.cancel();
        server.wait().await;
        let s = page
            .wait_for_state(
                &mut cdp,
                STATE,
                "the page noticing the server is gone",
                |s| s["state"] != "connected",
            )
            .await?;
        let before = count(&s, "samples");

        // Started again on the same port: nobody is told; page and agents come back alone.
        let (_again, _, stop_again) = start_server(Some(addr)).await;
        let _stop_again = stop_again.drop_guard();
        let s = page
            .wait_for_state(&mut cdp, STATE, "new live samples after the restart", |s| {
                s["state"] == "connected" && count(s, "samples") > before + 10
            })
            .await?;
        check(
            has(&s["options"], "sim-01") && has(&s["options"], "sim-02"),
            "both agents are back",
            &s,
        )?;
        check(
            s["errors"] == json!([]),
            "a restart is not reported as an error",
            &s,
        )?;
        let _ = cdp.call(None, "Browser.close", json!({})).await;
        Ok(())
    })
    .await;
    browser.finish(outcome);
}

async fn scenarios(browser: &Chromium, addr: SocketAddr) -> Result<(), String> {
    let mut cdp = Cdp::connect(browser.devtools_url().await?).await?;
    let base = format!("http://{addr}/?token={TOKEN}");

    // 1. All servers: live status, counters, charts, filter options, latency.
    let page = cdp.open(&base).await?;
    let s = page
        .wait_for_state(&mut cdp, STATE, "live data from all three agents", |s| {
            s["state"] == "connected"
                && count(s, "samples") > 0
                && count(s, "windowEvents") > 0
                && has(&s["charts"], "cpu")
                && has(&s["options"], "sim-01")
                && s["plotted"] == "sim-01,sim-02,sim-03"
                && s["latency"].as_str().is_some_and(|l| l.contains("ms"))
                && s["windowRows"].as_u64() > Some(0)
        })
        .await?;
    check(s["status"] == "connected", "status text is `connected`", &s)?;
    check(s["system"] == "system2-websocket", "system name shown", &s)?;
    check(!has(&s["charts"], "send_us"), "send_us is not charted", &s)?;
    for m in ["memory", "network.in", "network.out", "latency_ms"] {
        check(has(&s["charts"], m), &format!("a chart for `{m}`"), &s)?;
    }
    check(
        s["options"] == json!(["", "sim-01", "sim-02", "sim-03"]),
        "filter lists All servers and the sorted server ids",
        &s,
    )?;
    check(s["errors"] == json!([]), "no errors shown", &s)?;
    check(
        s["cpuInk"].as_u64() > Some(200),
        "the cpu canvas has lines drawn on it",
        &s,
    )?;
    let latency = s["latency"].as_str().unwrap_or_default();
    check(
        latency.starts_with("p50 ") && latency.contains(" · p99 ") && latency.contains(" · last "),
        "latency reads `p50 .. ms · p99 .. ms · last .. ms`",
        &s,
    )?;
    page.screenshot_if_asked(&mut cdp, "DASHBOARD_SCREENSHOT", Duration::from_secs(3))
        .await?;

    // 2. Choosing a server in the filter subscribes to it and narrows the charts to it.
    page.select(&mut cdp, "server-filter", "sim-02").await?;
    let s = page
        .wait_for_state(&mut cdp, STATE, "the filter narrowed to sim-02", |s| {
            s["confirmed"] == "sim-02" && s["plotted"] == "sim-02"
        })
        .await?;
    check(
        s["url"]
            .as_str()
            .is_some_and(|u| u.contains("serverId=sim-02")),
        "the page URL keeps the filter",
        &s,
    )?;
    let before = count(&s, "samples");
    let s = page
        .wait_for_state(
            &mut cdp,
            STATE,
            "more samples after the filter change",
            |s| count(s, "samples") > before + 20,
        )
        .await?;
    check(s["plotted"] == "sim-02", "only sim-02 is plotted", &s)?;
    check(s["errors"] == json!([]), "no errors after subscribe", &s)?;
    page.close(&mut cdp).await?;

    // 3. A serverId in the page URL is carried over to /ws.
    let page = cdp.open(&format!("{base}&serverId=sim-02")).await?;
    let s = page
        .wait_for_state(&mut cdp, STATE, "a page filtered by its URL", |s| {
            s["state"] == "connected"
                && s["confirmed"] == "sim-02"
                && s["plotted"] == "sim-02"
                && has(&s["charts"], "cpu")
                && count(s, "samples") > 0
        })
        .await?;
    check(s["selected"] == "sim-02", "the filter shows sim-02", &s)?;
    // The other servers never send to this page: it learns them from the snapshot it asks for.
    page.wait_for_state(&mut cdp, STATE, "the filter offering every server", |s| {
        s["options"] == json!(["", "sim-01", "sim-02", "sim-03"])
    })
    .await?;
    page.close(&mut cdp).await?;

    // 4. Refused sockets (here: wrong token) show as disconnected, with the server's reason
    // (asked again with a plain request: the browser hides the refused upgrade's status).
    let page = cdp.open(&format!("http://{addr}/?token=wrong")).await?;
    let s = page
        .wait_for_state(&mut cdp, STATE, "a refused socket reported", |s| {
            s["errors"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|m| m.as_str().unwrap_or("").contains("cannot open"))
            })
        })
        .await?;
    check(
        s["errors"]
            .to_string()
            .contains("401 missing or wrong token: this route needs the dashboard token")
            && s["refusalStatus"] == "401"
            && s["refusal"]
                .as_str()
                .is_some_and(|r| r.starts_with("refused: 401 missing or wrong token")),
        "the reason shown: 401, missing or wrong token",
        &s,
    )?;
    check(
        count(&s, "samples") == 0,
        "no samples without the token",
        &s,
    )?;
    let s = page
        .wait_for_state(&mut cdp, STATE, "status disconnected", |s| {
            s["state"] == "disconnected" && s["status"] == "disconnected"
        })
        .await?;
    check(
        s["errors"].to_string().contains("token=…"),
        "the token is not echoed in the error log",
        &s,
    )?;
    page.close(&mut cdp).await?;

    // A clean exit lets Chromium reap its helper processes (a kill leaves them to init).
    let _ = cdp.call(None, "Browser.close", json!({})).await;
    Ok(())
}

/// What the test reads from the page, as one JSON object.
const PAGE_STATE_JS: &str = r##"(() => {
  const q = (id) => document.getElementById(id);
  const text = (id) => (q(id) ? q(id).textContent.trim() : null);
  let cpuInk = 0;
  const cpu = document.querySelector('#charts .chart[data-metric="cpu"] canvas');
  if (cpu && cpu.width && cpu.height) {
    const px = cpu.getContext("2d").getImageData(0, 0, cpu.width, cpu.height).data;
    for (let i = 3; i < px.length; i += 4) if (px[i] > 0) cpuInk++;
  }
  return JSON.stringify({
    url: location.href,
    status: text("status"),
    state: q("status") ? q("status").dataset.state : null,
    system: text("system"),
    samples: text("sample-count"),
    windowEvents: text("window-count"),
    dropped: text("dropped-count"),
    latency: text("latency"),
    charts: [...document.querySelectorAll("#charts .chart")].map((c) => c.dataset.metric),
    plotted: q("charts") ? q("charts").dataset.servers : null,
    options: q("server-filter") ? [...q("server-filter").options].map((o) => o.value) : null,
    selected: q("server-filter") ? q("server-filter").value : null,
    confirmed: q("server-filter") ? q("server-filter").dataset.filter : null,
    refusal: q("refusal") && !q("refusal").hidden ? q("refusal").textContent.trim() : null,
    refusalStatus: q("refusal") && !q("refusal").hidden ? q("refusal").dataset.status : null,
    windowRows: q("windows") ? q("windows").querySelectorAll("tr:not(:has(td.none))").length : null,
    errors: q("errors") ? [...q("errors").querySelectorAll("li:not(.none)")].map((li) => li.textContent) : null,
    cpuInk,
  });
})()"##;

fn has(list: &Value, item: &str) -> bool {
    list.as_array()
        .is_some_and(|l| l.iter().any(|v| v.as_str() == Some(item)))
}

//! The dashboard page's side-by-side mode in a real headless Chromium, against both systems at
//! once: System 1 (on a redis-server of its own) serves the page, System 2 (with a dashboard
//! token, and System 1's origin in its --allowed-origins) runs beside it, and the same two
//! servers send to both. The page shows each system's charts for the same servers and both
//! latency indicators, narrows both columns with one filter, and says why a column's stream was
//! refused (a wrong token, a wrong path, an Origin not allowed) instead of only reconnecting.
//!
//! Set `SIDE_BY_SIDE_SCREENSHOT=/path/to/file.png` to also save a screenshot (docs/side-by-side.png).

use std::net::SocketAddr;
use std::time::Duration;

use metrics_edge::auth::AllowedOrigins;
use metrics_edge::testing::cdp::{check, count, Cdp, PageState};
use metrics_edge::testing::chromium::{chromium_binary, Chromium, TEST_BUDGET};
use metrics_edge::testing::start;
use metrics_model::random_walk::{MetricSet, RandomWalk, SampleHead};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "side-by-side-token";
const STATE: PageState = PageState::new(STATE_JS);

/// The simulated servers' samples to System 1, as its agents send them (`POST /metrics`, the
/// same walk and metric set System 2's simulated agents use), until `stop`; the first refusal
/// ends it with the answer.
async fn post_samples(
    addr: SocketAddr,
    servers: usize,
    stop: CancellationToken,
) -> Result<(), String> {
    let mut walks: Vec<RandomWalk> = (0..servers)
        .map(|i| RandomWalk::new(i as u64 + 1))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while !stop.is_cancelled() {
        tick.tick().await;
        let mut body = b"[".to_vec();
        for (i, w) in walks.iter_mut().enumerate() {
            w.step();
            if i > 0 {
                body.push(b',');
            }
            let server = format!("sim-{:02}", i + 1);
            let head = SampleHead {
                server_id: &server,
                timestamp_ms: Some(metrics_model::now_ms()),
                send_us: metrics_model::now_us(),
                counters: &[],
            };
            w.write_sample(&mut body, MetricSet::Simulated, &head);
        }
        body.push(b']');
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
            continue;
        };
        let head = format!(
            "POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut reply = Vec::new();
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.write_all(&body).await;
        let _ = s.read_to_end(&mut reply).await;
        if !reply.starts_with(b"HTTP/1.1 202") {
            return Err(format!(
                "System 1 refused the samples: {}",
                String::from_utf8_lossy(&reply)
            ));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn side_by_side_shows_both_systems_and_says_why_a_stream_was_refused() {
    let binary = chromium_binary();
    let redis = tokio::task::spawn_blocking(bench::systems::RedisChild::start)
        .await
        .expect("join")
        .expect("redis-server starts");
    let s1 = start::<ingest::Server>(ingest::Settings::local(&redis.url), None).await;
    let mut settings = aggregator::Settings::local();
    settings.edge.token = Some(TOKEN.to_string());
    settings.edge.allowed_origins =
        AllowedOrigins::parse(&format!("http://{}", s1.addr)).expect("origin");
    let s2 = start::<aggregator::Server>(settings, None).await;
    let agents = CancellationToken::new();
    let _stop = agents.clone().drop_guard();
    tokio::spawn(aggregator::simulate::run(
        s2.addr,
        2,
        20.0,
        Some(TOKEN.to_string()),
        agents.clone(),
    ));
    let poster = tokio::spawn(post_samples(s1.addr, 2, agents.clone()));

    let browser = Chromium::launch(&binary);
    let outcome = tokio::time::timeout(TEST_BUDGET, scenario(&browser, s1.addr, s2.addr)).await;
    agents.cancel();
    // A refusal explains a page without System 1's samples better than the page's wait does.
    poster
        .await
        .expect("the sample poster panicked")
        .expect("System 1 took every POST");
    browser.finish(outcome);
}

async fn scenario(browser: &Chromium, s1: SocketAddr, s2: SocketAddr) -> Result<(), String> {
    let mut cdp = Cdp::connect(browser.devtools_url().await?).await?;

    // 1. Both systems' streams, one column each, from the page System 1 serves.
    let page = cdp
        .open(&format!(
            "http://{s1}/?compare=ws://{s1}/ws,ws://{s2}/ws?token={TOKEN}"
        ))
        .await?;
    let s = page
        .wait_for_state(&mut cdp, STATE, "both columns live", |s| {
            s["cols"].as_array().is_some_and(|c| {
                c.len() == 2
                    && c.iter().all(|c| {
                        c["state"] == "connected"
                            && count(c, "samples") > 5
                            && c["plotted"] == "sim-01,sim-02"
                            && c["latency"].as_str().is_some_and(|l| l.contains(" ms"))
                    })
            }) && s["options"] == json!(["", "sim-01", "sim-02"])
        })
        .await?;
    let cols = s["cols"].as_array().cloned().unwrap_or_default();
    check(
        cols[0]["system"]
            .as_str()
            .is_some_and(|x| x.starts_with("system1")),
        "the first column is System 1",
        &s,
    )?;
    check(
        cols[1]["system"] == "system2-websocket",
        "the second column is System 2",
        &s,
    )?;
    for c in &cols {
        check(
            c["charts"]
                .as_array()
                .is_some_and(|m| m.contains(&json!("cpu"))),
            "a cpu chart in each column",
            &s,
        )?;
        check(c["errors"] == json!([]), "no errors in either column", &s)?;
    }
    check(
        !cols[1]["stream"].to_string().contains(TOKEN),
        "the token is not shown",
        &s,
    )?;

    page.screenshot_if_asked(&mut cdp, "SIDE_BY_SIDE_SCREENSHOT", Duration::from_secs(4))
        .await?;

    // 2. One filter narrows both columns to the same server.
    page.select(&mut cdp, "compare-filter", "sim-02").await?;
    let s = page
        .wait_for_state(&mut cdp, STATE, "both columns narrowed to sim-02", |s| {
            s["cols"].as_array().is_some_and(|c| {
                c.iter()
                    .all(|c| c["plotted"] == "sim-02" && c["confirmed"] == "sim-02")
            })
        })
        .await?;
    check(
        s["url"]
            .as_str()
            .is_some_and(|u| u.contains("serverId=sim-02")),
        "the page URL keeps the filter",
        &s,
    )?;
    page.close(&mut cdp).await?;

    // 3. Refused streams say why: a wrong token, a wrong path, (from the page System 2 serves)
    // System 1 not allowing System 2's origin, and a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?;
    let page = cdp
        .open(&format!(
            "http://{s2}/?compare=ws://{s2}/ws?token=wrong,ws://{s2}/nowhere?token={TOKEN},ws://{s1}/ws,ws://{closed}/ws"
        ))
        .await?;
    let s = page
        .wait_for_state(&mut cdp, STATE, "four refusals explained", |s| {
            s["cols"].as_array().is_some_and(|c| {
                c.len() == 4
                    && c.iter().all(|c| {
                        c["refusalStatus"].is_string()
                            && c["status"]
                                .as_str()
                                .is_some_and(|t| t.starts_with("refused"))
                    })
            })
        })
        .await?;
    let cols = s["cols"].as_array().cloned().unwrap_or_default();
    let expect = [
        ("401", "missing or wrong token"),
        ("404", "no route for /nowhere"),
        ("403", "may not open a dashboard here"),
        ("unreachable", "no answer (server down, wrong address"),
    ];
    for (c, (status, why)) in cols.iter().zip(expect) {
        check(
            c["refusalStatus"] == status
                && c["refusal"].as_str().is_some_and(|r| r.contains(why))
                && c["status"].as_str().is_some_and(|r| r.contains(why)),
            &format!("a {status} refusal saying `{why}`"),
            &s,
        )?;
        check(
            c["errors"].to_string().contains(why) && c["state"] != "connected",
            &format!("the refusal `{why}` logged once, not connected"),
            &s,
        )?;
        check(count(c, "samples") == 0, "no samples", &s)?;
    }
    check(
        !s["cols"].to_string().contains("token=wrong"),
        "the token is not echoed",
        &s,
    )?;
    page.close(&mut cdp).await?;

    // 4. An empty compare= shows the form, this host's stream filled in; submitting two URLs
    // opens the columns.
    let page = cdp.open(&format!("http://{s1}/?compare=")).await?;
    let form = page
        .wait_for_json(
            &mut cdp,
            r##"JSON.stringify([...document.querySelectorAll("#compare input")].map((i) => i.value))"##,
            STATE.wait,
            "the form",
            |v| v.as_array().is_some_and(|i| i.len() == 2),
        )
        .await?;
    check(
        form == json!([format!("ws://{s1}/ws"), ""]),
        "the form offers this host's stream first",
        &form,
    )?;
    page.eval(
        &mut cdp,
        &format!(
            r##"(() => {{ const i = document.querySelectorAll("#compare input");
                 i[1].value = "ws://{s2}/ws?token={TOKEN}";
                 document.querySelector("#compare form").requestSubmit(); return true; }})()"##
        ),
    )
    .await?;
    page.wait_for_state(&mut cdp, STATE, "the submitted streams in columns", |s| {
        s["cols"]
            .as_array()
            .is_some_and(|c| c.len() == 2 && c.iter().all(|c| c["state"] == "connected"))
    })
    .await?;
    page.close(&mut cdp).await?;
    let _ = cdp.call(None, "Browser.close", json!({})).await;
    Ok(())
}

/// The side-by-side page's state: its columns (read inside their embedded pages) and filter.
const STATE_JS: &str = r##"(() => {
  const cols = [...document.querySelectorAll(".compare-col")].map((c) => {
    const d = c.querySelector("iframe")?.contentDocument;
    const q = (id) => d?.getElementById(id);
    const t = (id) => q(id)?.textContent.trim() ?? null;
    return {
      stream: c.dataset.stream,
      system: c.querySelector(".compare-system")?.textContent,
      state: c.querySelector(".compare-status")?.dataset.state,
      status: c.querySelector(".compare-status")?.textContent,
      latency: c.querySelector(".compare-latency")?.textContent,
      samples: t("sample-count"),
      plotted: q("charts")?.dataset.servers ?? null,
      confirmed: q("server-filter")?.dataset.filter ?? null,
      charts: d ? [...d.querySelectorAll("#charts .chart")].map((x) => x.dataset.metric) : [],
      refusal: q("refusal") && !q("refusal").hidden ? t("refusal") : null,
      refusalStatus: q("refusal") && !q("refusal").hidden ? q("refusal").dataset.status : null,
      errors: d ? [...d.querySelectorAll("#errors li:not(.none)")].map((li) => li.textContent) : [],
    };
  });
  const f = document.getElementById("compare-filter");
  return JSON.stringify({ url: location.href, cols, options: f ? [...f.options].map((o) => o.value) : [] });
})()"##;

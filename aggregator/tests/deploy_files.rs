//! System 2 as `deploy/systemd/aggregator.service` and `deploy/env/aggregator.env` describe it:
//! started with the unit's `ExecStart=` flags and nothing in its environment but the env file's
//! variables (the TLS address moved to a free loopback port, the certificate files replaced by a
//! development certificate). An agent with the env file's agent token sends a sample over WSS;
//! a dashboard with the dashboard token sees it; SIGTERM drains and exits 0.

mod common;

use std::path::Path;

use common::*;
use metrics_edge::testing::deploy::{self, Deployed, Scratch, Unit};

#[test]
fn unit_agrees_with_its_env_file() {
    let unit = Unit::load("aggregator.service");
    let problems = unit.problems("AGG");
    assert!(problems.is_empty(), "{problems:#?}");
    // Two listeners need twice the open files: the check counts them.
    let edited = |from, to| Unit::problems_if_edited("aggregator.service", "AGG", from, to);
    let both = edited("--listen off", "--listen [::]:8080");
    assert!(both.is_empty(), "65536 covers two listeners: {both:?}");
    let small = edited("LimitNOFILE=65536", "LimitNOFILE=16384");
    assert!(small.iter().any(|p| p.contains("LimitNOFILE")), "{small:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system2_as_deployed_serves_wss_end_to_end() {
    let bin = Path::new(env!("CARGO_BIN_EXE_aggregator"));
    let certs = devcerts::generate(&[]).expect("certs");
    let creds = Scratch::new("deploy-creds");
    let unit = Unit::load("aggregator.service");
    deploy::write_credentials(&unit, &creds.0, &certs);

    let mut agg = Deployed::start(bin, &unit, None, &creds.0, &[]);
    assert!(agg.plain.is_none(), "TLS only");
    let client = deploy::client_http11(&certs);
    agg.wait_ready(&client, "/healthz").await;
    let printed = agg.output();
    assert!(
        printed.contains("https://") && !printed.contains("http://"),
        "{printed}"
    );
    let addr = agg.tls.expect("tls");

    let dash_token = unit.var("AGG_DASHBOARD_TOKEN");
    let agent_token = unit.var("AGG_AGENT_TOKEN");
    refused_with(
        connect_with(addr, "/ingest", Some(client.clone()), &[]).await,
        "401",
        "an agent without the env file's token",
    );
    let mut dash = connect_with(
        addr,
        &format!("/ws?token={dash_token}"),
        Some(client.clone()),
        &[],
    )
    .await
    .unwrap_or_else(|e| panic!("dashboard over TLS: {e}\n{}", agg.output()));
    dash.next_of("hello").await;
    let mut agent = connect_with(
        addr,
        "/ingest",
        Some(client),
        &[("authorization", &format!("Bearer {agent_token}"))],
    )
    .await
    .expect("agent over TLS");
    agent.send_text(&sample("deploy-2", 7.5)).await;
    assert_eq!(
        dash.next_for("sample", "deploy-2").await["metrics"]["cpu"],
        7.5
    );

    // systemctl stop: SIGTERM, sockets closed with 1001, exit 0.
    let status = agg.terminate();
    assert!(status.success(), "{status}:\n{}", agg.output());
    assert_eq!(dash.close_code().await, Some(1001));
}

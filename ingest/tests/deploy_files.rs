//! System 1 as `deploy/systemd/` and `deploy/env/ingest.env` describe it: each role a process
//! of its own, started with its unit's `ExecStart=` flags and nothing in its environment but
//! the env file's variables (addresses moved to free loopback ports, the certificate files
//! replaced by a development certificate, `REDIS_URL` pointed at the test's redis-server).
//! A sample posted over HTTP/2 with TLS, with the env file's agent token, reaches a dashboard
//! connected over TLS to the broadcaster with the dashboard token, through two workers; each
//! process drains and exits 0 on SIGTERM, as `systemctl stop` sends it.

mod common;

use std::path::Path;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::Request;
use metrics_edge::testing::deploy::{self, Deployed, Scratch, Unit};

const UNITS: [&str; 3] = [
    "ingest-front.service",
    "ingest-worker@.service",
    "ingest-broadcaster.service",
];

#[test]
fn units_agree_with_their_env_file() {
    for name in UNITS {
        let unit = Unit::load(name);
        let problems = unit.problems("INGEST");
        assert!(problems.is_empty(), "{name}: {problems:#?}");
    }
    // The check can fail: a stop timeout under the drain, a lost capability.
    let edited = |from, to| Unit::problems_if_edited("ingest-front.service", "INGEST", from, to);
    let short = edited("TimeoutStopSec=30", "TimeoutStopSec=5");
    assert!(
        short.iter().any(|p| p.contains("TimeoutStopSec")),
        "{short:?}"
    );
    let no_cap = edited("AmbientCapabilities=CAP_NET_BIND_SERVICE", "");
    assert!(
        no_cap.iter().any(|p| p.contains("AmbientCapabilities")),
        "{no_cap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system1_as_deployed_serves_https_end_to_end() {
    let redis = Redis::start();
    let url = redis.url();
    let bin = Path::new(env!("CARGO_BIN_EXE_ingest"));
    let certs = devcerts::generate(&[]).expect("certs");
    let creds = Scratch::new("deploy-creds");
    let front_unit = Unit::load("ingest-front.service");
    let worker_unit = Unit::load("ingest-worker@.service");
    let bcast_unit = Unit::load("ingest-broadcaster.service");
    deploy::write_credentials(&front_unit, &creds.0, &certs);
    deploy::write_credentials(&bcast_unit, &creds.0, &certs);
    let env = [("REDIS_URL", url.as_str())];

    let mut front = Deployed::start(bin, &front_unit, None, &creds.0, &env);
    let mut workers = [
        Deployed::start(bin, &worker_unit, Some("a"), &creds.0, &env),
        Deployed::start(bin, &worker_unit, Some("b"), &creds.0, &env),
    ];
    let mut bcast = Deployed::start(bin, &bcast_unit, None, &creds.0, &env);
    assert!(front.plain.is_none(), "the front door is TLS only");
    assert!(bcast.plain.is_none(), "the broadcaster is TLS only");

    let h1 = deploy::client_http11(&certs);
    front.wait_ready(&h1, "/readyz").await;
    bcast.wait_ready(&h1, "/readyz").await;
    let printed = front.output();
    assert!(
        printed.contains("listening on https://") && !printed.contains("listening on http://"),
        "{printed}"
    );
    for w in &mut workers {
        w.assert_running();
    }

    let agent_token = front_unit.var("INGEST_AGENT_TOKEN");
    let dash_token = front_unit.var("INGEST_DASHBOARD_TOKEN");
    let mut dash = connect_with(
        bcast.tls.expect("tls"),
        "/ws?serverId=deploy-1",
        Some(h1.clone()),
        &[("authorization", &format!("Bearer {dash_token}"))],
    )
    .await
    .unwrap_or_else(|e| panic!("dashboard over TLS: {e}\n{}", bcast.output()));
    dash.next_of("hello").await;

    let h2 = metrics_edge::client::tls_config(certs.ca_cert_pem.as_bytes(), &[b"h2"])
        .expect("client config");
    let post = |token: Option<String>| {
        let mut req =
            Request::post("https://localhost/metrics").header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.body(Full::new(Bytes::from(sample("deploy-1", 42.5))))
            .expect("request")
    };
    let addr = front.tls.expect("tls");
    let t = Transport::H2Tls(h2);
    let r = request(addr, &t, post(None)).await;
    assert_eq!(
        r.status, 401,
        "the env file's agent token is required: {}",
        r.body
    );
    let r = request(addr, &t, post(Some(agent_token))).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.version, http::Version::HTTP_2);

    let e = dash.next_for("sample", "deploy-1").await;
    assert_eq!(e["metrics"]["cpu"], 42.5, "{e}");

    // systemctl stop: SIGTERM, a drain within TimeoutStopSec, exit 0 (not a failure that
    // Restart=on-failure would restart).
    for p in [&mut front, &mut bcast]
        .into_iter()
        .chain(workers.iter_mut())
    {
        let status = p.terminate();
        assert!(status.success(), "{status}:\n{}", p.output());
    }
}

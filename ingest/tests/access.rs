//! Who may open what, over real sockets and a real Redis: the agent token writes and does not
//! read, the dashboard token reads and does not write, and a browser's `Origin` must be the
//! service's own or listed.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::Request;
use metrics_edge::auth::AllowedOrigins;

const AGENT: &str = "agent-t";
const DASH: &str = "dash-t";

async fn post_with(addr: std::net::SocketAddr, path: &str, token: &str, body: String) -> Reply {
    let req = Request::post(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/x-ndjson")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    request(addr, &Transport::H2c, req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_opens_its_own_role_only() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    s.edge.token = Some("shared-but-overridden".into());
    s.edge.agent_token = Some(AGENT.into());
    s.edge.dashboard_token = Some(DASH.into());
    let srv = start(s).await;
    let a = srv.addr;

    // The agent token does not read.
    refused_with(
        connect(a, &format!("/ws?token={AGENT}")).await,
        "401",
        "agent on /ws",
    );
    let (status, body) = http_get(a, &format!("/ws?token={AGENT}"), UPGRADE).await;
    assert_eq!(status, 401);
    assert!(body.contains("needs the dashboard token"), "{body}");

    // The dashboard token does not write, neither request by request nor streamed.
    let before = xlen(&redis);
    for path in ["/metrics", "/metrics/stream"] {
        let r = post_with(a, path, DASH, sample("forged", 1.0)).await;
        assert_eq!(r.status, 401, "{path}: {}", r.body);
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        assert!(
            r.body.contains("needs the agent token"),
            "{path}: {}",
            r.body
        );
    }
    assert_eq!(xlen(&redis), before, "nothing forged is stored");

    // Each works for its own role.
    let mut dash = connect(a, &format!("/ws?token={DASH}"))
        .await
        .expect("dashboard");
    dash.next_of("hello").await;
    let r = post_with(a, "/metrics", AGENT, sample("a1", 1.0)).await;
    assert_eq!(r.status, 202, "{}", r.body);
    dash.next_for("sample", "a1").await;
    // A dashboard may not take the agent role on its socket either.
    dash.send_text(r#"{"type":"register","role":"producer"}"#)
        .await;
    let e = dash.next_of("error").await;
    assert!(e["message"].to_string().contains("agent token"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_needs_its_own_or_a_listed_origin() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    s.edge.allowed_origins = AllowedOrigins::parse("https://dash.example").expect("origins");
    let srv = start(s).await;
    let a = srv.addr;

    assert_foreign_origin_refused(a).await;

    assert_allowed_origins_served(a, "https://dash.example").await;
}

/// `--tls-client-ca` with `--tls-client-auth optional`: `POST /metrics` needs a client
/// certificate from the CA (over TLS; never over plaintext), dashboards need none; the
/// response carries HSTS when asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_need_a_client_certificate_when_a_client_ca_is_set() {
    use metrics_edge::testing::tls::CertFiles;
    let redis = Redis::start();
    let ca = devcerts::Authority::new("test root").expect("CA");
    let server = ca.server(&[]).expect("cert");
    let files = CertFiles::new(&server.cert_pem, &server.key_pem);
    let mut s = settings(&redis);
    s.edge.tls = Some(metrics_edge::config::TlsFiles {
        addr: "127.0.0.1:0".parse().expect("addr"),
        cert: files.cert.clone(),
        key: files.key.clone(),
    });
    s.edge.tls_options.client_ca = Some(files.extra("clients.pem", ca.cert_pem()));
    s.edge.tls_options.client_auth = metrics_edge::tls::ClientAuth::Optional;
    s.edge.tls_options.hsts_max_age_secs = Some(31_536_000);
    let listeners = ingest::server::bind(&s).await.expect("bind");
    let srv = metrics_edge::testing::start_on::<ingest::Server>(s, listeners);
    let tls_addr = srv.tls_addr.expect("tls");
    let alpn = metrics_edge::tls::ALPN_H2_HTTP11;
    let tls = |id: Option<&devcerts::Issued>| {
        let id = id.map(|i| (i.cert_pem.as_bytes(), i.key_pem.as_bytes()));
        metrics_edge::client::tls_config_with_cert(ca.cert_pem().as_bytes(), alpn, id)
            .expect("client config")
    };

    let mut dash = connect_with(
        tls_addr,
        "/ws",
        Some(metrics_edge::testing::tls::client(ca.cert_pem(), None)),
        &[],
    )
    .await
    .expect("a dashboard needs no certificate");
    dash.next_of("hello").await;
    let json = "application/json";
    let bare = post(
        tls_addr,
        &Transport::H2Tls(tls(None)),
        json,
        sample("x", 1.0),
    )
    .await;
    assert_eq!(bare.status, 403, "{}", bare.body);
    assert!(bare.body.contains("--tls-client-ca"), "{}", bare.body);
    assert_eq!(
        bare.headers["strict-transport-security"], "max-age=31536000",
        "HSTS on refusals too"
    );
    let plain = post(srv.addr, &Transport::Http1, json, sample("x", 1.0)).await;
    assert_eq!(
        plain.status, 403,
        "plaintext has no client certificate: {}",
        plain.body
    );
    assert!(plain.headers.get("strict-transport-security").is_none());

    let id = ca.client("agent-1").expect("client cert");
    let ok = post(
        tls_addr,
        &Transport::H2Tls(tls(Some(&id))),
        json,
        sample("mtls", 2.0),
    )
    .await;
    assert_eq!(ok.status, 202, "{}", ok.body);
    assert_eq!(dash.next_for("sample", "mtls").await["metrics"]["cpu"], 2.0);
}

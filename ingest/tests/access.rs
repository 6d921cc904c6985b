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

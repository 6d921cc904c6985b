//! Who may open what, over real sockets: the agent and dashboard tokens each open only their
//! own role's routes, and a browser's `Origin` must be the service's own or listed.

mod common;

use common::*;
use metrics_edge::auth::AllowedOrigins;

const AGENT: &str = "agent-t";
const DASH: &str = "dash-t";

async fn split_tokens() -> TestServer {
    let mut s = settings();
    s.edge.token = Some("shared-but-overridden".into());
    s.edge.agent_token = Some(AGENT.into());
    s.edge.dashboard_token = Some(DASH.into());
    start(s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_opens_its_own_role_only() {
    let srv = split_tokens().await;
    let a = srv.addr;

    // The agent token does not read; the dashboard token does not write.
    refused_with(
        connect(a, &format!("/ws?token={AGENT}")).await,
        "401",
        "agent on /ws",
    );
    refused_with(
        connect(a, &format!("/ingest?token={DASH}")).await,
        "401",
        "dash on /ingest",
    );
    refused_with(
        connect(a, "/ws?token=shared-but-overridden").await,
        "401",
        "shared on /ws",
    );
    let (status, body) = http_get(a, &format!("/ws?token={AGENT}"), UPGRADE).await;
    assert_eq!(status, 401);
    assert!(body.contains("needs the dashboard token"), "{body}");
    let (status, body) = http_get(a, &format!("/ingest?token={DASH}"), UPGRADE).await;
    assert_eq!(status, 401);
    assert!(body.contains("needs the agent token"), "{body}");

    // Each works for its own role.
    let mut dash = connect(a, &format!("/ws?token={DASH}"))
        .await
        .expect("dashboard");
    dash.next_of("hello").await;
    let mut agent = connect(a, &format!("/ingest?token={AGENT}"))
        .await
        .expect("agent");
    agent.send_text(&sample("a1", 1.0)).await;
    dash.next_for("sample", "a1").await;

    // An agent socket may not turn itself into a reader.
    let mut on_root = connect(a, &format!("/?token={AGENT}"))
        .await
        .expect("agent on /");
    on_root
        .send_text(r#"{"type":"register","role":"dashboard"}"#)
        .await;
    let e = on_root.next_of("error").await;
    assert!(e["message"].to_string().contains("dashboard token"), "{e}");
    agent.send_text(r#"{"type":"snapshot.request"}"#).await;
    let e = agent.next_of("error").await;
    assert!(e["message"].to_string().contains("dashboard token"), "{e}");
    on_root.send_text(&sample("a2", 2.0)).await;
    dash.next_for("sample", "a2").await;

    // A dashboard token on `/` may register as a dashboard, but its samples go nowhere.
    let mut reader = connect(a, &format!("/?token={DASH}"))
        .await
        .expect("dash on /");
    reader
        .send_text(r#"{"type":"register","role":"dashboard"}"#)
        .await;
    reader.next_of("hello").await;
    reader.send_text(&sample("forged", 3.0)).await;
    let e = reader.next_of("error").await;
    assert!(e["message"].to_string().contains("agent token"), "{e}");
    agent.send_text(&sample("a3", 4.0)).await;
    let next = dash.next_of("sample").await;
    assert_eq!(
        next["serverId"], "a3",
        "the forged sample was not published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_needs_its_own_or_a_listed_origin() {
    let mut s = settings();
    s.edge.allowed_origins = AllowedOrigins::parse("https://dash.example").expect("origins");
    let srv = start(s).await;
    let a = srv.addr;

    assert_foreign_origin_refused(a).await;
    let evil = [("origin", "http://evil.example")];
    // A socket on `/` that could register as a dashboard is an agent only from there.
    let mut root = connect_with(a, "/", None, &evil)
        .await
        .expect("agent on / from evil");
    root.send_text(r#"{"type":"register","role":"dashboard"}"#)
        .await;
    let e = root.next_of("error").await;
    assert!(e["message"].to_string().contains("Origin"), "{e}");

    assert_allowed_origins_served(a, "https://dash.example").await;
    let mut d = connect(a, "/ws").await.expect("dashboard");
    d.next_of("hello").await;
    let mut agent = connect_with(a, "/ingest", None, &evil)
        .await
        .expect("agents ignore Origin");
    agent.send_text(&sample("o1", 1.0)).await;
    d.next_for("sample", "o1").await;
}

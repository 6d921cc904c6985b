//! End to end over real sockets: agent -> /ingest -> dashboards on /ws, plaintext and TLS.

mod common;

use std::time::Duration;

use common::*;
use fastwebsockets::OpCode;
use metrics_edge::tls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_and_window_events_reach_dashboard_and_agent() {
    let srv = start(settings()).await;
    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    let hello = dash.next_of("hello").await;
    assert_eq!(hello["system"], "system2-websocket");
    assert_eq!(hello["windows"], serde_json::json!(["200ms", "1s"]));
    assert!(hello["serverTime"].as_u64().expect("time") > 1_700_000_000_000);

    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    agent
        .send_text(r#"{"serverId":"web-1","timestamp":1764349200123,"metrics":{"cpu":42.5,"network":{"in":812,"out":230},"send_us":1764349200123456}}"#)
        .await;
    let s = dash.next_for("sample", "web-1").await;
    assert_eq!(s["timestamp"], 1764349200123u64);
    assert_eq!(s["metrics"]["cpu"], 42.5);
    assert_eq!(s["metrics"]["network.in"], 812);
    assert_eq!(s["metrics"]["network.out"], 230);
    assert_eq!(s["metrics"]["send_us"], 1764349200123456u64);

    let w = dash.next_for("window", "web-1").await;
    let cpu = &w["stats"]["cpu"];
    assert_eq!(cpu["count"], 1);
    assert_eq!(cpu["min"], 42.5);
    assert_eq!(cpu["mean"], 42.5);
    assert_eq!(cpu["p99"], 42.5);
    assert!(w["end"].as_u64() > w["start"].as_u64());
    let all = dash.next_for("window", "*").await;
    assert!(all["stats"]["network.in"]["count"].as_u64() >= Some(1));

    // The agent gets the derived metrics of its own server back on its socket.
    let back = agent.next_for("window", "web-1").await;
    assert_eq!(back["stats"]["cpu"]["max"], 42.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrays_of_samples_and_type_metric_frames() {
    let srv = start(settings()).await;
    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    let mut agent = connect(srv.addr, "/").await.expect("agent on /");
    agent
        .send_text(&format!(
            "[{},{}]",
            sample("a", 1.0),
            r#"{"type":"metric","serverId":"a","metrics":{"cpu":2}}"#
        ))
        .await;
    assert_eq!(dash.next_for("sample", "a").await["metrics"]["cpu"], 1);
    assert_eq!(dash.next_for("sample", "a").await["metrics"]["cpu"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_alpn_end_to_end() {
    let (server_cfg, client_cfg) = dev_tls(tls::ALPN_HTTP11);
    let srv = start_with_tls(settings(), Some(server_cfg)).await;
    let tls_addr = srv.tls_addr.expect("tls listener");

    // ALPN: the client offers h2 and http/1.1; the server picks http/1.1 (WebSocket upgrades
    // need HTTP/1.1).
    let tcp = tokio::net::TcpStream::connect(tls_addr).await.expect("tcp");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tokio_rustls::TlsConnector::from(client_cfg.clone())
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the dev CA");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    drop(stream);

    let cfg = client_cfg;
    let mut dash = connect_with(tls_addr, "/ws", Some(cfg.clone()), &[])
        .await
        .expect("wss dashboard");
    dash.next_of("hello").await;
    let mut agent = connect_with(tls_addr, "/ingest", Some(cfg), &[])
        .await
        .expect("wss agent");
    agent.send_text(&sample("secure-1", 7.5)).await;
    assert_eq!(
        dash.next_for("sample", "secure-1").await["metrics"]["cpu"],
        7.5
    );
    assert_eq!(
        dash.next_for("window", "secure-1").await["stats"]["cpu"]["count"],
        1
    );

    // A client that does not trust the dev CA is refused.
    let other = devcerts::generate(&[]).expect("other CA");
    let untrusted =
        metrics_edge::client::tls_config(other.ca_cert_pem.as_bytes(), tls::ALPN_HTTP11)
            .expect("cfg");
    assert!(connect_with(tls_addr, "/ws", Some(untrusted), &[])
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_filter_by_query_and_live_subscribe() {
    let srv = start(settings()).await;
    let mut dash = connect(srv.addr, "/ws?serverId=a")
        .await
        .expect("dashboard");
    let hello = dash.next_of("hello").await;
    assert_eq!(hello["filter"], serde_json::json!(["a"]));
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    agent.send_text(&sample("b", 1.0)).await;
    agent.send_text(&sample("a", 2.0)).await;
    let s = dash.next_of("sample").await;
    assert_eq!(s["serverId"], "a", "b's sample must be filtered out");

    dash.send_text(r#"{"type":"subscribe","serverId":"b"}"#)
        .await;
    let sub = dash.next_of("subscribed").await;
    assert_eq!(sub["filter"], serde_json::json!(["b"]));
    agent.send_text(&sample("a", 3.0)).await;
    agent.send_text(&sample("b", 4.0)).await;
    let s = dash.next_of("sample").await;
    assert_eq!(s["serverId"], "b");
    assert_eq!(s["metrics"]["cpu"], 4);
    // Windows follow the filter too.
    let w = dash.next_of("window").await;
    assert_eq!(w["serverId"], "b");

    dash.send_text(r#"{"type":"subscribe","serverId":null}"#)
        .await;
    assert_eq!(
        dash.next_of("subscribed").await["filter"],
        serde_json::Value::Null
    );

    let (status, body) = http_get(srv.addr, "/ws?serverId=bad%20id", "").await;
    assert_eq!(status, 400);
    assert!(body.contains("bad id"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_on_root_registers_as_dashboard() {
    let srv = start(settings()).await;
    let mut sock = connect(srv.addr, "/").await.expect("socket on /");
    sock.send_text(r#"{"type":"register","role":"dashboard","serverId":"x"}"#)
        .await;
    let hello = sock.next_of("hello").await;
    assert_eq!(hello["filter"], serde_json::json!(["x"]));
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    agent.send_text(&sample("y", 1.0)).await;
    agent.send_text(&sample("x", 9.0)).await;
    let s = sock.next_of("sample").await;
    assert_eq!(s["serverId"], "x");
    assert_eq!(s["metrics"]["cpu"], 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_request_returns_latest_values_and_windows() {
    let srv = start(settings()).await;
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    agent.send_text(&sample("s1", 10.0)).await;
    agent.send_text(&sample("s1", 20.0)).await;
    // Wait for a closed window so the snapshot carries one.
    agent.next_for("window", "s1").await;
    agent
        .send_text(r#"{"type":"snapshot.request","serverId":"s1"}"#)
        .await;
    let snap = agent.next_of("snapshot").await;
    assert_eq!(snap["serverId"], "s1");
    let server = &snap["servers"][0];
    assert_eq!(server["serverId"], "s1");
    assert_eq!(server["metrics"]["cpu"], 20);
    assert_eq!(server["metrics"]["network.in"], 812);
    let windows = server["windows"].as_array().expect("windows");
    assert!(!windows.is_empty());
    assert_eq!(windows[0]["type"], "window");
    assert_eq!(windows[0]["stats"]["cpu"]["count"], 2);

    agent.send_text(r#"{"type":"snapshot.request"}"#).await;
    let all = agent.next_of("snapshot").await;
    assert_eq!(all["servers"].as_array().map(Vec::len), Some(1));

    agent
        .send_text(r#"{"type":"snapshot.request","serverId":"nope"}"#)
        .await;
    let e = agent.next_of("error").await;
    assert_eq!(e["message"], "no data for server `nope`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_required_when_configured() {
    let mut s = settings();
    s.edge.token = Some("s3cret".into());
    let srv = start(s).await;
    for path in ["/ws", "/ingest", "/"] {
        match connect(srv.addr, path).await {
            Err(metrics_edge::client::ClientError::Handshake(e)) => {
                assert!(e.to_string().contains("401"), "{path}: {e}")
            }
            other => panic!("{path}: expected 401, got {:?}", other.map(|_| ())),
        }
    }
    let (status, body) = http_get(srv.addr, "/ws", "Upgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n").await;
    assert_eq!(status, 401);
    assert!(body.contains("missing or wrong token"), "{body}");
    let mut dash = connect(srv.addr, "/ws?token=s3cret")
        .await
        .expect("token in query");
    dash.next_of("hello").await;
    let mut agent = connect_with(
        srv.addr,
        "/ingest",
        None,
        &[("authorization", "Bearer s3cret")],
    )
    .await
    .expect("token in header");
    agent.send_text(&sample("t", 1.0)).await;
    dash.next_for("sample", "t").await;
    assert!(connect(srv.addr, "/ws?token=wrong").await.is_err());
    // The page itself is public; it carries the token to /ws.
    assert_eq!(http_get(srv.addr, "/", "").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frame_gets_an_error_and_the_socket_stays_usable() {
    let srv = start(settings()).await;
    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    agent
        .send_text(r#"{"serverId":"a","metrics":{"cpu":"high"}}"#)
        .await;
    let e = agent.next_of("error").await;
    assert_eq!(
        e["message"],
        "metric `cpu` must be a finite number or an object of numbers, found a string"
    );
    agent
        .send_text(&format!("[{},{{\"serverId\":\"a\"}}]", sample("a", 1.0)))
        .await;
    let e = agent.next_of("error").await;
    assert_eq!(e["message"], "sample at index 1: missing field `metrics`");
    agent.send_text("not json").await;
    assert!(agent.next_of("error").await["message"]
        .as_str()
        .expect("msg")
        .starts_with("invalid JSON"));
    agent.send_text(&sample("a", 5.0)).await;
    let s = dash.next_of("sample").await;
    assert_eq!(
        s["metrics"]["cpu"], 5,
        "nothing of the bad batch was published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_closes_with_1007() {
    let srv = start(settings()).await;
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    agent
        .send_raw(OpCode::Text, b"{\"serverId\":\"\xff\xfe\"}", true)
        .await
        .expect("send");
    assert_eq!(agent.close_code().await, Some(1007));
    // Fragmented text is checked once reassembled.
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    agent
        .send_raw(OpCode::Text, b"{\"serverId\":\"\xe2", false)
        .await
        .expect("send");
    agent
        .send_raw(OpCode::Continuation, b"\x28\"}", true)
        .await
        .expect("send");
    assert_eq!(agent.close_code().await, Some(1007));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frames_and_messages_close_with_1009() {
    let mut s = settings();
    s.edge.ws.max_message = 1024;
    let srv = start(s).await;
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    agent
        .send_raw(OpCode::Text, &vec![b' '; 2000], true)
        .await
        .expect("send");
    assert_eq!(agent.close_code().await, Some(1009));
    // Fragments under the limit that add up to more than it.
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    agent
        .send_raw(OpCode::Text, &vec![b' '; 600], false)
        .await
        .expect("send");
    agent
        .send_raw(OpCode::Continuation, &vec![b' '; 600], true)
        .await
        .expect("send");
    assert_eq!(agent.close_code().await, Some(1009));
    // Exactly the limit is fine.
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    let mut text = sample("edge", 1.0);
    text.push_str(&" ".repeat(1024 - text.len()));
    agent.send_text(&text).await;
    agent
        .send_text(r#"{"type":"snapshot.request","serverId":"edge"}"#)
        .await;
    assert_eq!(
        agent.next_of("snapshot").await["servers"][0]["serverId"],
        "edge"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_close_with_1002() {
    let srv = start(settings()).await;
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    agent
        .send_raw(OpCode::Continuation, b"x", true)
        .await
        .expect("send");
    assert_eq!(agent.close_code().await, Some(1002));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmasked_frames_and_oversize_control_frames_close_with_1002() {
    let srv = start(settings()).await;
    // RFC 6455 5.1: every client frame is masked; a server closes on one that is not.
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    agent.tx.set_auto_apply_mask(false);
    agent.send_text(&sample("unmasked", 1.0)).await;
    assert_eq!(agent.close_code().await, Some(1002));
    // RFC 6455 5.5: control frames carry at most 125 bytes.
    for op in [OpCode::Pong, OpCode::Close] {
        let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(&[b'x'; 200]);
        agent.send_raw(op, &payload, true).await.expect("send");
        assert_eq!(agent.close_code().await, Some(1002), "{op:?}");
    }
    // A masked agent is still served.
    let mut dash = connect(srv.addr, "/ws?serverId=masked")
        .await
        .expect("dashboard");
    dash.next_of("hello").await;
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    agent.send_text(&sample("masked", 1.0)).await;
    assert_eq!(dash.next_for("sample", "masked").await["metrics"]["cpu"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peers_are_pinged_then_closed() {
    let mut s = settings();
    s.edge.ws.ping_interval = Duration::from_millis(300);
    s.edge.ws.ping_timeout = Duration::from_millis(300);
    let srv = start(s).await;
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    // Our test peer never answers pings.
    let mut saw_ping = false;
    let code = loop {
        match tokio::time::timeout(WAIT, agent.rx.recv())
            .await
            .expect("in time")
        {
            Some(Incoming::Ping) => saw_ping = true,
            Some(Incoming::Close(c)) => break c,
            Some(Incoming::Event(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(saw_ping, "the server pings before giving up");
    assert_eq!(code, 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sockets_with_1001() {
    let mut srv = start(settings()).await;
    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    srv.shutdown.cancel();
    assert_eq!(dash.close_code().await, Some(1001));
    tokio::time::timeout(WAIT, &mut srv.done)
        .await
        .expect("server stops")
        .expect("join");
    assert!(
        tokio::net::TcpStream::connect(srv.addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routes() {
    let srv = start(settings()).await;
    let (status, body) = http_get(srv.addr, "/", "").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("<html") || body.contains("<!doctype"),
        "page served"
    );
    let (status, body) = http_get(srv.addr, "/healthz", "").await;
    assert_eq!((status, body.as_str()), (200, "{\"status\":\"ok\"}"));
    let (status, body) = http_get(srv.addr, "/nope", "").await;
    assert_eq!(status, 404);
    assert_eq!(body, "{\"error\":\"no route for /nope\"}");
    // A plain GET on the stream says what an upgrade would be told, readable from any page.
    let (status, body) = http_get(srv.addr, "/ws", "").await;
    assert_eq!(status, 426);
    assert!(
        body.contains("speaks WebSocket") && body.contains("are accepted"),
        "{body}"
    );
    let (status, body) = http_get(srv.addr, "/stats", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"samples\":0"), "{body}");
}

/// A close of many servers is published in slices (`--window-spread-ms`): every server's
/// window still reaches the dashboard and the agent that sent it, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_of_many_servers_reaches_dashboards_and_agents_whole() {
    let srv = start(settings()).await;
    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    let mut agent = connect(srv.addr, "/ingest").await.expect("agent");
    let n = 600;
    let batch: Vec<String> = (0..n).map(|i| sample(&format!("many-{i}"), 1.0)).collect();
    agent.send_text(&format!("[{}]", batch.join(","))).await;

    // The first 200ms window of each server, from both sides: every one, once.
    for (who, peer) in [("dashboard", &mut dash), ("agent", &mut agent)] {
        let mut got = std::collections::BTreeSet::new();
        while got.len() < n {
            let w = peer.next_of("window").await;
            let server = w["serverId"].as_str().expect("serverId").to_string();
            if w["window"] != "200ms" || !server.starts_with("many-") {
                continue;
            }
            assert_eq!(w["stats"]["cpu"]["count"], 1, "{who}: {w}");
            assert!(got.insert(server), "{who}: a window twice: {w}");
        }
    }
}

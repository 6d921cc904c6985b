//! TLS without a proxy in front: the certificate renewed in place (file poll and SIGHUP) while
//! connections stay up, full chains, client certificates for agents (mutual TLS), HSTS, the
//! redirect-to-HTTPS listener and a TLS-only deployment, over real sockets and the real binary.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;

use aggregator::{Args, Server};
use common::*;
use devcerts::Authority;
use metrics_edge::config::ServiceArgs;
use metrics_edge::testing::tls::{client, der, get_on, https_get, served_chain, CertFiles};

/// System 2 on 127.0.0.1:0 (plaintext and TLS) with the TLS files `files` and `extra` flags,
/// bound as the binary binds (so the certificate reloads).
async fn start_tls(files: &CertFiles, extra: &[&str]) -> Started {
    let (cert, key) = (
        files.cert.to_str().expect("path"),
        files.key.to_str().expect("path"),
    );
    let mut flags = vec![
        "--listen",
        "127.0.0.1:0",
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        "--windows",
        "200ms,1s",
    ];
    flags.extend_from_slice(extra);
    let settings = metrics_edge::config::parse_flags::<Args>(&aggregator::config::SERVICE, &flags)
        .expect("flags parse")
        .validate()
        .expect("valid settings");
    let listeners = aggregator::server::bind(&settings).await.expect("bind");
    start_on::<Server>(settings, listeners)
}

fn reloads(srv: &Started) -> (u64, u64) {
    srv.conns
        .tls
        .get()
        .map_or((0, 0), |t| (t.reloads(), t.failures()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_reaches_new_connections_while_live_ones_keep_working() {
    let ca = Authority::new("test root").expect("CA");
    let first = ca.server(&[]).expect("cert");
    let files = CertFiles::new(&first.cert_pem, &first.key_pem);
    let srv = start_tls(
        &files,
        &["--tls-reload-ms", "100", "--admin-listen", "127.0.0.1:0"],
    )
    .await;
    let tls_addr = srv.tls_addr.expect("tls");
    let trust = client(ca.cert_pem(), None);
    assert_eq!(
        served_chain(tls_addr, trust.clone()).await,
        [der(&first.cert_pem)]
    );

    // Live TLS connections opened on the first certificate.
    let mut dash = connect_with(tls_addr, "/ws", Some(trust.clone()), &[])
        .await
        .expect("dashboard");
    dash.next_of("hello").await;
    let mut agent = connect_with(tls_addr, "/ingest", Some(trust.clone()), &[])
        .await
        .expect("agent");
    agent.send_text(&sample("before", 1.0)).await;
    dash.next_for("sample", "before").await;

    // Renewal: a leaf signed by an intermediate, the file holding the full chain.
    let inter = ca.intermediate("test intermediate").expect("intermediate");
    let renewed = inter.server(&[]).expect("cert");
    let chain = format!("{}{}", renewed.cert_pem, inter.cert_pem());
    files.write(&chain, &renewed.key_pem);
    eventually_eq("reloads, failures", (1, 0), || reloads(&srv)).await;
    assert_eq!(
        served_chain(tls_addr, trust.clone()).await,
        [der(&renewed.cert_pem), der(inter.cert_pem())],
        "a new handshake gets the renewed leaf and its intermediate"
    );
    agent.send_text(&sample("after", 2.0)).await;
    assert_eq!(
        dash.next_for("sample", "after").await["metrics"]["cpu"],
        2.0
    );

    // A certificate with a key that does not fit it: refused, counted, the renewed pair stays.
    let other = ca.server(&[]).expect("cert");
    files.write(&other.cert_pem, &first.key_pem);
    eventually_eq("reloads, failures", (1, 1), || reloads(&srv)).await;
    assert_eq!(
        served_chain(tls_addr, trust.clone()).await[0],
        der(&renewed.cert_pem)
    );
    // The key file gone (unreadable): refused once, counted.
    std::fs::remove_file(&files.key).expect("remove");
    eventually_eq("reloads, failures", (1, 2), || reloads(&srv)).await;
    assert_eq!(
        served_chain(tls_addr, trust.clone()).await[0],
        der(&renewed.cert_pem)
    );

    let (_, stats) = http_get(srv.addr, "/stats", "").await;
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("stats");
    assert_eq!(
        (&stats["tlsReloads"], &stats["tlsReloadFailures"]),
        (&1.into(), &2.into()),
        "{stats}"
    );
    let (_, metrics) = http_get(srv.admin_addr.expect("admin"), "/metrics", "").await;
    for line in [
        "tls_certificate_reloads_total 1",
        "tls_certificate_reload_failures_total 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    agent.send_text(&sample("last", 3.0)).await;
    assert_eq!(dash.next_for("sample", "last").await["metrics"]["cpu"], 3.0);
}

/// The real binary, TLS only (`--listen off`), no file poll: SIGHUP alone reloads, and the
/// process keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_of_a_tls_only_binary() {
    let ca = Authority::new("test root").expect("CA");
    let first = ca.server(&[]).expect("cert");
    let files = CertFiles::new(&first.cert_pem, &first.key_pem);
    let mut child = metrics_edge::testing::KillOnDrop::new(
        Command::new(env!("CARGO_BIN_EXE_aggregator"))
            .args([
                "--listen",
                "off",
                "--tls-listen",
                "127.0.0.1:0",
                "--tls-reload-ms",
                "0",
            ])
            .arg("--tls-cert")
            .arg(&files.cert)
            .arg("--tls-key")
            .arg(&files.key)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the aggregator binary"),
    );
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let port: u16 = loop {
        let line = lines.next().expect("printed its address").expect("stdout");
        assert!(
            !line.starts_with("dashboard: http://"),
            "no plaintext listener: {line}"
        );
        if let Some(rest) = line.strip_prefix("dashboard: https://localhost:") {
            break rest.split('/').next().expect("port").parse().expect("port");
        }
    };
    std::thread::spawn(move || for _ in lines.by_ref() {});
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let trust = client(ca.cert_pem(), None);
    assert_eq!(
        served_chain(addr, trust.clone()).await,
        [der(&first.cert_pem)]
    );
    let mut dash = connect_with(addr, "/ws", Some(trust.clone()), &[])
        .await
        .expect("dashboard");
    dash.next_of("hello").await;

    let second = ca.server(&[]).expect("cert");
    files.write(&second.cert_pem, &second.key_pem);
    // No poll: nothing changes until the signal.
    assert_eq!(
        served_chain(addr, trust.clone()).await,
        [der(&first.cert_pem)]
    );
    let ok = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "SIGHUP sent");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "the process must survive SIGHUP"
        );
        if served_chain(addr, trust.clone()).await == [der(&second.cert_pem)] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload within {WAIT:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The dashboard opened before the reload still gets data.
    let mut agent = connect_with(addr, "/ingest", Some(trust), &[])
        .await
        .expect("agent");
    agent.send_text(&sample("after-hup", 4.0)).await;
    assert_eq!(
        dash.next_for("sample", "after-hup").await["metrics"]["cpu"],
        4.0
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_admit_only_the_configured_ca() {
    let ca = Authority::new("test root").expect("CA");
    let server = ca.server(&[]).expect("cert");
    let files = CertFiles::new(&server.cert_pem, &server.key_pem);
    let client_ca = files.extra("clients.pem", ca.cert_pem());
    let srv = start_tls(
        &files,
        &["--tls-client-ca", client_ca.to_str().expect("path")],
    )
    .await;
    let tls_addr = srv.tls_addr.expect("tls");

    let agent_id = ca.client("agent-1").expect("client cert");
    let with_cert = client(ca.cert_pem(), Some(&agent_id));
    let mut dash = connect_with(tls_addr, "/ws", Some(with_cert.clone()), &[])
        .await
        .expect("dashboard with a certificate");
    dash.next_of("hello").await;
    let mut agent = connect_with(tls_addr, "/ingest", Some(with_cert), &[])
        .await
        .expect("agent with a certificate");
    agent.send_text(&sample("mtls", 5.0)).await;
    assert_eq!(dash.next_for("sample", "mtls").await["metrics"]["cpu"], 5.0);

    let stranger = Authority::new("another root").expect("CA");
    let foreign = client(
        ca.cert_pem(),
        Some(&stranger.client("intruder").expect("cert")),
    );
    for (what, cfg) in [
        ("foreign CA", foreign),
        ("no certificate", client(ca.cert_pem(), None)),
    ] {
        for path in ["/ws", "/ingest"] {
            assert!(
                connect_with(tls_addr, path, Some(cfg.clone()), &[])
                    .await
                    .is_err(),
                "{what} on {path} must be refused"
            );
        }
    }
    // The plaintext listener has no client certificates: agents are refused there too.
    refused_with(connect(srv.addr, "/ingest").await, "403", "plaintext agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_certificates_are_needed_by_agents_only() {
    let ca = Authority::new("test root").expect("CA");
    let server = ca.server(&[]).expect("cert");
    let files = CertFiles::new(&server.cert_pem, &server.key_pem);
    let client_ca = files.extra("clients.pem", ca.cert_pem());
    let srv = start_tls(
        &files,
        &[
            "--tls-client-ca",
            client_ca.to_str().expect("path"),
            "--tls-client-auth",
            "optional",
        ],
    )
    .await;
    let tls_addr = srv.tls_addr.expect("tls");
    let bare = client(ca.cert_pem(), None);
    let mut dash = connect_with(tls_addr, "/ws", Some(bare.clone()), &[])
        .await
        .expect("a dashboard needs no certificate");
    dash.next_of("hello").await;
    let r = https_get(tls_addr, bare, "/ingest", UPGRADE)
        .await
        .expect("answer");
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("--tls-client-ca"), "{}", r.body);

    let with_cert = client(ca.cert_pem(), Some(&ca.client("agent-1").expect("cert")));
    let mut agent = connect_with(tls_addr, "/ingest", Some(with_cert), &[])
        .await
        .expect("agent with a certificate");
    agent.send_text(&sample("opt", 6.0)).await;
    assert_eq!(dash.next_for("sample", "opt").await["metrics"]["cpu"], 6.0);

    let stranger = Authority::new("another root").expect("CA");
    let foreign = client(
        ca.cert_pem(),
        Some(&stranger.client("intruder").expect("cert")),
    );
    assert!(
        connect_with(tls_addr, "/ws", Some(foreign), &[])
            .await
            .is_err(),
        "a certificate from another CA fails the handshake even when optional"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_on_tls_responses_and_plaintext_redirects_to_https() {
    let ca = Authority::new("test root").expect("CA");
    let server = ca.server(&[]).expect("cert");
    let files = CertFiles::new(&server.cert_pem, &server.key_pem);
    let srv = start_tls(
        &files,
        &[
            "--hsts-max-age-secs",
            "600",
            "--redirect-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let tls_addr = srv.tls_addr.expect("tls");
    let r = https_get(tls_addr, client(ca.cert_pem(), None), "/healthz", "")
        .await
        .expect("https");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("strict-transport-security"), Some("max-age=600"));
    let plain = tokio::net::TcpStream::connect(srv.addr).await.expect("tcp");
    let r = get_on(plain, "localhost", "/healthz", "")
        .await
        .expect("http");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("strict-transport-security"),
        None,
        "not on plaintext"
    );

    let redirect = srv.redirect_addr.expect("redirect listener");
    let port = tls_addr.port();
    for (host, path, location) in [
        (
            "example.test:8080",
            "/stats?x=1",
            format!("https://example.test:{port}/stats?x=1"),
        ),
        ("example.test", "/", format!("https://example.test:{port}/")),
        ("[::1]:80", "/ws", format!("https://[::1]:{port}/ws")),
    ] {
        let tcp = tokio::net::TcpStream::connect(redirect).await.expect("tcp");
        let r = get_on(tcp, host, path, "").await.expect("redirect");
        assert_eq!(r.status, 308, "{r:?}");
        assert_eq!(r.header("location"), Some(location.as_str()), "{r:?}");
    }
    let tcp = tokio::net::TcpStream::connect(redirect).await.expect("tcp");
    let r = get_on(tcp, "user@evil.test", "/", "")
        .await
        .expect("answer");
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(srv.conns.refused.load(Relaxed), 0);
}

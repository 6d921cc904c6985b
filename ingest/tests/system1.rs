//! System 1 end to end against a real redis-server: every transport, every error status,
//! Redis going away and coming back, replay with `since`, the streaming endpoint.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::Request;
use metrics_edge::tls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_reaches_the_dashboard_and_the_snapshot() {
    let redis = Redis::start();
    let (server_tls, client_tls) = dev_tls(tls::ALPN_H2_HTTP11);
    let srv = start_with_tls(settings(&redis), Some(server_tls)).await;
    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    assert_eq!(dash.next_of("hello").await["system"], "system1-redis");

    let tls_addr = srv.tls_addr.expect("tls");
    for (server, addr, t, version) in [
        ("h1", srv.addr, Transport::Http1, http::Version::HTTP_11),
        ("h2c", srv.addr, Transport::H2c, http::Version::HTTP_2),
        (
            "h2tls",
            tls_addr,
            Transport::H2Tls(client_tls.clone()),
            http::Version::HTTP_2,
        ),
    ] {
        let r = post(addr, &t, "application/json", sample(server, 42.5)).await;
        assert_eq!(r.status, 202, "{server}: {}", r.body);
        assert_eq!(r.version, version, "{server}");
        assert_eq!(r.body, "{\"status\":\"accepted\",\"accepted\":1}");
        let e = dash.next_for("sample", server).await;
        assert_eq!(e["metrics"]["cpu"], 42.5);
        assert_eq!(e["metrics"]["network.in"], 812);
        let id = e["id"]
            .as_str()
            .expect("sample events carry their stream id");
        assert!(id.contains('-') && id.ends_with("/0"), "{id}");
        // The snapshot hash is written before the event is published.
        let cpu: String = redis::cmd("HGET")
            .arg(format!("metrics:server:{server}"))
            .arg("cpu")
            .query(&mut redis.conn())
            .expect("HGET");
        assert_eq!(cpu, "42.5");
    }
    let w = dash.next_for("window", "h2tls").await;
    assert_eq!(w["stats"]["cpu"]["count"], 1);

    dash.send_text(r#"{"type":"snapshot.request","serverId":"h1"}"#)
        .await;
    let snap = dash.next_of("snapshot").await;
    assert_eq!(snap["servers"][0]["metrics"]["cpu"], 42.5);
    assert_eq!(snap["servers"][0]["metrics"]["network.out"], 230);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_ndjson_are_all_or_nothing() {
    let redis = Redis::start();
    let srv = start(settings(&redis)).await;
    let t = Transport::Http1;
    let arr = format!("[{},{}]", sample("a", 1.0), sample("b", 2.0));
    let r = post(srv.addr, &t, "application/json", arr).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (202, "{\"status\":\"accepted\",\"accepted\":2}")
    );
    let nd = format!("{}\n{}\n", sample("a", 1.0), sample("b", 2.0));
    assert_eq!(
        post(srv.addr, &t, "application/x-ndjson", nd).await.status,
        202
    );
    let before = xlen(&redis);

    let bad = format!(
        "{}\n{}\n{{\"serverId\":\"c\",\"metrics\":{{\"cpu\":\"x\"}}}}\n",
        sample("a", 1.0),
        sample("b", 2.0)
    );
    let r = post(srv.addr, &t, "application/x-ndjson", bad).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        "{\"error\":\"line 3: metric `cpu` must be a finite number or an object of numbers, found a string\"}"
    );
    let r = post(
        srv.addr,
        &t,
        "application/json",
        format!("[{},{{\"serverId\":\"b\"}}]", sample("a", 1.0)),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        "{\"error\":\"sample at index 1: missing field `metrics`\"}"
    );
    let r = post(srv.addr, &t, "application/json", "{nope").await;
    assert_eq!(r.status, 400);
    assert!(
        r.body.starts_with("{\"error\":\"invalid JSON"),
        "{}",
        r.body
    );
    assert_eq!(
        xlen(&redis),
        before,
        "nothing of a refused request is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_statuses_name_the_problem() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    s.max_body = 4096;
    s.edge.token = Some("s3cret".into());
    let srv = start(s).await;
    let t = Transport::H2c;
    let auth = |b: http::request::Builder| b.header("authorization", "Bearer s3cret");

    let r = post(srv.addr, &t, "application/json", sample("a", 1.0)).await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("missing or wrong token"));

    let send = |req: Request<Full<Bytes>>| request(srv.addr, &t, req);
    let ok = send(
        auth(Request::post("/metrics"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(sample("a", 1.0))))
            .expect("req"),
    )
    .await;
    assert_eq!(ok.status, 202, "{}", ok.body);

    let r = send(
        auth(Request::post("/metrics"))
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from("x")))
            .expect("req"),
    )
    .await;
    assert_eq!(r.status, 415);
    assert_eq!(r.body, "{\"error\":\"unsupported Content-Type `text/plain`: send application/json or application/x-ndjson\"}");

    let r = send(
        auth(Request::post("/metrics"))
            .header("content-type", "application/json")
            .header("content-encoding", "br")
            .body(Full::new(Bytes::from("x")))
            .expect("req"),
    )
    .await;
    assert_eq!(r.status, 415);
    assert!(r.body.contains("Content-Encoding `br`"), "{}", r.body);

    let big = format!("[{}]", vec![sample("a", 1.0); 100].join(","));
    let r = send(
        auth(Request::post("/metrics"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(big.clone())))
            .expect("req"),
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(
        r.body,
        "{\"error\":\"request body over the limit of 4096 bytes\"}"
    );

    // A small gzip body that inflates past the limit.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, big.as_bytes()).expect("gzip");
    let gz = gz.finish().expect("gzip");
    assert!(gz.len() < 4096);
    let r = send(
        auth(Request::post("/metrics"))
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(Full::new(Bytes::from(gz)))
            .expect("req"),
    )
    .await;
    assert_eq!(r.status, 413);
    assert!(
        r.body.contains("decompressed request body over the limit"),
        "{}",
        r.body
    );

    // zstd within the limit is accepted.
    let small = zstd::encode_all(sample("z", 3.0).as_bytes(), 3).expect("zstd");
    let r = send(
        auth(Request::post("/metrics"))
            .header("content-type", "application/json")
            .header("content-encoding", "zstd")
            .body(Full::new(Bytes::from(small)))
            .expect("req"),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);

    let r = send(
        auth(Request::get("/metrics"))
            .body(Full::new(Bytes::new()))
            .expect("req"),
    )
    .await;
    assert_eq!(r.status, 405);
    let r = send(
        Request::get("/readyz")
            .body(Full::new(Bytes::new()))
            .expect("req"),
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "{\"status\":\"ready\",\"redis\":\"ok\"}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_over_the_limit_is_refused_before_reading() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    s.max_body = 4096;
    let srv = start(s).await;
    // Announce 10 MB and send none of it: the answer must come anyway.
    let mut sock = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut sock,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n",
    )
    .await
    .expect("write");
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut sock, &mut buf))
        .await
        .expect("answer without the body")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_gives_503_and_recovery_needs_no_restart() {
    let mut redis = Redis::start();
    let srv = start(settings(&redis)).await;
    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    post_accepted(srv.addr, &Transport::Http1, sample("before", 1.0)).await;
    dash.next_for("sample", "before").await;

    redis.stop();
    let r = post(
        srv.addr,
        &Transport::Http1,
        "application/json",
        sample("during", 1.0),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(
        r.headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert!(r.body.contains("retry later"), "{}", r.body);
    let ready = request(
        srv.addr,
        &Transport::Http1,
        Request::get("/readyz")
            .body(Full::new(Bytes::new()))
            .expect("req"),
    )
    .await;
    assert_eq!(ready.status, 503);
    let health = request(
        srv.addr,
        &Transport::Http1,
        Request::get("/healthz")
            .body(Full::new(Bytes::new()))
            .expect("req"),
    )
    .await;
    assert_eq!(health.status, 200, "the process stays up");

    redis.restart();
    let mut accepted = false;
    for _ in 0..100 {
        let r = post(
            srv.addr,
            &Transport::Http1,
            "application/json",
            sample("after", 2.0),
        )
        .await;
        if r.status == 202 {
            accepted = true;
            break;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "ingest recovers once Redis is back");
    // Workers and the broadcaster reconnect by themselves too.
    let e = dash.next_for("sample", "after").await;
    assert_eq!(e["metrics"]["cpu"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_slower_than_the_deadline_gives_503() {
    let redis = Redis::start();
    let srv = start(settings(&redis)).await;
    post_accepted(srv.addr, &Transport::H2c, sample("a", 1.0)).await;
    redis.pause();
    let r = post(
        srv.addr,
        &Transport::H2c,
        "application/json",
        sample("a", 2.0),
    )
    .await;
    redis.resume();
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(
        r.headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert_eq!(
        r.body,
        "{\"error\":\"Redis did not acknowledge within 800 ms; retry later\"}"
    );
    let mut accepted = false;
    for _ in 0..100 {
        if post(
            srv.addr,
            &Transport::H2c,
            "application/json",
            sample("a", 3.0),
        )
        .await
        .status
            == 202
        {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "ingest recovers once Redis answers again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_resumes_with_since_without_gaps_or_repeats() {
    let redis = Redis::start();
    let srv = start(settings(&redis)).await;
    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    for i in 0..5 {
        post_accepted(srv.addr, &Transport::H2c, sample("r", f64::from(i))).await;
    }
    let mut last = String::new();
    let mut had = std::collections::HashSet::new();
    for i in 0..5 {
        let e = dash.next_for("sample", "r").await;
        assert_eq!(e["metrics"]["cpu"], i);
        last = e["id"].as_str().expect("id").to_string();
        had.insert(last.clone());
    }
    drop(dash);
    // Missed while away: five more, in one batch and singles.
    let batch = format!("[{},{}]", sample("r", 5.0), sample("r", 6.0));
    post_accepted(srv.addr, &Transport::H2c, batch).await;
    for i in 7..10 {
        post_accepted(srv.addr, &Transport::H2c, sample("r", f64::from(i))).await;
    }
    let mut dash = connect(srv.addr, &format!("/ws?since={last}"))
        .await
        .expect("resumed dashboard");
    // Live samples keep coming while the replay runs.
    let poster = tokio::spawn(async move {
        for i in 10..15 {
            let r = post(
                srv.addr,
                &Transport::H2c,
                "application/json",
                sample("r", f64::from(i)),
            )
            .await;
            assert_eq!(r.status, 202);
        }
        srv
    });
    let mut seen = Vec::new();
    let mut ids = Vec::new();
    let mut replayed = None;
    // The replay starts at or below `since` (samples published out of order below it are not
    // missed), so samples the dashboard had may come again: dropped by id, as the page does.
    let mut duplicates = 0u64;
    while seen.len() < 10 {
        match dash.next().await {
            Incoming::Event(e)
                if e["type"] == "sample" && had.contains(e["id"].as_str().expect("id")) =>
            {
                assert!(replayed.is_none(), "a repeat after the seam: {e}");
                duplicates += 1;
            }
            Incoming::Event(e) if e["type"] == "sample" => {
                seen.push(e["metrics"]["cpu"].as_i64().expect("cpu"));
                ids.push(e["id"].to_string());
            }
            Incoming::Event(e) if e["type"] == "replayed" => {
                ids.push(e.to_string());
                replayed = Some(e)
            }
            Incoming::Event(_) => {}
            other => panic!("{other:?}"),
        }
    }
    let _srv = poster.await.expect("poster");
    assert_eq!(
        seen,
        (5..15).collect::<Vec<_>>(),
        "missed samples, then live ones, none twice: {ids:?}"
    );
    let replayed = replayed.expect("a replayed event");
    // The five missed, the repeats, and live ones the replay read from the stream first.
    assert!(
        replayed["count"].as_u64() >= Some(5 + duplicates),
        "{replayed}"
    );
    assert_eq!(replayed["complete"], true);
    // Nothing more arrives: no repeats after the seam.
    let extra: Vec<_> = dash
        .collect_for(Duration::from_millis(500))
        .await
        .into_iter()
        .filter(|e| e["type"] == "sample")
        .collect();
    assert!(extra.is_empty(), "{extra:?}");

    let (status, body) = http_get(_srv.addr, "/ws?since=yesterday", "").await;
    assert_eq!(status, 400);
    assert!(body.contains("since `yesterday`"), "{body}");
}

/// With `--worker-gather-ms`, a steady flow of requests is read, published and acknowledged in
/// batches (one Pub/Sub message for several requests), and every sample still arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gathering_worker_takes_a_steady_flow_in_batches() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    s.worker_gather = Duration::from_millis(200);
    let srv = start(s).await;
    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;

    // 40 requests, one at a time, about 20 ms apart: without a gather each one is its own
    // read and its own message.
    let requests = 40;
    let began = tokio::time::Instant::now();
    for i in 0..requests {
        post_accepted(srv.addr, &Transport::H2c, sample(&format!("g{i}"), 1.0)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < requests {
        match dash.next().await {
            Incoming::Event(e) if e["type"] == "sample" => {
                let id = e["serverId"].as_str().expect("serverId").to_string();
                assert!(seen.insert(id), "sample sent twice: {e}");
            }
            Incoming::Event(_) => {}
            other => panic!("{other:?}"),
        }
    }
    let (_, body) = http_get(srv.addr, "/stats", "").await;
    let stats: serde_json::Value = serde_json::from_str(&body).expect("stats");
    let publishes = stats["worker"]["publishes"].as_u64().expect("publishes");
    // One read in 200 ms while they came (about a second), and one for the last ones: a
    // handful of messages, not one each. Bounded by the time the requests took, so a slow
    // machine cannot fail it.
    let reads = began.elapsed().as_millis() as u64 / 200 + 2;
    assert!(
        publishes <= reads && publishes < requests as u64,
        "{publishes} messages for {requests} requests over at most {reads} gathers"
    );
}

//! The agents' protocols against System 1 over real sockets and a real redis-server: Influx
//! lines, Prometheus remote write, OTLP/HTTP (protobuf and JSON) and OTLP/gRPC on h2c and h2
//! over TLS reach the dashboard as documented; Redis down gives each protocol's retryable
//! answer; hostile bodies are refused with the right status and nothing is stored.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use ingest::front::protocols::otlp_proto::*;
use ingest::front::protocols::remote_write::{TimeSeries, WriteRequest};
use metrics_edge::tls;
use prost::Message;

const EXPORT: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

async fn post_with(
    addr: SocketAddr,
    t: &Transport,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut b = Request::post(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    request(addr, t, b.body(Full::new(body.into())).expect("request")).await
}

/// A gRPC call's answer: HTTP status, headers, body and trailers.
struct GrpcReply {
    headers: http::HeaderMap,
    body: Bytes,
    trailers: Option<http::HeaderMap>,
}

impl GrpcReply {
    /// `grpc-status`, from the trailers or (trailers-only) the headers.
    fn status(&self) -> String {
        let from = |h: &http::HeaderMap| {
            h.get("grpc-status")
                .map(|v| v.to_str().expect("ascii").to_string())
        };
        self.trailers
            .as_ref()
            .and_then(from)
            .or_else(|| from(&self.headers))
            .expect("a grpc-status")
    }

    fn message(&self) -> String {
        self.headers
            .get("grpc-message")
            .map(|v| v.to_str().expect("ascii").to_string())
            .unwrap_or_default()
    }
}

/// One unary gRPC call over `t` (h2c or h2 over TLS).
async fn grpc(
    addr: SocketAddr,
    t: &Transport,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> GrpcReply {
    let mut b = Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = send(
        addr,
        t,
        b.body(Full::new(Bytes::from(body))).expect("request"),
    )
    .await;
    assert_eq!(resp.status(), 200, "gRPC answers HTTP 200");
    let headers = resp.headers().clone();
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned();
    GrpcReply {
        headers,
        body: collected.to_bytes(),
        trailers,
    }
}

fn framed(msg: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// An export of one gauge point `cpu` for `host`, and one point without a value.
fn export(host: &str, cpu: f64) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![KeyValue::string("host.name", host)],
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    Metric::gauge(
                        "cpu",
                        vec![NumberDataPoint::double(
                            vec![KeyValue::string("core", "0")],
                            0,
                            cpu,
                        )],
                    ),
                    Metric {
                        name: "empty".into(),
                        data: Some(Data::Gauge(Gauge {
                            data_points: vec![NumberDataPoint {
                                flags: NO_RECORDED_VALUE,
                                ..Default::default()
                            }],
                        })),
                    },
                ],
            }],
        }],
    }
}

fn remote_write(instance: &str, value: f64, ts: i64) -> Vec<u8> {
    let req = WriteRequest {
        timeseries: vec![TimeSeries::new(
            &[
                ("__name__", "node_load1"),
                ("instance", instance),
                ("job", "node"),
            ],
            &[(value, ts)],
        )],
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .expect("snappy")
}

const RW_HEADERS: &[(&str, &str)] = &[
    ("content-type", "application/x-protobuf"),
    ("content-encoding", "snappy"),
    ("x-prometheus-remote-write-version", "0.1.0"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_reaches_the_dashboard() {
    let redis = Redis::start();
    let (server_tls, client_tls) = dev_tls(tls::ALPN_H2_HTTP11);
    let mut s = settings(&redis);
    s.edge.admin.listen = Some("127.0.0.1:0".parse().expect("addr"));
    let srv = start_with_tls(s, Some(server_tls)).await;
    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    let now_ns = metrics_model::now_ms() as u128 * 1_000_000;

    // Influx, as Telegraf writes it, over HTTP/1.1 and gzip.
    let lines = format!(
        "cpu,cpu=cpu-total,host=tele\\ graf usage_idle=97.5,usage_user=2i,up=true,note=\"x y\",temp\\ °C=21.5 {now_ns}\n"
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, lines.as_bytes()).expect("gzip");
    let r = post_with(
        srv.addr,
        &Transport::Http1,
        "/api/v2/write?precision=ns",
        &[
            ("content-type", "text/plain; charset=utf-8"),
            ("content-encoding", "gzip"),
        ],
        gz.finish().expect("gzip"),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let e = dash.next_for("sample", "tele_graf").await;
    assert_eq!(e["metrics"]["cpu.cpu_cpu-total.usage_idle"], 97.5);
    assert_eq!(e["metrics"]["cpu.cpu_cpu-total.usage_user"], 2);
    assert_eq!(e["metrics"]["cpu.cpu_cpu-total.up"], 1);
    // A field key outside the name rules is carried under a sanitised name.
    assert_eq!(e["metrics"]["cpu.cpu_cpu-total.temp__C"], 21.5);

    // Remote write over h2c.
    let ts = metrics_model::now_ms() as i64;
    let r = post_with(
        srv.addr,
        &Transport::H2c,
        "/api/v1/write",
        RW_HEADERS,
        remote_write("node:9100", 0.25, ts),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let e = dash.next_for("sample", "node:9100").await;
    assert_eq!(e["metrics"]["node_load1"], 0.25);
    assert_eq!(e["timestamp"], ts);

    // OTLP/HTTP protobuf: the empty point is reported as partial success.
    let r = post_with(
        srv.addr,
        &Transport::H2c,
        "/v1/metrics",
        &[("content-type", "application/x-protobuf")],
        export("otlp-http", 0.5).encode_to_vec(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let resp = ExportMetricsServiceResponse::decode(r.bytes.clone()).expect("response");
    let partial = resp.partial_success.expect("partial success");
    assert_eq!(partial.rejected_data_points, 1);
    assert!(
        partial.error_message.contains("no recorded value"),
        "{}",
        partial.error_message
    );
    let e = dash.next_for("sample", "otlp-http").await;
    assert_eq!(e["metrics"]["cpu.core_0"], 0.5);

    // OTLP/HTTP JSON.
    let json = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.instance.id","value":{"stringValue":"otlp-json"}}]},"scopeMetrics":[{"metrics":[{"name":"requests","sum":{"aggregationTemporality":2,"isMonotonic":true,"dataPoints":[{"asInt":"12"}]}}]}]}]}"#;
    let r = post_with(
        srv.addr,
        &Transport::Http1,
        "/v1/metrics",
        &[("content-type", "application/json")],
        json,
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "{}"));
    let e = dash.next_for("sample", "otlp-json").await;
    assert_eq!(e["metrics"]["requests"], 12);

    // OTLP/gRPC on h2c, then gzip-compressed on h2 over TLS.
    let g = grpc(
        srv.addr,
        &Transport::H2c,
        EXPORT,
        &[],
        framed(&export("grpc-h2c", 1.5).encode_to_vec()),
    )
    .await;
    assert_eq!(g.status(), "0", "{}", g.message());
    assert_eq!(g.headers["content-type"], "application/grpc");
    let resp = ExportMetricsServiceResponse::decode(&g.body[5..]).expect("response");
    assert_eq!(
        resp.partial_success.expect("partial").rejected_data_points,
        1
    );
    dash.next_for("sample", "grpc-h2c").await;

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &export("grpc-tls", 2.5).encode_to_vec()).expect("gzip");
    let mut body = framed(&gz.finish().expect("gzip"));
    body[0] = 1;
    let tls_addr = srv.tls_addr.expect("tls");
    let g = grpc(
        tls_addr,
        &Transport::H2Tls(client_tls),
        EXPORT,
        &[("grpc-encoding", "gzip")],
        body,
    )
    .await;
    assert_eq!(g.status(), "0", "{}", g.message());
    let e = dash.next_for("sample", "grpc-tls").await;
    assert_eq!(e["metrics"]["cpu.core_0"], 2.5);

    // What was not carried is counted on the admin listener, by protocol and reason.
    let (status, text) = http_get(srv.admin_addr.expect("admin"), "/metrics", "").await;
    assert_eq!(status, 200);
    for line in [
        "ingest_protocol_values_total{protocol=\"influx\",outcome=\"carried\"} 4",
        "ingest_protocol_values_total{protocol=\"influx\",outcome=\"not_a_number\"} 1",
        "ingest_protocol_values_total{protocol=\"otlp_http\",outcome=\"no_value\"} 1",
        "ingest_protocol_values_total{protocol=\"otlp_grpc\",outcome=\"carried\"} 2",
        "ingest_protocol_values_total{protocol=\"remote_write\",outcome=\"carried\"} 1",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_gives_each_protocol_its_retryable_answer() {
    let mut redis = Redis::start();
    let srv = start(settings(&redis)).await;
    redis.stop();
    let t = Transport::H2c;
    let r = post_with(srv.addr, &t, "/api/v2/write", &[], "m,host=a v=1").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.headers["retry-after"], "1");
    let r = post_with(
        srv.addr,
        &t,
        "/api/v1/write",
        RW_HEADERS,
        remote_write("a", 1.0, 1),
    )
    .await;
    assert_eq!(r.status, 503, "remote write retries 5xx: {}", r.body);
    let r = post_with(
        srv.addr,
        &t,
        "/v1/metrics",
        &[("content-type", "application/x-protobuf")],
        export("a", 1.0).encode_to_vec(),
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");
    let status = Status::decode(r.bytes.clone()).expect("a google.rpc.Status body");
    assert_eq!(status.code, 14);
    let g = grpc(
        srv.addr,
        &Transport::H2c,
        EXPORT,
        &[],
        framed(&export("a", 1.0).encode_to_vec()),
    )
    .await;
    assert_eq!(g.status(), "14", "UNAVAILABLE: {}", g.message());
    assert!(g.message().contains("retry later"), "{}", g.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_every_protocol() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    s.edge.token = Some("s3cret".into());
    let srv = start(s).await;
    let t = Transport::Http1;
    let r = post_with(srv.addr, &t, "/api/v2/write", &[], "m,host=a v=1").await;
    assert_eq!(r.status, 401);
    let r = post_with(
        srv.addr,
        &t,
        "/api/v2/write",
        &[("authorization", "Token s3cret")],
        "m,host=a v=1",
    )
    .await;
    assert_eq!(
        r.status, 204,
        "Influx 2.x clients' Token scheme: {}",
        r.body
    );
    let r = post_with(
        srv.addr,
        &t,
        "/api/v1/write",
        RW_HEADERS,
        remote_write("a", 1.0, 1),
    )
    .await;
    assert_eq!(r.status, 401);
    let g = grpc(
        srv.addr,
        &Transport::H2c,
        EXPORT,
        &[],
        framed(&export("a", 1.0).encode_to_vec()),
    )
    .await;
    assert_eq!(g.status(), "16", "UNAUTHENTICATED");
    let g = grpc(
        srv.addr,
        &Transport::H2c,
        EXPORT,
        &[("authorization", "Bearer s3cret")],
        framed(&export("a", 1.0).encode_to_vec()),
    )
    .await;
    assert_eq!(g.status(), "0", "{}", g.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_are_refused_and_nothing_is_stored() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    s.max_body = 64 << 10;
    s.edge.limits.max_batch = 100;
    let srv = start(s).await;
    let t = Transport::H2c;
    // Something stored first, so the stream exists.
    let r = post_with(srv.addr, &t, "/api/v2/write", &[], "m,host=a v=1").await;
    assert_eq!(r.status, 204, "{}", r.body);
    let before = xlen(&redis);

    let good = export("h", 1.0).encode_to_vec();
    let mut wrong_wire = good.clone();
    wrong_wire[0] = (1 << 3) | 5; // field 1 as a 32-bit value, not a message
    let mut bad_name = export("h", 1.0);
    bad_name.resource_metrics[0].scope_metrics[0].metrics[0].name = "NAME".into();
    let mut bad_name = bad_name.encode_to_vec();
    let at = bad_name
        .windows(4)
        .position(|w| w == b"NAME")
        .expect("name");
    bad_name[at] = 0xff;
    let huge_count = [0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]; // a 4 GiB length prefix
    let otlp = [("content-type", "application/x-protobuf")];
    for (what, body) in [
        ("truncated", good[..good.len() - 3].to_vec()),
        ("wrong wire type", wrong_wire),
        ("invalid UTF-8 in a name", bad_name.clone()),
        ("absurd length", huge_count.to_vec()),
    ] {
        let r = post_with(srv.addr, &t, "/v1/metrics", &otlp, body.clone()).await;
        assert_eq!(r.status, 400, "OTLP/HTTP {what}: {}", r.body);
        let st = Status::decode(r.bytes.clone()).expect("Status");
        assert!(
            st.message.contains("ExportMetricsServiceRequest"),
            "{}",
            st.message
        );
        let g = grpc(srv.addr, &Transport::H2c, EXPORT, &[], framed(&body)).await;
        assert_eq!(g.status(), "3", "gRPC {what}: INVALID_ARGUMENT");
    }
    let r = post_with(
        srv.addr,
        &t,
        "/v1/metrics",
        &[("content-type", "application/json")],
        r#"{"resourceMetrics":[{"scopeMetrics":"nope"}]}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("\"code\":3"), "{}", r.body);

    // gRPC framing: a prefix claiming more than the body, an unknown method, an encoding.
    let mut short = framed(&good);
    short.truncate(short.len() - 1);
    let g = grpc(srv.addr, &Transport::H2c, EXPORT, &[], short).await;
    assert_eq!(g.status(), "3");
    assert!(g.message().contains("prefix says"), "{}", g.message());
    let g = grpc(srv.addr, &Transport::H2c, "/x.Y/Z", &[], framed(&good)).await;
    assert_eq!(g.status(), "12");
    let g = grpc(
        srv.addr,
        &Transport::H2c,
        EXPORT,
        &[("grpc-encoding", "br")],
        framed(&good),
    )
    .await;
    assert_eq!(g.status(), "12");
    // A gzip bomb inside a gRPC message.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &vec![0u8; 1 << 20]).expect("gzip");
    let mut bomb = framed(&gz.finish().expect("gzip"));
    bomb[0] = 1;
    let g = grpc(
        srv.addr,
        &Transport::H2c,
        EXPORT,
        &[("grpc-encoding", "gzip")],
        bomb,
    )
    .await;
    assert_eq!(g.status(), "8", "RESOURCE_EXHAUSTED: {}", g.message());

    // Remote write: a snappy bomb, not snappy, not a WriteRequest, a 2.0 body.
    let mut snappy_bomb = vec![0x80, 0xc2, 0xd7, 0x2f];
    snappy_bomb.extend_from_slice(&[0; 16]);
    let r = post_with(srv.addr, &t, "/api/v1/write", RW_HEADERS, snappy_bomb).await;
    assert_eq!(r.status, 413, "{}", r.body);
    let r = post_with(
        srv.addr,
        &t,
        "/api/v1/write",
        RW_HEADERS,
        "not snappy at all",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let not_rw = snap::raw::Encoder::new()
        .compress_vec(&huge_count)
        .expect("snappy");
    let r = post_with(srv.addr, &t, "/api/v1/write", RW_HEADERS, not_rw).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("WriteRequest"), "{}", r.body);
    let r = post_with(
        srv.addr,
        &t,
        "/api/v1/write",
        &[
            (
                "content-type",
                "application/x-protobuf;proto=io.prometheus.write.v2.Request",
            ),
            ("content-encoding", "snappy"),
        ],
        remote_write("a", 1.0, 1),
    )
    .await;
    assert_eq!(r.status, 415, "{}", r.body);
    // Too many samples for one request: each point its own timestamp.
    let many: String = (0..101)
        .map(|i| {
            format!(
                "m,host=a v=1 {}\n",
                1_700_000_000_000_000_000u64 + i * 1_000_000
            )
        })
        .collect();
    let r = post_with(srv.addr, &t, "/api/v2/write", &[], many).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("--max-batch"), "{}", r.body);

    // Influx: malformed line, invalid UTF-8, bad precision, body over the limit.
    for (path, body, status, says) in [
        (
            "/api/v2/write",
            &b"m,host=a v=1\nm,host=a\n"[..],
            400,
            "line 2",
        ),
        ("/write", b"m,host=\xff v=1", 400, "UTF-8"),
        (
            "/api/v2/write?precision=d",
            b"m,host=a v=1",
            400,
            "precision `d`",
        ),
        ("/api/v2/write", &[b'x'; 100 << 10], 413, "over the limit"),
    ] {
        let r = post_with(srv.addr, &t, path, &[], body.to_vec()).await;
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert!(r.body.contains(says), "{path}: {}", r.body);
    }

    assert_eq!(
        xlen(&redis),
        before,
        "nothing of a refused request is stored"
    );
}

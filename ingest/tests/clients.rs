//! The agents people already run, against System 1 unchanged: the OpenTelemetry Python SDK's
//! OTLP exporters (gRPC and HTTP/protobuf, gzip), a real Prometheus server scraping System 1's
//! own admin metrics and remote-writing them back, and Telegraf-style Influx lines sent with
//! curl. Each set of values must arrive on a dashboard as docs/API.md maps it.
//!
//! Needs what `./scripts/setup test` installs: the Python virtual environment with the
//! OpenTelemetry SDK and exporters (`$OTEL_VENV`, default
//! `${XDG_CACHE_HOME:-~/.cache}/metrics-ingest/otel-venv`), the `prometheus` and `curl` Debian
//! packages. A missing one fails the test, naming it.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The venv's python, or a panic naming what to install.
fn otel_python() -> PathBuf {
    let venv = std::env::var_os("OTEL_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                        .join(".cache")
                });
            cache.join("metrics-ingest/otel-venv")
        });
    let python = venv.join("bin/python");
    let ok = Command::new(&python)
        .args([
            "-c",
            "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.grpc, opentelemetry.exporter.otlp.proto.http",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} lacks opentelemetry-sdk, opentelemetry-exporter-otlp-proto-grpc or opentelemetry-exporter-otlp-proto-http: run ./scripts/setup test (or set OTEL_VENV)",
        venv.display()
    );
    python
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/otel_send.py")
}

/// Runs a command to its end (bounded), failing the test with its output unless it succeeds.
async fn run(mut cmd: Command, what: &str) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .unwrap_or_else(|_| panic!("{what} did not finish within 60 s"))
    .expect("join")
    .unwrap_or_else(|e| panic!("{what} could not start: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed: {text}");
    text
}

/// The metrics of `server`'s sample events, merged, once all of `names` have arrived; the
/// latest event's timestamp as `timestamp`.
async fn collect(dash: &mut Peer, server: &str, names: &[&str]) -> HashMap<String, Value> {
    let mut got = HashMap::new();
    tokio::time::timeout(WAIT * 3, async {
        while !names.iter().all(|n| got.contains_key(*n)) {
            let e = dash.next_for("sample", server).await;
            if let Some(m) = e["metrics"].as_object() {
                got.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            got.insert("timestamp".into(), e["timestamp"].clone());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{server}: not all of {names:?} arrived; got {got:?}"));
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opentelemetry_python_sdk_exports_over_grpc_and_http() {
    let python = otel_python();
    let redis = Redis::start();
    let srv = start(settings(&redis)).await;
    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;
    for (protocol, endpoint, host, compression) in [
        ("grpc", format!("http://{}", srv.addr), "otel-grpc", "gzip"),
        (
            "http",
            format!("http://{}/v1/metrics", srv.addr),
            "otel-http",
            "none",
        ),
    ] {
        let mut cmd = Command::new(&python);
        cmd.arg(script())
            .args([protocol, &endpoint, host])
            .env("OTEL_EXPORTER_OTLP_COMPRESSION", compression);
        run(cmd, &format!("the OTLP {protocol} exporter")).await;
        let m = collect(
            &mut dash,
            host,
            &[
                "cpu.core_0",
                "requests",
                "latency.count",
                "latency.sum",
                "latency.p50",
            ],
        )
        .await;
        assert_eq!(m["cpu.core_0"], 42.5, "{protocol}: the gauge");
        assert_eq!(m["requests"], 7, "{protocol}: the sum");
        assert_eq!(m["latency.count"], 3, "{protocol}");
        assert_eq!(m["latency.sum"], 45, "{protocol}");
        assert_eq!(m["latency.min"], 5, "{protocol}");
        assert_eq!(m["latency.max"], 25, "{protocol}");
        let p50 = m["latency.p50"].as_f64().expect("a number");
        assert!((5.0..=25.0).contains(&p50), "{protocol}: p50 {p50}");
    }
}

/// A Prometheus server on a free port with its own data directory, killed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_server_remote_writes_what_it_scrapes() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    s.edge.admin.listen = Some("127.0.0.1:0".parse().expect("addr"));
    let srv = start(s).await;
    let admin = srv.admin_addr.expect("admin");
    let mut dash = connect(srv.addr, "/ws").await.expect("dashboard");
    dash.next_of("hello").await;

    let dir = std::env::temp_dir().join(format!("ingest-test-prometheus-{}", free_port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ingest\n    static_configs:\n      - targets: ['{admin}']\nremote_write:\n  - url: http://{}/api/v1/write\n    queue_config:\n      batch_send_deadline: 1s\n",
        srv.addr
    );
    std::fs::write(dir.join("prometheus.yml"), config).expect("config");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{}", free_port()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus must be installed for this test (Debian package: prometheus; ./scripts/setup test)");
    let _prometheus = Prometheus { child, dir };

    // The scrape target is the server; `job` is not folded into names.
    let server = admin.to_string();
    let m = collect(&mut dash, &server, &["up", "ingest_redis_up"]).await;
    assert_eq!(m["up"], 1);
    assert_eq!(m["ingest_redis_up"], 1);
    // A labelled series, with its labels folded into the name.
    let m = collect(
        &mut dash,
        &server,
        &["ingest_writes_refused_total.reason_writer_queue_full"],
    )
    .await;
    assert_eq!(m["ingest_writes_refused_total.reason_writer_queue_full"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegraf_lines_sent_with_curl_arrive_at_each_precision() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    s.edge.token = Some("t0ken".into());
    let srv = start(s).await;
    let mut dash = connect(srv.addr, "/ws?token=t0ken")
        .await
        .expect("dashboard");
    dash.next_of("hello").await;
    let now_s = metrics_model::now_ms() / 1000;
    for (precision, scale) in [
        ("s", 1u64),
        ("ms", 1_000),
        ("us", 1_000_000),
        ("ns", 1_000_000_000),
    ] {
        let host = format!("tele-{precision}");
        let t = now_s * scale;
        // As Telegraf's cpu, mem, disk and system inputs write them (escaped spaces and commas,
        // integer fields, a string field, a boolean).
        let lines = format!(
            "cpu,cpu=cpu-total,host={host} usage_idle=97.25,usage_user=1.5,usage_system=1.25 {t}\n\
mem,host={host} used=1048576i,available_percent=61.2,free=2048u {t}\n\
disk,device=sda1,fstype=ext4,host={host},mode=rw,path=/mnt/my\\ disk\\,x free=5e9,inodes_used=12i {t}\n\
system,host={host} uptime_format=\"1 day, 2:03\",load1=0.5,n_cpus=4i,online=true {t}\n"
        );
        let file = std::env::temp_dir().join(format!("ingest-test-influx-{}", free_port()));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, lines.as_bytes()).expect("gzip");
        std::fs::write(&file, gz.finish().expect("gzip")).expect("write");
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Authorization: Token t0ken",
            "-H",
            "Content-Type: text/plain; charset=utf-8",
            "-H",
            "Content-Encoding: gzip",
            "--data-binary",
        ])
        .arg(format!("@{}", file.display()))
        .arg(format!(
            "http://{}/api/v2/write?org=o&bucket=b&precision={precision}",
            srv.addr
        ));
        let status = run(cmd, "curl (Debian package: curl)").await;
        let _ = std::fs::remove_file(&file);
        assert_eq!(status, "204", "precision {precision}");
        let m = collect(
            &mut dash,
            &host,
            &[
                "cpu.cpu_cpu-total.usage_idle",
                "mem.used",
                "disk.device_sda1.fstype_ext4.mode_rw.path__mnt_my_disk_x.free",
                "system.load1",
            ],
        )
        .await;
        assert_eq!(m["cpu.cpu_cpu-total.usage_idle"], 97.25);
        assert_eq!(m["mem.used"], 1_048_576);
        assert_eq!(m["mem.free"], 2048);
        assert_eq!(m["system.online"], 1);
        assert_eq!(m["system.n_cpus"], 4);
        assert!(
            !m.contains_key("system.uptime_format"),
            "strings are not carried"
        );
        assert_eq!(m["timestamp"], now_s * 1000, "precision {precision}");
    }
}

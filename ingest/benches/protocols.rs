//! Decode cost per sample of each protocol System 1 takes, for the same data: 100 servers'
//! samples of 5 values each (the bench agents' shape), one request. Each figure is parse +
//! validate + map to samples (for remote write, snappy decompression included); storing is
//! the same for all and left out. With the service's allocator (mimalloc), as in `ingest`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ingest::front::protocols::otlp::{self, Format};
use ingest::front::protocols::otlp_proto::*;
use ingest::front::protocols::remote_write::{self, TimeSeries, WriteRequest};
use ingest::front::protocols::{influx, Mapping};
use metrics_model::decode::Decoder;
use prost::Message;
use std::hint::black_box;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SERVERS: usize = 100;
const VALUES: [(&str, f64); 5] = [
    ("cpu", 42.5),
    ("memory", 61.2),
    ("disk", 70.1),
    ("network.in", 812.0),
    ("network.out", 230.0),
];
const TS_MS: u64 = 1_764_349_200_123;

fn json() -> Vec<u8> {
    let samples: Vec<String> = (0..SERVERS)
        .map(|i| format!(r#"{{"serverId":"server-{i}","timestamp":{TS_MS},"metrics":{{"cpu":42.5,"memory":61.2,"disk":70.1,"network":{{"in":812,"out":230}}}}}}"#))
        .collect();
    format!("[{}]", samples.join(",")).into_bytes()
}

fn influx_lines() -> Vec<u8> {
    (0..SERVERS)
        .map(|i| {
            format!(
                "m,host=server-{i} cpu=42.5,memory=61.2,disk=70.1,network.in=812,network.out=230 {}\n",
                TS_MS * 1_000_000
            )
        })
        .collect::<String>()
        .into_bytes()
}

fn remote_write_body() -> Vec<u8> {
    let mut req = WriteRequest::default();
    for i in 0..SERVERS {
        for (name, v) in VALUES {
            let instance = format!("server-{i}");
            req.timeseries.push(TimeSeries::new(
                &[
                    ("__name__", name),
                    ("instance", &instance),
                    ("job", "agents"),
                ],
                &[(v, TS_MS as i64)],
            ));
        }
    }
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .expect("snappy")
}

fn otlp_request() -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: (0..SERVERS)
            .map(|i| ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![KeyValue::string("host.name", &format!("server-{i}"))],
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: VALUES
                        .iter()
                        .map(|(name, v)| {
                            Metric::gauge(
                                name,
                                vec![NumberDataPoint::double(vec![], TS_MS * 1_000_000, *v)],
                            )
                        })
                        .collect(),
                }],
            })
            .collect(),
    }
}

fn otlp_json() -> Vec<u8> {
    let resources: Vec<String> = (0..SERVERS)
        .map(|i| {
            let metrics: Vec<String> = VALUES
                .iter()
                .map(|(name, v)| {
                    format!(
                        r#"{{"name":"{name}","gauge":{{"dataPoints":[{{"timeUnixNano":"{}","asDouble":{v}}}]}}}}"#,
                        TS_MS * 1_000_000
                    )
                })
                .collect();
            format!(
                r#"{{"resource":{{"attributes":[{{"key":"host.name","value":{{"stringValue":"server-{i}"}}}}]}},"scopeMetrics":[{{"metrics":[{}]}}]}}"#,
                metrics.join(",")
            )
        })
        .collect();
    format!(r#"{{"resourceMetrics":[{}]}}"#, resources.join(",")).into_bytes()
}

fn protocols(c: &mut Criterion) {
    let mapping = Mapping::default();
    let mut g = c.benchmark_group("decode 100 samples of 5 values");
    g.throughput(Throughput::Elements(SERVERS as u64));

    let body = json();
    let mut work = body.clone();
    let mut d = Decoder::default();
    g.bench_function("JSON (POST /metrics)", |b| {
        b.iter(|| {
            work.copy_from_slice(&body);
            black_box(d.decode_json(&mut work, 1).expect("valid"));
        })
    });
    let lines = influx_lines();
    g.bench_function("Influx line protocol", |b| {
        b.iter(|| black_box(influx::map(&lines, 1, &mapping, 1).expect("valid")))
    });
    let rw = remote_write_body();
    g.bench_function("Prometheus remote write (snappy + protobuf)", |b| {
        b.iter(|| black_box(remote_write::map_body(&rw, &mapping, 1).expect("valid")))
    });
    let pb = otlp_request().encode_to_vec();
    g.bench_function("OTLP protobuf (HTTP and gRPC)", |b| {
        b.iter(|| {
            let req = otlp::decode(&pb, Format::Protobuf).expect("valid");
            black_box(
                otlp::map(req, &mapping, 1)
                    .finish(Default::default())
                    .expect("valid"),
            )
        })
    });
    let js = otlp_json();
    g.bench_function("OTLP JSON", |b| {
        b.iter(|| {
            let req = otlp::decode(&js, Format::Json).expect("valid");
            black_box(
                otlp::map(req, &mapping, 1)
                    .finish(Default::default())
                    .expect("valid"),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, protocols);
criterion_main!(benches);

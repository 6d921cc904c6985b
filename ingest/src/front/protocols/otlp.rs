//! OTLP metrics: the mapping to samples (shared with OTLP/gRPC, see [`super::grpc`]) and
//! OTLP/HTTP, `POST /v1/metrics` with a protobuf (`application/x-protobuf`) or JSON
//! (`application/json`) `ExportMetricsServiceRequest`, gzip or not.
//!
//! A resource's server is the first of `--otlp-server-attributes` it has (default `host.name`,
//! then `service.instance.id`). A metric's values are named after the metric with its point
//! attributes folded in (`--fold-labels`):
//!
//! - gauges and sums: the value;
//! - histograms: `.count`, `.sum`, `.min`, `.max` (when sent) and the quantiles of
//!   `--histogram-quantiles` estimated from the buckets (`.p50`, `.p99`);
//! - exponential histograms: the same, from their exponential buckets;
//! - summaries: `.count`, `.sum` and the quantiles they carry.
//!
//! Points of different times become different samples. What cannot be carried is counted and
//! answered as partial success (`rejected_data_points` counts values, a histogram point
//! counting each of its values). Answers: 200 with an `ExportMetricsServiceResponse` in the
//! request's encoding; 400 (a `google.rpc.Status`) malformed, not retryable; 413; 415;
//! 503 with `Retry-After` when Redis is down or slow (retryable, per the OTLP spec).

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use metrics_edge::auth::Role;
use metrics_edge::http::{self as h, Answer, Body, Refusal};
use metrics_model::now_ms;
use prost::Message;

use super::otlp_proto::*;
use super::{
    bucket_quantile, quantile_suffix, store_mapped, Batch, Counts, Mapping, Namer, Protocol,
    Uncarried,
};
use crate::front::{self, Front};

/// The body's encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Protobuf,
    Json,
}

/// Decodes an `ExportMetricsServiceRequest`.
pub fn decode(body: &[u8], format: Format) -> Result<ExportMetricsServiceRequest, Refusal> {
    match format {
        Format::Protobuf => ExportMetricsServiceRequest::decode(body).map_err(|e| {
            Refusal::BadRequest(format!(
                "request body is not an OTLP ExportMetricsServiceRequest (protobuf): {e}"
            ))
        }),
        Format::Json => serde_json::from_slice(body).map_err(|e| {
            Refusal::BadRequest(format!(
                "request body is not an OTLP ExportMetricsServiceRequest (JSON): {e}"
            ))
        }),
    }
}

/// Maps a request into a batch.
pub fn map<'m>(
    req: ExportMetricsServiceRequest,
    mapping: &'m Mapping,
    arrival_ms: u64,
) -> Batch<'m> {
    let mut batch = Batch::new(mapping, arrival_ms);
    let namer = Namer::new(mapping, &[]);
    for rm in req.resource_metrics {
        let attrs = rm.resource.map(|r| r.attributes).unwrap_or_default();
        let found = mapping.otlp_server.iter().find_map(|k| {
            attrs
                .iter()
                .find(|a| &a.key == k)
                .and_then(|a| a.value.as_ref()?.text())
        });
        let server = batch.server(found.as_deref());
        for sm in rm.scope_metrics {
            for metric in sm.metrics {
                match &server {
                    Ok(s) => add_metric(&mut batch, &namer, s, metric),
                    Err(r) => {
                        let n = values_of(&metric, batch.mapping);
                        batch.skip(*r, n);
                    }
                }
            }
        }
    }
    batch
}

/// The values a metric would have made (for counting what was not carried).
fn values_of(m: &Metric, mapping: &Mapping) -> u64 {
    let q = mapping.quantiles.len() as u64;
    match &m.data {
        None => 1,
        Some(Data::Gauge(g)) => g.data_points.len() as u64,
        Some(Data::Sum(s)) => s.data_points.len() as u64,
        Some(Data::Histogram(h)) => h.data_points.len() as u64 * (2 + q),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len() as u64 * (2 + q),
        Some(Data::Summary(s)) => s
            .data_points
            .iter()
            .map(|p| 2 + p.quantile_values.len() as u64)
            .sum(),
    }
}

fn labels(attrs: &[KeyValue]) -> impl Iterator<Item = (&str, String)> {
    attrs
        .iter()
        .filter_map(|a| Some((a.key.as_str(), a.value.as_ref()?.text()?)))
}

fn add_metric(batch: &mut Batch<'_>, namer: &Namer<'_>, server: &str, m: Metric) {
    let name = m.name;
    let quantiles = batch.mapping.quantiles.len() as u64;
    // Where a point's values go: its server, its time and its name so far.
    let at = |batch: &Batch<'_>, ns: u64, attrs: &[KeyValue]| At {
        server,
        t: batch.time_from_nanos(ns),
        prefix: namer.prefix(&name, labels(attrs)),
    };
    match m.data {
        None => batch.skip(Uncarried::NoValue, 1),
        Some(Data::Gauge(Gauge { data_points: pts }))
        | Some(Data::Sum(Sum {
            data_points: pts, ..
        })) => {
            for p in pts {
                let value = match p.value {
                    _ if p.flags & NO_RECORDED_VALUE != 0 => None,
                    Some(NumberValue::AsDouble(v)) => Some(v),
                    Some(NumberValue::AsInt(v)) => Some(v as f64),
                    None => None,
                };
                match value {
                    Some(v) => at(batch, p.time_unix_nano, &p.attributes).value(batch, None, v),
                    None => batch.skip(Uncarried::NoValue, 1),
                }
            }
        }
        Some(Data::Histogram(hist)) => {
            for p in hist.data_points {
                if p.flags & NO_RECORDED_VALUE != 0 {
                    batch.skip(Uncarried::NoValue, 2 + quantiles);
                    continue;
                }
                let buckets: Vec<(f64, u64)> = p
                    .bucket_counts
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| {
                        let upper = p.explicit_bounds.get(i).copied();
                        (upper.unwrap_or(f64::INFINITY), n)
                    })
                    .collect();
                // Bounds that start above 0 are taken to measure something non-negative.
                let floor = match p.explicit_bounds.first() {
                    Some(b) if *b > 0.0 => 0.0,
                    _ => f64::NEG_INFINITY,
                };
                let stats = Stats {
                    count: p.count,
                    sum: p.sum,
                    min: p.min,
                    max: p.max,
                };
                let lowest = p.min.unwrap_or(floor);
                at(batch, p.time_unix_nano, &p.attributes)
                    .histogram(batch, &stats, lowest, &buckets);
            }
        }
        Some(Data::ExponentialHistogram(hist)) => {
            for p in hist.data_points {
                if p.flags & NO_RECORDED_VALUE != 0 {
                    batch.skip(Uncarried::NoValue, 2 + quantiles);
                    continue;
                }
                let stats = Stats {
                    count: p.count,
                    sum: p.sum,
                    min: p.min,
                    max: p.max,
                };
                let buckets = exponential_buckets(&p);
                at(batch, p.time_unix_nano, &p.attributes).histogram(
                    batch,
                    &stats,
                    f64::NEG_INFINITY,
                    &buckets,
                );
            }
        }
        Some(Data::Summary(s)) => {
            for p in s.data_points {
                if p.flags & NO_RECORDED_VALUE != 0 {
                    batch.skip(Uncarried::NoValue, 2 + p.quantile_values.len() as u64);
                    continue;
                }
                let at = at(batch, p.time_unix_nano, &p.attributes);
                let stats = Stats {
                    count: p.count,
                    sum: Some(p.sum),
                    min: None,
                    max: None,
                };
                at.stats(batch, &stats);
                for qv in p.quantile_values {
                    at.value(batch, Some(&quantile_suffix(qv.quantile)), qv.value);
                }
            }
        }
    }
}

/// A point's count, sum, min and max.
struct Stats {
    count: u64,
    sum: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
}

/// Where one point's values go.
struct At<'s> {
    server: &'s str,
    t: u64,
    prefix: String,
}

impl At<'_> {
    /// One value named `prefix[.suffix]`.
    fn value(&self, batch: &mut Batch<'_>, suffix: Option<&str>, v: f64) {
        batch.value(self.server, self.t, Namer::name(&self.prefix, suffix), v);
    }

    /// `.count`, `.sum` and, when sent, `.min` and `.max`.
    fn stats(&self, batch: &mut Batch<'_>, s: &Stats) {
        self.value(batch, Some("count"), s.count as f64);
        match s.sum {
            Some(sum) => self.value(batch, Some("sum"), sum),
            None => batch.skip(Uncarried::NoValue, 1),
        }
        for (suffix, v) in [("min", s.min), ("max", s.max)] {
            if let Some(v) = v {
                self.value(batch, Some(suffix), v);
            }
        }
    }

    /// A histogram's stats and the configured quantiles estimated from `buckets`.
    fn histogram(&self, batch: &mut Batch<'_>, s: &Stats, lowest: f64, buckets: &[(f64, u64)]) {
        self.stats(batch, s);
        for q in batch.mapping.quantiles.clone() {
            let v = bucket_quantile(q, lowest, buckets)
                .map(|v| clamp(v, s.min, s.max))
                .unwrap_or(f64::NAN);
            self.value(batch, Some(&quantile_suffix(q)), v);
        }
    }
}

fn clamp(v: f64, min: Option<f64>, max: Option<f64>) -> f64 {
    let v = min.map_or(v, |m| v.max(m));
    max.map_or(v, |m| v.min(m))
}

/// An exponential histogram's buckets as `(upper bound, count)` in ascending order: negative
/// buckets (largest magnitude first), the zero bucket, positive buckets. Bucket `i` covers
/// `(base^i, base^(i+1)]` with `base = 2^(2^-scale)`.
fn exponential_buckets(p: &ExponentialHistogramDataPoint) -> Vec<(f64, u64)> {
    let base = 2f64.powf(2f64.powi(-p.scale));
    let mut out = Vec::new();
    if let Some(neg) = &p.negative {
        for (i, &n) in neg.bucket_counts.iter().enumerate().rev() {
            // Negative bucket i covers [-base^(i+1), -base^i): its upper bound is -base^i.
            out.push((-base.powi(neg.offset + i as i32), n));
        }
    }
    out.push((0.0, p.zero_count));
    if let Some(pos) = &p.positive {
        for (i, &n) in pos.bucket_counts.iter().enumerate() {
            out.push((base.powi(pos.offset + i as i32 + 1), n));
        }
    }
    out
}

/// `POST /v1/metrics`.
pub async fn post_metrics(front: &Arc<Front>, req: Request<Incoming>) -> Answer {
    let format = match content_type(req.headers()) {
        Ok(f) => f,
        Err(e) => return Ok(failure(Format::Protobuf, e)),
    };
    Ok(match handle(front, req, format).await {
        Ok(r) => r,
        Err(e) => failure(format, e),
    })
}

async fn handle(front: &Arc<Front>, req: Request<Incoming>, format: Format) -> Answer {
    front.auth.check(Role::Agent, &req)?;
    let enc = front::content_encoding(req.headers())?;
    front::check_length(front, req.headers())?;
    let arrival = now_ms();
    let body = front::read_body(front, req, enc).await?;
    let counts = export(front, Protocol::OtlpHttp, &body, format, arrival).await?;
    let resp = response(&counts);
    let body = match format {
        Format::Protobuf => resp.encode_to_vec(),
        Format::Json => json_response(&resp).into_bytes(),
    };
    Ok(with_type(StatusCode::OK, format, body))
}

/// Decodes, maps and stores one export (both transports); what was carried and not.
pub async fn export(
    front: &Front,
    protocol: Protocol,
    body: &[u8],
    format: Format,
    arrival: u64,
) -> Result<Counts, Refusal> {
    let req = decode(body, format)?;
    let mapped = map(req, &front.opts.mapping, arrival).finish(front.opts.limits)?;
    store_mapped(front, protocol, &mapped, arrival).await?;
    Ok(mapped.counts)
}

/// The answer to an export: partial success when anything was not carried.
pub fn response(counts: &Counts) -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        partial_success: (counts.rejected() > 0).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: counts.rejected() as i64,
            error_message: counts.message(),
        }),
    }
}

fn json_response(r: &ExportMetricsServiceResponse) -> String {
    match &r.partial_success {
        None => "{}".to_string(),
        Some(p) => serde_json::json!({"partialSuccess": {
            "rejectedDataPoints": p.rejected_data_points.to_string(),
            "errorMessage": p.error_message,
        }})
        .to_string(),
    }
}

fn content_type(headers: &http::HeaderMap) -> Result<Format, Refusal> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase().as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Format::Protobuf),
        "application/json" => Ok(Format::Json),
        _ => Err(Refusal::UnsupportedMedia(format!(
            "unsupported Content-Type `{ct}`: OTLP/HTTP takes application/x-protobuf or application/json"
        ))),
    }
}

fn with_type(status: StatusCode, format: Format, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(h::full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(match format {
            Format::Protobuf => "application/x-protobuf",
            Format::Json => "application/json",
        }),
    );
    r
}

/// A refusal as OTLP/HTTP answers it: the status (with `Retry-After` on 503 and the other
/// headers a refusal carries) and a `google.rpc.Status` body in the request's encoding.
fn failure(format: Format, e: Refusal) -> Response<Body> {
    let status = e.status();
    let message = e.to_string();
    let plain = e.into_response();
    let body = match format {
        Format::Protobuf => Status {
            code: grpc_code(status) as i32,
            message,
        }
        .encode_to_vec(),
        Format::Json => serde_json::json!({"code": grpc_code(status), "message": message})
            .to_string()
            .into_bytes(),
    };
    let mut r = with_type(status, format, body);
    for (k, v) in plain.headers() {
        if k != header::CONTENT_TYPE {
            r.headers_mut().insert(k.clone(), v.clone());
        }
    }
    r
}

/// The gRPC status code of a refusal's HTTP status.
pub fn grpc_code(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 3,        // INVALID_ARGUMENT
        401 => 16,       // UNAUTHENTICATED
        403 => 7,        // PERMISSION_DENIED
        404 | 405 => 12, // UNIMPLEMENTED
        408 => 4,        // DEADLINE_EXCEEDED
        413 => 8,        // RESOURCE_EXHAUSTED
        415 => 12,       // UNIMPLEMENTED
        503 => 14,       // UNAVAILABLE
        _ => 13,         // INTERNAL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_sums_and_histograms_become_named_values() {
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![
                        KeyValue::string("service.instance.id", "i-1"),
                        KeyValue::string("host.name", "web 1"),
                    ],
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        Metric::gauge(
                            "cpu",
                            vec![NumberDataPoint::double(
                                vec![KeyValue::string("core", "0")],
                                2_000_000_000,
                                0.5,
                            )],
                        ),
                        Metric {
                            name: "requests".into(),
                            data: Some(Data::Sum(Sum {
                                data_points: vec![NumberDataPoint {
                                    attributes: vec![],
                                    time_unix_nano: 3_000_000_000,
                                    value: Some(NumberValue::AsInt(7)),
                                    flags: 0,
                                }],
                            })),
                        },
                        Metric {
                            name: "latency".into(),
                            data: Some(Data::Histogram(Histogram {
                                data_points: vec![HistogramDataPoint {
                                    attributes: vec![],
                                    time_unix_nano: 2_000_000_000,
                                    count: 20,
                                    sum: Some(200.0),
                                    bucket_counts: vec![10, 10, 0],
                                    explicit_bounds: vec![10.0, 20.0],
                                    flags: 0,
                                    min: None,
                                    max: None,
                                }],
                            })),
                        },
                        Metric {
                            name: "nothing".into(),
                            data: None,
                        },
                    ],
                }],
            }],
        };
        let m = map(req, &Mapping::default(), 0)
            .finish(Default::default())
            .expect("mapped");
        assert_eq!(
            super::super::flat(&m),
            [
                "web_1@2000 cpu.core_0=0.5",
                "web_1@2000 latency.count=20",
                "web_1@2000 latency.sum=200",
                "web_1@2000 latency.p50=10",
                "web_1@2000 latency.p90=18",
                "web_1@2000 latency.p99=19.8",
                "web_1@3000 requests=7",
            ]
        );
        assert_eq!(m.counts.rejected(), 1);
    }

    #[test]
    fn otlp_json_follows_the_encoding_rules() {
        let body = br#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"host.name","value":{"stringValue":"h"}}]},
            "scopeMetrics":[{"scope":{"name":"x"},"metrics":[
              {"name":"g","unit":"1","gauge":{"dataPoints":[{"timeUnixNano":"1000000000","asDouble":1.5,"attributes":[{"key":"k","value":{"intValue":"3"}}]}]}},
              {"name":"s","sum":{"aggregationTemporality":2,"isMonotonic":true,"dataPoints":[{"timeUnixNano":1000000000,"asInt":"9"}]}},
              {"name":"h","histogram":{"dataPoints":[{"timeUnixNano":"1000000000","count":"2","sum":3,"bucketCounts":["1","1"],"explicitBounds":[1]}]}}
            ]}]}]}"#;
        let req = decode(body, Format::Json).expect("decoded");
        let mapping = Mapping {
            quantiles: vec![0.5],
            ..Default::default()
        };
        let m = map(req, &mapping, 0)
            .finish(Default::default())
            .expect("mapped");
        assert_eq!(
            super::super::flat(&m),
            [
                "h@1000 g.k_3=1.5",
                "h@1000 s=9",
                "h@1000 h.count=2",
                "h@1000 h.sum=3",
                "h@1000 h.p50=1"
            ]
        );
    }

    #[test]
    fn a_resource_without_a_server_id_is_counted_not_carried() {
        let body = br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"g","gauge":{"dataPoints":[{"asDouble":1},{"asDouble":2}]}}]}]}]}"#;
        let req = decode(body, Format::Json).expect("decoded");
        let m = map(req, &Mapping::default(), 0)
            .finish(Default::default())
            .expect("mapped");
        assert!(m.samples.is_empty());
        assert_eq!(m.counts.rejected(), 2);
        let r = response(&m.counts);
        assert_eq!(r.partial_success.expect("partial").rejected_data_points, 2);
    }

    #[test]
    fn exponential_buckets_ascend() {
        let p = ExponentialHistogramDataPoint {
            scale: 0,
            zero_count: 1,
            positive: Some(Buckets {
                offset: 0,
                bucket_counts: vec![1, 2],
            }),
            negative: Some(Buckets {
                offset: 0,
                bucket_counts: vec![3],
            }),
            ..Default::default()
        };
        assert_eq!(
            exponential_buckets(&p),
            [(-1.0, 3), (0.0, 1), (2.0, 1), (4.0, 2)]
        );
    }
}

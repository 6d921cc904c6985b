//! The transports of System 1's other protocols, sending the JSON transports' samples
//! converted, so that the system stores the same names (`send_us` and `bench_seq` included) and
//! the dashboards measure latency as for JSON:
//!
//! - `otlp-grpc`: an OTLP `ExportMetricsServiceRequest` over gRPC (`MetricsService/Export` on
//!   HTTP/2 cleartext), the way an OpenTelemetry exporter sends: one resource per sample
//!   (`host.name` = the server id), one gauge per metric; the call's `grpc-status` is the
//!   acknowledgement.
//! - `remote-write`: a Prometheus remote write 1.0 `WriteRequest` (snappy) over HTTP/2
//!   cleartext: one series per metric (`__name__` = the metric, `instance` = the server id),
//!   one sample each; `204` is the acknowledgement.
//!
//! The samples of one message get timestamps one millisecond apart (ending at the send time):
//! points of one server with the same time would become one sample.

use http_body_util::BodyExt;
use ingest::front::protocols::otlp_proto::{
    ExportMetricsServiceRequest, KeyValue, Metric, NumberDataPoint, Resource, ResourceMetrics,
    ScopeMetrics,
};
use ingest::front::protocols::remote_write::{TimeSeries, WriteRequest};
use metrics_model::decode::with_decoder;
use metrics_model::Sample;
use prost::Message;

use super::{ack, Plan};
use crate::record::LoadRecorder;

/// The samples in `json` (a sample or an array, as the JSON transports send), each with its
/// time in ms: one apart, the last at `send_us`.
fn timed(json: &mut [u8], send_us: u64) -> Vec<(Sample, u64)> {
    let samples =
        with_decoder(|d| d.decode_json(json, 0)).expect("the bench's own samples are valid");
    let n = samples.len() as u64;
    let last_ms = send_us / 1000;
    samples
        .into_iter()
        .enumerate()
        .map(|(i, s)| (s, last_ms + 1 + i as u64 - n))
        .collect()
}

/// The gRPC call (5-byte prefix and message) of the samples in `json`.
pub fn grpc_body(json: &mut [u8], send_us: u64) -> Vec<u8> {
    let req = ExportMetricsServiceRequest {
        resource_metrics: timed(json, send_us)
            .iter()
            .map(|(s, t_ms)| ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![KeyValue::string("host.name", &s.server_id)],
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: s
                        .metrics
                        .iter()
                        .map(|(name, v)| {
                            let point = NumberDataPoint::double(vec![], t_ms * 1_000_000, v);
                            Metric::gauge(name, vec![point])
                        })
                        .collect(),
                }],
            })
            .collect(),
    };
    let msg = req.encode_to_vec();
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    out
}

/// The snappy-compressed `WriteRequest` of the samples in `json`.
pub fn remote_write_body(json: &mut [u8], send_us: u64) -> Vec<u8> {
    let mut req = WriteRequest::default();
    for (s, t_ms) in timed(json, send_us) {
        for (name, v) in s.metrics.iter() {
            req.timeseries.push(TimeSeries::new(
                &[("__name__", name), ("instance", &s.server_id)],
                &[(v, t_ms as i64)],
            ));
        }
    }
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .expect("snappy takes any input")
}

type Reply = Result<
    Result<hyper::Response<hyper::body::Incoming>, hyper::Error>,
    tokio::time::error::Elapsed,
>;

/// Records a gRPC call's outcome: acknowledged when its `grpc-status` (in the trailers, or in
/// the headers of a trailers-only answer) is 0.
pub(super) async fn reply(plan: &Plan, rec: &LoadRecorder, k: u64, sent_us: u64, res: Reply) {
    let measured = plan.measured(k);
    let resp = match res {
        Ok(Ok(r)) => r,
        Ok(Err(e)) if measured => {
            return rec.error(plan.batch, || format!("gRPC call failed: {e}"));
        }
        Err(_) if measured => {
            return rec.error(plan.batch, || {
                format!("no reply within {} s", super::REQUEST_TIMEOUT.as_secs())
            });
        }
        _ => return,
    };
    let headers = resp.headers().clone();
    let collected = resp.into_body().collect().await;
    let now = metrics_model::now_us();
    let trailers = collected.as_ref().ok().and_then(|c| c.trailers().cloned());
    let get = |name: &str| {
        trailers
            .as_ref()
            .and_then(|t| t.get(name))
            .or_else(|| headers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if !measured {
        return;
    }
    match get("grpc-status").as_deref() {
        Some("0") => ack(plan, rec, k, sent_us, now),
        Some(code) => {
            let message = get("grpc-message").unwrap_or_default();
            rec.reject(&format!("grpc-{code}"), plan.batch, || {
                format!("grpc-status {code}: {message}")
            })
        }
        None => rec.error(plan.batch, || match collected {
            Ok(_) => "gRPC answer without grpc-status".into(),
            Err(e) => format!("reading the gRPC answer: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_keep_their_names_and_get_distinct_times() {
        let mut json = br#"[{"serverId":"a","metrics":{"cpu":1,"network":{"in":2}}},{"serverId":"a","metrics":{"cpu":3}}]"#.to_vec();
        let body = grpc_body(&mut json, 10_000_000);
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        assert_eq!((body[0], len), (0, body.len() - 5));
        let req = ExportMetricsServiceRequest::decode(&body[5..]).expect("decodes");
        assert_eq!(req.resource_metrics.len(), 2);
        let names: Vec<_> = req.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(names, ["cpu", "network.in"]);
        let mapping = ingest::front::protocols::Mapping::default();
        let mapped = ingest::front::protocols::otlp::map(req, &mapping, 0)
            .finish(Default::default())
            .expect("maps");
        let times: Vec<_> = mapped.samples.iter().map(|s| s.timestamp).collect();
        assert_eq!(times, [9_999, 10_000]);

        let mut json =
            br#"[{"serverId":"a","metrics":{"cpu":1}},{"serverId":"a","metrics":{"cpu":3}}]"#
                .to_vec();
        let body = remote_write_body(&mut json, 10_000_000);
        let mapped =
            ingest::front::protocols::remote_write::map_body(&body, &mapping, 0).expect("maps");
        let got: Vec<_> = mapped
            .samples
            .iter()
            .map(|s| (s.timestamp, s.metrics.get("cpu")))
            .collect();
        assert_eq!(got, [(9_999, Some(1.0)), (10_000, Some(3.0))]);
    }
}

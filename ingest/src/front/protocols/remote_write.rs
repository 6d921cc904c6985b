//! Prometheus remote write 1.0: `POST /api/v1/write`, a snappy-compressed (block format)
//! protobuf `WriteRequest`.
//!
//! A series' server is its label `--prom-server-label` (default `instance`); its metric name is
//! `__name__` with the other labels folded in per `--fold-labels` (`job` ignored by default).
//! Each sample is one value at its own time; NaN (staleness markers included) and native
//! histograms are counted as not carried.
//!
//! Answers follow the spec's retry rule, "5xx is retried, 4xx is not": 204 stored; 400
//! malformed (never worth resending); 413 over the limits; 415 not snappy or a remote write
//! 2.0 body; 503 with `Retry-After` when Redis is down or slow.
//!
//! The messages mirror `prompb/remote.proto` and `prompb/types.proto` of Prometheus (the
//! fields remote write 1.0 sends; exemplars and metadata are skipped unread).

use std::sync::Arc;

use http::{header, Request};
use hyper::body::Incoming;
use metrics_edge::auth::Role;
use metrics_edge::http::{Answer, Refusal};
use metrics_model::now_ms;
use prost::Message;

use super::{store_mapped, Batch, Mapped, Mapping, Namer, Protocol, Uncarried};
use crate::front::{self, Encoding, Front};

/// `prometheus.WriteRequest` (field 3, metadata, is skipped).
#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries` (exemplars, field 3, skipped).
#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<PromSample>,
    /// Native histograms: counted, not carried (their fields are not read).
    #[prost(message, repeated, tag = "4")]
    pub histograms: Vec<NativeHistogram>,
}

impl TimeSeries {
    /// A series of `labels` (name, value) and `samples` (value, timestamp in ms).
    pub fn new(labels: &[(&str, &str)], samples: &[(f64, i64)]) -> Self {
        Self {
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            samples: samples
                .iter()
                .map(|&(value, timestamp)| PromSample { value, timestamp })
                .collect(),
            histograms: vec![],
        }
    }
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, Message)]
pub struct PromSample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// `prometheus.Histogram`, only its timestamp read.
#[derive(Clone, PartialEq, Message)]
pub struct NativeHistogram {
    #[prost(int64, tag = "15")]
    pub timestamp: i64,
}

/// `POST /api/v1/write`.
pub async fn post_write(front: &Arc<Front>, req: Request<Incoming>) -> Answer {
    front.auth.check(Role::Agent, &req)?;
    check_headers(req.headers())?;
    front::check_length(front, req.headers())?;
    let arrival = now_ms();
    let raw = front::read_body(front, req, Encoding::Identity).await?;
    let body = unsnappy(&raw, front.opts.max_body)?;
    let mapped = map(&body, &front.opts.mapping, arrival)?.finish(front.opts.limits)?;
    store_mapped(front, Protocol::RemoteWrite, &mapped, arrival).await?;
    Ok(super::no_content())
}

fn check_headers(headers: &http::HeaderMap) -> Result<(), Refusal> {
    let get = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    let enc = get(header::CONTENT_ENCODING);
    if enc != "snappy" {
        return Err(Refusal::UnsupportedMedia(format!(
            "Content-Encoding `{enc}`: remote write bodies are snappy-compressed (Content-Encoding: snappy)"
        )));
    }
    let ct = get(header::CONTENT_TYPE);
    let media = ct.split(';').next().unwrap_or("").trim();
    if media != "application/x-protobuf" || ct.contains("io.prometheus.write.v2") {
        return Err(Refusal::UnsupportedMedia(format!(
            "Content-Type `{ct}`: this endpoint takes remote write 1.0 (application/x-protobuf, prometheus.WriteRequest)"
        )));
    }
    Ok(())
}

/// Decompresses a snappy block, refusing one that says it inflates past `max` before
/// allocating for it.
pub fn unsnappy(raw: &[u8], max: usize) -> Result<Vec<u8>, Refusal> {
    let len = snap::raw::decompress_len(raw)
        .map_err(|e| Refusal::BadRequest(format!("request body is not valid snappy: {e}")))?;
    if len > max {
        return Err(Refusal::TooLarge(format!(
            "decompressed request body ({len} bytes, as its snappy header says) over the limit of {max} bytes"
        )));
    }
    snap::raw::Decoder::new()
        .decompress_vec(raw)
        .map_err(|e| Refusal::BadRequest(format!("request body is not valid snappy: {e}")))
}

/// Decodes a `WriteRequest` into a batch.
pub fn map<'m>(body: &[u8], mapping: &'m Mapping, arrival_ms: u64) -> Result<Batch<'m>, Refusal> {
    let req = WriteRequest::decode(body).map_err(|e| {
        Refusal::BadRequest(format!(
            "request body is not a remote write WriteRequest: {e}"
        ))
    })?;
    let mut batch = Batch::new(mapping, arrival_ms);
    let server_label = [mapping.prom_server.clone()];
    let namer = Namer::new(mapping, &server_label);
    for ts in req.timeseries {
        batch.skip(Uncarried::Unsupported, ts.histograms.len() as u64);
        let n = ts.samples.len() as u64;
        let label = |k: &str| {
            ts.labels
                .iter()
                .find(|l| l.name == k)
                .map(|l| l.value.as_str())
        };
        let Some(name) = label("__name__") else {
            batch.skip(Uncarried::NoValue, n);
            continue;
        };
        let server = match batch.server(label(&mapping.prom_server)) {
            Ok(s) => s,
            Err(r) => {
                batch.skip(r, n);
                continue;
            }
        };
        let prefix = namer.prefix(
            name,
            ts.labels
                .iter()
                .filter(|l| l.name != "__name__")
                .map(|l| (l.name.as_str(), l.value.as_str())),
        );
        let name = Namer::name(&prefix, None);
        for s in ts.samples {
            if s.timestamp < 0 {
                batch.skip(Uncarried::BadTimestamp, 1);
                continue;
            }
            batch.value(&server, s.timestamp as u64, name.clone(), s.value);
        }
    }
    if batch.seen() == 0 {
        return Err(Refusal::BadRequest(
            "the WriteRequest holds no samples".into(),
        ));
    }
    Ok(batch)
}

/// Decompresses and maps a body (for tests and benchmarks).
pub fn map_body(raw: &[u8], mapping: &Mapping, arrival_ms: u64) -> Result<Mapped, Refusal> {
    let body = unsnappy(raw, usize::MAX)?;
    map(&body, mapping, arrival_ms)?.finish(Default::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_become_samples_per_instance_and_time() {
        let req = WriteRequest {
            timeseries: vec![
                TimeSeries::new(
                    &[("__name__", "up"), ("instance", "h:9"), ("job", "x")],
                    &[(1.0, 1000), (1.0, 2000)],
                ),
                TimeSeries::new(
                    &[
                        ("__name__", "http_requests_total"),
                        ("instance", "h:9"),
                        ("code", "200"),
                    ],
                    &[(7.0, 1000), (f64::NAN, 3000)],
                ),
                TimeSeries::new(&[("__name__", "lonely")], &[(1.0, 1000)]),
            ],
        };
        let raw = snap::raw::Encoder::new()
            .compress_vec(&req.encode_to_vec())
            .expect("snappy");
        let m = map_body(&raw, &Mapping::default(), 0).expect("mapped");
        let got: Vec<_> = m
            .samples
            .iter()
            .map(|s| {
                (
                    s.server_id.clone(),
                    s.timestamp,
                    s.metrics
                        .iter()
                        .map(|(n, _)| n.to_string())
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "h:9".to_string(),
                    1000,
                    vec!["up".to_string(), "http_requests_total.code_200".to_string()]
                ),
                ("h:9".to_string(), 2000, vec!["up".to_string()]),
            ]
        );
        assert_eq!(m.counts.carried, 3);
        assert_eq!(
            m.counts.rejected(),
            2,
            "the staleness marker and the series without instance"
        );
    }

    #[test]
    fn a_snappy_bomb_is_refused_by_its_header() {
        // A snappy block whose length prefix claims 100 MB.
        let mut raw = vec![0x80, 0xc2, 0xd7, 0x2f];
        raw.extend_from_slice(&[0; 8]);
        let e = unsnappy(&raw, 1 << 20).expect_err("refused");
        assert!(matches!(e, Refusal::TooLarge(_)), "{e}");
    }
}

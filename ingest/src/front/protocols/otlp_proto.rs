//! The OTLP metrics messages, as protobuf (prost) and as OTLP/JSON (serde) from one set of
//! structs.
//!
//! They mirror `opentelemetry/proto/collector/metrics/v1/metrics_service.proto`,
//! `metrics/v1/metrics.proto`, `common/v1/common.proto` and `resource/v1/resource.proto` of
//! opentelemetry-proto 1.x (the fields a receiver of metrics needs; exemplars, scope and schema
//! URLs, metadata and entity references are skipped unread, as protobuf and OTLP/JSON both
//! allow). Written out rather than generated, so that the build needs no `protoc`, and rather
//! than taken from the `opentelemetry-proto` crate, whose metrics messages come only with the
//! OpenTelemetry SDK as a dependency.
//!
//! OTLP/JSON per the specification: lowerCamelCase keys, 64-bit integers as decimal strings
//! (numbers accepted too), `oneof` fields as keys of their own (`"gauge": {...}`,
//! `"asDouble": 1.5`), enums as integers, unknown keys ignored.

use prost::{Message, Oneof};
use serde::Deserialize;

/// `ExportMetricsServiceRequest`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExportMetricsServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_metrics: Vec<ResourceMetrics>,
}

/// `ExportMetricsServiceResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct ExportMetricsServiceResponse {
    #[prost(message, optional, tag = "1")]
    pub partial_success: Option<ExportMetricsPartialSuccess>,
}

/// `ExportMetricsPartialSuccess`.
#[derive(Clone, PartialEq, Message)]
pub struct ExportMetricsPartialSuccess {
    #[prost(int64, tag = "1")]
    pub rejected_data_points: i64,
    #[prost(string, tag = "2")]
    pub error_message: String,
}

/// `google.rpc.Status`, the body of an OTLP/HTTP failure (details left empty).
#[derive(Clone, PartialEq, Message)]
pub struct Status {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ResourceMetrics {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_metrics: Vec<ScopeMetrics>,
}

#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ScopeMetrics {
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
}

#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Metric {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(oneof = "Data", tags = "5, 7, 9, 10, 11")]
    #[serde(flatten)]
    pub data: Option<Data>,
}

/// `Metric.data`.
#[derive(Clone, PartialEq, Oneof, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Data {
    #[prost(message, tag = "5")]
    Gauge(Gauge),
    #[prost(message, tag = "7")]
    Sum(Sum),
    #[prost(message, tag = "9")]
    Histogram(Histogram),
    #[prost(message, tag = "10")]
    ExponentialHistogram(ExponentialHistogram),
    #[prost(message, tag = "11")]
    Summary(Summary),
}

#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Gauge {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
}

#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Sum {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
}

#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Histogram {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<HistogramDataPoint>,
}

#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExponentialHistogram {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<ExponentialHistogramDataPoint>,
}

#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<SummaryDataPoint>,
}

/// The `DataPointFlags` bit for "no recorded value".
pub const NO_RECORDED_VALUE: u32 = 1;

#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NumberDataPoint {
    #[prost(message, repeated, tag = "7")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed64, tag = "3")]
    #[serde(deserialize_with = "de::u64")]
    pub time_unix_nano: u64,
    #[prost(oneof = "NumberValue", tags = "4, 6")]
    #[serde(flatten)]
    pub value: Option<NumberValue>,
    #[prost(uint32, tag = "8")]
    pub flags: u32,
}

/// `NumberDataPoint.value`.
#[derive(Clone, PartialEq, Oneof, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NumberValue {
    #[prost(double, tag = "4")]
    AsDouble(#[serde(deserialize_with = "de::f64")] f64),
    #[prost(sfixed64, tag = "6")]
    AsInt(#[serde(deserialize_with = "de::i64")] i64),
}

#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HistogramDataPoint {
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed64, tag = "3")]
    #[serde(deserialize_with = "de::u64")]
    pub time_unix_nano: u64,
    #[prost(fixed64, tag = "4")]
    #[serde(deserialize_with = "de::u64")]
    pub count: u64,
    #[prost(double, optional, tag = "5")]
    #[serde(deserialize_with = "de::opt_f64")]
    pub sum: Option<f64>,
    #[prost(fixed64, repeated, tag = "6")]
    #[serde(deserialize_with = "de::u64s")]
    pub bucket_counts: Vec<u64>,
    #[prost(double, repeated, tag = "7")]
    #[serde(deserialize_with = "de::f64s")]
    pub explicit_bounds: Vec<f64>,
    #[prost(uint32, tag = "10")]
    pub flags: u32,
    #[prost(double, optional, tag = "11")]
    #[serde(deserialize_with = "de::opt_f64")]
    pub min: Option<f64>,
    #[prost(double, optional, tag = "12")]
    #[serde(deserialize_with = "de::opt_f64")]
    pub max: Option<f64>,
}

#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExponentialHistogramDataPoint {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed64, tag = "3")]
    #[serde(deserialize_with = "de::u64")]
    pub time_unix_nano: u64,
    #[prost(fixed64, tag = "4")]
    #[serde(deserialize_with = "de::u64")]
    pub count: u64,
    #[prost(double, optional, tag = "5")]
    #[serde(deserialize_with = "de::opt_f64")]
    pub sum: Option<f64>,
    #[prost(sint32, tag = "6")]
    pub scale: i32,
    #[prost(fixed64, tag = "7")]
    #[serde(deserialize_with = "de::u64")]
    pub zero_count: u64,
    #[prost(message, optional, tag = "8")]
    pub positive: Option<Buckets>,
    #[prost(message, optional, tag = "9")]
    pub negative: Option<Buckets>,
    #[prost(uint32, tag = "10")]
    pub flags: u32,
    #[prost(double, optional, tag = "12")]
    #[serde(deserialize_with = "de::opt_f64")]
    pub min: Option<f64>,
    #[prost(double, optional, tag = "13")]
    #[serde(deserialize_with = "de::opt_f64")]
    pub max: Option<f64>,
}

/// `ExponentialHistogramDataPoint.Buckets`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Buckets {
    #[prost(sint32, tag = "1")]
    pub offset: i32,
    #[prost(uint64, repeated, tag = "2")]
    #[serde(deserialize_with = "de::u64s")]
    pub bucket_counts: Vec<u64>,
}

#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SummaryDataPoint {
    #[prost(message, repeated, tag = "7")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed64, tag = "3")]
    #[serde(deserialize_with = "de::u64")]
    pub time_unix_nano: u64,
    #[prost(fixed64, tag = "4")]
    #[serde(deserialize_with = "de::u64")]
    pub count: u64,
    #[prost(double, tag = "5")]
    #[serde(deserialize_with = "de::f64")]
    pub sum: f64,
    #[prost(message, repeated, tag = "6")]
    pub quantile_values: Vec<ValueAtQuantile>,
    #[prost(uint32, tag = "8")]
    pub flags: u32,
}

/// `SummaryDataPoint.ValueAtQuantile`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ValueAtQuantile {
    #[prost(double, tag = "1")]
    #[serde(deserialize_with = "de::f64")]
    pub quantile: f64,
    #[prost(double, tag = "2")]
    #[serde(deserialize_with = "de::f64")]
    pub value: f64,
}

#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AnyValue {
    #[prost(oneof = "Value", tags = "1, 2, 3, 4, 5, 6")]
    #[serde(flatten)]
    pub value: Option<Value>,
}

/// `AnyValue.value` (bytes values are skipped: they name nothing here).
#[derive(Clone, PartialEq, Oneof, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Value {
    #[prost(string, tag = "1")]
    StringValue(String),
    #[prost(bool, tag = "2")]
    BoolValue(bool),
    #[prost(int64, tag = "3")]
    IntValue(#[serde(deserialize_with = "de::i64")] i64),
    #[prost(double, tag = "4")]
    DoubleValue(#[serde(deserialize_with = "de::f64")] f64),
    #[prost(message, tag = "5")]
    ArrayValue(ArrayValue),
    #[prost(message, tag = "6")]
    KvlistValue(KeyValueList),
}

#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ArrayValue {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<AnyValue>,
}

#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KeyValueList {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<KeyValue>,
}

impl Metric {
    /// A gauge of `points`.
    pub fn gauge(name: &str, points: Vec<NumberDataPoint>) -> Self {
        Self {
            name: name.into(),
            data: Some(Data::Gauge(Gauge {
                data_points: points,
            })),
        }
    }
}

impl NumberDataPoint {
    /// A point of value `v` at `time_unix_nano` (0: unknown) with `attributes`.
    pub fn double(attributes: Vec<KeyValue>, time_unix_nano: u64, v: f64) -> Self {
        Self {
            attributes,
            time_unix_nano,
            value: Some(NumberValue::AsDouble(v)),
            flags: 0,
        }
    }
}

impl KeyValue {
    /// A string attribute.
    pub fn string(key: &str, value: &str) -> Self {
        Self {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(value.into())),
            }),
        }
    }
}

impl AnyValue {
    /// The value as text, for server ids and folded names (arrays and lists: none).
    pub fn text(&self) -> Option<String> {
        match self.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::BoolValue(b) => Some(b.to_string()),
            Value::IntValue(i) => Some(i.to_string()),
            Value::DoubleValue(d) => Some(d.to_string()),
            Value::ArrayValue(_) | Value::KvlistValue(_) => None,
        }
    }
}

/// OTLP/JSON's number rules: 64-bit integers as strings or numbers; doubles as numbers or the
/// strings `NaN`, `Infinity`, `-Infinity`.
mod de {
    use serde::de::{Deserializer, Error};
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        U(u64),
        I(i64),
        F(f64),
        S(String),
    }

    fn num<'de, D: Deserializer<'de>>(d: D) -> Result<Num, D::Error> {
        Num::deserialize(d)
    }

    fn to_u64<E: Error>(n: Num) -> Result<u64, E> {
        match n {
            Num::U(v) => Ok(v),
            Num::S(s) => s
                .parse()
                .map_err(|_| E::custom(format!("`{s}` is not an unsigned integer"))),
            _ => Err(E::custom("expected an unsigned integer")),
        }
    }

    fn to_f64<E: Error>(n: Num) -> Result<f64, E> {
        match n {
            Num::U(v) => Ok(v as f64),
            Num::I(v) => Ok(v as f64),
            Num::F(v) => Ok(v),
            Num::S(s) => match s.as_str() {
                "NaN" => Ok(f64::NAN),
                "Infinity" => Ok(f64::INFINITY),
                "-Infinity" => Ok(f64::NEG_INFINITY),
                _ => s
                    .parse()
                    .map_err(|_| E::custom(format!("`{s}` is not a number"))),
            },
        }
    }

    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        to_u64(num(d)?)
    }

    pub fn i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        match num(d)? {
            Num::U(v) => i64::try_from(v).map_err(|_| D::Error::custom("integer out of range")),
            Num::I(v) => Ok(v),
            Num::S(s) => s
                .parse()
                .map_err(|_| D::Error::custom(format!("`{s}` is not an integer"))),
            Num::F(_) => Err(D::Error::custom("expected an integer")),
        }
    }

    pub fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        to_f64(num(d)?)
    }

    pub fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Option::<Num>::deserialize(d)?.map(to_f64).transpose()
    }

    pub fn u64s<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        Vec::<Num>::deserialize(d)?
            .into_iter()
            .map(to_u64)
            .collect()
    }

    pub fn f64s<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Vec::<Num>::deserialize(d)?
            .into_iter()
            .map(to_f64)
            .collect()
    }
}

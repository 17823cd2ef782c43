//! Tempo-compatible span metrics, so dashboards written for Tempo's
//! metrics-generator (the intro-to-mltp lab's) work without it:
//! `traces_spanmetrics_calls_total` and `traces_spanmetrics_latency`, labelled
//! `service`, `span_name`, `span_kind`, `status_code` and one label per
//! configured dimension (span attribute, else resource attribute; dots become
//! underscores, as Tempo's label sanitizing does).
//!
//! Every finished span counts, whatever its kind, as in Tempo. The calls
//! counter is the latency histogram's count: one series, two families.
//!
//! `http.target` is never the raw target (ids, query strings): it is read from
//! `http.route`, the route the agent already normalised and capped per
//! service; without a route the label is left out.
use crate::semconv;
use std::hash::{Hash, Hasher};

use rustc_hash::{FxHashMap, FxHasher};

use super::{hash_value, same_value, HistogramData, OVERFLOW_ATTRIBUTE};
use crate::{
    model::{AttrValue, Span, SpanKind},
    telemetry::{Counter, Telemetry},
};

/// Tempo's default span-metrics buckets: `ExponentialBuckets(0.002, 2, 14)`.
pub const SPAN_METRICS_BOUNDS: &[f64] =
    &[0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384];

/// What the lab's dashboards group by (old HTTP semantic-convention names).
pub const DEFAULT_DIMENSIONS: &[&str] =
    &[semconv::old::HTTP_METHOD, semconv::old::HTTP_TARGET, semconv::old::HTTP_STATUS_CODE, semconv::SERVICE_VERSION];

/// Dimensions beyond this are refused: the lookup keeps values on the stack.
pub const MAX_DIMENSIONS: usize = 16;

pub const CALLS_NAME: &str = "traces_spanmetrics_calls_total";
pub const LATENCY_NAME: &str = "traces_spanmetrics_latency";

/// Labels the span metrics always carry, plus the ones the exporters add.
const RESERVED_LABELS: &[&str] =
    &["service", "span_name", "span_kind", "status_code", "status_message", "job", "instance"];

/// Old attribute names the dashboards use, and where the agent keeps the same
/// fact. `http.target` deliberately maps to the route only.
fn sources(key: &str) -> Option<&'static [&'static str]> {
    Some(match key {
        semconv::old::HTTP_METHOD | semconv::HTTP_REQUEST_METHOD => {
            &[semconv::HTTP_REQUEST_METHOD, semconv::old::HTTP_METHOD]
        }
        semconv::old::HTTP_STATUS_CODE | semconv::HTTP_RESPONSE_STATUS_CODE => {
            &[semconv::HTTP_RESPONSE_STATUS_CODE, semconv::old::HTTP_STATUS_CODE]
        }
        semconv::old::HTTP_TARGET | semconv::HTTP_ROUTE => &[semconv::HTTP_ROUTE],
        semconv::old::DB_NAME | semconv::DB_NAMESPACE => &[semconv::DB_NAMESPACE, semconv::old::DB_NAME],
        semconv::old::DB_SYSTEM | semconv::DB_SYSTEM_NAME => &[semconv::DB_SYSTEM_NAME, semconv::old::DB_SYSTEM],
        semconv::old::DB_OPERATION | semconv::DB_OPERATION_NAME => {
            &[semconv::DB_OPERATION_NAME, semconv::old::DB_OPERATION]
        }
        semconv::old::DB_SQL_TABLE | semconv::DB_COLLECTION_NAME => {
            &[semconv::DB_COLLECTION_NAME, semconv::old::DB_SQL_TABLE]
        }
        semconv::old::NET_PEER_NAME => &[semconv::old::NET_PEER_NAME, semconv::SERVER_ADDRESS],
        _ => return None,
    })
}

/// Prometheus label name of an attribute key, the way Tempo makes it.
pub fn label_name(key: &str) -> String {
    let mut out: String = key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    if RESERVED_LABELS.contains(&out.as_str()) {
        out.insert_str(0, "__");
    }
    out
}

/// One configured dimension.
#[derive(Clone, Debug, PartialEq)]
pub struct Dimension {
    /// The attribute key as configured (`http.method`).
    pub key: String,
    /// Its label (`http_method`).
    pub label: String,
    sources: Option<&'static [&'static str]>,
}

impl Dimension {
    /// The span's value for this dimension, borrowed: span attributes first,
    /// then the service's resource attributes (e.g. `service.version`).
    fn value<'a>(&self, span: &'a Span) -> Option<Dim<'a>> {
        let resource = |k: &str| match k {
            semconv::SERVICE_NAME => Some(Dim::Text(span.service.name.as_str())),
            semconv::SERVICE_NAMESPACE => span.service.namespace.as_deref().map(Dim::Text),
            semconv::SERVICE_INSTANCE_ID => Some(Dim::Text(span.service.instance_id.as_str())),
            _ => span.service.attributes.iter().find(|(rk, _)| rk == k).map(|(_, v)| Dim::Attr(v)),
        };
        let attr = |k: &str| span.attr(k).map(Dim::Attr);
        match self.sources {
            Some(keys) => keys.iter().find_map(|k| attr(k)).or_else(|| keys.iter().find_map(|k| resource(k))),
            None => attr(&self.key).or_else(|| resource(&self.key)),
        }
    }
}

/// A dimension's value, borrowed from the span or its service.
#[derive(Clone, Copy, Debug)]
enum Dim<'a> {
    Attr(&'a AttrValue),
    /// The service's own name, namespace or instance id.
    Text(&'a str),
}

impl Dim<'_> {
    fn hash(&self, h: &mut FxHasher) {
        match self {
            Dim::Attr(v) => hash_value(v, h),
            Dim::Text(s) => s.hash(h),
        }
    }

    fn same(&self, owned: &AttrValue) -> bool {
        match (self, owned) {
            (Dim::Attr(v), o) => same_value(v, o),
            (Dim::Text(s), AttrValue::Str(o)) => s == o,
            (Dim::Text(_), _) => false,
        }
    }

    fn to_owned_value(self) -> AttrValue {
        match self {
            Dim::Attr(v) => v.clone(),
            Dim::Text(s) => AttrValue::Str(s.to_owned()),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SpanMetricsConfig {
    pub dimensions: Vec<Dimension>,
}

impl SpanMetricsConfig {
    /// Dimensions from attribute keys; empty keys are skipped, keys giving an
    /// already used label are dropped, more than [`MAX_DIMENSIONS`] is an error.
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Result<Self, String> {
        let mut dimensions: Vec<Dimension> = Vec::new();
        for key in keys.iter().map(|k| k.as_ref().trim()).filter(|k| !k.is_empty()) {
            let label = label_name(key);
            if dimensions.iter().any(|d| d.label == label) {
                continue;
            }
            dimensions.push(Dimension { key: key.to_owned(), label, sources: sources(key) });
        }
        if dimensions.len() > MAX_DIMENSIONS {
            return Err(format!("{} span-metrics dimensions, at most {MAX_DIMENSIONS}", dimensions.len()));
        }
        Ok(Self { dimensions })
    }
}

impl Default for SpanMetricsConfig {
    fn default() -> Self {
        Self::new(DEFAULT_DIMENSIONS).expect("default dimensions are valid")
    }
}

/// One series of a snapshot: labels in Tempo's order, the latency histogram
/// (its count is the calls counter).
#[derive(Clone, Debug, PartialEq)]
pub struct SpanMetricsPoint {
    pub labels: Vec<(String, String)>,
    pub start_unix_nanos: u64,
    pub latency: HistogramData,
}

struct Series {
    name: String,
    kind: SpanKind,
    status: &'static str,
    dims: Vec<Option<AttrValue>>,
    start_unix_nanos: u64,
    latency: HistogramData,
}

/// The span-metrics series of one service.
#[derive(Default)]
pub(super) struct SpanMetricsState {
    index: FxHashMap<u64, Vec<usize>>,
    series: Vec<Series>,
    overflow: Option<(u64, HistogramData)>,
}

fn key_hash(name: &str, kind: SpanKind, status: &str, dims: &[Option<Dim<'_>>]) -> u64 {
    let mut h = FxHasher::default();
    name.hash(&mut h);
    kind.hash(&mut h);
    status.hash(&mut h);
    for d in dims {
        match d {
            None => 0u8.hash(&mut h),
            Some(v) => {
                1u8.hash(&mut h);
                v.hash(&mut h);
            }
        }
    }
    h.finish()
}

impl SpanMetricsState {
    /// Counts the span. Nothing is allocated when its series exists.
    pub(super) fn record(
        &mut self,
        cfg: &SpanMetricsConfig,
        span: &Span,
        limit: usize,
        now: u64,
        telemetry: &Telemetry,
    ) {
        let mut values: [Option<Dim<'_>>; MAX_DIMENSIONS] = [None; MAX_DIMENSIONS];
        let n = cfg.dimensions.len().min(MAX_DIMENSIONS);
        for (slot, d) in values.iter_mut().zip(&cfg.dimensions) {
            *slot = d.value(span);
        }
        let values = &values[..n];
        let status = span.status.otlp_name();
        let hash = key_hash(&span.name, span.kind, status, values);
        let secs = span.duration_secs();
        let series = &self.series;
        let found = self.index.get(&hash).and_then(|ids| {
            ids.iter().copied().find(|&i| {
                let s = &series[i];
                s.kind == span.kind
                    && s.status == status
                    && s.name == span.name
                    && s.dims.len() == values.len()
                    && s.dims.iter().zip(values).all(|(a, b)| match (a, b) {
                        (None, None) => true,
                        (Some(a), Some(b)) => b.same(a),
                        _ => false,
                    })
            })
        });
        if let Some(i) = found {
            self.series[i].latency.record(secs);
        } else if self.series.len() < limit {
            let mut latency = HistogramData::new(SPAN_METRICS_BOUNDS);
            latency.record(secs);
            self.series.push(Series {
                name: span.name.clone(),
                kind: span.kind,
                status,
                dims: values.iter().map(|v| v.map(Dim::to_owned_value)).collect(),
                start_unix_nanos: now,
                latency,
            });
            self.index.entry(hash).or_default().push(self.series.len() - 1);
        } else {
            telemetry.inc(Counter::MetricOverflow);
            self.overflow.get_or_insert_with(|| (now, HistogramData::new(SPAN_METRICS_BOUNDS))).1.record(secs);
        }
    }

    /// Series in first-seen order, the overflow series last.
    pub(super) fn points(&self, cfg: &SpanMetricsConfig, service: &str) -> Vec<SpanMetricsPoint> {
        let mut out: Vec<SpanMetricsPoint> = self
            .series
            .iter()
            .map(|s| {
                let mut labels = vec![
                    ("service".to_owned(), service.to_owned()),
                    ("span_name".to_owned(), s.name.clone()),
                    ("span_kind".to_owned(), s.kind.otlp_name().to_owned()),
                    ("status_code".to_owned(), s.status.to_owned()),
                ];
                for (d, v) in cfg.dimensions.iter().zip(&s.dims) {
                    if let Some(v) = v {
                        labels.push((d.label.clone(), v.to_string()));
                    }
                }
                SpanMetricsPoint { labels, start_unix_nanos: s.start_unix_nanos, latency: s.latency.clone() }
            })
            .collect();
        if let Some((start, h)) = &self.overflow {
            out.push(SpanMetricsPoint {
                labels: vec![
                    ("service".to_owned(), service.to_owned()),
                    (label_name(OVERFLOW_ATTRIBUTE), "true".to_owned()),
                ],
                start_unix_nanos: *start,
                latency: h.clone(),
            });
        }
        out
    }
}

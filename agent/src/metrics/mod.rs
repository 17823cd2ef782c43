//! RED metrics derived from finished spans, aggregated in the agent with
//! cumulative temporality and exported by the OTLP and Prometheus sinks.
use crate::semconv;
mod histogram;
pub mod service_graph;
pub mod span_metrics;

// Fast non-cryptographic hashing: keys are our own attribute sets, not attacker-chosen
// in a way that matters (the cardinality cap bounds every map).
use rustc_hash::FxHashMap;
use std::{
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

pub use histogram::{HistogramData, BODY_SIZE_BOUNDS, DURATION_BOUNDS};
pub use service_graph::{ConnectionType, EdgeObservation, EdgePoint, ServiceGraphConfig};
pub use span_metrics::{SpanMetricsConfig, SpanMetricsPoint};

use crate::{
    model::{AttrValue, ServiceRef, Signal, Span, SpanKind},
    telemetry::{Counter, Telemetry},
};

/// Attribute that marks the series absorbing measurements over the cap.
pub const OVERFLOW_ATTRIBUTE: &str = semconv::OTEL_METRIC_OVERFLOW;

/// One histogram instrument the agent produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Instrument {
    HttpServerDuration,
    HttpClientDuration,
    DbClientDuration,
    MessagingClientDuration,
    MessagingProcessDuration,
    RpcServerDuration,
    RpcClientDuration,
    HttpServerRequestBodySize,
    HttpServerResponseBodySize,
    HttpClientRequestBodySize,
    HttpClientResponseBodySize,
}

const HTTP_SERVER_ATTRS: &[&str] = &[
    semconv::HTTP_REQUEST_METHOD,
    semconv::URL_SCHEME,
    semconv::HTTP_RESPONSE_STATUS_CODE,
    semconv::HTTP_ROUTE,
    semconv::SERVER_ADDRESS,
    semconv::SERVER_PORT,
    semconv::ERROR_TYPE,
    semconv::old::HTTP_METHOD,
    semconv::old::HTTP_STATUS_CODE,
];
const HTTP_CLIENT_ATTRS: &[&str] = &[
    semconv::HTTP_REQUEST_METHOD,
    semconv::HTTP_RESPONSE_STATUS_CODE,
    semconv::SERVER_ADDRESS,
    semconv::SERVER_PORT,
    semconv::ERROR_TYPE,
    semconv::old::HTTP_METHOD,
    semconv::old::HTTP_STATUS_CODE,
];
const DB_ATTRS: &[&str] = &[
    semconv::DB_SYSTEM_NAME,
    semconv::DB_OPERATION_NAME,
    semconv::DB_COLLECTION_NAME,
    semconv::SERVER_ADDRESS,
    semconv::SERVER_PORT,
    semconv::ERROR_TYPE,
    semconv::DB_RESPONSE_STATUS_CODE,
];
const RPC_ATTRS: &[&str] = &[
    semconv::RPC_SYSTEM,
    semconv::RPC_SERVICE,
    semconv::RPC_METHOD,
    semconv::RPC_GRPC_STATUS_CODE,
    semconv::SERVER_ADDRESS,
    semconv::SERVER_PORT,
    semconv::ERROR_TYPE,
];
const MESSAGING_ATTRS: &[&str] = &[
    semconv::MESSAGING_SYSTEM,
    semconv::MESSAGING_OPERATION_NAME,
    semconv::MESSAGING_DESTINATION_NAME,
    semconv::SERVER_ADDRESS,
    semconv::ERROR_TYPE,
];

impl Instrument {
    pub const ALL: [Instrument; 11] = [
        Instrument::HttpServerDuration,
        Instrument::HttpClientDuration,
        Instrument::DbClientDuration,
        Instrument::MessagingClientDuration,
        Instrument::MessagingProcessDuration,
        Instrument::RpcServerDuration,
        Instrument::RpcClientDuration,
        Instrument::HttpServerRequestBodySize,
        Instrument::HttpServerResponseBodySize,
        Instrument::HttpClientRequestBodySize,
        Instrument::HttpClientResponseBodySize,
    ];

    /// OTel semantic-convention name.
    pub fn name(self) -> &'static str {
        match self {
            Instrument::HttpServerDuration => "http.server.request.duration",
            Instrument::HttpClientDuration => "http.client.request.duration",
            Instrument::DbClientDuration => "db.client.operation.duration",
            Instrument::MessagingClientDuration => "messaging.client.operation.duration",
            Instrument::MessagingProcessDuration => "messaging.process.duration",
            Instrument::RpcServerDuration => "rpc.server.duration",
            Instrument::RpcClientDuration => "rpc.client.duration",
            Instrument::HttpServerRequestBodySize => "http.server.request.body.size",
            Instrument::HttpServerResponseBodySize => "http.server.response.body.size",
            Instrument::HttpClientRequestBodySize => "http.client.request.body.size",
            Instrument::HttpClientResponseBodySize => "http.client.response.body.size",
        }
    }

    /// UCUM unit: `s` or `By`.
    pub fn unit(self) -> &'static str {
        if self.is_duration() {
            "s"
        } else {
            "By"
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Instrument::HttpServerDuration => "Duration of HTTP server requests.",
            Instrument::HttpClientDuration => "Duration of HTTP client requests.",
            Instrument::DbClientDuration => "Duration of database client operations.",
            Instrument::MessagingClientDuration => {
                "Duration of messaging operations initiated by a producer or consumer client."
            }
            Instrument::MessagingProcessDuration => "Duration of processing operations.",
            Instrument::RpcServerDuration => "Duration of inbound RPCs.",
            Instrument::RpcClientDuration => "Duration of outbound RPCs.",
            Instrument::HttpServerRequestBodySize => "Size of HTTP server request bodies.",
            Instrument::HttpServerResponseBodySize => "Size of HTTP server response bodies.",
            Instrument::HttpClientRequestBodySize => "Size of HTTP client request bodies.",
            Instrument::HttpClientResponseBodySize => "Size of HTTP client response bodies.",
        }
    }

    fn is_duration(self) -> bool {
        matches!(
            self,
            Instrument::HttpServerDuration
                | Instrument::HttpClientDuration
                | Instrument::DbClientDuration
                | Instrument::MessagingClientDuration
                | Instrument::MessagingProcessDuration
                | Instrument::RpcServerDuration
                | Instrument::RpcClientDuration
        )
    }

    /// Bucket bounds: `duration` (the configured ones) for durations.
    pub fn bounds(self, duration: &'static [f64]) -> &'static [f64] {
        if self.is_duration() {
            duration
        } else {
            BODY_SIZE_BOUNDS
        }
    }

    /// Span attributes copied onto the metric, in this order.
    pub fn attribute_keys(self) -> &'static [&'static str] {
        match self {
            Instrument::HttpServerDuration
            | Instrument::HttpServerRequestBodySize
            | Instrument::HttpServerResponseBodySize => HTTP_SERVER_ATTRS,
            Instrument::HttpClientDuration
            | Instrument::HttpClientRequestBodySize
            | Instrument::HttpClientResponseBodySize => HTTP_CLIENT_ATTRS,
            Instrument::DbClientDuration => DB_ATTRS,
            Instrument::MessagingClientDuration | Instrument::MessagingProcessDuration => MESSAGING_ATTRS,
            Instrument::RpcServerDuration | Instrument::RpcClientDuration => RPC_ATTRS,
        }
    }

    /// Prometheus metric family name (without `_bucket`/`_sum`/`_count`):
    /// dots become underscores and the unit is appended (`_seconds`, `_bytes`).
    pub fn prometheus_name(self) -> String {
        let base = self.name().replace('.', "_");
        if self.is_duration() {
            format!("{base}_seconds")
        } else {
            format!("{base}_bytes")
        }
    }
}

/// Which measurements one span produces: (instrument, value), by its signal.
pub fn measurements(span: &Span) -> Vec<(Instrument, f64)> {
    let mut out = Vec::with_capacity(3);
    let int_attr = |k: &str| match span.attr(k) {
        Some(AttrValue::Int(i)) => Some(*i as f64),
        _ => None,
    };
    let dur = span.duration_secs();
    let (duration, request_size, response_size) = match span.signal {
        Signal::HttpServer => (
            Instrument::HttpServerDuration,
            Instrument::HttpServerRequestBodySize,
            Instrument::HttpServerResponseBodySize,
        ),
        Signal::HttpClient => (
            Instrument::HttpClientDuration,
            Instrument::HttpClientRequestBodySize,
            Instrument::HttpClientResponseBodySize,
        ),
        // The database's own SERVER spans feed no client metric.
        Signal::Db if span.kind == SpanKind::Client => {
            out.push((Instrument::DbClientDuration, dur));
            return out;
        }
        Signal::MessagingSend => {
            out.push((Instrument::MessagingClientDuration, dur));
            return out;
        }
        Signal::MessagingProcess => {
            out.push((Instrument::MessagingProcessDuration, dur));
            return out;
        }
        Signal::RpcServer => {
            out.push((Instrument::RpcServerDuration, dur));
            return out;
        }
        Signal::RpcClient => {
            out.push((Instrument::RpcClientDuration, dur));
            return out;
        }
        Signal::Db | Signal::MessagingReceive | Signal::Other => return out,
    };
    out.push((duration, dur));
    if let Some(v) = int_attr(semconv::HTTP_REQUEST_BODY_SIZE) {
        out.push((request_size, v));
    }
    if let Some(v) = int_attr(semconv::HTTP_RESPONSE_BODY_SIZE) {
        out.push((response_size, v));
    }
    out
}

#[derive(Clone, Debug)]
pub struct MetricsConfig {
    /// Distinct attribute sets per metric per service before new sets are
    /// folded into the `otel.metric.overflow=true` series.
    pub max_attribute_sets: usize,
    /// Tempo-compatible span metrics (`traces_spanmetrics_*`); `None`: off.
    pub span_metrics: Option<SpanMetricsConfig>,
    /// Tempo-compatible service graph (`traces_service_graph_*`); `None`: off.
    pub service_graph: Option<ServiceGraphConfig>,
    /// Bucket bounds (seconds) of the duration histograms
    /// (`--duration-histogram-buckets`; default: the semantic conventions').
    pub duration_bounds: &'static [f64],
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { max_attribute_sets: 2000, span_metrics: None, service_graph: None, duration_bounds: DURATION_BOUNDS }
    }
}

/// Metric attributes of one series.
pub type AttributeSet = Vec<(&'static str, AttrValue)>;

/// The attribute values of one measurement, borrowed from its span.
type BorrowedSet<'a> = Vec<(&'static str, &'a AttrValue)>;

fn hash_value<H: Hasher>(v: &AttrValue, h: &mut H) {
    match v {
        AttrValue::Str(s) => (0u8, s).hash(h),
        AttrValue::Int(i) => (1u8, i).hash(h),
        AttrValue::Bool(b) => (2u8, b).hash(h),
        AttrValue::Double(d) => (3u8, d.to_bits()).hash(h),
    }
}

fn same_value(a: &AttrValue, b: &AttrValue) -> bool {
    match (a, b) {
        (AttrValue::Double(a), AttrValue::Double(b)) => a.to_bits() == b.to_bits(),
        _ => a == b,
    }
}

/// Hash of an attribute set; equal sets hash equally whether owned or borrowed.
fn set_hash<'a>(set: impl Iterator<Item = (&'static str, &'a AttrValue)>) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    for (k, v) in set {
        k.hash(&mut h);
        hash_value(v, &mut h);
    }
    h.finish()
}

fn same_set(owned: &AttributeSet, borrowed: &BorrowedSet<'_>) -> bool {
    owned.len() == borrowed.len()
        && owned.iter().zip(borrowed).all(|((ka, va), (kb, vb))| ka == kb && same_value(va, vb))
}

/// One series of a snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesPoint {
    pub attributes: AttributeSet,
    /// When the series was first seen (unix nanos): the cumulative start time.
    pub start_unix_nanos: u64,
    pub data: HistogramData,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MetricPoints {
    pub instrument: Instrument,
    /// Series in first-seen order; the overflow series (if any) last.
    pub series: Vec<SeriesPoint>,
}

#[derive(Clone, Debug)]
pub struct ServiceMetrics {
    pub service: ServiceRef,
    /// Only instruments with at least one series, in `Instrument::ALL` order.
    pub metrics: Vec<MetricPoints>,
    /// `traces_spanmetrics_*` series (empty when off).
    pub span_metrics: Vec<SpanMetricsPoint>,
    /// `traces_service_graph_*` series held by this service (empty when off).
    pub service_graph: Vec<EdgePoint>,
}

#[derive(Clone, Debug)]
pub struct MetricsSnapshot {
    /// When the snapshot was taken (unix nanos).
    pub time_unix_nanos: u64,
    /// Services in first-seen order.
    pub services: Vec<ServiceMetrics>,
}

impl MetricsSnapshot {
    /// The metric of one service (by `service.instance.id`), if any.
    pub fn find(&self, instance_id: &str, instrument: Instrument) -> Option<&MetricPoints> {
        self.services
            .iter()
            .find(|s| s.service.instance_id == instance_id)?
            .metrics
            .iter()
            .find(|m| m.instrument == instrument)
    }
}

#[derive(Default)]
struct InstrumentState {
    /// Hash of a series' attribute set -> indexes of the series with that hash.
    index: FxHashMap<u64, Vec<usize>>,
    series: Vec<SeriesPoint>,
    overflow: Option<SeriesPoint>,
}

struct ServiceState {
    service: ServiceRef,
    instruments: FxHashMap<Instrument, InstrumentState>,
    span_metrics: span_metrics::SpanMetricsState,
    edges: service_graph::EdgeState,
}

#[derive(Default)]
struct State {
    index: FxHashMap<String, usize>,
    services: Vec<ServiceState>,
    pending_edges: service_graph::PendingEdges,
}

impl State {
    /// Index of the service's state, created on first sight.
    fn service_index(&mut self, service: &ServiceRef) -> usize {
        let idx = match self.index.get(&service.instance_id) {
            Some(&i) => i,
            None => {
                self.services.push(ServiceState {
                    service: service.clone(),
                    instruments: FxHashMap::default(),
                    span_metrics: Default::default(),
                    edges: Default::default(),
                });
                let i = self.services.len() - 1;
                self.index.insert(service.instance_id.clone(), i);
                i
            }
        };
        let svc = &mut self.services[idx];
        if !Arc::ptr_eq(&svc.service, service) {
            // Keep the newest resource description of the instance.
            svc.service = service.clone();
        }
        idx
    }
}

/// The agent's span-metrics aggregator.
pub struct Metrics {
    cfg: MetricsConfig,
    telemetry: Arc<Telemetry>,
    state: Mutex<State>,
}

pub(crate) fn now_unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

impl Metrics {
    pub fn new(cfg: MetricsConfig, telemetry: Arc<Telemetry>) -> Self {
        Self { cfg, telemetry, state: Mutex::new(State::default()) }
    }

    /// Feeds the span's measurements (none for spans of no known kind), and,
    /// when on, the span metrics and the service graph.
    pub fn record_span(&self, span: &Span) {
        let ms = measurements(span);
        if ms.is_empty() && self.cfg.span_metrics.is_none() && self.cfg.service_graph.is_none() {
            return;
        }
        let now = now_unix_nanos();
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *guard;
        let idx = state.service_index(&span.service);
        if let Some(graph) = &self.cfg.service_graph {
            self.expire_edges(state, graph, now);
            match state.pending_edges.observe_span(graph, span, now, &self.telemetry) {
                service_graph::SpanEdge::None => {}
                service_graph::SpanEdge::Now(edge) => {
                    state.services[idx].edges.record(&edge, self.cfg.max_attribute_sets, now, &self.telemetry)
                }
                service_graph::SpanEdge::Finished(f) => self.record_finished(state, &f, now),
            }
        }
        let svc = &mut state.services[idx];
        if let Some(cfg) = &self.cfg.span_metrics {
            svc.span_metrics.record(cfg, span, self.cfg.max_attribute_sets, now, &self.telemetry);
        }
        for (instrument, value) in ms {
            // Look the series up with borrowed values: nothing is cloned
            // unless this attribute set is new.
            let set: BorrowedSet<'_> =
                instrument.attribute_keys().iter().filter_map(|k| span.attr(k).map(|v| (*k, v))).collect();
            let hash = set_hash(set.iter().copied());
            let st = svc.instruments.entry(instrument).or_default();
            let found = st
                .index
                .get(&hash)
                .and_then(|ids| ids.iter().copied().find(|&i| same_set(&st.series[i].attributes, &set)));
            if let Some(i) = found {
                st.series[i].data.record(value);
            } else if st.series.len() < self.cfg.max_attribute_sets {
                let mut data = HistogramData::new(instrument.bounds(self.cfg.duration_bounds));
                data.record(value);
                let attributes: AttributeSet = set.iter().map(|(k, v)| (*k, (*v).clone())).collect();
                st.series.push(SeriesPoint { attributes, start_unix_nanos: now, data });
                st.index.entry(hash).or_default().push(st.series.len() - 1);
            } else {
                self.telemetry.inc(Counter::MetricOverflow);
                st.overflow
                    .get_or_insert_with(|| SeriesPoint {
                        attributes: vec![(OVERFLOW_ATTRIBUTE, AttrValue::Bool(true))],
                        start_unix_nanos: now,
                        data: HistogramData::new(instrument.bounds(self.cfg.duration_bounds)),
                    })
                    .data
                    .record(value);
            }
        }
    }

    /// Records one service-graph request known by other means than span ids
    /// (spans paired by trace and span id are already counted by
    /// [`Metrics::record_span`]: do not report them again). Its series belong
    /// to `owner` (normally the client's service; the server's when the client
    /// is not tracked) and are forgotten with it. No-op when the graph is off.
    pub fn observe_edge(&self, owner: &ServiceRef, edge: &EdgeObservation<'_>) {
        if self.cfg.service_graph.is_none() {
            return;
        }
        let now = now_unix_nanos();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let idx = state.service_index(owner);
        state.services[idx].edges.record(edge, self.cfg.max_attribute_sets, now, &self.telemetry);
    }

    /// Spans waiting for their service-graph partner.
    pub fn pending_edges(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).pending_edges.len()
    }

    /// Ends the waits that are over as of `now` (unix nanos).
    pub fn expire_edges_at(&self, now: u64) {
        if let Some(graph) = &self.cfg.service_graph {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            self.expire_edges(&mut state, graph, now);
        }
    }

    fn expire_edges(&self, state: &mut State, graph: &ServiceGraphConfig, now: u64) {
        let mut finished = Vec::new();
        state.pending_edges.expire(graph, now, &self.telemetry, |f| finished.push(f));
        for f in &finished {
            self.record_finished(state, f, now);
        }
    }

    /// Records a paired or expired edge under its client's service, else its
    /// server's; a service already forgotten is not brought back.
    fn record_finished(&self, state: &mut State, f: &service_graph::Finished, now: u64) {
        let (owners, edge) = f.parts();
        if let Some(&i) = owners.iter().find_map(|o| state.index.get(&o.instance_id)) {
            state.services[i].edges.record(&edge, self.cfg.max_attribute_sets, now, &self.telemetry);
        }
    }

    /// Drops every series of a service (e.g. once its process is forgotten and
    /// its last values had a chance to be exported).
    pub fn forget_service(&self, instance_id: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = state.index.remove(instance_id) {
            state.services.remove(i);
            for v in state.index.values_mut() {
                if *v > i {
                    *v -= 1;
                }
            }
        }
    }

    /// Cumulative copy of every series so far.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_unix_nanos();
        if let Some(graph) = &self.cfg.service_graph {
            self.expire_edges(&mut state, graph, now);
        }
        let services = state
            .services
            .iter()
            .map(|s| ServiceMetrics {
                service: s.service.clone(),
                metrics: Instrument::ALL
                    .iter()
                    .filter_map(|i| {
                        let st = s.instruments.get(i)?;
                        let series: Vec<_> = st.series.iter().chain(st.overflow.iter()).cloned().collect();
                        (!series.is_empty()).then_some(MetricPoints { instrument: *i, series })
                    })
                    .collect(),
                span_metrics: self
                    .cfg
                    .span_metrics
                    .as_ref()
                    .map(|c| s.span_metrics.points(c, &s.service.name))
                    .unwrap_or_default(),
                service_graph: s.edges.points(),
            })
            .collect();
        MetricsSnapshot { time_unix_nanos: now, services }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod trace_tests;

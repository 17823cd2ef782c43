//! `/metrics` in the Prometheus text format 0.0.4, plus `/targets` and `/healthz`.
use std::{fmt::Write as _, net::SocketAddr, sync::Arc};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};

use crate::{
    metrics::{
        service_graph, span_metrics, EdgePoint, HistogramData, Instrument, Metrics, MetricsSnapshot, ServiceMetrics,
        SpanMetricsPoint,
    },
    model::{AttrValue, Service},
    telemetry::{Sample as CounterSample, Telemetry},
};

mod process;
pub use process::PROCESS_METRICS;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the endpoint serves.
#[derive(Clone)]
pub struct PrometheusState {
    pub metrics: Arc<Metrics>,
    pub telemetry: Arc<Telemetry>,
    /// Served as JSON at `/targets` (e.g. the tracked processes).
    pub targets: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
    /// Where the metrics are served (`/metrics`).
    pub metrics_path: String,
}

impl PrometheusState {
    pub fn new(metrics: Arc<Metrics>, telemetry: Arc<Telemetry>) -> Self {
        Self {
            metrics,
            telemetry,
            targets: Arc::new(|| serde_json::Value::Array(Vec::new())),
            metrics_path: "/metrics".to_owned(),
        }
    }

    /// Serves the metrics at `path` instead of `/metrics` (Beyla's `prometheus_export.path`).
    pub fn with_metrics_path(mut self, path: &str) -> Self {
        self.metrics_path = path.to_owned();
        self
    }

    pub fn with_targets(mut self, f: impl Fn() -> serde_json::Value + Send + Sync + 'static) -> Self {
        self.targets = Arc::new(f);
        self
    }
}

/// A bound, not yet serving, endpoint (lets the caller learn the port first).
pub struct PrometheusServer {
    listener: tokio::net::TcpListener,
    state: PrometheusState,
}

impl PrometheusServer {
    pub async fn bind(addr: SocketAddr, state: PrometheusState) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen for Prometheus on {addr}: {e}")))?;
        Ok(Self { listener, state })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the task is dropped or an I/O error ends it.
    pub async fn run(self) -> std::io::Result<()> {
        axum::serve(self.listener, router(self.state)).await
    }
}

/// Binds `addr` (an error, not a panic, if taken) and serves forever.
pub async fn serve(addr: SocketAddr, state: PrometheusState) -> std::io::Result<()> {
    PrometheusServer::bind(addr, state).await?.run().await
}

pub fn router(state: PrometheusState) -> Router {
    Router::new()
        .route(&state.metrics_path, get(metrics_handler))
        .route("/targets", get(targets_handler))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

async fn metrics_handler(State(s): State<PrometheusState>) -> Response {
    let mut body = render(&s.metrics.snapshot(), &s.telemetry.snapshot());
    process::append(&mut body);
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

async fn targets_handler(State(s): State<PrometheusState>) -> Response {
    match serde_json::to_string_pretty(&(s.targets)()) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// A valid Prometheus metric or label name: invalid characters become `_`.
pub fn sanitize_name(name: &str) -> String {
    let mut out: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Escapes a label value: backslash, double quote and newline.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn fmt_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

fn label_value(v: &AttrValue) -> String {
    match v {
        AttrValue::Double(d) => fmt_float(*d),
        other => other.to_string(),
    }
}

fn job(service: &Service) -> String {
    match &service.namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}/{}", service.name),
        _ => service.name.clone(),
    }
}

fn write_labels(out: &mut String, labels: &[(String, String)]) {
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
    }
    out.push('}');
}

/// Labels every series of a service carries.
fn service_labels(service: &Service) -> Vec<(String, String)> {
    let mut l = vec![("service_name".to_owned(), service.name.clone())];
    if let Some(ns) = service.namespace.as_ref().filter(|n| !n.is_empty()) {
        l.push(("service_namespace".to_owned(), ns.clone()));
    }
    l.push(("service_instance_id".to_owned(), service.instance_id.clone()));
    l.push(("job".to_owned(), job(service)));
    l.push(("instance".to_owned(), service.instance_id.clone()));
    l
}

fn write_histogram(out: &mut String, name: &str, labels: &[(String, String)], data: &HistogramData) {
    let les = data.bounds.iter().map(|b| fmt_float(*b)).chain(std::iter::once("+Inf".to_owned()));
    for (le, count) in les.zip(data.cumulative_counts()) {
        let _ = write!(out, "{name}_bucket");
        let mut l = labels.to_vec();
        l.push(("le".to_owned(), le));
        write_labels(out, &l);
        let _ = writeln!(out, " {count}");
    }
    let _ = write!(out, "{name}_sum");
    write_labels(out, labels);
    let _ = writeln!(out, " {}", fmt_float(data.sum));
    let _ = write!(out, "{name}_count");
    write_labels(out, labels);
    let _ = writeln!(out, " {}", data.count);
}

enum Sample<'a> {
    Counter(u64),
    Histogram(&'a HistogramData),
}

/// One family of the Tempo-compatible metrics across services. Series carry
/// Tempo's labels plus `job` and `instance` (as Tempo's `enable_target_info`
/// does), which also keeps two instances of one service apart.
fn write_family<'a, P: 'a>(
    out: &mut String,
    snap: &'a MetricsSnapshot,
    name: &str,
    help: &str,
    series: impl Fn(&'a ServiceMetrics) -> &'a [P],
    sample: impl Fn(&'a P) -> (&'a [(String, String)], Sample<'a>),
) {
    let mut header_done = false;
    for svc in &snap.services {
        for p in series(svc) {
            let (attrs, value) = sample(p);
            if !header_done {
                let kind = if matches!(value, Sample::Counter(_)) { "counter" } else { "histogram" };
                let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
                let _ = writeln!(out, "# TYPE {name} {kind}");
                header_done = true;
            }
            let mut labels = attrs.to_vec();
            labels.push(("job".to_owned(), job(&svc.service)));
            labels.push(("instance".to_owned(), svc.service.instance_id.clone()));
            match value {
                Sample::Counter(v) => {
                    out.push_str(name);
                    write_labels(out, &labels);
                    let _ = writeln!(out, " {v}");
                }
                Sample::Histogram(h) => write_histogram(out, name, &labels, h),
            }
        }
    }
}

/// `traces_spanmetrics_*` and `traces_service_graph_*`, named as Tempo's
/// metrics-generator names them (empty unless turned on).
fn render_trace_metrics(out: &mut String, snap: &MetricsSnapshot) {
    fn spans(s: &ServiceMetrics) -> &[SpanMetricsPoint] {
        &s.span_metrics
    }
    fn edges(s: &ServiceMetrics) -> &[EdgePoint] {
        &s.service_graph
    }
    write_family(
        out,
        snap,
        span_metrics::CALLS_NAME,
        "Spans, by service, name, kind, status and dimensions.",
        spans,
        |p| (&p.labels, Sample::Counter(p.latency.count)),
    );
    write_family(out, snap, span_metrics::LATENCY_NAME, "Span durations in seconds.", spans, |p| {
        (&p.labels, Sample::Histogram(&p.latency))
    });
    write_family(
        out,
        snap,
        service_graph::REQUEST_TOTAL_NAME,
        "Requests between two nodes of the service graph.",
        edges,
        |p| (&p.labels, Sample::Counter(p.client.count)),
    );
    write_family(
        out,
        snap,
        service_graph::REQUEST_FAILED_NAME,
        "Failed requests between two nodes of the service graph.",
        edges,
        |p| (&p.labels, Sample::Counter(p.failed)),
    );
    write_family(
        out,
        snap,
        service_graph::CLIENT_SECONDS_NAME,
        "Request durations seen by the client, in seconds.",
        edges,
        |p| (&p.labels, Sample::Histogram(&p.client)),
    );
    write_family(
        out,
        snap,
        service_graph::SERVER_SECONDS_NAME,
        "Request durations seen by the server, in seconds.",
        edges,
        |p| (&p.labels, Sample::Histogram(&p.server)),
    );
}

/// The whole exposition: span histograms, `target_info`, the agent's counters.
pub fn render(snap: &MetricsSnapshot, counters: &[CounterSample]) -> String {
    let mut out = String::new();
    for instrument in Instrument::ALL {
        let mut header_done = false;
        for svc in &snap.services {
            let Some(mp) = svc.metrics.iter().find(|m| m.instrument == instrument) else { continue };
            let name = instrument.prometheus_name();
            if !header_done {
                let _ = writeln!(out, "# HELP {name} {}", escape_help(instrument.description()));
                let _ = writeln!(out, "# TYPE {name} histogram");
                header_done = true;
            }
            let base = service_labels(&svc.service);
            for series in &mp.series {
                let mut labels: Vec<(String, String)> =
                    series.attributes.iter().map(|(k, v)| (sanitize_name(k), label_value(v))).collect();
                // Resource labels win over a colliding attribute.
                labels.retain(|(k, _)| !base.iter().any(|(b, _)| b == k));
                labels.extend(base.iter().cloned());
                let cumulative = series.data.cumulative_counts();
                let les = series.data.bounds.iter().map(|b| fmt_float(*b)).chain(std::iter::once("+Inf".to_owned()));
                for (le, count) in les.zip(&cumulative) {
                    let _ = write!(out, "{name}_bucket");
                    let mut l = labels.clone();
                    l.push(("le".to_owned(), le));
                    write_labels(&mut out, &l);
                    let _ = writeln!(out, " {count}");
                }
                let _ = write!(out, "{name}_sum");
                write_labels(&mut out, &labels);
                let _ = writeln!(out, " {}", fmt_float(series.data.sum));
                let _ = write!(out, "{name}_count");
                write_labels(&mut out, &labels);
                let _ = writeln!(out, " {}", series.data.count);
            }
        }
    }

    render_trace_metrics(&mut out, snap);

    if !snap.services.is_empty() {
        out.push_str("# HELP target_info Target metadata\n# TYPE target_info gauge\n");
        for svc in &snap.services {
            let mut labels =
                vec![("job".to_owned(), job(&svc.service)), ("instance".to_owned(), svc.service.instance_id.clone())];
            for (k, v) in svc.service.resource_attributes() {
                let key = sanitize_name(k);
                if !labels.iter().any(|(l, _)| *l == key) {
                    labels.push((key, label_value(&v)));
                }
            }
            out.push_str("target_info");
            write_labels(&mut out, &labels);
            out.push_str(" 1\n");
        }
    }

    let mut last = None;
    for sample in counters {
        let c = sample.counter;
        let name = c.name();
        if last != Some(c) {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(c.help()));
            let _ = writeln!(out, "# TYPE {name} counter");
            last = Some(c);
        }
        out.push_str(name);
        if let Some(l) = sample.labels {
            let mut labels = vec![("protocol".to_owned(), l.protocol.to_owned())];
            if !l.reason.is_empty() {
                labels.push(("reason".to_owned(), l.reason.to_owned()));
            }
            write_labels(&mut out, &labels);
        }
        let _ = writeln!(out, " {}", sample.value);
    }
    out
}

#[cfg(test)]
mod tests;

//! In-test OTLP receiver: a gRPC server (TraceService + MetricsService) and an
//! HTTP/protobuf server (POST /v1/traces, /v1/metrics), both on 127.0.0.1:0,
//! recording every request it gets.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            metrics_service_server::{MetricsService, MetricsServiceServer},
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        },
        trace::v1::{
            trace_service_server::{TraceService, TraceServiceServer},
            ExportTraceServiceRequest, ExportTraceServiceResponse,
        },
    },
    common::v1::{any_value::Value, AnyValue, InstrumentationScope, KeyValue},
    metrics::v1::Metric,
    trace::v1::Span,
};
use prost::Message;
use tokio::task::JoinHandle;
use tonic::codec::CompressionEncoding;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Grpc,
    Http,
}

#[derive(Clone, Debug)]
pub enum Body {
    Traces(ExportTraceServiceRequest),
    Metrics(ExportMetricsServiceRequest),
}

/// One request as received (failed ones included, see `accepted`).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub via: Via,
    /// Lower-cased header / gRPC metadata names.
    pub headers: HashMap<String, String>,
    pub body: Body,
    /// False when the receiver was failing and answered with an error.
    pub accepted: bool,
}

/// A resource attribute value or span attribute, simplified.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
    Other,
}

fn val(v: &Option<AnyValue>) -> Val {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => Val::Str(s.clone()),
        Some(Value::IntValue(i)) => Val::Int(*i),
        Some(Value::BoolValue(b)) => Val::Bool(*b),
        Some(Value::DoubleValue(d)) => Val::Double(*d),
        _ => Val::Other,
    }
}

pub fn attr_map(kvs: &[KeyValue]) -> HashMap<String, Val> {
    kvs.iter().map(|kv| (kv.key.clone(), val(&kv.value))).collect()
}

fn find<'a>(kvs: &'a [KeyValue], key: &str) -> Option<&'a Option<AnyValue>> {
    kvs.iter().find(|kv| kv.key == key).map(|kv| &kv.value)
}

pub fn kv_str(kvs: &[KeyValue], key: &str) -> Option<String> {
    match find(kvs, key).map(val) {
        Some(Val::Str(s)) => Some(s),
        _ => None,
    }
}

pub fn kv_int(kvs: &[KeyValue], key: &str) -> Option<i64> {
    match find(kvs, key).map(val) {
        Some(Val::Int(i)) => Some(i),
        _ => None,
    }
}

/// A span with its resource and scope, from an accepted request.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub via: Via,
    pub resource: HashMap<String, Val>,
    pub scope: Option<InstrumentationScope>,
    pub span: Span,
}

impl ReceivedSpan {
    pub fn service_name(&self) -> Option<&str> {
        match self.resource.get("service.name") {
            Some(Val::Str(s)) => Some(s),
            _ => None,
        }
    }
    pub fn attr_str(&self, key: &str) -> Option<String> {
        kv_str(&self.span.attributes, key)
    }
    pub fn attr_int(&self, key: &str) -> Option<i64> {
        kv_int(&self.span.attributes, key)
    }
    pub fn attrs(&self) -> HashMap<String, Val> {
        attr_map(&self.span.attributes)
    }
}

/// A metric with its resource and scope, from an accepted request.
#[derive(Clone, Debug)]
pub struct ReceivedMetric {
    pub via: Via,
    pub resource: HashMap<String, Val>,
    pub scope: Option<InstrumentationScope>,
    pub metric: Metric,
}

impl ReceivedMetric {
    pub fn service_name(&self) -> Option<&str> {
        match self.resource.get("service.name") {
            Some(Val::Str(s)) => Some(s),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<RecordedRequest>>,
    failing: AtomicBool,
    changed: tokio::sync::Notify,
    attempts: AtomicU64,
}

impl Shared {
    /// Records the request; returns whether to accept it.
    fn record(&self, via: Via, headers: HashMap<String, String>, body: Body) -> bool {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let accepted = !self.failing.load(Ordering::Relaxed);
        self.requests.lock().unwrap().push(RecordedRequest { via, headers, body, accepted });
        self.changed.notify_waiters();
        accepted
    }
}

struct Grpc(Arc<Shared>);

fn metadata_headers(md: &tonic::metadata::MetadataMap) -> HashMap<String, String> {
    md.clone()
        .into_headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = metadata_headers(request.metadata());
        if self.0.record(Via::Grpc, headers, Body::Traces(request.into_inner())) {
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        } else {
            Err(tonic::Status::unavailable("receiver set to fail"))
        }
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let headers = metadata_headers(request.metadata());
        if self.0.record(Via::Grpc, headers, Body::Metrics(request.into_inner())) {
            Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
        } else {
            Err(tonic::Status::unavailable("receiver set to fail"))
        }
    }
}

fn http_headers(h: &HeaderMap) -> HashMap<String, String> {
    h.iter().filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned()))).collect()
}

fn protobuf(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [("content-type", "application/x-protobuf")], body).into_response()
}

/// The body as sent, gunzipped when `Content-Encoding: gzip` says so (as a
/// collector does); `None` when it does not inflate.
fn inflate(headers: &HeaderMap, body: Bytes) -> Option<Bytes> {
    if headers.get("content-encoding").is_none_or(|v| v != "gzip") {
        return Some(body);
    }
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut out).ok()?;
    Some(out.into())
}

async fn http_traces(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(body) = inflate(&headers, body) else {
        return (StatusCode::BAD_REQUEST, "bad gzip body").into_response();
    };
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, "not an ExportTraceServiceRequest").into_response();
    };
    if s.record(Via::Http, http_headers(&headers), Body::Traces(req)) {
        protobuf(StatusCode::OK, ExportTraceServiceResponse::default().encode_to_vec())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "receiver set to fail").into_response()
    }
}

async fn http_metrics(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(body) = inflate(&headers, body) else {
        return (StatusCode::BAD_REQUEST, "bad gzip body").into_response();
    };
    let Ok(req) = ExportMetricsServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, "not an ExportMetricsServiceRequest").into_response();
    };
    if s.record(Via::Http, http_headers(&headers), Body::Metrics(req)) {
        protobuf(StatusCode::OK, ExportMetricsServiceResponse::default().encode_to_vec())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "receiver set to fail").into_response()
    }
}

pub struct Receiver {
    shared: Arc<Shared>,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let shared = Arc::new(Shared::default());

        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind grpc");
        let grpc_addr = grpc_listener.local_addr().unwrap();
        // tonic's own router needs its `router` feature; an axum router does the same job.
        let grpc_routes = Router::new()
            .route_service(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                TraceServiceServer::new(Grpc(shared.clone())).accept_compressed(CompressionEncoding::Gzip),
            )
            .route_service(
                "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                MetricsServiceServer::new(Grpc(shared.clone())).accept_compressed(CompressionEncoding::Gzip),
            );
        let grpc = tonic::transport::Server::builder()
            .serve_with_incoming(grpc_routes, tonic::transport::server::TcpIncoming::from(grpc_listener));
        let grpc_task = tokio::spawn(async move {
            if let Err(e) = grpc.await {
                eprintln!("otlp receiver gRPC server failed: {e}");
            }
        });

        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        let http_addr = http_listener.local_addr().unwrap();
        let app = Router::new()
            .route("/v1/traces", post(http_traces))
            .route("/v1/metrics", post(http_metrics))
            .with_state(shared.clone());
        let http_task = tokio::spawn(async move {
            if let Err(e) = axum::serve(http_listener, app).await {
                eprintln!("otlp receiver HTTP server failed: {e}");
            }
        });

        Receiver { shared, grpc_addr, http_addr, tasks: vec![grpc_task, http_task] }
    }

    /// `http://127.0.0.1:PORT` of the gRPC server.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// `http://127.0.0.1:PORT` of the HTTP server (append `/v1/traces` yourself
    /// for a signal-specific endpoint; the generic one gets it appended by the exporter).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// While true, every request is recorded but answered with gRPC UNAVAILABLE / HTTP 503.
    pub fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::Relaxed);
    }

    /// Every request so far, accepted or not.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Requests that reached the receiver (accepted or not).
    pub fn attempts(&self) -> u64 {
        self.shared.attempts.load(Ordering::Relaxed)
    }

    /// Accepted trace requests.
    pub fn trace_requests(&self) -> Vec<(Via, ExportTraceServiceRequest)> {
        self.requests()
            .into_iter()
            .filter(|r| r.accepted)
            .filter_map(|r| match r.body {
                Body::Traces(t) => Some((r.via, t)),
                Body::Metrics(_) => None,
            })
            .collect()
    }

    /// Accepted metrics requests.
    pub fn metrics_requests(&self) -> Vec<(Via, ExportMetricsServiceRequest)> {
        self.requests()
            .into_iter()
            .filter(|r| r.accepted)
            .filter_map(|r| match r.body {
                Body::Metrics(m) => Some((r.via, m)),
                Body::Traces(_) => None,
            })
            .collect()
    }

    /// All spans of accepted requests, flattened.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let mut out = Vec::new();
        for (via, req) in self.trace_requests() {
            for rs in req.resource_spans {
                let resource = attr_map(&rs.resource.map(|r| r.attributes).unwrap_or_default());
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        out.push(ReceivedSpan { via, resource: resource.clone(), scope: ss.scope.clone(), span });
                    }
                }
            }
        }
        out
    }

    /// All metrics of accepted requests, flattened (one entry per Metric per request).
    pub fn metrics(&self) -> Vec<ReceivedMetric> {
        let mut out = Vec::new();
        for (via, req) in self.metrics_requests() {
            for rm in req.resource_metrics {
                let resource = attr_map(&rm.resource.map(|r| r.attributes).unwrap_or_default());
                for sm in rm.scope_metrics {
                    for metric in sm.metrics {
                        out.push(ReceivedMetric { via, resource: resource.clone(), scope: sm.scope.clone(), metric });
                    }
                }
            }
        }
        out
    }

    /// Waits until `cond` holds for the recorded state, or panics after `timeout`.
    pub async fn wait_until<T>(&self, timeout: Duration, what: &str, mut cond: impl FnMut(&Self) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            if let Some(v) = cond(self) {
                return v;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                if let Some(v) = cond(self) {
                    return v;
                }
                panic!("timed out after {timeout:?} waiting for {what}; got {} requests", self.requests().len());
            }
        }
    }

    /// Waits for at least `n` spans (accepted); returns all received so far.
    pub async fn wait_for_spans(&self, n: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        self.wait_until(timeout, &format!("{n} spans"), |r| {
            let s = r.spans();
            (s.len() >= n).then_some(s)
        })
        .await
    }

    /// Waits for at least `n` accepted metrics requests; returns all metrics so far.
    pub async fn wait_for_metric_requests(&self, n: usize, timeout: Duration) -> Vec<ReceivedMetric> {
        self.wait_until(timeout, &format!("{n} metrics requests"), |r| {
            (r.metrics_requests().len() >= n).then(|| r.metrics())
        })
        .await
    }
}

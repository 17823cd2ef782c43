//! Sinks end to end: the OTLP exporters against the in-test receiver.
mod support;

use std::{collections::HashMap, sync::Arc, time::Duration};

use opentelemetry_proto::tonic::{
    metrics::v1::{metric::Data, number_data_point},
    trace::v1::{span::SpanKind as OtlpKind, status::StatusCode},
};
use periscope::{
    export::otlp::{spawn_metrics_exporter, spawn_trace_exporter, OtlpConfig, OtlpProtocol},
    metrics::{Metrics, MetricsConfig},
    model::{Attr, AttrValue, Service, ServiceRef, Signal, Span, SpanId, SpanKind, SpanStatus, TraceId},
    telemetry::{Counter, Telemetry},
};
use support::otlp_receiver::{Receiver, Val, Via};

const WAIT: Duration = Duration::from_secs(10);

fn service(name: &str, instance: &str) -> ServiceRef {
    Arc::new(Service {
        name: name.into(),
        namespace: Some("shop".into()),
        instance_id: instance.into(),
        attributes: vec![
            ("service.namespace".into(), AttrValue::Str("shop".into())),
            ("service.instance.id".into(), AttrValue::Str(instance.into())),
            ("process.pid".into(), AttrValue::Int(42)),
        ],
    })
}

fn server_span(svc: &ServiceRef, route: &str, dur_nanos: u64) -> Span {
    Span {
        service: svc.clone(),
        signal: Signal::HttpServer,
        trace_id: TraceId::random(),
        span_id: SpanId::random(),
        parent_span_id: None,
        trace_flags: 1,
        trace_state: None,
        name: format!("GET {route}"),
        kind: SpanKind::Server,
        start_unix_nanos: 1_700_000_000_000_000_000,
        end_unix_nanos: 1_700_000_000_000_000_000 + dur_nanos,
        attributes: vec![
            Attr::new("http.request.method", "GET"),
            Attr::new("http.route", route),
            Attr::new("http.response.status_code", 200i64),
        ],
        status: SpanStatus::Unset,
    }
}

/// The receiver records a request before the exporter sees the answer: poll the counter.
async fn wait_counter(t: &Telemetry, c: Counter, want: u64) {
    let deadline = std::time::Instant::now() + WAIT;
    while t.get(c) != want && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(t.get(c), want, "{}", c.name());
}

fn config(vars: &[(&str, String)]) -> OtlpConfig {
    let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let mut cfg = OtlpConfig::from_env_values(|k| m.get(k).cloned()).unwrap().expect("configured");
    cfg.batch.max_batch_delay = Duration::from_millis(100);
    cfg.batch.backoff_initial = Duration::from_millis(20);
    cfg.batch.backoff_max = Duration::from_millis(100);
    cfg
}

/// Two services in one batch -> one request with two Resources; all fields mapped.
async fn two_services_one_request(via: Via) {
    let rx = Receiver::start().await;
    let endpoint = match via {
        Via::Grpc => rx.grpc_endpoint(),
        Via::Http => rx.http_endpoint(),
    };
    let protocol = if via == Via::Grpc { "grpc" } else { "http/protobuf" };
    let cfg = config(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.into()),
        ("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20s3cr%3Dt,x-tenant=acme".into()),
    ]);
    assert_eq!(
        cfg.traces.as_ref().unwrap().protocol,
        if via == Via::Grpc { OtlpProtocol::Grpc } else { OtlpProtocol::HttpProtobuf }
    );
    let telemetry = Arc::new(Telemetry::default());
    let sink = spawn_trace_exporter(&cfg, telemetry.clone()).unwrap();

    let front = service("frontend", "front-1");
    let db = service("backend", "back-1");
    let a = server_span(&front, "/users/{id}", 12_000_000);
    let mut b = server_span(&db, "/q", 1_000);
    b.kind = SpanKind::Client;
    b.parent_span_id = Some(a.span_id);
    b.trace_id = a.trace_id;
    b.trace_state = Some("vendor=abc".into());
    b.status = SpanStatus::Error("connection reset".into());
    b.attributes.push(Attr::new("db.system.name", "postgresql"));
    b.attributes.push(Attr::new("flag", true));
    b.attributes.push(Attr::new("ratio", AttrValue::Double(0.5)));
    let c = server_span(&front, "/health", 1_000);
    for s in [&a, &b, &c] {
        sink.submit((*s).clone());
    }

    let spans = rx.wait_for_spans(3, WAIT).await;
    assert_eq!(spans.len(), 3);
    let reqs = rx.trace_requests();
    assert_eq!(reqs.len(), 1, "all three spans in one request");
    assert_eq!(reqs[0].0, via);
    let rs = &reqs[0].1.resource_spans;
    assert_eq!(rs.len(), 2, "one ResourceSpans per service");
    assert_eq!(rs[0].scope_spans.len(), 1);
    assert_eq!(rs[0].scope_spans[0].spans.len(), 2);
    assert_eq!(rs[1].scope_spans[0].spans.len(), 1);
    let scope = rs[0].scope_spans[0].scope.as_ref().unwrap();
    assert_eq!(scope.name, "periscope");
    assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));

    let by_name: HashMap<_, _> = spans.iter().map(|s| (s.span.name.clone(), s)).collect();
    let ra = by_name["GET /users/{id}"];
    assert_eq!(ra.service_name(), Some("frontend"));
    assert_eq!(ra.resource.get("process.pid"), Some(&Val::Int(42)));
    assert_eq!(ra.resource.get("service.namespace"), Some(&Val::Str("shop".into())));
    assert_eq!(ra.span.trace_id, a.trace_id.0.to_vec());
    assert_eq!(ra.span.span_id, a.span_id.0.to_vec());
    assert!(ra.span.parent_span_id.is_empty());
    assert_eq!(ra.span.kind, OtlpKind::Server as i32);
    assert_eq!(ra.span.start_time_unix_nano, 1_700_000_000_000_000_000);
    assert_eq!(ra.span.end_time_unix_nano - ra.span.start_time_unix_nano, 12_000_000);
    assert_eq!(ra.span.flags & 0xff, 1);
    assert_eq!(ra.attr_str("http.route").as_deref(), Some("/users/{id}"));
    assert_eq!(ra.attr_int("http.response.status_code"), Some(200));
    assert!(ra.span.status.as_ref().is_none_or(|s| s.code == StatusCode::Unset as i32));

    let rb = by_name["GET /q"];
    assert_eq!(rb.service_name(), Some("backend"));
    assert_eq!(rb.span.kind, OtlpKind::Client as i32);
    assert_eq!(rb.span.parent_span_id, a.span_id.0.to_vec());
    assert_eq!(rb.span.trace_id, a.trace_id.0.to_vec());
    assert_eq!(rb.span.trace_state, "vendor=abc");
    let st = rb.span.status.as_ref().unwrap();
    assert_eq!((st.code, st.message.as_str()), (StatusCode::Error as i32, "connection reset"));
    let attrs = rb.attrs();
    assert_eq!(attrs["flag"], Val::Bool(true));
    assert_eq!(attrs["ratio"], Val::Double(0.5));
    assert_eq!(attrs["db.system.name"], Val::Str("postgresql".into()));

    // Headers from OTEL_EXPORTER_OTLP_HEADERS, URL-decoded.
    let headers = &rx.requests()[0].headers;
    assert_eq!(headers.get("authorization").map(String::as_str), Some("Bearer s3cr=t"));
    assert_eq!(headers.get("x-tenant").map(String::as_str), Some("acme"));
    if via == Via::Http {
        assert_eq!(headers.get("content-type").map(String::as_str), Some("application/x-protobuf"));
    }

    wait_counter(&telemetry, Counter::SpansExported, 3).await;
    assert_eq!(telemetry.get(Counter::ExportErrors), 0);
    sink.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn grpc_two_services_one_request_with_headers() {
    two_services_one_request(Via::Grpc).await;
}

#[tokio::test]
async fn http_two_services_one_request_with_headers() {
    two_services_one_request(Via::Http).await;
}

#[tokio::test]
async fn batches_split_at_max_batch_size() {
    let rx = Receiver::start().await;
    let mut cfg = config(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", format!("{}/v1/traces", rx.http_endpoint()))]);
    cfg.batch.max_batch_size = 10;
    let t = Arc::new(Telemetry::default());
    let sink = spawn_trace_exporter(&cfg, t.clone()).unwrap();
    let svc = service("s", "s-1");
    for i in 0..25 {
        sink.submit(server_span(&svc, &format!("/{i}"), 1));
    }
    rx.wait_for_spans(25, WAIT).await;
    let sizes: Vec<usize> = rx
        .trace_requests()
        .iter()
        .map(|(_, r)| r.resource_spans.iter().map(|rs| rs.scope_spans[0].spans.len()).sum())
        .collect();
    assert!(sizes.iter().all(|&n| n <= 10), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 25);
    wait_counter(&t, Counter::SpansExported, 25).await;
}

#[tokio::test]
async fn shutdown_flushes_the_open_batch() {
    let rx = Receiver::start().await;
    let mut cfg =
        config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", rx.grpc_endpoint()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into())]);
    cfg.batch.max_batch_delay = Duration::from_secs(3600);
    let t = Arc::new(Telemetry::default());
    let sink = spawn_trace_exporter(&cfg, t.clone()).unwrap();
    let svc = service("s", "s-1");
    for _ in 0..5 {
        sink.submit(server_span(&svc, "/", 1));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rx.spans().is_empty(), "nothing sent before the batch delay");
    sink.shutdown(Duration::from_secs(5)).await;
    assert_eq!(rx.spans().len(), 5);
    assert_eq!(t.get(Counter::SpansExported), 5);
    sink.submit(server_span(&svc, "/late", 1));
    assert_eq!(t.get(Counter::SpansDroppedQueue), 1, "spans after shutdown are dropped and counted");
}

async fn endpoint_down_then_up(via: Via) {
    let rx = Receiver::start().await;
    rx.set_failing(true);
    let endpoint = match via {
        Via::Grpc => rx.grpc_endpoint(),
        Via::Http => rx.http_endpoint(),
    };
    let protocol = if via == Via::Grpc { "grpc" } else { "http/protobuf" };
    let mut cfg =
        config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint), ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.into())]);
    cfg.batch.queue_capacity = 16;
    cfg.batch.max_batch_size = 4;
    cfg.batch.max_pending_batches = 3;
    cfg.batch.max_batch_delay = Duration::from_millis(10);
    let t = Arc::new(Telemetry::default());
    let sink = spawn_trace_exporter(&cfg, t.clone()).unwrap();
    let svc = service("s", "s-1");

    let mut submitted = 0;
    for _ in 0..30 {
        for _ in 0..8 {
            sink.submit(server_span(&svc, "/down", 1));
            submitted += 1;
        }
        assert!(sink.pending_batches() <= 3, "pending batches bounded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A burst larger than the queue: the excess is dropped at once.
    for _ in 0..100 {
        sink.submit(server_span(&svc, "/burst", 1));
        submitted += 1;
    }
    assert!(
        t.get(Counter::SpansDroppedQueue) >= 100 - 16,
        "queue cap respected: {}",
        t.get(Counter::SpansDroppedQueue)
    );
    assert!(t.get(Counter::ExportErrors) > 0);
    assert!(t.get(Counter::ExportBatchesDropped) > 0);
    assert!(rx.attempts() > 0);
    assert!(rx.spans().is_empty());
    assert_eq!(t.get(Counter::SpansExported), 0);

    rx.set_failing(false);
    let mut marker = server_span(&svc, "/marker", 1);
    marker.name = "marker".into();
    tokio::time::sleep(Duration::from_millis(50)).await;
    sink.submit(marker);
    let spans = rx
        .wait_until(WAIT, "marker span", |r| {
            let s = r.spans();
            s.iter().any(|s| s.span.name == "marker").then_some(s)
        })
        .await;
    // What survived is bounded by the queue, the pending batches and the batch in flight.
    let bound = 16 + (3 + 2) * 4 + 1;
    assert!(spans.len() <= bound, "{} spans arrived, bound {bound}", spans.len());
    assert!(spans.len() < submitted);
    assert!(spans.len() > 1, "pending batches are delivered after recovery");
    tokio::time::sleep(Duration::from_millis(200)).await;
    wait_counter(&t, Counter::SpansExported, rx.spans().len() as u64).await;
    sink.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn grpc_endpoint_down_then_up() {
    endpoint_down_then_up(Via::Grpc).await;
}

#[tokio::test]
async fn http_endpoint_down_then_up() {
    endpoint_down_then_up(Via::Http).await;
}

#[tokio::test]
async fn nothing_listening_counts_errors_and_never_blocks() {
    // A port nobody listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let mut cfg = config(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
    ]);
    cfg.batch.max_batch_delay = Duration::from_millis(10);
    let t = Arc::new(Telemetry::default());
    let sink = spawn_trace_exporter(&cfg, t.clone()).unwrap();
    let svc = service("s", "s-1");
    let started = std::time::Instant::now();
    for _ in 0..10_000 {
        sink.submit(server_span(&svc, "/", 1));
    }
    assert!(started.elapsed() < Duration::from_secs(2), "submit never blocks");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(t.get(Counter::ExportErrors) > 0);
    let start = std::time::Instant::now();
    sink.shutdown(Duration::from_millis(300)).await;
    assert!(start.elapsed() < Duration::from_secs(2), "shutdown honours its deadline");
    assert!(t.get(Counter::ExportBatchesDropped) > 0);
}

async fn metrics_export(via: Via) {
    let rx = Receiver::start().await;
    let (endpoint, protocol) = match via {
        Via::Grpc => (rx.grpc_endpoint(), "grpc"),
        Via::Http => (rx.http_endpoint(), "http/protobuf"),
    };
    let cfg = config(&[
        (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            if via == Via::Http { format!("{endpoint}/v1/metrics") } else { endpoint },
        ),
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", protocol.into()),
        ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-scope=metrics".into()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "100".into()),
    ]);
    assert!(cfg.traces.is_none());
    let t = Arc::new(Telemetry::default());
    t.add(Counter::SpansProduced, 7);
    let m = Arc::new(Metrics::new(MetricsConfig::default(), t.clone()));
    let a = service("frontend", "front-1");
    let b = service("backend", "back-1");
    // 3 ms, 5 ms (boundary), 5 ms, 300 ms, 12 s
    for d in [3_000_000u64, 5_000_000, 5_000_000, 300_000_000, 12_000_000_000] {
        m.record_span(&server_span(&a, "/a", d));
    }
    m.record_span(&server_span(&b, "/b", 1_000_000));
    let exporter = spawn_metrics_exporter(&cfg, m.clone(), t.clone()).unwrap();

    let metrics = rx.wait_for_metric_requests(1, WAIT).await;
    let req = &rx.metrics_requests()[0].1;
    assert_eq!(req.resource_metrics.len(), 3, "two services + the agent's own resource");
    assert_eq!(rx.requests()[0].headers.get("x-scope").map(String::as_str), Some("metrics"));

    let hist = metrics
        .iter()
        .find(|m| m.service_name() == Some("frontend") && m.metric.name == "http.server.request.duration")
        .expect("frontend duration histogram");
    assert_eq!(hist.metric.unit, "s");
    let Some(Data::Histogram(h)) = &hist.metric.data else { panic!("not a histogram") };
    assert_eq!(h.aggregation_temporality, 2, "cumulative");
    assert_eq!(h.data_points.len(), 1);
    let dp = &h.data_points[0];
    assert_eq!(
        dp.explicit_bounds,
        [0.0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
    );
    assert_eq!(dp.bucket_counts, [0, 3, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(dp.count, 5);
    assert!((dp.sum.unwrap() - 12.313).abs() < 1e-9);
    assert_eq!(dp.min, Some(0.003));
    assert_eq!(dp.max, Some(12.0));
    assert!(dp.start_time_unix_nano > 0 && dp.start_time_unix_nano <= dp.time_unix_nano);
    let route = dp.attributes.iter().find(|kv| kv.key == "http.route").expect("route attribute");
    assert_eq!(
        format!("{:?}", route.value),
        format!(
            "{:?}",
            Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                value: Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue("/a".into()))
            })
        )
    );

    let backend = metrics.iter().find(|m| m.service_name() == Some("backend")).expect("backend");
    let Some(Data::Histogram(h)) = &backend.metric.data else { panic!() };
    assert_eq!(h.data_points[0].count, 1);

    let own = metrics
        .iter()
        .find(|m| m.service_name() == Some("periscope") && m.metric.name == "periscope_spans_produced")
        .expect("agent counter");
    let Some(Data::Sum(s)) = &own.metric.data else { panic!("not a sum") };
    assert!(s.is_monotonic);
    assert_eq!(s.aggregation_temporality, 2);
    assert_eq!(s.data_points[0].value, Some(number_data_point::Value::AsInt(7)));
    assert!(metrics.iter().any(|m| m.metric.name == "periscope_events_lost_ringbuf"));

    // Cumulative: later exports carry the new spans on top of the old ones.
    m.record_span(&server_span(&a, "/a", 3_000_000));
    let n = rx.metrics_requests().len();
    rx.wait_for_metric_requests(n + 2, WAIT).await;
    let last = rx.metrics_requests().pop().unwrap().1;
    let count = last.resource_metrics[0].scope_metrics[0].metrics[0].data.as_ref().map(|d| match d {
        Data::Histogram(h) => h.data_points[0].count,
        _ => 0,
    });
    assert_eq!(count, Some(6));
    exporter.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn grpc_metrics_export_histograms_and_counters() {
    metrics_export(Via::Grpc).await;
}

#[tokio::test]
async fn http_metrics_export_histograms_and_counters() {
    metrics_export(Via::Http).await;
}

#[tokio::test]
async fn metrics_survive_an_outage() {
    let rx = Receiver::start().await;
    rx.set_failing(true);
    let cfg =
        config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", rx.http_endpoint()), ("OTEL_METRIC_EXPORT_INTERVAL", "50".into())]);
    let t = Arc::new(Telemetry::default());
    let m = Arc::new(Metrics::new(MetricsConfig::default(), t.clone()));
    m.record_span(&server_span(&service("s", "s-1"), "/", 1_000));
    let exporter = spawn_metrics_exporter(&cfg, m, t.clone()).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(t.get(Counter::ExportErrors) > 0);
    assert!(rx.metrics().is_empty());
    rx.set_failing(false);
    let got = rx.wait_for_metric_requests(1, WAIT).await;
    assert!(got.iter().any(|m| m.metric.name == "http.server.request.duration"));
    let errors = got.iter().find(|m| m.metric.name == "periscope_export_errors").and_then(|m| match &m.metric.data {
        Some(Data::Sum(s)) => s.data_points[0].value,
        _ => None,
    });
    assert!(matches!(errors, Some(number_data_point::Value::AsInt(n)) if n > 0), "{errors:?}");
    exporter.shutdown(Duration::from_secs(1)).await;
}

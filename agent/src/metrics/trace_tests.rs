//! Span metrics and service graph: labels, buckets, pairing, expiry, caps.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

use super::*;
use crate::model::{Attr, Service, SpanStatus};

/// Counts allocations of the current thread, to check the hot paths.
struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

fn service(name: &str, instance: &str) -> ServiceRef {
    Arc::new(Service {
        name: name.into(),
        namespace: None,
        instance_id: instance.into(),
        attributes: vec![("service.version".into(), AttrValue::Str("1.2.3".into()))],
    })
}

fn span(svc: &ServiceRef, kind: SpanKind, name: &str, dur_ms: u64, attrs: Vec<Attr>) -> Span {
    Span {
        signal: crate::model::Signal::of_test_span(kind, &attrs),
        start_unix_nanos: 1_000_000_000,
        end_unix_nanos: 1_000_000_000 + dur_ms * 1_000_000,
        attributes: attrs,
        ..Span::for_test(svc, kind, name)
    }
}

fn http_server(svc: &ServiceRef, route: &str, path: &str, status: i64) -> Span {
    span(
        svc,
        SpanKind::Server,
        &format!("GET {route}"),
        3,
        vec![
            Attr::new("http.request.method", "GET"),
            Attr::new("http.route", route),
            Attr::new("http.response.status_code", status),
            Attr::new("url.path", path),
            // Old-convention raw target, as with OTEL_SEMCONV_STABILITY_OPT_IN=http/dup.
            Attr::new("http.target", format!("{path}?token=secret")),
        ],
    )
}

fn with(span_metrics: bool, graph: bool, limit: usize) -> (Metrics, Arc<Telemetry>) {
    let t = Arc::new(Telemetry::default());
    let cfg = MetricsConfig {
        max_attribute_sets: limit,
        span_metrics: span_metrics.then(SpanMetricsConfig::default),
        service_graph: graph.then(ServiceGraphConfig::default),
        ..Default::default()
    };
    (Metrics::new(cfg, t.clone()), t)
}

fn labels(p: &[(String, String)]) -> Vec<(&str, &str)> {
    p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn edges(m: &Metrics, instance: &str) -> Vec<EdgePoint> {
    m.snapshot()
        .services
        .into_iter()
        .find(|s| s.service.instance_id == instance)
        .map(|s| s.service_graph)
        .unwrap_or_default()
}

fn edge<'a>(points: &'a [EdgePoint], client: &str, server: &str) -> &'a EdgePoint {
    points
        .iter()
        .find(|p| p.labels[0].1 == client && p.labels[1].1 == server)
        .unwrap_or_else(|| panic!("no edge {client} -> {server} in {points:?}"))
}

#[test]
fn buckets_are_tempos_defaults() {
    let expected: Vec<f64> = (0..14).map(|i| 0.002 * f64::powi(2.0, i)).collect();
    assert_eq!(span_metrics::SPAN_METRICS_BOUNDS.len(), 14);
    for (a, b) in span_metrics::SPAN_METRICS_BOUNDS.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
    let expected: Vec<f64> = (0..8).map(|i| 0.1 * f64::powi(2.0, i)).collect();
    assert_eq!(service_graph::SERVICE_GRAPH_BOUNDS.len(), 8);
    for (a, b) in service_graph::SERVICE_GRAPH_BOUNDS.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
}

#[test]
fn span_metrics_carry_tempo_labels_and_the_route_as_http_target() {
    let (m, _) = with(true, false, 100);
    let s = service("mythical-server", "pid-1");
    m.record_span(&http_server(&s, "/users/{id}", "/users/42", 200));
    m.record_span(&http_server(&s, "/users/{id}", "/users/43", 200));
    let mut err = http_server(&s, "/users/{id}", "/users/44", 500);
    err.status = SpanStatus::Error("500".into());
    m.record_span(&err);
    // No route (route mode `unset`): no http_target label, never the raw path.
    let mut no_route = http_server(&s, "/x", "/orders/9", 200);
    no_route.attributes.retain(|a| a.key != "http.route");
    no_route.name = "GET".into();
    m.record_span(&no_route);
    // Every kind counts, as in Tempo.
    m.record_span(&span(&s, SpanKind::Internal, "work", 1, vec![]));
    m.record_span(&span(
        &s,
        SpanKind::Client,
        "SELECT beasts",
        20_000,
        vec![Attr::new("db.system.name", "postgresql")],
    ));

    let snap = m.snapshot();
    let sm = &snap.services[0].span_metrics;
    assert_eq!(sm.len(), 5);
    assert_eq!(
        labels(&sm[0].labels),
        [
            ("service", "mythical-server"),
            ("span_name", "GET /users/{id}"),
            ("span_kind", "SPAN_KIND_SERVER"),
            ("status_code", "STATUS_CODE_UNSET"),
            ("http_method", "GET"),
            ("http_target", "/users/{id}"),
            ("http_status_code", "200"),
            ("service_version", "1.2.3"),
        ]
    );
    assert_eq!(sm[0].latency.count, 2);
    assert_eq!(sm[0].latency.bounds, span_metrics::SPAN_METRICS_BOUNDS);
    // 3 ms: (0.002, 0.004].
    assert_eq!(sm[0].latency.bucket_counts[1], 2);
    assert_eq!(labels(&sm[1].labels)[3], ("status_code", "STATUS_CODE_ERROR"));
    assert_eq!(labels(&sm[1].labels)[6], ("http_status_code", "500"));
    assert!(sm[2].labels.iter().all(|(k, _)| k != "http_target"), "{:?}", sm[2].labels);
    assert!(sm.iter().flat_map(|p| &p.labels).all(|(_, v)| !v.contains("token") && !v.contains("/users/4")));
    assert_eq!(labels(&sm[3].labels)[2], ("span_kind", "SPAN_KIND_INTERNAL"));
    assert_eq!(labels(&sm[4].labels)[2], ("span_kind", "SPAN_KIND_CLIENT"));
    // 20 s: above every bound.
    assert_eq!(sm[4].latency.bucket_counts[14], 1);
    // The RED histograms are unaffected.
    assert_eq!(snap.find("pid-1", Instrument::HttpServerDuration).unwrap().series.len(), 3);
}

#[test]
fn dimensions_are_configurable_with_old_names_and_collisions() {
    let cfg =
        SpanMetricsConfig::new(&["db.name", "db.system", "service", "http.method", "http_method", " ", "k8s.pod.name"])
            .unwrap();
    let names: Vec<&str> = cfg.dimensions.iter().map(|d| d.label.as_str()).collect();
    assert_eq!(names, ["db_name", "db_system", "__service", "http_method", "k8s_pod_name"]);
    let too_many: Vec<String> = (0..17).map(|i| format!("a{i}")).collect();
    assert!(SpanMetricsConfig::new(&too_many).unwrap_err().contains("at most 16"));

    let t = Arc::new(Telemetry::default());
    let m = Metrics::new(MetricsConfig { span_metrics: Some(cfg), ..Default::default() }, t);
    let mut svc = (*service("s", "i")).clone();
    svc.attributes.push(("k8s.pod.name".into(), AttrValue::Str("pod-7".into())));
    let svc = Arc::new(svc);
    m.record_span(&span(
        &svc,
        SpanKind::Client,
        "SELECT t",
        1,
        vec![Attr::new("db.system.name", "postgresql"), Attr::new("db.namespace", "postgres")],
    ));
    let snap = m.snapshot();
    assert_eq!(
        labels(&snap.services[0].span_metrics[0].labels)[4..],
        [("db_name", "postgres"), ("db_system", "postgresql"), ("k8s_pod_name", "pod-7")]
    );
}

#[test]
fn span_metrics_overflow_is_capped_per_service_and_counted() {
    let (m, t) = with(true, false, 3);
    let s = service("s", "i1");
    for i in 0..5 {
        m.record_span(&span(&s, SpanKind::Internal, &format!("op{i}"), 1, vec![]));
    }
    m.record_span(&span(&s, SpanKind::Internal, "op0", 1, vec![]));
    m.record_span(&span(&service("o", "i2"), SpanKind::Internal, "op9", 1, vec![]));
    assert_eq!(t.get(Counter::MetricOverflow), 2);
    let snap = m.snapshot();
    let sm = &snap.services[0].span_metrics;
    assert_eq!(sm.len(), 4);
    assert_eq!(sm[0].latency.count, 2);
    assert_eq!(labels(&sm[3].labels), [("service", "s"), ("otel_metric_overflow", "true")]);
    assert_eq!(sm[3].latency.count, 2);
    assert_eq!(snap.services[1].span_metrics.len(), 1);
}

#[test]
fn off_by_default_and_nothing_recorded_when_off() {
    let (m, t) = with(false, false, 100);
    let s = service("s", "i1");
    m.record_span(&http_server(&s, "/a", "/a", 200));
    m.record_span(&span(&s, SpanKind::Internal, "work", 1, vec![]));
    m.observe_edge(
        &s,
        &EdgeObservation {
            client: "s",
            server: "x",
            connection_type: ConnectionType::Direct,
            client_secs: None,
            server_secs: None,
            failed: false,
        },
    );
    let snap = m.snapshot();
    assert_eq!(snap.services.len(), 1);
    assert!(snap.services[0].span_metrics.is_empty() && snap.services[0].service_graph.is_empty());
    assert_eq!(m.pending_edges(), 0);
    assert_eq!(t.get(Counter::MetricOverflow), 0);
    assert!(MetricsConfig::default().span_metrics.is_none() && MetricsConfig::default().service_graph.is_none());
}

#[test]
fn existing_series_are_recorded_without_allocating() {
    let cfg = SpanMetricsConfig::default();
    let t = Telemetry::default();
    let s = service("s", "i");
    let sp = http_server(&s, "/users/{id}", "/users/1", 200);
    let mut state = span_metrics::SpanMetricsState::default();
    state.record(&cfg, &sp, 100, 1, &t);
    assert_eq!(allocations_during(|| state.record(&cfg, &sp, 100, 2, &t)), 0);
    let mut other = sp.clone();
    other.name = "GET /other".into();
    assert!(allocations_during(|| state.record(&cfg, &other, 100, 3, &t)) > 0, "a new series does allocate");

    let mut edges = service_graph::EdgeState::default();
    let e = EdgeObservation {
        client: "a",
        server: "b",
        connection_type: ConnectionType::Direct,
        client_secs: Some(0.3),
        server_secs: Some(0.2),
        failed: false,
    };
    edges.record(&e, 100, 1, &t);
    assert_eq!(allocations_during(|| edges.record(&e, 100, 2, &t)), 0);
}

/// A CLIENT span of `from` and the SERVER span of `to` it called, linked by ids.
fn call(from: &ServiceRef, to: &ServiceRef, client_ms: u64, server_ms: u64) -> (Span, Span) {
    let mut c = span(from, SpanKind::Client, "GET", client_ms, vec![Attr::new("server.address", "mythical-server")]);
    c.attributes.push(Attr::new("http.request.method", "GET"));
    let mut s = span(to, SpanKind::Server, "GET /:beast", server_ms, vec![Attr::new("http.request.method", "GET")]);
    s.trace_id = c.trace_id;
    s.parent_span_id = Some(c.span_id);
    (c, s)
}

#[test]
fn client_and_server_spans_pair_into_one_edge_either_order() {
    let (m, t) = with(false, true, 100);
    let req = service("mythical-requester", "req-1");
    let srv = service("mythical-server", "srv-1");
    let (c1, s1) = call(&req, &srv, 300, 250);
    m.record_span(&c1);
    assert_eq!(m.pending_edges(), 1);
    m.record_span(&s1);
    let (c2, mut s2) = call(&req, &srv, 50, 40);
    s2.status = SpanStatus::Error("500".into());
    m.record_span(&s2);
    m.record_span(&c2);
    assert_eq!(m.pending_edges(), 0);

    let e = edges(&m, "req-1");
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(
        labels(&e[0].labels),
        [("client", "mythical-requester"), ("server", "mythical-server"), ("connection_type", "")]
    );
    assert_eq!(e[0].client.count, 2);
    assert_eq!(e[0].failed, 1);
    assert!((e[0].client.sum - 0.35).abs() < 1e-9);
    assert!((e[0].server.sum - 0.29).abs() < 1e-9);
    assert_eq!(e[0].client.bounds, service_graph::SERVICE_GRAPH_BOUNDS);
    // 0.3 s in (0.2, 0.4], 0.05 s in (.., 0.1].
    assert_eq!(e[0].client.bucket_counts[2], 1);
    assert_eq!(e[0].client.bucket_counts[0], 1);
    // The server's own root-less spans made no `user` edge.
    assert!(edges(&m, "srv-1").is_empty());
    assert_eq!(t.get(Counter::ServiceGraphExpired), 0);
}

#[test]
fn producer_and_consumer_pair_as_messaging_system() {
    let (m, _) = with(false, true, 100);
    let a = service("mythical-requester", "a");
    let b = service("mythical-recorder", "b");
    let p = span(&a, SpanKind::Producer, "publish messages", 2, vec![Attr::new("messaging.system", "rabbitmq")]);
    let mut c = span(&b, SpanKind::Consumer, "process messages", 700, vec![Attr::new("messaging.system", "rabbitmq")]);
    c.trace_id = p.trace_id;
    c.parent_span_id = Some(p.span_id);
    m.record_span(&p);
    m.record_span(&c);
    let e = edges(&m, "a");
    assert_eq!(labels(&e[0].labels)[2], ("connection_type", "messaging_system"));
    assert_eq!(labels(&e[0].labels)[1], ("server", "mythical-recorder"));
}

fn db_span(svc: &ServiceRef, attrs: &[(&'static str, &str)]) -> Span {
    let attrs = attrs.iter().map(|&(k, v)| Attr::new(k, v)).collect();
    Span { signal: crate::model::Signal::Db, ..span(svc, SpanKind::Client, "SELECT unicorn", 4, attrs) }
}

#[test]
fn database_calls_are_edges_at_once_named_like_tempo() {
    let (m, _) = with(false, true, 100);
    let s = service("mythical-server", "srv");
    m.record_span(&db_span(
        &s,
        &[("db.system.name", "postgresql"), ("db.namespace", "postgres"), ("server.address", "172.18.0.3")],
    ));
    m.record_span(&db_span(&s, &[("db.system.name", "postgresql"), ("server.address", "10.0.0.9")]));
    m.record_span(&db_span(
        &s,
        &[("db.system.name", "mysql"), ("db.namespace", "shop"), ("server.address", "mysql.internal")],
    ));
    m.record_span(&db_span(
        &s,
        &[("db.system", "postgresql"), ("peer.service", "billing-db"), ("server.address", "db.internal")],
    ));
    let mut failed = db_span(&s, &[("db.system.name", "postgresql"), ("db.namespace", "postgres")]);
    failed.status = SpanStatus::Error("23502".into());
    m.record_span(&failed);
    assert_eq!(m.pending_edges(), 0);

    let e = edges(&m, "srv");
    let names: Vec<&str> = e.iter().map(|p| p.labels[1].1.as_str()).collect();
    assert_eq!(names, ["postgres", "postgresql", "mysql.internal", "billing-db"]);
    assert!(e.iter().all(|p| p.labels[2].1 == "database" && p.labels[0].1 == "mythical-server"));
    let pg = edge(&e, "mythical-server", "postgres");
    assert_eq!((pg.client.count, pg.failed), (2, 1));
    // Both latencies are the client span's, as in Tempo.
    assert_eq!(pg.client.sum, pg.server.sum);
    assert!((pg.server.sum - 0.008).abs() < 1e-9);
}

#[test]
fn root_server_spans_come_from_the_user_node() {
    let (m, _) = with(false, true, 100);
    let s = service("mythical-server", "srv");
    m.record_span(&span(&s, SpanKind::Server, "GET /unicorn", 120, vec![]));
    let e = edges(&m, "srv");
    assert_eq!(
        labels(&e[0].labels),
        [("client", "user"), ("server", "mythical-server"), ("connection_type", "virtual_node")]
    );
    assert_eq!(e[0].client.sum, 0.0);
    assert!((e[0].server.sum - 0.12).abs() < 1e-9);
}

#[test]
fn unpaired_spans_expire_into_virtual_nodes_or_are_dropped_and_counted() {
    let (m, t) = with(false, true, 100);
    let req = service("mythical-requester", "req");
    let srv = service("mythical-server", "srv");
    let (c, _) = call(&req, &srv, 200, 0);
    let (_, orphan) = call(&req, &srv, 0, 30);
    let mut anonymous = span(&req, SpanKind::Client, "GET", 5, vec![]);
    anonymous.attributes.push(Attr::new("http.request.method", "GET"));
    m.record_span(&c);
    m.record_span(&orphan);
    m.record_span(&anonymous);
    assert_eq!(m.pending_edges(), 3);
    m.expire_edges_at(now_unix_nanos() + 5_000_000_000);
    assert_eq!(m.pending_edges(), 3, "still within the 10 s wait");
    m.expire_edges_at(now_unix_nanos() + 11_000_000_000);
    assert_eq!(m.pending_edges(), 0);
    assert_eq!(t.get(Counter::ServiceGraphExpired), 3);

    let e = edges(&m, "req");
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(
        labels(&e[0].labels),
        [("client", "mythical-requester"), ("server", "mythical-server"), ("connection_type", "virtual_node")]
    );
    assert!((e[0].client.sum - 0.2).abs() < 1e-9);
    assert_eq!((e[0].server.count, e[0].server.sum), (1, 0.0));
    assert!(edges(&m, "srv").is_empty());
}

#[test]
fn pending_store_is_bounded_and_drops_are_counted() {
    let t = Arc::new(Telemetry::default());
    let graph = ServiceGraphConfig { max_pending: 2, ..Default::default() };
    let m = Metrics::new(MetricsConfig { service_graph: Some(graph), ..Default::default() }, t.clone());
    let req = service("r", "r");
    for _ in 0..5 {
        m.record_span(&span(&req, SpanKind::Client, "GET", 1, vec![Attr::new("server.address", "x")]));
    }
    assert_eq!(m.pending_edges(), 2);
    assert_eq!(t.get(Counter::ServiceGraphDropped), 3);
}

#[test]
fn edges_overflow_and_observe_edge_and_forget_service() {
    let (m, t) = with(true, true, 2);
    let a = service("a", "a-1");
    for server in ["x", "y", "z", "w"] {
        m.observe_edge(
            &a,
            &EdgeObservation {
                client: "a",
                server,
                connection_type: ConnectionType::Direct,
                client_secs: Some(0.5),
                server_secs: None,
                failed: true,
            },
        );
    }
    assert_eq!(t.get(Counter::MetricOverflow), 2);
    let e = edges(&m, "a-1");
    assert_eq!(e.len(), 3);
    assert_eq!(labels(&e[2].labels), [("otel_metric_overflow", "true")]);
    assert_eq!((e[2].client.count, e[2].failed), (2, 2));
    assert_eq!(e[0].server.sum, 0.0);

    // A pending client span of a service forgotten meanwhile does not bring it back.
    let gone = service("gone", "g-1");
    m.record_span(&span(&gone, SpanKind::Client, "GET", 1, vec![Attr::new("server.address", "peer")]));
    m.record_span(&span(&gone, SpanKind::Internal, "work", 1, vec![]));
    assert_eq!(m.snapshot().services.len(), 2);
    m.forget_service("g-1");
    m.forget_service("a-1");
    m.expire_edges_at(now_unix_nanos() + 11_000_000_000);
    let snap = m.snapshot();
    assert!(snap.services.is_empty(), "{:?}", snap.services.iter().map(|s| &s.service.instance_id).collect::<Vec<_>>());
}

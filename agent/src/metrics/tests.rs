use super::*;
use crate::model::{Attr, Service, SpanId, SpanStatus, TraceId};

fn service(name: &str, instance: &str) -> ServiceRef {
    Arc::new(Service { name: name.into(), namespace: None, instance_id: instance.into(), attributes: vec![] })
}

fn span(svc: &ServiceRef, kind: SpanKind, dur_nanos: u64, attrs: Vec<Attr>) -> Span {
    Span {
        service: svc.clone(),
        signal: crate::model::Signal::of_test_span(kind, &attrs),
        trace_id: TraceId::random(),
        span_id: SpanId::random(),
        parent_span_id: None,
        trace_flags: 1,
        trace_state: None,
        name: "x".into(),
        kind,
        start_unix_nanos: 1_000_000_000,
        end_unix_nanos: 1_000_000_000 + dur_nanos,
        attributes: attrs,
        status: SpanStatus::Unset,
    }
}

fn http_server(svc: &ServiceRef, dur_nanos: u64, route: &str, status: i64) -> Span {
    span(
        svc,
        SpanKind::Server,
        dur_nanos,
        vec![
            Attr::new("http.request.method", "GET"),
            Attr::new("http.route", route),
            Attr::new("http.response.status_code", status),
            Attr::new("url.path", "/not/a/metric/attr"),
            Attr::new("client.address", "10.0.0.1"),
        ],
    )
}

fn metrics(max: usize) -> (Metrics, Arc<Telemetry>) {
    let t = Arc::new(Telemetry::default());
    (Metrics::new(MetricsConfig { max_attribute_sets: max, ..Default::default() }, t.clone()), t)
}

#[test]
fn boundary_values_go_into_the_bucket_they_bound() {
    // Bounds: 0, 0.005, 0.01, 0.025, ...
    assert_eq!(HistogramData::bucket_index(DURATION_BOUNDS, 0.0), 0);
    assert_eq!(HistogramData::bucket_index(DURATION_BOUNDS, -1.0), 0);
    assert_eq!(HistogramData::bucket_index(DURATION_BOUNDS, 0.000_001), 1);
    assert_eq!(HistogramData::bucket_index(DURATION_BOUNDS, 0.005), 1);
    assert_eq!(HistogramData::bucket_index(DURATION_BOUNDS, 0.005_000_1), 2);
    assert_eq!(HistogramData::bucket_index(DURATION_BOUNDS, 1.0), 10);
    assert_eq!(HistogramData::bucket_index(DURATION_BOUNDS, 10.0), 14);
    assert_eq!(HistogramData::bucket_index(DURATION_BOUNDS, 10.000_001), 15);
    assert_eq!(HistogramData::bucket_index(BODY_SIZE_BOUNDS, 32.0), 1);
    assert_eq!(HistogramData::bucket_index(BODY_SIZE_BOUNDS, 33.0), 2);
    assert_eq!(HistogramData::bucket_index(BODY_SIZE_BOUNDS, 1e9), 10);
}

#[test]
fn spans_land_in_expected_buckets_with_count_sum_min_max() {
    let (m, _) = metrics(10);
    let svc = service("front", "i1");
    // 5ms exactly (on the boundary), 7ms, 2s, 20s
    for nanos in [5_000_000u64, 7_000_000, 2_000_000_000, 20_000_000_000] {
        m.record_span(&http_server(&svc, nanos, "/a", 200));
    }
    let snap = m.snapshot();
    let mp = snap.find("i1", Instrument::HttpServerDuration).expect("metric");
    assert_eq!(mp.series.len(), 1);
    let d = &mp.series[0].data;
    let mut expected = vec![0u64; 16];
    expected[1] = 1; // (0, 0.005]
    expected[2] = 1; // (0.005, 0.01]
    expected[11] = 1; // (1, 2.5]
    expected[15] = 1; // (10, +Inf)
    assert_eq!(d.bucket_counts, expected);
    assert_eq!(d.count, 4);
    assert!((d.sum - 22.012).abs() < 1e-9, "sum {}", d.sum);
    assert_eq!(d.min, Some(0.005));
    assert_eq!(d.max, Some(20.0));
    assert_eq!(d.bounds.len(), 15);
}

#[test]
fn configured_duration_buckets_are_used_for_durations_only() {
    let t = Arc::new(Telemetry::default());
    let bounds: &'static [f64] = &[0.0, 0.0005, 0.001, 0.002];
    let m = Metrics::new(MetricsConfig { duration_bounds: bounds, ..Default::default() }, t);
    let svc = service("front", "i1");
    // 300 µs, 700 µs, 1.5 ms, 1 s
    for nanos in [300_000u64, 700_000, 1_500_000, 1_000_000_000] {
        m.record_span(&http_server(&svc, nanos, "/a", 200));
    }
    let snap = m.snapshot();
    let d = &snap.find("i1", Instrument::HttpServerDuration).expect("metric").series[0].data;
    assert_eq!(d.bounds, bounds);
    assert_eq!(d.bucket_counts, [0, 1, 1, 1, 1]);
    assert_eq!(Instrument::HttpServerRequestBodySize.bounds(bounds), BODY_SIZE_BOUNDS);
}

#[test]
fn counts_equal_spans_recorded_and_kinds_map_to_instruments() {
    let (m, _) = metrics(100);
    let svc = service("s", "i1");
    for i in 0..37 {
        m.record_span(&http_server(&svc, 1_000_000 * i, if i % 2 == 0 { "/a" } else { "/b" }, 200));
    }
    for _ in 0..5 {
        m.record_span(&span(&svc, SpanKind::Client, 1000, vec![Attr::new("http.request.method", "POST")]));
        m.record_span(&span(
            &svc,
            SpanKind::Client,
            1000,
            vec![Attr::new("db.system.name", "postgresql"), Attr::new("db.operation.name", "SELECT")],
        ));
    }
    m.record_span(&span(&svc, SpanKind::Producer, 1000, vec![Attr::new("messaging.system", "kafka")]));
    m.record_span(&span(&svc, SpanKind::Consumer, 1000, vec![Attr::new("messaging.system", "kafka")]));
    m.record_span(&span(&svc, SpanKind::Consumer, 1000, vec![Attr::new("messaging.system", "kafka")]));
    // Neither HTTP, DB nor messaging: no metric.
    m.record_span(&span(&svc, SpanKind::Internal, 1000, vec![Attr::new("http.request.method", "GET")]));
    m.record_span(&span(&svc, SpanKind::Server, 1000, vec![]));

    let snap = m.snapshot();
    let total = |i| -> u64 { snap.find("i1", i).map_or(0, |m| m.series.iter().map(|s| s.data.count).sum()) };
    assert_eq!(total(Instrument::HttpServerDuration), 37);
    assert_eq!(snap.find("i1", Instrument::HttpServerDuration).unwrap().series.len(), 2);
    assert_eq!(total(Instrument::HttpClientDuration), 5);
    assert_eq!(total(Instrument::DbClientDuration), 5);
    assert_eq!(total(Instrument::MessagingClientDuration), 1);
    assert_eq!(total(Instrument::MessagingProcessDuration), 2);
    assert_eq!(total(Instrument::HttpServerRequestBodySize), 0);
    let names: Vec<_> = snap.services[0].metrics.iter().map(|m| m.instrument.name()).collect();
    assert_eq!(
        names,
        [
            "http.server.request.duration",
            "http.client.request.duration",
            "db.client.operation.duration",
            "messaging.client.operation.duration",
            "messaging.process.duration"
        ]
    );
}

#[test]
fn attribute_selection_keeps_only_metric_attributes() {
    let (m, _) = metrics(100);
    let svc = service("s", "i1");
    let mut s = http_server(&svc, 1000, "/users/{id}", 404);
    s.attributes.push(Attr::new("http.method", "GET"));
    s.attributes.push(Attr::new("server.port", 8080u16));
    s.attributes.push(Attr::new("url.scheme", "http"));
    s.attributes.push(Attr::new("http.request.body.size", 100i64));
    s.attributes.push(Attr::new("http.response.body.size", 2048i64));
    m.record_span(&s);
    let db = span(
        &svc,
        SpanKind::Client,
        1000,
        vec![
            Attr::new("db.system.name", "postgresql"),
            Attr::new("db.query.text", "SELECT * FROM t WHERE id = $1"),
            Attr::new("db.collection.name", "t"),
            Attr::new("server.address", "db"),
        ],
    );
    m.record_span(&db);

    let snap = m.snapshot();
    let keys = |i| -> Vec<&str> { snap.find("i1", i).unwrap().series[0].attributes.iter().map(|(k, _)| *k).collect() };
    assert_eq!(
        keys(Instrument::HttpServerDuration),
        ["http.request.method", "url.scheme", "http.response.status_code", "http.route", "server.port", "http.method"]
    );
    assert_eq!(keys(Instrument::DbClientDuration), ["db.system.name", "db.collection.name", "server.address"]);
    let attrs = &snap.find("i1", Instrument::HttpServerDuration).unwrap().series[0].attributes;
    assert!(attrs.contains(&("http.response.status_code", AttrValue::Int(404))));
    let req = &snap.find("i1", Instrument::HttpServerRequestBodySize).unwrap().series[0].data;
    assert_eq!((req.count, req.sum), (1, 100.0));
    assert_eq!(req.bucket_counts[3], 1); // (64, 128]
    let resp = &snap.find("i1", Instrument::HttpServerResponseBodySize).unwrap().series[0].data;
    assert_eq!(resp.bucket_counts[7], 1); // (1024, 2048]
}

#[test]
fn overflow_cap_folds_new_sets_and_counts_measurements() {
    let (m, t) = metrics(3);
    let svc = service("s", "i1");
    let other = service("o", "i2");
    for r in 0..3 {
        m.record_span(&http_server(&svc, 1000, &format!("/r{r}"), 200));
    }
    // Existing sets keep being recorded normally.
    m.record_span(&http_server(&svc, 1000, "/r0", 200));
    assert_eq!(t.get(Counter::MetricOverflow), 0);
    for r in 3..8 {
        m.record_span(&http_server(&svc, 1000, &format!("/r{r}"), 200));
    }
    // The cap is per service.
    m.record_span(&http_server(&other, 1000, "/r9", 200));
    assert_eq!(t.get(Counter::MetricOverflow), 5);

    let snap = m.snapshot();
    let mp = snap.find("i1", Instrument::HttpServerDuration).unwrap();
    assert_eq!(mp.series.len(), 4);
    let last = mp.series.last().unwrap();
    assert_eq!(last.attributes, vec![(OVERFLOW_ATTRIBUTE, AttrValue::Bool(true))]);
    assert_eq!(last.data.count, 5);
    assert_eq!(mp.series[0].data.count, 2);
    assert_eq!(snap.find("i2", Instrument::HttpServerDuration).unwrap().series.len(), 1);
}

#[test]
fn snapshots_are_cumulative_and_grouped_per_instance() {
    let (m, _) = metrics(100);
    let a = service("same-name", "pid-1");
    let b = service("same-name", "pid-2");
    m.record_span(&http_server(&a, 1000, "/", 200));
    let s1 = m.snapshot();
    m.record_span(&http_server(&a, 1000, "/", 200));
    m.record_span(&http_server(&b, 1000, "/", 200));
    let s2 = m.snapshot();

    assert_eq!(s1.services.len(), 1);
    assert_eq!(s1.find("pid-1", Instrument::HttpServerDuration).unwrap().series[0].data.count, 1);
    assert_eq!(s2.services.len(), 2);
    let p1 = &s2.find("pid-1", Instrument::HttpServerDuration).unwrap().series[0];
    assert_eq!(p1.data.count, 2);
    // Start time stays at first sight across snapshots.
    let p1_first = &s1.find("pid-1", Instrument::HttpServerDuration).unwrap().series[0];
    assert_eq!(p1.start_unix_nanos, p1_first.start_unix_nanos);
    assert!(p1.start_unix_nanos <= s2.time_unix_nanos);
    assert_eq!(s2.find("pid-2", Instrument::HttpServerDuration).unwrap().series[0].data.count, 1);
    assert!(Arc::ptr_eq(&s2.services[1].service, &b));

    m.forget_service("pid-1");
    let s3 = m.snapshot();
    assert_eq!(s3.services.len(), 1);
    assert_eq!(s3.services[0].service.instance_id, "pid-2");
    m.record_span(&http_server(&b, 1000, "/", 200));
    assert_eq!(m.snapshot().find("pid-2", Instrument::HttpServerDuration).unwrap().series[0].data.count, 2);
}

#[test]
fn cumulative_counts_are_monotonic_and_end_at_count() {
    let mut h = HistogramData::new(DURATION_BOUNDS);
    for v in [0.0, 0.003, 0.2, 0.2, 11.0] {
        h.record(v);
    }
    h.record(f64::NAN);
    let c = h.cumulative_counts();
    assert_eq!(c.len(), 16);
    assert!(c.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(*c.last().unwrap(), 5);
    assert_eq!(c[0], 1);
    assert_eq!(c[7], 4);
}

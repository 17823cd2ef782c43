use std::collections::{BTreeMap, HashMap};

use super::*;
use crate::{
    metrics::MetricsConfig,
    model::{Attr, ServiceRef, Span, SpanId, SpanKind, SpanStatus, TraceId},
    telemetry::Counter,
};

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Independent little parser of the text format (sample lines only).
fn parse(text: &str) -> (Vec<Sample>, HashMap<String, String>) {
    let mut samples = Vec::new();
    let mut types = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (n, t) = rest.split_once(' ').expect("TYPE line");
            assert!(types.insert(n.to_owned(), t.to_owned()).is_none(), "duplicate TYPE for {n}");
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let mut chars = line.chars().peekable();
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '{' || c == ' ' {
                break;
            }
            assert!(c.is_ascii_alphanumeric() || c == '_' || c == ':', "bad char {c:?} in name of {line}");
            name.push(c);
            chars.next();
        }
        let mut labels = BTreeMap::new();
        if chars.peek() == Some(&'{') {
            chars.next();
            loop {
                let mut k = String::new();
                for c in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    assert!(c.is_ascii_alphanumeric() || c == '_', "bad label name char {c:?} in {line}");
                    k.push(c);
                }
                assert_eq!(chars.next(), Some('"'), "{line}");
                let mut v = String::new();
                loop {
                    match chars.next().expect("unterminated value") {
                        '\\' => match chars.next() {
                            Some('\\') => v.push('\\'),
                            Some('"') => v.push('"'),
                            Some('n') => v.push('\n'),
                            other => panic!("bad escape {other:?} in {line}"),
                        },
                        '"' => break,
                        '\n' => panic!("raw newline"),
                        c => v.push(c),
                    }
                }
                assert!(labels.insert(k.clone(), v).is_none(), "duplicate label {k} in {line}");
                match chars.next() {
                    Some(',') => continue,
                    Some('}') => break,
                    other => panic!("unexpected {other:?} in {line}"),
                }
            }
        }
        assert_eq!(chars.next(), Some(' '), "{line}");
        let v: String = chars.collect();
        let value = match v.as_str() {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value {v:?}")),
        };
        samples.push(Sample { name, labels, value });
    }
    (samples, types)
}

fn svc(name: &str, ns: Option<&str>, instance: &str) -> ServiceRef {
    Arc::new(Service {
        name: name.into(),
        namespace: ns.map(Into::into),
        instance_id: instance.into(),
        attributes: vec![
            ("host.name".into(), AttrValue::Str("node-1".into())),
            ("process.pid".into(), AttrValue::Int(7)),
        ],
    })
}

fn span(s: &ServiceRef, kind: SpanKind, dur_ms: u64, attrs: Vec<Attr>) -> Span {
    Span {
        service: s.clone(),
        signal: crate::model::Signal::of_test_span(kind, &attrs),
        trace_id: TraceId::random(),
        span_id: SpanId::random(),
        parent_span_id: None,
        trace_flags: 1,
        trace_state: None,
        name: "n".into(),
        kind,
        start_unix_nanos: 0,
        end_unix_nanos: dur_ms * 1_000_000,
        attributes: attrs,
        status: SpanStatus::Unset,
    }
}

const NASTY_ROUTE: &str = "/a\"b\\c\nd";

fn sample_text() -> String {
    let t = Arc::new(Telemetry::default());
    t.add(Counter::SpansProduced, 42);
    let m = Metrics::new(MetricsConfig::default(), t.clone());
    let front = svc("frontend", Some("shop"), "front-1");
    let back = svc("backend", None, "back-1");
    for d in [1, 5, 5, 30, 700, 20_000] {
        m.record_span(&span(
            &front,
            SpanKind::Server,
            d,
            vec![
                Attr::new("http.request.method", "GET"),
                Attr::new("http.route", NASTY_ROUTE),
                Attr::new("http.response.status_code", 200i64),
                Attr::new("http.request.body.size", 100i64),
            ],
        ));
    }
    m.record_span(&span(&back, SpanKind::Server, 2, vec![Attr::new("http.request.method", "POST")]));
    m.record_span(&span(&back, SpanKind::Client, 2, vec![Attr::new("db.system.name", "postgresql")]));
    render(&m.snapshot(), &t.snapshot())
}

#[test]
fn histograms_parse_back_cumulative_with_count_equal_to_inf_bucket() {
    let text = sample_text();
    let (samples, types) = parse(&text);
    assert_eq!(types["http_server_request_duration_seconds"], "histogram");
    assert_eq!(types["http_server_request_body_size_bytes"], "histogram");
    assert_eq!(types["db_client_operation_duration_seconds"], "histogram");
    assert_eq!(types["periscope_spans_produced_total"], "counter");
    assert_eq!(types["target_info"], "gauge");

    // Group buckets by series (labels without `le`).
    type SeriesKey = (String, BTreeMap<String, String>);
    let mut series: BTreeMap<SeriesKey, Vec<(f64, f64)>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name.ends_with("_bucket")) {
        let mut l = s.labels.clone();
        let le = l.remove("le").expect("le label");
        let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() };
        series.entry((s.name.trim_end_matches("_bucket").to_owned(), l)).or_default().push((le, s.value));
    }
    assert_eq!(series.len(), 4, "front duration, front body size, back duration, back db");
    for ((name, labels), buckets) in &series {
        assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0), "le ascending in {name}");
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative in {name}");
        let inf = buckets.last().unwrap();
        assert_eq!(inf.0, f64::INFINITY);
        let count = samples.iter().find(|s| s.name == format!("{name}_count") && &s.labels == labels).expect("_count");
        assert_eq!(count.value, inf.1, "_count = +Inf bucket for {name}");
        assert!(samples.iter().any(|s| s.name == format!("{name}_sum") && &s.labels == labels));
    }

    let front = series
        .iter()
        .find(|((n, l), _)| n == "http_server_request_duration_seconds" && l["service_name"] == "frontend")
        .expect("frontend series");
    let l = &front.0 .1;
    assert_eq!(l["http_route"], NASTY_ROUTE, "escaped label round-trips");
    assert_eq!(l["http_request_method"], "GET");
    assert_eq!(l["http_response_status_code"], "200");
    assert_eq!(l["service_namespace"], "shop");
    assert_eq!(l["service_instance_id"], "front-1");
    assert_eq!(l["job"], "shop/frontend");
    assert_eq!(l["instance"], "front-1");
    let at = |le: f64| front.1.iter().find(|(b, _)| *b == le).unwrap().1;
    // Durations 1, 5, 5, 30, 700 ms and 20 s.
    assert_eq!(at(0.0), 0.0);
    assert_eq!(at(0.005), 3.0);
    assert_eq!(at(0.025), 3.0);
    assert_eq!(at(0.05), 4.0);
    assert_eq!(at(0.75), 5.0);
    assert_eq!(at(10.0), 5.0);
    assert_eq!(at(f64::INFINITY), 6.0);
    let sum = samples
        .iter()
        .find(|s| s.name == "http_server_request_duration_seconds_sum" && s.labels["service_name"] == "frontend")
        .unwrap();
    assert!((sum.value - 20.741).abs() < 1e-9);

    let back = series
        .iter()
        .find(|((n, l), _)| n == "http_server_request_duration_seconds" && l["service_name"] == "backend")
        .unwrap();
    assert_eq!(back.0 .1["job"], "backend");
    assert!(!back.0 .1.contains_key("service_namespace"));
}

#[test]
fn families_are_contiguous_and_typed_before_samples() {
    let text = sample_text();
    let mut seen_families: Vec<String> = Vec::new();
    let mut typed: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.push(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap();
        let family = typed
            .iter()
            .rev()
            .find(|f| {
                name == f.as_str()
                    || name.strip_prefix(f.as_str()).is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))
            })
            .unwrap_or_else(|| panic!("sample {name} before its TYPE"))
            .clone();
        if seen_families.last() != Some(&family) {
            assert!(!seen_families.contains(&family), "family {family} not contiguous");
            seen_families.push(family);
        }
    }
}

#[test]
fn target_info_and_agent_counters() {
    let (samples, _) = parse(&sample_text());
    let ti: Vec<_> = samples.iter().filter(|s| s.name == "target_info").collect();
    assert_eq!(ti.len(), 2);
    let f = ti.iter().find(|s| s.labels["job"] == "shop/frontend").unwrap();
    assert_eq!(f.value, 1.0);
    assert_eq!(f.labels["instance"], "front-1");
    assert_eq!(f.labels["host_name"], "node-1");
    assert_eq!(f.labels["process_pid"], "7");
    let c = samples.iter().find(|s| s.name == "periscope_spans_produced_total").unwrap();
    assert_eq!(c.value, 42.0);
    assert!(c.labels.is_empty());
    assert_eq!(samples.iter().filter(|s| s.name.starts_with("periscope_")).count(), Counter::ALL.len());
}

#[test]
fn escaping_and_sanitizing() {
    assert_eq!(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    assert_eq!(sanitize_name("http.route"), "http_route");
    assert_eq!(sanitize_name("9lives-x"), "_9lives_x");
    assert_eq!(Instrument::HttpServerDuration.prometheus_name(), "http_server_request_duration_seconds");
    assert_eq!(Instrument::HttpClientResponseBodySize.prometheus_name(), "http_client_response_body_size_bytes");
    assert_eq!(Instrument::DbClientDuration.prometheus_name(), "db_client_operation_duration_seconds");
}

#[tokio::test]
async fn serves_metrics_targets_healthz_and_reports_taken_port() {
    let t = Arc::new(Telemetry::default());
    let m = Arc::new(Metrics::new(MetricsConfig::default(), t.clone()));
    m.record_span(&span(&svc("s", None, "s-1"), SpanKind::Server, 3, vec![Attr::new("http.request.method", "GET")]));
    let state = PrometheusState::new(m, t).with_targets(|| serde_json::json!([{"pid": 1, "service": "s"}]));
    let server = PrometheusServer::bind("127.0.0.1:0".parse().unwrap(), state.clone()).await.unwrap();
    let addr = server.local_addr().unwrap();
    let task = tokio::spawn(server.run());

    let taken = serve(addr, state).await.expect_err("port is taken");
    assert!(taken.to_string().contains(&addr.to_string()), "{taken}");

    let client = http_client();
    let resp = client.get(format!("http://{addr}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], CONTENT_TYPE);
    let body = resp.text().await.unwrap();
    let (samples, _) = parse(&body);
    assert!(samples.iter().any(|s| s.name == "http_server_request_duration_seconds_count" && s.value == 1.0));

    let targets = client.get(format!("http://{addr}/targets")).send().await.unwrap().text().await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&targets).unwrap();
    assert_eq!(v[0]["pid"], 1);
    let health = client.get(format!("http://{addr}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");
    task.abort();
}

/// Beyla's `prometheus_export.path`: the metrics move there, the rest stays.
#[tokio::test]
async fn metrics_are_served_at_the_configured_path() {
    let t = Arc::new(Telemetry::default());
    let m = Arc::new(Metrics::new(MetricsConfig::default(), t.clone()));
    let state = PrometheusState::new(m, t).with_metrics_path("/internal/metrics");
    let server = PrometheusServer::bind("127.0.0.1:0".parse().unwrap(), state).await.unwrap();
    let addr = server.local_addr().unwrap();
    let task = tokio::spawn(server.run());
    let client = http_client();
    let get = |path: &'static str| {
        let client = client.clone();
        async move { client.get(format!("http://{addr}{path}")).send().await.unwrap().status() }
    };
    assert_eq!(get("/internal/metrics").await, 200);
    assert_eq!(get("/metrics").await, 404);
    assert_eq!(get("/healthz").await, 200);
    task.abort();
}

/// Text with span metrics and service graph on: two instances of one service
/// (kept apart by `instance`), a database edge and a paired edge.
fn trace_metrics_text() -> String {
    let t = Arc::new(Telemetry::default());
    let cfg = MetricsConfig {
        span_metrics: Some(crate::metrics::SpanMetricsConfig::default()),
        service_graph: Some(crate::metrics::ServiceGraphConfig::default()),
        ..Default::default()
    };
    let m = Metrics::new(cfg, t.clone());
    let server_a = svc("mythical-server", Some("mythical"), "srv-a");
    let server_b = svc("mythical-server", Some("mythical"), "srv-b");
    let requester = svc("mythical-requester", Some("mythical"), "req-1");
    for (s, d) in [(&server_a, 3), (&server_a, 30), (&server_b, 300)] {
        let mut client = span(&requester, SpanKind::Client, d, vec![Attr::new("http.request.method", "GET")]);
        client.name = "GET".into();
        let mut server = span(
            s,
            SpanKind::Server,
            d,
            vec![
                Attr::new("http.request.method", "GET"),
                Attr::new("http.route", "/unicorn"),
                Attr::new("http.response.status_code", 200i64),
            ],
        );
        server.name = "GET /unicorn".into();
        server.trace_id = client.trace_id;
        server.parent_span_id = Some(client.span_id);
        m.record_span(&client);
        m.record_span(&server);
    }
    let mut db = span(
        &server_a,
        SpanKind::Client,
        2,
        vec![Attr::new("db.system.name", "postgresql"), Attr::new("db.namespace", "postgres")],
    );
    db.status = SpanStatus::Error("23502".into());
    m.record_span(&db);
    render(&m.snapshot(), &t.snapshot())
}

#[test]
fn span_metrics_and_service_graph_render_with_tempo_names() {
    let text = trace_metrics_text();
    let (samples, types) = parse(&text);
    assert_eq!(types["traces_spanmetrics_calls_total"], "counter");
    assert_eq!(types["traces_spanmetrics_latency"], "histogram");
    assert_eq!(types["traces_service_graph_request_total"], "counter");
    assert_eq!(types["traces_service_graph_request_failed_total"], "counter");
    assert_eq!(types["traces_service_graph_request_client_seconds"], "histogram");
    assert_eq!(types["traces_service_graph_request_server_seconds"], "histogram");

    let calls: Vec<_> = samples
        .iter()
        .filter(|s| s.name == "traces_spanmetrics_calls_total" && s.labels["span_kind"] == "SPAN_KIND_SERVER")
        .collect();
    assert_eq!(calls.len(), 2, "one series per instance");
    let a = calls.iter().find(|s| s.labels["instance"] == "srv-a").unwrap();
    let expected: BTreeMap<String, String> = [
        ("service", "mythical-server"),
        ("span_name", "GET /unicorn"),
        ("span_kind", "SPAN_KIND_SERVER"),
        ("status_code", "STATUS_CODE_UNSET"),
        ("http_method", "GET"),
        ("http_target", "/unicorn"),
        ("http_status_code", "200"),
        ("job", "mythical/mythical-server"),
        ("instance", "srv-a"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(a.labels, expected);
    assert_eq!(a.value, 2.0);

    let les: Vec<&str> = samples
        .iter()
        .filter(|s| {
            s.name == "traces_spanmetrics_latency_bucket"
                && s.labels["instance"] == "srv-a"
                && s.labels["span_kind"] == "SPAN_KIND_SERVER"
        })
        .map(|s| s.labels["le"].as_str())
        .collect();
    assert_eq!(
        les,
        [
            "0.002", "0.004", "0.008", "0.016", "0.032", "0.064", "0.128", "0.256", "0.512", "1.024", "2.048", "4.096",
            "8.192", "16.384", "+Inf"
        ]
    );
    let bucket = |le: &str| {
        samples
            .iter()
            .find(|s| {
                s.name == "traces_spanmetrics_latency_bucket"
                    && s.labels["instance"] == "srv-a"
                    && s.labels["span_kind"] == "SPAN_KIND_SERVER"
                    && s.labels["le"] == le
            })
            .unwrap()
            .value
    };
    // 3 ms and 30 ms.
    assert_eq!((bucket("0.002"), bucket("0.004"), bucket("0.032"), bucket("+Inf")), (0.0, 1.0, 2.0, 2.0));
    let db_calls = samples
        .iter()
        .find(|s| s.name == "traces_spanmetrics_calls_total" && s.labels["status_code"] == "STATUS_CODE_ERROR")
        .unwrap();
    assert_eq!(db_calls.labels["span_kind"], "SPAN_KIND_CLIENT");
    assert!(!db_calls.labels.contains_key("http_target"));

    let edge = |name: &str, client: &str, server: &str| {
        samples
            .iter()
            .find(|s| s.name == name && s.labels["client"] == client && s.labels["server"] == server)
            .unwrap_or_else(|| panic!("{name} {client}->{server}"))
    };
    let total = edge("traces_service_graph_request_total", "mythical-requester", "mythical-server");
    assert_eq!(total.value, 3.0);
    assert_eq!(total.labels["connection_type"], "");
    assert_eq!(total.labels["instance"], "req-1", "held by the client's instance");
    assert_eq!(edge("traces_service_graph_request_failed_total", "mythical-requester", "mythical-server").value, 0.0);
    assert_eq!(
        edge("traces_service_graph_request_server_seconds_count", "mythical-requester", "mythical-server").value,
        3.0
    );
    let db = edge("traces_service_graph_request_total", "mythical-server", "postgres");
    assert_eq!((db.value, db.labels["connection_type"].as_str()), (1.0, "database"));
    assert_eq!(edge("traces_service_graph_request_failed_total", "mythical-server", "postgres").value, 1.0);
    let client_les: Vec<&str> = samples
        .iter()
        .filter(|s| s.name == "traces_service_graph_request_client_seconds_bucket" && s.labels["server"] == "postgres")
        .map(|s| s.labels["le"].as_str())
        .collect();
    assert_eq!(client_les, ["0.1", "0.2", "0.4", "0.8", "1.6", "3.2", "6.4", "12.8", "+Inf"]);
}

#[test]
fn trace_metric_families_are_contiguous_and_absent_when_off() {
    let text = trace_metrics_text();
    let mut seen: Vec<&str> = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        if seen.last() != Some(&family) {
            assert!(!seen.contains(&family), "family {family} not contiguous");
            seen.push(family);
        }
    }
    assert!(seen.contains(&"traces_service_graph_request_server_seconds"));
    assert!(!sample_text().contains("traces_"), "off by default");
}

/// A plain-HTTP client (reqwest is built without a TLS provider of its own).
fn http_client() -> reqwest::Client {
    reqwest::Client::builder().tls_backend_preconfigured(crate::export::otlp::tls::plaintext_config()).build().unwrap()
}

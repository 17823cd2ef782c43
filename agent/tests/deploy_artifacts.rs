//! The files under deploy/ against the agent they deploy: every metric and
//! label a dashboard queries is in a real /metrics scrape, and the compose
//! and Kubernetes configurations are accepted by `periscope --check-config`.
//! No kernel, no Docker: runs anywhere `cargo test` does.
use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};

use periscope::{
    export::prometheus::{PrometheusServer, PrometheusState, PROCESS_METRICS},
    metrics::{Instrument, Metrics, MetricsConfig},
    model::{Attr, AttrValue, Service, Signal, Span, SpanId, SpanKind, SpanStatus, TraceId},
    telemetry::Telemetry,
};
use serde_yaml_ng::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(rel: &str) -> String {
    let p = deploy_dir().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

fn yaml(rel: &str) -> Value {
    serde_yaml_ng::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// ------------------------------------------------------------ PromQL names

const KEYWORDS: &[&str] =
    &["by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"];
const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
/// Aggregation operators, which may be followed by `by (...)` rather than `(`.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// (metric names, label names) a PromQL expression (Grafana variables
/// allowed) refers to. Small on purpose: enough for dashboard queries.
fn promql_names(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut metrics = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut brace = false; // inside {...}
    let mut bracket = false; // inside [...]
    let mut grouping_open = false; // the next (...) lists labels
    let mut in_grouping = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        match c {
            '{' => brace = true,
            '}' => brace = false,
            '[' => bracket = true,
            ']' => bracket = false,
            '(' if grouping_open => {
                in_grouping = true;
                grouping_open = false;
            }
            ')' => in_grouping = false,
            '$' => {
                // A Grafana variable: $name or ${name}.
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || "_{}".contains(chars[i])) {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace()).copied();
            if bracket {
                // a duration such as 5m
            } else if brace || in_grouping {
                labels.insert(word);
            } else if GROUPING.contains(&word.as_str()) {
                grouping_open = true;
            } else if KEYWORDS.contains(&word.as_str()) || AGGREGATIONS.contains(&word.as_str()) || next == Some('(') {
                // operator or function
            } else {
                metrics.insert(word);
            }
            continue;
        }
        if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    (metrics, labels)
}

/// `label_values(expr, label)` of a Grafana variable, or a plain expression.
fn variable_names(query: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let q = query.trim();
    if let Some(inner) = q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')) {
        let (expr, label) = inner.rsplit_once(',').unwrap_or(("", inner));
        let (metrics, mut labels) = promql_names(expr);
        labels.insert(label.trim().to_owned());
        return (metrics, labels);
    }
    promql_names(q)
}

#[test]
fn promql_extraction_finds_metrics_and_labels() {
    let (m, l) = promql_names(
        r#"histogram_quantile(0.95, sum by (le, service_name) (rate(http_server_request_duration_seconds_bucket{service_name=~"$service", http_route!="/x{y}"}[$__rate_interval]))) / ignoring(a) (foo_total offset 5m or 0 * bar)"#,
    );
    assert_eq!(m.into_iter().collect::<Vec<_>>(), ["bar", "foo_total", "http_server_request_duration_seconds_bucket"]);
    assert_eq!(l.into_iter().collect::<Vec<_>>(), ["a", "http_route", "le", "service_name"]);
    let (m, l) = variable_names(
        r#"label_values(http_server_request_duration_seconds_count{service_namespace=~"$namespace"}, service_name)"#,
    );
    assert_eq!(m.into_iter().collect::<Vec<_>>(), ["http_server_request_duration_seconds_count"]);
    assert_eq!(l.into_iter().collect::<Vec<_>>(), ["service_name", "service_namespace"]);
}

/// Every PromQL expression of a dashboard: panel targets (rows included) and variables.
fn dashboard_queries(d: &serde_json::Value, out: &mut Vec<(String, bool)>) {
    for panel in d["panels"].as_array().into_iter().flatten() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((e.to_owned(), false));
            }
        }
        dashboard_queries(panel, out);
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().or(v["query"].as_str()).expect("query variable without a query");
            out.push((q.to_owned(), true));
        }
    }
}

// ------------------------------------------------------------ a real scrape

fn span(kind: SpanKind, signal: Signal, attrs: Vec<Attr>) -> Span {
    let svc = Arc::new(Service {
        name: "mythical-server".into(),
        namespace: Some("mythical".into()),
        instance_id: "host:42".into(),
        attributes: vec![],
    });
    Span {
        service: svc,
        signal,
        trace_id: TraceId::random(),
        span_id: SpanId::random(),
        parent_span_id: None,
        trace_flags: 1,
        trace_state: None,
        name: "x".into(),
        kind,
        start_unix_nanos: 1_700_000_000_000_000_000,
        end_unix_nanos: 1_700_000_000_020_000_000,
        attributes: attrs,
        status: SpanStatus::Unset,
    }
}

/// One span per instrument carrying every attribute that instrument keeps.
fn spans_for_every_instrument() -> Vec<Span> {
    let full = |inst: Instrument, extra: &[(&'static str, AttrValue)]| -> Vec<Attr> {
        let mut a: Vec<Attr> = inst.attribute_keys().iter().map(|k| Attr::new(k, "v")).collect();
        for (k, v) in extra {
            a.retain(|x| x.key != *k);
            a.push(Attr::new(k, v.clone()));
        }
        a
    };
    let sizes = [("http.request.body.size", AttrValue::Int(10)), ("http.response.body.size", AttrValue::Int(20))];
    vec![
        span(SpanKind::Server, Signal::HttpServer, full(Instrument::HttpServerDuration, &sizes)),
        span(SpanKind::Client, Signal::HttpClient, full(Instrument::HttpClientDuration, &sizes)),
        span(SpanKind::Client, Signal::Db, full(Instrument::DbClientDuration, &[])),
        span(SpanKind::Producer, Signal::MessagingSend, full(Instrument::MessagingClientDuration, &[])),
        span(SpanKind::Consumer, Signal::MessagingProcess, full(Instrument::MessagingProcessDuration, &[])),
        span(SpanKind::Server, Signal::RpcServer, full(Instrument::RpcServerDuration, &[])),
        span(SpanKind::Client, Signal::RpcClient, full(Instrument::RpcClientDuration, &[])),
    ]
}

async fn scrape() -> String {
    let telemetry = Arc::new(Telemetry::default());
    let metrics = Arc::new(Metrics::new(MetricsConfig::default(), telemetry.clone()));
    for s in spans_for_every_instrument() {
        metrics.record_span(&s);
    }
    let server =
        PrometheusServer::bind("127.0.0.1:0".parse().unwrap(), PrometheusState::new(metrics, telemetry)).await.unwrap();
    let addr = server.local_addr().unwrap();
    let task = tokio::spawn(server.run());
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut raw = String::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), conn.read_to_string(&mut raw)).await.unwrap().unwrap();
    task.abort();
    raw.split_once("\r\n\r\n").expect("an HTTP response").1.to_owned()
}

/// (series names, label names) of a Prometheus text exposition.
fn exposition_names(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut names = BTreeSet::new();
    let mut labels = BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        names.insert(line[..end].to_owned());
        if let Some(rest) = line[end..].strip_prefix('{') {
            let (_, l) = promql_names(&format!("{{{rest}"));
            labels.extend(l);
        }
    }
    // Labels Prometheus adds to every scraped series.
    labels.extend(["job".to_owned(), "instance".to_owned()]);
    (names, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_query_only_what_the_agent_exports() {
    let body = scrape().await;
    let (exported, exported_labels) = exposition_names(&body);
    for (name, _) in PROCESS_METRICS {
        assert!(exported.contains(*name), "{name} missing from /metrics:\n{body}");
    }
    for i in Instrument::ALL {
        assert!(exported.contains(&format!("{}_bucket", i.prometheus_name())), "{i:?} not rendered:\n{body}");
    }

    let dir = deploy_dir().join("dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "json"));
    files.sort();
    assert!(files.len() >= 2, "dashboards missing in {}", dir.display());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let d: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "{}: schemaVersion", file.display());
        assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40), "{}: uid", file.display());
        let mut ids = BTreeSet::new();
        let mut queries = Vec::new();
        dashboard_queries(&d, &mut queries);
        for p in d["panels"].as_array().unwrap() {
            assert!(ids.insert(p["id"].as_u64().unwrap()), "{}: duplicate panel id {}", file.display(), p["id"]);
        }
        assert!(queries.len() >= 5, "{}: only {} queries", file.display(), queries.len());
        for (q, is_variable) in queries {
            let (metrics, labels) = if is_variable { variable_names(&q) } else { promql_names(&q) };
            assert!(!metrics.is_empty(), "{}: no metric in {q}", file.display());
            for m in metrics {
                assert!(exported.contains(&m), "{}: {m} is not in the agent's /metrics (query: {q})", file.display());
            }
            for l in labels {
                assert!(exported_labels.contains(&l), "{}: label {l} is not exported (query: {q})", file.display());
            }
        }
    }
}

// ------------------------------------------------------------ configurations

/// A service's or container's environment: compose map or list form, or
/// Kubernetes `env` entries with a literal `value`.
fn environment(v: &Value) -> HashMap<String, String> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("unexpected environment value {other:?}"),
    };
    match v {
        Value::Mapping(m) => m.iter().map(|(k, v)| (text(k), text(v))).collect(),
        Value::Sequence(items) => items
            .iter()
            .filter_map(|i| match i {
                Value::String(s) => s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())),
                Value::Mapping(_) => i.get("value").map(|v| (text(&i["name"]), text(v))),
                _ => None,
            })
            .collect(),
        Value::Null => HashMap::new(),
        other => panic!("unexpected environment {other:?}"),
    }
}

/// Runs `periscope --check-config ARGS` with only `env` (and PATH) set.
fn check_config(args: &[&str], env: &HashMap<String, String>) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_periscope"))
        .arg("--check-config")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "periscope --check-config {args:?} with {env:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence().map(|s| s.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

#[test]
fn check_config_rejects_what_it_should() {
    // The semantic checks below rely on these failing.
    let env =
        |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>();
    for bad in [
        env(&[("PERISCOPE_OPEN_PORT", "4000"), ("PERISCOPE_OPEN_PORTS", "4001")]),
        // A Beyla variable periscope has no alias for (BEYLA_OPEN_PORT is one).
        env(&[("PERISCOPE_OPEN_PORT", "4000"), ("BEYLA_BPF_DEBUG", "true")]),
        env(&[("PERISCOPE_OPEN_PORT", "4000"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_periscope"))
            .arg("--check-config")
            .env_clear()
            .envs(&bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?} accepted");
    }
}

#[test]
fn compose_overlay_is_accepted_by_the_agent() {
    let doc = yaml("compose/docker-compose.periscope.yml");
    let svc = &doc["services"]["periscope"];
    assert_eq!(svc["pid"].as_str(), Some("host"));
    let caps = strings(&svc["cap_add"]);
    for needed in ["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"] {
        assert!(caps.iter().any(|c| c == needed), "cap_add lacks {needed}: {caps:?}");
    }
    assert!(strings(&svc["volumes"]).iter().any(|v| v.starts_with("/sys/kernel/tracing:/sys/kernel/tracing")));
    let env = environment(&svc["environment"]);
    let out = check_config(&[], &env);
    for line in [
        "open ports: 4000,4001,4002",
        "service namespace: mythical",
        "otlp traces: http://alloy:4317 (Grpc)",
        "prometheus: 0.0.0.0:9090",
        "old http attribute names: true",
        "old database attribute names: true",
    ] {
        assert!(out.contains(line), "{line:?} not in:\n{out}");
    }
    for name in ["mythical-server", "mythical-requester", "mythical-recorder"] {
        let env = environment(&doc["services"][name]["environment"]);
        assert_eq!(env.get("OTEL_SERVICE_NAME").map(String::as_str), Some(name));
    }
    let silence = yaml("compose/docker-compose.silence-sdk.yml");
    for name in ["mythical-server", "mythical-requester", "mythical-recorder"] {
        let env = environment(&silence["services"][name]["environment"]);
        assert_eq!(env.get("OTEL_TRACES_SAMPLER").map(String::as_str), Some("always_off"), "{name}");
    }
    assert_eq!(svc["uts"].as_str(), Some("host"), "host.name must be the host's");
    // The SYS_ADMIN variant for engines without the CAP_BPF/CAP_PERFMON names
    // is the same service but for its capabilities (and `uts`, which the
    // agent does not need with SYS_ADMIN).
    let variant = yaml("compose/docker-compose.periscope-sys-admin.yml");
    let old = &variant["services"]["periscope"];
    assert_eq!(strings(&old["cap_add"]), ["SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"]);
    assert_eq!(strings(&old["cap_drop"]), ["ALL"]);
    assert!(!strings(&old["cap_add"]).iter().any(|c| c == "BPF" || c == "PERFMON"), "names Docker 20.10 refuses");
    let mut same = svc.as_mapping().unwrap().clone();
    let mut other = old.as_mapping().unwrap().clone();
    for key in ["cap_add", "uts"] {
        same.remove(key);
        other.remove(key);
    }
    assert_eq!(same, other, "the SYS_ADMIN variant drifted from docker-compose.periscope.yml");
    for name in ["mythical-server", "mythical-requester", "mythical-recorder"] {
        assert_eq!(variant["services"][name], doc["services"][name], "{name}");
    }
    // Podman's (and containerd's) seccomp profile needs lifting.
    let podman = yaml("compose/docker-compose.podman.yml");
    assert_eq!(strings(&podman["services"]["periscope"]["security_opt"]), ["seccomp=unconfined"]);
    // With the SDK off, the agent must ignore the not-sampled flag of the headers the services still send.
    let mut both = environment(&svc["environment"]);
    both.extend(environment(&silence["services"]["periscope"]["environment"]));
    let out = check_config(&[], &both);
    assert!(out.contains("traces sampler: AlwaysOn"), "{out}");
}

#[test]
fn kubernetes_config_is_accepted_by_the_agent() {
    let cm = yaml("kubernetes/configmap.yaml");
    let config = cm["data"]["periscope.yaml"].as_str().expect("periscope.yaml in the ConfigMap");
    let file = std::env::temp_dir().join(format!("periscope-deploy-{}.yaml", std::process::id()));
    std::fs::write(&file, config).unwrap();

    let ds = yaml("kubernetes/daemonset.yaml");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    let container = &pod["containers"][0];
    let args = strings(&container["args"]);
    assert_eq!(args.first().map(String::as_str), Some("--config"));
    let mount_dir = Path::new(&args[1]).parent().unwrap().to_str().unwrap().to_owned();
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    assert!(mounts.iter().any(|m| m["mountPath"].as_str() == Some(&mount_dir)), "{} is not mounted", args[1]);
    assert!(mounts.iter().any(|m| m["mountPath"].as_str() == Some("/sys/kernel/tracing")));
    let env_list = &container["env"];
    let node =
        env_list.as_sequence().unwrap().iter().find(|e| e["name"].as_str() == Some("NODE_NAME")).expect("NODE_NAME");
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"].as_str(), Some("spec.nodeName"));

    // RBAC covers what the agent watches (agent/src/kubernetes/mod.rs).
    let role = yaml("kubernetes/clusterrole.yaml");
    let granted: BTreeSet<String> = role["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|r| {
            strings(&r["verbs"]).iter().any(|v| v == "watch") && strings(&r["verbs"]).iter().any(|v| v == "list")
        })
        .flat_map(|r| strings(&r["resources"]))
        .collect();
    for resource in ["pods", "nodes", "replicasets"] {
        assert!(granted.contains(resource), "the ClusterRole cannot list/watch {resource}");
    }

    // Same capabilities as the compose overlay.
    let k8s_caps: BTreeSet<String> =
        strings(&container["securityContext"]["capabilities"]["add"]).into_iter().collect();
    let compose = yaml("compose/docker-compose.periscope.yml");
    let compose_caps: BTreeSet<String> = strings(&compose["services"]["periscope"]["cap_add"]).into_iter().collect();
    assert_eq!(k8s_caps, compose_caps);

    let out = check_config(&["--config", file.to_str().unwrap()], &environment(env_list));
    std::fs::remove_file(&file).unwrap();
    assert!(out.contains("open ports: 4000-4002"), "{out}");
    assert!(out.contains("kubernetes: on") && out.contains("namespaces mythical"), "{out}");
    assert!(out.contains("prometheus: 0.0.0.0:9090"), "{out}");
    let port = container["ports"][0]["containerPort"].as_u64().unwrap();
    assert_eq!(port, 9090, "the container port is the agent's Prometheus port");
}

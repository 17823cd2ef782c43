use super::*;
use std::io::Write;

fn yaml(text: &str) -> tempfile_path::TempPath {
    tempfile_path::write(text)
}

/// A tiny self-cleaning temp file, to avoid a dependency for two tests.
mod tempfile_path {
    use std::path::PathBuf;
    pub struct TempPath(pub PathBuf);
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    pub fn write(text: &str) -> TempPath {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("periscope-cfg-{}-{n}.yaml", std::process::id()));
        let mut f = std::fs::File::create(&p).unwrap();
        super::Write::write_all(&mut f, text.as_bytes()).unwrap();
        TempPath(p)
    }
}

#[test]
fn flags_parse_and_validate() {
    let s = Settings::from_args(["periscope", "--open-port", "8080,9000-9010", "--capture-size", "1024"]).unwrap();
    assert!(s.selector.matches_port(9005));
    assert_eq!(s.capture.probes.capture_size, 1024);
    assert!(!s.spans.http.old_semconv);
    let err = Settings::from_args(["periscope", "--open-port", "70000"]).unwrap_err().to_string();
    assert!(err.contains("open-port"), "{err}");
    let err = Settings::from_args(["periscope", "--pid", "1", "--capture-size", "9000"]).unwrap_err().to_string();
    assert!(err.contains("capture-size"), "{err}");
    let err = Settings::from_args(["periscope"]).unwrap_err().to_string();
    assert!(err.contains("nothing to watch"), "{err}");
}

#[test]
fn yaml_file_fills_what_flags_do_not_set() {
    let f = yaml(
        "open_port: 8080\nroutes: [\"/users/{id}\", \"/a\"]\ncapture-size: 256\nsemconv_stability_opt_in: http/dup\n",
    );
    let path = f.0.to_str().unwrap().to_owned();
    let s = Settings::from_args(["periscope", "--config", &path, "--capture-size", "128"]).unwrap();
    assert!(s.selector.matches_port(8080));
    assert_eq!(s.spans.router.patterns().collect::<Vec<_>>(), ["/users/{id}", "/a"]);
    assert_eq!(s.capture.probes.capture_size, 128, "the flag beats the file");
    assert!(s.spans.http.old_semconv);
}

#[test]
fn unknown_env_vars_are_named() {
    let lines = unknown_env_vars([
        "PERISCOPE_OPEN_PORT",
        "PERISCOPE_OPEN_PORTS",
        "PERISCOPE_SERVICE_NAMESPAC",
        "PERISCOPE_NOTHING_LIKE_IT",
        "BEYLA_OPEN_PORT",
        "BEYLA_BPF_TRACK_REQUEST_HEADERS",
        "BEYLA_PROMETHEUS_FEATURES",
        "BEYLA_DISCOVERY_INTERVAL",
        "OTEL_EBPF_BPF_CONTEXT_PROPAGATION",
        "OTEL_EBPF_TRACE_PRINTER",
        "PERISCOPE_KUBERNETES_NAMESPACE",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "PATH",
    ]);
    assert_eq!(
        lines,
        [
            "PERISCOPE_OPEN_PORTS is not a periscope option (did you mean PERISCOPE_OPEN_PORT?)",
            "PERISCOPE_SERVICE_NAMESPAC is not a periscope option (did you mean PERISCOPE_SERVICE_NAMESPACE?)",
            "PERISCOPE_NOTHING_LIKE_IT is not a periscope option",
            "BEYLA_BPF_TRACK_REQUEST_HEADERS is not read by periscope (no equivalent option)",
            "BEYLA_DISCOVERY_INTERVAL is not read by periscope: use PERISCOPE_DISCOVERY_INTERVAL",
            "OTEL_EBPF_BPF_CONTEXT_PROPAGATION is not read by periscope (no equivalent option)",
        ]
    );
    assert!(known_env_vars().iter().any(|v| v == "OTEL_SEMCONV_STABILITY_OPT_IN"));
}

#[test]
fn nice_takes_negative_values_within_the_kernel_range() {
    let s = Settings::from_args(["periscope", "--pid", "1", "--nice", "-5"]).unwrap();
    assert_eq!(s.agent.nice, -5);
    assert_eq!(Settings::from_args(["periscope", "--pid", "1"]).unwrap().agent.nice, 0);
    let err = Settings::from_args(["periscope", "--pid", "1", "--nice", "-30"]).unwrap_err().to_string();
    assert!(err.contains("nice"), "{err}");
}

#[test]
fn sampler_comes_from_the_sdk_variables_and_bad_values_are_named() {
    let s = Settings::from_args(["periscope", "--pid", "1"]).unwrap();
    assert_eq!(s.context.sampler, crate::context::sampler::Sampler::default());
    let s = Settings::from_args([
        "periscope",
        "--pid",
        "1",
        "--traces-sampler",
        "traceidratio",
        "--traces-sampler-arg",
        "0.1",
    ])
    .unwrap();
    assert_eq!(s.context.sampler, crate::context::sampler::Sampler::TraceIdRatio(0.1));
    let err =
        Settings::from_args(["periscope", "--pid", "1", "--traces-sampler", "sometimes"]).unwrap_err().to_string();
    assert!(err.starts_with("traces-sampler: unknown OTEL_TRACES_SAMPLER"), "{err}");
}

#[test]
fn trace_metrics_are_off_by_default_and_switch_on_by_flag_yaml_or_beyla_features() {
    let none = |_: &str| None;
    let s = Settings::from_args_env(["periscope", "--pid", "1"], &none).unwrap();
    assert!(s.metrics.span_metrics.is_none() && s.metrics.service_graph.is_none());
    let args = <Args as clap::Parser>::try_parse_from(["periscope", "--pid", "1"]).unwrap();
    assert_eq!(
        args.metrics.span_metrics_dimensions,
        ["http.method", "http.target", "http.status_code", "service.version"]
    );

    let s = Settings::from_args_env(["periscope", "--pid", "1", "--span-metrics", "--service-graph-metrics"], &none)
        .unwrap();
    let labels: Vec<_> = s.metrics.span_metrics.unwrap().dimensions.into_iter().map(|d| d.label).collect();
    assert_eq!(labels, ["http_method", "http_target", "http_status_code", "service_version"]);
    assert!(s.metrics.service_graph.is_some());

    let s = Settings::from_args_env(
        ["periscope", "--pid", "1", "--span-metrics=true", "--span-metrics-dimensions", "db.name,k8s.pod.name"],
        &none,
    )
    .unwrap();
    let labels: Vec<_> = s.metrics.span_metrics.unwrap().dimensions.into_iter().map(|d| d.label).collect();
    assert_eq!(labels, ["db_name", "k8s_pod_name"]);
    let many = (0..17).map(|i| format!("a{i}")).collect::<Vec<_>>().join(",");
    let err = Settings::from_args_env(
        ["periscope", "--pid", "1", "--span-metrics", "--span-metrics-dimensions", &many],
        &none,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("span-metrics-dimensions"), "{err}");

    // Beyla's feature lists, either exporter's.
    let beyla = |name: &str| match name {
        "BEYLA_OTEL_METRIC_FEATURES" => Some("application, application_span".to_owned()),
        "BEYLA_PROMETHEUS_FEATURES" => Some("application_service_graph".to_owned()),
        _ => None,
    };
    let s = Settings::from_args_env(["periscope", "--pid", "1"], &beyla).unwrap();
    assert!(s.metrics.span_metrics.is_some() && s.metrics.service_graph.is_some());
    // The flag beats them.
    let s = Settings::from_args_env(["periscope", "--pid", "1", "--span-metrics=false"], &beyla).unwrap();
    assert!(s.metrics.span_metrics.is_none() && s.metrics.service_graph.is_some());
    // So does the agent's own variable.
    let ours = |name: &str| match name {
        "PERISCOPE_SPAN_METRICS" => Some("false".to_owned()),
        other => beyla(other),
    };
    let s = Settings::from_args_env(["periscope", "--pid", "1"], &ours).unwrap();
    assert!(s.metrics.span_metrics.is_none());

    trace_metrics_yaml_precedence();

    // The agent's variable (read by clap) beats the YAML file. Only this
    // test touches it, after its other assertions, so none can see it set.
    let f = yaml("pid: 1\nservice_graph_metrics: false\n");
    std::env::set_var("PERISCOPE_SERVICE_GRAPH_METRICS", "true");
    let s = Settings::from_args_env(["periscope", "--config", f.0.to_str().unwrap()], &none);
    std::env::remove_var("PERISCOPE_SERVICE_GRAPH_METRICS");
    assert!(s.unwrap().metrics.service_graph.is_some());
}

/// Flag and Beyla variables over the YAML file (run by the test below, so
/// that no test sees PERISCOPE_SERVICE_GRAPH_METRICS set).
fn trace_metrics_yaml_precedence() {
    let f = yaml("pid: 1\nspan_metrics: true\nservice-graph-metrics: false\nspan_metrics_dimensions: [http.route, db.namespace]\n");
    let path = f.0.to_str().unwrap().to_owned();
    let none = |_: &str| None;
    let s = Settings::from_args_env(["periscope", "--config", &path], &none).unwrap();
    let labels: Vec<_> = s.metrics.span_metrics.unwrap().dimensions.into_iter().map(|d| d.label).collect();
    assert_eq!(labels, ["http_route", "db_namespace"]);
    assert!(s.metrics.service_graph.is_none());
    // A flag beats the file.
    let s = Settings::from_args_env(["periscope", "--config", &path, "--span-metrics=false"], &none).unwrap();
    assert!(s.metrics.span_metrics.is_none());
    // A Beyla feature list is an environment variable: it beats the file too.
    let beyla = |name: &str| (name == "BEYLA_OTEL_METRIC_FEATURES").then(|| "application_service_graph".to_owned());
    let s = Settings::from_args_env(["periscope", "--config", &path], &beyla).unwrap();
    assert!(s.metrics.service_graph.is_some());
}

#[test]
fn bad_yaml_names_the_key() {
    let f = yaml("open_port: 8080\ncapture_sise: 10\n");
    let err = Settings::from_args(["periscope", "--config", f.0.to_str().unwrap()]).unwrap_err().to_string();
    assert!(err.contains("capture-sise") && err.contains("unknown key"), "{err}");
    let f = yaml("open_port: 8080\ncapture_size: lots\n");
    let err = Settings::from_args(["periscope", "--config", f.0.to_str().unwrap()]).unwrap_err().to_string();
    assert!(err.contains("capture-size"), "{err}");
    let err = Settings::from_args(["periscope", "--config", "/nonexistent.yaml"]).unwrap_err().to_string();
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn bad_otlp_values_stop_startup_naming_the_key() {
    let none = |_: &str| None;
    // A flag (or its variable), checked with everything else.
    let err = Settings::from_args_env(["periscope", "--pid", "1", "--otlp-protocol", "http/json"], &none).unwrap_err();
    assert!(matches!(err, ConfigError::Otlp(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "invalid value \"http/json\" for OTEL_EXPORTER_OTLP_PROTOCOL: expected `grpc` or `http/protobuf` (http/json is not supported)"
    );
    let err = Settings::from_args_env(["periscope", "--pid", "1", "--otlp-endpoint", "collector:4318"], &none)
        .unwrap_err()
        .to_string();
    assert!(err.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{err}");
    let err = Settings::from_args_env(
        ["periscope", "--pid", "1", "--otlp-endpoint", "http://c:4318", "--metric-export-interval", "10s"],
        &none,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("OTEL_METRIC_EXPORT_INTERVAL"), "{err}");
    // A variable that is no flag.
    let env = |name: &str| (name == "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").then(|| "udp".to_owned());
    let err = Settings::from_args_env(["periscope", "--pid", "1", "--otlp-endpoint", "http://c:4318"], &env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") && err.contains("udp"), "{err}");
    // The file's keys go the same way.
    let f = yaml("pid: 1\notlp_endpoint: ftp://c:4318\n");
    let err = Settings::from_args_env(["periscope", "--config", f.0.to_str().unwrap()], &none).unwrap_err().to_string();
    assert!(err.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && err.contains("https://"), "{err}");
    // As today: the interval is only read when there is an endpoint.
    assert!(Settings::from_args_env(["periscope", "--pid", "1", "--metric-export-interval", "10s"], &none).is_ok());
}

#[test]
fn per_signal_otlp_variables_are_read_with_the_flags() {
    use crate::export::otlp::OtlpProtocol;
    use std::time::Duration;
    let vars = [
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-only=traces"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "700"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "64"),
        ("OTEL_BSP_SCHEDULE_DELAY", "250"),
        // The agent's --export-queue-size wins over this one (as before).
        ("OTEL_BSP_MAX_QUEUE_SIZE", "10"),
    ];
    let env = |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
    let s = Settings::from_args_env(
        [
            "periscope",
            "--pid",
            "1",
            "--otlp-endpoint",
            "http://c:4318",
            "--otlp-headers",
            "a=b",
            "--metric-export-interval",
            "5000",
            "--export-queue-size",
            "100",
        ],
        &env,
    )
    .unwrap();
    let otlp = s.export.otlp.unwrap();
    let traces = otlp.traces.unwrap();
    let metrics = otlp.metrics.unwrap();
    assert_eq!((traces.protocol, traces.endpoint.as_str()), (OtlpProtocol::HttpProtobuf, "http://c:4318/v1/traces"));
    assert_eq!((metrics.protocol, metrics.endpoint.as_str()), (OtlpProtocol::Grpc, "http://c:4318"));
    assert_eq!(traces.headers, [("x-only".to_owned(), "traces".to_owned())]);
    assert_eq!(metrics.headers, [("a".to_owned(), "b".to_owned())]);
    assert_eq!((traces.timeout, metrics.timeout), (Duration::from_millis(2500), Duration::from_millis(700)));
    assert_eq!(otlp.metric_export_interval, Duration::from_secs(5));
    assert_eq!((otlp.batch.max_batch_size, otlp.batch.max_batch_delay), (64, Duration::from_millis(250)));
    assert_eq!(otlp.batch.queue_capacity, 100);
    assert_eq!(s.export.printer, None, "traces go to OTLP: no printer unless asked");

    // A per-signal endpoint variable is a flag too: it overrides the generic one.
    let s = Settings::from_args_env(
        ["periscope", "--pid", "1", "--otlp-endpoint", "http://c:4318", "--otlp-traces-endpoint", "http://t:4318/x"],
        &|_: &str| None,
    )
    .unwrap();
    let otlp = s.export.otlp.unwrap();
    assert_eq!(otlp.traces.unwrap().endpoint, "http://t:4318/x");
    assert_eq!(otlp.metrics.unwrap().endpoint, "http://c:4318/v1/metrics");
}

#[test]
fn semconv_opt_ins_are_a_set_and_unknown_values_are_ignored() {
    let set = SemconvOptIns::parse(" database/dup ,http/dup");
    assert!(set.contains(SemconvOptIn::HttpDup) && set.contains(SemconvOptIn::DatabaseDup));
    // Unknown values (the SDKs' `http`, a typo, another case) change nothing and are no error.
    for list in ["", "http", "database", "HTTP/DUP", "http/dupe", "bogus,,"] {
        assert_eq!(SemconvOptIns::parse(list), SemconvOptIns::default(), "{list:?}");
    }
    let set = SemconvOptIns::parse("http,database/dup,bogus");
    assert!(!set.contains(SemconvOptIn::HttpDup) && set.contains(SemconvOptIn::DatabaseDup));

    let s =
        Settings::from_args(["periscope", "--pid", "1", "--semconv-stability-opt-in", "http/dup,whatever"]).unwrap();
    assert!(s.spans.http.old_semconv && !s.spans.sql.old_semconv);
    let s = Settings::from_args(["periscope", "--pid", "1", "--semconv-stability-opt-in", "database/dup"]).unwrap();
    assert!(!s.spans.http.old_semconv && s.spans.sql.old_semconv);
}

#[test]
fn groups_resolve_into_typed_settings() {
    use std::time::Duration;
    let s = Settings::from_args([
        "periscope",
        "--pid",
        "1",
        "--trace-link-wait",
        "0",
        "--trace-max-wait",
        "1500",
        "--ring-buffer-drain-interval",
        "25",
        "--discovery-interval",
        "800",
        "--trace-printer",
        "off",
        "--prometheus-port",
        "9400",
        "--routes",
        "/a/{id}",
        "--route-unmatched",
        "wildcard",
    ])
    .unwrap();
    assert_eq!((s.context.link_wait, s.context.max_wait), (Duration::ZERO, Duration::from_millis(1500)));
    assert_eq!(s.capture.drain_interval, Duration::from_millis(25));
    assert_eq!(s.agent.discovery_interval, Duration::from_millis(800));
    assert_eq!(s.export.printer, None);
    assert!(s.export.otlp.is_none());
    assert_eq!(s.export.prometheus, Some("0.0.0.0:9400".parse().unwrap()));
    assert_eq!(s.spans.router.unmatched(), crate::spans::routes::Unmatched::Wildcard);
    // No OTLP traces: the printer defaults to text.
    let s = Settings::from_args(["periscope", "--pid", "1"]).unwrap();
    assert_eq!(s.export.printer, Some(crate::export::printer::PrintFormat::Text));
}

/// The intro-to-mltp lab's `beyla/config.yaml`, byte for byte (as its Beyla
/// sidecars read it, with BEYLA_OPEN_PORT and BEYLA_SERVICE_NAMESPACE).
const LAB_BEYLA_CONFIG: &str = include_str!("../../tests/fixtures/beyla/lab-config.yaml");

fn vars<'a>(list: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |k| list.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
}

#[test]
fn the_labs_beyla_config_and_variables_work_as_they_are() {
    let f = yaml(LAB_BEYLA_CONFIG);
    let path = f.0.to_str().unwrap().to_owned();
    let env = [
        ("BEYLA_OPEN_PORT", "4000"),
        ("BEYLA_SERVICE_NAMESPACE", "mythical"),
        ("BEYLA_PROMETHEUS_PORT", "9090"),
        ("BEYLA_CONFIG_PATH", path.as_str()),
    ];
    let s = Settings::from_args_env(["periscope"], &vars(&env)).unwrap();
    assert_eq!(s.open_ports_given.as_deref(), Some("4000"));
    assert!(s.selector.matches_port(4000) && !s.selector.matches_port(4001));
    assert_eq!(s.service.namespace.as_deref(), Some("mythical"));
    assert_eq!(s.export.prometheus.map(|a| a.port()), Some(9090));
    assert_eq!(
        s.spans.router.patterns().collect::<Vec<_>>(),
        ["/owlbear", "/unicorn", "/manticore", "/illithid", "/beholder"]
    );
    assert_eq!(s.spans.router.unmatched(), crate::spans::routes::Unmatched::Heuristic);
    assert_eq!(
        s.notes,
        [
            "BEYLA_CONFIG_PATH read as PERISCOPE_CONFIG (--config)".to_owned(),
            "BEYLA_OPEN_PORT read as PERISCOPE_OPEN_PORT (--open-port)".to_owned(),
            "BEYLA_SERVICE_NAMESPACE read as PERISCOPE_SERVICE_NAMESPACE (--service-namespace)".to_owned(),
            "BEYLA_PROMETHEUS_PORT read as PERISCOPE_PROMETHEUS_PORT (--prometheus-port)".to_owned(),
        ]
    );
}

#[test]
fn aliases_sit_between_our_variables_and_the_file() {
    let f = yaml(
        "discovery:\n  instrument:\n    - open_ports: 5000\nservice_namespace: from-file\ntrace_printer: disabled\n",
    );
    let path = f.0.to_str().unwrap().to_owned();
    // The alias beats the file.
    let env = [("OTEL_EBPF_OPEN_PORT", "4000"), ("OTEL_EBPF_TRACE_PRINTER", "json")];
    let s = Settings::from_args_env(["periscope", "--config", &path], &vars(&env)).unwrap();
    assert_eq!(s.open_ports_given.as_deref(), Some("4000"));
    assert_eq!(s.export.printer, Some(crate::export::printer::PrintFormat::Json));
    assert_eq!(s.service.namespace.as_deref(), Some("from-file"), "no alias set: the file's");
    // A flag beats the alias.
    let s = Settings::from_args_env(["periscope", "--config", &path, "--open-port", "6000"], &vars(&env)).unwrap();
    assert_eq!(s.open_ports_given.as_deref(), Some("6000"));
    assert!(s.notes.contains(&"OTEL_EBPF_OPEN_PORT ignored: --open-port is given".to_owned()), "{:?}", s.notes);
    // Alone, the file's values (Beyla's printer value `disabled` included).
    let none = |_: &str| None;
    let s = Settings::from_args_env(["periscope", "--config", &path], &none).unwrap();
    assert_eq!(s.open_ports_given.as_deref(), Some("5000"));
    assert_eq!(s.export.printer, None);
    // Our own variable beats the alias (the alias is not applied; clap reads ours).
    let env = [("OTEL_EBPF_OPEN_PORT", "4000"), ("PERISCOPE_OPEN_PORT", "7000")];
    let s = Settings::from_args_env(["periscope", "--config", &path], &vars(&env)).unwrap();
    assert_eq!(s.open_ports_given.as_deref(), Some("5000"), "ours is not in this process's env: the file's remains");
    assert_eq!(s.notes, ["OTEL_EBPF_OPEN_PORT ignored: PERISCOPE_OPEN_PORT is set"]);
}

#[test]
fn a_beyla_file_names_services_and_notes_what_it_ignores() {
    let f = yaml(
        "discovery:
  services:
    - open_ports: 4000
      name: mythical-server
      namespace: mythical
    - open_ports: 4001-4002
  exclude_services:
    - exe_path: sshd
otel_traces_export:
  endpoint: http://alloy:4317
prometheus_export:
  port: 9090
  path: /internal/metrics
attributes:
  kubernetes:
    enable: false
ebpf:
  wakeup_len: 100
",
    );
    let none = |_: &str| None;
    let s = Settings::from_args_env(["periscope", "--config", f.0.to_str().unwrap()], &none).unwrap();
    assert_eq!(s.open_ports_given.as_deref(), Some("4000,4001-4002"));
    assert_eq!(s.service.rules.len(), 1);
    assert_eq!(s.service.rules[0].name.as_deref(), Some("mythical-server"));
    let traces = s.export.otlp.as_ref().and_then(|o| o.traces.as_ref()).unwrap();
    assert_eq!(traces.endpoint.as_str(), "http://alloy:4317");
    assert_eq!(s.export.prometheus.map(|a| a.port()), Some(9090));
    assert_eq!(s.export.prometheus_path, "/internal/metrics");
    assert!(!s.kubernetes.enabled);
    assert_eq!(
        s.notes,
        ["discovery.exclude_services: not read by periscope (ignored)", "ebpf: not read by periscope (ignored)"]
    );
    // A bad value stops startup naming the file and the key.
    let f = yaml("routes:\n  patterns: [/a]\n  unmatched: sometimes\n");
    let err = Settings::from_args_env(["periscope", "--pid", "1", "--config", f.0.to_str().unwrap()], &none)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("config file ") && err.contains("routes.unmatched: unknown mode \"sometimes\""), "{err}");
    // Our own format still refuses unknown keys (a typo there is ours to name).
    let f = yaml("open_port: 8080\ncapture_sise: 10\n");
    assert!(Settings::from_args_env(["periscope", "--config", f.0.to_str().unwrap()], &none).is_err());
    let err = Settings::from_args_env(["periscope", "--pid", "1", "--prometheus-path", "healthz"], &none)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("prometheus-path:"), "{err}");
}

//! `periscope --check-config` and startup refusals, through the real binary
//! with a clean environment. No kernel: the configuration is checked before
//! anything touches it.
//!
//! The expected reports were printed by the binary before the configuration
//! was split into groups (issue 11); they must not change.
use std::process::{Command, Output};

/// Runs periscope with only `env` (and PATH) set.
fn periscope(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_periscope"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// The configuration part of a `--check-config` report (the host checks after
/// it depend on the machine).
fn report(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["--check-config"];
    all.extend_from_slice(args);
    let out = periscope(&all, env);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?} {env:?}:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let end = stdout.find("host checks").expect("host checks follow the configuration");
    stdout[..end].to_owned()
}

fn temp_yaml(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("periscope-check-config-{}-{name}.yaml", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn compose_overlay_report_is_unchanged() {
    let env = [
        ("PERISCOPE_OPEN_PORT", "4000,4001,4002"),
        ("PERISCOPE_SERVICE_NAMESPACE", "mythical"),
        ("PERISCOPE_PROMETHEUS_PORT", "9090"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://alloy:4317"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_SEMCONV_STABILITY_OPT_IN", "http/dup,database/dup"),
        ("PERISCOPE_ROUTES", "/owlbear,/unicorn,/manticore,/illithid,/beholder"),
        ("PERISCOPE_IGNORED_ROUTES", "/metrics"),
    ];
    assert_eq!(
        report(&[], &env),
        "configuration is valid
  open ports: 4000,4001,4002
  executable globs: -
  pids: -
  service namespace: mythical
  service name override: -
  otlp traces: http://alloy:4317 (Grpc)
  otlp metrics: off
  prometheus: 0.0.0.0:9090
  trace printer: Off
  traces sampler: ParentBased(AlwaysOn)
  old http attribute names: true
  old database attribute names: true
  routes: /owlbear,/unicorn,/manticore,/illithid,/beholder (unmatched: Heuristic)
  span metrics: false, service graph: false
  kubernetes: off
"
    );
}

#[test]
fn typical_file_flags_and_variables_report_is_unchanged() {
    let file = temp_yaml(
        "typical",
        "open_port: \"8080,9000-9010\"\nexe_path: [\"*/node\", \"*/python3*\"]\nroutes: [\"/users/{id}\", \"/static/**\"]\n\
         route_unmatched: path\nspan_metrics: true\nservice_graph_metrics: true\ntraces_sampler: parentbased_traceidratio\n\
         traces_sampler_arg: \"0.25\"\ntrace_printer: json\n",
    );
    let out = report(
        &[
            "--config",
            file.to_str().unwrap(),
            "--pid",
            "1,2",
            "--service-name",
            "svc",
            "--prometheus-port",
            "9400",
            "--prometheus-address",
            "::",
            "--semconv-stability-opt-in",
            "http, database/dup,bogus",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4317"),
        ],
    );
    std::fs::remove_file(&file).unwrap();
    assert_eq!(
        out,
        "configuration is valid
  open ports: 8080,9000-9010
  executable globs: */node,*/python3*
  pids: 1,2
  service namespace: -
  service name override: svc
  otlp traces: http://collector:4318/v1/traces (HttpProtobuf)
  otlp metrics: http://m:4317 (Grpc)
  prometheus: :::9400
  trace printer: Json
  traces sampler: ParentBased(TraceIdRatio(0.25))
  old http attribute names: false
  old database attribute names: true
  routes: /users/{id},/static/** (unmatched: Path)
  span metrics: true, service graph: true
  kubernetes: off
"
    );
}

#[test]
fn kubernetes_and_defaults_reports_are_unchanged() {
    let file = temp_yaml(
        "k8s",
        "kubernetes:\n  enable: true\n  namespace: [mythical]\nopen_port: \"4000-4002\"\nprometheus_port: 9090\n\
         routes: [/owlbear, /unicorn, /manticore, /illithid, /beholder]\nignored_routes: [/metrics]\n\
         semconv_stability_opt_in: http/dup,database/dup\notlp_traces_endpoint: http://alloy.monitoring.svc:4317\n",
    );
    let out = report(&["--config", file.to_str().unwrap()], &[("NODE_NAME", "worker-1")]);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(
        out,
        "configuration is valid
  open ports: 4000-4002
  executable globs: -
  pids: -
  service namespace: -
  service name override: -
  otlp traces: http://alloy.monitoring.svc:4317 (Grpc)
  otlp metrics: off
  prometheus: 0.0.0.0:9090
  trace printer: Off
  traces sampler: ParentBased(AlwaysOn)
  old http attribute names: true
  old database attribute names: true
  routes: /owlbear,/unicorn,/manticore,/illithid,/beholder (unmatched: Heuristic)
  span metrics: false, service graph: false
  kubernetes: on (node worker-1; namespaces mythical; pod labels -; owners -)
"
    );
    // Defaults, with an HTTP metrics endpoint only (the printer stays on) and Beyla's feature list.
    let out = report(
        &["--pid", "1", "--otlp-metrics-endpoint", "http://c:4318"],
        &[("BEYLA_OTEL_METRIC_FEATURES", "application_span,application_service_graph")],
    );
    assert_eq!(
        out,
        "configuration is valid
  open ports: -
  executable globs: -
  pids: 1
  service namespace: -
  service name override: -
  otlp traces: off
  otlp metrics: http://c:4318/ (HttpProtobuf)
  prometheus: off
  trace printer: Text
  traces sampler: ParentBased(AlwaysOn)
  old http attribute names: false
  old database attribute names: false
  routes: - (unmatched: Heuristic)
  span metrics: true, service graph: true
  kubernetes: off
"
    );
}

/// A bad OTLP value is a configuration error like any other: exit 2 and one
/// line naming the variable, before any startup check or kernel work.
#[test]
fn bad_otlp_values_stop_startup_naming_the_key() {
    for (args, env, expected) in [
        (
            &["--open-port", "4000"][..],
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")][..],
            "periscope: configuration error: invalid value \"http/json\" for OTEL_EXPORTER_OTLP_PROTOCOL: expected `grpc` or `http/protobuf` (http/json is not supported)",
        ),
        (
            &["--pid", "1", "--otlp-endpoint", "http://c:4318"],
            &[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp")],
            "periscope: configuration error: invalid value \"udp\" for OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: expected `grpc` or `http/protobuf` (http/json is not supported)",
        ),
        (
            &["--pid", "1"],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0")],
            "periscope: configuration error: invalid value \"0\" for OTEL_BSP_MAX_EXPORT_BATCH_SIZE: expected a positive whole number",
        ),
        (
            &["--pid", "1", "--otlp-endpoint", "https://c:4318"],
            &[("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/etc/periscope/key.pem")],
            "periscope: configuration error: invalid value \"/etc/periscope/key.pem\" for OTEL_EXPORTER_OTLP_CLIENT_KEY: set together with OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE (or its per-signal variant)",
        ),
    ] {
        for check in [true, false] {
            let mut all: Vec<&str> = if check { vec!["--check-config"] } else { vec![] };
            all.extend_from_slice(args);
            let out = periscope(&all, env);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{all:?} {env:?}: {stderr}");
            assert_eq!(stderr.trim_end(), expected, "{all:?} {env:?}");
            assert!(out.stdout.is_empty(), "{all:?}");
        }
    }
}

/// A Beyla user's deployment, unchanged: the lab's sidecar variables and its
/// `beyla/config.yaml` (through BEYLA_CONFIG_PATH). One line per variable
/// read goes to the log.
#[test]
fn beyla_variables_and_the_labs_beyla_config_work_as_they_are() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/beyla/lab-config.yaml");
    let env = [
        ("BEYLA_OPEN_PORT", "4000"),
        ("BEYLA_SERVICE_NAMESPACE", "mythical"),
        ("BEYLA_PROMETHEUS_PORT", "9090"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://alloy:4317"),
        ("BEYLA_CONFIG_PATH", config),
    ];
    assert_eq!(
        report(&[], &env),
        "configuration is valid
  open ports: 4000
  executable globs: -
  pids: -
  service namespace: mythical
  service name override: -
  otlp traces: http://alloy:4317 (Grpc)
  otlp metrics: off
  prometheus: 0.0.0.0:9090
  trace printer: Off
  traces sampler: ParentBased(AlwaysOn)
  old http attribute names: false
  old database attribute names: false
  routes: /owlbear,/unicorn,/manticore,/illithid,/beholder (unmatched: Heuristic)
  span metrics: false, service graph: false
  kubernetes: off
"
    );
    let out = periscope(&["--check-config"], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for var in ["BEYLA_OPEN_PORT", "BEYLA_SERVICE_NAMESPACE", "BEYLA_PROMETHEUS_PORT", "BEYLA_CONFIG_PATH"] {
        assert_eq!(stderr.lines().filter(|l| l.contains(&format!("{var} read as"))).count(), 1, "{var}:\n{stderr}");
    }
}

/// Our own variable wins over its alias, and says so; an OBI name works as Beyla's does.
#[test]
fn our_variables_win_over_their_aliases() {
    let env = [("PERISCOPE_OPEN_PORT", "5000"), ("BEYLA_OPEN_PORT", "4000"), ("OTEL_EBPF_SERVICE_NAMESPACE", "obi")];
    let r = report(&[], &env);
    assert!(r.contains("  open ports: 5000\n") && r.contains("  service namespace: obi\n"), "{r}");
    let out = periscope(&["--check-config"], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("BEYLA_OPEN_PORT ignored: PERISCOPE_OPEN_PORT is set"), "{stderr}");
    // A Beyla variable periscope has no equivalent for is still named.
    let out = periscope(&["--check-config", "--pid", "1"], &[("BEYLA_BPF_DEBUG", "true")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("BEYLA_BPF_DEBUG is not read by periscope"));
}

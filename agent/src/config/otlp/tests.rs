use super::*;
use std::collections::HashMap;

fn cfg(vars: &[(&str, &str)]) -> Result<Option<OtlpConfig>, OtlpConfigError> {
    let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    OtlpConfig::from_env_values(|k| m.get(k).cloned())
}

#[test]
fn no_endpoint_means_no_exporter() {
    assert_eq!(cfg(&[]).unwrap(), None);
    assert_eq!(cfg(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "")]).unwrap(), None);
}

#[test]
fn port_4317_implies_grpc_and_ignores_path() {
    let c = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317/some/path")]).unwrap().unwrap();
    let t = c.traces.unwrap();
    assert_eq!(t.protocol, OtlpProtocol::Grpc);
    assert_eq!(t.endpoint, "http://collector:4317");
    assert_eq!(c.metrics.unwrap().protocol, OtlpProtocol::Grpc);
    assert_eq!(t.timeout, Duration::from_secs(10));
    assert_eq!(c.metric_export_interval, Duration::from_secs(60));
}

#[test]
fn port_4318_implies_http_and_generic_endpoint_gets_signal_path() {
    let c = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]).unwrap().unwrap();
    let t = c.traces.unwrap();
    assert_eq!(t.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(t.endpoint, "http://collector:4318/v1/traces");
    assert_eq!(c.metrics.unwrap().endpoint, "http://collector:4318/v1/metrics");
    let c = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://gw:9000/otlp/")]).unwrap().unwrap();
    assert_eq!(c.traces.as_ref().unwrap().protocol, OtlpProtocol::HttpProtobuf, "unknown port defaults to http");
    assert_eq!(c.traces.unwrap().endpoint, "http://gw:9000/otlp/v1/traces");
}

#[test]
fn explicit_protocol_wins_and_signal_endpoint_used_as_is() {
    let c = cfg(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:9090/api/otlp"),
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(c.traces.as_ref().unwrap().protocol, OtlpProtocol::Grpc);
    let m = c.metrics.unwrap();
    assert_eq!(m.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(m.endpoint, "http://m:9090/api/otlp");

    let c = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])
        .unwrap()
        .unwrap();
    assert_eq!(c.traces.unwrap().protocol, OtlpProtocol::Grpc);
}

#[test]
fn only_a_traces_endpoint_leaves_metrics_off() {
    let c = cfg(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4318/v1/traces")]).unwrap().unwrap();
    assert!(c.metrics.is_none());
    assert_eq!(c.traces.unwrap().endpoint, "http://t:4318/v1/traces");
}

#[test]
fn bad_values_name_the_variable() {
    let e = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])
        .unwrap_err();
    assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{e}");
    let e = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp")])
        .unwrap_err();
    assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"), "{e}");
    let e = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]).unwrap_err();
    assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{e}");
    let e = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://c:4318")]).unwrap_err();
    assert!(e.to_string().contains("https://"), "{e}");
    let e = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"), ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")])
        .unwrap_err();
    assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_COMPRESSION"), "{e}");
    let e =
        cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_METRIC_EXPORT_INTERVAL", "10s")]).unwrap_err();
    assert!(e.to_string().contains("OTEL_METRIC_EXPORT_INTERVAL"), "{e}");
    let e = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_TIMEOUT", "-1")]).unwrap_err();
    assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_TIMEOUT"), "{e}");
    let e = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_HEADERS", "novalue")])
        .unwrap_err();
    assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_HEADERS"), "{e}");
}

#[test]
fn tls_files_are_read_at_startup_and_named_by_their_variable() {
    let dir = std::env::temp_dir().join(format!("periscope-otlp-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let junk = junk.to_str().unwrap();
    let https = ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318");
    // Unreadable, not PEM, half a client identity, TLS files for a plaintext endpoint.
    let e = cfg(&[https, ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")]).unwrap_err().to_string();
    assert!(e.contains("OTEL_EXPORTER_OTLP_CERTIFICATE") && e.contains("cannot read"), "{e}");
    let e = cfg(&[https, ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", junk)]).unwrap_err().to_string();
    assert!(e.contains("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE") && e.contains("no PEM certificate"), "{e}");
    let e = cfg(&[https, ("OTEL_EXPORTER_OTLP_CLIENT_KEY", junk)]).unwrap_err().to_string();
    assert!(e.contains("OTEL_EXPORTER_OTLP_CLIENT_KEY") && e.contains("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"), "{e}");
    let e = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_CERTIFICATE", junk)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("not https://"), "{e}");
    // Per-signal compression over the generic one.
    let c = cfg(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "none"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(c.traces.unwrap().compression, crate::export::otlp::Compression::Gzip);
    assert_eq!(c.metrics.unwrap().compression, crate::export::otlp::Compression::None);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn headers_are_url_decoded_and_signal_headers_override() {
    let c = cfg(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Basic%20dXNlcjpwdw%3D%3D, x-tenant = a%2Cb"),
        ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-only=metrics"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
    ])
    .unwrap()
    .unwrap();
    let t = c.traces.unwrap();
    assert_eq!(
        t.headers,
        vec![
            ("authorization".to_string(), "Basic dXNlcjpwdw==".to_string()),
            ("x-tenant".to_string(), "a,b".to_string())
        ]
    );
    assert_eq!(c.metrics.unwrap().headers, vec![("x-only".to_string(), "metrics".to_string())]);
    assert_eq!(c.metric_export_interval, Duration::from_secs(5));
    assert_eq!(t.timeout, Duration::from_millis(2500));
}

#[test]
fn flags_and_variables_resolve_alike() {
    let flags = OtlpFlags {
        endpoint: Some("http://c:4317"),
        metrics_endpoint: Some("http://m:4318/api"),
        headers: Some("k=v"),
        metric_export_interval: Some(" "),
        ..OtlpFlags::default()
    };
    let env = |k: &str| (k == "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL").then(|| "http/protobuf".to_owned());
    let from_flags = resolve(&flags, env).unwrap();
    let from_vars = cfg(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4318/api"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "k=v"),
        ("OTEL_METRIC_EXPORT_INTERVAL", " "),
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
    ])
    .unwrap();
    assert_eq!(from_flags, from_vars);
    let c = from_flags.unwrap();
    assert_eq!(c.metrics.unwrap().endpoint, "http://m:4318/api");
    assert_eq!(c.metric_export_interval, Duration::from_secs(60), "blank counts as unset");
    // Flag values are not looked up again in the environment.
    let only_env = |k: &str| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://c:4318".to_owned());
    assert_eq!(resolve(&OtlpFlags::default(), only_env).unwrap(), None);
}

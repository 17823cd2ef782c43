//! OTLP exporter configuration from the standard `OTEL_*` environment variables.
use std::time::Duration;

use reqwest::Url;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    fn parse(var: &str, v: &str) -> Result<Self, ConfigError> {
        match v.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            other => Err(ConfigError::invalid(
                var,
                other,
                "expected `grpc` or `http/protobuf` (http/json is not supported)",
            )),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
        }
    }
    fn upper(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        }
    }
}

/// Where and how one signal is sent.
#[derive(Clone, Debug, PartialEq)]
pub struct SignalConfig {
    pub protocol: Protocol,
    /// Full URL: for http/protobuf the URL POSTed to; for gRPC `scheme://host:port`.
    pub endpoint: String,
    /// Extra request headers (lower-cased names).
    pub headers: Vec<(String, String)>,
    /// Per-attempt timeout.
    pub timeout: Duration,
}

/// Batching and retry knobs shared by both signals.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchConfig {
    /// Spans waiting to be batched (`OTEL_BSP_MAX_QUEUE_SIZE`, default 8192).
    pub queue_capacity: usize,
    /// Spans per request (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, default 512).
    pub max_batch_size: usize,
    /// Longest a span waits for its batch to fill (`OTEL_BSP_SCHEDULE_DELAY`, default 1 s).
    pub max_batch_delay: Duration,
    /// Sealed trace batches kept while the endpoint is failing (default 8: about 4096 spans,
    /// ~20 MB); the oldest goes first, counted.
    pub max_pending_batches: usize,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 8192,
            max_batch_size: 512,
            max_batch_delay: Duration::from_secs(1),
            max_pending_batches: 8,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct OtlpConfig {
    /// `None` when only a metrics endpoint is configured.
    pub traces: Option<SignalConfig>,
    /// `None` when only a traces endpoint is configured.
    pub metrics: Option<SignalConfig>,
    /// `OTEL_METRIC_EXPORT_INTERVAL` (ms, default 60000).
    pub metric_export_interval: Duration,
    pub batch: BatchConfig,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("invalid value {value:?} for {var}: {reason}")]
    Invalid { var: String, value: String, reason: String },
}

impl ConfigError {
    fn invalid(var: &str, value: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid { var: var.to_owned(), value: value.to_owned(), reason: reason.into() }
    }
}

const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

impl OtlpConfig {
    /// Reads the `OTEL_*` variables through `get` (e.g. `|k| std::env::var(k).ok()`).
    /// `Ok(None)` when no endpoint is set. Empty values count as unset.
    pub fn from_env_values(get: impl Fn(&str) -> Option<String>) -> Result<Option<OtlpConfig>, ConfigError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let generic_endpoint = get(ENDPOINT);
        let timeout = parse_ms(&get, "OTEL_EXPORTER_OTLP_TIMEOUT", 10_000)?;
        let generic_protocol = get("OTEL_EXPORTER_OTLP_PROTOCOL")
            .map(|v| Protocol::parse("OTEL_EXPORTER_OTLP_PROTOCOL", &v))
            .transpose()?;
        let generic_headers = get("OTEL_EXPORTER_OTLP_HEADERS")
            .map(|v| parse_headers("OTEL_EXPORTER_OTLP_HEADERS", &v))
            .transpose()?;

        let signal = |s: Signal| -> Result<Option<SignalConfig>, ConfigError> {
            let u = s.upper();
            let ep_var = format!("OTEL_EXPORTER_OTLP_{u}_ENDPOINT");
            let (var, raw, specific) = match get(&ep_var) {
                Some(v) => (ep_var, v, true),
                None => match &generic_endpoint {
                    Some(v) => (ENDPOINT.to_owned(), v.clone(), false),
                    None => return Ok(None),
                },
            };
            let url = parse_url(&var, &raw)?;
            let proto_var = format!("OTEL_EXPORTER_OTLP_{u}_PROTOCOL");
            let protocol = match get(&proto_var) {
                Some(v) => Protocol::parse(&proto_var, &v)?,
                None => generic_protocol.unwrap_or_else(|| infer_protocol(&url)),
            };
            let endpoint = match protocol {
                Protocol::Grpc => {
                    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
                    let host = url.host_str().unwrap_or_default();
                    format!("{}://{host}{port}", url.scheme())
                }
                Protocol::HttpProtobuf if specific => url.to_string(),
                Protocol::HttpProtobuf => {
                    let mut u = url.clone();
                    let path = format!("{}/v1/{}", url.path().trim_end_matches('/'), s.as_str());
                    u.set_path(&path);
                    u.to_string()
                }
            };
            let hdr_var = format!("OTEL_EXPORTER_OTLP_{u}_HEADERS");
            let headers = match get(&hdr_var) {
                Some(v) => parse_headers(&hdr_var, &v)?,
                None => generic_headers.clone().unwrap_or_default(),
            };
            let timeout_var = format!("OTEL_EXPORTER_OTLP_{u}_TIMEOUT");
            let timeout = match get(&timeout_var) {
                Some(_) => parse_ms(&get, &timeout_var, 0)?,
                None => timeout,
            };
            Ok(Some(SignalConfig { protocol, endpoint, headers, timeout }))
        };
        let traces = signal(Signal::Traces)?;
        let metrics = signal(Signal::Metrics)?;
        if traces.is_none() && metrics.is_none() {
            return Ok(None);
        }
        let defaults = BatchConfig::default();
        let batch = BatchConfig {
            queue_capacity: parse_count(&get, "OTEL_BSP_MAX_QUEUE_SIZE", defaults.queue_capacity)?,
            max_batch_size: parse_count(&get, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", defaults.max_batch_size)?,
            max_batch_delay: parse_ms(&get, "OTEL_BSP_SCHEDULE_DELAY", 1000)?,
            ..defaults
        };
        let metric_export_interval = parse_ms(&get, "OTEL_METRIC_EXPORT_INTERVAL", 60_000)?;
        if metric_export_interval.is_zero() {
            return Err(ConfigError::invalid("OTEL_METRIC_EXPORT_INTERVAL", "0", "must be positive"));
        }
        Ok(Some(OtlpConfig { traces, metrics, metric_export_interval, batch }))
    }
}

fn parse_url(var: &str, raw: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(raw.trim())
        .map_err(|e| ConfigError::invalid(var, raw, format!("not a URL ({e}); expected e.g. http://collector:4318")))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(ConfigError::invalid(var, raw, "https is not supported (built without TLS); use http://"))
        }
        _ => return Err(ConfigError::invalid(var, raw, "expected an http:// URL, e.g. http://collector:4318")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::invalid(var, raw, "the URL has no host"));
    }
    Ok(url)
}

fn infer_protocol(url: &Url) -> Protocol {
    match url.port_or_known_default() {
        Some(p) if p.to_string().ends_with("4317") => Protocol::Grpc,
        _ => Protocol::HttpProtobuf,
    }
}

fn parse_ms(get: &impl Fn(&str) -> Option<String>, var: &str, default: u64) -> Result<Duration, ConfigError> {
    match get(var) {
        None => Ok(Duration::from_millis(default)),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| ConfigError::invalid(var, &v, "expected a whole number of milliseconds")),
    }
}

fn parse_count(get: &impl Fn(&str) -> Option<String>, var: &str, default: usize) -> Result<usize, ConfigError> {
    match get(var) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ConfigError::invalid(var, &v, "expected a positive whole number")),
        },
    }
}

/// `k=v,k2=v2` (W3C baggage style) with percent-encoded values.
pub fn parse_headers(var: &str, raw: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for item in raw.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some((k, v)) = item.split_once('=') else {
            return Err(ConfigError::invalid(var, raw, format!("entry {item:?} is not key=value")));
        };
        let key = percent_decode(k.trim())
            .ok_or_else(|| ConfigError::invalid(var, raw, format!("bad percent-encoding in {k:?}")))?
            .to_ascii_lowercase();
        let value = percent_decode(v.trim())
            .ok_or_else(|| ConfigError::invalid(var, raw, format!("bad percent-encoding in {v:?}")))?;
        if key.is_empty() || reqwest::header::HeaderName::from_bytes(key.as_bytes()).is_err() {
            return Err(ConfigError::invalid(var, raw, format!("{key:?} is not a valid header name")));
        }
        if reqwest::header::HeaderValue::from_str(&value).is_err() {
            return Err(ConfigError::invalid(var, raw, format!("the value of {key:?} is not a valid header value")));
        }
        out.push((key, value));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Option<OtlpConfig>, ConfigError> {
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
        assert_eq!(t.protocol, Protocol::Grpc);
        assert_eq!(t.endpoint, "http://collector:4317");
        assert_eq!(c.metrics.unwrap().protocol, Protocol::Grpc);
        assert_eq!(t.timeout, Duration::from_secs(10));
        assert_eq!(c.metric_export_interval, Duration::from_secs(60));
    }

    #[test]
    fn port_4318_implies_http_and_generic_endpoint_gets_signal_path() {
        let c = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]).unwrap().unwrap();
        let t = c.traces.unwrap();
        assert_eq!(t.protocol, Protocol::HttpProtobuf);
        assert_eq!(t.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(c.metrics.unwrap().endpoint, "http://collector:4318/v1/metrics");
        let c = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://gw:9000/otlp/")]).unwrap().unwrap();
        assert_eq!(c.traces.as_ref().unwrap().protocol, Protocol::HttpProtobuf, "unknown port defaults to http");
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
        assert_eq!(c.traces.as_ref().unwrap().protocol, Protocol::Grpc);
        let m = c.metrics.unwrap();
        assert_eq!(m.protocol, Protocol::HttpProtobuf);
        assert_eq!(m.endpoint, "http://m:9090/api/otlp");

        let c = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])
            .unwrap()
            .unwrap();
        assert_eq!(c.traces.unwrap().protocol, Protocol::Grpc);
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
        let e = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")]).unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
        let e = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_METRIC_EXPORT_INTERVAL", "10s")])
            .unwrap_err();
        assert!(e.to_string().contains("OTEL_METRIC_EXPORT_INTERVAL"), "{e}");
        let e = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_TIMEOUT", "-1")])
            .unwrap_err();
        assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_TIMEOUT"), "{e}");
        let e = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_HEADERS", "novalue")])
            .unwrap_err();
        assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_HEADERS"), "{e}");
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
}

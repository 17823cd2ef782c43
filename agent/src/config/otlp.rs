//! The OTLP exporter settings, by the rules of the OpenTelemetry SDKs:
//! `OTEL_EXPORTER_OTLP_*`, `OTEL_BSP_*` and `OTEL_METRIC_EXPORT_INTERVAL`.
//!
//! Six of these are flags ([`OtlpFlags`], given by flag, variable or file);
//! the per-signal protocol, headers and timeout, the generic timeout and the
//! batch sizes are variables only, read here once. Empty values count as unset.
use std::time::Duration;

use reqwest::Url;

use crate::export::otlp::{
    tls, BatchConfig, ClientIdentity, Compression, OtlpConfig, OtlpProtocol, OtlpSignal, SignalConfig, TlsFiles,
};

/// A bad OTLP value, named by its variable.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OtlpConfigError {
    #[error("invalid value {value:?} for {var}: {reason}")]
    Invalid { var: String, value: String, reason: String },
}

impl OtlpConfigError {
    fn invalid(var: &str, value: &str, reason: impl Into<String>) -> Self {
        OtlpConfigError::Invalid { var: var.to_owned(), value: value.to_owned(), reason: reason.into() }
    }
}

/// The OTLP options that are also flags (`--otlp-endpoint`, ...), as given.
#[derive(Clone, Copy, Debug, Default)]
pub struct OtlpFlags<'a> {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: both signals, `/v1/<signal>` appended for HTTP.
    pub endpoint: Option<&'a str>,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: used as is.
    pub traces_endpoint: Option<&'a str>,
    /// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`: used as is.
    pub metrics_endpoint: Option<&'a str>,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` or `http/protobuf`.
    pub protocol: Option<&'a str>,
    /// `OTEL_EXPORTER_OTLP_HEADERS`: `k=v,k2=v2`.
    pub headers: Option<&'a str>,
    /// `OTEL_METRIC_EXPORT_INTERVAL`: milliseconds.
    pub metric_export_interval: Option<&'a str>,
}

const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
const TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
const METRIC_EXPORT_INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";
const COMPRESSION: &str = "OTEL_EXPORTER_OTLP_COMPRESSION";
const CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
const CLIENT_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE";
const CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_CLIENT_KEY";

/// `OTEL_EXPORTER_OTLP_<SIGNAL>_<what>`.
fn signal_var(signal: OtlpSignal, what: &str) -> String {
    let upper = match signal {
        OtlpSignal::Traces => "TRACES",
        OtlpSignal::Metrics => "METRICS",
    };
    format!("OTEL_EXPORTER_OTLP_{upper}_{what}")
}

/// The exporter settings from the flags and the variables only `env` gives
/// (e.g. `|k| std::env::var(k).ok()`). `Ok(None)` when no endpoint is set.
pub fn resolve(
    flags: &OtlpFlags<'_>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<OtlpConfig>, OtlpConfigError> {
    let given = |v: Option<&str>| v.map(str::to_owned).filter(|v| !v.trim().is_empty());
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let generic_endpoint = given(flags.endpoint);
    let timeout = millis(TIMEOUT, env(TIMEOUT), 10_000)?;
    let generic_protocol = given(flags.protocol).map(|v| parse_protocol(PROTOCOL, &v)).transpose()?;
    let generic_headers = given(flags.headers).map(|v| parse_headers(HEADERS, &v)).transpose()?;

    let signal = |s: OtlpSignal| -> Result<Option<SignalConfig>, OtlpConfigError> {
        let specific_endpoint = match s {
            OtlpSignal::Traces => flags.traces_endpoint,
            OtlpSignal::Metrics => flags.metrics_endpoint,
        };
        let (var, raw, specific) = match given(specific_endpoint) {
            Some(v) => (signal_var(s, "ENDPOINT"), v, true),
            None => match &generic_endpoint {
                Some(v) => (ENDPOINT.to_owned(), v.clone(), false),
                None => return Ok(None),
            },
        };
        let url = parse_url(&var, &raw)?;
        let proto_var = signal_var(s, "PROTOCOL");
        let protocol = match env(&proto_var) {
            Some(v) => parse_protocol(&proto_var, &v)?,
            None => generic_protocol.unwrap_or_else(|| infer_protocol(&url)),
        };
        let endpoint = match protocol {
            OtlpProtocol::Grpc => {
                let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
                let host = url.host_str().unwrap_or_default();
                format!("{}://{host}{port}", url.scheme())
            }
            OtlpProtocol::HttpProtobuf if specific => url.to_string(),
            OtlpProtocol::HttpProtobuf => {
                let mut u = url.clone();
                let path = format!("{}/v1/{}", url.path().trim_end_matches('/'), s.as_str());
                u.set_path(&path);
                u.to_string()
            }
        };
        let hdr_var = signal_var(s, "HEADERS");
        let headers = match env(&hdr_var) {
            Some(v) => parse_headers(&hdr_var, &v)?,
            None => generic_headers.clone().unwrap_or_default(),
        };
        let timeout_var = signal_var(s, "TIMEOUT");
        let timeout = match env(&timeout_var) {
            Some(v) => millis(&timeout_var, Some(v), 0)?,
            None => timeout,
        };
        // The per-signal variable first, then the generic one.
        let pick = |generic: &str, what: &str| {
            let specific = signal_var(s, what);
            match env(&specific) {
                Some(v) => Some((specific, v)),
                None => env(generic).map(|v| (generic.to_owned(), v)),
            }
        };
        let compression = match pick(COMPRESSION, "COMPRESSION") {
            None => Compression::None,
            Some((var, v)) => match v.trim() {
                "gzip" => Compression::Gzip,
                "none" => Compression::None,
                other => return Err(OtlpConfigError::invalid(&var, other, "expected `gzip` or `none`")),
            },
        };
        let files = [
            pick(CERTIFICATE, "CERTIFICATE"),
            pick(CLIENT_CERTIFICATE, "CLIENT_CERTIFICATE"),
            pick(CLIENT_KEY, "CLIENT_KEY"),
        ];
        let tls = if url.scheme() == "https" {
            Some(tls_files(files)?)
        } else {
            if let Some((var, _)) = files.iter().flatten().next() {
                return Err(OtlpConfigError::invalid(
                    &var.clone(),
                    &raw,
                    format!("{var} is set but the endpoint is not https://"),
                ));
            }
            None
        };
        Ok(Some(SignalConfig { protocol, endpoint, headers, timeout, tls, compression }))
    };
    let traces = signal(OtlpSignal::Traces)?;
    let metrics = signal(OtlpSignal::Metrics)?;
    if traces.is_none() && metrics.is_none() {
        return Ok(None);
    }
    let defaults = BatchConfig::default();
    let count = |var: &str, default: usize| positive(var, env(var), default);
    let batch = BatchConfig {
        queue_capacity: count("OTEL_BSP_MAX_QUEUE_SIZE", defaults.queue_capacity)?,
        max_batch_size: count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", defaults.max_batch_size)?,
        max_batch_delay: millis("OTEL_BSP_SCHEDULE_DELAY", env("OTEL_BSP_SCHEDULE_DELAY"), 1000)?,
        ..defaults
    };
    let metric_export_interval = millis(METRIC_EXPORT_INTERVAL, given(flags.metric_export_interval), 60_000)?;
    if metric_export_interval.is_zero() {
        return Err(OtlpConfigError::invalid(METRIC_EXPORT_INTERVAL, "0", "must be positive"));
    }
    Ok(Some(OtlpConfig { traces, metrics, metric_export_interval, batch }))
}

impl OtlpConfig {
    /// Everything from variables read through `get`, the six flags' included
    /// (tools and tests; the agent resolves its flags with [`resolve`]).
    pub fn from_env_values(get: impl Fn(&str) -> Option<String>) -> Result<Option<OtlpConfig>, OtlpConfigError> {
        let [endpoint, traces_endpoint, metrics_endpoint, protocol, headers, metric_export_interval] = [
            ENDPOINT.to_owned(),
            signal_var(OtlpSignal::Traces, "ENDPOINT"),
            signal_var(OtlpSignal::Metrics, "ENDPOINT"),
            PROTOCOL.to_owned(),
            HEADERS.to_owned(),
            METRIC_EXPORT_INTERVAL.to_owned(),
        ]
        .map(|name| get(&name));
        let flags = OtlpFlags {
            endpoint: endpoint.as_deref(),
            traces_endpoint: traces_endpoint.as_deref(),
            metrics_endpoint: metrics_endpoint.as_deref(),
            protocol: protocol.as_deref(),
            headers: headers.as_deref(),
            metric_export_interval: metric_export_interval.as_deref(),
        };
        resolve(&flags, get)
    }
}

fn parse_protocol(var: &str, v: &str) -> Result<OtlpProtocol, OtlpConfigError> {
    match v.trim() {
        "grpc" => Ok(OtlpProtocol::Grpc),
        "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        other => {
            Err(OtlpConfigError::invalid(var, other, "expected `grpc` or `http/protobuf` (http/json is not supported)"))
        }
    }
}

fn parse_url(var: &str, raw: &str) -> Result<Url, OtlpConfigError> {
    let url = Url::parse(raw.trim()).map_err(|e| {
        OtlpConfigError::invalid(var, raw, format!("not a URL ({e}); expected e.g. http://collector:4318"))
    })?;
    match url.scheme() {
        "http" | "https" => {}
        _ => {
            return Err(OtlpConfigError::invalid(
                var,
                raw,
                "expected an http:// or https:// URL, e.g. http://collector:4318",
            ))
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(OtlpConfigError::invalid(var, raw, "the URL has no host"));
    }
    Ok(url)
}

/// The TLS files named by `[CA, client certificate, client key]` (each
/// `(variable, path)`), read and checked now.
fn tls_files(named: [Option<(String, String)>; 3]) -> Result<TlsFiles, OtlpConfigError> {
    let read = |(var, path): &(String, String)| {
        std::fs::read(path.trim()).map_err(|e| OtlpConfigError::invalid(var, path, format!("cannot read it: {e}")))
    };
    let [ca, cert, key] = named;
    let ca_pem = match &ca {
        Some(named) => {
            let pem = read(named)?;
            tls::certificates(&pem).map_err(|e| OtlpConfigError::invalid(&named.0, &named.1, e.to_string()))?;
            Some(pem)
        }
        None => None,
    };
    let client = match (&cert, &key) {
        (None, None) => None,
        (Some((var, path)), None) | (None, Some((var, path))) => {
            let other = if var.ends_with("KEY") { CLIENT_CERTIFICATE } else { CLIENT_KEY };
            return Err(OtlpConfigError::invalid(
                var,
                path,
                format!("set together with {other} (or its per-signal variant)"),
            ));
        }
        (Some(c), Some(k)) => Some(ClientIdentity { cert_pem: read(c)?, key_pem: read(k)? }),
    };
    let files = TlsFiles { ca_pem, client };
    if let Err(e) = tls::check(&files) {
        // Name the variable the failure belongs to.
        let (var, path) = match (&e, &cert, &key, &ca) {
            (tls::TlsError::BadKey(_), _, Some(k), _) => k.clone(),
            (tls::TlsError::Mismatch(_), Some(c), _, _) => c.clone(),
            (_, _, _, Some(a)) => a.clone(),
            (_, Some(c), _, _) => c.clone(),
            _ => (CERTIFICATE.to_owned(), String::new()),
        };
        return Err(OtlpConfigError::invalid(&var, &path, e.to_string()));
    }
    Ok(files)
}

/// Port 4317 (or one ending in it) is gRPC, anything else HTTP.
fn infer_protocol(url: &Url) -> OtlpProtocol {
    match url.port_or_known_default() {
        Some(p) if p.to_string().ends_with("4317") => OtlpProtocol::Grpc,
        _ => OtlpProtocol::HttpProtobuf,
    }
}

fn millis(var: &str, value: Option<String>, default: u64) -> Result<Duration, OtlpConfigError> {
    match value {
        None => Ok(Duration::from_millis(default)),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| OtlpConfigError::invalid(var, &v, "expected a whole number of milliseconds")),
    }
}

fn positive(var: &str, value: Option<String>, default: usize) -> Result<usize, OtlpConfigError> {
    match value {
        None => Ok(default),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(OtlpConfigError::invalid(var, &v, "expected a positive whole number")),
        },
    }
}

/// `k=v,k2=v2` (W3C baggage style) with percent-encoded values.
pub fn parse_headers(var: &str, raw: &str) -> Result<Vec<(String, String)>, OtlpConfigError> {
    let mut out = Vec::new();
    for item in raw.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some((k, v)) = item.split_once('=') else {
            return Err(OtlpConfigError::invalid(var, raw, format!("entry {item:?} is not key=value")));
        };
        let key = percent_decode(k.trim())
            .ok_or_else(|| OtlpConfigError::invalid(var, raw, format!("bad percent-encoding in {k:?}")))?
            .to_ascii_lowercase();
        let value = percent_decode(v.trim())
            .ok_or_else(|| OtlpConfigError::invalid(var, raw, format!("bad percent-encoding in {v:?}")))?;
        if key.is_empty() || reqwest::header::HeaderName::from_bytes(key.as_bytes()).is_err() {
            return Err(OtlpConfigError::invalid(var, raw, format!("{key:?} is not a valid header name")));
        }
        if reqwest::header::HeaderValue::from_str(&value).is_err() {
            return Err(OtlpConfigError::invalid(
                var,
                raw,
                format!("the value of {key:?} is not a valid header value"),
            ));
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
mod tests;

//! Configuration: command-line flags, each with an environment variable
//! (`PERISCOPE_*` or the standard `OTEL_*`), and an optional YAML file.
//! Precedence: flag > environment > YAML file > default.
use std::{ffi::OsString, path::PathBuf};

use clap::{CommandFactory, Parser, ValueEnum};
use thiserror::Error;

use crate::discovery::{PortSet, Selector};
use crate::spans::routes::Unmatched;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrinterMode {
    Text,
    Json,
    Off,
}

#[derive(Clone, Debug, Parser)]
#[command(
    name = "periscope",
    version,
    about = "eBPF auto-instrumentation: HTTP and SQL spans and RED metrics of unmodified processes",
    args_override_self = true
)]
pub struct Config {
    /// YAML file with any of these options (keys: flag names, `-` or `_`).
    #[arg(long, env = "PERISCOPE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Watch processes listening on these TCP ports: "80,443,8000-8999".
    #[arg(long, env = "PERISCOPE_OPEN_PORT", value_name = "PORTS")]
    pub open_port: Option<String>,

    /// Watch processes whose executable path matches a glob (comma-separated).
    #[arg(long, env = "PERISCOPE_EXE_PATH", value_name = "GLOB", value_delimiter = ',')]
    pub exe_path: Vec<String>,

    /// Watch these process ids (comma-separated).
    #[arg(long, env = "PERISCOPE_PID", value_name = "PID", value_delimiter = ',')]
    pub pid: Vec<u32>,

    /// service.name for every watched process, instead of the one found in
    /// the process's own OTEL_SERVICE_NAME or its executable name.
    #[arg(long, env = "PERISCOPE_SERVICE_NAME")]
    pub service_name: Option<String>,

    /// service.namespace of watched processes that do not set their own.
    #[arg(long, env = "PERISCOPE_SERVICE_NAMESPACE")]
    pub service_namespace: Option<String>,

    /// Print spans on stdout: text or json; defaults to text when no OTLP endpoint is set.
    #[arg(long, env = "PERISCOPE_TRACE_PRINTER", value_enum)]
    pub trace_printer: Option<PrinterMode>,

    /// Serve Prometheus metrics on this port (/metrics, plus /targets and /healthz).
    #[arg(long, env = "PERISCOPE_PROMETHEUS_PORT")]
    pub prometheus_port: Option<u16>,

    /// Address the Prometheus endpoint binds to.
    #[arg(long, env = "PERISCOPE_PROMETHEUS_ADDRESS", default_value = "0.0.0.0")]
    pub prometheus_address: std::net::IpAddr,

    /// OTLP endpoint for traces and metrics (http://host:4317 is gRPC, :4318 HTTP).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otlp_traces_endpoint: Option<String>,

    #[arg(long, env = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")]
    pub otlp_metrics_endpoint: Option<String>,

    /// grpc or http/protobuf.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL")]
    pub otlp_protocol: Option<String>,

    /// Extra headers: "k=v,k2=v2".
    #[arg(long, env = "OTEL_EXPORTER_OTLP_HEADERS")]
    pub otlp_headers: Option<String>,

    /// Milliseconds between metric exports.
    #[arg(long, env = "OTEL_METRIC_EXPORT_INTERVAL")]
    pub metric_export_interval: Option<String>,

    /// Comma-separated: `http/dup` adds the old HTTP attribute names, `database/dup` the old DB names.
    #[arg(long, env = "OTEL_SEMCONV_STABILITY_OPT_IN", default_value = "")]
    pub semconv_stability_opt_in: String,

    /// Bytes captured per syscall (1-4096). Larger sees longer heads, costs more.
    #[arg(long, env = "PERISCOPE_CAPTURE_SIZE", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub capture_size: u32,

    /// Kernel ring buffer size in bytes (power of two).
    #[arg(long, env = "PERISCOPE_RING_BUFFER_SIZE", default_value_t = 8 * 1024 * 1024)]
    pub ring_buffer_size: u32,

    /// Bytes of events waiting in the ring buffer before the kernel wakes the agent.
    #[arg(long, env = "PERISCOPE_RING_BUFFER_WAKEUP_BYTES", default_value_t = 64 * 1024)]
    pub ring_buffer_wakeup_bytes: u32,

    /// Milliseconds between drains of the ring buffer when the kernel does not wake the agent.
    #[arg(long, env = "PERISCOPE_RING_BUFFER_DRAIN_INTERVAL", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub ring_buffer_drain_interval: u64,

    /// Route patterns, e.g. "/users/{id},/static/**".
    #[arg(long, env = "PERISCOPE_ROUTES", value_delimiter = ',')]
    pub routes: Vec<String>,

    /// Paths for which no span or metric is made, e.g. "/health,/metrics".
    #[arg(long, env = "PERISCOPE_IGNORED_ROUTES", value_delimiter = ',')]
    pub ignored_routes: Vec<String>,

    /// What http.route is for paths no pattern matches: heuristic, path, wildcard, unset.
    #[arg(long, env = "PERISCOPE_ROUTE_UNMATCHED", default_value = "heuristic")]
    pub route_unmatched: Unmatched,

    /// Distinct routes per service before new ones are folded into "/**".
    #[arg(long, env = "PERISCOPE_MAX_ROUTES", default_value_t = 200)]
    pub max_routes: usize,

    /// Keep URL query strings (redacted by default).
    #[arg(long, env = "PERISCOPE_INCLUDE_QUERY_STRING", default_value_t = false, action = clap::ArgAction::Set)]
    pub include_query_string: bool,

    /// Put the sanitized SQL text (literals replaced by `?`) in db.query.text.
    #[arg(long, env = "PERISCOPE_DB_QUERY_TEXT", default_value_t = true, action = clap::ArgAction::Set)]
    pub db_query_text: bool,

    /// Keep SQL literals in db.query.text and error messages (privacy: off by default).
    #[arg(long, env = "PERISCOPE_DB_QUERY_LITERALS", default_value_t = false, action = clap::ArgAction::Set)]
    pub db_query_literals: bool,

    /// Attribute sets per metric and service before folding into otel.metric.overflow.
    #[arg(long, env = "PERISCOPE_METRIC_CARDINALITY_LIMIT", default_value_t = 2000)]
    pub metric_cardinality_limit: usize,

    // Trace-derived metrics (Tempo's names): off unless set here, or unless
    // BEYLA_OTEL_METRIC_FEATURES / BEYLA_PROMETHEUS_FEATURES name them
    // (`application_span`, `application_service_graph`); see `beyla_feature_args`.
    /// Tempo-compatible span metrics: traces_spanmetrics_calls_total, traces_spanmetrics_latency.
    #[arg(long, env = "PERISCOPE_SPAN_METRICS", num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set)]
    pub span_metrics: Option<bool>,

    /// Tempo-compatible service-graph metrics: traces_service_graph_request_*.
    #[arg(long, env = "PERISCOPE_SERVICE_GRAPH_METRICS", num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set)]
    pub service_graph_metrics: Option<bool>,

    /// Span (else resource) attributes that become span-metrics labels, dots as underscores.
    /// http.target is the route, never the raw path.
    #[arg(long, env = "PERISCOPE_SPAN_METRICS_DIMENSIONS", value_delimiter = ',',
          default_value = "http.method,http.target,http.status_code,service.version")]
    pub span_metrics_dimensions: Vec<String>,

    /// Spans waiting for export before new ones are dropped (and counted).
    #[arg(long, env = "PERISCOPE_EXPORT_QUEUE_SIZE", default_value_t = 8192)]
    pub export_queue_size: usize,

    /// Milliseconds between scans for new processes to watch.
    #[arg(long, env = "PERISCOPE_DISCOVERY_INTERVAL", default_value_t = 500)]
    pub discovery_interval: u64,

    /// Connections tracked at once (oldest evicted beyond).
    #[arg(long, env = "PERISCOPE_MAX_CONNECTIONS", default_value_t = 65536)]
    pub max_connections: usize,

    /// Scheduling priority of the agent (-20..19; negative needs root or
    /// CAP_SYS_NICE). On a saturated host the fair scheduler may give the
    /// agent less CPU than it needs, and the kernel drops events (counted);
    /// e.g. -5 puts it ahead of the workload. 0 leaves it as started.
    #[arg(long, env = "PERISCOPE_NICE", default_value_t = 0, allow_hyphen_values = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    pub nice: i32,

    // --- trace context: linking and sampling ---
    /// Head sampler, as in the OpenTelemetry SDKs: always_on, always_off,
    /// traceidratio, parentbased_always_on (default), parentbased_always_off,
    /// parentbased_traceidratio. Metrics always count every request.
    #[arg(long, env = "OTEL_TRACES_SAMPLER", default_value = "parentbased_always_on")]
    pub traces_sampler: String,

    /// The sampler's argument (the ratio for the *traceidratio samplers).
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG")]
    pub traces_sampler_arg: Option<String>,

    /// Milliseconds a server span waits for its caller's client span when the
    /// caller is another tracked process on this host (late partners are counted).
    #[arg(long, env = "PERISCOPE_TRACE_LINK_WAIT", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub trace_link_wait: u64,

    /// Milliseconds at most that a request's finished child spans are held
    /// back until the request's trace id is known.
    #[arg(long, env = "PERISCOPE_TRACE_MAX_WAIT", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub trace_max_wait: u64,

    /// Log filter (error, warn, info, debug, or a tracing EnvFilter).
    #[arg(long, env = "PERISCOPE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Validate the configuration (flags, environment, file), print it and
    /// the host checks, then exit: 0 if the configuration is valid.
    #[arg(long)]
    pub check_config: bool,
    /// `--kubernetes*` flags and the `kubernetes:` YAML block (kubernetes/config.rs).
    #[command(flatten)]
    pub kubernetes: crate::kubernetes::KubernetesArgs,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{0}")]
    Cli(#[from] clap::Error),
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The parsed and validated configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub raw: Config,
    pub selector: Selector,
    pub old_http_semconv: bool,
    pub old_db_semconv: bool,
    pub sampler: crate::context::sampler::Sampler,
    /// `Some` when span metrics are on.
    pub span_metrics: Option<crate::metrics::SpanMetricsConfig>,
    /// `Some` when service-graph metrics are on.
    pub service_graph: Option<crate::metrics::ServiceGraphConfig>,
    pub kubernetes: crate::kubernetes::KubernetesSettings,
}

/// The Beyla variables periscope reads (feature lists), all others are named at start.
const BEYLA_FEATURE_VARS: [&str; 2] = ["BEYLA_OTEL_METRIC_FEATURES", "BEYLA_PROMETHEUS_FEATURES"];

/// Beyla's switches for trace-derived metrics: `--span-metrics=true` /
/// `--service-graph-metrics=true` when a Beyla feature list names them and
/// neither the flag nor its PERISCOPE_* variable is given. Placed as flags so
/// they beat the YAML file, as environment variables do.
fn beyla_feature_args(cli: &[OsString], get: &dyn Fn(&str) -> Option<String>) -> Vec<OsString> {
    let features: Vec<String> = BEYLA_FEATURE_VARS
        .iter()
        .filter_map(|v| get(v))
        .flat_map(|list| list.split(',').map(|f| f.trim().to_owned()).collect::<Vec<_>>())
        .collect();
    let mut out = Vec::new();
    for (flag, env, feature) in [
        ("--span-metrics", "PERISCOPE_SPAN_METRICS", "application_span"),
        ("--service-graph-metrics", "PERISCOPE_SERVICE_GRAPH_METRICS", "application_service_graph"),
    ] {
        let on_cli = cli.iter().any(|a| a.to_str().is_some_and(|a| a == flag || a.starts_with(&format!("{flag}="))));
        if !on_cli && get(env).is_none() && features.iter().any(|f| f == feature) {
            out.push(OsString::from(format!("{flag}=true")));
        }
    }
    out
}

impl Settings {
    pub fn printer(&self, has_otlp: bool) -> PrinterMode {
        self.raw.trace_printer.unwrap_or(if has_otlp { PrinterMode::Off } else { PrinterMode::Text })
    }

    /// Value of an OTEL_* variable, as given by flag, environment or file.
    pub fn otel_var(&self, name: &str) -> Option<String> {
        let c = &self.raw;
        let v = match name {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => c.otlp_endpoint.clone(),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => c.otlp_traces_endpoint.clone(),
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT" => c.otlp_metrics_endpoint.clone(),
            "OTEL_EXPORTER_OTLP_PROTOCOL" => c.otlp_protocol.clone(),
            "OTEL_EXPORTER_OTLP_HEADERS" => c.otlp_headers.clone(),
            "OTEL_METRIC_EXPORT_INTERVAL" => c.metric_export_interval.clone(),
            _ => None,
        };
        v.or_else(|| std::env::var(name).ok()).filter(|s| !s.is_empty())
    }
}

/// Environment variables periscope reads through its flags.
pub fn known_env_vars() -> Vec<String> {
    Config::command().get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect()
}

/// One line per `PERISCOPE_*` variable that is no option (a typo is otherwise
/// silently ignored) and per `BEYLA_*` variable periscope does not read.
pub fn unknown_env_vars<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let known = known_env_vars();
    let mut out = Vec::new();
    for name in names {
        if let Some(rest) = name.strip_prefix("PERISCOPE_") {
            if !known.iter().any(|k| k == name) {
                let hint = known.iter().find(|k| k.strip_prefix("PERISCOPE_").is_some_and(|k| close_enough(k, rest)));
                out.push(match hint {
                    Some(h) => format!("{name} is not a periscope option (did you mean {h}?)"),
                    None => format!("{name} is not a periscope option"),
                });
            }
        } else if let Some(rest) = name.strip_prefix("BEYLA_").filter(|_| !BEYLA_FEATURE_VARS.contains(&name)) {
            let ours = format!("PERISCOPE_{rest}");
            out.push(if known.contains(&ours) {
                format!("{name} is not read by periscope: use {ours}")
            } else {
                format!("{name} is not read by periscope (no equivalent option)")
            });
        }
    }
    out
}

/// Same length and at most two differing characters, or one character more or less.
fn close_enough(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() == b.len() {
        return a.iter().zip(b).filter(|(x, y)| x != y).count() <= 2;
    }
    let (short, long) = if a.len() < b.len() { (a, b) } else { (b, a) };
    long.len() - short.len() == 1 && (0..long.len()).any(|i| long[..i] == short[..i] && long[i + 1..] == short[i..])
}

/// Turns one YAML value into the text of a flag's value.
fn yaml_text(key: &str, v: &serde_yaml_ng::Value) -> Result<String, String> {
    use serde_yaml_ng::Value;
    Ok(match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Sequence(items) => items.iter().map(|i| yaml_text(key, i)).collect::<Result<Vec<_>, _>>()?.join(","),
        Value::Null => return Err(format!("key {key:?} has no value")),
        _ => return Err(format!("key {key:?} must be a string, number, boolean or list")),
    })
}

/// Flags from the YAML file, for options that no flag or env var sets.
fn file_args(path: &PathBuf, cli: &[OsString]) -> Result<Vec<OsString>, ConfigError> {
    let err = |message: String| ConfigError::File { path: path.clone(), message };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).map_err(|e| err(format!("not valid YAML: {e}")))?;
    let map = match doc {
        serde_yaml_ng::Value::Mapping(m) => m,
        serde_yaml_ng::Value::Null => return Ok(Vec::new()),
        _ => return Err(err("the top level must be a mapping of option: value".into())),
    };
    let cmd = Config::command();
    let mut out = Vec::new();
    for (k, v) in crate::kubernetes::config::flatten_yaml(map).map_err(err)? {
        let key = k.as_str().ok_or_else(|| err("keys must be strings".into()))?.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
            .ok_or_else(|| err(format!("unknown key {key:?}")))?;
        let flag = format!("--{key}");
        let on_cli = cli.iter().any(|a| a.to_str().is_some_and(|a| a == flag || a.starts_with(&format!("{flag}="))));
        let in_env = arg.get_env().is_some_and(|e| std::env::var_os(e).is_some());
        if on_cli || in_env {
            continue;
        }
        out.push(OsString::from(format!("{flag}={}", yaml_text(&key, &v).map_err(err)?)));
    }
    Ok(out)
}

impl Settings {
    pub fn from_args<I, T>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Self::from_args_env(args, &|name| std::env::var(name).ok())
    }

    /// `from_args` with the variables that are not clap's own read through `get`.
    fn from_args_env<I, T>(args: I, get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let extra = beyla_feature_args(&args[1.min(args.len())..], get);
        args.splice(1.min(args.len())..1.min(args.len()), extra);
        let first = Config::try_parse_from(&args)?;
        let raw = match &first.config {
            Some(path) => {
                let mut merged = vec![args.first().cloned().unwrap_or_else(|| "periscope".into())];
                merged.extend(file_args(path, &args[1.min(args.len())..])?);
                merged.extend(args.iter().skip(1).cloned());
                Config::try_parse_from(merged).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    message: e.to_string().trim().to_owned(),
                })?
            }
            None => first,
        };
        Self::validate(raw)
    }

    fn validate(raw: Config) -> Result<Self, ConfigError> {
        let open_port = raw
            .open_port
            .as_deref()
            .map(|p| p.parse::<PortSet>())
            .transpose()
            .map_err(|e| ConfigError::Invalid { key: "open-port", message: e.to_string() })?;
        let mut selector = Selector::from_parts(raw.open_port.as_deref(), &raw.exe_path, &raw.pid)
            .map_err(|e| ConfigError::Invalid { key: "exe-path", message: e.to_string() })?;
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        let kubernetes = raw
            .kubernetes
            .resolve(in_cluster, crate::discovery::host_name)
            .map_err(|e| ConfigError::Invalid { key: "kubernetes", message: e.to_string() })?;
        selector.pods = kubernetes.pod_selector.clone();
        debug_assert_eq!(open_port.is_some(), selector.open_ports.is_some());
        if selector.is_empty() {
            return Err(ConfigError::Invalid {
                key: "open-port",
                message: "nothing to watch: give --open-port, --exe-path, --pid or --kubernetes-namespace/-pod-label/-owner-name".into(),
            });
        }
        crate::spans::routes::Router::new(&raw.routes, &raw.ignored_routes, raw.route_unmatched, raw.max_routes)
            .map_err(|message| ConfigError::Invalid { key: "routes", message })?;
        if !raw.ring_buffer_size.is_power_of_two() || raw.ring_buffer_size < 4096 {
            return Err(ConfigError::Invalid {
                key: "ring-buffer-size",
                message: format!("{} is not a power of two of at least 4096", raw.ring_buffer_size),
            });
        }
        let sampler = crate::context::sampler::Sampler::parse(&raw.traces_sampler, raw.traces_sampler_arg.as_deref())
            .map_err(|e| ConfigError::Invalid { key: "traces-sampler", message: e.to_string() })?;
        let opt_in: Vec<&str> = raw.semconv_stability_opt_in.split(',').map(str::trim).collect();
        let span_metrics = match raw.span_metrics {
            Some(true) => Some(
                crate::metrics::SpanMetricsConfig::new(&raw.span_metrics_dimensions)
                    .map_err(|message| ConfigError::Invalid { key: "span-metrics-dimensions", message })?,
            ),
            _ => None,
        };
        Ok(Self {
            sampler,
            old_http_semconv: opt_in.contains(&"http/dup"),
            old_db_semconv: opt_in.contains(&"database/dup"),
            span_metrics,
            service_graph: (raw.service_graph_metrics == Some(true)).then(Default::default),
            kubernetes,
            selector,
            raw,
        })
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(s.raw.capture_size, 1024);
        assert!(!s.old_http_semconv);
        let err = Settings::from_args(["periscope", "--open-port", "70000"]).unwrap_err().to_string();
        assert!(err.contains("open-port"), "{err}");
        let err = Settings::from_args(["periscope", "--pid", "1", "--capture-size", "9000"]).unwrap_err().to_string();
        assert!(err.contains("capture-size"), "{err}");
        let err = Settings::from_args(["periscope"]).unwrap_err().to_string();
        assert!(err.contains("nothing to watch"), "{err}");
    }

    #[test]
    fn yaml_file_fills_what_flags_do_not_set() {
        let f = yaml("open_port: 8080\nroutes: [\"/users/{id}\", \"/a\"]\ncapture-size: 256\nsemconv_stability_opt_in: http/dup\n");
        let path = f.0.to_str().unwrap().to_owned();
        let s = Settings::from_args(["periscope", "--config", &path, "--capture-size", "128"]).unwrap();
        assert!(s.selector.matches_port(8080));
        assert_eq!(s.raw.routes, ["/users/{id}", "/a"]);
        assert_eq!(s.raw.capture_size, 128, "the flag beats the file");
        assert!(s.old_http_semconv);
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
                "BEYLA_OPEN_PORT is not read by periscope: use PERISCOPE_OPEN_PORT",
                "BEYLA_BPF_TRACK_REQUEST_HEADERS is not read by periscope (no equivalent option)",
            ]
        );
        assert!(known_env_vars().iter().any(|v| v == "OTEL_SEMCONV_STABILITY_OPT_IN"));
    }

    #[test]
    fn nice_takes_negative_values_within_the_kernel_range() {
        let s = Settings::from_args(["periscope", "--pid", "1", "--nice", "-5"]).unwrap();
        assert_eq!(s.raw.nice, -5);
        assert_eq!(Settings::from_args(["periscope", "--pid", "1"]).unwrap().raw.nice, 0);
        let err = Settings::from_args(["periscope", "--pid", "1", "--nice", "-30"]).unwrap_err().to_string();
        assert!(err.contains("nice"), "{err}");
    }

    #[test]
    fn sampler_comes_from_the_sdk_variables_and_bad_values_are_named() {
        let s = Settings::from_args(["periscope", "--pid", "1"]).unwrap();
        assert_eq!(s.sampler, crate::context::sampler::Sampler::default());
        let s = Settings::from_args(["periscope", "--pid", "1", "--traces-sampler", "traceidratio", "--traces-sampler-arg", "0.1"])
            .unwrap();
        assert_eq!(s.sampler, crate::context::sampler::Sampler::TraceIdRatio(0.1));
        let err = Settings::from_args(["periscope", "--pid", "1", "--traces-sampler", "sometimes"]).unwrap_err().to_string();
        assert!(err.starts_with("traces-sampler: unknown OTEL_TRACES_SAMPLER"), "{err}");
    }

    #[test]
    fn trace_metrics_are_off_by_default_and_switch_on_by_flag_yaml_or_beyla_features() {
        let none = |_: &str| None;
        let s = Settings::from_args_env(["periscope", "--pid", "1"], &none).unwrap();
        assert!(s.span_metrics.is_none() && s.service_graph.is_none());
        assert_eq!(s.raw.span_metrics_dimensions, ["http.method", "http.target", "http.status_code", "service.version"]);

        let s = Settings::from_args_env(["periscope", "--pid", "1", "--span-metrics", "--service-graph-metrics"], &none).unwrap();
        let labels: Vec<_> = s.span_metrics.unwrap().dimensions.into_iter().map(|d| d.label).collect();
        assert_eq!(labels, ["http_method", "http_target", "http_status_code", "service_version"]);
        assert!(s.service_graph.is_some());

        let s = Settings::from_args_env(
            ["periscope", "--pid", "1", "--span-metrics=true", "--span-metrics-dimensions", "db.name,k8s.pod.name"],
            &none,
        )
        .unwrap();
        let labels: Vec<_> = s.span_metrics.unwrap().dimensions.into_iter().map(|d| d.label).collect();
        assert_eq!(labels, ["db_name", "k8s_pod_name"]);
        let many = (0..17).map(|i| format!("a{i}")).collect::<Vec<_>>().join(",");
        let err = Settings::from_args_env(["periscope", "--pid", "1", "--span-metrics", "--span-metrics-dimensions", &many], &none)
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
        assert!(s.span_metrics.is_some() && s.service_graph.is_some());
        // The flag beats them.
        let s = Settings::from_args_env(["periscope", "--pid", "1", "--span-metrics=false"], &beyla).unwrap();
        assert!(s.span_metrics.is_none() && s.service_graph.is_some());
        // So does the agent's own variable.
        let ours = |name: &str| match name {
            "PERISCOPE_SPAN_METRICS" => Some("false".to_owned()),
            other => beyla(other),
        };
        let s = Settings::from_args_env(["periscope", "--pid", "1"], &ours).unwrap();
        assert!(s.span_metrics.is_none());

        trace_metrics_yaml_precedence();

        // The agent's variable (read by clap) beats the YAML file. Only this
        // test touches it, after its other assertions, so none can see it set.
        let f = yaml("pid: 1\nservice_graph_metrics: false\n");
        std::env::set_var("PERISCOPE_SERVICE_GRAPH_METRICS", "true");
        let s = Settings::from_args_env(["periscope", "--config", f.0.to_str().unwrap()], &none);
        std::env::remove_var("PERISCOPE_SERVICE_GRAPH_METRICS");
        assert!(s.unwrap().service_graph.is_some());
    }

    /// Flag and Beyla variables over the YAML file (run by the test below, so
    /// that no test sees PERISCOPE_SERVICE_GRAPH_METRICS set).
    fn trace_metrics_yaml_precedence() {
        let f = yaml("pid: 1\nspan_metrics: true\nservice-graph-metrics: false\nspan_metrics_dimensions: [http.route, db.namespace]\n");
        let path = f.0.to_str().unwrap().to_owned();
        let none = |_: &str| None;
        let s = Settings::from_args_env(["periscope", "--config", &path], &none).unwrap();
        let labels: Vec<_> = s.span_metrics.unwrap().dimensions.into_iter().map(|d| d.label).collect();
        assert_eq!(labels, ["http_route", "db_namespace"]);
        assert!(s.service_graph.is_none());
        // A flag beats the file.
        let s = Settings::from_args_env(["periscope", "--config", &path, "--span-metrics=false"], &none).unwrap();
        assert!(s.span_metrics.is_none());
        // A Beyla feature list is an environment variable: it beats the file too.
        let beyla = |name: &str| (name == "BEYLA_OTEL_METRIC_FEATURES").then(|| "application_service_graph".to_owned());
        let s = Settings::from_args_env(["periscope", "--config", &path], &beyla).unwrap();
        assert!(s.service_graph.is_some());
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
}

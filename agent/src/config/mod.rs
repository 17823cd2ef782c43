//! Configuration: command-line flags, each with an environment variable
//! (`PERISCOPE_*` or the standard `OTEL_*`; Beyla's `BEYLA_*` and OBI's
//! `OTEL_EBPF_*` as aliases, [`compat`]), and an optional YAML file, ours or
//! a Beyla/OBI one ([`beyla_yaml`]). Precedence: flag > environment (ours,
//! then aliases) > YAML file > default.
//!
//! One flag group per subsystem, each `XArgs -> resolve() -> XSettings`
//! (the shape of `kubernetes/config.rs`), all resolved and checked at
//! startup by [`Settings::from_args`]; a bad value stops startup with a
//! message naming its key.
//!
//! | group | flags | resolves into |
//! |---|---|---|
//! | [`selection`] | `--open-port`, `--exe-path`, `--pid` | [`Selector`] |
//! | [`service`] | `--service-name`, `--service-namespace`, `--host-name` | [`ServiceOptions`], [`HostName`] |
//! | [`export`] | `--otlp-*`, `--metric-export-interval`, `--trace-printer`, `--prometheus-*`, `--export-queue-size` | [`ExportSettings`] |
//! | [`capture`] | `--capture-size`, `--ring-buffer-*` | [`CaptureSettings`] |
//! | [`spans`] | `--routes` and co., `--include-query-string`, `--db-query-*`, `--semconv-stability-opt-in` | [`SpanSettings`] |
//! | [`metrics`] | `--metric-cardinality-limit`, `--span-metrics*`, `--service-graph-metrics` | [`MetricsConfig`] |
//! | [`context`] | `--traces-sampler*`, `--trace-link-wait`, `--trace-max-wait` | [`ContextSettings`] |
//! | [`agent`] | `--discovery-interval`, `--max-connections`, `--nice`, `--log-level`, `--check-config` | [`AgentSettings`] |
//! | `kubernetes` | `--kubernetes*` (`kubernetes/config.rs`) | [`KubernetesSettings`] |
use std::{ffi::OsString, path::PathBuf};

use clap::Parser;
use thiserror::Error;

pub mod agent;
mod beyla_yaml;
pub mod capture;
mod compat;
pub mod context;
mod env_names;
pub mod export;
pub mod metrics;
pub mod otlp;
pub mod selection;
pub mod service;
mod sources;
pub mod spans;

pub use agent::{AgentArgs, AgentSettings};
pub use capture::{CaptureArgs, CaptureSettings};
pub use compat::is_alias;
pub use context::{ContextArgs, ContextSettings};
pub use env_names::{known_env_vars, unknown_env_vars};
pub use export::{ExportArgs, ExportSettings, PrinterArg};
pub use metrics::MetricsArgs;
pub use otlp::OtlpConfigError;
pub use selection::SelectionArgs;
pub use service::ServiceArgs;
pub use spans::{SemconvOptIn, SemconvOptIns, SpanArgs, SpanSettings};

use crate::{
    discovery::{HostName, Selector, ServiceOptions},
    kubernetes::{KubernetesArgs, KubernetesSettings},
    metrics::MetricsConfig,
};

/// Every flag of `periscope`, by group.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "periscope",
    version,
    about = "eBPF auto-instrumentation: HTTP and SQL spans and RED metrics of unmodified processes",
    args_override_self = true
)]
pub struct Args {
    /// YAML file with any of these options (keys: flag names, `-` or `_`).
    #[arg(long, env = "PERISCOPE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Which processes to watch.
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// service.name and service.namespace.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// OTLP, the span printer, Prometheus.
    #[command(flatten)]
    pub export: ExportArgs,
    /// Bytes per syscall, the ring buffer.
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Routes, query strings, SQL text, attribute names.
    #[command(flatten)]
    pub spans: SpanArgs,
    /// Cardinality, span metrics, service graph.
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// Sampling and link waits.
    #[command(flatten)]
    pub context: ContextArgs,
    /// Logging, priority, discovery pace, `--check-config`.
    #[command(flatten)]
    pub agent: AgentArgs,
    /// `--kubernetes*` flags and the `kubernetes:` YAML block (kubernetes/config.rs).
    #[command(flatten)]
    pub kubernetes: KubernetesArgs,
}

/// Why the configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// clap's own error (unknown flag, bad number, `--help`): it prints and exits.
    #[error("{0}")]
    Cli(#[from] clap::Error),
    /// The `--config` file cannot be read, or one of its keys is wrong.
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    /// A value clap accepted but its subsystem does not; `key` is the flag name.
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
    /// A bad `OTEL_*` export value; the message names the variable.
    #[error(transparent)]
    Otlp(#[from] OtlpConfigError),
}

/// The parsed and validated configuration, one typed part per subsystem.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Which processes to watch: ports, executables, pids, pods.
    pub selector: Selector,
    /// `--open-port` as given (the selector merges the ranges), for `--check-config`.
    pub open_ports_given: Option<String>,
    /// How services are named.
    pub service: ServiceOptions,
    /// `host.name` and where it came from (the service options hold the name).
    pub host: HostName,
    /// Which sinks run: OTLP, the printer, Prometheus.
    pub export: ExportSettings,
    /// What the kernel side is loaded with.
    pub capture: CaptureSettings,
    /// The router's patterns and the span builders' options.
    pub spans: SpanSettings,
    /// What the metrics aggregator is built with.
    pub metrics: MetricsConfig,
    /// Sampling and link waits.
    pub context: ContextSettings,
    /// The agent process itself.
    pub agent: AgentSettings,
    /// Kubernetes metadata (off unless in a pod or asked for).
    pub kubernetes: KubernetesSettings,
    /// One line per Beyla/OBI variable read as an alias (or ignored for ours),
    /// and per key of a Beyla/OBI file ignored or adapted: logged at start.
    pub notes: Vec<String>,
}

impl Settings {
    /// Parses `args` (the program name first) with the process's environment
    /// and the `--config` file, and checks everything.
    pub fn from_args<I, T>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Self::from_args_env(args, &|name| std::env::var(name).ok())
    }

    /// `from_args` with the variables that are not clap's own (Beyla's
    /// feature lists, the OTLP variables that are no flag) read through `get`.
    fn from_args_env<I, T>(args: I, get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let after_name = 1.min(args.len());
        let (aliases, mut notes) = compat::alias_args(&args[after_name..], get)?;
        let (features, feature_notes) = sources::beyla_feature_args(&args[after_name..], get);
        notes.extend(feature_notes);
        // Before the command line's own flags, which come later and win.
        args.splice(after_name..after_name, aliases.into_iter().chain(features));
        let first = Args::try_parse_from(&args)?;
        let (parsed, file) = match &first.config {
            Some(path) => {
                let file = sources::file_args(path, &args[after_name..])?;
                let mut merged = vec![args.first().cloned().unwrap_or_else(|| "periscope".into())];
                merged.extend(file.args.iter().cloned());
                merged.extend(args.iter().skip(1).cloned());
                let parsed = Args::try_parse_from(merged)
                    .map_err(|e| ConfigError::File { path: path.clone(), message: e.to_string().trim().to_owned() })?;
                (parsed, file)
            }
            None => (first, sources::FileArgs::default()),
        };
        let mut settings = Self::resolve(&parsed, get)?;
        settings.service.rules = file.rules;
        notes.extend(file.notes);
        settings.notes = notes;
        Ok(settings)
    }

    /// Resolves every group, in the order their errors are reported.
    fn resolve(args: &Args, get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut selector = args.selection.resolve()?;
        let host = crate::discovery::resolve_host_name(
            args.service.host_name.as_deref(),
            args.kubernetes.node_name.as_deref(),
        );
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        let kubernetes = args
            .kubernetes
            .resolve(in_cluster, || host.name.clone())
            .map_err(|e| ConfigError::Invalid { key: "kubernetes", message: e.to_string() })?;
        selector.pods = kubernetes.pod_selector.clone();
        selection::ensure_something_to_watch(&selector)?;
        let spans = args.spans.resolve()?;
        let capture = args.capture.resolve()?;
        let context = args.context.resolve()?;
        let metrics = args.metrics.resolve()?;
        let export = args.export.resolve(get)?;
        Ok(Self {
            selector,
            open_ports_given: args.selection.open_port.clone(),
            service: args.service.resolve(&host),
            host,
            export,
            capture,
            spans,
            metrics,
            context,
            agent: args.agent.resolve(),
            kubernetes,
            notes: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests;

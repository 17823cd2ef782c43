//! Export: OTLP, the span printer, the Prometheus endpoint, the export queue.
use std::net::{IpAddr, SocketAddr};

use clap::ValueEnum;

use super::{
    otlp::{self, OtlpFlags},
    ConfigError,
};
use crate::export::{otlp::OtlpConfig, printer::PrintFormat};

/// `--trace-printer`: text, json, or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrinterArg {
    Text,
    Json,
    Off,
}

/// The export flags.
#[derive(Clone, Debug, clap::Args)]
pub struct ExportArgs {
    /// Print spans on stdout: text or json; defaults to text when no OTLP endpoint is set.
    #[arg(long, env = "PERISCOPE_TRACE_PRINTER", value_enum)]
    pub trace_printer: Option<PrinterArg>,

    /// Serve Prometheus metrics on this port (/metrics, plus /targets and /healthz).
    #[arg(long, env = "PERISCOPE_PROMETHEUS_PORT")]
    pub prometheus_port: Option<u16>,

    /// Address the Prometheus endpoint binds to.
    #[arg(long, env = "PERISCOPE_PROMETHEUS_ADDRESS", default_value = "0.0.0.0")]
    pub prometheus_address: IpAddr,

    /// Path of the Prometheus metrics (`/targets` and `/healthz` stay where they are).
    #[arg(long, env = "PERISCOPE_PROMETHEUS_PATH", default_value = "/metrics")]
    pub prometheus_path: String,

    /// OTLP endpoint for traces and metrics (http://host:4317 is gRPC, :4318 HTTP).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// OTLP endpoint for traces only, used as is.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otlp_traces_endpoint: Option<String>,

    /// OTLP endpoint for metrics only, used as is.
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

    /// Spans waiting for export before new ones are dropped (and counted).
    #[arg(long, env = "PERISCOPE_EXPORT_QUEUE_SIZE", default_value_t = 8192)]
    pub export_queue_size: usize,
}

/// The export group resolved: which sinks run, and how.
#[derive(Clone, Debug)]
pub struct ExportSettings {
    /// `None` when no OTLP endpoint is set.
    pub otlp: Option<OtlpConfig>,
    /// How spans are printed on stdout; `None`: not printed.
    pub printer: Option<PrintFormat>,
    /// Where the Prometheus endpoint listens; `None`: no endpoint.
    pub prometheus: Option<SocketAddr>,
    /// The path it serves the metrics at (`/metrics`).
    pub prometheus_path: String,
}

impl ExportArgs {
    /// Resolves and checks the OTLP options: the flags, and the `OTEL_*`
    /// variables that are no flag (per-signal protocol, headers, timeouts;
    /// batch sizes) read through `env`.
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<ExportSettings, ConfigError> {
        let flags = OtlpFlags {
            endpoint: self.otlp_endpoint.as_deref(),
            traces_endpoint: self.otlp_traces_endpoint.as_deref(),
            metrics_endpoint: self.otlp_metrics_endpoint.as_deref(),
            protocol: self.otlp_protocol.as_deref(),
            headers: self.otlp_headers.as_deref(),
            metric_export_interval: self.metric_export_interval.as_deref(),
        };
        let otlp = otlp::resolve(&flags, env)?.map(|mut c| {
            // The agent's own option, not OTEL_BSP_MAX_QUEUE_SIZE.
            c.batch.queue_capacity = self.export_queue_size;
            c
        });
        let has_traces = otlp.as_ref().is_some_and(|c| c.traces.is_some());
        let printer = match self.trace_printer {
            Some(PrinterArg::Text) => Some(PrintFormat::Text),
            Some(PrinterArg::Json) => Some(PrintFormat::Json),
            Some(PrinterArg::Off) => None,
            None => (!has_traces).then_some(PrintFormat::Text),
        };
        Ok(ExportSettings {
            otlp,
            printer,
            prometheus: self.prometheus_port.map(|port| SocketAddr::new(self.prometheus_address, port)),
            prometheus_path: prometheus_path(&self.prometheus_path)?,
        })
    }
}

/// A path of its own for the metrics: absolute, and not one of the other endpoints.
fn prometheus_path(path: &str) -> Result<String, ConfigError> {
    let invalid =
        |message: &str| ConfigError::Invalid { key: "prometheus-path", message: format!("{path:?}: {message}") };
    let path = path.trim();
    if !path.starts_with('/') || path.contains(char::is_whitespace) {
        return Err(invalid("must be an absolute path such as /metrics"));
    }
    if ["/targets", "/healthz"].contains(&path) {
        return Err(invalid("/targets and /healthz are the agent's own endpoints"));
    }
    Ok(path.to_owned())
}

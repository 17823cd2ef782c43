//! OTLP export of spans and metrics over gRPC or HTTP/protobuf.
mod config;
mod convert;
mod encode;
mod metrics;
pub mod tls;
mod traces;
mod transport;

pub use config::{
    BatchConfig, ClientIdentity, Compression, OtlpConfig, OtlpProtocol, OtlpSignal, SignalConfig, TlsFiles,
};
pub use convert::{resource, SCOPE_NAME};
pub use metrics::{snapshot_to_resource_metrics, spawn_metrics_exporter, telemetry_resource_metrics, MetricsExporter};
pub use traces::{build_request, span_to_otlp, spawn_trace_exporter, TraceQueue};
pub use transport::TransportError;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("no OTLP endpoint configured for {}", .0.as_str())]
    NotConfigured(OtlpSignal),
    #[error(transparent)]
    Transport(#[from] TransportError),
}

//! What the OTLP exporters take. Resolved from the flags and the standard
//! `OTEL_*` variables at startup, with the rest of the configuration
//! (`crate::config::otlp`).
use std::time::Duration;

/// How a signal is sent (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `grpc`
    Grpc,
    /// `http/protobuf`
    HttpProtobuf,
}

/// One of the exported signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpSignal {
    Traces,
    Metrics,
}

impl OtlpSignal {
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpSignal::Traces => "traces",
            OtlpSignal::Metrics => "metrics",
        }
    }
}

/// How request bodies are compressed (`OTEL_EXPORTER_OTLP_COMPRESSION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    /// `none` (the default)
    #[default]
    None,
    /// `gzip`: `Content-Encoding: gzip` over HTTP, `grpc-encoding: gzip` over gRPC.
    Gzip,
}

/// TLS for an `https://` endpoint: the PEM files named by
/// `OTEL_EXPORTER_OTLP_CERTIFICATE`, `_CLIENT_CERTIFICATE` and `_CLIENT_KEY`
/// (or their per-signal variants), read and checked at startup.
#[derive(Clone, Default, PartialEq)]
pub struct TlsFiles {
    /// CA certificates that sign the endpoint's certificate; `None`: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate chain and its key, for endpoints that ask for one (mTLS).
    pub client: Option<ClientIdentity>,
}

/// A client certificate chain and its private key, PEM.
#[derive(Clone, PartialEq)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsFiles {
    /// Never the key: sizes only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca_pem_bytes", &self.ca_pem.as_ref().map(Vec::len))
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

/// Where and how one signal is sent.
#[derive(Clone, Debug, PartialEq)]
pub struct SignalConfig {
    pub protocol: OtlpProtocol,
    /// Full URL: for http/protobuf the URL POSTed to; for gRPC `scheme://host:port`.
    pub endpoint: String,
    /// Extra request headers (lower-cased names).
    pub headers: Vec<(String, String)>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// `Some` for an `https://` endpoint.
    pub tls: Option<TlsFiles>,
    pub compression: Compression,
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

/// Where and how traces and metrics are exported (there is none when no
/// endpoint is set).
#[derive(Clone, Debug, PartialEq)]
pub struct OtlpConfig {
    /// `None` when only a metrics endpoint is configured.
    pub traces: Option<SignalConfig>,
    /// `None` when only a traces endpoint is configured.
    pub metrics: Option<SignalConfig>,
    /// `OTEL_METRIC_EXPORT_INTERVAL` (ms, default 60000).
    pub metric_export_interval: Duration,
    /// Trace batching and retries.
    pub batch: BatchConfig,
}

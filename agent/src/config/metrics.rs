//! Metrics: cardinality, span metrics, service graph (`--metric-cardinality-limit`,
//! `--span-metrics*`, `--service-graph-metrics`).
use crate::metrics::{MetricsConfig, ServiceGraphConfig, SpanMetricsConfig};

use super::ConfigError;

/// The metrics flags.
#[derive(Clone, Debug, clap::Args)]
pub struct MetricsArgs {
    /// Attribute sets per metric and service before folding into otel.metric.overflow.
    #[arg(long, env = "PERISCOPE_METRIC_CARDINALITY_LIMIT", default_value_t = 2000)]
    pub metric_cardinality_limit: usize,

    // Trace-derived metrics (Tempo's names): off unless set here, or unless
    // BEYLA_OTEL_METRIC_FEATURES / BEYLA_PROMETHEUS_FEATURES name them
    // (`application_span`, `application_service_graph`); see `sources::beyla_feature_args`.
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
    #[arg(
        long,
        env = "PERISCOPE_SPAN_METRICS_DIMENSIONS",
        value_delimiter = ',',
        default_value = "http.method,http.target,http.status_code,service.version"
    )]
    pub span_metrics_dimensions: Vec<String>,
}

impl MetricsArgs {
    /// Checks the span-metrics dimensions (when span metrics are on).
    pub fn resolve(&self) -> Result<MetricsConfig, ConfigError> {
        let span_metrics = match self.span_metrics {
            Some(true) => Some(
                SpanMetricsConfig::new(&self.span_metrics_dimensions)
                    .map_err(|message| ConfigError::Invalid { key: "span-metrics-dimensions", message })?,
            ),
            _ => None,
        };
        Ok(MetricsConfig {
            max_attribute_sets: self.metric_cardinality_limit,
            span_metrics,
            service_graph: (self.service_graph_metrics == Some(true)).then(ServiceGraphConfig::default),
        })
    }
}

//! Metrics: cardinality, span metrics, service graph (`--metric-cardinality-limit`,
//! `--span-metrics*`, `--service-graph-metrics`, `--duration-histogram-buckets`).
use crate::metrics::{MetricsConfig, ServiceGraphConfig, SpanMetricsConfig, DURATION_BOUNDS};

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

    /// Upper bounds (seconds, increasing) of the duration histograms' buckets,
    /// e.g. `0.0005,0.001,0.002,0.005` for services answering in microseconds
    /// (Beyla: `prometheus_export.buckets.duration_histogram`). Default: the
    /// semantic conventions' 0, 0.005, 0.01, ... 10.
    #[arg(long, env = "PERISCOPE_DURATION_HISTOGRAM_BUCKETS", value_delimiter = ',')]
    pub duration_histogram_buckets: Vec<String>,
}

/// Most bounds a duration histogram may have (each is one series per attribute set).
pub const MAX_BUCKETS: usize = 64;

/// The bounds of `--duration-histogram-buckets`: numbers, finite, at least
/// zero, strictly increasing, at most [`MAX_BUCKETS`]; none: the default.
pub fn duration_bounds(raw: &[String]) -> Result<&'static [f64], String> {
    if raw.is_empty() {
        return Ok(DURATION_BOUNDS);
    }
    if raw.len() > MAX_BUCKETS {
        return Err(format!("{} bounds; at most {MAX_BUCKETS}", raw.len()));
    }
    let mut bounds = Vec::with_capacity(raw.len());
    for r in raw {
        let b: f64 = r.trim().parse().map_err(|_| format!("{r:?} is not a number of seconds"))?;
        if !b.is_finite() || b < 0.0 {
            return Err(format!("{r:?}: bounds are finite and at least 0"));
        }
        if bounds.last().is_some_and(|last| b <= *last) {
            return Err(format!("{r:?} does not increase on the bound before it"));
        }
        bounds.push(b);
    }
    // Once per start: the histograms hold the bounds for the agent's lifetime.
    Ok(Box::leak(bounds.into_boxed_slice()))
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
            duration_bounds: duration_bounds(&self.duration_histogram_buckets)
                .map_err(|message| ConfigError::Invalid { key: "duration-histogram-buckets", message })?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(list: &str) -> Result<&'static [f64], String> {
        duration_bounds(&list.split(',').map(str::to_owned).collect::<Vec<_>>())
    }

    #[test]
    fn duration_buckets_are_increasing_seconds() {
        assert_eq!(duration_bounds(&[]).unwrap(), DURATION_BOUNDS);
        assert_eq!(bounds("0, 0.0005,0.001,1").unwrap(), [0.0, 0.0005, 0.001, 1.0]);
        assert!(bounds("0.1,0.1").unwrap_err().contains("does not increase"));
        assert!(bounds("0.2,0.1").unwrap_err().contains("does not increase"));
        assert!(bounds("-1").unwrap_err().contains("at least 0"));
        assert!(bounds("inf").unwrap_err().contains("finite"));
        assert!(bounds("5ms").unwrap_err().contains("not a number"));
        let many: Vec<String> = (0..=MAX_BUCKETS).map(|i| i.to_string()).collect();
        assert!(duration_bounds(&many).unwrap_err().contains("at most"));
    }
}

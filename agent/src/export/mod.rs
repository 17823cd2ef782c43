//! Sinks for finished spans and aggregated metrics.
pub mod otlp;
pub mod printer;
pub mod prometheus;

//! periscope: eBPF auto-instrumentation. The data path, in module order:
//! probes (kernel programs) -> capture (ring buffer events) -> connections
//! (per-socket state) -> protocols (pure parsers) -> context (span ids,
//! parents, trace ids) -> spans / metrics -> export; `pipeline` runs the
//! stages side by side (docs/architecture.md). `model` is the data they share.
pub mod capture;
pub mod config;
pub mod connections;
pub mod conntrack;
pub mod context;
pub mod discovery;
pub mod export;
pub mod kubernetes;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod preflight;
pub mod probes;
pub mod protocols;
pub mod run;
pub mod semconv;
pub mod spans;
pub mod telemetry;

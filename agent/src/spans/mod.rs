//! From protocol exchanges to finished spans: ids and W3C context, routes,
//! and the per-protocol span builders.
pub mod clock;
pub mod http;
pub mod messaging;
pub mod model;
pub mod routes;
pub mod sql;
pub mod traceparent;

pub use model::*;

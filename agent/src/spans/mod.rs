//! From protocol exchanges to finished spans: routes, the clock, and the
//! per-protocol span builders. Builders give no ids: the context layer does.
pub mod clock;
pub mod http;
pub mod messaging;
pub mod routes;
pub mod rpc;
pub mod sql;

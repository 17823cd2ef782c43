//! The data model every stage after the parsers shares: ids, W3C trace
//! context, the Resource of a watched service, and finished spans with the
//! typed signal sinks match on. No stage logic lives here.
mod span;
pub mod traceparent;

pub use span::*;
pub use traceparent::TraceParent;

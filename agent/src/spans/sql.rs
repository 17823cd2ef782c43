//! SQL calls -> CLIENT spans (SERVER when the tracked process is the
//! database): `{db.operation.name} {db.collection.name}`, sanitized text.
use std::net::SocketAddr;

use super::{
    clock::Clock,
    model::{Attr, ServiceRef, Span, SpanId, SpanKind, SpanStatus, TraceId},
};
use crate::protocols::sql::{sanitize_for, SqlCall, SqlOutcome};

#[derive(Clone, Copy, Debug)]
pub struct SqlSpanOptions {
    /// Put the sanitized statement in db.query.text (on by default).
    pub query_text: bool,
    /// Also emit db.statement, db.name, db.system, db.operation, db.sql.table.
    pub old_semconv: bool,
}

impl Default for SqlSpanOptions {
    fn default() -> Self {
        Self { query_text: true, old_semconv: false }
    }
}

pub struct SqlContext<'a> {
    pub service: &'a ServiceRef,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub server_side: bool,
}

pub fn span_name(call: &SqlCall) -> String {
    match (&call.operation, &call.collection) {
        (Some(op), Some(table)) => format!("{op} {table}"),
        (Some(op), None) => op.clone(),
        _ => "SQL".to_owned(),
    }
}

pub fn build(call: &SqlCall, ctx: &SqlContext<'_>, clock: &Clock, opts: SqlSpanOptions) -> Span {
    let system = call.system.as_str();
    let server = if ctx.server_side { ctx.local } else { ctx.remote };
    let mut attrs = Vec::with_capacity(14);
    attrs.push(Attr::new("db.system.name", system));
    if let Some(op) = &call.operation {
        attrs.push(Attr::new("db.operation.name", op.as_str()));
    }
    if let Some(table) = &call.collection {
        attrs.push(Attr::new("db.collection.name", table.as_str()));
    }
    if let Some(ns) = &call.namespace {
        attrs.push(Attr::new("db.namespace", ns.as_str()));
    }
    let text = (opts.query_text && !call.query.is_empty()).then(|| sanitize_for(call.system, &call.query));
    if let Some(text) = &text {
        attrs.push(Attr::new("db.query.text", text.as_str()));
    }
    attrs.push(Attr::new("server.address", server.ip().to_string()));
    attrs.push(Attr::new("server.port", server.port()));
    if ctx.server_side {
        attrs.push(Attr::new("client.address", ctx.remote.ip().to_string()));
    }
    let mut status = SpanStatus::Unset;
    match &call.outcome {
        SqlOutcome::Ok { rows: Some(rows) } => attrs.push(Attr::new("db.response.returned_rows", *rows as i64)),
        SqlOutcome::Ok { rows: None } => {}
        SqlOutcome::Error { code, message, .. } => {
            attrs.push(Attr::new("db.response.status_code", code.as_str()));
            attrs.push(Attr::new("error.type", code.as_str()));
            status = SpanStatus::Error(message.clone());
        }
    }
    if opts.old_semconv {
        attrs.push(Attr::new("db.system", system));
        if let Some(ns) = &call.namespace {
            attrs.push(Attr::new("db.name", ns.as_str()));
        }
        if let Some(op) = &call.operation {
            attrs.push(Attr::new("db.operation", op.as_str()));
        }
        if let Some(table) = &call.collection {
            attrs.push(Attr::new("db.sql.table", table.as_str()));
        }
        if let Some(text) = &text {
            attrs.push(Attr::new("db.statement", text.as_str()));
        }
    }
    Span {
        service: ctx.service.clone(),
        trace_id: TraceId::random(),
        span_id: SpanId::random(),
        parent_span_id: None,
        trace_flags: 1,
        trace_state: None,
        name: span_name(call),
        kind: if ctx.server_side { SpanKind::Server } else { SpanKind::Client },
        start_unix_nanos: clock.to_unix(call.start_ns),
        end_unix_nanos: clock.to_unix(call.end_ns.max(call.start_ns)),
        attributes: attrs,
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::sql::DbSystem;
    use crate::spans::model::{AttrValue, Service};
    use std::sync::Arc;

    fn call(outcome: SqlOutcome) -> SqlCall {
        SqlCall {
            system: DbSystem::Postgresql,
            query: "SELECT name FROM unicorn WHERE name = 'secret' AND id = 42".into(),
            operation: Some("SELECT".into()),
            collection: Some("unicorn".into()),
            namespace: Some("postgres".into()),
            start_ns: 100,
            end_ns: 350,
            outcome,
            prepared: false,
        }
    }

    fn svc() -> ServiceRef {
        Arc::new(Service { name: "s".into(), namespace: None, instance_id: "i".into(), attributes: vec![] })
    }

    #[test]
    fn client_span_with_sanitized_text_and_error() {
        let s = svc();
        let ctx = SqlContext {
            service: &s,
            local: "127.0.0.1:50000".parse().unwrap(),
            remote: "127.0.0.1:5432".parse().unwrap(),
            server_side: false,
        };
        let failed = SqlOutcome::Error { code: "42P01".into(), message: "relation does not exist".into(), mysql_errno: None };
        let span = build(&call(failed), &ctx, &Clock::with_offset(0), SqlSpanOptions { query_text: true, old_semconv: true });
        assert_eq!(span.name, "SELECT unicorn");
        assert_eq!(span.kind, SpanKind::Client);
        let text = span.attr("db.query.text").unwrap().to_string();
        assert!(!text.contains("secret") && !text.contains("42"), "{text}");
        assert_eq!(span.attr("db.statement").unwrap().to_string(), text);
        assert_eq!(span.attr("db.name"), Some(&AttrValue::Str("postgres".into())));
        assert_eq!(span.attr("error.type"), Some(&AttrValue::Str("42P01".into())));
        assert_eq!(span.attr("server.port"), Some(&AttrValue::Int(5432)));
        assert!(matches!(span.status, SpanStatus::Error(_)));
        assert_eq!((span.start_unix_nanos, span.end_unix_nanos), (100, 350));
        let quiet = build(&call(SqlOutcome::Ok { rows: Some(1) }), &ctx, &Clock::with_offset(0), SqlSpanOptions { query_text: false, old_semconv: false });
        assert!(quiet.attr("db.query.text").is_none() && quiet.attr("db.statement").is_none());
    }

    #[test]
    fn names_fall_back() {
        let mut c = call(SqlOutcome::Ok { rows: None });
        c.collection = None;
        assert_eq!(span_name(&c), "SELECT");
        c.operation = None;
        assert_eq!(span_name(&c), "SQL");
    }
}

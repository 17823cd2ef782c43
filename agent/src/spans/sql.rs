//! SQL calls -> CLIENT spans (SERVER when the tracked process is the
//! database): `{db.operation.name} {db.collection.name}`, sanitized text.
use crate::model::{Attr, ServiceRef, Signal, Span, SpanKind, SpanStatus};
use crate::semconv;
use std::net::SocketAddr;

use super::clock::Clock;
use crate::protocols::sql::{sanitize_for, SqlCall, SqlOutcome};

#[derive(Clone, Copy, Debug)]
pub struct SqlSpanOptions {
    /// Put the sanitized statement in db.query.text (on by default).
    pub query_text: bool,
    /// Also emit db.statement, db.name, db.system, db.operation, db.sql.table.
    pub old_semconv: bool,
    /// Keep values quoted in server error messages (off: redacted like query text).
    pub query_text_literals: bool,
}

impl Default for SqlSpanOptions {
    fn default() -> Self {
        Self { query_text: true, old_semconv: false, query_text_literals: false }
    }
}

pub struct SqlContext<'a> {
    pub service: &'a ServiceRef,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub server_side: bool,
}

/// Statement keywords accepted as db.operation.name. Anything else (a typo,
/// garbage) would mint span names and metric series at will.
const OPERATIONS: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "UPSERT",
    "REPLACE",
    "CREATE",
    "DROP",
    "ALTER",
    "TRUNCATE",
    "BEGIN",
    "START",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "SET",
    "SHOW",
    "USE",
    "CALL",
    "EXEC",
    "EXECUTE",
    "PREPARE",
    "DEALLOCATE",
    "COPY",
    "LOCK",
    "UNLOCK",
    "GRANT",
    "REVOKE",
    "EXPLAIN",
    "ANALYZE",
    "VACUUM",
    "WITH",
    "VALUES",
    "LISTEN",
    "NOTIFY",
    "UNLISTEN",
    "DECLARE",
    "FETCH",
    "CLOSE",
    "MOVE",
    "DISCARD",
    "RESET",
    "CHECKPOINT",
    "REINDEX",
    "CLUSTER",
    "COMMENT",
    "DO",
    "LOAD",
    "HANDLER",
    "DESCRIBE",
    "DESC",
    "OPTIMIZE",
    "REFRESH",
    "TABLE",
    "RENAME",
];

/// The call's operation, if it is a known statement keyword.
fn operation(call: &SqlCall) -> Option<&str> {
    call.operation.as_deref().filter(|op| OPERATIONS.contains(op))
}

pub fn span_name(call: &SqlCall) -> String {
    match (operation(call), &call.collection) {
        (Some(op), Some(table)) => format!("{op} {table}"),
        (Some(op), None) => op.to_owned(),
        _ => "SQL".to_owned(),
    }
}

pub fn build(call: &SqlCall, ctx: &SqlContext<'_>, clock: &Clock, opts: SqlSpanOptions) -> Span {
    let system = call.system.as_str();
    let server = if ctx.server_side { ctx.local } else { ctx.remote };
    let mut attrs = Vec::with_capacity(14);
    attrs.push(Attr::new(semconv::DB_SYSTEM_NAME, system));
    if let Some(op) = operation(call) {
        attrs.push(Attr::new(semconv::DB_OPERATION_NAME, op));
    }
    if let Some(table) = &call.collection {
        attrs.push(Attr::new(semconv::DB_COLLECTION_NAME, table.as_str()));
    }
    if let Some(ns) = &call.namespace {
        attrs.push(Attr::new(semconv::DB_NAMESPACE, ns.as_str()));
    }
    let text = (opts.query_text && !call.query.is_empty()).then(|| {
        if opts.query_text_literals {
            call.query.clone()
        } else {
            sanitize_for(call.system, &call.query)
        }
    });
    if let Some(text) = &text {
        attrs.push(Attr::new(semconv::DB_QUERY_TEXT, text.as_str()));
    }
    attrs.push(Attr::new(semconv::SERVER_ADDRESS, server.ip().to_string()));
    attrs.push(Attr::new(semconv::SERVER_PORT, server.port()));
    if ctx.server_side {
        attrs.push(Attr::new(semconv::CLIENT_ADDRESS, ctx.remote.ip().to_string()));
    }
    let mut status = SpanStatus::Unset;
    match &call.outcome {
        // Row counts of INSERT/UPDATE/DELETE are affected rows, not returned ones.
        SqlOutcome::Ok { rows: Some(rows) } if operation(call) == Some("SELECT") => {
            attrs.push(Attr::new(semconv::DB_RESPONSE_RETURNED_ROWS, *rows as i64));
        }
        SqlOutcome::Ok { .. } => {}
        SqlOutcome::Error { code, message, .. } => {
            attrs.push(Attr::new(semconv::DB_RESPONSE_STATUS_CODE, code.as_str()));
            attrs.push(Attr::new(semconv::ERROR_TYPE, code.as_str()));
            // Server messages quote values ("Duplicate entry 'bob'"): redact them too.
            status = SpanStatus::Error(if opts.query_text_literals {
                message.clone()
            } else {
                sanitize_for(call.system, message)
            });
        }
    }
    if opts.old_semconv {
        attrs.push(Attr::new(semconv::old::DB_SYSTEM, system));
        if let Some(ns) = &call.namespace {
            attrs.push(Attr::new(semconv::old::DB_NAME, ns.as_str()));
        }
        if let Some(op) = operation(call) {
            attrs.push(Attr::new(semconv::old::DB_OPERATION, op));
        }
        if let Some(table) = &call.collection {
            attrs.push(Attr::new(semconv::old::DB_SQL_TABLE, table.as_str()));
        }
        if let Some(text) = &text {
            attrs.push(Attr::new(semconv::old::DB_STATEMENT, text.as_str()));
        }
    }
    let kind = if ctx.server_side { SpanKind::Server } else { SpanKind::Client };
    let (start, end) = (clock.to_unix(call.start_ns), clock.to_unix(call.end_ns.max(call.start_ns)));
    Span::new(ctx.service, kind, Signal::Db, span_name(call), start, end, attrs, status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttrValue, Service};
    use crate::protocols::sql::DbSystem;
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
        let failed =
            SqlOutcome::Error { code: "42P01".into(), message: "relation does not exist".into(), mysql_errno: None };
        let span = build(
            &call(failed),
            &ctx,
            &Clock::with_offset(0),
            SqlSpanOptions { query_text: true, old_semconv: true, query_text_literals: false },
        );
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
        let quiet = build(
            &call(SqlOutcome::Ok { rows: Some(1) }),
            &ctx,
            &Clock::with_offset(0),
            SqlSpanOptions { query_text: false, ..SqlSpanOptions::default() },
        );
        assert!(quiet.attr("db.query.text").is_none() && quiet.attr("db.statement").is_none());
    }

    #[test]
    fn error_messages_are_redacted_and_garbage_operations_dropped() {
        let s = svc();
        let ctx = SqlContext {
            service: &s,
            local: "127.0.0.1:50000".parse().unwrap(),
            remote: "127.0.0.1:3306".parse().unwrap(),
            server_side: false,
        };
        let dup = SqlOutcome::Error {
            code: "23000".into(),
            message: "Duplicate entry 'bob' for key 'name'".into(),
            mysql_errno: Some(1062),
        };
        let span = build(&call(dup), &ctx, &Clock::with_offset(0), SqlSpanOptions::default());
        let SpanStatus::Error(msg) = &span.status else { panic!() };
        assert!(!msg.contains("bob") && msg.contains("Duplicate entry"), "{msg}");
        let mut typo = call(SqlOutcome::Ok { rows: Some(3) });
        typo.operation = Some("SELEC".into());
        let span = build(&typo, &ctx, &Clock::with_offset(0), SqlSpanOptions::default());
        assert_eq!(span.name, "SQL");
        assert!(span.attr("db.operation.name").is_none());
        assert!(span.attr("db.response.returned_rows").is_none());
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

//! Spans decoded from the OTLP/HTTP bodies each side posted, and what row of
//! the report each belongs to (HTTP server/client endpoint, SQL statement,
//! messaging destination).
use std::collections::BTreeMap;

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{any_value::Value, AnyValue, KeyValue},
    trace::v1::status::StatusCode,
};
use prost::Message;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    Sdk,
    Periscope,
}

/// OTLP span kinds (proto enum values).
pub const SERVER: i32 = 2;
pub const CLIENT: i32 = 3;
pub const PRODUCER: i32 = 4;
pub const CONSUMER: i32 = 5;

pub fn kind_name(kind: i32) -> &'static str {
    match kind {
        SERVER => "SERVER",
        CLIENT => "CLIENT",
        PRODUCER => "PRODUCER",
        CONSUMER => "CONSUMER",
        1 => "INTERNAL",
        _ => "UNSPECIFIED",
    }
}

#[derive(Clone, Debug)]
pub struct Span {
    pub service: String,
    pub kind: i32,
    pub name: String,
    pub trace_id: Vec<u8>,
    pub id: u64,
    pub parent: Option<u64>,
    pub start: u64,
    pub end: u64,
    pub error: bool,
    pub attrs: BTreeMap<String, String>,
    pub resource: BTreeMap<String, String>,
    /// Report row and matching key; None for spans no row describes
    /// (the SDK's INTERNAL Express spans).
    pub class: Option<Class>,
}

impl Span {
    pub fn duration_ms(&self) -> f64 {
        self.end.saturating_sub(self.start) as f64 / 1e6
    }
    fn attr(&self, keys: &[&str]) -> Option<&str> {
        keys.iter().find_map(|k| self.attrs.get(*k)).map(String::as_str)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Class {
    /// The report row: `mythical-server SERVER GET /{beast}`.
    pub group: String,
    /// Spans of the two sides may match only with equal keys (exact path,
    /// table, peer port).
    pub key: String,
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(_) => "<complex>".to_owned(),
        None => String::new(),
    }
}

fn attr_map(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect()
}

fn id64(b: &[u8]) -> Option<u64> {
    (b.len() == 8).then(|| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

/// Every span of the posted ExportTraceServiceRequest bodies; the count of
/// bodies that did not decode.
pub fn decode(bodies: &[Vec<u8>]) -> (Vec<Span>, usize) {
    let mut out = Vec::new();
    let mut bad = 0;
    for body in bodies {
        let Ok(req) = ExportTraceServiceRequest::decode(body.as_slice()) else {
            bad += 1;
            continue;
        };
        for rs in req.resource_spans {
            let resource = attr_map(&rs.resource.map(|r| r.attributes).unwrap_or_default());
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let mut span = Span {
                        service: service.clone(),
                        kind: s.kind,
                        name: s.name,
                        trace_id: s.trace_id,
                        id: id64(&s.span_id).unwrap_or(0),
                        parent: id64(&s.parent_span_id),
                        start: s.start_time_unix_nano,
                        end: s.end_time_unix_nano,
                        error: s.status.is_some_and(|st| st.code == StatusCode::Error as i32),
                        attrs: attr_map(&s.attributes),
                        resource: resource.clone(),
                        class: None,
                    };
                    span.class = classify(&span);
                    out.push(span);
                }
            }
        }
    }
    (out, bad)
}

const BEASTS: [&str; 5] = ["unicorn", "manticore", "illithid", "owlbear", "beholder"];

/// `/unicorn` -> `/{beast}`; `unicorn` -> `{beast}`.
fn fold_beast(s: &str) -> String {
    let bare = s.trim_start_matches('/');
    if BEASTS.contains(&bare) {
        format!("{}{{beast}}", &s[..s.len() - bare.len()])
    } else {
        s.to_owned()
    }
}

/// The path of a path, target or full URL, without the query.
fn url_path(v: &str) -> String {
    let rest = match v.find("://") {
        Some(i) => {
            let after = &v[i + 3..];
            after.find('/').map_or("/", |j| &after[j..])
        }
        None => v,
    };
    rest.split(['?', '#']).next().unwrap_or("/").to_owned()
}

fn url_port(v: &str) -> Option<String> {
    let after = &v[v.find("://")? + 3..];
    let host = after.split('/').next()?;
    host.rsplit_once(':').map(|(_, p)| p.to_owned())
}

/// Operation and table of a SQL text: `SELECT name from unicorn` -> (SELECT, unicorn).
pub fn sql_op_table(sql: &str) -> (String, String) {
    let words: Vec<&str> =
        sql.split(|c: char| c.is_whitespace() || c == '(' || c == ';').filter(|w| !w.is_empty()).collect();
    let op = words.first().map(|w| w.to_ascii_uppercase()).unwrap_or_default();
    let after = |kw: &str| {
        words.iter().position(|w| w.eq_ignore_ascii_case(kw)).and_then(|i| {
            words[i + 1..].iter().find(|w| !["IF", "NOT", "EXISTS"].contains(&w.to_ascii_uppercase().as_str()))
        })
    };
    let table = match op.as_str() {
        "SELECT" | "DELETE" => after("from"),
        "INSERT" => after("into"),
        "UPDATE" => words.get(1),
        "CREATE" | "DROP" | "ALTER" => after("table"),
        _ => None,
    };
    (op, table.map(|t| t.trim_matches('"').to_owned()).unwrap_or_default())
}

pub fn classify(s: &Span) -> Option<Class> {
    let svc = &s.service;
    let kind = kind_name(s.kind);
    if let Some(method) = s.attr(&["http.request.method", "http.method"]) {
        let path = url_path(s.attr(&["url.path", "http.target", "url.full", "http.url"]).unwrap_or("/"));
        let group = format!("{svc} {kind} {method} {}", fold_beast(&path));
        let key = match s.kind {
            CLIENT => {
                let port = s
                    .attr(&["server.port", "net.peer.port"])
                    .map(str::to_owned)
                    .or_else(|| s.attr(&["url.full", "http.url"]).and_then(url_port))
                    .unwrap_or_default();
                format!("{svc} {kind} {method} {path} :{port}")
            }
            _ => format!("{svc} {kind} {method} {path}"),
        };
        return Some(Class { group, key });
    }
    if s.attr(&["db.system.name", "db.system"]).is_some() {
        let (op, table) = match s.attr(&["db.query.text", "db.statement"]) {
            Some(q) => sql_op_table(q),
            None => (
                s.attr(&["db.operation.name", "db.operation"]).unwrap_or("SQL").to_owned(),
                s.attr(&["db.collection.name", "db.sql.table"]).unwrap_or("").to_owned(),
            ),
        };
        let group = format!("{svc} SQL {op} {}", fold_beast(&table));
        return Some(Class { group, key: format!("{svc} SQL {op} {table}") });
    }
    if s.kind == PRODUCER || s.kind == CONSUMER || s.attr(&["messaging.system"]).is_some() {
        // The default exchange has an empty name: the routing key is the queue.
        let dest = s
            .attr(&["messaging.rabbitmq.destination.routing_key", "messaging.rabbitmq.routing_key"])
            .filter(|d| !d.is_empty())
            .or_else(|| s.attr(&["messaging.destination.name", "messaging.destination"]).filter(|d| !d.is_empty()))
            .unwrap_or("?");
        let group = format!("{svc} {kind} amqp {dest}");
        return Some(Class { key: group.clone(), group });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(kind: i32, attrs: &[(&str, &str)]) -> Span {
        Span {
            service: "svc".into(),
            kind,
            name: String::new(),
            trace_id: vec![],
            id: 1,
            parent: None,
            start: 0,
            end: 1,
            error: false,
            attrs: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            resource: BTreeMap::new(),
            class: None,
        }
    }

    #[test]
    fn http_rows_and_keys_from_either_convention() {
        let sdk = span(SERVER, &[("http.method", "GET"), ("http.target", "/unicorn?x=1"), ("http.route", "/:beast")]);
        let p = span(SERVER, &[("http.request.method", "GET"), ("url.path", "/unicorn"), ("http.route", "/unicorn")]);
        assert_eq!(classify(&sdk), classify(&p));
        assert_eq!(classify(&p).unwrap().group, "svc SERVER GET /{beast}");
        let sdk_client = span(
            CLIENT,
            &[("http.method", "POST"), ("http.url", "http://127.0.0.1:4000/owlbear"), ("net.peer.port", "4000")],
        );
        let p_client = span(
            CLIENT,
            &[("http.request.method", "POST"), ("url.full", "http://127.0.0.1:4000/owlbear"), ("server.port", "4000")],
        );
        assert_eq!(classify(&sdk_client), classify(&p_client));
        assert_eq!(classify(&p_client).unwrap().key, "svc CLIENT POST /owlbear :4000");
    }

    #[test]
    fn sql_rows_from_the_statement() {
        assert_eq!(sql_op_table("SELECT name from unicorn"), ("SELECT".into(), "unicorn".into()));
        assert_eq!(sql_op_table("INSERT INTO owlbear(name) VALUES ($1)"), ("INSERT".into(), "owlbear".into()));
        assert_eq!(sql_op_table("DELETE FROM beholder WHERE name = $1"), ("DELETE".into(), "beholder".into()));
        assert_eq!(
            sql_op_table("CREATE TABLE IF NOT EXISTS illithid(id serial PRIMARY KEY)"),
            ("CREATE".into(), "illithid".into())
        );
        let s = span(CLIENT, &[("db.system", "postgresql"), ("db.statement", "SELECT name from unicorn")]);
        assert_eq!(classify(&s).unwrap().group, "svc SQL SELECT {beast}");
    }

    #[test]
    fn messaging_and_internal() {
        let p = span(
            PRODUCER,
            &[
                ("messaging.system", "rabbitmq"),
                ("messaging.destination", ""),
                ("messaging.rabbitmq.routing_key", "messages"),
            ],
        );
        assert_eq!(classify(&p).unwrap().group, "svc PRODUCER amqp messages");
        assert_eq!(classify(&span(1, &[("express.type", "middleware")])), None);
    }
}

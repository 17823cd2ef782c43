//! Prints spans to a writer when no OTLP endpoint is configured.
use std::io::Write;

use serde_json::{json, Map, Value};

use crate::model::{AttrValue, Span, SpanKind, SpanStatus};

/// How the [`TracePrinter`] writes a span (`--trace-printer text|json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrintFormat {
    /// One human-readable line per span.
    Text,
    /// One JSON object per line.
    Json,
}

pub struct TracePrinter {
    format: PrintFormat,
    writer: Box<dyn Write + Send>,
    warned: bool,
}

impl TracePrinter {
    pub fn new(format: PrintFormat, writer: Box<dyn Write + Send>) -> Self {
        Self { format, writer, warned: false }
    }

    /// Writes one line; write errors are logged once and otherwise ignored.
    pub fn print(&mut self, span: &Span) {
        let line = match self.format {
            PrintFormat::Text => text_line(span),
            PrintFormat::Json => json_line(span),
        };
        let res = writeln!(self.writer, "{line}").and_then(|_| self.writer.flush());
        if let Err(e) = res {
            if !self.warned {
                tracing::warn!(error = %e, "cannot print spans");
                self.warned = true;
            }
        }
    }
}

/// `2026-11-24T10:00:00.123Z` from unix nanoseconds (UTC, millisecond precision).
pub fn format_timestamp(unix_nanos: u64) -> String {
    let secs = unix_nanos / 1_000_000_000;
    let millis = (unix_nanos % 1_000_000_000) / 1_000_000;
    let days = (secs / 86_400) as i64;
    let sod = secs % 86_400;
    // Days since 1970-01-01 to a civil date (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z", sod / 3600, (sod / 60) % 60, sod % 60)
}

/// `850µs`, `12.3ms`, `1.25s`.
pub fn format_duration(nanos: u64) -> String {
    if nanos < 1_000_000 {
        format!("{}µs", nanos / 1_000)
    } else if nanos < 1_000_000_000 {
        format!("{:.1}ms", nanos as f64 / 1e6)
    } else {
        format!("{:.2}s", nanos as f64 / 1e9)
    }
}

fn kind_str(k: SpanKind) -> &'static str {
    match k {
        SpanKind::Server => "SERVER",
        SpanKind::Client => "CLIENT",
        SpanKind::Producer => "PRODUCER",
        SpanKind::Consumer => "CONSUMER",
        SpanKind::Internal => "INTERNAL",
    }
}

fn text_line(span: &Span) -> String {
    let mut s = format!(
        "{} ({}) {} {}",
        format_timestamp(span.start_unix_nanos),
        format_duration(span.end_unix_nanos.saturating_sub(span.start_unix_nanos)),
        kind_str(span.kind),
        span.name
    );
    let a = |k: &str| span.attr(k).map(ToString::to_string);
    if let Some(code) = a("http.response.status_code") {
        s.push_str(&format!(" [{code}]"));
    }
    if let SpanStatus::Error(msg) = &span.status {
        if msg.is_empty() {
            s.push_str(" ERROR");
        } else {
            s.push_str(&format!(" ERROR({msg})"));
        }
    }
    s.push_str(&format!(" service={}", span.service.name));
    if let Some(ns) = &span.service.namespace {
        s.push_str(&format!(" namespace={ns}"));
    }
    s.push_str(&format!(" trace={} span={} parent=", span.trace_id, span.span_id));
    match span.parent_span_id {
        Some(p) => s.push_str(&p.to_string()),
        None => s.push('-'),
    }
    if span.attr("http.request.method").is_some() {
        if let Some(r) = a("http.route") {
            s.push_str(&format!(" route={r}"));
        }
        if let Some(p) = a("url.path").or_else(|| a("url.full")) {
            s.push_str(&format!(" path={p}"));
        }
    }
    if let Some(sys) = a("db.system.name") {
        s.push_str(&format!(" db={sys}"));
        if let Some(q) = a("db.query.text") {
            s.push_str(&format!(" query={q:?}"));
        }
    }
    if let Some(sys) = a("messaging.system") {
        s.push_str(&format!(" messaging={sys}"));
        if let Some(d) = a("messaging.destination.name") {
            s.push_str(&format!(" destination={d}"));
        }
    }
    let peer = |addr: &str, port: &str| {
        a(addr).map(|h| match a(port) {
            Some(p) => format!("{h}:{p}"),
            None => h,
        })
    };
    if span.kind == SpanKind::Server {
        if let Some(c) = peer("client.address", "client.port") {
            s.push_str(&format!(" client={c}"));
        }
    } else if let Some(p) = peer("server.address", "server.port") {
        s.push_str(&format!(" server={p}"));
    }
    if let Some(e) = a("error.type") {
        s.push_str(&format!(" error.type={e}"));
    }
    s
}

fn json_value(v: &AttrValue) -> Value {
    match v {
        AttrValue::Str(s) => Value::String(s.clone()),
        AttrValue::Int(i) => json!(i),
        AttrValue::Bool(b) => json!(b),
        AttrValue::Double(d) => json!(d),
    }
}

fn json_line(span: &Span) -> String {
    let attributes: Map<String, Value> =
        span.attributes.iter().map(|a| (a.key.to_owned(), json_value(&a.value))).collect();
    let resource: Map<String, Value> =
        span.service.resource_attributes().map(|(k, v)| (k.to_owned(), json_value(&v))).collect();
    let (status, status_message) = match &span.status {
        SpanStatus::Unset => ("unset", Value::Null),
        SpanStatus::Error(m) => ("error", Value::String(m.clone())),
    };
    let v = json!({
        "time": format_timestamp(span.start_unix_nanos),
        "start_unix_nanos": span.start_unix_nanos,
        "end_unix_nanos": span.end_unix_nanos,
        "duration_ms": span.end_unix_nanos.saturating_sub(span.start_unix_nanos) as f64 / 1e6,
        "name": span.name,
        "kind": span.kind.otlp_name(),
        "trace_id": span.trace_id.to_string(),
        "span_id": span.span_id.to_string(),
        "parent_span_id": span.parent_span_id.map(|p| p.to_string()),
        "trace_flags": span.trace_flags,
        "trace_state": span.trace_state,
        "status": status,
        "status_message": status_message,
        "service": {
            "name": span.service.name,
            "namespace": span.service.namespace,
            "instance_id": span.service.instance_id,
        },
        "resource": resource,
        "attributes": attributes,
    });
    v.to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::model::{Attr, Service, SpanId, TraceId};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn span() -> Span {
        Span {
            service: Arc::new(Service {
                name: "frontend".into(),
                namespace: None,
                instance_id: "f-1".into(),
                attributes: vec![],
            }),
            signal: crate::model::Signal::HttpServer,
            trace_id: TraceId([0xab; 16]),
            span_id: SpanId([0x01; 8]),
            parent_span_id: Some(SpanId([0x02; 8])),
            trace_flags: 1,
            trace_state: None,
            name: "GET /users/{id}".into(),
            kind: SpanKind::Server,
            // 2026-11-24T10:00:00.123Z
            start_unix_nanos: 1_795_514_400_123_000_000,
            end_unix_nanos: 1_795_514_400_135_300_000,
            attributes: vec![
                Attr::new("http.request.method", "GET"),
                Attr::new("http.route", "/users/{id}"),
                Attr::new("http.response.status_code", 200i64),
                Attr::new("client.address", "1.2.3.4"),
            ],
            status: SpanStatus::Unset,
        }
    }

    #[test]
    fn timestamps_match_known_dates() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_timestamp(951_782_400_000_000_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_timestamp(1_795_514_400_123_456_789), "2026-11-24T10:00:00.123Z");
        assert_eq!(format_timestamp(4_107_542_399_999_000_000), "2100-02-28T23:59:59.999Z");
        assert_eq!(format_duration(850_000), "850µs");
        assert_eq!(format_duration(12_300_000), "12.3ms");
        assert_eq!(format_duration(1_250_000_000), "1.25s");
    }

    #[test]
    fn text_line_for_http_and_sql() {
        let buf = Buf::default();
        let mut p = TracePrinter::new(PrintFormat::Text, Box::new(buf.clone()));
        p.print(&span());
        let mut db = span();
        db.kind = SpanKind::Client;
        db.parent_span_id = None;
        db.name = "SELECT users".into();
        db.status = SpanStatus::Error("42P01".into());
        db.attributes = vec![
            Attr::new("db.system.name", "postgresql"),
            Attr::new("db.query.text", "SELECT * FROM users WHERE id = $1"),
            Attr::new("server.address", "db"),
            Attr::new("server.port", 5432u16),
        ];
        p.print(&db);
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            format!(
                "2026-11-24T10:00:00.123Z (12.3ms) SERVER GET /users/{{id}} [200] service=frontend trace={} span={} parent={} route=/users/{{id}} client=1.2.3.4",
                "ab".repeat(16),
                "01".repeat(8),
                "02".repeat(8)
            )
        );
        assert!(lines[1].contains(" CLIENT SELECT users ERROR(42P01) "), "{}", lines[1]);
        assert!(lines[1].contains(" parent=- "), "{}", lines[1]);
        assert!(lines[1].contains(" db=postgresql query=\"SELECT * FROM users WHERE id = $1\""), "{}", lines[1]);
        assert!(lines[1].ends_with(" server=db:5432"), "{}", lines[1]);
    }

    #[test]
    fn json_line_has_all_fields() {
        let buf = Buf::default();
        let mut p = TracePrinter::new(PrintFormat::Json, Box::new(buf.clone()));
        let mut s = span();
        s.attributes.push(Attr::new("ratio", AttrValue::Double(0.25)));
        s.attributes.push(Attr::new("cached", true));
        p.print(&s);
        p.print(&s);
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 2);
        let v: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(v["trace_id"], "ab".repeat(16));
        assert_eq!(v["parent_span_id"], "02".repeat(8));
        assert_eq!(v["kind"], "SPAN_KIND_SERVER");
        assert_eq!(v["time"], "2026-11-24T10:00:00.123Z");
        assert_eq!(v["start_unix_nanos"], 1_795_514_400_123_000_000u64);
        assert_eq!(v["duration_ms"], 12.3);
        assert_eq!(v["service"]["name"], "frontend");
        assert_eq!(v["attributes"]["http.response.status_code"], 200);
        assert_eq!(v["attributes"]["ratio"], 0.25);
        assert_eq!(v["attributes"]["cached"], true);
        assert_eq!(v["status"], "unset");
    }
}

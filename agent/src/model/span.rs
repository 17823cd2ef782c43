//! What the pipeline produces: finished spans of one service, in a form that
//! every sink (OTLP, printer, span metrics) reads without knowing the protocol.
use std::{fmt, sync::Arc};

/// A trace id (16 bytes) as W3C and OTLP carry it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TraceId(pub [u8; 16]);

/// A span id (8 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    pub fn random() -> Self {
        loop {
            let id: [u8; 16] = rand::random();
            if id != [0; 16] {
                return Self(id);
            }
        }
    }
}

impl SpanId {
    pub fn random() -> Self {
        loop {
            let id: [u8; 8] = rand::random();
            if id != [0; 8] {
                return Self(id);
            }
        }
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpanKind {
    Server,
    Client,
    Producer,
    Consumer,
    Internal,
}

impl SpanKind {
    /// The name Tempo and the lab's dashboards use (`SPAN_KIND_SERVER`, ...).
    pub fn otlp_name(self) -> &'static str {
        match self {
            SpanKind::Server => "SPAN_KIND_SERVER",
            SpanKind::Client => "SPAN_KIND_CLIENT",
            SpanKind::Producer => "SPAN_KIND_PRODUCER",
            SpanKind::Consumer => "SPAN_KIND_CONSUMER",
            SpanKind::Internal => "SPAN_KIND_INTERNAL",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SpanStatus {
    Unset,
    Error(String),
}

impl SpanStatus {
    pub fn otlp_name(&self) -> &'static str {
        match self {
            SpanStatus::Unset => "STATUS_CODE_UNSET",
            SpanStatus::Error(_) => "STATUS_CODE_ERROR",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Str(s) => f.write_str(s),
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Bool(b) => write!(f, "{b}"),
            AttrValue::Double(d) => write!(f, "{d}"),
        }
    }
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::Str(s.to_owned())
    }
}
impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(s)
    }
}
impl From<i64> for AttrValue {
    fn from(i: i64) -> Self {
        AttrValue::Int(i)
    }
}
impl From<u16> for AttrValue {
    fn from(i: u16) -> Self {
        AttrValue::Int(i64::from(i))
    }
}
impl From<bool> for AttrValue {
    fn from(b: bool) -> Self {
        AttrValue::Bool(b)
    }
}

/// One attribute. Keys are the semantic-convention names, known at compile time.
#[derive(Clone, Debug, PartialEq)]
pub struct Attr {
    pub key: &'static str,
    pub value: AttrValue,
}

impl Attr {
    pub fn new(key: &'static str, value: impl Into<AttrValue>) -> Self {
        Self { key, value: value.into() }
    }
}

/// The Resource of one watched service: what every span and metric of it
/// carries. The three `service.*` identities live in their fields only;
/// [`Service::resource_attributes`] puts them first among the rest.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// `service.name`
    pub name: String,
    /// `service.namespace`, when configured or found in the process's own env.
    pub namespace: Option<String>,
    /// `service.instance.id`: unique per process.
    pub instance_id: String,
    /// The other resource attributes, in export order (process.pid,
    /// process.executable.name, host.name, telemetry.sdk.*, k8s.*, ...).
    pub attributes: Vec<(String, AttrValue)>,
}

impl Service {
    /// Every resource attribute in export order: `service.name`,
    /// `service.namespace`, `service.instance.id`, then the others.
    pub fn resource_attributes(&self) -> impl Iterator<Item = (&str, std::borrow::Cow<'_, AttrValue>)> + '_ {
        use std::borrow::Cow;
        let own = [
            Some((crate::semconv::SERVICE_NAME, Cow::Owned(AttrValue::Str(self.name.clone())))),
            self.namespace
                .as_ref()
                .map(|ns| (crate::semconv::SERVICE_NAMESPACE, Cow::Owned(AttrValue::Str(ns.clone())))),
            Some((crate::semconv::SERVICE_INSTANCE_ID, Cow::Owned(AttrValue::Str(self.instance_id.clone())))),
        ];
        own.into_iter().flatten().chain(self.attributes.iter().map(|(k, v)| (k.as_str(), Cow::Borrowed(v))))
    }
}

pub type ServiceRef = Arc<Service>;

/// What a span is about: the sinks that treat protocols apart (metrics,
/// the service graph) match on this, never on attribute names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    HttpServer,
    HttpClient,
    /// A database call (CLIENT), or the tracked database answering (SERVER).
    Db,
    /// A message sent (PRODUCER `send`).
    MessagingSend,
    /// A delivered message handled until its settlement (CONSUMER `process`).
    MessagingProcess,
    /// A message received and never settled (CLIENT `receive`).
    MessagingReceive,
    /// A gRPC call answered (SERVER) or made (CLIENT).
    RpcServer,
    RpcClient,
    /// Anything else: no protocol metrics.
    Other,
}

impl Signal {
    /// What a builder would have said, from the kind and attributes: for
    /// tests that make spans by hand.
    #[cfg(test)]
    pub fn of_test_span(kind: SpanKind, attributes: &[Attr]) -> Signal {
        let has = |k: &str| attributes.iter().any(|a| a.key == k);
        match kind {
            SpanKind::Server if has(crate::semconv::HTTP_REQUEST_METHOD) => Signal::HttpServer,
            SpanKind::Client if has(crate::semconv::HTTP_REQUEST_METHOD) => Signal::HttpClient,
            SpanKind::Server if has(crate::semconv::RPC_SYSTEM) => Signal::RpcServer,
            SpanKind::Client if has(crate::semconv::RPC_SYSTEM) => Signal::RpcClient,
            _ if has(crate::semconv::DB_SYSTEM_NAME) => Signal::Db,
            SpanKind::Producer if has(crate::semconv::MESSAGING_SYSTEM) => Signal::MessagingSend,
            SpanKind::Consumer if has(crate::semconv::MESSAGING_SYSTEM) => Signal::MessagingProcess,
            SpanKind::Client if has(crate::semconv::MESSAGING_SYSTEM) => Signal::MessagingReceive,
            _ => Signal::Other,
        }
    }
}

/// A finished span.
#[derive(Clone, Debug)]
pub struct Span {
    pub service: ServiceRef,
    pub signal: Signal,
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// Sampled flag and the rest of the W3C trace-flags byte.
    pub trace_flags: u8,
    /// The incoming `tracestate`, kept as received.
    pub trace_state: Option<String>,
    pub name: String,
    pub kind: SpanKind,
    /// Wall-clock (unix epoch) nanoseconds.
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<Attr>,
    pub status: SpanStatus,
}

impl Span {
    /// A span as a builder makes it: no ids yet (the context layer gives
    /// them), sampled, no tracestate.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        service: &ServiceRef,
        kind: SpanKind,
        signal: Signal,
        name: String,
        start_unix_nanos: u64,
        end_unix_nanos: u64,
        attributes: Vec<Attr>,
        status: SpanStatus,
    ) -> Span {
        Span {
            service: service.clone(),
            signal,
            trace_id: TraceId::default(),
            span_id: SpanId::default(),
            parent_span_id: None,
            trace_flags: 1,
            trace_state: None,
            name,
            kind,
            start_unix_nanos,
            end_unix_nanos,
            attributes,
            status,
        }
    }

    /// A span for tests: random ids, no parent, sampled, zero-length at 0,
    /// no attributes; set the rest with struct update syntax.
    #[cfg(test)]
    pub fn for_test(service: &ServiceRef, kind: SpanKind, name: &str) -> Span {
        Span {
            service: service.clone(),
            signal: Signal::Other,
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_span_id: None,
            trace_flags: 1,
            trace_state: None,
            name: name.into(),
            kind,
            start_unix_nanos: 0,
            end_unix_nanos: 0,
            attributes: Vec::new(),
            status: SpanStatus::Unset,
        }
    }

    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes.iter().find(|a| a.key == key).map(|a| &a.value)
    }

    pub fn duration_secs(&self) -> f64 {
        self.end_unix_nanos.saturating_sub(self.start_unix_nanos) as f64 / 1e9
    }
}

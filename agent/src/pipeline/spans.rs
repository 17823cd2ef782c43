//! From outcomes to spans: each finished exchange is built into a span of
//! its service, given the identity the context layer decided (span id,
//! parent, and for a span named by the process's own traceparent, that
//! trace), shown to the metrics sinks at once and to the trace sinks once
//! its trace id is decided. Requests and deliveries that start go to the
//! link stage.
use super::{link::ServerRequest, Pipeline};
use crate::{
    capture::{CapturePolicy, Tuple},
    connections::{ConnKey, Outcome},
    context::{assembly::Stamp, GroupId, Pin, SpanCtx, Started},
    model::{Span, TraceParent},
    protocols::{
        amqp::{ConsumedMessage, Publish},
        http1::Exchange,
        http2::GrpcCall,
        sql::{DbSystem, SqlCall},
    },
    spans::{
        clock::monotonic_now,
        http::{self as http_spans, HttpContext},
        messaging::{self, MessagingContext},
        routes::Route,
        rpc as rpc_spans,
        sql::{self as sql_spans, SqlContext},
    },
    telemetry::Counter,
};

/// Gives a span its id, trace and parent from its exchange's identity
/// (`pin`: the traceparent the process wrote for it); how the group's trace
/// applies to it.
fn identify(span: &mut Span, started: &Started, pin: Option<Pin>) -> Stamp {
    span.span_id = started.ctx.span_id;
    span.parent_span_id = started.parent.map(|p| p.span_id);
    match pin {
        None => Stamp::Group,
        Some(pin) => {
            span.trace_id = pin.trace_id;
            span.trace_flags = pin.flags;
            if let Some(header_parent) = pin.header_parent {
                span.parent_span_id = Some(header_parent);
            }
            Stamp::Pinned { keep_parent: pin.header_parent.is_some() }
        }
    }
}

impl Pipeline {
    /// Everything the table produced since the last call.
    pub(super) fn flush_outcomes(&mut self) {
        // Reuse the buffer: no allocation per record on the hot path.
        let mut pending = std::mem::take(&mut self.outcomes);
        let now = monotonic_now();
        for outcome in pending.drain(..) {
            match outcome {
                Outcome::RequestStarted { key, tuple, started, stream, traceparent, tracestate } => {
                    let traceparent = traceparent.as_ref();
                    let request = ServerRequest { key, tuple, started: &started, stream, traceparent, tracestate };
                    self.linker.on_request_started(&self.table, &mut self.tracker, request, now, &self.telemetry);
                    self.finish_linked();
                }
                Outcome::Delivered { started, link, .. } => {
                    self.linker.on_delivered(&mut self.tracker, &started, link, &self.telemetry);
                }
                Outcome::Capture { key, tuple, policy } => self.set_capture_policy(key, &tuple, policy),
                Outcome::DatabaseUnknown { key, tuple, server_side } => {
                    if let Some(backend) = self.db_names.on_adopted(key, tuple, server_side, &self.telemetry) {
                        self.table.tell_database(key, &tuple, &backend.user, &backend.database);
                    }
                }
                Outcome::Published { key, tuple, started, publish } => self.on_published(key, tuple, started, &publish),
                Outcome::Consumed { key, tuple, started, message } => self.on_consumed(key, tuple, started, &message),
                Outcome::Sql { key, tuple, server_side, started, call } => {
                    self.on_sql(key, tuple, server_side, started, &call)
                }
                Outcome::Http { key, tuple, server_side, started, exchange, grpc } => {
                    self.on_http(key, tuple, server_side, started, &exchange, grpc.as_ref())
                }
            }
        }
        if self.outcomes.is_empty() {
            self.outcomes = pending;
        }
        self.ask_conntrack(now);
        self.emit_decided();
    }

    /// Tells the kernel how to capture a connection the table classified.
    fn set_capture_policy(&mut self, key: ConnKey, tuple: &Tuple, policy: CapturePolicy) {
        match self.probes.set_capture_policy(key.pid, key.fd, tuple, policy) {
            Ok(true) => {}
            Ok(false) => self.telemetry.inc(Counter::CapturePolicyFailed),
            Err(e) => {
                tracing::debug!(pid = key.pid, fd = key.fd, "cannot set the capture policy: {e}");
                self.telemetry.inc(Counter::CapturePolicyFailed);
            }
        }
    }

    fn on_sql(&mut self, key: ConnKey, tuple: Tuple, server_side: bool, started: Started, call: &SqlCall) {
        if call.namespace.is_none() && call.system == DbSystem::Postgresql {
            self.db_names.on_unnamed_span(key, &tuple, &self.telemetry);
        }
        let Some(service) = self.registry.service(key.pid) else {
            self.tracker.abandon(started.ctx.group);
            return;
        };
        let ctx = SqlContext { service, local: tuple.local, remote: tuple.remote, server_side };
        let span = sql_spans::build(call, &ctx, &self.clock, self.sql_opts);
        self.place(span, started, key, tuple, server_side, None);
    }

    fn on_http(
        &mut self,
        key: ConnKey,
        tuple: Tuple,
        server_side: bool,
        started: Started,
        exchange: &Exchange,
        grpc: Option<&GrpcCall>,
    ) {
        let Some(service) = self.registry.service(key.pid) else {
            self.tracker.abandon(started.ctx.group);
            return;
        };
        if let Some(call) = grpc {
            // gRPC: named by service and method, never routed.
            let ctx = HttpContext { service, local: tuple.local, remote: tuple.remote, server_side };
            let span = rpc_spans::build(exchange, call, &ctx, &self.clock);
            let headers = &exchange.request.headers;
            let explicit = headers.traceparent.map(|tp| (tp, headers.tracestate.clone()));
            self.place(span, started, key, tuple, server_side, explicit);
            return;
        }
        let (path, _) = http_spans::split_target(&exchange.request.target);
        // An HTTP/2 stream whose :path could not be decoded has none: no route.
        let route = if path.is_empty() { Route::None } else { self.router.route(&service.instance_id, path) };
        match route {
            Route::Ignored => {
                self.tracker.abandon(started.ctx.group);
                return;
            }
            Route::Overflow => self.telemetry.inc(Counter::RouteOverflow),
            _ => {}
        }
        let ctx = HttpContext { service, local: tuple.local, remote: tuple.remote, server_side };
        let mut span = http_spans::build(exchange, &ctx, &route, &self.clock, self.http_opts);
        let headers = &exchange.request.headers;
        if started.pin.is_some() {
            // The process named its own trace: its tracestate with it.
            span.trace_state.clone_from(&headers.tracestate);
        }
        let explicit = headers.traceparent.map(|tp| (tp, headers.tracestate.clone()));
        self.place(span, started, key, tuple, server_side, explicit);
    }

    /// PRODUCER span: a child of the request that published; remembered by
    /// the message's fingerprint, so a consumer on this host can find it.
    fn on_published(&mut self, key: ConnKey, tuple: Tuple, mut started: Started, publish: &Publish) {
        let Some(service) = self.registry.service(key.pid) else {
            self.tracker.abandon(started.ctx.group);
            return;
        };
        let ctx = MessagingContext { service, local: tuple.local, remote: tuple.remote };
        let mut span = messaging::build_publish(publish, &ctx, &self.clock);
        self.telemetry.inc(Counter::SpansProduced);
        // A traceparent the process put in the message names this span,
        // unless that id already named another one.
        let pin = publish.traceparent.map(|tp| {
            span.trace_state.clone_from(&publish.tracestate);
            let pin = self.tracker.pin(&tp);
            if pin.header_parent.is_none() {
                started.ctx.span_id = tp.parent_id;
            }
            pin
        });
        let stamp = identify(&mut span, &started, pin);
        self.linker.on_published(publish, SpanCtx { span_id: span.span_id, group: started.ctx.group });
        self.finish(started.ctx.group, span, stamp);
    }

    /// CONSUMER span: its parent is the PRODUCER span of the same message
    /// found on this host, else the one its traceparent names (both settled
    /// at the delivery).
    fn on_consumed(&mut self, key: ConnKey, tuple: Tuple, started: Started, message: &ConsumedMessage) {
        let Some(service) = self.registry.service(key.pid) else {
            self.tracker.abandon(started.ctx.group);
            return;
        };
        let ctx = MessagingContext { service, local: tuple.local, remote: tuple.remote };
        let mut span = messaging::build_consumed(message, &ctx, &self.clock);
        self.telemetry.inc(Counter::SpansProduced);
        span.span_id = started.ctx.span_id;
        span.parent_span_id =
            self.linker.take_parent(started.ctx.span_id).or(message.delivery.traceparent.map(|tp| tp.parent_id));
        self.finish(started.ctx.group, span, Stamp::Group);
    }

    /// Gives a finished HTTP or SQL span its ids and parent, and hands it to
    /// its trace group. `explicit`: the request carried a traceparent.
    fn place(
        &mut self,
        mut span: Span,
        started: Started,
        key: ConnKey,
        tuple: Tuple,
        server_side: bool,
        explicit: Option<(TraceParent, Option<String>)>,
    ) {
        self.telemetry.inc(Counter::SpansProduced);
        let group = started.ctx.group;
        if !server_side {
            let stamp = identify(&mut span, &started, started.pin);
            self.finish(group, span, stamp);
            // A server request on this host may be waiting for this
            // exchange (the server's read came first in the ring buffer: a
            // TLS write's plaintext is sent at the uretprobe, after its
            // bytes left); it is findable now, maybe not after the next few.
            self.retry_waiting_links();
            return;
        }
        span.span_id = started.ctx.span_id;
        let header_parent = explicit.as_ref().map(|(tp, _)| tp.parent_id);
        if !self.tracker.is_decided(group) && !self.linker.is_waiting(span.span_id) {
            // Its start was never announced (its head was not seen): settle now.
            let (tp, state) = explicit.map_or((None, None), |(tp, s)| (Some(tp), s));
            let (now, t) = (monotonic_now(), &self.telemetry);
            let traceparent = tp.as_ref();
            let request = ServerRequest { key, tuple, started: &started, stream: None, traceparent, tracestate: state };
            self.linker.on_request_started(&self.table, &mut self.tracker, request, now, t);
        }
        // The exact client span of a tracked caller wins over the header's
        // parent id (a header reused for two requests names only one).
        span.parent_span_id = self.linker.take_parent(span.span_id).or(header_parent);
        // Finished before its caller's request event arrived: it leaves
        // once the link is known.
        if let Some(span) = self.linker.park(span) {
            self.finish(group, span, Stamp::Group);
        }
        self.finish_linked();
    }

    /// Server spans parked until their link was known, now with their parent.
    fn finish_linked(&mut self) {
        let ready: Vec<_> = self.linker.take_ready().collect();
        for (group, span) in ready {
            self.finish(group, span, Stamp::Group);
        }
    }

    /// A span with its final span id and parent: metrics see it now, the
    /// trace sinks once its trace id is decided.
    fn finish(&mut self, group: GroupId, span: Span, stamp: Stamp) {
        self.sinks.finished(&span);
        self.tracker.finish(group, span, stamp, &self.telemetry);
    }

    /// Retries waiting links; those past their time (or all, at the end)
    /// start traces of their own.
    pub(super) fn on_links(&mut self, now: u64, all: bool) {
        self.linker.retry(&self.table, &mut self.tracker, now, all, &self.telemetry);
        self.ask_conntrack(now);
        self.finish_linked();
        self.emit_decided();
    }

    /// Retries the waiting links, before a connection closes (a caller's
    /// exchange is forgotten with its connection; its events came before
    /// its close) and once a client exchange finished (only the last few
    /// finished are kept per connection). Nothing to do, and nothing done,
    /// when no link waits.
    pub(super) fn retry_waiting_links(&mut self) {
        if self.linker.has_waits() {
            self.linker.retry(&self.table, &mut self.tracker, monotonic_now(), false, &self.telemetry);
            self.finish_linked();
        }
    }

    /// Spans whose trace is decided go to the trace sinks.
    fn emit_decided(&mut self) {
        let decided = self.tracker.decided();
        if !decided.is_empty() {
            self.sinks.decided(decided);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::GroupId;
    use crate::model::{Service, SpanId, SpanKind, TraceId};
    use std::sync::Arc;

    fn started(span: u8, parent: Option<u8>, pin: Option<Pin>) -> Started {
        let ctx = |b: u8, group: GroupId| SpanCtx { span_id: SpanId([b; 8]), group };
        Started { ctx: ctx(span, 1), parent: parent.map(|p| ctx(p, 1)), ts_enter: 0, ts_exit: 0, pin }
    }

    fn span() -> Span {
        let s = Arc::new(Service { name: "s".into(), namespace: None, instance_id: "i".into(), attributes: vec![] });
        Span::for_test(&s, SpanKind::Client, "GET")
    }

    #[test]
    fn a_span_takes_its_exchanges_identity_and_a_pinned_one_its_headers_trace() {
        let mut s = span();
        assert_eq!(identify(&mut s, &started(1, Some(2), None), None), Stamp::Group);
        assert_eq!((s.span_id, s.parent_span_id), (SpanId([1; 8]), Some(SpanId([2; 8]))));

        // The process wrote a traceparent naming this span (its first use).
        let pin = Pin { trace_id: TraceId([7; 16]), flags: 0, header_parent: None };
        let mut s = span();
        assert_eq!(identify(&mut s, &started(3, Some(2), Some(pin)), Some(pin)), Stamp::Pinned { keep_parent: false });
        assert_eq!((s.trace_id, s.trace_flags, s.parent_span_id), (TraceId([7; 16]), 0, Some(SpanId([2; 8]))));

        // The same header written again: an id of its own, the header's parent.
        let reused = Pin { header_parent: Some(SpanId([9; 8])), ..pin };
        let mut s = span();
        assert_eq!(
            identify(&mut s, &started(4, Some(2), Some(reused)), Some(reused)),
            Stamp::Pinned { keep_parent: true }
        );
        assert_eq!((s.span_id, s.parent_span_id), (SpanId([4; 8]), Some(SpanId([9; 8]))));
    }
}

//! Settles the trace link of each request and delivery as soon as it
//! starts: the request's own traceparent, else the tracked caller on this
//! host (the same connection seen from the other end), else the PRODUCER
//! span of the same message published on this host, else nothing. The
//! remote parent found is kept for the span the exchange becomes.
use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::{
    capture::Tuple,
    connections::{ConnectionTable, DeliveryLink},
    context::{
        assembly::{Explicit, Link},
        GroupId, SpanCtx, Started, Tracker,
    },
    model::{Span, SpanId, TraceParent},
    protocols::amqp::Publish,
    telemetry::{Counter, Telemetry},
};

/// What is known of recently published messages, by body fingerprint, for
/// deliveries that carry no traceparent (both ends on this host). `T` is
/// the publish span's context (the pipeline keeps span id and trace group).
/// Bounded: the oldest entry goes first.
#[derive(Debug)]
struct PublishContexts<T> {
    map: FxHashMap<u64, T>,
    order: VecDeque<u64>,
    cap: usize,
}

impl<T> PublishContexts<T> {
    fn new(cap: usize) -> Self {
        PublishContexts { map: FxHashMap::default(), order: VecDeque::new(), cap: cap.max(1) }
    }

    /// Remembers the context of a publish.
    fn remember(&mut self, p: &Publish, ctx: T) {
        let Some(fp) = p.fingerprint else { return };
        if self.map.insert(fp, ctx).is_none() {
            self.order.push_back(fp);
        }
        // Taken entries stay in `order` until they come up: no scan per take.
        while self.map.len() > self.cap || self.order.len() > 2 * self.cap {
            let Some(old) = self.order.pop_front() else { break };
            self.map.remove(&old);
        }
    }

    /// The context of the publish whose message has this fingerprint (once).
    fn take_fingerprint(&mut self, fingerprint: u64) -> Option<T> {
        self.map.remove(&fingerprint)
    }
}

/// Server requests waiting for their tracked caller's request event at once.
const MAX_WAITS: usize = 4096;
/// Remote parents kept for spans not finished yet (a request stuck behind a
/// queue for a minute keeps its parent; beyond, the oldest are forgotten).
const MAX_PARENTS: usize = 65_536;
/// Publishes remembered for consumers on this host.
const MAX_PUBLISHES: usize = 8192;

/// A server request whose caller is a tracked process on this host, whose
/// request event has not arrived yet (the ring buffer has no order across
/// CPUs).
#[derive(Debug)]
struct Wait {
    span: SpanId,
    group: GroupId,
    tuple: Tuple,
    request_start: u64,
    /// The request named its trace itself: only its exact parent is looked for.
    explicit: bool,
    due: u64,
    /// The request's span, when it finished before its link was known: it
    /// leaves with its parent once the wait is over.
    parked: Option<Span>,
}

#[derive(Debug)]
pub struct Linker {
    waits: VecDeque<Wait>,
    wait_ns: u64,
    parents: FxHashMap<SpanId, SpanId>,
    parent_order: VecDeque<SpanId>,
    published: PublishContexts<SpanCtx>,
    /// Parked spans whose wait is over, with their parent: for the pipeline
    /// to finish (`take_ready`).
    ready: Vec<(GroupId, Span)>,
}

pub fn explicit(tp: &TraceParent, trace_state: Option<String>) -> Explicit {
    Explicit { trace_id: tp.trace_id, sampled: tp.sampled(), trace_state }
}

impl Linker {
    pub fn new(wait_ns: u64) -> Self {
        Self {
            waits: VecDeque::new(),
            wait_ns,
            parents: FxHashMap::default(),
            parent_order: VecDeque::new(),
            published: PublishContexts::new(MAX_PUBLISHES),
            ready: Vec::new(),
        }
    }

    /// A server span finished while its request still waits for its
    /// caller: it is kept until the wait is over (given back when no wait
    /// is under way).
    pub fn park(&mut self, span: Span) -> Option<Span> {
        match self.waits.iter_mut().find(|w| w.span == span.span_id) {
            Some(w) => {
                w.parked = Some(span);
                None
            }
            None => Some(span),
        }
    }

    /// Parked spans whose wait is over, with their parent set.
    pub fn take_ready(&mut self) -> std::vec::Drain<'_, (GroupId, Span)> {
        self.ready.drain(..)
    }

    /// A wait is over with `parent` (None: no link): its parked span is ready.
    fn release(&mut self, wait: &mut Wait, parent: Option<SpanId>) {
        if let Some(mut span) = wait.parked.take() {
            if parent.is_some() {
                span.parent_span_id = parent;
            }
            self.ready.push((wait.group, span));
        }
    }

    /// The remote parent found for the span `span` (once).
    pub fn take_parent(&mut self, span: SpanId) -> Option<SpanId> {
        self.parents.remove(&span)
    }

    fn keep_parent(&mut self, span: SpanId, parent: SpanId) {
        if self.parents.len() >= MAX_PARENTS {
            while let Some(old) = self.parent_order.pop_front() {
                if self.parents.remove(&old).is_some() {
                    break;
                }
            }
        }
        self.parents.insert(span, parent);
        self.parent_order.push_back(span);
        if self.parent_order.len() > 2 * self.parents.len() + 64 {
            let parents = &self.parents;
            self.parent_order.retain(|id| parents.contains_key(id));
        }
    }

    /// Whether a server request is still waiting for its caller.
    pub fn is_waiting(&self, span: SpanId) -> bool {
        self.waits.iter().any(|w| w.span == span)
    }

    /// A server request began: settles its trace now, or waits (briefly) for
    /// its tracked caller's request event.
    #[allow(clippy::too_many_arguments)]
    pub fn on_request_started(
        &mut self,
        table: &ConnectionTable,
        ctx: &mut Tracker,
        started: &Started,
        tuple: Tuple,
        traceparent: Option<&TraceParent>,
        tracestate: Option<String>,
        now: u64,
        t: &Telemetry,
    ) {
        let group = started.ctx.group;
        let explicit_link = traceparent.is_some();
        if let Some(tp) = traceparent {
            // The caller said who it is: that wins over anything inferred.
            ctx.settle(group, Link::Explicit(explicit(tp, tracestate)), t);
        }
        let wait = Wait {
            span: started.ctx.span_id,
            group,
            tuple,
            request_start: started.ts_exit,
            explicit: explicit_link,
            due: now + self.wait_ns,
            parked: None,
        };
        if let Some(wait) = self.try_link(table, ctx, wait, t) {
            if self.wait_ns == 0 || self.waits.len() >= MAX_WAITS {
                self.give_up(ctx, wait, t);
            } else {
                self.waits.push_back(wait);
            }
        }
    }

    /// Links to the caller's client exchange when the caller is a tracked
    /// process on this host; hands the wait back when the caller is tracked
    /// but its request has not been seen yet.
    fn try_link(&mut self, table: &ConnectionTable, ctx: &mut Tracker, mut wait: Wait, t: &Telemetry) -> Option<Wait> {
        let caller = match table.peer(&wait.tuple) {
            // An untracked caller: nothing to wait for.
            None => None,
            Some((_, conn)) => match conn.trace.in_flight_at(wait.request_start) {
                Some(ctx) => Some(ctx),
                None => return Some(wait),
            },
        };
        match caller {
            Some(caller) => {
                if wait.parked.is_some() {
                    self.release(&mut wait, Some(caller.span_id));
                } else {
                    self.keep_parent(wait.span, caller.span_id);
                }
                if !wait.explicit {
                    ctx.settle(wait.group, Link::Caller(caller.group), t);
                }
                t.inc(Counter::SpansLinked);
            }
            None => {
                self.release(&mut wait, None);
                if !wait.explicit {
                    ctx.settle(wait.group, Link::None, t);
                }
            }
        }
        None
    }

    fn give_up(&mut self, ctx: &mut Tracker, mut wait: Wait, t: &Telemetry) {
        t.inc(Counter::LinkPartnerLate);
        self.release(&mut wait, None);
        if !wait.explicit {
            ctx.settle(wait.group, Link::None, t);
        }
    }

    /// Retries waiting links; those past their time (or all, at the end)
    /// start traces of their own.
    pub fn retry(&mut self, table: &ConnectionTable, ctx: &mut Tracker, now: u64, all: bool, t: &Telemetry) {
        for _ in 0..self.waits.len() {
            let Some(wait) = self.waits.pop_front() else { break };
            let Some(wait) = self.try_link(table, ctx, wait, t) else { continue };
            if all || wait.due <= now {
                self.give_up(ctx, wait, t);
            } else {
                self.waits.push_back(wait);
            }
        }
    }

    /// A PRODUCER span's message, remembered for a consumer on this host.
    pub fn on_published(&mut self, publish: &Publish, ctx: SpanCtx) {
        self.published.remember(publish, ctx);
    }

    /// A message was delivered: its CONSUMER span's trace is the message's
    /// traceparent, else the PRODUCER span of the same message published on
    /// this host, else its own.
    pub fn on_delivered(&mut self, ctx: &mut Tracker, started: &Started, link: DeliveryLink, t: &Telemetry) {
        let group = started.ctx.group;
        if let Some(tp) = &link.traceparent {
            ctx.settle(group, Link::Explicit(explicit(tp, link.tracestate)), t);
            return;
        }
        match link.fingerprint.and_then(|fp| self.published.take_fingerprint(fp)) {
            Some(producer) => {
                self.keep_parent(started.ctx.span_id, producer.span_id);
                ctx.settle(group, Link::Caller(producer.group), t);
                t.inc(Counter::SpansLinked);
            }
            None => ctx.settle(group, Link::None, t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Role;
    use crate::connections::{ConnKey, Outcome};
    use crate::context::{assembly::AssemblyOptions, sampler::Sampler, Assembler, ThreadKey};
    use crate::model::{Service, SpanKind};
    use crate::protocols::{Chunk, Direction};

    const REQ: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";

    fn chunk(direction: Direction, data: &[u8], ts: u64) -> Chunk<'_> {
        Chunk { direction, data, total: data.len(), ts_enter: ts, ts_exit: ts + 1 }
    }

    #[test]
    fn a_delivery_finds_the_publish_of_the_same_message_once() {
        let mut contexts = PublishContexts::new(2);
        let publish = |fp: u64| Publish {
            channel: 1,
            exchange: String::new(),
            routing_key: "batch".into(),
            mandatory: false,
            body_size: 3,
            traceparent: None,
            tracestate: None,
            message_id: None,
            correlation_id: None,
            fingerprint: Some(fp),
            confirm_seq: None,
            ts_start: 1,
            ts_end: 2,
        };
        for fp in [10, 20, 30] {
            contexts.remember(&publish(fp), fp * 2);
        }
        assert_eq!(contexts.take_fingerprint(10), None, "bounded: the oldest went first");
        assert_eq!(contexts.take_fingerprint(20), Some(40));
        assert_eq!(contexts.take_fingerprint(20), None, "matched once");
        assert_eq!(contexts.take_fingerprint(30), Some(60));
    }

    #[test]
    fn a_server_span_done_before_its_callers_request_was_seen_leaves_with_that_parent() {
        let t = Telemetry::default();
        let mut table = ConnectionTable::new(16);
        let mut tracker = Tracker::new(Assembler::new(AssemblyOptions::default(), Sampler::default()), 16);
        let mut linker = Linker::new(1_000_000_000);
        let mut out = Vec::new();
        let server_tuple =
            Tuple { local: "127.0.0.1:80".parse().unwrap(), remote: "127.0.0.1:1000".parse().unwrap(), netns: 1 };
        let (server, client) = (ConnKey { pid: 2, fd: 5 }, ConnKey { pid: 1, fd: 7 });
        let th = |pid| ThreadKey { pid, tid: pid, loop_seq: 0 };
        // The caller's connect is known, its request event not yet (it comes late).
        table.open(client, server_tuple.reversed(), Role::Client, th(1), 10, &mut tracker, &mut out, &t);
        table.data(
            server,
            server_tuple,
            Role::Server,
            th(2),
            &chunk(Direction::Ingress, REQ, 100),
            &mut tracker,
            &mut out,
            &t,
        );
        let Some(Outcome::RequestStarted { started, .. }) = out.pop() else { panic!("{out:?}") };
        linker.on_request_started(&table, &mut tracker, &started, server_tuple, None, None, 100, &t);
        assert!(linker.is_waiting(started.ctx.span_id));
        // The server span finished: parked, not lost, not parentless.
        let service = std::sync::Arc::new(Service {
            name: "s".into(),
            namespace: None,
            instance_id: "i".into(),
            attributes: vec![],
        });
        let span = Span { span_id: started.ctx.span_id, ..Span::for_test(&service, SpanKind::Server, "GET") };
        assert!(linker.park(span).is_none());
        // The caller's write (it started before the server's read) arrives.
        table.data(
            client,
            server_tuple.reversed(),
            Role::Client,
            th(1),
            &chunk(Direction::Egress, REQ, 90),
            &mut tracker,
            &mut out,
            &t,
        );
        let caller = table.peer(&server_tuple).unwrap().1.trace.in_flight_at(101).unwrap();
        linker.retry(&table, &mut tracker, 200, false, &t);
        let ready: Vec<_> = linker.take_ready().collect();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].1.parent_span_id, Some(caller.span_id));
        assert!(tracker.is_decided(started.ctx.group), "joined to the caller's (decided) trace");
        assert_eq!(t.get(Counter::SpansLinked), 1);
    }
}

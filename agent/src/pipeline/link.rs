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
        Assembler, GroupId, SpanCtx, Started,
    },
    protocols::amqp::Publish,
    spans::{messaging::PublishContexts, traceparent::TraceParent, SpanId},
    telemetry::{Counter, Telemetry},
};

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
}

#[derive(Debug)]
pub struct Linker {
    waits: VecDeque<Wait>,
    wait_ns: u64,
    parents: FxHashMap<SpanId, SpanId>,
    parent_order: VecDeque<SpanId>,
    published: PublishContexts<SpanCtx>,
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
        asm: &mut Assembler,
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
            asm.settle(group, Link::Explicit(explicit(tp, tracestate)), t);
        }
        let wait = Wait {
            span: started.ctx.span_id,
            group,
            tuple,
            request_start: started.ts_exit,
            explicit: explicit_link,
            due: now + self.wait_ns,
        };
        if let Some(wait) = self.try_link(table, asm, wait, t) {
            if self.wait_ns == 0 || self.waits.len() >= MAX_WAITS {
                self.give_up(asm, &wait, t);
            } else {
                self.waits.push_back(wait);
            }
        }
    }

    /// Links to the caller's client exchange when the caller is a tracked
    /// process on this host; hands the wait back when the caller is tracked
    /// but its request has not been seen yet.
    fn try_link(&mut self, table: &ConnectionTable, asm: &mut Assembler, wait: Wait, t: &Telemetry) -> Option<Wait> {
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
                self.keep_parent(wait.span, caller.span_id);
                if !wait.explicit {
                    asm.settle(wait.group, Link::Caller(caller.group), t);
                }
                t.inc(Counter::SpansLinked);
            }
            None if !wait.explicit => asm.settle(wait.group, Link::None, t),
            None => {}
        }
        None
    }

    fn give_up(&mut self, asm: &mut Assembler, wait: &Wait, t: &Telemetry) {
        t.inc(Counter::LinkPartnerLate);
        if !wait.explicit {
            asm.settle(wait.group, Link::None, t);
        }
    }

    /// Retries waiting links; those past their time (or all, at the end)
    /// start traces of their own.
    pub fn retry(&mut self, table: &ConnectionTable, asm: &mut Assembler, now: u64, all: bool, t: &Telemetry) {
        for _ in 0..self.waits.len() {
            let Some(wait) = self.waits.pop_front() else { break };
            let Some(wait) = self.try_link(table, asm, wait, t) else { continue };
            if all || wait.due <= now {
                self.give_up(asm, &wait, t);
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
    pub fn on_delivered(&mut self, asm: &mut Assembler, started: &Started, link: DeliveryLink, t: &Telemetry) {
        let group = started.ctx.group;
        if let Some(tp) = &link.traceparent {
            asm.settle(group, Link::Explicit(explicit(tp, link.tracestate)), t);
            return;
        }
        match link.fingerprint.and_then(|fp| self.published.take_fingerprint(fp)) {
            Some(producer) => {
                self.keep_parent(started.ctx.span_id, producer.span_id);
                asm.settle(group, Link::Caller(producer.group), t);
                t.inc(Counter::SpansLinked);
            }
            None => asm.settle(group, Link::None, t),
        }
    }
}

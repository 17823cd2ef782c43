//! AMQP 0-9-1 (RabbitMQ) events -> messaging spans, following the OTel
//! messaging and RabbitMQ semantic conventions (development status, as of
//! semconv 1.3x):
//!
//! - basic.publish -> PRODUCER span `publish {destination}`,
//!   messaging.operation.name `publish`, messaging.operation.type `send`,
//!   from the start of the write of the publish method frame to the end of
//!   the write of its last body byte. Its duration is what
//!   `messaging.client.operation.duration` records.
//! - a delivery (basic.deliver or basic.get-ok) settled by the consumer ->
//!   CONSUMER span `process {destination}`, operation type `process`, from
//!   the read that completed the message to the start of the write of the
//!   basic.ack / basic.nack / basic.reject that settled it (same channel,
//!   same delivery tag, or covered by a `multiple` settle). That is the time
//!   the application held the message: `messaging.process.duration`.
//! - a delivery that is never settled by the client (no-ack consumers, or
//!   the channel/connection closed first: the broker requeues it) -> a
//!   zero-length CLIENT span `receive {destination}`, operation type
//!   `receive`. The agent saw the message arrive but nothing tells when its
//!   processing ended, so no processing time is claimed: CLIENT is the kind
//!   semconv gives `receive`, and the metrics layer records no process
//!   duration for it.
//!
//! Destination (semconv's RabbitMQ rule): on the producer side
//! `{exchange}:{routing key}`, or whichever of the two is non-empty, or
//! `amq.default`; on the consumer side `{exchange}:{routing key}:{queue}`
//! without the empty parts and with the routing key dropped when it equals
//! the queue. Server-named queues (`amq.gen-*`) and direct reply-to
//! (`amq.rabbitmq.reply-to*`) are anonymous: the span name leaves the
//! destination out (cardinality) and `messaging.destination.anonymous` is
//! set.
//!
//! Errors: a delivery settled with basic.nack or basic.reject means the
//! application did not process it: the process span gets status ERROR and
//! `error.type` `nack` / `reject` (low cardinality, as semconv asks). A
//! publish is asynchronous in AMQP 0-9-1; basic.return and channel closes
//! arrive later as their own events and do not change the publish span.
//!
//! Context: a `traceparent` in the message headers is the message's
//! creation context. The publish span takes its ids (as the HTTP client
//! span does with an outgoing traceparent: the consumer will see that span
//! id as parent), and the process/receive span uses it as parent (semconv
//! allows the creation context as parent for single-message processing;
//! our spans carry no links). Without one, [`PublishContexts`] can match a
//! delivery to a publish seen on the same host by body fingerprint.
//!
//! Spans are built for the client side of the connection (the tracked
//! process talks to the broker); the broker's own view is not modelled.
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use super::{
    clock::Clock,
    model::{Attr, ServiceRef, Span, SpanId, SpanKind, SpanStatus, TraceId},
    traceparent::TraceParent,
};
use crate::metrics::Instrument;
use crate::protocols::amqp::{Delivery, Publish, Settle, SettleOutcome};

pub const SYSTEM: &str = "rabbitmq";

/// Where the messaging happened.
#[derive(Clone, Debug)]
pub struct MessagingContext<'a> {
    pub service: &'a ServiceRef,
    pub local: SocketAddr,
    /// The broker.
    pub remote: SocketAddr,
}

/// A finished messaging span and the duration metric it feeds (the same
/// pair `metrics::measurements` derives from the span).
#[derive(Clone, Debug)]
pub struct MessagingSpan {
    pub span: Span,
    /// `messaging.client.operation.duration` for publishes,
    /// `messaging.process.duration` for settled deliveries, none for
    /// receive spans (no duration observed).
    pub metric: Option<(Instrument, f64)>,
}

fn anonymous(name: &str) -> bool {
    name.starts_with("amq.gen-") || name.starts_with("amq.rabbitmq.reply-to")
}

/// `messaging.destination.name` of a publish.
pub fn publish_destination(exchange: &str, routing_key: &str) -> String {
    match (exchange.is_empty(), routing_key.is_empty()) {
        (false, false) => format!("{exchange}:{routing_key}"),
        (false, true) => exchange.to_owned(),
        (true, false) => routing_key.to_owned(),
        (true, true) => "amq.default".to_owned(),
    }
}

/// `messaging.destination.name` of a delivery.
pub fn consume_destination(exchange: &str, routing_key: &str, queue: Option<&str>) -> String {
    let queue = queue.unwrap_or("");
    let rk = if routing_key == queue { "" } else { routing_key };
    let parts: Vec<&str> = [exchange, rk, queue].into_iter().filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        "amq.default".to_owned()
    } else {
        parts.join(":")
    }
}

fn span_name(operation: &str, destination: &str, is_anonymous: bool) -> String {
    if is_anonymous {
        operation.to_owned()
    } else {
        format!("{operation} {destination}")
    }
}

fn common_attrs(
    attrs: &mut Vec<Attr>,
    ctx: &MessagingContext<'_>,
    operation: &'static str,
    op_type: &'static str,
    destination: String,
    is_anonymous: bool,
) {
    attrs.push(Attr::new("messaging.system", SYSTEM));
    attrs.push(Attr::new("messaging.operation.name", operation));
    attrs.push(Attr::new("messaging.operation.type", op_type));
    attrs.push(Attr::new("messaging.destination.name", destination));
    if is_anonymous {
        attrs.push(Attr::new("messaging.destination.anonymous", true));
    }
    attrs.push(Attr::new("server.address", ctx.remote.ip().to_string()));
    attrs.push(Attr::new("server.port", ctx.remote.port()));
    attrs.push(Attr::new("network.peer.address", ctx.remote.ip().to_string()));
    attrs.push(Attr::new("network.peer.port", ctx.remote.port()));
    attrs.push(Attr::new("network.protocol.name", "amqp"));
    attrs.push(Attr::new("network.protocol.version", "0.9.1"));
}

fn message_attrs(
    attrs: &mut Vec<Attr>,
    routing_key: &str,
    body_size: u64,
    message_id: Option<&str>,
    correlation_id: Option<&str>,
) {
    if !routing_key.is_empty() {
        attrs.push(Attr::new("messaging.rabbitmq.destination.routing_key", routing_key));
    }
    attrs.push(Attr::new("messaging.message.body.size", i64::try_from(body_size).unwrap_or(i64::MAX)));
    if let Some(id) = message_id.filter(|s| !s.is_empty()) {
        attrs.push(Attr::new("messaging.message.id", id));
    }
    if let Some(id) = correlation_id.filter(|s| !s.is_empty()) {
        attrs.push(Attr::new("messaging.message.conversation_id", id));
    }
}

/// PRODUCER span of one publish.
pub fn build_publish(p: &Publish, ctx: &MessagingContext<'_>, clock: &Clock) -> MessagingSpan {
    let destination = publish_destination(&p.exchange, &p.routing_key);
    let is_anonymous = anonymous(&p.routing_key) || anonymous(&p.exchange);
    let mut attrs = Vec::with_capacity(16);
    let name = span_name("publish", &destination, is_anonymous);
    common_attrs(&mut attrs, ctx, "publish", "send", destination, is_anonymous);
    message_attrs(&mut attrs, &p.routing_key, p.body_size, p.message_id.as_deref(), p.correlation_id.as_deref());
    // The traceparent the message carries names the creation context the
    // consumer will see as its parent: this span takes exactly those ids.
    let tp = p.traceparent.as_deref().and_then(TraceParent::parse);
    let (trace_id, span_id, flags) = match tp {
        Some(tp) => (tp.trace_id, tp.parent_id, tp.flags),
        None => (TraceId::random(), SpanId::random(), 1),
    };
    let start = clock.to_unix(p.ts_start);
    let end = clock.to_unix(p.ts_end.max(p.ts_start));
    let span = Span {
        service: ctx.service.clone(),
        trace_id,
        span_id,
        parent_span_id: None,
        trace_flags: flags,
        trace_state: if tp.is_some() { p.tracestate.clone() } else { None },
        name,
        kind: SpanKind::Producer,
        start_unix_nanos: start,
        end_unix_nanos: end,
        attributes: attrs,
        status: SpanStatus::Unset,
    };
    let secs = span.duration_secs();
    MessagingSpan { span, metric: Some((Instrument::MessagingClientDuration, secs)) }
}

/// How a delivery ended, as far as the client's connection shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Settled by the client: start of the write of the settling method.
    Settled { ts: u64, outcome: SettleOutcome },
    /// No settlement will be seen (no-ack, or the channel or connection
    /// closed before it).
    Unsettled,
}

/// A delivery together with its settlement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedMessage {
    pub delivery: Delivery,
    pub settlement: Settlement,
}

/// What is known of recently published messages, by body fingerprint, for
/// deliveries that carry no traceparent (both ends on this host). `T` is
/// the publish span's context (the pipeline keeps span id and trace group).
/// Bounded: the oldest entry goes first.
#[derive(Debug)]
pub struct PublishContexts<T> {
    map: HashMap<u64, T>,
    order: VecDeque<u64>,
    cap: usize,
}

impl<T> PublishContexts<T> {
    pub fn new(cap: usize) -> Self {
        PublishContexts { map: HashMap::new(), order: VecDeque::new(), cap: cap.max(1) }
    }

    /// Remembers the context of a publish.
    pub fn remember(&mut self, p: &Publish, ctx: T) {
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

    /// The context of the publish this delivery most likely came from
    /// (consumed: a message is matched once).
    pub fn take(&mut self, d: &Delivery) -> Option<T> {
        self.take_fingerprint(d.fingerprint?)
    }

    /// The context of the publish whose message has this fingerprint (once).
    pub fn take_fingerprint(&mut self, fingerprint: u64) -> Option<T> {
        self.map.remove(&fingerprint)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// CONSUMER `process` span (settled) or CLIENT `receive` span (unsettled)
/// of one delivery. `fallback_parent`: a creation context found by other
/// means (fingerprint) when the message carries no valid traceparent.
pub fn build_consumed(
    m: &ConsumedMessage,
    ctx: &MessagingContext<'_>,
    clock: &Clock,
    fallback_parent: Option<TraceParent>,
) -> MessagingSpan {
    let d = &m.delivery;
    let destination = consume_destination(&d.exchange, &d.routing_key, d.queue.as_deref());
    let is_anonymous = d.queue.as_deref().is_some_and(anonymous) || anonymous(&d.routing_key);
    let (operation, kind, end_ns) = match &m.settlement {
        Settlement::Settled { ts, .. } => ("process", SpanKind::Consumer, (*ts).max(d.ts_received)),
        Settlement::Unsettled => ("receive", SpanKind::Client, d.ts_received),
    };
    let mut attrs = Vec::with_capacity(18);
    let name = span_name(operation, &destination, is_anonymous);
    common_attrs(&mut attrs, ctx, operation, operation, destination, is_anonymous);
    message_attrs(&mut attrs, &d.routing_key, d.body_size, d.message_id.as_deref(), d.correlation_id.as_deref());
    attrs.push(Attr::new("messaging.rabbitmq.message.delivery_tag", i64::try_from(d.delivery_tag).unwrap_or(i64::MAX)));
    let mut status = SpanStatus::Unset;
    if let Settlement::Settled { outcome, .. } = &m.settlement {
        let requeue = match outcome {
            SettleOutcome::Ack => None,
            SettleOutcome::Nack { requeue } | SettleOutcome::Reject { requeue } => Some(*requeue),
        };
        if let Some(requeue) = requeue {
            attrs.push(Attr::new("error.type", outcome.as_str()));
            status = SpanStatus::Error(format!("message {}ed (requeue={requeue})", outcome.as_str()));
        }
    }
    let tp = d.traceparent.as_deref().and_then(TraceParent::parse).or(fallback_parent);
    let (trace_id, parent, flags) = match tp {
        Some(tp) => (tp.trace_id, Some(tp.parent_id), tp.flags),
        None => (TraceId::random(), None, 1),
    };
    let start = clock.to_unix(d.ts_received);
    let span = Span {
        service: ctx.service.clone(),
        trace_id,
        span_id: SpanId::random(),
        parent_span_id: parent,
        trace_flags: flags,
        trace_state: if d.traceparent.as_deref().and_then(TraceParent::parse).is_some() { d.tracestate.clone() } else { None },
        name,
        kind,
        start_unix_nanos: start,
        end_unix_nanos: clock.to_unix(end_ns),
        attributes: attrs,
        status,
    };
    let secs = span.duration_secs();
    let metric = (kind == SpanKind::Consumer).then_some((Instrument::MessagingProcessDuration, secs));
    MessagingSpan { span, metric }
}

/// Deliveries awaiting settlement, per channel of one connection.
pub const MAX_PENDING_PER_CHANNEL: usize = 1024;
pub const MAX_TRACKED_CHANNELS: usize = 64;

/// Counters of a [`Deliveries`] tracker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Deliveries let go unsettled because a bound was reached.
    pub evicted: u64,
    /// Settles that matched no pending delivery.
    pub unmatched_settles: u64,
}

/// Pairs deliveries with the client's settlements on one connection.
/// Bounded per channel and in channels; whatever is let go comes out as
/// [`Settlement::Unsettled`].
#[derive(Default)]
pub struct Deliveries {
    channels: HashMap<u16, VecDeque<Delivery>>,
    stats: DeliveryStats,
}

impl Deliveries {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self) -> &DeliveryStats {
        &self.stats
    }

    pub fn pending(&self) -> usize {
        self.channels.values().map(VecDeque::len).sum()
    }

    /// A delivery was read. No-ack deliveries are finished at once.
    pub fn on_delivery(&mut self, d: Delivery, out: &mut Vec<ConsumedMessage>) {
        if d.no_ack {
            out.push(ConsumedMessage { delivery: d, settlement: Settlement::Unsettled });
            return;
        }
        if !self.channels.contains_key(&d.channel) && self.channels.len() >= MAX_TRACKED_CHANNELS {
            self.stats.evicted += 1;
            out.push(ConsumedMessage { delivery: d, settlement: Settlement::Unsettled });
            return;
        }
        let q = self.channels.entry(d.channel).or_default();
        if q.len() >= MAX_PENDING_PER_CHANNEL {
            if let Some(old) = q.pop_front() {
                self.stats.evicted += 1;
                out.push(ConsumedMessage { delivery: old, settlement: Settlement::Unsettled });
            }
        }
        q.push_back(d);
    }

    /// The client settled one delivery, or with `multiple` all up to the
    /// tag (tag 0 with `multiple`: all outstanding ones).
    pub fn on_settle(&mut self, s: &Settle, out: &mut Vec<ConsumedMessage>) {
        let Some(q) = self.channels.get_mut(&s.channel) else {
            self.stats.unmatched_settles += 1;
            return;
        };
        let settlement = Settlement::Settled { ts: s.ts, outcome: s.outcome };
        let before = out.len();
        if s.multiple {
            let all = s.delivery_tag == 0;
            let mut keep = VecDeque::with_capacity(q.len());
            for d in q.drain(..) {
                if all || d.delivery_tag <= s.delivery_tag {
                    out.push(ConsumedMessage { delivery: d, settlement: settlement.clone() });
                } else {
                    keep.push_back(d);
                }
            }
            *q = keep;
        } else if let Some(i) = q.iter().position(|d| d.delivery_tag == s.delivery_tag) {
            let d = q.remove(i).expect("index from position");
            out.push(ConsumedMessage { delivery: d, settlement });
        }
        if out.len() == before {
            self.stats.unmatched_settles += 1;
        }
        if q.is_empty() {
            self.channels.remove(&s.channel);
        }
    }

    /// The channel closed (or, with `None`, the connection): the broker
    /// requeues what was not settled.
    pub fn on_closed(&mut self, channel: Option<u16>, out: &mut Vec<ConsumedMessage>) {
        let drained: Vec<VecDeque<Delivery>> = match channel {
            Some(c) => self.channels.remove(&c).into_iter().collect(),
            None => self.channels.drain().map(|(_, q)| q).collect(),
        };
        for d in drained.into_iter().flatten() {
            out.push(ConsumedMessage { delivery: d, settlement: Settlement::Unsettled });
        }
    }
}

#[cfg(test)]
mod tests;

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
use crate::model::{Attr, ServiceRef, Signal, Span, SpanKind, SpanStatus};
use crate::semconv;
use std::net::SocketAddr;

use super::clock::Clock;
use crate::protocols::amqp::{ConsumedMessage, Publish, SettleOutcome, Settlement};

pub const SYSTEM: &str = "rabbitmq";

/// Where the messaging happened.
#[derive(Clone, Debug)]
pub struct MessagingContext<'a> {
    pub service: &'a ServiceRef,
    pub local: SocketAddr,
    /// The broker.
    pub remote: SocketAddr,
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
    attrs.push(Attr::new(semconv::MESSAGING_SYSTEM, SYSTEM));
    attrs.push(Attr::new(semconv::MESSAGING_OPERATION_NAME, operation));
    attrs.push(Attr::new(semconv::MESSAGING_OPERATION_TYPE, op_type));
    attrs.push(Attr::new(semconv::MESSAGING_DESTINATION_NAME, destination));
    if is_anonymous {
        attrs.push(Attr::new(semconv::MESSAGING_DESTINATION_ANONYMOUS, true));
    }
    attrs.push(Attr::new(semconv::SERVER_ADDRESS, ctx.remote.ip().to_string()));
    attrs.push(Attr::new(semconv::SERVER_PORT, ctx.remote.port()));
    attrs.push(Attr::new(semconv::NETWORK_PEER_ADDRESS, ctx.remote.ip().to_string()));
    attrs.push(Attr::new(semconv::NETWORK_PEER_PORT, ctx.remote.port()));
    attrs.push(Attr::new(semconv::NETWORK_PROTOCOL_NAME, "amqp"));
    attrs.push(Attr::new(semconv::NETWORK_PROTOCOL_VERSION, "0.9.1"));
}

fn message_attrs(
    attrs: &mut Vec<Attr>,
    routing_key: &str,
    body_size: u64,
    message_id: Option<&str>,
    correlation_id: Option<&str>,
) {
    if !routing_key.is_empty() {
        attrs.push(Attr::new(semconv::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY, routing_key));
    }
    attrs.push(Attr::new(semconv::MESSAGING_MESSAGE_BODY_SIZE, i64::try_from(body_size).unwrap_or(i64::MAX)));
    if let Some(id) = message_id.filter(|s| !s.is_empty()) {
        attrs.push(Attr::new(semconv::MESSAGING_MESSAGE_ID, id));
    }
    if let Some(id) = correlation_id.filter(|s| !s.is_empty()) {
        attrs.push(Attr::new(semconv::MESSAGING_MESSAGE_CONVERSATION_ID, id));
    }
}

/// PRODUCER span of one publish.
pub fn build_publish(p: &Publish, ctx: &MessagingContext<'_>, clock: &Clock) -> Span {
    let destination = publish_destination(&p.exchange, &p.routing_key);
    let is_anonymous = anonymous(&p.routing_key) || anonymous(&p.exchange);
    let mut attrs = Vec::with_capacity(16);
    let name = span_name("publish", &destination, is_anonymous);
    common_attrs(&mut attrs, ctx, "publish", "send", destination, is_anonymous);
    message_attrs(&mut attrs, &p.routing_key, p.body_size, p.message_id.as_deref(), p.correlation_id.as_deref());
    let (start, end) = (clock.to_unix(p.ts_start), clock.to_unix(p.ts_end.max(p.ts_start)));
    Span::new(ctx.service, SpanKind::Producer, Signal::MessagingSend, name, start, end, attrs, SpanStatus::Unset)
}

/// CONSUMER `process` span (settled) or CLIENT `receive` span (unsettled)
/// of one delivery (its parent, the message's creation context, is the
/// context layer's).
pub fn build_consumed(m: &ConsumedMessage, ctx: &MessagingContext<'_>, clock: &Clock) -> Span {
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
    attrs.push(Attr::new(
        semconv::MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG,
        i64::try_from(d.delivery_tag).unwrap_or(i64::MAX),
    ));
    let mut status = SpanStatus::Unset;
    if let Settlement::Settled { outcome, .. } = &m.settlement {
        let requeue = match outcome {
            SettleOutcome::Ack => None,
            SettleOutcome::Nack { requeue } | SettleOutcome::Reject { requeue } => Some(*requeue),
        };
        if let Some(requeue) = requeue {
            attrs.push(Attr::new(semconv::ERROR_TYPE, outcome.as_str()));
            status = SpanStatus::Error(format!("message {}ed (requeue={requeue})", outcome.as_str()));
        }
    }
    let signal = if kind == SpanKind::Consumer { Signal::MessagingProcess } else { Signal::MessagingReceive };
    Span::new(ctx.service, kind, signal, name, clock.to_unix(d.ts_received), clock.to_unix(end_ns), attrs, status)
}

#[cfg(test)]
mod tests;

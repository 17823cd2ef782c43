//! Spans from the recorded amqplib <-> RabbitMQ conversations of
//! `protocols/amqp/fixtures` (see protocols/amqp/tests.rs for what they
//! contain), parsed by the real session parser.
use std::sync::Arc;

use super::*;
use crate::metrics::{measurements, Instrument};
use crate::model::{AttrValue, Service};
use crate::protocols::amqp::{AmqpEvent, AmqpSession, ConsumedMessage, Deliveries, DeliveryStats, Side};
use crate::protocols::{Chunk, Direction};

const PRODUCER: &[u8] = include_bytes!("../../protocols/amqp/fixtures/producer.bin");
const CONSUMER: &[u8] = include_bytes!("../../protocols/amqp/fixtures/consumer.bin");

fn events(file: &[u8]) -> Vec<AmqpEvent> {
    let mut s = AmqpSession::new(Side::Client);
    let mut out = Vec::new();
    let (mut i, mut ts) = (0, 1_000_000u64);
    while i < file.len() {
        let direction = if file[i] == 1 { Direction::Egress } else { Direction::Ingress };
        let n = u32::from_le_bytes(file[i + 1..i + 5].try_into().unwrap()) as usize;
        let data = &file[i + 5..i + 5 + n];
        s.on_chunk(&Chunk { direction, data, total: n, ts_enter: ts, ts_exit: ts + 400 }, &mut out);
        i += 5 + n;
        ts += 1_000_000; // 1 ms between records
    }
    out
}

fn svc() -> ServiceRef {
    Arc::new(Service { name: "shop".into(), namespace: None, instance_id: "i".into(), attributes: vec![] })
}

fn ctx(s: &ServiceRef) -> MessagingContext<'_> {
    MessagingContext {
        service: s,
        local: "127.0.0.1:40000".parse().unwrap(),
        remote: "127.0.0.1:5672".parse().unwrap(),
    }
}

fn str_attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match span.attr(key) {
        Some(AttrValue::Str(s)) => Some(s),
        _ => None,
    }
}

fn int_attr(span: &Span, key: &str) -> Option<i64> {
    match span.attr(key) {
        Some(AttrValue::Int(i)) => Some(*i),
        _ => None,
    }
}

fn publish_spans(s: &ServiceRef) -> Vec<(Publish, Span)> {
    events(PRODUCER)
        .into_iter()
        .filter_map(|e| match e {
            AmqpEvent::Publish(p) => {
                let span = build_publish(&p, &ctx(s), &Clock::with_offset(0));
                Some((p, span))
            }
            _ => None,
        })
        .collect()
}

/// The consumer fixture through the tracker, as a pipeline would run it.
fn consumed(file: &[u8]) -> (Vec<ConsumedMessage>, Deliveries) {
    let mut tracker = Deliveries::new();
    let mut out = Vec::new();
    for e in events(file) {
        match e {
            AmqpEvent::Deliver(d) => tracker.on_delivery(d, &mut out),
            AmqpEvent::Settle(s) => tracker.on_settle(&s, &mut out),
            AmqpEvent::Close(c) => tracker.on_closed((c.channel != 0).then_some(c.channel), &mut out),
            _ => {}
        }
    }
    (out, tracker)
}

#[test]
fn publish_spans_from_the_producer_fixture() {
    let s = svc();
    let spans = publish_spans(&s);
    let names: Vec<&str> = spans.iter().map(|(_, m)| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "publish shop:order.created",
            "publish audit",
            "publish orders",
            "publish jobs",
            "publish jobs",
            "publish batch",
            "publish batch",
            "publish batch",
            "publish shop:nowhere",
            "publish jobs",
            "publish jobs",
        ]
    );
    let (p, span) = &spans[0];
    assert_eq!(span.kind, SpanKind::Producer);
    assert_eq!(span.signal, Signal::MessagingSend);
    // The message's traceparent is parsed by the protocol; ids are the context layer's.
    assert_eq!(
        p.traceparent.map(|tp| tp.to_string()).as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(span.parent_span_id, None);
    assert_eq!(str_attr(span, "messaging.system"), Some("rabbitmq"));
    assert_eq!(str_attr(span, "messaging.operation.name"), Some("publish"));
    assert_eq!(str_attr(span, "messaging.operation.type"), Some("send"));
    assert_eq!(str_attr(span, "messaging.destination.name"), Some("shop:order.created"));
    assert_eq!(str_attr(span, "messaging.rabbitmq.destination.routing_key"), Some("order.created"));
    assert_eq!(int_attr(span, "messaging.message.body.size"), Some(27));
    assert_eq!(str_attr(span, "messaging.message.id"), Some("m-1"));
    assert_eq!(str_attr(span, "messaging.message.conversation_id"), Some("c-1"));
    assert_eq!(str_attr(span, "server.address"), Some("127.0.0.1"));
    assert_eq!(int_attr(span, "server.port"), Some(5672));
    assert_eq!(int_attr(span, "network.peer.port"), Some(5672));
    assert_eq!((span.start_unix_nanos, span.end_unix_nanos), (p.ts_start, p.ts_end));
    assert!(span.end_unix_nanos > span.start_unix_nanos);
    assert_eq!(measurements(span), vec![(Instrument::MessagingClientDuration, span.duration_secs())]);
    assert_eq!(int_attr(&spans[2].1, "messaging.message.body.size"), Some(20000));
    assert!(spans[1].1.attr("messaging.message.id").is_none());
}

#[test]
fn process_and_receive_spans_from_the_consumer_fixture() {
    let s = svc();
    let (msgs, tracker) = consumed(CONSUMER);
    assert_eq!(tracker.pending(), 0, "every delivery is settled or no-ack");
    assert_eq!(tracker.stats(), &DeliveryStats::default());
    let spans: Vec<Span> = msgs.iter().map(|m| build_consumed(m, &ctx(&s), &Clock::with_offset(0))).collect();
    let summary: Vec<(&str, SpanKind, i64, Option<&str>)> = spans
        .iter()
        .map(|sp| {
            (
                sp.name.as_str(),
                sp.kind,
                int_attr(sp, "messaging.rabbitmq.message.delivery_tag").unwrap(),
                str_attr(sp, "error.type"),
            )
        })
        .collect();
    // In settlement order: the no-ack delivery finishes when read.
    assert_eq!(
        summary,
        [
            ("receive audit", SpanKind::Client, 3, None),
            ("process shop:order.created:orders", SpanKind::Consumer, 1, None),
            ("process orders", SpanKind::Consumer, 2, Some("nack")),
            ("process jobs", SpanKind::Consumer, 1, None),
            ("process jobs", SpanKind::Consumer, 2, Some("reject")),
            ("process batch", SpanKind::Consumer, 1, None),
            ("process batch", SpanKind::Consumer, 2, None),
            ("process batch", SpanKind::Consumer, 3, None),
        ]
    );
    // The order message carries the producer's context (the context layer
    // makes it the parent).
    let order = &spans[1];
    assert_eq!(order.signal, Signal::MessagingProcess);
    let tp = msgs[1].delivery.traceparent.expect("the order message carries a traceparent");
    assert_eq!(tp.parent_id.to_string(), "b7ad6b7169203331");
    assert_eq!(msgs[1].delivery.tracestate.as_deref(), Some("vendor=opaque"));
    assert_eq!(str_attr(order, "messaging.operation.type"), Some("process"));
    assert_eq!(str_attr(order, "messaging.destination.name"), Some("shop:order.created:orders"));
    // Read at record k, acked one record later (1 ms apart in `events`).
    assert!(order.duration_secs() > 0.0005 && order.duration_secs() < 0.1, "{}", order.duration_secs());
    assert_eq!(measurements(order), vec![(Instrument::MessagingProcessDuration, order.duration_secs())]);
    // nack -> ERROR.
    assert!(matches!(&spans[2].status, SpanStatus::Error(m) if m.contains("nack")));
    assert_eq!(spans[1].status, SpanStatus::Unset);
    // The no-ack delivery: zero length, no process duration recorded.
    let audit = &spans[0];
    assert_eq!(audit.signal, Signal::MessagingReceive);
    assert_eq!(audit.start_unix_nanos, audit.end_unix_nanos);
    assert!(measurements(audit).is_empty());
    // One multiple ack ends all three batch spans at the same time.
    let ends: Vec<u64> = spans[5..].iter().map(|m| m.end_unix_nanos).collect();
    assert!(ends.windows(2).all(|w| w[0] == w[1]));
    // An unsampled creation context is read as such.
    assert_eq!(msgs[3].delivery.traceparent.map(|tp| tp.sampled()), Some(false));
}

#[test]
fn destinations_and_anonymous_queues() {
    assert_eq!(publish_destination("", ""), "amq.default");
    assert_eq!(publish_destination("logs", ""), "logs");
    assert_eq!(publish_destination("", "messages"), "messages");
    assert_eq!(consume_destination("", "messages", Some("messages")), "messages");
    assert_eq!(consume_destination("direct_logs", "warning", Some("q1")), "direct_logs:warning:q1");
    assert_eq!(consume_destination("", "", None), "amq.default");
    let s = svc();
    let p = Publish {
        channel: 1,
        exchange: String::new(),
        routing_key: "amq.gen-JzTY20BRgKO-HjmUJj0wLg".into(),
        mandatory: false,
        body_size: 3,
        traceparent: None,
        tracestate: Some("dropped=1".into()),
        message_id: None,
        correlation_id: Some("rpc-7".into()),
        fingerprint: None,
        confirm_seq: None,
        ts_start: 10,
        ts_end: 5,
    };
    let m = build_publish(&p, &ctx(&s), &Clock::with_offset(0));
    assert_eq!(m.name, "publish", "anonymous reply queues stay out of span names");
    assert_eq!(m.attr("messaging.destination.anonymous"), Some(&AttrValue::Bool(true)));
    assert_eq!(str_attr(&m, "messaging.destination.name"), Some("amq.gen-JzTY20BRgKO-HjmUJj0wLg"));
    assert!(m.trace_state.is_none());
    assert_eq!(m.start_unix_nanos, m.end_unix_nanos, "end never before start");
}

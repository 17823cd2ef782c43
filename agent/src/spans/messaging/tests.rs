//! Spans from the recorded amqplib <-> RabbitMQ conversations of
//! `protocols/amqp/fixtures` (see protocols/amqp/tests.rs for what they
//! contain), parsed by the real session parser.
use std::sync::Arc;

use super::*;
use crate::metrics::measurements;
use crate::protocols::amqp::{AmqpEvent, AmqpSession, Role};
use crate::protocols::{Chunk, Direction};
use crate::spans::model::{AttrValue, Service};

const PRODUCER: &[u8] = include_bytes!("../../protocols/amqp/fixtures/producer.bin");
const CONSUMER: &[u8] = include_bytes!("../../protocols/amqp/fixtures/consumer.bin");

fn events(file: &[u8]) -> Vec<AmqpEvent> {
    let mut s = AmqpSession::new(Role::Client);
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
    MessagingContext { service: s, local: "127.0.0.1:40000".parse().unwrap(), remote: "127.0.0.1:5672".parse().unwrap() }
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

fn publish_spans(s: &ServiceRef) -> Vec<(Publish, MessagingSpan)> {
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
    let names: Vec<&str> = spans.iter().map(|(_, m)| m.span.name.as_str()).collect();
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
    let (p, m) = &spans[0];
    let span = &m.span;
    assert_eq!(span.kind, SpanKind::Producer);
    // The message's traceparent names this span.
    assert_eq!(span.trace_id.to_string(), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(span.span_id.to_string(), "b7ad6b7169203331");
    assert_eq!(span.parent_span_id, None);
    assert_eq!(span.trace_state.as_deref(), Some("vendor=opaque"));
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
    assert_eq!(m.metric, Some((Instrument::MessagingClientDuration, span.duration_secs())));
    assert_eq!(measurements(span), vec![m.metric.unwrap()], "the metrics layer derives the same");
    // No traceparent: fresh ids.
    let (_, plain) = &spans[4];
    assert!(plain.span.trace_state.is_none() && plain.span.parent_span_id.is_none());
    assert_eq!(int_attr(&spans[2].1.span, "messaging.message.body.size"), Some(20000));
    assert!(spans[1].1.span.attr("messaging.message.id").is_none());
}

#[test]
fn process_and_receive_spans_from_the_consumer_fixture() {
    let s = svc();
    let (msgs, tracker) = consumed(CONSUMER);
    assert_eq!(tracker.pending(), 0, "every delivery is settled or no-ack");
    assert_eq!(tracker.stats(), &DeliveryStats::default());
    let spans: Vec<MessagingSpan> =
        msgs.iter().map(|m| build_consumed(m, &ctx(&s), &Clock::with_offset(0), None)).collect();
    let summary: Vec<(&str, SpanKind, i64, Option<&str>)> = spans
        .iter()
        .map(|m| {
            let sp = &m.span;
            (sp.name.as_str(), sp.kind, int_attr(sp, "messaging.rabbitmq.message.delivery_tag").unwrap(), str_attr(sp, "error.type"))
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
    // The order message joins the producer's trace as a child of the
    // publish span.
    let order = &spans[1].span;
    assert_eq!(order.trace_id.to_string(), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(order.parent_span_id.map(|p| p.to_string()).as_deref(), Some("b7ad6b7169203331"));
    assert_eq!(order.trace_state.as_deref(), Some("vendor=opaque"));
    assert_ne!(order.span_id.to_string(), "b7ad6b7169203331");
    assert_eq!(str_attr(order, "messaging.operation.type"), Some("process"));
    assert_eq!(str_attr(order, "messaging.destination.name"), Some("shop:order.created:orders"));
    // Read at record k, acked one record later (1 ms apart in `events`).
    assert!(order.duration_secs() > 0.0005 && order.duration_secs() < 0.1, "{}", order.duration_secs());
    assert_eq!(spans[1].metric, Some((Instrument::MessagingProcessDuration, order.duration_secs())));
    assert_eq!(measurements(order), vec![spans[1].metric.unwrap()]);
    // nack -> ERROR.
    assert!(matches!(&spans[2].span.status, SpanStatus::Error(m) if m.contains("nack")));
    assert_eq!(spans[1].span.status, SpanStatus::Unset);
    // The no-ack delivery: zero length, no process duration recorded.
    let audit = &spans[0];
    assert_eq!(audit.span.start_unix_nanos, audit.span.end_unix_nanos);
    assert_eq!(audit.metric, None);
    assert!(measurements(&audit.span).is_empty());
    assert_eq!(audit.span.parent_span_id.map(|p| p.to_string()).as_deref(), Some("00f067aa0ba902b7"));
    // One multiple ack ends all three batch spans at the same time.
    let ends: Vec<u64> = spans[5..].iter().map(|m| m.span.end_unix_nanos).collect();
    assert!(ends.windows(2).all(|w| w[0] == w[1]));
    // Unsampled creation context stays unsampled.
    assert_eq!(spans[3].span.trace_flags, 0);
}

#[test]
fn fingerprints_link_deliveries_without_traceparent() {
    let s = svc();
    let mut contexts = PublishContexts::new(16);
    let pubs = publish_spans(&s);
    for (p, m) in &pubs {
        contexts.remember(p, &m.span);
    }
    let (msgs, _) = consumed(CONSUMER);
    let batch: Vec<&ConsumedMessage> =
        msgs.iter().filter(|m| m.delivery.queue.as_deref() == Some("batch")).collect();
    assert_eq!(batch.len(), 3);
    let mut parents = Vec::new();
    for m in &batch {
        assert!(m.delivery.traceparent.is_none());
        let tp = contexts.take(&m.delivery).expect("published on this host");
        let span = build_consumed(m, &ctx(&s), &Clock::with_offset(0), Some(tp)).span;
        assert_eq!(span.trace_id, tp.trace_id);
        assert_eq!(span.parent_span_id, Some(tp.parent_id));
        parents.push(tp.parent_id);
    }
    let batch_pubs: Vec<SpanId> =
        pubs.iter().filter(|(p, _)| p.routing_key == "batch").map(|(_, m)| m.span.span_id).collect();
    assert_eq!(parents, batch_pubs, "each delivery finds its own publish");
    assert!(contexts.take(&batch[0].delivery).is_none(), "matched once");
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
        traceparent: Some("garbage".into()),
        tracestate: Some("dropped=1".into()),
        message_id: None,
        correlation_id: Some("rpc-7".into()),
        fingerprint: None,
        confirm_seq: None,
        ts_start: 10,
        ts_end: 5,
    };
    let m = build_publish(&p, &ctx(&s), &Clock::with_offset(0));
    assert_eq!(m.span.name, "publish", "anonymous reply queues stay out of span names");
    assert_eq!(m.span.attr("messaging.destination.anonymous"), Some(&AttrValue::Bool(true)));
    assert_eq!(str_attr(&m.span, "messaging.destination.name"), Some("amq.gen-JzTY20BRgKO-HjmUJj0wLg"));
    assert!(m.span.trace_state.is_none(), "an invalid traceparent brings no tracestate");
    assert_eq!(m.span.start_unix_nanos, m.span.end_unix_nanos, "end never before start");
}

fn delivery(channel: u16, tag: u64) -> Delivery {
    Delivery {
        channel,
        delivery_tag: tag,
        consumer_tag: Some("c".into()),
        queue: Some("q".into()),
        exchange: String::new(),
        routing_key: "q".into(),
        redelivered: false,
        body_size: 1,
        traceparent: None,
        tracestate: None,
        message_id: None,
        correlation_id: None,
        fingerprint: None,
        no_ack: false,
        via_get: false,
        ts_received: tag,
    }
}

fn settle(channel: u16, tag: u64, multiple: bool) -> Settle {
    Settle { channel, delivery_tag: tag, multiple, outcome: SettleOutcome::Ack, ts: 1_000_000 }
}

#[test]
fn tracker_matches_multiple_and_stays_bounded() {
    let mut t = Deliveries::new();
    let mut out = Vec::new();
    for tag in 1..=5 {
        t.on_delivery(delivery(1, tag), &mut out);
    }
    t.on_settle(&settle(1, 3, true), &mut out);
    assert_eq!(out.iter().map(|m| m.delivery.delivery_tag).collect::<Vec<_>>(), [1, 2, 3]);
    t.on_settle(&settle(1, 9, false), &mut out);
    assert_eq!(t.stats().unmatched_settles, 1);
    t.on_settle(&settle(1, 0, true), &mut out);
    assert_eq!(out.len(), 5, "tag 0 + multiple settles everything");
    assert_eq!(t.pending(), 0);
    out.clear();

    for tag in 1..=(MAX_PENDING_PER_CHANNEL as u64 + 10) {
        t.on_delivery(delivery(1, tag), &mut out);
    }
    assert_eq!(t.pending(), MAX_PENDING_PER_CHANNEL);
    assert_eq!(out.len(), 10);
    assert!(out.iter().all(|m| m.settlement == Settlement::Unsettled && m.delivery.delivery_tag <= 10));
    for ch in 2..=(MAX_TRACKED_CHANNELS as u16 + 5) {
        t.on_delivery(delivery(ch, 1), &mut out);
    }
    // Channel 1 and 63 new ones are tracked; the last 5 are let go at once.
    assert_eq!(t.stats().evicted, 10 + 5);
    t.on_closed(Some(1), &mut out);
    assert_eq!(t.pending(), MAX_TRACKED_CHANNELS - 1);
    t.on_closed(None, &mut out);
    assert_eq!(t.pending(), 0);
}

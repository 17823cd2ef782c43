//! One AMQP 0-9-1 connection as the agent sees it: the frames
//! ([`AmqpSession`]) and the pairing of deliveries with their settlements
//! ([`Deliveries`]), giving what spans are made of: publishes, deliveries as
//! they arrive, and deliveries once their handling is over. The broker's
//! side of a connection (a tracked RabbitMQ) gives nothing.
use super::{AmqpEvent, AmqpSession, AmqpStats, ConsumedMessage, Deliveries, Publish};
use crate::model::TraceParent;
use crate::protocols::{Chunk, Count, Counts, Session, Side};

/// What an AMQP client connection produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AmqpMessage {
    /// basic.publish with its content.
    Published(Publish),
    /// A message was delivered: its handling starts now.
    Delivered(DeliveryStart),
    /// A delivery and how its handling ended.
    Consumed(ConsumedMessage),
}

/// What a delivery says when it arrives, for its CONSUMER span's identity
/// and its link to the producer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryStart {
    pub channel: u16,
    pub delivery_tag: u64,
    pub ts_received: u64,
    pub traceparent: Option<TraceParent>,
    pub tracestate: Option<String>,
    /// Body size and first bytes: the same message published on this host.
    pub fingerprint: Option<u64>,
}

pub struct AmqpConnection {
    session: AmqpSession,
    deliveries: Deliveries,
    events: Vec<AmqpEvent>,
    consumed: Vec<ConsumedMessage>,
}

impl std::fmt::Debug for AmqpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConnection").field("pending", &self.deliveries.pending()).finish()
    }
}

impl AmqpConnection {
    pub fn new(side: Side) -> Self {
        Self {
            session: AmqpSession::new(side),
            deliveries: Deliveries::new(),
            events: Vec::new(),
            consumed: Vec::new(),
        }
    }

    pub fn stats(&self) -> &AmqpStats {
        self.session.stats()
    }

    /// Moves what the frames said into `out`.
    fn collect(&mut self, out: &mut Vec<AmqpMessage>) {
        let client = self.session.role() == Side::Client;
        for event in self.events.drain(..) {
            match event {
                _ if !client => {}
                AmqpEvent::Publish(p) => out.push(AmqpMessage::Published(p)),
                AmqpEvent::Deliver(d) => {
                    out.push(AmqpMessage::Delivered(DeliveryStart {
                        channel: d.channel,
                        delivery_tag: d.delivery_tag,
                        ts_received: d.ts_received,
                        traceparent: d.traceparent,
                        tracestate: d.tracestate.clone(),
                        fingerprint: d.fingerprint,
                    }));
                    self.deliveries.on_delivery(d, &mut self.consumed);
                }
                AmqpEvent::Settle(s) => self.deliveries.on_settle(&s, &mut self.consumed),
                AmqpEvent::Close(c) => {
                    self.deliveries.on_closed((c.channel != 0).then_some(c.channel), &mut self.consumed)
                }
                AmqpEvent::Confirm(_) | AmqpEvent::Return(_) => {}
            }
        }
        out.extend(self.consumed.drain(..).map(AmqpMessage::Consumed));
    }
}

impl Session for AmqpConnection {
    type Message = AmqpMessage;
    const PROTOCOL: &'static str = "amqp";

    fn on_chunk(&mut self, chunk: &Chunk<'_>, out: &mut Vec<AmqpMessage>) {
        self.session.on_chunk(chunk, &mut self.events);
        self.collect(out);
    }

    fn on_close(&mut self, out: &mut Vec<AmqpMessage>) {
        self.session.on_close(&mut self.events);
        self.collect(out);
        if self.session.role() == Side::Client {
            self.deliveries.on_closed(None, &mut self.consumed);
            out.extend(self.consumed.drain(..).map(AmqpMessage::Consumed));
        }
    }

    fn side(&self) -> Side {
        self.session.role()
    }

    fn counts(&self) -> Counts {
        let s = self.session.stats();
        let d = self.deliveries.stats();
        [
            (Count::ParseError, "malformed frame", s.parse_errors),
            (Count::Desync, "framing lost", s.desyncs),
            (Count::Unmatched, "message incomplete", s.messages_incomplete),
            (Count::Unmatched, "content without message", s.orphan_content),
            (Count::Unmatched, "consume request dropped", s.requests_dropped),
            // Acks of deliveries never seen (their frames were not captured).
            (Count::Unmatched, "settle of unseen delivery", d.unmatched_settles),
            (Count::Unmatched, "delivery never settled", d.evicted),
            (Count::Skipped, "chunk dropped while unaligned", s.chunks_dropped),
        ]
    }
}

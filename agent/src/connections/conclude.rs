//! What each protocol's messages become: outcomes with the identity the
//! context layer gives their exchange (span id, in-process parent).
use crate::capture::Tuple;
use crate::context::{ConnTrace, ThreadKey, Tracker};
use crate::protocols::{amqp::AmqpMessage, http1::Exchange, sql::SqlCall};
use crate::telemetry::Telemetry;

use super::{ConnKey, DeliveryLink, Outcome};

/// Where the messages of one connection conclude.
pub(super) struct Cx<'a> {
    pub tracker: &'a mut Tracker,
    pub trace: &'a mut ConnTrace,
    pub key: ConnKey,
    pub tuple: Tuple,
    pub server_side: bool,
    /// The thread whose syscall produced them (none: a close or a sweep).
    pub thread: Option<ThreadKey>,
    pub out: &'a mut Vec<Outcome>,
    pub t: &'a Telemetry,
}

/// A session's message, turned into outcomes.
pub(super) trait Conclude: Sized {
    fn conclude(self, cx: &mut Cx<'_>);
}

impl Conclude for Exchange {
    fn conclude(self, cx: &mut Cx<'_>) {
        let start = if cx.server_side { self.request_start_exit } else { self.request_start_enter };
        let started = cx.tracker.take_started(cx.trace, cx.server_side, cx.key.pid, start, self.response_end, cx.t);
        cx.out.push(Outcome::Http {
            key: cx.key,
            tuple: cx.tuple,
            server_side: cx.server_side,
            started,
            exchange: self,
        });
    }
}

impl Conclude for SqlCall {
    fn conclude(self, cx: &mut Cx<'_>) {
        let started = cx.tracker.take_started(cx.trace, cx.server_side, cx.key.pid, self.start_ns, self.end_ns, cx.t);
        cx.out.push(Outcome::Sql { key: cx.key, tuple: cx.tuple, server_side: cx.server_side, started, call: self });
    }
}

/// Publishes become children of the thread's current request; a delivery
/// makes its CONSUMER span the thread's current request until its ack.
impl Conclude for AmqpMessage {
    fn conclude(self, cx: &mut Cx<'_>) {
        let (key, tuple) = (cx.key, cx.tuple);
        match self {
            AmqpMessage::Published(publish) => {
                let started = cx.tracker.started_publish(cx.thread, publish.ts_start, cx.t);
                cx.out.push(Outcome::Published { key, tuple, started, publish });
            }
            AmqpMessage::Delivered(d) => {
                let id = (d.channel, d.delivery_tag);
                let started = cx.tracker.started_delivery(cx.trace, id, cx.thread, d.ts_received, cx.t);
                let link =
                    DeliveryLink { traceparent: d.traceparent, tracestate: d.tracestate, fingerprint: d.fingerprint };
                cx.out.push(Outcome::Delivered { key, tuple, started, link });
            }
            AmqpMessage::Consumed(message) => {
                let d = &message.delivery;
                let started = cx.tracker.take_delivery(cx.trace, (d.channel, d.delivery_tag), d.ts_received, cx.t);
                cx.out.push(Outcome::Consumed { key, tuple, started, message });
            }
        }
    }
}

/// The message buffers of a table, one per message type: nothing is
/// allocated per chunk.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    http: Vec<Exchange>,
    sql: Vec<SqlCall>,
    amqp: Vec<AmqpMessage>,
}

pub(super) trait Buffer<M> {
    fn buffer(&mut self) -> &mut Vec<M>;
}

impl Buffer<Exchange> for Scratch {
    fn buffer(&mut self) -> &mut Vec<Exchange> {
        &mut self.http
    }
}

impl Buffer<SqlCall> for Scratch {
    fn buffer(&mut self) -> &mut Vec<SqlCall> {
        &mut self.sql
    }
}

impl Buffer<AmqpMessage> for Scratch {
    fn buffer(&mut self) -> &mut Vec<AmqpMessage> {
        &mut self.amqp
    }
}

//! What each protocol's messages become: outcomes with the identity the
//! context layer gives their exchange (span id, in-process parent).
use crate::capture::Tuple;
use crate::context::{ConnTrace, ThreadKey, Tracker};
use crate::protocols::{
    amqp::AmqpMessage,
    http1::Exchange,
    http2::{Http2Message, StreamStart},
    sql::SqlCall,
};
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
            grpc: None,
        });
    }
}

/// A stream's identity is given when its request HEADERS go by (a server
/// request is announced then, with its traceparent) and taken at its end.
impl Conclude for Http2Message {
    fn conclude(self, cx: &mut Cx<'_>) {
        match self {
            Http2Message::Started(StreamStart { stream, ts_enter, ts_exit, traceparent, tracestate }) => {
                let started =
                    cx.tracker.started_stream(cx.trace, cx.server_side, stream, cx.thread, ts_enter, ts_exit, cx.t);
                if cx.server_side {
                    if let Some(tp) = &traceparent {
                        cx.tracker.on_incoming_traceparent(tp);
                    }
                    cx.out.push(Outcome::RequestStarted {
                        key: cx.key,
                        tuple: cx.tuple,
                        started,
                        stream: Some(stream),
                        traceparent,
                        tracestate,
                    });
                }
            }
            Http2Message::Finished(done) => {
                let ex = &done.exchange;
                let started = if done.upgraded {
                    // Announced as the HTTP/1.1 request it was.
                    let start = if cx.server_side { ex.request_start_exit } else { ex.request_start_enter };
                    cx.tracker.take_started(cx.trace, cx.server_side, cx.key.pid, start, ex.response_end, cx.t)
                } else {
                    cx.tracker.take_stream(cx.trace, done.stream, ex.request_start_enter, ex.response_end, cx.t)
                };
                cx.out.push(Outcome::Http {
                    key: cx.key,
                    tuple: cx.tuple,
                    server_side: cx.server_side,
                    started,
                    exchange: done.exchange,
                    grpc: done.grpc,
                });
            }
        }
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
    http2: Vec<Http2Message>,
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

impl Buffer<Http2Message> for Scratch {
    fn buffer(&mut self) -> &mut Vec<Http2Message> {
        &mut self.http2
    }
}

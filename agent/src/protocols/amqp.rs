//! AMQP 0-9-1 (RabbitMQ): turns one connection's captured chunks into
//! [`AmqpEvent`]s: messages published, messages delivered to a consumer (or
//! fetched with basic.get), their settlement (ack / nack / reject),
//! publisher confirms, returned messages and channel/connection closes.
//!
//! Client frames are the ones the client sends: with [`Side::Client`]
//! Egress chunks, with [`Side::Server`] (the tracked process is the broker)
//! Ingress chunks. Frames of several channels interleave; each channel keeps
//! its own state (consumers, a message being assembled per direction).
//! Message bodies are never kept: only their size and a fingerprint of
//! their first bytes (see [`Publish::fingerprint`]).

use std::collections::{HashMap, VecDeque};

use fields::{content_header, text, Cursor, Fingerprint};
use framing::{
    FrameSink, Framer, RawFrame, Ts, FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_OVERHEAD,
    PROTOCOL_HEADER,
};

use super::bounded::BoundedMap;
pub use super::Side;
use super::{Chunk, Direction};
use crate::model::TraceParent;

mod connection;
mod deliveries;
mod fields;
mod framing;

pub use connection::{AmqpConnection, AmqpMessage, DeliveryStart};
pub use deliveries::{
    ConsumedMessage, Deliveries, DeliveryStats, Settlement, MAX_PENDING_PER_CHANNEL, MAX_TRACKED_CHANNELS,
};

pub use fields::{Properties, TraceHeaders, FINGERPRINT_BYTES};

/// Channels tracked per connection (RabbitMQ allows 2047 by default; a
/// client rarely opens more than a few).
pub const MAX_CHANNELS: usize = 256;
/// Consumer tags remembered per channel.
pub const MAX_CONSUMERS: usize = 64;
/// basic.consume / basic.get requests awaiting their answer, per channel.
const MAX_PENDING_REQUESTS: usize = 32;
/// Method-frame bytes kept (arguments are short strings and integers).
const METHOD_KEEP: usize = 2048;
/// Content-header bytes kept (properties, with the headers table).
const HEADER_KEEP: usize = 8 * 1024;
const BASIC_CLASS: u16 = 60;
/// frame_max assumed before connection.tune is seen (RabbitMQ's default).
const DEFAULT_FRAME_MAX: usize = 131_072;

/// How a consumer settled a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SettleOutcome {
    Ack,
    Nack { requeue: bool },
    Reject { requeue: bool },
}

impl SettleOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            SettleOutcome::Ack => "ack",
            SettleOutcome::Nack { .. } => "nack",
            SettleOutcome::Reject { .. } => "reject",
        }
    }
}

/// basic.publish with its content, complete once the last body byte was
/// written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub channel: u16,
    /// Empty for the default exchange.
    pub exchange: String,
    pub routing_key: String,
    pub mandatory: bool,
    pub body_size: u64,
    pub traceparent: Option<TraceParent>,
    pub tracestate: Option<String>,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    /// Hash of the body size and first [`FINGERPRINT_BYTES`] body bytes,
    /// when they were all captured: matches this publish to its delivery
    /// on the same host when no traceparent travels with the message.
    pub fingerprint: Option<u64>,
    /// Sequence number of the publish on a channel in confirm mode (what
    /// the broker's basic.ack / basic.nack delivery tags refer to).
    pub confirm_seq: Option<u64>,
    /// CLOCK_MONOTONIC ns: the write of the method frame started, the
    /// write of the last body byte ended.
    pub ts_start: u64,
    pub ts_end: u64,
}

/// A message received by the client: basic.deliver (push) or basic.get-ok
/// (pull), complete once its last body byte was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub channel: u16,
    pub delivery_tag: u64,
    /// None for basic.get-ok.
    pub consumer_tag: Option<String>,
    /// The queue consumed from (via the consumer tag, or basic.get), when
    /// the consume/get request was seen.
    pub queue: Option<String>,
    pub exchange: String,
    pub routing_key: String,
    pub redelivered: bool,
    pub body_size: u64,
    pub traceparent: Option<TraceParent>,
    pub tracestate: Option<String>,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub fingerprint: Option<u64>,
    /// The consumer (or get) asked for automatic acknowledgement: no
    /// settlement will follow.
    pub no_ack: bool,
    /// Fetched with basic.get rather than pushed to a consumer.
    pub via_get: bool,
    /// Exit of the read that completed the message.
    pub ts_received: u64,
}

/// basic.ack / basic.nack / basic.reject sent by the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settle {
    pub channel: u16,
    pub delivery_tag: u64,
    /// All unsettled deliveries up to and including `delivery_tag` (tag 0:
    /// all of them).
    pub multiple: bool,
    pub outcome: SettleOutcome,
    /// Start of the write.
    pub ts: u64,
}

/// A publisher confirm: basic.ack / basic.nack sent by the broker on a
/// channel in confirm mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confirm {
    pub channel: u16,
    pub delivery_tag: u64,
    pub multiple: bool,
    pub ack: bool,
    pub ts: u64,
}

/// basic.return: the broker could not route a mandatory message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Returned {
    pub channel: u16,
    pub reply_code: u16,
    pub reply_text: String,
    pub exchange: String,
    pub routing_key: String,
    pub body_size: u64,
    pub traceparent: Option<TraceParent>,
    pub fingerprint: Option<u64>,
    pub ts: u64,
}

/// channel.close (channel > 0) or connection.close (channel 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    pub channel: u16,
    pub reply_code: u16,
    pub reply_text: String,
    /// The method that caused the close (0 when none).
    pub class_id: u16,
    pub method_id: u16,
    /// Sent by the client (else by the broker).
    pub by_client: bool,
    pub ts: u64,
}

impl Close {
    /// 200 (reply-success) is an ordinary close; anything else an error
    /// (soft errors close the channel, hard errors the connection).
    pub fn is_error(&self) -> bool {
        self.reply_code != 200
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AmqpEvent {
    Publish(Publish),
    Deliver(Delivery),
    Settle(Settle),
    Confirm(Confirm),
    Return(Returned),
    Close(Close),
}

/// Counters kept by a session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AmqpStats {
    /// Frames fully framed (all kinds).
    pub frames: u64,
    pub heartbeats: u64,
    /// Frames (partly) inside bytes that were not captured, skipped by
    /// size (body frames predicted from the message's size included).
    pub gap_frames: u64,
    /// Method or content-header payloads that could not be parsed.
    pub parse_errors: u64,
    /// Times framing was lost in one direction.
    pub desyncs: u64,
    /// Chunks dropped while waiting to re-align after a desync.
    pub chunks_dropped: u64,
    /// Messages begun (publish, deliver...) whose content never completed.
    pub messages_incomplete: u64,
    /// Content frames for which no message was in progress.
    pub orphan_content: u64,
    /// Frames of channels beyond [`MAX_CHANNELS`], ignored.
    pub channels_untracked: u64,
    /// consume/get requests forgotten (bounds, or answers lost).
    pub requests_dropped: u64,
    /// A protocol header of another AMQP version (1.0) was seen: nothing
    /// is parsed any more.
    pub unsupported_protocol: bool,
}

#[derive(Clone, Debug)]
struct Consumer {
    queue: Option<String>,
    no_ack: bool,
}

struct PendingConsume {
    tag: String,
    consumer: Consumer,
}

#[derive(Debug)]
enum MsgKind {
    Publish {
        exchange: String,
        routing_key: String,
        mandatory: bool,
        seq: Option<u64>,
    },
    Deliver {
        consumer_tag: Option<String>,
        delivery_tag: u64,
        redelivered: bool,
        exchange: String,
        routing_key: String,
        consumer: Consumer,
    },
    Return {
        reply_code: u16,
        reply_text: String,
        exchange: String,
        routing_key: String,
    },
}

/// A message whose content frames are being read.
struct Message {
    kind: MsgKind,
    first: Ts,
    header_seen: bool,
    body_size: u64,
    left: u64,
    props: Properties,
    fp: Fingerprint,
}

struct Channel {
    consumers: BoundedMap<String, Consumer>,
    consumes: VecDeque<PendingConsume>,
    gets: VecDeque<Consumer>,
    /// Name of the last queue declared (an empty queue name in
    /// basic.consume / basic.get means this one).
    declared: Option<String>,
    confirm: bool,
    published: u64,
    /// Message in progress per side: [client, broker].
    content: [Option<Message>; 2],
}

impl Channel {
    fn new() -> Self {
        Channel {
            consumers: BoundedMap::new(MAX_CONSUMERS),
            consumes: VecDeque::new(),
            gets: VecDeque::new(),
            declared: None,
            confirm: false,
            published: 0,
            content: [None, None],
        }
    }
}

struct State {
    vhost: Option<String>,
    /// Negotiated in connection.tune(-ok); Some(0) means no limit.
    frame_max: Option<usize>,
    channel_max: Option<u16>,
    channels: HashMap<u16, Channel>,
    /// Channel of the last frame per side, for predicting body frames.
    last_channel: [Option<u16>; 2],
    stats: AmqpStats,
}

impl State {
    fn channel(&mut self, id: u16) -> Option<&mut Channel> {
        if !self.channels.contains_key(&id) {
            if self.channels.len() >= MAX_CHANNELS {
                self.stats.channels_untracked += 1;
                return None;
            }
            self.channels.insert(id, Channel::new());
        }
        self.channels.get_mut(&id)
    }

    fn body_frame_max(&self) -> usize {
        match self.frame_max.unwrap_or(DEFAULT_FRAME_MAX) {
            0 => usize::MAX,
            m => m.saturating_sub(FRAME_OVERHEAD).max(1),
        }
    }
}

/// Parser state of one AMQP 0-9-1 connection.
pub struct AmqpSession {
    role: Side,
    client: Framer,
    broker: Framer,
    st: State,
}

impl AmqpSession {
    /// A session for a connection whose start we see (or not: the first
    /// chunk in each direction must start with a plausible frame, so a
    /// session created mid-connection works from the next frame boundary).
    pub fn new(role: Side) -> Self {
        AmqpSession {
            role,
            client: Framer::new(false),
            broker: Framer::new(false),
            st: State {
                vhost: None,
                frame_max: None,
                channel_max: None,
                channels: HashMap::new(),
                last_channel: [None, None],
                stats: AmqpStats::default(),
            },
        }
    }

    pub fn role(&self) -> Side {
        self.role
    }

    pub fn stats(&self) -> &AmqpStats {
        &self.st.stats
    }

    /// Virtual host from connection.open.
    pub fn vhost(&self) -> Option<&str> {
        self.st.vhost.as_deref()
    }

    /// Channels with state (bounded by [`MAX_CHANNELS`]).
    pub fn channels_tracked(&self) -> usize {
        self.st.channels.len()
    }

    /// Feeds one syscall's bytes; finished events are appended to `out`.
    pub fn on_chunk(&mut self, chunk: &Chunk<'_>, out: &mut Vec<AmqpEvent>) {
        if self.st.stats.unsupported_protocol {
            return;
        }
        let from_client = matches!(
            (self.role, chunk.direction),
            (Side::Client, Direction::Egress) | (Side::Server, Direction::Ingress)
        );
        let mut sink = Sink { st: &mut self.st, out, from_client };
        if from_client {
            self.client.feed(chunk, &mut sink);
        } else {
            self.broker.feed(chunk, &mut sink);
        }
    }

    /// The connection closed: messages still being assembled are lost.
    pub fn on_close(&mut self, _out: &mut Vec<AmqpEvent>) {
        for ch in self.st.channels.values_mut() {
            for m in &mut ch.content {
                if m.take().is_some() {
                    self.st.stats.messages_incomplete += 1;
                }
            }
        }
        self.st.channels.clear();
    }
}

struct Sink<'a> {
    st: &'a mut State,
    out: &'a mut Vec<AmqpEvent>,
    from_client: bool,
}

impl Sink<'_> {
    fn side(&self) -> usize {
        usize::from(!self.from_client)
    }

    /// Starts assembling a message on `channel` (dropping an unfinished one).
    fn begin(&mut self, channel: u16, kind: MsgKind, first: Ts) {
        let side = self.side();
        let Some(ch) = self.st.channel(channel) else { return };
        let old = ch.content[side].replace(Message {
            kind,
            first,
            header_seen: false,
            body_size: 0,
            left: 0,
            props: Properties::default(),
            fp: Fingerprint::new(),
        });
        if old.is_some() {
            self.st.stats.messages_incomplete += 1;
        }
    }

    fn finish(&mut self, channel: u16, m: Message, last: Ts) {
        let fingerprint = m.fp.finish(m.body_size);
        let p = m.props;
        let ev = match m.kind {
            MsgKind::Publish { exchange, routing_key, mandatory, seq } => AmqpEvent::Publish(Publish {
                channel,
                exchange,
                routing_key,
                mandatory,
                body_size: m.body_size,
                traceparent: p.trace.traceparent,
                tracestate: p.trace.tracestate,
                message_id: p.message_id,
                correlation_id: p.correlation_id,
                fingerprint,
                confirm_seq: seq,
                ts_start: m.first.start(),
                ts_end: last.ts_exit.max(m.first.start()),
            }),
            MsgKind::Deliver { consumer_tag, delivery_tag, redelivered, exchange, routing_key, consumer } => {
                AmqpEvent::Deliver(Delivery {
                    channel,
                    delivery_tag,
                    via_get: consumer_tag.is_none(),
                    consumer_tag,
                    queue: consumer.queue,
                    exchange,
                    routing_key,
                    redelivered,
                    body_size: m.body_size,
                    traceparent: p.trace.traceparent,
                    tracestate: p.trace.tracestate,
                    message_id: p.message_id,
                    correlation_id: p.correlation_id,
                    fingerprint,
                    no_ack: consumer.no_ack,
                    ts_received: last.ts_exit,
                })
            }
            MsgKind::Return { reply_code, reply_text, exchange, routing_key } => AmqpEvent::Return(Returned {
                channel,
                reply_code,
                reply_text,
                exchange,
                routing_key,
                body_size: m.body_size,
                traceparent: p.trace.traceparent,
                fingerprint,
                ts: last.ts_exit,
            }),
        };
        self.out.push(ev);
    }

    fn on_content_header(&mut self, f: &RawFrame<'_>) {
        let side = self.side();
        let Some(ch) = self.st.channels.get_mut(&f.channel) else {
            self.st.stats.orphan_content += 1;
            return;
        };
        let Some(m) = ch.content[side].as_mut().filter(|m| !m.header_seen) else {
            self.st.stats.orphan_content += 1;
            return;
        };
        let Some(h) = content_header(f.payload).filter(|h| h.class == BASIC_CLASS) else {
            ch.content[side] = None;
            self.st.stats.parse_errors += 1;
            self.st.stats.messages_incomplete += 1;
            return;
        };
        m.header_seen = true;
        m.body_size = h.body_size;
        m.left = h.body_size;
        m.props = h.props;
        if m.left == 0 {
            let m = ch.content[side].take().expect("checked above");
            self.finish(f.channel, m, f.last);
        }
    }

    fn on_body(&mut self, f: &RawFrame<'_>) {
        let side = self.side();
        let Some(m) =
            self.st.channels.get_mut(&f.channel).and_then(|ch| ch.content[side].as_mut()).filter(|m| m.header_seen)
        else {
            self.st.stats.orphan_content += 1;
            return;
        };
        m.fp.feed(f.payload, f.size);
        m.left = m.left.saturating_sub(f.size as u64);
        if m.left == 0 {
            let m = self.st.channels.get_mut(&f.channel).and_then(|ch| ch.content[side].take());
            if let Some(m) = m {
                self.finish(f.channel, m, f.last);
            }
        }
    }

    fn on_method(&mut self, f: &RawFrame<'_>) {
        let mut c = Cursor::new(f.payload);
        let (Some(class), Some(method)) = (c.u16(), c.u16()) else {
            self.st.stats.parse_errors += 1;
            return;
        };
        if self.method(f, class, method, &mut c).is_none() {
            self.st.stats.parse_errors += 1;
        }
    }

    /// Handles one method; None when its arguments are cut short.
    fn method(&mut self, f: &RawFrame<'_>, class: u16, method: u16, c: &mut Cursor<'_>) -> Option<()> {
        let channel = f.channel;
        let client = self.from_client;
        let side = self.side();
        // A method ends any content in progress from the same side.
        if let Some(old) = self.st.channels.get_mut(&channel).and_then(|ch| ch.content[side].take()) {
            drop(old);
            self.st.stats.messages_incomplete += 1;
        }
        match (class, method) {
            // connection.tune / tune-ok: channel-max, frame-max, heartbeat.
            (10, 30) | (10, 31) => {
                let channel_max = c.u16()?;
                let frame_max = c.u32()? as usize;
                // tune-ok (the client's choice) is what both sides use.
                if method == 31 || self.st.frame_max.is_none() {
                    self.st.frame_max = Some(frame_max);
                    self.st.channel_max = (channel_max > 0).then_some(channel_max);
                }
            }
            (10, 40) => self.st.vhost = Some(text(c.shortstr()?)),
            (10, 50) | (20, 40) => {
                let reply_code = c.u16()?;
                let reply_text = text(c.shortstr()?);
                let (class_id, method_id) = (c.u16().unwrap_or(0), c.u16().unwrap_or(0));
                self.out.push(AmqpEvent::Close(Close {
                    channel,
                    reply_code,
                    reply_text,
                    class_id,
                    method_id,
                    by_client: client,
                    ts: f.first.start(),
                }));
            }
            (10, 51) => self.st.channels.clear(),
            // channel.open and close-ok: the channel number starts afresh.
            (20, 10) | (20, 41) => {
                self.st.channels.remove(&channel);
            }
            (50, 11) => {
                let q = text(c.shortstr()?);
                if let Some(ch) = self.st.channel(channel) {
                    ch.declared = Some(q);
                }
            }
            (60, 20) => {
                let _ticket = c.u16()?;
                let queue = c.shortstr()?;
                let tag = text(c.shortstr()?);
                let bits = c.u8()?;
                let Some(ch) = self.st.channel(channel) else { return Some(()) };
                let queue = if queue.is_empty() { ch.declared.clone() } else { Some(text(queue)) };
                let consumer = Consumer { queue, no_ack: bits & 2 != 0 };
                let no_wait = bits & 8 != 0;
                if no_wait && !tag.is_empty() {
                    ch.consumers.insert(tag, consumer);
                } else {
                    let full = ch.consumes.len() >= MAX_PENDING_REQUESTS;
                    if full {
                        ch.consumes.pop_front();
                    }
                    ch.consumes.push_back(PendingConsume { tag, consumer });
                    self.st.stats.requests_dropped += u64::from(full);
                }
            }
            (60, 21) => {
                let tag = text(c.shortstr()?);
                let Some(ch) = self.st.channel(channel) else { return Some(()) };
                // The request with this tag, else the oldest one that let
                // the broker choose the tag.
                let at = ch
                    .consumes
                    .iter()
                    .position(|p| p.tag == tag)
                    .or_else(|| ch.consumes.iter().position(|p| p.tag.is_empty()));
                if let Some(p) = at.and_then(|i| ch.consumes.remove(i)) {
                    ch.consumers.insert(tag, p.consumer);
                }
            }
            // basic.cancel from the broker (queue deleted), cancel-ok.
            (60, 30) if !client => {
                let tag = text(c.shortstr()?);
                if let Some(ch) = self.st.channel(channel) {
                    ch.consumers.remove(&tag);
                }
            }
            (60, 31) => {
                let tag = text(c.shortstr()?);
                if let Some(ch) = self.st.channel(channel) {
                    ch.consumers.remove(&tag);
                }
            }
            (60, 40) => {
                let _ticket = c.u16()?;
                let exchange = text(c.shortstr()?);
                let routing_key = text(c.shortstr()?);
                let mandatory = c.u8().unwrap_or(0) & 1 != 0;
                let Some(ch) = self.st.channel(channel) else { return Some(()) };
                let seq = ch.confirm.then(|| {
                    ch.published += 1;
                    ch.published
                });
                self.begin(channel, MsgKind::Publish { exchange, routing_key, mandatory, seq }, f.first);
            }
            (60, 50) => {
                let reply_code = c.u16()?;
                let reply_text = text(c.shortstr()?);
                let exchange = text(c.shortstr()?);
                let routing_key = text(c.shortstr()?);
                let kind = MsgKind::Return { reply_code, reply_text, exchange, routing_key };
                self.begin(channel, kind, f.first);
            }
            (60, 60) => {
                let tag = text(c.shortstr()?);
                let delivery_tag = c.u64()?;
                let redelivered = c.u8()? & 1 != 0;
                let exchange = text(c.shortstr()?);
                let routing_key = text(c.shortstr()?);
                let consumer = self
                    .st
                    .channel(channel)
                    .and_then(|ch| ch.consumers.get(&tag).cloned())
                    .unwrap_or(Consumer { queue: None, no_ack: false });
                let kind = MsgKind::Deliver {
                    consumer_tag: Some(tag),
                    delivery_tag,
                    redelivered,
                    exchange,
                    routing_key,
                    consumer,
                };
                self.begin(channel, kind, f.first);
            }
            (60, 70) => {
                let _ticket = c.u16()?;
                let queue = c.shortstr()?;
                let no_ack = c.u8()? & 1 != 0;
                let Some(ch) = self.st.channel(channel) else { return Some(()) };
                let queue = if queue.is_empty() { ch.declared.clone() } else { Some(text(queue)) };
                let full = ch.gets.len() >= MAX_PENDING_REQUESTS;
                if full {
                    ch.gets.pop_front();
                }
                ch.gets.push_back(Consumer { queue, no_ack });
                self.st.stats.requests_dropped += u64::from(full);
            }
            (60, 71) => {
                let delivery_tag = c.u64()?;
                let redelivered = c.u8()? & 1 != 0;
                let exchange = text(c.shortstr()?);
                let routing_key = text(c.shortstr()?);
                let consumer = self
                    .st
                    .channel(channel)
                    .and_then(|ch| ch.gets.pop_front())
                    .unwrap_or(Consumer { queue: None, no_ack: false });
                let kind =
                    MsgKind::Deliver { consumer_tag: None, delivery_tag, redelivered, exchange, routing_key, consumer };
                self.begin(channel, kind, f.first);
            }
            (60, 72) => {
                if let Some(ch) = self.st.channel(channel) {
                    ch.gets.pop_front();
                }
            }
            (60, 80) | (60, 90) | (60, 120) => {
                let delivery_tag = c.u64()?;
                let bits = c.u8()?;
                let ts = f.first.start();
                let (multiple, requeue) = match method {
                    80 => (bits & 1 != 0, false),
                    90 => (false, bits & 1 != 0),
                    _ => (bits & 1 != 0, bits & 2 != 0),
                };
                if client {
                    let outcome = match method {
                        80 => SettleOutcome::Ack,
                        90 => SettleOutcome::Reject { requeue },
                        _ => SettleOutcome::Nack { requeue },
                    };
                    self.out.push(AmqpEvent::Settle(Settle { channel, delivery_tag, multiple, outcome, ts }));
                } else if method != 90 {
                    let ack = method == 80;
                    self.out.push(AmqpEvent::Confirm(Confirm { channel, delivery_tag, multiple, ack, ts }));
                }
            }
            (85, 10) => {
                let Some(ch) = self.st.channel(channel) else { return Some(()) };
                ch.confirm = true;
                ch.published = 0;
            }
            // Everything else (exchange.*, queue.bind, basic.qos, tx.*,
            // connection start/secure/open-ok...) says nothing about messages.
            _ => {}
        }
        Some(())
    }
}

impl FrameSink for Sink<'_> {
    fn keep(&self, kind: u8, channel: u16, _size: usize) -> usize {
        match kind {
            FRAME_METHOD => METHOD_KEEP,
            FRAME_HEADER => HEADER_KEEP,
            FRAME_BODY => {
                let seen = self
                    .st
                    .channels
                    .get(&channel)
                    .and_then(|ch| ch.content[self.side()].as_ref())
                    .map_or(FINGERPRINT_BYTES, |m| (m.body_size - m.left) as usize);
                FINGERPRINT_BYTES.saturating_sub(seen)
            }
            _ => 0,
        }
    }

    fn plausible(&self, kind: u8, channel: u16, size: usize) -> bool {
        let size_ok = match self.st.frame_max {
            Some(m) if m > 0 => size + FRAME_OVERHEAD <= m,
            _ => true,
        };
        let channel_ok = self.st.channel_max.is_none_or(|m| channel <= m);
        let kind_ok = match kind {
            FRAME_HEARTBEAT => channel == 0 && size == 0,
            FRAME_HEADER | FRAME_BODY => channel != 0,
            _ => true,
        };
        size_ok && channel_ok && kind_ok
    }

    fn on_frame(&mut self, f: RawFrame<'_>) {
        let st = &mut self.st.stats;
        st.frames += 1;
        if !f.captured {
            st.gap_frames += 1;
        }
        let side = self.side();
        self.st.last_channel[side] = Some(f.channel);
        match f.kind {
            FRAME_METHOD => self.on_method(&f),
            FRAME_HEADER => self.on_content_header(&f),
            FRAME_BODY => self.on_body(&f),
            _ => self.st.stats.heartbeats += 1,
        }
    }

    fn on_protocol_header(&mut self, header: &[u8], _ts: Ts) {
        if header == PROTOCOL_HEADER {
            // A new connection on this socket: nothing carries over.
            self.st.channels.clear();
            self.st.frame_max = None;
            self.st.channel_max = None;
        } else {
            // AMQP 1.0 (or a version the broker proposes instead).
            self.st.stats.unsupported_protocol = true;
        }
    }

    fn predict_next(&self) -> Option<(u16, usize)> {
        let channel = self.st.last_channel[self.side()]?;
        let m = self.st.channels.get(&channel)?.content[self.side()].as_ref()?;
        if !m.header_seen || m.left == 0 {
            return None;
        }
        let size = usize::try_from(m.left).unwrap_or(usize::MAX).min(self.st.body_frame_max());
        (size <= framing::MAX_FRAME_SIZE).then_some((channel, size))
    }

    fn on_desync(&mut self) {
        let side = self.side();
        let stats = &mut self.st.stats;
        stats.desyncs += 1;
        for ch in self.st.channels.values_mut() {
            if ch.content[side].take().is_some() {
                stats.messages_incomplete += 1;
            }
            // Requests or their answers may have been lost: FIFO matching
            // of later answers is no longer safe.
            stats.requests_dropped += (ch.consumes.len() + ch.gets.len()) as u64;
            ch.consumes.clear();
            ch.gets.clear();
        }
        self.st.last_channel[side] = None;
    }

    fn on_dropped_chunk(&mut self) {
        self.st.stats.chunks_dropped += 1;
    }

    fn stopped(&self) -> bool {
        self.st.stats.unsupported_protocol
    }
}

// ---------------------------------------------------------------------------
// Detection
// ---------------------------------------------------------------------------

/// Whether `first` (the first bytes seen on a connection, in either
/// direction) look like AMQP 0-9-1: the client's protocol header, or, for
/// connections already open, a complete method, content-header or
/// heartbeat frame (frame-end octet included) followed by nothing or by
/// another plausible frame. Direction does not matter: both peers send
/// frames of the same shape.
pub fn looks_like_amqp(first: &[u8], direction: Direction) -> bool {
    let _ = direction;
    if first.len() >= PROTOCOL_HEADER.len() && first.starts_with(PROTOCOL_HEADER) {
        return true;
    }
    if !matches!(first.first(), Some(&(FRAME_METHOD | FRAME_HEADER | FRAME_HEARTBEAT))) {
        return false;
    }
    if !framing::plausible_frame(first, true, framing::MAX_FRAME_SIZE) {
        return false;
    }
    let size = u32::from_be_bytes([first[3], first[4], first[5], first[6]]) as usize;
    let rest = &first[size + FRAME_OVERHEAD..];
    rest.len() < framing::FRAME_HEADER_LEN || framing::plausible_frame(rest, false, framing::MAX_FRAME_SIZE)
}

#[cfg(test)]
mod tests;

//! HTTP/2 over cleartext TCP (h2c: prior knowledge, or an HTTP/1.1 request
//! upgraded by `101 Switching Protocols`, answered on stream 1), over TLS
//! once the TLS uprobes give its plaintext, and gRPC on top of it:
//! frames read out of syscall-sized chunks per direction, header blocks
//! decoded with each direction's HPACK table, one exchange per stream.
//! DATA payloads are skipped by length, never kept.
//!
//! Connections older than the agent are picked up at a frame boundary; their
//! dynamic tables are unknown, so references to entries never seen are
//! counted and named nothing, and the rest of each block still decodes.
pub mod frame;
pub mod hpack;
pub mod huffman;

use rustc_hash::FxHashMap;

use super::http1::{head::Headers, Exchange, H2cUpgrade, RequestHead, ResponseHead};
use super::{Chunk, Direction};
use crate::model::TraceParent;
use frame::FrameHeader;

/// Streams open at once on one connection; beyond, new streams are not
/// followed (counted).
pub const MAX_STREAMS: usize = 256;
/// Longest header block (HEADERS + CONTINUATION payload) kept; the rest of
/// a longer one is not decoded (counted as a header block not captured).
pub const MAX_HEADER_BLOCK: usize = 16 * 1024;
/// The value `network.protocol.version` needs: `RequestHead::version` of an
/// HTTP/2 exchange.
pub const VERSION: u8 = 2;

/// A request stream began: what the trace context needs at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamStart {
    pub stream: u32,
    /// Entry and exit of the syscall that carried the request's HEADERS.
    pub ts_enter: u64,
    pub ts_exit: u64,
    pub traceparent: Option<TraceParent>,
    pub tracestate: Option<String>,
}

/// What a gRPC call said beside HTTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcCall {
    /// `package.Service` and `Method` of the `:path` `/package.Service/Method`.
    pub service: String,
    pub method: String,
    /// `grpc-status` of the trailers (or of a trailers-only response); None
    /// when not seen (not captured, or a table entry we never saw).
    pub status: Option<u32>,
}

/// One finished stream: an HTTP exchange (version [`VERSION`]) and, for
/// `application/grpc`, the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamExchange {
    pub stream: u32,
    pub exchange: Exchange,
    pub grpc: Option<GrpcCall>,
    /// Stream 1 of an upgraded connection: its request was an HTTP/1.1 one,
    /// announced as such (no `Started` message).
    pub upgraded: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Http2Message {
    Started(StreamStart),
    Finished(Box<StreamExchange>),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Http2Stats {
    pub parse_errors: u64,
    /// A frame header fell in bytes not captured; framing found again at a
    /// later chunk that starts with a frame.
    pub desyncs: u64,
    /// Header blocks cut by the capture (their first fields still decoded).
    pub blocks_cut: u64,
    /// References to dynamic-table entries never seen (a connection older
    /// than the agent, a block not captured).
    pub unknown_fields: u64,
    pub unmatched: u64,
    pub streams_dropped: u64,
}

/// The fields of one header block periscope uses.
#[derive(Clone, Debug, Default)]
struct Fields {
    method: Option<String>,
    path: Option<String>,
    authority: Option<String>,
    status: Option<u16>,
    content_type: Option<String>,
    content_length: Option<u64>,
    user_agent: Option<String>,
    traceparent: Option<TraceParent>,
    tracestate: Option<String>,
    grpc_status: Option<u32>,
    /// Fields that could not be named, or the block was cut.
    incomplete: bool,
}

impl Fields {
    fn absorb(&mut self, name: &[u8], value: &[u8]) {
        let text = || String::from_utf8_lossy(value).into_owned();
        match name {
            b":method" => self.method = Some(text()),
            b":path" => self.path = Some(text()),
            b":authority" | b"host" => self.authority = Some(text()),
            b":status" => self.status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()),
            b"content-type" => self.content_type = Some(text()),
            b"content-length" => self.content_length = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()),
            b"user-agent" => self.user_agent = Some(text()),
            b"traceparent" => self.traceparent = self.traceparent.or_else(|| TraceParent::parse(text().trim())),
            b"tracestate" => self.tracestate = Some(text()),
            b"grpc-status" => self.grpc_status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()),
            hpack::UNKNOWN_NAME => self.incomplete = true,
            _ => {}
        }
    }
}

/// What a frame of one direction meant.
#[derive(Debug)]
enum Event {
    Headers { stream: u32, end_stream: bool, fields: Box<Fields> },
    Data { stream: u32, len: u32, end_stream: bool },
    Reset { stream: u32 },
}

/// A header block waiting for its CONTINUATION frames.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    /// A PUSH_PROMISE's block: decoded for the table only.
    push: bool,
    bytes: Vec<u8>,
    cut: bool,
}

/// The frames of one direction.
#[derive(Debug, Default)]
struct Reader {
    hpack: hpack::Decoder,
    /// Bytes of the client preface still to pass (the requests' direction of
    /// a connection seen from its start).
    preface: usize,
    head: [u8; frame::HEADER_LEN],
    head_len: usize,
    /// The frame whose payload is being read, and how much of it is left.
    frame: Option<FrameHeader>,
    left: u32,
    /// Keep the payload (header blocks, RST_STREAM's code)?
    keep: bool,
    payload: Vec<u8>,
    /// Part of the kept payload was not captured.
    cut: bool,
    block: Option<Block>,
    /// Framing lost: waiting for a chunk that starts with a frame header.
    lost: bool,
}

impl Reader {
    fn feed(&mut self, chunk: &Chunk<'_>, events: &mut Vec<Event>, stats: &mut Http2Stats) {
        let mut data = chunk.data;
        let mut missing = chunk.missing() as u64;
        if self.lost {
            // Writers start their writes at frame boundaries: resume at one.
            let start: Option<&[u8; frame::HEADER_LEN]> = data.get(..frame::HEADER_LEN).and_then(|h| h.try_into().ok());
            if !start.is_some_and(FrameHeader::plausible) {
                return;
            }
            self.lost = false;
        }
        while !data.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(data.len());
                if !frame::PREFACE[frame::PREFACE.len() - self.preface..].starts_with(&data[..n]) {
                    // Not the preface after all: frames from here.
                    self.preface = 0;
                    continue;
                }
                self.preface -= n;
                data = &data[n..];
                continue;
            }
            let Some(h) = self.frame else {
                let n = (frame::HEADER_LEN - self.head_len).min(data.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&data[..n]);
                self.head_len += n;
                data = &data[n..];
                if self.head_len < frame::HEADER_LEN {
                    break;
                }
                self.head_len = 0;
                if !FrameHeader::plausible(&self.head) {
                    stats.desyncs += 1;
                    self.lose();
                    return;
                }
                self.begin(FrameHeader::parse(&self.head), events, stats);
                continue;
            };
            let n = (self.left as usize).min(data.len());
            if self.keep {
                let room = MAX_HEADER_BLOCK.saturating_sub(self.payload.len());
                self.payload.extend_from_slice(&data[..n.min(room)]);
                self.cut |= n > room;
            }
            self.left -= n as u32;
            data = &data[n..];
            if self.left == 0 {
                self.end(h, events, stats);
            }
        }
        if missing == 0 {
            return;
        }
        if let Some(h) = self.frame {
            // The rest of this frame's payload is in the gap: framing holds
            // when the gap ends with it.
            let n = u64::from(self.left).min(missing);
            self.left -= n as u32;
            missing -= n;
            self.cut |= self.keep && n > 0;
            if self.left == 0 {
                self.end(h, events, stats);
            }
        }
        if missing > 0 || self.head_len > 0 {
            // A frame header is in the gap.
            stats.desyncs += 1;
            if self.block.is_some() {
                stats.blocks_cut += 1;
                self.hpack.uncertain = true;
            }
            self.lose();
        }
    }

    fn lose(&mut self) {
        self.lost = true;
        self.frame = None;
        self.head_len = 0;
        self.block = None;
        self.payload.clear();
        self.cut = false;
    }

    fn begin(&mut self, h: FrameHeader, events: &mut Vec<Event>, stats: &mut Http2Stats) {
        self.keep = matches!(h.kind, frame::HEADERS | frame::CONTINUATION | frame::PUSH_PROMISE | frame::RST_STREAM);
        self.payload.clear();
        self.cut = false;
        self.left = h.length;
        self.frame = Some(h);
        if h.length == 0 {
            self.end(h, events, stats);
        }
    }

    /// A frame's payload is complete (or skipped).
    fn end(&mut self, h: FrameHeader, events: &mut Vec<Event>, stats: &mut Http2Stats) {
        self.frame = None;
        let payload = std::mem::take(&mut self.payload);
        let cut = std::mem::take(&mut self.cut);
        match h.kind {
            frame::DATA => events.push(Event::Data { stream: h.stream, len: h.length, end_stream: h.end_stream() }),
            frame::RST_STREAM => events.push(Event::Reset { stream: h.stream }),
            frame::HEADERS | frame::PUSH_PROMISE => {
                let fragment = if cut {
                    // Padding and priority fields lead; the end is unknown.
                    let skip = usize::from(h.flags & frame::FLAG_PADDED != 0)
                        + if h.flags & frame::FLAG_PRIORITY != 0 { 5 } else { 0 };
                    payload.get(skip..)
                } else {
                    frame::headers_fragment(h.flags, &payload)
                };
                let push = h.kind == frame::PUSH_PROMISE;
                let fragment = fragment.map(|f| if push { f.get(4..).unwrap_or_default() } else { f });
                let Some(fragment) = fragment else {
                    stats.parse_errors += 1;
                    self.hpack.uncertain = true;
                    return;
                };
                self.block =
                    Some(Block { stream: h.stream, end_stream: h.end_stream(), push, bytes: fragment.to_vec(), cut });
                if h.flags & frame::FLAG_END_HEADERS != 0 || cut {
                    self.decode_block(events, stats);
                }
            }
            frame::CONTINUATION => match &mut self.block {
                Some(b) if b.stream == h.stream => {
                    let room = MAX_HEADER_BLOCK.saturating_sub(b.bytes.len());
                    b.bytes.extend_from_slice(&payload[..payload.len().min(room)]);
                    b.cut |= cut || payload.len() > room;
                    if h.flags & frame::FLAG_END_HEADERS != 0 || b.cut {
                        self.decode_block(events, stats);
                    }
                }
                _ => stats.parse_errors += 1,
            },
            _ => {}
        }
        self.payload = payload;
        self.payload.clear();
    }

    fn decode_block(&mut self, events: &mut Vec<Event>, stats: &mut Http2Stats) {
        let Some(block) = self.block.take() else { return };
        let mut fields = Box::<Fields>::default();
        match self.hpack.decode(&block.bytes, |n, v| fields.absorb(n, v)) {
            Ok(s) => stats.unknown_fields += u64::from(s.unknown),
            // A cut block ends inside a field: what came before it stands.
            Err(hpack::HpackError::Truncated) if block.cut => {}
            Err(_) => {
                stats.parse_errors += 1;
                self.hpack.uncertain = true;
                fields.incomplete = true;
            }
        }
        if block.cut {
            stats.blocks_cut += 1;
            self.hpack.uncertain = true;
            fields.incomplete = true;
        }
        if !block.push {
            events.push(Event::Headers { stream: block.stream, end_stream: block.end_stream, fields });
        }
    }
}

#[derive(Debug)]
struct Stream {
    request: Box<Fields>,
    start_enter: u64,
    start_exit: u64,
    request_end: Option<u64>,
    request_bytes: u64,
    response: Option<Box<Fields>>,
    response_start_enter: u64,
    response_bytes: u64,
    grpc_status: Option<u32>,
}

/// The HTTP/2 state of one connection.
#[derive(Debug)]
pub struct Http2Session {
    requests: Direction,
    req: Reader,
    resp: Reader,
    streams: FxHashMap<u32, Stream>,
    events: Vec<Event>,
    stats: Http2Stats,
    /// Stream 1 is an upgraded HTTP/1.1 request.
    upgraded: bool,
    /// Streams ended by their response's content-length before their
    /// END_STREAM (a client that stops reading there: curl), most recent
    /// last: the END_STREAM frame that may follow is no stray.
    ended_by_length: Vec<u32>,
}

/// Streams remembered in `ended_by_length`.
const MAX_ENDED_BY_LENGTH: usize = 32;

impl Http2Session {
    /// `requests`: the direction requests travel (Ingress for a server);
    /// `preface`: the connection is seen from its start, so the client's
    /// first bytes are the connection preface.
    pub fn new(requests: Direction, preface: bool) -> Self {
        let mut req = Reader::default();
        if preface {
            req.preface = frame::PREFACE.len();
        }
        Self {
            requests,
            req,
            resp: Reader::default(),
            streams: FxHashMap::default(),
            events: Vec::new(),
            stats: Http2Stats::default(),
            upgraded: false,
            ended_by_length: Vec::new(),
        }
    }

    /// The connection of an HTTP/1.1 request answered `101` with `Upgrade:
    /// h2c`: the client's connection preface comes next, and stream 1, half
    /// closed by the client, answers `upgrade.request`.
    pub fn upgraded(requests: Direction, upgrade: H2cUpgrade) -> Self {
        let mut session = Self::new(requests, true);
        let h = upgrade.request.headers;
        let request = Fields {
            method: Some(upgrade.request.method),
            path: Some(upgrade.request.target),
            authority: h.host,
            content_length: h.content_length,
            user_agent: h.user_agent,
            traceparent: h.traceparent,
            tracestate: h.tracestate,
            incomplete: upgrade.request.truncated,
            ..Fields::default()
        };
        session.streams.insert(
            1,
            Stream {
                request: Box::new(request),
                start_enter: upgrade.start_enter,
                start_exit: upgrade.start_exit,
                request_end: Some(upgrade.end.unwrap_or(upgrade.start_exit)),
                request_bytes: upgrade.body_bytes,
                response: None,
                response_start_enter: 0,
                response_bytes: 0,
                grpc_status: None,
            },
        );
        session.upgraded = true;
        session
    }

    pub fn stats(&self) -> &Http2Stats {
        &self.stats
    }

    /// Streams begun and not finished.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    pub fn on_chunk(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Http2Message>) {
        let is_request = chunk.direction == self.requests;
        let mut events = std::mem::take(&mut self.events);
        if is_request {
            self.req.feed(chunk, &mut events, &mut self.stats);
        } else {
            self.resp.feed(chunk, &mut events, &mut self.stats);
        }
        for event in events.drain(..) {
            if is_request {
                self.on_request_event(event, chunk, out);
            } else {
                self.on_response_event(event, chunk, out);
            }
        }
        self.events = events;
    }

    pub fn on_close(&mut self, _out: &mut Vec<Http2Message>) {
        self.stats.unmatched += self.streams.len() as u64;
        self.streams.clear();
    }

    fn on_request_event(&mut self, event: Event, chunk: &Chunk<'_>, out: &mut Vec<Http2Message>) {
        match event {
            Event::Headers { stream, end_stream, fields } => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    // Request trailers.
                    if end_stream {
                        s.request_end = Some(chunk.ts_exit);
                    }
                    return;
                }
                if self.streams.len() >= MAX_STREAMS {
                    self.stats.streams_dropped += 1;
                    return;
                }
                out.push(Http2Message::Started(StreamStart {
                    stream,
                    ts_enter: chunk.ts_enter,
                    ts_exit: chunk.ts_exit,
                    traceparent: fields.traceparent,
                    tracestate: fields.tracestate.clone(),
                }));
                self.streams.insert(
                    stream,
                    Stream {
                        request: fields,
                        start_enter: chunk.ts_enter,
                        start_exit: chunk.ts_exit,
                        request_end: end_stream.then_some(chunk.ts_exit),
                        request_bytes: 0,
                        response: None,
                        response_start_enter: 0,
                        response_bytes: 0,
                        grpc_status: None,
                    },
                );
            }
            Event::Data { stream, len, end_stream } => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.request_bytes += u64::from(len);
                    if end_stream {
                        s.request_end = Some(chunk.ts_exit);
                    }
                }
            }
            Event::Reset { stream } => {
                // The client gave up: answered or not, the stream is over.
                self.finish(stream, chunk.ts_exit, out);
            }
        }
    }

    fn on_response_event(&mut self, event: Event, chunk: &Chunk<'_>, out: &mut Vec<Http2Message>) {
        let stream_id = match &event {
            Event::Headers { stream, .. } | Event::Data { stream, .. } | Event::Reset { stream } => *stream,
        };
        let Some(s) = self.streams.get_mut(&stream_id) else {
            if let Some(i) = self.ended_by_length.iter().position(|&id| id == stream_id) {
                // The END_STREAM after a body that was complete already.
                if matches!(event, Event::Headers { end_stream: true, .. } | Event::Data { end_stream: true, .. }) {
                    self.ended_by_length.remove(i);
                }
                return;
            }
            // Its request was not seen (older than the agent, or not followed).
            if let Event::Headers { end_stream: true, .. } | Event::Data { end_stream: true, .. } = event {
                self.stats.unmatched += 1;
            }
            return;
        };
        let end = match event {
            Event::Headers { end_stream, fields, .. } => {
                match &s.response {
                    None if fields.status.is_some_and(|c| (100..200).contains(&c)) => {} // 1xx: the final head follows
                    None => {
                        s.response_start_enter = chunk.ts_enter;
                        s.grpc_status = fields.grpc_status;
                        s.response = Some(fields);
                    }
                    // Trailers.
                    Some(_) => s.grpc_status = fields.grpc_status.or(s.grpc_status),
                }
                end_stream
            }
            Event::Data { len, end_stream, .. } => {
                s.response_bytes += u64::from(len);
                // All the body its content-length announced: a client may
                // read no further (curl does not wait for the END_STREAM of
                // an empty DATA frame), so the stream ends here.
                let complete =
                    s.response.as_ref().and_then(|r| r.content_length).is_some_and(|n| s.response_bytes >= n);
                if complete && !end_stream {
                    if self.ended_by_length.len() >= MAX_ENDED_BY_LENGTH {
                        self.ended_by_length.remove(0);
                    }
                    self.ended_by_length.push(stream_id);
                }
                end_stream || complete
            }
            Event::Reset { .. } => true,
        };
        if end {
            self.finish(stream_id, chunk.ts_exit, out);
        }
    }

    /// Stream `id` ended at `ts`: its exchange, when it was answered.
    fn finish(&mut self, id: u32, ts: u64, out: &mut Vec<Http2Message>) {
        let Some(s) = self.streams.remove(&id) else { return };
        let Some(response) = s.response else {
            self.stats.unmatched += 1;
            return;
        };
        let req = *s.request;
        // gRPC by its content type; when that was a table entry we never
        // saw, by the shape of its path (`/package.Service/Method`).
        let is_grpc = match req.content_type.as_deref() {
            Some(c) => c.starts_with("application/grpc"),
            None => req.incomplete && req.path.as_deref().is_some_and(looks_like_grpc_path),
        };
        let grpc = is_grpc.then(|| {
            let path = req.path.as_deref().unwrap_or_default();
            let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
            GrpcCall { service: service.to_owned(), method: method.to_owned(), status: s.grpc_status }
        });
        let request = RequestHead {
            method: req.method.unwrap_or_else(|| "_OTHER".to_owned()),
            // Empty when `:path` could not be named (an entry of a table we
            // never saw): no route then, rather than a wrong one.
            target: req.path.unwrap_or_default(),
            version: VERSION,
            headers: Headers {
                host: req.authority,
                traceparent: req.traceparent,
                tracestate: req.tracestate,
                content_length: req.content_length,
                user_agent: req.user_agent,
                ..Headers::default()
            },
            truncated: req.incomplete,
        };
        let response = ResponseHead {
            status: response.status.unwrap_or(0),
            version: VERSION,
            headers: Headers { content_length: response.content_length, ..Headers::default() },
            truncated: response.incomplete,
        };
        out.push(Http2Message::Finished(Box::new(StreamExchange {
            stream: id,
            exchange: Exchange {
                request,
                response,
                request_start_enter: s.start_enter,
                request_start_exit: s.start_exit,
                request_end: s.request_end.unwrap_or(s.start_exit),
                response_start_enter: s.response_start_enter,
                // Events of two CPUs may come out of order: a stream never
                // ends before it began.
                response_end: ts.max(s.start_enter),
                request_body_bytes: s.request_bytes,
                response_body_bytes: s.response_bytes,
            },
            grpc,
            upgraded: self.upgraded && id == 1,
        })));
    }
}

/// `/package.Service/Method`: two segments, a dot in the first.
fn looks_like_grpc_path(path: &str) -> bool {
    let mut parts = path.strip_prefix('/').unwrap_or_default().split('/');
    matches!((parts.next(), parts.next(), parts.next()), (Some(s), Some(m), None) if s.contains('.') && !m.is_empty())
}

impl super::Session for Http2Session {
    type Message = Http2Message;
    const PROTOCOL: &'static str = "http2";

    fn on_chunk(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Http2Message>) {
        Http2Session::on_chunk(self, chunk, out);
    }

    fn on_close(&mut self, out: &mut Vec<Http2Message>) {
        Http2Session::on_close(self, out);
    }

    fn side(&self) -> super::Side {
        super::Side::reading_requests_from(self.requests)
    }

    fn counts(&self) -> super::Counts {
        use super::{Count, NO_COUNT};
        let s = &self.stats;
        [
            (Count::ParseError, "malformed frame or header block", s.parse_errors),
            (Count::Desync, "frame header not captured", s.desyncs),
            (Count::Unmatched, "no partner", s.unmatched),
            (Count::Skipped, "header block not captured", s.blocks_cut),
            (Count::Skipped, "header not in the dynamic table", s.unknown_fields),
            (Count::Skipped, "too many streams", s.streams_dropped),
            NO_COUNT,
            NO_COUNT,
        ]
    }
}

#[cfg(test)]
mod tests;

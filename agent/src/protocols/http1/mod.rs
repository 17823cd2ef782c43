//! HTTP/1.x over one connection: frames requests and responses out of
//! syscall-sized chunks (split, pipelined, partially captured) and pairs each
//! request with its response. Bodies are skipped by length, never kept.
pub mod chunked;
pub mod head;

use std::collections::VecDeque;

use chunked::{ChunkedDecoder, Progress};
pub use head::{looks_like_request, looks_like_response, may_become_request, RequestHead, ResponseHead};
use head::{Parsed, MAX_HEAD};

use super::{Chunk, Direction};
use crate::model::TraceParent;

/// Requests waiting for a response on one connection (pipelining depth).
const MAX_PENDING: usize = 64;

/// One request and its response, with the syscall times that bound them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub request: RequestHead,
    pub response: ResponseHead,
    /// Entry and exit of the syscall that carried the request's first byte.
    pub request_start_enter: u64,
    pub request_start_exit: u64,
    /// Exit of the syscall that carried the request's last byte.
    pub request_end: u64,
    /// Entry of the syscall that carried the response's first byte.
    pub response_start_enter: u64,
    /// Exit of the syscall that carried the response's last byte.
    pub response_end: u64,
    pub request_body_bytes: u64,
    pub response_body_bytes: u64,
}

/// A request head just parsed, before its exchange completes: what the
/// trace context needs early (a long request's trace is known from its head).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadSeen {
    /// Entry of the syscall that carried the request's first byte.
    pub start_enter: u64,
    pub traceparent: Option<TraceParent>,
    pub tracestate: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Http1Stats {
    pub parse_errors: u64,
    pub desyncs: u64,
    /// Requests that never got a response, responses with no request.
    pub unmatched: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Body {
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Ends when the connection closes (a response without length).
    UntilClose,
    /// Framing unknown (head or framing bytes not captured): ends when the
    /// other side speaks, the connection closes, or it goes idle.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Idle,
    Head {
        buf: Vec<u8>,
        start_enter: u64,
        start_exit: u64,
    },
    Body {
        body: Body,
        bytes: u64,
    },
    /// Bytes we cannot frame: ignored until the other side speaks.
    Lost,
}

#[derive(Clone, Debug)]
struct Side {
    state: State,
    /// Exit time of the last chunk seen in this direction.
    last_exit: u64,
}

impl Side {
    fn new() -> Self {
        Self { state: State::Idle, last_exit: 0 }
    }

    fn open_ended(&self) -> bool {
        matches!(self.state, State::Body { body: Body::Unknown | Body::UntilClose, .. })
    }
}

#[derive(Clone, Debug)]
struct Pending {
    head: RequestHead,
    start_enter: u64,
    start_exit: u64,
    end: Option<u64>,
    body_bytes: u64,
    response: Option<(ResponseHead, u64)>,
}

/// The HTTP/1 state of one connection.
#[derive(Clone, Debug)]
pub struct Http1Session {
    /// Direction in which requests travel (Ingress for a server).
    requests: Direction,
    req: Side,
    resp: Side,
    pending: VecDeque<Pending>,
    /// Request heads parsed since `drain_heads` was last called.
    heads: Vec<HeadSeen>,
    upgraded: bool,
    /// A request upgraded to HTTP/2 (101 with `Upgrade: h2c`), and where in
    /// the chunk of the 101 the HTTP/2 bytes begin: the connection goes on as
    /// HTTP/2, whose stream 1 answers that request.
    h2c: Option<(H2cUpgrade, usize)>,
    stats: Http1Stats,
}

/// A request answered on HTTP/2's stream 1 after `101 Switching Protocols`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H2cUpgrade {
    pub request: RequestHead,
    pub start_enter: u64,
    pub start_exit: u64,
    /// End of the request (its body) when it was seen.
    pub end: Option<u64>,
    pub body_bytes: u64,
}

#[derive(Clone, Copy)]
enum Msg {
    Request,
    Response,
}

impl Http1Session {
    /// `requests` is the direction requests travel in: Ingress when the
    /// tracked process is the server, Egress when it is the client.
    pub fn new(requests: Direction) -> Self {
        Self {
            requests,
            req: Side::new(),
            resp: Side::new(),
            pending: VecDeque::new(),
            heads: Vec::new(),
            upgraded: false,
            h2c: None,
            stats: Http1Stats::default(),
        }
    }

    pub fn stats(&self) -> &Http1Stats {
        &self.stats
    }

    /// Request heads parsed since the last call, oldest first.
    pub fn drain_heads(&mut self) -> std::vec::Drain<'_, HeadSeen> {
        self.heads.drain(..)
    }

    pub fn requests_direction(&self) -> Direction {
        self.requests
    }

    /// True after a 101 Switching Protocols: the rest is not HTTP/1.
    pub fn upgraded(&self) -> bool {
        self.upgraded
    }

    /// The request a `101` switched to HTTP/2 (`Upgrade: h2c`), and how
    /// many bytes of the last chunk were HTTP/1 (the rest is HTTP/2).
    pub fn take_h2c_upgrade(&mut self) -> Option<(H2cUpgrade, usize)> {
        self.h2c.take()
    }

    pub fn on_chunk(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>) {
        if self.upgraded {
            return;
        }
        if chunk.direction == self.requests {
            // The client speaks again: an open-ended response is over.
            if self.resp.open_ended() {
                self.finish(Msg::Response, self.resp.last_exit, out);
            }
            if self.resp.state == State::Lost {
                self.resp.state = State::Idle;
            }
            self.feed(Msg::Request, chunk, out);
        } else {
            if self.req.open_ended() {
                self.finish(Msg::Request, self.req.last_exit, out);
            }
            if self.req.state == State::Lost {
                self.req.state = State::Idle;
            }
            self.feed(Msg::Response, chunk, out);
        }
    }

    /// The connection closed: responses framed by close end here; requests
    /// still waiting are counted as unmatched.
    pub fn on_close(&mut self, out: &mut Vec<Exchange>) {
        if self.resp.open_ended() {
            self.finish(Msg::Response, self.resp.last_exit, out);
        }
        self.stats.unmatched += self.pending.len() as u64;
        self.pending.clear();
    }

    /// Nothing happened for a while: end an open-ended response at its last byte.
    pub fn on_idle(&mut self, out: &mut Vec<Exchange>) {
        if self.resp.open_ended() && self.pending.front().is_some_and(|p| p.response.is_some()) {
            self.finish(Msg::Response, self.resp.last_exit, out);
        }
    }

    /// Requests seen and not yet answered.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn side(&mut self, msg: &Msg) -> &mut Side {
        match msg {
            Msg::Request => &mut self.req,
            Msg::Response => &mut self.resp,
        }
    }

    fn feed(&mut self, msg: Msg, chunk: &Chunk<'_>, out: &mut Vec<Exchange>) {
        self.side(&msg).last_exit = chunk.ts_exit;
        let mut data = chunk.data;
        let mut missing = chunk.missing() as u64;
        loop {
            let state = std::mem::replace(&mut self.side(&msg).state, State::Idle);
            match state {
                State::Idle if data.is_empty() => {
                    if missing > 0 {
                        // A message began in bytes we did not capture.
                        self.stats.desyncs += 1;
                        self.side(&msg).state = State::Lost;
                    }
                    return;
                }
                State::Idle => {
                    self.side(&msg).state =
                        State::Head { buf: Vec::new(), start_enter: chunk.ts_enter, start_exit: chunk.ts_exit };
                }
                State::Head { mut buf, start_enter, start_exit } => {
                    let before = buf.len();
                    // The common case, a whole head in one chunk, parses in
                    // place; only a split head is copied.
                    let view: &[u8] = if before == 0 && data.len() <= MAX_HEAD {
                        data
                    } else {
                        let room = MAX_HEAD.saturating_sub(before);
                        buf.extend_from_slice(&data[..data.len().min(room)]);
                        &buf
                    };
                    let parsed = match msg {
                        Msg::Request => head::parse_request(view).map(|p| match p {
                            Parsed::Complete(h, n) => Some((Head::Request(h), n)),
                            Parsed::Partial => None,
                        }),
                        Msg::Response => head::parse_response(view).map(|p| match p {
                            Parsed::Complete(h, n) => Some((Head::Response(h), n)),
                            Parsed::Partial => None,
                        }),
                    };
                    if view.as_ptr() == data.as_ptr() && !matches!(parsed, Ok(Some(_))) {
                        buf.extend_from_slice(data);
                    }
                    match parsed {
                        Ok(Some((h, len))) => {
                            data = &data[len - before..];
                            let body = self.begin(msg, h, start_enter, start_exit);
                            if let Some((_, at)) = &mut self.h2c {
                                // HTTP/2 from the next byte on.
                                *at = chunk.data.len() - data.len();
                                self.side(&msg).state = State::Idle;
                                return;
                            }
                            self.side(&msg).state = State::Body { body, bytes: 0 };
                        }
                        Ok(None) if missing > 0 || buf.len() >= MAX_HEAD => {
                            // The head's end is beyond what we can see.
                            let lenient = match msg {
                                Msg::Request => head::parse_truncated_request(&buf).map(Head::Request),
                                Msg::Response => head::parse_truncated_response(&buf).map(Head::Response),
                            };
                            match lenient {
                                Some(h) => {
                                    self.begin(msg, h, start_enter, start_exit);
                                    self.side(&msg).state = State::Body { body: Body::Unknown, bytes: 0 };
                                }
                                None => {
                                    self.stats.desyncs += 1;
                                    self.side(&msg).state = State::Lost;
                                }
                            }
                            return;
                        }
                        Ok(None) => {
                            self.side(&msg).state = State::Head { buf, start_enter, start_exit };
                            return;
                        }
                        Err(_) => {
                            self.stats.parse_errors += 1;
                            self.side(&msg).state = State::Lost;
                            return;
                        }
                    }
                }
                State::Body { body: Body::Length(left), bytes } => {
                    let take = (left as usize).min(data.len());
                    data = &data[take..];
                    let mut left = left - take as u64;
                    let mut bytes = bytes + take as u64;
                    if left > 0 && data.is_empty() && missing > 0 {
                        let skip = left.min(missing);
                        left -= skip;
                        missing -= skip;
                        bytes += skip;
                    }
                    self.side(&msg).state = State::Body { body: Body::Length(left), bytes };
                    if left > 0 {
                        return;
                    }
                    self.finish(msg, chunk.ts_exit, out);
                }
                State::Body { body: Body::Chunked(mut dec), bytes } => match dec.feed(data) {
                    Ok(Progress::Done(n)) => {
                        data = &data[n..];
                        self.side(&msg).state = State::Body { body: Body::Chunked(dec), bytes: bytes + n as u64 };
                        self.finish(msg, chunk.ts_exit, out);
                    }
                    Ok(Progress::NeedMore) => {
                        let bytes = bytes + data.len() as u64;
                        let body = if missing == 0 || dec.skip(missing) {
                            Body::Chunked(dec)
                        } else {
                            self.stats.desyncs += 1;
                            Body::Unknown
                        };
                        self.side(&msg).state = State::Body { body, bytes: bytes + missing };
                        return;
                    }
                    Err(_) => {
                        self.stats.parse_errors += 1;
                        self.side(&msg).state = State::Body { body: Body::Unknown, bytes };
                        return;
                    }
                },
                State::Body { body: body @ (Body::UntilClose | Body::Unknown), bytes } => {
                    let bytes = bytes + data.len() as u64 + missing;
                    self.side(&msg).state = State::Body { body, bytes };
                    return;
                }
                State::Lost => {
                    self.side(&msg).state = State::Lost;
                    return;
                }
            }
        }
    }

    /// A head was parsed: record it and decide how its body is framed.
    fn begin(&mut self, msg: Msg, h: Head, start_enter: u64, start_exit: u64) -> Body {
        match (msg, h) {
            (Msg::Request, Head::Request(head)) => {
                let body = if head.headers.chunked {
                    Body::Chunked(ChunkedDecoder::default())
                } else {
                    Body::Length(head.headers.content_length.unwrap_or(0))
                };
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                    self.stats.unmatched += 1;
                }
                if self.heads.len() < MAX_PENDING {
                    self.heads.push(HeadSeen {
                        start_enter,
                        traceparent: head.headers.traceparent,
                        tracestate: head.headers.tracestate.clone(),
                    });
                }
                self.pending.push_back(Pending {
                    head,
                    start_enter,
                    start_exit,
                    end: None,
                    body_bytes: 0,
                    response: None,
                });
                body
            }
            (Msg::Response, Head::Response(head)) => {
                let request = self.pending.iter_mut().find(|p| p.response.is_none());
                let is_head = request.as_ref().is_some_and(|p| p.head.method == "HEAD");
                let informational = (100..200).contains(&head.status);
                let body = if is_head || informational || head.status == 204 || head.status == 304 {
                    Body::Length(0)
                } else if head.headers.chunked {
                    Body::Chunked(ChunkedDecoder::default())
                } else if let Some(n) = head.headers.content_length {
                    Body::Length(n)
                } else if head.truncated {
                    Body::Unknown
                } else {
                    Body::UntilClose
                };
                if head.status == 101 {
                    self.upgraded = true;
                    if head.headers.upgrade_h2c && request.as_ref().is_some_and(|p| p.head.headers.upgrade_h2c) {
                        let i = self.pending.iter().position(|p| p.response.is_none()).expect("found above");
                        let p = self.pending.remove(i).expect("index checked");
                        // Requests before it were never answered.
                        self.stats.unmatched += self.pending.len() as u64;
                        self.pending.clear();
                        let upgrade = H2cUpgrade {
                            request: p.head,
                            start_enter: p.start_enter,
                            start_exit: p.start_exit,
                            end: p.end,
                            body_bytes: p.body_bytes,
                        };
                        self.h2c = Some((upgrade, 0));
                        return Body::Length(0);
                    }
                }
                match request {
                    Some(p) if !informational || head.status == 101 => {
                        p.response = Some((head, start_enter));
                    }
                    Some(_) => {} // 100 Continue and friends: the final response follows
                    None => self.stats.unmatched += 1,
                }
                body
            }
            _ => unreachable!("head kind follows the message kind"),
        }
    }

    /// The current message of `msg`'s direction ended at `ts`.
    fn finish(&mut self, msg: Msg, ts: u64, out: &mut Vec<Exchange>) {
        let bytes = match &self.side(&msg).state {
            State::Body { bytes, .. } => *bytes,
            _ => 0,
        };
        self.side(&msg).state = State::Idle;
        match msg {
            Msg::Request => {
                if let Some(p) = self.pending.iter_mut().rev().find(|p| p.end.is_none()) {
                    p.end = Some(ts);
                    p.body_bytes = bytes;
                }
            }
            Msg::Response => {
                let Some(idx) = self.pending.iter().position(|p| p.response.is_some()) else {
                    return; // a response we could not pair, already counted
                };
                if idx > 0 {
                    // Requests before it were never answered.
                    self.stats.unmatched += idx as u64;
                    self.pending.drain(..idx);
                }
                let p = self.pending.pop_front().expect("index checked");
                let (response, response_start_enter) = p.response.expect("found by response");
                if self.upgraded {
                    self.pending.clear();
                }
                out.push(Exchange {
                    request_end: p.end.unwrap_or(p.start_exit),
                    request: p.head,
                    response,
                    request_start_enter: p.start_enter,
                    request_start_exit: p.start_exit,
                    response_start_enter,
                    response_end: ts,
                    request_body_bytes: p.body_bytes,
                    response_body_bytes: bytes,
                });
            }
        }
    }
}

enum Head {
    Request(RequestHead),
    Response(ResponseHead),
}

impl super::Session for Http1Session {
    type Message = Exchange;
    const PROTOCOL: &'static str = "http";

    fn on_chunk(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>) {
        Http1Session::on_chunk(self, chunk, out);
    }

    fn on_close(&mut self, out: &mut Vec<Exchange>) {
        Http1Session::on_close(self, out);
    }

    fn on_idle(&mut self, out: &mut Vec<Exchange>) {
        Http1Session::on_idle(self, out);
    }

    fn side(&self) -> super::Side {
        super::Side::reading_requests_from(self.requests)
    }

    fn counts(&self) -> super::Counts {
        use super::{Count, NO_COUNT};
        let s = &self.stats;
        [
            (Count::ParseError, "malformed message", s.parse_errors),
            (Count::Desync, "message start not captured", s.desyncs),
            (Count::Unmatched, "no partner", s.unmatched),
            NO_COUNT,
            NO_COUNT,
            NO_COUNT,
            NO_COUNT,
            NO_COUNT,
        ]
    }
}

#[cfg(test)]
mod tests;

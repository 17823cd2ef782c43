//! Per-connection state: which protocol a socket speaks, its parser, the
//! identities of its exchanges, and when it was last active. Keyed by
//! (pid, fd); bounded in size (least recently active evicted). Every
//! protocol goes through one [`Session`] shape; what its messages become is
//! `conclude`'s.
mod conclude;
mod detect;
mod peers;

use lru::LruCache;
use rustc_hash::FxBuildHasher;

use crate::capture::{CapturePolicy, Role, Tuple};
use crate::context::{ConnTrace, Started, ThreadKey, Tracker};
use crate::model::TraceParent;
use crate::protocols::{
    amqp::{AmqpConnection, ConsumedMessage, Publish},
    http1, http2, mysql, postgres,
    sql::SqlCall,
    Chunk, Count, Direction, Session, Side, MAX_COUNTS,
};
use crate::telemetry::{Counter, Telemetry};

use conclude::{Buffer, Conclude, Cx, Scratch};
use detect::{detect, looks_like_tls_record, HeldChunk, DETECT_ATTEMPTS, HOLD_BYTES, HOLD_CHUNKS};
use peers::Peers;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub pid: u32,
    pub fd: i32,
}

/// The parser of a connection.
pub enum Parser {
    /// Not decided yet; small chunks are held until enough bytes decide.
    Detecting {
        attempts: u8,
        held: Vec<HeldChunk>,
    },
    Http(http1::Http1Session),
    Postgres(postgres::PgSession),
    MySql(mysql::MySqlSession),
    Amqp(AmqpConnection),
    Http2(http2::Http2Session),
    /// Not a protocol we parse (TLS, ...): ignored until closed.
    Unknown,
}

/// Runs `$body` with `$s` bound to the connection's session, whatever its
/// protocol (static dispatch); `$other` while there is none.
macro_rules! with_session {
    ($parser:expr, $s:ident => $body:expr, _ => $other:expr) => {
        match $parser {
            Parser::Http($s) => $body,
            Parser::Postgres($s) => $body,
            Parser::MySql($s) => $body,
            Parser::Amqp($s) => $body,
            Parser::Http2($s) => $body,
            Parser::Detecting { .. } | Parser::Unknown => $other,
        }
    };
}

impl std::fmt::Debug for Parser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Parser::Detecting { .. } => "detecting",
            Parser::Http(_) => "http1",
            Parser::Postgres(_) => "postgresql",
            Parser::MySql(_) => "mysql",
            Parser::Amqp(_) => "amqp",
            Parser::Http2(_) => "http2",
            Parser::Unknown => "unknown",
        })
    }
}

#[derive(Debug)]
pub struct Connection {
    pub tuple: Tuple,
    pub role: Role,
    pub parser: Parser,
    pub last_activity: u64,
    /// Counts already added to the agent counters (the sessions keep totals).
    reported: [u64; MAX_COUNTS],
    /// The identities of its exchanges (trace context).
    pub trace: ConnTrace,
    /// TLS plaintext came for it (from the TLS uprobes).
    tls: bool,
}

/// What a connection produced: a server request whose trace link can now be
/// settled, a delivery to match with its producer, or one finished exchange,
/// each with where it happened.
#[derive(Debug)]
pub enum Outcome {
    /// A request to the tracked process began (HTTP: its head was read),
    /// with the traceparent it carried.
    RequestStarted {
        key: ConnKey,
        tuple: Tuple,
        started: Started,
        /// HTTP/2: the request's stream id (its caller's, on the same connection).
        stream: Option<u32>,
        traceparent: Option<TraceParent>,
        tracestate: Option<String>,
    },
    /// A message was delivered to a consumer of the tracked process.
    Delivered {
        key: ConnKey,
        tuple: Tuple,
        started: Started,
        link: DeliveryLink,
    },
    Http {
        key: ConnKey,
        tuple: Tuple,
        server_side: bool,
        started: Started,
        exchange: http1::Exchange,
        /// HTTP/2 streams of `application/grpc`: the call.
        grpc: Option<http2::GrpcCall>,
    },
    Sql {
        key: ConnKey,
        tuple: Tuple,
        server_side: bool,
        started: Started,
        call: SqlCall,
    },
    Published {
        key: ConnKey,
        tuple: Tuple,
        started: Started,
        publish: Publish,
    },
    Consumed {
        key: ConnKey,
        tuple: Tuple,
        started: Started,
        message: ConsumedMessage,
    },
    /// A PostgreSQL connection adopted after its startup: its database is
    /// for someone else to find ([`ConnectionTable::tell_database`]).
    DatabaseUnknown {
        key: ConnKey,
        tuple: Tuple,
        server_side: bool,
    },
    /// The connection was classified: the kernel should capture it this way
    /// from now on (the table does no I/O; the pipeline tells the kernel).
    Capture {
        key: ConnKey,
        tuple: Tuple,
        policy: CapturePolicy,
    },
}

/// What a delivered message says about its producer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryLink {
    pub traceparent: Option<TraceParent>,
    pub tracestate: Option<String>,
    /// Body size and first bytes: the same message published on this host.
    pub fingerprint: Option<u64>,
}

pub struct ConnectionTable {
    /// Least recently active first out when full.
    conns: LruCache<ConnKey, Connection, FxBuildHasher>,
    /// Connections by their endpoints, to find the other end of a local one.
    peers: Peers,
    scratch: Scratch,
}

impl std::fmt::Debug for ConnectionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionTable").field("connections", &self.conns.len()).finish()
    }
}

impl ConnectionTable {
    pub fn new(max: usize) -> Self {
        let cap = std::num::NonZeroUsize::new(max.max(1)).expect("at least one");
        Self { conns: LruCache::with_hasher(cap, FxBuildHasher), peers: Peers::default(), scratch: Scratch::default() }
    }

    /// The tracked other end of a connection on this host: almost always
    /// one or none (see `peers` for when there are more).
    pub fn peers(&self, tuple: &Tuple) -> impl Iterator<Item = (ConnKey, &Connection)> {
        self.with_ends(&tuple.reversed())
    }

    /// The connections with these addresses, seen from the same end.
    pub fn with_ends(&self, tuple: &Tuple) -> impl Iterator<Item = (ConnKey, &Connection)> {
        self.peers.with_ends(tuple).iter().filter_map(|k| self.conns.peek(k).map(|c| (*k, c)))
    }

    /// Client-side connections whose local endpoint is `addr` (`netns`
    /// matters for loopback addresses only): the callers of a server
    /// connection whose client called a translated address.
    pub fn at_endpoint(&self, addr: std::net::SocketAddr, netns: u32) -> impl Iterator<Item = (ConnKey, &Connection)> {
        self.peers.at_endpoint(addr, netns).iter().filter_map(|k| self.conns.peek(k).map(|c| (*k, c)))
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// A connection was accepted or connected: start from a clean state
    /// (the fd number may have been used by an earlier connection).
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        &mut self,
        key: ConnKey,
        tuple: Tuple,
        role: Role,
        thread: ThreadKey,
        now: u64,
        tracker: &mut Tracker,
        out: &mut Vec<Outcome>,
        t: &Telemetry,
    ) {
        self.close(key, tracker, out, t);
        self.insert(key, tuple, role, now, tracker, t);
        if let Some(conn) = self.conns.get_mut(&key) {
            tracker.on_open(&mut conn.trace, thread, role == Role::Client, t);
        }
    }

    fn insert(&mut self, key: ConnKey, tuple: Tuple, role: Role, now: u64, tracker: &mut Tracker, t: &Telemetry) {
        let conn = Connection {
            tuple,
            role,
            parser: Parser::Detecting { attempts: 0, held: Vec::new() },
            last_activity: now,
            reported: [0; MAX_COUNTS],
            trace: ConnTrace::default(),
            tls: false,
        };
        // Full: the least recently active connection goes.
        if let Some((old_key, mut gone)) = self.conns.push(key, conn) {
            self.peers.remove(old_key, &gone.tuple);
            if old_key != key {
                tracker.on_close(&mut gone.trace, old_key.pid);
                t.inc(Counter::ConnectionsEvicted);
            }
        }
        self.peers.insert(key, &tuple, role != Role::Server);
    }

    /// Bytes moved on a connection by `thread`.
    #[allow(clippy::too_many_arguments)]
    pub fn data(
        &mut self,
        key: ConnKey,
        tuple: Tuple,
        role: Role,
        thread: ThreadKey,
        chunk: &Chunk<'_>,
        tracker: &mut Tracker,
        out: &mut Vec<Outcome>,
        t: &Telemetry,
    ) {
        // A different peer on the same fd: the close was missed.
        if self.conns.peek(&key).is_some_and(|c| c.tuple != tuple) {
            self.close(key, tracker, out, t);
        }
        if !self.conns.contains(&key) {
            self.insert(key, tuple, role, chunk.ts_exit, tracker, t);
        }
        // Most recently active now.
        let Some(conn) = self.conns.get_mut(&key) else { return };
        conn.last_activity = chunk.ts_exit;
        if let Parser::Detecting { attempts, held } = &mut conn.parser {
            if looks_like_tls_record(chunk.data) {
                // Ciphertext (its plaintext, if the library is followed,
                // comes as TLS events): no protocol, no attempt spent.
                held.clear();
                return;
            }
            if held.first().is_some_and(|h| h.direction() != chunk.direction) {
                held.clear(); // the other side spoke: what was held was not a message start
            }
            let joined: Vec<u8>;
            let probe = if held.is_empty() {
                *chunk
            } else {
                joined = held.iter().flat_map(|h| h.data().iter()).chain(chunk.data).copied().collect();
                Chunk { data: &joined, ..*chunk }
            };
            match detect(&probe, conn.role, &conn.tuple) {
                Some(parser) => {
                    let replay = std::mem::take(held);
                    conn.parser = parser;
                    if let Some(policy) = capture_policy(&conn.parser) {
                        out.push(Outcome::Capture { key, tuple: conn.tuple, policy });
                    }
                    for h in &replay {
                        on_known_chunk(conn, key, thread, &h.as_chunk(), &mut self.scratch, tracker, out, t);
                    }
                }
                None if http1::may_become_request(probe.data)
                    && probe.data.len() < HOLD_BYTES
                    && held.len() < HOLD_CHUNKS
                    && chunk.missing() == 0 =>
                {
                    held.push(HeldChunk::of(chunk));
                    return;
                }
                None if *attempts + 1 >= DETECT_ATTEMPTS => {
                    conn.parser = Parser::Unknown;
                    t.inc(Counter::UnknownProtocol);
                    return;
                }
                None => {
                    *attempts += 1;
                    held.clear();
                    return;
                }
            }
        }
        if matches!(conn.parser, Parser::Unknown) {
            return;
        }
        on_known_chunk(conn, key, thread, chunk, &mut self.scratch, tracker, out, t);
    }

    /// TLS plaintext arrives for `key`: a PostgreSQL session that switched
    /// to TLS (SSLRequest, `S`) goes on with the decrypted stream. At the
    /// first plaintext of any other connection, what its parser made of the
    /// bytes before was ciphertext (a handshake seen before its SSL object
    /// was tied to the socket): it starts over from the plaintext, and a
    /// session built on ciphertext is counted as a desync.
    /// (`tls_plaintext_seen` after the event's chunks: the connection is
    /// known to be TLS from then on, whether it existed before or not.)
    pub fn tls_plaintext(&mut self, key: ConnKey, t: &Telemetry) {
        let Some(conn) = self.conns.peek_mut(&key) else { return };
        if std::mem::replace(&mut conn.tls, true) {
            return;
        }
        match &mut conn.parser {
            Parser::Postgres(session) => {
                if session.encrypted() {
                    session.decrypted();
                }
            }
            // Its plaintext handshake came before the switch to TLS.
            Parser::MySql(_) => {}
            Parser::Detecting { .. } | Parser::Unknown => {
                conn.parser = Parser::Detecting { attempts: 0, held: Vec::new() };
            }
            Parser::Http(_) | Parser::Http2(_) | Parser::Amqp(_) => {
                report(conn, t);
                let protocol = with_session!(&conn.parser, s => protocol_of(s), _ => "unknown");
                t.add_for(Counter::ProtocolDesync, protocol, "ciphertext before plaintext", 1);
                conn.parser = Parser::Detecting { attempts: 0, held: Vec::new() };
                conn.reported = [0; MAX_COUNTS];
            }
        }
    }

    /// A TLS plaintext event of `key` was taken in.
    pub fn tls_plaintext_seen(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.peek_mut(&key) {
            conn.tls = true;
        }
    }

    /// The user and database of a PostgreSQL connection adopted after its
    /// startup, found elsewhere; ignored when the fd now holds another
    /// connection. Whether it was applied.
    pub fn tell_database(&mut self, key: ConnKey, tuple: &Tuple, user: &str, database: &str) -> bool {
        match self.conns.peek_mut(&key) {
            Some(Connection { tuple: now, parser: Parser::Postgres(session), .. }) if now == tuple => {
                session.tell_identity(user, database);
                true
            }
            _ => false,
        }
    }

    /// The fd was closed: flush what the close completes and forget it.
    pub fn close(&mut self, key: ConnKey, tracker: &mut Tracker, out: &mut Vec<Outcome>, t: &Telemetry) {
        let Some(mut conn) = self.conns.pop(&key) else { return };
        self.peers.remove(key, &conn.tuple);
        if let Parser::Detecting { attempts, held } = &conn.parser {
            // Bytes were seen and none made sense: this was not a protocol we know.
            if *attempts > 0 || !held.is_empty() {
                t.inc(Counter::UnknownProtocol);
            }
        }
        let server_side = serves(&conn);
        let Connection { parser, trace, tuple, .. } = &mut conn;
        let mut cx = Cx { tracker: &mut *tracker, trace, key, tuple: *tuple, server_side, thread: None, out, t };
        with_session!(parser, s => close_session(s, &mut self.scratch, &mut cx), _ => {});
        report(&mut conn, t);
        tracker.on_close(&mut conn.trace, key.pid);
    }

    /// Forget every connection of a process that exited.
    pub fn forget_process(&mut self, pid: u32, tracker: &mut Tracker, out: &mut Vec<Outcome>, t: &Telemetry) {
        let keys: Vec<ConnKey> = self.conns.iter().map(|(k, _)| *k).filter(|k| k.pid == pid).collect();
        for key in keys {
            self.close(key, tracker, out, t);
        }
    }

    /// Periodic housekeeping: end open-ended responses on connections quiet
    /// for `idle_ns`, drop state of connections quiet for `expire_ns`.
    #[allow(clippy::too_many_arguments)]
    pub fn sweep(
        &mut self,
        now: u64,
        idle_ns: u64,
        expire_ns: u64,
        tracker: &mut Tracker,
        out: &mut Vec<Outcome>,
        t: &Telemetry,
    ) {
        let mut expired = Vec::new();
        for (key, conn) in self.conns.iter_mut() {
            let quiet = now.saturating_sub(conn.last_activity);
            if quiet >= expire_ns {
                expired.push(*key);
            } else if quiet >= idle_ns {
                let server_side = serves(conn);
                let Connection { parser, trace, tuple, .. } = conn;
                let mut cx =
                    Cx { tracker: &mut *tracker, trace, key: *key, tuple: *tuple, server_side, thread: None, out, t };
                with_session!(parser, s => idle_session(s, &mut self.scratch, &mut cx), _ => {});
            }
        }
        for key in expired {
            self.close(key, tracker, out, t);
        }
    }
}

/// One chunk of a connection whose protocol is known.
#[allow(clippy::too_many_arguments)]
fn on_known_chunk(
    conn: &mut Connection,
    key: ConnKey,
    thread: ThreadKey,
    chunk: &Chunk<'_>,
    scratch: &mut Scratch,
    tracker: &mut Tracker,
    out: &mut Vec<Outcome>,
    t: &Telemetry,
) {
    let server_side = serves(conn);
    // AMQP has no request/response exchanges and HTTP/2 multiplexes them:
    // their messages carry their identity.
    let exchanges = !matches!(conn.parser, Parser::Amqp(_) | Parser::Http2(_));
    let Connection { parser, trace, tuple, .. } = conn;
    let tuple = *tuple;
    let mut started = None;
    if exchanges && !server_side && chunk.direction == Direction::Egress {
        // A request written by a client may be what ends the previous
        // exchange (its answer's last bytes were beyond the capture): the
        // parser decides that first, so the context layer sees the previous
        // exchange complete when it decides who this request is for (a
        // queue's hand-off).
        let mut cx =
            Cx { tracker: &mut *tracker, trace: &mut *trace, key, tuple, server_side, thread: Some(thread), out, t };
        with_session!(parser, s => feed(s, chunk, scratch, &mut cx), _ => {});
        tracker.on_chunk(trace, server_side, thread, key.fd, chunk, t);
    } else {
        if exchanges {
            started = tracker.on_chunk(trace, server_side, thread, key.fd, chunk, t);
        }
        let mut cx =
            Cx { tracker: &mut *tracker, trace: &mut *trace, key, tuple, server_side, thread: Some(thread), out, t };
        with_session!(parser, s => feed(s, chunk, scratch, &mut cx), _ => {});
    }
    announce(tracker, key, conn, server_side, started, out);
    if let Parser::Postgres(session) = &mut conn.parser {
        if session.take_adopted() {
            out.push(Outcome::DatabaseUnknown { key, tuple, server_side });
        }
    }
    report(conn, t);
    // `Upgrade: h2c` answered 101: HTTP/2 from here, the rest of this chunk
    // included (a client may read the 101 and the first frames at once).
    let upgrade = match &mut conn.parser {
        Parser::Http(session) => session.take_h2c_upgrade().map(|u| (u, session.requests_direction())),
        _ => None,
    };
    if let Some(((upgrade, http1_bytes), requests)) = upgrade {
        conn.parser = Parser::Http2(http2::Http2Session::upgraded(requests, upgrade));
        conn.reported = [0; MAX_COUNTS];
        if let Some(policy) = capture_policy(&conn.parser) {
            out.push(Outcome::Capture { key, tuple: conn.tuple, policy });
        }
        if http1_bytes < chunk.total {
            let rest = Chunk {
                direction: chunk.direction,
                data: &chunk.data[http1_bytes.min(chunk.data.len())..],
                total: chunk.total - http1_bytes,
                ts_enter: chunk.ts_enter,
                ts_exit: chunk.ts_exit,
            };
            on_known_chunk(conn, key, thread, &rest, scratch, tracker, out, t);
        }
    }
}

/// Feeds a chunk to a session; what it produced concludes at once.
fn feed<S>(session: &mut S, chunk: &Chunk<'_>, scratch: &mut Scratch, cx: &mut Cx<'_>)
where
    S: Session,
    S::Message: Conclude,
    Scratch: Buffer<S::Message>,
{
    let buf = scratch.buffer();
    session.on_chunk(chunk, buf);
    for message in buf.drain(..) {
        message.conclude(cx);
    }
}

fn close_session<S>(session: &mut S, scratch: &mut Scratch, cx: &mut Cx<'_>)
where
    S: Session,
    S::Message: Conclude,
    Scratch: Buffer<S::Message>,
{
    let buf = scratch.buffer();
    session.on_close(buf);
    for message in buf.drain(..) {
        message.conclude(cx);
    }
}

fn idle_session<S>(session: &mut S, scratch: &mut Scratch, cx: &mut Cx<'_>)
where
    S: Session,
    S::Message: Conclude,
    Scratch: Buffer<S::Message>,
{
    let buf = scratch.buffer();
    session.on_idle(buf);
    for message in buf.drain(..) {
        message.conclude(cx);
    }
}

/// Announces the requests this chunk started: a server request as soon as
/// its traceparent (if any) is known, so its trace link is settled at its
/// start and never lost to a timeout; a client request's own traceparent
/// names its span.
fn announce(
    tracker: &mut Tracker,
    key: ConnKey,
    conn: &mut Connection,
    server_side: bool,
    started: Option<Started>,
    out: &mut Vec<Outcome>,
) {
    let tuple = conn.tuple;
    match &mut conn.parser {
        Parser::Http(session) => {
            for head in session.drain_heads() {
                let tp = head.traceparent;
                if !server_side {
                    if let Some(tp) = &tp {
                        tracker.on_outgoing_traceparent(&mut conn.trace, head.start_enter, tp);
                    }
                    continue;
                }
                if let Some(tp) = &tp {
                    tracker.on_incoming_traceparent(tp);
                }
                if let Some(started) = conn.trace.started_at(head.start_enter) {
                    out.push(Outcome::RequestStarted {
                        key,
                        tuple,
                        started,
                        stream: None,
                        traceparent: tp,
                        tracestate: head.tracestate,
                    });
                }
            }
        }
        // Database servers: no context travels in the protocol.
        _ => {
            if let (true, Some(started)) = (server_side, started) {
                out.push(Outcome::RequestStarted {
                    key,
                    tuple,
                    started,
                    stream: None,
                    traceparent: None,
                    tracestate: None,
                });
            }
        }
    }
}

/// How the kernel should capture a connection that speaks `parser`'s
/// protocol, when not as prefixes: an AMQP client reads many deliveries at
/// once (a consumer that fell behind), each of which the parser needs; an
/// HTTP/2 syscall moves many frames (a stream's DATA, then its trailers),
/// whose headers and header blocks the parser needs, either way.
fn capture_policy(parser: &Parser) -> Option<CapturePolicy> {
    match parser {
        Parser::Amqp(a) if a.side() == Side::Client => Some(CapturePolicy::AmqpFrames),
        Parser::Http2(_) => Some(CapturePolicy::Http2Frames),
        _ => None,
    }
}

/// Is the tracked process the server end of this connection?
fn serves(conn: &Connection) -> bool {
    with_session!(&conn.parser, s => s.side() == Side::Server, _ => conn.role == Role::Server)
}

/// Adds what a session counted since the last report to the agent
/// counters, by protocol and reason.
fn report(conn: &mut Connection, t: &Telemetry) {
    let (protocol, now) = with_session!(&conn.parser, s => (protocol_of(s), s.counts()), _ => return);
    for ((count, reason, total), was) in now.into_iter().zip(conn.reported.iter_mut()) {
        let counter = match count {
            Count::ParseError => Counter::ParseErrors,
            Count::Desync => Counter::ProtocolDesync,
            Count::Unmatched => Counter::RequestsUnmatched,
            Count::Skipped => Counter::SkippedMessages,
        };
        t.add_for(counter, protocol, reason, total.saturating_sub(*was));
        *was = total;
    }
}

fn protocol_of<S: Session>(_: &S) -> &'static str {
    S::PROTOCOL
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{
        assembly::{Assembler, AssemblyOptions},
        sampler::Sampler,
    };

    const TH: ThreadKey = ThreadKey { pid: 1, tid: 1, loop_seq: 0 };

    fn new_table(max: usize) -> (ConnectionTable, Tracker) {
        (ConnectionTable::new(max), Tracker::new(Assembler::new(AssemblyOptions::default(), Sampler::default()), 64))
    }

    fn tuple(port: u16) -> Tuple {
        Tuple {
            local: "127.0.0.1:8080".parse().unwrap(),
            remote: format!("127.0.0.1:{port}").parse().unwrap(),
            netns: 1,
        }
    }

    fn chunk(direction: Direction, data: &[u8], t: u64) -> Chunk<'_> {
        Chunk { direction, data, total: data.len(), ts_enter: t, ts_exit: t + 1 }
    }

    /// The finished exchanges of `out` (announcements left out).
    fn finished(out: &[Outcome]) -> Vec<&Outcome> {
        out.iter()
            .filter(|o| {
                !matches!(o, Outcome::RequestStarted { .. } | Outcome::Delivered { .. } | Outcome::Capture { .. })
            })
            .collect()
    }

    #[test]
    fn a_server_request_is_announced_with_its_traceparent_when_its_head_is_read() {
        let t = Telemetry::default();
        let (mut table, mut tr) = new_table(16);
        let mut out = Vec::new();
        let key = ConnKey { pid: 1, fd: 5 };
        let head = b"GET / HTTP/1.1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n";
        table.data(key, tuple(1), Role::Server, TH, &chunk(Direction::Ingress, head, 1), &mut tr, &mut out, &t);
        assert!(out.is_empty(), "the head is not complete yet");
        table.data(key, tuple(1), Role::Server, TH, &chunk(Direction::Ingress, b"\r\n", 3), &mut tr, &mut out, &t);
        let [Outcome::RequestStarted { traceparent: Some(tp), started, .. }] = &out[..] else { panic!("{out:?}") };
        assert_eq!(tp.trace_id.to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(started.ts_enter, 1, "the request started with its first byte");
    }

    /// `Upgrade: h2c` (curl --http2 on http://): the HTTP/1.1 request, the
    /// server's 101 and its first HTTP/2 frames in one chunk, the client's
    /// preface; stream 1 answers the request: one exchange, version 2,
    /// status 200, a second stream after it too.
    #[test]
    fn an_h2c_upgrade_goes_on_as_http2_whose_stream_1_answers_the_request() {
        let t = Telemetry::default();
        let (mut table, mut tr) = new_table(16);
        let mut out = Vec::new();
        let key = ConnKey { pid: 1, fd: 5 };
        let request = b"GET /items/7 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n";
        let mut answer = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".to_vec();
        answer.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS
        answer.extend([0, 0, 1, 1, 4, 0, 0, 0, 1, 0x88]); // HEADERS :status 200, stream 1
        answer.extend([0, 0, 2, 0, 1, 0, 0, 0, 1, b'o', b'k']); // DATA, END_STREAM
        let mut preface = crate::protocols::http2::frame::PREFACE.to_vec();
        preface.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
        // Stream 3: GET / (static 2, 4), :status 404 (static 13).
        let next = [0, 0, 2, 1, 5, 0, 0, 0, 3, 0x82, 0x84];
        let next_answer = [0, 0, 1, 1, 5, 0, 0, 0, 3, 0x8d];
        for (i, (dir, data)) in [
            (Direction::Egress, &request[..]),
            (Direction::Ingress, &answer[..]),
            (Direction::Egress, &preface[..]),
            (Direction::Egress, &next[..]),
            (Direction::Ingress, &next_answer[..]),
        ]
        .into_iter()
        .enumerate()
        {
            table.data(key, tuple(1), Role::Client, TH, &chunk(dir, data, 10 * i as u64), &mut tr, &mut out, &t);
        }
        let done: Vec<(String, String, u16, u8)> = finished(&out)
            .iter()
            .map(|o| match o {
                Outcome::Http { exchange: e, .. } => {
                    (e.request.method.clone(), e.request.target.clone(), e.response.status, e.response.version)
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            done,
            [("GET".to_owned(), "/items/7".to_owned(), 200, 2), ("GET".to_owned(), "/".to_owned(), 404, 2)],
            "{out:?}"
        );
        assert!(matches!(table.conns.peek(&key).unwrap().parser, Parser::Http2(_)));
        // Once upgraded, the kernel walks its frames.
        let policies: Vec<CapturePolicy> = out
            .iter()
            .filter_map(|o| if let Outcome::Capture { policy, .. } = o { Some(*policy) } else { None })
            .collect();
        assert_eq!(policies, [CapturePolicy::Http2Frames]);
        assert_eq!(t.get_for(Counter::ParseErrors, "http2") + t.get_for(Counter::ProtocolDesync, "http2"), 0);
        assert_eq!(t.get_for(Counter::RequestsUnmatched, "http1"), 0);
    }

    /// curl 7.88 `--http2` against hypercorn, its socket I/O as strace saw
    /// it: the upgraded request, streams 3 and 5; curl stops reading once
    /// the 3 bytes of the last body are in, before that stream's END_STREAM
    /// (an empty DATA frame): the stream ends by its content-length.
    #[test]
    fn curl_h2c_upgrade_as_traced_gives_three_exchanges() {
        let t = Telemetry::default();
        let (mut table, mut tr) = new_table(16);
        let mut out = Vec::new();
        let key = ConnKey { pid: 1, fd: 5 };
        let chunks: &[(Direction, &[u8])] = &[
            (
                Direction::Egress,
                &[
                    71, 69, 84, 32, 47, 105, 116, 101, 109, 115, 47, 49, 32, 72, 84, 84, 80, 47, 49, 46, 49, 13, 10,
                    72, 111, 115, 116, 58, 32, 49, 50, 55, 46, 48, 46, 48, 46, 49, 58, 49, 56, 55, 55, 55, 13, 10, 85,
                    115, 101, 114, 45, 65, 103, 101, 110, 116, 58, 32, 99, 117, 114, 108, 47, 55, 46, 56, 56, 46, 49,
                    13, 10, 65, 99, 99, 101, 112, 116, 58, 32, 42, 47, 42, 13, 10, 67, 111, 110, 110, 101, 99, 116,
                    105, 111, 110, 58, 32, 85, 112, 103, 114, 97, 100, 101, 44, 32, 72, 84, 84, 80, 50, 45, 83, 101,
                    116, 116, 105, 110, 103, 115, 13, 10, 85, 112, 103, 114, 97, 100, 101, 58, 32, 104, 50, 99, 13, 10,
                    72, 84, 84, 80, 50, 45, 83, 101, 116, 116, 105, 110, 103, 115, 58, 32, 65, 65, 77, 65, 65, 65, 66,
                    107, 65, 65, 81, 67, 65, 65, 65, 65, 65, 65, 73, 65, 65, 65, 65, 65, 13, 10, 13, 10,
                ][..],
            ),
            (
                Direction::Ingress,
                &[
                    72, 84, 84, 80, 47, 49, 46, 49, 32, 49, 48, 49, 32, 13, 10, 100, 97, 116, 101, 58, 32, 84, 104,
                    117, 44, 32, 48, 51, 32, 68, 101, 99, 32, 50, 48, 50, 54, 32, 49, 51, 58, 52, 57, 58, 51, 55, 32,
                    71, 77, 84, 13, 10, 115, 101, 114, 118, 101, 114, 58, 32, 104, 121, 112, 101, 114, 99, 111, 114,
                    110, 45, 104, 49, 49, 13, 10, 99, 111, 110, 110, 101, 99, 116, 105, 111, 110, 58, 32, 117, 112,
                    103, 114, 97, 100, 101, 13, 10, 117, 112, 103, 114, 97, 100, 101, 58, 32, 104, 50, 99, 13, 10, 13,
                    10,
                ][..],
            ),
            (
                Direction::Egress,
                &[
                    80, 82, 73, 32, 42, 32, 72, 84, 84, 80, 47, 50, 46, 48, 13, 10, 13, 10, 83, 77, 13, 10, 13, 10, 0,
                    0, 18, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100, 0, 4, 2, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 4, 8, 0, 0,
                    0, 0, 0, 1, 255, 0, 1,
                ][..],
            ),
            (
                Direction::Ingress,
                &[
                    0, 0, 42, 4, 0, 0, 0, 0, 0, 0, 1, 0, 0, 16, 0, 0, 2, 0, 0, 0, 0, 0, 4, 0, 0, 255, 255, 0, 5, 0, 0,
                    64, 0, 0, 8, 0, 0, 0, 1, 0, 3, 0, 0, 0, 100, 0, 6, 0, 1, 0, 0, 0, 0, 39, 1, 4, 0, 0, 0, 1, 136, 92,
                    129, 103, 97, 150, 223, 61, 191, 74, 1, 149, 47, 148, 138, 8, 2, 113, 64, 179, 113, 167, 238, 50,
                    234, 152, 180, 111, 118, 137, 159, 213, 101, 176, 135, 178, 165, 167, 23, 0, 0, 3, 0, 0, 0, 0, 0,
                    1, 111, 107, 10, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 4, 1, 0, 0, 0, 0,
                ][..],
            ),
            (Direction::Egress, &[0, 0, 0, 4, 1, 0, 0, 0, 0][..]),
            (
                Direction::Egress,
                &[
                    0, 0, 41, 1, 5, 0, 0, 0, 3, 63, 225, 31, 130, 4, 134, 96, 201, 45, 40, 96, 95, 134, 65, 139, 8,
                    157, 92, 11, 129, 112, 220, 11, 206, 186, 239, 122, 136, 37, 182, 80, 195, 171, 188, 242, 225, 83,
                    3, 42, 47, 42,
                ][..],
            ),
            (
                Direction::Ingress,
                &[
                    0, 0, 4, 1, 4, 0, 0, 0, 3, 136, 192, 191, 190, 0, 0, 3, 0, 0, 0, 0, 0, 3, 111, 107, 10, 0, 0, 0, 0,
                    1, 0, 0, 0, 3,
                ][..],
            ),
            (
                Direction::Egress,
                &[0, 0, 14, 1, 5, 0, 0, 0, 5, 130, 4, 135, 98, 147, 33, 6, 170, 102, 25, 134, 192, 191, 190][..],
            ),
            (Direction::Ingress, &[0, 0, 4, 1, 4, 0, 0, 0, 5, 141, 192, 191, 190][..]),
            (Direction::Ingress, &[0, 0, 3, 0, 0, 0, 0, 0, 5, 111, 107, 10][..]),
        ];
        for (i, (dir, data)) in chunks.iter().enumerate() {
            table.data(key, tuple(1), Role::Client, TH, &chunk(*dir, data, 10 * i as u64), &mut tr, &mut out, &t);
        }
        table.close(key, &mut tr, &mut out, &t);
        let done: Vec<(String, u16)> = finished(&out)
            .iter()
            .map(|o| match o {
                Outcome::Http { exchange: e, .. } => (e.request.target.clone(), e.response.status),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(done, [("/items/1".to_owned(), 200), ("/items/2".to_owned(), 200), ("/missing/3".to_owned(), 404)]);
        assert_eq!(t.get_for(Counter::RequestsUnmatched, "http2"), 0);
    }

    /// Node's TLS, as the kernel showed it: the handshake read and written
    /// before the SSL object was tied to the socket (ciphertext, one record
    /// of which reads as HTTP/2 frames), then the plaintext of SSL_read and
    /// SSL_write. The exchange is the plaintext's.
    #[test]
    fn a_tls_handshake_seen_before_its_plaintext_does_not_decide_the_protocol() {
        let t = Telemetry::default();
        let (mut table, mut tr) = new_table(16);
        let mut out = Vec::new();
        let key = ConnKey { pid: 1, fd: 5 };
        let mut hello = vec![0x16, 0x03, 0x01, 0x01, 0x58, 0x01, 0x00, 0x01, 0x54, 0x03, 0x03];
        hello.resize(349, 0x11);
        let mut server_hello = vec![0x16, 0x03, 0x03, 0x00, 0x7a, 0x02, 0x00, 0x00, 0x76];
        server_hello.resize(1365, 0x22);
        let app = [0x17, 0x03, 0x03, 0x00, 0x40, 0x99, 0x98];
        for (i, (dir, data)) in
            [(Direction::Ingress, &hello[..]), (Direction::Egress, &server_hello[..]), (Direction::Ingress, &app[..])]
                .into_iter()
                .chain(std::iter::repeat_n((Direction::Egress, &app[..]), DETECT_ATTEMPTS as usize))
                .enumerate()
        {
            table.data(key, tuple(1), Role::Server, TH, &chunk(dir, data, i as u64), &mut tr, &mut out, &t);
        }
        assert!(matches!(table.conns.peek(&key).unwrap().parser, Parser::Detecting { attempts: 0, .. }));
        table.tls_plaintext(key, &t);
        let get = b"GET /ok/501 HTTP/1.1\r\nHost: a\r\n\r\n";
        table.data(key, tuple(1), Role::Server, TH, &chunk(Direction::Ingress, get, 20), &mut tr, &mut out, &t);
        table.tls_plaintext_seen(key);
        table.tls_plaintext(key, &t);
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        table.data(key, tuple(1), Role::Server, TH, &chunk(Direction::Egress, ok, 21), &mut tr, &mut out, &t);
        assert_eq!(finished(&out).len(), 1, "{out:?}");
        assert_eq!(t.get_for(Counter::ProtocolDesync, "http"), 0);
    }

    /// A session built from ciphertext (a plain connection's parser chose
    /// HTTP/2 from bytes that were a handshake) starts over at the first
    /// plaintext, counted; later plaintext keeps the session.
    #[test]
    fn a_session_built_on_ciphertext_starts_over_at_the_first_plaintext() {
        let t = Telemetry::default();
        let (mut table, mut tr) = new_table(16);
        let mut out = Vec::new();
        let key = ConnKey { pid: 1, fd: 5 };
        let h2_looking = [0x00, 0x00, 0x03, 0x01, 0x04, 0x00, 0x00, 0x00, 0x01, 0x82, 0x86, 0x84];
        table.data(key, tuple(1), Role::Server, TH, &chunk(Direction::Ingress, &h2_looking, 1), &mut tr, &mut out, &t);
        assert!(matches!(table.conns.peek(&key).unwrap().parser, Parser::Http2(_)));
        table.tls_plaintext(key, &t);
        assert_eq!(t.get_labeled(Counter::ProtocolDesync, "http2", "ciphertext before plaintext"), 1);
        let get = b"GET / HTTP/1.1\r\n\r\n";
        table.data(key, tuple(1), Role::Server, TH, &chunk(Direction::Ingress, get, 2), &mut tr, &mut out, &t);
        table.tls_plaintext_seen(key);
        table.tls_plaintext(key, &t);
        assert!(matches!(table.conns.peek(&key).unwrap().parser, Parser::Http(_)), "kept after the first plaintext");
    }

    #[test]
    fn detects_http_and_pairs_then_forgets_on_close() {
        let t = Telemetry::default();
        let (mut table, mut tr) = new_table(16);
        let mut out = Vec::new();
        let key = ConnKey { pid: 1, fd: 5 };
        table.data(
            key,
            tuple(1),
            Role::Unknown,
            TH,
            &chunk(Direction::Ingress, b"GET / HTTP/1.1\r\n\r\n", 1),
            &mut tr,
            &mut out,
            &t,
        );
        table.data(
            key,
            tuple(1),
            Role::Unknown,
            TH,
            &chunk(Direction::Egress, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2),
            &mut tr,
            &mut out,
            &t,
        );
        assert!(matches!(&finished(&out)[..], [Outcome::Http { server_side: true, .. }]));
        table.close(key, &mut tr, &mut out, &t);
        assert!(table.is_empty());
    }

    #[test]
    fn a_request_trickled_byte_by_byte_is_still_recognised() {
        let t = Telemetry::default();
        let (mut table, mut tr) = new_table(16);
        let mut out = Vec::new();
        let key = ConnKey { pid: 1, fd: 5 };
        for (i, b) in b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n".iter().enumerate() {
            table.data(
                key,
                tuple(1),
                Role::Unknown,
                TH,
                &chunk(Direction::Ingress, std::slice::from_ref(b), 10 + i as u64),
                &mut tr,
                &mut out,
                &t,
            );
        }
        table.data(
            key,
            tuple(1),
            Role::Unknown,
            TH,
            &chunk(Direction::Egress, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 100),
            &mut tr,
            &mut out,
            &t,
        );
        let [Outcome::Http { exchange, server_side: true, .. }] = &finished(&out)[..] else { panic!("{out:?}") };
        assert_eq!(exchange.request.target, "/slow");
        assert_eq!(exchange.request_start_exit, 11, "starts at the first byte");
        assert_eq!(t.get(Counter::UnknownProtocol), 0);
    }

    #[test]
    fn unknown_protocols_are_counted_once() {
        let t = Telemetry::default();
        let (mut table, mut tr) = new_table(16);
        let mut out = Vec::new();
        let key = ConnKey { pid: 1, fd: 5 };
        for i in 0..10 {
            table.data(
                key,
                tuple(1),
                Role::Unknown,
                TH,
                &chunk(Direction::Ingress, b"\x16\x03\x01garbage", i),
                &mut tr,
                &mut out,
                &t,
            );
        }
        assert_eq!(t.get(Counter::UnknownProtocol), 1);
        assert!(out.is_empty());
    }

    #[test]
    fn table_is_bounded_and_evicts_the_oldest() {
        let t = Telemetry::default();
        let (mut table, mut tr) = new_table(2);
        let mut out = Vec::new();
        for fd in 0..3 {
            let c = chunk(Direction::Ingress, b"GET / HTTP/1.1\r\n", fd as u64 * 10);
            table.data(ConnKey { pid: 1, fd }, tuple(fd as u16), Role::Unknown, TH, &c, &mut tr, &mut out, &t);
        }
        assert_eq!(table.len(), 2);
        assert_eq!(t.get(Counter::ConnectionsEvicted), 1);
        assert!(!table.conns.contains(&ConnKey { pid: 1, fd: 0 }));
    }

    #[test]
    fn new_peer_on_same_fd_resets_state() {
        let t = Telemetry::default();
        let (mut table, mut tr) = new_table(4);
        let mut out = Vec::new();
        let key = ConnKey { pid: 1, fd: 5 };
        table.data(
            key,
            tuple(1),
            Role::Unknown,
            TH,
            &chunk(Direction::Ingress, b"GET /a HTTP/1.1\r\n\r\n", 1),
            &mut tr,
            &mut out,
            &t,
        );
        table.data(
            key,
            tuple(2),
            Role::Unknown,
            TH,
            &chunk(Direction::Ingress, b"GET /b HTTP/1.1\r\n\r\n", 2),
            &mut tr,
            &mut out,
            &t,
        );
        table.data(
            key,
            tuple(2),
            Role::Unknown,
            TH,
            &chunk(Direction::Egress, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3),
            &mut tr,
            &mut out,
            &t,
        );
        let Outcome::Http { exchange, .. } = finished(&out)[0] else { panic!("not http") };
        assert_eq!(exchange.request.target, "/b");
        assert_eq!(t.get(Counter::RequestsUnmatched), 1, "the /a request lost its connection");
    }

    #[test]
    fn an_amqp_client_connection_asks_once_for_frame_capture() {
        let t = Telemetry::default();
        let (mut table, mut tr) = new_table(16);
        let mut out = Vec::new();
        let policies = |out: &[Outcome]| {
            out.iter()
                .filter_map(|o| if let Outcome::Capture { policy, .. } = o { Some(*policy) } else { None })
                .collect::<Vec<_>>()
        };
        let (client, broker) = (ConnKey { pid: 1, fd: 5 }, ConnKey { pid: 1, fd: 6 });
        table.data(
            client,
            tuple(1),
            Role::Client,
            TH,
            &chunk(Direction::Egress, b"AMQP\x00\x00\x09\x01", 1),
            &mut tr,
            &mut out,
            &t,
        );
        table.data(
            client,
            tuple(1),
            Role::Client,
            TH,
            &chunk(Direction::Ingress, &[8, 0, 0, 0, 0, 0, 0, 0xCE], 2),
            &mut tr,
            &mut out,
            &t,
        );
        assert_eq!(policies(&out), [CapturePolicy::AmqpFrames]);
        // A tracked broker reads the clients' frames: no spans, no policy.
        out.clear();
        table.data(
            broker,
            tuple(2),
            Role::Server,
            TH,
            &chunk(Direction::Ingress, b"AMQP\x00\x00\x09\x01", 3),
            &mut tr,
            &mut out,
            &t,
        );
        assert_eq!(policies(&out), []);
    }
}

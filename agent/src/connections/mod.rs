//! Per-connection state: which protocol a socket speaks, its parser state,
//! and when it was last active. Keyed by (pid, fd); bounded in size.
use rustc_hash::FxHashMap;

use crate::capture::{CapturePolicy, Role, Tuple};
use crate::context::{ConnTrace, Started, ThreadKey, Tracker};
use crate::model::traceparent::TraceParent;
use crate::protocols::amqp::{ConsumedMessage, Deliveries};
use crate::protocols::{
    Side,
    amqp::{self, AmqpEvent, AmqpSession, Publish},
    http1, mysql,
    postgres,
    sql::{self, SqlCall},
    Chunk, Direction,
};
use crate::telemetry::{Counter, Telemetry};

/// Chunks a connection may show before we give up recognising its protocol
/// (a socket watched mid-stream may start in the middle of a body).
const DETECT_ATTEMPTS: u8 = 4;
/// A request trickled in tiny pieces (slowloris, byte-wise writers) is held
/// while it can still become a request line, up to these bounds.
const HOLD_BYTES: usize = 512;
const HOLD_CHUNKS: usize = 64;

/// A chunk kept while the protocol is undecided, replayed once it is.
#[derive(Debug)]
pub struct HeldChunk {
    direction: Direction,
    data: Vec<u8>,
    ts_enter: u64,
    ts_exit: u64,
}

impl HeldChunk {
    fn as_chunk(&self) -> Chunk<'_> {
        Chunk {
            direction: self.direction,
            data: &self.data,
            total: self.data.len(),
            ts_enter: self.ts_enter,
            ts_exit: self.ts_exit,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub pid: u32,
    pub fd: i32,
}

pub enum Protocol {
    /// Not decided yet; small chunks are held until enough bytes decide.
    Detecting { attempts: u8, held: Vec<HeldChunk> },
    Http1(http1::Http1Session),
    Postgres(postgres::PgSession),
    MySql(mysql::MySqlSession),
    Amqp(Box<AmqpConn>),
    /// Not a protocol we parse (TLS, HTTP/2, ...): ignored until closed.
    Unknown,
}

impl std::fmt::Debug for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Detecting { .. } => "detecting",
            Protocol::Http1(_) => "http1",
            Protocol::Postgres(_) => "postgresql",
            Protocol::MySql(_) => "mysql",
            Protocol::Amqp(_) => "amqp",
            Protocol::Unknown => "unknown",
        })
    }
}

/// An AMQP 0-9-1 client connection: the frames, the deliveries awaiting
/// their ack, and the identities given to deliveries when they arrived.
pub struct AmqpConn {
    session: AmqpSession,
    deliveries: Deliveries,
    events: Vec<AmqpEvent>,
    consumed: Vec<ConsumedMessage>,
    /// (channel, delivery tag) -> identity of its CONSUMER span.
    started: FxHashMap<(u16, u64), Started>,
}

/// Deliveries remembered per connection until settled (beyond: the oldest
/// identities are dropped and the span becomes a root).
const MAX_AMQP_STARTED: usize = 4096;

impl AmqpConn {
    fn new(role: Side) -> Self {
        Self {
            session: AmqpSession::new(role),
            deliveries: Deliveries::new(),
            events: Vec::new(),
            consumed: Vec::new(),
            started: FxHashMap::default(),
        }
    }
}

impl std::fmt::Debug for AmqpConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConn").field("pending", &self.deliveries.pending()).finish()
    }
}

#[derive(Debug)]
pub struct Connection {
    pub tuple: Tuple,
    pub role: Role,
    pub protocol: Protocol,
    pub last_activity: u64,
    /// Stats already added to the agent counters (the sessions keep totals).
    reported: [u64; STATS],
    /// The identities of its exchanges (trace context).
    pub trace: ConnTrace,
}

/// What a session counted, in the agent's terms: (counter, reason, total so
/// far) for each of its stats; the table adds the increase since the last
/// report, labelled with the protocol. Fixed size: no allocation per chunk.
type Stats = [(Counter, &'static str, u64); STATS];
const STATS: usize = 8;
/// Pads a session's list to [`STATS`] entries.
const NONE: (Counter, &str, u64) = (Counter::ParseErrors, "", 0);

fn http1_stats(s: &http1::Http1Stats) -> Stats {
    [
        (Counter::ParseErrors, "malformed message", s.parse_errors),
        (Counter::ProtocolDesync, "message start not captured", s.desyncs),
        (Counter::RequestsUnmatched, "no partner", s.unmatched),
        NONE,
        NONE,
        NONE,
        NONE,
        NONE,
    ]
}

fn sql_stats(s: &sql::SqlStats) -> Stats {
    [
        (Counter::ParseErrors, "malformed message", s.parse_errors),
        (Counter::ProtocolDesync, "implausible header", s.desyncs),
        (Counter::ProtocolDesync, "message beyond capture", s.desyncs_uncaptured),
        (Counter::RequestsUnmatched, "response without request", s.orphan_responses),
        (Counter::RequestsUnmatched, "call never completed", s.calls_dropped),
        (Counter::SkippedMessages, "not parsed", s.skipped),
        NONE,
        NONE,
    ]
}

fn amqp_stats(a: &AmqpConn) -> Stats {
    let s = a.session.stats();
    let d = a.deliveries.stats();
    [
        (Counter::ParseErrors, "malformed frame", s.parse_errors),
        (Counter::ProtocolDesync, "framing lost", s.desyncs),
        (Counter::RequestsUnmatched, "message incomplete", s.messages_incomplete),
        (Counter::RequestsUnmatched, "content without message", s.orphan_content),
        (Counter::RequestsUnmatched, "consume request dropped", s.requests_dropped),
        // Acks of deliveries never seen (their frames were not captured).
        (Counter::RequestsUnmatched, "settle of unseen delivery", d.unmatched_settles),
        (Counter::RequestsUnmatched, "delivery never settled", d.evicted),
        (Counter::SkippedMessages, "chunk dropped while unaligned", s.chunks_dropped),
    ]
}

/// What a connection produced: a server request whose trace link can now be
/// settled, a delivery to match with its producer, or one finished exchange,
/// each with where it happened.
#[derive(Debug)]
pub enum Outcome {
    /// A request to the tracked process began (HTTP: its head was read),
    /// with the traceparent it carried.
    RequestStarted { key: ConnKey, tuple: Tuple, started: Started, traceparent: Option<TraceParent>, tracestate: Option<String> },
    /// A message was delivered to a consumer of the tracked process.
    Delivered { key: ConnKey, tuple: Tuple, started: Started, link: DeliveryLink },
    Http { key: ConnKey, tuple: Tuple, server_side: bool, started: Started, exchange: http1::Exchange },
    Sql { key: ConnKey, tuple: Tuple, server_side: bool, started: Started, call: SqlCall },
    Published { key: ConnKey, tuple: Tuple, started: Started, publish: Publish },
    Consumed { key: ConnKey, tuple: Tuple, started: Started, message: ConsumedMessage },
    /// A PostgreSQL connection adopted after its startup: its database is
    /// for someone else to find ([`ConnectionTable::tell_database`]).
    DatabaseUnknown { key: ConnKey, tuple: Tuple, server_side: bool },
    /// The connection was classified: the kernel should capture it this way
    /// from now on (the table does no I/O; the pipeline tells the kernel).
    Capture { key: ConnKey, tuple: Tuple, policy: CapturePolicy },
}

/// What a delivered message says about its producer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryLink {
    pub traceparent: Option<TraceParent>,
    pub tracestate: Option<String>,
    /// Body size and first bytes: the same message published on this host.
    pub fingerprint: Option<u64>,
}

#[derive(Debug)]
pub struct ConnectionTable {
    conns: FxHashMap<ConnKey, Connection>,
    /// Connections by their endpoints, to find the other end of a local one.
    by_tuple: FxHashMap<Tuple, ConnKey>,
    max: usize,
    scratch: Vec<http1::Exchange>,
    sql_scratch: Vec<SqlCall>,
}

/// Decides the protocol of a connection from its first captured bytes, by
/// content and never by port: the role follows from who sent what.
fn detect(chunk: &Chunk<'_>, conn_role: Role, tuple: &Tuple) -> Option<Protocol> {
    let data = chunk.data;
    let we_sent = chunk.direction == Direction::Egress;
    let role = |client: bool| if client { Side::Client } else { Side::Server };
    if http1::looks_like_request(data) {
        // Whoever sends the request is the client.
        return Some(Protocol::Http1(http1::Http1Session::new(chunk.direction)));
    }
    if postgres::looks_like_postgres(data, chunk.direction) {
        // Frontend messages come from the client.
        return Some(Protocol::Postgres(postgres::PgSession::new(role(we_sent))));
    }
    if mysql::looks_like_mysql_server_greeting(data) {
        // The server speaks first.
        return Some(Protocol::MySql(mysql::MySqlSession::new(role(!we_sent))));
    }
    if mysql::looks_like_mysql_command(data) {
        return Some(Protocol::MySql(mysql::MySqlSession::new(role(we_sent))));
    }
    if amqp::looks_like_amqp(data, chunk.direction) {
        // The client opens with the protocol header. Mid-stream (a socket
        // older than the agent) the kernel's accept/connect role decides, and
        // without it the broker is the one on AMQP's port.
        let client = if data.starts_with(b"AMQP") {
            we_sent
        } else {
            match conn_role {
                Role::Client => true,
                Role::Server => false,
                Role::Unknown => !matches!(tuple.local.port(), 5671 | 5672),
            }
        };
        return Some(Protocol::Amqp(Box::new(AmqpConn::new(role(client)))));
    }
    None
}

impl ConnectionTable {
    pub fn new(max: usize) -> Self {
        Self { conns: FxHashMap::default(), by_tuple: FxHashMap::default(), max, scratch: Vec::new(), sql_scratch: Vec::new() }
    }

    /// The tracked other end of a connection on this host, if there is one.
    pub fn peer(&self, tuple: &Tuple) -> Option<(ConnKey, &Connection)> {
        let key = self.by_tuple.get(&tuple.reversed())?;
        self.conns.get(key).map(|c| (*key, c))
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
            tracker.on_open(&mut conn.trace, thread, role == Role::Client);
        }
    }

    fn insert(&mut self, key: ConnKey, tuple: Tuple, role: Role, now: u64, tracker: &mut Tracker, t: &Telemetry) {
        if self.conns.len() >= self.max && !self.conns.contains_key(&key) {
            // Evict the least recently active connection.
            if let Some(oldest) = self.conns.iter().min_by_key(|(_, c)| c.last_activity).map(|(k, _)| *k) {
                if let Some(mut gone) = self.conns.remove(&oldest) {
                    self.by_tuple.remove(&gone.tuple);
                    tracker.on_close(&mut gone.trace, oldest.pid);
                }
                t.inc(Counter::ConnectionsEvicted);
            }
        }
        self.by_tuple.insert(tuple, key);
        self.conns.insert(
            key,
            Connection {
                tuple,
                role,
                protocol: Protocol::Detecting { attempts: 0, held: Vec::new() },
                last_activity: now,
                reported: [0; STATS],
                trace: ConnTrace::default(),
            },
        );
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
        if self.conns.get(&key).is_some_and(|c| c.tuple != tuple) {
            self.close(key, tracker, out, t);
        }
        if !self.conns.contains_key(&key) {
            self.insert(key, tuple, role, chunk.ts_exit, tracker, t);
        }
        let Some(conn) = self.conns.get_mut(&key) else { return };
        conn.last_activity = chunk.ts_exit;
        if let Protocol::Detecting { attempts, held } = &mut conn.protocol {
            if held.first().is_some_and(|h| h.direction != chunk.direction) {
                held.clear(); // the other side spoke: what was held was not a message start
            }
            let joined: Vec<u8>;
            let probe = if held.is_empty() {
                *chunk
            } else {
                joined = held.iter().flat_map(|h| h.data.iter()).chain(chunk.data).copied().collect();
                Chunk { data: &joined, ..*chunk }
            };
            match detect(&probe, conn.role, &conn.tuple) {
                Some(p) => {
                    let replay = std::mem::take(held);
                    conn.protocol = p;
                    if let Some(policy) = capture_policy(&conn.protocol) {
                        out.push(Outcome::Capture { key, tuple: conn.tuple, policy });
                    }
                    let server_side = conn_side(conn);
                    for h in &replay {
                        let c = h.as_chunk();
                        if let Protocol::Amqp(a) = &mut conn.protocol {
                            on_amqp(tracker, a, !server_side, key, tuple, thread, &c, out, t);
                            continue;
                        }
                        tracker.on_chunk(&mut conn.trace, server_side, thread, key.fd, &c, t);
                        feed(&mut conn.protocol, &c, &mut self.scratch, &mut self.sql_scratch);
                    }
                }
                None if http1::may_become_request(probe.data)
                    && probe.data.len() < HOLD_BYTES
                    && held.len() < HOLD_CHUNKS
                    && chunk.missing() == 0 =>
                {
                    held.push(HeldChunk {
                        direction: chunk.direction,
                        data: chunk.data.to_vec(),
                        ts_enter: chunk.ts_enter,
                        ts_exit: chunk.ts_exit,
                    });
                    return;
                }
                None if *attempts + 1 >= DETECT_ATTEMPTS => {
                    conn.protocol = Protocol::Unknown;
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
        if matches!(conn.protocol, Protocol::Unknown) {
            return;
        }
        if let Protocol::Amqp(a) = &mut conn.protocol {
            let (tuple, client) = (conn.tuple, a.session.role() == Side::Client);
            on_amqp(tracker, a, client, key, tuple, thread, chunk, out, t);
            report(conn, t);
            return;
        }
        let server_side = conn_side(conn);
        let started = if !server_side && chunk.direction == Direction::Egress {
            // A request written by a client may be what ends the previous
            // exchange (its answer's last bytes were beyond the capture):
            // the parser decides that first, so the context layer sees the
            // previous exchange complete when it decides who this request
            // is for (a queue's hand-off).
            feed(&mut conn.protocol, chunk, &mut self.scratch, &mut self.sql_scratch);
            collect(tracker, &mut self.scratch, &mut self.sql_scratch, key, conn, out, t);
            tracker.on_chunk(&mut conn.trace, server_side, thread, key.fd, chunk, t)
        } else {
            let started = tracker.on_chunk(&mut conn.trace, server_side, thread, key.fd, chunk, t);
            feed(&mut conn.protocol, chunk, &mut self.scratch, &mut self.sql_scratch);
            collect(tracker, &mut self.scratch, &mut self.sql_scratch, key, conn, out, t);
            started
        };
        announce(tracker, key, conn, server_side, started, out);
        if let Protocol::Postgres(session) = &mut conn.protocol {
            if session.take_adopted() {
                out.push(Outcome::DatabaseUnknown { key, tuple: conn.tuple, server_side });
            }
        }
        report(conn, t);
    }

    /// The user and database of a PostgreSQL connection adopted after its
    /// startup, found elsewhere; ignored when the fd now holds another
    /// connection. Whether it was applied.
    pub fn tell_database(&mut self, key: ConnKey, tuple: &Tuple, user: &str, database: &str) -> bool {
        match self.conns.get_mut(&key) {
            Some(Connection { tuple: now, protocol: Protocol::Postgres(session), .. }) if now == tuple => {
                session.tell_identity(user, database);
                true
            }
            _ => false,
        }
    }

    /// The fd was closed: flush what the close completes and forget it.
    pub fn close(&mut self, key: ConnKey, tracker: &mut Tracker, out: &mut Vec<Outcome>, t: &Telemetry) {
        let Some(mut conn) = self.conns.remove(&key) else { return };
        if self.by_tuple.get(&conn.tuple) == Some(&key) {
            self.by_tuple.remove(&conn.tuple);
        }
        match &mut conn.protocol {
            Protocol::Http1(session) => session.on_close(&mut self.scratch),
            Protocol::Postgres(session) => session.on_close(&mut self.sql_scratch),
            Protocol::MySql(session) => session.on_close(&mut self.sql_scratch),
            Protocol::Amqp(a) => {
                let client = a.session.role() == Side::Client;
                let mut ignored = Vec::new();
                a.session.on_close(&mut ignored);
                a.deliveries.on_closed(None, &mut a.consumed);
                finish_consumed(tracker, a, client, key, conn.tuple, out, t);
            }
            // Bytes were seen and none made sense: this was not a protocol we know.
            Protocol::Detecting { attempts, held } if *attempts > 0 || !held.is_empty() => {
                t.inc(Counter::UnknownProtocol);
            }
            _ => {}
        }
        report(&mut conn, t);
        collect(tracker, &mut self.scratch, &mut self.sql_scratch, key, &mut conn, out, t);
        tracker.on_close(&mut conn.trace, key.pid);
    }

    /// Forget every connection of a process that exited.
    pub fn forget_process(&mut self, pid: u32, tracker: &mut Tracker, out: &mut Vec<Outcome>, t: &Telemetry) {
        let keys: Vec<ConnKey> = self.conns.keys().filter(|k| k.pid == pid).copied().collect();
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
                if let Protocol::Http1(session) = &mut conn.protocol {
                    session.on_idle(&mut self.scratch);
                    collect(tracker, &mut self.scratch, &mut self.sql_scratch, *key, conn, out, t);
                }
            }
        }
        for key in expired {
            self.close(key, tracker, out, t);
        }
    }
}

/// One chunk of an AMQP connection: publishes become children of the
/// thread's current request; a delivery makes its CONSUMER span the thread's
/// current request until its ack.
#[allow(clippy::too_many_arguments)]
fn on_amqp(
    tracker: &mut Tracker,
    a: &mut AmqpConn,
    client: bool,
    key: ConnKey,
    tuple: Tuple,
    thread: ThreadKey,
    chunk: &Chunk<'_>,
    out: &mut Vec<Outcome>,
    t: &Telemetry,
) {
    a.session.on_chunk(chunk, &mut a.events);
    let mut events = std::mem::take(&mut a.events);
    for event in events.drain(..) {
        match event {
            // The broker's side of a connection (a tracked RabbitMQ): no spans.
            _ if !client => {}
            AmqpEvent::Publish(publish) => {
                let started = tracker.started_publish(thread, publish.ts_start, t);
                out.push(Outcome::Published { key, tuple, started, publish });
            }
            AmqpEvent::Deliver(d) => {
                if a.started.len() >= MAX_AMQP_STARTED {
                    // Deliveries never settled: give them up.
                    for (_, s) in a.started.drain() {
                        tracker.assembly.abandon(s.ctx.group);
                        t.inc(Counter::ContextMissing);
                    }
                }
                let started = tracker.started_delivery(thread, d.ts_received, t);
                if let Some(old) = a.started.insert((d.channel, d.delivery_tag), started) {
                    tracker.assembly.abandon(old.ctx.group);
                }
                let link = DeliveryLink {
                    traceparent: d.traceparent,
                    tracestate: d.tracestate.clone(),
                    fingerprint: d.fingerprint,
                };
                out.push(Outcome::Delivered { key, tuple, started, link });
                a.deliveries.on_delivery(d, &mut a.consumed);
            }
            AmqpEvent::Settle(s) => a.deliveries.on_settle(&s, &mut a.consumed),
            AmqpEvent::Close(c) => {
                let channel = (c.channel != 0).then_some(c.channel);
                a.deliveries.on_closed(channel, &mut a.consumed);
            }
            AmqpEvent::Confirm(_) | AmqpEvent::Return(_) => {}
        }
    }
    a.events = events;
    finish_consumed(tracker, a, client, key, tuple, out, t);
}

/// Deliveries whose handling is over (settled, or never will be) become outcomes.
fn finish_consumed(
    tracker: &mut Tracker,
    a: &mut AmqpConn,
    client: bool,
    key: ConnKey,
    tuple: Tuple,
    out: &mut Vec<Outcome>,
    t: &Telemetry,
) {
    for message in a.consumed.drain(..) {
        let id = (message.delivery.channel, message.delivery.delivery_tag);
        let started = match a.started.remove(&id) {
            Some(s) => s,
            None => tracker.missing_start(message.delivery.ts_received, t),
        };
        if client {
            out.push(Outcome::Consumed { key, tuple, started, message });
        }
    }
    if !client {
        for (_, s) in a.started.drain() {
            tracker.assembly.abandon(s.ctx.group);
        }
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
    match &mut conn.protocol {
        Protocol::Http1(session) => {
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
                    out.push(Outcome::RequestStarted { key, tuple, started, traceparent: tp, tracestate: head.tracestate });
                }
            }
        }
        // Database servers: no context travels in the protocol.
        _ => {
            if let (true, Some(started)) = (server_side, started) {
                out.push(Outcome::RequestStarted { key, tuple, started, traceparent: None, tracestate: None });
            }
        }
    }
}

/// Moves what the sessions produced into `out`, each with its identity.
fn collect(
    tracker: &mut Tracker,
    http: &mut Vec<http1::Exchange>,
    sql: &mut Vec<SqlCall>,
    key: ConnKey,
    conn: &mut Connection,
    out: &mut Vec<Outcome>,
    t: &Telemetry,
) {
    let (tuple, server_side) = (conn.tuple, conn_side(conn));
    for exchange in http.drain(..) {
        let start = if server_side { exchange.request_start_exit } else { exchange.request_start_enter };
        let started = tracker.take_started(&mut conn.trace, server_side, key.pid, start, exchange.response_end, t);
        out.push(Outcome::Http { key, tuple, server_side, started, exchange });
    }
    for call in sql.drain(..) {
        let started = tracker.take_started(&mut conn.trace, server_side, key.pid, call.start_ns, call.end_ns, t);
        out.push(Outcome::Sql { key, tuple, server_side, started, call });
    }
}

/// Hands a chunk to the connection's protocol session.
fn feed(protocol: &mut Protocol, chunk: &Chunk<'_>, http: &mut Vec<http1::Exchange>, sql: &mut Vec<SqlCall>) {
    match protocol {
        Protocol::Http1(session) => session.on_chunk(chunk, http),
        Protocol::Postgres(session) => session.on_chunk(chunk, sql),
        Protocol::MySql(session) => session.on_chunk(chunk, sql),
        // Fed by on_amqp, with the thread's context.
        Protocol::Amqp(_) | Protocol::Detecting { .. } | Protocol::Unknown => {}
    }
}

/// How the kernel should capture a connection that speaks `protocol`, when
/// not as prefixes: an AMQP client reads many deliveries at once (a consumer
/// that fell behind), each of which the parser needs.
fn capture_policy(protocol: &Protocol) -> Option<CapturePolicy> {
    match protocol {
        Protocol::Amqp(a) if a.session.role() == Side::Client => Some(CapturePolicy::AmqpFrames),
        _ => None,
    }
}

/// Is the tracked process the server end of this connection?
fn conn_side(conn: &Connection) -> bool {
    match &conn.protocol {
        Protocol::Http1(s) => s.requests_direction() == Direction::Ingress,
        Protocol::Postgres(s) => s.role() == Side::Server,
        Protocol::MySql(s) => s.role() == Side::Server,
        Protocol::Amqp(a) => a.session.role() == Side::Server,
        Protocol::Detecting { .. } | Protocol::Unknown => conn.role == Role::Server,
    }
}

/// Adds what a session counted since the last report to the agent
/// counters, by protocol and reason.
fn report(conn: &mut Connection, t: &Telemetry) {
    let (protocol, now) = match &conn.protocol {
        Protocol::Http1(s) => ("http", http1_stats(s.stats())),
        Protocol::Postgres(s) => ("postgresql", sql_stats(s.stats())),
        Protocol::MySql(s) => ("mysql", sql_stats(s.stats())),
        Protocol::Amqp(a) => ("amqp", amqp_stats(a)),
        Protocol::Detecting { .. } | Protocol::Unknown => return,
    };
    for ((counter, reason, total), was) in now.into_iter().zip(conn.reported.iter_mut()) {
        t.add_for(counter, protocol, reason, total.saturating_sub(*was));
        *was = total;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{sampler::Sampler, assembly::{AssemblyOptions, Assembler}};

    const TH: ThreadKey = ThreadKey { pid: 1, tid: 1, loop_seq: 0 };

    fn new_table(max: usize) -> (ConnectionTable, Tracker) {
        (ConnectionTable::new(max), Tracker::new(Assembler::new(AssemblyOptions::default(), Sampler::default()), 64))
    }

    fn tuple(port: u16) -> Tuple {
        Tuple { local: "127.0.0.1:8080".parse().unwrap(), remote: format!("127.0.0.1:{port}").parse().unwrap(), netns: 1 }
    }

    fn chunk(direction: Direction, data: &[u8], t: u64) -> Chunk<'_> {
        Chunk { direction, data, total: data.len(), ts_enter: t, ts_exit: t + 1 }
    }

    /// The finished exchanges of `out` (announcements left out).
    fn finished(out: &[Outcome]) -> Vec<&Outcome> {
        out.iter().filter(|o| !matches!(o, Outcome::RequestStarted { .. } | Outcome::Delivered { .. })).collect()
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

    #[test]
    fn detects_http_and_pairs_then_forgets_on_close() {
        let t = Telemetry::default();
        let (mut table, mut tr) = new_table(16);
        let mut out = Vec::new();
        let key = ConnKey { pid: 1, fd: 5 };
        table.data(key, tuple(1), Role::Unknown, TH, &chunk(Direction::Ingress, b"GET / HTTP/1.1\r\n\r\n", 1), &mut tr, &mut out, &t);
        table.data(key, tuple(1), Role::Unknown, TH, &chunk(Direction::Egress, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2), &mut tr, &mut out, &t);
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
            table.data(key, tuple(1), Role::Unknown, TH, &chunk(Direction::Ingress, std::slice::from_ref(b), 10 + i as u64), &mut tr, &mut out, &t);
        }
        table.data(key, tuple(1), Role::Unknown, TH, &chunk(Direction::Egress, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 100), &mut tr, &mut out, &t);
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
            table.data(key, tuple(1), Role::Unknown, TH, &chunk(Direction::Ingress, b"\x16\x03\x01garbage", i), &mut tr, &mut out, &t);
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
        assert!(!table.conns.contains_key(&ConnKey { pid: 1, fd: 0 }));
    }

    #[test]
    fn new_peer_on_same_fd_resets_state() {
        let t = Telemetry::default();
        let (mut table, mut tr) = new_table(4);
        let mut out = Vec::new();
        let key = ConnKey { pid: 1, fd: 5 };
        table.data(key, tuple(1), Role::Unknown, TH, &chunk(Direction::Ingress, b"GET /a HTTP/1.1\r\n\r\n", 1), &mut tr, &mut out, &t);
        table.data(key, tuple(2), Role::Unknown, TH, &chunk(Direction::Ingress, b"GET /b HTTP/1.1\r\n\r\n", 2), &mut tr, &mut out, &t);
        table.data(key, tuple(2), Role::Unknown, TH, &chunk(Direction::Egress, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3), &mut tr, &mut out, &t);
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
            out.iter().filter_map(|o| if let Outcome::Capture { policy, .. } = o { Some(*policy) } else { None }).collect::<Vec<_>>()
        };
        let (client, broker) = (ConnKey { pid: 1, fd: 5 }, ConnKey { pid: 1, fd: 6 });
        table.data(client, tuple(1), Role::Client, TH, &chunk(Direction::Egress, b"AMQP\x00\x00\x09\x01", 1), &mut tr, &mut out, &t);
        table.data(client, tuple(1), Role::Client, TH, &chunk(Direction::Ingress, &[8, 0, 0, 0, 0, 0, 0, 0xCE], 2), &mut tr, &mut out, &t);
        assert_eq!(policies(&out), [CapturePolicy::AmqpFrames]);
        // A tracked broker reads the clients' frames: no spans, no policy.
        out.clear();
        table.data(broker, tuple(2), Role::Server, TH, &chunk(Direction::Ingress, b"AMQP\x00\x00\x09\x01", 3), &mut tr, &mut out, &t);
        assert_eq!(policies(&out), []);
    }
}

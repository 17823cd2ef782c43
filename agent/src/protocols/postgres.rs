//! PostgreSQL frontend/backend protocol v3: turns one connection's captured
//! chunks into [`SqlCall`]s (simple and extended query protocol, pipelining,
//! COPY, TLS/GSS negotiation, cancel requests).
//!
//! Frontend = messages the client sends, backend = messages the server
//! sends. With [`Side::Client`] Egress chunks are frontend; with
//! [`Side::Server`] Ingress chunks are.

use std::collections::VecDeque;

use super::bounded::BoundedMap;
use super::sql::framing::{Frame, FrameSink, Framer};
use super::sql::{
    analyze_for, looks_like_sql_text, operation_from_tag, split_statements, DbSystem, SqlCall, SqlOutcome, SqlStats,
};
use super::Side;
use super::{Chunk, Direction};

/// Longest SQL text kept from a Query/Parse message.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;
/// Prepared statements remembered per connection.
pub const MAX_STATEMENTS: usize = 256;
const MAX_PORTALS: usize = 64;
/// Outstanding Query/Sync groups kept (requests without responses).
const MAX_GROUPS: usize = 1024;
/// Calls per group (pipelined executes before one Sync).
const MAX_CALLS_PER_GROUP: usize = 4096;
/// Largest message length accepted by the framing (the server's own limit
/// is 1 GiB).
const MAX_MSG_LEN: usize = 1 << 30;
/// Largest startup-phase message.
const MAX_STARTUP_LEN: usize = 10_000;

const SSL_REQUEST: u32 = 80877103;
const GSSENC_REQUEST: u32 = 80877104;
const CANCEL_REQUEST: u32 = 80877102;

const FRONTEND_TYPES: &[u8] = b"QPBDESCHXdcfpF";
const BACKEND_TYPES: &[u8] = b"RSKZCEI123ntTDsNAGHWdcVv";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FrontMode {
    /// Not known yet (attached mid-connection): decided by the first chunk.
    Unknown,
    /// Untyped startup-phase messages (StartupMessage, SSLRequest...).
    Startup,
    Typed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BackMode {
    Typed,
    /// The single-byte answer to SSLRequest/GSSENCRequest.
    SslAnswer,
}

struct Pending {
    /// None when the statement was prepared before we started watching.
    query: Option<String>,
    start_ns: u64,
    prepared: bool,
    data_rows: u64,
}

/// The requests answered by one ReadyForQuery: one simple Query, or the
/// extended-protocol messages up to and including a Sync.
struct Group {
    calls: VecDeque<Pending>,
    /// Sync (or Query) seen: later extended messages start a new group.
    closed: bool,
    /// An ErrorResponse arrived: the rest of the group is not executed.
    failed: bool,
}

struct State {
    front_mode: FrontMode,
    back_mode: BackMode,
    encrypted: bool,
    namespace: Option<String>,
    user: Option<String>,
    /// A startup-phase message (StartupMessage, SSLRequest...) was seen.
    startup_seen: bool,
    /// [`PgSession::take_adopted`] has answered true.
    adoption_told: bool,
    statements: BoundedMap<String, String>,
    /// portal -> SQL of the statement bound to it (None: unknown statement).
    portals: BoundedMap<String, Option<String>>,
    /// Start of the current Parse/Bind/Describe/Execute sequence.
    batch_start: Option<u64>,
    groups: VecDeque<Group>,
    /// A call whose response was under way when the backend framing was
    /// lost (typically rows past the capture of a large read): completed
    /// when the client, having waited for the rest, sends its next request.
    truncated: Option<Pending>,
    /// The backend framing was lost since the last request.
    back_lost: bool,
    /// Restart the backend framing at the next chunk (it answers the request
    /// just sent, so it starts at a message boundary).
    back_realign: bool,
    /// Exit time of the last backend chunk.
    last_back_ns: u64,
    /// The last frontend message was a Parse, Bind or Describe: the SQL an
    /// Execute following it would run.
    ext_tail: Option<Option<String>>,
    stats: SqlStats,
}

/// Parser state of one PostgreSQL connection.
pub struct PgSession {
    role: Side,
    front: Framer,
    back: Framer,
    st: State,
}

impl PgSession {
    /// A session for a connection whose start we see (or not: the first
    /// chunk in each direction must look like a message boundary, so a
    /// session created mid-connection works from the next boundary).
    pub fn new(role: Side) -> Self {
        PgSession {
            role,
            front: Framer::new(false),
            back: Framer::new(false),
            st: State {
                front_mode: FrontMode::Unknown,
                back_mode: BackMode::Typed,
                encrypted: false,
                namespace: None,
                user: None,
                startup_seen: false,
                adoption_told: false,
                statements: BoundedMap::new(MAX_STATEMENTS),
                portals: BoundedMap::new(MAX_PORTALS),
                batch_start: None,
                groups: VecDeque::new(),
                truncated: None,
                back_lost: false,
                back_realign: false,
                last_back_ns: 0,
                ext_tail: None,
                stats: SqlStats::default(),
            },
        }
    }

    pub fn role(&self) -> Side {
        self.role
    }

    pub fn stats(&self) -> &SqlStats {
        &self.st.stats
    }

    /// Database name (StartupMessage `database`, defaulting to `user`).
    pub fn namespace(&self) -> Option<&str> {
        self.st.namespace.as_deref()
    }

    /// User name (StartupMessage `user`, or told by [`Self::tell_identity`]).
    pub fn user(&self) -> Option<&str> {
        self.st.user.as_deref()
    }

    /// Whether the session was adopted mid-stream: it speaks typed messages
    /// and never saw a startup, so its database is unknown unless told.
    pub fn adopted(&self) -> bool {
        self.st.front_mode == FrontMode::Typed && !self.st.startup_seen && !self.st.encrypted
    }

    /// True once, the first time the session finds itself adopted without a
    /// database: whoever feeds it may then look the database up elsewhere.
    pub fn take_adopted(&mut self) -> bool {
        let ask = self.adopted() && self.st.namespace.is_none() && !self.st.adoption_told;
        self.st.adoption_told |= ask;
        ask
    }

    /// The user and database of a connection adopted mid-stream, learnt from
    /// outside (the server's process title): statements completed from now
    /// on carry the database. An empty database means the user's, as in a
    /// StartupMessage. Ignored when the startup was seen.
    pub fn tell_identity(&mut self, user: &str, database: &str) {
        if self.st.startup_seen {
            return;
        }
        let db = if database.is_empty() { user } else { database };
        if !db.is_empty() {
            self.st.namespace = Some(db.to_owned());
        }
        if !user.is_empty() {
            self.st.user = Some(user.to_owned());
        }
    }

    /// Whether the connection switched to TLS/GSS (nothing more is parsed).
    pub fn encrypted(&self) -> bool {
        self.st.encrypted
    }

    /// What follows an SSLRequest answered `S` is TLS plaintext (the TLS
    /// uprobes decrypt it): the startup that follows is parsed as usual.
    pub fn decrypted(&mut self) {
        self.st.encrypted = false;
    }

    /// Feeds one syscall's bytes; completed statements are appended to `out`.
    pub fn on_chunk(&mut self, chunk: &Chunk<'_>, out: &mut Vec<SqlCall>) {
        if self.st.encrypted {
            self.st.stats.skipped += 1;
            return;
        }
        let frontend = matches!(
            (self.role, chunk.direction),
            (Side::Client, Direction::Egress) | (Side::Server, Direction::Ingress)
        );
        if frontend {
            let mut sink = FrontSink { st: &mut self.st, out };
            self.front.feed(chunk, &mut sink);
        } else {
            if std::mem::take(&mut self.st.back_realign) {
                self.back = Framer::new(true);
            }
            self.st.last_back_ns = chunk.ts_exit;
            let mut sink = BackSink { st: &mut self.st, out };
            self.back.feed(chunk, &mut sink);
        }
    }

    /// The connection closed: a call whose response end was not captured
    /// ends with the last response bytes.
    pub fn on_close(&mut self, out: &mut Vec<SqlCall>) {
        if self.st.groups.is_empty() {
            if let Some(p) = self.st.truncated.take() {
                let end = self.st.last_back_ns;
                emit(&self.st, out, p, end, SqlOutcome::Ok { rows: None }, None);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Small readers
// ---------------------------------------------------------------------------

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// NUL-terminated string at the start of `b` (the rest of `b` when the NUL
/// was not captured) and what follows it.
fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(p) => (&b[..p], &b[p + 1..]),
        None => (b, &[]),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Rows from a CommandComplete tag: the last word when numeric
/// (`SELECT 5`, `INSERT 0 1`, `UPDATE 3`, `COPY 10`).
fn rows_from_tag(tag: &str) -> Option<u64> {
    let mut words = tag.split_ascii_whitespace();
    let first = words.next()?;
    let last = words.last()?;
    let _ = first;
    last.parse().ok()
}

// ---------------------------------------------------------------------------
// Frontend
// ---------------------------------------------------------------------------

struct FrontSink<'a> {
    st: &'a mut State,
    out: &'a mut Vec<SqlCall>,
}

fn startup_code(data: &[u8]) -> Option<(usize, u32)> {
    let len = be32(data)? as usize;
    let code = be32(data.get(4..)?)?;
    let ok = match code {
        SSL_REQUEST | GSSENC_REQUEST => len == 8,
        CANCEL_REQUEST => len == 16,
        c if c >> 16 == 3 => (8..=MAX_STARTUP_LEN).contains(&len),
        _ => false,
    };
    ok.then_some((len, code))
}

/// Length sanity per frontend message type.
fn front_len_ok(ty: u8, len: usize) -> bool {
    if !(4..=MAX_MSG_LEN).contains(&len) {
        return false;
    }
    match ty {
        b'S' | b'H' | b'X' | b'c' => len == 4,
        b'Q' | b'f' => len >= 5,
        b'P' => len >= 8,
        b'B' => len >= 12,
        b'E' => len >= 9,
        b'D' | b'C' => len >= 6,
        _ => FRONTEND_TYPES.contains(&ty),
    }
}

fn back_len_ok(ty: u8, len: usize) -> bool {
    if !(4..=MAX_MSG_LEN).contains(&len) {
        return false;
    }
    match ty {
        b'Z' => len == 5,
        b'1' | b'2' | b'3' | b'n' | b'I' | b'c' => len == 4,
        b'K' => len >= 12,
        b'R' => len >= 8,
        b'C' => len >= 5,
        b'T' | b'D' | b't' => len >= 6,
        _ => BACKEND_TYPES.contains(&ty),
    }
}

impl FrontSink<'_> {
    /// A new request group starts. When nothing else is outstanding the
    /// client has read the previous response to its end: a call whose
    /// response end was lost ends with the last response bytes, and the
    /// response to this request starts at a message boundary.
    fn new_request(&mut self) {
        if !self.st.groups.is_empty() {
            return;
        }
        if let Some(p) = self.st.truncated.take() {
            let end = self.st.last_back_ns;
            emit(self.st, self.out, p, end, SqlOutcome::Ok { rows: None }, None);
        }
        if std::mem::take(&mut self.st.back_lost) {
            self.st.back_realign = true;
        }
    }

    /// An Execute was sent: its answer is expected in the open group, unless
    /// the group already failed (the server skips to Sync) or is full.
    fn expect_execution(&mut self, query: Option<String>, start_ns: u64) {
        let g = self.open_group();
        if !g.failed && g.calls.len() < MAX_CALLS_PER_GROUP {
            g.calls.push_back(Pending { query, start_ns, prepared: true, data_rows: 0 });
        }
    }

    fn open_group(&mut self) -> &mut Group {
        let need_new = self.st.groups.back().is_none_or(|g| g.closed);
        if need_new {
            self.new_request();
            push_group(self.st, false);
        }
        self.st.groups.back_mut().expect("group just ensured")
    }

    fn on_startup(&mut self, f: &Frame<'_>) {
        let Some(code) = be32(f.body) else {
            self.st.stats.parse_errors += 1;
            return;
        };
        match code {
            SSL_REQUEST | GSSENC_REQUEST => {
                self.st.startup_seen = true;
                self.st.back_mode = BackMode::SslAnswer;
            }
            CANCEL_REQUEST => self.st.stats.skipped += 1,
            c if c >> 16 == 3 => {
                self.st.startup_seen = true;
                let mut rest = &f.body[4..];
                let (mut user, mut db) = (None, None);
                while !rest.is_empty() && rest[0] != 0 {
                    let (k, r) = cstr(rest);
                    let (v, r) = cstr(r);
                    match k {
                        b"user" => user = Some(text(v)),
                        b"database" => db = Some(text(v)),
                        _ => {}
                    }
                    rest = r;
                }
                self.st.namespace = db.filter(|d| !d.is_empty()).or_else(|| user.clone());
                self.st.user = user;
                self.st.front_mode = FrontMode::Typed;
            }
            _ => self.st.stats.parse_errors += 1,
        }
    }

    fn on_typed(&mut self, f: &Frame<'_>) {
        let start = f.first.request_start();
        let body = f.body;
        let tail = self.st.ext_tail.take();
        match f.header[0] {
            b'Q' => {
                let (q, _) = cstr(body);
                let sql = text(q);
                let calls: VecDeque<Pending> = split_statements(&sql)
                    .into_iter()
                    .take(MAX_CALLS_PER_GROUP)
                    .map(|s| Pending { query: Some(s), start_ns: start, prepared: false, data_rows: 0 })
                    .collect();
                // A Query inside an unsynced extended batch is answered
                // by the same ReadyForQuery: merge into that group.
                if let Some(g) = self.st.groups.back_mut().filter(|g| !g.closed) {
                    if !g.failed {
                        g.calls.extend(calls);
                    }
                    g.closed = true;
                } else {
                    self.new_request();
                    push_group(self.st, true);
                    if let Some(g) = self.st.groups.back_mut() {
                        g.calls = calls;
                    }
                }
                self.st.batch_start = None;
            }
            b'P' => {
                let (name, rest) = cstr(body);
                let (q, _) = cstr(rest);
                self.st.statements.insert(text(name), text(q));
                self.st.ext_tail = Some(Some(text(q)));
                self.st.batch_start.get_or_insert(start);
                self.open_group();
            }
            b'B' => {
                let (portal, rest) = cstr(body);
                let (stmt, _) = cstr(rest);
                let sql = self.st.statements.get(&text(stmt)).cloned();
                self.st.ext_tail = Some(sql.clone());
                self.st.portals.insert(text(portal), sql);
                self.st.batch_start.get_or_insert(start);
                self.open_group();
            }
            b'D' => {
                self.st.ext_tail = tail;
                self.st.batch_start.get_or_insert(start);
                self.open_group();
            }
            b'E' => {
                let (portal, _) = cstr(body);
                let query = self.st.portals.get(&text(portal)).cloned().flatten();
                let start_ns = self.st.batch_start.take().unwrap_or(start);
                self.expect_execution(query, start_ns);
            }
            b'C' => {
                let kind = body.first().copied();
                let (name, _) = cstr(body.get(1..).unwrap_or(&[]));
                match kind {
                    Some(b'S') => self.st.statements.remove(&text(name)),
                    Some(b'P') => self.st.portals.remove(&text(name)),
                    _ => self.st.stats.parse_errors += 1,
                }
                self.open_group();
            }
            b'S' => {
                self.open_group().closed = true;
                self.st.batch_start = None;
            }
            b'F' => {
                // FunctionCall: answered by FunctionCallResponse + ReadyForQuery.
                self.new_request();
                push_group(self.st, true);
            }
            b'd' | b'c' | b'f' => self.st.stats.skipped += 1,
            // Flush, Terminate, password/SASL messages.
            b'H' | b'X' | b'p' => {}
            _ => self.st.stats.parse_errors += 1,
        }
    }
}

fn push_group(st: &mut State, closed: bool) {
    if st.groups.len() >= MAX_GROUPS {
        let dropped = st.groups.pop_front().map_or(0, |g| g.calls.len());
        st.stats.calls_dropped += dropped as u64;
    }
    st.groups.push_back(Group { calls: VecDeque::new(), closed, failed: false });
}

fn drop_all_groups(st: &mut State) {
    for g in st.groups.drain(..) {
        if !g.failed {
            st.stats.calls_dropped += g.calls.len() as u64;
        }
    }
    st.batch_start = None;
}

impl FrameSink for FrontSink<'_> {
    fn header_len(&self) -> usize {
        match self.st.front_mode {
            FrontMode::Typed => 5,
            _ => 4,
        }
    }

    fn parse_header(&mut self, h: &[u8]) -> Option<(usize, usize)> {
        if self.st.front_mode == FrontMode::Typed {
            let len = be32(&h[1..])? as usize;
            if !front_len_ok(h[0], len) {
                return None;
            }
            let keep = match h[0] {
                b'Q' | b'P' => MAX_QUERY_BYTES + 256,
                b'B' | b'E' | b'C' | b'D' => 1024,
                _ => 0,
            };
            Some((len - 4, keep))
        } else {
            let len = be32(h)? as usize;
            // `then`, not `then_some`: the argument of `then_some` is
            // evaluated even when the length is out of range (found by
            // fuzzing: a length below 4 overflowed).
            (8..=MAX_STARTUP_LEN).contains(&len).then(|| (len - 4, len - 4))
        }
    }

    fn plausible_start(&mut self, data: &[u8]) -> Option<bool> {
        let first = *data.first()?;
        if self.st.front_mode != FrontMode::Typed && first == 0 {
            // Startup-phase messages are short: the length's high byte is 0
            // (and no message type byte is 0).
            if data.len() < 8 {
                return None;
            }
            let ok = startup_code(data).is_some();
            if ok {
                self.st.front_mode = FrontMode::Startup;
            }
            return Some(ok);
        }
        if self.st.front_mode == FrontMode::Startup || !FRONTEND_TYPES.contains(&first) {
            return Some(false);
        }
        if data.len() < 5 {
            return None;
        }
        let ok = be32(&data[1..]).is_some_and(|l| front_len_ok(first, l as usize));
        if ok {
            self.st.front_mode = FrontMode::Typed;
        }
        Some(ok)
    }

    fn on_frame(&mut self, f: Frame<'_>) {
        self.st.stats.messages += 1;
        if f.header.len() == 4 {
            self.on_startup(&f);
        } else {
            self.on_typed(&f);
        }
    }

    fn on_desync(&mut self, uncaptured: bool) {
        self.st.stats.count_desync(uncaptured);
        if let Some(query) = self.st.ext_tail.take() {
            // The capture ended inside a Parse/Bind/Describe of a long
            // statement, and the write went on: drivers write the whole
            // batch at once, so the rest is Bind/Describe/Execute/Sync.
            // Expect one execution answered by one ReadyForQuery (if there
            // was no Execute, no CommandComplete comes and ReadyForQuery
            // drops the guess). Earlier requests were framed: kept.
            let start_ns = self.st.batch_start.take().unwrap_or(self.st.last_back_ns);
            self.expect_execution(query, start_ns);
            self.open_group().closed = true;
            return;
        }
        // Requests may have been lost: responses can no longer be matched.
        drop_all_groups(self.st);
    }

    fn on_dropped_chunk(&mut self) {
        self.st.stats.chunks_dropped += 1;
    }

    fn stopped(&self) -> bool {
        self.st.encrypted
    }
}

// ---------------------------------------------------------------------------
// Backend
// ---------------------------------------------------------------------------

struct BackSink<'a> {
    st: &'a mut State,
    out: &'a mut Vec<SqlCall>,
}

/// ErrorResponse fields: (SQLSTATE, message).
fn error_fields(mut b: &[u8]) -> (String, String) {
    let (mut code, mut msg) = (String::new(), String::new());
    while let Some((&t, rest)) = b.split_first() {
        if t == 0 {
            break;
        }
        let (v, r) = cstr(rest);
        match t {
            b'C' => code = text(v),
            b'M' => msg = text(v),
            _ => {}
        }
        b = r;
    }
    (code, msg)
}

fn emit(st: &State, out: &mut Vec<SqlCall>, p: Pending, end_ns: u64, outcome: SqlOutcome, tag: Option<&str>) {
    let query = p.query.unwrap_or_default();
    let mut info = if query.is_empty() { Default::default() } else { analyze_for(DbSystem::Postgresql, &query) };
    if info.operation.is_none() {
        info.operation = tag.and_then(operation_from_tag);
    }
    out.push(SqlCall {
        system: DbSystem::Postgresql,
        query,
        operation: info.operation,
        collection: info.collection,
        namespace: st.namespace.clone(),
        start_ns: p.start_ns,
        end_ns: end_ns.max(p.start_ns),
        outcome,
        prepared: p.prepared,
    });
}

impl BackSink<'_> {
    fn emit(&mut self, p: Pending, end_ns: u64, outcome: SqlOutcome, tag: Option<&str>) {
        emit(self.st, self.out, p, end_ns, outcome, tag);
    }

    /// The call the next completion belongs to.
    fn next_call(&mut self) -> Option<Pending> {
        let g = self.st.groups.front_mut()?;
        if g.failed {
            return None;
        }
        g.calls.pop_front()
    }
}

impl FrameSink for BackSink<'_> {
    fn header_len(&self) -> usize {
        match self.st.back_mode {
            BackMode::Typed => 5,
            BackMode::SslAnswer => 1,
        }
    }

    fn parse_header(&mut self, h: &[u8]) -> Option<(usize, usize)> {
        if self.st.back_mode == BackMode::SslAnswer {
            return matches!(h[0], b'S' | b'N' | b'G').then_some((0, 0));
        }
        let len = be32(&h[1..])? as usize;
        if !back_len_ok(h[0], len) {
            return None;
        }
        let keep = match h[0] {
            b'C' => 256,
            b'E' => 4096,
            _ => 0,
        };
        Some((len - 4, keep))
    }

    fn plausible_start(&mut self, data: &[u8]) -> Option<bool> {
        let first = *data.first()?;
        if self.st.back_mode == BackMode::SslAnswer {
            return Some(matches!(first, b'S' | b'N' | b'G'));
        }
        if !BACKEND_TYPES.contains(&first) {
            return Some(false);
        }
        if data.len() < 5 {
            return None;
        }
        Some(be32(&data[1..]).is_some_and(|l| back_len_ok(first, l as usize)))
    }

    fn on_frame(&mut self, f: Frame<'_>) {
        self.st.stats.messages += 1;
        let end = f.last.ts_exit;
        if self.st.back_mode == BackMode::SslAnswer {
            self.st.back_mode = BackMode::Typed;
            if f.header[0] != b'N' {
                self.st.encrypted = true;
            }
            return;
        }
        match f.header[0] {
            b'C' => {
                let (t, _) = cstr(f.body);
                let tag = text(t);
                match self.next_call() {
                    Some(p) => {
                        let rows = rows_from_tag(&tag);
                        self.emit(p, end, SqlOutcome::Ok { rows }, Some(&tag));
                    }
                    None => self.st.stats.orphan_responses += 1,
                }
            }
            b'E' => {
                let (code, message) = error_fields(f.body);
                let call = self.next_call();
                if let Some(g) = self.st.groups.front_mut() {
                    g.failed = true;
                    g.calls.clear();
                }
                if let Some(p) = call {
                    let outcome = SqlOutcome::Error {
                        code,
                        message,
                        mysql_errno: None,
                    };
                    self.emit(p, end, outcome, None);
                }
            }
            b'I'
                // Empty query: nothing worth a span.
                if self.next_call().is_none() => {
                    // Normal for an empty simple Query string.
                }
            b's' => {
                if let Some(p) = self.next_call() {
                    let rows = Some(p.data_rows);
                    self.emit(p, end, SqlOutcome::Ok { rows }, None);
                }
            }
            b'D' => {
                if let Some(p) = self
                    .st
                    .groups
                    .front_mut()
                    .and_then(|g| g.calls.front_mut())
                {
                    p.data_rows += 1;
                }
            }
            b'Z' => {
                match self.st.groups.pop_front() {
                    Some(g) if !g.failed => self.st.stats.calls_dropped += g.calls.len() as u64,
                    _ => {}
                }
            }
            b'A' | b'G' | b'H' | b'W' | b'd' | b'c' => self.st.stats.skipped += 1,
            // Authentication, ParameterStatus, BackendKeyData, ParseComplete,
            // BindComplete, CloseComplete, NoData, RowDescription,
            // ParameterDescription, NoticeResponse, FunctionCallResponse,
            // NegotiateProtocolVersion.
            _ => {}
        }
    }

    fn on_desync(&mut self, uncaptured: bool) {
        self.st.stats.count_desync(uncaptured);
        self.st.back_lost = true;
        // Rows were arriving for the first call: its response started and
        // only its end went missing (a large result past the capture). Keep
        // it until the client's next request tells the response is over.
        if let Some(g) = self.st.groups.front_mut().filter(|g| !g.failed) {
            if g.calls.front().is_some_and(|p| p.data_rows > 0) {
                if let Some(old) = self.st.truncated.take() {
                    self.st.stats.calls_dropped += 1;
                    drop(old);
                }
                self.st.truncated = g.calls.pop_front();
            }
        }
        // Completions may have been lost: drop what waits for them. Late
        // ReadyForQuery messages of dropped groups find an empty queue.
        drop_all_groups(self.st);
    }

    fn on_dropped_chunk(&mut self) {
        self.st.stats.chunks_dropped += 1;
    }

    fn stopped(&self) -> bool {
        self.st.encrypted
    }
}

// ---------------------------------------------------------------------------
// Detection
// ---------------------------------------------------------------------------

/// Whether `first` (the first bytes seen on a connection, frontend bytes:
/// written by a client (Egress) or read by a server (Ingress)) look like
/// PostgreSQL: a StartupMessage (protocol 3.x), SSLRequest, GSSENCRequest or
/// CancelRequest; or, for connections already open, a plausible Query,
/// Parse or Bind message.
pub fn looks_like_postgres(first: &[u8], direction: Direction) -> bool {
    let _ = direction; // frontend bytes either way
    if let Some((len, code)) = startup_code(first) {
        if code >> 16 != 3 {
            return true; // SSL / GSS / cancel: exact lengths were checked
        }
        // Startup parameters: NUL-separated printable key/value pairs,
        // starting with a known-looking key.
        let body = &first[8..first.len().min(len)];
        return body.first().is_some_and(|c| c.is_ascii_lowercase() || *c == b'_')
            && body.iter().all(|&c| c == 0 || (0x20..0x7f).contains(&c) || c >= 0x80);
    }
    if first.len() < 6 {
        return false;
    }
    let ty = first[0];
    let Some(len) = be32(&first[1..]).map(|l| l as usize) else {
        return false;
    };
    if !front_len_ok(ty, len) || len > 64 * 1024 * 1024 {
        return false;
    }
    let body = &first[5..first.len().min(1 + len)];
    match ty {
        b'Q' => {
            if first.len() > len && first[len] != 0 {
                return false; // Query text must end with its NUL
            }
            looks_like_sql_text(cstr(body).0)
        }
        b'P' => {
            let (name, rest) = cstr(body);
            name.len() <= 64
                && name.iter().all(|c| c.is_ascii_graphic())
                && body.len() > name.len()
                && looks_like_sql_text(cstr(rest).0)
        }
        b'B' => {
            let (portal, rest) = cstr(body);
            let (stmt, rest) = cstr(rest);
            let names_ok =
                portal.len() <= 64 && stmt.len() <= 64 && portal.iter().chain(stmt).all(|c| c.is_ascii_graphic());
            // Parameter format code count follows: small.
            names_ok
                && body.len() >= portal.len() + stmt.len() + 4
                && rest.len() >= 2
                && u16::from_be_bytes([rest[0], rest[1]]) <= 1024
        }
        _ => false,
    }
}

impl super::Session for PgSession {
    type Message = SqlCall;
    const PROTOCOL: &'static str = "postgresql";

    fn on_chunk(&mut self, chunk: &Chunk<'_>, out: &mut Vec<SqlCall>) {
        PgSession::on_chunk(self, chunk, out);
    }

    fn on_close(&mut self, out: &mut Vec<SqlCall>) {
        PgSession::on_close(self, out);
    }

    fn side(&self) -> Side {
        self.role()
    }

    fn counts(&self) -> super::Counts {
        self.stats().counts()
    }
}

#[cfg(test)]
mod tests;

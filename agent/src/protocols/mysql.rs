//! MySQL / MariaDB client/server protocol: turns one connection's captured
//! chunks into [`SqlCall`]s (COM_QUERY, prepared statements, multi-results,
//! handshake with database name, TLS upgrade).
//!
//! Every packet is a 3-byte little-endian payload length, a sequence id and
//! the payload. The protocol is strictly request/response: a command (the
//! client's packet with sequence id 0) is followed by its response.

use std::collections::VecDeque;

use super::bounded::BoundedMap;
use super::sql::framing::{Frame, FrameSink, Framer};
use super::sql::{analyze_for, split_statements_for, DbSystem, SqlCall, SqlOutcome, SqlStats};
use super::Side;
use super::{Chunk, Direction};

mod packet;

use packet::{
    cstr, is_eof, le16, le32, lenenc, looks_like_greeting_body, packet_len, parse_err, parse_ok, plausible_command,
    terminator_status, text,
};
pub use packet::{looks_like_mysql_command, looks_like_mysql_server_greeting};

/// Longest SQL text kept from a COM_QUERY / COM_STMT_PREPARE.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;
/// Prepared statements remembered per connection.
pub const MAX_STATEMENTS: usize = 256;
/// Statements of one multi-statement COM_QUERY tracked.
const MAX_STMTS_PER_QUERY: usize = 1024;
/// Payload length that means "continued in the next packet".
const MAX_PAYLOAD: usize = 0xff_ffff;

const CLIENT_CONNECT_WITH_DB: u32 = 0x0000_0008;
const CLIENT_PROTOCOL_41: u32 = 0x0000_0200;
const CLIENT_SSL: u32 = 0x0000_0800;
const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
const CLIENT_PLUGIN_AUTH_LENENC: u32 = 0x0020_0000;
const CLIENT_DEPRECATE_EOF: u32 = 0x0100_0000;
const CLIENT_QUERY_ATTRIBUTES: u32 = 0x0800_0000;

const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x0040;

const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_FIELD_LIST: u8 = 0x04;
const COM_CHANGE_USER: u8 = 0x11;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_FETCH: u8 = 0x1c;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Attached mid-connection, or nothing seen yet.
    Unknown,
    /// Greeting seen; waiting for the client's HandshakeResponse.
    Handshake,
    /// Authentication exchange until the server's OK/ERR.
    Auth,
    Command,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    /// COM_QUERY or COM_STMT_EXECUTE: produces calls.
    Statement,
    Prepare(String),
    InitDb(String),
    /// Rows until an EOF (COM_STMT_FETCH, COM_FIELD_LIST).
    RowsOnly,
    /// Any other command answered by one OK/ERR/EOF.
    Other,
}

/// Where we are in the current response.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Resp {
    /// First packet of a (next) result.
    First,
    /// Column definitions still to come.
    Columns(u64),
    /// After the column definitions: an EOF (without DEPRECATE_EOF), the
    /// first row or the terminator.
    ColumnsEnd,
    Rows,
    /// COM_STMT_PREPARE response: definition blocks (params, columns) to
    /// skip, each followed by an EOF unless DEPRECATE_EOF.
    PrepareDefs {
        blocks: VecDeque<u16>,
        in_block: u16,
    },
    /// After a block of definitions: an EOF may follow.
    MaybeEof {
        blocks: VecDeque<u16>,
    },
}

struct Current {
    kind: Kind,
    /// Statements not yet completed (several for a multi-statement query).
    stmts: VecDeque<Option<String>>,
    start_ns: u64,
    prepared: bool,
    /// Rows of the current result set.
    rows: u64,
    /// Rows of earlier result sets of the same statement (CALL).
    rows_acc: u64,
    resp: Resp,
}

struct State {
    phase: Phase,
    encrypted: bool,
    namespace: Option<String>,
    server_caps: Option<u32>,
    client_caps: Option<u32>,
    statements: BoundedMap<u32, String>,
    current: Option<Current>,
    /// Client is sending LOCAL INFILE data until an empty packet.
    infile: bool,
    /// Next packet in this direction continues a 16 MiB packet.
    front_cont: bool,
    back_cont: bool,
    /// A statement whose result set was under way when the response framing
    /// was lost (rows past the capture of a large read): completed when the
    /// client sends its next command, which it does once it read the rest.
    truncated: Option<Current>,
    /// The response framing was lost since the last command.
    back_lost: bool,
    /// Restart the response framing at the next chunk (it answers the
    /// command just sent, so it starts at a packet boundary).
    back_realign: bool,
    /// Exit time of the last server -> client chunk.
    last_back_ns: u64,
    stats: SqlStats,
}

impl State {
    fn caps(&self) -> Option<u32> {
        Some(self.server_caps? & self.client_caps?)
    }

    /// DEPRECATE_EOF negotiated: Some when the handshake was seen.
    fn deprecate_eof(&self) -> Option<bool> {
        self.caps().map(|c| c & CLIENT_DEPRECATE_EOF != 0)
    }
}

/// Parser state of one MySQL connection.
pub struct MySqlSession {
    role: Side,
    front: Framer,
    back: Framer,
    st: State,
}

impl MySqlSession {
    pub fn new(role: Side) -> Self {
        MySqlSession {
            role,
            front: Framer::new(false),
            back: Framer::new(false),
            st: State {
                phase: Phase::Unknown,
                encrypted: false,
                namespace: None,
                server_caps: None,
                client_caps: None,
                statements: BoundedMap::new(MAX_STATEMENTS),
                current: None,
                infile: false,
                front_cont: false,
                back_cont: false,
                truncated: None,
                back_lost: false,
                back_realign: false,
                last_back_ns: 0,
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

    /// Current database (handshake, COM_INIT_DB, `USE`).
    pub fn namespace(&self) -> Option<&str> {
        self.st.namespace.as_deref()
    }

    pub fn encrypted(&self) -> bool {
        self.st.encrypted
    }

    /// Feeds one syscall's bytes; completed statements are appended to `out`.
    pub fn on_chunk(&mut self, chunk: &Chunk<'_>, out: &mut Vec<SqlCall>) {
        if self.st.encrypted {
            self.st.stats.skipped += 1;
            return;
        }
        let client_side = matches!(
            (self.role, chunk.direction),
            (Side::Client, Direction::Egress) | (Side::Server, Direction::Ingress)
        );
        if client_side {
            self.front.feed(chunk, &mut FrontSink { st: &mut self.st, out });
        } else {
            if std::mem::take(&mut self.st.back_realign) {
                self.back = Framer::new(true);
            }
            self.st.last_back_ns = chunk.ts_exit;
            let mut sink = BackSink { st: &mut self.st, out };
            self.back.feed(chunk, &mut sink);
        }
    }

    /// The connection closed: a statement whose response end was not
    /// captured ends with the last response bytes.
    pub fn on_close(&mut self, out: &mut Vec<SqlCall>) {
        settle_truncated(&mut self.st, out);
    }
}

/// Completes the statement whose result set lost its framing, at the last
/// response bytes seen (its row count is unknown).
fn settle_truncated(st: &mut State, out: &mut Vec<SqlCall>) {
    let Some(mut t) = st.truncated.take() else { return };
    let query = t.stmts.pop_front().flatten();
    // Later statements of a multi-statement query: their outcome is unknown.
    st.stats.calls_dropped += t.stmts.len() as u64;
    let end = st.last_back_ns;
    push_call(st, out, query, t.start_ns, t.prepared, end, SqlOutcome::Ok { rows: None });
}

// ---------------------------------------------------------------------------
// Client -> server
// ---------------------------------------------------------------------------

struct FrontSink<'a> {
    st: &'a mut State,
    out: &'a mut Vec<SqlCall>,
}

impl FrontSink<'_> {
    fn on_handshake_response(&mut self, b: &[u8], len: usize) {
        let Some(caps) = le32(b, 0) else {
            self.st.stats.parse_errors += 1;
            return;
        };
        if caps & CLIENT_PROTOCOL_41 == 0 {
            // HandshakeResponse320: no database we care about.
            self.st.client_caps = Some(caps & 0xffff);
            self.st.phase = Phase::Auth;
            return;
        }
        self.st.client_caps = Some(caps);
        if caps & CLIENT_SSL != 0 && len == 32 {
            self.st.encrypted = true;
            self.st.stats.skipped += 1;
            return;
        }
        self.st.phase = Phase::Auth;
        let rest = b.get(32..).unwrap_or(&[]);
        let (_user, rest) = cstr(rest);
        let rest = if caps & CLIENT_PLUGIN_AUTH_LENENC != 0 {
            // A length near u64::MAX must not overflow the offset (found
            // by fuzzing).
            lenenc(rest, 0).and_then(|(n, used)| rest.get(used.checked_add(usize::try_from(n).ok()?)?..))
        } else if caps & CLIENT_SECURE_CONNECTION != 0 {
            rest.first().and_then(|&n| rest.get(1 + n as usize..))
        } else {
            Some(cstr(rest).1)
        };
        let db = rest.filter(|_| caps & CLIENT_CONNECT_WITH_DB != 0).map(|r| cstr(r).0).filter(|db| !db.is_empty());
        if let Some(db) = db {
            self.st.namespace = Some(text(db));
        }
    }

    fn on_command(&mut self, f: &Frame<'_>) {
        let b = f.body;
        let Some(&cmd) = b.first() else {
            self.st.stats.parse_errors += 1;
            return;
        };
        // No pipelining: the client read the previous response to its end.
        settle_truncated(self.st, self.out);
        if std::mem::take(&mut self.st.back_lost) {
            self.st.back_realign = true;
        }
        if let Some(prev) = self.st.current.take() {
            // No pipelining in this protocol: the previous response ended
            // without us seeing its end.
            if prev.kind == Kind::Statement {
                self.st.stats.calls_dropped += prev.stmts.len() as u64;
            }
        }
        let start_ns = f.first.request_start();
        let new = |kind, stmts, prepared| Current {
            kind,
            stmts,
            start_ns,
            prepared,
            rows: 0,
            rows_acc: 0,
            resp: Resp::First,
        };
        let cur = match cmd {
            COM_QUERY => {
                let mut sql = &b[1..];
                let attrs =
                    self.st.caps().map(|c| c & CLIENT_QUERY_ATTRIBUTES != 0).unwrap_or(sql.starts_with(&[0, 1]));
                if attrs {
                    // parameter_count, parameter_set_count (lenenc).
                    let skip = lenenc(sql, 0).and_then(|(pc, n1)| {
                        let (_, n2) = lenenc(sql, n1)?;
                        (pc == 0).then_some(n1 + n2)
                    });
                    match skip {
                        Some(n) => sql = &sql[n..],
                        None => {
                            // Query attributes with values: not decoded.
                            self.st.stats.parse_errors += 1;
                            sql = &[];
                        }
                    }
                }
                let sql = text(sql);
                let mut stmts: VecDeque<Option<String>> = split_statements_for(DbSystem::Mysql, &sql)
                    .into_iter()
                    .take(MAX_STMTS_PER_QUERY)
                    .map(Some)
                    .collect();
                if stmts.is_empty() {
                    stmts.push_back(Some(sql));
                }
                new(Kind::Statement, stmts, false)
            }
            COM_STMT_EXECUTE => {
                let Some(id) = le32(b, 1) else {
                    self.st.stats.parse_errors += 1;
                    return;
                };
                let sql = self.st.statements.get(&id).cloned();
                new(Kind::Statement, VecDeque::from([sql]), true)
            }
            COM_STMT_PREPARE => new(Kind::Prepare(text(&b[1..])), VecDeque::new(), false),
            COM_INIT_DB => new(Kind::InitDb(text(&b[1..])), VecDeque::new(), false),
            COM_STMT_CLOSE => {
                if let Some(id) = le32(b, 1) {
                    self.st.statements.remove(&id);
                }
                return; // no response
            }
            COM_STMT_SEND_LONG_DATA | COM_QUIT => return,
            COM_STMT_FETCH | COM_FIELD_LIST => {
                let mut c = new(Kind::RowsOnly, VecDeque::new(), false);
                c.resp = Resp::Rows;
                c
            }
            COM_CHANGE_USER => {
                self.st.phase = Phase::Auth;
                return;
            }
            _ => new(Kind::Other, VecDeque::new(), false),
        };
        self.st.current = Some(cur);
    }
}

impl FrameSink for FrontSink<'_> {
    fn header_len(&self) -> usize {
        4
    }

    fn parse_header(&mut self, h: &[u8]) -> Option<(usize, usize)> {
        let len = packet_len(h);
        let keep = if self.st.front_cont || self.st.infile { 0 } else { MAX_QUERY_BYTES + 64 };
        Some((len, keep))
    }

    fn plausible_start(&mut self, data: &[u8]) -> Option<bool> {
        if data.len() < 5 {
            return None;
        }
        Some(match self.st.phase {
            Phase::Handshake => data[3] == 1,
            Phase::Auth => data[3] != 0,
            Phase::Unknown | Phase::Command => {
                if data[3] == 0
                    && matches!(data[4], COM_QUERY | COM_STMT_PREPARE)
                    && data.len() < 4 + packet_len(data).min(24)
                {
                    return None; // need some SQL text to judge
                }
                let ok = plausible_command(data);
                if ok {
                    self.st.phase = Phase::Command;
                }
                ok
            }
        })
    }

    fn on_frame(&mut self, f: Frame<'_>) {
        self.st.stats.messages += 1;
        let cont = std::mem::replace(&mut self.st.front_cont, f.body_len == MAX_PAYLOAD);
        if cont {
            return;
        }
        if self.st.infile {
            self.st.stats.skipped += 1;
            if f.body_len == 0 {
                self.st.infile = false;
            }
            return;
        }
        let seq = f.header[3];
        match self.st.phase {
            Phase::Handshake if seq == 1 => self.on_handshake_response(f.body, f.body_len),
            Phase::Unknown | Phase::Command if seq == 0 => {
                self.st.phase = Phase::Command;
                self.on_command(&f);
            }
            // Auth data, or a command packet with a surprising sequence.
            _ => {}
        }
    }

    fn on_desync(&mut self, uncaptured: bool) {
        self.st.stats.count_desync(uncaptured);
        self.st.front_cont = false;
        self.st.infile = false;
        drop_current(self.st);
    }

    fn on_dropped_chunk(&mut self) {
        self.st.stats.chunks_dropped += 1;
    }

    fn stopped(&self) -> bool {
        self.st.encrypted
    }
}

fn drop_current(st: &mut State) {
    match st.current.take() {
        Some(c) if c.kind == Kind::Statement => st.stats.calls_dropped += c.stmts.len() as u64,
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Server -> client
// ---------------------------------------------------------------------------

struct BackSink<'a> {
    st: &'a mut State,
    out: &'a mut Vec<SqlCall>,
}

impl BackSink<'_> {
    fn on_greeting(&mut self, b: &[u8]) {
        // version, connection id, auth data 1 (8), filler, caps low.
        let (_, rest) = cstr(&b[1..]);
        let low = le16(rest, 4 + 8 + 1);
        let high = le16(rest, 4 + 8 + 1 + 2 + 1 + 2);
        if let Some(low) = low {
            self.st.server_caps = Some(low as u32 | (high.unwrap_or(0) as u32) << 16);
        }
        self.st.phase = Phase::Handshake;
    }

    /// Completes the front statement of the current command.
    fn complete(&mut self, outcome: SqlOutcome, more: bool, end_ns: u64) {
        let Some(cur) = self.st.current.as_mut() else {
            return;
        };
        let error = matches!(outcome, SqlOutcome::Error { .. });
        let last_stmt = cur.stmts.len() <= 1;
        if more && last_stmt && !error {
            // More result sets for the same statement (CALL): accumulate.
            if let SqlOutcome::Ok { rows: Some(r) } = outcome {
                cur.rows_acc += r;
            }
            cur.rows = 0;
            cur.resp = Resp::First;
            return;
        }
        let outcome = match outcome {
            SqlOutcome::Ok { rows } if cur.rows_acc > 0 => {
                SqlOutcome::Ok { rows: Some(rows.unwrap_or(0) + cur.rows_acc) }
            }
            o => o,
        };
        cur.rows = 0;
        cur.rows_acc = 0;
        let (start_ns, prepared) = (cur.start_ns, cur.prepared);
        let query = cur.stmts.pop_front().flatten();
        if more && !error {
            cur.resp = Resp::First;
        } else {
            self.st.current = None;
        }
        push_call(self.st, self.out, query, start_ns, prepared, end_ns, outcome);
    }

    fn error_outcome(b: &[u8]) -> SqlOutcome {
        let (errno, state, message) = parse_err(b);
        SqlOutcome::Error { code: state.unwrap_or_else(|| errno.to_string()), message, mysql_errno: Some(errno) }
    }

    fn on_response(&mut self, f: &Frame<'_>) {
        let b = f.body;
        let len = f.body_len;
        let end = f.last.ts_exit;
        let deprecate = self.st.deprecate_eof();
        let Some(cur) = self.st.current.as_mut() else {
            self.st.stats.orphan_responses += 1;
            return;
        };
        let first = b.first().copied();
        match std::mem::replace(&mut cur.resp, Resp::First) {
            Resp::First => match first {
                Some(0xff) => {
                    let o = Self::error_outcome(b);
                    if cur.kind == Kind::Statement {
                        self.complete(o, false, end);
                    } else {
                        self.st.current = None;
                    }
                }
                Some(0x00) => match cur.kind.clone() {
                    Kind::Prepare(sql) => {
                        let (Some(id), Some(ncols), Some(nparams)) = (le32(b, 1), le16(b, 5), le16(b, 7)) else {
                            self.st.stats.parse_errors += 1;
                            self.st.current = None;
                            return;
                        };
                        self.st.statements.insert(id, sql);
                        let blocks: VecDeque<u16> = [nparams, ncols].into_iter().filter(|&n| n > 0).collect();
                        match next_block(blocks) {
                            Some(r) => cur.resp = r,
                            None => self.st.current = None,
                        }
                    }
                    Kind::InitDb(db) => {
                        self.st.namespace = Some(db);
                        self.st.current = None;
                    }
                    Kind::Statement => {
                        let (rows, status) = parse_ok(b).unwrap_or((0, 0));
                        let more = status & SERVER_MORE_RESULTS_EXISTS != 0;
                        self.complete(SqlOutcome::Ok { rows: Some(rows) }, more, end);
                    }
                    Kind::RowsOnly | Kind::Other => self.st.current = None,
                },
                Some(0xfb) if cur.kind == Kind::Statement => {
                    // LOCAL INFILE request: file data follows from the client,
                    // then the server's OK/ERR.
                    self.st.infile = true;
                    self.st.stats.skipped += 1;
                }
                Some(0xfe) if len < 9 => {
                    if cur.kind == Kind::Statement {
                        let status = terminator_status(b, len);
                        let more = status & SERVER_MORE_RESULTS_EXISTS != 0;
                        self.complete(SqlOutcome::Ok { rows: None }, more, end);
                    } else {
                        self.st.current = None;
                    }
                }
                _ => match (cur.kind.clone(), lenenc(b, 0)) {
                    (Kind::Statement, Some((n, _))) if n > 0 => {
                        cur.resp = Resp::Columns(n);
                    }
                    (Kind::Statement, _) => {
                        self.st.stats.parse_errors += 1;
                        drop_current(self.st);
                    }
                    _ => self.st.current = None,
                },
            },
            Resp::Columns(n) => {
                cur.resp = if n > 1 { Resp::Columns(n - 1) } else { Resp::ColumnsEnd };
            }
            Resp::ColumnsEnd => {
                if first == Some(0xff) {
                    let o = Self::error_outcome(b);
                    self.complete(o, false, end);
                } else if is_eof(b, len) {
                    // Without DEPRECATE_EOF (or unknown and 5 bytes long) this
                    // is the EOF after the column definitions.
                    let column_eof = match deprecate {
                        Some(d) => !d,
                        None => len == 5,
                    };
                    let status = terminator_status(b, len);
                    if column_eof {
                        if status & SERVER_STATUS_CURSOR_EXISTS != 0 {
                            // Cursor opened: rows come with COM_STMT_FETCH.
                            self.complete(SqlOutcome::Ok { rows: None }, false, end);
                        } else {
                            cur.resp = Resp::Rows;
                        }
                    } else {
                        let more = status & SERVER_MORE_RESULTS_EXISTS != 0;
                        self.complete(SqlOutcome::Ok { rows: Some(0) }, more, end);
                    }
                } else {
                    cur.rows += 1;
                    cur.resp = Resp::Rows;
                }
            }
            Resp::Rows => {
                if first == Some(0xff) {
                    let o = Self::error_outcome(b);
                    if cur.kind == Kind::Statement {
                        self.complete(o, false, end);
                    } else {
                        self.st.current = None;
                    }
                } else if is_eof(b, len) {
                    if cur.kind == Kind::Statement {
                        let status = terminator_status(b, len);
                        let more = status & SERVER_MORE_RESULTS_EXISTS != 0;
                        let rows = Some(cur.rows);
                        self.complete(SqlOutcome::Ok { rows }, more, end);
                    } else {
                        self.st.current = None;
                    }
                } else {
                    cur.rows += 1;
                    cur.resp = Resp::Rows;
                }
            }
            Resp::PrepareDefs { blocks, in_block } => {
                if in_block > 1 {
                    cur.resp = Resp::PrepareDefs { blocks, in_block: in_block - 1 };
                } else if deprecate == Some(true) {
                    match next_block(blocks) {
                        Some(r) => cur.resp = r,
                        None => self.st.current = None,
                    }
                } else {
                    cur.resp = Resp::MaybeEof { blocks };
                }
            }
            Resp::MaybeEof { blocks } => {
                let r = if is_eof(b, len) {
                    next_block(blocks)
                } else {
                    // No EOF: this packet is the first definition of the
                    // next block.
                    match next_block(blocks) {
                        Some(Resp::PrepareDefs { blocks, in_block }) if in_block > 1 => {
                            Some(Resp::PrepareDefs { blocks, in_block: in_block - 1 })
                        }
                        Some(Resp::PrepareDefs { blocks, .. }) => {
                            if deprecate == Some(true) {
                                next_block(blocks)
                            } else {
                                Some(Resp::MaybeEof { blocks })
                            }
                        }
                        other => other,
                    }
                };
                match r {
                    Some(r) => cur.resp = r,
                    None => self.st.current = None,
                }
            }
        }
    }
}

/// One finished statement: analysed, `USE` followed, appended to `out`.
fn push_call(
    st: &mut State,
    out: &mut Vec<SqlCall>,
    query: Option<String>,
    start_ns: u64,
    prepared: bool,
    end_ns: u64,
    outcome: SqlOutcome,
) {
    let error = matches!(outcome, SqlOutcome::Error { .. });
    let query = query.unwrap_or_default();
    let info = if query.is_empty() { Default::default() } else { analyze_for(DbSystem::Mysql, &query) };
    if !error && info.operation.as_deref() == Some("USE") {
        if let Some(db) = info.collection.clone().or_else(|| use_target(&query)) {
            st.namespace = Some(db);
        }
    }
    out.push(SqlCall {
        system: DbSystem::Mysql,
        query,
        operation: info.operation,
        collection: info.collection,
        namespace: st.namespace.clone(),
        start_ns,
        end_ns: end_ns.max(start_ns),
        outcome,
        prepared,
    });
}

fn next_block(mut blocks: VecDeque<u16>) -> Option<Resp> {
    let n = blocks.pop_front()?;
    Some(Resp::PrepareDefs { blocks, in_block: n })
}

/// `USE db` target when the parser did not give one.
fn use_target(sql: &str) -> Option<String> {
    let mut words = sql.split_ascii_whitespace();
    if !words.next()?.eq_ignore_ascii_case("use") {
        return None;
    }
    let db = words.next()?.trim_end_matches(';').trim_matches('`');
    (!db.is_empty()).then(|| db.to_string())
}

impl FrameSink for BackSink<'_> {
    fn header_len(&self) -> usize {
        4
    }

    fn parse_header(&mut self, h: &[u8]) -> Option<(usize, usize)> {
        let len = packet_len(h);
        let in_rows = self.st.current.as_ref().is_some_and(|c| matches!(c.resp, Resp::Rows | Resp::Columns(_)));
        let keep = if self.st.back_cont {
            0
        } else if in_rows {
            16
        } else {
            1024
        };
        Some((len, keep))
    }

    fn plausible_start(&mut self, data: &[u8]) -> Option<bool> {
        if data.len() < 5 {
            return None;
        }
        let len = packet_len(data);
        if self.st.phase == Phase::Unknown && data[3] == 0 && data[4] == 10 {
            if !data[5..].contains(&0) && data.len() < 4 + len.min(40) {
                return None; // version string not complete yet
            }
            if looks_like_greeting_body(&data[4..]) {
                return Some(true);
            }
        }
        // In the command phase server packets never have sequence id 0. A
        // response to a command we did not see is ignored anyway.
        Some(data[3] != 0 && len > 0)
    }

    fn on_frame(&mut self, f: Frame<'_>) {
        self.st.stats.messages += 1;
        let cont = std::mem::replace(&mut self.st.back_cont, f.body_len == MAX_PAYLOAD);
        if cont {
            return;
        }
        let b = f.body;
        match self.st.phase {
            Phase::Unknown | Phase::Handshake if f.header[3] == 0 && looks_like_greeting_body(b) => self.on_greeting(b),
            Phase::Auth => match b.first() {
                Some(0x00) | Some(0xff) => self.st.phase = Phase::Command,
                _ => {} // auth switch / more data
            },
            Phase::Command => self.on_response(&f),
            _ => self.st.stats.orphan_responses += 1,
        }
    }

    fn on_desync(&mut self, uncaptured: bool) {
        self.st.stats.count_desync(uncaptured);
        self.st.back_cont = false;
        self.st.back_lost = true;
        match self.st.current.take() {
            // A result set under way: only its end went missing.
            Some(c)
                if c.kind == Kind::Statement && matches!(c.resp, Resp::Columns(_) | Resp::ColumnsEnd | Resp::Rows) =>
            {
                if let Some(old) = self.st.truncated.replace(c) {
                    self.st.stats.calls_dropped += old.stmts.len() as u64;
                }
            }
            other => {
                self.st.current = other;
                drop_current(self.st);
            }
        }
    }

    fn on_dropped_chunk(&mut self) {
        self.st.stats.chunks_dropped += 1;
    }

    fn stopped(&self) -> bool {
        self.st.encrypted
    }
}

impl super::Session for MySqlSession {
    type Message = SqlCall;
    const PROTOCOL: &'static str = "mysql";

    fn on_chunk(&mut self, chunk: &Chunk<'_>, out: &mut Vec<SqlCall>) {
        MySqlSession::on_chunk(self, chunk, out);
    }

    fn on_close(&mut self, out: &mut Vec<SqlCall>) {
        MySqlSession::on_close(self, out);
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

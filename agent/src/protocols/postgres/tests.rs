//! Test vectors are written from the protocol documentation
//! (https://www.postgresql.org/docs/current/protocol-message-formats.html):
//! each message is a type byte, a big-endian i32 length that counts itself,
//! and the body.

use super::*;
use crate::protocols::sql::tests::Rng;

const E: Direction = Direction::Egress;
const I: Direction = Direction::Ingress;

/// Type byte + length + body, per the message-format table.
fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ty];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', &cat(&[sql.as_bytes(), b"\0"]))
}

/// Parse: statement name, query, i16 parameter type count (0).
fn parse(name: &str, sql: &str) -> Vec<u8> {
    msg(b'P', &cat(&[name.as_bytes(), b"\0", sql.as_bytes(), b"\0", b"\0\0"]))
}

/// Bind: portal, statement, i16 #param formats (0), i16 #params (1) with one
/// 1-byte value "7", i16 #result formats (0).
fn bind(portal: &str, stmt: &str) -> Vec<u8> {
    msg(b'B', &cat(&[portal.as_bytes(), b"\0", stmt.as_bytes(), b"\0", b"\0\0", b"\0\x01", b"\0\0\0\x017", b"\0\0"]))
}

fn describe_portal(portal: &str) -> Vec<u8> {
    msg(b'D', &cat(&[b"P", portal.as_bytes(), b"\0"]))
}

/// Execute: portal, i32 max rows (0 = all).
fn execute(portal: &str) -> Vec<u8> {
    msg(b'E', &cat(&[portal.as_bytes(), b"\0", b"\0\0\0\0"]))
}

const SYNC: &[u8] = b"S\0\0\0\x04";
const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";
const BIND_COMPLETE: &[u8] = b"2\0\0\0\x04";
const READY_IDLE: &[u8] = b"Z\0\0\0\x05I";
const READY_FAILED_TX: &[u8] = b"Z\0\0\0\x05E";
const NO_DATA: &[u8] = b"n\0\0\0\x04";
const AUTH_OK: &[u8] = b"R\0\0\0\x08\0\0\0\0";

fn complete(tag: &str) -> Vec<u8> {
    msg(b'C', &cat(&[tag.as_bytes(), b"\0"]))
}

fn error(code: &str, m: &str) -> Vec<u8> {
    msg(b'E', &cat(&[b"SERROR\0VERROR\0C", code.as_bytes(), b"\0M", m.as_bytes(), b"\0", b"\0"]))
}

/// RowDescription with one int4 column "id".
fn row_desc() -> Vec<u8> {
    msg(b'T', &cat(&[b"\0\x01", b"id\0", b"\0\0\0\0", b"\0\0", b"\0\0\0\x17", b"\0\x04", b"\xff\xff\xff\xff", b"\0\0"]))
}

/// DataRow with one text column.
fn data_row(v: &str) -> Vec<u8> {
    msg(b'D', &cat(&[b"\0\x01", &(v.len() as u32).to_be_bytes(), v.as_bytes()]))
}

/// StartupMessage, bytes written out by hand: length 32, protocol 3.0,
/// user=bob, database=shop, terminator.
const STARTUP_BOB_SHOP: &[u8] = b"\x00\x00\x00\x20\x00\x03\x00\x00user\x00bob\x00database\x00shop\x00\x00";

/// Drives a session; chunk i has ts_enter = 100*i and ts_exit = 100*i + 10.
struct Conv {
    s: PgSession,
    n: u64,
    calls: Vec<SqlCall>,
}

impl Conv {
    fn new(role: Side) -> Self {
        Conv { s: PgSession::new(role), n: 0, calls: Vec::new() }
    }

    fn client() -> Self {
        Self::new(Side::Client)
    }

    /// Returns the chunk's ts_enter.
    fn send(&mut self, dir: Direction, data: &[u8]) -> u64 {
        self.send_partial(dir, data, data.len())
    }

    fn send_partial(&mut self, dir: Direction, data: &[u8], total: usize) -> u64 {
        self.n += 1;
        let ts = self.n * 100;
        let c = Chunk { direction: dir, data, total, ts_enter: ts, ts_exit: ts + 10 };
        self.s.on_chunk(&c, &mut self.calls);
        ts
    }

    fn startup(&mut self) {
        self.send(E, STARTUP_BOB_SHOP);
        self.send(
            I,
            &cat(&[AUTH_OK, &msg(b'S', b"server_version\x0016.2\0"), b"K\0\0\0\x0c\0\0\0\x01\0\0\0\x02", READY_IDLE]),
        );
    }
}

fn ok_rows(c: &SqlCall) -> Option<u64> {
    match c.outcome {
        SqlOutcome::Ok { rows } => rows,
        _ => panic!("not ok: {c:?}"),
    }
}

#[test]
fn startup_with_database_sets_namespace() {
    let mut c = Conv::client();
    c.startup();
    assert_eq!(c.s.namespace(), Some("shop"));
    let t0 = c.send(E, &query("SELECT 1"));
    let t1 = c.send(I, &cat(&[&row_desc(), &data_row("1"), &complete("SELECT 1"), READY_IDLE]));
    assert_eq!(c.calls.len(), 1);
    let call = &c.calls[0];
    assert_eq!(call.system, DbSystem::Postgresql);
    assert_eq!(call.namespace.as_deref(), Some("shop"));
    assert_eq!(call.query, "SELECT 1");
    assert_eq!((call.start_ns, call.end_ns), (t0, t1 + 10));
    assert_eq!(ok_rows(call), Some(1));
    assert!(!call.prepared);
    assert_eq!(c.s.stats().desyncs, 0);
}

#[test]
fn startup_without_database_defaults_to_user() {
    let mut c = Conv::client();
    // length 18: 8 + "user\0ann\0" (9) + final NUL.
    c.send(E, b"\x00\x00\x00\x12\x00\x03\x00\x00user\x00ann\x00\x00");
    assert_eq!(c.s.namespace(), Some("ann"));
}

#[test]
fn simple_query_two_statements() {
    let mut c = Conv::client();
    c.startup();
    let t0 = c.send(E, &query("INSERT INTO items VALUES (1); SELECT * FROM items"));
    let t1 = c.send(I, &complete("INSERT 0 1"));
    let t2 = c.send(I, &cat(&[&row_desc(), &data_row("1"), &data_row("2"), &complete("SELECT 2"), READY_IDLE]));
    assert_eq!(c.calls.len(), 2);
    assert_eq!(c.calls[0].query, "INSERT INTO items VALUES (1)");
    assert_eq!(c.calls[0].operation.as_deref(), Some("INSERT"));
    assert_eq!(c.calls[0].collection.as_deref(), Some("items"));
    assert_eq!(ok_rows(&c.calls[0]), Some(1));
    assert_eq!((c.calls[0].start_ns, c.calls[0].end_ns), (t0, t1 + 10));
    assert_eq!(c.calls[1].operation.as_deref(), Some("SELECT"));
    assert_eq!(ok_rows(&c.calls[1]), Some(2));
    assert_eq!((c.calls[1].start_ns, c.calls[1].end_ns), (t0, t2 + 10));
}

#[test]
fn error_in_first_statement_skips_the_rest() {
    let mut c = Conv::client();
    c.startup();
    c.send(E, &query("SELECT * FROM nope; SELECT 2"));
    c.send(I, &cat(&[&error("42P01", "relation \"nope\" does not exist"), READY_IDLE]));
    assert_eq!(c.calls.len(), 1);
    assert_eq!(
        c.calls[0].outcome,
        SqlOutcome::Error {
            code: "42P01".into(),
            message: "relation \"nope\" does not exist".into(),
            mysql_errno: None
        }
    );
    assert_eq!(c.calls[0].collection.as_deref(), Some("nope"));
    assert_eq!(c.s.stats().calls_dropped, 0);
    // The connection keeps working.
    c.send(E, &query("SELECT 3"));
    c.send(I, &cat(&[&complete("SELECT 1"), READY_IDLE]));
    assert_eq!(c.calls.len(), 2);
    assert_eq!(c.calls[1].query, "SELECT 3");
}

#[test]
fn extended_unnamed_like_node_postgres() {
    let mut c = Conv::client();
    c.startup();
    let sql = "SELECT name FROM users WHERE id = $1";
    // node-postgres writes Parse, Bind, Describe, Execute, Sync in one write.
    let t0 = c.send(E, &cat(&[&parse("", sql), &bind("", ""), &describe_portal(""), &execute(""), SYNC]));
    let t1 = c.send(
        I,
        &cat(&[PARSE_COMPLETE, BIND_COMPLETE, &row_desc(), &data_row("bob"), &complete("SELECT 1"), READY_IDLE]),
    );
    assert_eq!(c.calls.len(), 1);
    let call = &c.calls[0];
    assert_eq!(call.query, sql);
    assert!(call.prepared);
    assert_eq!(call.collection.as_deref(), Some("users"));
    assert_eq!(ok_rows(call), Some(1));
    assert_eq!((call.start_ns, call.end_ns), (t0, t1 + 10));
}

#[test]
fn named_statement_executed_in_three_batches() {
    let mut c = Conv::client();
    c.startup();
    let sql = "UPDATE counters SET n = n + 1 WHERE id = $1";
    c.send(E, &cat(&[&parse("s1", sql), &bind("", "s1"), &execute(""), SYNC]));
    c.send(I, &cat(&[PARSE_COMPLETE, BIND_COMPLETE, &complete("UPDATE 1"), READY_IDLE]));
    for _ in 0..2 {
        c.send(E, &cat(&[&bind("", "s1"), &execute(""), SYNC]));
        c.send(I, &cat(&[BIND_COMPLETE, &complete("UPDATE 1"), READY_IDLE]));
    }
    assert_eq!(c.calls.len(), 3);
    for call in &c.calls {
        assert_eq!(call.query, sql);
        assert_eq!(call.operation.as_deref(), Some("UPDATE"));
        assert_eq!(ok_rows(call), Some(1));
        assert!(call.prepared);
    }
}

#[test]
fn pipelined_executes_before_one_sync() {
    let mut c = Conv::client();
    c.startup();
    let t0 = c.send(E, &cat(&[&parse("a", "INSERT INTO q VALUES ($1)"), &parse("b", "DELETE FROM q WHERE id = $1")]));
    let t1 = c.send(E, &cat(&[&bind("", "a"), &execute(""), &bind("", "b"), &execute("")]));
    let t2 = c.send(E, &cat(&[&bind("", "a"), &execute(""), SYNC]));
    c.send(I, &cat(&[PARSE_COMPLETE, PARSE_COMPLETE, BIND_COMPLETE, &complete("INSERT 0 1"), BIND_COMPLETE]));
    let t4 = c.send(I, &cat(&[&complete("DELETE 0"), BIND_COMPLETE, &complete("INSERT 0 1"), READY_IDLE]));
    let got: Vec<_> = c.calls.iter().map(|c| (c.operation.clone().unwrap(), ok_rows(c), c.start_ns)).collect();
    assert_eq!(
        got,
        vec![
            ("INSERT".to_string(), Some(1), t0),
            ("DELETE".to_string(), Some(0), t1),
            ("INSERT".to_string(), Some(1), t2),
        ]
    );
    assert_eq!(c.calls[2].end_ns, t4 + 10);
}

#[test]
fn error_in_middle_of_pipeline() {
    let mut c = Conv::client();
    c.startup();
    c.send(
        E,
        &cat(&[
            &parse("a", "INSERT INTO q VALUES ($1)"),
            &bind("", "a"),
            &execute(""),
            &bind("", "a"),
            &execute(""),
            &bind("", "a"),
            &execute(""),
            SYNC,
        ]),
    );
    c.send(
        I,
        &cat(&[
            PARSE_COMPLETE,
            BIND_COMPLETE,
            &complete("INSERT 0 1"),
            BIND_COMPLETE,
            &error("23505", "duplicate key"),
            READY_FAILED_TX,
        ]),
    );
    assert_eq!(c.calls.len(), 2);
    assert_eq!(ok_rows(&c.calls[0]), Some(1));
    assert!(matches!(&c.calls[1].outcome, SqlOutcome::Error { code, .. } if code == "23505"));
    // Next batch is matched correctly.
    c.send(E, &cat(&[&bind("", "a"), &execute(""), SYNC]));
    c.send(I, &cat(&[BIND_COMPLETE, &complete("INSERT 0 1"), READY_IDLE]));
    assert_eq!(c.calls.len(), 3);
    assert_eq!(ok_rows(&c.calls[2]), Some(1));
    assert_eq!(c.s.stats().calls_dropped, 0);
}

#[test]
fn copy_from_stdin_and_to_stdout() {
    let mut c = Conv::client();
    c.startup();
    c.send(E, &query("COPY items (id, name) FROM STDIN"));
    // CopyInResponse: overall format 0, 2 columns, formats 0 0.
    c.send(I, &msg(b'G', b"\0\0\x02\0\0\0\0"));
    c.send(E, &msg(b'd', b"1\tapple\n"));
    c.send(E, &cat(&[&msg(b'd', b"2\tpear\n"), b"c\0\0\0\x04"]));
    c.send(I, &cat(&[&complete("COPY 2"), READY_IDLE]));
    c.send(E, &query("COPY items TO STDOUT"));
    c.send(
        I,
        &cat(&[
            &msg(b'H', b"\0\0\x02\0\0\0\0"),
            &msg(b'd', b"1\tapple\n"),
            &msg(b'd', b"2\tpear\n"),
            b"c\0\0\0\x04",
            &complete("COPY 2"),
            READY_IDLE,
        ]),
    );
    assert_eq!(c.calls.len(), 2);
    assert_eq!(c.calls[0].operation.as_deref(), Some("COPY"));
    assert_eq!(c.calls[0].collection.as_deref(), Some("items"));
    assert_eq!(ok_rows(&c.calls[0]), Some(2));
    assert_eq!(ok_rows(&c.calls[1]), Some(2));
    assert!(c.s.stats().skipped >= 8, "{:?}", c.s.stats());
    assert_eq!(c.s.stats().parse_errors, 0);
}

#[test]
fn notification_interleaved() {
    let mut c = Conv::client();
    c.startup();
    c.send(E, &query("LISTEN ch"));
    c.send(I, &cat(&[&complete("LISTEN"), READY_IDLE]));
    // NotificationResponse: pid, channel, payload — arrives unprompted.
    let notify = msg(b'A', b"\0\0\x04\xd2ch\0hello\0");
    c.send(I, &notify);
    c.send(E, &query("SELECT 1"));
    c.send(I, &cat(&[&row_desc(), &notify, &data_row("1"), &complete("SELECT 1"), READY_IDLE]));
    assert_eq!(c.calls.len(), 2);
    assert_eq!(c.calls[0].operation.as_deref(), Some("LISTEN"));
    assert_eq!(ok_rows(&c.calls[1]), Some(1));
    assert_eq!(c.s.stats().skipped, 2);
}

const SSL_REQUEST_BYTES: &[u8] = b"\x00\x00\x00\x08\x04\xd2\x16\x2f";

#[test]
fn ssl_request_answered_s_stops_parsing() {
    let mut c = Conv::client();
    c.send(E, SSL_REQUEST_BYTES);
    c.send(I, b"S");
    assert!(c.s.encrypted());
    // TLS records, then even something that looks like a query: ignored.
    c.send(E, b"\x16\x03\x01\x00\x05hello");
    c.send(E, &query("SELECT 1"));
    c.send(I, &cat(&[&complete("SELECT 1"), READY_IDLE]));
    assert!(c.calls.is_empty());
    assert!(c.s.stats().encrypted || c.s.encrypted());
    assert!(c.s.stats().skipped >= 3);
}

#[test]
fn ssl_request_answered_n_continues() {
    let mut c = Conv::client();
    c.send(E, SSL_REQUEST_BYTES);
    c.send(I, b"N");
    assert!(!c.s.encrypted());
    c.startup();
    c.send(E, &query("SELECT 1"));
    c.send(I, &cat(&[&complete("SELECT 1"), READY_IDLE]));
    assert_eq!(c.calls.len(), 1);
    assert_eq!(c.calls[0].namespace.as_deref(), Some("shop"));
}

#[test]
fn gssenc_request_answered_g() {
    let mut c = Conv::client();
    c.send(E, b"\x00\x00\x00\x08\x04\xd2\x16\x30");
    c.send(I, b"G");
    assert!(c.s.encrypted());
}

#[test]
fn cancel_request_is_skipped() {
    let mut c = Conv::client();
    // length 16, code 80877102, pid 1234, secret key.
    c.send(E, b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x04\xd2\xde\xad\xbe\xef");
    assert_eq!(c.s.stats().skipped, 1);
    assert!(c.calls.is_empty());
    assert_eq!(c.s.stats().parse_errors, 0);
}

fn full_conversation() -> Vec<(Direction, Vec<u8>)> {
    vec![
        (E, STARTUP_BOB_SHOP.to_vec()),
        (I, cat(&[AUTH_OK, READY_IDLE])),
        (E, query("SELECT * FROM a; UPDATE b SET x = 1")),
        (I, cat(&[&row_desc(), &data_row("x"), &complete("SELECT 1"), &complete("UPDATE 4"), READY_IDLE])),
        (E, cat(&[&parse("", "DELETE FROM c"), &bind("", ""), &describe_portal(""), &execute(""), SYNC])),
        (I, cat(&[PARSE_COMPLETE, BIND_COMPLETE, NO_DATA, &complete("DELETE 3"), READY_IDLE])),
    ]
}

fn summary(calls: &[SqlCall]) -> Vec<(String, Option<u64>)> {
    calls.iter().map(|c| (c.query.clone(), ok_rows(c))).collect()
}

fn expected_summary() -> Vec<(String, Option<u64>)> {
    vec![("SELECT * FROM a".into(), Some(1)), ("UPDATE b SET x = 1".into(), Some(4)), ("DELETE FROM c".into(), Some(3))]
}

#[test]
fn messages_split_byte_by_byte() {
    let mut c = Conv::client();
    for (dir, bytes) in full_conversation() {
        for b in bytes.chunks(1) {
            c.send(dir, b);
        }
    }
    assert_eq!(summary(&c.calls), expected_summary());
    assert_eq!(c.s.stats().desyncs, 0);
}

#[test]
fn many_messages_in_one_chunk() {
    let conv = full_conversation();
    let mut c = Conv::client();
    // All frontend bytes of each round trip in one write, responses in one read.
    for pair in conv.chunks(2) {
        c.send(pair[0].0, &pair[0].1);
        c.send(pair[1].0, &pair[1].1);
    }
    assert_eq!(summary(&c.calls), expected_summary());
}

#[test]
fn big_data_row_skipped_by_length() {
    let mut c = Conv::client();
    c.startup();
    c.send(E, &query("SELECT blob FROM files"));
    let big = data_row(&"x".repeat(100_000));
    let head = cat(&[&row_desc(), &big[..1000]]);
    let total = row_desc().len() + big.len();
    c.send_partial(I, &head, total);
    let t = c.send(I, &cat(&[&complete("SELECT 1"), READY_IDLE]));
    assert_eq!(c.calls.len(), 1);
    assert_eq!(ok_rows(&c.calls[0]), Some(1));
    assert_eq!(c.calls[0].end_ns, t + 10);
    assert_eq!(c.s.stats().desyncs, 0);
}

#[test]
fn gap_past_message_end_desyncs_and_recovers() {
    let mut c = Conv::client();
    c.startup();
    let t0 = c.send(E, &query("SELECT blob FROM files"));
    let big = data_row(&"x".repeat(5000));
    let rest = cat(&[&complete("SELECT 1"), READY_IDLE]);
    // One read returning the row, CommandComplete and ReadyForQuery, of
    // which only 100 bytes were captured: framing after the row is lost.
    c.send_partial(I, &big[..100], big.len() + rest.len());
    assert_eq!((c.s.stats().desyncs, c.s.stats().desyncs_uncaptured), (0, 1), "a result beyond the capture");
    // A chunk that does not start at a boundary is dropped...
    let t_last = c.send(I, b"xx\0garbage");
    assert_eq!(c.s.stats().chunks_dropped, 1);
    assert!(c.calls.is_empty(), "the end of the rows was not seen yet");
    // ...the next request says the client read the whole response: the
    // first call ends with the last response bytes, and the next round
    // trip works.
    c.send(E, &query("SELECT 2"));
    c.send(I, &cat(&[&complete("SELECT 1"), READY_IDLE]));
    assert_eq!(c.calls.len(), 2);
    assert_eq!(c.calls[0].query, "SELECT blob FROM files");
    assert_eq!((c.calls[0].start_ns, c.calls[0].end_ns), (t0, t_last + 10));
    assert_eq!(c.calls[0].outcome, SqlOutcome::Ok { rows: None });
    assert_eq!(c.calls[1].query, "SELECT 2");
    assert_eq!(c.s.stats().calls_dropped, 0);
}

/// node-postgres reading 3000 rows of ~110 bytes in 64 KiB reads of which
/// 512 bytes are captured: rows past the capture cannot be framed, the last
/// read (CommandComplete, ReadyForQuery) is not captured at all, and a
/// later read may start with bytes that look like a message header. The
/// large SELECT still becomes a call, and so does everything after it.
#[test]
fn many_rows_past_the_capture_like_node_postgres() {
    let mut c = Conv::client();
    c.startup();
    let t0 = c.send(E, &query("SELECT g, repeat('x', 100) FROM generate_series(1, 3000) g"));
    let mut resp = row_desc();
    for i in 0..3000 {
        resp.extend(data_row(&format!("{i:>4}{}", "x".repeat(100))));
    }
    resp.extend(complete("SELECT 3000"));
    resp.extend_from_slice(READY_IDLE);
    let mut t_last = 0;
    for chunk in resp.chunks(65536) {
        t_last = c.send_partial(I, &chunk[..chunk.len().min(512)], chunk.len());
    }
    assert!(c.calls.is_empty());
    c.send(E, &query("SELECT 2"));
    c.send(I, &cat(&[&row_desc(), &data_row("2"), &complete("SELECT 1"), READY_IDLE]));
    c.send(E, &query("SELECT * FROM dragon"));
    c.send(I, &cat(&[&error("42P01", "relation does not exist"), READY_IDLE]));
    let got: Vec<(&str, &SqlOutcome)> = c.calls.iter().map(|c| (c.query.as_str(), &c.outcome)).collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].1, &SqlOutcome::Ok { rows: None });
    assert_eq!((c.calls[0].start_ns, c.calls[0].end_ns), (t0, t_last + 10));
    assert_eq!(got[1], ("SELECT 2", &SqlOutcome::Ok { rows: Some(1) }));
    assert_eq!(got[2].0, "SELECT * FROM dragon");
    assert_eq!(c.s.stats().calls_dropped, 0);
}

/// node-postgres writes Parse, Bind, Describe, Execute and Sync at once; a
/// statement longer than the capture leaves everything after the Parse
/// uncaptured. The execution is still a call, and so is the next one.
#[test]
fn long_extended_statement_past_the_capture() {
    let mut c = Conv::client();
    c.startup();
    let many: Vec<String> = (0..300).map(|i| format!("'n{i}'")).collect();
    let sql = format!("SELECT name FROM unicorn WHERE name = $1 OR name IN ({})", many.join(", "));
    let batch = cat(&[&parse("", &sql), &bind("", ""), &describe_portal(""), &execute(""), SYNC]);
    let t0 = c.send_partial(E, &batch[..512], batch.len());
    let t1 = c.send(
        I,
        &cat(&[PARSE_COMPLETE, BIND_COMPLETE, &row_desc(), &data_row("bob"), &complete("SELECT 1"), READY_IDLE]),
    );
    // A prepare-only batch (no Execute) of a long statement: no call.
    let prep = cat(&[&parse("s1", &sql), &describe_portal(""), SYNC]);
    c.send_partial(E, &prep[..512], prep.len());
    c.send(I, &cat(&[PARSE_COMPLETE, NO_DATA, READY_IDLE]));
    c.send(E, &query("SELECT 2"));
    c.send(I, &cat(&[&complete("SELECT 1"), READY_IDLE]));
    assert_eq!(c.calls.len(), 2, "{:?}", c.calls);
    assert!(sql.starts_with(&c.calls[0].query) && c.calls[0].query.len() > 400);
    assert_eq!(c.calls[0].collection.as_deref(), Some("unicorn"));
    assert_eq!((c.calls[0].start_ns, c.calls[0].end_ns), (t0, t1 + 10));
    assert_eq!(ok_rows(&c.calls[0]), Some(1));
    assert_eq!(c.calls[1].query, "SELECT 2");
}

#[test]
fn huge_query_text_is_truncated() {
    let mut c = Conv::client();
    c.startup();
    let sql = format!("INSERT INTO t VALUES ('{}')", "y".repeat(100_000));
    let q = query(&sql);
    c.send_partial(E, &q[..4096], q.len());
    c.send(I, &cat(&[&complete("INSERT 0 1"), READY_IDLE]));
    assert_eq!(c.calls.len(), 1);
    assert!(c.calls[0].query.len() <= 4096);
    assert_eq!(c.calls[0].operation.as_deref(), Some("INSERT"));
    assert_eq!(c.calls[0].collection.as_deref(), Some("t"));
    assert_eq!(c.s.stats().desyncs, 0);
}

#[test]
fn a_session_adopted_mid_stream_can_be_told_its_database() {
    let mut c = Conv::client();
    assert!(!c.s.adopted(), "nothing seen yet");
    c.send(E, &query("SELECT 1"));
    assert!(c.s.adopted());
    assert!(c.s.take_adopted(), "asked once");
    assert!(!c.s.take_adopted(), "and only once");
    c.send(I, &cat(&[&complete("SELECT 1"), READY_IDLE]));
    assert_eq!(c.calls[0].namespace, None, "completed before the answer");
    c.send(E, &query("SELECT 2"));
    c.s.tell_identity("app", "shop");
    c.send(I, &cat(&[&complete("SELECT 1"), READY_IDLE]));
    assert_eq!(c.calls[1].namespace.as_deref(), Some("shop"), "awaiting its response when told");
    assert_eq!((c.s.namespace(), c.s.user()), (Some("shop"), Some("app")));
    assert!(!c.s.take_adopted(), "known now");
}

#[test]
fn a_session_that_saw_its_startup_is_not_adopted_and_not_told() {
    let mut c = Conv::client();
    c.startup();
    assert!(!c.s.adopted());
    assert!(!c.s.take_adopted());
    c.s.tell_identity("mallory", "elsewhere");
    assert_eq!((c.s.namespace(), c.s.user()), (Some("shop"), Some("bob")));
    // Through an SSLRequest answered N, then the startup.
    let mut c = Conv::client();
    c.send(E, b"\x00\x00\x00\x08\x04\xd2\x16\x2f");
    assert!(!c.s.adopted() && !c.s.take_adopted(), "the startup is coming");
    c.send(I, b"N");
    c.startup();
    assert!(!c.s.take_adopted());
    assert_eq!(c.s.namespace(), Some("shop"));
    // An empty database is the user's, as in a StartupMessage.
    let mut c = Conv::new(Side::Server);
    c.send(I, &query("SELECT 1"));
    assert!(c.s.take_adopted());
    c.s.tell_identity("ann", "");
    assert_eq!(c.s.namespace(), Some("ann"));
}

#[test]
fn attach_mid_connection() {
    let mut c = Conv::client();
    // Tail of some earlier response, then the tail of a query: dropped.
    c.send(I, b"\x01\x02\x03rest of a row");
    c.send(E, b"ROM t WHERE x = 1\0");
    let sql = "SELECT * FROM t";
    c.send(E, &query(sql));
    c.send(I, &cat(&[&complete("SELECT 0"), READY_IDLE]));
    assert_eq!(c.calls.len(), 1);
    assert_eq!(c.calls[0].query, sql);
    assert_eq!(c.calls[0].namespace, None);
    // A statement prepared before we attached: no SQL, operation from the tag.
    c.send(E, &cat(&[&bind("", "old_stmt"), &execute(""), SYNC]));
    c.send(I, &cat(&[BIND_COMPLETE, &complete("INSERT 0 5"), READY_IDLE]));
    assert_eq!(c.calls.len(), 2);
    assert_eq!(c.calls[1].query, "");
    assert_eq!(c.calls[1].operation.as_deref(), Some("INSERT"));
    assert_eq!(ok_rows(&c.calls[1]), Some(5));
}

#[test]
fn server_role_mirrors_directions() {
    let mut c = Conv::new(Side::Server);
    c.send(I, STARTUP_BOB_SHOP);
    c.send(E, &cat(&[AUTH_OK, READY_IDLE]));
    let t0 = c.send(I, &query("SELECT 1"));
    let t1 = c.send(E, &cat(&[&complete("SELECT 1"), READY_IDLE]));
    assert_eq!(c.calls.len(), 1);
    // A server's read has the request at syscall exit.
    assert_eq!((c.calls[0].start_ns, c.calls[0].end_ns), (t0 + 10, t1 + 10));
}

#[test]
fn portal_suspended_and_empty_query() {
    let mut c = Conv::client();
    c.startup();
    c.send(E, &query(""));
    c.send(I, &cat(&[b"I\0\0\0\x04", READY_IDLE]));
    assert!(c.calls.is_empty());
    // Execute with a row limit: PortalSuspended completes the first call.
    c.send(E, &cat(&[&parse("", "SELECT id FROM big"), &bind("", ""), &msg(b'E', b"\0\0\0\0\x02"), SYNC]));
    c.send(I, &cat(&[PARSE_COMPLETE, BIND_COMPLETE, &data_row("1"), &data_row("2"), b"s\0\0\0\x04", READY_IDLE]));
    assert_eq!(c.calls.len(), 1);
    assert_eq!(ok_rows(&c.calls[0]), Some(2));
}

#[test]
fn statement_map_is_bounded() {
    let mut c = Conv::client();
    c.startup();
    for i in 0..(MAX_STATEMENTS + 50) {
        c.send(E, &cat(&[&parse(&format!("s{i}"), "SELECT 1"), SYNC]));
        c.send(I, &cat(&[PARSE_COMPLETE, READY_IDLE]));
    }
    assert_eq!(c.s.st.statements.len(), MAX_STATEMENTS);
    assert!(c.s.st.groups.is_empty());
}

#[test]
fn garbage_never_panics() {
    let mut rng = Rng(0x2545F4914F6CDD1D);
    let conv: Vec<u8> = full_conversation().into_iter().flat_map(|(_, b)| b).collect();
    for round in 0..3000 {
        let mut s = PgSession::new(if round % 2 == 0 { Side::Client } else { Side::Server });
        let mut out = Vec::new();
        let len = rng.below(300);
        let mut data: Vec<u8> = if round % 3 == 0 {
            // Mutated real traffic.
            let mut d = conv.clone();
            for _ in 0..rng.below(8) {
                let i = rng.below(d.len());
                d[i] = rng.next() as u8;
            }
            d
        } else {
            (0..len).map(|_| rng.next() as u8).collect()
        };
        if round % 5 == 0 {
            data.splice(0..0, STARTUP_BOB_SHOP.iter().copied());
        }
        let mut i = 0;
        let mut ts = 0;
        while i < data.len() {
            let n = (rng.below(40) + 1).min(data.len() - i);
            let cap = if rng.below(4) == 0 { rng.below(n + 1) } else { n };
            let dir = if rng.below(2) == 0 { E } else { I };
            ts += 10;
            let c = Chunk {
                direction: dir,
                data: &data[i..i + cap],
                total: n + if rng.below(10) == 0 { rng.below(100_000) } else { 0 },
                ts_enter: ts,
                ts_exit: ts + 1,
            };
            s.on_chunk(&c, &mut out);
            i += n;
        }
        let _ = looks_like_postgres(&data, E);
    }
}

/// Found by fuzzing (fuzz/ postgres_session): after SSLRequest and `N`, a
/// startup-phase length below 4 overflowed while being rejected.
#[test]
fn startup_length_below_four_is_rejected() {
    for role in [Side::Server, Side::Client] {
        let front = if role == Side::Server { I } else { E };
        let mut s = PgSession::new(role);
        let mut out = Vec::new();
        let ssl = b"\0\0\0\x08\x04\xd2\x16\x2f";
        let bad = b"\0\0\0\x02\x02\x02\x02\x02\x02\x02\x02\x02";
        for (dir, data) in [(front, &ssl[..]), (front.flip(), &b"N"[..]), (front, &bad[..])] {
            let c = Chunk { direction: dir, data, total: data.len(), ts_enter: 1, ts_exit: 2 };
            s.on_chunk(&c, &mut out);
        }
        assert!(out.is_empty());
    }
}

#[test]
fn detection() {
    assert!(looks_like_postgres(STARTUP_BOB_SHOP, E));
    assert!(looks_like_postgres(SSL_REQUEST_BYTES, E));
    assert!(looks_like_postgres(b"\x00\x00\x00\x08\x04\xd2\x16\x30", E));
    assert!(looks_like_postgres(b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x04\xd2\xde\xad\xbe\xef", E));
    assert!(looks_like_postgres(&query("SELECT 1"), E));
    assert!(looks_like_postgres(&query("  begin"), I));
    assert!(looks_like_postgres(&cat(&[&parse("", "SELECT $1"), &bind("", ""), SYNC]), E));
    assert!(looks_like_postgres(&bind("", "s1"), E));

    assert!(!looks_like_postgres(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", E));
    assert!(!looks_like_postgres(b"POST /api HTTP/1.1\r\n\r\n", E));
    assert!(!looks_like_postgres(b"PUT /x HTTP/1.1\r\n\r\n", E));
    // TLS ClientHello record header.
    assert!(!looks_like_postgres(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", E));
    // MySQL greeting and COM_QUERY.
    assert!(!looks_like_postgres(b"\x4a\x00\x00\x00\x0a8.0.36\x00\x08\x00\x00\x00", I));
    assert!(!looks_like_postgres(b"\x09\x00\x00\x00\x03SELECT 1", E));
    // 'Q' with junk text, wrong terminator, absurd length.
    assert!(!looks_like_postgres(b"Q\x00\x00\x00\x09hello\0", E));
    assert!(!looks_like_postgres(b"Q\x00\x00\x00\x0cSELECT 1x", E));
    assert!(!looks_like_postgres(b"Q\x7f\x00\x00\x0cSELECT 1\0", E));
    // Startup with an unknown protocol / random bytes.
    assert!(!looks_like_postgres(b"\x00\x00\x00\x20\x00\x02\x00\x00user\x00bob\x00\x00", E));
    let mut rng = Rng(7);
    for _ in 0..2000 {
        let d: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
        assert!(!looks_like_postgres(&d, E), "{d:?}");
    }
}

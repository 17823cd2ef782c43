//! Test vectors written from the MySQL client/server protocol documentation
//! (https://dev.mysql.com/doc/dev/mysql-server/latest/PAGE_PROTOCOL.html):
//! every packet is a 3-byte little-endian payload length, a sequence id,
//! then the payload.

use super::*;
use crate::protocols::sql::tests::Rng;

const E: Direction = Direction::Egress;
const I: Direction = Direction::Ingress;

fn pkt(seq: u8, body: &[u8]) -> Vec<u8> {
    let n = body.len();
    let mut v = vec![n as u8, (n >> 8) as u8, (n >> 16) as u8, seq];
    v.extend_from_slice(body);
    v
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Protocol 10 greeting of MySQL 8.0.36; `caps_high` = upper 16
/// capability bits (0x0100 = CLIENT_DEPRECATE_EOF).
fn greeting(caps_high: u16) -> Vec<u8> {
    pkt(
        0,
        &cat(&[
            b"\x0a8.0.36\0",
            b"\x08\x00\x00\x00", // connection id
            b"abcdefgh",         // auth-plugin-data part 1
            b"\0",               // filler
            b"\xff\xff",         // capabilities, lower 16 bits
            b"\xff",             // charset
            b"\x02\x00",         // status: autocommit
            &caps_high.to_le_bytes(),
            b"\x15",           // auth plugin data length
            &[0u8; 10],        // reserved
            b"ijklmnopqrst\0", // auth-plugin-data part 2
            b"caching_sha2_password\0",
        ]),
    )
}

const CAPS: u32 = CLIENT_PROTOCOL_41
    | CLIENT_SECURE_CONNECTION
    | 0x0008_0000 // CLIENT_PLUGIN_AUTH
    | CLIENT_PLUGIN_AUTH_LENENC
    | 0x0001_0000; // CLIENT_MULTI_STATEMENTS

/// HandshakeResponse41 with user "app", a 32-byte auth response and
/// (when `db`) CLIENT_CONNECT_WITH_DB + database.
fn handshake_response(extra_caps: u32, db: Option<&str>) -> Vec<u8> {
    let caps = CAPS | extra_caps | if db.is_some() { CLIENT_CONNECT_WITH_DB } else { 0 };
    let mut body =
        cat(&[&caps.to_le_bytes(), b"\x00\x00\x00\x01", b"\xff", &[0u8; 23], b"app\0", b"\x20", &[0x5a; 32]]);
    if let Some(db) = db {
        body.extend_from_slice(db.as_bytes());
        body.push(0);
    }
    body.extend_from_slice(b"caching_sha2_password\0");
    pkt(1, &body)
}

/// OK: header 0x00, affected rows, last insert id, status, warnings.
fn ok(seq: u8, affected: u8, status: u16) -> Vec<u8> {
    pkt(seq, &cat(&[b"\x00", &[affected], b"\x00", &status.to_le_bytes(), b"\x00\x00"]))
}

/// EOF: 0xfe, warnings, status.
fn eof(seq: u8, status: u16) -> Vec<u8> {
    pkt(seq, &cat(&[b"\xfe\x00\x00", &status.to_le_bytes()]))
}

/// OK packet with the 0xfe header (result set end with DEPRECATE_EOF).
fn ok_eof(seq: u8, status: u16) -> Vec<u8> {
    pkt(seq, &cat(&[b"\xfe\x00\x00", &status.to_le_bytes(), b"\x00\x00"]))
}

fn err(seq: u8, errno: u16, state: &str, m: &str) -> Vec<u8> {
    pkt(seq, &cat(&[b"\xff", &errno.to_le_bytes(), b"#", state.as_bytes(), m.as_bytes()]))
}

/// Column definition (protocol 41) for column `id` of table `t`.
fn coldef(seq: u8) -> Vec<u8> {
    pkt(seq, b"\x03def\x04shop\x01t\x01t\x02id\x02id\x0c\x3f\x00\x0b\x00\x00\x00\x03\x03\x42\x00\x00\x00")
}

fn text_row(seq: u8, v: &str) -> Vec<u8> {
    pkt(seq, &cat(&[&[v.len() as u8], v.as_bytes()]))
}

fn com_query(sql: &str) -> Vec<u8> {
    pkt(0, &cat(&[b"\x03", sql.as_bytes()]))
}

const AUTH_MORE_FAST_OK: &[u8] = b"\x02\x00\x00\x02\x01\x03";
const AUTOCOMMIT: u16 = 0x0002;
const MORE: u16 = 0x0008;

struct Conv {
    s: MySqlSession,
    n: u64,
    calls: Vec<SqlCall>,
}

impl Conv {
    fn client() -> Self {
        Conv { s: MySqlSession::new(Side::Client), n: 0, calls: Vec::new() }
    }

    fn send(&mut self, dir: Direction, data: &[u8]) -> u64 {
        self.send_partial(dir, data, data.len())
    }

    /// A chunk of which only `data` (the first bytes of `total`) was captured.
    fn send_partial(&mut self, dir: Direction, data: &[u8], total: usize) -> u64 {
        self.n += 1;
        let ts = self.n * 100;
        let c = Chunk { direction: dir, data, total, ts_enter: ts, ts_exit: ts + 10 };
        self.s.on_chunk(&c, &mut self.calls);
        ts
    }

    /// Handshake; `deprecate_eof` negotiated on both sides or not.
    fn connect(&mut self, deprecate_eof: bool, db: Option<&str>) {
        let high = if deprecate_eof { 0xdfff } else { 0xdeff };
        self.send(I, &greeting(high));
        let extra = if deprecate_eof { CLIENT_DEPRECATE_EOF } else { 0 };
        self.send(E, &handshake_response(extra, db));
        self.send(I, &cat(&[AUTH_MORE_FAST_OK, &ok(3, 0, AUTOCOMMIT)]));
    }
}

fn ok_rows(c: &SqlCall) -> Option<u64> {
    match c.outcome {
        SqlOutcome::Ok { rows } => rows,
        _ => panic!("not ok: {c:?}"),
    }
}

/// Found by fuzzing (fuzz/ mysql_session): a length-encoded auth response
/// length near u64::MAX overflowed the offset of the database name.
#[test]
fn huge_lenenc_auth_length_in_handshake() {
    let mut c = Conv::client();
    c.send(I, &greeting(0xdfff));
    let caps = CAPS | CLIENT_CONNECT_WITH_DB;
    let body =
        cat(&[&caps.to_le_bytes(), b"\x00\x00\x00\x01", b"\xff", &[0u8; 23], b"app\0", b"\xfe", &[0xff; 8], b"shop\0"]);
    c.send(E, &pkt(1, &body));
    assert_eq!(c.s.namespace(), None);
}

#[test]
fn handshake_with_database() {
    let mut c = Conv::client();
    c.connect(true, Some("shop"));
    assert_eq!(c.s.namespace(), Some("shop"));
    assert_eq!(c.s.st.phase, Phase::Command);
    assert_eq!(c.s.st.deprecate_eof(), Some(true));
    let t0 = c.send(E, &com_query("INSERT INTO orders (id) VALUES (7)"));
    let t1 = c.send(I, &ok(1, 1, AUTOCOMMIT));
    assert_eq!(c.calls.len(), 1);
    let call = &c.calls[0];
    assert_eq!(call.system, DbSystem::Mysql);
    assert_eq!(call.namespace.as_deref(), Some("shop"));
    assert_eq!(call.operation.as_deref(), Some("INSERT"));
    assert_eq!(call.collection.as_deref(), Some("orders"));
    assert_eq!(ok_rows(call), Some(1));
    assert_eq!((call.start_ns, call.end_ns), (t0, t1 + 10));
    assert!(!call.prepared);
}

#[test]
fn result_set_without_deprecate_eof() {
    let mut c = Conv::client();
    c.connect(false, None);
    assert_eq!(c.s.st.deprecate_eof(), Some(false));
    c.send(E, &com_query("SELECT id FROM t"));
    c.send(I, &cat(&[&pkt(1, b"\x01"), &coldef(2), &eof(3, AUTOCOMMIT), &text_row(4, "1"), &text_row(5, "2")]));
    assert!(c.calls.is_empty());
    c.send(I, &eof(6, AUTOCOMMIT));
    assert_eq!(c.calls.len(), 1);
    assert_eq!(ok_rows(&c.calls[0]), Some(2));
    assert_eq!(c.calls[0].namespace, None);
}

#[test]
fn result_set_with_deprecate_eof() {
    let mut c = Conv::client();
    c.connect(true, None);
    c.send(E, &com_query("SELECT id FROM t"));
    c.send(
        I,
        &cat(&[
            &pkt(1, b"\x01"),
            &coldef(2),
            &text_row(3, "1"),
            &text_row(4, "2"),
            &text_row(5, "3"),
            &ok_eof(6, AUTOCOMMIT),
        ]),
    );
    assert_eq!(c.calls.len(), 1);
    assert_eq!(ok_rows(&c.calls[0]), Some(3));
    // Empty result set: terminator right after the column definitions.
    c.send(E, &com_query("SELECT id FROM t WHERE 0"));
    c.send(I, &cat(&[&pkt(1, b"\x01"), &coldef(2), &ok_eof(3, AUTOCOMMIT)]));
    assert_eq!(c.calls.len(), 2);
    assert_eq!(ok_rows(&c.calls[1]), Some(0));
}

#[test]
fn result_sets_with_unknown_capabilities() {
    // Attached mid-connection: both EOF styles must work.
    let mut c = Conv::client();
    c.send(E, &com_query("SELECT id FROM t"));
    c.send(I, &cat(&[&pkt(1, b"\x01"), &coldef(2), &eof(3, AUTOCOMMIT), &text_row(4, "1"), &eof(5, AUTOCOMMIT)]));
    c.send(E, &com_query("SELECT id FROM t"));
    c.send(I, &cat(&[&pkt(1, b"\x01"), &coldef(2), &text_row(3, "1"), &text_row(4, "2"), &ok_eof(5, AUTOCOMMIT)]));
    c.send(E, &com_query("SELECT id FROM t WHERE 0"));
    c.send(I, &cat(&[&pkt(1, b"\x01"), &coldef(2), &ok_eof(3, AUTOCOMMIT)]));
    let rows: Vec<_> = c.calls.iter().map(ok_rows).collect();
    assert_eq!(rows, vec![Some(1), Some(2), Some(0)]);
}

#[test]
fn errors_with_sqlstate() {
    let mut c = Conv::client();
    c.connect(true, Some("shop"));
    let cases = [
        ("INSERT INTO users (id) VALUES (1)", 1062u16, "23000", "Duplicate entry '1' for key 'users.PRIMARY'"),
        ("SELECT * FROM missing", 1146, "42S02", "Table 'shop.missing' doesn't exist"),
        ("SELEC 1", 1064, "42000", "You have an error in your SQL syntax"),
    ];
    for (sql, errno, state, m) in cases {
        c.send(E, &com_query(sql));
        c.send(I, &err(1, errno, state, m));
    }
    assert_eq!(c.calls.len(), 3);
    for (call, (sql, errno, state, m)) in c.calls.iter().zip(cases) {
        assert_eq!(call.query, sql);
        assert_eq!(call.outcome, SqlOutcome::Error { code: state.into(), message: m.into(), mysql_errno: Some(errno) });
    }
    assert_eq!(c.calls[1].collection.as_deref(), Some("missing"));
}

#[test]
fn error_without_sqlstate_uses_errno() {
    let mut c = Conv::client();
    c.connect(true, None);
    c.send(E, &com_query("SELECT 1"));
    c.send(I, &pkt(1, b"\xff\x15\x04Access denied"));
    assert!(matches!(&c.calls[0].outcome, SqlOutcome::Error { code, mysql_errno: Some(1045), .. } if code == "1045"));
}

fn run_prepare_execute_twice(deprecate: bool) {
    let mut c = Conv::client();
    c.connect(deprecate, Some("shop"));
    let sql = "SELECT id FROM t WHERE id = ?";
    c.send(E, &pkt(0, &cat(&[b"\x16", sql.as_bytes()])));
    // PREPARE_OK: stmt id 1, 1 column, 1 param, filler, 0 warnings.
    let mut resp = cat(&[&pkt(1, b"\x00\x01\x00\x00\x00\x01\x00\x01\x00\x00\x00\x00"), &coldef(2)]);
    if deprecate {
        resp.extend(coldef(3));
    } else {
        resp.extend(cat(&[&eof(3, AUTOCOMMIT), &coldef(4), &eof(5, AUTOCOMMIT)]));
    }
    c.send(I, &resp);
    assert!(c.calls.is_empty());
    assert!(c.s.st.current.is_none(), "prepare response fully consumed");
    for v in [7u8, 8] {
        // COM_STMT_EXECUTE: id 1, flags 0, iterations 1, null bitmap, new
        // params bound, type LONG, value.
        let t0 =
            c.send(E, &pkt(0, &cat(&[b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x01\x03\x00", &[v, 0, 0, 0]])));
        // Binary result set: rows start with 0x00 (not an OK packet here).
        let mut r = cat(&[&pkt(1, b"\x01"), &coldef(2)]);
        let mut seq = 3;
        if !deprecate {
            r.extend(eof(seq, AUTOCOMMIT));
            seq += 1;
        }
        r.extend(pkt(seq, &[0x00, 0x00, v, 0, 0, 0]));
        r.extend(if deprecate { ok_eof(seq + 1, AUTOCOMMIT) } else { eof(seq + 1, AUTOCOMMIT) });
        let t1 = c.send(I, &r);
        let call = c.calls.last().expect("call");
        assert_eq!((call.start_ns, call.end_ns), (t0, t1 + 10));
    }
    assert_eq!(c.calls.len(), 2);
    for call in &c.calls {
        assert_eq!(call.query, sql);
        assert!(call.prepared);
        assert_eq!(ok_rows(call), Some(1));
        assert_eq!(call.collection.as_deref(), Some("t"));
    }
    // COM_STMT_CLOSE has no response; the next query still matches.
    c.send(E, &pkt(0, b"\x19\x01\x00\x00\x00"));
    c.send(E, &com_query("DELETE FROM t"));
    c.send(I, &ok(1, 4, AUTOCOMMIT));
    assert_eq!(ok_rows(&c.calls[2]), Some(4));
    assert_eq!(c.s.stats().calls_dropped, 0);
}

#[test]
fn prepare_and_execute_twice() {
    run_prepare_execute_twice(true);
    run_prepare_execute_twice(false);
}

#[test]
fn init_db_and_use_update_namespace() {
    let mut c = Conv::client();
    c.connect(true, Some("shop"));
    c.send(E, &pkt(0, b"\x02inventory"));
    c.send(I, &ok(1, 0, AUTOCOMMIT));
    assert!(c.calls.is_empty(), "COM_INIT_DB is not a call");
    assert_eq!(c.s.namespace(), Some("inventory"));
    c.send(E, &com_query("USE `billing`"));
    c.send(I, &ok(1, 0, AUTOCOMMIT));
    assert_eq!(c.s.namespace(), Some("billing"));
    c.send(E, &com_query("SELECT 1"));
    c.send(I, &cat(&[&pkt(1, b"\x01"), &coldef(2), &text_row(3, "1"), &ok_eof(4, AUTOCOMMIT)]));
    assert_eq!(c.calls.last().unwrap().namespace.as_deref(), Some("billing"));
    // A failed COM_INIT_DB does not change it.
    c.send(E, &pkt(0, b"\x02nope"));
    c.send(I, &err(1, 1049, "42000", "Unknown database 'nope'"));
    assert_eq!(c.s.namespace(), Some("billing"));
}

#[test]
fn multi_statement_query_gives_one_call_per_result() {
    let mut c = Conv::client();
    c.connect(false, None);
    c.send(E, &com_query("SELECT id FROM a; UPDATE b SET x = 1"));
    let t1 = c.send(
        I,
        &cat(&[&pkt(1, b"\x01"), &coldef(2), &eof(3, AUTOCOMMIT), &text_row(4, "1"), &eof(5, AUTOCOMMIT | MORE)]),
    );
    let t2 = c.send(I, &ok(6, 3, AUTOCOMMIT));
    assert_eq!(c.calls.len(), 2);
    assert_eq!(c.calls[0].query, "SELECT id FROM a");
    assert_eq!((ok_rows(&c.calls[0]), c.calls[0].end_ns), (Some(1), t1 + 10));
    assert_eq!(c.calls[1].operation.as_deref(), Some("UPDATE"));
    assert_eq!((ok_rows(&c.calls[1]), c.calls[1].end_ns), (Some(3), t2 + 10));
    // A CALL returning a result set and then the final OK: one call.
    c.send(E, &com_query("CALL report()"));
    c.send(
        I,
        &cat(&[
            &pkt(1, b"\x01"),
            &coldef(2),
            &eof(3, AUTOCOMMIT),
            &text_row(4, "1"),
            &text_row(5, "2"),
            &eof(6, AUTOCOMMIT | MORE),
            &ok(7, 0, AUTOCOMMIT),
        ]),
    );
    assert_eq!(c.calls.len(), 3);
    assert_eq!(ok_rows(&c.calls[2]), Some(2));
}

#[test]
fn multi_statement_error_stops() {
    let mut c = Conv::client();
    c.connect(true, None);
    c.send(E, &com_query("INSERT INTO a VALUES (1); INSERT INTO nope VALUES (2); SELECT 3"));
    c.send(I, &cat(&[&ok(1, 1, AUTOCOMMIT | MORE), &err(2, 1146, "42S02", "Table 'nope' doesn't exist")]));
    assert_eq!(c.calls.len(), 2);
    assert!(matches!(c.calls[1].outcome, SqlOutcome::Error { .. }));
    assert!(c.s.st.current.is_none());
}

#[test]
fn local_infile_is_skipped() {
    let mut c = Conv::client();
    c.connect(true, None);
    c.send(E, &com_query("LOAD DATA LOCAL INFILE 'x.csv' INTO TABLE t"));
    c.send(I, &pkt(1, b"\xfbx.csv"));
    c.send(E, &cat(&[&pkt(2, b"1,2\n3,4\n"), &pkt(3, b"")]));
    c.send(I, &ok(4, 2, AUTOCOMMIT));
    assert_eq!(c.calls.len(), 1);
    assert_eq!(ok_rows(&c.calls[0]), Some(2));
    assert_eq!(c.calls[0].collection.as_deref(), Some("t"));
}

#[test]
fn ssl_request_stops_parsing() {
    let mut c = Conv::client();
    c.send(I, &greeting(0xdfff));
    // SSLRequest: 32 bytes, CLIENT_SSL set, no user name.
    c.send(E, &pkt(1, &cat(&[&(CAPS | CLIENT_SSL).to_le_bytes(), b"\x00\x00\x00\x01\xff", &[0u8; 23]])));
    assert!(c.s.encrypted());
    c.send(E, b"\x16\x03\x01\x00\x05hello");
    c.send(E, &com_query("SELECT 1"));
    c.send(I, &ok(1, 0, AUTOCOMMIT));
    assert!(c.calls.is_empty());
}

fn conversation() -> Vec<(Direction, Vec<u8>)> {
    vec![
        (I, greeting(0xdeff)),
        (E, handshake_response(0, Some("shop"))),
        (I, cat(&[AUTH_MORE_FAST_OK, &ok(3, 0, AUTOCOMMIT)])),
        (E, com_query("SELECT id FROM t")),
        (I, cat(&[&pkt(1, b"\x01"), &coldef(2), &eof(3, AUTOCOMMIT), &text_row(4, "1"), &eof(5, AUTOCOMMIT)])),
        (E, com_query("UPDATE t SET id = 2")),
        (I, ok(1, 5, AUTOCOMMIT)),
    ]
}

#[test]
fn split_byte_by_byte_and_coalesced() {
    let mut c = Conv::client();
    for (dir, bytes) in conversation() {
        for b in bytes.chunks(1) {
            c.send(dir, b);
        }
    }
    let got: Vec<_> = c.calls.iter().map(|c| (c.query.clone(), ok_rows(c), c.namespace.clone())).collect();
    let want = vec![
        ("SELECT id FROM t".to_string(), Some(1), Some("shop".to_string())),
        ("UPDATE t SET id = 2".to_string(), Some(5), Some("shop".to_string())),
    ];
    assert_eq!(got, want);
    assert_eq!(c.s.stats().desyncs, 0);

    let mut c = Conv::client();
    for (dir, bytes) in conversation() {
        for part in bytes.chunks(7) {
            c.send(dir, part);
        }
    }
    assert_eq!(c.calls.len(), 2);
}

#[test]
fn big_row_skipped_by_length() {
    let mut c = Conv::client();
    c.connect(true, None);
    c.send(E, &com_query("SELECT body FROM docs"));
    let big = pkt(3, &cat(&[b"\xfc\x50\xc3", &vec![b'z'; 50_000]]));
    let head = cat(&[&pkt(1, b"\x01"), &coldef(2), &big[..300]]);
    let total = head.len() - 300 + big.len();
    let ch = Chunk { direction: I, data: &head, total, ts_enter: 1, ts_exit: 2 };
    c.s.on_chunk(&ch, &mut c.calls);
    c.send(I, &ok_eof(4, AUTOCOMMIT));
    assert_eq!(c.calls.len(), 1);
    assert_eq!(ok_rows(&c.calls[0]), Some(1));
    assert_eq!(c.s.stats().desyncs, 0);
}

/// mysql2 reading 3000 rows of ~110 bytes in 64 KiB reads of which 512
/// bytes are captured: rows past the capture cannot be framed and a later
/// read may start with bytes that look like a packet header. The large
/// SELECT still becomes a call (ended by the last response bytes, when the
/// client sends its next command), and so does everything after it.
#[test]
fn many_rows_past_the_capture_like_mysql2() {
    let mut c = Conv::client();
    c.connect(true, Some("shop"));
    let t0 = c.send(E, &com_query("SELECT seq, REPEAT('x', 100) FROM seq_1_to_3000"));
    let mut resp = cat(&[&pkt(1, b"\x01"), &coldef(2)]);
    for i in 0..3000u32 {
        let v = format!("{i:>4}{}", "x".repeat(100));
        resp.extend(text_row((3 + i) as u8, &v));
    }
    resp.extend(ok_eof(3u32.wrapping_add(3000) as u8, AUTOCOMMIT));
    let mut t_last = 0;
    for chunk in resp.chunks(65536) {
        t_last = c.send_partial(I, &chunk[..chunk.len().min(512)], chunk.len());
    }
    assert!(c.calls.is_empty());
    c.send(E, &com_query("INSERT INTO t (id) VALUES (1)"));
    c.send(I, &ok(1, 1, AUTOCOMMIT));
    c.send(E, &com_query("SELECT * FROM dragon"));
    c.send(I, &err(1, 1146, "42S02", "Table 'shop.dragon' doesn't exist"));
    assert_eq!(c.calls.len(), 3, "{:?}", c.calls);
    assert_eq!(c.calls[0].collection.as_deref(), Some("seq_1_to_3000"));
    assert_eq!(c.calls[0].outcome, SqlOutcome::Ok { rows: None });
    assert_eq!((c.calls[0].start_ns, c.calls[0].end_ns), (t0, t_last + 10));
    assert_eq!(c.calls[1].operation.as_deref(), Some("INSERT"));
    assert_eq!(ok_rows(&c.calls[1]), Some(1));
    assert!(matches!(&c.calls[2].outcome, SqlOutcome::Error { code, .. } if code == "42S02"));
    assert_eq!(c.s.stats().calls_dropped, 0);
}

#[test]
fn garbage_never_panics() {
    let mut rng = Rng(0xdeadbeefcafef00d);
    let conv: Vec<(Direction, Vec<u8>)> = conversation();
    for round in 0..3000 {
        let mut s = MySqlSession::new(if round % 2 == 0 { Side::Client } else { Side::Server });
        let mut out = Vec::new();
        let mut chunks: Vec<(Direction, Vec<u8>)> = if round % 2 == 0 {
            conv.clone()
        } else {
            (0..rng.below(10))
                .map(|_| {
                    (if rng.below(2) == 0 { E } else { I }, (0..rng.below(80)).map(|_| rng.next() as u8).collect())
                })
                .collect()
        };
        for (_, d) in chunks.iter_mut() {
            for _ in 0..rng.below(4) {
                if !d.is_empty() {
                    let i = rng.below(d.len());
                    d[i] = rng.next() as u8;
                }
            }
        }
        let mut ts = 0;
        for (dir, d) in &chunks {
            let mut i = 0;
            while i < d.len() {
                let n = (rng.below(30) + 1).min(d.len() - i);
                let cap = if rng.below(5) == 0 { rng.below(n + 1) } else { n };
                ts += 10;
                let c = Chunk {
                    direction: *dir,
                    data: &d[i..i + cap],
                    total: n + if rng.below(10) == 0 { rng.below(100_000) } else { 0 },
                    ts_enter: ts,
                    ts_exit: ts + 1,
                };
                s.on_chunk(&c, &mut out);
                i += n;
            }
            let _ = looks_like_mysql_command(d);
            let _ = looks_like_mysql_server_greeting(d);
        }
    }
}

#[test]
fn detection() {
    assert!(looks_like_mysql_server_greeting(&greeting(0xdfff)));
    let maria = pkt(0, &cat(&[b"\x0a5.5.5-10.11.6-MariaDB-0+deb12u1\0", &[1u8; 60]]));
    assert!(looks_like_mysql_server_greeting(&maria));
    assert!(looks_like_mysql_command(&com_query("SELECT 1")));
    assert!(looks_like_mysql_command(&pkt(0, b"\x16INSERT INTO t VALUES (?)")));
    assert!(looks_like_mysql_command(&pkt(0, b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00")));
    // With query attributes (no parameters, one set).
    assert!(looks_like_mysql_command(&pkt(0, b"\x03\x00\x01SELECT 1")));

    assert!(!looks_like_mysql_server_greeting(b"GET / HTTP/1.1\r\n\r\n"));
    assert!(!looks_like_mysql_command(b"GET / HTTP/1.1\r\n\r\n"));
    assert!(!looks_like_mysql_command(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"));
    // PostgreSQL startup and query.
    let pg = b"\x00\x00\x00\x20\x00\x03\x00\x00user\x00bob\x00database\x00shop\x00\x00";
    assert!(!looks_like_mysql_server_greeting(pg));
    assert!(!looks_like_mysql_command(pg));
    assert!(!looks_like_mysql_command(b"Q\x00\x00\x00\x0dSELECT 1;\0"));
    // Wrong sequence id / not SQL / protocol 9.
    assert!(!looks_like_mysql_command(&pkt(1, b"\x03SELECT 1")));
    assert!(!looks_like_mysql_command(&pkt(0, b"\x03hello world")));
    assert!(!looks_like_mysql_server_greeting(&pkt(0, b"\x098.0.36\0aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")));
    let mut rng = Rng(99);
    for _ in 0..2000 {
        let d: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
        assert!(!looks_like_mysql_command(&d) && !looks_like_mysql_server_greeting(&d), "{d:?}");
    }
}

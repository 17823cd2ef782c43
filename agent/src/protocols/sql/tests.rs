use super::*;

fn info(op: &str, table: Option<&str>) -> SqlInfo {
    SqlInfo { operation: Some(op.to_string()), collection: table.map(str::to_string) }
}

#[test]
fn analyze_basic_dml() {
    assert_eq!(analyze("SELECT id, name FROM users WHERE id = $1"), info("SELECT", Some("users")));
    assert_eq!(
        analyze("select * from public.users u join orders o on o.uid = u.id"),
        info("SELECT", Some("public.users"))
    );
    assert_eq!(analyze("INSERT INTO orders (id, total) VALUES (1, 2.5)"), info("INSERT", Some("orders")));
    assert_eq!(analyze("UPDATE accounts SET balance = balance - 10 WHERE id = 7"), info("UPDATE", Some("accounts")));
    assert_eq!(analyze("DELETE FROM sessions WHERE expires < now()"), info("DELETE", Some("sessions")));
    assert_eq!(analyze(r#"SELECT * FROM "Weird Table""#), info("SELECT", Some("Weird Table")));
}

#[test]
fn analyze_join_subquery_cte() {
    assert_eq!(analyze("SELECT * FROM (SELECT * FROM items) AS sub JOIN tags ON true"), info("SELECT", Some("items")));
    assert_eq!(
        analyze("WITH recent AS (SELECT * FROM events WHERE ts > now()) SELECT count(*) FROM recent"),
        info("SELECT", Some("events"))
    );
    assert_eq!(analyze("WITH x AS (SELECT 1) INSERT INTO audit SELECT * FROM x"), info("INSERT", Some("audit")));
    assert_eq!(analyze("SELECT a FROM t1 UNION SELECT a FROM t2"), info("SELECT", Some("t1")));
}

#[test]
fn analyze_ddl_and_tx() {
    assert_eq!(
        analyze("CREATE TABLE IF NOT EXISTS app.widgets (id serial primary key, name text)"),
        info("CREATE", Some("app.widgets"))
    );
    assert_eq!(analyze("DROP TABLE widgets"), info("DROP", Some("widgets")));
    assert_eq!(analyze("ALTER TABLE widgets ADD COLUMN x int"), info("ALTER", Some("widgets")));
    assert_eq!(analyze("TRUNCATE widgets"), info("TRUNCATE", Some("widgets")));
    assert_eq!(analyze("BEGIN"), info("BEGIN", None));
    assert_eq!(analyze("commit"), info("COMMIT", None));
    assert_eq!(analyze_for(DbSystem::Postgresql, "COPY items (a, b) FROM STDIN"), info("COPY", Some("items")));
    assert_eq!(
        analyze_for(DbSystem::Mysql, "INSERT INTO `shop`.`orders` SET id = 1"),
        info("INSERT", Some("shop.orders"))
    );
}

#[test]
fn analyze_unparseable_falls_back() {
    // Truncated statement: sqlparser fails, tokens still give an answer.
    assert_eq!(analyze("SELECT a, b, c FROM big_table WHERE name = 'unterminat"), info("SELECT", Some("big_table")));
    assert_eq!(analyze("INSERT INTO logs VALUES (1, 2, 3), (4, 5"), info("INSERT", Some("logs")));
    assert_eq!(analyze("UPDATE ONLY t2 SET x = = 1"), info("UPDATE", Some("t2")));
    assert_eq!(analyze("FROBNICATE the things"), SqlInfo { operation: Some("FROBNICATE".into()), collection: None });
    assert_eq!(analyze(""), SqlInfo::default());
    assert_eq!(analyze("   -- only a comment"), SqlInfo::default());
}

#[test]
fn split_respects_quotes_comments_dollars() {
    assert_eq!(split_statements("SELECT 1; SELECT 2"), vec!["SELECT 1", "SELECT 2"]);
    assert_eq!(split_statements("SELECT 1;;  ; "), vec!["SELECT 1"]);
    assert_eq!(
        split_statements("INSERT INTO t VALUES ('a;b'); SELECT \"x;y\" FROM t"),
        vec!["INSERT INTO t VALUES ('a;b')", "SELECT \"x;y\" FROM t"]
    );
    assert_eq!(
        split_statements("SELECT 1 -- c;omment\n; /* x; /* nested; */ y; */ SELECT 2"),
        vec!["SELECT 1 -- c;omment", "/* x; /* nested; */ y; */ SELECT 2"]
    );
    assert_eq!(
        split_statements("CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql; SELECT $$;$$"),
        vec!["CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql", "SELECT $$;$$"]
    );
    assert_eq!(split_statements("SELECT E'it\\'s; fine'; SELECT 3").len(), 2);
    assert_eq!(split_statements("-- nothing\n"), Vec::<String>::new());
    // Found by fuzzing (fuzz/ sql_text): whitespace to `trim` but not to the
    // lexer made an empty statement.
    assert_eq!(split_statements("\x0b"), Vec::<String>::new());
    assert_eq!(split_statements("SELECT 1;\u{a0};\x0b"), vec!["SELECT 1"]);
    // MySQL: backslash escapes and # comments.
    assert_eq!(
        split_statements_for(DbSystem::Mysql, "SELECT 'it\\'s; x'; # c;\nSELECT 2"),
        vec!["SELECT 'it\\'s; x'", "# c;\nSELECT 2"]
    );
}

fn assert_no_leak(out: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!out.contains(s), "{s:?} leaked into {out:?}");
    }
}

#[test]
fn sanitize_masks_literals() {
    let q = "SELECT * FROM users WHERE name = 'O''Brien' AND age > 42 AND score = -3.5e2";
    let s = sanitize(q);
    assert_eq!(s, "SELECT * FROM users WHERE name = ? AND age > ? AND score = ?");
    let s = sanitize("UPDATE t SET a = E'se\\'cret', b = $tag$dollar secret$tag$, c = $$x$$ WHERE id = $1");
    assert_eq!(s, "UPDATE t SET a = ?, b = ?, c = ? WHERE id = $1");
    let s = sanitize("SELECT X'DEADBEEF', B'0101', 0xCAFEBABE, .5, 1e10 FROM t WHERE f IS NULL AND g = TRUE");
    assert_no_leak(&s, &["DEAD", "0101", "CAFE", "BABE", "5", "1e10", "10"]);
    assert!(s.contains("NULL") && s.contains("TRUE"), "{s}");
    assert_eq!(sanitize("SELECT a - 1 FROM t"), "SELECT a - ? FROM t");
    assert_eq!(sanitize("SELECT * FROM t WHERE a = ? AND b = :name"), "SELECT * FROM t WHERE a = ? AND b = :name");
    // Comments can carry anything: dropped.
    assert_eq!(sanitize("SELECT 1 /* user=bob */ -- pw=hunter2\n"), "SELECT ?");
    // Identifiers with digits are not numbers.
    assert_eq!(sanitize("SELECT col1 FROM t2"), "SELECT col1 FROM t2");
}

#[test]
fn sanitize_mysql_rules() {
    let s =
        sanitize_for(DbSystem::Mysql, r#"SELECT * FROM `t` WHERE a = "dq secret" AND b = 'it\'s secret' AND c = 0x1F"#);
    assert_no_leak(&s, &["secret", "1F"]);
    assert!(s.contains("`t`"), "{s}");
}

#[test]
fn sanitize_unterminated_and_untokenizable() {
    // The tokenizer rejects these; the hand lexer masks to the end.
    let s = sanitize("SELECT * FROM t WHERE a = 'never closed secret");
    assert_eq!(s, "SELECT * FROM t WHERE a = ?");
    let s = sanitize("SELECT $x$ secret body");
    assert_no_leak(&s, &["secret"]);
    let s = sanitize("SELECT 1 /* unterminated secret");
    assert_no_leak(&s, &["secret"]);
    let s = sanitize_for(DbSystem::Mysql, "SELECT \"unterminated secret");
    assert_no_leak(&s, &["secret"]);
}

/// A tiny deterministic PRNG (no dependency).
pub(crate) struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn sanitize_never_leaks_random_literals() {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let pieces: &[&str] = &[
        "SELECT", "*", "FROM", "t", "WHERE", "a", "=", "AND", "(", ")", ",", "IN", "-", "+", ";", "--", "/*", "*/",
        "\n", " ", "$1", "?", "::", "x", "\\",
    ];
    for round in 0..2000 {
        let mut sql = String::new();
        for _ in 0..rng.below(20) + 1 {
            match rng.below(8) {
                0 => sql.push_str(&format!("'QZX{round}'")),
                1 => sql.push_str(&format!("E'QZ\\'X{round}'")),
                2 => sql.push_str(&format!("$q$QZX{round}$q$")),
                3 => sql.push_str("987654321"),
                4 => {
                    // Unterminated: only meaningful as the last piece.
                    sql.push_str(&format!("'QZ''X{round} "));
                    break;
                }
                _ => sql.push_str(pieces[rng.below(pieces.len())]),
            }
            sql.push(' ');
        }
        let mysql_sql = sql.replace("$q$", "'");
        for out in [sanitize(&sql), sanitize_for(DbSystem::Postgresql, &sql), sanitize_for(DbSystem::Mysql, &mysql_sql)]
        {
            assert!(!["QZX", "QZ", "987654321"].iter().any(|s| out.contains(s)), "{sql:?} -> {out:?}");
        }
        // Analysis never panics either.
        let _ = analyze(&sql);
        let _ = split_statements(&sql);
        let _ = split_statements_for(DbSystem::Mysql, &sql);
    }
}

#[test]
fn sql_text_detection() {
    assert!(looks_like_sql_text(b"SELECT 1"));
    assert!(looks_like_sql_text(b"  /* c */ (select 1)"));
    assert!(looks_like_sql_text(b"insert into t"));
    assert!(!looks_like_sql_text(b"GET / HTTP/1.1"));
    assert!(!looks_like_sql_text(b"SELECTED"));
    assert!(!looks_like_sql_text(b"\x01\x02SELECT"));
    assert!(!looks_like_sql_text(b""));
}

//! SQL end to end against the real kernel (issue 3's acceptance test): the
//! tests start their own PostgreSQL 15 and MariaDB servers (support/db.rs,
//! random ports, own data dirs), run real, uninstrumented clients nobody in
//! the project wrote (node `pg` and `mysql2`, Python psycopg over libpq, Rust
//! tokio-postgres, `psql`, the `mariadb` CLI), each gated on stdin until
//! periscope watches it, and check the spans an in-test OTLP receiver gets
//! and the `db.client.operation.duration` histogram on /metrics.
//! Needs root and `cargo xtask deps` (server packages, npm and pip modules).
mod support;

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use support::agent::{free_port, wait_for, wait_listening, Agent, Proc};
use support::db::{MariaDb, Postgres, DATABASE, PASSWORD, PG_BIN, USER};
use support::otlp_receiver::{ReceivedSpan, Receiver, Val};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const STATUS_ERROR: i32 = 2;

fn fixtures() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sql");
    assert!(
        dir.join("node_modules/pg").exists() && dir.join("node_modules/mysql2").exists(),
        "{}/node_modules is missing: run `cargo xtask deps`",
        dir.display()
    );
    dir
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("periscope-it-sql-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The interpreter behind `python3` (pyenv shims are shell scripts).
fn python() -> String {
    let out = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Starts a client that waits for one line on stdin before it does anything.
fn gated(cmd: &mut Command) -> Proc {
    Proc(cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("cannot start client"))
}

/// A command-line client that has no stdin gate of its own: a shell reads
/// the line, then execs it (same pid, so tracked from the fork). Its
/// stderr goes to its stdout.
fn gated_exec(program: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "read go; exec \"$0\" \"$@\" 2>&1", program]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    gated(&mut cmd)
}

fn release(p: &mut Proc) {
    release_with(p, "");
}

/// Releases the gate, then writes `input` (what the client reads next).
fn release_with(p: &mut Proc, input: &str) {
    let stdin = p.0.stdin.as_mut().unwrap();
    stdin.write_all(b"go\n").unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    stdin.flush().unwrap();
    drop(p.0.stdin.take());
}

/// Waits for the client to exit successfully; returns its stdout.
fn finish(p: &mut Proc) -> String {
    let status = wait_for("client to finish", Duration::from_secs(60), || p.0.try_wait().ok().flatten());
    let mut out = String::new();
    if let Some(o) = p.0.stdout.as_mut() {
        let mut r = BufReader::new(o);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            out += &line;
            line.clear();
        }
    }
    assert!(status.success(), "client failed: {status}; stdout: {out}");
    out
}

fn pid_of(s: &ReceivedSpan) -> Option<u32> {
    match s.resource.get("process.pid") {
        Some(Val::Int(p)) => Some(*p as u32),
        _ => None,
    }
}

fn is_sql(s: &ReceivedSpan) -> bool {
    s.attr_str("db.system.name").is_some()
}

fn duration_ms(s: &ReceivedSpan) -> f64 {
    (s.span.end_time_unix_nano as f64 - s.span.start_time_unix_nano as f64) / 1e6
}

/// SQL spans of `kind` (from process `pid` when given), in the order the
/// statements were sent.
fn sql_spans(rx: &Receiver, kind: i32, pid: Option<u32>) -> Vec<ReceivedSpan> {
    let mut v: Vec<ReceivedSpan> = rx
        .spans()
        .into_iter()
        .filter(|s| is_sql(s) && s.span.kind == kind && (pid.is_none() || pid_of(s) == pid))
        .collect();
    v.sort_by_key(|s| (s.span.start_time_unix_nano, s.span.end_time_unix_nano));
    v
}

/// Waits until `n` SQL spans arrived, then a little longer so that extra
/// (wrong) spans would show up too; returns them all.
async fn wait_sql(rx: &Receiver, agent: &Agent, kind: i32, pid: Option<u32>, n: usize) -> Vec<ReceivedSpan> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sql_spans(rx, kind, pid).len() < n {
        if std::time::Instant::now() > deadline {
            let all: Vec<String> = rx
                .spans()
                .iter()
                .map(|s| {
                    format!(
                        "{} kind={} pid={:?} {:?}",
                        s.span.name,
                        s.span.kind,
                        pid_of(s),
                        s.attr_str("db.query.text")
                    )
                })
                .collect();
            let counters: Vec<String> = agent
                .metrics()
                .lines()
                .filter(|l| l.starts_with("periscope_") && !l.ends_with(" 0"))
                .map(String::from)
                .collect();
            panic!(
                "timed out waiting for {n} SQL spans of kind {kind} from {pid:?}; spans: {all:#?}\ncounters: {counters:#?}\nrequests: {}, metrics port {} get: {:?}",
                rx.requests().len(), agent.metrics_port, support::agent::http_get(agent.metrics_port, "/healthz")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sql_spans(rx, kind, pid)
}

/// (span name, db.query.text, db.response.status_code or "").
fn summary(spans: &[ReceivedSpan]) -> Vec<(String, String, String)> {
    spans
        .iter()
        .map(|s| {
            (
                s.span.name.clone(),
                s.attr_str("db.query.text").unwrap_or_default(),
                s.attr_str("db.response.status_code").unwrap_or_default(),
            )
        })
        .collect()
}

fn expect(list: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    list.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect()
}

/// What every SQL span of one connection must carry.
fn check_common(spans: &[ReceivedSpan], system: &str, port: u16) {
    for s in spans {
        let ctx = format!("span {:?} {:?}", s.span.name, s.attr_str("db.query.text"));
        assert_eq!(s.attr_str("db.system.name").as_deref(), Some(system), "{ctx}");
        assert_eq!(
            s.attr_str("db.namespace").as_deref(),
            Some(DATABASE),
            "{ctx}: namespace from the startup/handshake"
        );
        assert_eq!(s.attr_str("server.address").as_deref(), Some("127.0.0.1"), "{ctx}");
        assert_eq!(s.attr_int("server.port"), Some(port as i64), "{ctx}");
        let op = s.attr_str("db.operation.name");
        let name = match (&op, s.attr_str("db.collection.name")) {
            (Some(op), Some(t)) => format!("{op} {t}"),
            (Some(op), None) => op.clone(),
            _ => "SQL".into(),
        };
        assert_eq!(s.span.name, name, "{ctx}: name is operation + collection");
        assert!(s.span.end_time_unix_nano >= s.span.start_time_unix_nano, "{ctx}");
        assert!(duration_ms(s) < 5000.0, "{ctx}: lasted {} ms", duration_ms(s));
        let code = s.attr_str("db.response.status_code");
        let status = s.span.status.as_ref().map_or(0, |st| st.code);
        match &code {
            Some(code) => {
                assert_eq!(s.attr_str("error.type").as_ref(), Some(code), "{ctx}: error.type");
                assert_eq!(status, STATUS_ERROR, "{ctx}: failed statement has status ERROR");
            }
            None => {
                assert_eq!(s.attr_str("error.type"), None, "{ctx}");
                assert_ne!(status, STATUS_ERROR, "{ctx}: successful statement is not an error");
            }
        }
    }
}

/// The text of span `i`, a statement with 300 literals, longer than the
/// capture: kept as far as captured, starting with `prefix`, every literal
/// masked (`'n0'`...`'n299'`: no `n` followed by a digit).
fn long_statement(spans: &[ReceivedSpan], i: usize, prefix: &str) -> String {
    let text = spans.get(i).and_then(|s| s.attr_str("db.query.text")).unwrap_or_default();
    assert!(text.starts_with(prefix), "long statement {i}: {text:?}");
    assert!(text.len() < 1024, "{text:?}");
    assert!(!regex::Regex::new("n[0-9]").unwrap().is_match(&text), "literal leaked: {text:?}");
    text
}

/// No literal of the statements sent may reach any exported attribute.
fn assert_no_literals(spans: &[ReceivedSpan], literals: &[&str]) {
    for s in spans {
        for (k, v) in s.attrs() {
            let v = format!("{v:?}");
            for l in literals {
                assert!(!v.contains(l), "literal {l:?} leaked into {k} = {v}");
            }
        }
    }
}

/// `db_client_operation_duration_seconds_count` for the series whose labels
/// contain all of `labels`, once it reached `want` (or the last value seen).
fn db_histogram_count(agent: &Agent, labels: &[&str], want: f64) -> f64 {
    let metric = "db_client_operation_duration_seconds_count";
    let mut last = 0.0;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        last = agent.sample_sum(metric, labels);
        if last == want {
            // Stable: nothing more arrives.
            std::thread::sleep(Duration::from_millis(300));
            return agent.sample_sum(metric, labels);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    last
}

fn grpc_env(rx: &Receiver) -> Vec<(&'static str, String)> {
    vec![("OTEL_EXPORTER_OTLP_ENDPOINT", rx.grpc_endpoint()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into())]
}

// ---------------------------------------------------------------------------
// PostgreSQL clients
// ---------------------------------------------------------------------------

/// node-postgres, tracked by `--exe-path '*/node'`: simple protocol (no
/// parameters), extended protocol ($1) and a named statement run 3 times.
/// What fixtures/sql/psycopg_client.py runs, as (span name, query text, error code):
/// the same from the client's side and from the server's.
fn psycopg_script_spans() -> Vec<(String, String, String)> {
    let by_id = ("SELECT unicorn", "SELECT name FROM unicorn WHERE id = $1", "");
    expect(&[
        ("SELECT unicorn", "SELECT count(*) FROM unicorn", ""),
        ("INSERT unicorn", "INSERT INTO unicorn (name) VALUES ($1)", ""),
        by_id,
        by_id,
        by_id,
        by_id,
        by_id,
        by_id,
        by_id,
        ("BEGIN", "BEGIN", ""),
        ("UPDATE unicorn", "UPDATE unicorn SET name = ? WHERE name = $1", ""),
        ("COMMIT", "COMMIT", ""),
        ("SELECT dragon", "SELECT * FROM dragon", "42P01"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_pg_simple_extended_and_named_statements() {
    let fixtures = fixtures();
    let rx = Receiver::start().await;
    // A random port: detection is by content.
    let pg = Postgres::start("node");
    let mut env = grpc_env(&rx);
    env.push(("OTEL_SEMCONV_STABILITY_OPT_IN", "database/dup".into()));
    let agent = Agent::start(&["--exe-path", "*/node"], &env);
    let mut client = gated(Command::new("node").arg(fixtures.join("pg_client.js")).arg(pg.port.to_string()));
    agent.wait_tracked(client.pid());
    release(&mut client);
    let out = finish(&mut client);
    // What the client itself saw: the scenario really produced these errors.
    assert_eq!(out.trim(), "23505 42601 42P01");

    let spans = wait_sql(&rx, &agent, CLIENT, Some(client.pid()), 13).await;
    let long = long_statement(&spans, 6, "SELECT name FROM unicorn WHERE name IN (?, ?, ?, ?");
    let long_ext = long_statement(&spans, 7, "SELECT name FROM unicorn WHERE name = $1 OR name IN (?, ?, ?, ?");
    assert_eq!(
        summary(&spans),
        expect(&[
            ("INSERT unicorn", "INSERT INTO unicorn (name) VALUES (?)", ""),
            ("SELECT unicorn", "SELECT * FROM unicorn WHERE name = ?", ""),
            ("INSERT unicorn", "INSERT INTO unicorn (name) VALUES ($1)", ""),
            ("SELECT unicorn", "SELECT id, name FROM unicorn WHERE name = $1", ""),
            ("SELECT unicorn", "SELECT id, name FROM unicorn WHERE name = $1", ""),
            ("SELECT unicorn", "SELECT id, name FROM unicorn WHERE name = $1", ""),
            ("SELECT unicorn", &long, ""),
            ("SELECT unicorn", &long_ext, ""),
            ("SELECT", "SELECT g, repeat(?, ?) AS pad FROM generate_series(?, ?) g", ""),
            ("INSERT unicorn", "INSERT INTO unicorn (name) VALUES (?)", "23505"),
            ("SQL", "SELEC ?", "42601"),
            ("SELECT dragon", "SELECT * FROM dragon", "42P01"),
            ("SELECT", "SELECT pg_sleep(?)", ""),
        ])
    );
    check_common(&spans, "postgresql", pg.port);
    assert_no_literals(&spans, &["bob", "alice", "carol", "0.2"]);
    for s in &spans {
        // Unknown statement keywords (the SELEC typo) give no operation and the name "SQL".
        let first = s.span.name.split(' ').next().unwrap();
        assert_eq!(s.attr_str("db.operation.name").as_deref(), (first != "SQL").then_some(first));
        // database/dup: the old names too.
        assert_eq!(s.attr_str("db.statement"), s.attr_str("db.query.text"));
        assert_eq!(s.attr_str("db.name").as_deref(), Some(DATABASE));
        assert_eq!(s.attr_str("db.system").as_deref(), Some("postgresql"));
        assert_eq!(s.service_name(), Some("pg_client"));
    }
    assert_eq!(spans[0].attr_str("db.collection.name").as_deref(), Some("unicorn"));
    // The end of 3000 rows lies past the capture: rows, when known, are right.
    assert!(spans[8].attr_int("db.response.returned_rows").is_none_or(|r| r == 3000));
    assert_eq!(spans[1].attr_int("db.response.returned_rows"), Some(1));
    assert_eq!(spans[7].attr_int("db.response.returned_rows"), Some(1), "the long extended statement found bob");
    let sleep = &spans[12];
    assert!((200.0..2000.0).contains(&duration_ms(sleep)), "pg_sleep(0.2) span lasted {} ms", duration_ms(sleep));
    for s in &spans[..12] {
        assert!(duration_ms(s) < 200.0, "{:?} lasted {} ms", s.span.name, duration_ms(s));
    }

    let svc = "service_name=\"pg_client\"";
    assert_eq!(db_histogram_count(&agent, &[svc], 13.0), 13.0, "histogram count = statements:\n{}", agent.metrics());
    assert_eq!(agent.sample_sum("db_client_operation_duration_seconds_count", &[svc, "error_type=\"23505\""]), 1.0);
    assert_eq!(
        agent.sample_sum("db_client_operation_duration_seconds_count", &[svc, "db_collection_name=\"unicorn\""]),
        9.0
    );
    assert_eq!(agent.sample_sum("periscope_parse_errors_total", &[]), 0.0);
}

/// Python psycopg 3 over libpq (SSLRequest answered N, then SCRAM), tracked
/// as a forked child of this (watched) test process. psycopg prepares a
/// statement on its 6th execution under a name of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_psycopg() {
    let fixtures = fixtures();
    let rx = Receiver::start().await;
    let pg = Postgres::start("psycopg");
    let agent = Agent::start(&["--pid", &std::process::id().to_string()], &grpc_env(&rx));
    agent.wait_tracked(std::process::id());
    let mut client = gated(Command::new(python()).arg(fixtures.join("psycopg_client.py")).arg(pg.port.to_string()));
    agent.wait_tracked(client.pid());
    release(&mut client);
    assert_eq!(finish(&mut client).trim(), "42P01");

    let spans = wait_sql(&rx, &agent, CLIENT, Some(client.pid()), 13).await;
    assert_eq!(summary(&spans), psycopg_script_spans());
    check_common(&spans, "postgresql", pg.port);
    assert_no_literals(&spans, &["psy"]);
    assert_eq!(
        db_histogram_count(&agent, &["db_system_name=\"postgresql\""], 13.0),
        13.0,
        "histogram count = statements:\n{}",
        agent.metrics()
    );
    assert_eq!(agent.sample_sum("periscope_parse_errors_total", &[]), 0.0);
}

/// Runs as the tokio-postgres client when re-executed with
/// PERISCOPE_TEST_TOKIO_PG (a libpq-style conninfo); an ordinary (empty) test
/// otherwise.
#[test]
fn tokio_postgres_client_entry() {
    let Ok(conninfo) = std::env::var("PERISCOPE_TEST_TOKIO_PG") else { return };
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.unwrap();
        let conn = tokio::spawn(conn);
        // A named prepared statement (Parse once), executed 4 times.
        let stmt = client.prepare("SELECT name FROM unicorn WHERE id = $1").await.unwrap();
        for id in 1..=4i32 {
            client.query(&stmt, &[&id]).await.unwrap();
        }
        // Pipelined: three queries in flight on one connection. Prepared
        // first, so that each is one Bind/Execute/Sync: on this
        // current-thread runtime the join queues all three before the
        // connection task writes, so all are sent before the first answer
        // is read (a query by text would prepare first, and its Execute
        // would wait for that answer, overlapping or not by chance).
        let count = client.prepare("SELECT count(*) FROM unicorn").await.unwrap();
        let insert = client.prepare("INSERT INTO unicorn (name) VALUES ($1)").await.unwrap();
        let select = client.prepare("SELECT id FROM unicorn WHERE name = $1").await.unwrap();
        let (a, b, c) = tokio::join!(
            client.query(&count, &[]),
            client.query(&insert, &[&"tokio"]),
            client.query(&select, &[&"tokio"]),
        );
        a.unwrap();
        b.unwrap();
        c.unwrap();
        // Simple protocol, two statements in one Query.
        client
            .batch_execute("UPDATE unicorn SET name = 'tokyo' WHERE name = 'tokio'; DELETE FROM unicorn WHERE id > 100")
            .await
            .unwrap();
        drop(client);
        conn.await.unwrap().unwrap();
    });
    println!("done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_tokio_postgres_prepared_and_pipelined() {
    let rx = Receiver::start().await;
    let pg = Postgres::start("tokio");
    let agent = Agent::start(&["--pid", &std::process::id().to_string()], &grpc_env(&rx));
    agent.wait_tracked(std::process::id());
    let mut client = gated(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tokio_postgres_client_entry", "--nocapture", "--test-threads=1"])
            .env("PERISCOPE_TEST_TOKIO_PG", pg.conninfo()),
    );
    agent.wait_tracked(client.pid());
    release(&mut client);
    assert!(finish(&mut client).contains("done"));

    let spans = wait_sql(&rx, &agent, CLIENT, Some(client.pid()), 9).await;
    let by_id = ("SELECT unicorn", "SELECT name FROM unicorn WHERE id = $1", "");
    let mut got = summary(&spans);
    // The pipelined three may complete in any order relative to each other:
    // compare them as a set.
    let mut pipelined = got.drain(4..7).collect::<Vec<_>>();
    pipelined.sort();
    let mut want_pipelined = expect(&[
        ("SELECT unicorn", "SELECT count(*) FROM unicorn", ""),
        ("INSERT unicorn", "INSERT INTO unicorn (name) VALUES ($1)", ""),
        ("SELECT unicorn", "SELECT id FROM unicorn WHERE name = $1", ""),
    ]);
    want_pipelined.sort();
    assert_eq!(pipelined, want_pipelined);
    assert_eq!(
        got,
        expect(&[
            by_id,
            by_id,
            by_id,
            by_id,
            ("UPDATE unicorn", "UPDATE unicorn SET name = ? WHERE name = ?", ""),
            ("DELETE unicorn", "DELETE FROM unicorn WHERE id > ?", ""),
        ])
    );
    check_common(&spans, "postgresql", pg.port);
    // The pipelined queries were all sent before the first answer: they
    // overlap in time.
    let p = &spans[4..7];
    let last_start = p.iter().map(|s| s.span.start_time_unix_nano).max().unwrap();
    let first_end = p.iter().map(|s| s.span.end_time_unix_nano).min().unwrap();
    assert!(last_start < first_end, "pipelined spans overlap");
    assert_eq!(db_histogram_count(&agent, &["db_system_name=\"postgresql\""], 9.0), 9.0, "{}", agent.metrics());
}

/// psql: `-c` with several statements in one simple Query, and `-f` with
/// one Query per statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_command_and_file() {
    let rx = Receiver::start().await;
    let pg = Postgres::start("psql");
    let dir = tmpdir("psql");
    let file = dir.join("script.sql");
    std::fs::write(
        &file,
        "SELECT name FROM horse ORDER BY name;\n\
         UPDATE horse SET name = 'zed' WHERE id = 7;\n\
         INSERT INTO horse VALUES (1, 'again');\n\
         DELETE FROM horse WHERE id = 1;\n\
         SELECT pg_sleep(0.2);\n",
    )
    .unwrap();
    let agent = Agent::start(&["--pid", &std::process::id().to_string()], &grpc_env(&rx));
    agent.wait_tracked(std::process::id());
    let psql = format!("{PG_BIN}/psql");
    let port = pg.port.to_string();
    let conn = ["-X", "-q", "-h", "127.0.0.1", "-p", &port, "-U", USER, "-d", DATABASE];
    let env = [("PGPASSWORD", PASSWORD)];
    let multi = "CREATE TABLE horse (id int PRIMARY KEY, name text); \
                 INSERT INTO horse VALUES (1, 'a'), (2, 'b'); SELECT name FROM horse WHERE id > 1";
    let mut first = gated_exec(&psql, &[&conn[..], &["-c", multi]].concat(), &env);
    agent.wait_tracked(first.pid());
    release(&mut first);
    finish(&mut first);
    let file_arg = file.to_str().unwrap();
    let mut second = gated_exec(&psql, &[&conn[..], &["-f", file_arg]].concat(), &env);
    agent.wait_tracked(second.pid());
    release(&mut second);
    finish(&mut second);

    let spans = wait_sql(&rx, &agent, CLIENT, Some(first.pid()), 3).await;
    assert_eq!(
        summary(&spans),
        expect(&[
            ("CREATE horse", "CREATE TABLE horse (id int PRIMARY KEY, name text)", ""),
            ("INSERT horse", "INSERT INTO horse VALUES (?, ?), (?, ?)", ""),
            ("SELECT horse", "SELECT name FROM horse WHERE id > ?", ""),
        ])
    );
    check_common(&spans, "postgresql", pg.port);
    // One Query message: every statement starts with it, and they end one
    // after the other.
    assert!(spans.iter().all(|s| s.span.start_time_unix_nano == spans[0].span.start_time_unix_nano));
    assert!(spans.windows(2).all(|w| w[0].span.end_time_unix_nano <= w[1].span.end_time_unix_nano));

    let spans = wait_sql(&rx, &agent, CLIENT, Some(second.pid()), 5).await;
    assert_eq!(
        summary(&spans),
        expect(&[
            ("SELECT horse", "SELECT name FROM horse ORDER BY name", ""),
            ("UPDATE horse", "UPDATE horse SET name = ? WHERE id = ?", ""),
            ("INSERT horse", "INSERT INTO horse VALUES (?, ?)", "23505"),
            ("DELETE horse", "DELETE FROM horse WHERE id = ?", ""),
            ("SELECT", "SELECT pg_sleep(?)", ""),
        ])
    );
    check_common(&spans, "postgresql", pg.port);
    assert!(duration_ms(&spans[4]) >= 200.0, "pg_sleep(0.2) lasted {} ms", duration_ms(&spans[4]));
    assert_no_literals(&spans, &["zed", "again"]);
    assert_eq!(db_histogram_count(&agent, &["db_system_name=\"postgresql\""], 8.0), 8.0, "{}", agent.metrics());
    let _ = std::fs::remove_dir_all(dir);
}

/// The tracked process is the PostgreSQL server (`--open-port`): the
/// postmaster forks a backend per connection, the kernel follows the fork,
/// and the backend's side of the protocol makes SERVER spans. The client is
/// not watched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_server_side_spans() {
    let fixtures = fixtures();
    let rx = Receiver::start().await;
    let pg = Postgres::start("server");
    let agent = Agent::start(&["--open-port", &pg.port.to_string()], &grpc_env(&rx));
    agent.wait_tracked(pg.pid());
    let mut client = gated(Command::new(python()).arg(fixtures.join("psycopg_client.py")).arg(pg.port.to_string()));
    release(&mut client);
    assert_eq!(finish(&mut client).trim(), "42P01");

    let spans = wait_sql(&rx, &agent, SERVER, None, 13).await;
    assert_eq!(summary(&spans), psycopg_script_spans());
    // The backend is a child of the postmaster, not the postmaster itself.
    let backend = pid_of(&spans[0]).unwrap();
    assert_ne!(backend, pg.pid());
    for s in &spans {
        assert_eq!(pid_of(s), Some(backend), "one connection, one backend");
        assert_eq!(s.service_name(), Some("postgres"));
        assert_eq!(s.attr_str("client.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(s.attr_str("db.namespace").as_deref(), Some(DATABASE));
        assert_eq!(s.attr_int("server.port"), Some(pg.port as i64));
    }
    assert!(sql_spans(&rx, CLIENT, None).is_empty(), "the server makes no client spans");
    assert_eq!(agent.sample_sum("db_client_operation_duration_seconds_count", &[]), 0.0);
}

/// Reads the first line a client prints (it is waiting on stdin then).
fn first_line(p: &mut Proc) -> String {
    let mut line = String::new();
    BufReader::new(p.0.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    line.trim().to_owned()
}

/// A TCP connection to `port` on 127.0.0.1 from `local_port` (SO_REUSEADDR:
/// one client port towards two servers, as Linux may choose on its own).
fn connect_from(local_port: u16, port: u16) -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    let sin = |port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a new fd, with valid pointers and lengths.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let one: libc::c_int = 1;
        let one_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        assert_eq!(libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&raw const one).cast(), one_len), 0);
        let local = sin(local_port);
        assert_eq!(libc::bind(fd, (&raw const local).cast(), len), 0, "bind: {}", std::io::Error::last_os_error());
        let remote = sin(port);
        assert_eq!(
            libc::connect(fd, (&raw const remote).cast(), len),
            0,
            "connect: {}",
            std::io::Error::last_os_error()
        );
        std::net::TcpStream::from_raw_fd(fd)
    }
}

/// Sends a StartupMessage and waits for the server's first answer (it asks
/// for a password): by then the backend has titled itself.
fn start_session(conn: &mut std::net::TcpStream) {
    use std::io::Read;
    let params = format!("user\0{USER}\0database\0{DATABASE}\0\0");
    let mut startup = ((8 + params.len()) as u32).to_be_bytes().to_vec();
    startup.extend(0x0003_0000u32.to_be_bytes());
    startup.extend(params.as_bytes());
    conn.write_all(&startup).unwrap();
    let mut auth = [0u8; 1];
    conn.read_exact(&mut auth).unwrap();
    assert_eq!(&auth, b"R", "the server asks for a password: the backend has started");
}

/// The backends of real PostgreSQL 15 servers name their clients in their
/// process titles, and discovery finds them by the client's end (no agent,
/// no kernel programs; the servers need root to start): raw connections
/// send their StartupMessage and stay in authentication, where the backend
/// has titled itself already. Default settings, then a cluster name with a
/// space and `update_process_title = off` over IPv6 when the host has it;
/// then one client port towards both servers, told apart by server port.
#[test]
fn postgres_backend_titles_name_their_clients() {
    use periscope::discovery::{pg_backends::BackendQuery, Scanner};

    let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let listen = if ipv6 { "listen_addresses=127.0.0.1,::1" } else { "listen_addresses=127.0.0.1" };
    let plain = Postgres::start("titles");
    let quiet = Postgres::start_with("titles-quiet", &["cluster_name=lab main", "update_process_title=off", listen]);
    let netns = std::fs::read_link("/proc/self/ns/net").unwrap();
    let netns: u64 = netns.to_str().unwrap().trim_start_matches("net:[").trim_end_matches(']').parse().unwrap();
    let mut scanner = Scanner::new();
    let directory = scanner.backend_directory();
    let mut find = |conn: &std::net::TcpStream| {
        let query = BackendQuery {
            client: conn.local_addr().unwrap(),
            server: conn.peer_addr().unwrap(),
            netns,
            backend_pid: None,
        };
        let found = wait_for("the backend to be indexed", Duration::from_secs(5), || {
            scanner.refresh_backends();
            directory.current().find(&query).cloned()
        });
        // The backend found by its own pid too (the server's side).
        let own = BackendQuery { client: "127.0.0.1:1".parse().unwrap(), backend_pid: Some(found.pid), ..query };
        assert_eq!(directory.current().find(&own).map(|b| b.pid), Some(found.pid));
        found
    };
    for (pg, host) in [(&plain, "127.0.0.1"), (&quiet, if ipv6 { "::1" } else { "127.0.0.1" })] {
        let mut conn = std::net::TcpStream::connect((host, pg.port)).unwrap();
        start_session(&mut conn);
        let found = find(&conn);
        assert_eq!((found.user.as_str(), found.database.as_str()), (USER, DATABASE), "{host}");
        assert_eq!(found.netns, Some(netns));
        assert_eq!((found.server_pid, &found.server_ports[..]), (pg.pid(), &[pg.port][..]), "its server, its port");
        let title =
            String::from_utf8_lossy(&std::fs::read(format!("/proc/{}/cmdline", found.pid)).unwrap()).into_owned();
        let client_port = conn.local_addr().unwrap().port();
        assert!(title.contains(&format!(" {USER} {DATABASE} {host}({client_port})")), "{title:?}");
    }
    let port = free_port();
    let (mut a, mut b) = (connect_from(port, plain.port), connect_from(port, quiet.port));
    start_session(&mut a);
    start_session(&mut b);
    assert_eq!(find(&a).server_pid, plain.pid());
    assert_eq!(find(&b).server_pid, quiet.pid());
}

/// Connections older than periscope (issue 10): the clients connect and log
/// in, then periscope starts and adopts them (`--pid`) after their startup
/// messages, the only place their database travels. node-postgres (a Client
/// and a Pool of two) against a server with default settings, psycopg over
/// IPv6 (when the host has it) against one whose titles carry a cluster name
/// with a space and are never updated (`update_process_title = off`), and
/// the Client's backend itself, adopted the same way (SERVER spans). Every
/// SQL span carries db.namespace (and db.name with database/dup), found from
/// the backends' process titles, and nothing waited: the index built by the
/// scan that adopted the processes knew every backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_adopted_after_their_startup_know_their_database() {
    let fixtures = fixtures();
    let rx = Receiver::start().await;
    let pg = Postgres::start("adopted");
    let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let listen = if ipv6 { "listen_addresses=127.0.0.1,::1" } else { "listen_addresses=127.0.0.1" };
    let quiet = Postgres::start_with("adopted-quiet", &["cluster_name=lab main", "update_process_title=off", listen]);

    let mut node = gated(Command::new("node").arg(fixtures.join("pg_adopted_client.js")).arg(pg.port.to_string()));
    let backend: u32 =
        first_line(&mut node).strip_prefix("connected ").and_then(|p| p.parse().ok()).expect("backend pid");
    let host = if ipv6 { "::1" } else { "127.0.0.1" };
    let mut py = gated(Command::new(python()).arg(fixtures.join("psycopg_client.py")).args([
        &quiet.port.to_string(),
        host,
        "connect-first",
    ]));
    assert_eq!(first_line(&mut py), "connected");
    let title = std::fs::read(format!("/proc/{backend}/cmdline")).unwrap();
    assert!(title.starts_with(b"postgres: app shop 127.0.0.1("), "{:?}", String::from_utf8_lossy(&title));

    let mut env = grpc_env(&rx);
    env.push(("OTEL_SEMCONV_STABILITY_OPT_IN", "database/dup".into()));
    let pids = format!("{},{},{backend}", node.pid(), py.pid());
    let agent = Agent::start(&["--pid", &pids], &env);
    for pid in [node.pid(), py.pid(), backend] {
        agent.wait_tracked(pid);
    }
    release(&mut node);
    release(&mut py);
    assert_eq!(finish(&mut node).trim(), "done");
    assert_eq!(finish(&mut py).trim(), "42P01");

    let spans = wait_sql(&rx, &agent, CLIENT, Some(node.pid()), 5).await;
    assert_eq!(
        summary(&spans),
        expect(&[
            ("SELECT unicorn", "SELECT count(*) FROM unicorn", ""),
            ("SELECT unicorn", "SELECT name FROM unicorn WHERE id = $1", ""),
            ("SELECT unicorn", "SELECT id FROM unicorn WHERE name = $1", ""),
            ("INSERT unicorn", "INSERT INTO unicorn (name) VALUES ($1)", ""),
            ("SELECT unicorn", "SELECT name FROM unicorn WHERE name = $1", ""),
        ])
    );
    check_common(&spans, "postgresql", pg.port);
    let py_spans = wait_sql(&rx, &agent, CLIENT, Some(py.pid()), 13).await;
    assert_eq!(summary(&py_spans), psycopg_script_spans());
    let server_spans = wait_sql(&rx, &agent, SERVER, Some(backend), 3).await;
    assert_eq!(summary(&server_spans), summary(&spans[..3]), "the Client's statements, seen by its backend");
    for s in spans.iter().chain(&py_spans).chain(&server_spans) {
        let ctx = format!("span {:?} of pid {:?}", s.span.name, pid_of(s));
        assert_eq!(s.attr_str("db.namespace").as_deref(), Some(DATABASE), "{ctx}");
        assert_eq!(s.attr_str("db.name").as_deref(), Some(DATABASE), "{ctx}: database/dup");
    }
    for s in &py_spans {
        assert_eq!(s.attr_str("server.address").as_deref(), Some(host));
    }
    let lookups =
        |reason: &str| agent.sample_sum("periscope_db_namespace_lookups_total", &[&format!("reason=\"{reason}\"")]);
    assert_eq!(lookups("index"), 5.0, "three node connections, psycopg's, the backend's:\n{}", agent.metrics());
    assert_eq!(agent.sample_sum("periscope_db_namespace_lookups_total", &[]), 5.0);
    assert_eq!(agent.sample_sum("periscope_db_namespace_unknown_total", &[]), 0.0);
}

// ---------------------------------------------------------------------------
// MariaDB clients
// ---------------------------------------------------------------------------

/// The `mariadb` CLI (COM_QUERY, one per statement) and node mysql2 (`query`
/// = COM_QUERY, `execute` = COM_STMT_PREPARE once + COM_STMT_EXECUTE), both
/// forked children of this watched test process, logging in as app/secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_cli_and_node_mysql2() {
    let fixtures = fixtures();
    let rx = Receiver::start().await;
    let db = MariaDb::start("clients");
    let agent = Agent::start(&["--pid", &std::process::id().to_string()], &grpc_env(&rx));
    agent.wait_tracked(std::process::id());

    let port = db.port.to_string();
    // Read from stdin after the gate line, one statement per line; --force
    // goes on after errors.
    let script = "INSERT INTO unicorn (name) VALUES ('bob');\n\
                  SELECT * FROM unicorn WHERE name = 'bob';\n\
                  INSERT INTO unicorn (name) VALUES ('bob');\n\
                  SELEC 1;\n\
                  SELECT * FROM dragon;\n\
                  SELECT SLEEP(0.2);\n";
    let args =
        ["--no-defaults", "--protocol=tcp", "-h", "127.0.0.1", "-P", &port, "-u", USER, "-D", DATABASE, "--force"];
    let mut cli = gated_exec("mariadb", &args, &[("MYSQL_PWD", PASSWORD)]);
    agent.wait_tracked(cli.pid());
    release_with(&mut cli, script);
    let out = finish(&mut cli);
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("ERROR")).map(|l| &l[..18]).collect();
    assert_eq!(errors, ["ERROR 1062 (23000)", "ERROR 1064 (42000)", "ERROR 1146 (42S02)"], "{out}");

    let spans = wait_sql(&rx, &agent, CLIENT, Some(cli.pid()), 6).await;
    assert_eq!(
        summary(&spans),
        expect(&[
            ("INSERT unicorn", "INSERT INTO unicorn (name) VALUES (?)", ""),
            ("SELECT unicorn", "SELECT * FROM unicorn WHERE name = ?", ""),
            ("INSERT unicorn", "INSERT INTO unicorn (name) VALUES (?)", "23000"),
            ("SQL", "SELEC ?", "42000"),
            ("SELECT dragon", "SELECT * FROM dragon", "42S02"),
            ("SELECT", "SELECT SLEEP(?)", ""),
        ])
    );
    check_common(&spans, "mysql", db.port);
    assert_no_literals(&spans, &["bob", "0.2"]);
    assert!((200.0..2000.0).contains(&duration_ms(&spans[5])), "SLEEP(0.2) lasted {} ms", duration_ms(&spans[5]));

    let mut node = gated(Command::new("node").arg(fixtures.join("mysql_client.js")).arg(&port));
    agent.wait_tracked(node.pid());
    release(&mut node);
    // errno/SQLSTATE as the client saw them.
    assert_eq!(finish(&mut node).trim(), "1062/23000 1064/42000 1146/42S02");
    let by_name = ("SELECT unicorn", "SELECT id, name FROM unicorn WHERE name = ?", "");
    let spans = wait_sql(&rx, &agent, CLIENT, Some(node.pid()), 13).await;
    let long = long_statement(&spans, 6, "SELECT name FROM unicorn WHERE name IN (?, ?, ?, ?");
    let seq = ("SELECT seq_1_to_3000", "SELECT seq, REPEAT(?, ?) AS pad FROM seq_1_to_3000", "");
    assert_eq!(
        summary(&spans),
        expect(&[
            ("INSERT unicorn", "INSERT INTO unicorn (name) VALUES (?)", ""),
            ("SELECT unicorn", "SELECT * FROM unicorn WHERE name = ?", ""),
            by_name,
            by_name,
            by_name,
            ("INSERT unicorn", "INSERT INTO unicorn (name) VALUES (?)", ""),
            ("SELECT unicorn", &long, ""),
            seq,
            seq,
            ("INSERT unicorn", "INSERT INTO unicorn (name) VALUES (?)", "23000"),
            ("SQL", "SELEC ?", "42000"),
            ("SELECT dragon", "SELECT * FROM dragon", "42S02"),
            ("SELECT", "SELECT SLEEP(?)", ""),
        ])
    );
    check_common(&spans, "mysql", db.port);
    assert_no_literals(&spans, &["dave", "bob", "alice", "carol"]);
    assert!(duration_ms(&spans[12]) >= 200.0, "SLEEP(0.2) lasted {} ms", duration_ms(&spans[12]));
    // The end of 3000 rows lies past the capture: rows, when known, are right.
    assert!(spans[7].attr_int("db.response.returned_rows").is_none_or(|r| r == 3000), "text protocol rows");
    assert!(spans[8].attr_int("db.response.returned_rows").is_none_or(|r| r == 3000), "binary protocol rows");
    assert_eq!(spans[1].attr_int("db.response.returned_rows"), Some(1));

    let mysql = "db_system_name=\"mysql\"";
    assert_eq!(db_histogram_count(&agent, &[mysql], 19.0), 19.0, "{}", agent.metrics());
    assert_eq!(agent.sample_sum("db_client_operation_duration_seconds_count", &[mysql, "error_type=\"23000\""]), 2.0);
    assert_eq!(agent.sample_sum("periscope_parse_errors_total", &[]), 0.0);
}

// ---------------------------------------------------------------------------
// Detection by content, not port
// ---------------------------------------------------------------------------

/// A port the database protocols are known for when it is free, else any.
fn port_like(preferred: u16) -> u16 {
    if std::net::TcpListener::bind(("127.0.0.1", preferred)).is_ok() {
        preferred
    } else {
        free_port()
    }
}

const SINK_SERVER: &str = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
while True:
    c, _ = s.accept()
    while c.recv(4096): pass
    c.close()
"#;

const NOISE_CLIENT: &str = r#"
import random, socket, sys, time
sys.stdin.readline()
rnd = random.Random(1234)
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
for _ in range(8):
    c.sendall(bytes(rnd.getrandbits(8) for _ in range(300)))
    time.sleep(0.05)
c.close()
print("sent")
"#;

/// HTTP to a server on PostgreSQL's port is HTTP, and random bytes to a
/// server on MySQL's port are nothing: no SQL spans, no crash, counted as an
/// unknown protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detection_is_by_content_not_port() {
    let rx = Receiver::start().await;
    let dir = tmpdir("www");
    std::fs::write(dir.join("a.txt"), "not a database\n").unwrap();
    let http_port = port_like(5432);
    let _http = Proc(
        Command::new(python())
            .args(["-m", "http.server", &http_port.to_string(), "--bind", "127.0.0.1"])
            .current_dir(&dir)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let sink_port = port_like(3306);
    let sink = Proc(Command::new(python()).args(["-c", SINK_SERVER, &sink_port.to_string()]).spawn().unwrap());
    wait_listening(http_port);
    wait_listening(sink_port);
    let ports = format!("{http_port},{sink_port}");
    let agent = Agent::start(&["--open-port", &ports], &grpc_env(&rx));
    agent.wait_tracked(_http.pid());
    agent.wait_tracked(sink.pid());
    let baseline = agent.sample_sum("periscope_unknown_protocol_connections_total", &[]);

    for path in ["/a.txt", "/a.txt", "/missing"] {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{http_port}{path}")])
            .output()
            .unwrap();
        assert!(!String::from_utf8_lossy(&out.stdout).is_empty());
    }
    let mut noise = gated(Command::new(python()).args(["-c", NOISE_CLIENT, &sink_port.to_string()]));
    release(&mut noise);
    assert_eq!(finish(&mut noise).trim(), "sent");

    let spans = rx.wait_for_spans(3, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = if rx.spans().len() > spans.len() { rx.spans() } else { spans };
    let mut http: Vec<(String, i64)> = spans
        .iter()
        .filter(|s| s.span.kind == SERVER)
        .map(|s| (s.span.name.clone(), s.attr_int("http.response.status_code").unwrap_or(0)))
        .collect();
    http.sort();
    assert_eq!(
        http,
        vec![("GET /a.txt".to_string(), 200), ("GET /a.txt".to_string(), 200), ("GET /missing".to_string(), 404)]
    );
    assert_eq!(spans.len(), 3, "only the HTTP spans: {:?}", spans.iter().map(|s| &s.span.name).collect::<Vec<_>>());
    assert!(spans.iter().all(|s| !is_sql(s)));
    assert!(spans.iter().all(|s| s.attr_int("server.port") == Some(http_port as i64)));
    assert_eq!(
        agent.sample_sum("periscope_unknown_protocol_connections_total", &[]) - baseline,
        1.0,
        "the random-bytes connection is an unknown protocol"
    );
    assert_eq!(agent.sample_sum("db_client_operation_duration_seconds_count", &[]), 0.0);
    assert_eq!(support::agent::http_get(agent.metrics_port, "/healthz").as_deref().map(str::trim), Some("ok"));
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------
// Done when: an HTTP service that queries PostgreSQL per request
// ---------------------------------------------------------------------------

/// The Node.js server (fixtures/sql/app_server.js, node `pg` + `http`, no
/// instrumentation) found by its HTTP port: its HTTP SERVER spans and the
/// SQL CLIENT spans each request made, with statements, statuses, durations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_http_service_querying_postgres() {
    let fixtures = fixtures();
    let rx = Receiver::start().await;
    let pg = Postgres::start("app");
    // A relation whose SELECT takes 200 ms.
    pg.admin(
        DATABASE,
        &format!("CREATE VIEW slow_unicorn AS SELECT name FROM unicorn, pg_sleep(0.2); ALTER VIEW slow_unicorn OWNER TO {USER}"),
    );
    let http_port = free_port();
    let mut server = Proc(
        Command::new("node")
            .arg(fixtures.join("app_server.js"))
            .args([http_port.to_string(), pg.port.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    let agent = Agent::start(&["--open-port", &http_port.to_string()], &grpc_env(&rx));
    agent.wait_tracked(server.pid());

    let curl = |method: &str, path: &str, body: Option<&str>| -> String {
        let url = format!("http://127.0.0.1:{http_port}{path}");
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, &url]);
        if let Some(b) = body {
            cmd.args(["--data-binary", b]);
        }
        String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
    };
    assert_eq!(curl("POST", "/unicorn", Some("bob")), "201");
    assert_eq!(curl("POST", "/unicorn", Some("bob")), "409");
    assert_eq!(curl("GET", "/unicorn", None), "200");
    assert_eq!(curl("GET", "/dragon", None), "500");
    assert_eq!(curl("GET", "/slow_unicorn", None), "200");

    let sql = wait_sql(&rx, &agent, CLIENT, Some(server.pid()), 5).await;
    assert_eq!(
        summary(&sql),
        expect(&[
            ("INSERT unicorn", "INSERT INTO unicorn (name) VALUES ($1)", ""),
            ("INSERT unicorn", "INSERT INTO unicorn (name) VALUES ($1)", "23505"),
            ("SELECT unicorn", "SELECT name FROM unicorn", ""),
            ("SELECT dragon", "SELECT name FROM dragon", "42P01"),
            ("SELECT slow_unicorn", "SELECT name FROM slow_unicorn", ""),
        ])
    );
    check_common(&sql, "postgresql", pg.port);
    assert_eq!(sql[2].attr_int("db.response.returned_rows"), Some(1));

    let mut http: Vec<ReceivedSpan> =
        rx.spans().into_iter().filter(|s| s.span.kind == SERVER && pid_of(s) == Some(server.pid())).collect();
    http.sort_by_key(|s| s.span.start_time_unix_nano);
    let got: Vec<(String, i64)> =
        http.iter().map(|s| (s.span.name.clone(), s.attr_int("http.response.status_code").unwrap_or(0))).collect();
    let want: Vec<(String, i64)> = [
        ("POST /unicorn", 201),
        ("POST /unicorn", 409),
        ("GET /unicorn", 200),
        ("GET /dragon", 500),
        ("GET /slow_unicorn", 200),
    ]
    .iter()
    .map(|(n, c)| (n.to_string(), *c))
    .collect();
    assert_eq!(got, want);
    // Each statement ran inside the request that caused it.
    for (h, q) in http.iter().zip(&sql) {
        assert!(
            h.span.start_time_unix_nano <= q.span.start_time_unix_nano
                && q.span.end_time_unix_nano <= h.span.end_time_unix_nano,
            "{} within {}",
            q.span.name,
            h.span.name
        );
    }
    assert!(duration_ms(&sql[4]) >= 200.0, "slow SELECT lasted {} ms", duration_ms(&sql[4]));
    assert!(duration_ms(&http[4]) >= duration_ms(&sql[4]));
    assert_eq!(http[3].span.status.as_ref().map(|s| s.code), Some(STATUS_ERROR), "500 is an error");
    assert_eq!(db_histogram_count(&agent, &["db_system_name=\"postgresql\""], 5.0), 5.0, "{}", agent.metrics());
    assert_eq!(agent.sample_sum("http_server_request_duration_seconds_count", &[]), 5.0);
}

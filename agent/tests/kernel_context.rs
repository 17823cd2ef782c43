//! One connected trace per request, against the real kernel (issue 5):
//! a tracked caller (Node) -> a tracked frontend (Node event loop, or a
//! Python thread-per-request server) that runs a PostgreSQL query and calls
//! a tracked backend (Node) for every request, under 1, 10 and 50 concurrent
//! requests. No process is instrumented and nothing is written into their
//! traffic; the request id travels in the URL path and the SQL literal (the
//! test opts in to literals), which is the ground truth the test checks every
//! parent against, span by span.
//! Needs root and `cargo xtask deps` (PostgreSQL, node `pg`, psycopg).
mod support;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use support::agent::{free_port, wait_for, wait_listening, Agent, Proc};
use support::db::Postgres;
use support::otlp_receiver::{ReceivedSpan, Receiver, Val};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

fn fixtures() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sql");
    assert!(dir.join("node_modules/pg").exists(), "{}/node_modules is missing: run `cargo xtask deps`", dir.display());
    dir
}

fn python() -> String {
    let out = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn spawn(cmd: &mut Command, service: &str) -> Proc {
    let mut child = Proc(
        cmd.env("OTEL_SERVICE_NAME", service)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {service}: {e}")),
    );
    if service != "caller" {
        // Servers say "listening" (a re-executed test binary prints libtest's
        // own lines first).
        let mut out = BufReader::new(child.0.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "{service} did not start");
            if line.trim() == "listening" {
                break;
            }
        }
        // Keep draining its stdout so that it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    }
    child
}

/// utime + stime of a process, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields.get(11..13).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
}

fn service(s: &ReceivedSpan) -> String {
    match s.resource.get("service.name") {
        Some(Val::Str(n)) => n.clone(),
        _ => String::new(),
    }
}

/// The request id a span is about: from the path, the URL or the SQL literal.
fn request_id(s: &ReceivedSpan) -> Option<u64> {
    let text = s.attr_str("url.path").or_else(|| s.attr_str("url.full")).or_else(|| s.attr_str("db.query.text"))?;
    let digits = |t: &str| t.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok();
    if let Some(i) = text.rfind("/work/") {
        return digits(&text[i + 6..]);
    }
    if let Some(i) = text.rfind("/backend/") {
        return digits(&text[i + 9..]);
    }
    text.find("id <> ").and_then(|i| digits(&text[i + 6..]))
}

/// Per request id, the five spans of one request.
#[derive(Default, Debug)]
struct Request<'a> {
    caller: Option<&'a ReceivedSpan>,
    front: Option<&'a ReceivedSpan>,
    sql: Option<&'a ReceivedSpan>,
    call: Option<&'a ReceivedSpan>,
    back: Option<&'a ReceivedSpan>,
}

/// Share of right parents, per relation.
#[derive(Default, Debug)]
struct Score {
    total: usize,
    cross_caller: usize,
    sql: usize,
    call: usize,
    cross_backend: usize,
}

fn is_child(child: Option<&ReceivedSpan>, parent: Option<&ReceivedSpan>) -> bool {
    match (child, parent) {
        (Some(c), Some(p)) => c.span.parent_span_id == p.span.span_id && c.span.trace_id == p.span.trace_id,
        _ => false,
    }
}

/// `with_sql`: the frontend runs a query per request (all but the Rust one).
fn score(spans: &[ReceivedSpan], frontend: &str, with_sql: bool) -> (Score, Vec<String>) {
    let mut by_id: HashMap<u64, Request<'_>> = HashMap::new();
    for s in spans {
        let Some(id) = request_id(s) else { continue };
        let r = by_id.entry(id).or_default();
        let slot = match (service(s).as_str(), s.span.kind) {
            ("caller", CLIENT) => &mut r.caller,
            (f, SERVER) if f == frontend => &mut r.front,
            (f, CLIENT) if f == frontend && s.attr_str("db.system.name").is_some() => &mut r.sql,
            (f, CLIENT) if f == frontend => &mut r.call,
            ("backend", SERVER) => &mut r.back,
            _ => continue,
        };
        assert!(slot.is_none(), "two spans for one slot of request {id}: {:?}", s.span.name);
        *slot = Some(s);
    }
    let mut sc = Score::default();
    let mut wrong = Vec::new();
    // Which request a span id belongs to, to say where a wrong parent points.
    let owner: HashMap<Vec<u8>, (u64, String)> = spans
        .iter()
        .filter_map(|s| Some((s.span.span_id.clone(), (request_id(s)?, format!("{} {}", service(s), s.span.kind)))))
        .collect();
    for (id, r) in &by_id {
        sc.total += 1;
        let checks = [
            ("frontend <- caller", r.front, is_child(r.front, r.caller), &mut sc.cross_caller),
            ("sql <- frontend", r.sql, !with_sql || is_child(r.sql, r.front), &mut sc.sql),
            ("call <- frontend", r.call, is_child(r.call, r.front), &mut sc.call),
            ("backend <- call", r.back, is_child(r.back, r.call), &mut sc.cross_backend),
        ];
        for (what, child, ok, n) in checks {
            if ok {
                *n += 1;
            } else {
                let got = child.and_then(|c| owner.get(&c.span.parent_span_id));
                let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
                let ids = child.map(|c| (hex(&c.span.span_id), hex(&c.span.parent_span_id)));
                wrong.push(format!("request {id}: {what}: parent is {got:?} (span, parent: {ids:?})"));
            }
        }
    }
    (sc, wrong)
}

enum Frontend {
    Node(&'static str),
    Python,
    /// This test binary re-executed as a server with a fixed pool of 4
    /// worker threads (no SQL: a backend call per request).
    RustPool,
    /// gunicorn, 3 pre-forked sync worker processes recycled every 15 requests.
    Gunicorn,
    /// Node (pg pool of this mode) connecting by host name: PostgreSQL and a
    /// fresh connection to the backend per call, each after a dns.lookup.
    NodeByName(&'static str),
    /// Node (pg pool of 50) whose handler defers the query and the backend
    /// call by this (`timeout`: a 2 ms setTimeout; `immediate`: setImmediate).
    NodeDeferred(&'static str),
    /// aiohttp server + asyncpg pool + aiohttp client on asyncio's default loop.
    Asyncio,
    /// FastAPI under uvicorn (this loop: asyncio or uvloop) + asyncpg pool + httpx client.
    FastApi(&'static str),
    /// Go net/http + database/sql (lib/pq pool) + http.Client
    /// (fixtures/go/ctx_frontend.go), built with `-s -w` when `stripped`;
    /// `hooks`: the agent's Go runtime hooks on (PERISCOPE_GO_RUNTIME).
    Go {
        stripped: bool,
        hooks: bool,
    },
}

/// Builds fixtures/go/ctx_frontend.go once per test process with Debian's
/// golang-go and golang-github-lib-pq-dev (GOPATH mode, offline): the path of
/// the normal and of the stripped (`-ldflags='-s -w'`) executable.
fn go_frontend(stripped: bool) -> PathBuf {
    static BUILT: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    let (normal, small) = BUILT.get_or_init(|| {
        (
            support::go::build("ctx_frontend", "ctx_frontend", &[]),
            support::go::build("ctx_frontend", "ctx_frontend_stripped", &["-ldflags=-s -w"]),
        )
    });
    if stripped {
        small.clone()
    } else {
        normal.clone()
    }
}

/// Runs `total` requests at `concurrency` through caller -> frontend -> (pg, backend).
async fn run(frontend: Frontend, concurrency: usize, total: usize) -> (Score, Vec<String>) {
    let fx = fixtures();
    let rx = Receiver::start().await;
    let pg = Postgres::start(&format!("ctx{concurrency}"));
    pg.admin("shop", "CREATE TABLE IF NOT EXISTS beasts (id int, name text); ALTER TABLE beasts OWNER TO app");
    let (front_port, back_port) = (free_port(), free_port());
    let _backend = spawn(Command::new("node").arg(fx.join("ctx_backend.js")).arg(back_port.to_string()), "backend");
    let args = [front_port.to_string(), pg.port.to_string(), back_port.to_string()];
    let name = match frontend {
        Frontend::Node(_) | Frontend::NodeByName(_) | Frontend::NodeDeferred(_) => "frontend-node",
        Frontend::Python => "frontend-python",
        Frontend::RustPool => "frontend-rust",
        Frontend::Gunicorn => "frontend-gunicorn",
        Frontend::Asyncio => "frontend-asyncio",
        Frontend::FastApi(_) => "frontend-fastapi",
        Frontend::Go { .. } => "frontend-go",
    };
    let _front = match frontend {
        Frontend::Node(mode) => spawn(Command::new("node").arg(fx.join("ctx_frontend.js")).args(&args).arg(mode), name),
        Frontend::NodeByName(mode) => spawn(
            Command::new("node").arg(fx.join("ctx_frontend.js")).args(&args).arg(mode).env("CTX_BY_NAME", "1"),
            name,
        ),
        Frontend::NodeDeferred(how) => spawn(
            Command::new("node").arg(fx.join("ctx_frontend.js")).args(&args).arg("pool:50").env("CTX_DEFER", how),
            name,
        ),
        Frontend::Python => spawn(Command::new(python()).arg(fx.join("ctx_threaded_frontend.py")).args(&args), name),
        Frontend::Asyncio => spawn(Command::new(python()).arg(fx.join("ctx_asyncio_frontend.py")).args(&args), name),
        Frontend::FastApi(event_loop) => spawn(
            Command::new(python()).arg(fx.join("ctx_fastapi_frontend.py")).args(&args).env("CTX_LOOP", event_loop),
            name,
        ),
        Frontend::RustPool => spawn(
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "rust_pool_server_entry", "--nocapture", "--test-threads=1", "--quiet"])
                .env("PERISCOPE_CTX_RUST_SERVER", format!("{front_port},{back_port}")),
            name,
        ),
        Frontend::Gunicorn => spawn(
            Command::new(python())
                .args(["-m", "gunicorn", "-c", "ctx_gunicorn_conf.py", "ctx_wsgi_frontend:app"])
                .current_dir(&fx)
                .env("CTX_HTTP_PORT", front_port.to_string())
                .env("CTX_PG_PORT", pg.port.to_string())
                .env("CTX_BACKEND_PORT", back_port.to_string()),
            name,
        ),
        Frontend::Go { stripped, .. } => spawn(Command::new(go_frontend(stripped)).args(&args), name),
    };
    wait_listening(front_port);
    let mut caller = spawn(
        Command::new("node").arg(fx.join("ctx_load.js")).args([
            front_port.to_string(),
            total.to_string(),
            concurrency.to_string(),
        ]),
        "caller",
    );
    let env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.grpc_endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
        ("PERISCOPE_DB_QUERY_LITERALS", "true".into()),
    ];
    let ports = format!("{front_port},{back_port}");
    let mut env = env;
    if let Ok(l) = std::env::var("CONTEXT_TEST_LOG") {
        env.push(("PERISCOPE_LOG_LEVEL", l));
    }
    let go_hooks = matches!(frontend, Frontend::Go { hooks: true, .. });
    if matches!(frontend, Frontend::Go { hooks: false, .. }) {
        env.push(("PERISCOPE_GO_RUNTIME", "false".into()));
    }
    let agent = Agent::start(&["--open-port", &ports, "--pid", &caller.pid().to_string()], &env);
    agent.wait_tracked(caller.pid());
    wait_for("the frontend and backend to be watched", Duration::from_secs(20), || {
        let t = agent.targets();
        (t.contains(name) && t.contains("backend")).then_some(())
    });
    if go_hooks {
        wait_for("the Go runtime hooks", Duration::from_secs(20), || {
            agent
                .metrics()
                .lines()
                .any(|l| l.starts_with("periscope_go_runtime_processes_total{") && l.contains("\"instrumented\""))
                .then_some(())
        });
    }
    let cpu_before = cpu_ticks(agent.pid());
    let stdin = caller.0.stdin.as_mut().unwrap();
    stdin.write_all(b"go\n").unwrap();
    stdin.flush().unwrap();
    let status = wait_for("the caller to finish", Duration::from_secs(120), || caller.0.try_wait().ok().flatten());
    let mut out = String::new();
    BufReader::new(caller.0.stdout.take().unwrap()).read_line(&mut out).unwrap();
    assert!(status.success(), "caller failed: {out}");
    assert_eq!(out.trim(), format!("done {total}"), "every request succeeded");
    // Five spans per request: caller, frontend, SQL, call, backend.
    let with_sql = !matches!(frontend, Frontend::RustPool);
    let want = if with_sql { 5 * total } else { 4 * total };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = rx.spans().iter().filter(|s| request_id(s).is_some()).count();
        if n >= want {
            break;
        }
        if std::time::Instant::now() > deadline {
            let mut kinds: HashMap<(String, i32), usize> = HashMap::new();
            for s in rx.spans() {
                *kinds.entry((service(&s), s.span.kind)).or_default() += 1;
            }
            panic!("only {n} of {want} spans arrived: {kinds:?}\n{}", agent.metrics());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = cpu_ticks(agent.pid()) - cpu_before;
    eprintln!("{name} concurrency {concurrency}: agent CPU {} ms for {total} requests", cpu * 10);
    if std::env::var_os("CONTEXT_TEST_BPF_STATS").is_some() {
        // With sysctl kernel.bpf_stats_enabled=1: each program's runs and time.
        let out = Command::new("bpftool").args(["prog", "show"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines().filter(|l| l.contains(" name handle_")) {
            eprintln!("bpf: {line}");
        }
    }
    let spans = rx.spans();
    let counters: Vec<String> = agent
        .metrics()
        .lines()
        .filter(|l| {
            l.starts_with("periscope_context")
                || l.starts_with("periscope_link")
                || l.starts_with("periscope_spans_linked")
                || l.starts_with("periscope_go")
        })
        .map(String::from)
        .collect();
    let (sc, wrong) = score(&spans, name, with_sql);
    if matches!(frontend, Frontend::Gunicorn) {
        // The load outlived the first workers: spans came from processes forked while it ran.
        let pids: std::collections::HashSet<i64> = spans
            .iter()
            .filter(|s| service(s) == name && s.span.kind == SERVER)
            .filter_map(|s| match s.resource.get("process.pid") {
                Some(Val::Int(p)) => Some(*p),
                _ => None,
            })
            .collect();
        // More than 3 x 15 requests: some worker was recycled.
        assert!(pids.len() > 3 || total <= 45, "{} worker pids for {total} requests (3 workers, 15 each)", pids.len());
        eprintln!("{name}: server spans from {} worker processes", pids.len());
    }
    eprintln!("{name} concurrency {concurrency}: {sc:?}\n{counters:#?}");
    assert_eq!(sc.total, total, "requests seen");
    (sc, wrong)
}

fn assert_exact(sc: &Score, wrong: &[String], what: &str) {
    assert!(
        wrong.is_empty(),
        "{what}: {} wrong parents of {} requests: {:#?}",
        wrong.len(),
        sc.total,
        &wrong[..wrong.len().min(20)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn node_event_loop_every_span_has_the_right_parent_at_1_10_50_concurrent() {
    for (concurrency, total) in [(1, 20), (10, 100), (50, 200)] {
        let (sc, wrong) = run(Frontend::Node("pool:50"), concurrency, total).await;
        assert_exact(&sc, &wrong, &format!("node, pool of 50, {concurrency} concurrent"));
    }
}

/// Calls by host name: every connect runs in the callback of a dns.lookup
/// that libuv's thread pool answered, loop iterations after the request's
/// read; the libuv uprobes carry the request across (docs/trace-context.md).
#[tokio::test(flavor = "multi_thread")]
async fn node_calls_by_host_name_every_span_has_the_right_parent_at_1_10_50_concurrent() {
    for (concurrency, total) in [(1, 20), (10, 100), (50, 200)] {
        let (sc, wrong) = run(Frontend::NodeByName("pool:10"), concurrency, total).await;
        assert_exact(&sc, &wrong, &format!("node by host name, pool of 10, {concurrency} concurrent"));
    }
}

/// Calls deferred by a timer: they start in a JavaScript timers phase, which
/// a node uprobe marks, and go to the request that has waited longest on
/// nothing visible (docs/trace-context.md). setImmediate is not followed.
#[tokio::test(flavor = "multi_thread")]
async fn node_calls_after_a_timer_every_span_has_the_right_parent_at_1_10_50_concurrent() {
    for how in ["timeout"] {
        for (concurrency, total) in [(1, 20), (10, 100), (50, 200)] {
            let (sc, wrong) = run(Frontend::NodeDeferred(how), concurrency, total).await;
            assert_exact(&sc, &wrong, &format!("node, calls after {how}, {concurrency} concurrent"));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn python_threads_every_span_has_the_right_parent_at_1_10_50_concurrent() {
    for (concurrency, total) in [(1, 20), (10, 100), (50, 200)] {
        let (sc, wrong) = run(Frontend::Python, concurrency, total).await;
        assert_exact(&sc, &wrong, &format!("python threads, {concurrency} concurrent"));
    }
}

/// asyncio on the default event loop: each request's handler is a Task whose
/// steps run loop iterations after the read that woke them; the asyncio
/// uprobes say which Task works for which request (docs/trace-context.md).
#[tokio::test(flavor = "multi_thread")]
async fn python_asyncio_every_span_has_the_right_parent_at_1_10_50_concurrent() {
    for (concurrency, total) in [(1, 20), (10, 100), (50, 200)] {
        let (sc, wrong) = run(Frontend::Asyncio, concurrency, total).await;
        assert_exact(&sc, &wrong, &format!("python asyncio (aiohttp, asyncpg), {concurrency} concurrent"));
    }
}

/// FastAPI under uvicorn on the asyncio loop and on uvloop, httpx for the call.
#[tokio::test(flavor = "multi_thread")]
async fn fastapi_uvicorn_every_span_has_the_right_parent_at_1_10_50_concurrent() {
    for event_loop in ["asyncio", "uvloop"] {
        for (concurrency, total) in [(1, 20), (10, 100), (50, 200)] {
            let (sc, wrong) = run(Frontend::FastApi(event_loop), concurrency, total).await;
            assert_exact(&sc, &wrong, &format!("fastapi/uvicorn ({event_loop}) + httpx, {concurrency} concurrent"));
        }
    }
}

/// Pre-fork workers (gunicorn sync): found by their listening socket at
/// start, and the ones the master forks later (a worker is recycled every 15
/// requests) tracked from their fork, each with its own name and parents.
#[tokio::test(flavor = "multi_thread")]
async fn gunicorn_prefork_workers_every_span_has_the_right_parent_at_1_10_50_concurrent() {
    for (concurrency, total) in [(1, 20), (10, 100), (50, 200)] {
        let (sc, wrong) = run(Frontend::Gunicorn, concurrency, total).await;
        assert_exact(&sc, &wrong, &format!("gunicorn pre-fork, {concurrency} concurrent"));
    }
}

/// In-process queues: the lab's one shared pg connection (node-pg queues
/// the queries itself) and a pool smaller than the load (pg-pool queues the
/// checkouts). A queued query is written in the callback that read the
/// previous answer on that connection, with no syscall of its own request in
/// between; periscope gives it to the oldest request of the thread that waits
/// on nothing it can see (see `context` module docs).
#[tokio::test(flavor = "multi_thread")]
async fn node_queued_pg_connections_every_span_has_the_right_parent() {
    for mode in ["client", "pool:5"] {
        for (concurrency, total) in [(1, 20), (10, 100), (50, 200)] {
            let (sc, wrong) = run(Frontend::Node(mode), concurrency, total).await;
            assert_exact(&sc, &wrong, &format!("node, pg {mode}, {concurrency} concurrent"));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_thread_pool_every_span_has_the_right_parent_at_1_10_50_concurrent() {
    for (concurrency, total) in [(1, 20), (10, 100), (50, 200)] {
        let (sc, wrong) = run(Frontend::RustPool, concurrency, total).await;
        assert_exact(&sc, &wrong, &format!("rust thread pool, {concurrency} concurrent"));
    }
}

/// Go: goroutines move between OS threads, so the goroutine carries the
/// current request (Go runtime uprobes, found by symbol in the normal build
/// and through .gopclntab in the stripped one).
#[tokio::test(flavor = "multi_thread")]
async fn go_goroutines_every_span_has_the_right_parent_at_1_10_50_concurrent() {
    for stripped in [false, true] {
        for (concurrency, total) in [(1, 20), (10, 100), (50, 200)] {
            let (sc, wrong) = run(Frontend::Go { stripped, hooks: true }, concurrency, total).await;
            let what = if stripped { "stripped" } else { "normal" };
            assert_exact(&sc, &wrong, &format!("go ({what} build), {concurrency} concurrent"));
        }
    }
}

/// The same Go frontend with the runtime hooks off: per-thread context
/// gets goroutines wrong under concurrency (this test can fail).
#[tokio::test(flavor = "multi_thread")]
async fn go_without_runtime_hooks_parents_are_wrong_at_50_concurrent() {
    let (sc, wrong) = run(Frontend::Go { stripped: false, hooks: false }, 50, 200).await;
    eprintln!("go without hooks, 50 concurrent: {} wrong of {} relations", wrong.len(), 4 * sc.total);
    assert!(
        wrong.len() > 8,
        "per-thread context got {} of {} wrong: the hooks would not be needed",
        wrong.len(),
        4 * sc.total
    );
}

/// Runs as the Rust frontend when re-executed with PERISCOPE_CTX_RUST_SERVER
/// ("port,backend_port"); an ordinary (empty) test otherwise. The main thread
/// accepts; 4 worker threads each serve one connection at a time: read the
/// request, call the backend (a new connection), answer, close.
#[test]
fn rust_pool_server_entry() {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::sync::{mpsc, Arc, Mutex};
    let Ok(cfg) = std::env::var("PERISCOPE_CTX_RUST_SERVER") else { return };
    let (port, backend) = cfg.split_once(',').unwrap();
    let backend: u16 = backend.parse().unwrap();
    let listener = TcpListener::bind(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
    println!("listening");
    std::io::stdout().flush().unwrap();
    fn read_head(s: &mut TcpStream) -> Option<String> {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Some(String::from_utf8_lossy(&head).into_owned())
    }
    let handle = move |mut s: TcpStream| {
        let Some(head) = read_head(&mut s) else { return };
        let id = head.split_whitespace().nth(1).and_then(|p| p.rsplit('/').next()).unwrap_or("0").to_owned();
        let mut b = TcpStream::connect(("127.0.0.1", backend)).unwrap();
        write!(b, "GET /backend/{id} HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n").unwrap();
        let mut sink = Vec::new();
        b.read_to_end(&mut sink).unwrap();
        let body = format!("ok {id}");
        write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    };
    let (tx, rx) = mpsc::channel::<TcpStream>();
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..4 {
        let rx = rx.clone();
        std::thread::spawn(move || loop {
            let next = rx.lock().unwrap().recv();
            match next {
                Ok(s) => handle(s),
                Err(_) => return,
            }
        });
    }
    for s in listener.incoming().flatten() {
        tx.send(s).unwrap();
    }
}

/// Both builds are understood: by symbol, and through .gopclntab when
/// stripped (the same functions, the same number of return sites).
#[test]
fn go_binaries_are_understood_with_and_without_symbols() {
    use periscope::probes::go::elf::inspect_file;
    let normal = inspect_file(&go_frontend(false)).expect("the normal build");
    let stripped = inspect_file(&go_frontend(true)).expect("the stripped build");
    assert!(!normal.stripped && stripped.stripped);
    assert_eq!(normal.version, stripped.version);
    assert!(normal.version.starts_with("go1.19"), "{}", normal.version);
    assert_eq!(normal.newproc1_returns.len(), stripped.newproc1_returns.len());
    // The creation hook goes on the call the kernel emulates, found in both
    // builds at the same place (the code is the same, only symbols differ).
    assert!(normal.newg_call.is_some(), "no runqput call after newproc1 found");
    assert_eq!(normal.newg_call, stripped.newg_call);
    assert_eq!(normal.goexit0, stripped.goexit0);
    assert!(normal.http_write_loop.is_some() && stripped.http_write_loop.is_some());
    assert!(normal.http_round_trip.is_some() && stripped.http_round_trip.is_some());
    // net/http links crypto/tls in: its Read, Write and handshake, with the
    // same return sites whether found by symbol or through .gopclntab.
    let tls = normal.tls.as_ref().expect("crypto/tls sites in the normal build");
    assert!(!tls.read_returns.is_empty() && !tls.write_returns.is_empty() && !tls.handshake_returns.is_empty());
    assert_eq!(stripped.tls.as_ref(), Some(tls), "crypto/tls sites of the stripped build");
}

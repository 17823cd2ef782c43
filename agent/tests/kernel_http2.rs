//! HTTP/2 cleartext (h2c, prior knowledge and `Upgrade: h2c`) and gRPC end
//! to end against the real kernel: nginx serving h2c to curl, hypercorn
//! upgrading curl's HTTP/1.1 request to h2c, and a Python grpcio server and
//! client (unary OK, unary errors, server streaming). Ground truth comes
//! from outside the agent: request ids in the paths curl asks for, the
//! status codes the gRPC client itself reports. Needs root.
mod support;

use std::{
    collections::HashMap,
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use support::agent::{free_port, wait_for, wait_listening, Agent, Proc};
use support::otlp_receiver::{ReceivedSpan, Receiver, Val};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const STATUS_ERROR: i32 = 2;
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("periscope-h2-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The span's status code (unset: 0).
fn status_code(s: &ReceivedSpan) -> i32 {
    s.span.status.as_ref().map_or(0, |st| st.code)
}

fn pid_of(s: &ReceivedSpan) -> Option<u32> {
    match s.resource.get("process.pid") {
        Some(Val::Int(p)) => Some(*p as u32),
        _ => None,
    }
}

/// Starts a process that waits for one line on stdin before it starts.
fn gated(cmd: &mut Command) -> Proc {
    Proc(cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("cannot start client"))
}

fn release(p: &mut Proc, line: &str) {
    let stdin = p.0.stdin.as_mut().unwrap();
    stdin.write_all(line.as_bytes()).unwrap();
    stdin.write_all(b"\n").unwrap();
    stdin.flush().unwrap();
    drop(p.0.stdin.take());
}

fn wait_exit(p: &mut Proc) -> std::process::ExitStatus {
    wait_for("client to finish", Duration::from_secs(60), || p.0.try_wait().ok().flatten())
}

fn otlp_env(rx: &Receiver) -> Vec<(&'static str, String)> {
    vec![("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", rx.grpc_endpoint()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_h2c_and_curl_with_prior_knowledge() {
    let rx = Receiver::start().await;
    let dir = tmpdir("nginx");
    let port = free_port();
    // nginx 1.22: `listen ... http2` (the `http2 on;` directive is 1.25.1+);
    // without `ssl` that is h2c with prior knowledge.
    let conf = format!(
        "daemon off; pid {d}/nginx.pid; error_log stderr error; worker_processes 1;\n\
         events {{ worker_connections 64; }}\n\
         http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
           server {{ listen 127.0.0.1:{port} http2; location /ok/ {{ return 200 \"fine\\n\"; }} location /fail/ {{ return 503; }} location / {{ return 404; }} }} }}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let nginx =
        Proc(Command::new("/usr/sbin/nginx").args(["-c", dir.join("nginx.conf").to_str().unwrap()]).spawn().unwrap());
    wait_listening(port);
    // One curl process, requests on one connection (streams 1, 3, 5, ...:
    // later header blocks refer to the dynamic table the first ones filled).
    let mut curl = gated(Command::new("curl").args(["-s", "--http2-prior-knowledge", "-K", "-"]));
    let agent = Agent::start(&["--open-port", &port.to_string(), "--pid", &curl.pid().to_string()], &otlp_env(&rx));
    agent.wait_tracked(nginx.pid());
    agent.wait_tracked(curl.pid());
    // Distinct ids per run, so that no span of another run can pass for ours.
    let run = std::process::id();
    let expected: Vec<(String, i64)> = (0..12)
        .map(|i| match i % 4 {
            0 | 1 => (format!("/ok/{run}-{i}"), 200),
            2 => (format!("/fail/{run}-{i}"), 503),
            _ => (format!("/missing/{run}-{i}"), 404),
        })
        .collect();
    let mut config = format!("header = \"traceparent: 00-{TRACE_ID}-00f067aa0ba902b7-01\"\n");
    for (i, (path, _)) in expected.iter().enumerate() {
        if i > 0 {
            config += "next\n";
        }
        config += &format!("url = \"http://127.0.0.1:{port}{path}?token=secret\"\noutput = \"/dev/null\"\n");
    }
    release(&mut curl, &config);
    assert!(wait_exit(&mut curl).success());

    let spans = rx.wait_for_spans(2 * expected.len(), Duration::from_secs(30)).await;
    let by_path = |kind: i32, pid: u32| -> HashMap<String, &ReceivedSpan> {
        let mut m = HashMap::new();
        for s in spans.iter().filter(|s| s.span.kind == kind && pid_of(s) == Some(pid)) {
            let path = s
                .attr_str("url.path")
                .or_else(|| s.attr_str("url.full").map(|u| u.split_once(&format!(":{port}")).unwrap().1.to_owned()));
            assert!(m.insert(path.clone().unwrap_or_default(), s).is_none(), "two spans for {path:?}");
        }
        m
    };
    let server_pid = spans
        .iter()
        .find(|s| s.span.kind == SERVER && s.service_name() == Some("nginx"))
        .and_then(pid_of)
        .expect("no nginx span");
    let servers = by_path(SERVER, server_pid);
    let clients = by_path(CLIENT, curl.pid());
    assert_eq!(servers.len(), expected.len(), "{:?}", servers.keys());
    for (i, (path, status)) in expected.iter().enumerate() {
        let s = servers.get(path).unwrap_or_else(|| panic!("no server span for {path}: {:?}", servers.keys()));
        assert_eq!(s.attr_int("http.response.status_code"), Some(*status), "{path}");
        assert_eq!(s.attr_str("http.request.method").as_deref(), Some("GET"));
        assert_eq!(s.attr_str("network.protocol.version").as_deref(), Some("2"), "{path}");
        assert!(s.attr_str("http.route").is_some(), "{path}");
        assert_eq!(status_code(s), if *status >= 500 { STATUS_ERROR } else { 0 }, "{path}");
        assert!(s.attrs().values().all(|v| !format!("{v:?}").contains("secret")), "query string leaked");
        let c = clients.get(path).unwrap_or_else(|| panic!("no client span for {path}: {:?}", clients.keys()));
        assert_eq!(c.attr_int("http.response.status_code"), Some(*status));
        if i == 0 {
            // The incoming traceparent names the trace.
            assert_eq!(hex(&s.span.trace_id), TRACE_ID);
        } else {
            // Both ends on this host: the server span is the client span's child.
            assert_eq!(s.span.parent_span_id, c.span.span_id, "{path}: parent");
            assert_eq!(s.span.trace_id, c.span.trace_id, "{path}: trace");
        }
    }
    let m = agent.metrics();
    let unknown: f64 = support::agent::sample_sum(&m, "periscope_unknown_protocol_connections_total", &[]);
    assert_eq!(unknown, 0.0, "h2c detected");
}

/// An ASGI app for hypercorn: 200 for /items/..., 404 otherwise.
const ASGI_APP: &str = r#"
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    status = 200 if scope["path"].startswith("/items/") else 404
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"3")]})
    await send({"type": "http.response.body", "body": b"ok\n"})
"#;

/// `curl --http2` on http:// asks for `Upgrade: h2c`; hypercorn answers 101
/// and the connection goes on as HTTP/2: the upgraded request is answered on
/// stream 1, the next ones are streams 3, 5. Every request gives its server
/// and client span (version 2, its status), the server's under the client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_request_upgraded_to_h2c_and_the_streams_after_it() {
    let rx = Receiver::start().await;
    let dir = tmpdir("upgrade");
    std::fs::write(dir.join("app.py"), ASGI_APP).unwrap();
    let port = free_port();
    let server = Proc(
        Command::new("python3")
            .args(["-m", "hypercorn", "--bind", &format!("127.0.0.1:{port}"), "app:app"])
            .current_dir(&dir)
            .stderr(Stdio::null())
            .spawn()
            .expect("hypercorn (cargo xtask deps installs it)"),
    );
    wait_listening(port);
    let mut curl =
        gated(Command::new("curl").args(["-s", "--http2", "-w", "%{http_version} %{http_code}\\n", "-K", "-"]));
    let agent = Agent::start(&["--open-port", &port.to_string(), "--pid", &curl.pid().to_string()], &otlp_env(&rx));
    agent.wait_tracked(server.pid());
    agent.wait_tracked(curl.pid());
    // hypercorn serves from a worker process it spawns: listening once watched.
    wait_for("hypercorn's worker to be watched", Duration::from_secs(20), || {
        (agent.sample_sum("periscope_processes_tracked_total", &[]) >= 3.0).then_some(())
    });
    let run = std::process::id();
    let expected: Vec<(String, i64)> =
        [(format!("/items/{run}-1"), 200), (format!("/items/{run}-2"), 200), (format!("/missing/{run}-3"), 404)].into();
    let mut config = String::new();
    for (i, (path, _)) in expected.iter().enumerate() {
        if i > 0 {
            config += "next\n";
        }
        config += &format!("url = \"http://127.0.0.1:{port}{path}\"\noutput = \"/dev/null\"\nhttp2\n");
        config += "write-out = \"%{http_version} %{http_code}\\n\"\n";
    }
    release(&mut curl, &config);
    assert!(wait_exit(&mut curl).success());
    let mut said = String::new();
    std::io::Read::read_to_string(curl.0.stdout.as_mut().unwrap(), &mut said).unwrap();
    assert_eq!(said, "2 200\n2 200\n2 404\n", "curl upgraded to HTTP/2 and got its answers");
    // Whatever came (a missing span is named below, with the agent's counters).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while rx.spans().len() < 2 * expected.len() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let spans = rx.spans();
    let m = agent.metrics();
    let counters: Vec<&str> = m.lines().filter(|l| l.starts_with("periscope_") && !l.ends_with(" 0")).collect();
    let path_of = |s: &ReceivedSpan| {
        s.attr_str("url.path")
            .or_else(|| s.attr_str("url.full").map(|u| u.split_once(&format!(":{port}")).unwrap().1.to_owned()))
            .unwrap_or_default()
    };
    for (path, status) in &expected {
        // The server spans are hypercorn's worker's (a child process): by port.
        let find = |kind: i32, keep: &dyn Fn(&ReceivedSpan) -> bool| {
            spans
                .iter()
                .find(|s| s.span.kind == kind && keep(s) && path_of(s) == *path)
                .unwrap_or_else(|| panic!("no span of kind {kind} for {path}; {} spans; {counters:#?}", spans.len()))
        };
        let s = find(SERVER, &|s| s.attr_int("server.port") == Some(i64::from(port)));
        let c = find(CLIENT, &|s| pid_of(s) == Some(curl.pid()));
        for span in [s, c] {
            assert_eq!(span.attr_int("http.response.status_code"), Some(*status), "{path}");
            assert_eq!(span.attr_str("http.request.method").as_deref(), Some("GET"), "{path}");
            assert_eq!(span.attr_str("network.protocol.version").as_deref(), Some("2"), "{path}");
        }
        assert_eq!(s.span.parent_span_id, c.span.span_id, "{path}: parent");
        assert_eq!(s.span.trace_id, c.span.trace_id, "{path}: trace");
    }
    let m = agent.metrics();
    for metric in
        ["periscope_requests_unmatched_total", "periscope_parse_errors_total", "periscope_protocol_desync_total"]
    {
        assert_eq!(support::agent::sample_sum(&m, metric, &[]), 0.0, "{metric}: {m}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

const GRPC_SCRIPT: &str = r#"
import sys, time, grpc
from concurrent import futures

SERVICE = "demo.Items"

def get(request, context):
    return b"item:" + request

def missing(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such item")

def broken(request, context):
    context.abort(grpc.StatusCode.INTERNAL, "broken")

def listing(request, context):
    for i in range(3):
        yield b"part-%d" % i

def serve(port):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Get": grpc.unary_unary_rpc_method_handler(get),
        "Missing": grpc.unary_unary_rpc_method_handler(missing),
        "Broken": grpc.unary_unary_rpc_method_handler(broken),
        "List": grpc.unary_stream_rpc_method_handler(listing),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port("127.0.0.1:%s" % port)
    server.start()
    server.wait_for_termination()

def call(port, plan, before=()):
    channel = grpc.insecure_channel("127.0.0.1:%s" % port)
    # Calls made before the agent watches: the connection and its HPACK
    # tables are older than the agent.
    run(channel, before)
    print("ready", flush=True)
    sys.stdin.readline()
    run(channel, plan)

def run(channel, plan):
    for method in plan:
        path = "/%s/%s" % (SERVICE, method)
        try:
            if method == "List":
                got = list(channel.unary_stream(path)(b"x"))
                assert len(got) == 3
            else:
                channel.unary_unary(path)(b"x")
            code = 0
        except grpc.RpcError as e:
            code = e.code().value[0]
        print("%s %d" % (method, code), flush=True)
        time.sleep(0.05)

if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    elif sys.argv[1] == "call":
        call(sys.argv[2], sys.argv[3].split(","))
    else:
        call(sys.argv[2], sys.argv[3].split(","), sys.argv[4].split(","))
"#;

/// What the gRPC client `client` printed ("<Method> <code>" per call)
/// matches `plan`, and each call gave one client span of `client_service`
/// and one server span of `server_service`, in order, with their rpc
/// attributes, statuses, link and the RPC duration metrics.
async fn check_grpc_calls(
    rx: &Receiver,
    agent: &Agent,
    client: &mut Proc,
    plan: &[&str],
    server_service: &str,
    client_service: &str,
) {
    let mut out = String::new();
    std::io::Read::read_to_string(client.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    let seen: Vec<(String, i64)> = out
        .lines()
        .filter(|l| *l != "ready")
        .map(|l| {
            let (m, c) = l.split_once(' ').unwrap();
            (m.to_owned(), c.parse().unwrap())
        })
        .collect();
    let want: Vec<(String, i64)> = plan
        .iter()
        .map(|m| {
            let code = match *m {
                "Missing" => 5,
                "Broken" => 13,
                _ => 0,
            };
            (m.to_string(), code)
        })
        .collect();
    assert_eq!(seen, want, "the client's own view");

    let spans = rx.wait_for_spans(2 * plan.len(), Duration::from_secs(30)).await;
    let of = |service: &str, kind: i32| -> Vec<&ReceivedSpan> {
        let mut v: Vec<&ReceivedSpan> =
            spans.iter().filter(|s| s.service_name() == Some(service) && s.span.kind == kind).collect();
        v.sort_by_key(|s| s.span.start_time_unix_nano);
        v
    };
    let servers = of(server_service, SERVER);
    let clients = of(client_service, CLIENT);
    let summary = |v: &[&ReceivedSpan]| -> Vec<(String, i64)> {
        v.iter()
            .map(|s| {
                (
                    s.span.name.trim_start_matches("demo.Items/").to_owned(),
                    s.attr_int("rpc.grpc.status_code").unwrap_or(-1),
                )
            })
            .collect()
    };
    // In the order of the calls, one span per call on each side.
    assert_eq!(summary(&clients), want, "client spans");
    assert_eq!(summary(&servers), want, "server spans");
    for (c, s) in clients.iter().zip(&servers) {
        let code = c.attr_int("rpc.grpc.status_code").unwrap();
        assert_eq!(s.attr_str("rpc.system").as_deref(), Some("grpc"));
        assert_eq!(s.attr_str("rpc.service").as_deref(), Some("demo.Items"));
        assert_eq!(c.attr_str("rpc.method"), s.attr_str("rpc.method"));
        // Semantic conventions: a client errs on every code but OK; a server
        // on its own faults only (INTERNAL here, not NOT_FOUND).
        let client_error = status_code(c) == STATUS_ERROR;
        let server_error = status_code(s) == STATUS_ERROR;
        assert_eq!(client_error, code != 0, "{}", c.span.name);
        assert_eq!(server_error, code == 13, "{}", s.span.name);
        // Both ends on this host: one trace, the server span a child of the client's.
        assert_eq!(s.span.parent_span_id, c.span.span_id, "{}: parent", s.span.name);
        assert_eq!(s.span.trace_id, c.span.trace_id, "{}: trace", s.span.name);
        assert!(s.span.start_time_unix_nano >= c.span.start_time_unix_nano);
        assert!(s.span.end_time_unix_nano <= c.span.end_time_unix_nano + 5_000_000);
    }
    // RPC duration metrics, by method and status code.
    let m = agent.metrics();
    let count = |metric: &str, parts: &[&str]| support::agent::sample_sum(&m, metric, parts);
    let calls = |name: &str| plan.iter().filter(|m| **m == name).count() as f64;
    assert_eq!(
        count("rpc_server_duration_seconds_count", &["rpc_method=\"Get\"", "rpc_grpc_status_code=\"0\""]),
        calls("Get"),
        "{m}"
    );
    assert_eq!(count("rpc_server_duration_seconds_count", &["rpc_method=\"Missing\""]), calls("Missing"));
    assert_eq!(count("rpc_client_duration_seconds_count", &["rpc_method=\"List\""]), calls("List"));
}

/// Runs the calls of PLAN through a gRPC server and client, both started as
/// `program script serve|call ...` with service names `{prefix}-server` and
/// `{prefix}-client`, the agent watching them, and checks the spans.
async fn grpc_calls_give_their_spans(program: &str, script: &std::path::Path, prefix: &str) {
    let rx = Receiver::start().await;
    let port = free_port();
    let (server_service, client_service) = (format!("{prefix}-server"), format!("{prefix}-client"));
    let server = Proc(
        Command::new(program)
            .args([script.to_str().unwrap(), "serve", &port.to_string()])
            .env("OTEL_SERVICE_NAME", &server_service)
            .spawn()
            .unwrap(),
    );
    wait_listening(port);
    let plan = ["Get", "Missing", "Get", "Broken", "List", "Get", "List", "Missing"];
    let mut client = gated(
        Command::new(program)
            .args([script.to_str().unwrap(), "call", &port.to_string(), &plan.join(",")])
            .env("OTEL_SERVICE_NAME", &client_service),
    );
    let agent = Agent::start(&["--open-port", &port.to_string(), "--pid", &client.pid().to_string()], &otlp_env(&rx));
    agent.wait_tracked(server.pid());
    agent.wait_tracked(client.pid());
    release(&mut client, "go");
    assert!(wait_exit(&mut client).success());
    // What the client itself saw, call by call, and the spans.
    check_grpc_calls(&rx, &agent, &mut client, &plan, &server_service, &client_service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpc_unary_errors_and_streaming() {
    let dir = tmpdir("grpc");
    let script = dir.join("items.py");
    std::fs::write(&script, GRPC_SCRIPT).unwrap();
    grpc_calls_give_their_spans("python3", &script, "items").await;
    drop(dir);
}

/// A connection older than the agent: the client called before the agent
/// started, so both HPACK tables hold entries the agent never saw. Every
/// later call still makes one span per side, named when its fields can be
/// decoded; references to the unknown entries are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connection_older_than_the_agent() {
    let rx = Receiver::start().await;
    let dir = tmpdir("grpc-old");
    let script = dir.join("items.py");
    std::fs::write(&script, GRPC_SCRIPT).unwrap();
    let port = free_port();
    let server = Proc(
        Command::new("python3")
            .args([script.to_str().unwrap(), "serve", &port.to_string()])
            .env("OTEL_SERVICE_NAME", "items-server")
            .spawn()
            .unwrap(),
    );
    wait_listening(port);
    // Get and Missing before the agent; Broken is new afterwards (its :path
    // is a literal), Get and Missing refer to the table.
    let plan = ["Get", "Broken", "Missing", "Get"];
    let mut client = gated(
        Command::new("python3")
            .args([script.to_str().unwrap(), "early", &port.to_string(), &plan.join(","), "Get,Missing"])
            .env("OTEL_SERVICE_NAME", "items-client"),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(client.0.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert!(line.starts_with("Get 0"), "{line}");
    let agent = Agent::start(&["--open-port", &port.to_string(), "--pid", &client.pid().to_string()], &otlp_env(&rx));
    agent.wait_tracked(server.pid());
    agent.wait_tracked(client.pid());
    release(&mut client, "go");
    assert!(wait_exit(&mut client).success());

    let spans = rx.wait_for_spans(2 * (plan.len() - 1), Duration::from_secs(30)).await;
    // Late spans of the first call, if any, have had time too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spans = if rx.spans().len() > spans.len() { rx.spans() } else { spans };
    for (service, kind) in [("items-server", SERVER), ("items-client", CLIENT)] {
        let mut mine: Vec<&ReceivedSpan> =
            spans.iter().filter(|s| s.service_name() == Some(service) && s.span.kind == kind).collect();
        mine.sort_by_key(|s| s.span.start_time_unix_nano);
        // The first call may go by before the connection is recognised
        // (detection needs a HEADERS frame whose first field the static
        // table names); every later one makes a span.
        let names: Vec<&String> = mine.iter().map(|s| &s.span.name).collect();
        assert!(mine.len() >= plan.len() - 1 && mine.len() <= plan.len(), "{service}: {names:?}");
        // The new method's :path is a literal: named, and gRPC by its path.
        let broken = mine.iter().find(|s| s.span.name == "demo.Items/Broken").unwrap_or_else(|| panic!("{names:?}"));
        assert_eq!(broken.attr_str("rpc.system").as_deref(), Some("grpc"));
        for s in &mine {
            // Never a wrong name: the right method, or none.
            let name = &s.span.name;
            assert!(
                name.ends_with('/') || plan.iter().any(|m| name.ends_with(m)) || name == "POST",
                "{service}: {name}"
            );
        }
    }
    let unknown = support::agent::sample_sum(
        &agent.metrics(),
        "periscope_skipped_messages_total",
        &["protocol=\"http2\"", "reason=\"header not in the dynamic table\""],
    );
    assert!(unknown > 0.0, "references to entries never seen are counted");
    drop(dir);
}

/// @grpc/grpc-js (Node's own HTTP/2, no OpenSSL: h2c) server and client:
/// the same calls give the same rpc spans, statuses and links as grpcio's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_grpc_js_unary_errors_and_streaming() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/grpc");
    assert!(
        dir.join("node_modules/@grpc/grpc-js").exists(),
        "{}/node_modules is missing: run `cargo xtask deps`",
        dir.display()
    );
    grpc_calls_give_their_spans("node", &dir.join("items.js"), "js-items").await;
}

/// Server streams whose messages total far more than the capture size: the
/// server writes and the client reads several frames per syscall, the
/// trailers (HEADERS with grpc-status) after kilobytes of DATA.
const GRPC_STREAMS_SCRIPT: &str = r#"
import sys, time, grpc
from concurrent import futures

SERVICE = "demo.Streams"

def many(request, context):
    for i in range(20):
        yield bytes([65 + i]) * 1024

def big(request, context):
    yield b"b" * 65536

def failing(request, context):
    for i in range(20):
        yield b"f" * 1024
    context.abort(grpc.StatusCode.INTERNAL, "broken after the data")

if sys.argv[1] == "serve":
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Many": grpc.unary_stream_rpc_method_handler(many),
        "Big": grpc.unary_stream_rpc_method_handler(big),
        "Failing": grpc.unary_stream_rpc_method_handler(failing),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port("127.0.0.1:%s" % sys.argv[2])
    server.start()
    server.wait_for_termination()
else:
    sys.stdin.readline()
    channel = grpc.insecure_channel("127.0.0.1:%s" % sys.argv[2])
    # A first call: the agent classifies the connection (and sets its
    # capture) while it runs, before the calls that count.
    list(channel.unary_stream("/%s/Many" % SERVICE)(b"x"))
    print("ready", flush=True)
    sys.stdin.readline()
    for method in sys.argv[3].split(","):
        try:
            got = list(channel.unary_stream("/%s/%s" % (SERVICE, method))(b"x"))
            code = 0
        except grpc.RpcError as e:
            got = []
            code = e.code().value[0]
        print("%s %d" % (method, code), flush=True)
        time.sleep(0.05)
"#;

/// A server stream of 20 messages of 1 KiB, one of 64 KiB, and 20 messages
/// then INTERNAL: far beyond `--capture-size` per syscall. The kernel's
/// HTTP/2 frame walk keeps the frame headers and header blocks of every
/// syscall, so each call's trailers are seen: one rpc span per call on
/// each side with the status the client itself got, none unmatched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_server_streams_beyond_the_capture_size() {
    let rx = Receiver::start().await;
    let dir = tmpdir("grpc-streams");
    let script = dir.join("streams.py");
    std::fs::write(&script, GRPC_STREAMS_SCRIPT).unwrap();
    let port = free_port();
    let server = Proc(
        Command::new("python3")
            .args([script.to_str().unwrap(), "serve", &port.to_string()])
            .env("OTEL_SERVICE_NAME", "streams-server")
            .spawn()
            .unwrap(),
    );
    wait_listening(port);
    let plan = ["Many", "Big", "Failing", "Many", "Failing", "Big", "Many"];
    let mut client = gated(
        Command::new("python3")
            .args([script.to_str().unwrap(), "call", &port.to_string(), &plan.join(",")])
            .env("OTEL_SERVICE_NAME", "streams-client"),
    );
    let agent = Agent::start(&["--open-port", &port.to_string(), "--pid", &client.pid().to_string()], &otlp_env(&rx));
    agent.wait_tracked(server.pid());
    agent.wait_tracked(client.pid());
    // The warm-up call, seen or not: the connection is known once it is done.
    let stdin = client.0.stdin.as_mut().unwrap();
    stdin.write_all(b"go\n").unwrap();
    stdin.flush().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(client.0.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let warm = rx.spans().len();
    // What the warm-up left (its first syscalls were captured as prefixes,
    // before the agent had classified the connection) does not count.
    let counted =
        ["periscope_requests_unmatched_total", "periscope_parse_errors_total", "periscope_protocol_desync_total"];
    let before: Vec<f64> = counted.iter().map(|m| agent.sample_sum(m, &[])).collect();
    release(&mut client, "go");
    assert!(wait_exit(&mut client).success());
    let mut out = String::new();
    std::io::Read::read_to_string(client.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    let want: Vec<(String, i64)> = plan.iter().map(|m| (m.to_string(), if *m == "Failing" { 13 } else { 0 })).collect();
    let seen: Vec<(String, i64)> = out
        .lines()
        .map(|l| {
            let (m, c) = l.split_once(' ').unwrap();
            (m.to_owned(), c.parse().unwrap())
        })
        .collect();
    assert_eq!(seen, want, "the client's own view");

    // Soft wait: when spans are missing, the comparison below says which.
    let enough = |r: &Receiver| (r.spans().len() >= warm + 2 * plan.len()).then_some(());
    let _ =
        tokio::time::timeout(Duration::from_secs(20), rx.wait_until(Duration::from_secs(30), "spans", enough)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spans = rx.spans();
    for (service, kind) in [("streams-server", SERVER), ("streams-client", CLIENT)] {
        let mut mine: Vec<&ReceivedSpan> =
            spans.iter().filter(|s| s.service_name() == Some(service) && s.span.kind == kind).collect();
        mine.sort_by_key(|s| s.span.start_time_unix_nano);
        // The warm-up call's span (the first Many), when it was seen.
        let calls: Vec<(String, i64)> = mine
            .iter()
            .map(|s| {
                (
                    s.span.name.trim_start_matches("demo.Streams/").to_owned(),
                    s.attr_int("rpc.grpc.status_code").unwrap_or(-1),
                )
            })
            .collect();
        let calls = if calls.len() > plan.len() { &calls[calls.len() - plan.len()..] } else { &calls[..] };
        assert_eq!(calls, &want[..], "{service}: one span per call, with the status the client got");
        for s in &mine[mine.len().saturating_sub(plan.len())..] {
            let code = s.attr_int("rpc.grpc.status_code").unwrap();
            let error = status_code(s) == STATUS_ERROR;
            assert_eq!(error, code != 0, "{service} {}", s.span.name);
            assert_eq!(s.attr_str("rpc.system").as_deref(), Some("grpc"));
        }
    }
    let m = agent.metrics();
    for (metric, before) in counted.iter().zip(before) {
        let after = support::agent::sample_sum(&m, metric, &[]);
        assert_eq!(after, before, "{metric}: none while the calls that count ran");
    }
    let incomplete: Vec<&str> =
        m.lines().filter(|l| l.starts_with("periscope_kernel_capture_incomplete_total")).collect();
    eprintln!("kernel capture: {incomplete:?}");
    drop(dir);
}

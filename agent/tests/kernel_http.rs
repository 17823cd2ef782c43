//! End to end against the real kernel: real, uninstrumented servers and
//! clients (Python http.server, Node.js http, nginx, curl, a Node client, a
//! Rust client), periscope loading its probes, spans received over OTLP by an
//! in-test receiver, and RED metrics read from /metrics. Needs root.
mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use support::agent::{free_port, wait_for, wait_listening, Agent, Proc};
use support::otlp_receiver::{ReceivedSpan, Receiver, Val};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{PARENT_ID}-01")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("periscope-it-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn kind(s: &ReceivedSpan) -> i32 {
    s.span.kind
}

fn pid_of(s: &ReceivedSpan) -> Option<u32> {
    match s.resource.get("process.pid") {
        Some(Val::Int(p)) => Some(*p as u32),
        _ => None,
    }
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// Spans of one kind from services whose pid is `pid`, as (name, status code).
fn summary(spans: &[ReceivedSpan], k: i32, pid: u32) -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = spans
        .iter()
        .filter(|s| kind(s) == k && pid_of(s) == Some(pid))
        .map(|s| (s.span.name.clone(), s.attr_int("http.response.status_code").unwrap_or(0)))
        .collect();
    v.sort();
    v
}

fn names(list: &[(&str, i64)]) -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = list.iter().map(|(n, s)| (n.to_string(), *s)).collect();
    v.sort();
    v
}

/// Starts a client process that waits for one line on stdin before it
/// starts, so the test can make sure periscope watches it first.
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

fn wait_exit(p: &mut Proc) {
    wait_for("client to finish", Duration::from_secs(30), || p.0.try_wait().ok().flatten());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_http_server_and_curl_over_grpc() {
    let rx = Receiver::start().await;
    let port = free_port();
    let www = tmpdir("www");
    std::fs::write(www.join("a.txt"), "hello from python\n").unwrap();
    let server = Proc(
        Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1"])
            .current_dir(&www)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(port);
    let agent = Agent::start(
        &["--open-port", &port.to_string(), "--exe-path", "*/curl"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", rx.grpc_endpoint()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into())],
    );
    agent.wait_tracked(server.pid());

    // One curl process, five requests, read from a config on stdin once watched.
    let mut curl = gated(Command::new("curl").args(["-s", "-K", "-"]));
    agent.wait_tracked(curl.pid());
    let url = |p: &str| format!("url = \"http://127.0.0.1:{port}{p}\"\noutput = \"/dev/null\"\n");
    let mut config = String::new();
    config += &format!("header = \"traceparent: {}\"\n", traceparent());
    config += &url("/a.txt?secret=1");
    for p in ["/a.txt", "/a.txt", "/missing", "/missing"] {
        config += "next\n";
        config += &url(p);
    }
    release(&mut curl, &config);
    wait_exit(&mut curl);

    let spans = rx.wait_for_spans(10, Duration::from_secs(20)).await;
    let expected = names(&[
        ("GET /a.txt", 200),
        ("GET /a.txt", 200),
        ("GET /a.txt", 200),
        ("GET /missing", 404),
        ("GET /missing", 404),
    ]);
    assert_eq!(summary(&spans, SERVER, server.pid()), expected, "python server spans");
    let client = summary(&spans, CLIENT, curl.pid());
    assert_eq!(client.len(), 5, "curl client spans: {client:?}");
    assert!(client.iter().filter(|(_, s)| *s == 404).count() == 2);

    // The request that carried a traceparent joined that trace as its child.
    let joined: Vec<&ReceivedSpan> =
        spans.iter().filter(|s| kind(s) == SERVER && hex(&s.span.trace_id) == TRACE_ID).collect();
    assert_eq!(joined.len(), 1);
    assert_eq!(hex(&joined[0].span.parent_span_id), PARENT_ID);
    assert_eq!(joined[0].attr_str("url.path").as_deref(), Some("/a.txt"), "query string redacted");
    assert!(joined[0].attrs().values().all(|v| !format!("{v:?}").contains("secret")));
    // Every untraced server span started a trace of its own.
    assert!(spans.iter().filter(|s| kind(s) == SERVER).all(|s| s.span.trace_id.len() == 16));
    for s in spans.iter().filter(|s| kind(s) == SERVER) {
        assert_eq!(s.service_name(), Some("http.server"));
        assert_eq!(s.attr_str("client.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(s.attr_int("server.port"), Some(port as i64));
        assert_eq!(s.attr_str("network.protocol.version").as_deref(), Some("1.1"), "curl's requests are HTTP/1.1");
        assert!(s.span.end_time_unix_nano >= s.span.start_time_unix_nano);
    }
    let metrics = agent.metrics();
    let count = support::agent::sample_sum(
        &metrics,
        "http_server_request_duration_seconds_count",
        &["service_name=\"http.server\""],
    );
    assert_eq!(count, 5.0, "histogram count equals requests served:\n{metrics}");
    assert_eq!(support::agent::sample_sum(&metrics, "periscope_events_lost_ringbuf_total", &[]), 0.0);
    assert!(metrics.contains("target_info{"), "target_info present");
}

const NODE_SERVER: &str = r#"
const http = require('http');
http.createServer((req, res) => {
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', () => {
    if (req.url.startsWith('/users/')) { res.writeHead(200, {'content-type': 'application/json'}); return res.end('{"id":1}'); }
    if (req.url === '/items' && req.method === 'POST') { res.writeHead(201); return res.end('created ' + body.length); }
    if (req.url === '/fail') { res.writeHead(500); return res.end('boom'); }
    if (req.url === '/slow') return setTimeout(() => { res.writeHead(200); res.end('late'); }, 300);
    if (req.url === '/chunked') { res.writeHead(200); res.write('a'.repeat(3000)); return setTimeout(() => res.end('b'.repeat(3000)), 20); }
    res.writeHead(404); res.end();
  });
}).listen(Number(process.argv[2]), '127.0.0.1');
"#;

/// Node client: keep-alive requests with the http module, then raw-socket
/// pipelining and a request split across writes.
const NODE_CLIENT: &str = r#"
const http = require('http');
const net = require('net');
const port = Number(process.argv[2]);
const tp = process.argv[3];
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
function call(method, path, headers, body) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path, agent, headers }, (res) => {
      res.resume(); res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', reject);
    req.end(body);
  });
}
function raw(parts, expectResponses) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', async () => {
      for (const p of parts) { s.write(p); await new Promise((r) => setTimeout(r, 50)); }
    });
    let got = '';
    s.on('data', (d) => {
      got += d;
      // Every response here is chunked: count the last-chunk markers.
      if ((got.match(/\r\n0\r\n\r\n/g) || []).length >= expectResponses) { s.end(); resolve(); }
    });
  });
}
process.stdin.once('data', async () => {
  await call('GET', '/users/42', { traceparent: tp });
  await call('GET', '/users/43', {});
  await call('POST', '/items', { 'content-type': 'text/plain' }, 'x'.repeat(100));
  await call('GET', '/fail', {});
  await call('GET', '/slow', {});
  await call('GET', '/chunked', {});
  await call('GET', '/nothing', {});
  await raw(['GET /users/1 HTTP/1.1\r\nHost: a\r\n\r\nGET /users/2 HTTP/1.1\r\nHost: a\r\n\r\nGET /fail HTTP/1.1\r\nHost: a\r\n\r\n'], 3);
  await raw(['POST /items HTTP/1.1\r\nHost: a\r\nContent-', 'Length: 5\r\n\r\n', 'hello'], 1);
  agent.destroy();
  console.log('done');
});
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_server_and_node_client_over_http_protobuf() {
    let rx = Receiver::start().await;
    let dir = tmpdir("node");
    std::fs::write(dir.join("server.js"), NODE_SERVER).unwrap();
    std::fs::write(dir.join("client.js"), NODE_CLIENT).unwrap();
    let port = free_port();
    let server = Proc(Command::new("node").arg(dir.join("server.js")).arg(port.to_string()).spawn().unwrap());
    wait_listening(port);
    let agent = Agent::start(
        &["--open-port", &port.to_string(), "--exe-path", "*/node", "--routes", "/users/{id}"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.http_endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000".into()),
            ("OTEL_SEMCONV_STABILITY_OPT_IN", "http/dup".into()),
        ],
    );
    agent.wait_tracked(server.pid());
    let mut client = gated(Command::new("node").arg(dir.join("client.js")).arg(port.to_string()).arg(traceparent()));
    agent.wait_tracked(client.pid());
    release(&mut client, "go");
    let mut line = String::new();
    BufReader::new(client.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "done");

    // 7 keep-alive requests + 3 pipelined + 1 split = 11 server spans.
    let spans = rx.wait_for_spans(11 + 7, Duration::from_secs(20)).await;
    let expected = names(&[
        ("GET /users/{id}", 200),
        ("GET /users/{id}", 200),
        ("GET /users/{id}", 200),
        ("GET /users/{id}", 200),
        ("POST /items", 201),
        ("POST /items", 201),
        ("GET /fail", 500),
        ("GET /fail", 500),
        ("GET /slow", 200),
        ("GET /chunked", 200),
        ("GET /nothing", 404),
    ]);
    assert_eq!(summary(&spans, SERVER, server.pid()), expected);
    // The http.Agent requests are client spans of the node client too (the
    // raw-socket ones as well: 7 + 3 + 1).
    assert_eq!(summary(&spans, CLIENT, client.pid()).len(), 11);

    let server_spans: Vec<&ReceivedSpan> = spans.iter().filter(|s| kind(s) == SERVER).collect();
    let slow = server_spans.iter().find(|s| s.span.name == "GET /slow").unwrap();
    let slow_ms = (slow.span.end_time_unix_nano - slow.span.start_time_unix_nano) as f64 / 1e6;
    assert!((300.0..1500.0).contains(&slow_ms), "slow span lasted {slow_ms} ms");
    let traced = server_spans.iter().find(|s| hex(&s.span.trace_id) == TRACE_ID).expect("traceparent honoured");
    assert_eq!(hex(&traced.span.parent_span_id), PARENT_ID);
    assert_eq!(traced.attr_str("url.path").as_deref(), Some("/users/42"));
    assert_eq!(traced.attr_str("http.target").as_deref(), Some("/users/42"), "http/dup adds old names");
    assert_eq!(traced.attr_int("http.status_code"), Some(200));
    let fail = server_spans.iter().find(|s| s.span.name == "GET /fail").unwrap();
    assert_eq!(fail.span.status.as_ref().map(|s| s.code), Some(2), "5xx is an error");
    let post = server_spans.iter().find(|s| s.span.name == "POST /items").unwrap();
    assert!(post.attr_int("http.request.body.size").is_some());
    let chunked = server_spans.iter().find(|s| s.span.name == "GET /chunked").unwrap();
    assert!(chunked.attr_int("http.response.body.size").unwrap() >= 6000, "chunked body framed to its end");

    // RED metrics: /metrics and OTLP agree with the requests sent.
    wait_for("server histogram to count 11", Duration::from_secs(10), || {
        (agent.sample_sum("http_server_request_duration_seconds_count", &[]) == 11.0).then_some(())
    });
    let errors = agent.sample_sum("http_server_request_duration_seconds_count", &["http_response_status_code=\"500\""]);
    assert_eq!(errors, 2.0);
    let metrics = rx.wait_for_metric_requests(1, Duration::from_secs(15)).await;
    assert!(metrics.iter().any(|m| m.metric.name == "http.server.request.duration"));
    assert_eq!(agent.sample_sum("periscope_parse_errors_total", &[]), 0.0);
}

/// Runs as the Rust client when re-executed with PERISCOPE_TEST_RUST_CLIENT;
/// an ordinary (empty) test otherwise.
#[test]
fn rust_client_entry() {
    let Ok(port) = std::env::var("PERISCOPE_TEST_RUST_CLIENT") else { return };
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
    for path in ["/ok", "/ok", "/missing", "/ok"] {
        write!(s, "GET {path} HTTP/1.1\r\nHost: nginx.local\r\n\r\n").unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let len: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_and_a_rust_client() {
    let rx = Receiver::start().await;
    let dir = tmpdir("nginx");
    let port = free_port();
    let conf = format!(
        "daemon off; pid {d}/nginx.pid; error_log stderr error; worker_processes 1;\n\
         events {{ worker_connections 64; }}\n\
         http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
           server {{ listen 127.0.0.1:{port}; location = /ok {{ return 200 \"fine\\n\"; }} location / {{ return 404; }} }} }}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let nginx =
        Proc(Command::new("/usr/sbin/nginx").args(["-c", dir.join("nginx.conf").to_str().unwrap()]).spawn().unwrap());
    wait_listening(port);
    let agent = Agent::start(
        &["--open-port", &port.to_string(), "--pid", &std::process::id().to_string()],
        &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", rx.grpc_endpoint()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into())],
    );
    // Fork tracking: this test process is watched (--pid) before it starts the client.
    agent.wait_tracked(std::process::id());
    let mut client = gated(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "rust_client_entry", "--nocapture", "--test-threads=1"])
            .env("PERISCOPE_TEST_RUST_CLIENT", port.to_string()),
    );
    // The worker answers; the kernel followed it from the master (fork).
    agent.wait_tracked(nginx.pid());
    // The client is a child of this test process, which is watched by --pid:
    // the kernel tracks it from the fork, before it execs.
    let client_pid = client.pid();
    agent.wait_tracked(client_pid);
    release(&mut client, "go");
    wait_exit(&mut client);

    let spans = rx.wait_for_spans(8, Duration::from_secs(20)).await;
    let server: Vec<(String, i64)> = spans
        .iter()
        .filter(|s| kind(s) == SERVER && s.service_name() == Some("nginx"))
        .map(|s| (s.span.name.clone(), s.attr_int("http.response.status_code").unwrap()))
        .collect();
    let mut server = server;
    server.sort();
    assert_eq!(server, names(&[("GET /ok", 200), ("GET /ok", 200), ("GET /ok", 200), ("GET /missing", 404)]));
    let client_spans = summary(&spans, CLIENT, client_pid);
    assert_eq!(client_spans.len(), 4, "{client_spans:?}");
    let own = |s: &&ReceivedSpan| pid_of(s) == Some(client_pid);
    for s in spans.iter().filter(|s| kind(s) == CLIENT).filter(own) {
        assert_eq!(s.attr_str("server.address").as_deref(), Some("nginx.local"));
        assert_eq!(s.attr_int("server.port"), Some(port as i64));
    }
}

#[test]
fn bad_configuration_is_one_clear_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_periscope")).args(["--open-port", "80-70"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("open-port") && err.contains("80-70"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_periscope"))
        .args(["--pid", "1", "--trace-printer", "fancy"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--trace-printer"));
}

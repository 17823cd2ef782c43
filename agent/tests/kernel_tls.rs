//! TLS plaintext through the OpenSSL uprobes, against the real kernel: real,
//! uninstrumented programs talking TLS 1.3 with a certificate the test makes
//! (openssl CLI), and the same requests over plaintext as the ground truth.
//! A TLS connection must give exactly the spans of its plaintext twin:
//! method, route, path (ids in the paths), status, and the client -> server
//! parent link on this host: Python `ssl`, nginx + curl, Node `https` (its
//! own OpenSSL), psql against PostgreSQL, and a library loaded late; HTTP/2
//! over OpenSSL (ALPN h2: nginx + curl, Node's http2, hypercorn + curl)
//! against its h2c twin, stream by stream. With the TLS uprobes off, the TLS half gives
//! nothing and every test here fails. Needs root.
mod support;

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use support::agent::{free_port, wait_for, wait_listening, Agent, Proc};
use support::db::{Postgres, DATABASE, PASSWORD, PG_BIN, USER};
use support::otlp_receiver::{ReceivedSpan, Receiver, Val};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("periscope-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A self-signed certificate for 127.0.0.1 / localhost: (cert.pem, key.pem).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

/// The interpreter behind `python3` (pyenv shims are shell scripts).
fn python() -> String {
    let out = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn pid_of(s: &ReceivedSpan) -> Option<u32> {
    match s.resource.get("process.pid") {
        Some(Val::Int(p)) => Some(*p as u32),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Path of an HTTP span: url.path (server) or the path of url.full (client).
fn path_of(s: &ReceivedSpan) -> String {
    if let Some(p) = s.attr_str("url.path") {
        return p;
    }
    let full = s.attr_str("url.full").unwrap_or_default();
    let rest = full.split_once("://").map_or(full.as_str(), |(_, r)| r);
    rest.find('/').map_or(String::new(), |i| rest[i..].to_owned())
}

/// (name, path, status) of the HTTP spans of `kind` from `pid`, sorted.
fn http_summary(spans: &[ReceivedSpan], kind: i32, pid: u32) -> Vec<(String, String, i64)> {
    http_summary_where(spans, |s| s.span.kind == kind && pid_of(s) == Some(pid))
}

fn http_summary_where(spans: &[ReceivedSpan], keep: impl Fn(&ReceivedSpan) -> bool) -> Vec<(String, String, i64)> {
    let mut v: Vec<_> = spans
        .iter()
        .filter(|s| keep(s) && s.attr_str("http.request.method").is_some())
        .map(|s| (s.span.name.clone(), path_of(s), s.attr_int("http.response.status_code").unwrap_or(0)))
        .collect();
    v.sort();
    v
}

/// Every client span of `client` is the parent of the server span of
/// `server` with the same path, in the same trace.
fn assert_linked(spans: &[ReceivedSpan], client: u32, server: u32) {
    assert_linked_where(spans, client, |s| pid_of(s) == Some(server));
}

fn assert_linked_where(spans: &[ReceivedSpan], client: u32, server: impl Fn(&ReceivedSpan) -> bool) {
    let clients: Vec<&ReceivedSpan> =
        spans.iter().filter(|s| s.span.kind == CLIENT && pid_of(s) == Some(client)).collect();
    assert!(!clients.is_empty(), "no client spans of pid {client}");
    for c in clients {
        let path = path_of(c);
        let s = spans
            .iter()
            .find(|s| s.span.kind == SERVER && server(s) && path_of(s) == path)
            .unwrap_or_else(|| panic!("no server span for {path}"));
        assert_eq!(hex(&s.span.parent_span_id), hex(&c.span.span_id), "parent of the server span of {path}");
        assert_eq!(hex(&s.span.trace_id), hex(&c.span.trace_id), "trace of {path}");
    }
}

/// Starts a client that waits for one line on stdin before it does anything.
fn gated(cmd: &mut Command) -> Proc {
    Proc(cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("cannot start client"))
}

/// A command-line client without a stdin gate of its own: a shell reads the
/// line, then execs it (same pid).
fn gated_exec(program: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "read go; exec \"$0\" \"$@\" 2>&1", program]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    gated(&mut cmd)
}

/// Releases the gate, waits for a clean exit; returns the client's stdout.
fn run(p: &mut Proc) -> String {
    let stdin = p.0.stdin.as_mut().unwrap();
    stdin.write_all(b"go\n").unwrap();
    stdin.flush().unwrap();
    drop(p.0.stdin.take());
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
    assert!(status.success(), "client failed: {status}; output: {out}");
    out
}

/// The agent, watching what `selection` selects (the test process's own
/// connections, the OTLP receiver's HTTP/2 among them, stay out).
fn start_agent(rx: &Receiver, selection: &[&str]) -> Agent {
    Agent::start(
        selection,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", rx.grpc_endpoint()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into())],
    )
}

fn wait_tls_attached(agent: &Agent) {
    wait_for("the TLS uprobes to attach", Duration::from_secs(20), || {
        (agent.sample_sum("periscope_tls_libraries_attached_total", &[]) >= 1.0).then_some(())
    });
}

const PY_SERVER: &str = r#"
import http.server, ssl, sys
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def reply(self, code, body=b"ok\n"):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.reply(200 if self.path.startswith("/items/") else 404, b"x" * 3000 if "big" in self.path else b"ok\n")
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.reply(201)
srv = http.server.HTTPServer(("127.0.0.1", port), H)
if cert != "-":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

/// Two keep-alive connections; ids in the paths.
const PY_CLIENT: &str = r#"
import http.client, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
sys.stdin.readline()
def connect():
    if ca == "-":
        return http.client.HTTPConnection("127.0.0.1", port)
    return http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(cafile=ca))
for batch in ([("GET", "/items/101"), ("GET", "/items/102/big"), ("POST", "/items/103"), ("GET", "/missing/104")],
              [("GET", "/items/105"), ("GET", "/missing/106")]):
    c = connect()
    for method, path in batch:
        c.request(method, path, body=b"y" * 50 if method == "POST" else None)
        r = c.getresponse()
        r.read()
        print(method, path, r.status)
    c.close()
"#;

/// PY_SERVER twice, listening: over plaintext and over TLS.
struct PyTwins {
    plain: Proc,
    tls: Proc,
    plain_port: u16,
    tls_port: u16,
    /// Both ports, for `--open-port`.
    ports: String,
}

fn py_twins(dir: &Path, cert: &Path, key: &Path) -> PyTwins {
    std::fs::write(dir.join("server.py"), PY_SERVER).unwrap();
    let py = python();
    let server = |port: u16, tls: bool| {
        let (c, k) = if tls { (cert.to_str().unwrap(), key.to_str().unwrap()) } else { ("-", "-") };
        Proc(Command::new(&py).arg(dir.join("server.py")).arg(port.to_string()).args([c, k]).spawn().unwrap())
    };
    let (plain_port, tls_port) = (free_port(), free_port());
    let (plain, tls) = (server(plain_port, false), server(tls_port, true));
    wait_listening(plain_port);
    wait_listening(tls_port);
    PyTwins { plain, tls, plain_port, tls_port, ports: format!("{plain_port},{tls_port}") }
}

/// Python `ssl` server and `http.client` client over TLS give the spans of
/// the same programs over plaintext, request by request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_https_gives_the_spans_of_plain_http() {
    let rx = Receiver::start().await;
    let dir = tmpdir("python");
    let (cert, key) = self_signed(&dir);
    std::fs::write(dir.join("client.py"), PY_CLIENT).unwrap();
    let py = python();
    let PyTwins { plain, tls, plain_port, tls_port, ports } = py_twins(&dir, &cert, &key);
    let agent = start_agent(
        &rx,
        &["--open-port", &ports, "--exe-path", "*/python3*", "--routes", "/items/{id},/items/{id}/big,/missing/{id}"],
    );
    agent.wait_tracked(plain.pid());
    agent.wait_tracked(tls.pid());
    wait_tls_attached(&agent);

    let client =
        |port: u16, ca: &str| gated(Command::new(&py).arg(dir.join("client.py")).arg(port.to_string()).arg(ca));
    let mut plain_client = client(plain_port, "-");
    let mut tls_client = client(tls_port, cert.to_str().unwrap());
    agent.wait_tracked(plain_client.pid());
    agent.wait_tracked(tls_client.pid());
    let plain_out = run(&mut plain_client);
    let tls_out = run(&mut tls_client);
    assert_eq!(plain_out, tls_out, "both clients got the same answers");

    // 6 requests each way: 6 server + 6 client spans per twin.
    let spans = rx.wait_for_spans(24, Duration::from_secs(20)).await;
    let expected = http_summary(&spans, SERVER, plain.pid());
    assert_eq!(expected.len(), 6, "plaintext server spans: {expected:?}");
    assert_eq!(http_summary(&spans, SERVER, tls.pid()), expected, "TLS server spans equal the plaintext ones");
    let expected_clients = http_summary(&spans, CLIENT, plain_client.pid());
    assert_eq!(expected_clients.len(), 6, "plaintext client spans: {expected_clients:?}");
    assert_eq!(http_summary(&spans, CLIENT, tls_client.pid()), expected_clients, "TLS client spans");
    assert_linked(&spans, plain_client.pid(), plain.pid());
    assert_linked(&spans, tls_client.pid(), tls.pid());
    let big =
        spans.iter().find(|s| s.span.kind == SERVER && pid_of(s) == Some(tls.pid()) && path_of(s).ends_with("/big"));
    assert_eq!(big.and_then(|s| s.attr_int("http.response.body.size")), Some(3000), "TLS body framed to its end");

    // The ciphertext was dropped in the kernel: no TLS record reached a parser.
    // The kernel's counters reach /metrics on the agent's 1 s tick, which
    // may not have run since the last spans came in.
    let metrics = wait_for("the kernel's TLS counters", Duration::from_secs(5), || {
        let m = agent.metrics();
        (support::agent::sample_sum(&m, "periscope_tls_plaintext_events_total", &[]) >= 24.0).then_some(m)
    });
    assert!(support::agent::sample_sum(&metrics, "periscope_tls_ciphertext_dropped_total", &[]) > 0.0, "{metrics}");
    assert_eq!(support::agent::sample_sum(&metrics, "periscope_unknown_protocol_connections_total", &[]), 0.0);
    assert_eq!(support::agent::sample_sum(&metrics, "periscope_tls_attach_failed_total", &[]), 0.0);
    assert_eq!(support::agent::sample_sum(&metrics, "periscope_parse_errors_total", &[]), 0.0);
    let _ = std::fs::remove_dir_all(dir);
}

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master: it stops its worker too (SIGKILL would orphan it).
        // SAFETY: kill(2) on the pid of our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// curl over HTTPS against nginx terminating TLS (its worker's event loop:
/// non-blocking SSL_read returning WANT_READ) equals curl over HTTP to the
/// same locations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_https_to_nginx_gives_the_spans_of_plain_http() {
    let rx = Receiver::start().await;
    let dir = tmpdir("nginx");
    let (cert, key) = self_signed(&dir);
    let (plain_port, tls_port) = (free_port(), free_port());
    let locations =
        "location /ok/ { return 200 \"fine\\n\"; } location /created/ { return 201; } location / { return 404; }";
    let conf = format!(
        "daemon off; pid {d}/nginx.pid; error_log stderr error; worker_processes 1; user root;\n\
         events {{ worker_connections 64; }}\n\
         http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
           server {{ listen 127.0.0.1:{plain_port}; {locations} }}\n\
           server {{ listen 127.0.0.1:{tls_port} ssl; ssl_certificate {c}; ssl_certificate_key {k}; {locations} }} }}\n",
        d = dir.display(),
        c = cert.display(),
        k = key.display(),
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let nginx = Nginx(
        Command::new("nginx")
            .args(["-p", dir.to_str().unwrap(), "-c", dir.join("nginx.conf").to_str().unwrap()])
            .stdout(Stdio::null())
            .spawn()
            .expect("nginx (apt-get install nginx-light)"),
    );
    wait_listening(plain_port);
    wait_listening(tls_port);
    let ports = format!("{plain_port},{tls_port}");
    let agent = start_agent(
        &rx,
        &["--open-port", &ports, "--exe-path", "*/curl", "--routes", "/ok/{id},/created/{id},/nope/{id}"],
    );
    agent.wait_tracked(nginx.0.id());
    wait_tls_attached(&agent);

    // One curl process per scheme, reading its requests from stdin once
    // watched: keep-alive requests on one connection.
    let curl = || Proc(Command::new("curl").args(["-s", "-K", "-"]).stdin(Stdio::piped()).spawn().expect("curl"));
    let config = |scheme: &str, port: u16| {
        let mut c = String::new();
        for (i, (method, path)) in
            [("GET", "/ok/201"), ("GET", "/ok/202"), ("POST", "/created/203"), ("GET", "/nope/204")].iter().enumerate()
        {
            if i > 0 {
                c += "next\n";
            }
            c += &format!(
                "url = \"{scheme}://127.0.0.1:{port}{path}\"\noutput = \"/dev/null\"\ncacert = \"{}\"\n",
                cert.display()
            );
            c += &format!("request = \"{method}\"\n");
            if *method == "POST" {
                c += &format!("data = \"{}\"\n", "z".repeat(40));
            }
        }
        c
    };
    let mut plain_curl = curl();
    let mut tls_curl = curl();
    agent.wait_tracked(plain_curl.pid());
    agent.wait_tracked(tls_curl.pid());
    for (p, input) in [(&mut plain_curl, config("http", plain_port)), (&mut tls_curl, config("https", tls_port))] {
        let mut stdin = p.0.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        drop(stdin);
        let status = wait_for("curl to finish", Duration::from_secs(30), || p.0.try_wait().ok().flatten());
        assert!(status.success(), "curl: {status}");
    }

    let spans = rx.wait_for_spans(16, Duration::from_secs(20)).await;
    let on_port =
        |port: u16| move |s: &ReceivedSpan| s.span.kind == SERVER && s.attr_int("server.port") == Some(port as i64);
    let expected = http_summary_where(&spans, on_port(plain_port));
    assert_eq!(expected.len(), 4, "plaintext nginx spans: {expected:?}");
    assert_eq!(http_summary_where(&spans, on_port(tls_port)), expected, "TLS nginx spans equal the plaintext ones");
    let expected_clients = http_summary(&spans, CLIENT, plain_curl.pid());
    assert_eq!(expected_clients.len(), 4, "plaintext curl spans: {expected_clients:?}");
    assert_eq!(http_summary(&spans, CLIENT, tls_curl.pid()), expected_clients, "TLS curl spans");
    assert_linked_where(&spans, plain_curl.pid(), on_port(plain_port));
    assert_linked_where(&spans, tls_curl.pid(), on_port(tls_port));
    let metrics = agent.metrics();
    assert_eq!(
        support::agent::sample_sum(&metrics, "periscope_unknown_protocol_connections_total", &[]),
        0.0,
        "{metrics}"
    );
    assert!(support::agent::sample_sum(&metrics, "periscope_tls_ciphertext_dropped_total", &[]) > 0.0);
    drop(nginx);
    let _ = std::fs::remove_dir_all(dir);
}

/// (span name, db.query.text, db.response.status_code or "") of the SQL
/// spans of `kind` from `pid`, in the order the statements were sent.
fn sql_summary(spans: &[ReceivedSpan], kind: i32, pid: u32) -> Vec<(String, String, String)> {
    let mut v: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.attr_str("db.system.name").is_some() && s.span.kind == kind && pid_of(s) == Some(pid))
        .collect();
    v.sort_by_key(|s| s.span.start_time_unix_nano);
    v.iter()
        .map(|s| {
            (
                s.span.name.clone(),
                s.attr_str("db.query.text").unwrap_or_default(),
                s.attr_str("db.response.status_code").unwrap_or_default(),
            )
        })
        .collect()
}

/// psql with sslmode=require against PostgreSQL with ssl=on: the SQL spans
/// of the same script with sslmode=disable, on the client and on the
/// server's backends (SSLRequest answered `S`, then the decrypted startup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_sslmode_require_gives_the_sql_spans_of_plaintext() {
    let rx = Receiver::start().await;
    let dir = tmpdir("pg");
    let (cert, key) = self_signed(&dir);
    // The server reads its key as user postgres, mode 0600.
    let uid: u32 = String::from_utf8(Command::new("id").args(["-u", "postgres"]).output().unwrap().stdout)
        .unwrap()
        .trim()
        .parse()
        .expect("user postgres (apt-get install postgresql)");
    for f in [&cert, &key] {
        std::os::unix::fs::chown(f, Some(uid), None).unwrap();
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let pg = Postgres::start_with(
        "tls",
        &["ssl=on", &format!("ssl_cert_file={}", cert.display()), &format!("ssl_key_file={}", key.display())],
    );
    let script = dir.join("script.sql");
    std::fs::write(
        &script,
        "INSERT INTO unicorn (name) VALUES ('tls-twin-301');\n\
         SELECT name FROM unicorn WHERE id = 302;\n\
         UPDATE unicorn SET name = 'renamed-303' WHERE name = 'nobody-303';\n\
         SELECT nope FROM unicorn WHERE id = 304;\n\
         DELETE FROM unicorn WHERE name = 'tls-twin-301';\n",
    )
    .unwrap();
    let me = std::process::id().to_string();
    let agent = start_agent(&rx, &["--open-port", &pg.port.to_string(), "--pid", &me]);
    agent.wait_tracked(pg.pid());
    wait_tls_attached(&agent);

    let psql = format!("{PG_BIN}/psql");
    let port = pg.port.to_string();
    let script_arg = script.to_str().unwrap();
    let client = |mode: &str| {
        let conn = format!("host=127.0.0.1 port={port} user={USER} dbname={DATABASE} sslmode={mode}");
        gated_exec(&psql, &["-X", "-q", "-d", &conn, "-f", script_arg], &[("PGPASSWORD", PASSWORD)])
    };
    let mut plain = client("disable");
    agent.wait_tracked(plain.pid());
    run(&mut plain);
    let mut tls = client("require");
    agent.wait_tracked(tls.pid());
    let out = run(&mut tls);
    assert!(out.contains("nope"), "the failing statement failed: {out}");

    // 5 statements, client and server side, each way.
    let spans = rx.wait_for_spans(20, Duration::from_secs(20)).await;
    let expected = sql_summary(&spans, CLIENT, plain.pid());
    assert_eq!(expected.len(), 5, "plaintext psql spans: {expected:?}");
    assert_eq!(expected[3].2, "42703", "undefined column");
    assert_eq!(sql_summary(&spans, CLIENT, tls.pid()), expected, "TLS psql spans equal the plaintext ones");
    // Server side: one backend per connection, children of the postmaster.
    let mut backends: Vec<u32> = spans
        .iter()
        .filter(|s| s.span.kind == SERVER && s.attr_str("db.system.name").is_some())
        .filter_map(pid_of)
        .collect();
    backends.sort_unstable();
    backends.dedup();
    assert_eq!(backends.len(), 2, "a backend per connection: {backends:?}");
    let first = sql_summary(&spans, SERVER, backends[0]);
    assert_eq!(first.len(), 5, "server spans: {first:?}");
    assert_eq!(sql_summary(&spans, SERVER, backends[1]), first, "TLS backend's spans equal the plaintext one's");
    for s in spans.iter().filter(|s| s.attr_str("db.system.name").is_some()) {
        assert_eq!(s.attr_str("db.namespace").as_deref(), Some(DATABASE), "the decrypted startup named the database");
    }
    assert!(agent.sample_sum("periscope_tls_ciphertext_dropped_total", &[]) > 0.0);
    let _ = std::fs::remove_dir_all(dir);
}

/// Loads OpenSSL only once released (`http.client` imports `ssl`), waits
/// for the agent's maps rescan, then makes two HTTPS requests.
const PY_LATE_CLIENT: &str = r#"
import ctypes, sys, time
port, ca, fake = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctypes.CDLL(fake)
sys.stdin.readline()
import http.client, ssl
time.sleep(4)
c = http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(cafile=ca))
for path in ["/items/401", "/missing/402"]:
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    print(path, r.status)
"#;

/// A TLS library loaded after the process was first watched is found by
/// the rescan of watched processes' maps, and its uprobes attach then (the
/// server, which maps the same file, is not watched: nothing else attaches
/// them). A `libssl` that is not OpenSSL (zlib under that name) is one
/// counted failure, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_loaded_after_the_process_was_watched_is_instrumented() {
    let rx = Receiver::start().await;
    let dir = tmpdir("late");
    let (cert, key) = self_signed(&dir);
    std::fs::write(dir.join("server.py"), PY_SERVER).unwrap();
    std::fs::write(dir.join("client.py"), PY_LATE_CLIENT).unwrap();
    let py = python();
    let port = free_port();
    let _server =
        Proc(Command::new(&py).arg(dir.join("server.py")).arg(port.to_string()).arg(&cert).arg(&key).spawn().unwrap());
    wait_listening(port);
    let fake = dir.join("libssl-fake.so.3");
    std::fs::copy("/usr/lib/x86_64-linux-gnu/libz.so.1", &fake).expect("zlib (a library that is not OpenSSL)");
    let mut client = gated(Command::new(&py).arg(dir.join("client.py")).arg(port.to_string()).arg(&cert).arg(&fake));
    let agent = start_agent(&rx, &["--pid", &client.pid().to_string(), "--routes", "/items/{id},/missing/{id}"]);
    agent.wait_tracked(client.pid());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(agent.sample_sum("periscope_tls_libraries_attached_total", &[]), 0.0, "no TLS library mapped yet");
    wait_for("the fake libssl to be refused", Duration::from_secs(10), || {
        (agent.sample_sum("periscope_tls_attach_failed_total", &["reason=\"libssl\""]) == 1.0).then_some(())
    });
    let out = run(&mut client);
    assert_eq!(out, "/items/401 200\n/missing/402 404\n");

    let spans = rx.wait_for_spans(2, Duration::from_secs(20)).await;
    assert_eq!(
        http_summary(&spans, CLIENT, client.pid()),
        vec![
            ("GET /items/{id}".to_owned(), "/items/401".to_owned(), 200),
            ("GET /missing/{id}".to_owned(), "/missing/402".to_owned(), 404),
        ],
        "client spans of the late-loaded library"
    );
    assert_eq!(agent.sample_sum("periscope_tls_libraries_attached_total", &[]), 1.0);
    assert_eq!(agent.sample_sum("periscope_tls_attach_failed_total", &[]), 1.0, "the fake one, once");
    let _ = std::fs::remove_dir_all(dir);
}

/// One server process: HTTP on argv[2], HTTPS on argv[3].
const NODE_SERVER: &str = r#"
const http = require('http'), https = require('https'), fs = require('fs');
const [, , plain, tls, cert, key] = process.argv;
const handler = (req, res) => {
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', () => {
    if (req.url.startsWith('/ok/')) { res.writeHead(200); return res.end('x'.repeat(req.url.endsWith('/big') ? 5000 : 3)); }
    if (req.method === 'POST') { res.writeHead(201); return res.end('created ' + body.length); }
    res.writeHead(404); res.end();
  });
};
http.createServer(handler).listen(Number(plain), '127.0.0.1');
https.createServer({ key: fs.readFileSync(key), cert: fs.readFileSync(cert) }, handler).listen(Number(tls), '127.0.0.1');
"#;

/// Keep-alive requests with the http or https module (argv[3]: a CA, or -).
const NODE_CLIENT: &str = r#"
const http = require('http'), https = require('https'), fs = require('fs');
const [, , port, ca] = process.argv;
const mod = ca === '-' ? http : https;
const agent = new mod.Agent({ keepAlive: true, maxSockets: 1, ...(ca === '-' ? {} : { ca: fs.readFileSync(ca) }) });
function call(method, path, body) {
  return new Promise((resolve, reject) => {
    const req = mod.request({ host: '127.0.0.1', port: Number(port), method, path, agent }, (res) => {
      res.resume(); res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', reject);
    req.end(body);
  });
}
process.stdin.once('data', async () => {
  for (const [m, p, b] of [['GET', '/ok/501'], ['GET', '/ok/502/big'], ['POST', '/items/503', 'q'.repeat(30)], ['GET', '/nope/504']]) {
    console.log(m, p, await call(m, p, b));
  }
  agent.destroy();
  process.exit(0);
});
"#;

/// Node's `https` (OpenSSL linked into /usr/bin/node, on memory BIOs: the
/// SSL object is tied to the socket the same thread just read) gives the
/// spans of its `http` twin, server and client side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_https_gives_the_spans_of_plain_http() {
    let rx = Receiver::start().await;
    let dir = tmpdir("node");
    let (cert, key) = self_signed(&dir);
    std::fs::write(dir.join("server.js"), NODE_SERVER).unwrap();
    std::fs::write(dir.join("client.js"), NODE_CLIENT).unwrap();
    let (plain_port, tls_port) = (free_port(), free_port());
    let server = Proc(
        Command::new("node")
            .arg(dir.join("server.js"))
            .args([plain_port.to_string(), tls_port.to_string()])
            .arg(&cert)
            .arg(&key)
            .spawn()
            .expect("node (apt-get install nodejs)"),
    );
    wait_listening(plain_port);
    wait_listening(tls_port);
    let ports = format!("{plain_port},{tls_port}");
    let agent = start_agent(
        &rx,
        &["--open-port", &ports, "--exe-path", "*/node", "--routes", "/ok/{id},/ok/{id}/big,/items/{id},/nope/{id}"],
    );
    agent.wait_tracked(server.pid());
    wait_for("the TLS uprobes on node", Duration::from_secs(20), || {
        (agent.sample_sum("periscope_tls_libraries_attached_total", &["reason=\"embedded\""]) >= 1.0).then_some(())
    });

    let client =
        |port: u16, ca: &str| gated(Command::new("node").arg(dir.join("client.js")).arg(port.to_string()).arg(ca));
    let mut plain_client = client(plain_port, "-");
    let mut tls_client = client(tls_port, cert.to_str().unwrap());
    agent.wait_tracked(plain_client.pid());
    agent.wait_tracked(tls_client.pid());
    let plain_out = run(&mut plain_client);
    assert_eq!(run(&mut tls_client), plain_out);

    let spans = rx.wait_for_spans(16, Duration::from_secs(20)).await;
    let on_port = |port: u16| {
        let server = server.pid();
        move |s: &ReceivedSpan| {
            s.span.kind == SERVER && pid_of(s) == Some(server) && s.attr_int("server.port") == Some(port as i64)
        }
    };
    let expected = http_summary_where(&spans, on_port(plain_port));
    assert_eq!(expected.len(), 4, "plaintext node server spans: {expected:?}");
    assert_eq!(http_summary_where(&spans, on_port(tls_port)), expected, "TLS node server spans");
    let expected_clients = http_summary(&spans, CLIENT, plain_client.pid());
    assert_eq!(expected_clients.len(), 4, "plaintext node client spans: {expected_clients:?}");
    assert_eq!(http_summary(&spans, CLIENT, tls_client.pid()), expected_clients, "TLS node client spans");
    assert_linked_where(&spans, plain_client.pid(), on_port(plain_port));
    assert_linked_where(&spans, tls_client.pid(), on_port(tls_port));
    let _ = std::fs::remove_dir_all(dir);
}

/// Go's crypto/tls (no OpenSSL: the uprobes go on the Read, Write and
/// handshakeContext of tls.Conn in the executable, entries and RET
/// instructions, context keyed by goroutine): a net/http server and
/// http.Client over TLS give the spans of their plaintext twins
/// (fixtures/go/tls_pair.go), built normal and stripped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_crypto_tls_gives_the_spans_of_plain_http() {
    for stripped in [false, true] {
        go_tls_twins(stripped).await;
    }
}

async fn go_tls_twins(stripped: bool) {
    let (name, flags): (&str, &[&str]) =
        if stripped { ("tls_pair_stripped", &["-ldflags=-s -w"]) } else { ("tls_pair", &[]) };
    let exe = support::go::build("tls_pair", name, flags);
    let rx = Receiver::start().await;
    let dir = tmpdir(name);
    let (cert, key) = self_signed(&dir);
    let server = |port: u16, tls: bool| {
        let (c, k) = if tls { (cert.to_str().unwrap(), key.to_str().unwrap()) } else { ("-", "-") };
        Proc(Command::new(&exe).args(["server", &port.to_string(), c, k]).spawn().unwrap())
    };
    let (plain_port, tls_port) = (free_port(), free_port());
    let plain = server(plain_port, false);
    let tls = server(tls_port, true);
    wait_listening(plain_port);
    wait_listening(tls_port);
    let ports = format!("{plain_port},{tls_port}");
    let exe_glob = format!("*/{name}");
    let agent = start_agent(
        &rx,
        &["--open-port", &ports, "--exe-path", &exe_glob, "--routes", "/items/{id},/items/{id}/big,/missing/{id}"],
    );
    agent.wait_tracked(plain.pid());
    agent.wait_tracked(tls.pid());

    let client = |port: u16, ca: &str| gated(Command::new(&exe).args(["client", &port.to_string(), ca]));
    let mut plain_client = client(plain_port, "-");
    let mut tls_client = client(tls_port, cert.to_str().unwrap());
    agent.wait_tracked(plain_client.pid());
    agent.wait_tracked(tls_client.pid());
    // Servers and clients, each a Go process with crypto/tls linked in.
    wait_for("the crypto/tls uprobes of 4 Go processes", Duration::from_secs(20), || {
        (agent.sample_sum("periscope_tls_libraries_attached_total", &["reason=\"go crypto/tls\""]) >= 4.0).then_some(())
    });
    let plain_out = run(&mut plain_client);
    assert_eq!(run(&mut tls_client), plain_out, "both clients got the same answers");
    let spans = rx.wait_for_spans(24, Duration::from_secs(20)).await;
    let expected = http_summary(&spans, SERVER, plain.pid());
    assert_eq!(expected.len(), 6, "plaintext Go server spans ({name}): {expected:?}");
    assert_eq!(http_summary(&spans, SERVER, tls.pid()), expected, "TLS Go server spans ({name})");
    let expected_clients = http_summary(&spans, CLIENT, plain_client.pid());
    assert_eq!(expected_clients.len(), 6, "plaintext Go client spans ({name}): {expected_clients:?}");
    assert_eq!(http_summary(&spans, CLIENT, tls_client.pid()), expected_clients, "TLS Go client spans ({name})");
    assert_linked(&spans, plain_client.pid(), plain.pid());
    assert_linked(&spans, tls_client.pid(), tls.pid());
    let big =
        spans.iter().find(|s| s.span.kind == SERVER && pid_of(s) == Some(tls.pid()) && path_of(s).ends_with("/big"));
    assert_eq!(big.and_then(|s| s.attr_int("http.response.body.size")), Some(3000), "TLS body framed to its end");
    // The client waits 300 ms before /items/102/big on its kept-alive
    // connection, while the server's goroutine is parked in tls.Conn.Read:
    // the span starts when the request arrives, not when Read was entered
    // (server spans start at the exit of the read that brought the head).
    for s in spans.iter().filter(|s| s.span.kind == SERVER && pid_of(s) == Some(tls.pid())) {
        let ms = (s.span.end_time_unix_nano - s.span.start_time_unix_nano) as f64 / 1e6;
        assert!(ms < 150.0, "TLS server span of {} lasted {ms:.1} ms", path_of(s));
    }

    // The kernel's counters reach /metrics on the agent's 1 s tick, which
    // may not have run since the last spans came in.
    let metrics = wait_for("the kernel's TLS counters", Duration::from_secs(5), || {
        let m = agent.metrics();
        (support::agent::sample_sum(&m, "periscope_tls_plaintext_events_total", &[]) >= 24.0).then_some(m)
    });
    assert!(support::agent::sample_sum(&metrics, "periscope_tls_ciphertext_dropped_total", &[]) > 0.0, "{metrics}");
    assert_eq!(support::agent::sample_sum(&metrics, "periscope_tls_plaintext_dropped_total", &[]), 0.0, "{metrics}");
    assert_eq!(support::agent::sample_sum(&metrics, "periscope_requests_unmatched_total", &[]), 0.0, "{metrics}");
    assert_eq!(support::agent::sample_sum(&metrics, "periscope_unknown_protocol_connections_total", &[]), 0.0);
    assert_eq!(support::agent::sample_sum(&metrics, "periscope_parse_errors_total", &[]), 0.0, "{metrics}");
    let _ = std::fs::remove_dir_all(dir);
}

/// HTTP/2 over TLS (ALPN h2, Go's http.Client and server over crypto/tls):
/// the plaintext of the TLS uprobes goes through the HTTP/2 parser; each
/// stream gives the span its HTTP/1.1-over-TLS twin gives, with
/// `network.protocol.version` "2", under its client span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_http2_over_tls_gives_the_spans_of_http1() {
    let exe = support::go::build("tls_pair", "tls_pair", &[]);
    let rx = Receiver::start().await;
    let dir = tmpdir("h2");
    let (cert, key) = self_signed(&dir);
    let port = free_port();
    let server = Proc(
        Command::new(&exe)
            .args(["server", &port.to_string(), cert.to_str().unwrap(), key.to_str().unwrap()])
            .spawn()
            .unwrap(),
    );
    wait_listening(port);
    let agent = start_agent(
        &rx,
        &[
            "--open-port",
            &port.to_string(),
            "--exe-path",
            "*/tls_pair",
            "--routes",
            "/items/{id},/items/{id}/big,/missing/{id}",
        ],
    );
    agent.wait_tracked(server.pid());
    let client = |mode: &str| gated(Command::new(&exe).args([mode, &port.to_string(), cert.to_str().unwrap()]));
    let mut h1 = client("client");
    let mut h2 = client("client-h2");
    agent.wait_tracked(h1.pid());
    agent.wait_tracked(h2.pid());
    wait_for("the crypto/tls uprobes of 3 Go processes", Duration::from_secs(20), || {
        (agent.sample_sum("periscope_tls_libraries_attached_total", &["reason=\"go crypto/tls\""]) >= 3.0).then_some(())
    });
    let h1_out = run(&mut h1);
    assert_eq!(run(&mut h2), h1_out, "both clients got the same answers");

    let spans = rx.wait_for_spans(24, Duration::from_secs(20)).await;
    let version = |v: &'static str| {
        let server = server.pid();
        move |s: &ReceivedSpan| {
            s.span.kind == SERVER
                && pid_of(s) == Some(server)
                && s.attr_str("network.protocol.version").as_deref() == Some(v)
        }
    };
    let expected = http_summary_where(&spans, version("1.1"));
    assert_eq!(expected.len(), 6, "HTTP/1.1 server spans: {expected:?}");
    assert_eq!(http_summary_where(&spans, version("2")), expected, "HTTP/2 server spans");
    let expected_clients = http_summary(&spans, CLIENT, h1.pid());
    assert_eq!(expected_clients.len(), 6, "HTTP/1.1 client spans: {expected_clients:?}");
    assert_eq!(http_summary(&spans, CLIENT, h2.pid()), expected_clients, "HTTP/2 client spans");
    assert_linked_where(&spans, h1.pid(), version("1.1"));
    assert_linked_where(&spans, h2.pid(), version("2"));
    let metrics = agent.metrics();
    assert_eq!(support::agent::sample_sum(&metrics, "periscope_tls_plaintext_dropped_total", &[]), 0.0, "{metrics}");
    assert_eq!(support::agent::sample_sum(&metrics, "periscope_requests_unmatched_total", &[]), 0.0, "{metrics}");
    assert_eq!(support::agent::sample_sum(&metrics, "periscope_unknown_protocol_connections_total", &[]), 0.0);
    let _ = std::fs::remove_dir_all(dir);
}

/// GnuTLS (wget links libgnutls, not OpenSSL): gnutls_record_send/_recv and
/// gnutls_handshake get the programs of SSL_write/SSL_read/SSL_do_handshake;
/// wget over HTTPS gives the client spans of wget over plaintext, under
/// which the (OpenSSL) server's spans hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wget_over_gnutls_gives_the_client_spans_of_plain_http() {
    let rx = Receiver::start().await;
    let dir = tmpdir("gnutls");
    let (cert, key) = self_signed(&dir);
    let PyTwins { plain, tls, plain_port, tls_port, ports } = py_twins(&dir, &cert, &key);
    let agent = start_agent(&rx, &["--open-port", &ports, "--exe-path", "*/wget", "--routes", "/items/{id}"]);
    agent.wait_tracked(plain.pid());
    agent.wait_tracked(tls.pid());
    // One wget per scheme, reading its URLs from stdin once watched (and
    // its libgnutls instrumented): keep-alive requests on one connection.
    let wget = || {
        Proc(
            Command::new("wget")
                .args(["-q", "-O", "/dev/null", "--ca-certificate"])
                .arg(&cert)
                .args(["-i", "-"])
                .stdin(Stdio::piped())
                .spawn()
                .expect("wget"),
        )
    };
    let mut plain_client = wget();
    let mut tls_client = wget();
    agent.wait_tracked(plain_client.pid());
    agent.wait_tracked(tls_client.pid());
    wait_for("the GnuTLS uprobes", Duration::from_secs(20), || {
        (agent.sample_sum("periscope_tls_libraries_attached_total", &["reason=\"gnutls\""]) >= 1.0).then_some(())
    });
    for (p, scheme, port) in [(&mut plain_client, "http", plain_port), (&mut tls_client, "https", tls_port)] {
        let mut stdin = p.0.stdin.take().unwrap();
        for id in [701, 702, 703] {
            writeln!(stdin, "{scheme}://127.0.0.1:{port}/items/{id}").unwrap();
        }
        drop(stdin);
        let status = wait_for("wget to finish", Duration::from_secs(30), || p.0.try_wait().ok().flatten());
        assert!(status.success(), "wget {scheme}: {status}");
    }
    let (plain_client, tls_client) = (plain_client.pid(), tls_client.pid());

    let spans = rx.wait_for_spans(12, Duration::from_secs(20)).await;
    let expected = http_summary(&spans, CLIENT, plain_client);
    assert_eq!(expected.len(), 3, "plaintext wget client spans: {expected:?}");
    assert_eq!(http_summary(&spans, CLIENT, tls_client), expected, "GnuTLS wget client spans");
    assert_linked(&spans, plain_client, plain.pid());
    assert_linked(&spans, tls_client, tls.pid());
    let metrics = agent.metrics();
    assert_eq!(support::agent::sample_sum(&metrics, "periscope_tls_attach_failed_total", &[]), 0.0, "{metrics}");
    let _ = std::fs::remove_dir_all(dir);
}

/// (method, path, status) of each request of an HTTP/2 test, in the order
/// it is asked; `run` (the test's pid) in the ids so no other run's span
/// passes. A PUT with a body (the server stores it: 201), not a POST
/// answered by nginx's `return` before the body came: curl 7.88.1 over h2c
/// then often fails that stream ("stream 1 closed"), with or without the
/// agent.
fn h2_plan(run: u32) -> Vec<(&'static str, String, i64)> {
    vec![
        ("GET", format!("/ok/{run}-1"), 200),
        ("GET", format!("/ok/{run}-2"), 200),
        ("PUT", format!("/created/{run}-3"), 201),
        ("GET", format!("/fail/{run}-4"), 503),
        ("GET", format!("/nope/{run}-5"), 404),
        ("GET", format!("/files/{run}-6"), 200),
        ("GET", format!("/ok/{run}-7"), 200),
    ]
}

/// Each request of `plan` gave exactly one server span (of `server`) and
/// one client span (of pid `client`), both with `network.protocol.version`
/// "2", its method and status, the server's a child of the client's in the
/// same trace. Returns the (name, path, status) summary of each side.
#[allow(clippy::type_complexity)]
fn assert_h2_streams(
    spans: &[ReceivedSpan],
    plan: &[(&str, String, i64)],
    server: impl Fn(&ReceivedSpan) -> bool,
    client: u32,
) -> (Vec<(String, String, i64)>, Vec<(String, String, i64)>) {
    let one = |kind: i32, keep: &dyn Fn(&ReceivedSpan) -> bool, path: &str| -> &ReceivedSpan {
        let found: Vec<&ReceivedSpan> =
            spans.iter().filter(|s| s.span.kind == kind && keep(s) && path_of(s) == path).collect();
        assert_eq!(found.len(), 1, "spans of kind {kind} for {path}: {found:#?}");
        found[0]
    };
    for (method, path, status) in plan {
        let s = one(SERVER, &server, path);
        let c = one(CLIENT, &|s| pid_of(s) == Some(client), path);
        for span in [s, c] {
            assert_eq!(span.attr_str("network.protocol.version").as_deref(), Some("2"), "{path}");
            assert_eq!(span.attr_str("http.request.method").as_deref(), Some(*method), "{path}");
            assert_eq!(span.attr_int("http.response.status_code"), Some(*status), "{path}");
        }
        assert_eq!(hex(&s.span.parent_span_id), hex(&c.span.span_id), "parent of the server span of {path}");
        assert_eq!(hex(&s.span.trace_id), hex(&c.span.trace_id), "trace of {path}");
    }
    let summary = |kind: i32, keep: &dyn Fn(&ReceivedSpan) -> bool| {
        http_summary_where(spans, |s| s.span.kind == kind && keep(s) && plan.iter().any(|(_, p, _)| *p == path_of(s)))
    };
    let servers = summary(SERVER, &server);
    let clients = summary(CLIENT, &|s| pid_of(s) == Some(client));
    assert_eq!(servers.len(), plan.len(), "one server span per stream: {servers:#?}");
    assert_eq!(clients.len(), plan.len(), "one client span per stream: {clients:#?}");
    (servers, clients)
}

/// The spans once `n` came, or what came in 20 s (a missing one is named
/// by the checks; the agent's non-zero counters are printed).
async fn h2_spans(rx: &Receiver, agent: &Agent, n: usize) -> Vec<ReceivedSpan> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while rx.spans().len() < n && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let spans = rx.spans();
    if spans.len() < n {
        let m = agent.metrics();
        let counters: Vec<&str> = m.lines().filter(|l| l.starts_with("periscope_") && !l.ends_with(" 0")).collect();
        eprintln!("{} spans of {n}; counters: {counters:#?}", spans.len());
    }
    spans
}

/// The agent's counters after an HTTP/2-over-TLS test: every stream found
/// its partner, no plaintext was lost, the ciphertext stayed in the kernel.
fn assert_h2_counters(agent: &Agent) {
    let m = agent.metrics();
    for metric in [
        "periscope_requests_unmatched_total",
        "periscope_tls_plaintext_dropped_total",
        "periscope_unknown_protocol_connections_total",
        "periscope_parse_errors_total",
    ] {
        assert_eq!(support::agent::sample_sum(&m, metric, &[]), 0.0, "{metric}: {m}");
    }
    // OpenSSL's (curl's libgnutls, mapped too, is not under test).
    for kind in ["reason=\"libssl\"", "reason=\"embedded\""] {
        assert_eq!(support::agent::sample_sum(&m, "periscope_tls_attach_failed_total", &[kind]), 0.0, "{m}");
    }
    assert!(support::agent::sample_sum(&m, "periscope_tls_ciphertext_dropped_total", &[]) > 0.0, "{m}");
}

/// Size of the static file nginx serves for /files/: five of nginx's 8 KB
/// DATA frames (`http2_chunk_size`) in three 16 KB TLS records, each frame
/// header found by the kernel's walk of the plaintext, the payloads skipped.
const H2_FILE_BYTES: usize = 40_000;

/// nginx 1.22 with `listen ... ssl http2` (ALPN h2) and curl `--http2` over
/// https (libcurl on OpenSSL + nghttp2), one connection for all requests,
/// against the same nginx and curl over h2c (prior knowledge): each stream
/// gives the server and client spans of its h2c twin, version 2, linked.
/// Ground truth: the statuses curl printed and nginx's own access log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http2_over_tls_to_nginx_gives_the_spans_of_h2c() {
    let rx = Receiver::start().await;
    let dir = tmpdir("nginx-h2");
    let (cert, key) = self_signed(&dir);
    let run_id = std::process::id();
    let plan = h2_plan(run_id);
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::write(dir.join(format!("files/{run_id}-6")), "f".repeat(H2_FILE_BYTES)).unwrap();
    let (plain_port, tls_port) = (free_port(), free_port());
    let locations = format!(
        "location /ok/ {{ return 200 \"fine\\n\"; }} location /created/ {{ root {d}/$server_port; dav_methods PUT; create_full_put_path on; }} \
         location /fail/ {{ return 503; }} location /files/ {{ root {d}; }} location / {{ return 404; }}",
        d = dir.display()
    );
    let conf = format!(
        "daemon off; pid {d}/nginx.pid; error_log stderr error; worker_processes 1; user root;\n\
         events {{ worker_connections 64; }}\n\
         http {{ log_format h2 '$server_port $connection $server_protocol $request_method $uri $status';\n\
           access_log {d}/access.log h2; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
           server {{ listen 127.0.0.1:{plain_port} http2; {locations} }}\n\
           server {{ listen 127.0.0.1:{tls_port} ssl http2; ssl_certificate {c}; ssl_certificate_key {k}; {locations} }} }}\n",
        d = dir.display(),
        c = cert.display(),
        k = key.display(),
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let nginx = Nginx(
        Command::new("nginx")
            .args(["-p", dir.to_str().unwrap(), "-c", dir.join("nginx.conf").to_str().unwrap()])
            .stdout(Stdio::null())
            .spawn()
            .expect("nginx (apt-get install nginx-light)"),
    );
    wait_listening(plain_port);
    wait_listening(tls_port);
    // wait_listening's probes are connections too: the log starts after them.
    let ports = format!("{plain_port},{tls_port}");
    let agent = start_agent(
        &rx,
        &["--open-port", &ports, "--exe-path", "*/curl", "--routes", "/ok/{id},/created/{id},/fail/{id},/files/{id}"],
    );
    agent.wait_tracked(nginx.0.id());
    wait_tls_attached(&agent);

    // One curl per scheme, its requests read from stdin once watched. h2c:
    // prior knowledge given once, before -K (curl 7.88.1 given it again
    // after `next` reuses the connection and sends nothing: exit 16).
    let curl = |version: &str| {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", version, "-K", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped());
        Proc(cmd.spawn().unwrap())
    };
    let config = |tls: bool| {
        let (scheme, port) = if tls { ("https", tls_port) } else { ("http", plain_port) };
        let mut c = String::new();
        for (i, (method, path, _)) in plan.iter().enumerate() {
            if i > 0 {
                c += "next\n";
            }
            c += &format!("url = \"{scheme}://127.0.0.1:{port}{path}\"\noutput = \"/dev/null\"\n");
            c += &format!("cacert = \"{}\"\nrequest = \"{method}\"\n", cert.display());
            c += "write-out = \"%{http_version} %{http_code}\\n\"\n";
            if *method == "PUT" {
                c += &format!("data = \"{}\"\n", "z".repeat(40));
            }
        }
        c
    };
    let mut plain_curl = curl("--http2-prior-knowledge");
    let mut tls_curl = curl("--http2");
    agent.wait_tracked(plain_curl.pid());
    agent.wait_tracked(tls_curl.pid());
    let said: String = plan.iter().map(|(_, _, status)| format!("2 {status}\n")).collect();
    for (p, tls) in [(&mut plain_curl, false), (&mut tls_curl, true)] {
        p.0.stdin.take().unwrap().write_all(config(tls).as_bytes()).unwrap();
        let status = wait_for("curl to finish", Duration::from_secs(30), || p.0.try_wait().ok().flatten());
        assert!(status.success(), "curl: {status}");
        let mut out = String::new();
        std::io::Read::read_to_string(p.0.stdout.as_mut().unwrap(), &mut out).unwrap();
        assert_eq!(out, said, "curl (tls: {tls}) spoke HTTP/2 and got the statuses nginx chose");
    }
    // nginx's own view: every request HTTP/2.0, one connection per port.
    let log = std::fs::read_to_string(dir.join("access.log")).unwrap();
    for port in [plain_port, tls_port] {
        let lines: Vec<Vec<&str>> = log
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .filter(|f| f[0] == port.to_string() && f[4].contains(&format!("/{run_id}-")))
            .collect();
        let seen: Vec<(&str, &str, i64)> = lines.iter().map(|f| (f[3], f[4], f[5].parse().unwrap())).collect();
        let want: Vec<(&str, &str, i64)> = plan.iter().map(|(m, p, s)| (*m, p.as_str(), *s)).collect();
        assert_eq!(seen, want, "nginx access log, port {port}:\n{log}");
        assert!(lines.iter().all(|f| f[2] == "HTTP/2.0" && f[1] == lines[0][1]), "one h2 connection:\n{log}");
        let stored = std::fs::read(dir.join(format!("{port}/created/{run_id}-3"))).unwrap();
        assert_eq!(stored.len(), 40, "the PUT's body reached nginx");
    }

    let spans = h2_spans(&rx, &agent, 4 * plan.len()).await;
    let on_port = |port: u16| move |s: &ReceivedSpan| s.attr_int("server.port") == Some(port as i64);
    let tls = assert_h2_streams(&spans, &plan, on_port(tls_port), tls_curl.pid());
    let plain = assert_h2_streams(&spans, &plan, on_port(plain_port), plain_curl.pid());
    assert_eq!(tls, plain, "the h2-over-TLS spans equal the h2c ones");
    assert!(spans.iter().filter(|s| s.span.kind == SERVER).all(|s| s.service_name() == Some("nginx")));
    assert_h2_counters(&agent);
    drop(nginx);
    let _ = std::fs::remove_dir_all(dir);
}

/// Node's http2: one server process with an h2c and a TLS (ALPN h2) port;
/// it answers by path and logs each stream it served ("<port> <method>
/// <path> <status>") on stdout.
const NODE_H2_SERVER: &str = r#"
const http2 = require('http2'), fs = require('fs');
const [, , plain, tls, cert, key] = process.argv;
const handler = (port) => (stream, headers) => {
  const path = headers[':path'], method = headers[':method'];
  let body = 0;
  stream.on('data', (c) => (body += c.length));
  stream.on('end', () => {
    const status = path.startsWith('/ok/') ? 200 : path.startsWith('/created/') && body > 0 ? 201
      : path.startsWith('/fail/') ? 503 : path.startsWith('/files/') ? 200 : 404;
    stream.respond({ ':status': status });
    stream.end(path.startsWith('/files/') ? 'f'.repeat(40000) : 'ok\n');
    console.log(port, method, path, status);
  });
};
http2.createServer().on('stream', handler(plain)).listen(Number(plain), '127.0.0.1');
http2.createSecureServer({ key: fs.readFileSync(key), cert: fs.readFileSync(cert), allowHTTP1: false })
  .on('stream', handler(tls)).listen(Number(tls), '127.0.0.1');
"#;

/// Node's http2.connect (argv[3]: a CA for https, or - for h2c): one
/// session, connected once released (its handshake seen by the agent); the
/// first four streams at once, then the others one by one. Prints
/// "<method> <path> <status>" per stream, in plan order.
const NODE_H2_CLIENT: &str = r#"
const http2 = require('http2'), fs = require('fs');
const [, , port, ca, ...plan] = process.argv;
let session;
function call(spec) {
  const [method, path] = spec.split(' ');
  return new Promise((resolve, reject) => {
    const req = session.request({ ':method': method, ':path': path }, { endStream: method !== 'PUT' });
    req.on('response', (h) => { req.on('data', () => {}); req.on('end', () => resolve(`${method} ${path} ${h[':status']}`)); });
    req.on('error', reject);
    if (method === 'PUT') req.end('z'.repeat(40));
  });
}
process.stdin.once('data', async () => {
  session = ca === '-' ? http2.connect(`http://127.0.0.1:${port}`)
    : http2.connect(`https://127.0.0.1:${port}`, { ca: fs.readFileSync(ca) });
  const out = await Promise.all(plan.slice(0, 4).map(call));
  for (const spec of plan.slice(4)) out.push(await call(spec));
  console.log(out.join('\n'));
  session.close(() => process.exit(0));
});
"#;

/// Node's `http2.createSecureServer` and `http2.connect` over TLS (OpenSSL
/// linked into /usr/bin/node, on memory BIOs), concurrent streams on one
/// session, give the spans of the same programs over h2c, stream by stream.
/// Ground truth: the statuses the client got and the server's own log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_http2_over_tls_gives_the_spans_of_h2c() {
    let rx = Receiver::start().await;
    let dir = tmpdir("node-h2");
    let (cert, key) = self_signed(&dir);
    std::fs::write(dir.join("server.js"), NODE_H2_SERVER).unwrap();
    std::fs::write(dir.join("client.js"), NODE_H2_CLIENT).unwrap();
    let run_id = std::process::id();
    let plan = h2_plan(run_id);
    let (plain_port, tls_port) = (free_port(), free_port());
    let mut server = Proc(
        Command::new("node")
            .arg(dir.join("server.js"))
            .args([plain_port.to_string(), tls_port.to_string()])
            .arg(&cert)
            .arg(&key)
            .stdout(Stdio::piped())
            .spawn()
            .expect("node (apt-get install nodejs)"),
    );
    wait_listening(plain_port);
    wait_listening(tls_port);
    let ports = format!("{plain_port},{tls_port}");
    let agent = start_agent(
        &rx,
        &["--open-port", &ports, "--exe-path", "*/node", "--routes", "/ok/{id},/created/{id},/fail/{id},/files/{id}"],
    );
    agent.wait_tracked(server.pid());
    wait_for("the TLS uprobes on node", Duration::from_secs(20), || {
        (agent.sample_sum("periscope_tls_libraries_attached_total", &["reason=\"embedded\""]) >= 1.0).then_some(())
    });
    let specs: Vec<String> = plan.iter().map(|(m, p, _)| format!("{m} {p}")).collect();
    let client = |port: u16, ca: &str| {
        gated(Command::new("node").arg(dir.join("client.js")).arg(port.to_string()).arg(ca).args(&specs))
    };
    let mut plain_client = client(plain_port, "-");
    let mut tls_client = client(tls_port, cert.to_str().unwrap());
    agent.wait_tracked(plain_client.pid());
    agent.wait_tracked(tls_client.pid());
    let said: String = plan.iter().map(|(m, p, s)| format!("{m} {p} {s}\n")).collect();
    assert_eq!(run(&mut plain_client), said, "the h2c client's statuses");
    assert_eq!(run(&mut tls_client), said, "the TLS client's statuses");

    let spans = h2_spans(&rx, &agent, 4 * plan.len()).await;
    let on_port = |port: u16| {
        let server = server.pid();
        move |s: &ReceivedSpan| pid_of(s) == Some(server) && s.attr_int("server.port") == Some(port as i64)
    };
    // The counters first: a lost TLS write is named by its reason.
    assert_h2_counters(&agent);
    let tls = assert_h2_streams(&spans, &plan, on_port(tls_port), tls_client.pid());
    let plain = assert_h2_streams(&spans, &plan, on_port(plain_port), plain_client.pid());
    assert_eq!(tls, plain, "the h2-over-TLS spans equal the h2c ones");
    // The server's own log: each stream of the plan once per port.
    drop(server.0.stdin.take());
    // SAFETY: kill(2) on the pid of our own child.
    unsafe { libc::kill(server.pid() as i32, libc::SIGTERM) };
    let mut log = String::new();
    std::io::Read::read_to_string(server.0.stdout.as_mut().unwrap(), &mut log).unwrap();
    for port in [plain_port, tls_port] {
        let mut seen: Vec<&str> = log.lines().filter_map(|l| l.strip_prefix(&format!("{port} "))).collect();
        seen.sort_unstable();
        let mut want: Vec<String> = plan.iter().map(|(m, p, s)| format!("{m} {p} {s}")).collect();
        want.sort_unstable();
        assert_eq!(seen, want, "node server log, port {port}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// An ASGI app for hypercorn: the status by path, the body the PUT sent
/// counted, a 40000-byte body for /files/.
const H2_ASGI_APP: &str = r#"
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body, more = 0, True
    while more:
        message = await receive()
        body += len(message.get("body", b""))
        more = message.get("more_body", False)
    path = scope["path"]
    status = (200 if path.startswith(("/ok/", "/files/")) else 201 if path.startswith("/created/") and body
              else 503 if path.startswith("/fail/") else 404)
    payload = b"f" * 40000 if path.startswith("/files/") else b"ok\n"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
"#;

/// curl `--http2` over https to hypercorn with a certificate (Python's
/// `ssl` on memory BIOs under asyncio, OpenSSL shared): one connection,
/// each stream one server and one client span, version 2, linked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http2_over_tls_to_hypercorn() {
    let rx = Receiver::start().await;
    let dir = tmpdir("hypercorn-h2");
    let (cert, key) = self_signed(&dir);
    std::fs::write(dir.join("app.py"), H2_ASGI_APP).unwrap();
    let port = free_port();
    let server = Proc(
        Command::new(python())
            .args(["-m", "hypercorn", "--bind", &format!("127.0.0.1:{port}"), "--access-logfile", "-"])
            .arg("--certfile")
            .arg(&cert)
            .arg("--keyfile")
            .arg(&key)
            .arg("app:app")
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("hypercorn (cargo xtask deps installs it)"),
    );
    wait_listening(port);
    let mut curl = Proc(
        Command::new("curl")
            .args(["-s", "--http2", "-K", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let agent = start_agent(
        &rx,
        &[
            "--open-port",
            &port.to_string(),
            "--pid",
            &curl.pid().to_string(),
            "--routes",
            "/ok/{id},/created/{id},/fail/{id},/files/{id}",
        ],
    );
    agent.wait_tracked(server.pid());
    agent.wait_tracked(curl.pid());
    // hypercorn serves from a worker process it spawns: listening once watched.
    wait_for("hypercorn's worker to be watched", Duration::from_secs(20), || {
        (agent.sample_sum("periscope_processes_tracked_total", &[]) >= 3.0).then_some(())
    });
    wait_tls_attached(&agent);
    let plan = h2_plan(std::process::id());
    let mut config = String::new();
    for (i, (method, path, _)) in plan.iter().enumerate() {
        if i > 0 {
            config += "next\n";
        }
        config += &format!("url = \"https://127.0.0.1:{port}{path}\"\noutput = \"/dev/null\"\nhttp2\n");
        config += &format!("cacert = \"{}\"\nrequest = \"{method}\"\n", cert.display());
        config += "write-out = \"%{http_version} %{http_code}\\n\"\n";
        if *method == "PUT" {
            config += &format!("data = \"{}\"\n", "z".repeat(40));
        }
    }
    curl.0.stdin.take().unwrap().write_all(config.as_bytes()).unwrap();
    let status = wait_for("curl to finish", Duration::from_secs(30), || curl.0.try_wait().ok().flatten());
    assert!(status.success(), "curl: {status}");
    let mut said = String::new();
    std::io::Read::read_to_string(curl.0.stdout.as_mut().unwrap(), &mut said).unwrap();
    let want: String = plan.iter().map(|(_, _, status)| format!("2 {status}\n")).collect();
    assert_eq!(said, want, "curl spoke HTTP/2 over TLS and got the statuses the app chose");

    let spans = h2_spans(&rx, &agent, 2 * plan.len()).await;
    // The server spans are hypercorn's worker's (a child process): by port.
    assert_h2_streams(&spans, &plan, |s| s.attr_int("server.port") == Some(i64::from(port)), curl.pid());
    assert_h2_counters(&agent);
    let _ = std::fs::remove_dir_all(dir);
}

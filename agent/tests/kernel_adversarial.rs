//! Hostile and unlucky traffic against a watched server, on the real kernel:
//! garbage, slowloris, huge headers, connection storms, half-closed sockets,
//! vanishing clients, a dead OTLP endpoint, and an agent restart mid-traffic.
//! The agent must not crash, must count what it drops, and must stay bounded.
mod support;

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use support::agent::{free_port, wait_for, wait_listening, Agent, Proc};
use support::otlp_receiver::Receiver;

const SERVER: &str = r#"
const http = require('http');
const server = http.createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    if (req.url === '/stream') {
      res.writeHead(200);
      let n = 0;
      const t = setInterval(() => { if (res.destroyed || n++ > 50) { clearInterval(t); return res.end(); } res.write('x'.repeat(1000)); }, 10);
      return;
    }
    res.writeHead(req.url === '/missing' ? 404 : 200, { 'content-type': 'text/plain', 'content-length': 2 });
    res.end('ok');
  });
});
// The restart test's connections idle while one agent stops and the next
// starts (seconds on a loaded host): Node's default 5 s would close them.
server.keepAliveTimeout = 120000;
server.listen(Number(process.argv[2]), '127.0.0.1');
"#;

fn start_server() -> (Proc, u16) {
    let dir = std::env::temp_dir().join(format!("periscope-adv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("server.js"), SERVER).unwrap();
    let port = free_port();
    let server = Proc(
        Command::new("node")
            .arg("--max-http-header-size=131072")
            .arg(dir.join("server.js"))
            .arg(port.to_string())
            .spawn()
            .unwrap(),
    );
    wait_listening(port);
    (server, port)
}

/// One keep-alive request on `s` (the server answers with a 2-byte body);
/// returns the status code.
fn request(s: &mut TcpStream, head: &str) -> u16 {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !(buf.len() > 4 && buf.ends_with(b"ok") && buf.windows(4).any(|w| w == b"\r\n\r\n")) {
        let n = s.read(&mut byte).unwrap();
        assert_eq!(n, 1, "connection closed after {:?}", String::from_utf8_lossy(&buf));
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf[9..12]).parse().unwrap()
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

fn spans_of(agent: &Agent) -> f64 {
    agent.sample_sum("http_server_request_duration_seconds_count", &[])
}

#[test]
fn garbage_slowloris_huge_headers_storms_and_vanishing_clients() {
    let (server, port) = start_server();
    let agent = Agent::start(&["--open-port", &port.to_string(), "--trace-printer", "off"], &[]);
    agent.wait_tracked(server.pid());
    let addr = ("127.0.0.1", port);

    // Random bytes: the connection is not HTTP; nothing breaks.
    let mut seed = 0x2545f4914f6cdd1du64;
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).unwrap();
        let junk: Vec<u8> = (0..300)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % 251) as u8 + 1
            })
            .collect();
        let _ = s.write_all(&junk);
        let _ = s.shutdown(Shutdown::Both);
    }

    // Slowloris: a request trickled byte by byte over ~1.5 s still makes one span.
    let mut s = TcpStream::connect(addr).unwrap();
    for b in b"GET /slow-client HTTP/1.1\r\nHost: x\r\n\r\n" {
        s.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(40));
    }
    let mut buf = [0u8; 256];
    let _ = s.read(&mut buf).unwrap();

    // 64 KB of headers: far beyond the capture; the head is read leniently.
    let mut s = TcpStream::connect(addr).unwrap();
    let big = format!("GET /big-headers HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
    assert_eq!(request(&mut s, &big), 200);
    assert_eq!(request(&mut s, "GET /after-big HTTP/1.1\r\nHost: x\r\n\r\n"), 200);

    // Half-closed: the client shuts its write side, then reads the answer.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /half-closed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"));

    // A client that vanishes in the middle of a streamed response.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut some = [0u8; 2000];
    let _ = s.read(&mut some).unwrap();
    drop(s);

    let rss_before = rss_kb(agent.pid());
    // A storm of connections opened and closed, most without a byte.
    let start = Instant::now();
    for i in 0..10_000 {
        let mut s = TcpStream::connect(addr).unwrap();
        if i % 100 == 0 {
            assert_eq!(request(&mut s, "GET /storm HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
        }
    }
    eprintln!("10k connections in {:?}", start.elapsed());

    // The agent is alive and still right: one more ordinary request.
    let mut s = TcpStream::connect(addr).unwrap();
    assert_eq!(request(&mut s, "GET /missing HTTP/1.1\r\nHost: x\r\n\r\n"), 404);
    // slow-client, big-headers, after-big, half-closed, 100 storm, missing (+ the stream, if ended).
    // The last request's span marks the end (events reach the agent in order,
    // but a drain may land between any two of them).
    wait_for("spans of every completed request", Duration::from_secs(15), || {
        let last = agent.sample_sum("http_server_request_duration_seconds_count", &["http_route=\"/missing\""]);
        (last == 1.0 && spans_of(&agent) >= 105.0).then_some(())
    });
    let m = agent.metrics();
    let named = |route: &str| {
        support::agent::sample_sum(
            &m,
            "http_server_request_duration_seconds_count",
            &[&format!("http_route=\"{route}\"")],
        )
    };
    assert_eq!(named("/slow-client"), 1.0);
    assert_eq!(named("/big-headers"), 1.0);
    assert_eq!(named("/after-big"), 1.0);
    assert_eq!(named("/half-closed"), 1.0);
    assert_eq!(named("/storm"), 100.0);
    assert_eq!(named("/missing"), 1.0);
    assert!(support::agent::sample_sum(&m, "periscope_unknown_protocol_connections_total", &[]) >= 20.0);
    assert_eq!(support::agent::sample_sum(&m, "periscope_events_lost_ringbuf_total", &[]), 0.0);
    let rss_after = rss_kb(agent.pid());
    eprintln!("agent RSS {rss_before} kB before the storm, {rss_after} kB after");
    assert!(rss_after < rss_before + 20 * 1024, "RSS grew from {rss_before} kB to {rss_after} kB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_otlp_endpoint_then_recovery() {
    let rx = Receiver::start().await;
    rx.set_failing(true);
    let (server, port) = start_server();
    let agent = Agent::start(
        &["--open-port", &port.to_string()],
        &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", rx.grpc_endpoint()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into())],
    );
    agent.wait_tracked(server.pid());
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    for _ in 0..5 {
        assert_eq!(request(&mut s, "GET /while-down HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
    }
    wait_for("failed export attempts", Duration::from_secs(15), || {
        (agent.sample_sum("periscope_export_errors_total", &[]) >= 1.0).then_some(())
    });
    assert!(rx.spans().is_empty());
    rx.set_failing(false);
    for _ in 0..5 {
        assert_eq!(request(&mut s, "GET /after-recovery HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
    }
    let spans = rx.wait_for_spans(10, Duration::from_secs(60)).await;
    let names: Vec<&str> = spans.iter().map(|s| s.span.name.as_str()).collect();
    assert_eq!(names.iter().filter(|n| **n == "GET /while-down").count(), 5, "retried, not lost");
    assert_eq!(names.iter().filter(|n| **n == "GET /after-recovery").count(), 5);
}

#[test]
fn agent_restart_while_keep_alive_traffic_flows() {
    let (server, port) = start_server();
    // Connections opened before the agent exists: the kernel never saw their
    // accept, so their role is learned from the traffic.
    let mut conns: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    for c in &mut conns {
        assert_eq!(request(c, "GET /before HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
    }
    let mut first = Agent::start(&["--open-port", &port.to_string(), "--trace-printer", "off"], &[]);
    first.wait_tracked(server.pid());
    for c in &mut conns {
        assert_eq!(request(c, "GET /first HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
    }
    wait_for("first agent's spans", Duration::from_secs(10), || (spans_of(&first) == 3.0).then_some(()));
    let first_id = instance_id(&first, server.pid());
    assert!(first.stop());
    let second = Agent::start(&["--open-port", &port.to_string(), "--trace-printer", "off"], &[]);
    second.wait_tracked(server.pid());
    for c in &mut conns {
        assert_eq!(request(c, "GET /second HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
    }
    wait_for("second agent's spans", Duration::from_secs(10), || (spans_of(&second) == 3.0).then_some(()));
    assert_eq!(second.sample_sum("http_server_request_duration_seconds_count", &["http_route=\"/second\""]), 3.0);
    // The restarted agent names the same process the same: host, pid, start time.
    assert_eq!(instance_id(&second, server.pid()), first_id);
}

/// `service.instance.id` of `pid` in the agent's /targets.
fn instance_id(agent: &Agent, pid: u32) -> String {
    let targets: serde_json::Value = serde_json::from_str(&agent.targets()).expect("/targets is JSON");
    let target = targets.as_array().unwrap().iter().find(|t| t["pid"] == pid).expect("the server in /targets");
    target["instance_id"].as_str().unwrap().to_owned()
}

//! The demo: two real, uninstrumented services (a Node.js shop API and
//! Python's http.server) and a Node.js load generator, with periscope watching
//! them. Spans stream on stdout (the built-in trace printer, since no OTLP
//! endpoint is given) and a RED table from periscope's /metrics refreshes
//! every few seconds.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::deps::{self, sh};

#[derive(clap::Args)]
pub struct Options {
    /// Stop after this many seconds (Ctrl-C stops earlier).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Send to this OTLP endpoint instead of printing spans.
    #[arg(long)]
    otlp_endpoint: Option<String>,
}

const METRICS_PORT: u16 = 9464;

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SIGTERM first so periscope detaches cleanly.
            crate::bench::util::send_signal(c.id(), libc::SIGTERM);
        }
        std::thread::sleep(Duration::from_millis(500));
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn run(o: Options) -> anyhow::Result<()> {
    deps::ensure()?;
    sh("cargo build -q -p periscope")?;
    let root = root();
    let demo = root.join("deploy/demo");
    let www = std::env::temp_dir().join("periscope-demo-www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("index.html"), "<h1>periscope demo</h1>\n")?;

    let stop = Arc::new(AtomicBool::new(false));
    {
        // Ctrl-C reaches the whole process group; here it only ends the loop,
        // and dropping `procs` stops whatever is still running.
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    }

    let mut procs = Procs(Vec::new());
    eprintln!("demo: starting the shop API (node, :8080) and a static file server (python3 -m http.server, :8081)");
    procs.0.push(Command::new("node").arg(demo.join("shop.js")).env("PORT", "8080").spawn().context("starting node")?);
    procs.0.push(
        Command::new("python3")
            .args(["-m", "http.server", "8081", "--bind", "127.0.0.1"])
            .current_dir(&www)
            .stderr(Stdio::null())
            .spawn()
            .context("starting python3")?,
    );
    std::thread::sleep(Duration::from_secs(1));

    let mut agent = Command::new(root.join("target/debug/periscope"));
    agent.args([
        "--open-port",
        "8080,8081",
        "--exe-path",
        "*/node",
        "--service-namespace",
        "demo",
        "--prometheus-port",
        &METRICS_PORT.to_string(),
        "--routes",
        "/products/{id}",
    ]);
    if let Some(endpoint) = &o.otlp_endpoint {
        agent.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
    }
    eprintln!("demo: starting periscope (spans below; RED table every 5 s; /metrics on :{METRICS_PORT})");
    procs.0.push(agent.spawn().context("starting periscope")?);
    std::thread::sleep(Duration::from_secs(3));
    eprintln!("demo: starting the load generator (node)");
    procs.0.push(Command::new("node").arg(demo.join("load.js")).spawn().context("starting the load generator")?);

    let start = Instant::now();
    let mut last_table = Instant::now();
    while start.elapsed() < Duration::from_secs(o.seconds) && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        if last_table.elapsed() >= Duration::from_secs(5) {
            last_table = Instant::now();
            match scrape() {
                Ok(text) => eprintln!("{}", red_table(&text)),
                Err(e) => eprintln!("demo: cannot read periscope's /metrics: {e}"),
            }
        }
    }
    eprintln!("demo: stopping everything it started");
    Ok(())
}

fn scrape() -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", METRICS_PORT))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Labels of one Prometheus sample line.
fn labels(line: &str) -> BTreeMap<String, String> {
    let (Some(a), Some(b)) = (line.find('{'), line.rfind('}')) else { return BTreeMap::new() };
    let mut out = BTreeMap::new();
    let mut rest = &line[a + 1..b];
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').to_owned();
        let after = &rest[eq + 2..];
        let end = after.find("\",").unwrap_or(after.len().saturating_sub(1));
        out.insert(key, after[..end].to_owned());
        rest = after.get(end + 1..).unwrap_or("");
    }
    out
}

/// Requests, errors and mean duration per service, kind and route.
fn red_table(metrics: &str) -> String {
    #[derive(Default)]
    struct Row {
        count: f64,
        errors: f64,
        sum: f64,
    }
    let mut rows: BTreeMap<(String, String, String), Row> = BTreeMap::new();
    for line in metrics.lines() {
        let kind = if line.starts_with("http_server_request_duration_seconds_") {
            "server"
        } else if line.starts_with("http_client_request_duration_seconds_") {
            "client"
        } else {
            continue;
        };
        let is_count = line.contains("_seconds_count");
        let is_sum = line.contains("_seconds_sum");
        if !is_count && !is_sum {
            continue;
        }
        let l = labels(line);
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let route = format!(
            "{} {}",
            l.get("http_request_method").cloned().unwrap_or_default(),
            l.get("http_route").or(l.get("server_address")).cloned().unwrap_or_default()
        );
        let key = (l.get("service_name").cloned().unwrap_or_default(), kind.to_owned(), route);
        let row = rows.entry(key).or_default();
        if is_count {
            row.count += value;
            if l.get("error_type").is_some() {
                row.errors += value;
            }
        } else {
            row.sum += value;
        }
    }
    let mut out = format!(
        "\n{:<14} {:<7} {:<28} {:>8} {:>7} {:>10}\n",
        "SERVICE", "KIND", "ROUTE", "REQUESTS", "ERRORS", "MEAN ms"
    );
    for ((service, kind, route), r) in &rows {
        let mean = if r.count > 0.0 { r.sum / r.count * 1000.0 } else { 0.0 };
        out += &format!("{service:<14} {kind:<7} {route:<28} {:>8} {:>7} {mean:>10.2}\n", r.count, r.errors);
    }
    out
}

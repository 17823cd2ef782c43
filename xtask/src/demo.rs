//! The demo: the Mythical services of Grafana's intro-to-mltp lab
//! (`deploy/mythical`: server, requester, recorder; Node.js, Express 5, `pg`,
//! amqplib; none of them instrumented), with their own PostgreSQL and
//! RabbitMQ, and periscope watching the three services. Spans go to a file
//! (the built-in trace printer) or to an OTLP endpoint; the terminal shows
//! the RED metrics per service and operation, read from periscope's
//! Prometheus `/metrics` every 2 s. Ctrl-C (or `--duration`) stops
//! everything it started.
use std::{
    collections::{BTreeMap, VecDeque},
    io::{IsTerminal, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

mod containers;

use crate::{
    bench::util::http_get,
    cmd::{self, cmd},
    deps,
    mythical::{self, Backends, Proc, ServiceOptions, SERVICES},
};

#[derive(clap::Args)]
pub struct Options {
    /// Stop after this long (`20s`, `2m`) and fail unless periscope produced
    /// spans and metrics for every service; without it, run until Ctrl-C.
    #[arg(long, value_parser = mythical::parse_duration)]
    duration: Option<Duration>,
    /// Send spans and metrics to this OTLP endpoint instead of the spans file.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// The requester's load: `loop` (one call at a time) or `lab` (the
    /// intro-to-mltp lab's own burst; see deploy/mythical/requester.js).
    #[arg(long, value_enum, default_value = "loop")]
    load: mythical::Load,
    /// Every statement also sleeps this long in PostgreSQL: with `--load lab`
    /// on a fast machine, 12 makes the server's one pg client back up as on
    /// the lab's crowded host (requests of tens of seconds).
    #[arg(long, default_value_t = 0)]
    db_delay_ms: u64,
    /// The requester's pause between calls, in milliseconds (loop load).
    #[arg(long, default_value_t = 100)]
    request_interval_ms: u64,
    /// Run the lab under a container engine instead (rootful podman and
    /// podman-compose, images built offline: deploy/README.md), each service
    /// in its own container, the agent from the project's overlay files.
    #[arg(long)]
    containers: bool,
}

/// How the services run, from the options.
fn service_options(o: &Options) -> ServiceOptions {
    ServiceOptions {
        preload: None,
        env: Vec::new(),
        request_interval_ms: o.request_interval_ms,
        work_ms: (20, 1500),
        load: o.load,
        db_delay_ms: o.db_delay_ms,
    }
}

/// One refresh of the screen: redrawn on a terminal, appended otherwise.
fn show(screen: &str, o: &Options) {
    if std::io::stderr().is_terminal() && o.duration.is_none() {
        eprint!("\x1b[H\x1b[2J{screen}");
    } else {
        eprintln!("{screen}");
    }
}

const METRICS_PORT: u16 = 9464;
const REFRESH: Duration = Duration::from_secs(2);
/// The duration buckets periscope uses in the demo (seconds).
const DEMO_BUCKETS: &str = "0,0.0001,0.00025,0.0005,0.001,0.0025,0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5,10,30,60";
/// Rates and percentiles are over the last this many refreshes.
const WINDOW: usize = 5;

pub fn run(o: Options) -> anyhow::Result<()> {
    eprintln!("demo: checking what it needs (apt packages, npm modules, tracefs); the first time installs them");
    deps::ensure()?;
    // Not quiet: on a fresh machine this is the long step (minutes), and
    // cargo's progress says how far it is.
    eprintln!("demo: building periscope (cargo build -p periscope; the first build takes a few minutes)");
    cmd::run(&mut cmd("cargo", ["build", "-p", "periscope"]))?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        // The children run in their own process groups, so Ctrl-C reaches
        // only us; dropping the `Proc`s below stops them.
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    }
    if o.containers {
        return containers::run(&o, &stop);
    }
    let dir = std::env::temp_dir().join("periscope-mythical");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;

    eprintln!("demo: starting PostgreSQL (:55432) and RabbitMQ (:55672), private instances in {}", dir.display());
    let backends = Backends::start(&dir)?;
    let mut services = mythical::spawn_services(&dir, &service_options(&o))?;
    let pids: Vec<u32> = services.iter().map(|s| s.proc.pid()).collect();

    let spans_file = dir.join("spans.txt");
    let agent_log = dir.join("periscope.log");
    let mut cmd = mythical::periscope_command(&pids, METRICS_PORT);
    // Finer duration buckets than the semantic conventions' (first one 5 ms),
    // so the table's percentiles of fast operations (SQL, AMQP) are numbers.
    cmd.args(["--duration-histogram-buckets", DEMO_BUCKETS]);
    // The lab's dashboards query the old HTTP and database attribute names.
    cmd.env("OTEL_SEMCONV_STABILITY_OPT_IN", "http/dup,database/dup");
    match &o.otlp_endpoint {
        Some(endpoint) => {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint).stdout(Stdio::null());
        }
        None => {
            cmd.args(["--trace-printer", "text"]).stdout(std::fs::File::create(&spans_file)?);
        }
    }
    cmd.stderr(std::fs::File::create(&agent_log)?);
    eprintln!("demo: starting periscope (watching pids {pids:?} and ports 4000-4002)");
    let mut agent = Proc::spawn("periscope", &mut cmd, libc::SIGTERM)?;
    mythical::wait_tracked(&mut agent, METRICS_PORT, &pids, &agent_log)?;
    eprintln!("demo: starting mythical-server (:4000), mythical-requester (:4001), mythical-recorder (:4002)");
    mythical::open_services(&mut services)?;

    let spans_where = match &o.otlp_endpoint {
        Some(e) => format!("spans and metrics: OTLP to {e}"),
        None => format!("spans: {} (one line each; `tail -f` it)", spans_file.display()),
    };
    let mut table = Table::default();
    let mut spans = SpanCounter::new(&spans_file);
    let start = Instant::now();
    let mut outcome = Ok(());
    while !stop.load(Ordering::SeqCst) && o.duration.is_none_or(|d| start.elapsed() < d) {
        std::thread::sleep(REFRESH);
        // What the lab's Alloy does: scrape each service's own /metrics (it
        // also gives the recorder, otherwise only an AMQP consumer, HTTP traffic).
        for port in [mythical::SERVER_PORT, mythical::REQUESTER_PORT, mythical::RECORDER_PORT] {
            let _ = http_get(port, "/metrics");
        }
        match http_get(METRICS_PORT, "/metrics") {
            Ok(text) => table.push(&text),
            Err(e) => eprintln!("demo: cannot read periscope's /metrics: {e}"),
        }
        spans.update();
        let screen = format!(
            "periscope demo: the Mythical services (namespace mythical), {:.0} s; Ctrl-C stops\n{spans_where}\n\
             periscope: http://127.0.0.1:{METRICS_PORT}/metrics, log {}; services' logs in {}\n{}",
            start.elapsed().as_secs_f64(),
            agent_log.display(),
            dir.display(),
            table.render(&spans.per_service)
        );
        show(&screen, &o);
        if let Some(dead) = services.iter_mut().find_map(|s| (!s.proc.running()).then_some(s)) {
            outcome = Err(anyhow::anyhow!("{} exited; see {}", dead.proc.name, dead.log.display()));
            break;
        }
        if !agent.running() {
            outcome = Err(anyhow::anyhow!("periscope exited; see {}", agent_log.display()));
            break;
        }
    }

    eprintln!("demo: stopping everything it started");
    let mut pgids: Vec<u32> = services.iter().map(|s| s.proc.pid()).collect();
    pgids.push(agent.pid());
    pgids.extend(backends.pgids());
    for s in services.iter_mut().rev() {
        s.proc.stop(Duration::from_secs(10));
    }
    agent.stop(Duration::from_secs(10));
    drop(backends);
    spans.update();
    // The databases' files; the logs and the spans stay for reading.
    let _ = std::fs::remove_dir_all(dir.join("postgres/data"));
    let _ = std::fs::remove_dir_all(dir.join("rabbitmq/mnesia"));
    let left = mythical::leftovers(&pgids);
    if !left.is_empty() {
        bail!("processes left running after the demo: {left:?}");
    }
    outcome?;
    if o.duration.is_some() {
        check_every_service(&table, o.otlp_endpoint.is_none().then_some(&spans.per_service))?;
        eprintln!("demo: every service has spans and metrics");
    }
    Ok(())
}

/// Fails unless each Mythical service has requests in periscope's metrics
/// and (when printed) spans.
fn check_every_service(table: &Table, spans: Option<&BTreeMap<String, u64>>) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for svc in SERVICES {
        let metrics = table.total_for(svc);
        let printed = spans.map(|m| m.get(svc).copied().unwrap_or(0));
        if metrics == 0.0 || printed == Some(0) {
            missing.push(format!("{svc} (metric samples {metrics}, spans {printed:?})"));
        }
    }
    if !missing.is_empty() {
        bail!("periscope saw nothing for: {}", missing.join(", "));
    }
    Ok(())
}

/// Counts the trace printer's lines per service as the file grows.
struct SpanCounter {
    path: PathBuf,
    offset: u64,
    partial: String,
    per_service: BTreeMap<String, u64>,
}

impl SpanCounter {
    fn new(path: &Path) -> Self {
        SpanCounter { path: path.to_owned(), offset: 0, partial: String::new(), per_service: BTreeMap::new() }
    }

    fn update(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.path) else { return };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = String::new();
        let Ok(n) = f.read_to_string(&mut buf) else { return };
        self.offset += n as u64;
        self.partial.push_str(&buf);
        let complete = self.partial.rfind('\n').map_or(0, |i| i + 1);
        for line in self.partial[..complete].lines() {
            if let Some(svc) = line.split(" service=").nth(1).and_then(|r| r.split(' ').next()) {
                *self.per_service.entry(svc.to_owned()).or_default() += 1;
            }
        }
        self.partial.drain(..complete);
    }
}

/// One row's counters in one scrape: requests, errors, cumulative buckets.
#[derive(Clone, Default)]
struct Acc {
    count: f64,
    errors: f64,
    /// Upper bound (f64 bits: positive floats order like their bits) -> cumulative count.
    buckets: BTreeMap<u64, f64>,
}

/// (service, kind, operation)
type RowKey = (String, &'static str, String);

/// RED rows over a sliding window of scrapes.
#[derive(Default)]
struct Table {
    history: VecDeque<(Instant, BTreeMap<RowKey, Acc>)>,
}

/// Duration histograms of periscope's /metrics and the row kind of each.
const FAMILIES: &[(&str, &str)] = &[
    ("http_server_request_duration_seconds", "server"),
    ("http_client_request_duration_seconds", "client"),
    ("db_client_operation_duration_seconds", "sql"),
    ("messaging_client_operation_duration_seconds", "msg"),
    ("messaging_process_duration_seconds", "msg"),
];

impl Table {
    fn push(&mut self, text: &str) {
        self.history.push_back((Instant::now(), parse_families(text)));
        while self.history.len() > WINDOW + 1 {
            self.history.pop_front();
        }
    }

    /// Requests recorded for `service` since the agent started.
    fn total_for(&self, service: &str) -> f64 {
        self.history
            .back()
            .map_or(0.0, |(_, rows)| rows.iter().filter(|(k, _)| k.0 == service).map(|(_, a)| a.count).sum())
    }

    fn render(&self, spans: &BTreeMap<String, u64>) -> String {
        let Some((t1, now)) = self.history.back() else { return String::new() };
        let (t0, then) = self.history.front().expect("not empty");
        let secs = t1.duration_since(*t0).as_secs_f64();
        let empty = Acc::default();
        let mut out = format!(
            "\n{:<19} {:<6} {:<34} {:>8} {:>6} {:>8} {:>8} {:>8}\n",
            "SERVICE", "KIND", "OPERATION", "req/s", "err%", "p50 ms", "p95 ms", "total"
        );
        for (key, acc) in now {
            let before = then.get(key).unwrap_or(&empty);
            let (n, errors) = (acc.count - before.count, acc.errors - before.errors);
            let dash = || "-".to_owned();
            let rate = if secs > 0.0 { format!("{:.1}", n / secs) } else { dash() };
            let err = if n > 0.0 { format!("{:.1}", 100.0 * errors / n) } else { dash() };
            let delta: Vec<(f64, f64)> = acc
                .buckets
                .iter()
                .map(|(le, c)| (f64::from_bits(*le), c - before.buckets.get(le).copied().unwrap_or(0.0)))
                .collect();
            let q = |p: f64| quantile(&delta, p).map_or_else(dash, |q| q.millis());
            out += &format!(
                "{:<19} {:<6} {:<34} {rate:>8} {err:>6} {:>8} {:>8} {:>8}\n",
                key.0,
                key.1,
                truncate(&key.2, 34),
                q(0.5),
                q(0.95),
                acc.count
            );
        }
        out += &format!("(rates and percentiles over the last {secs:.0} s; total = since periscope started)\n");
        if !spans.is_empty() {
            let list: Vec<String> = spans.iter().map(|(s, n)| format!("{s} {n}")).collect();
            out += &format!("spans per service (so far): {}\n", list.join(", "));
        }
        out
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// The duration histograms of a Prometheus text, folded into rows.
fn parse_families(text: &str) -> BTreeMap<RowKey, Acc> {
    let mut rows: BTreeMap<RowKey, Acc> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(&(family, kind)) = FAMILIES.iter().find(|(f, _)| line.starts_with(f)) else { continue };
        let rest = &line[family.len()..];
        let (suffix, labels, value) = match split_sample(rest) {
            Some(x) => x,
            None => continue,
        };
        let get = |k: &str| labels.get(k).map(String::as_str).unwrap_or("");
        let op = match kind {
            "server" => format!("{} {}", get("http_request_method"), get("http_route")),
            "client" => format!("{} {}:{}", get("http_request_method"), get("server_address"), get("server_port")),
            "sql" => format!("{} {}", get("db_operation_name"), get("db_collection_name")),
            _ => format!("{} {}", get("messaging_operation_name"), get("messaging_destination_name")),
        };
        let acc = rows.entry((get("service_name").to_owned(), kind, op.trim().to_owned())).or_default();
        match suffix {
            "_count" => {
                acc.count += value;
                if !get("error_type").is_empty() {
                    acc.errors += value;
                }
            }
            "_bucket" => {
                let le = match get("le") {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().unwrap_or(f64::INFINITY),
                };
                *acc.buckets.entry(le.to_bits()).or_default() += value;
            }
            _ => {}
        }
    }
    rows
}

/// `_bucket{a="b",le="0.1"} 3` -> ("_bucket", labels, 3.0).
fn split_sample(rest: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    let (suffix, after) = match rest.find('{') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => {
            let (s, v) = rest.split_once(' ')?;
            return Some((s, BTreeMap::new(), v.trim().parse().ok()?));
        }
    };
    let mut labels = BTreeMap::new();
    let mut chars = after.char_indices().peekable();
    let mut key = String::new();
    let mut end = None;
    while let Some((i, c)) = chars.next() {
        match c {
            '}' => {
                end = Some(i);
                break;
            }
            ',' => {}
            '=' => {
                chars.next(); // opening quote
                let mut value = String::new();
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, e)) = chars.next() {
                                value.push(if e == 'n' { '\n' } else { e });
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.insert(std::mem::take(&mut key), value);
            }
            c => key.push(c),
        }
    }
    let value = after[end? + 1..].trim().split(' ').next()?.parse().ok()?;
    Some((suffix, labels, value))
}

/// Quantile `q` of a cumulative histogram (upper bound, cumulative count),
/// interpolated linearly inside the bucket; None without observations.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<Quantile> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let target = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, cum) in buckets {
        if cum >= target {
            if le.is_infinite() {
                return Some(Quantile::Above(lower));
            }
            if lower == 0.0 {
                // Nothing to interpolate from: the first bucket says only "below".
                return Some(Quantile::Below(le));
            }
            let inside = cum - below;
            let frac = if inside > 0.0 { (target - below) / inside } else { 1.0 };
            return Some(Quantile::About(lower + (le - lower) * frac));
        }
        (lower, below) = (le, cum);
    }
    Some(Quantile::Above(lower))
}

#[derive(Debug, PartialEq)]
enum Quantile {
    Below(f64),
    About(f64),
    Above(f64),
}

impl Quantile {
    fn millis(&self) -> String {
        match self {
            Quantile::Below(s) => format!("<{:.1}", s * 1000.0),
            Quantile::About(s) => format!("{:.1}", s * 1000.0),
            Quantile::Above(s) => format!(">{:.0}", s * 1000.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# HELP x\n\
        http_server_request_duration_seconds_bucket{service_name=\"mythical-server\",http_request_method=\"GET\",http_route=\"/unicorn\",le=\"0.005\"} 2\n\
        http_server_request_duration_seconds_bucket{service_name=\"mythical-server\",http_request_method=\"GET\",http_route=\"/unicorn\",le=\"0.01\"} 4\n\
        http_server_request_duration_seconds_bucket{service_name=\"mythical-server\",http_request_method=\"GET\",http_route=\"/unicorn\",le=\"+Inf\"} 4\n\
        http_server_request_duration_seconds_count{service_name=\"mythical-server\",http_request_method=\"GET\",http_route=\"/unicorn\"} 4\n\
        http_server_request_duration_seconds_count{service_name=\"mythical-server\",http_request_method=\"GET\",http_route=\"/unicorn\",error_type=\"500\"} 1\n\
        db_client_operation_duration_seconds_count{service_name=\"mythical-server\",db_operation_name=\"SELECT\",db_collection_name=\"unicorn\"} 7\n\
        periscope_spans_dropped_total 0\n";

    #[test]
    fn folds_histograms_into_rows() {
        let rows = parse_families(SAMPLE);
        let server = &rows[&("mythical-server".to_owned(), "server", "GET /unicorn".to_owned())];
        assert_eq!((server.count, server.errors), (5.0, 1.0));
        assert_eq!(server.buckets.len(), 3);
        let sql = &rows[&("mythical-server".to_owned(), "sql", "SELECT unicorn".to_owned())];
        assert_eq!(sql.count, 7.0);
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn label_values_with_escapes() {
        let (s, l, v) = split_sample("_count{a=\"x\\\"y,z\",b=\"\"} 3").unwrap();
        assert_eq!((s, v), ("_count", 3.0));
        assert_eq!(l["a"], "x\"y,z");
        assert_eq!(l["b"], "");
    }

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let b = [(0.01, 5.0), (0.1, 10.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(&b, 0.5), Some(Quantile::Below(0.01)));
        let Some(Quantile::About(v)) = quantile(&b, 0.75) else { panic!() };
        assert!((v - 0.055).abs() < 1e-9);
        assert_eq!(quantile(&b, 0.75).unwrap().millis(), "55.0");
        assert_eq!(quantile(&[(0.1, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        // Everything above the last finite bound.
        assert_eq!(quantile(&[(0.1, 0.0), (f64::INFINITY, 3.0)], 0.5), Some(Quantile::Above(0.1)));
    }

    #[test]
    fn rows_over_a_window() {
        let mut t = Table::default();
        t.push(SAMPLE);
        t.push(&SAMPLE.replace("} 4\n", "} 8\n"));
        let out = t.render(&BTreeMap::new());
        assert!(out.contains("mythical-server"), "{out}");
        assert!(out.contains("GET /unicorn"), "{out}");
        assert_eq!(t.total_for("mythical-server"), 9.0 + 7.0);
        assert_eq!(t.total_for("mythical-recorder"), 0.0);
    }
}

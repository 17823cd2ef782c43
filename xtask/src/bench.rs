//! `cargo xtask bench`: the agent's overhead, measured with interleaved A/B
//! runs (A = no agent, B = periscope watching the server or client; pair i
//! runs A B when i is even and B A when odd, so slow drift cancels).
//!
//! Scenarios: (a) nginx keep-alive + wrk, (b) Node.js `http` + wrk,
//! (c) PostgreSQL `pgbench -S` with periscope watching pgbench (SQL client),
//! (d) nginx at a fixed request rate (open-loop generator in `bench/load.rs`),
//! (e) a Go net/http server (`bench/go_server.go`) + wrk,
//! (f) nginx over HTTPS (TLS 1.3, OpenSSL) + wrk: the TLS uprobes' cost.
//! Scenario (a) has a third arm: B with an OTLP/HTTP endpoint that discards;
//! (b) and (e) have B with the runtime hooks off (`--libuv-uprobes false`,
//! `--go-runtime false`), to price the hooks.
//! Each B run also records the eBPF run time of the agent's own programs
//! (kernel.bpf_stats_enabled), the agent's CPU and peak RSS, and its
//! /metrics counters (lost events, spans produced).
//! Results: `bench/results.md` and `bench/results.json`.
pub(crate) mod agent;
pub(crate) mod load;
pub(crate) mod report;
pub(crate) mod services;
pub(crate) mod util;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::cmd::{self, cmd};
use crate::deps;
use crate::otlp_sink as sink;
use agent::{Agent, Costs};
use load::LoadResult;
use services::{GoServer, Nginx, Node, Postgres};

#[derive(clap::Args)]
pub struct Options {
    /// Smoke run (~3 minutes): 1 pair per scenario, 5 s runs, no OTLP arm;
    /// results go to target/bench-quick/ unless --out is given.
    #[arg(long)]
    quick: bool,
    /// A/B pairs per scenario [default: 5, --quick: 1].
    #[arg(long)]
    pairs: Option<usize>,
    /// Seconds per run [default: 10, --quick: 5].
    #[arg(long)]
    duration: Option<u64>,
    /// Request rate of the fixed-rate scenario (requests/s, all connections).
    #[arg(long, default_value_t = 20000.0)]
    rate: f64,
    /// Scenarios to run, comma-separated: nginx, node, pgbench, fixed-rate, go, nginx-tls.
    #[arg(long, value_delimiter = ',', default_value = "nginx,node,pgbench,fixed-rate,go,nginx-tls")]
    scenarios: Vec<String>,
    /// Leave out the B-with-OTLP arm of the nginx scenario.
    #[arg(long)]
    no_otlp: bool,
    /// Directory for results.md and results.json [default: bench/, --quick: target/bench-quick/].
    #[arg(long)]
    out: Option<PathBuf>,
    /// First of the six loopback ports used (nginx, node, postgres, agent /metrics, OTLP sink, Go server).
    #[arg(long, default_value_t = 18480)]
    base_port: u16,
    /// Use target/release/periscope as it is instead of building it.
    #[arg(long)]
    no_build: bool,
    /// Nice value for every thread of the agent (negative: ahead of the
    /// workload in the CPU scheduler). For experiments; 0 leaves it alone.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    agent_nice: i32,
}

/// Concurrency of the load generators (wrk -c, pgbench -c, fixed-rate connections).
const CONNS: u32 = 16;
const PG_CLIENTS: u32 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    Without,
    With,
    WithOtlp,
    /// B with the runtime hooks off: Go's (per-thread context) or, for
    /// Node.js, libuv's and the timers' (`--libuv-uprobes false`).
    WithoutHooks,
}

impl Arm {
    pub fn label(self) -> &'static str {
        match self {
            Arm::Without => "A (no agent)",
            Arm::With => "B (agent)",
            Arm::WithOtlp => "B+OTLP (agent, OTLP sink)",
            Arm::WithoutHooks => "B−hooks (agent, runtime hooks off)",
        }
    }
    pub fn key(self) -> &'static str {
        match self {
            Arm::Without => "A",
            Arm::With => "B",
            Arm::WithOtlp => "B_otlp",
            Arm::WithoutHooks => "B_nohooks",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Nginx,
    /// nginx over HTTPS: the TLS uprobes' cost.
    NginxTls,
    Node,
    Pgbench,
    FixedRate,
    Go,
}

pub struct Scenario {
    pub kind: Kind,
    pub key: &'static str,
    pub title: String,
    pub arms: Vec<Arm>,
    pub runs: Vec<Run>,
    /// Warnings found while running (foreign programs, shortfalls, ...).
    pub notes: Vec<String>,
}

/// One measured run.
pub struct Run {
    pub pair: usize,
    pub arm: Arm,
    pub load: LoadResult,
    pub costs: Option<Costs>,
    pub agent_startup_s: Option<f64>,
    pub agent_tracked_after_s: Option<f64>,
    pub agent_stop_s: Option<f64>,
    pub sink_requests: Option<u64>,
    pub sink_bytes: Option<u64>,
    /// 1-minute load average when the run started (the machine is shared).
    pub loadavg: f64,
}

/// A run ready to go: what the agent must select, which pids it must list
/// in /targets before the load starts, and the load itself.
struct Prepared {
    selector: Vec<String>,
    tracked: Vec<u32>,
    go: Box<dyn FnOnce() -> anyhow::Result<LoadResult>>,
}

struct Env {
    dir: PathBuf,
    bin: PathBuf,
    dur: Duration,
    rate: f64,
    prom_port: u16,
    agent_nice: i32,
    sink_port: u16,
    sink: Option<Arc<sink::SinkStats>>,
    stop: Arc<AtomicBool>,
    nginx: Option<Nginx>,
    nginx_tls: Option<Nginx>,
    node: Option<Node>,
    pg: Option<Postgres>,
    go: Option<GoServer>,
    agent_runs: usize,
}

/// Restores kernel.bpf_stats_enabled when dropped.
struct BpfStats(String);

impl BpfStats {
    const PATH: &'static str = "/proc/sys/kernel/bpf_stats_enabled";
    fn enable() -> anyhow::Result<Self> {
        let old = std::fs::read_to_string(Self::PATH).context("reading kernel.bpf_stats_enabled")?;
        std::fs::write(Self::PATH, "1").context("enabling kernel.bpf_stats_enabled (needs root)")?;
        Ok(BpfStats(old.trim().to_owned()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn run(o: Options) -> anyhow::Result<()> {
    let started = Instant::now();
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask bench needs root (eBPF, bpf_stats, runuser postgres)");
    }
    deps::ensure()?;
    deps::ensure_packages(&["wrk", "postgresql", "postgresql-contrib"])?;
    let root = root();
    if !o.no_build {
        eprintln!("bench: building periscope (release)");
        cmd::run(cmd("cargo", ["build", "--release", "-q", "-p", "periscope"]).current_dir(&root))?;
    }
    let bin = root.join("target/release/periscope");
    if !bin.exists() {
        bail!("{} is missing", bin.display());
    }
    let pairs = o.pairs.unwrap_or(if o.quick { 1 } else { 5 });
    let secs = o.duration.unwrap_or(if o.quick { 5 } else { 10 });
    let with_otlp = !o.no_otlp && !o.quick;
    let out_dir =
        o.out.clone().unwrap_or_else(|| if o.quick { root.join("target/bench-quick") } else { root.join("bench") });
    for s in &o.scenarios {
        if !["nginx", "node", "pgbench", "fixed-rate", "go", "nginx-tls"].contains(&s.as_str()) {
            bail!("unknown scenario {s:?} (nginx, node, pgbench, fixed-rate, go, nginx-tls)");
        }
    }
    let p = o.base_port;
    for port in p..p + 7 {
        util::ensure_port_free(port)?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // Ctrl-C also reaches the children (same process group); this only
        // stops the bench between runs, and the guards clean up.
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    }
    let foreign = agent::loaded_handle_programs();
    if !foreign.is_empty() {
        eprintln!(
            "bench: WARNING: {} handle_* BPF programs of another periscope are loaded; they add cost to every run",
            foreign.len()
        );
    }

    let tmp = std::env::temp_dir().join(format!("periscope-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let _bpf_stats = BpfStats::enable()?;
    let mut env = Env {
        dir: tmp.clone(),
        bin,
        dur: Duration::from_secs(secs),
        rate: o.rate,
        prom_port: p + 3,
        agent_nice: o.agent_nice,
        sink_port: p + 4,
        sink: None,
        stop: stop.clone(),
        nginx: None,
        nginx_tls: None,
        node: None,
        pg: None,
        go: None,
        agent_runs: 0,
    };
    let mut scenarios = Vec::new();
    let measure_start = Instant::now();
    let result = (|| -> anyhow::Result<()> {
        for name in &o.scenarios {
            let (kind, key, title, arms) = match name.as_str() {
                "nginx" => (
                    Kind::Nginx,
                    "nginx",
                    format!("(a) nginx keep-alive, wrk -t1 -c{CONNS}"),
                    if with_otlp {
                        vec![Arm::Without, Arm::With, Arm::WithOtlp]
                    } else {
                        vec![Arm::Without, Arm::With]
                    },
                ),
                "node" => (
                    Kind::Node,
                    "node",
                    format!("(b) Node.js http, wrk -t1 -c{CONNS}"),
                    vec![Arm::Without, Arm::With, Arm::WithoutHooks],
                ),
                "pgbench" => (
                    Kind::Pgbench,
                    "pgbench",
                    format!("(c) PostgreSQL pgbench -S -c{PG_CLIENTS} -j2, agent on pgbench"),
                    vec![Arm::Without, Arm::With],
                ),
                "nginx-tls" => (
                    Kind::NginxTls,
                    "nginx-tls",
                    format!("(f) nginx HTTPS keep-alive (TLS 1.3, OpenSSL), wrk -t1 -c{CONNS}"),
                    vec![Arm::Without, Arm::With],
                ),
                "fixed-rate" => (
                    Kind::FixedRate,
                    "fixed-rate",
                    format!("(d) nginx at a fixed {} req/s, {CONNS} connections", o.rate),
                    vec![Arm::Without, Arm::With],
                ),
                _ => (
                    Kind::Go,
                    "go",
                    format!("(e) Go net/http, wrk -t1 -c{CONNS}"),
                    vec![Arm::Without, Arm::With, Arm::WithoutHooks],
                ),
            };
            let mut sc = Scenario { kind, key, title, arms, runs: Vec::new(), notes: Vec::new() };
            run_scenario(&mut env, &mut sc, pairs)?;
            scenarios.push(sc);
        }
        Ok(())
    })();
    let measured = measure_start.elapsed();
    // Stop the servers before writing (their Drop impls).
    env.nginx = None;
    env.node = None;
    env.pg = None;
    env.go = None;
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        if scenarios.is_empty() {
            return Err(e);
        }
        eprintln!("bench: stopped early: {e:#}; writing what was measured");
    }
    let _ = std::fs::remove_dir_all(&tmp);

    let meta = report::Meta {
        date: cmd::utc_now(),
        kernel: cmd::read(&mut cmd("uname", ["-r"])),
        cpu: cmd::cpu_model(),
        cores: cmd::cores(),
        memory: cmd::memory_total(),
        versions: vec![
            ("periscope (git)".into(), cmd::read(cmd("git", ["describe", "--always", "--dirty"]).current_dir(&root))),
            ("nginx".into(), cmd::read_all(&mut cmd("nginx", ["-v"])).split('/').nth(1).unwrap_or_default().to_owned()),
            ("node".into(), cmd::read(&mut cmd("node", ["--version"]))),
            (
                "postgres".into(),
                cmd::read(&mut cmd("pgbench", ["--version"])).split_whitespace().nth(2).unwrap_or_default().to_owned(),
            ),
            (
                "go".into(),
                cmd::read(&mut cmd("go", ["version"])).split_whitespace().nth(2).unwrap_or_default().to_owned(),
            ),
            (
                "wrk".into(),
                cmd::read_all(&mut cmd("wrk", ["-v"])).split_whitespace().nth(1).unwrap_or_default().to_owned(),
            ),
        ],
        pairs,
        run_seconds: secs,
        rate: o.rate,
        quick: o.quick,
        measured_seconds: measured.as_secs_f64(),
        total_seconds: started.elapsed().as_secs_f64(),
        foreign_programs_at_start: foreign.len(),
    };
    std::fs::create_dir_all(&out_dir)?;
    let md = report::markdown(&meta, &scenarios);
    std::fs::write(out_dir.join("results.md"), &md)?;
    let json = report::json(&meta, &scenarios);
    std::fs::write(out_dir.join("results.json"), serde_json::to_string_pretty(&json)? + "\n")?;
    println!("{}", report::summary(&meta, &scenarios));
    println!("bench: wrote {} and results.json", out_dir.join("results.md").display());
    Ok(())
}

fn run_scenario(env: &mut Env, sc: &mut Scenario, pairs: usize) -> anyhow::Result<()> {
    eprintln!("bench: {}", sc.title);
    let port_base = env.prom_port - 3;
    match sc.kind {
        Kind::Nginx | Kind::FixedRate => {
            if env.nginx.is_none() {
                env.nginx = Some(Nginx::start(&env.dir, port_base)?);
            }
        }
        Kind::Node => {
            env.nginx = None;
            env.node = Some(Node::start(&env.dir, port_base + 1)?);
        }
        Kind::NginxTls => {
            env.nginx = None;
            env.node = None;
            env.nginx_tls = Some(Nginx::start_tls(&env.dir, port_base + 6)?);
        }
        Kind::Pgbench => {
            env.nginx = None;
            env.node = None;
            let scale = if env.dur.as_secs() < 10 { 2 } else { 10 };
            eprintln!("bench:   initdb + pgbench -i -s {scale} (own cluster on 127.0.0.1:{})", port_base + 2);
            env.pg = Some(Postgres::start(&env.dir, port_base + 2, scale)?);
        }
        Kind::Go => {
            env.nginx = None;
            env.node = None;
            env.pg = None;
            eprintln!("bench:   go build go_server.go");
            env.go = Some(GoServer::start(&env.dir, port_base + 5)?);
        }
    }
    if sc.arms.contains(&Arm::WithOtlp) && env.sink.is_none() {
        env.sink = Some(sink::start(env.sink_port)?);
    }
    // Warm-up: one short unmeasured run without the agent.
    let warm = Duration::from_secs(env.dur.as_secs().clamp(1, 3));
    let p = prepare(env, sc.kind, warm)?;
    (p.go)().context("warm-up run")?;

    for pair in 0..pairs {
        let mut order = sc.arms.clone();
        if pair % 2 == 1 {
            order.reverse();
        }
        for arm in order {
            if env.stop.load(Ordering::SeqCst) {
                bail!("interrupted");
            }
            let run = run_arm(env, sc, pair, arm)?;
            eprintln!("bench:   pair {} {:<28} {}", pair + 1, arm.label(), report::run_line(sc.kind, &run));
            sc.runs.push(run);
        }
    }
    if sc.kind == Kind::Pgbench {
        env.pg = None;
    }
    if sc.kind == Kind::Go {
        env.go = None;
    }
    if sc.kind == Kind::NginxTls {
        env.nginx_tls = None;
    }
    Ok(())
}

fn run_arm(env: &mut Env, sc: &mut Scenario, pair: usize, arm: Arm) -> anyhow::Result<Run> {
    if arm == Arm::Without {
        let foreign = agent::loaded_handle_programs();
        if !foreign.is_empty() {
            sc.notes.push(format!(
                "{} pair {}: {} handle_* BPF programs of another periscope (not this bench's) were loaded during the A run",
                sc.key,
                pair + 1,
                foreign.len()
            ));
        }
    }
    let prepared = prepare(env, sc.kind, env.dur)?;
    let mut run = Run {
        pair,
        arm,
        load: LoadResult::default(),
        costs: None,
        agent_startup_s: None,
        agent_tracked_after_s: None,
        agent_stop_s: None,
        sink_requests: None,
        sink_bytes: None,
        loadavg: util::loadavg(),
    };
    if arm == Arm::Without {
        run.load = (prepared.go)()?;
        return Ok(run);
    }
    let mut args = prepared.selector.clone();
    args.extend(
        [
            "--trace-printer",
            "off",
            "--prometheus-address",
            "127.0.0.1",
            "--prometheus-port",
            &env.prom_port.to_string(),
        ]
        .map(String::from),
    );
    if arm == Arm::WithoutHooks {
        let off = if sc.kind == Kind::Go { "--go-runtime" } else { "--libuv-uprobes" };
        args.extend([off, "false"].map(String::from));
    }
    if arm == Arm::WithOtlp {
        args.extend(
            ["--otlp-endpoint", &format!("http://127.0.0.1:{}", env.sink_port), "--otlp-protocol", "http/protobuf"]
                .map(String::from),
        );
    }
    env.agent_runs += 1;
    let log = env.dir.join(format!("agent-{}.log", env.agent_runs));
    let t = Instant::now();
    let agent = Agent::start(&env.bin, &args, env.prom_port, &log)?;
    if env.agent_nice != 0 {
        agent.renice(env.agent_nice)?;
    }
    run.agent_startup_s = Some(t.elapsed().as_secs_f64());
    run.agent_tracked_after_s = Some(agent.wait_tracked(&prepared.tracked, Duration::from_secs(20))?.as_secs_f64());
    if sc.kind == Kind::Go && arm == Arm::With {
        // The hooks are attached after the process is tracked (inspector thread).
        agent.wait_go_instrumented(Duration::from_secs(20))?;
    }
    let sink_before = env.sink.as_ref().map(|s| (s.requests.load(Ordering::SeqCst), s.bytes.load(Ordering::SeqCst)));
    let before = agent.snapshot()?;
    run.load = (prepared.go)()?;
    // Let the pipeline drain what the last requests produced.
    std::thread::sleep(Duration::from_millis(500));
    let after = agent.snapshot()?;
    run.costs = Some(agent::costs(&before, &after, agent.peak_rss_bytes()));
    if arm == Arm::WithOtlp {
        // The trace exporter batches: give it time to flush before reading the sink.
        std::thread::sleep(Duration::from_secs(2));
        if let (Some(s), Some((r0, b0))) = (&env.sink, sink_before) {
            run.sink_requests = Some(s.requests.load(Ordering::SeqCst) - r0);
            run.sink_bytes = Some(s.bytes.load(Ordering::SeqCst) - b0);
        }
        if let (Some(c), Ok(last)) = (&mut run.costs, agent.snapshot()) {
            let late = agent::costs(&before, &last, 0);
            c.counters.insert("periscope_spans_exported_total", late.counter("periscope_spans_exported_total"));
        }
    }
    // SIGTERM, wait for the exit, and wait until its programs are unloaded.
    run.agent_stop_s = Some(agent.stop()?.as_secs_f64());
    Ok(run)
}

fn prepare(env: &Env, kind: Kind, dur: Duration) -> anyhow::Result<Prepared> {
    match kind {
        Kind::Nginx => {
            let n = env.nginx.as_ref().context("nginx not started")?;
            let url = format!("http://127.0.0.1:{}/", n.port);
            Ok(Prepared {
                selector: vec!["--open-port".into(), n.port.to_string()],
                tracked: n.pids(),
                go: Box::new(move || load::wrk(&url, CONNS, dur)),
            })
        }
        Kind::NginxTls => {
            let n = env.nginx_tls.as_ref().context("nginx (TLS) not started")?;
            let url = format!("https://127.0.0.1:{}/", n.port);
            Ok(Prepared {
                selector: vec!["--open-port".into(), n.port.to_string()],
                tracked: n.pids(),
                go: Box::new(move || load::wrk(&url, CONNS, dur)),
            })
        }
        Kind::Node => {
            let n = env.node.as_ref().context("node not started")?;
            let url = format!("http://127.0.0.1:{}/", n.port);
            Ok(Prepared {
                selector: vec!["--open-port".into(), n.port.to_string()],
                tracked: vec![n.pid()],
                go: Box::new(move || load::wrk(&url, CONNS, dur)),
            })
        }
        Kind::FixedRate => {
            let n = env.nginx.as_ref().context("nginx not started")?;
            let (port, rate, stop) = (n.port, env.rate, env.stop.clone());
            Ok(Prepared {
                selector: vec!["--open-port".into(), n.port.to_string()],
                tracked: n.pids(),
                go: Box::new(move || load::fixed_rate(port, rate, CONNS as usize, dur, stop)),
            })
        }
        Kind::Go => {
            let g = env.go.as_ref().context("go_server not started")?;
            let url = format!("http://127.0.0.1:{}/items/1", g.port);
            Ok(Prepared {
                selector: vec!["--open-port".into(), g.port.to_string()],
                tracked: vec![g.pid()],
                go: Box::new(move || load::wrk(&url, CONNS, dur)),
            })
        }
        Kind::Pgbench => {
            let pg = env.pg.as_ref().context("postgres not started")?;
            let logdir = env.dir.join("pglogs");
            let _ = std::fs::remove_dir_all(&logdir);
            std::fs::create_dir_all(&logdir)?;
            // The shell waits for a line on stdin, then execs pgbench in the same
            // pid: the agent tracks that pid (--pid) before any query is sent.
            // A fixed gate script; pgbench and its arguments reach exec as "$@".
            let mut child = Command::new("sh")
                .args(["-c", "read -r _ && exec \"$@\"", "gate"])
                .arg(pg.pgbench())
                .args(["-n", "-S", "-c", &PG_CLIENTS.to_string(), "-j", "2", "-T", &dur.as_secs().to_string(), "-l"])
                .arg(format!("--log-prefix={}/pgbench_log", logdir.display()))
                .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "postgres", "postgres"])
                .current_dir(&logdir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting pgbench behind its gate")?;
            let pid = child.id();
            Ok(Prepared {
                selector: vec!["--pid".into(), pid.to_string(), "--exe-path".into(), "*/pgbench".into()],
                tracked: vec![pid],
                go: Box::new(move || {
                    child.stdin.take().context("stdin")?.write_all(b"go\n")?;
                    let out = child.wait_with_output()?;
                    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
                    if !out.status.success() {
                        bail!("pgbench failed: {summary}{}", String::from_utf8_lossy(&out.stderr));
                    }
                    let logs = read_logs(&logdir)?;
                    load::parse_pgbench(&summary, &logs)
                }),
            })
        }
    }
}

fn read_logs(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_name().to_string_lossy().starts_with("pgbench_log") {
            out.push(std::fs::read_to_string(e.path())?);
        }
    }
    Ok(out)
}

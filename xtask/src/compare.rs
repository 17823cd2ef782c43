//! `cargo xtask compare`: the Mythical services run once under the
//! OpenTelemetry Node SDK (`deploy/mythical/otel.js`, exporting OTLP to sink
//! A) while periscope watches the same processes (exporting OTLP to sink B,
//! old and new semantic-convention names). After the traffic, each
//! periscope span is matched to its SDK counterpart and the two are compared
//! per endpoint and SQL statement: counts, status, durations, parent/child
//! links, attributes. Writes `compare/report.md` and `compare/latency.png`.
//!
//! The SDK injects its own `traceparent` into the requester's calls
//! (replacing the hand-made one), and periscope honours incoming headers, so
//! periscope's server spans get SDK span ids as parents; the report counts
//! those links apart from the ones periscope makes itself.
mod analysis;
mod report;
mod spans;

use std::{
    fmt::Write as _,
    path::PathBuf,
    process::Stdio,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};

use crate::{
    bench::util::{http_get, prom_value},
    cmd::{self, cmd},
    deps,
    mythical::{self, Backends, Proc, ServiceOptions},
    otlp_sink,
};

#[derive(clap::Args)]
pub struct Options {
    /// How long the requester generates traffic (`60s`, `2m`).
    #[arg(long, value_parser = mythical::parse_duration, default_value = "60s")]
    duration: Duration,
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
    #[arg(long, default_value_t = 50)]
    request_interval_ms: u64,
    /// Where report.md and latency.png go.
    #[arg(long, default_value = "compare")]
    out: PathBuf,
    /// Only redo the analysis from the OTLP bodies a previous run kept in
    /// /tmp/periscope-compare/otlp (no services, no traffic).
    #[arg(long)]
    reanalyze: bool,
}

const PROM_PORT: u16 = 9465;
/// Spans starting this long after the services start, or after the traffic
/// stops, are left out (startup, and requests one side may not have flushed).
const WARMUP: Duration = Duration::from_secs(3);

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

pub fn run(o: Options) -> anyhow::Result<()> {
    let root = mythical::workspace_root();
    let out_dir = if o.out.is_absolute() { o.out.clone() } else { root.join(&o.out) };
    let dir = std::env::temp_dir().join("periscope-compare");
    if o.reanalyze {
        let run = Raw::load(&dir.join("otlp"))?;
        return write_report(&out_dir, run);
    }
    deps::ensure()?;
    cmd::run(&mut cmd("cargo", ["build", "-q", "-p", "periscope"]))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    }

    eprintln!("compare: starting PostgreSQL and RabbitMQ (private, in {})", dir.display());
    let backends = Backends::start(&dir)?;
    let (sdk_sink, sdk_port) = otlp_sink::start_recording(0)?;
    let (p_sink, p_port) = otlp_sink::start_recording(0)?;
    let env = |k: &str, v: String| (k.to_owned(), v);
    let opts = ServiceOptions {
        preload: Some(root.join("deploy/mythical/otel.js")),
        env: vec![
            env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{sdk_port}")),
            env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            env("OTEL_EXPORTER_OTLP_COMPRESSION", "none".into()),
            // Export often, and never drop for a full queue.
            env("OTEL_BSP_SCHEDULE_DELAY", "1000".into()),
            env("OTEL_BSP_MAX_QUEUE_SIZE", "100000".into()),
            env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2048".into()),
        ],
        request_interval_ms: o.request_interval_ms,
        work_ms: (20, 1500),
        load: o.load,
        db_delay_ms: o.db_delay_ms,
    };
    let mut services = mythical::spawn_services(&dir, &opts)?;
    let pids: Vec<u32> = services.iter().map(|s| s.proc.pid()).collect();
    let agent_log = dir.join("periscope.log");
    let mut cmd = mythical::periscope_command(&pids, PROM_PORT);
    cmd.args(["--otlp-endpoint", &format!("http://127.0.0.1:{p_port}"), "--otlp-protocol", "http/protobuf"])
        .args(["--trace-printer", "off"])
        .env("OTEL_SEMCONV_STABILITY_OPT_IN", "http/dup,database/dup")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&agent_log)?);
    let mut agent = Proc::spawn("periscope", &mut cmd, libc::SIGTERM)?;
    mythical::wait_tracked(&mut agent, PROM_PORT, &pids, &agent_log)?;
    mythical::open_services(&mut services)?;
    eprintln!("compare: services up under the SDK (OTLP -> :{sdk_port}) and periscope (OTLP -> :{p_port}); warming up");
    std::thread::sleep(WARMUP);

    let from = unix_nanos();
    let start = Instant::now();
    eprintln!("compare: traffic for {:?}", o.duration);
    while start.elapsed() < o.duration {
        if stop.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_secs(2));
        // The lab's Alloy scrapes each service's /metrics: the recorder's only HTTP.
        for port in [mythical::SERVER_PORT, mythical::REQUESTER_PORT, mythical::RECORDER_PORT] {
            let _ = http_get(port, "/metrics");
        }
        for s in services.iter_mut() {
            if !s.proc.running() {
                bail!("{} exited; see {}", s.proc.name, s.log.display());
            }
        }
    }
    let to = unix_nanos();
    let agent_metrics = http_get(PROM_PORT, "/metrics").unwrap_or_default();

    eprintln!("compare: stopping (the SDK and periscope flush on SIGTERM)");
    let mut pgids: Vec<u32> = pids.clone();
    pgids.push(agent.pid());
    pgids.extend(backends.pgids());
    // Requester first, the recorder after its last messages' work.
    services[1].proc.stop(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1600));
    services[2].proc.stop(Duration::from_secs(10));
    services[0].proc.stop(Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    agent.stop(Duration::from_secs(15));
    drop(backends);
    let left = mythical::leftovers(&pgids);
    if !left.is_empty() {
        bail!("processes left running: {left:?}");
    }

    let load = match o.load {
        mythical::Load::Loop => format!("calls the server every {} ms", o.request_interval_ms),
        mythical::Load::Lab => format!(
            "runs the lab's own load (`--load lab`: four chains firing without waiting, a burst of ~160 req/s \
             for the first ~12 s then one call every 0.1-1.1 s per chain, one traceparent header reused for a GET \
             and its DELETE; the recorder without a prefetch limit), every statement sleeping {} ms in PostgreSQL \
             (`--db-delay-ms`) so that the server's one pg client backs up as on the lab's crowded host,",
            o.db_delay_ms
        ),
    };
    let raw = Raw {
        sdk: sdk_sink.take_traces(),
        periscope: p_sink.take_traces(),
        window: (from, to),
        duration: o.duration,
        interval_ms: o.request_interval_ms,
        load,
        agent_metrics,
    };
    raw.save(&dir.join("otlp"))?;
    let _ = std::fs::remove_dir_all(dir.join("postgres/data"));
    let _ = std::fs::remove_dir_all(dir.join("rabbitmq/mnesia"));
    write_report(&out_dir, raw)
}

/// What a run collected: the OTLP bodies of each side, the measured window
/// (unix ns) and periscope's /metrics at its end. Kept on disk so the
/// analysis can be redone (`--reanalyze`).
struct Raw {
    sdk: Vec<Vec<u8>>,
    periscope: Vec<Vec<u8>>,
    window: (u64, u64),
    /// The run's --duration and --request-interval-ms.
    duration: Duration,
    interval_ms: u64,
    /// What the requester did, in words for the report.
    load: String,
    agent_metrics: String,
}

impl Raw {
    fn save(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (side, bodies) in [("sdk", &self.sdk), ("periscope", &self.periscope)] {
            for (i, b) in bodies.iter().enumerate() {
                std::fs::write(dir.join(format!("{side}-{i:05}.pb")), b)?;
            }
        }
        let run = format!("{} {} {} {}", self.window.0, self.window.1, self.duration.as_millis(), self.interval_ms);
        std::fs::write(dir.join("run"), run)?;
        std::fs::write(dir.join("periscope-metrics.txt"), &self.agent_metrics)?;
        std::fs::write(dir.join("load"), &self.load)?;
        Ok(())
    }

    fn load(dir: &std::path::Path) -> anyhow::Result<Raw> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {} (run cargo xtask compare first)", dir.display()))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        let bodies = |side: &str| -> anyhow::Result<Vec<Vec<u8>>> {
            names
                .iter()
                .filter(|n| n.starts_with(side) && n.ends_with(".pb"))
                .map(|n| Ok(std::fs::read(dir.join(n))?))
                .collect()
        };
        let run = std::fs::read_to_string(dir.join("run"))?;
        let v: Vec<u64> = run.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        let [from, to, duration_ms, interval_ms] = v[..] else { bail!("bad run file in {}", dir.display()) };
        Ok(Raw {
            sdk: bodies("sdk-")?,
            periscope: bodies("periscope-")?,
            window: (from, to),
            duration: Duration::from_millis(duration_ms),
            interval_ms,
            load: std::fs::read_to_string(dir.join("load"))
                .unwrap_or_else(|_| format!("calls the server every {interval_ms} ms")),
            agent_metrics: std::fs::read_to_string(dir.join("periscope-metrics.txt")).unwrap_or_default(),
        })
    }
}

fn write_report(out_dir: &std::path::Path, raw: Raw) -> anyhow::Result<()> {
    let (sdk, sdk_bad) = spans::decode(&raw.sdk);
    let (periscope, p_bad) = spans::decode(&raw.periscope);
    eprintln!("compare: {} SDK spans, {} periscope spans", sdk.len(), periscope.len());
    if sdk.is_empty() || periscope.is_empty() {
        bail!("a side exported nothing (SDK {}, periscope {})", sdk.len(), periscope.len());
    }
    let (n_sdk, n_p) = (sdk.len(), periscope.len());
    let a = analysis::analyze(sdk, periscope, raw.window);

    std::fs::create_dir_all(out_dir)?;
    let png = out_dir.join("latency.png");
    report::chart(&a, &png)?;
    let mut md = header(&raw, n_sdk, n_p, sdk_bad + p_bad);
    md += &report::summary(&a);
    md += report::NOTES;
    md += &report::tables(&a);
    let path = out_dir.join("report.md");
    std::fs::write(&path, md)?;
    eprintln!("compare: wrote {} and {}", path.display(), png.display());
    Ok(())
}

fn node_version(pkg: &str) -> String {
    let p = mythical::workspace_root().join("deploy/mythical/node_modules").join(pkg).join("package.json");
    std::fs::read_to_string(p)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn header(raw: &Raw, n_sdk: usize, n_p: usize, bad: usize) -> String {
    let agent_metrics = &raw.agent_metrics;
    let mut m = String::new();
    let cpu = cmd::cpu_model();
    let commit = cmd::read(&mut cmd("git", ["rev-parse", "--short", "HEAD"]));
    let dirty = if cmd::read(&mut cmd("git", ["status", "--porcelain", "--", "agent", "ebpf"])).is_empty() {
        ""
    } else {
        " (agent sources modified)"
    };
    let _ = writeln!(m, "# periscope vs the OpenTelemetry Node SDK on the Mythical services\n");
    let _ = writeln!(m, "Generated by `cargo xtask compare` on {}.\n", cmd::utc_now());
    let _ = writeln!(m, "| machine | |\n|---|---|");
    let _ = writeln!(m, "| host | {} |", cmd::hostname());
    let _ = writeln!(m, "| kernel | {} |", cmd::read(&mut cmd("uname", ["-r"])));
    let _ = writeln!(m, "| CPU | {} |", cpu.trim());
    let _ = writeln!(m, "| cores | {} (shared with other work) |", cmd::cores());
    let _ = writeln!(m, "| periscope (git) | {commit}{dirty}, debug build |");
    let _ = writeln!(m, "| node | {} |\n", cmd::read(&mut cmd("node", ["--version"])));
    let _ = writeln!(
        m,
        "**Setup.** `deploy/mythical` (server, requester, recorder: Express 5, `pg`, amqplib) with a private \
         PostgreSQL 15 and RabbitMQ, each service started as `node --require ./otel.js` (@opentelemetry/sdk-node \
         {}, auto-instrumentations-node {} with http {}, express {}, pg {}, amqplib {}; OTLP/HTTP protobuf to \
         sink A) and watched by periscope from its first syscall (OTLP/HTTP to sink B, \
         `OTEL_SEMCONV_STABILITY_OPT_IN=http/dup,database/dup`, the lab's route patterns). The requester {} \
         for {:?}; every 2 s each service's `/metrics` is scraped (as the lab's Alloy does). \
         Spans that start in the measured window count ({:?} of warm-up excluded). {n_sdk} SDK spans and {n_p} \
         periscope spans received in all; {bad} undecodable OTLP bodies.\n",
        node_version("@opentelemetry/sdk-node"),
        node_version("@opentelemetry/auto-instrumentations-node"),
        node_version("@opentelemetry/instrumentation-http"),
        node_version("@opentelemetry/instrumentation-express"),
        node_version("@opentelemetry/instrumentation-pg"),
        node_version("@opentelemetry/instrumentation-amqplib"),
        raw.load,
        raw.duration,
        WARMUP,
    );
    let counter = |name: &str| prom_value(agent_metrics, name);
    let _ = writeln!(
        m,
        "periscope's own counters at the end: events lost (ring buffer) {}, spans dropped {}, parse errors {}, \
         unknown-protocol connections {} (AMQP and the SDK's OTLP connections, until parsed), export errors {}.\n",
        counter("periscope_events_lost_ringbuf_total"),
        counter("periscope_spans_dropped_total"),
        counter("periscope_parse_errors_total"),
        counter("periscope_unknown_protocol_connections_total"),
        counter("periscope_export_errors_total"),
    );
    let _ = writeln!(m, "![latency distributions](latency.png)\n");
    m
}

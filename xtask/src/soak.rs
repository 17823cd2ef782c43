//! `cargo xtask soak`: the long reliability runs of issue 4, which are too
//! slow for CI. (1) The OTLP endpoint is dead for minutes while traffic flows:
//! the agent's memory must stay bounded, drops must be counted, and data must
//! flow again once the endpoint is back. (2) A thousand short-lived watched
//! processes, each making an HTTP call: kernel map entries and agent state
//! must come back to their baseline. Results go to bench/soak.md.
use std::{
    collections::HashSet,
    fmt::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::bench::{
    agent::Agent,
    services::Nginx,
    util::{http_get, prom_value},
};
use crate::cmd::{self, cmd};
use crate::deps;
use crate::otlp_sink as sink;

#[derive(clap::Args)]
pub struct Options {
    /// Minutes the OTLP endpoint stays dead.
    #[arg(long, default_value_t = 3.0)]
    down_minutes: f64,
    /// Short-lived watched processes to run.
    #[arg(long, default_value_t = 1000)]
    processes: u32,
    /// Use the existing release build.
    #[arg(long)]
    no_build: bool,
}

const NGINX_PORT: u16 = 18580;
const SINK_PORT: u16 = 18581;
const PROM_PORT: u16 = 18582;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Ids of the BPF maps `pid` holds, from /proc/PID/fdinfo (map_id: N).
fn map_ids_of(pid: u32) -> HashSet<u64> {
    let mut ids = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).into_iter().flatten().flatten() {
        let info = std::fs::read_to_string(entry.path()).unwrap_or_default();
        ids.extend(info.lines().filter_map(|l| l.strip_prefix("map_id:")?.trim().parse::<u64>().ok()));
    }
    ids
}

/// Entries of the agent's map called `name`.
fn map_entries(agent_pid: u32, name: &str) -> anyhow::Result<usize> {
    let ids = map_ids_of(agent_pid);
    for id in ids {
        let info = cmd::read(&mut cmd("bpftool", ["map", "show", "id", &id.to_string()]));
        if info.contains(&format!(" name {name} ")) {
            let dump = cmd::read(&mut cmd("bpftool", ["-j", "map", "dump", "id", &id.to_string()]));
            let v: serde_json::Value = serde_json::from_str(&dump).context("parsing bpftool map dump")?;
            return Ok(v.as_array().map_or(0, Vec::len));
        }
    }
    bail!("the agent holds no map named {name}")
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn targets(agent_pid_port: u16) -> usize {
    http_get(agent_pid_port, "/targets").map(|t| t.matches("\"pid\"").count()).unwrap_or(0)
}

fn wrk(secs: u64) {
    let _ = Command::new("wrk")
        .args(["-t1", "-c4", &format!("-d{secs}s"), &format!("http://127.0.0.1:{NGINX_PORT}/")])
        .stdout(Stdio::null())
        .status();
}

pub fn run(o: Options) -> anyhow::Result<()> {
    deps::ensure()?;
    deps::ensure_packages(&["wrk"])?;
    if !o.no_build {
        cmd::run(&mut cmd("cargo", ["build", "--release", "-q", "-p", "periscope"]))?;
    }
    let bin = root().join("target/release/periscope");
    let dir = std::env::temp_dir().join(format!("periscope-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let nginx = Nginx::start(&dir, NGINX_PORT)?;
    let mut report = format!(
        "# Soak results\n\n`cargo xtask soak --down-minutes {} --processes {}`, {}\n\n",
        o.down_minutes,
        o.processes,
        cmd::utc_now()
    );

    // (1) A dead OTLP endpoint for minutes, then back.
    let napper_dir = dir.join("bin");
    std::fs::create_dir_all(&napper_dir)?;
    let caller = napper_dir.join("soakcurl");
    std::fs::copy("/usr/bin/curl", &caller).context("copying curl")?;
    let args: Vec<String> = [
        "--open-port",
        &NGINX_PORT.to_string(),
        "--exe-path",
        &caller.display().to_string(),
        "--prometheus-port",
        &PROM_PORT.to_string(),
        "--prometheus-address",
        "127.0.0.1",
        "--trace-printer",
        "off",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let log = dir.join("agent.log");
    // The agent inherits these; nothing listens on the endpoint yet.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{SINK_PORT}"));
    std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    std::env::set_var("OTEL_METRIC_EXPORT_INTERVAL", "5000");
    let agent = Agent::start(&bin, &args, PROM_PORT, &log)?;
    agent.wait_tracked(&nginx.pids(), Duration::from_secs(20))?;
    let start_rss = rss_kb(agent.pid());
    let mut max_rss = start_rss;
    let down = Duration::from_secs_f64(o.down_minutes * 60.0);
    let t0 = Instant::now();
    eprintln!("soak: OTLP endpoint dead for {:.1} min while wrk runs", o.down_minutes);
    while t0.elapsed() < down {
        wrk(10);
        max_rss = max_rss.max(rss_kb(agent.pid()));
    }
    let metrics = http_get(PROM_PORT, "/metrics")?;
    let produced_down = prom_value(&metrics, "periscope_spans_produced_total");
    let dropped = prom_value(&metrics, "periscope_spans_dropped_total");
    let batches_dropped = prom_value(&metrics, "periscope_export_batches_dropped_total");
    let errors = prom_value(&metrics, "periscope_export_errors_total");
    let exported_down = prom_value(&metrics, "periscope_spans_exported_total");
    eprintln!("soak: endpoint back");
    let stats = sink::start(SINK_PORT)?;
    let t1 = Instant::now();
    while stats.requests.load(Ordering::Relaxed) < 3 && t1.elapsed() < Duration::from_secs(90) {
        wrk(5);
    }
    let recovered_after = t1.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let metrics = http_get(PROM_PORT, "/metrics")?;
    let exported_after = prom_value(&metrics, "periscope_spans_exported_total");
    max_rss = max_rss.max(rss_kb(agent.pid()));
    let _ = writeln!(
        report,
        "## OTLP endpoint dead for {:.1} min, then back\n\n| | value |\n|---|---:|\n\
         | spans produced while dead | {produced_down} |\n| spans exported while dead | {exported_down} |\n\
         | spans dropped (queue full) | {dropped} |\n| OTLP batches given up | {batches_dropped} |\n\
         | failed export attempts | {errors} |\n| agent RSS at start / max (kB) | {start_rss} / {max_rss} |\n\
         | first successful exports after the endpoint came back | {:.1} s |\n\
         | spans exported after recovery | {exported_after} |\n| sink requests / MB | {} / {:.1} |\n",
        o.down_minutes,
        recovered_after.as_secs_f64(),
        stats.requests.load(Ordering::Relaxed),
        stats.bytes.load(Ordering::Relaxed) as f64 / 1e6,
    );
    let ok_otlp = exported_after > exported_down
        && stats.requests.load(Ordering::Relaxed) >= 3
        && max_rss < start_rss + 64 * 1024;

    // (2) Short-lived watched processes.
    let base_tracked = map_entries(agent.pid(), "tracked_pids")?;
    let base_conns = map_entries(agent.pid(), "conns")?;
    let base_targets = targets(PROM_PORT);
    let before = prom_value(&http_get(PROM_PORT, "/metrics")?, "periscope_processes_tracked_total");
    eprintln!("soak: {} short-lived watched processes", o.processes);
    let t2 = Instant::now();
    for i in 0..o.processes {
        let _ = Command::new(&caller)
            .args(["-s", "-o", "/dev/null", &format!("http://127.0.0.1:{NGINX_PORT}/p{i}")])
            .status();
    }
    let ran = t2.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let metrics = http_get(PROM_PORT, "/metrics")?;
    let tracked = prom_value(&metrics, "periscope_processes_tracked_total") - before;
    let (after_tracked, after_conns, after_targets) =
        (map_entries(agent.pid(), "tracked_pids")?, map_entries(agent.pid(), "conns")?, targets(PROM_PORT));
    let rss = rss_kb(agent.pid());
    let _ = writeln!(
        report,
        "\n## {} short-lived watched processes (each execs, makes one HTTP call, exits) in {:.1} s\n\n\
         | | before | after |\n|---|---:|---:|\n| kernel tracked_pids entries | {base_tracked} | {after_tracked} |\n\
         | kernel conns entries | {base_conns} | {after_conns} |\n| agent targets | {base_targets} | {after_targets} |\n\
         | agent RSS (kB) | {max_rss} (max so far) | {rss} |\n\n\
         Processes picked up from their exec event: {tracked} of {} (a process can exit before the agent reads its exec).\n",
        o.processes,
        ran.as_secs_f64(),
        o.processes,
    );
    let ok_procs = after_tracked <= base_tracked && after_conns <= base_conns + 2 && after_targets == base_targets;
    drop(agent);
    drop(nginx);
    let _ = std::fs::remove_dir_all(&dir);

    let out = root().join("bench/soak.md");
    std::fs::write(&out, &report)?;
    eprintln!("{report}\nsoak: wrote {}", out.display());
    if !ok_otlp || !ok_procs {
        bail!("soak failed: otlp recovery/bounded memory ok = {ok_otlp}, process churn back to baseline = {ok_procs}");
    }
    Ok(())
}

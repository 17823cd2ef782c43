//! One periscope process for one B run: start, wait until it tracks the
//! targets, read its costs (eBPF run time of its own programs, CPU, RSS,
//! /metrics counters), stop it with SIGTERM and verify that it and its
//! kernel programs are gone.
use std::{
    collections::{BTreeMap, HashSet},
    fs::File,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde_json::Value;

use super::util::{http_get, prom_value, send_signal};

/// Counters read from /metrics at each snapshot.
pub const COUNTERS: &[&str] = &[
    "periscope_events_received_total",
    "periscope_events_lost_ringbuf_total",
    "periscope_events_lost_pending_map_total",
    "periscope_spans_produced_total",
    "periscope_spans_dropped_total",
    "periscope_spans_exported_total",
    "periscope_export_errors_total",
    "periscope_export_batches_dropped_total",
    "periscope_parse_errors_total",
    "periscope_protocol_desync_total",
    "periscope_requests_unmatched_total",
    "periscope_unknown_protocol_connections_total",
];

pub struct Agent {
    child: Child,
    prom_port: u16,
    /// Ids of the BPF programs this agent process holds (from /proc/PID/fdinfo).
    prog_ids: HashSet<u32>,
}

/// Cumulative values at one instant.
#[derive(Clone, Debug)]
pub struct Snapshot {
    at: Instant,
    /// program id -> (name, run_time_ns, run_cnt)
    bpf: BTreeMap<u32, (String, u64, u64)>,
    cpu_ticks: u64,
    counters: BTreeMap<&'static str, f64>,
}

/// What one B run cost.
#[derive(Clone, Debug, Default)]
pub struct Costs {
    pub seconds: f64,
    pub bpf_run_time_ns: u64,
    pub bpf_run_cnt: u64,
    /// (program, run_time_ns, run_cnt), most expensive first.
    pub bpf_per_program: Vec<(String, u64, u64)>,
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
    pub counters: BTreeMap<&'static str, f64>,
}

impl Costs {
    pub fn counter(&self, name: &str) -> f64 {
        self.counters.get(name).copied().unwrap_or(0.0)
    }
}

pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

impl Agent {
    /// Sets the nice value of every thread of the agent (setpriority(2)
    /// with PRIO_PROCESS acts on one thread on Linux).
    pub fn renice(&self, nice: i32) -> anyhow::Result<()> {
        for task in std::fs::read_dir(format!("/proc/{}/task", self.child.id()))? {
            let tid: u32 = task?.file_name().to_string_lossy().parse()?;
            // SAFETY: setpriority(2) on a thread id of our own child.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
                bail!("setpriority({tid}, {nice}): {}", std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Starts `bin` with `args` (which must include `--prometheus-port prom_port`)
    /// and waits until it serves /healthz and holds its BPF programs.
    pub fn start(bin: &Path, args: &[String], prom_port: u16, log: &Path) -> anyhow::Result<Self> {
        let logf = File::create(log)?;
        let child = Command::new(bin)
            .args(args)
            .env("PERISCOPE_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut agent = Agent { child, prom_port, prog_ids: HashSet::new() };
        let start = Instant::now();
        loop {
            if let Some(status) = agent.child.try_wait()? {
                bail!(
                    "periscope exited during startup ({status}); log: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            if http_get(prom_port, "/healthz").is_ok() {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("periscope did not serve /healthz on :{prom_port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        agent.prog_ids = prog_ids_of(agent.pid());
        if agent.prog_ids.is_empty() {
            bail!("periscope (pid {}) holds no BPF program fds", agent.pid());
        }
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until /targets lists every pid of `pids`.
    pub fn wait_tracked(&self, pids: &[u32], timeout: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            let listed: HashSet<u32> = http_get(self.prom_port, "/targets")
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|t| t.get("pid")?.as_u64().map(|p| p as u32))
                .collect();
            if pids.iter().all(|p| listed.contains(p)) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("periscope does not list pids {pids:?} in /targets after {timeout:?} (it lists {listed:?})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until /metrics counts a Go process as instrumented (its
    /// runtime hooks attached).
    pub fn wait_go_instrumented(&self, timeout: Duration) -> anyhow::Result<Duration> {
        const NAME: &str = "periscope_go_runtime_processes_total";
        let start = Instant::now();
        loop {
            let metrics = http_get(self.prom_port, "/metrics").unwrap_or_default();
            let lines: Vec<&str> = metrics.lines().filter(|l| l.starts_with(NAME)).collect();
            if lines.iter().any(|l| l.contains("reason=\"instrumented\"")) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("periscope did not attach the Go runtime hooks within {timeout:?} (/metrics: {lines:?})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let at = Instant::now();
        let progs: Value =
            serde_json::from_str(&crate::cmd::read(&mut crate::cmd::cmd("bpftool", ["prog", "show", "-j"])))
                .context("parsing `bpftool prog show -j`")?;
        let mut bpf = BTreeMap::new();
        for p in progs.as_array().into_iter().flatten() {
            let Some(id) = p.get("id").and_then(Value::as_u64) else { continue };
            if !self.prog_ids.contains(&(id as u32)) {
                continue;
            }
            let name = p.get("name").and_then(Value::as_str).unwrap_or("?").to_owned();
            let t = p.get("run_time_ns").and_then(Value::as_u64).unwrap_or(0);
            let c = p.get("run_cnt").and_then(Value::as_u64).unwrap_or(0);
            bpf.insert(id as u32, (name, t, c));
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name (which may contain spaces): utime is field 14, stime 15.
        let rest = &stat[stat.rfind(')').context("malformed stat")? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let cpu_ticks = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
        let metrics = http_get(self.prom_port, "/metrics")?;
        let counters = COUNTERS.iter().map(|&c| (c, prom_value(&metrics, c))).collect();
        Ok(Snapshot { at, bpf, cpu_ticks, counters })
    }

    pub fn peak_rss_bytes(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_owned();
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    }

    /// SIGTERM, wait for the exit, then wait until none of its programs is loaded.
    /// Returns how long the shutdown took.
    pub fn stop(mut self) -> anyhow::Result<Duration> {
        let start = Instant::now();
        send_signal(self.pid(), libc::SIGTERM);
        let mut exited = false;
        while start.elapsed() < Duration::from_secs(20) {
            if self.child.try_wait()?.is_some() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
            bail!("periscope (pid {}) ignored SIGTERM for 20 s and was killed", self.pid());
        }
        loop {
            let left: Vec<u32> = loaded_prog_ids().intersection(&self.prog_ids).copied().collect();
            if left.is_empty() {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("BPF programs {left:?} of the stopped periscope are still loaded");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.prog_ids.clear();
        Ok(start.elapsed())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        super::util::stop_child(&mut self.child, libc::SIGTERM);
    }
}

/// Differences between two snapshots.
pub fn costs(a: &Snapshot, b: &Snapshot, peak_rss_bytes: u64) -> Costs {
    let mut per: Vec<(String, u64, u64)> = b
        .bpf
        .iter()
        .map(|(id, (name, t, c))| {
            let (t0, c0) = a.bpf.get(id).map(|(_, t, c)| (*t, *c)).unwrap_or((0, 0));
            (name.clone(), t.saturating_sub(t0), c.saturating_sub(c0))
        })
        .filter(|(_, _, c)| *c > 0)
        .collect();
    per.sort_by_key(|p| std::cmp::Reverse(p.1));
    Costs {
        seconds: b.at.duration_since(a.at).as_secs_f64(),
        bpf_run_time_ns: per.iter().map(|p| p.1).sum(),
        bpf_run_cnt: per.iter().map(|p| p.2).sum(),
        bpf_per_program: per,
        cpu_seconds: b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / clk_tck(),
        peak_rss_bytes,
        counters: b.counters.iter().map(|(k, v)| (*k, v - a.counters.get(k).copied().unwrap_or(0.0))).collect(),
    }
}

/// Ids of the BPF programs whose fds `pid` holds.
pub fn prog_ids_of(pid: u32) -> HashSet<u32> {
    let mut ids = HashSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) {
        for fd in fds.flatten() {
            if let Ok(info) = std::fs::read_to_string(fd.path()) {
                if let Some(id) =
                    info.lines().find_map(|l| l.strip_prefix("prog_id:")).and_then(|v| v.trim().parse::<u32>().ok())
                {
                    ids.insert(id);
                }
            }
        }
    }
    ids
}

/// Ids of every loaded BPF program.
pub fn loaded_prog_ids() -> HashSet<u32> {
    serde_json::from_str::<Value>(&crate::cmd::read(&mut crate::cmd::cmd("bpftool", ["prog", "show", "-j"])))
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.get("id")?.as_u64().map(|i| i as u32))
        .collect()
}

/// Names and ids of loaded `handle_*` programs (periscope's naming), e.g. left
/// by another periscope on the machine.
pub fn loaded_handle_programs() -> Vec<(u32, String)> {
    serde_json::from_str::<Value>(&crate::cmd::read(&mut crate::cmd::cmd("bpftool", ["prog", "show", "-j"])))
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            let name = p.get("name")?.as_str()?;
            let id = p.get("id")?.as_u64()? as u32;
            name.starts_with("handle_").then(|| (id, name.to_owned()))
        })
        .collect()
}

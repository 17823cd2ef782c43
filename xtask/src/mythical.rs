//! The Mythical stack shared by `demo` and `compare`: a private PostgreSQL
//! cluster, a private RabbitMQ node (with its own epmd), the three services
//! of `deploy/mythical`, and periscope watching them. Every process runs in
//! its own process group and is stopped (then its group killed) when its
//! [`Proc`] is dropped; the system's own PostgreSQL clusters, RabbitMQ node
//! and epmd are never touched.
//!
//! The services start behind a gate (`sh` waiting on its stdin, then `exec
//! node`): periscope is given the gate pids, and the gates open only once
//! periscope tracks them, so it sees each service from its first syscall
//! (the server's PostgreSQL startup message included), as an agent that runs
//! before the services start would.
use std::{
    io::Write,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::bench::util::{ensure_port_free, http_get, send_signal};

pub const SERVER_PORT: u16 = 4000;
pub const REQUESTER_PORT: u16 = 4001;
pub const RECORDER_PORT: u16 = 4002;
/// Private ports of the stack's own PostgreSQL and RabbitMQ (no clash with
/// system services on 5432 / 5672 / 4369 / 25672).
const PG_PORT: u16 = 55432;
const AMQP_PORT: u16 = 55672;
const RABBIT_DIST_PORT: u16 = 55673;
const EPMD_PORT: u16 = 55674;
/// The lab's database password for user postgres.
const PG_PASSWORD: &str = "mythical";

pub const SERVICES: [&str; 3] = ["mythical-server", "mythical-requester", "mythical-recorder"];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// One started process, leader of its own process group.
pub struct Proc {
    pub name: &'static str,
    child: Child,
    /// The signal that asks it to stop cleanly.
    signal: i32,
    stopped: bool,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command, signal: i32) -> anyhow::Result<Proc> {
        let child = cmd.process_group(0).spawn().with_context(|| format!("starting {name}"))?;
        Ok(Proc { name, child, signal, stopped: false })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The stop signal, up to `grace` to exit, then SIGKILL to the whole group.
    pub fn stop(&mut self, grace: Duration) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if self.running() {
            send_signal(self.pid(), self.signal);
            let start = Instant::now();
            while self.running() && start.elapsed() < grace {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Whatever is left in the group (a leader that ignored the signal, or
        // children it left behind).
        // SAFETY: kill(2) on the group this process leads (it was spawned
        // with process_group(0) and is reaped only below).
        unsafe { libc::kill(-(self.pid() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(15));
    }
}

/// Pids of live processes in the process groups `pgids` (empty when all
/// stopped).
pub fn leftovers(pgids: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    for pgid in pgids {
        let list = crate::cmd::read(&mut crate::cmd::cmd("pgrep", ["-g", &pgid.to_string()]));
        out.extend(list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    out
}

fn user_ids(name: &str) -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = Command::new("id").args([flag, name]).output()?;
        if !out.status.success() {
            bail!("no system user {name}: run cargo xtask deps");
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

fn owned_dir(path: &Path, user: &str) -> anyhow::Result<(u32, u32)> {
    std::fs::create_dir_all(path)?;
    let (uid, gid) = user_ids(user)?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    Ok((uid, gid))
}

fn log_file(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Waits for `port` while `proc` is alive; its log's tail on failure.
fn wait_started(proc: &mut Proc, port: u16, timeout: Duration, log: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if !proc.running() {
            bail!("{} exited while starting:\n{}", proc.name, log_tail(log));
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{} does not listen on {port} after {timeout:?}:\n{}", proc.name, log_tail(log))
}

/// The private PostgreSQL and RabbitMQ, in `dir`.
pub struct Backends {
    // Field order is drop order: the broker before its epmd.
    pub rabbitmq: Proc,
    pub epmd: Proc,
    pub postgres: Proc,
}

impl Backends {
    pub fn start(dir: &Path) -> anyhow::Result<Backends> {
        for port in [PG_PORT, AMQP_PORT, RABBIT_DIST_PORT, EPMD_PORT, SERVER_PORT, REQUESTER_PORT, RECORDER_PORT] {
            ensure_port_free(port).with_context(|| format!("the Mythical stack needs port {port}"))?;
        }
        std::fs::create_dir_all(dir)?;
        // The dir is root's; the postgres and rabbitmq users reach their own subdirs.
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let postgres = start_postgres(&dir.join("postgres"))?;
        let (epmd, rabbitmq) = start_rabbitmq(&dir.join("rabbitmq"))?;
        Ok(Backends { rabbitmq, epmd, postgres })
    }

    pub fn pgids(&self) -> Vec<u32> {
        vec![self.rabbitmq.pid(), self.epmd.pid(), self.postgres.pid()]
    }
}

fn start_postgres(dir: &Path) -> anyhow::Result<Proc> {
    let bin = crate::bench::services::pg_bindir()?;
    let (uid, gid) = owned_dir(dir, "postgres")?;
    let pwfile = dir.join("pw");
    std::fs::write(&pwfile, format!("{PG_PASSWORD}\n"))?;
    std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))?;
    let data = dir.join("data");
    let out = Command::new(bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .uid(uid)
        .gid(gid)
        .current_dir(dir)
        .output()
        .context("running initdb (cargo xtask deps installs postgresql)")?;
    if !out.status.success() {
        bail!("initdb failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    let log = dir.join("server.log");
    let file = log_file(&log)?;
    std::os::unix::fs::chown(&log, Some(uid), Some(gid))?;
    let mut proc = Proc::spawn(
        "postgres",
        Command::new(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", &format!("port={PG_PORT}")])
            .args(["-c", &format!("unix_socket_directories={}", dir.display())])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "max_connections=20", "-c", "ssl=off"])
            .uid(uid)
            .gid(gid)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file),
        // SIGINT: fast shutdown.
        libc::SIGINT,
    )?;
    wait_started(&mut proc, PG_PORT, Duration::from_secs(30), &log)?;
    // Listening may precede accepting logins (startup recovery).
    let start = Instant::now();
    loop {
        let ok = Command::new(bin.join("psql"))
            .args(["-X", "-q", "-At", "-U", "postgres", "-d", "postgres", "-c", "SELECT 1"])
            .arg("-h")
            .arg(dir)
            .args(["-p", &PG_PORT.to_string()])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(proc);
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("postgres does not accept logins:\n{}", log_tail(&log));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// epmd on its own port (RabbitMQ would otherwise start a shared daemon
/// that outlives it) and a RabbitMQ node with its own name, ports, config,
/// data and logs, run as user rabbitmq.
fn start_rabbitmq(dir: &Path) -> anyhow::Result<(Proc, Proc)> {
    let (uid, gid) = owned_dir(dir, "rabbitmq")?;
    let conf = dir.join("rabbitmq.conf");
    // `loopback_users = none`: guest may log in (it could anyway from 127.0.0.1).
    std::fs::write(&conf, format!("listeners.tcp.default = 127.0.0.1:{AMQP_PORT}\nloopback_users = none\n"))?;
    let plugins = dir.join("enabled_plugins");
    std::fs::write(&plugins, "[].\n")?;
    for f in [&conf, &plugins] {
        std::os::unix::fs::chown(f, Some(uid), Some(gid))?;
    }
    let epmd_log = dir.join("epmd.log");
    let mut epmd = Proc::spawn(
        "epmd",
        Command::new("epmd")
            .args(["-port", &EPMD_PORT.to_string(), "-address", "127.0.0.1"])
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(log_file(&epmd_log)?)
            .stderr(Stdio::null()),
        libc::SIGTERM,
    )
    .context("starting epmd (cargo xtask deps installs rabbitmq-server, which brings erlang)")?;
    wait_started(&mut epmd, EPMD_PORT, Duration::from_secs(10), &epmd_log)?;

    let log = dir.join("rabbitmq.log");
    let file = log_file(&log)?;
    let d = |sub: &str| dir.join(sub).into_os_string();
    let mut rabbit = Proc::spawn(
        "rabbitmq",
        Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", dir) // the Erlang cookie is created here
            .env("ERL_EPMD_PORT", EPMD_PORT.to_string())
            .env("RABBITMQ_NODENAME", "periscope-mythical@localhost")
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", AMQP_PORT.to_string())
            .env("RABBITMQ_DIST_PORT", RABBIT_DIST_PORT.to_string())
            .env("RABBITMQ_CONF_ENV_FILE", "/dev/null")
            .env("RABBITMQ_CONFIG_FILE", &conf)
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
            .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
            .env("RABBITMQ_LOG_BASE", d("log"))
            .env("RABBITMQ_PID_FILE", d("pid"))
            .env("RABBITMQ_LOGS", "-")
            .uid(uid)
            .gid(gid)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file),
        libc::SIGTERM,
    )
    .context("starting rabbitmq-server (cargo xtask deps installs it)")?;
    wait_started(&mut rabbit, AMQP_PORT, Duration::from_secs(90), &log)?;
    Ok((epmd, rabbit))
}

/// The requester's load shape (deploy/mythical/requester.js).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Load {
    /// One call at a time, `--request-interval-ms` apart.
    Loop,
    /// The lab's own: four chains firing without waiting, a burst of ~160
    /// req/s for ~12 s then calm, a traceparent reused for a GET and its
    /// DELETE; the recorder without a prefetch limit.
    Lab,
}

/// How the services run.
#[derive(Clone)]
pub struct ServiceOptions {
    /// `node --require <preload>` (the OpenTelemetry SDK for `compare`).
    pub preload: Option<PathBuf>,
    /// More environment for every service.
    pub env: Vec<(String, String)>,
    /// The requester's pause between calls (loop load).
    pub request_interval_ms: u64,
    /// The recorder's work per message.
    pub work_ms: (u64, u64),
    pub load: Load,
    /// Every statement also sleeps this long in PostgreSQL (the lab's
    /// crowded host on a fast machine: the server's one client backs up).
    pub db_delay_ms: u64,
}

impl ServiceOptions {
    /// The environment `load` and `db_delay_ms` stand for.
    pub(crate) fn load_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("MYTHICAL_DB_DELAY_MS", self.db_delay_ms.to_string())];
        if self.load == Load::Lab {
            env.extend([
                ("MYTHICAL_LOAD", "lab".to_owned()),
                // The gates open once periscope watches: start at once.
                ("LAB_START_MS", "1000".to_owned()),
                ("RECORDER_PREFETCH", "0".to_owned()),
            ]);
        }
        env
    }
}

/// A service waiting behind its gate.
pub struct Service {
    pub proc: Proc,
    gate: Option<ChildStdin>,
    pub log: PathBuf,
}

impl Service {
    /// Lets the gate `exec` the service.
    pub fn open(&mut self) -> anyhow::Result<()> {
        if let Some(mut gate) = self.gate.take() {
            gate.write_all(b"go\n").with_context(|| format!("opening the gate of {}", self.proc.name))?;
        }
        Ok(())
    }
}

/// Starts server, requester and recorder, each gated (see the module doc).
pub fn spawn_services(dir: &Path, o: &ServiceOptions) -> anyhow::Result<Vec<Service>> {
    let code = workspace_root().join("deploy/mythical");
    if !code.join("node_modules/express/package.json").exists() {
        bail!("{} has no node_modules: run cargo xtask deps", code.display());
    }
    let scripts: [(&'static str, &str, u16); 3] = [
        ("mythical-server", "server.js", SERVER_PORT),
        ("mythical-requester", "requester.js", REQUESTER_PORT),
        ("mythical-recorder", "recorder.js", RECORDER_PORT),
    ];
    let mut out = Vec::new();
    for (name, script, port) in scripts {
        let log = dir.join(format!("{name}.log"));
        let file = log_file(&log)?;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "read -r _ && exec \"$@\"", "gate", "node"]);
        if let Some(p) = &o.preload {
            cmd.arg("--require").arg(p);
        }
        cmd.arg(code.join(script))
            .current_dir(&code)
            .env("PORT", port.to_string())
            .env("LISTEN_ADDRESS", "127.0.0.1")
            .env("OTEL_SERVICE_NAME", name)
            .env("OTEL_RESOURCE_ATTRIBUTES", "service.namespace=mythical")
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", PG_PORT.to_string())
            .env("PGUSER", "postgres")
            .env("PGPASSWORD", PG_PASSWORD)
            .env("PGDATABASE", "postgres")
            .env("AMQP_URL", format!("amqp://guest:guest@127.0.0.1:{AMQP_PORT}"))
            .env("SERVER_URL", format!("http://127.0.0.1:{SERVER_PORT}"))
            .env("REQUEST_INTERVAL_MS", o.request_interval_ms.to_string())
            .env("RECORDER_WORK_MIN_MS", o.work_ms.0.to_string())
            .env("RECORDER_WORK_MAX_MS", o.work_ms.1.to_string())
            .envs(o.load_env())
            .envs(o.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(file.try_clone()?)
            .stderr(file);
        let mut proc = Proc::spawn(name, &mut cmd, libc::SIGTERM)?;
        let gate = proc.child.stdin.take();
        out.push(Service { proc, gate, log });
    }
    Ok(out)
}

/// Waits until periscope's `/targets` (on `prom_port`) lists every pid.
pub fn wait_tracked(agent: &mut Proc, prom_port: u16, pids: &[u32], log: &Path) -> anyhow::Result<()> {
    wait_started(agent, prom_port, Duration::from_secs(60), log)?;
    let start = Instant::now();
    loop {
        if !agent.running() {
            bail!("periscope exited:\n{}", log_tail(log));
        }
        let tracked: Vec<u32> = http_get(prom_port, "/targets")
            .ok()
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|t| t["pid"].as_u64().map(|p| p as u32))
            .collect();
        if pids.iter().all(|p| tracked.contains(p)) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("periscope does not track {pids:?} after 30 s (tracks {tracked:?})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Opens the gates and waits until each service listens.
pub fn open_services(services: &mut [Service]) -> anyhow::Result<()> {
    for s in services.iter_mut() {
        s.open()?;
    }
    for (s, port) in services.iter_mut().zip([SERVER_PORT, REQUESTER_PORT, RECORDER_PORT]) {
        wait_started(&mut s.proc, port, Duration::from_secs(60), &s.log.clone())?;
    }
    Ok(())
}

/// periscope watching the gated services (by pid, and by the lab's ports),
/// with the lab's namespace and route patterns; /metrics and /targets on
/// `prom_port`.
pub fn periscope_command(pids: &[u32], prom_port: u16) -> Command {
    let mut cmd = Command::new(workspace_root().join("target/debug/periscope"));
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    cmd.args(["--pid", &pids.join(",")])
        .args(["--open-port", &format!("{SERVER_PORT}-{RECORDER_PORT}")])
        .args(["--service-namespace", "mythical"])
        .args(["--prometheus-port", &prom_port.to_string()])
        .args(["--routes", "/owlbear,/unicorn,/manticore,/illithid,/beholder"])
        .stdin(Stdio::null());
    cmd
}

/// `20s`, `2m`, `1h`, `500ms` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {s:?} (use 20s, 2m, 500ms)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (use ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("20x").is_err());
        assert!(parse_duration("s").is_err());
    }
}

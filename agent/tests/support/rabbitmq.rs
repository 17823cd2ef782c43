//! A throw-away RabbitMQ node for the AMQP integration tests: its own node
//! name, AMQP port, distribution port, config, mnesia and log directories
//! under the temp dir, run as user `rabbitmq` (Debian's `rabbitmq-server`
//! package). A system node the package may have started (`rabbit@host` on
//! 5672) is never touched; epmd (4369) is shared with it, which is how
//! Erlang nodes on one host work. The node accepts `guest`/`guest` on
//! 127.0.0.1 only. Dropping the guard stops the node and removes the
//! directory, pass or fail.
#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::agent::{free_port, wait_for};

/// The broker's start script (execs the Erlang VM when RUNNING_UNDER_SYSTEMD
/// is set, so our child is the node's own beam.smp process).
pub const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
pub const RABBITMQCTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

fn rabbitmq_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, "rabbitmq"]).output().expect("id");
        assert!(out.status.success(), "no system user rabbitmq: install rabbitmq-server (cargo xtask deps)");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Whether an AMQP 0-9-1 broker answers on `port`: the client's protocol
/// header must bring back a connection.start method frame.
pub fn answers_amqp(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"AMQP\x00\x00\x09\x01").is_err() {
        return false;
    }
    let mut head = [0u8; 11];
    // Frame type 1 (method), channel 0, size, class 10 (connection), method 10 (start).
    s.read_exact(&mut head).is_ok() && head[0] == 1 && head[1..3] == [0, 0] && head[7..11] == [0, 10, 0, 10]
}

/// A private RabbitMQ node.
pub struct RabbitMq {
    /// AMQP port on 127.0.0.1.
    pub port: u16,
    pub node: String,
    pub dir: PathBuf,
    uid: u32,
    gid: u32,
    child: Child,
}

impl RabbitMq {
    /// Starts the node on a free port and waits until it speaks AMQP.
    pub fn start(tag: &str) -> RabbitMq {
        assert!(
            Path::new(RABBITMQ_SERVER).exists(),
            "{RABBITMQ_SERVER} missing: install rabbitmq-server (cargo xtask deps)"
        );
        let (uid, gid) = rabbitmq_ids();
        let dir = std::env::temp_dir().join(format!("periscope-it-rabbitmq-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["", "mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let port = free_port();
        let dist_port = free_port();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            // A small test disk or a busy host must not raise the alarms
            // that block publishers.
            "loopback_users.guest = true\n\
             disk_free_limit.absolute = 1MB\n\
             vm_memory_high_watermark.relative = 0.9\n\
             log.console = false\n\
             log.file.level = info\n",
        )
        .unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(dir.join("rabbitmq-env.conf"), "").unwrap();
        chown_tree(&dir, uid, gid);
        let node = format!("periscope-{tag}-{}@localhost", std::process::id());
        let stdout = std::fs::File::create(dir.join("stdout.log")).unwrap();
        let mut cmd = Command::new(RABBITMQ_SERVER);
        env(&mut cmd, &dir, &node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", dir.join("node.pid"))
            // exec the VM instead of a signal-forwarding shell.
            .env("RUNNING_UNDER_SYSTEMD", "1")
            .uid(uid)
            .gid(gid)
            // Own process group: a forced stop reaches every process of it.
            .process_group(0)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(stdout.try_clone().unwrap())
            .stderr(stdout);
        let child = cmd.spawn().expect("cannot start rabbitmq-server");
        let mut rmq = RabbitMq { port, node, dir, uid, gid, child };
        let started = Instant::now();
        wait_for("rabbitmq to accept AMQP connections", Duration::from_secs(90), || {
            if let Ok(Some(status)) = rmq.child.try_wait() {
                panic!(
                    "rabbitmq-server exited ({status}) after {:?}:\n{}\n{}",
                    started.elapsed(),
                    log_tail(&rmq.dir.join("stdout.log")),
                    rmq.log()
                );
            }
            answers_amqp(rmq.port).then_some(())
        });
        rmq
    }

    /// The node's beam.smp process (its connections are the broker side).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// amqplib connection URL.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/", self.port)
    }

    /// The last lines of the node's log file.
    pub fn log(&self) -> String {
        let log = std::fs::read_dir(self.dir.join("log"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "log"));
        log.map(|p| log_tail(&p)).unwrap_or_default()
    }

    /// Runs `rabbitmqctl -n <node> <args>` (as the node's user, with its
    /// cookie); returns stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(RABBITMQCTL);
        let out = env(&mut cmd, &self.dir, &self.node)
            .args(["-n", &self.node, "-q"])
            .args(args)
            .uid(self.uid)
            .gid(self.gid)
            .current_dir(&self.dir)
            .output()
            .expect("cannot run rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Environment shared by the server and rabbitmqctl: the node's home (its
/// Erlang cookie) and an empty env file instead of /etc/rabbitmq's.
fn env<'a>(cmd: &'a mut Command, dir: &Path, node: &str) -> &'a mut Command {
    cmd.env("HOME", dir).env("RABBITMQ_NODENAME", node).env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            chown_tree(&p, uid, gid);
        } else {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
        }
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        if matches!(self.child.try_wait(), Ok(None)) {
            // SIGTERM: the node stops gracefully.
            // SAFETY: kill(2) on the pid of a child we started and have not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // Whatever of the node's process group is left (erl_child_setup,
        // inet_gethost...). epmd daemonizes into its own group: shared.
        // SAFETY: kill(2) on the process group this guard created.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! Runs the real `periscope` binary for integration tests and reads its
//! Prometheus endpoint. Kernel tests need root; CI runs as root.
#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct Agent {
    child: Child,
    pub metrics_port: u16,
    pub stdout_path: PathBuf,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Plain HTTP/1.0 GET on loopback (the test's own tooling, not traffic under test).
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn wait_listening(port: u16) {
    wait_for(&format!("port {port} to listen"), Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
}

impl Agent {
    /// Starts periscope with `args` and `env`, and waits until it serves /healthz.
    pub fn start(args: &[&str], env: &[(&str, String)]) -> Agent {
        let metrics_port = free_port();
        let stdout_path = std::env::temp_dir().join(format!("periscope-test-{metrics_port}.out"));
        let stdout = std::fs::File::create(&stdout_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_periscope"));
        cmd.args(args)
            .args(["--prometheus-port", &metrics_port.to_string(), "--prometheus-address", "127.0.0.1"])
            .env("PERISCOPE_LOG_LEVEL", "info")
            .stdout(stdout)
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("cannot start periscope");
        let mut agent = Agent { child, metrics_port, stdout_path };
        wait_for("periscope to serve /healthz", Duration::from_secs(30), || {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("periscope exited during startup: {status}");
            }
            http_get(metrics_port, "/healthz").filter(|b| b.contains("ok"))
        });
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics").unwrap_or_default()
    }

    pub fn targets(&self) -> String {
        http_get(self.metrics_port, "/targets").unwrap_or_default()
    }

    /// Waits until the agent watches `pid`.
    pub fn wait_tracked(&self, pid: u32) {
        wait_for(&format!("periscope to watch pid {pid}"), Duration::from_secs(20), || {
            let compact: String = self.targets().chars().filter(|c| !c.is_whitespace()).collect();
            compact.contains(&format!("\"pid\":{pid},")).then_some(())
        });
    }

    /// Sum of every sample of `metric` whose line contains all of `label_parts`.
    pub fn sample_sum(&self, metric: &str, label_parts: &[&str]) -> f64 {
        sample_sum(&self.metrics(), metric, label_parts)
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// SIGTERM, then wait; returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        false
    }
}

pub fn sample_sum(text: &str, metric: &str, label_parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .filter(|l| label_parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
        let _ = std::fs::remove_file(&self.stdout_path);
    }
}

/// A child process killed when the test ends, pass or fail.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    /// SIGTERM first, so that servers stop their own children (nginx's
    /// workers outlive a SIGKILLed master); SIGKILL after 3 s.
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(3) {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

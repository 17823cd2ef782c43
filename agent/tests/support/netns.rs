//! Network namespaces, veth pairs, bridges and NAT rules for tests, each a
//! guard that removes what it made when dropped, pass or fail. Names and
//! addresses are derived from the test process's pid and a counter, so two
//! test binaries on one machine do not collide. Addresses come from
//! 198.18.0.0/15 (set aside for benchmarks) and exist only in the test's own
//! namespaces (and, for the routed shape, on the host ends of its veths).
#![allow(dead_code)]

use std::{
    net::Ipv4Addr,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command; panics with its stderr when it fails.
pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Runs a command for cleanup: failures are reported, never fatal.
fn run_quiet(program: &str, args: &[&str]) {
    match Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!("cleanup: {program} {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => eprintln!("cleanup: cannot run {program}: {e}"),
    }
}

/// A unique tag (short enough for interface names) and a /24 index for one
/// topology.
pub fn unique() -> (String, u8) {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    (format!("p{}{}", pid % 100_000, n), ((pid + n * 7) % 120) as u8)
}

/// 198.18.0.0/15 split in /24s: subnet `i` (0..=511), host `h`.
pub fn addr(i: u16, h: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18 + (i / 256) as u8, (i % 256) as u8, h)
}

/// A network namespace, deleted (with its devices) when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        run("ip", &["netns", "add", name]);
        let ns = Netns { name: name.to_owned() };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// A command run inside the namespace (`ip netns exec`, which execs it:
    /// the child's pid is the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs a program inside the namespace; panics when it fails.
    pub fn exec(&self, program: &str, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        run_quiet("ip", &["netns", "del", &self.name]);
    }
}

/// A device in the host's namespace (the host end of a veth), deleted when
/// dropped (with its peer, and with the sysctls set on it).
pub struct HostLink {
    pub name: String,
}

impl Drop for HostLink {
    fn drop(&mut self) {
        run_quiet("ip", &["link", "del", &self.name]);
    }
}

/// A veth pair from `a` (device `a_dev`) to `b` (`b_dev`); `None` is the
/// host's namespace (its end comes back as a guard).
pub fn veth(a: Option<&Netns>, a_dev: &str, b: Option<&Netns>, b_dev: &str) -> Option<HostLink> {
    run("ip", &["link", "add", a_dev, "type", "veth", "peer", "name", b_dev]);
    // Guard the host end first: a failure below still removes the pair.
    let guard = HostLink { name: a_dev.to_owned() };
    let mut host = None;
    for (ns, dev) in [(a, a_dev), (b, b_dev)] {
        match ns {
            Some(ns) => run("ip", &["link", "set", dev, "netns", &ns.name]),
            None => host = Some(HostLink { name: dev.to_owned() }),
        }
    }
    std::mem::forget(guard);
    host
}

/// An iptables rule in the host's namespace, or in `netns`, deleted when
/// dropped.
pub struct IptablesRule {
    netns: Option<String>,
    table: String,
    spec: Vec<String>,
}

impl IptablesRule {
    /// `iptables -t <table> -A <spec...>`
    pub fn append(netns: Option<&Netns>, table: &str, spec: &[&str]) -> IptablesRule {
        let rule = IptablesRule {
            netns: netns.map(|n| n.name.clone()),
            table: table.to_owned(),
            spec: spec.iter().map(|s| s.to_string()).collect(),
        };
        let (program, args) = rule.command("-A");
        run(&program, &args.iter().map(String::as_str).collect::<Vec<_>>());
        rule
    }

    fn command(&self, op: &str) -> (String, Vec<String>) {
        let mut args: Vec<String> = Vec::new();
        if let Some(ns) = &self.netns {
            args.extend(["netns", "exec", ns, "iptables"].map(String::from));
        }
        args.extend(["-w", "-t", &self.table, op].map(String::from));
        args.extend(self.spec.iter().cloned());
        let program = if self.netns.is_some() { "ip" } else { "iptables" };
        (program.to_owned(), args)
    }
}

impl Drop for IptablesRule {
    fn drop(&mut self) {
        let (program, args) = self.command("-D");
        run_quiet(&program, &args.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

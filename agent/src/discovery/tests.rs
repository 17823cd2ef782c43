//! Tests against real processes: python3 listeners spawned by the test.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::*;

const LISTEN_PY: &str = "import socket,sys,time
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam)
s.bind((sys.argv[1], 0))
s.listen()
print(s.getsockname()[1], flush=True)
time.sleep(300)
";

/// A python3 process listening on an ephemeral TCP port; killed on drop.
struct Listener {
    child: Child,
    port: u16,
}

impl Listener {
    /// `wrapper` goes before python3 (e.g. `["unshare", "--net"]`).
    fn spawn(wrapper: &[&str], host: &str, env: &[(&str, &str)]) -> Result<Self, String> {
        let mut argv: Vec<&str> = wrapper.to_vec();
        argv.extend(["python3", "-c", LISTEN_PY, host]);
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..])
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("OTEL_RESOURCE_ATTRIBUTES")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawn {argv:?}: {e}"))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).ok();
        match line.trim().parse() {
            Ok(port) => Ok(Self { child, port }),
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output().map(|o| o.stderr).unwrap_or_default();
                Err(format!("{argv:?} did not listen: {}", String::from_utf8_lossy(&out)))
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill_and_reap(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

fn sel(ports: Option<&str>, globs: &[&str], pids: &[u32]) -> Selector {
    Selector::from_parts(ports, globs, pids).unwrap()
}

fn pids_of(r: &ScanResult) -> Vec<u32> {
    r.matched.iter().map(|p| p.pid).collect()
}

fn find(r: &ScanResult, pid: u32) -> Option<&ProcessInfo> {
    r.matched.iter().find(|p| p.pid == pid)
}

#[test]
fn scan_real_listeners_by_port_exe_and_pid() {
    let a = Listener::spawn(
        &[],
        "127.0.0.1",
        &[("OTEL_SERVICE_NAME", "foo"), ("OTEL_RESOURCE_ATTRIBUTES", "service.namespace=shop,team=a%20b,broken")],
    )
    .unwrap();
    let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let b = Listener::spawn(&[], if ipv6 { "::1" } else { "127.0.0.1" }, &[]).unwrap();
    let mut scanner = Scanner::new();

    // By open port (IPv4).
    let r = scanner.scan(&sel(Some(&a.port.to_string()), &[], &[]));
    let info = find(&r, a.pid()).unwrap_or_else(|| panic!("port {} not found: {r:?}", a.port));
    assert!(find(&r, b.pid()).is_none());
    assert_eq!(info.listening_ports, vec![a.port]);
    assert_eq!(info.env_service_name.as_deref(), Some("foo"));
    assert_eq!(
        info.env_resource_attrs,
        vec![("service.namespace".to_owned(), "shop".to_owned()), ("team".into(), "a b".into())]
    );
    let exe = info.exe_path.as_deref().unwrap();
    assert!(exe.is_absolute() && exe.to_string_lossy().contains("python3"), "{exe:?}");
    assert!(info.exe_name.starts_with("python3"));
    assert!(info.cmdline[0].contains("python3") && info.cmdline[1] == "-c", "{:?}", info.cmdline);
    assert_eq!(info.ppid, std::process::id());
    assert!(info.start_time_ticks > 0);
    assert_eq!(info.language, Language::Python);
    let my_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(format!("net:[{}]", info.netns_inode.unwrap()), my_ns.to_string_lossy());

    let svc = build_service(info, &ServiceOptions { host_name: "h".into(), ..Default::default() });
    assert_eq!(svc.name, "foo");
    assert_eq!(svc.namespace.as_deref(), Some("shop"));
    assert_eq!(svc.instance_id, format!("h-{}-{}", a.pid(), info.start_time_ticks));

    // By port (IPv6 when available), via a range.
    let r = scanner.scan(&sel(Some(&format!("{}-{}", b.port, b.port)), &[], &[]));
    let info_b = find(&r, b.pid()).unwrap_or_else(|| panic!("port {} (v6={ipv6}) not found", b.port));
    assert_eq!(info_b.listening_ports, vec![b.port]);
    assert_eq!(info_b.env_service_name, None);
    // No env: the exe name (python3 -c has no script name to prefer).
    let svc = build_service(info_b, &ServiceOptions { host_name: "h".into(), ..Default::default() });
    assert_eq!(svc.name, info_b.exe_name);

    // By exe glob: both, with their ports filled although ports were not asked.
    let r = scanner.scan(&sel(None, &["*/python3*"], &[]));
    assert_eq!(find(&r, a.pid()).unwrap().listening_ports, vec![a.port]);
    assert_eq!(find(&r, b.pid()).unwrap().listening_ports, vec![b.port]);
    assert!(matches_exe(&sel(None, &["*/python3*"], &[]), exe));
    let r = scanner.scan(&sel(None, &["/nonexistent/*"], &[]));
    assert!(find(&r, a.pid()).is_none());

    // By pid: exactly that one.
    let r = scanner.scan(&sel(None, &[], &[b.pid()]));
    assert_eq!(pids_of(&r), vec![b.pid()]);

    // Any criterion: port of a OR pid of b.
    let r = scanner.scan(&sel(Some(&a.port.to_string()), &[], &[b.pid()]));
    assert!(find(&r, a.pid()).is_some() && find(&r, b.pid()).is_some());

    // read_process agrees with the scan.
    let single = read_process(a.pid()).unwrap();
    assert_eq!(single.listening_ports, vec![a.port]);
    assert_eq!(single.key(), (a.pid(), info.start_time_ticks));
}

#[test]
fn killed_processes_disappear() {
    let mut a = Listener::spawn(&[], "127.0.0.1", &[]).unwrap();
    let (pid, port) = (a.pid(), a.port);
    let selector = sel(Some(&port.to_string()), &[], &[pid]);
    let mut scanner = Scanner::new();
    assert_eq!(pids_of(&scanner.scan(&selector)), vec![pid]);

    // Killed but not reaped: a zombie, which is not listed either.
    let _ = a.child.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        if stat.rsplit_once(") ").unwrap().1.starts_with('Z') {
            break;
        }
        assert!(Instant::now() < deadline, "no zombie: {stat}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(pids_of(&scanner.scan(&selector)).is_empty());
    assert!(matches!(read_process(pid), Err(DiscoveryError::Gone { pid: p }) if p == pid));

    a.kill_and_reap();
    assert!(pids_of(&scanner.scan(&selector)).is_empty());
    assert!(matches!(read_process(pid), Err(DiscoveryError::Gone { .. })));
}

#[test]
fn other_network_namespace() {
    let ok = Command::new("unshare").args(["--net", "true"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED other_network_namespace: `unshare --net` does not work here");
        return;
    }
    // `unshare` execs python3 in place: the child pid is the listener.
    let a = Listener::spawn(&["unshare", "--net"], "127.0.0.1", &[("OTEL_SERVICE_NAME", "in-ns")]).unwrap();
    let host = Listener::spawn(&[], "127.0.0.1", &[]).unwrap();
    let mut scanner = Scanner::new();
    let r = scanner.scan(&sel(Some(&format!("{},{}", a.port, host.port)), &[], &[]));
    let info = find(&r, a.pid()).unwrap_or_else(|| panic!("netns listener not found: {r:?}"));
    assert_eq!(info.listening_ports, vec![a.port]);
    assert_eq!(info.env_service_name.as_deref(), Some("in-ns"));
    let host_info = find(&r, host.pid()).unwrap();
    assert_ne!(info.netns_inode, host_info.netns_inode);
    assert!(info.netns_inode.is_some());

    // The port is only open inside that namespace: a port-only selector for
    // the host listener does not pick up the namespaced one unless equal.
    if a.port != host.port {
        let r = scanner.scan(&sel(Some(&host.port.to_string()), &[], &[]));
        assert!(find(&r, a.pid()).is_none());
    }
    assert_eq!(read_process(a.pid()).unwrap().listening_ports, vec![a.port]);
}

#[test]
fn skips_self_and_kernel_threads() {
    let kthreads: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| procfs::parse_stat(&s))
                .is_some_and(|s| s.is_kernel_thread())
        })
        .take(5)
        .collect();
    let mut pids = kthreads.clone();
    pids.push(std::process::id());
    let r = Scanner::new().scan(&sel(None, &["*"], &pids));
    assert!(find(&r, std::process::id()).is_none());
    for k in &kthreads {
        assert!(find(&r, *k).is_none(), "kernel thread {k} listed");
        assert!(matches!(
            read_process(*k),
            Err(DiscoveryError::KernelThread { .. }) | Err(DiscoveryError::Gone { .. })
        ));
    }
    // read_process itself works on the agent's own pid.
    assert_eq!(read_process(std::process::id()).unwrap().pid, std::process::id());
    // An empty selector matches nothing (and does no work).
    assert!(Scanner::new().scan(&Selector::default()).matched.is_empty());
}

#[test]
fn unreadable_entries_are_skipped_not_fatal() {
    let root = std::env::temp_dir().join(format!("periscope-fakeproc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    // 100: a stat but nothing else (exited between reads); 200: no stat at all;
    // 300: garbage stat; "self" and "net": non-numeric entries are ignored.
    std::fs::create_dir_all(root.join("100")).unwrap();
    std::fs::create_dir_all(root.join("200")).unwrap();
    std::fs::create_dir_all(root.join("300")).unwrap();
    std::fs::create_dir_all(root.join("self")).unwrap();
    std::fs::write(root.join("100/stat"), "100 (ghost) S 1 100 100 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0")
        .unwrap();
    std::fs::write(root.join("300/stat"), "not a stat").unwrap();
    let mut scanner = Scanner::with_proc_root(&root);
    let r = scanner.scan(&sel(Some("1-65535"), &["*"], &[100, 200, 300]));
    assert!(r.matched.is_empty(), "{r:?}");
    assert_eq!(r.skipped, 3);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn scan_survives_process_churn() {
    // A shell that forks short-lived children as fast as it can while we scan
    // with selectors that read everything about every process.
    let mut churn = Command::new("sh")
        .args(["-c", "while :; do /bin/true; sleep 0.001 & done"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let l = Listener::spawn(&[], "127.0.0.1", &[]).unwrap();
    let mut scanner = Scanner::new();
    let everything = sel(Some("1-65535"), &["*"], &[]);
    let mut skipped = 0;
    for _ in 0..20 {
        let r = scanner.scan(&everything);
        assert!(find(&r, l.pid()).is_some());
        assert!(find(&r, churn.id()).is_some());
        skipped += r.skipped;
    }
    let _ = churn.kill();
    let _ = churn.wait();
    eprintln!("processes skipped mid-read over 20 scans: {skipped}");
    // Also single reads of processes that are about to exit.
    for _ in 0..50 {
        let mut c = Command::new("/bin/true").spawn().unwrap();
        let pid = c.id();
        match read_process(pid) {
            Ok(info) => assert_eq!(info.pid, pid),
            Err(DiscoveryError::Gone { .. }) => {}
            Err(e) => panic!("unexpected error for exiting process: {e}"),
        }
        let _ = c.wait();
    }
    let _ = Path::new("/");
}

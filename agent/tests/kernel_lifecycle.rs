//! Process lifecycle against the real kernel: processes that start after the
//! agent are picked up with the Resource they ask for in their own
//! environment, processes that exit are forgotten (agent state and kernel
//! maps), and missing privileges give one clear line. Needs root.
mod support;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::Duration,
};

use periscope::{
    capture::{decode, Event},
    probes::{ProbeConfig, Probes},
};

use support::agent::{free_port, http_get, wait_for, wait_listening, Agent, Proc};
use support::otlp_receiver::{Receiver, Val};

/// Keys of every `tracked_pids` map in the kernel (any periscope running).
fn kernel_tracked_pids() -> Vec<u32> {
    let out = Command::new("bpftool").args(["-j", "map", "dump", "name", "tracked_pids"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // `"formatted":{"key":1234,` — one per entry, across all maps of that name.
    text.match_indices("\"formatted\":{\"key\":")
        .filter_map(|(i, m)| {
            let rest = &text[i + m.len()..];
            rest[..rest.find(',')?].parse().ok()
        })
        .collect()
}

fn not_listed(agent: &Agent, pid: u32) -> Option<()> {
    let compact: String = agent.targets().chars().filter(|c| !c.is_whitespace()).collect();
    (!compact.contains(&format!("\"pid\":{pid},"))).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_processes_are_found_named_by_their_env_and_forgotten_on_exit() {
    let rx = Receiver::start().await;
    let port = free_port();
    let agent = Agent::start(
        &["--open-port", &port.to_string(), "--service-namespace", "fallback-ns"],
        &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", rx.grpc_endpoint()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into())],
    );
    // Started after the agent: found by the periodic scan once it listens.
    let server = Proc(
        Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1"])
            .current_dir(std::env::temp_dir())
            .env("OTEL_SERVICE_NAME", "catalog")
            .env("OTEL_RESOURCE_ATTRIBUTES", "service.namespace=shop,deployment.environment=test%20env")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = server.pid();
    wait_listening(port);
    agent.wait_tracked(pid);
    assert!(kernel_tracked_pids().contains(&pid), "pid in the kernel map while watched");
    http_get(port, "/does-not-exist").unwrap();

    let spans = rx.wait_for_spans(1, Duration::from_secs(20)).await;
    let r = &spans[0].resource;
    assert_eq!(r.get("service.name"), Some(&Val::Str("catalog".into())));
    assert_eq!(r.get("service.namespace"), Some(&Val::Str("shop".into())), "the process's own namespace wins");
    assert_eq!(r.get("deployment.environment"), Some(&Val::Str("test env".into())));
    assert_eq!(r.get("process.pid"), Some(&Val::Int(pid as i64)));
    assert_eq!(r.get("telemetry.sdk.name"), Some(&Val::Str("periscope".into())));
    assert!(matches!(r.get("host.name"), Some(Val::Str(h)) if !h.is_empty()));
    assert_eq!(spans[0].attr_int("http.response.status_code"), Some(404));

    drop(server); // kill + reap
    wait_for("the exited server to be forgotten", Duration::from_secs(10), || not_listed(&agent, pid));
    assert!(!kernel_tracked_pids().contains(&pid), "no stale kernel map entry");
    let forgotten = agent.sample_sum("periscope_processes_forgotten_total", &[]);
    assert_eq!(forgotten, 1.0);
}

#[test]
fn short_lived_processes_leave_nothing_behind() {
    // A private copy of sleep, so that no other sleep on the machine matches.
    let dir = std::env::temp_dir().join(format!("periscope-napper-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let napper = dir.join("napper");
    std::fs::copy("/bin/sleep", &napper).unwrap();
    let glob = format!("{}/napper", dir.display());
    let agent = Agent::start(&["--exe-path", &glob], &[]);
    // Each one execs the napper: matched on its exec event, then exits.
    let mut children: Vec<_> = (0..20).map(|_| Command::new(&napper).arg("0.3").spawn().unwrap()).collect();
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    wait_for("some sleeps to be tracked", Duration::from_secs(10), || {
        (agent.sample_sum("periscope_processes_tracked_total", &[]) >= 1.0).then_some(())
    });
    wait_for("every sleep to exit and be forgotten", Duration::from_secs(20), || {
        let tracked = agent.sample_sum("periscope_processes_tracked_total", &[]);
        let forgotten = agent.sample_sum("periscope_processes_forgotten_total", &[]);
        (tracked == forgotten && pids.iter().all(|p| not_listed(&agent, *p).is_some())).then_some(())
    });
    let stale: Vec<u32> = kernel_tracked_pids().into_iter().filter(|p| pids.contains(p)).collect();
    assert!(stale.is_empty(), "stale kernel entries: {stale:?}");
    for c in &mut children {
        c.wait().unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without privileges: one clear line per missing privilege (the startup
/// checks, issue 6), a one-line verdict, exit status 1, nothing else.
#[test]
fn missing_privileges_give_one_clear_line_each() {
    let bin = std::env::temp_dir().join(format!("periscope-unpriv-{}", std::process::id()));
    std::fs::copy(env!("CARGO_BIN_EXE_periscope"), &bin).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(&bin)
        .args(["--pid", "1"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&bin);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.trim().lines().collect();
    let (verdict, checks) = lines.split_last().expect("some output");
    assert!(verdict.starts_with("periscope: ") && verdict.contains("startup check"), "last line is the verdict: {err}");
    for needed in ["missing capability CAP_BPF", "missing capability CAP_PERFMON"] {
        assert_eq!(checks.iter().filter(|l| l.contains(needed)).count(), 1, "exactly one line for {needed}: {err}");
    }
    for l in checks {
        assert!(l.contains("ERROR") || l.contains("WARN"), "only check lines before the verdict: {l}");
    }
    let mut unique = checks.to_vec();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), checks.len(), "no line twice: {err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
}

#[test]
fn sigterm_detaches_every_program() {
    // Program ids the process holds open, from /proc/PID/fdinfo (prog_id: N).
    let ids_of = |pid: u32| -> Vec<u64> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap().flatten() {
            let info = std::fs::read_to_string(entry.path()).unwrap_or_default();
            ids.extend(info.lines().filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u64>().ok()));
        }
        ids
    };
    let all_ids = || -> Vec<u64> {
        let out = Command::new("bpftool").args(["-j", "prog", "show"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split("{\"id\":").skip(1).filter_map(|p| p[..p.find(',')?].parse().ok()).collect()
    };
    let mut agent = Agent::start(&["--pid", "1"], &[]);
    let ids = ids_of(agent.pid());
    assert!(ids.len() >= 30, "programs attached while running: {ids:?}");
    assert!(agent.stop(), "clean exit on SIGTERM");
    wait_for("programs to be unloaded", Duration::from_secs(10), || {
        let live = all_ids();
        ids.iter().all(|id| !live.contains(id)).then_some(())
    });
}

/// A python3 process whose threads end in the order `mode` says, one step per
/// line on stdin: threads that end before the process first ("early" on
/// stdout), then either every thread at once (`group`: exit_group while eight
/// threads wait in a read) or the leader thread alone (`leader`), its other
/// threads at the next line.
const THREADED_EXIT: &str = r#"
import ctypes, os, sys, threading, time
sys.stdin.readline()
early = [threading.Thread(target=lambda: None) for _ in range(3)]
for t in early: t.start()
for t in early: t.join()
print("early", flush=True)
sys.stdin.readline()
if sys.argv[1] == "group":
    r, w = os.pipe()
    for _ in range(8):
        threading.Thread(target=os.read, args=(r, 1), daemon=True).start()
    time.sleep(0.05)
    os._exit(0)
else:
    go = threading.Event()
    for _ in range(3):
        threading.Thread(target=go.wait).start()
    threading.Thread(target=lambda: (sys.stdin.readline(), go.set())).start()
    SYS_exit = {"x86_64": 60, "aarch64": 93}[os.uname().machine]
    ctypes.CDLL(None).syscall(SYS_exit, 0)
"#;

/// Process-exit events of `pid` among the records waiting in the ring buffer.
fn exit_events(ring: &mut aya::maps::RingBuf<aya::maps::MapData>, pid: u32) -> usize {
    let mut exits = 0;
    while let Some(record) = ring.next() {
        if let Ok(Event::ProcExit(e)) = decode(&record) {
            exits += usize::from(e.header.pid == pid);
        }
    }
    exits
}

/// The kernel sends exactly one exit per process, not one per thread: not
/// when threads end before it, not when its leader thread ends first, and not
/// when exit_group kills every thread at once (several of them may see the
/// group dead; one only may say so).
#[test]
fn one_exit_event_per_process_not_per_thread() {
    let config = ProbeConfig { capture_size: 64, ring_buffer_bytes: 1 << 20, wakeup_bytes: 4096 };
    let (mut probes, mut ring) = Probes::load(&config).expect("load the kernel programs");
    let modes = std::iter::repeat_n("group", 10).chain(std::iter::repeat_n("leader", 3));
    for mode in modes {
        let mut child = Command::new("python3")
            .args(["-c", THREADED_EXIT, mode])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        probes.track(pid).unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut alive = |what: &str| {
            assert_eq!(exit_events(&mut ring, pid), 0, "{mode}: {what}, the process did not");
            assert!(probes.tracked_pids().contains(&pid), "{mode}: still tracked once {what}");
        };
        stdin.write_all(b"\n").unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "early", "{mode}: the child's first step");
        alive("three threads ended");

        stdin.write_all(b"\n").unwrap();
        if mode == "leader" {
            // The leader is a zombie until the last thread of its group ends.
            wait_for("the leader thread to end", Duration::from_secs(10), || {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                stat.rsplit_once(')')?.1.trim_start().starts_with('Z').then_some(())
            });
            alive("the leader thread ended");
            stdin.write_all(b"\n").unwrap();
        }
        assert!(child.wait().unwrap().success(), "{mode}: the child exits cleanly");
        // Reaped: every thread went through the exit tracepoint.
        assert_eq!(exit_events(&mut ring, pid), 1, "{mode}: one exit event for pid {pid}");
        assert!(!probes.tracked_pids().contains(&pid), "{mode}: untracked by the kernel at exit");
    }
}

/// Forks `n` children (each sleeps until stdin closes) and prints their pids.
const FORKER: &str = r#"
import os, sys
pids = []
for _ in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        sys.stdin.read()
        os._exit(0)
    pids.append(pid)
print(" ".join(map(str, pids)), flush=True)
sys.stdin.read()
for p in pids:
    os.waitpid(p, 0)
"#;

/// The fork event names the child's instance with the same start time as
/// `/proc/PID/stat` (field 22), so a forked child's `service.instance.id`
/// does not change when /proc is read after the fork.
#[test]
fn fork_events_carry_the_childs_start_time_as_proc_shows_it() {
    let config = ProbeConfig { capture_size: 64, ring_buffer_bytes: 1 << 20, wakeup_bytes: 4096 };
    let (mut probes, mut ring) = Probes::load(&config).expect("load the kernel programs");
    let mut parent = Command::new("python3")
        .args(["-c", FORKER, "20"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Tracked before it forks: python needs far longer to start than this.
    probes.track(parent.id()).unwrap();
    let mut line = String::new();
    BufReader::new(parent.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let children: Vec<u32> = line.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(children.len(), 20, "{line}");
    let mut forks = std::collections::HashMap::new();
    while let Some(record) = ring.next() {
        // (The python3 on PATH may be a shim whose helpers fork too.)
        if let Ok(Event::ProcFork(e)) = decode(&record) {
            forks.insert(e.header.pid, (e.ppid, e.start_time_ticks()));
        }
    }
    for pid in &children {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        // Field 22 overall; the 20th after the `)` that ends the comm.
        let proc_ticks: u64 = fields[19].parse().unwrap();
        let want = (parent.id(), proc_ticks);
        assert_eq!(forks.get(pid), Some(&want), "child {pid}: (ppid, start) of the fork event vs /proc/{pid}/stat");
    }
    drop(parent.stdin.take());
    assert!(parent.wait().unwrap().success());
}

//! The capability set deploy/ grants (BPF, PERFMON, SYS_PTRACE,
//! DAC_READ_SEARCH) is enough to attach every program, and a missing
//! capability is named by the start-up checks before anything is loaded.
//! Capabilities are reduced with util-linux `setpriv` (needs root, as every
//! kernel test); no container runtime involved. A seccomp filter that denies
//! `bpf` / `perf_event_open` (as podman's default profile does without
//! CAP_SYS_ADMIN) is installed by the test itself before exec, and the agent
//! must name seccomp, not a capability.
mod support;

use std::{
    os::unix::process::CommandExt,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use support::agent::{free_port, http_get, wait_for};

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn periscope() -> &'static str {
    env!("CARGO_BIN_EXE_periscope")
}

#[test]
fn minimal_capability_set_attaches_every_program() {
    let port = free_port();
    let mut child = Command::new("setpriv")
        .args(["--bounding-set", "-all,+bpf,+perfmon,+sys_ptrace,+dac_read_search", "--inh-caps", "-all", periscope()])
        .args(["--pid", "1", "--trace-printer", "off", "--prometheus-address", "127.0.0.1"])
        .args(["--prometheus-port", &port.to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux) is needed");
    let healthy = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for("periscope with reduced capabilities to serve /healthz", Duration::from_secs(30), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("periscope exited: {status}");
            }
            http_get(port, "/healthz").filter(|b| b.contains("ok"))
        })
    }));
    // setpriv execs periscope: same pid.
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(healthy.is_ok(), "agent did not come up with the minimal set:\n{stderr}");
    let cap_eff = periscope::preflight::parse_cap_eff(&status).expect("CapEff of the agent");
    let want = (1u64 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_SYS_PTRACE) | (1 << CAP_DAC_READ_SEARCH);
    assert_eq!(cap_eff, want, "the agent ran with CapEff {cap_eff:#x}");
    assert!(stderr.contains("kernel programs attached"), "{stderr}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
}

#[test]
fn missing_capabilities_are_named_before_loading() {
    let start = Instant::now();
    let out = Command::new("setpriv")
        .args(["--bounding-set", "-bpf,-perfmon,-sys_admin", "--inh-caps", "-all", periscope()])
        .args(["--pid", "1", "--trace-printer", "off"])
        .env("NO_COLOR", "1")
        .output()
        .expect("setpriv (util-linux) is needed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(10));
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 2, "{stderr}");
    assert!(errors[0].contains("missing capability CAP_BPF"), "{stderr}");
    assert!(errors[1].contains("missing capability CAP_PERFMON"), "{stderr}");
    assert!(stderr.contains("2 startup check(s) failed"), "{stderr}");
    assert!(!stderr.contains("kernel programs attached"), "{stderr}");
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// A syscall a test filter refuses with EPERM: every call of it, or only
/// those whose first argument (the `bpf` command) is `arg0`.
#[derive(Clone, Copy)]
struct Deny {
    nr: libc::c_long,
    arg0: Option<u32>,
}

const DENY_BPF: Deny = Deny { nr: libc::SYS_bpf, arg0: None };
const DENY_PERF_EVENT_OPEN: Deny = Deny { nr: libc::SYS_perf_event_open, arg0: None };
/// `bpf(BPF_PROG_LOAD, ...)` only: map creation (the start-up trial) still works.
const DENY_BPF_PROG_LOAD: Deny = Deny { nr: libc::SYS_bpf, arg0: Some(5) };

/// Installs, in the child before it execs, a seccomp filter that makes each
/// of `denied` return EPERM and allows every other syscall (and every call
/// of another architecture: the filter only looks at native numbers). Root
/// holds CAP_SYS_ADMIN, so no `no_new_privs` is needed; the filter survives
/// exec, as a container engine's does.
fn with_seccomp_denying<'a>(cmd: &'a mut Command, denied: &[Deny]) -> &'a mut Command {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const RET_ALLOW: libc::sock_filter = stmt(RET_K, libc::SECCOMP_RET_ALLOW);
    const RET_EPERM: libc::sock_filter = stmt(RET_K, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32);
    // struct seccomp_data: nr at offset 0, arch at 4, args[0] at 16 (its low
    // 32 bits first on little-endian machines).
    let mut prog = vec![stmt(LD_W_ABS, 4), jump(JEQ_K, AUDIT_ARCH, 1, 0), RET_ALLOW];
    // One block per denied call: load nr; not it -> next block; (load
    // arg0; not it -> next block;) refuse.
    for d in denied {
        prog.push(stmt(LD_W_ABS, 0));
        match d.arg0 {
            None => {
                prog.push(jump(JEQ_K, d.nr as u32, 0, 1));
            }
            Some(arg0) => {
                prog.push(jump(JEQ_K, d.nr as u32, 0, 3));
                prog.push(stmt(LD_W_ABS, 16));
                prog.push(jump(JEQ_K, arg0, 0, 1));
            }
        }
        prog.push(RET_EPERM);
    }
    prog.push(RET_ALLOW);
    // SAFETY: the closure runs between fork and exec and only calls prctl(2)
    // on memory allocated before the fork (`prog`, moved in, outlives the call).
    unsafe {
        cmd.pre_exec(move || {
            let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut libc::sock_filter };
            if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER as libc::c_ulong, &fprog) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

const fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt: 0, jf: 0, k }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// periscope with exactly the capabilities deploy/ grants, under a filter denying `denied`.
fn agent_under_seccomp(denied: &[Deny], extra: &[&str]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--bounding-set", "-all,+bpf,+perfmon,+sys_ptrace,+dac_read_search", "--inh-caps", "-all", periscope()])
        .args(["--pid", "1", "--trace-printer", "off"])
        .args(extra)
        .env("NO_COLOR", "1");
    with_seccomp_denying(&mut cmd, denied).output().expect("setpriv (util-linux) is needed")
}

/// The issue-13 case: podman's profile with BPF + PERFMON (no SYS_ADMIN) lets
/// neither syscall through. The start-up checks stop the agent naming the
/// filter and the option to add, not CAP_SYS_RESOURCE.
#[test]
fn seccomp_filter_denying_bpf_is_named_before_loading() {
    let start = Instant::now();
    let out = agent_under_seccomp(&[DENY_BPF, DENY_PERF_EVENT_OPEN], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(10));
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("a seccomp filter denies bpf and perf_event_open"), "{stderr}");
    assert!(errors[0].contains("bpf returned EPERM although CAP_BPF is held"), "{stderr}");
    assert!(errors[0].contains("Seccomp: 2 in /proc/self/status"), "{stderr}");
    assert!(errors[0].contains("security_opt: [seccomp=unconfined]"), "{stderr}");
    assert!(errors[0].contains("seccompProfile.type: Unconfined"), "{stderr}");
    assert!(!stderr.contains("SYS_RESOURCE"), "{stderr}");
    assert!(!stderr.contains("missing capability"), "{stderr}");
    assert!(!stderr.contains("kernel programs attached"), "{stderr}");
}

/// Only perf_event_open denied: bpf works, so only the attach would fail; the
/// check names that one syscall. `--check-config` prints the same line.
#[test]
fn seccomp_filter_denying_perf_event_open_alone_is_named_by_check_config() {
    let out = agent_under_seccomp(&[DENY_PERF_EVENT_OPEN], &["--check-config"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let checks = &stdout[stdout.find("host checks").expect("host checks in the report")..];
    let line = checks.lines().find(|l| l.contains("seccomp")).unwrap_or_else(|| panic!("no seccomp line:\n{stdout}"));
    assert!(line.trim_start().starts_with("error: a seccomp filter denies perf_event_open ("), "{line}");
    assert!(line.contains("perf_event_open returned EPERM although CAP_PERFMON is held"), "{line}");
    assert!(!line.contains("bpf returned"), "{line}");
}

/// Without the filter, the same capability set passes the check (the control
/// for the two tests above: the syscalls themselves are allowed to these caps).
#[test]
fn minimal_capability_set_passes_the_syscall_trials() {
    let out = agent_under_seccomp(&[], &["--check-config"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains("seccomp") && !stdout.contains("refuses"), "{stdout}");
}

/// A profile that filters on arguments: map creation (the start-up trial)
/// passes, loading programs is refused. The loader's own feature probes load
/// tiny programs, so what fails first is a relocation that found a feature
/// "missing" (measured: `error relocating function ... section not found`);
/// its error must point at the seccomp filter, not at capabilities or BTF.
#[test]
fn program_load_refused_by_seccomp_names_the_filter() {
    let out = agent_under_seccomp(&[DENY_BPF_PROG_LOAD], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("periscope: loading "), "{stderr}");
    assert!(last.contains("this process runs under a seccomp filter (Seccomp: 2"), "{stderr}");
    assert!(last.contains("seccomp=unconfined"), "{stderr}");
    assert!(!stderr.contains("SYS_RESOURCE"), "{stderr}");
    assert!(!stderr.contains("startup check(s) failed"), "the trials passed: {stderr}");
}

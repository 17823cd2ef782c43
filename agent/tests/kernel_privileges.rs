//! The capability set deploy/ grants (BPF, PERFMON, SYS_PTRACE,
//! DAC_READ_SEARCH) is enough to attach every program, and a missing
//! capability is named by the start-up checks before anything is loaded.
//! Capabilities are reduced with util-linux `setpriv` (needs root, as every
//! kernel test); no container runtime involved.
mod support;

use std::{
    process::{Command, Stdio},
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

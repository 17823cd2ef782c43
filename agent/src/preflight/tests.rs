use super::*;

/// /proc/self/status of a root shell on this kind of host (trimmed), as the
/// kernel prints it: tab after the colon, 16 hex digits.
const STATUS_HOST: &str = "Name:\tcat\nUmask:\t0022\nState:\tR (running)\nTgid:\t8587\nNgid:\t0\nPid:\t8587\n\
PPid:\t8585\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nFDSize:\t256\nGroups:\t \nNStgid:\t8587\n\
NSpid:\t8587\nVmRSS:\t    1696 kB\nThreads:\t1\nSigQ:\t0/96364\nCapInh:\t0000000000000000\n\
CapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\nCapAmb:\t0000000000000000\n\
NoNewPrivs:\t0\nSeccomp:\t0\nSeccomp_filters:\t0\nCpus_allowed_list:\t0-1\n";

/// Docker's default capability set (CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID
/// SETUID SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP).
const DOCKER_DEFAULT: u64 = 0x0000_0000_a804_25fb;
/// `cap_drop: [ALL]` + `cap_add: [BPF, PERFMON, SYS_PTRACE, DAC_READ_SEARCH]`.
const RECOMMENDED: u64 = (1 << 39) | (1 << 38) | (1 << 19) | (1 << 2);
/// `privileged: true` on a 6.x kernel (41 capabilities).
const PRIVILEGED: u64 = 0x0000_01ff_ffff_ffff;

fn host(caps: u64) -> HostFacts {
    HostFacts {
        cap_eff: Some(caps),
        kernel: Some((6, 18)),
        initial_user_ns: Some(true),
        lockdown: Some("none".into()),
        pid_ns: Some(INITIAL_PID_NS_INODE),
        btf: true,
        tracefs: Tracefs::Mounted { missing: Vec::new() },
        seccomp: Some(SeccompMode::Disabled),
        bpf_syscall: Trial::Allowed,
        perf_event_open: Trial::Allowed,
    }
}

fn messages(f: &[Finding], severity: Severity) -> Vec<&str> {
    f.iter().filter(|f| f.severity == severity).map(|f| f.message.as_str()).collect()
}

#[test]
fn cap_eff_is_read_from_the_status_text() {
    assert_eq!(parse_cap_eff(STATUS_HOST), Some(0x1fffeffffff));
    // CapPrm/CapBnd lines must not be mistaken for CapEff.
    let only_prm = STATUS_HOST.replace("CapEff:\t000001fffeffffff\n", "");
    assert_eq!(parse_cap_eff(&only_prm), None);
    assert_eq!(parse_cap_eff("CapEff:\t00000000a80425fb\n"), Some(DOCKER_DEFAULT));
    assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
    let caps = parse_cap_eff(STATUS_HOST).unwrap();
    // This host lacks CAP_SYS_RESOURCE (bit 24) and still loads BPF: memcg accounting since 5.11.
    assert!(!has(caps, 24));
    assert!(has(caps, cap::BPF) && has(caps, cap::PERFMON) && has(caps, cap::SYS_ADMIN));
}

#[test]
fn kernel_release_shapes() {
    assert_eq!(parse_kernel_release("6.18.0-1-amd64\n"), Some((6, 18)));
    assert_eq!(parse_kernel_release("5.15.167.4-microsoft-standard-WSL2"), Some((5, 15)));
    assert_eq!(parse_kernel_release("4.19.0"), Some((4, 19)));
    assert_eq!(parse_kernel_release("6"), None);
    assert_eq!(parse_kernel_release(""), None);
}

#[test]
fn uid_map_shapes() {
    assert!(is_initial_uid_map("         0          0 4294967295\n"));
    // rootless docker / podman: root maps to an unprivileged range.
    assert!(!is_initial_uid_map("         0       1000          1\n         1     100000      65536\n"));
    assert!(!is_initial_uid_map("         0     100000      65536\n"));
    assert!(!is_initial_uid_map(""));
}

#[test]
fn lockdown_and_ns_link_shapes() {
    assert_eq!(parse_lockdown("[none] integrity confidentiality\n").as_deref(), Some("none"));
    assert_eq!(parse_lockdown("none [integrity] confidentiality\n").as_deref(), Some("integrity"));
    assert_eq!(parse_lockdown("none integrity [confidentiality]\n").as_deref(), Some("confidentiality"));
    assert_eq!(parse_lockdown("none integrity\n"), None);
    assert_eq!(parse_ns_link("pid:[4026531836]"), Some(INITIAL_PID_NS_INODE));
    assert_eq!(parse_ns_link("pid:[4026532415]"), Some(4026532415));
    assert_eq!(parse_ns_link("pid:4026532415"), None);
}

#[test]
fn recommended_and_privileged_sets_pass() {
    assert_eq!(evaluate(&host(RECOMMENDED)), Vec::new());
    assert_eq!(evaluate(&host(PRIVILEGED)), Vec::new());
    // SYS_ADMIN alone stands in for BPF and PERFMON (and can mount tracefs).
    let admin = (1 << cap::SYS_ADMIN) | (1 << cap::SYS_PTRACE) | (1 << cap::DAC_READ_SEARCH);
    let mut h = host(admin);
    h.tracefs = Tracefs::NotMounted;
    assert_eq!(evaluate(&h), Vec::new());
}

#[test]
fn docker_default_caps_name_each_missing_capability() {
    let f = evaluate(&host(DOCKER_DEFAULT));
    let errors = messages(&f, Severity::Error);
    assert_eq!(errors.len(), 2, "{f:?}");
    assert!(errors[0].contains("CAP_BPF"), "{errors:?}");
    assert!(errors[1].contains("CAP_PERFMON"), "{errors:?}");
    // DAC_OVERRIDE is in Docker's default set: no DAC warning, but SYS_PTRACE is missing.
    let warnings = messages(&f, Severity::Warning);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("CAP_SYS_PTRACE"));
    assert_eq!(f[0].severity, Severity::Error, "errors come first");
}

#[test]
fn kernel_features() {
    let mut h = host(PRIVILEGED);
    h.btf = false;
    h.lockdown = Some("confidentiality".into());
    h.kernel = Some((5, 4));
    h.tracefs = Tracefs::Mounted { missing: vec!["syscalls:sys_enter_read".into(), "syscalls:sys_exit_read".into()] };
    let f = evaluate(&h);
    let errors = messages(&f, Severity::Error);
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("older than 5.8")));
    assert!(errors.iter().any(|e| e.contains("CONFIG_DEBUG_INFO_BTF")));
    assert!(errors.iter().any(|e| e.contains("confidentiality")));
    assert!(errors.iter().any(|e| e.contains("syscalls:sys_enter_read, syscalls:sys_exit_read")));
    h.lockdown = Some("integrity".into());
    assert_eq!(messages(&evaluate(&h), Severity::Error).len(), 3, "integrity mode does not stop tracing programs");
}

#[test]
fn memlock_matters_only_before_5_11() {
    let mut h = host(RECOMMENDED);
    h.kernel = Some((5, 10));
    let w = evaluate(&h);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].severity == Severity::Warning && w[0].message.contains("RLIMIT_MEMLOCK"));
    h.cap_eff = Some(RECOMMENDED | (1 << cap::SYS_RESOURCE));
    assert_eq!(evaluate(&h), Vec::new());
    h.kernel = Some((5, 11));
    h.cap_eff = Some(RECOMMENDED);
    assert_eq!(evaluate(&h), Vec::new());
}

/// Podman's default profile with exactly the recommended capabilities, as
/// measured (issue 13): `bpf` and `perf_event_open` both return EPERM.
#[test]
fn seccomp_filter_denying_bpf_is_named_with_the_fix() {
    let mut h = host(RECOMMENDED);
    h.seccomp = Some(SeccompMode::Filter);
    h.bpf_syscall = Trial::Failed(libc::EPERM);
    h.perf_event_open = Trial::Failed(libc::EPERM);
    let f = evaluate(&h);
    let errors = messages(&f, Severity::Error);
    assert_eq!(errors.len(), 1, "one line for both syscalls: {f:?}");
    let e = errors[0];
    assert!(e.starts_with("a seccomp filter denies bpf and perf_event_open"), "{e}");
    assert!(e.contains("bpf returned EPERM although CAP_BPF is held"), "{e}");
    assert!(e.contains("perf_event_open returned EPERM although CAP_PERFMON is held"), "{e}");
    assert!(e.contains("security_opt: [seccomp=unconfined]") && e.contains("seccompProfile.type: Unconfined"), "{e}");
    assert!(!e.contains("SYS_RESOURCE"), "{e}");
    // Only perf_event_open denied (a profile that lists bpf): only it is named.
    h.bpf_syscall = Trial::Allowed;
    let e = evaluate(&h).remove(0).message;
    assert!(e.starts_with("a seccomp filter denies perf_event_open ("), "{e}");
    // A filter that allows both (docker's profile with CAP_BPF/CAP_PERFMON): nothing to say.
    h.perf_event_open = Trial::Allowed;
    assert_eq!(evaluate(&h), Vec::new());
}

#[test]
fn refusals_are_judged_only_when_the_capabilities_allow_the_call() {
    // Without CAP_BPF the kernel refuses bpf anyway: the capability is named, not seccomp.
    let mut h = host(DOCKER_DEFAULT);
    h.seccomp = Some(SeccompMode::Filter);
    h.bpf_syscall = Trial::Failed(libc::EPERM);
    h.perf_event_open = Trial::Failed(libc::EACCES);
    let f = evaluate(&h);
    assert!(f.iter().all(|f| !f.message.contains("seccomp")), "{f:?}");
    // SYS_ADMIN held and still refused under a filter: the filter, naming SYS_ADMIN.
    let mut h = host(PRIVILEGED);
    h.seccomp = Some(SeccompMode::Filter);
    h.bpf_syscall = Trial::Failed(libc::ENOSYS);
    let e = evaluate(&h).remove(0).message;
    assert!(e.contains("bpf returned ENOSYS although CAP_SYS_ADMIN is held"), "{e}");
    // Refused without any filter: not blamed on seccomp.
    h.seccomp = Some(SeccompMode::Disabled);
    let e = evaluate(&h).remove(0).message;
    assert!(e.starts_with("the kernel refuses bpf") && e.contains("no seccomp filter"), "{e}");
    // A failure that is no refusal (EINVAL) is left to the loader's own error.
    h.bpf_syscall = Trial::Failed(libc::EINVAL);
    assert_eq!(evaluate(&h), Vec::new());
}

#[test]
fn tracefs_without_sys_admin_must_be_mounted_by_the_runtime() {
    let mut h = host(RECOMMENDED);
    h.tracefs = Tracefs::NotMounted;
    let errors: Vec<String> = evaluate(&h).into_iter().map(|f| f.to_string()).collect();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("error: tracefs is not mounted") && errors[0].contains("/sys/kernel/tracing:ro"),
        "{errors:?}"
    );
    h.tracefs = Tracefs::Unreadable("Permission denied (os error 13)".into());
    assert!(evaluate(&h)[0].message.contains("Permission denied"));
}

#[test]
fn namespaces_warn() {
    let mut h = host(RECOMMENDED);
    h.pid_ns = Some(4026532415);
    h.initial_user_ns = Some(false);
    let f = evaluate(&h);
    assert!(messages(&f, Severity::Error).is_empty(), "{f:?}");
    let warnings = messages(&f, Severity::Warning);
    assert_eq!(warnings.len(), 2);
    assert!(warnings.iter().any(|w| w.contains("pid: host") && w.contains("4026532415")));
    assert!(warnings.iter().any(|w| w.contains("user namespace")));
}

#[test]
fn read_tracefs_finds_missing_tracepoints() {
    let dir = std::env::temp_dir().join(format!("periscope-preflight-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(read_tracefs(&dir, [("syscalls", "sys_enter_read")]), Tracefs::NotMounted);
    fs::create_dir_all(dir.join("events/syscalls/sys_enter_read")).unwrap();
    let t = read_tracefs(
        &dir,
        [("syscalls", "sys_enter_read"), ("syscalls", "sys_enter_write"), ("sched", "sched_process_exit")],
    );
    assert_eq!(
        t,
        Tracefs::Mounted { missing: vec!["syscalls:sys_enter_write".into(), "sched:sched_process_exit".into()] }
    );
    fs::remove_dir_all(&dir).unwrap();
}

/// The facts of the machine running the tests are read without error.
#[test]
fn reads_this_host() {
    let h = HostFacts::read();
    assert!(h.cap_eff.is_some(), "{h:?}");
    assert!(h.kernel.is_some_and(|k| k >= (3, 0)), "{h:?}");
    assert!(h.pid_ns.is_some(), "{h:?}");
    assert!(h.initial_user_ns.is_some(), "{h:?}");
    assert!(h.seccomp.is_some(), "{h:?}");
    // The tests run as root without a seccomp filter: both trial syscalls go through.
    if h.seccomp == Some(SeccompMode::Disabled) && h.cap_eff.is_some_and(|c| has(c, cap::SYS_ADMIN)) {
        assert_eq!((h.bpf_syscall, h.perf_event_open), (Trial::Allowed, Trial::Allowed), "{h:?}");
    }
    assert!(crate::probes::required_tracepoints().any(|t| t == ("syscalls", "sys_enter_read")));
}

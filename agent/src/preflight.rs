//! Startup checks: before touching the kernel, say in one line each what is
//! missing (a capability, tracefs, BTF, a kernel feature) instead of letting
//! the first failing syscall speak for all of them.
//!
//! Errors are things that make loading the probes fail for certain (no
//! CAP_BPF, no BTF, lockdown in confidentiality mode, ...): the agent stops
//! and lists all of them. Warnings are things that make it see less than
//! expected (other users' processes, other PID namespaces): it goes on.
//!
//! Reading the host ([`HostFacts::read`]) is separate from judging it
//! ([`evaluate`]), which is pure and unit-tested on real `/proc` shapes.
use std::{fmt, fs, path::Path};

pub mod seccomp;

pub use seccomp::{parse_seccomp, SeccompMode, Trial};

/// Capability numbers from include/uapi/linux/capability.h.
pub mod cap {
    pub const DAC_OVERRIDE: u32 = 1;
    pub const DAC_READ_SEARCH: u32 = 2;
    pub const SYS_PTRACE: u32 = 19;
    pub const SYS_ADMIN: u32 = 21;
    pub const SYS_RESOURCE: u32 = 24;
    pub const PERFMON: u32 = 38;
    pub const BPF: u32 = 39;
}

/// Inode of the initial PID namespace (`PROC_PID_INIT_INO` in
/// include/linux/proc_ns.h, fixed since Linux 3.8): `/proc/self/ns/pid`
/// shows `pid:[4026531836]` only in the host's PID namespace.
pub const INITIAL_PID_NS_INODE: u64 = 0xEFFF_FFFC;

const TRACEFS: &str = "/sys/kernel/tracing";
const BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
}

impl Finding {
    fn error(message: impl Into<String>) -> Self {
        Self { severity: Severity::Error, message: message.into() }
    }
    fn warning(message: impl Into<String>) -> Self {
        Self { severity: Severity::Warning, message: message.into() }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}", self.message)
    }
}

/// What tracefs looks like at /sys/kernel/tracing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tracefs {
    /// Mounted; the required tracepoints that are missing (empty: all there).
    Mounted { missing: Vec<String> },
    /// `events/` is absent: tracefs is not mounted there.
    NotMounted,
    /// The directory exists but cannot be read.
    Unreadable(String),
}

/// Everything [`evaluate`] judges, as read from the running host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    /// Effective capability set (`CapEff` of /proc/self/status).
    pub cap_eff: Option<u64>,
    /// (major, minor) of the running kernel.
    pub kernel: Option<(u32, u32)>,
    /// /proc/self/uid_map maps the whole uid range to itself.
    pub initial_user_ns: Option<bool>,
    /// Active lockdown mode (`none`, `integrity`, `confidentiality`), when securityfs shows it.
    pub lockdown: Option<String>,
    /// Inode of this process's PID namespace.
    pub pid_ns: Option<u64>,
    pub btf: bool,
    pub tracefs: Tracefs,
    /// `Seccomp:` of /proc/self/status.
    pub seccomp: Option<SeccompMode>,
    /// `bpf(BPF_MAP_CREATE)` of a tiny array, tried once ([`seccomp::try_bpf`]).
    pub bpf_syscall: Trial,
    /// A CPU-wide `perf_event_open`, tried once ([`seccomp::try_perf_event_open`]).
    pub perf_event_open: Trial,
}

/// `CapEff:\t000001ffffffffff` in /proc/self/status -> the bit set.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

/// `6.18.0-1-amd64` or `5.15.167.4-microsoft-standard-WSL2` -> (major, minor).
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// `/proc/self/uid_map` of the initial user namespace is the single line
/// `0 0 4294967295` (columns padded with spaces).
pub fn is_initial_uid_map(uid_map: &str) -> bool {
    let lines: Vec<Vec<&str>> =
        uid_map.lines().map(|l| l.split_whitespace().collect()).filter(|f: &Vec<&str>| !f.is_empty()).collect();
    lines.len() == 1 && lines[0] == ["0", "0", "4294967295"]
}

/// `none [integrity] confidentiality` -> `integrity` (the bracketed mode).
pub fn parse_lockdown(text: &str) -> Option<String> {
    let open = text.find('[')?;
    let close = open + text[open..].find(']')?;
    Some(text[open + 1..close].to_owned())
}

/// `pid:[4026531836]` -> 4026531836.
pub fn parse_ns_link(link: &str) -> Option<u64> {
    let inner = link.trim().split_once('[')?.1.strip_suffix(']')?;
    inner.parse().ok()
}

fn has(caps: u64, bit: u32) -> bool {
    caps & (1u64 << bit) != 0
}

impl HostFacts {
    /// Reads the facts of the running host. Missing files become `None`.
    pub fn read() -> Self {
        let status = fs::read_to_string("/proc/self/status").ok();
        let cap_eff = status.as_deref().and_then(parse_cap_eff);
        let seccomp = status.as_deref().and_then(parse_seccomp);
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").ok().as_deref().and_then(parse_kernel_release);
        let initial_user_ns = fs::read_to_string("/proc/self/uid_map").ok().map(|m| is_initial_uid_map(&m));
        let lockdown = fs::read_to_string("/sys/kernel/security/lockdown").ok().as_deref().and_then(parse_lockdown);
        let pid_ns = fs::read_link("/proc/self/ns/pid").ok().and_then(|l| parse_ns_link(&l.to_string_lossy()));
        Self {
            cap_eff,
            kernel,
            initial_user_ns,
            lockdown,
            pid_ns,
            btf: Path::new(BTF).exists(),
            tracefs: read_tracefs(Path::new(TRACEFS), crate::probes::required_tracepoints()),
            seccomp,
            bpf_syscall: seccomp::try_bpf(),
            perf_event_open: seccomp::try_perf_event_open(),
        }
    }
}

/// Looks for `events/<category>/<name>` of every required tracepoint under `root`.
pub fn read_tracefs<'a>(root: &Path, tracepoints: impl IntoIterator<Item = (&'a str, &'a str)>) -> Tracefs {
    let events = root.join("events");
    match fs::metadata(&events) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Tracefs::Unreadable(e.to_string()),
        Err(_) => return Tracefs::NotMounted,
    }
    let missing = tracepoints
        .into_iter()
        .filter(|(category, name)| !events.join(category).join(name).exists())
        .map(|(category, name)| format!("{category}:{name}"))
        .collect();
    Tracefs::Mounted { missing }
}

/// Judges the host: every problem, most severe first.
pub fn evaluate(h: &HostFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some((major, minor)) = h.kernel {
        if (major, minor) < (5, 8) {
            out.push(Finding::error(format!(
                "kernel {major}.{minor} is older than 5.8: periscope needs the BPF ring buffer and CAP_BPF (Linux 5.8+)"
            )));
        }
    }
    match h.cap_eff {
        Some(caps) => {
            let admin = has(caps, cap::SYS_ADMIN);
            if !admin && !has(caps, cap::BPF) {
                out.push(Finding::error(
                    "missing capability CAP_BPF: cannot create maps or load the eBPF programs (add BPF, or run privileged)",
                ));
            }
            if !admin && !has(caps, cap::PERFMON) {
                out.push(Finding::error(
                    "missing capability CAP_PERFMON: cannot load tracing programs or attach them to tracepoints (add PERFMON, or run privileged)",
                ));
            }
            if h.kernel.is_some_and(|k| k < (5, 11)) && !has(caps, cap::SYS_RESOURCE) {
                out.push(Finding::warning(
                    "kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK: without CAP_SYS_RESOURCE the limit cannot be raised; add SYS_RESOURCE or set the memlock limit to unlimited",
                ));
            }
            if let Some(finding) = syscall_refusals(h, caps) {
                out.push(finding);
            }
            if !has(caps, cap::SYS_PTRACE) {
                out.push(Finding::warning(
                    "missing capability CAP_SYS_PTRACE: cannot read the environment, fd table and executable of processes owned by other users or holding capabilities; such services are not found or get fallback names",
                ));
            }
            if !has(caps, cap::DAC_READ_SEARCH) && !has(caps, cap::DAC_OVERRIDE) {
                out.push(Finding::warning(
                    "missing capability CAP_DAC_READ_SEARCH: cannot list /proc/PID/fd or read /proc/PID/environ of other users' processes; their listening ports and OTEL_SERVICE_NAME are not seen",
                ));
            }
            if !admin && matches!(h.tracefs, Tracefs::NotMounted) {
                out.push(Finding::error(format!(
                    "tracefs is not mounted at {TRACEFS} and mounting it needs CAP_SYS_ADMIN: mount the host's (docker: -v {TRACEFS}:{TRACEFS}:ro; kubernetes: a hostPath volume)"
                )));
            }
        }
        None => out.push(Finding::warning("cannot read CapEff from /proc/self/status: capabilities not checked")),
    }
    if h.initial_user_ns == Some(false) {
        out.push(Finding::warning(
            "running in a user namespace (rootless container?): capabilities there do not allow loading eBPF programs into the host kernel",
        ));
    }
    if !h.btf {
        out.push(Finding::error(format!(
            "no BTF at {BTF}: the kernel must be built with CONFIG_DEBUG_INFO_BTF=y (CO-RE relocations need it)"
        )));
    }
    match &h.tracefs {
        Tracefs::Mounted { missing } if !missing.is_empty() => out.push(Finding::error(format!(
            "tracepoints missing under {TRACEFS}/events: {} (syscall tracepoints need CONFIG_FTRACE_SYSCALLS=y)",
            missing.join(", ")
        ))),
        Tracefs::Unreadable(e) => out
            .push(Finding::error(format!("cannot read {TRACEFS} ({e}): run as root (uid 0) or make tracefs readable"))),
        _ => {}
    }
    if h.lockdown.as_deref() == Some("confidentiality") {
        out.push(Finding::error(
            "kernel lockdown is in confidentiality mode: eBPF programs may not read kernel memory (bpf_probe_read_kernel), which periscope needs",
        ));
    }
    if let Some(ns) = h.pid_ns {
        if ns != INITIAL_PID_NS_INODE {
            out.push(Finding::warning(format!(
                "not in the host's PID namespace (pid:[{ns}]): /proc lists only this namespace's processes while the kernel reports host pids, so nothing will be traced; run with pid: host (docker) or hostPID: true (kubernetes)"
            )));
        }
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

/// The trial syscalls that failed although the capabilities allow them: one
/// error naming the seccomp filter when there is one (the engine's profile,
/// not a capability, is what to change), else naming what else refuses.
fn syscall_refusals(h: &HostFacts, caps: u64) -> Option<Finding> {
    let admin = has(caps, cap::SYS_ADMIN);
    let mut refused = Vec::new();
    if (admin || has(caps, cap::BPF)) && h.bpf_syscall.denied() {
        refused.push(("bpf", "CAP_BPF", h.bpf_syscall));
    }
    if (admin || has(caps, cap::PERFMON)) && h.perf_event_open.denied() {
        refused.push(("perf_event_open", "CAP_PERFMON", h.perf_event_open));
    }
    if refused.is_empty() {
        return None;
    }
    let what = refused
        .iter()
        .map(|(call, cap, trial)| {
            let errno = match trial {
                Trial::Failed(e) => seccomp::errno_name(*e),
                Trial::Allowed => unreachable!("only refusals are listed"),
            };
            let held = if admin { "CAP_SYS_ADMIN" } else { cap };
            format!("{call} returned {errno} although {held} is held")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let calls = refused.iter().map(|(call, _, _)| *call).collect::<Vec<_>>().join(" and ");
    Some(Finding::error(match h.seccomp {
        Some(SeccompMode::Filter) | Some(SeccompMode::Strict) => format!(
            "a seccomp filter denies {calls} ({what}; Seccomp: {} in /proc/self/status): podman's default profile and containerd's (Kubernetes RuntimeDefault) allow bpf and perf_event_open only with CAP_SYS_ADMIN; add {}",
            if h.seccomp == Some(SeccompMode::Strict) { 1 } else { 2 },
            seccomp::SECCOMP_REMEDY
        ),
        _ => format!(
            "the kernel refuses {calls} ({what}; no seccomp filter): an LSM (SELinux, AppArmor, Landlock) or a user namespace stands in the way; run the agent unconfined and rootful"
        ),
    }))
}

/// The cause of a permission error while loading or attaching the kernel
/// programs, from the host as it is now: a seccomp filter that refuses the
/// syscalls, missing capabilities, the memlock limit of kernels before 5.11.
/// Said in place of a guess (CAP_SYS_RESOURCE is not needed from 5.11 on).
pub fn permission_hint() -> String {
    let h = HostFacts::read();
    let caps = h.cap_eff.unwrap_or(0);
    if let Some(f) = syscall_refusals(&h, caps) {
        return f.message;
    }
    let admin = has(caps, cap::SYS_ADMIN);
    let mut missing = Vec::new();
    if !admin && !has(caps, cap::BPF) {
        missing.push("CAP_BPF");
    }
    if !admin && !has(caps, cap::PERFMON) {
        missing.push("CAP_PERFMON");
    }
    if !missing.is_empty() {
        return format!("missing {}: add them, or run privileged", missing.join(" and "));
    }
    if h.kernel.is_some_and(|k| k < (5, 11)) && !has(caps, cap::SYS_RESOURCE) {
        return "kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK: add CAP_SYS_RESOURCE or set the memlock limit to unlimited".into();
    }
    if matches!(h.seccomp, Some(SeccompMode::Filter | SeccompMode::Strict)) {
        // The trial calls passed, yet a later one was refused: a profile
        // that filters on arguments (e.g. allows BPF_MAP_CREATE, not BPF_PROG_LOAD).
        return format!(
            "this process runs under a seccomp filter (Seccomp: 2 in /proc/self/status), which may deny the call; add {}",
            seccomp::SECCOMP_REMEDY
        );
    }
    "the capabilities allow it and no seccomp filter is installed; an LSM (SELinux, AppArmor) may deny it".into()
}

/// For a load failure that is no permission error (a relocation that found
/// a kernel feature missing, ...): the loader probes features by loading tiny
/// programs, and a seccomp filter refusing them makes features look absent.
/// `Some` only when this process runs under a filter.
pub fn seccomp_note() -> Option<String> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    matches!(parse_seccomp(&status), Some(SeccompMode::Filter | SeccompMode::Strict)).then(|| {
        format!(
            "this process runs under a seccomp filter (Seccomp: 2 in /proc/self/status): if it refuses bpf(BPF_PROG_LOAD), the loader's feature probes fail and kernel features look missing; add {}",
            seccomp::SECCOMP_REMEDY
        )
    })
}

#[derive(Debug, thiserror::Error)]
#[error("{count} startup check(s) failed (see the errors above); periscope cannot load its kernel programs here")]
pub struct PreflightError {
    pub count: usize,
}

/// Checks the running host: logs one line per finding, fails on errors.
pub fn check() -> Result<Vec<Finding>, PreflightError> {
    let findings = evaluate(&HostFacts::read());
    for f in &findings {
        match f.severity {
            Severity::Error => tracing::error!("{}", f.message),
            Severity::Warning => tracing::warn!("{}", f.message),
        }
    }
    let count = findings.iter().filter(|f| f.severity == Severity::Error).count();
    if count > 0 {
        return Err(PreflightError { count });
    }
    Ok(findings)
}

/// `periscope --check-config`: the effective configuration, in lines, or
/// what is wrong with it: the environment variables no option reads
/// (everything else was checked when `settings` was made).
pub fn config_report<'a>(
    settings: &crate::config::Settings,
    env_names: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<String>, Vec<String>> {
    let problems = crate::config::unknown_env_vars(env_names);
    if !problems.is_empty() {
        return Err(problems);
    }
    let list = |v: &[&str]| if v.is_empty() { "-".to_owned() } else { v.join(",") };
    let signal = |s: Option<&crate::export::otlp::SignalConfig>| {
        s.map_or("off".to_owned(), |s| format!("{} ({:?})", s.endpoint, s.protocol))
    };
    let selector = &settings.selector;
    let export = &settings.export;
    let otlp = export.otlp.as_ref();
    let spans = &settings.spans;
    let exe_globs: Vec<&str> = selector.exe_globs.iter().flat_map(|g| g.patterns()).map(String::as_str).collect();
    let pids: Vec<String> = selector.pids.iter().map(u32::to_string).collect();
    let printer = match export.printer {
        Some(crate::export::printer::PrintFormat::Text) => "Text",
        Some(crate::export::printer::PrintFormat::Json) => "Json",
        None => "Off",
    };
    let routes: Vec<&str> = spans.router.patterns().collect();
    Ok(vec![
        format!("open ports: {}", settings.open_ports_given.as_deref().unwrap_or("-")),
        format!("executable globs: {}", list(&exe_globs)),
        format!("pids: {}", list(&pids.iter().map(String::as_str).collect::<Vec<_>>())),
        format!("service namespace: {}", settings.service.namespace.as_deref().unwrap_or("-")),
        format!("service name override: {}", settings.service.name_override.as_deref().unwrap_or("-")),
        format!("otlp traces: {}", signal(otlp.and_then(|o| o.traces.as_ref()))),
        format!("otlp metrics: {}", signal(otlp.and_then(|o| o.metrics.as_ref()))),
        // Not SocketAddr's form: an IPv6 address is shown without brackets.
        format!(
            "prometheus: {}",
            export.prometheus.map_or("off".to_owned(), |a| {
                let path = if export.prometheus_path == "/metrics" { "" } else { export.prometheus_path.as_str() };
                format!("{}:{}{path}", a.ip(), a.port())
            })
        ),
        format!("trace printer: {printer}"),
        format!("traces sampler: {:?}", settings.context.sampler),
        format!("old http attribute names: {}", spans.http.old_semconv),
        format!("old database attribute names: {}", spans.sql.old_semconv),
        format!("routes: {} (unmatched: {:?})", list(&routes), spans.router.unmatched()),
        format!(
            "span metrics: {}, service graph: {}",
            settings.metrics.span_metrics.is_some(),
            settings.metrics.service_graph.is_some()
        ),
        if settings.kubernetes.enabled {
            let pods = settings.kubernetes.pod_selector.clone().unwrap_or_default();
            format!(
                "kubernetes: on (node {}; namespaces {}; pod labels {}; owners {})",
                settings.kubernetes.node_name,
                list(&pods.namespace_globs()),
                list(&pods.label_globs().iter().map(String::as_str).collect::<Vec<_>>()),
                list(&pods.owner_globs())
            )
        } else {
            "kubernetes: off".to_owned()
        },
    ])
}

#[cfg(test)]
mod tests;

//! Whether a seccomp filter stands between the agent and `bpf(2)` /
//! `perf_event_open(2)`.
//!
//! Capabilities alone do not say: container engines install a seccomp
//! profile that may allow `bpf` only with CAP_SYS_ADMIN (podman's, and
//! containerd's default used by Kubernetes `RuntimeDefault`), whatever
//! CAP_BPF says. So the agent tries each syscall once, harmlessly, and reads
//! `Seccomp:` of /proc/self/status to tell a filter's refusal from the others.
use std::io;

/// `Seccomp:` of /proc/self/status (`SECCOMP_MODE_*` in include/uapi/linux/seccomp.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeccompMode {
    /// 0: no seccomp.
    Disabled,
    /// 1: strict mode (read, write, exit and sigreturn only).
    Strict,
    /// 2: one or more BPF filters (what container engines install).
    Filter,
}

/// `Seccomp:\t2` in /proc/self/status -> [`SeccompMode::Filter`].
pub fn parse_seccomp(status: &str) -> Option<SeccompMode> {
    let value = status.lines().find_map(|l| l.strip_prefix("Seccomp:"))?;
    match value.trim() {
        "0" => Some(SeccompMode::Disabled),
        "1" => Some(SeccompMode::Strict),
        "2" => Some(SeccompMode::Filter),
        _ => None,
    }
}

/// What one trial syscall returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trial {
    /// It succeeded (the object it made is closed again).
    Allowed,
    /// It failed with this errno.
    Failed(i32),
}

impl Trial {
    /// A refusal (rather than, say, a bad argument): what seccomp profiles,
    /// LSMs and missing privileges return. Podman's and Docker's profiles
    /// return EPERM for a syscall they deny; ENOSYS is the default answer of
    /// some profiles to syscalls they do not list.
    pub fn denied(self) -> bool {
        matches!(self, Trial::Failed(e) if e == libc::EPERM || e == libc::EACCES || e == libc::ENOSYS)
    }

    fn from_fd(fd: libc::c_long) -> Self {
        if fd < 0 {
            return Trial::Failed(io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        // SAFETY: a descriptor the kernel just returned to us, closed once.
        unsafe { libc::close(fd as libc::c_int) };
        Trial::Allowed
    }
}

/// The errno's name as the man pages write it.
pub fn errno_name(errno: i32) -> String {
    match errno {
        libc::EPERM => "EPERM".into(),
        libc::EACCES => "EACCES".into(),
        libc::ENOSYS => "ENOSYS".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::ENODEV => "ENODEV".into(),
        e => format!("errno {e}"),
    }
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

/// The leading fields of `union bpf_attr` that `BPF_MAP_CREATE` reads; the
/// kernel zero-fills what a shorter attribute leaves out.
#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// `bpf(BPF_MAP_CREATE)` of a one-entry array (4-byte key and value), the
/// first kind of call loading the object makes; the map is closed at once.
pub fn try_bpf() -> Trial {
    let attr = MapCreateAttr { map_type: BPF_MAP_TYPE_ARRAY, key_size: 4, value_size: 4, max_entries: 1, map_flags: 0 };
    // SAFETY: attr is a valid, initialised attribute of the size passed; the
    // kernel only reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreateAttr,
            std::mem::size_of::<MapCreateAttr>() as libc::c_uint,
        )
    };
    Trial::from_fd(fd)
}

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_DUMMY: u64 = 9;
/// `PERF_ATTR_SIZE_VER0`: the first 64 bytes of `struct perf_event_attr`.
const PERF_ATTR_SIZE_VER0: u32 = 64;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// `struct perf_event_attr` up to `config1` (its version-0 size).
#[repr(C)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// Bit 0: `disabled`.
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

/// `perf_event_open` of a disabled software dummy event for all processes
/// on CPU 0 — the same scope (pid -1, one CPU) as attaching a program to a
/// tracepoint, which needs CAP_PERFMON; it counts nothing and is closed at once.
pub fn try_perf_event_open() -> Trial {
    let attr = PerfEventAttr {
        type_: PERF_TYPE_SOFTWARE,
        size: PERF_ATTR_SIZE_VER0,
        config: PERF_COUNT_SW_DUMMY,
        sample_period: 0,
        sample_type: 0,
        read_format: 0,
        flags: 1,
        wakeup_events: 0,
        bp_type: 0,
        config1: 0,
    };
    // SAFETY: attr is initialised and its `size` field says how much the
    // kernel reads; the other arguments are plain integers.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            -1 as libc::pid_t,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    Trial::from_fd(fd)
}

/// What to add so that the engine's seccomp profile lets the syscalls
/// through, for each way of running the agent.
pub const SECCOMP_REMEDY: &str = "docker/podman: --security-opt seccomp=unconfined (compose: security_opt: [seccomp=unconfined]) or a profile that allows bpf and perf_event_open; Kubernetes: securityContext.seccompProfile.type: Unconfined, or Localhost with such a profile";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_line_shapes() {
        assert_eq!(parse_seccomp("NoNewPrivs:\t0\nSeccomp:\t0\nSeccomp_filters:\t0\n"), Some(SeccompMode::Disabled));
        assert_eq!(parse_seccomp("NoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n"), Some(SeccompMode::Filter));
        assert_eq!(parse_seccomp("Seccomp:\t1\n"), Some(SeccompMode::Strict));
        // Seccomp_filters alone (it never comes alone, but must not be taken for it).
        assert_eq!(parse_seccomp("Seccomp_filters:\t2\n"), None);
        assert_eq!(parse_seccomp("Seccomp:\tx\n"), None);
        assert_eq!(parse_seccomp(""), None);
    }

    #[test]
    fn refusals_are_told_from_other_failures() {
        assert!(Trial::Failed(libc::EPERM).denied());
        assert!(Trial::Failed(libc::ENOSYS).denied());
        assert!(Trial::Failed(libc::EACCES).denied());
        assert!(!Trial::Failed(libc::EINVAL).denied());
        assert!(!Trial::Allowed.denied());
        assert_eq!(errno_name(libc::EPERM), "EPERM");
        assert_eq!(errno_name(999), "errno 999");
    }

    #[test]
    fn attribute_sizes_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<PerfEventAttr>(), PERF_ATTR_SIZE_VER0 as usize);
        assert_eq!(std::mem::size_of::<MapCreateAttr>(), 20);
    }
}

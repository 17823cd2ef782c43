//! Loading and attaching the kernel programs, and the agent's handles on
//! their maps. Everything that needs privileges happens here, and every
//! failure says in one line what is missing.
pub mod go;
pub mod tls;
pub mod wire;

use std::{fmt, io, path::Path};

use aya::{
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{uprobe::UProbeScope, ProgramError, RawTracePoint, TracePoint, UProbe},
    Ebpf, EbpfError, EbpfLoader,
};
use thiserror::Error;

use crate::capture::{self, CapturePolicy, Tuple};
use crate::discovery::runtime_hooks::{Runtime, RuntimeHooks};
use wire::{periscope_conn_info, periscope_conn_key, periscope_pid_config};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/periscope.bpf.o"));

/// The compiled kernel object embedded in the agent.
pub fn object() -> &'static [u8] {
    OBJECT
}

/// (program, tracepoint category, tracepoint name). Raw tracepoints have no category.
const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("handle_enter_read", "syscalls", "sys_enter_read"),
    ("handle_exit_read", "syscalls", "sys_exit_read"),
    ("handle_enter_readv", "syscalls", "sys_enter_readv"),
    ("handle_exit_readv", "syscalls", "sys_exit_readv"),
    ("handle_enter_recvfrom", "syscalls", "sys_enter_recvfrom"),
    ("handle_exit_recvfrom", "syscalls", "sys_exit_recvfrom"),
    ("handle_enter_recvmsg", "syscalls", "sys_enter_recvmsg"),
    ("handle_exit_recvmsg", "syscalls", "sys_exit_recvmsg"),
    ("handle_enter_write", "syscalls", "sys_enter_write"),
    ("handle_exit_write", "syscalls", "sys_exit_write"),
    ("handle_enter_writev", "syscalls", "sys_enter_writev"),
    ("handle_exit_writev", "syscalls", "sys_exit_writev"),
    ("handle_enter_sendto", "syscalls", "sys_enter_sendto"),
    ("handle_exit_sendto", "syscalls", "sys_exit_sendto"),
    ("handle_enter_sendmsg", "syscalls", "sys_enter_sendmsg"),
    ("handle_exit_sendmsg", "syscalls", "sys_exit_sendmsg"),
    ("handle_enter_sendfile", "syscalls", "sys_enter_sendfile64"),
    ("handle_exit_sendfile", "syscalls", "sys_exit_sendfile64"),
    ("handle_enter_accept", "syscalls", "sys_enter_accept"),
    ("handle_exit_accept", "syscalls", "sys_exit_accept"),
    ("handle_enter_accept4", "syscalls", "sys_enter_accept4"),
    ("handle_exit_accept4", "syscalls", "sys_exit_accept4"),
    ("handle_enter_connect", "syscalls", "sys_enter_connect"),
    ("handle_exit_connect", "syscalls", "sys_exit_connect"),
    ("handle_enter_close", "syscalls", "sys_enter_close"),
    ("handle_enter_dup2", "syscalls", "sys_enter_dup2"),
    ("handle_enter_dup3", "syscalls", "sys_enter_dup3"),
    ("handle_enter_epoll_wait", "syscalls", "sys_enter_epoll_wait"),
    ("handle_enter_epoll_pwait", "syscalls", "sys_enter_epoll_pwait"),
    ("handle_enter_epoll_pwait2", "syscalls", "sys_enter_epoll_pwait2"),
    ("handle_enter_poll", "syscalls", "sys_enter_poll"),
    ("handle_enter_ppoll", "syscalls", "sys_enter_ppoll"),
    ("handle_enter_select", "syscalls", "sys_enter_select"),
    ("handle_enter_pselect6", "syscalls", "sys_enter_pselect6"),
    ("handle_exit", "sched", "sched_process_exit"),
    ("handle_exec", "sched", "sched_process_exec"),
];
const RAW_TRACEPOINTS: &[(&str, &str)] = &[("handle_fork", "sched_process_fork")];
/// Uprobe programs, loaded at start, attached to runtimes as they are found
/// (see `discovery::runtime_hooks`).
const UPROBES: &[&str] = &[
    "handle_uv_work_submit",
    "handle_uv_work_done",
    "handle_node_deferred",
    "handle_asyncio_task_init",
    "handle_asyncio_future_done",
    "handle_asyncio_task_step",
    "handle_asyncio_step_wrapper",
];
/// Processes whose runtime is hooked at once; beyond, new ones are not (counted).
const MAX_HOOKED_PROCESSES: usize = 1024;

/// (category, name) of every tracefs tracepoint the programs attach to.
pub fn required_tracepoints() -> impl Iterator<Item = (&'static str, &'static str)> {
    TRACEPOINTS.iter().map(|&(_, category, name)| (category, name))
}

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("tracefs is not mounted at /sys/kernel/tracing and mounting it failed ({0}); run as root or mount it: mount -t tracefs nodev /sys/kernel/tracing")]
    NoTracefs(io::Error),
    #[error("missing privileges: {0}; periscope needs root, or CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE + CAP_DAC_READ_SEARCH")]
    NoPrivilege(String),
    #[error("unsupported kernel: {0}")]
    Kernel(String),
    /// `hint` says why, from the host as it is (see [`failure_hint`]).
    #[error("loading the eBPF object failed: {source} ({hint})")]
    Load { source: Box<EbpfError>, hint: String },
    #[error("program {program} is missing from the eBPF object")]
    MissingProgram { program: &'static str },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("loading program {program} failed: {source}{hint}")]
    ProgramLoad { program: &'static str, source: Box<ProgramError>, hint: String },
    #[error("attaching {program} to tracepoint {tracepoint} failed: {source}{hint}")]
    Attach { program: &'static str, tracepoint: String, source: Box<ProgramError>, hint: String },
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: MapError },
}

/// Load-time settings of the kernel side.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Bytes captured per syscall (1..=PERISCOPE_MAX_CAPTURE).
    pub capture_size: u32,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_buffer_bytes: u32,
    /// Bytes waiting before a data event wakes the agent (it also drains on a timer).
    pub wakeup_bytes: u32,
}

/// The loaded and attached kernel side. Dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    tracked: HashMap<MapData, u32, periscope_pid_config>,
    conns: HashMap<MapData, periscope_conn_key, periscope_conn_info>,
    counters: PerCpuArray<MapData, u64>,
    /// Processes whose runtimes are hooked, with their uprobe links (None:
    /// the uprobe programs did not load). Per process, not per file:
    /// processes that are not watched never take the uprobes' traps.
    hooked: Option<std::collections::HashMap<(u32, Runtime), Vec<UprobeLink>>>,
    tls: tls::TlsProbes,
    /// The Go runtime uprobes (None: they did not load; Go processes keep
    /// per-thread context).
    go: Option<go::GoRuntime>,
    /// Where detached uprobe links are closed: see [`LinkReaper`].
    reaper: LinkReaper,
}

/// Closes uprobe links on a thread of its own. Unregistering a uprobe waits
/// for the kernel's RCU grace periods: ~0.1 s each here, so a Go process
/// with 37 uprobes (crypto/tls's RET sites among them) held the pipeline
/// ~4 s when it exited, and its events, spans and counters with it.
#[derive(Debug)]
struct LinkReaper(Option<std::sync::mpsc::SyncSender<aya::programs::uprobe::UProbeLink>>);

/// Links waiting for the reaper at most; past that they are closed in place.
const MAX_LINKS_TO_REAP: usize = 16 * 1024;

impl LinkReaper {
    fn start() -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<aya::programs::uprobe::UProbeLink>(MAX_LINKS_TO_REAP);
        let spawned = std::thread::Builder::new().name("uprobe-reaper".into()).spawn(move || {
            for link in rx {
                drop(link);
            }
        });
        match spawned {
            Ok(_) => Self(Some(tx)),
            Err(e) => {
                tracing::warn!("uprobes will be detached on the pipeline thread: {e}");
                Self(None)
            }
        }
    }

    /// Detaches `link` of `prog`, off this thread when the reaper runs.
    fn detach(&self, prog: &mut UProbe, link: aya::programs::uprobe::UProbeLinkId) {
        match (&self.0, prog.take_link(link)) {
            (Some(tx), Ok(owned)) => {
                if let Err(
                    std::sync::mpsc::TrySendError::Full(owned) | std::sync::mpsc::TrySendError::Disconnected(owned),
                ) = tx.try_send(owned)
                {
                    drop(owned);
                }
            }
            // Gone with the process already, or not ours: nothing to undo.
            (_, Ok(owned)) => drop(owned),
            (_, Err(_)) => {}
        }
    }
}

/// An attached uprobe: its program and link.
type UprobeLink = (&'static str, aya::programs::uprobe::UProbeLinkId);

/// BPF_EXIST: update an entry only if it is there.
const BPF_EXIST: u64 = 2;

impl fmt::Debug for Probes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probes").finish_non_exhaustive()
    }
}

pub fn ensure_tracefs() -> Result<(), ProbeError> {
    match std::fs::metadata("/sys/kernel/tracing/events") {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(ProbeError::NoPrivilege(format!("cannot read /sys/kernel/tracing ({e})")));
        }
        Err(_) => {}
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: constant C strings, no pointers retained by the kernel.
    let rc = unsafe { libc::mount(c"nodev".as_ptr(), target.as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::PermissionDenied {
            return Err(ProbeError::NoPrivilege(format!("cannot mount tracefs ({e})")));
        }
        return Err(ProbeError::NoTracefs(e));
    }
    Ok(())
}

/// Why a load or attach failed, when a syscall in `error`'s chain was refused
/// (EPERM, EACCES): a seccomp filter, missing capabilities or the memlock
/// limit, whichever the host shows ([`crate::preflight::permission_hint`]).
/// `None` for other failures, whose own message says enough.
pub fn failure_hint(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
                return Some(crate::preflight::permission_hint());
            }
        }
        cause = e.source();
    }
    None
}

fn program_load(program: &'static str, source: ProgramError) -> ProbeError {
    let hint = failure_hint(&source).map(|h| format!(" ({h})")).unwrap_or_default();
    ProbeError::ProgramLoad { program, source: Box::new(source), hint }
}

impl Probes {
    /// Loads the object, attaches every program, and hands back the ring buffer.
    pub fn load(config: &ProbeConfig) -> Result<(Self, RingBuf<MapData>), ProbeError> {
        if !Path::new("/sys/kernel/btf/vmlinux").exists() {
            return Err(ProbeError::Kernel(
                "no BTF at /sys/kernel/btf/vmlinux (a kernel built with CONFIG_DEBUG_INFO_BTF is needed)".into(),
            ));
        }
        ensure_tracefs()?;
        let capture = config.capture_size.clamp(1, wire::PERISCOPE_MAX_CAPTURE);
        let mut ebpf = EbpfLoader::new()
            .override_global("capture_size", &capture, true)
            .override_global("wakeup_bytes", &config.wakeup_bytes.min(config.ring_buffer_bytes / 4), true)
            .map_max_entries("events", config.ring_buffer_bytes)
            // `pending` is task storage, which aya 0.14 creates but has no typed handle for
            // (the agent never touches it).
            .allow_unsupported_maps()
            .load(OBJECT)
            .map_err(|source| {
                let hint = failure_hint(&source).or_else(crate::preflight::seccomp_note).unwrap_or_else(|| {
                    "periscope needs root or CAP_BPF + CAP_PERFMON, and a kernel with BTF at /sys/kernel/btf/vmlinux".into()
                });
                ProbeError::Load { source: Box::new(source), hint }
            })?;

        for &(program, category, name) in TRACEPOINTS {
            let prog: &mut TracePoint = ebpf
                .program_mut(program)
                .ok_or(ProbeError::MissingProgram { program })?
                .try_into()
                .map_err(|source| program_load(program, source))?;
            prog.load().map_err(|source| program_load(program, source))?;
            prog.attach(category, name).map_err(|source| ProbeError::Attach {
                program,
                tracepoint: format!("{category}:{name}"),
                hint: failure_hint(&source).map(|h| format!(" ({h})")).unwrap_or_default(),
                source: Box::new(source),
            })?;
        }
        for &(program, name) in RAW_TRACEPOINTS {
            let prog: &mut RawTracePoint = ebpf
                .program_mut(program)
                .ok_or(ProbeError::MissingProgram { program })?
                .try_into()
                .map_err(|source| program_load(program, source))?;
            prog.load().map_err(|source| program_load(program, source))?;
            prog.attach(name).map_err(|source| ProbeError::Attach {
                program,
                tracepoint: format!("raw:{name}"),
                hint: failure_hint(&source).map(|h| format!(" ({h})")).unwrap_or_default(),
                source: Box::new(source),
            })?;
        }

        // Uprobes are optional: without them, Node's thread-pool hops are
        // not followed (one line, and everything else runs).
        let mut uprobes_ok = true;
        for &program in UPROBES {
            let loaded = ebpf
                .program_mut(program)
                .ok_or(ProbeError::MissingProgram { program })
                .and_then(|p| <&mut UProbe>::try_from(p).map_err(|source| program_load(program, source)))
                .and_then(|p| p.load().map_err(|source| program_load(program, source)));
            if let Err(e) = loaded {
                tracing::warn!("continuing without runtime uprobes (libuv thread-pool hops and asyncio tasks are not followed): {e}");
                uprobes_ok = false;
                break;
            }
        }
        // Optional: attached later, to each TLS library discovery finds.
        let tls = tls::TlsProbes::load(&mut ebpf);

        let ring = RingBuf::try_from(take(&mut ebpf, "events")?)
            .map_err(|source| ProbeError::Map { map: "events", source })?;
        let tracked = HashMap::try_from(take(&mut ebpf, "tracked_pids")?)
            .map_err(|source| ProbeError::Map { map: "tracked_pids", source })?;
        let conns =
            HashMap::try_from(take(&mut ebpf, "conns")?).map_err(|source| ProbeError::Map { map: "conns", source })?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, "counters")?)
            .map_err(|source| ProbeError::Map { map: "counters", source })?;
        let go = go::GoRuntime::load(&mut ebpf)
            .inspect_err(|e| tracing::warn!("continuing without the Go runtime hooks: {e}"))
            .ok();
        let hooked = uprobes_ok.then(std::collections::HashMap::new);
        log_verified(&ebpf);
        Ok((Self { ebpf, tracked, conns, counters, hooked, tls, go, reaper: LinkReaper::start() }, ring))
    }

    /// Starts producing socket events for `pid` (its children follow in the kernel).
    pub fn track(&mut self, pid: u32) -> Result<(), ProbeError> {
        self.tracked
            .insert(pid, periscope_pid_config::default(), 0)
            .map_err(|source| ProbeError::Map { map: "tracked_pids", source })
    }

    /// Stops tracking `pid` and drops every cached connection of it.
    pub fn untrack(&mut self, pid: u32) {
        // Already gone when the kernel saw the exit: not an error.
        let _ = self.tracked.remove(&pid);
        self.purge_connections(pid);
        self.unhook(pid);
        self.forget_go(pid);
    }

    /// Deletes the kernel's cached fd descriptions of `pid` (after exit or exec).
    pub fn purge_connections(&mut self, pid: u32) {
        let stale: Vec<periscope_conn_key> =
            self.conns.keys().filter_map(Result::ok).filter(|k| k.pid == pid).collect();
        for key in stale {
            let _ = self.conns.remove(&key);
        }
    }

    /// Sets how the kernel captures the connection (pid, fd): one map
    /// update per classified connection. False when the kernel no longer
    /// holds it, or holds another connection under that fd now (the next
    /// event of the fd opens a new connection, which starts over).
    pub fn set_capture_policy(
        &mut self,
        pid: u32,
        fd: i32,
        tuple: &Tuple,
        policy: CapturePolicy,
    ) -> Result<bool, ProbeError> {
        let key = periscope_conn_key { pid, fd };
        let mut info = match self.conns.get(&key, 0) {
            Ok(info) => info,
            Err(MapError::KeyNotFound) => {
                tracing::debug!(pid, fd, "capture policy: no conns entry");
                return Ok(false);
            }
            Err(source) => return Err(ProbeError::Map { map: "conns", source }),
        };
        if info.is_tcp == 0 || capture::tuple(&info.tuple) != *tuple {
            tracing::debug!(pid, fd, is_tcp = info.is_tcp, kernel = ?capture::tuple(&info.tuple), agent = ?tuple, "capture policy: another connection");
            return Ok(false);
        }
        info.policy = policy.wire();
        match self.conns.insert(key, info, BPF_EXIST) {
            Ok(()) => Ok(true),
            // Closed in between.
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(source) => Err(ProbeError::Map { map: "conns", source }),
        }
    }

    /// Attaches the runtime uprobes of `hooks` for process `pid` (once;
    /// [`Probes::untrack`] and [`Probes::unhook`] detach them). Ok(false):
    /// hooked already, or uprobes are off.
    pub fn hook(&mut self, pid: u32, hooks: &RuntimeHooks) -> Result<bool, String> {
        let Some(hooked) = &mut self.hooked else { return Ok(false) };
        let key = (pid, hooks.runtime);
        if hooked.contains_key(&key) {
            return Ok(false);
        }
        if hooked.len() >= MAX_HOOKED_PROCESSES {
            return Err(format!("{MAX_HOOKED_PROCESSES} runtimes hooked already"));
        }
        let scope = UProbeScope::OneProcess(std::num::NonZeroU32::new(pid).ok_or("pid 0")?);
        let mut links = Vec::new();
        let mut failure = None;
        for &(program, symbol, offset) in &hooks.points {
            let Some(prog) = self.ebpf.program_mut(program).and_then(|p| <&mut UProbe>::try_from(p).ok()) else {
                failure = Some(format!("program {program} is not loaded"));
                break;
            };
            let at = aya::programs::uprobe::UProbeAttachLocation::AbsoluteOffset(offset);
            match prog.attach(at, &hooks.path, scope) {
                Ok(link) => links.push((program, link)),
                Err(e) => {
                    let hint = failure_hint(&e).map(|h| format!(" ({h})")).unwrap_or_default();
                    failure = Some(format!("uprobe {symbol} at {offset:#x} of {}: {e}{hint}", hooks.path.display()));
                    break;
                }
            }
        }
        // Kept even on failure: the process is not tried again, and what
        // attached is detached with it.
        hooked.insert(key, links);
        failure.map_or(Ok(true), Err)
    }

    /// Detaches the runtime uprobes of `pid` (it exited, exec'd or is no longer watched).
    pub fn unhook(&mut self, pid: u32) {
        let Some(hooked) = self.hooked.as_mut() else { return };
        let keys: Vec<(u32, Runtime)> = hooked.keys().filter(|(p, _)| *p == pid).copied().collect();
        let links: Vec<_> = keys.iter().filter_map(|k| hooked.remove(k)).flatten().collect();
        for (program, link) in links {
            if let Some(prog) = self.ebpf.program_mut(program).and_then(|p| <&mut UProbe>::try_from(p).ok()) {
                self.reaper.detach(prog, link);
            }
        }
    }

    /// Pids the kernel currently tracks (including children it added itself).
    pub fn tracked_pids(&self) -> Vec<u32> {
        self.tracked.keys().filter_map(Result::ok).collect()
    }

    /// Number of cached fd descriptions (for tests and the reliability suite).
    pub fn cached_connections(&self) -> usize {
        self.conns.keys().filter_map(Result::ok).count()
    }

    /// Sum over CPUs of each kernel counter (index = enum periscope_counter).
    pub fn kernel_counters(&self) -> [u64; wire::periscope_counter::PERISCOPE_CNT__MAX as usize] {
        let mut out = [0u64; wire::periscope_counter::PERISCOPE_CNT__MAX as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = self.counters.get(&(i as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out
    }

    /// Attaches the TLS uprobes to `library` (once per file).
    pub fn attach_tls(
        &mut self,
        library: &crate::discovery::tls_libraries::TlsLibrary,
    ) -> Result<usize, tls::TlsAttachError> {
        self.tls.attach(&mut self.ebpf, library)
    }

    /// Whether `library`'s file was tried already.
    pub fn tls_attached(&self, library: &crate::discovery::tls_libraries::TlsLibrary) -> bool {
        self.tls.is_attached(library)
    }

    /// Names of the attached programs (for diagnostics).
    pub fn program_names(&self) -> Vec<String> {
        self.ebpf.programs().map(|(name, _)| name.to_owned()).collect()
    }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
}

/// What the verifier checked, per loaded program (debug; its state for the
/// largest programs is most of the agent's memory peak while loading).
fn log_verified(ebpf: &Ebpf) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let mut counts: Vec<(&str, u32)> =
        ebpf.programs().filter_map(|(name, p)| Some((name, p.info().ok()?.verified_instruction_count()?))).collect();
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    let total: u64 = counts.iter().map(|c| u64::from(c.1)).sum();
    tracing::debug!(programs = counts.len(), total, largest = ?&counts[..counts.len().min(8)], "instructions the verifier checked");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused syscall anywhere in the error's chain gets the host's
    /// explanation; other failures keep their own message.
    #[test]
    fn permission_errors_in_the_chain_get_a_hint() {
        let refused =
            MapError::CreateError { name: "events".into(), io_error: io::Error::from_raw_os_error(libc::EPERM) };
        assert!(failure_hint(&EbpfError::MapError(refused)).is_some());
        let other =
            MapError::CreateError { name: "events".into(), io_error: io::Error::from_raw_os_error(libc::EINVAL) };
        assert_eq!(failure_hint(&EbpfError::MapError(other)), None);
    }
}

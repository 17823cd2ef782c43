//! Discovery: which processes to watch, and what service each one is.
//!
//! * [`Selector`]: the criteria (open ports, exe-path globs, pids; any match).
//! * [`Scanner::scan`]: one pass over `/proc` listing matching processes as
//!   [`ProcessInfo`]; listening ports come from `/proc/PID/net/tcp{,6}` read
//!   once per network namespace, so processes in containers are found too.
//! * [`read_process`]: the same information for a single pid (exec events).
//! * [`build_service`]: the OTel Resource ([`Service`]) of a process.
//! * [`pg_backends`]: PostgreSQL client backends by the client each one
//!   serves (process titles), indexed by the same scans.
//!
//! Everything here reads `/proc` synchronously; call it from a blocking
//! thread in async code.
use std::path::PathBuf;

pub mod host;
pub mod pg_backends;
mod ports;
mod procfs;
pub mod runtime_hooks;
mod scanner;
mod selector;
mod service;
#[cfg(test)]
mod tests;
pub mod tls_libraries;

pub use host::{resolve_host_name, HostName, HostNameSource};
pub use ports::{PortSet, PortSetError};
pub use scanner::{read_process, ScanResult, Scanner};
pub use selector::{matches_exe, ExeGlobs, Selector};
pub use service::{
    build_service, build_service_in_pod, instance_id, interpreter_service_name, parse_resource_attributes,
    resolve_service, Language, NamingRule, ResolvedService, ServiceOptions,
};

pub use crate::model::Service;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The process exited (or its pid was reused) while being read.
    #[error("process {pid} is gone")]
    Gone { pid: u32 },
    #[error("reading {path} of process {pid}: {source}")]
    Io {
        pid: u32,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {what} of process {pid} ({path})")]
    Parse { pid: u32, path: PathBuf, what: &'static str },
    #[error("kernel thread {pid} cannot be instrumented")]
    KernelThread { pid: u32 },
    #[error("invalid executable glob {pattern:?}: {source}")]
    InvalidGlob {
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error(transparent)]
    InvalidPorts(#[from] PortSetError),
    #[error("listing {path}: {source}")]
    ProcList {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What discovery knows about one process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    /// `/proc/PID/comm` (from stat; at most 15 bytes, settable by the process).
    pub comm: String,
    /// Target of `/proc/PID/exe`, without a ` (deleted)` suffix. `None` when
    /// unreadable. The path is in the process's own mount namespace; to open
    /// the binary from the agent use `/proc/PID/exe`.
    pub exe_path: Option<PathBuf>,
    /// File name of `exe_path`, else `comm`.
    pub exe_name: String,
    pub cmdline: Vec<String>,
    /// TCP ports the process LISTENs on (IPv4 and IPv6), sorted, deduplicated.
    pub listening_ports: Vec<u16>,
    /// `OTEL_SERVICE_NAME` from the environment the process was exec'ed with
    /// (`/proc/PID/environ`; later `setenv` calls are invisible). Empty = unset.
    pub env_service_name: Option<String>,
    /// Parsed `OTEL_RESOURCE_ATTRIBUTES` of the same environment, in order.
    pub env_resource_attrs: Vec<(String, String)>,
    /// Field 22 of `/proc/PID/stat` (clock ticks after boot): `(pid,
    /// start_time_ticks)` identifies a process across pid reuse.
    pub start_time_ticks: u64,
    /// Inode of `/proc/PID/ns/net`: processes sharing it share a network stack.
    pub netns_inode: Option<u64>,
    /// Target language, from the exe name, else an ELF check for Go.
    pub language: Language,
    /// Container id and pod UID from `/proc/PID/cgroup`; `None` outside
    /// containers.
    pub container: Option<crate::kubernetes::ContainerRef>,
    /// Its runtimes to hook with uprobes (libuv, asyncio; filled by the discovery
    /// thread for the processes it hands to the pipeline).
    pub runtime_hooks: Vec<std::sync::Arc<runtime_hooks::RuntimeHooks>>,
}

impl ProcessInfo {
    /// `(pid, start_time_ticks)`: unique for the lifetime of the machine.
    pub fn key(&self) -> (u32, u64) {
        (self.pid, self.start_time_ticks)
    }
}

//! One pass over `/proc`: which running processes match a [`Selector`].
use std::{collections::HashMap, fs::File, path::PathBuf, rc::Rc};

use crate::kubernetes::{ContainerRef, KubernetesMetadata};

use super::{
    pg_backends::{BackendDirectory, BackendTracker},
    procfs::{is_go_elf, ProcFs, Stat},
    service::Language,
    DiscoveryError, ProcessInfo, Selector,
};

/// LISTEN sockets of one network namespace: socket inode -> port.
type ListenTable = Rc<HashMap<u64, u16>>;

/// Listen tables read during one scan, keyed by network-namespace inode, so
/// `/proc/PID/net/tcp{,6}` is read once per namespace, not once per process.
#[derive(Default)]
struct NetCache {
    by_ns: HashMap<u64, ListenTable>,
}

impl NetCache {
    fn table(&mut self, fs: &ProcFs, pid: u32, netns: Option<u64>) -> Result<ListenTable, DiscoveryError> {
        if let Some(ns) = netns {
            if let Some(t) = self.by_ns.get(&ns) {
                return Ok(t.clone());
            }
        }
        // Failures (process gone) are not cached: the next process of the
        // namespace tries again.
        let t = Rc::new(fs.listen_table(pid)?);
        if let Some(ns) = netns {
            self.by_ns.insert(ns, t.clone());
        }
        Ok(t)
    }
}

fn ports_of(table: &HashMap<u64, u16>, socket_inodes: &[u64]) -> Vec<u16> {
    let mut ports: Vec<u16> = socket_inodes.iter().filter_map(|i| table.get(i).copied()).collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Fills the rest of a `ProcessInfo` once a process is known to be wanted.
/// Ends by re-reading the start time: a process that exited (or whose pid was
/// reused) during the read is `Gone`, never a mix of two processes.
fn complete(
    fs: &ProcFs,
    pid: u32,
    stat: Stat,
    exe_path: Option<PathBuf>,
    netns_inode: Option<u64>,
    listening_ports: Option<Vec<u16>>,
    cache: &mut NetCache,
) -> Result<ProcessInfo, DiscoveryError> {
    let cmdline = fs.cmdline(pid)?;
    let (env_name, env_attrs) = fs.otel_env(pid)?;
    let listening_ports = match listening_ports {
        Some(p) => p,
        None => {
            let inodes = fs.socket_inodes(pid)?;
            if inodes.is_empty() {
                Vec::new()
            } else {
                ports_of(&*cache.table(fs, pid, netns_inode)?, &inodes)
            }
        }
    };
    let exe_name = exe_path
        .as_deref()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| stat.comm.clone());
    let mut language = Language::from_exe_name(&exe_name);
    if language == Language::Unknown && exe_path.is_some() {
        if let Ok(mut f) = File::open(fs.exe_link_path(pid)) {
            if is_go_elf(&mut f).unwrap_or(false) {
                language = Language::Go;
            }
        }
    }
    let container = fs.container(pid);
    match fs.stat(pid) {
        Ok(again) if again.start_time == stat.start_time && !again.is_dead() => {}
        Ok(_) | Err(DiscoveryError::Gone { .. }) => return Err(DiscoveryError::Gone { pid }),
        Err(e) => return Err(e),
    }
    Ok(ProcessInfo {
        pid,
        ppid: stat.ppid,
        comm: stat.comm,
        exe_path,
        exe_name,
        cmdline,
        listening_ports,
        env_service_name: env_name.filter(|n| !n.trim().is_empty()),
        env_resource_attrs: env_attrs.as_deref().map(super::parse_resource_attributes).unwrap_or_default(),
        start_time_ticks: stat.start_time,
        netns_inode,
        language,
        container,
        runtime_hooks: Vec::new(),
    })
}

fn read_process_in(fs: &ProcFs, pid: u32) -> Result<ProcessInfo, DiscoveryError> {
    let stat = fs.stat(pid)?;
    if stat.is_kernel_thread() {
        return Err(DiscoveryError::KernelThread { pid });
    }
    if stat.is_dead() {
        return Err(DiscoveryError::Gone { pid });
    }
    let exe = fs.exe(pid);
    let netns = fs.netns(pid);
    complete(fs, pid, stat, exe, netns, None, &mut NetCache::default())
}

/// Everything discovery knows about one process (e.g. right after an exec
/// event). A process that is gone or exits mid-read gives
/// [`DiscoveryError::Gone`]; a kernel thread gives `KernelThread`.
pub fn read_process(pid: u32) -> Result<ProcessInfo, DiscoveryError> {
    read_process_in(&ProcFs::default(), pid)
}

/// The outcome of one [`Scanner::scan`].
#[derive(Debug, Default, Clone)]
pub struct ScanResult {
    /// Matching processes, in pid order.
    pub matched: Vec<ProcessInfo>,
    /// Processes that could not be read (mostly: exited during the scan).
    /// Informational; they never fail the scan.
    pub skipped: usize,
}

/// Lists running processes matching a [`Selector`]. Skips the agent itself,
/// kernel threads and zombies.
#[derive(Debug, Clone)]
pub struct Scanner {
    fs: ProcFs,
    self_pid: u32,
    kubernetes: Option<KubernetesMetadata>,
    /// Container of each process seen by the last scan, `(pid, start time)`
    /// -> container: the pod criterion reads `/proc/PID/cgroup` once per
    /// process, not once per scan.
    containers: HashMap<(u32, u64), Option<ContainerRef>>,
    /// PostgreSQL client backends, indexed from the same pass.
    backends: BackendTracker,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

impl Scanner {
    pub fn new() -> Self {
        Self::with_proc_root("/proc")
    }

    /// Pods known to this metadata make the selector's pod criterion work.
    pub fn with_kubernetes(mut self, kubernetes: KubernetesMetadata) -> Self {
        self.kubernetes = Some(kubernetes);
        self
    }

    /// A scanner over another procfs mount (e.g. the host's `/proc` mounted
    /// at `/host/proc` when the agent runs in a container).
    pub fn with_proc_root(root: impl Into<PathBuf>) -> Self {
        Self {
            fs: ProcFs::new(root),
            self_pid: std::process::id(),
            kubernetes: None,
            containers: HashMap::new(),
            backends: BackendTracker::default(),
        }
    }

    /// Where each scan publishes the PostgreSQL client backends it saw.
    pub fn backend_directory(&self) -> BackendDirectory {
        self.backends.directory()
    }

    /// A pass over `/proc` for PostgreSQL backends only (between scans, when
    /// a connection's backend is looked for): a `stat` per process, a title
    /// read per new backend.
    pub fn refresh_backends(&mut self) {
        let Ok(pids) = self.fs.pids() else { return };
        for pid in pids {
            if let Ok(stat) = self.fs.stat(pid) {
                self.backends.observe(&self.fs, pid, &stat);
            }
        }
        self.backends.publish();
    }

    /// One pass over `/proc`, which also indexes PostgreSQL client backends
    /// (see [`Self::backend_directory`]). Cost: a `stat` and `exe` read per process; net
    /// tables once per network namespace (only when ports are selected); fd
    /// links only for processes in a namespace that has a listening socket on
    /// a selected port, and for processes already matched (to fill
    /// `listening_ports`).
    pub fn scan(&mut self, selector: &Selector) -> ScanResult {
        let mut res = ScanResult::default();
        if selector.is_empty() {
            return res;
        }
        let Ok(pids) = self.fs.pids() else {
            return res;
        };
        let mut cache = NetCache::default();
        let mut previous = std::mem::take(&mut self.containers);
        for pid in pids {
            if pid == self.self_pid {
                continue;
            }
            match self.consider(pid, selector, &mut cache, &mut previous) {
                Ok(Some(info)) => res.matched.push(info),
                Ok(None) => {}
                Err(_) => res.skipped += 1,
            }
        }
        self.backends.publish();
        res
    }

    /// The pod criterion: the process's pod is known and selected.
    fn matches_pod(
        &mut self,
        pid: u32,
        start_time: u64,
        selector: &Selector,
        previous: &mut HashMap<(u32, u64), Option<ContainerRef>>,
    ) -> bool {
        let (Some(kubernetes), Some(_)) = (&self.kubernetes, &selector.pods) else {
            return false;
        };
        let key = (pid, start_time);
        let container = match previous.remove(&key) {
            Some(c) => c,
            None => self.fs.container(pid),
        };
        let matched = container.as_ref().and_then(|c| kubernetes.find(c)).is_some_and(|pod| selector.matches_pod(&pod));
        self.containers.insert(key, container);
        matched
    }

    fn consider(
        &mut self,
        pid: u32,
        selector: &Selector,
        cache: &mut NetCache,
        previous: &mut HashMap<(u32, u64), Option<ContainerRef>>,
    ) -> Result<Option<ProcessInfo>, DiscoveryError> {
        let stat = self.fs.stat(pid)?;
        if stat.is_kernel_thread() || stat.is_dead() {
            return Ok(None);
        }
        self.backends.observe(&self.fs, pid, &stat);
        let exe = self.fs.exe(pid);
        let netns = self.fs.netns(pid);
        let direct = selector.matches_pid(pid)
            || exe.as_deref().is_some_and(|p| selector.matches_exe(p))
            || self.matches_pod(pid, stat.start_time, selector, previous);
        let mut ports = None;
        if !direct {
            let Some(set) = selector.open_ports.as_ref() else {
                return Ok(None);
            };
            let table = cache.table(&self.fs, pid, netns)?;
            if !table.values().any(|&p| set.contains(p)) {
                return Ok(None);
            }
            let p = ports_of(&table, &self.fs.socket_inodes(pid)?);
            if !p.iter().any(|&x| set.contains(x)) {
                return Ok(None);
            }
            ports = Some(p);
        }
        complete(&self.fs, pid, stat, exe, netns, ports, cache).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::Arc};

    use super::*;
    use crate::{
        kubernetes::{store::ContainerMeta, MetadataStore, PodMeta, PodSelector, StoreLimits},
        telemetry::Telemetry,
    };

    const ID: &str = "3f2a9c1d7e6b5a4f8c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b";

    /// A fake `/proc/PID` with what the scanner reads.
    fn fake_process(root: &Path, pid: u32, cgroup: &str) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(dir.join("fd")).unwrap();
        let stat = format!("{pid} (app) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0\n");
        std::fs::write(dir.join("stat"), stat).unwrap();
        std::fs::write(dir.join("cmdline"), b"app\0").unwrap();
        std::fs::write(dir.join("environ"), b"").unwrap();
        std::fs::write(dir.join("cgroup"), cgroup).unwrap();
    }

    #[test]
    fn pod_criterion_selects_processes_of_known_pods() {
        let root = std::env::temp_dir().join(format!("periscope-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        fake_process(&root, 4242, &format!("0::/kubepods/besteffort/pod7e4f3b1a-2c6d-4e8f-9a0b-1c2d3e4f5a6b/{ID}\n"));
        fake_process(&root, 4343, "0::/user.slice/user-1000.slice/session-2.scope\n");

        let store = MetadataStore::new(StoreLimits::default(), Arc::new(Telemetry::default()));
        let meta = crate::kubernetes::KubernetesMetadata::new(store.clone(), "worker-1", None);
        let mut scanner = Scanner::with_proc_root(&root).with_kubernetes(meta);
        let selector = Selector { pods: Some(PodSelector::new(&["shop"], &[], &[]).unwrap()), ..Selector::default() };
        assert!(scanner.scan(&selector).matched.is_empty(), "pod not known yet");

        store.apply_pod(PodMeta {
            uid: "7e4f3b1a-2c6d-4e8f-9a0b-1c2d3e4f5a6b".into(),
            name: "api-0".into(),
            namespace: "shop".into(),
            containers: vec![ContainerMeta { id: ID.into(), name: "api".into() }],
            ..PodMeta::default()
        });
        let found = scanner.scan(&selector).matched;
        assert_eq!(found.iter().map(|i| i.pid).collect::<Vec<_>>(), [4242]);
        assert_eq!(found[0].container.as_ref().and_then(|c| c.container_id.as_deref()), Some(ID));

        let other = Selector { pods: Some(PodSelector::new(&["other"], &[], &[]).unwrap()), ..Selector::default() };
        assert!(scanner.scan(&other).matched.is_empty());
        // Without metadata the pod criterion matches nothing.
        assert!(Scanner::with_proc_root(&root).scan(&selector).matched.is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }
}

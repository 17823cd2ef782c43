//! `host.name`: the machine the watched processes run on, not the agent's
//! container.
//!
//! An agent in a container has its own UTS namespace, so its `uname()` is
//! the container's name (the container id under Docker: new on every
//! recreate). First match wins:
//! 1. `--host-name` / `PERISCOPE_HOST_NAME`;
//! 2. the node name (`NODE_NAME`, set from `spec.nodeName` by the DaemonSet,
//!    or `--kubernetes-node-name`);
//! 3. the host's UTS namespace: that of pid 1 (the host's init, with the
//!    host's PID namespace), joined by a short-lived thread (`setns(2)` moves
//!    only the calling thread) that calls `uname(2)`. Joining needs
//!    CAP_SYS_ADMIN (and a seccomp profile allowing `setns`); without it, or
//!    with `uts: host`, see 4;
//! 4. this process's own `uname()`: the host's when it shares pid 1's UTS
//!    namespace, else the container's ([`HostNameSource::Container`]: the
//!    agent warns and says what to set).
use std::{fmt, fs, io, os::fd::AsRawFd, path::Path};

/// `/proc/self/ns/uts` of the initial UTS namespace (`PROC_UTS_INIT_INO`,
/// 0xEFFFFFFE in include/linux/proc_ns.h, fixed since Linux 3.8).
const INITIAL_UTS_NS: &str = "uts:[4026531838]";

/// Where `host.name` came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostNameSource {
    /// `--host-name`.
    Setting,
    /// `NODE_NAME` / `--kubernetes-node-name`.
    NodeName,
    /// This process's own, which is the initial UTS namespace: the host's.
    InitialNamespace,
    /// The UTS namespace of pid 1, joined.
    HostNamespace,
    /// This process's own, which is also pid 1's (no container, `uts: host`,
    /// or no host PID namespace: then pid 1 is the container's own init).
    SharedNamespace,
    /// This process's own, which is not pid 1's: a container's name. `why`
    /// says why pid 1's could not be read.
    Container { why: String },
}

/// `host.name` and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostName {
    pub name: String,
    pub source: HostNameSource,
}

impl fmt::Display for HostNameSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostNameSource::Setting => write!(f, "from --host-name"),
            HostNameSource::NodeName => write!(f, "from NODE_NAME"),
            HostNameSource::InitialNamespace => write!(f, "this process's UTS namespace, the host's initial one"),
            HostNameSource::HostNamespace => write!(f, "from the host's UTS namespace, through /proc/1/ns/uts"),
            HostNameSource::SharedNamespace => write!(f, "this process's UTS namespace, which is pid 1's"),
            HostNameSource::Container { why } => write!(
                f,
                "this container's own UTS namespace: {why}; set NODE_NAME or --host-name, run with uts: host, or grant CAP_SYS_ADMIN"
            ),
        }
    }
}

/// Resolves `host.name` in the order of the module doc, against pid 1.
pub fn resolve_host_name(setting: Option<&str>, node_name: Option<&str>) -> HostName {
    resolve_against(setting, node_name, Path::new("/proc/self"), Path::new("/proc/1"))
}

/// [`resolve_host_name`] for the process at `self_dir` (`/proc/self`) with
/// the host's reference process at `proc_dir` (`/proc/1`); tests give others.
pub fn resolve_against(setting: Option<&str>, node_name: Option<&str>, self_dir: &Path, proc_dir: &Path) -> HostName {
    let given = |v: Option<&str>| v.map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    if let Some(name) = given(setting) {
        return HostName { name, source: HostNameSource::Setting };
    }
    if let Some(name) = given(node_name) {
        return HostName { name, source: HostNameSource::NodeName };
    }
    let own = own_name();
    match uts_of(self_dir, proc_dir) {
        Ok(UtsName::Initial) => HostName { name: own, source: HostNameSource::InitialNamespace },
        Ok(UtsName::Same) => HostName { name: own, source: HostNameSource::SharedNamespace },
        Ok(UtsName::Joined(name)) => HostName { name, source: HostNameSource::HostNamespace },
        Err(why) => HostName { name: own, source: HostNameSource::Container { why } },
    }
}

enum UtsName {
    /// This process is in the initial UTS namespace (the host's, whatever pid 1 is).
    Initial,
    /// The reference process shares this process's UTS namespace.
    Same,
    /// Its UTS namespace is another, whose node name this is.
    Joined(String),
}

/// The node name of the UTS namespace of the process at `proc_dir`, seen
/// from the one at `self_dir`.
fn uts_of(self_dir: &Path, proc_dir: &Path) -> Result<UtsName, String> {
    let own_link = self_dir.join("ns/uts");
    let ours = fs::read_link(&own_link).map_err(|e| format!("cannot read {}: {e}", own_link.display()))?;
    if ours.to_str() == Some(INITIAL_UTS_NS) {
        return Ok(UtsName::Initial);
    }
    let link = proc_dir.join("ns/uts");
    let theirs = fs::read_link(&link).map_err(|e| format!("cannot read {}: {e}", link.display()))?;
    if theirs == ours {
        return Ok(UtsName::Same);
    }
    let ns = fs::File::open(&link).map_err(|e| format!("cannot open {}: {e}", link.display()))?;
    // A thread of its own: setns(CLONE_NEWUTS) moves only the calling
    // thread, which then ends, so no other thread ever sees that namespace.
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: `ns` is an open namespace file; setns only reads the fd.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWUTS) } != 0 {
                return Err(format!("joining pid 1's UTS namespace failed: {}", io::Error::last_os_error()));
            }
            uname_nodename().map(UtsName::Joined).ok_or_else(|| "uname() failed in pid 1's UTS namespace".to_owned())
        })
        .join()
        .unwrap_or_else(|_| Err("the thread reading pid 1's UTS namespace panicked".into()))
    })
}

/// `uname(2)`'s node name of the calling thread's UTS namespace.
fn uname_nodename() -> Option<String> {
    // SAFETY: utsname is plain old data, filled by the kernel.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = u.nodename.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    let name = String::from_utf8_lossy(&bytes).trim().to_owned();
    (!name.is_empty()).then_some(name)
}

/// This process's own host name: `uname()`, else `"unknown"`.
fn own_name() -> String {
    uname_nodename().unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory that looks like `/proc/PID` to [`uts_of`]: `ns/uts` is a
    /// symlink to `target` (dangling, as namespace links look to readlink).
    fn fake_proc(name: &str, target: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("periscope-host-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("ns")).unwrap();
        std::os::unix::fs::symlink(target, dir.join("ns/uts")).unwrap();
        dir
    }

    #[test]
    fn settings_come_first_and_blank_ones_do_not_count() {
        let here = Path::new("/proc/self");
        let h = resolve_against(Some("explicit"), Some("node-1"), here, here);
        assert_eq!(h, HostName { name: "explicit".into(), source: HostNameSource::Setting });
        let h = resolve_against(Some("  "), Some("node-1"), here, here);
        assert_eq!(h, HostName { name: "node-1".into(), source: HostNameSource::NodeName });
    }

    #[test]
    fn namespaces_decide_between_our_name_and_the_hosts() {
        let container = fake_proc("container", "uts:[4026532801]");
        let init = fake_proc("init", "uts:[4026531838]");
        let host = fake_proc("host", "uts:[4026531838]");
        let same = fake_proc("same", "uts:[4026532801]");
        let own = uname_nodename().unwrap();
        // Ours is the initial namespace: our name, whatever pid 1 is.
        let h = resolve_against(None, None, &init, Path::new("/nonexistent"));
        assert_eq!(h, HostName { name: own.clone(), source: HostNameSource::InitialNamespace });
        // Pid 1 shares our (non-initial) namespace: `uts: host`-like, or no host PID namespace.
        let h = resolve_against(None, None, &container, &same);
        assert_eq!(h, HostName { name: own.clone(), source: HostNameSource::SharedNamespace });
        // Pid 1's differs and cannot be joined (here: not a namespace file at all):
        // our name, saying it is the container's and why.
        let h = resolve_against(None, None, &container, &host);
        assert_eq!(h.name, own);
        match &h.source {
            HostNameSource::Container { why } => assert!(why.contains("host/ns/uts"), "{why}"),
            s => panic!("{s:?}"),
        }
        let said = h.source.to_string();
        assert!(said.contains("set NODE_NAME or --host-name") && said.contains("uts: host"), "{said}");
        // Unreadable: the same fallback.
        let h = resolve_against(None, None, &container, Path::new("/proc/nonexistent-pid"));
        assert!(matches!(h.source, HostNameSource::Container { .. }), "{h:?}");
        for d in [container, init, host, same] {
            fs::remove_dir_all(d).unwrap();
        }
    }
}

//! Which processes to watch: open ports, executable-path globs, pids.
use std::path::Path;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use super::{DiscoveryError, PortSet, ProcessInfo};

/// Executable-path globs, kept with their source patterns (for logs/config
/// echo). Matched against the *full* path of `/proc/PID/exe`; `*` also
/// crosses `/`, so `*/python3*` matches `/usr/bin/python3.11`.
#[derive(Debug, Clone)]
pub struct ExeGlobs {
    set: GlobSet,
    patterns: Vec<String>,
}

impl ExeGlobs {
    pub fn new<I, S>(patterns: I) -> Result<Self, DiscoveryError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut builder = GlobSetBuilder::new();
        let mut sources = Vec::new();
        for p in patterns {
            let p = p.as_ref().trim();
            if p.is_empty() {
                continue;
            }
            let glob = GlobBuilder::new(p)
                .literal_separator(false)
                .build()
                .map_err(|source| DiscoveryError::InvalidGlob { pattern: p.to_owned(), source })?;
            builder.add(glob);
            sources.push(p.to_owned());
        }
        let set =
            builder.build().map_err(|source| DiscoveryError::InvalidGlob { pattern: sources.join(","), source })?;
        Ok(Self { set, patterns: sources })
    }

    pub fn is_match(&self, path: &Path) -> bool {
        self.set.is_match(path)
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

/// A process matches when ANY given criterion matches (Beyla semantics).
/// An empty selector matches nothing.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    /// The process LISTENs on a TCP port (IPv4 or IPv6) in this set.
    pub open_ports: Option<PortSet>,
    /// The full path of `/proc/PID/exe` matches one of these globs.
    pub exe_globs: Option<ExeGlobs>,
    /// The process id is one of these.
    pub pids: Vec<u32>,
    /// The process runs in a pod this selects (Kubernetes metadata needed:
    /// the [`super::Scanner`] looks the pod up, see `Scanner::with_kubernetes`).
    pub pods: Option<crate::kubernetes::PodSelector>,
}

impl Selector {
    /// Builds a selector from CLI-style inputs: a port list (`"80,8000-8999"`),
    /// exe globs and pids. Empty inputs leave that criterion unset.
    pub fn from_parts<S: AsRef<str>>(
        open_ports: Option<&str>,
        exe_globs: &[S],
        pids: &[u32],
    ) -> Result<Self, DiscoveryError> {
        let open_ports = match open_ports.map(str::trim) {
            None | Some("") => None,
            Some(s) => Some(s.parse::<PortSet>()?),
        };
        let globs = ExeGlobs::new(exe_globs)?;
        Ok(Self { open_ports, exe_globs: (!globs.is_empty()).then_some(globs), pids: pids.to_vec(), pods: None })
    }

    pub fn is_empty(&self) -> bool {
        self.open_ports.as_ref().is_none_or(PortSet::is_empty)
            && self.exe_globs.as_ref().is_none_or(ExeGlobs::is_empty)
            && self.pids.is_empty()
            && self.pods.as_ref().is_none_or(crate::kubernetes::PodSelector::is_empty)
    }

    /// The pod criterion alone: the process runs in a pod it selects.
    pub fn matches_pod(&self, pod: &crate::kubernetes::PodMatch) -> bool {
        self.pods.as_ref().is_some_and(|s| s.matches(pod))
    }

    /// The exe-glob criterion alone (e.g. on an exec event, before the new
    /// program had a chance to open any port).
    pub fn matches_exe(&self, path: &Path) -> bool {
        self.exe_globs.as_ref().is_some_and(|g| g.is_match(path))
    }

    pub fn matches_pid(&self, pid: u32) -> bool {
        self.pids.contains(&pid)
    }

    pub fn matches_port(&self, port: u16) -> bool {
        self.open_ports.as_ref().is_some_and(|p| p.contains(port))
    }

    /// Whether an already-read process matches any criterion but the pod
    /// one (which needs the process's pod: [`Self::matches_pod`]).
    pub fn matches(&self, info: &ProcessInfo) -> bool {
        self.matches_pid(info.pid)
            || info.exe_path.as_deref().is_some_and(|p| self.matches_exe(p))
            || info.listening_ports.iter().any(|&p| self.matches_port(p))
    }
}

/// Free-function form of [`Selector::matches_exe`], for exec-event handlers.
pub fn matches_exe(selector: &Selector, path: &Path) -> bool {
    selector.matches_exe(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_full_path() {
        let s = Selector::from_parts(None, &["*/python3*", "/usr/sbin/nginx"], &[]).unwrap();
        assert!(s.matches_exe(Path::new("/usr/bin/python3.11")));
        assert!(s.matches_exe(Path::new("/opt/venv/bin/python3")));
        assert!(s.matches_exe(Path::new("/usr/sbin/nginx")));
        assert!(!s.matches_exe(Path::new("/usr/local/sbin/nginx")));
        assert!(!s.matches_exe(Path::new("/usr/bin/python2")));
        assert!(matches_exe(&s, Path::new("/usr/bin/python3")));
        assert_eq!(s.exe_globs.as_ref().unwrap().patterns(), ["*/python3*", "/usr/sbin/nginx"]);
    }

    #[test]
    fn empty_and_errors() {
        assert!(Selector::default().is_empty());
        let none: &[&str] = &[];
        assert!(Selector::from_parts(Some(" "), none, &[]).unwrap().is_empty());
        assert!(!Selector::from_parts(Some("80"), none, &[]).unwrap().is_empty());
        assert!(!Selector::from_parts(None, none, &[1]).unwrap().is_empty());
        let e = Selector::from_parts(None, &["/usr/[bin"], &[]).unwrap_err();
        assert!(e.to_string().contains("/usr/[bin"), "{e}");
        let e = Selector::from_parts(Some("80,0"), none, &[]).unwrap_err();
        assert!(e.to_string().contains("\"0\""), "{e}");
        assert!(!Selector::default().matches_exe(Path::new("/bin/sh")));
    }

    #[test]
    fn any_criterion_matches() {
        let s = Selector::from_parts(Some("8080"), &["*/nginx"], &[42]).unwrap();
        let mut info = ProcessInfo { pid: 7, ..ProcessInfo::default() };
        assert!(!s.matches(&info));
        info.listening_ports = vec![22, 8080];
        assert!(s.matches(&info));
        info.listening_ports.clear();
        info.exe_path = Some("/usr/sbin/nginx".into());
        assert!(s.matches(&info));
        info.exe_path = None;
        info.pid = 42;
        assert!(s.matches(&info));
    }
}

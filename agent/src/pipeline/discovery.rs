//! The discovery thread: every blocking read of `/proc` happens here, never
//! in the loop that drains the ring buffer. It scans for processes to watch
//! every discovery interval and, between scans, answers the pipeline's
//! requests: what a forked or exec'd process is, which watched processes
//! are gone (exits whose event was lost), which PostgreSQL backend serves an
//! adopted connection. Requests and answers are bounded queues.
use std::{
    path::Path,
    sync::mpsc::{self as std_mpsc, RecvTimeoutError},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use super::db_names::{self, Lookup, Resolver};
use crate::discovery::{
    self,
    tls_libraries::{TlsFinder, TlsLibrary},
    ProcessInfo, Scanner, Selector,
};

/// Requests waiting for the discovery thread at once; beyond, a request is
/// dropped by its sender (its effect comes with the next scan, or not at
/// all: a forked child keeps its parent's Resource).
pub const MAX_REQUESTS: usize = 4096;
/// Answers waiting for the pipeline at once (the thread waits when full).
pub const MAX_ANSWERS: usize = 4096;

/// What the pipeline asks of the discovery thread.
#[derive(Debug)]
pub enum Request {
    /// The kernel tracks a child of a tracked process: what is it?
    Fork { pid: u32 },
    /// A process exec'd; `tracked`: it is watched (its new Resource), else
    /// whether it now matches the executable globs.
    Exec { pid: u32, tracked: bool },
    /// Which of these watched processes are gone.
    Alive(Vec<u32>),
    /// The backend of an adopted PostgreSQL connection.
    Database(Lookup),
    /// The TLS libraries of a process just watched.
    TlsLibraries { pid: u32 },
}

/// What the discovery thread tells the pipeline.
#[derive(Debug)]
pub enum Answer {
    /// The processes a scan matched.
    Scan(Vec<ProcessInfo>),
    /// A forked child, read from /proc (None: it is gone already).
    Forked(Option<ProcessInfo>),
    /// An exec'd process: tracked, what it is now; untracked, it when it
    /// matches the executable globs (else None).
    Execed {
        tracked: bool,
        info: Option<ProcessInfo>,
    },
    /// Watched processes whose /proc entry is gone.
    Gone(Vec<u32>),
    Database(db_names::NameAnswer),
    /// TLS libraries not reported before, to attach the uprobes to.
    TlsLibraries(Vec<TlsLibrary>),
}

/// What runtime uprobes the process needs (a file's symbols are read once).
fn with_runtime_hooks(info: &mut ProcessInfo) {
    if info.language != discovery::Language::Go {
        info.runtime_hooks = discovery::runtime_hooks::find(info.pid);
    }
}

/// Watched processes without a TLS library yet have their maps read again
/// every this many `Alive` requests (one a second): a library loaded after
/// the process started (`import ssl`, dlopen) is found within seconds.
const TLS_RESCAN_EVERY: u32 = 2;
/// Processes whose maps one rescan reads at most.
const MAX_TLS_RESCAN: usize = 512;

pub struct Worker {
    pub scanner: Scanner,
    pub selector: Selector,
    pub interval: Duration,
    pub requests: std_mpsc::Receiver<Request>,
    pub answers: mpsc::Sender<Answer>,
    pub resolver: Resolver,
    pub tls: TlsRescan,
}

/// Which watched processes may still load a TLS library.
#[derive(Debug, Default)]
pub struct TlsRescan {
    finder: TlsFinder,
    /// Pids seen with a TLS library (not read again).
    with_tls: std::collections::HashSet<u32>,
    rounds: u32,
}

impl TlsRescan {
    fn scan(&mut self, pid: u32) -> Vec<TlsLibrary> {
        let found = self.finder.scan(pid);
        // A library the uprobes cannot go on does not count: the real one
        // may come later.
        if found.iter().any(|l| l.problem.is_none()) {
            self.with_tls.insert(pid);
        }
        found
    }

    /// Every few rounds, the watched processes without a TLS library.
    fn rescan(&mut self, pids: &[u32]) -> Vec<TlsLibrary> {
        self.rounds = self.rounds.wrapping_add(1);
        self.with_tls.retain(|pid| pids.contains(pid));
        if !self.rounds.is_multiple_of(TLS_RESCAN_EVERY) {
            return Vec::new();
        }
        let todo: Vec<u32> = pids.iter().copied().filter(|p| !self.with_tls.contains(p)).take(MAX_TLS_RESCAN).collect();
        todo.into_iter().flat_map(|pid| self.scan(pid)).collect()
    }
}

impl Worker {
    /// Scans, then serves requests until the next scan; returns when the
    /// pipeline is gone.
    pub fn run(mut self) {
        loop {
            let mut found = self.scanner.scan(&self.selector).matched;
            found.iter_mut().for_each(with_runtime_hooks);
            if self.answers.blocking_send(Answer::Scan(found)).is_err() {
                return;
            }
            if !self.serve_until(Instant::now() + self.interval) {
                return;
            }
        }
    }

    /// Answers requests until `deadline`; false when the pipeline is gone.
    fn serve_until(&mut self, deadline: Instant) -> bool {
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                return true;
            }
            let first = match self.requests.recv_timeout(wait) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
            };
            // Lookups arriving together share one rescan of /proc.
            let mut lookups = Vec::new();
            for request in std::iter::once(first).chain(self.requests.try_iter().take(MAX_REQUESTS)) {
                let answer = match request {
                    Request::Database(lookup) => {
                        lookups.push(lookup);
                        continue;
                    }
                    Request::Fork { pid } => Answer::Forked(discovery::read_process(pid).ok().map(|mut i| {
                        with_runtime_hooks(&mut i);
                        i
                    })),
                    Request::Exec { pid, tracked } => {
                        // A new program: its libraries are read again.
                        self.tls.with_tls.remove(&pid);
                        Answer::Execed {
                            tracked,
                            info: self.exec(pid, tracked).map(|mut i| {
                                with_runtime_hooks(&mut i);
                                i
                            }),
                        }
                    }
                    Request::Alive(pids) => {
                        let libraries = self.tls.rescan(&pids);
                        if !libraries.is_empty() && self.answers.blocking_send(Answer::TlsLibraries(libraries)).is_err()
                        {
                            return false;
                        }
                        Answer::Gone(
                            pids.into_iter().filter(|pid| !Path::new(&format!("/proc/{pid}")).exists()).collect(),
                        )
                    }
                    Request::TlsLibraries { pid } => Answer::TlsLibraries(self.tls.scan(pid)),
                };
                if self.answers.blocking_send(answer).is_err() {
                    return false;
                }
            }
            if !lookups.is_empty() {
                for answer in self.resolver.resolve(&mut self.scanner, lookups) {
                    if self.answers.blocking_send(Answer::Database(answer)).is_err() {
                        return false;
                    }
                }
            }
        }
    }

    /// What an exec'd process is, if the pipeline wants it.
    fn exec(&self, pid: u32, tracked: bool) -> Option<ProcessInfo> {
        if !tracked {
            self.selector.exe_globs.as_ref()?;
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            if !self.selector.matches_exe(&exe) {
                return None;
            }
        }
        discovery::read_process(pid).ok()
    }
}

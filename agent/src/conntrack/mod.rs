//! Address translation (DNAT, SNAT) resolved with the kernel's connection
//! tracking, on a thread of its own, never in the loop that drains the ring
//! buffer. A client that called a virtual address (a Kubernetes Service, a
//! published port) has a connection whose remote is that address; the
//! server's has the real one. The link stage asks, for the server's tuple,
//! what the connection's original direction was; conntrack knows it in the
//! network namespace where the translation happened: the agent's own
//! (kube-proxy's rules on a node), the client's (OUTPUT rules) or the
//! server's (PREROUTING in its namespace). Each is asked in that order, each
//! through a socket opened inside it (the thread enters the namespace of a
//! process living there to open it, once; the socket stays bound to it).
//! The socket of a tracked process's namespace is opened when the process is
//! tracked (`Message::Watch`), not at the first question: a short-lived
//! client is often gone, and its namespace unreachable through it, by the
//! time its first request is asked about.
//!
//! Needs CAP_NET_ADMIN (ctnetlink) and, for namespaces other than the
//! agent's, CAP_SYS_ADMIN (setns); without them the answers are failures,
//! counted by the link stage, and nothing else changes.
pub mod netlink;

use std::{
    fs::File, io, net::SocketAddr, num::NonZeroUsize, os::fd::AsRawFd, os::unix::fs::MetadataExt,
    sync::mpsc as std_mpsc, time::Duration,
};

use lru::LruCache;
use tokio::sync::mpsc;

use crate::capture::Tuple;
use netlink::{Direction, NetlinkError, Socket};

/// Questions waiting for the thread at once; beyond, the sender drops them
/// (the link stage counts a failed lookup).
pub const MAX_QUERIES: usize = 1024;
/// Answers waiting for the pipeline at once (the thread waits when full).
pub const MAX_ANSWERS: usize = 1024;
/// How long one namespace's answer is waited for.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(100);
/// Namespaces whose socket is kept open (least recently asked closed first).
const MAX_SOCKETS: usize = 64;

/// A network namespace, and a process in it through which to enter it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Inode number of the namespace (0: not known; the process's is used).
    pub inode: u32,
    pub pid: u32,
}

/// What was the original direction of the server's connection `server`?
/// Asked in the agent's namespace, then in each of `namespaces`.
#[derive(Debug)]
pub struct Query {
    pub server: Tuple,
    pub namespaces: Vec<Namespace>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Translation {
    /// The client's end: its own address, and the address it called.
    Original { client: SocketAddr, called: SocketAddr },
    /// No namespace asked knows a translated connection with this reply.
    NotTranslated,
    /// Every namespace asked failed to answer (privileges, a namespace gone).
    Failed,
}

#[derive(Debug)]
pub struct Answer {
    pub server: Tuple,
    pub translation: Translation,
}

/// What the pipeline tells the conntrack thread.
#[derive(Debug)]
pub enum Message {
    /// A question; answered on the answers channel.
    Query(Query),
    /// A tracked process lives in this namespace: its socket is opened now,
    /// while the process can lead to it (no answer).
    Watch(Namespace),
}

/// Starts the conntrack thread; it ends when the pipeline drops its sender.
pub fn spawn(messages: std_mpsc::Receiver<Message>, answers: mpsc::Sender<Answer>) -> io::Result<()> {
    std::thread::Builder::new().name("conntrack".into()).spawn(move || {
        let mut resolver = Resolver::new();
        for message in messages {
            let query = match message {
                Message::Query(query) => query,
                Message::Watch(ns) => {
                    resolver.watch(ns);
                    continue;
                }
            };
            let translation = resolver.resolve(&query);
            if answers.blocking_send(Answer { server: query.server, translation }).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}

struct Resolver {
    /// The agent's own namespace, to come back to after entering another.
    home: Option<File>,
    home_inode: Option<u64>,
    home_socket: Option<Socket>,
    sockets: LruCache<u64, Socket>,
    /// Whether a failure was logged already (once, then debug).
    warned: bool,
}

impl Resolver {
    fn new() -> Self {
        let home = File::open("/proc/thread-self/ns/net").ok();
        let home_inode = home.as_ref().and_then(|f| f.metadata().ok()).map(|m| m.ino());
        let mut r = Resolver {
            home,
            home_inode,
            home_socket: None,
            sockets: LruCache::new(NonZeroUsize::new(MAX_SOCKETS).expect("not zero")),
            warned: false,
        };
        match Socket::open(ANSWER_TIMEOUT) {
            Ok(s) => r.home_socket = Some(s),
            Err(e) => r.warn(&format!("the agent's namespace: {e}")),
        }
        r
    }

    fn warn(&mut self, what: &str) {
        if self.warned {
            tracing::debug!("conntrack lookup failed in {what}");
        } else {
            self.warned = true;
            tracing::warn!("conntrack lookup failed in {what} (links through address translation are missed)");
        }
    }

    fn resolve(&mut self, query: &Query) -> Translation {
        // The server's view is the reply direction: from it, to its peer.
        let reply = Direction { src: query.server.local, dst: query.server.remote };
        let mut answered = false;
        let mut ask = |socket: &mut Socket| -> Result<Option<Direction>, NetlinkError> {
            let r = socket.original_of(&reply);
            answered |= r.is_ok();
            r
        };
        let mut failures = Vec::new();
        if let Some(socket) = &mut self.home_socket {
            match ask(socket) {
                Ok(Some(orig)) => return original(orig),
                Ok(None) => {}
                Err(e) => failures.push(format!("the agent's namespace: {e}")),
            }
        }
        let mut seen = vec![self.home_inode];
        for ns in &query.namespaces {
            let inode = (ns.inode != 0).then_some(u64::from(ns.inode));
            if inode.is_some() && seen.contains(&inode) {
                continue;
            }
            seen.push(inode);
            let socket = match self.socket_in(*ns) {
                Ok(s) => s,
                Err(e) => {
                    failures.push(format!("namespace {} (pid {}): {e}", ns.inode, ns.pid));
                    continue;
                }
            };
            match ask(socket) {
                Ok(Some(orig)) => return original(orig),
                Ok(None) => {}
                Err(e) => failures.push(format!("namespace {} (pid {}): {e}", ns.inode, ns.pid)),
            }
        }
        for f in &failures {
            self.warn(f);
        }
        // "Not translated" only when every namespace asked said so: one that
        // could not be asked may be the one that translated.
        if answered && failures.is_empty() {
            Translation::NotTranslated
        } else {
            Translation::Failed
        }
    }

    /// Opens the socket of `ns` (a tracked process's namespace) unless it is
    /// the agent's own or open already.
    fn watch(&mut self, ns: Namespace) {
        if ns.inode != 0
            && (Some(u64::from(ns.inode)) == self.home_inode || self.sockets.contains(&u64::from(ns.inode)))
        {
            return;
        }
        let file = match File::open(format!("/proc/{}/ns/net", ns.pid)) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(pid = ns.pid, "conntrack: cannot open the namespace of a tracked process: {e}");
                return;
            }
        };
        let Ok(inode) = file.metadata().map(|m| m.ino()) else { return };
        if Some(inode) == self.home_inode || self.sockets.contains(&inode) {
            return;
        }
        match self.open_inside(&file) {
            Ok(socket) => {
                self.sockets.put(inode, socket);
            }
            Err(e) => self.warn(&format!("namespace {inode} (pid {}): {e}", ns.pid)),
        }
    }

    /// The socket of `ns`, opened from inside it the first time.
    fn socket_in(&mut self, ns: Namespace) -> Result<&mut Socket, String> {
        // A namespace asked before is asked through its socket, even after
        // the process that led to it has exited (a client's last request is
        // often resolved after the client is gone; the namespace may live on).
        let known = u64::from(ns.inode);
        if ns.inode != 0 && self.sockets.contains(&known) {
            return Ok(self.sockets.get_mut(&known).expect("just checked"));
        }
        let file = File::open(format!("/proc/{}/ns/net", ns.pid)).map_err(|e| e.to_string())?;
        let inode = file.metadata().map_err(|e| e.to_string())?.ino();
        if ns.inode != 0 && inode != u64::from(ns.inode) {
            return Err("the process has left the namespace".into());
        }
        if !self.sockets.contains(&inode) {
            let socket = self.open_inside(&file)?;
            self.sockets.put(inode, socket);
        }
        Ok(self.sockets.get_mut(&inode).expect("just put"))
    }

    fn open_inside(&self, ns: &File) -> Result<Socket, String> {
        let home = self.home.as_ref().ok_or("the agent's own namespace is unknown")?;
        // SAFETY: setns(2) on an fd we hold; it moves this thread only,
        // which does nothing else while it is away.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", io::Error::last_os_error()));
        }
        let socket = Socket::open(ANSWER_TIMEOUT).map_err(|e| e.to_string());
        // SAFETY: as above, back to where the thread started.
        if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            // Sockets keep the namespace they were opened in: the ones made
            // so far stay right, and every later one enters its own first.
            tracing::warn!("conntrack: cannot return to the agent's namespace: {}", io::Error::last_os_error());
        }
        socket
    }
}

fn original(orig: Direction) -> Translation {
    Translation::Original { client: orig.src, called: orig.dst }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In this (test) process's own namespace, a connection nothing
    /// translated: conntrack has no entry whose reply is it, or cannot be
    /// asked (no privileges); never a translation.
    #[test]
    fn an_untranslated_connection_has_no_original_direction() {
        let mut r = Resolver::new();
        let server = Tuple { local: "127.0.0.1:1".parse().unwrap(), remote: "127.0.0.1:2".parse().unwrap(), netns: 0 };
        let got = r.resolve(&Query { server, namespaces: vec![Namespace { inode: 0, pid: std::process::id() }] });
        assert!(matches!(got, Translation::NotTranslated | Translation::Failed), "{got:?}");
    }
}

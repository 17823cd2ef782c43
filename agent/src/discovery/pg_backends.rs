//! PostgreSQL backends on this host, read from their process titles: the
//! database (and user) of a client connection whose startup message was
//! never seen (the agent adopted the client after it connected).
//!
//! Every connection to a PostgreSQL server has a backend process of its
//! own, which titles itself at its start (PostgreSQL 15 writes this part even
//! with `update_process_title = off`; only the activity then stays blank):
//!
//! ```text
//! postgres: [<cluster_name>: ]<user> <database> <client host>(<client port>) <activity>
//! ```
//!
//! The client host and port are the client's end as the server sees it: the
//! local end of the tracked client's socket when both are on this host (or
//! on one container network). [`BackendTracker`] indexes the titles during
//! the discovery scans (a backend's identity never changes, so each one is
//! read once); the index is published in a [`BackendDirectory`] that the
//! pipeline reads without blocking.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use super::procfs::{ProcFs, Stat};

/// What every PostgreSQL server process's title starts with.
const TITLE_PREFIX: &str = "postgres: ";
/// Backends indexed at most (servers rarely allow more than a few thousand
/// connections); beyond, new backends are not indexed until others end.
pub const MAX_BACKENDS: usize = 16_384;

/// The client end of a backend's connection, as its title prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEnd {
    /// A numeric address (the default), IPv4-mapped IPv6 made IPv4.
    Addr(SocketAddr),
    /// A host name (`log_hostname = on`), lower-cased, and the port.
    Host(String, u16),
}

/// The identity part of a client backend's title.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendTitle {
    pub user: String,
    pub database: String,
    pub client: ClientEnd,
}

/// `host(port)`, the word of a title that names the client.
fn parse_client(word: &str) -> Option<ClientEnd> {
    let inner = word.strip_suffix(')')?;
    let (host, port) = inner.rsplit_once('(')?;
    let port: u16 = port.parse().ok()?;
    // An IPv6 link-local address carries its zone: `fe80::1%eth0`.
    let numeric = host.split_once('%').map_or(host, |(addr, _)| addr);
    if let Ok(ip) = numeric.parse::<IpAddr>() {
        return Some(ClientEnd::Addr(SocketAddr::new(ip.to_canonical(), port)));
    }
    let name_like = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    name_like.then(|| ClientEnd::Host(host.to_ascii_lowercase(), port))
}

/// Parses the title of a PostgreSQL process (the first NUL-separated field
/// of `/proc/PID/cmdline`). `None` for everything but a client backend on
/// TCP: the postmaster, auxiliary processes and workers (no client),
/// `[local]` (unix socket) connections, replication connections, and
/// titles that cannot be read unambiguously (a user, database or cluster
/// name with a space in it).
pub fn parse_title(title: &str) -> Option<BackendTitle> {
    let rest = title.strip_prefix(TITLE_PREFIX)?;
    let words: Vec<&str> = rest.split_ascii_whitespace().collect();
    // The first word naming a client: the names come before it, the
    // activity (free text) after.
    let at = words.iter().position(|w| w.ends_with(')') && parse_client(w).is_some())?;
    let client = parse_client(words[at])?;
    let (user, database) = match &words[..at] {
        [user, database] => (*user, *database),
        // `<cluster_name>: ` first (a space in the cluster name is fine).
        [.., cluster_end, user, database] if cluster_end.ends_with(':') => (*user, *database),
        _ => return None,
    };
    // `walsender <user> [<database>] <host>(<port>)`: replication, no SQL of ours.
    if user == "walsender" || words.first() == Some(&"walsender") {
        return None;
    }
    Some(BackendTitle { user: user.to_owned(), database: database.to_owned(), client })
}

/// One client backend of a PostgreSQL server on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgBackend {
    pub pid: u32,
    /// Inode of its network namespace, when readable.
    pub netns: Option<u64>,
    pub user: String,
    pub database: String,
    pub client: ClientEnd,
    /// Its server: the postmaster, its parent.
    pub server_pid: u32,
    /// The TCP ports its server listens on: they tell apart two backends
    /// naming the same client end.
    pub server_ports: Vec<u16>,
}

/// What the agent knows of a connection whose backend it looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendQuery {
    /// The client's end of the connection: the local end of a tracked
    /// client's socket, the remote end of a tracked server's.
    pub client: SocketAddr,
    /// The server's end, as the tracked process sees it.
    pub server: SocketAddr,
    /// Network namespace of the tracked end's socket; 0 when unknown.
    pub netns: u64,
    /// The tracked process is the backend itself (the server's side).
    pub backend_pid: Option<u32>,
}

/// Client backends by the client end their titles name.
#[derive(Debug, Default)]
pub struct BackendIndex {
    backends: Vec<PgBackend>,
    by_addr: HashMap<SocketAddr, Vec<usize>>,
    /// Backends whose titles name a host, not an address, by client port.
    by_named_port: HashMap<u16, Vec<usize>>,
    by_pid: HashMap<u32, usize>,
}

impl BackendIndex {
    pub fn new(backends: Vec<PgBackend>) -> Self {
        let mut index = Self::default();
        for (i, b) in backends.iter().enumerate() {
            match &b.client {
                ClientEnd::Addr(addr) => index.by_addr.entry(*addr).or_default().push(i),
                ClientEnd::Host(_, port) => index.by_named_port.entry(*port).or_default().push(i),
            }
            index.by_pid.insert(b.pid, i);
        }
        index.backends = backends;
        index
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// The one backend serving the connection, if it is certain: the
    /// tracked backend itself; else the backend naming the client's address
    /// and port, preferring those in the client's network namespace (where
    /// the address printed is exactly the client's), else any; else (titles
    /// naming hosts) those naming the client's port. Among several, the one
    /// whose server listens on the port the client connected to (Linux
    /// reuses a client port towards different servers); still several (or
    /// a port mapped on the way): `None`.
    pub fn find(&self, q: &BackendQuery) -> Option<&PgBackend> {
        if let Some(&i) = q.backend_pid.and_then(|pid| self.by_pid.get(&pid)) {
            return Some(&self.backends[i]);
        }
        let client = SocketAddr::new(q.client.ip().to_canonical(), q.client.port());
        if let Some(found) = self.by_addr.get(&client) {
            if q.netns != 0 {
                let same: Vec<usize> =
                    found.iter().copied().filter(|&i| self.backends[i].netns == Some(q.netns)).collect();
                if let Some(b) = self.only(&same, q) {
                    return Some(b);
                }
            }
            return self.only(found, q);
        }
        self.only(self.by_named_port.get(&client.port())?, q)
    }

    /// The only candidate, or the only one whose server listens on the port
    /// the client connected to.
    fn only(&self, found: &[usize], q: &BackendQuery) -> Option<&PgBackend> {
        if let [i] = found {
            return Some(&self.backends[*i]);
        }
        let mut on_port =
            found.iter().map(|&i| &self.backends[i]).filter(|b| b.server_ports.contains(&q.server.port()));
        match (on_port.next(), on_port.next()) {
            (Some(b), None) => Some(b),
            _ => None,
        }
    }
}

/// The latest [`BackendIndex`], shared by the discovery thread (which
/// replaces it) and the pipeline (which reads it). The lock is only held to
/// swap or clone a pointer.
#[derive(Clone, Debug, Default)]
pub struct BackendDirectory(Arc<Mutex<Arc<BackendIndex>>>);

impl BackendDirectory {
    pub fn current(&self) -> Arc<BackendIndex> {
        self.0.lock().map(|i| Arc::clone(&i)).unwrap_or_default()
    }

    pub fn publish(&self, index: BackendIndex) {
        if let Ok(mut current) = self.0.lock() {
            *current = Arc::new(index);
        }
    }
}

/// Builds the index pass by pass: [`Self::observe`] every process of a
/// `/proc` pass, then [`Self::publish`].
#[derive(Clone, Debug, Default)]
pub struct BackendTracker {
    /// (pid, start time) -> the client backend, or `None` for PostgreSQL
    /// processes that are none (they never become one).
    known: HashMap<(u32, u64), Option<PgBackend>>,
    /// What the current pass saw.
    seen: HashMap<(u32, u64), Option<PgBackend>>,
    /// Listening ports of the servers (postmasters) of known backends, by
    /// pid, read once per server.
    servers: HashMap<u32, Vec<u16>>,
    /// The current pass found a process the last one did not have.
    changed: bool,
    directory: BackendDirectory,
}

impl BackendTracker {
    pub fn directory(&self) -> BackendDirectory {
        self.directory.clone()
    }

    /// One process of the pass. Only processes named `postgres*` have their
    /// title read, once per process: a title that is not PostgreSQL's yet
    /// (a backend just forked, still showing the postmaster's command line)
    /// is read again at the next pass. Unreadable titles are skipped.
    pub(crate) fn observe(&mut self, fs: &ProcFs, pid: u32, stat: &Stat) {
        if !stat.comm.starts_with("postgres") {
            return;
        }
        let key = (pid, stat.start_time);
        if let Some(entry) = self.known.remove(&key) {
            self.seen.insert(key, entry);
            return;
        }
        if self.seen.len() >= MAX_BACKENDS {
            return;
        }
        let Ok(cmdline) = fs.cmdline(pid) else { return };
        let Some(title) = cmdline.first().filter(|t| t.starts_with(TITLE_PREFIX)) else { return };
        let backend = parse_title(title).map(|t| PgBackend {
            pid,
            netns: fs.netns(pid),
            user: t.user,
            database: t.database,
            client: t.client,
            server_pid: stat.ppid,
            server_ports: self.server_ports(fs, stat.ppid),
        });
        self.changed |= backend.is_some();
        self.seen.insert(key, backend);
    }

    /// The TCP ports the postmaster `pid` listens on (empty when unreadable).
    fn server_ports(&mut self, fs: &ProcFs, pid: u32) -> Vec<u16> {
        if let Some(ports) = self.servers.get(&pid) {
            return ports.clone();
        }
        let (Ok(sockets), Ok(listening)) = (fs.socket_inodes(pid), fs.listen_table(pid)) else {
            return Vec::new();
        };
        let mut ports: Vec<u16> = sockets.iter().filter_map(|i| listening.get(i).copied()).collect();
        ports.sort_unstable();
        ports.dedup();
        self.servers.insert(pid, ports.clone());
        ports
    }

    /// Ends a pass: processes not seen in it are gone. Publishes a new index
    /// when a client backend came or went.
    pub fn publish(&mut self) {
        let gone = std::mem::replace(&mut self.known, std::mem::take(&mut self.seen));
        let changed = std::mem::take(&mut self.changed) || gone.values().any(Option::is_some);
        if changed {
            // Servers whose backends all ended (a pid may come back as another process).
            let parents: std::collections::HashSet<u32> = self.known.values().flatten().map(|b| b.server_pid).collect();
            self.servers.retain(|pid, _| parents.contains(pid));
            let backends = self.known.values().flatten().cloned().collect();
            self.directory.publish(BackendIndex::new(backends));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> ClientEnd {
        ClientEnd::Addr(s.parse().unwrap())
    }

    fn title(user: &str, database: &str, client: ClientEnd) -> Option<BackendTitle> {
        Some(BackendTitle { user: user.into(), database: database.into(), client })
    }

    #[test]
    fn client_backend_titles_as_postgresql_15_writes_them() {
        // Read from a PostgreSQL 15 on this project's CI host (psql clients,
        // cluster_name 'lab main', update_process_title off, log_hostname on).
        assert_eq!(
            parse_title("postgres: app shop 127.0.0.1(54321) idle"),
            title("app", "shop", addr("127.0.0.1:54321"))
        );
        assert_eq!(
            parse_title("postgres: lab main: postgres template1 ::1(56990) SELECT"),
            title("postgres", "template1", addr("[::1]:56990"))
        );
        assert_eq!(
            parse_title("postgres: 15/main: app shop 10.0.0.7(40000) idle in transaction (aborted)"),
            title("app", "shop", addr("10.0.0.7:40000"))
        );
        assert_eq!(
            parse_title("postgres: postgres postgres localhost(43296) "),
            title("postgres", "postgres", ClientEnd::Host("localhost".into(), 43296))
        );
        assert_eq!(
            parse_title("postgres: app shop ::ffff:127.0.0.1(5000) authentication"),
            title("app", "shop", addr("127.0.0.1:5000"))
        );
        assert_eq!(
            parse_title("postgres: app shop fe80::1%eth0(5000) idle"),
            title("app", "shop", addr("[fe80::1]:5000"))
        );
        // Activity text that looks like a client comes after the real one.
        assert_eq!(parse_title("postgres: app shop 10.0.0.1(1) SELECT f(2)"), title("app", "shop", addr("10.0.0.1:1")));
    }

    #[test]
    fn other_postgresql_processes_and_unclear_titles_give_nothing() {
        for t in [
            "/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main",
            "postgres: checkpointer ",
            "postgres: lab main: logical replication launcher ",
            "postgres: autovacuum worker shop",
            "postgres: parallel worker for PID 4242",
            "postgres: postgres postgres [local] SELECT",
            "postgres: walsender repl 10.0.0.2(5555) streaming 0/3000148",
            "postgres: walsender repl shop 10.0.0.2(5555) idle",
            "postgres: c: walsender repl 10.0.0.2(5555) idle",
            // A space in a name: which words are the user's is unknown.
            "postgres: app my shop 127.0.0.1(5000) idle",
            "postgres: app shop 127.0.0.1(99999) idle",
            "postgres: app shop (5000) idle",
            "nginx: worker process",
        ] {
            assert_eq!(parse_title(t), None, "{t}");
        }
    }

    fn backend(pid: u32, netns: Option<u64>, database: &str, client: ClientEnd) -> PgBackend {
        let server_ports = vec![5432];
        PgBackend { pid, netns, user: "app".into(), database: database.into(), client, server_pid: 1, server_ports }
    }

    fn query(client: &str, netns: u64) -> BackendQuery {
        BackendQuery {
            client: client.parse().unwrap(),
            server: "127.0.0.1:5432".parse().unwrap(),
            netns,
            backend_pid: None,
        }
    }

    fn db<'a>(index: &'a BackendIndex, q: &BackendQuery) -> Option<&'a str> {
        index.find(q).map(|b| b.database.as_str())
    }

    #[test]
    fn the_backend_naming_the_client_end_is_found() {
        let index = BackendIndex::new(vec![
            backend(10, Some(1), "shop", addr("127.0.0.1:40000")),
            backend(11, Some(1), "stock", addr("127.0.0.1:40001")),
            backend(12, Some(2), "audit", addr("172.17.0.2:40000")),
        ]);
        assert_eq!(db(&index, &query("127.0.0.1:40000", 1)), Some("shop"));
        assert_eq!(db(&index, &query("127.0.0.1:40001", 0)), Some("stock"), "no netns: address and port");
        assert_eq!(db(&index, &query("[::ffff:127.0.0.1]:40001", 1)), Some("stock"), "v4-mapped client");
        // A client in another namespace (a container), the server in its own.
        assert_eq!(db(&index, &query("172.17.0.2:40000", 9)), Some("audit"));
        assert_eq!(db(&index, &query("127.0.0.1:40002", 1)), None, "no such backend (a server elsewhere)");
        // The tracked backend itself.
        let server = BackendQuery { backend_pid: Some(11), ..query("127.0.0.1:1", 1) };
        assert_eq!(db(&index, &server), Some("stock"));
    }

    #[test]
    fn ambiguous_candidates_are_decided_by_namespace_or_not_at_all() {
        // One client port towards two servers on this host (Linux reuses an
        // ephemeral port for different destinations), and a container whose
        // private address is the same as another one's.
        let index = BackendIndex::new(vec![
            backend(10, Some(1), "shop", addr("10.0.0.5:40000")),
            backend(11, Some(2), "stock", addr("10.0.0.5:40000")),
            backend(12, Some(3), "a", addr("10.0.0.6:40000")),
            backend(13, Some(3), "b", addr("10.0.0.6:40000")),
        ]);
        assert_eq!(db(&index, &query("10.0.0.5:40000", 2)), Some("stock"), "same namespace wins");
        assert_eq!(db(&index, &query("10.0.0.5:40000", 0)), None);
        assert_eq!(db(&index, &query("10.0.0.5:40000", 7)), None);
        assert_eq!(db(&index, &query("10.0.0.6:40000", 3)), None, "two in the client's namespace");

        // Two servers on this host, told apart by the port each listens on.
        let on = |mut b: PgBackend, port: u16| {
            b.server_ports = vec![port];
            b
        };
        let index = BackendIndex::new(vec![
            on(backend(10, Some(1), "shop", addr("127.0.0.1:40000")), 5432),
            on(backend(11, Some(1), "stock", addr("127.0.0.1:40000")), 5433),
        ]);
        let to = |port: u16| BackendQuery {
            server: SocketAddr::from(([127, 0, 0, 1], port)),
            ..query("127.0.0.1:40000", 1)
        };
        assert_eq!(db(&index, &to(5432)), Some("shop"));
        assert_eq!(db(&index, &to(5433)), Some("stock"));
        assert_eq!(db(&index, &to(15432)), None, "a mapped port decides nothing");
        assert_eq!(db(&index, &BackendQuery { netns: 0, ..to(5433) }), Some("stock"), "across namespaces too");
    }

    #[test]
    fn titles_naming_hosts_match_by_port_when_unique() {
        let index = BackendIndex::new(vec![
            backend(10, None, "shop", ClientEnd::Host("localhost".into(), 40000)),
            backend(11, None, "a", ClientEnd::Host("web-1".into(), 40001)),
            backend(12, None, "b", ClientEnd::Host("web-2".into(), 40001)),
        ]);
        assert_eq!(db(&index, &query("127.0.0.1:40000", 1)), Some("shop"));
        assert_eq!(db(&index, &query("127.0.0.1:40001", 1)), None);
    }

    fn fake_proc(root: &std::path::Path, pid: u32, comm: &str, start: u64, cmdline: &[u8]) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let stat = format!("{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0\n");
        std::fs::write(dir.join("stat"), stat).unwrap();
        std::fs::write(dir.join("cmdline"), cmdline).unwrap();
    }

    fn pass(tracker: &mut BackendTracker, fs: &ProcFs, pids: &[u32]) {
        for &pid in pids {
            if let Ok(stat) = fs.stat(pid) {
                tracker.observe(fs, pid, &stat);
            }
        }
        tracker.publish();
    }

    #[test]
    fn the_tracker_reads_each_title_once_and_forgets_ended_backends() {
        let root = std::env::temp_dir().join(format!("periscope-pgtitles-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let fs = ProcFs::new(&root);
        // A backend just forked still shows the postmaster's command line.
        fake_proc(&root, 100, "postgres", 5, b"/usr/lib/postgresql/15/bin/postgres\0-D\0/data\0");
        fake_proc(&root, 101, "postgres", 6, b"/usr/lib/postgresql/15/bin/postgres\0-D\0/data\0");
        fake_proc(&root, 102, "node", 7, b"postgres: app shop 127.0.0.1(1) idle\0");
        fake_proc(&root, 103, "postgres", 8, b"postgres: checkpointer \0\0\0");
        let mut tracker = BackendTracker::default();
        let directory = tracker.directory();
        pass(&mut tracker, &fs, &[100, 101, 102, 103]);
        assert!(directory.current().is_empty());

        // Its title is set: found at the next pass (padded with NULs, as on Linux).
        fake_proc(&root, 101, "postgres", 6, b"postgres: app shop 127.0.0.1(40000) idle\0\0\0\0");
        pass(&mut tracker, &fs, &[100, 101, 102, 103]);
        let q = query("127.0.0.1:40000", 0);
        assert_eq!(directory.current().find(&q).map(|b| (b.pid, b.user.as_str())), Some((101, "app")));

        // Read once: a later title (its activity) is not read again.
        std::fs::write(root.join("101/cmdline"), b"garbage").unwrap();
        let before = directory.current();
        pass(&mut tracker, &fs, &[100, 101, 102, 103]);
        assert!(Arc::ptr_eq(&before, &directory.current()), "nothing changed: no new index");
        assert_eq!(db(&directory.current(), &q), Some("shop"));

        // The backend ended; its pid came back as another process.
        pass(&mut tracker, &fs, &[100, 102, 103]);
        assert!(directory.current().is_empty());
        fake_proc(&root, 101, "postgres", 9, b"postgres: app other 127.0.0.1(40000) idle\0");
        pass(&mut tracker, &fs, &[100, 101]);
        assert_eq!(db(&directory.current(), &q), Some("other"));
        let _ = std::fs::remove_dir_all(&root);
    }
}

//! The database of PostgreSQL connections adopted after their startup (the
//! only message that names it), from the backend serving each one: found in
//! the index the discovery thread publishes with its scans (usually there
//! already when the connection's first bytes arrive, since the scan that
//! adopted the process indexed the backends too), else looked up by the
//! discovery thread between its scans, and told to the connection's session
//! when the answer comes. The loop draining the ring buffer never reads
//! `/proc`: it reads the published index and queues lookups.
use std::{
    sync::mpsc as std_mpsc,
    time::{Duration, Instant},
};

use rustc_hash::FxHashMap;

use super::discovery::Request;

use crate::{
    capture::Tuple,
    connections::ConnKey,
    discovery::{
        pg_backends::{BackendDirectory, BackendQuery, PgBackend},
        Scanner,
    },
    telemetry::{Counter, Telemetry},
};

/// Lookups in flight at once (queued for the discovery thread or answered
/// and not yet applied); beyond, adopted connections stay without a
/// database (counted as dropped).
pub const MAX_LOOKUPS_IN_FLIGHT: usize = 1024;
/// Connections remembered as looked up in vain (only to say why their spans
/// lack a database); forgotten all at once when full.
const MAX_UNRESOLVED: usize = 4096;
/// Rescans of `/proc` for lookups are at least this far apart; lookups
/// arriving meanwhile share the next one.
const MIN_RESCAN_GAP: Duration = Duration::from_millis(50);

const PROTOCOL: &str = "postgresql";

/// A connection whose backend the discovery thread is asked to find.
#[derive(Debug)]
pub struct Lookup {
    key: ConnKey,
    tuple: Tuple,
    query: BackendQuery,
}

/// The discovery thread's answer to a [`Lookup`].
#[derive(Debug, PartialEq)]
pub struct NameAnswer {
    key: ConnKey,
    tuple: Tuple,
    backend: Option<PgBackend>,
}

/// The pipeline's side: the index, and the connections waiting for answers.
#[derive(Debug, Default)]
pub struct DbNames {
    directory: BackendDirectory,
    requests: Option<std_mpsc::SyncSender<Request>>,
    pending: FxHashMap<ConnKey, Tuple>,
    unresolved: FxHashMap<ConnKey, (Tuple, &'static str)>,
}

impl DbNames {
    /// Reads the index of `directory`; lookups go to the discovery thread as
    /// `requests`, served by the returned [`Resolver`].
    pub fn connect(&mut self, directory: BackendDirectory, requests: std_mpsc::SyncSender<Request>) -> Resolver {
        self.directory = directory.clone();
        self.requests = Some(requests);
        Resolver { directory, last_rescan: None }
    }

    /// A PostgreSQL connection adopted after its startup: its backend if the
    /// index knows it, else `None` and the lookup is queued.
    pub fn on_adopted(&mut self, key: ConnKey, tuple: Tuple, server_side: bool, t: &Telemetry) -> Option<PgBackend> {
        let query = BackendQuery {
            client: if server_side { tuple.remote } else { tuple.local },
            server: if server_side { tuple.local } else { tuple.remote },
            netns: u64::from(tuple.netns),
            backend_pid: server_side.then_some(key.pid),
        };
        if let Some(backend) = self.directory.current().find(&query) {
            t.add_for(Counter::DbNamespaceLookups, PROTOCOL, "index", 1);
            return Some(backend.clone());
        }
        let queued = self.pending.len() < MAX_LOOKUPS_IN_FLIGHT
            && self
                .requests
                .as_ref()
                .is_some_and(|tx| tx.try_send(Request::Database(Lookup { key, tuple, query })).is_ok());
        if queued {
            self.pending.insert(key, tuple);
        } else {
            t.add_for(Counter::DbNamespaceLookups, PROTOCOL, "dropped", 1);
            self.remember_unresolved(key, tuple, "dropped");
        }
        None
    }

    /// An answer: the backend found for a connection still waiting for it
    /// (answers for connections since replaced on their fd are dropped).
    pub fn on_answer(&mut self, answer: NameAnswer, t: &Telemetry) -> Option<(ConnKey, Tuple, PgBackend)> {
        if self.pending.get(&answer.key) != Some(&answer.tuple) {
            return None;
        }
        self.pending.remove(&answer.key);
        match answer.backend {
            Some(backend) => {
                t.add_for(Counter::DbNamespaceLookups, PROTOCOL, "rescan", 1);
                Some((answer.key, answer.tuple, backend))
            }
            None => {
                t.add_for(Counter::DbNamespaceLookups, PROTOCOL, "not found", 1);
                self.remember_unresolved(answer.key, answer.tuple, "not found");
                None
            }
        }
    }

    /// A PostgreSQL span finished without a database: counted, with why.
    pub fn on_unnamed_span(&self, key: ConnKey, tuple: &Tuple, t: &Telemetry) {
        let reason = if self.pending.get(&key) == Some(tuple) {
            "lookup pending"
        } else {
            match self.unresolved.get(&key) {
                Some((was, reason)) if was == tuple => reason,
                _ => "not found",
            }
        };
        t.add_for(Counter::DbNamespaceUnknown, PROTOCOL, reason, 1);
    }

    fn remember_unresolved(&mut self, key: ConnKey, tuple: Tuple, reason: &'static str) {
        if self.unresolved.len() >= MAX_UNRESOLVED {
            self.unresolved.clear();
        }
        self.unresolved.insert(key, (tuple, reason));
    }
}

/// The discovery thread's side: answers lookups between scans.
#[derive(Debug)]
pub struct Resolver {
    directory: BackendDirectory,
    last_rescan: Option<Instant>,
}

impl Resolver {
    /// Answers lookups: from the latest index when it knows the backend (a
    /// scan published it since), else after a rescan of `/proc` for backends
    /// (at most one per [`MIN_RESCAN_GAP`]).
    pub fn resolve(&mut self, scanner: &mut Scanner, lookups: Vec<Lookup>) -> Vec<NameAnswer> {
        let mut answers = Vec::with_capacity(lookups.len());
        let mut misses = Vec::new();
        let index = self.directory.current();
        for lookup in lookups {
            match index.find(&lookup.query) {
                Some(backend) => {
                    answers.push(NameAnswer { key: lookup.key, tuple: lookup.tuple, backend: Some(backend.clone()) })
                }
                None => misses.push(lookup),
            }
        }
        if misses.is_empty() {
            return answers;
        }
        if let Some(last) = self.last_rescan {
            std::thread::sleep((last + MIN_RESCAN_GAP).saturating_duration_since(Instant::now()));
        }
        scanner.refresh_backends();
        self.last_rescan = Some(Instant::now());
        let index = self.directory.current();
        for lookup in misses {
            let backend = index.find(&lookup.query).cloned();
            answers.push(NameAnswer { key: lookup.key, tuple: lookup.tuple, backend });
        }
        answers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::pg_backends::ClientEnd;

    fn tuple(local: &str) -> Tuple {
        Tuple { local: local.parse().unwrap(), remote: "127.0.0.1:5432".parse().unwrap(), netns: 7 }
    }

    fn fake_proc(root: &std::path::Path, pid: u32, cmdline: &[u8]) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let stat = format!("{pid} (postgres) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0\n");
        std::fs::write(dir.join("stat"), stat).unwrap();
        std::fs::write(dir.join("cmdline"), cmdline).unwrap();
    }

    /// The path taken when the index did not know the backend yet: the
    /// lookup goes to the discovery thread, which rescans and answers.
    #[test]
    fn a_backend_missing_from_the_index_is_found_by_a_rescan() {
        let root = std::env::temp_dir().join(format!("periscope-dbnames-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let mut scanner = Scanner::with_proc_root(&root);
        let (requests_tx, requests) = std_mpsc::sync_channel(MAX_LOOKUPS_IN_FLIGHT);
        let mut names = DbNames::default();
        let mut resolver = names.connect(scanner.backend_directory(), requests_tx);
        let t = Telemetry::default();

        let (key, other) = (ConnKey { pid: 1, fd: 5 }, ConnKey { pid: 1, fd: 6 });
        assert!(names.on_adopted(key, tuple("127.0.0.1:40000"), false, &t).is_none());
        assert!(names.on_adopted(other, tuple("127.0.0.1:40001"), false, &t).is_none());
        names.on_unnamed_span(key, &tuple("127.0.0.1:40000"), &t);
        // The backend appears (its title set) after the last scan.
        fake_proc(&root, 300, b"postgres: app shop 127.0.0.1(40000) idle\0\0");
        let lookups: Vec<Lookup> = requests
            .try_iter()
            .map(|r| match r {
                Request::Database(l) => l,
                other => panic!("{other:?}"),
            })
            .collect();
        let mut told = Vec::new();
        for answer in resolver.resolve(&mut scanner, lookups) {
            told.extend(names.on_answer(answer, &t));
        }
        let [(k, _, backend)] = &told[..] else { panic!("{told:?}") };
        assert_eq!((*k, backend.database.as_str(), backend.user.as_str()), (key, "shop", "app"));
        assert_eq!(backend.client, ClientEnd::Addr("127.0.0.1:40000".parse().unwrap()));
        names.on_unnamed_span(other, &tuple("127.0.0.1:40001"), &t);
        assert_eq!(t.get_for(Counter::DbNamespaceLookups, PROTOCOL), 2, "one found by the rescan, one not found");
        let unknown: Vec<_> = t.snapshot().into_iter().filter(|s| s.counter == Counter::DbNamespaceUnknown).collect();
        let reasons: Vec<_> = unknown.iter().filter_map(|s| s.labels.map(|l| l.reason)).collect();
        assert_eq!(reasons, ["lookup pending", "not found"]);

        // Known now: the next connection to it is answered from the index.
        let again = ConnKey { pid: 1, fd: 7 };
        let found = names.on_adopted(again, tuple("127.0.0.1:40000"), false, &t);
        assert_eq!(found.map(|b| b.database), Some("shop".into()));
        let _ = std::fs::remove_dir_all(&root);
    }

    /// The connection table's side: an adopted PostgreSQL connection is
    /// reported once, and once told, its later statements carry the database.
    #[test]
    fn an_adopted_connection_is_reported_once_and_told_its_database() {
        use crate::{
            capture::Role,
            connections::{ConnectionTable, Outcome},
            context::{assembly::AssemblyOptions, sampler::Sampler, Assembler, ThreadKey, Tracker},
            protocols::{Chunk, Direction},
        };
        let t = Telemetry::default();
        let mut table = ConnectionTable::new(16);
        let mut tracker = Tracker::new(Assembler::new(AssemblyOptions::default(), Sampler::default()), 16);
        let mut out = Vec::new();
        let (key, tuple, thread) =
            (ConnKey { pid: 1, fd: 5 }, tuple("127.0.0.1:40000"), ThreadKey { pid: 1, tid: 1, loop_seq: 0 });
        let mut io = |table: &mut ConnectionTable, out: &mut Vec<Outcome>, direction, data: &[u8], ts| {
            let chunk = Chunk { direction, data, total: data.len(), ts_enter: ts, ts_exit: ts + 1 };
            table.data(key, tuple, Role::Unknown, thread, &chunk, &mut tracker, out, &t);
        };
        let query: &[u8] = b"Q\0\0\0\x0eSELECT 1;\0";
        let answer: &[u8] = b"C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I";
        io(&mut table, &mut out, Direction::Egress, query, 10);
        io(&mut table, &mut out, Direction::Ingress, answer, 20);
        io(&mut table, &mut out, Direction::Egress, query, 30);
        let reported: Vec<_> = out.iter().filter(|o| matches!(o, Outcome::DatabaseUnknown { .. })).collect();
        assert!(
            matches!(reported[..], [Outcome::DatabaseUnknown { key: k, server_side: false, .. }] if *k == key),
            "{out:?}"
        );
        assert!(
            !table.tell_database(key, &super::tests::tuple("127.0.0.1:40001"), "app", "shop"),
            "another connection"
        );
        assert!(table.tell_database(key, &tuple, "app", "shop"));
        io(&mut table, &mut out, Direction::Ingress, answer, 40);
        let names: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Outcome::Sql { call, .. } => Some(call.namespace.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(names, [None, Some("shop".to_owned())]);
        assert!(!table.tell_database(ConnKey { pid: 1, fd: 6 }, &tuple, "app", "shop"), "no such connection");
    }

    #[test]
    fn lookups_are_bounded_and_stale_answers_dropped() {
        let t = Telemetry::default();
        let mut names = DbNames::default();
        let (requests_tx, _requests) = std_mpsc::sync_channel(MAX_LOOKUPS_IN_FLIGHT);
        let _resolver = names.connect(BackendDirectory::default(), requests_tx);
        for fd in 0..MAX_LOOKUPS_IN_FLIGHT as i32 + 10 {
            names.on_adopted(ConnKey { pid: 1, fd }, tuple("127.0.0.1:40000"), false, &t);
        }
        assert_eq!(names.pending.len(), MAX_LOOKUPS_IN_FLIGHT);
        let dropped: u64 = t
            .snapshot()
            .iter()
            .filter(|s| s.counter == Counter::DbNamespaceLookups && s.labels.is_some_and(|l| l.reason == "dropped"))
            .map(|s| s.value)
            .sum();
        assert_eq!(dropped, 10);
        // The fd holds another connection now: its old answer is not applied.
        let key = ConnKey { pid: 1, fd: 0 };
        let backend = PgBackend {
            pid: 9,
            netns: None,
            user: "app".into(),
            database: "shop".into(),
            client: ClientEnd::Addr("127.0.0.1:1".parse().unwrap()),
            server_pid: 1,
            server_ports: vec![5432],
        };
        let stale = NameAnswer { key, tuple: tuple("127.0.0.1:39999"), backend: Some(backend) };
        assert!(names.on_answer(stale, &t).is_none());
        assert!(names.pending.contains_key(&key));
    }
}

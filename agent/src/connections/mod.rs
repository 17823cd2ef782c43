//! Per-connection state: which protocol a socket speaks, its parser state,
//! and when it was last active. Keyed by (pid, fd); bounded in size.
use std::collections::HashMap;

use crate::capture::{Role, Tuple};
use crate::protocols::{http1, Chunk, Direction};
use crate::telemetry::{Counter, Telemetry};

/// Chunks a connection may show before we give up recognising its protocol
/// (a socket watched mid-stream may start in the middle of a body).
const DETECT_ATTEMPTS: u8 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub pid: u32,
    pub fd: i32,
}

#[derive(Debug)]
pub enum Protocol {
    Detecting { attempts: u8 },
    Http1(http1::Http1Session),
    /// Not a protocol we parse (TLS, HTTP/2, ...): ignored until closed.
    Unknown,
}

#[derive(Debug)]
pub struct Connection {
    pub tuple: Tuple,
    pub role: Role,
    pub protocol: Protocol,
    pub last_activity: u64,
    /// Stats already added to the agent counters (the sessions keep totals).
    reported: http1::Http1Stats,
}

/// What a connection produced: one finished exchange with where it happened.
#[derive(Debug)]
pub enum Outcome {
    Http { key: ConnKey, tuple: Tuple, server_side: bool, exchange: http1::Exchange },
}

#[derive(Debug)]
pub struct ConnectionTable {
    conns: HashMap<ConnKey, Connection>,
    max: usize,
    scratch: Vec<http1::Exchange>,
}

/// Decides the protocol of a connection from its first captured bytes.
fn detect(chunk: &Chunk<'_>) -> Option<Protocol> {
    if http1::looks_like_request(chunk.data) {
        // Whoever sends the request is the client.
        return Some(Protocol::Http1(http1::Http1Session::new(chunk.direction)));
    }
    None
}

impl ConnectionTable {
    pub fn new(max: usize) -> Self {
        Self { conns: HashMap::new(), max, scratch: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// A connection was accepted or connected: start from a clean state
    /// (the fd number may have been used by an earlier connection).
    pub fn open(&mut self, key: ConnKey, tuple: Tuple, role: Role, now: u64, out: &mut Vec<Outcome>, t: &Telemetry) {
        self.close(key, out, t);
        self.insert(key, tuple, role, now, t);
    }

    fn insert(&mut self, key: ConnKey, tuple: Tuple, role: Role, now: u64, t: &Telemetry) {
        if self.conns.len() >= self.max && !self.conns.contains_key(&key) {
            // Evict the least recently active connection.
            if let Some(oldest) = self.conns.iter().min_by_key(|(_, c)| c.last_activity).map(|(k, _)| *k) {
                self.conns.remove(&oldest);
                t.inc(Counter::ConnectionsEvicted);
            }
        }
        self.conns.insert(
            key,
            Connection {
                tuple,
                role,
                protocol: Protocol::Detecting { attempts: 0 },
                last_activity: now,
                reported: http1::Http1Stats::default(),
            },
        );
    }

    /// Bytes moved on a connection.
    pub fn data(
        &mut self,
        key: ConnKey,
        tuple: Tuple,
        role: Role,
        chunk: &Chunk<'_>,
        out: &mut Vec<Outcome>,
        t: &Telemetry,
    ) {
        // A different peer on the same fd: the close was missed.
        if self.conns.get(&key).is_some_and(|c| c.tuple != tuple) {
            self.close(key, out, t);
        }
        if !self.conns.contains_key(&key) {
            self.insert(key, tuple, role, chunk.ts_exit, t);
        }
        let Some(conn) = self.conns.get_mut(&key) else { return };
        conn.last_activity = chunk.ts_exit;
        if let Protocol::Detecting { attempts } = conn.protocol {
            match detect(chunk) {
                Some(p) => conn.protocol = p,
                None if attempts + 1 >= DETECT_ATTEMPTS => {
                    conn.protocol = Protocol::Unknown;
                    t.inc(Counter::UnknownProtocol);
                }
                None => conn.protocol = Protocol::Detecting { attempts: attempts + 1 },
            }
        }
        let Protocol::Http1(session) = &mut conn.protocol else { return };
        session.on_chunk(chunk, &mut self.scratch);
        let server_side = session.requests_direction() == Direction::Ingress;
        report(conn, t);
        out.extend(self.scratch.drain(..).map(|exchange| Outcome::Http { key, tuple, server_side, exchange }));
    }

    /// The fd was closed: flush what the close completes and forget it.
    pub fn close(&mut self, key: ConnKey, out: &mut Vec<Outcome>, t: &Telemetry) {
        let Some(mut conn) = self.conns.remove(&key) else { return };
        if let Protocol::Http1(session) = &mut conn.protocol {
            session.on_close(&mut self.scratch);
            let server_side = session.requests_direction() == Direction::Ingress;
            let tuple = conn.tuple;
            report(&mut conn, t);
            out.extend(self.scratch.drain(..).map(|exchange| Outcome::Http { key, tuple, server_side, exchange }));
        }
    }

    /// Forget every connection of a process that exited.
    pub fn forget_process(&mut self, pid: u32, out: &mut Vec<Outcome>, t: &Telemetry) {
        let keys: Vec<ConnKey> = self.conns.keys().filter(|k| k.pid == pid).copied().collect();
        for key in keys {
            self.close(key, out, t);
        }
    }

    /// Periodic housekeeping: end open-ended responses on connections quiet
    /// for `idle_ns`, drop state of connections quiet for `expire_ns`.
    pub fn sweep(&mut self, now: u64, idle_ns: u64, expire_ns: u64, out: &mut Vec<Outcome>, t: &Telemetry) {
        let mut expired = Vec::new();
        for (key, conn) in self.conns.iter_mut() {
            let quiet = now.saturating_sub(conn.last_activity);
            if quiet >= expire_ns {
                expired.push(*key);
            } else if quiet >= idle_ns {
                if let Protocol::Http1(session) = &mut conn.protocol {
                    session.on_idle(&mut self.scratch);
                    let server_side = session.requests_direction() == Direction::Ingress;
                    let (key, tuple) = (*key, conn.tuple);
                    out.extend(self.scratch.drain(..).map(|exchange| Outcome::Http { key, tuple, server_side, exchange }));
                }
            }
        }
        for key in expired {
            self.close(key, out, t);
        }
    }
}

/// Adds what a session counted since the last report to the agent counters.
fn report(conn: &mut Connection, t: &Telemetry) {
    let Protocol::Http1(session) = &conn.protocol else { return };
    let now = session.stats().clone();
    t.add(Counter::ParseErrors, now.parse_errors - conn.reported.parse_errors);
    t.add(Counter::ProtocolDesync, now.desyncs - conn.reported.desyncs);
    t.add(Counter::RequestsUnmatched, now.unmatched - conn.reported.unmatched);
    conn.reported = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(port: u16) -> Tuple {
        Tuple { local: "127.0.0.1:8080".parse().unwrap(), remote: format!("127.0.0.1:{port}").parse().unwrap() }
    }

    fn chunk(direction: Direction, data: &[u8], t: u64) -> Chunk<'_> {
        Chunk { direction, data, total: data.len(), ts_enter: t, ts_exit: t + 1 }
    }

    #[test]
    fn detects_http_and_pairs_then_forgets_on_close() {
        let t = Telemetry::default();
        let mut table = ConnectionTable::new(16);
        let mut out = Vec::new();
        let key = ConnKey { pid: 1, fd: 5 };
        table.data(key, tuple(1), Role::Unknown, &chunk(Direction::Ingress, b"GET / HTTP/1.1\r\n\r\n", 1), &mut out, &t);
        table.data(key, tuple(1), Role::Unknown, &chunk(Direction::Egress, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2), &mut out, &t);
        assert!(matches!(&out[..], [Outcome::Http { server_side: true, .. }]));
        table.close(key, &mut out, &t);
        assert!(table.is_empty());
    }

    #[test]
    fn unknown_protocols_are_counted_once() {
        let t = Telemetry::default();
        let mut table = ConnectionTable::new(16);
        let mut out = Vec::new();
        let key = ConnKey { pid: 1, fd: 5 };
        for i in 0..10 {
            table.data(key, tuple(1), Role::Unknown, &chunk(Direction::Ingress, b"\x16\x03\x01garbage", i), &mut out, &t);
        }
        assert_eq!(t.get(Counter::UnknownProtocol), 1);
        assert!(out.is_empty());
    }

    #[test]
    fn table_is_bounded_and_evicts_the_oldest() {
        let t = Telemetry::default();
        let mut table = ConnectionTable::new(2);
        let mut out = Vec::new();
        for fd in 0..3 {
            let c = chunk(Direction::Ingress, b"GET / HTTP/1.1\r\n", fd as u64 * 10);
            table.data(ConnKey { pid: 1, fd }, tuple(fd as u16), Role::Unknown, &c, &mut out, &t);
        }
        assert_eq!(table.len(), 2);
        assert_eq!(t.get(Counter::ConnectionsEvicted), 1);
        assert!(!table.conns.contains_key(&ConnKey { pid: 1, fd: 0 }));
    }

    #[test]
    fn new_peer_on_same_fd_resets_state() {
        let t = Telemetry::default();
        let mut table = ConnectionTable::new(4);
        let mut out = Vec::new();
        let key = ConnKey { pid: 1, fd: 5 };
        table.data(key, tuple(1), Role::Unknown, &chunk(Direction::Ingress, b"GET /a HTTP/1.1\r\n\r\n", 1), &mut out, &t);
        table.data(key, tuple(2), Role::Unknown, &chunk(Direction::Ingress, b"GET /b HTTP/1.1\r\n\r\n", 2), &mut out, &t);
        table.data(key, tuple(2), Role::Unknown, &chunk(Direction::Egress, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3), &mut out, &t);
        let Outcome::Http { exchange, .. } = &out[0];
        assert_eq!(exchange.request.target, "/b");
        assert_eq!(t.get(Counter::RequestsUnmatched), 1, "the /a request lost its connection");
    }
}

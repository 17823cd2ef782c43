//! How the two ends of a connection on this host find each other.
//!
//! A connection between two tracked processes is in the table twice: the
//! client's (local, remote) and the server's (remote, local). Each end lives
//! in its own network namespace when the processes do (containers, pods:
//! veth pairs, bridges), so the namespace cannot be part of the match. It is
//! kept for loopback addresses only: 127.0.0.1 in one namespace is not
//! 127.0.0.1 in another. Other addresses (on a veth, a bridge, the host's
//! interfaces) are unique on the host in practice; when they are not (two
//! namespaces given the same private address on two separate bridges, with
//! the same ports at the same time), a key holds every connection that has
//! it, and the link stage takes the one whose exchange was in flight, or
//! none when several were.
use std::net::{IpAddr, SocketAddr};

use rustc_hash::FxHashMap;

use super::ConnKey;
use crate::capture::Tuple;

/// Whether an address is a loopback one (v4, v6, or v4 mapped in v6).
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// A connection's addresses as the two ends match them: the namespace only
/// for loopback connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    local: SocketAddr,
    remote: SocketAddr,
    netns: u32,
}

impl PeerKey {
    pub fn of(tuple: &Tuple) -> Self {
        let loopback = is_loopback(tuple.local.ip()) || is_loopback(tuple.remote.ip());
        PeerKey { local: tuple.local, remote: tuple.remote, netns: if loopback { tuple.netns } else { 0 } }
    }
}

/// A local endpoint, as `PeerKey` keys it (the namespace for loopback only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    addr: SocketAddr,
    netns: u32,
}

impl EndpointKey {
    pub fn of(addr: SocketAddr, netns: u32) -> Self {
        EndpointKey { addr, netns: if is_loopback(addr.ip()) { netns } else { 0 } }
    }
}

/// The connections under one key: almost always one.
#[derive(Debug)]
enum Keys {
    One(ConnKey),
    Many(Vec<ConnKey>),
}

impl Keys {
    fn as_slice(&self) -> &[ConnKey] {
        match self {
            Keys::One(k) => std::slice::from_ref(k),
            Keys::Many(v) => v,
        }
    }
}

/// A multimap from a key to the connections that have it.
#[derive(Debug)]
struct Index<K> {
    map: FxHashMap<K, Keys>,
}

impl<K> Default for Index<K> {
    fn default() -> Self {
        Index { map: FxHashMap::default() }
    }
}

impl<K: std::hash::Hash + Eq> Index<K> {
    fn insert(&mut self, k: K, conn: ConnKey) {
        use std::collections::hash_map::Entry;
        match self.map.entry(k) {
            Entry::Vacant(e) => {
                e.insert(Keys::One(conn));
            }
            Entry::Occupied(mut e) => {
                let keys = e.get_mut();
                match keys {
                    Keys::One(old) if *old == conn => {}
                    Keys::One(old) => *keys = Keys::Many(vec![*old, conn]),
                    Keys::Many(v) if v.contains(&conn) => {}
                    Keys::Many(v) => v.push(conn),
                }
            }
        }
    }

    fn remove(&mut self, k: &K, conn: ConnKey) {
        let Some(keys) = self.map.get_mut(k) else { return };
        match keys {
            Keys::One(old) if *old == conn => {
                self.map.remove(k);
            }
            Keys::One(_) => {}
            Keys::Many(v) => {
                v.retain(|c| *c != conn);
                if let [only] = v[..] {
                    *keys = Keys::One(only);
                }
            }
        }
    }

    fn get(&self, k: &K) -> &[ConnKey] {
        self.map.get(k).map_or(&[], Keys::as_slice)
    }
}

/// The table's indexes of its connections by addresses.
#[derive(Debug, Default)]
pub struct Peers {
    by_ends: Index<PeerKey>,
    /// Client-side connections (and adopted ones, whose side is not known)
    /// by local endpoint: a server's remote endpoint is one of them when the
    /// client called a translated address (DNAT).
    by_local: Index<EndpointKey>,
}

impl Peers {
    pub fn insert(&mut self, conn: ConnKey, tuple: &Tuple, client_side: bool) {
        self.by_ends.insert(PeerKey::of(tuple), conn);
        if client_side {
            self.by_local.insert(EndpointKey::of(tuple.local, tuple.netns), conn);
        }
    }

    pub fn remove(&mut self, conn: ConnKey, tuple: &Tuple) {
        self.by_ends.remove(&PeerKey::of(tuple), conn);
        self.by_local.remove(&EndpointKey::of(tuple.local, tuple.netns), conn);
    }

    /// The connections with these addresses (seen from the same end).
    pub fn with_ends(&self, tuple: &Tuple) -> &[ConnKey] {
        self.by_ends.get(&PeerKey::of(tuple))
    }

    /// Client-side connections whose local endpoint is `addr`.
    pub fn at_endpoint(&self, addr: SocketAddr, netns: u32) -> &[ConnKey] {
        self.by_local.get(&EndpointKey::of(addr, netns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(local: &str, remote: &str, netns: u32) -> Tuple {
        Tuple { local: local.parse().unwrap(), remote: remote.parse().unwrap(), netns }
    }

    #[test]
    fn loopback_ends_match_in_their_namespace_only_other_addresses_across_namespaces() {
        let mut peers = Peers::default();
        let (a, b) = (ConnKey { pid: 1, fd: 3 }, ConnKey { pid: 2, fd: 3 });
        peers.insert(a, &tuple("127.0.0.1:4000", "127.0.0.1:80", 10), true);
        peers.insert(b, &tuple("198.18.0.1:4000", "198.18.0.2:80", 10), true);
        assert_eq!(peers.with_ends(&tuple("127.0.0.1:4000", "127.0.0.1:80", 10)), [a]);
        assert_eq!(peers.with_ends(&tuple("127.0.0.1:4000", "127.0.0.1:80", 11)), [], "another namespace's loopback");
        let mapped = tuple("[::ffff:127.0.0.1]:4000", "[::ffff:127.0.0.1]:80", 10);
        peers.insert(ConnKey { pid: 3, fd: 3 }, &mapped, true);
        assert_eq!(peers.with_ends(&Tuple { netns: 11, ..mapped }), [], "v4 loopback mapped in v6");
        assert_eq!(peers.with_ends(&tuple("198.18.0.1:4000", "198.18.0.2:80", 11)), [b], "a veth's address");
        assert_eq!(peers.at_endpoint("198.18.0.1:4000".parse().unwrap(), 99), [b]);
        assert_eq!(peers.at_endpoint("127.0.0.1:4000".parse().unwrap(), 11), []);
    }

    #[test]
    fn one_address_in_two_namespaces_keeps_both_connections_until_each_closes() {
        let mut peers = Peers::default();
        let (a, b) = (ConnKey { pid: 1, fd: 3 }, ConnKey { pid: 2, fd: 3 });
        let (ta, tb) = (tuple("10.0.0.5:4000", "10.0.0.1:80", 10), tuple("10.0.0.5:4000", "10.0.0.1:80", 20));
        peers.insert(a, &ta, true);
        peers.insert(b, &tb, true);
        assert_eq!(peers.with_ends(&ta), [a, b], "the link stage decides between them");
        peers.remove(a, &ta);
        assert_eq!(peers.with_ends(&tb), [b]);
        peers.remove(b, &tb);
        assert_eq!(peers.with_ends(&tb), []);
        assert!(peers.by_ends.map.is_empty() && peers.by_local.map.is_empty());
    }
}

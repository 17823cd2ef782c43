//! One conntrack question over netlink (NETLINK_NETFILTER, ctnetlink): "the
//! TCP connection whose reply direction is this tuple: what was its original
//! direction?" (IPCTNL_MSG_CT_GET). A translated connection (DNAT, SNAT)
//! has two tuples; the server sees the reply one, the client made the
//! original one. The messages are built and read here by hand: the one
//! request and the one answer need a few nested attributes, and the
//! packet-type crates bring no socket.
//!
//! Layouts (include/uapi/linux/netfilter/nfnetlink_conntrack.h):
//! `nlmsghdr`, `nfgenmsg` (family, version, res_id), then attributes
//! (`nlattr`: u16 length with header, u16 type; 4-byte aligned), where
//! CTA_TUPLE_ORIG / CTA_TUPLE_REPLY nest CTA_TUPLE_IP (CTA_IP_V4_SRC/DST or
//! V6) and CTA_TUPLE_PROTO (CTA_PROTO_NUM, CTA_PROTO_SRC_PORT/DST_PORT,
//! ports big-endian).
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPPROTO_TCP: u8 = 6;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// One direction of a connection: who sent, to whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Direction {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// What went wrong with a question.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("the netlink socket call {call} failed: {source}")]
    Socket { call: &'static str, source: io::Error },
    #[error("the kernel answered the conntrack query with error {0}")]
    Kernel(io::Error),
    #[error("the conntrack answer is malformed: {0}")]
    Malformed(&'static str),
    #[error("no conntrack answer within {0:?}")]
    Timeout(Duration),
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(align4(buf.len()), 0);
}

/// A nested attribute whose content `fill` writes.
fn put_nested(buf: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    fill(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    buf[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
}

fn family(d: &Direction) -> Option<u8> {
    match (d.src.ip(), d.dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => Some(libc::AF_INET as u8),
        (IpAddr::V6(_), IpAddr::V6(_)) => Some(libc::AF_INET6 as u8),
        _ => None,
    }
}

/// The request: the TCP connection whose reply direction is `reply`. None
/// for a tuple mixing address families.
pub fn encode_get_by_reply(seq: u32, reply: &Direction) -> Option<Vec<u8>> {
    let family = family(reply)?;
    let mut buf = Vec::with_capacity(96);
    buf.extend_from_slice(&[0; NLMSG_HDRLEN]);
    buf.extend_from_slice(&[family, 0, 0, 0]); // nfgenmsg: family, NFNETLINK_V0, res_id 0
    put_nested(&mut buf, CTA_TUPLE_REPLY, |b| {
        put_nested(b, CTA_TUPLE_IP, |b| match (reply.src.ip(), reply.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                put_attr(b, CTA_IP_V4_SRC, &s.octets());
                put_attr(b, CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                let v6 = |ip: IpAddr| match ip {
                    IpAddr::V6(v6) => v6.octets(),
                    IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                };
                put_attr(b, CTA_IP_V6_SRC, &v6(s));
                put_attr(b, CTA_IP_V6_DST, &v6(d));
            }
        });
        put_nested(b, CTA_TUPLE_PROTO, |b| {
            put_attr(b, CTA_PROTO_NUM, &[IPPROTO_TCP]);
            put_attr(b, CTA_PROTO_SRC_PORT, &reply.src.port().to_be_bytes());
            put_attr(b, CTA_PROTO_DST_PORT, &reply.dst.port().to_be_bytes());
        });
    });
    let len = buf.len() as u32;
    buf[0..4].copy_from_slice(&len.to_ne_bytes());
    buf[4..6].copy_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET).to_ne_bytes());
    buf[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel.
    Some(buf)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes of `b`, as (type without flags, value).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(b, 0)?);
        let kind = u16_at(b, 2)? & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let value = &b[4..len];
        b = &b[align4(len).min(b.len())..];
        Some((kind, value))
    })
}

fn find(b: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(b).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

/// A CTA_TUPLE_* attribute's value as a direction (TCP only).
fn direction(tuple: &[u8]) -> Option<Direction> {
    let ip = find(tuple, CTA_TUPLE_IP)?;
    let proto = find(tuple, CTA_TUPLE_PROTO)?;
    if find(proto, CTA_PROTO_NUM)? != [IPPROTO_TCP] {
        return None;
    }
    let port = |kind| Some(u16::from_be_bytes(find(proto, kind)?.try_into().ok()?));
    let v4 = |kind| Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(find(ip, kind)?).ok()?)));
    let v6 = |kind| Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(find(ip, kind)?).ok()?)));
    let (src, dst) = match (v4(CTA_IP_V4_SRC), v4(CTA_IP_V4_DST)) {
        (Some(s), Some(d)) => (s, d),
        _ => (v6(CTA_IP_V6_SRC)?, v6(CTA_IP_V6_DST)?),
    };
    Some(Direction {
        src: SocketAddr::new(src, port(CTA_PROTO_SRC_PORT)?),
        dst: SocketAddr::new(dst, port(CTA_PROTO_DST_PORT)?),
    })
}

/// What one netlink message says about the question `seq` that asked for
/// the connection whose reply direction is `reply`: `None` when the message
/// answers another question; `Some(Ok(None))` when there is no such
/// connection.
pub fn decode(msg: &[u8], seq: u32, reply: &Direction) -> Option<Result<Option<Direction>, NetlinkError>> {
    let len = u32_at(msg, 0)? as usize;
    if u32_at(msg, 8)? != seq {
        return None;
    }
    let Some(body) = msg.get(NLMSG_HDRLEN..len) else {
        return Some(Err(NetlinkError::Malformed("shorter than its header says")));
    };
    let kind = u16_at(msg, 4)?;
    if kind == NLMSG_ERROR {
        let Some(errno) = body.get(0..4).map(|b| i32::from_ne_bytes(b.try_into().unwrap())) else {
            return Some(Err(NetlinkError::Malformed("error message without its code")));
        };
        return Some(match -errno {
            0 => Ok(None),
            libc::ENOENT => Ok(None),
            e => Err(NetlinkError::Kernel(io::Error::from_raw_os_error(e))),
        });
    }
    if kind != (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW {
        return Some(Err(NetlinkError::Malformed("not a conntrack entry")));
    }
    let attrs = body.get(NFGENMSG_LEN..).unwrap_or_default();
    let orig = find(attrs, CTA_TUPLE_ORIG).and_then(direction);
    let got_reply = find(attrs, CTA_TUPLE_REPLY).and_then(direction);
    Some(match (orig, got_reply) {
        // The lookup matches either direction: only an entry whose reply
        // direction is the one asked for answers the question.
        (Some(orig), Some(r)) if r == *reply => Ok(Some(orig)),
        (Some(_), Some(_)) => Ok(None),
        _ => Err(NetlinkError::Malformed("no original and reply tuples")),
    })
}

/// A NETLINK_NETFILTER socket, bound to the network namespace of the thread
/// that opened it, for as long as it lives.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
    timeout: Duration,
}

fn check(call: &'static str, rc: libc::c_int) -> Result<libc::c_int, NetlinkError> {
    if rc < 0 {
        Err(NetlinkError::Socket { call, source: io::Error::last_os_error() })
    } else {
        Ok(rc)
    }
}

impl Socket {
    /// Opens a socket in the calling thread's network namespace; each
    /// answer is waited for at most `timeout`.
    pub fn open(timeout: Duration) -> Result<Socket, NetlinkError> {
        // SAFETY: plain socket(2); the fd is owned at once.
        let raw = check("socket", unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_NETFILTER)
        })?;
        // SAFETY: `raw` is a new fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let tv = libc::timeval { tv_sec: timeout.as_secs() as libc::time_t, tv_usec: timeout.subsec_micros() as _ };
        // SAFETY: setsockopt with a timeval of the size given.
        check("setsockopt(SO_RCVTIMEO)", unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
        Ok(Socket { fd, seq: 0, buf: vec![0; 16 * 1024], timeout })
    }

    /// The original direction of the TCP connection whose reply direction
    /// is `reply`, if the namespace's conntrack table has one.
    pub fn original_of(&mut self, reply: &Direction) -> Result<Option<Direction>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let Some(req) = encode_get_by_reply(seq, reply) else { return Ok(None) };
        // SAFETY: send(2) of a buffer we own, to the kernel (the socket's
        // default destination is pid 0).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        check("sendto", unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            ) as libc::c_int
        })?;
        loop {
            // SAFETY: recv(2) into our own buffer, at most its length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Err(NetlinkError::Timeout(self.timeout)),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(NetlinkError::Socket { call: "recv", source: e }),
                };
            }
            // One datagram may hold several messages; an answer to an
            // earlier question that timed out is skipped.
            let mut rest = &self.buf[..n as usize];
            while let Some(len) = u32_at(rest, 0).map(|l| l as usize).filter(|l| *l >= NLMSG_HDRLEN) {
                let msg = &rest[..len.min(rest.len())];
                if let Some(answer) = decode(msg, seq, reply) {
                    return answer;
                }
                rest = &rest[align4(len).min(rest.len())..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(src: &str, dst: &str) -> Direction {
        Direction { src: src.parse().unwrap(), dst: dst.parse().unwrap() }
    }

    /// The kernel's answer: an entry with these two directions.
    fn entry(seq: u32, orig: &Direction, reply: &Direction) -> Vec<u8> {
        let mut req = encode_get_by_reply(seq, reply).unwrap();
        req[4..6].copy_from_slice(&(NFNL_SUBSYS_CTNETLINK << 8).to_ne_bytes());
        // The request holds CTA_TUPLE_REPLY; add CTA_TUPLE_ORIG from another request.
        let other = encode_get_by_reply(seq, orig).unwrap();
        let mut orig_attr = other[NLMSG_HDRLEN + NFGENMSG_LEN..].to_vec();
        orig_attr[2..4].copy_from_slice(&(CTA_TUPLE_ORIG | NLA_F_NESTED).to_ne_bytes());
        req.extend_from_slice(&orig_attr);
        let len = req.len() as u32;
        req[0..4].copy_from_slice(&len.to_ne_bytes());
        req
    }

    #[test]
    fn the_request_names_the_reply_tuple_in_nested_attributes() {
        let reply = dir("198.18.1.2:8080", "198.18.0.2:40000");
        let req = encode_get_by_reply(7, &reply).unwrap();
        assert_eq!(u32_at(&req, 0), Some(req.len() as u32));
        assert_eq!(u16_at(&req, 4), Some(0x0101), "ctnetlink, IPCTNL_MSG_CT_GET");
        assert_eq!(req[NLMSG_HDRLEN], libc::AF_INET as u8);
        let attrs = &req[NLMSG_HDRLEN + NFGENMSG_LEN..];
        assert_eq!(direction(find(attrs, CTA_TUPLE_REPLY).unwrap()), Some(reply));
        assert!(find(attrs, CTA_TUPLE_ORIG).is_none());
        let v6 = dir("[fd00::2]:8080", "[fd00::1]:40000");
        let req = encode_get_by_reply(8, &v6).unwrap();
        assert_eq!(req[NLMSG_HDRLEN], libc::AF_INET6 as u8);
        assert_eq!(direction(find(&req[NLMSG_HDRLEN + NFGENMSG_LEN..], CTA_TUPLE_REPLY).unwrap()), Some(v6));
        assert!(encode_get_by_reply(9, &dir("198.18.1.2:80", "[fd00::1]:1")).is_none());
    }

    #[test]
    fn an_entry_whose_reply_is_the_one_asked_gives_its_original_direction() {
        let orig = dir("198.18.0.2:40000", "198.19.0.10:80");
        let reply = dir("198.18.1.2:8080", "198.18.0.2:40000");
        let msg = entry(3, &orig, &reply);
        assert_eq!(decode(&msg, 3, &reply).unwrap().unwrap(), Some(orig));
        assert!(decode(&msg, 4, &reply).is_none(), "another question's answer");
        // Found the other way round (our tuple is the entry's original): not a translation of it.
        let swapped = entry(3, &reply, &orig);
        assert_eq!(decode(&swapped, 3, &reply).unwrap().unwrap(), None);
    }

    #[test]
    fn no_entry_is_none_and_other_errors_are_errors() {
        let reply = dir("198.18.1.2:8080", "198.18.0.2:40000");
        let error = |errno: i32| {
            let mut m = vec![0u8; NLMSG_HDRLEN + 4];
            let len = m.len() as u32;
            m[0..4].copy_from_slice(&len.to_ne_bytes());
            m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
            m[8..12].copy_from_slice(&5u32.to_ne_bytes());
            m[16..20].copy_from_slice(&(-errno).to_ne_bytes());
            m
        };
        assert_eq!(decode(&error(libc::ENOENT), 5, &reply).unwrap().unwrap(), None);
        assert!(matches!(decode(&error(libc::EPERM), 5, &reply), Some(Err(NetlinkError::Kernel(_)))));
        let mut short = error(libc::ENOENT);
        short[0..4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(matches!(decode(&short, 5, &reply), Some(Err(NetlinkError::Malformed(_)))));
    }
}

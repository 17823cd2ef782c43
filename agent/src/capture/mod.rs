//! Raw events from the kernel: decoding ring buffer records (borrowed, no
//! allocation) and the reader loop that drains the ring buffer.
pub mod reader;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use thiserror::Error;

use crate::probes::wire::{
    periscope_conn_event, periscope_data_event, periscope_direction, periscope_event_header,
    periscope_event_kind, periscope_proc_event, periscope_role, periscope_tuple,
};
use crate::protocols::Direction;

/// Which end of a connection the tracked process is, as the kernel saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Unknown,
    Server,
    Client,
}

/// A TCP connection's endpoints seen from the tracked process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Network namespace (inode number) of the socket; 0 when unknown.
    pub netns: u32,
}

impl Tuple {
    /// The same connection seen from the other end.
    pub fn reversed(&self) -> Self {
        Self { local: self.remote, remote: self.local, netns: self.netns }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub ts_enter: u64,
    pub ts_exit: u64,
    /// Event-loop iteration of the thread (see `loop_seq` in events.h).
    pub loop_seq: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct DataEvent<'a> {
    pub header: Header,
    pub tuple: Tuple,
    pub role: Role,
    pub direction: Direction,
    /// Bytes the syscall moved.
    pub bytes: usize,
    /// The captured prefix of those bytes.
    pub data: &'a [u8],
}

#[derive(Clone, Copy, Debug)]
pub struct ConnEvent {
    pub header: Header,
    pub tuple: Tuple,
    pub role: Role,
}

#[derive(Clone, Copy, Debug)]
pub struct ProcEvent {
    pub header: Header,
    pub ppid: u32,
    pub comm: [u8; 16],
}

impl ProcEvent {
    pub fn comm(&self) -> &str {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(self.comm.len());
        std::str::from_utf8(&self.comm[..end]).unwrap_or("?")
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    Data(DataEvent<'a>),
    ConnOpen(ConnEvent),
    ConnClose(ConnEvent),
    ProcFork(ProcEvent),
    ProcExit(ProcEvent),
    ProcExec(ProcEvent),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {what} ({need} bytes)")]
    Short { what: &'static str, len: usize, need: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("data event claims {captured} captured bytes but carries {len}")]
    BadCapture { captured: usize, len: usize },
}

fn read<T: Copy>(record: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if record.len() < need {
        return Err(DecodeError::Short { what, len: record.len(), need });
    }
    // SAFETY: length checked above; T is a bindgen plain-old-data struct of
    // integers and byte arrays, valid for any bit pattern; read_unaligned
    // because ring buffer records are only 8-byte aligned.
    Ok(unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<T>()) })
}

fn header(h: &periscope_event_header) -> Header {
    Header { pid: h.pid, tid: h.tid, fd: h.fd, ts_enter: h.ts_enter_ns, ts_exit: h.ts_exit_ns, loop_seq: h.loop_seq }
}

fn role(raw: u8) -> Role {
    match u32::from(raw) {
        x if x == periscope_role::PERISCOPE_ROLE_SERVER as u32 => Role::Server,
        x if x == periscope_role::PERISCOPE_ROLE_CLIENT as u32 => Role::Client,
        _ => Role::Unknown,
    }
}

fn addr(bytes: [u8; 16], port: u16) -> SocketAddr {
    let v6 = Ipv6Addr::from(bytes);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, port)
}

fn tuple(t: &periscope_tuple) -> Tuple {
    Tuple { local: addr(t.local_addr, t.local_port), remote: addr(t.remote_addr, t.remote_port), netns: t.netns }
}

// decode() reads direction, role and syscall as three adjacent bytes.
const _: () = assert!(
    std::mem::offset_of!(periscope_data_event, role) == std::mem::offset_of!(periscope_data_event, direction) + 1
        && std::mem::offset_of!(periscope_data_event, syscall) == std::mem::offset_of!(periscope_data_event, direction) + 2
);

/// Decodes one ring buffer record. The data slice borrows from `record`.
pub fn decode(record: &[u8]) -> Result<Event<'_>, DecodeError> {
    let h: periscope_event_header = read(record, "header")?;
    match h.kind {
        k if k == periscope_event_kind::PERISCOPE_EV_DATA as u32 => {
            let prefix = std::mem::offset_of!(periscope_data_event, data);
            if record.len() < prefix {
                return Err(DecodeError::Short { what: "data event", len: record.len(), need: prefix });
            }
            // The record is shorter than the full struct (only `captured`
            // bytes of data[] are sent): read the fixed fields in place.
            let at = |offset: usize| &record[offset..];
            let hdr: periscope_event_header = read(record, "header")?;
            let tup: periscope_tuple = read(at(std::mem::offset_of!(periscope_data_event, tuple)), "tuple")?;
            let bytes: i64 = read(at(std::mem::offset_of!(periscope_data_event, bytes)), "byte count")?;
            let captured: u32 = read(at(std::mem::offset_of!(periscope_data_event, captured)), "capture size")?;
            let flags: [u8; 3] = read(at(std::mem::offset_of!(periscope_data_event, direction)), "flags")?;
            let captured = captured as usize;
            let data = record.get(prefix..prefix + captured).ok_or(DecodeError::BadCapture {
                captured,
                len: record.len() - prefix,
            })?;
            let (e_direction, e_role) = (flags[0], flags[1]);
            let direction = if u32::from(e_direction) == periscope_direction::PERISCOPE_DIR_EGRESS as u32 {
                Direction::Egress
            } else {
                Direction::Ingress
            };
            Ok(Event::Data(DataEvent {
                header: header(&hdr),
                tuple: tuple(&tup),
                role: role(e_role),
                direction,
                bytes: bytes.max(0) as usize,
                data,
            }))
        }
        k if k == periscope_event_kind::PERISCOPE_EV_CONN_OPEN as u32
            || k == periscope_event_kind::PERISCOPE_EV_CONN_CLOSE as u32 =>
        {
            let e: periscope_conn_event = read(record, "connection event")?;
            let ev = ConnEvent { header: header(&e.hdr), tuple: tuple(&e.tuple), role: role(e.role) };
            Ok(if k == periscope_event_kind::PERISCOPE_EV_CONN_OPEN as u32 {
                Event::ConnOpen(ev)
            } else {
                Event::ConnClose(ev)
            })
        }
        k if k == periscope_event_kind::PERISCOPE_EV_PROC_FORK as u32
            || k == periscope_event_kind::PERISCOPE_EV_PROC_EXIT as u32
            || k == periscope_event_kind::PERISCOPE_EV_PROC_EXEC as u32 =>
        {
            let e: periscope_proc_event = read(record, "process event")?;
            let comm = e.comm.map(|c| c as u8);
            let ev = ProcEvent { header: header(&e.hdr), ppid: e.ppid, comm };
            Ok(match k {
                k if k == periscope_event_kind::PERISCOPE_EV_PROC_FORK as u32 => Event::ProcFork(ev),
                k if k == periscope_event_kind::PERISCOPE_EV_PROC_EXIT as u32 => Event::ProcExit(ev),
                _ => Event::ProcExec(ev),
            })
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> &[u8] {
        // SAFETY: test-only view of a plain struct as bytes.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
    }

    #[test]
    fn decodes_data_event_with_prefix_only() {
        let mut e = periscope_data_event::default();
        e.hdr.kind = periscope_event_kind::PERISCOPE_EV_DATA as u32;
        e.hdr.pid = 42;
        e.hdr.fd = 7;
        e.tuple.local_addr[10] = 0xff;
        e.tuple.local_addr[11] = 0xff;
        e.tuple.local_addr[12..].copy_from_slice(&[127, 0, 0, 1]);
        e.tuple.local_port = 8080;
        e.bytes = 100;
        e.captured = 3;
        e.direction = periscope_direction::PERISCOPE_DIR_EGRESS as u8;
        e.role = periscope_role::PERISCOPE_ROLE_SERVER as u8;
        e.data[..3].copy_from_slice(b"GET");
        let prefix = std::mem::offset_of!(periscope_data_event, data);
        let record = &bytes_of(&e)[..prefix + 3];
        let Event::Data(d) = decode(record).unwrap() else { panic!("not a data event") };
        assert_eq!(d.header.pid, 42);
        assert_eq!(d.header.fd, 7);
        assert_eq!(d.data, b"GET");
        assert_eq!(d.bytes, 100);
        assert_eq!(d.direction, Direction::Egress);
        assert_eq!(d.role, Role::Server);
        assert_eq!(d.tuple.local, "127.0.0.1:8080".parse().unwrap());
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert!(matches!(decode(&[1, 0, 0]), Err(DecodeError::Short { .. })));
        let h = periscope_event_header { kind: 99, ..Default::default() };
        assert!(matches!(decode(bytes_of(&h)), Err(DecodeError::UnknownKind(99))));
        let mut e = periscope_data_event::default();
        e.hdr.kind = periscope_event_kind::PERISCOPE_EV_DATA as u32;
        e.captured = 10;
        let prefix = std::mem::offset_of!(periscope_data_event, data);
        assert!(matches!(decode(&bytes_of(&e)[..prefix + 2]), Err(DecodeError::BadCapture { .. })));
    }
}

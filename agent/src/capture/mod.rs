//! Raw events from the kernel: decoding ring buffer records (borrowed, no
//! allocation) and the reader loop that drains the ring buffer.
pub mod reader;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use thiserror::Error;

use crate::probes::wire::{
    periscope_async_event, periscope_async_phase, periscope_capture_policy, periscope_conn_event, periscope_data_event,
    periscope_data_layout, periscope_direction, periscope_event_header, periscope_event_kind,
    periscope_goroutine_event, periscope_goroutine_relation, periscope_proc_event, periscope_role, periscope_segment,
    periscope_segments, periscope_syscall, periscope_tuple,
};
use crate::protocols::{Chunk, Direction};

/// How the kernel captures a connection's bytes, set once the agent knows
/// what the connection speaks (`enum periscope_capture_policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapturePolicy {
    /// The first `--capture-size` bytes of every syscall.
    Prefix,
    /// Reads: the bytes of each AMQP 0-9-1 frame the parser needs.
    AmqpFrames,
    /// Reads and writes: every HTTP/2 frame header and header block, no
    /// DATA payload (the parser needs only its length and flags).
    Http2Frames,
}

// The kernel copies of each body frame the bytes the AMQP parser fingerprints.
const _: () =
    assert!(crate::probes::wire::PERISCOPE_AMQP_BODY_KEEP as usize == crate::protocols::amqp::FINGERPRINT_BYTES);
// ... and of each HTTP/2 header block fragment as much as the parser keeps.
const _: () =
    assert!(crate::probes::wire::PERISCOPE_H2_HEADERS_KEEP as usize == crate::protocols::http2::MAX_HEADER_BLOCK);

impl CapturePolicy {
    pub fn wire(self) -> u8 {
        (match self {
            CapturePolicy::Prefix => periscope_capture_policy::PERISCOPE_CAPTURE_PREFIX,
            CapturePolicy::AmqpFrames => periscope_capture_policy::PERISCOPE_CAPTURE_AMQP_FRAMES,
            CapturePolicy::Http2Frames => periscope_capture_policy::PERISCOPE_CAPTURE_HTTP2_FRAMES,
        }) as u8
    }
}

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
    /// Instrumented Go processes: the goroutine that made the syscall (low
    /// 32 bits of its id; 0 when none).
    pub goid: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct DataEvent<'a> {
    pub header: Header,
    pub tuple: Tuple,
    pub role: Role,
    pub direction: Direction,
    /// Bytes the syscall moved.
    pub bytes: usize,
    /// What of those bytes the kernel captured, laid out as `layout` says.
    pub data: &'a [u8],
    pub layout: Layout,
    /// Plaintext of a TLS connection (SSL_read/SSL_write uprobes), not a
    /// socket syscall's bytes.
    pub tls: bool,
}

/// How the captured bytes of a data event are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `data` is the first `data.len()` bytes of the syscall.
    Prefix,
    /// `data` holds segments of bytes `start..end` of the syscall, each a
    /// `struct periscope_segment` followed by its bytes (checked when
    /// decoded); the bytes of the range no segment holds were not
    /// captured. A syscall may send several such events, for consecutive
    /// ranges.
    Segments { start: usize, end: usize },
}

/// Size of `struct periscope_segment`, the head of each segment.
const SEGMENT_HEAD: usize = std::mem::size_of::<periscope_segment>();

/// The segments of a segmented event's data: (offset in the syscall, bytes).
#[derive(Clone, Debug)]
pub struct Segments<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Segments<'a> {
    type Item = (usize, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let head: periscope_segment = read(self.rest, "segment").ok()?;
        let bytes = self.rest.get(SEGMENT_HEAD..SEGMENT_HEAD + head.len as usize)?;
        self.rest = &self.rest[SEGMENT_HEAD + bytes.len()..];
        Some((head.offset as usize, bytes))
    }
}

/// A data event as protocol chunks: a prefix is one chunk; each segment is
/// one, whose `total` reaches to the next segment (or the end of the range),
/// so that the bytes not captured after it count as missing. Bytes of the
/// range before the first segment are an empty chunk of their own.
#[derive(Clone, Debug)]
pub struct Chunks<'a> {
    segments: std::iter::Peekable<Segments<'a>>,
    prefix: Option<&'a [u8]>,
    /// First byte of the syscall not yet in a chunk, and the end of the range.
    pos: usize,
    end: usize,
    direction: Direction,
    ts_enter: u64,
    ts_exit: u64,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = Chunk<'a>;

    fn next(&mut self) -> Option<Chunk<'a>> {
        let chunk = |data, total| Chunk {
            direction: self.direction,
            data,
            total,
            ts_enter: self.ts_enter,
            ts_exit: self.ts_exit,
        };
        if let Some(data) = self.prefix.take() {
            self.pos = self.end;
            return Some(chunk(data, self.end));
        }
        let (offset, data) = match self.segments.peek() {
            Some(&(offset, _)) if offset > self.pos => {
                let gap = chunk(&[][..], offset - self.pos);
                self.pos = offset;
                return Some(gap);
            }
            Some(_) => self.segments.next()?,
            None if self.pos < self.end => {
                let gap = chunk(&[][..], self.end - self.pos);
                self.pos = self.end;
                return Some(gap);
            }
            None => return None,
        };
        let next = self.segments.peek().map_or(self.end, |&(o, _)| o);
        self.pos = next;
        Some(chunk(data, next - offset))
    }
}

impl<'a> DataEvent<'a> {
    /// The segments of a segmented event (none for a prefix).
    pub fn segments(&self) -> Segments<'a> {
        match self.layout {
            Layout::Prefix => Segments { rest: &[] },
            Layout::Segments { .. } => Segments { rest: self.data },
        }
    }

    /// The event as the chunks the protocol parsers read, in order.
    pub fn chunks(&self) -> Chunks<'a> {
        let (prefix, pos, end) = match self.layout {
            Layout::Prefix => (Some(self.data), 0, self.bytes),
            Layout::Segments { start, end } => (None, start, end),
        };
        Chunks {
            segments: self.segments().peekable(),
            prefix,
            pos,
            end,
            direction: self.direction,
            ts_enter: self.header.ts_enter,
            ts_exit: self.header.ts_exit,
        }
    }
}

/// Checks the segments of a segmented event: each whole, in order, without
/// overlap, inside `start..end`.
fn check_segments(mut rest: &[u8], start: usize, end: usize) -> Result<(), DecodeError> {
    let mut pos = start;
    while !rest.is_empty() {
        let head: periscope_segment = read(rest, "segment")?;
        let (offset, len) = (head.offset as usize, head.len as usize);
        if offset < pos || offset + len > end || rest.len() < SEGMENT_HEAD + len {
            return Err(DecodeError::BadSegment { offset, len });
        }
        pos = offset + len;
        rest = &rest[SEGMENT_HEAD + len..];
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
pub struct ConnEvent {
    pub header: Header,
    pub tuple: Tuple,
    pub role: Role,
}

/// `sysconf(_SC_CLK_TCK)`: USER_HZ, the unit of /proc's start times (100).
fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *TICKS.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 && 1_000_000_000 % t == 0 => t as u64,
        _ => 100,
    })
}

#[derive(Clone, Copy, Debug)]
pub struct ProcEvent {
    pub header: Header,
    pub ppid: u32,
    /// Fork: the child's start time, CLOCK_BOOTTIME ns (see [`ProcEvent::start_time_ticks`]); else 0.
    pub start_boottime_ns: u64,
    pub comm: [u8; 16],
}

impl ProcEvent {
    /// The start time as field 22 of `/proc/PID/stat` gives it: the kernel
    /// divides the same `start_boottime` by NSEC_PER_SEC / USER_HZ
    /// (`sysconf(_SC_CLK_TCK)`, 100 on x86 and arm64), exactly, outside a
    /// time namespace.
    pub fn start_time_ticks(&self) -> u64 {
        self.start_boottime_ns / (1_000_000_000 / clock_ticks_per_second())
    }

    pub fn comm(&self) -> &str {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(self.comm.len());
        std::str::from_utf8(&self.comm[..end]).unwrap_or("?")
    }
}

/// Which side of a runtime's async hop an [`AsyncEvent`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsyncPhase {
    /// Work handed off by the thread (libuv: `uv__work_submit`).
    Submit,
    /// Its completion callback starts on the thread (libuv: a `done` callback).
    Resume,
    /// asyncio: a Task was created (key: the Task).
    TaskSpawn,
    /// asyncio: a future a Task waits on is done (key: the Task).
    TaskWake,
    /// asyncio: a step of the Task starts (key: the Task).
    TaskStep,
    /// Node.js: the thread starts running JavaScript timers (key 0):
    /// callbacks that no read started.
    Deferred,
}

/// An async hop inside a tracked process, seen by a runtime uprobe.
#[derive(Clone, Copy, Debug)]
pub struct AsyncEvent {
    pub header: Header,
    /// Ties the two phases together within the process (libuv: the `uv__work` address).
    pub key: u64,
    pub phase: AsyncPhase,
}

/// How one goroutine caused another (Go runtime uprobes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoroutineRelation {
    /// `from` ran the `go` statement that made `to`.
    Created,
    /// `from` handed work to `to` (net/http's Transport: a request to write).
    Readied,
    /// `to` exited.
    Exited,
}

#[derive(Clone, Copy, Debug)]
pub struct GoroutineEvent {
    pub header: Header,
    pub relation: GoroutineRelation,
    /// Goroutine ids (full 64 bits).
    pub from: u64,
    pub to: u64,
}

#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    Data(DataEvent<'a>),
    ConnOpen(ConnEvent),
    ConnClose(ConnEvent),
    ProcFork(ProcEvent),
    ProcExit(ProcEvent),
    ProcExec(ProcEvent),
    Async(AsyncEvent),
    Goroutine(GoroutineEvent),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {what} ({need} bytes)")]
    Short { what: &'static str, len: usize, need: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("data event claims {captured} captured bytes but carries {len}")]
    BadCapture { captured: usize, len: usize },
    #[error("segmented event covers bytes {start}..{end} of a syscall that moved {bytes}")]
    BadRange { start: usize, end: usize, bytes: usize },
    #[error("segment of {len} bytes at {offset} is out of order, outside its event's range or cut short")]
    BadSegment { offset: usize, len: usize },
    #[error("unknown data layout {0}")]
    UnknownLayout(u8),
    #[error("unknown async phase {0}")]
    UnknownPhase(u32),
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
    Header {
        pid: h.pid,
        tid: h.tid,
        fd: h.fd,
        ts_enter: h.ts_enter_ns,
        ts_exit: h.ts_exit_ns,
        loop_seq: h.loop_seq,
        goid: h.goid,
    }
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

pub(crate) fn tuple(t: &periscope_tuple) -> Tuple {
    Tuple { local: addr(t.local_addr, t.local_port), remote: addr(t.remote_addr, t.remote_port), netns: t.netns }
}

// decode() reads direction, role, syscall and layout as four adjacent bytes.
const _: () = assert!(
    std::mem::offset_of!(periscope_data_event, role) == std::mem::offset_of!(periscope_data_event, direction) + 1
        && std::mem::offset_of!(periscope_data_event, syscall)
            == std::mem::offset_of!(periscope_data_event, direction) + 2
        && std::mem::offset_of!(periscope_data_event, layout)
            == std::mem::offset_of!(periscope_data_event, direction) + 3
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
            let flags: [u8; 4] = read(at(std::mem::offset_of!(periscope_data_event, direction)), "flags")?;
            let captured = captured as usize;
            let data = record
                .get(prefix..prefix + captured)
                .ok_or(DecodeError::BadCapture { captured, len: record.len() - prefix })?;
            let bytes = bytes.max(0) as usize;
            let (e_direction, e_role, e_syscall, e_layout) = (flags[0], flags[1], flags[2], flags[3]);
            let tls = matches!(
                u32::from(e_syscall),
                x if x == periscope_syscall::PERISCOPE_SYS_SSL_READ as u32
                    || x == periscope_syscall::PERISCOPE_SYS_SSL_WRITE as u32
            );
            let (data, layout) = match u32::from(e_layout) {
                x if x == periscope_data_layout::PERISCOPE_LAYOUT_PREFIX as u32 => (data, Layout::Prefix),
                x if x == periscope_data_layout::PERISCOPE_LAYOUT_SEGMENTS as u32 => {
                    let range: periscope_segments = read(data, "segment range")?;
                    let (start, end) = (range.start as usize, range.end as usize);
                    if start > end || end > bytes {
                        return Err(DecodeError::BadRange { start, end, bytes });
                    }
                    let segments = &data[std::mem::size_of::<periscope_segments>()..];
                    check_segments(segments, start, end)?;
                    (segments, Layout::Segments { start, end })
                }
                _ => return Err(DecodeError::UnknownLayout(e_layout)),
            };
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
                bytes,
                data,
                layout,
                tls,
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
            let ev = ProcEvent { header: header(&e.hdr), ppid: e.ppid, start_boottime_ns: e.start_boottime_ns, comm };
            Ok(match k {
                k if k == periscope_event_kind::PERISCOPE_EV_PROC_FORK as u32 => Event::ProcFork(ev),
                k if k == periscope_event_kind::PERISCOPE_EV_PROC_EXIT as u32 => Event::ProcExit(ev),
                _ => Event::ProcExec(ev),
            })
        }
        k if k == periscope_event_kind::PERISCOPE_EV_ASYNC as u32 => {
            let e: periscope_async_event = read(record, "async event")?;
            let phase = match e.phase {
                p if p == periscope_async_phase::PERISCOPE_ASYNC_SUBMIT as u32 => AsyncPhase::Submit,
                p if p == periscope_async_phase::PERISCOPE_ASYNC_RESUME as u32 => AsyncPhase::Resume,
                p if p == periscope_async_phase::PERISCOPE_ASYNC_TASK_SPAWN as u32 => AsyncPhase::TaskSpawn,
                p if p == periscope_async_phase::PERISCOPE_ASYNC_TASK_WAKE as u32 => AsyncPhase::TaskWake,
                p if p == periscope_async_phase::PERISCOPE_ASYNC_TASK_STEP as u32 => AsyncPhase::TaskStep,
                p if p == periscope_async_phase::PERISCOPE_ASYNC_DEFERRED as u32 => AsyncPhase::Deferred,
                other => return Err(DecodeError::UnknownPhase(other)),
            };
            Ok(Event::Async(AsyncEvent { header: header(&e.hdr), key: e.key, phase }))
        }
        k if k == periscope_event_kind::PERISCOPE_EV_GOROUTINE as u32 => {
            let e: periscope_goroutine_event = read(record, "goroutine event")?;
            let relation = match e.relation {
                r if r == periscope_goroutine_relation::PERISCOPE_GO_CREATED as u32 => GoroutineRelation::Created,
                r if r == periscope_goroutine_relation::PERISCOPE_GO_READIED as u32 => GoroutineRelation::Readied,
                r if r == periscope_goroutine_relation::PERISCOPE_GO_EXITED as u32 => GoroutineRelation::Exited,
                _ => return Err(DecodeError::UnknownKind(k)),
            };
            Ok(Event::Goroutine(GoroutineEvent { header: header(&e.hdr), relation, from: e.from, to: e.to }))
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

    /// A segmented data record: range `start..end` of a read of `bytes`
    /// bytes, with (offset, bytes) segments, laid out as the kernel sends it.
    fn segmented(bytes: i64, start: u32, end: u32, segs: &[(u32, &[u8])]) -> Vec<u8> {
        let mut data = bytes_of(&periscope_segments { start, end }).to_vec();
        for (offset, b) in segs {
            data.extend_from_slice(bytes_of(&periscope_segment { offset: *offset, len: b.len() as u32 }));
            data.extend_from_slice(b);
        }
        let mut e = periscope_data_event::default();
        e.hdr.kind = periscope_event_kind::PERISCOPE_EV_DATA as u32;
        e.hdr.ts_enter_ns = 5;
        e.hdr.ts_exit_ns = 9;
        e.bytes = bytes;
        e.captured = data.len() as u32;
        e.layout = periscope_data_layout::PERISCOPE_LAYOUT_SEGMENTS as u8;
        e.data[..data.len()].copy_from_slice(&data);
        let prefix = std::mem::offset_of!(periscope_data_event, data);
        bytes_of(&e)[..prefix + data.len()].to_vec()
    }

    fn chunks_of(record: &[u8]) -> Vec<(Vec<u8>, usize)> {
        let Event::Data(d) = decode(record).unwrap() else { panic!("not a data event") };
        d.chunks()
            .inspect(|c| assert_eq!((c.ts_enter, c.ts_exit, c.direction), (5, 9, Direction::Ingress)))
            .map(|c| (c.data.to_vec(), c.total))
            .collect()
    }

    #[test]
    fn a_segmented_event_becomes_chunks_with_the_gaps_between_segments() {
        let r = segmented(100, 0, 100, &[(0, b"abc"), (10, b"de"), (50, b"f")]);
        let Event::Data(d) = decode(&r).unwrap() else { panic!("not a data event") };
        assert_eq!(d.layout, Layout::Segments { start: 0, end: 100 });
        assert_eq!(d.segments().collect::<Vec<_>>(), [(0, &b"abc"[..]), (10, b"de"), (50, b"f")]);
        let c = chunks_of(&r);
        assert_eq!(c, [(b"abc".to_vec(), 10), (b"de".to_vec(), 40), (b"f".to_vec(), 50)]);
        assert_eq!(c.iter().map(|c| c.1).sum::<usize>(), 100, "the chunks cover the range");
        // A later event of the same read, starting in bytes not captured.
        assert_eq!(chunks_of(&segmented(300, 100, 200, &[(120, b"x")])), [(vec![], 20), (b"x".to_vec(), 80)]);
        // Nothing captured (inside a large body frame).
        assert_eq!(chunks_of(&segmented(64, 0, 64, &[])), [(vec![], 64)]);
    }

    #[test]
    fn a_prefix_event_is_one_chunk_of_the_whole_syscall() {
        let mut e = periscope_data_event::default();
        e.hdr.kind = periscope_event_kind::PERISCOPE_EV_DATA as u32;
        e.hdr.ts_enter_ns = 5;
        e.hdr.ts_exit_ns = 9;
        e.bytes = 1000;
        e.captured = 2;
        e.data[..2].copy_from_slice(b"hi");
        let prefix = std::mem::offset_of!(periscope_data_event, data);
        assert_eq!(chunks_of(&bytes_of(&e)[..prefix + 2]), [(b"hi".to_vec(), 1000)]);
    }

    #[test]
    fn rejects_inconsistent_segments() {
        let bad = |r: Vec<u8>| decode(&r).map(|_| ()).unwrap_err();
        assert!(matches!(bad(segmented(100, 0, 100, &[(10, b"abc"), (11, b"d")])), DecodeError::BadSegment { .. }));
        assert!(matches!(bad(segmented(100, 0, 50, &[(48, b"abc")])), DecodeError::BadSegment { .. }));
        assert!(matches!(bad(segmented(100, 20, 50, &[(10, b"a")])), DecodeError::BadSegment { .. }));
        assert!(matches!(bad(segmented(100, 0, 101, &[])), DecodeError::BadRange { .. }));
        assert!(matches!(bad(segmented(100, 60, 50, &[])), DecodeError::BadRange { .. }));
        // The last segment's bytes cut short; a range head cut short.
        let mut r = segmented(100, 0, 100, &[(0, b"abcd")]);
        let captured = std::mem::offset_of!(periscope_data_event, captured);
        let n = u32::from_ne_bytes(r[captured..captured + 4].try_into().unwrap()) - 1;
        r[captured..captured + 4].copy_from_slice(&n.to_ne_bytes());
        r.pop();
        assert!(matches!(bad(r), DecodeError::BadSegment { .. }));
        let mut r = segmented(100, 0, 100, &[]);
        r[captured..captured + 4].copy_from_slice(&4u32.to_ne_bytes());
        r.truncate(r.len() - 4);
        assert!(matches!(bad(r), DecodeError::Short { .. }));
        let mut r = segmented(100, 0, 100, &[]);
        r[std::mem::offset_of!(periscope_data_event, layout)] = 7;
        assert_eq!(bad(r), DecodeError::UnknownLayout(7));
    }
}

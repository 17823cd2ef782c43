//! AMQP 0-9-1 data types: a cursor over method arguments (octets, shorts,
//! short strings, bits), field tables (RabbitMQ's type tags, which differ
//! from the 0-9-1 grammar for `s`), and the basic-class content properties.

use crate::model::TraceParent;

/// Reads method arguments; every read fails (None) past the end.
pub(crate) struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Cursor { b }
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.bytes(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.bytes(8).map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    /// shortstr: octet length + bytes.
    pub fn shortstr(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.bytes(usize::from(n))
    }

    /// longstr / table / array: u32 length + bytes.
    pub fn long(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }

    /// What is left (the prefix of a truncated table, for instance).
    pub fn rest(&self) -> &'a [u8] {
        self.b
    }
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Size of a field value of type `tag` after the tag, for fixed-size types.
fn fixed_size(tag: u8) -> Option<usize> {
    Some(match tag {
        b't' | b'b' | b'B' => 1,
        b's' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'D' => 5,
        b'l' | b'L' | b'd' | b'T' => 8,
        b'V' => 0,
        _ => return None,
    })
}

/// Longest trace-context values kept (W3C: traceparent is 55 characters
/// for version 00; tracestate at most 32 list members, 512 characters
/// recommended).
const MAX_TRACEPARENT: usize = 256;
const MAX_TRACESTATE: usize = 512;

/// What the message headers carry for tracing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    pub traceparent: Option<TraceParent>,
    pub tracestate: Option<String>,
}

/// Scans a field table for `traceparent` / `tracestate` (long-string or
/// byte-array values). A truncated table is read as far as it goes.
pub(crate) fn trace_headers(table: &[u8], out: &mut TraceHeaders) {
    let mut c = Cursor::new(table);
    while let Some(name) = c.shortstr() {
        let Some(tag) = c.u8() else { return };
        let value = match fixed_size(tag) {
            Some(n) => c.bytes(n).map(|_| None),
            None if matches!(tag, b'S' | b'x' | b'F' | b'A') => c.long().map(Some),
            None => return, // unknown type: the rest cannot be framed
        };
        let Some(value) = value else {
            return;
        };
        let (Some(v), true) = (value, matches!(tag, b'S' | b'x')) else {
            continue;
        };
        if name.eq_ignore_ascii_case(b"traceparent") && v.len() <= MAX_TRACEPARENT {
            out.traceparent = std::str::from_utf8(v).ok().and_then(TraceParent::parse);
        } else if name.eq_ignore_ascii_case(b"tracestate") && v.len() <= MAX_TRACESTATE {
            out.tracestate = std::str::from_utf8(v).ok().map(str::to_owned);
        }
    }
}

/// The basic-class properties periscope keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    pub trace: TraceHeaders,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
}

// Property flag bits of the basic class, in wire order (bit 15 first).
const P_CONTENT_TYPE: u16 = 1 << 15;
const P_CONTENT_ENCODING: u16 = 1 << 14;
const P_HEADERS: u16 = 1 << 13;
const P_DELIVERY_MODE: u16 = 1 << 12;
const P_PRIORITY: u16 = 1 << 11;
const P_CORRELATION_ID: u16 = 1 << 10;
const P_REPLY_TO: u16 = 1 << 9;
const P_EXPIRATION: u16 = 1 << 8;
const P_MESSAGE_ID: u16 = 1 << 7;

/// A content header payload: class (2), weight (2), body size (8),
/// property flags (2, bit 0 = another flags word follows), properties.
pub(crate) struct ContentHeader {
    pub class: u16,
    pub body_size: u64,
    pub props: Properties,
}

/// Parses a (possibly truncated) content header payload. None when even
/// the fixed part is missing.
pub(crate) fn content_header(payload: &[u8]) -> Option<ContentHeader> {
    let mut c = Cursor::new(payload);
    let class = c.u16()?;
    let _weight = c.u16()?;
    let body_size = c.u64()?;
    let mut ch = ContentHeader { class, body_size, props: Properties::default() };
    let flags = c.u16()?;
    let mut more = flags & 1 == 1;
    // The basic class has 14 properties: one flags word. Skip any others.
    while more {
        more = c.u16().is_some_and(|f| f & 1 == 1);
    }
    let p = &mut ch.props;
    // Each step stops silently when the capture ends: what was read stays.
    let _ = (|| -> Option<()> {
        if flags & P_CONTENT_TYPE != 0 {
            c.shortstr()?;
        }
        if flags & P_CONTENT_ENCODING != 0 {
            c.shortstr()?;
        }
        if flags & P_HEADERS != 0 {
            let len = c.u32()? as usize;
            let rest = c.rest();
            trace_headers(&rest[..len.min(rest.len())], &mut p.trace);
            c.bytes(len)?;
        }
        if flags & P_DELIVERY_MODE != 0 {
            c.u8()?;
        }
        if flags & P_PRIORITY != 0 {
            c.u8()?;
        }
        if flags & P_CORRELATION_ID != 0 {
            p.correlation_id = Some(text(c.shortstr()?));
        }
        if flags & P_REPLY_TO != 0 {
            c.shortstr()?;
        }
        if flags & P_EXPIRATION != 0 {
            c.shortstr()?;
        }
        if flags & P_MESSAGE_ID != 0 {
            p.message_id = Some(text(c.shortstr()?));
        }
        Some(())
    })();
    Some(ch)
}

/// Bytes of the body hashed into the fingerprint.
pub const FINGERPRINT_BYTES: usize = 64;

/// A correlation fingerprint of one message: FNV-1a over the first
/// [`FINGERPRINT_BYTES`] body bytes, mixed with the body size. The body
/// itself is never kept.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fingerprint {
    hash: u64,
    seen: usize,
    broken: bool,
}

impl Fingerprint {
    pub fn new() -> Self {
        Fingerprint { hash: 0xcbf2_9ce4_8422_2325, seen: 0, broken: false }
    }

    /// The kept prefix of one body frame of `size` payload bytes, frames
    /// in order.
    pub fn feed(&mut self, bytes: &[u8], size: usize) {
        let want = FINGERPRINT_BYTES.saturating_sub(self.seen);
        if want == 0 {
            return;
        }
        let take = bytes.len().min(want);
        for &b in &bytes[..take] {
            self.hash = (self.hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.seen += take;
        // Fewer bytes than the frame had towards the fingerprint: a hole.
        if take < size.min(want) {
            self.broken = true;
        }
    }

    pub fn finish(&self, body_size: u64) -> Option<u64> {
        if self.broken || (self.seen as u64) < body_size.min(FINGERPRINT_BYTES as u64) {
            return None;
        }
        let mut h = self.hash;
        for b in body_size.to_be_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Some(h)
    }
}

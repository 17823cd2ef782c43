//! HTTP/2 framing (RFC 9113 section 4): the 9-byte frame header, the client
//! connection preface, and the cheap checks detection and resynchronisation use.

/// What a client sends first on a prior-knowledge (h2c) connection.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const HEADER_LEN: usize = 9;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const FLAG_END_STREAM: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
pub const FLAG_PADDED: u8 = 0x8;
pub const FLAG_PRIORITY: u8 = 0x20;
/// SETTINGS_MAX_FRAME_SIZE until a peer raises it (RFC 9113 6.5.2).
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub length: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Self {
        Self {
            length: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    /// Could this be a real frame header? Known type, reserved bit clear,
    /// and a stream id where the type needs one (none where it must not).
    pub fn plausible(b: &[u8; HEADER_LEN]) -> bool {
        let h = Self::parse(b);
        if b[5] & 0x80 != 0 {
            return false;
        }
        match h.kind {
            DATA | HEADERS | PRIORITY | RST_STREAM | PUSH_PROMISE | CONTINUATION => h.stream != 0,
            SETTINGS => h.stream == 0 && h.length.is_multiple_of(6),
            PING => h.stream == 0 && h.length == 8,
            GOAWAY => h.stream == 0 && h.length >= 8,
            WINDOW_UPDATE => h.length == 4,
            _ => false,
        }
    }

    pub fn end_stream(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }
}

/// The header-block fragment of a HEADERS frame's payload (padding and
/// priority fields removed); None when the payload contradicts its flags.
pub fn headers_fragment(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & FLAG_PADDED != 0 {
        let (&n, rest) = p.split_first()?;
        pad = usize::from(n);
        p = rest;
    }
    if flags & FLAG_PRIORITY != 0 {
        p = p.get(5..)?;
    }
    p.get(..p.len().checked_sub(pad)?)
}

/// Payload bytes the kernel's frame walk copies of a header block fragment
/// (HEADERS, CONTINUATION, PUSH_PROMISE): as much as the parser keeps.
pub const WALK_BLOCK_KEEP: usize = super::MAX_HEADER_BLOCK;
/// ... and of a control frame (SETTINGS, PING, RST_STREAM, ...). Of DATA: none.
pub const WALK_CONTROL_KEEP: usize = 64;

/// What the kernel's frame walk (`ebpf/src/h2_capture.h`) copies of one
/// direction's bytes, from a frame boundary on: every frame header, the
/// first [`WALK_BLOCK_KEEP`] bytes of a header block fragment, the first
/// [`WALK_CONTROL_KEEP`] of a control frame, nothing of DATA. Byte ranges
/// in order, merged where they touch; None when a header is one the walk
/// refuses (those [`FrameHeader::plausible`] refuses). The parser must read
/// the same from these ranges, the rest missing, as from every byte (tests,
/// fuzz target `http2_session`).
pub fn walk_copies(buf: &[u8]) -> Option<Vec<std::ops::Range<usize>>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    let mut copy = |r: std::ops::Range<usize>| match out.last_mut() {
        _ if r.is_empty() => {}
        Some(last) if last.end == r.start => last.end = r.end,
        _ => out.push(r),
    };
    let mut at = 0usize;
    while at < buf.len() {
        let end = (at + HEADER_LEN).min(buf.len());
        copy(at..end);
        let Ok(head) = <&[u8; HEADER_LEN]>::try_from(&buf[at..end]) else { break };
        if !FrameHeader::plausible(head) {
            return None;
        }
        let h = FrameHeader::parse(head);
        let keep = match h.kind {
            DATA => 0,
            HEADERS | CONTINUATION | PUSH_PROMISE => WALK_BLOCK_KEEP,
            _ => WALK_CONTROL_KEEP,
        }
        .min(h.length as usize);
        copy(end..(end + keep).min(buf.len()));
        at = end + h.length as usize;
    }
    Some(out)
}

pub fn looks_like_preface(buf: &[u8]) -> bool {
    buf.len() >= 16 && PREFACE.starts_with(&buf[..buf.len().min(PREFACE.len())])
}

/// Does a buffer captured mid-connection (no preface: a connection older
/// than the agent) start with HTTP/2 frames carrying a HEADERS frame? Some
/// (true) when its first field is a request pseudo-header, Some(false) a
/// response's :status. Frames are walked as far as they were captured.
pub fn looks_like_frames(buf: &[u8]) -> Option<bool> {
    let mut at = 0usize;
    for _ in 0..8 {
        let head: &[u8; HEADER_LEN] = buf.get(at..at + HEADER_LEN)?.try_into().ok()?;
        if !FrameHeader::plausible(head) {
            return None;
        }
        let h = FrameHeader::parse(head);
        // Stricter than a receiver must be: a frame no longer than the
        // default SETTINGS_MAX_FRAME_SIZE, no undefined HEADERS flags (a TLS
        // ClientHello, 16 03 01 01 58 01 00 01 54, reads as a 1.4 MB HEADERS
        // frame with flags 0x58 on stream 0x01000154).
        if h.length > DEFAULT_MAX_FRAME_SIZE
            || (h.kind == HEADERS && h.flags & !(FLAG_END_STREAM | FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY) != 0)
        {
            return None;
        }
        let start = at + HEADER_LEN;
        if h.kind == HEADERS {
            let end = (start + h.length as usize).min(buf.len());
            let fragment = headers_fragment(h.flags, buf.get(start..end)?)?;
            return first_field_is_request(fragment);
        }
        at = start + h.length as usize;
    }
    None
}

/// The first field of a header block, as a static-table reference:
/// :authority, :method, :path, :scheme (1-7) make a request, :status (8-14)
/// a response (RFC 9113 8.3: pseudo-headers come first).
fn first_field_is_request(fragment: &[u8]) -> Option<bool> {
    let mut b = *fragment.first()?;
    if b & 0xe0 == 0x20 {
        // A table size update may come first: skip it (short forms only).
        b = *fragment.get(1)?;
    }
    let index = if b & 0x80 != 0 {
        b & 0x7f
    } else if b & 0xc0 == 0x40 {
        b & 0x3f
    } else {
        b & 0x0f
    };
    match index {
        1..=7 => Some(true),
        8..=14 => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS ClientHello (Node's, as captured before its SSL object was
    /// known) is not an HTTP/2 HEADERS frame.
    #[test]
    fn a_tls_client_hello_is_not_frames() {
        let mut hello = vec![0x16, 0x03, 0x01, 0x01, 0x58, 0x01, 0x00, 0x01, 0x54, 0x03, 0x03];
        hello.extend([0x11; 338]);
        assert_eq!(looks_like_frames(&hello), None);
        // The same bytes with a small length and defined flags would pass:
        // the length and the flags are what tell.
        let headers = [0x00, 0x00, 0x03, HEADERS, FLAG_END_HEADERS, 0x00, 0x00, 0x00, 0x01, 0x82, 0x86, 0x84];
        assert_eq!(looks_like_frames(&headers), Some(true));
    }

    #[test]
    fn headers_and_checks() {
        let settings = [0, 0, 6, SETTINGS, 0, 0, 0, 0, 0];
        assert!(FrameHeader::plausible(&settings));
        let h = FrameHeader::parse(&[0, 1, 2, HEADERS, 5, 0x80, 0, 0, 3]);
        assert_eq!((h.length, h.kind, h.flags, h.stream), (258, HEADERS, 5, 3));
        assert!(!FrameHeader::plausible(&[0, 1, 2, HEADERS, 5, 0x80, 0, 0, 3]), "reserved bit");
        assert!(!FrameHeader::plausible(b"GET / HTT"));
        assert!(looks_like_preface(b"PRI * HTTP/2.0\r\n\r\nSM"));
        assert!(!looks_like_preface(b"PRI * HTTP/1.1\r\n\r\n"));
    }

    #[test]
    fn padded_and_prioritised_fragments() {
        assert_eq!(headers_fragment(FLAG_PADDED, &[2, 0x82, 0, 0]), Some(&[0x82][..]));
        assert_eq!(headers_fragment(FLAG_PRIORITY, &[0, 0, 0, 1, 16, 0x88]), Some(&[0x88][..]));
        assert_eq!(headers_fragment(FLAG_PADDED, &[9, 0x82]), None);
    }

    #[test]
    fn mid_stream_frames_are_recognised_by_their_first_field() {
        let mut req = vec![0, 0, 4, WINDOW_UPDATE, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        req.extend_from_slice(&[0, 0, 2, HEADERS, 4, 0, 0, 0, 5, 0x83, 0x84]);
        assert_eq!(looks_like_frames(&req), Some(true));
        let resp = [0, 0, 1, HEADERS, 4, 0, 0, 0, 5, 0x88];
        assert_eq!(looks_like_frames(&resp), Some(false));
        assert_eq!(looks_like_frames(&[0, 0, 8, PING, 0, 0, 0, 0, 0]), None);
        assert_eq!(looks_like_frames(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc"), None, "TLS");
    }
}

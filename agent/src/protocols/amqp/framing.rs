//! AMQP 0-9-1 frame reassembly over captured syscall chunks.
//!
//! A frame is `type (1) | channel (2) | size (4) | payload (size) | 0xCE`.
//! The framer hands each frame (header fields and a bounded prefix of the
//! payload) to a [`FrameSink`]. Bytes the kernel did not capture are
//! skipped while they fall inside a frame of known size, and across the
//! body frames of a message whose remaining body size is known (the sink
//! predicts those frames: every peer splits a body into frames of
//! `frame_max - 8` payload bytes). Otherwise framing is lost: the framer
//! waits for a chunk in which a plausible frame starts, checking the
//! frame-end octet wherever it was captured.

use crate::protocols::{Chunk, Direction};

pub(crate) const FRAME_METHOD: u8 = 1;
pub(crate) const FRAME_HEADER: u8 = 2;
pub(crate) const FRAME_BODY: u8 = 3;
pub(crate) const FRAME_HEARTBEAT: u8 = 8;
pub(crate) const FRAME_END: u8 = 0xCE;
/// Header bytes before the payload.
pub(crate) const FRAME_HEADER_LEN: usize = 7;
/// Header + frame-end octet.
pub(crate) const FRAME_OVERHEAD: usize = 8;
/// Largest payload accepted when frame_max is not known: a sanity bound
/// far above RabbitMQ's 128 KiB default.
pub(crate) const MAX_FRAME_SIZE: usize = 128 << 20;
/// The client's protocol header, AMQP 0-9-1.
pub(crate) const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Classes whose methods the detection and resync accept.
pub(crate) const KNOWN_CLASSES: &[u16] = &[10, 20, 40, 50, 60, 85, 90];

/// Timestamps and direction of one chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ts {
    pub egress: bool,
    pub ts_enter: u64,
    pub ts_exit: u64,
}

impl Ts {
    fn of(c: &Chunk<'_>) -> Self {
        Ts { egress: c.direction == Direction::Egress, ts_enter: c.ts_enter, ts_exit: c.ts_exit }
    }

    /// When the process started moving these bytes: a write at its entry,
    /// a (possibly blocking) read at its exit, when the bytes were there.
    pub fn start(&self) -> u64 {
        if self.egress {
            self.ts_enter
        } else {
            self.ts_exit
        }
    }
}

/// One reassembled frame.
pub(crate) struct RawFrame<'a> {
    pub kind: u8,
    pub channel: u16,
    /// Declared payload size.
    pub size: usize,
    /// Kept prefix of the payload (at most what the sink asked to keep,
    /// shorter when bytes were not captured).
    pub payload: &'a [u8],
    /// Every payload byte was captured (none fell into a gap).
    pub captured: bool,
    /// Chunk that carried the first header byte, and the last byte.
    pub first: Ts,
    pub last: Ts,
}

/// The protocol side of a framer.
pub(crate) trait FrameSink {
    /// Payload bytes to keep for a frame with this header.
    fn keep(&self, kind: u8, channel: u16, size: usize) -> usize;
    /// Whether a frame header is acceptable (channel and size limits).
    fn plausible(&self, kind: u8, channel: u16, size: usize) -> bool;
    fn on_frame(&mut self, frame: RawFrame<'_>);
    fn on_protocol_header(&mut self, header: &[u8], ts: Ts);
    /// After the frame just delivered, when uncaptured bytes follow: the
    /// channel and payload size of the next frame if it is certain (a body
    /// frame of the message in progress).
    fn predict_next(&self) -> Option<(u16, usize)>;
    /// Framing lost: drop what depends on frames of this direction.
    fn on_desync(&mut self);
    fn on_dropped_chunk(&mut self);
    /// Stop parsing (another protocol).
    fn stopped(&self) -> bool;
}

#[derive(Clone, Copy, Debug)]
struct Payload {
    kind: u8,
    channel: u16,
    size: usize,
    /// Payload bytes plus the frame-end octet still to come.
    left: usize,
    keep: usize,
    gap: bool,
}

/// Reassembly state of one direction.
pub(crate) struct Framer {
    hdr: Vec<u8>,
    /// While skipping into a predicted frame: its header bytes, checked
    /// against captured bytes that follow the gap.
    expected: Option<[u8; FRAME_HEADER_LEN]>,
    payload: Option<Payload>,
    body: Vec<u8>,
    first: Ts,
    aligned: bool,
    /// Bytes of short chunks kept while not aligned, too few to judge.
    probe: Vec<u8>,
    probe_ts: Ts,
}

/// Bytes wanted to judge a frame start (header, class and method ids):
/// shorter chunks are collected until there are this many.
const PROBE_WANT: usize = 11;

/// Whether a frame header could start at `d` (at least 7 bytes); `need_end`:
/// the frame-end octet must be in `d` (else it is checked only when there).
pub(crate) fn plausible_frame(d: &[u8], need_end: bool, max_size: usize) -> bool {
    if d.len() < FRAME_HEADER_LEN {
        return false;
    }
    let kind = d[0];
    let channel = u16::from_be_bytes([d[1], d[2]]);
    let size = u32::from_be_bytes([d[3], d[4], d[5], d[6]]) as usize;
    if size > max_size {
        return false;
    }
    let ok = match kind {
        FRAME_METHOD => {
            size >= 4
                && (d.len() < 9 || {
                    let class = u16::from_be_bytes([d[7], d[8]]);
                    KNOWN_CLASSES.contains(&class) && ((class == 10) == (channel == 0))
                })
        }
        // Content header: class 60 (basic), weight 0.
        FRAME_HEADER => size >= 14 && channel != 0 && (d.len() < 11 || (d[7..9] == [0, 60] && d[9..11] == [0, 0])),
        FRAME_BODY => channel != 0,
        FRAME_HEARTBEAT => channel == 0 && size == 0,
        _ => false,
    };
    if !ok {
        return false;
    }
    match d.get(FRAME_HEADER_LEN + size) {
        Some(&end) => end == FRAME_END,
        None => !need_end,
    }
}

impl Framer {
    /// `aligned`: the next chunk starts at a frame boundary (connection
    /// start); otherwise the first chunk must start with a plausible frame.
    pub fn new(aligned: bool) -> Self {
        Framer {
            hdr: Vec::new(),
            expected: None,
            payload: None,
            body: Vec::new(),
            first: Ts::default(),
            aligned,
            probe: Vec::new(),
            probe_ts: Ts::default(),
        }
    }

    fn reset(&mut self) {
        self.hdr.clear();
        self.body.clear();
        self.payload = None;
        self.expected = None;
    }

    fn desync<S: FrameSink>(&mut self, why: &'static str, sink: &mut S) {
        tracing::debug!(why, hdr = ?self.hdr, payload = ?self.payload, "AMQP framing lost");
        self.reset();
        self.aligned = false;
        sink.on_desync();
    }

    fn deliver<S: FrameSink>(&mut self, p: Payload, last: Ts, sink: &mut S) {
        sink.on_frame(RawFrame {
            kind: p.kind,
            channel: p.channel,
            size: p.size,
            payload: &self.body,
            captured: !p.gap,
            first: self.first,
            last,
        });
        self.reset();
    }

    /// A complete frame header (7 bytes) was collected.
    fn start_payload<S: FrameSink>(&mut self, gap: bool, sink: &mut S) -> bool {
        let h = &self.hdr;
        let kind = h[0];
        let channel = u16::from_be_bytes([h[1], h[2]]);
        let size = u32::from_be_bytes([h[3], h[4], h[5], h[6]]) as usize;
        if !matches!(kind, FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT)
            || size > MAX_FRAME_SIZE
            || !sink.plausible(kind, channel, size)
        {
            return false;
        }
        let keep = sink.keep(kind, channel, size).min(size);
        self.hdr.clear();
        self.expected = None;
        self.payload = Some(Payload { kind, channel, size, left: size + 1, keep, gap });
        true
    }

    /// Frames `data`; on lost framing, the offset of the byte that showed it.
    fn run<S: FrameSink>(&mut self, data: &[u8], ts: Ts, sink: &mut S) -> Result<(), usize> {
        let mut i = 0;
        while i < data.len() {
            if sink.stopped() {
                return Ok(());
            }
            if let Some(mut p) = self.payload {
                let avail = data.len() - i;
                // Payload bytes (not the frame-end octet) in this chunk.
                let pay = (p.left - 1).min(avail);
                let room = p.keep.saturating_sub(self.body.len()).min(pay);
                if !p.gap {
                    self.body.extend_from_slice(&data[i..i + room]);
                }
                p.left -= pay;
                i += pay;
                if p.left == 1 && i < data.len() {
                    if data[i] != FRAME_END {
                        self.desync("no frame end", sink);
                        return Err(i);
                    }
                    i += 1;
                    p.left = 0;
                    self.deliver(p, ts, sink);
                } else {
                    self.payload = Some(p);
                }
                continue;
            }
            if self.hdr.is_empty() {
                self.first = ts;
            }
            let b = data[i];
            if let Some(exp) = self.expected {
                if exp[self.hdr.len()] != b {
                    self.desync("not the predicted header", sink);
                    return Err(i);
                }
            }
            self.hdr.push(b);
            i += 1;
            let need = if self.hdr[0] == b'A' { PROTOCOL_HEADER.len() } else { FRAME_HEADER_LEN };
            if self.hdr.len() < need {
                continue;
            }
            if need == PROTOCOL_HEADER.len() {
                if &self.hdr[..4] != b"AMQP" {
                    self.desync("protocol header", sink);
                    return Err(i - 1);
                }
                let h = std::mem::take(&mut self.hdr);
                sink.on_protocol_header(&h, self.first);
            } else if !self.start_payload(false, sink) {
                self.desync("implausible header", sink);
                return Err(i - 1);
            }
        }
        Ok(())
    }

    /// `n` bytes were moved but not captured after the chunk's data.
    fn skip<S: FrameSink>(&mut self, mut n: usize, ts: Ts, sink: &mut S) {
        while n > 0 {
            if sink.stopped() {
                return;
            }
            if let Some(mut p) = self.payload {
                let t = p.left.min(n);
                p.left -= t;
                n -= t;
                p.gap = true;
                if p.left == 0 {
                    self.deliver(p, ts, sink);
                } else {
                    self.payload = Some(p);
                }
                continue;
            }
            if self.expected.is_none() {
                if !self.hdr.is_empty() {
                    return self.desync("uncaptured bytes inside a header", sink);
                }
                let Some((channel, size)) = sink.predict_next() else {
                    return self.desync("uncaptured bytes where no frame is predicted", sink);
                };
                let mut h = [FRAME_BODY, 0, 0, 0, 0, 0, 0];
                h[1..3].copy_from_slice(&channel.to_be_bytes());
                h[3..7].copy_from_slice(&(size as u32).to_be_bytes());
                self.expected = Some(h);
                self.first = ts;
            }
            let exp = self.expected.expect("set above");
            let t = (FRAME_HEADER_LEN - self.hdr.len()).min(n);
            let at = self.hdr.len();
            self.hdr.extend_from_slice(&exp[at..at + t]);
            n -= t;
            if self.hdr.len() == FRAME_HEADER_LEN && !self.start_payload(true, sink) {
                return self.desync("predicted header implausible", sink);
            }
        }
    }

    /// Where framing can restart in `data`: offset 0 when `weak_start` and
    /// a frame header (or the protocol header) plausibly starts there (a
    /// chunk start: writes carry whole frames), otherwise the first offset
    /// where a method, content header or heartbeat frame starts with its
    /// end octet captured.
    fn resync_point(data: &[u8], weak_start: bool) -> Option<usize> {
        if weak_start && (data.starts_with(b"AMQP") || plausible_frame(data, false, MAX_FRAME_SIZE)) {
            return Some(0);
        }
        (0..data.len().saturating_sub(FRAME_OVERHEAD - 1)).find(|&i| {
            matches!(data[i], FRAME_METHOD | FRAME_HEADER | FRAME_HEARTBEAT)
                && plausible_frame(&data[i..], true, MAX_FRAME_SIZE)
        })
    }

    pub fn feed<S: FrameSink>(&mut self, chunk: &Chunk<'_>, sink: &mut S) {
        if sink.stopped() {
            return;
        }
        let ts = Ts::of(chunk);
        let mut data = chunk.data;
        if !self.aligned {
            if data.is_empty() && chunk.missing() == 0 {
                return;
            }
            let had = self.probe.len();
            let mut cand = std::mem::take(&mut self.probe);
            cand.extend_from_slice(data);
            // Too short to judge but possibly a frame start: wait for more
            // bytes when they follow contiguously.
            let whole_frame = (cand.len() >= PROTOCOL_HEADER.len() && cand.starts_with(b"AMQP"))
                || (cand.len() >= FRAME_HEADER_LEN
                    && cand.len()
                        > FRAME_HEADER_LEN + u32::from_be_bytes([cand[3], cand[4], cand[5], cand[6]]) as usize);
            let short = cand.len() < PROBE_WANT
                && !whole_frame
                && (b"AMQP".starts_with(&cand[..cand.len().min(4)])
                    || matches!(cand[0], FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT));
            if short && chunk.missing() == 0 {
                if had == 0 {
                    self.probe_ts = ts;
                }
                self.probe = cand;
                return;
            }
            let Some(off) = Self::resync_point(&cand, true) else {
                sink.on_dropped_chunk();
                return;
            };
            self.reset();
            self.aligned = true;
            if off < had {
                // The frame starts in the probed bytes: they go first, with
                // the timestamps of the chunk that carried them.
                let probe_ts = self.probe_ts;
                if self.run(&cand[off..had], probe_ts, sink).is_err() {
                    return;
                }
            } else {
                data = &data[off - had..];
            }
        }
        while let Err(at) = self.run(data, ts, sink) {
            tracing::debug!(
                at,
                chunk = data.len(),
                missing = chunk.missing(),
                before = ?&data[at.saturating_sub(24)..at],
                after = ?&data[at..(at + 16).min(data.len())],
                "AMQP framing lost inside a chunk"
            );
            // Framing was lost inside this chunk: a later frame in it may
            // still be found. The rest of the chunk is always shorter.
            let rest = &data[at + 1..];
            match Self::resync_point(rest, false) {
                Some(off) if !sink.stopped() => {
                    data = &rest[off..];
                    self.aligned = true;
                }
                _ => return,
            }
        }
        let missing = chunk.missing();
        if missing > 0 && !sink.stopped() {
            self.skip(missing, ts, sink);
        }
    }
}

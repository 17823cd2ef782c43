//! Length-prefixed message framing over captured syscall chunks, shared by
//! the PostgreSQL and MySQL parsers.
//!
//! The framer reassembles messages split across chunks, hands complete
//! messages (header + a bounded prefix of the body) to a [`FrameSink`],
//! skips bytes the kernel did not capture when they fall inside a message of
//! known length, and otherwise declares a desync and waits for a chunk that
//! starts with a plausible header.

use crate::protocols::{Chunk, Direction};

/// Timestamps and direction of one chunk.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ChunkTs {
    pub egress: bool,
    pub ts_enter: u64,
    pub ts_exit: u64,
}

impl ChunkTs {
    fn of(c: &Chunk<'_>) -> Self {
        ChunkTs { egress: c.direction == Direction::Egress, ts_enter: c.ts_enter, ts_exit: c.ts_exit }
    }

    /// When a request carried by this chunk started: a write starts at
    /// syscall entry; a (possibly blocking) read has the bytes at its exit.
    pub fn request_start(&self) -> u64 {
        if self.egress {
            self.ts_enter
        } else {
            self.ts_exit
        }
    }
}

/// One framed message.
pub(crate) struct Frame<'a> {
    pub header: &'a [u8],
    /// Kept prefix of the body (at most the `keep` the sink asked for).
    pub body: &'a [u8],
    /// Declared body length.
    pub body_len: usize,
    /// Chunk that carried the first header byte.
    pub first: ChunkTs,
    /// Chunk that carried the last byte.
    pub last: ChunkTs,
}

/// The protocol side of a framer.
pub(crate) trait FrameSink {
    /// Header length of the next message (>= 1).
    fn header_len(&self) -> usize;
    /// Body length and how many body bytes to keep, or None when the header
    /// is implausible (framing lost).
    fn parse_header(&mut self, header: &[u8]) -> Option<(usize, usize)>;
    /// Whether bytes starting with `data` start at a message boundary;
    /// used to (re-)align. May adjust the sink's framing mode. None: too
    /// few bytes to tell (the framer collects a few more, up to
    /// [`PROBE_MAX`], from following contiguous chunks).
    fn plausible_start(&mut self, data: &[u8]) -> Option<bool>;
    fn on_frame(&mut self, frame: Frame<'_>);
    /// Framing lost: drop pending state for this direction.
    /// `uncaptured`: bytes the kernel did not capture ran past a message
    /// boundary (a response larger than the capture), rather than a header
    /// that made no sense.
    fn on_desync(&mut self, uncaptured: bool);
    /// A chunk was dropped while not aligned.
    fn on_dropped_chunk(&mut self);
    /// Stop parsing entirely (connection encrypted).
    fn stopped(&self) -> bool;
}

struct Msg {
    body_len: usize,
    remaining: usize,
    keep: usize,
    gap: bool,
}

/// Most bytes collected while deciding whether a position is a message
/// boundary.
pub(crate) const PROBE_MAX: usize = 64;

/// Reassembly state of one direction.
pub(crate) struct Framer {
    /// Bytes of short chunks kept while not aligned.
    probe: Vec<u8>,
    probe_ts: ChunkTs,
    hdr: Vec<u8>,
    body: Vec<u8>,
    msg: Option<Msg>,
    first: ChunkTs,
    aligned: bool,
}

impl Framer {
    /// `aligned`: whether the next chunk is known to start at a message
    /// boundary (connection start); otherwise the first chunk must pass
    /// [`FrameSink::plausible_start`].
    pub fn new(aligned: bool) -> Self {
        Framer {
            probe: Vec::new(),
            probe_ts: ChunkTs::default(),
            hdr: Vec::new(),
            body: Vec::new(),
            msg: None,
            first: ChunkTs::default(),
            aligned,
        }
    }

    fn reset(&mut self) {
        self.hdr.clear();
        self.body.clear();
        self.msg = None;
    }

    fn desync<S: FrameSink>(&mut self, sink: &mut S, uncaptured: bool) {
        self.reset();
        self.aligned = false;
        sink.on_desync(uncaptured);
    }

    fn deliver<S: FrameSink>(&mut self, last: ChunkTs, sink: &mut S) {
        let body_len = self.msg.as_ref().map_or(0, |m| m.body_len);
        sink.on_frame(Frame { header: &self.hdr, body: &self.body, body_len, first: self.first, last });
        self.reset();
    }

    /// Frames `data`; false when framing was lost or parsing stopped.
    fn run<S: FrameSink>(&mut self, data: &[u8], ts: ChunkTs, sink: &mut S) -> bool {
        let mut i = 0;
        while i < data.len() {
            if sink.stopped() {
                return false;
            }
            if let Some(m) = self.msg.as_mut() {
                let take = m.remaining.min(data.len() - i);
                if !m.gap {
                    let room = m.keep.saturating_sub(self.body.len()).min(take);
                    self.body.extend_from_slice(&data[i..i + room]);
                }
                m.remaining -= take;
                i += take;
                if m.remaining == 0 {
                    self.deliver(ts, sink);
                }
            } else {
                if self.hdr.is_empty() {
                    self.first = ts;
                }
                let hl = sink.header_len().max(1);
                let take = hl.saturating_sub(self.hdr.len()).min(data.len() - i);
                self.hdr.extend_from_slice(&data[i..i + take]);
                i += take;
                if self.hdr.len() >= hl {
                    match sink.parse_header(&self.hdr) {
                        Some((body_len, keep)) => {
                            self.msg =
                                Some(Msg { body_len, remaining: body_len, keep: keep.min(body_len), gap: false });
                            if body_len == 0 {
                                self.deliver(ts, sink);
                            }
                        }
                        None => {
                            self.desync(sink, false);
                            return false;
                        }
                    }
                }
            }
        }
        true
    }

    pub fn feed<S: FrameSink>(&mut self, chunk: &Chunk<'_>, sink: &mut S) {
        if sink.stopped() {
            return;
        }
        let ts = ChunkTs::of(chunk);
        let data = chunk.data;
        if !self.aligned {
            let verdict = if self.probe.is_empty() {
                sink.plausible_start(data)
            } else {
                let mut cand = self.probe.clone();
                cand.extend_from_slice(&data[..data.len().min(PROBE_MAX)]);
                sink.plausible_start(&cand)
            };
            match verdict {
                Some(true) => {
                    self.reset();
                    self.aligned = true;
                    let probe = std::mem::take(&mut self.probe);
                    if !probe.is_empty() && !self.run(&probe, self.probe_ts, sink) {
                        return;
                    }
                }
                None if chunk.missing() == 0 && !data.is_empty() && self.probe.len() + data.len() <= PROBE_MAX => {
                    if self.probe.is_empty() {
                        self.probe_ts = ts;
                    }
                    self.probe.extend_from_slice(data);
                    return;
                }
                _ => {
                    self.probe.clear();
                    sink.on_dropped_chunk();
                    return;
                }
            }
        }
        if !self.run(data, ts, sink) {
            return;
        }
        let missing = chunk.missing();
        if missing == 0 || sink.stopped() {
            return;
        }
        match self.msg.as_mut() {
            Some(m) => {
                m.gap = true;
                if missing <= m.remaining {
                    m.remaining -= missing;
                    if m.remaining == 0 {
                        self.deliver(ts, sink);
                    }
                } else {
                    // The gap runs past the end of this message: whatever
                    // follows is unframeable.
                    m.remaining = 0;
                    self.deliver(ts, sink);
                    self.desync(sink, true);
                }
            }
            None => self.desync(sink, true),
        }
    }
}

//! Shared by the fuzz targets: turns one fuzz input into a connection's
//! history (a sequence of syscall chunks, idle ticks and a close), so that
//! splitting, partial capture (`total > data.len()`), interleaving of both
//! directions and timestamps are all under the fuzzer's control.
//!
//! Input layout (see `make_seeds.py`, which writes the same format):
//!
//! ```text
//! byte 0        flags for the target (role, ...)
//! then steps    control byte c, then its operands:
//!   c & 0x01    direction: 0 Ingress, 1 Egress
//!   c & 0x06    gap (bytes moved but not captured, total = len + gap):
//!               0 none, 2 one byte, 4 u16 LE, 6 u32 LE
//!   c & 0x18    0x00 length is one byte, 0x08 length is u16 LE,
//!               0x10 the data is the rest of the input,
//!               0x18 no data: an idle tick (on_idle) instead of a chunk
//!   c >> 5      time step: timestamps advance by (c >> 5) * 1000 ns
//!               (7: step backwards, the kernel's order is not the clock's)
//! gap operands come before the length operand; data follows.
//! ```
//! Missing operand bytes read as zero; lengths are clamped to what is left.
use periscope::protocols::{Chunk, Direction};

pub enum Step<'a> {
    Chunk(Chunk<'a>),
    Idle,
}

pub struct Script<'a> {
    input: &'a [u8],
    pos: usize,
    ts: u64,
}

impl<'a> Script<'a> {
    /// Splits off the flags byte and returns it with the step iterator.
    pub fn new(input: &'a [u8]) -> (u8, Self) {
        let flags = input.first().copied().unwrap_or(0);
        (flags, Script { input, pos: 1.min(input.len()), ts: 1_000_000_000 })
    }

    fn byte(&mut self) -> u8 {
        let b = self.input.get(self.pos).copied().unwrap_or(0);
        self.pos = (self.pos + 1).min(self.input.len());
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
}

impl<'a> Iterator for Script<'a> {
    type Item = Step<'a>;

    fn next(&mut self) -> Option<Step<'a>> {
        if self.pos >= self.input.len() {
            return None;
        }
        let c = self.byte();
        let step = u64::from(c >> 5);
        if step == 7 {
            self.ts = self.ts.saturating_sub(5_000);
        } else {
            self.ts += step * 1000;
        }
        if c & 0x18 == 0x18 {
            return Some(Step::Idle);
        }
        let direction = if c & 1 == 0 { Direction::Ingress } else { Direction::Egress };
        let gap = match c & 0x06 {
            0 => 0,
            2 => usize::from(self.byte()),
            4 => usize::from(self.u16()),
            _ => self.u32() as usize,
        };
        let left = self.input.len() - self.pos;
        let len = match c & 0x18 {
            0x00 => usize::from(self.byte()),
            0x08 => usize::from(self.u16()),
            _ => left,
        }
        .min(self.input.len() - self.pos);
        let data = &self.input[self.pos..self.pos + len];
        self.pos += len;
        let ts_enter = self.ts;
        self.ts += 100 + len as u64;
        Some(Step::Chunk(Chunk { direction, data, total: len + gap, ts_enter, ts_exit: self.ts }))
    }
}

/// Splits `data` at the cut points taken from `cuts` (each byte a length,
/// 0 meaning "the rest"), for the targets that feed a plain byte stream.
pub fn pieces<'a>(mut data: &'a [u8], cuts: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    for &c in cuts {
        if data.is_empty() {
            break;
        }
        let n = if c == 0 { data.len() } else { usize::from(c).min(data.len()) };
        out.push(&data[..n]);
        data = &data[n..];
    }
    if !data.is_empty() {
        out.push(data);
    }
    out
}

/// `PERISCOPE_FUZZ_VERBOSE=1`: targets print what they produced, to check
/// that seeds reach deep states (`cargo fuzz run <t> corpus/<t> -- -runs=0`).
pub fn verbose() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var_os("PERISCOPE_FUZZ_VERBOSE").is_some())
}

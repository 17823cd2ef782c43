//! Finds the end of a chunked body without keeping any of it.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the hex size line (size digits, then extensions up to LF).
    Size {
        value: u64,
        digits: u8,
        in_ext: bool,
    },
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// The CRLF after chunk data: this many bytes left.
    DataEnd(u8),
    /// Trailer section after the last chunk: `line_len` bytes of the current line so far.
    Trailer {
        line_len: u32,
    },
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: State,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// All bytes consumed, the body goes on.
    NeedMore,
    /// The body ended after this many of the given bytes.
    Done(usize),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub struct ChunkedError;

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self { state: State::Size { value: 0, digits: 0, in_ext: false } }
    }
}

impl ChunkedDecoder {
    pub fn feed(&mut self, buf: &[u8]) -> Result<Progress, ChunkedError> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            self.state = match self.state {
                State::Size { value, digits, in_ext } => match b {
                    b'\n' if digits > 0 => {
                        if value == 0 {
                            State::Trailer { line_len: 0 }
                        } else {
                            State::Data(value)
                        }
                    }
                    b'\r' => State::Size { value, digits, in_ext },
                    _ if in_ext => State::Size { value, digits, in_ext },
                    b';' | b' ' | b'\t' if digits > 0 => State::Size { value, digits, in_ext: true },
                    _ => {
                        let d = (b as char).to_digit(16).ok_or(ChunkedError)?;
                        if digits >= 16 {
                            return Err(ChunkedError);
                        }
                        State::Size { value: value * 16 + u64::from(d), digits: digits + 1, in_ext }
                    }
                },
                State::Data(left) => {
                    let take = (left as usize).min(buf.len() - i);
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 { State::DataEnd(2) } else { State::Data(left) };
                    continue;
                }
                State::DataEnd(left) => match (left, b) {
                    (2, b'\r') => State::DataEnd(1),
                    (_, b'\n') => State::Size { value: 0, digits: 0, in_ext: false },
                    _ => return Err(ChunkedError),
                },
                State::Trailer { line_len } => match b {
                    b'\n' if line_len == 0 => {
                        self.state = State::Done;
                        return Ok(Progress::Done(i + 1));
                    }
                    b'\n' => State::Trailer { line_len: 0 },
                    b'\r' => State::Trailer { line_len },
                    _ => State::Trailer { line_len: line_len.saturating_add(1) },
                },
                State::Done => return Ok(Progress::Done(i)),
            };
            i += 1;
        }
        Ok(if self.state == State::Done { Progress::Done(buf.len()) } else { Progress::NeedMore })
    }

    /// Skips `n` bytes that were not captured. Possible only inside chunk
    /// data; returns false when the skipped bytes would hide framing.
    pub fn skip(&mut self, n: u64) -> bool {
        match self.state {
            State::Data(left) if n < left => {
                self.state = State::Data(left - n);
                true
            }
            State::Data(left) if n == left => {
                self.state = State::DataEnd(2);
                true
            }
            _ => n == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_body_in_one_buffer() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT";
        let mut d = ChunkedDecoder::default();
        assert_eq!(d.feed(body), Ok(Progress::Done(body.len() - 4)));
    }

    #[test]
    fn byte_by_byte_with_trailers() {
        let body = b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let mut d = ChunkedDecoder::default();
        for (i, b) in body.iter().enumerate() {
            let p = d.feed(std::slice::from_ref(b)).unwrap();
            if i + 1 == body.len() {
                assert_eq!(p, Progress::Done(1));
            } else {
                assert_eq!(p, Progress::NeedMore, "byte {i}");
            }
        }
    }

    #[test]
    fn skips_uncaptured_chunk_data_only() {
        let mut d = ChunkedDecoder::default();
        assert_eq!(d.feed(b"400\r\nab").unwrap(), Progress::NeedMore);
        assert!(d.skip(0x400 - 2));
        assert_eq!(d.feed(b"\r\n0\r\n\r\n").unwrap(), Progress::Done(7));
        let mut d = ChunkedDecoder::default();
        assert_eq!(d.feed(b"2\r\nab").unwrap(), Progress::NeedMore);
        assert!(!d.skip(10), "skipping past chunk data would hide a size line");
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(ChunkedDecoder::default().feed(b"zz\r\n"), Err(ChunkedError));
        assert_eq!(ChunkedDecoder::default().feed(b"2\r\nabXY"), Err(ChunkedError));
        assert_eq!(ChunkedDecoder::default().feed(b"11111111111111111\r\n"), Err(ChunkedError));
    }
}

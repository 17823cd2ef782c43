//! Protocol parsers: pure code, bytes in and structured messages out. Nothing
//! here does I/O, reads clocks or touches global state, so every parser is
//! unit-tested on split, truncated, interleaved and garbage input.
pub mod amqp;
pub(crate) mod bounded;
pub mod http1;
pub mod http2;
pub mod mysql;
pub mod postgres;
pub mod sql;

/// Which end of a connection the tracked process is, as its traffic shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// It sends the requests: Egress carries requests (frontend messages,
    /// commands, publishes), Ingress the responses.
    Client,
    /// It answers them: Ingress carries requests, Egress responses.
    Server,
}

impl Side {
    /// The side of an end whose requests travel in direction `requests`.
    pub fn reading_requests_from(requests: Direction) -> Side {
        if requests == Direction::Ingress {
            Side::Server
        } else {
            Side::Client
        }
    }
}

/// Which way bytes moved, seen from the tracked process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The process read these bytes from the socket.
    Ingress,
    /// The process wrote these bytes to the socket.
    Egress,
}

impl Direction {
    pub fn flip(self) -> Self {
        match self {
            Direction::Ingress => Direction::Egress,
            Direction::Egress => Direction::Ingress,
        }
    }
}

/// What a session counts, in the kinds the agent exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    /// A message that could not be parsed.
    ParseError,
    /// Framing lost, then found again.
    Desync,
    /// A request or response with no partner.
    Unmatched,
    /// A message recognised and deliberately not parsed.
    Skipped,
}

/// Entries of [`Counts`].
pub const MAX_COUNTS: usize = 8;
/// A session's totals so far: (kind, reason, total), padded with [`NO_COUNT`]
/// (fixed size: asked for after every chunk, never allocated).
pub type Counts = [(Count, &'static str, u64); MAX_COUNTS];
pub const NO_COUNT: (Count, &str, u64) = (Count::ParseError, "", 0);

/// One connection's parser: the bytes of each syscall in, messages out.
/// Implementations do no I/O and read no clock; the connection table drives
/// every protocol through this one shape.
pub trait Session {
    /// What it produces: an exchange, a call, a messaging event.
    type Message;
    /// The `protocol` label of what it counts.
    const PROTOCOL: &'static str;
    fn on_chunk(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Self::Message>);
    /// The connection closed: what the close completes.
    fn on_close(&mut self, out: &mut Vec<Self::Message>);
    /// Nothing moved for a while: what that completes (a response framed by
    /// its end of traffic).
    fn on_idle(&mut self, _out: &mut Vec<Self::Message>) {}
    /// Which end of the connection the tracked process is.
    fn side(&self) -> Side;
    /// Totals so far, by kind and reason.
    fn counts(&self) -> Counts;
}

/// The bytes of one syscall on a connection. The kernel captures only a
/// prefix: `data` holds the first `data.len()` of the `total` bytes moved.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    pub direction: Direction,
    pub data: &'a [u8],
    pub total: usize,
    /// CLOCK_MONOTONIC nanoseconds at syscall entry and exit.
    pub ts_enter: u64,
    pub ts_exit: u64,
}

impl<'a> Chunk<'a> {
    /// Bytes moved but not captured.
    pub fn missing(&self) -> usize {
        self.total.saturating_sub(self.data.len())
    }
}

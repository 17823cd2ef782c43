//! Protocol parsers: pure code, bytes in and structured messages out. Nothing
//! here does I/O, reads clocks or touches global state, so every parser is
//! unit-tested on split, truncated, interleaved and garbage input.
pub mod amqp;
pub(crate) mod bounded;
pub mod http1;
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

//! Which protocol a connection speaks, from its first captured bytes, by
//! content and never by port; chunks too short to tell are held.
use crate::capture::{Role, Tuple};
use crate::protocols::{amqp, http1, http2, mysql, postgres, Chunk, Direction, Side};

use super::Parser;

/// Chunks a connection may show before we give up recognising its protocol
/// (a socket watched mid-stream may start in the middle of a body).
pub(super) const DETECT_ATTEMPTS: u8 = 4;
/// A request trickled in tiny pieces (slowloris, byte-wise writers) is held
/// while it can still become a request line, up to these bounds.
pub(super) const HOLD_BYTES: usize = 512;
pub(super) const HOLD_CHUNKS: usize = 64;

/// A chunk kept while the protocol is undecided, replayed once it is.
#[derive(Debug)]
pub struct HeldChunk {
    direction: Direction,
    data: Vec<u8>,
    ts_enter: u64,
    ts_exit: u64,
}

impl HeldChunk {
    pub(super) fn of(chunk: &Chunk<'_>) -> Self {
        Self { direction: chunk.direction, data: chunk.data.to_vec(), ts_enter: chunk.ts_enter, ts_exit: chunk.ts_exit }
    }

    pub(super) fn direction(&self) -> Direction {
        self.direction
    }

    pub(super) fn data(&self) -> &[u8] {
        &self.data
    }

    pub(super) fn as_chunk(&self) -> Chunk<'_> {
        Chunk {
            direction: self.direction,
            data: &self.data,
            total: self.data.len(),
            ts_enter: self.ts_enter,
            ts_exit: self.ts_exit,
        }
    }
}

/// Does `data` start with a TLS record header (RFC 8446 5.1: content type
/// change_cipher_spec, alert, handshake or application_data; legacy version
/// 3.1-3.4; a length within the record limit)? Ciphertext of a connection whose
/// plaintext comes (or will come) from the TLS uprobes, or that we cannot
/// read: no protocol to detect, and no detection attempt spent on it.
pub(super) fn looks_like_tls_record(data: &[u8]) -> bool {
    match data {
        [20..=23, 3, 1..=4, hi, lo, ..] => (1..=(1 << 14) + 2048).contains(&u16::from_be_bytes([*hi, *lo])),
        _ => false,
    }
}

/// The parser for a connection whose first bytes are `chunk`; the side
/// follows from who sent what.
pub(super) fn detect(chunk: &Chunk<'_>, conn_role: Role, tuple: &Tuple) -> Option<Parser> {
    let data = chunk.data;
    let we_sent = chunk.direction == Direction::Egress;
    let side = |client: bool| if client { Side::Client } else { Side::Server };
    if http2::frame::looks_like_preface(data) {
        // Prior knowledge (h2c): whoever sends the preface is the client.
        return Some(Parser::Http2(http2::Http2Session::new(chunk.direction, true)));
    }
    if http1::looks_like_request(data) {
        // Whoever sends the request is the client.
        return Some(Parser::Http(http1::Http1Session::new(chunk.direction)));
    }
    if postgres::looks_like_postgres(data, chunk.direction) {
        // Frontend messages come from the client.
        return Some(Parser::Postgres(postgres::PgSession::new(side(we_sent))));
    }
    if mysql::looks_like_mysql_server_greeting(data) {
        // The server speaks first.
        return Some(Parser::MySql(mysql::MySqlSession::new(side(!we_sent))));
    }
    if mysql::looks_like_mysql_command(data) {
        return Some(Parser::MySql(mysql::MySqlSession::new(side(we_sent))));
    }
    if amqp::looks_like_amqp(data, chunk.direction) {
        // The client opens with the protocol header. Mid-stream (a socket
        // older than the agent) the kernel's accept/connect role decides, and
        // without it the broker is the one on AMQP's port.
        let client = if data.starts_with(b"AMQP") {
            we_sent
        } else {
            match conn_role {
                Role::Client => true,
                Role::Server => false,
                Role::Unknown => !matches!(tuple.local.port(), 5671 | 5672),
            }
        };
        return Some(Parser::Amqp(amqp::AmqpConnection::new(side(client))));
    }
    if let Some(request) = http2::frame::looks_like_frames(data) {
        // HTTP/2 mid-stream (older than the agent): a HEADERS frame whose
        // first field is a request's pseudo-header travels with requests.
        let requests = if request { chunk.direction } else { chunk.direction.flip() };
        return Some(Parser::Http2(http2::Http2Session::new(requests, false)));
    }
    None
}

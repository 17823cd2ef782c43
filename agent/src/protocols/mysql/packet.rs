//! MySQL packet readers and detection heuristics.

use super::{
    COM_CHANGE_USER, COM_FIELD_LIST, COM_INIT_DB, COM_QUERY, COM_QUIT, COM_STMT_CLOSE, COM_STMT_EXECUTE,
    COM_STMT_FETCH, COM_STMT_PREPARE, COM_STMT_SEND_LONG_DATA,
};
use crate::protocols::sql::looks_like_sql_text;

// ---------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------

pub(super) fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(super) fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Length-encoded integer at `b[at..]`: (value, bytes used).
pub(super) fn lenenc(b: &[u8], at: usize) -> Option<(u64, usize)> {
    let first = *b.get(at)?;
    let n = match first {
        0..=0xfa => return Some((first as u64, 1)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None, // 0xfb NULL, 0xff error
    };
    let bytes = b.get(at + 1..at + 1 + n)?;
    let mut v = 0u64;
    for (i, &x) in bytes.iter().enumerate() {
        v |= (x as u64) << (8 * i);
    }
    Some((v, 1 + n))
}

pub(super) fn packet_len(h: &[u8]) -> usize {
    h[0] as usize | (h[1] as usize) << 8 | (h[2] as usize) << 16
}

pub(super) fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(p) => (&b[..p], &b[p + 1..]),
        None => (b, &[]),
    }
}

pub(super) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// OK packet (0x00 or 0xfe header): (affected rows, status flags).
pub(super) fn parse_ok(b: &[u8]) -> Option<(u64, u16)> {
    let (rows, n1) = lenenc(b, 1)?;
    let (_, n2) = lenenc(b, 1 + n1)?;
    let status = le16(b, 1 + n1 + n2).unwrap_or(0);
    Some((rows, status))
}

/// Status flags of an EOF packet (0xfe, warnings u16, status u16) or of an
/// OK packet with the 0xfe header.
pub(super) fn terminator_status(b: &[u8], len: usize) -> u16 {
    if len == 5 {
        le16(b, 3).unwrap_or(0)
    } else {
        parse_ok(b).map_or(0, |(_, s)| s)
    }
}

/// EOF / OK-as-EOF packet: 0xfe header and shorter than 9 bytes.
pub(super) fn is_eof(b: &[u8], len: usize) -> bool {
    b.first() == Some(&0xfe) && len < 9
}

/// ERR packet: (errno, SQLSTATE if present, message).
pub(super) fn parse_err(b: &[u8]) -> (u16, Option<String>, String) {
    let errno = le16(b, 1).unwrap_or(0);
    let rest = b.get(3..).unwrap_or(&[]);
    if rest.first() == Some(&b'#') && rest.len() >= 6 {
        (errno, Some(text(&rest[1..6])), text(&rest[6..]))
    } else {
        (errno, None, text(rest))
    }
}

pub(super) fn plausible_command(data: &[u8]) -> bool {
    if data.len() < 5 || data[3] != 0 {
        return false;
    }
    let len = packet_len(data);
    if len == 0 {
        return false;
    }
    match data[4] {
        COM_QUERY | COM_STMT_PREPARE => {
            let body = &data[5..data.len().min(4 + len)];
            // Skip the query-attributes prefix (no parameters, one set).
            let sql = if body.starts_with(&[0, 1]) { &body[2..] } else { body };
            looks_like_sql_text(sql)
        }
        COM_STMT_EXECUTE => len >= 10 && (data.len() < 14 || le32(data, 10) == Some(1)) && data.get(9) <= Some(&0x0f),
        COM_STMT_CLOSE | 0x1a => len == 5,
        COM_INIT_DB => (2..=256).contains(&len),
        0x0e | COM_QUIT | 0x1f => len == 1,
        COM_STMT_SEND_LONG_DATA | COM_STMT_FETCH | 0x1b | COM_CHANGE_USER | COM_FIELD_LIST => len < 1 << 20,
        _ => false,
    }
}

pub(super) fn looks_like_greeting_body(b: &[u8]) -> bool {
    if b.first() != Some(&10) {
        return false;
    }
    let v = &b[1..b.len().min(65)];
    match v.iter().position(|&c| c == 0) {
        Some(p) => p >= 3 && v[0].is_ascii_digit() && v[..p].iter().all(|c| c.is_ascii_graphic()),
        None => false,
    }
}

// ---------------------------------------------------------------------------
// Detection
// ---------------------------------------------------------------------------

/// Whether `first` (the first bytes a client reads) is a MySQL/MariaDB
/// server greeting: protocol 10 and a printable version string.
pub fn looks_like_mysql_server_greeting(first: &[u8]) -> bool {
    if first.len() < 8 || first[3] != 0 {
        return false;
    }
    let len = packet_len(first);
    (30..=1024).contains(&len) && looks_like_greeting_body(&first[4..])
}

/// Whether `first` looks like a command packet (for connections already
/// open when we start watching): sequence 0 and COM_QUERY /
/// COM_STMT_PREPARE with SQL-looking text, or a sane COM_STMT_EXECUTE.
pub fn looks_like_mysql_command(first: &[u8]) -> bool {
    first.len() >= 5 && matches!(first[4], COM_QUERY | COM_STMT_PREPARE | COM_STMT_EXECUTE) && plausible_command(first)
}

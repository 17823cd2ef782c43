//! HPACK (RFC 7541) header-block decoding for one direction of a connection,
//! with its dynamic table. Written for an observer, not an endpoint: a
//! reference to an entry we never saw (a connection older than the agent, a
//! header block the capture missed) names an unknown header instead of
//! failing the block, so the rest of it still decodes; what could not be
//! named is counted by the caller. Table size and string lengths are bounded.
use std::collections::VecDeque;

use super::huffman;

/// The dynamic table size every connection starts with (SETTINGS_HEADER_TABLE_SIZE).
pub const DEFAULT_TABLE_SIZE: usize = 4096;
/// Largest dynamic table kept, whatever a size update asks for: entries
/// beyond it are evicted early and later references to them are unknown.
pub const MAX_TABLE_SIZE: usize = 64 * 1024;
/// Longest header name or value decoded; longer strings are cut.
pub const MAX_STRING: usize = 8 * 1024;

/// RFC 7541 Appendix A.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("hpack: header block ends inside a representation")]
    Truncated,
    #[error("hpack: integer longer than 32 bits")]
    IntegerOverflow,
    #[error("hpack: index 0")]
    ZeroIndex,
    #[error(transparent)]
    Huffman(#[from] huffman::HuffmanError),
}

/// What a decoded block said, beside its headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// References to dynamic-table entries this decoder never saw.
    pub unknown: u32,
}

/// A field as the table holds it: name and value.
type Field<'a> = (&'a [u8], &'a [u8]);

/// The decoder of one direction: its dynamic table, newest entry first.
#[derive(Clone, Debug)]
pub struct Decoder {
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max_size: usize,
    /// Entries were inserted that we could not see in full (unknown name):
    /// later references may be named wrongly-sized, not wrongly-valued.
    pub uncertain: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Self { table: VecDeque::new(), size: 0, max_size: DEFAULT_TABLE_SIZE, uncertain: false }
    }
}

/// The name a reference to an entry we never saw gets.
pub const UNKNOWN_NAME: &[u8] = b"";

impl Decoder {
    /// Entries in the dynamic table.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Decodes one whole header block, calling `on_header(name, value)` per
    /// field. An error stops the block; fields already passed stand, and
    /// the table may then miss the block's later insertions.
    pub fn decode(
        &mut self,
        mut block: &[u8],
        mut on_header: impl FnMut(&[u8], &[u8]),
    ) -> Result<BlockStats, HpackError> {
        let mut stats = BlockStats::default();
        let (mut name_buf, mut value_buf) = (Vec::new(), Vec::new());
        while let Some(&first) = block.first() {
            if first & 0x80 != 0 {
                // Indexed field.
                let index = integer(&mut block, 7)?;
                match self.entry(index)? {
                    Some((n, v)) => on_header(n, v),
                    None => {
                        stats.unknown += 1;
                        on_header(UNKNOWN_NAME, b"");
                    }
                }
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update.
                let size = integer(&mut block, 5)? as usize;
                self.max_size = size.min(MAX_TABLE_SIZE);
                self.evict(0);
            } else {
                // Literal: with incremental indexing (01), without (0000) or never indexed (0001).
                let (prefix, index_it) = if first & 0xc0 == 0x40 { (6, true) } else { (4, false) };
                let name_index = integer(&mut block, prefix)?;
                let mut name_known = true;
                name_buf.clear();
                if name_index == 0 {
                    string(&mut block, &mut name_buf)?;
                } else {
                    match self.entry(name_index)? {
                        Some((n, _)) => name_buf.extend_from_slice(n),
                        None => {
                            stats.unknown += 1;
                            name_known = false;
                        }
                    }
                }
                value_buf.clear();
                string(&mut block, &mut value_buf)?;
                on_header(if name_known { &name_buf } else { UNKNOWN_NAME }, &value_buf);
                if index_it {
                    if !name_known {
                        self.uncertain = true;
                    }
                    self.insert(name_buf.clone(), value_buf.clone());
                }
            }
        }
        Ok(stats)
    }

    /// Entry `index` (1-based, static then dynamic); None: a dynamic entry
    /// we do not have.
    fn entry(&self, index: u32) -> Result<Option<Field<'_>>, HpackError> {
        let i = index as usize;
        match i {
            0 => Err(HpackError::ZeroIndex),
            1..=61 => {
                let (n, v) = STATIC[i - 1];
                Ok(Some((n.as_bytes(), v.as_bytes())))
            }
            _ => Ok(self.table.get(i - 62).map(|(n, v)| (n.as_slice(), v.as_slice()))),
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = 32 + name.len() + value.len();
        self.evict(size);
        if size <= self.max_size {
            self.size += size;
            self.table.push_front((name, value));
        }
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            let Some((n, v)) = self.table.pop_back() else {
                self.size = 0;
                return;
            };
            self.size -= 32 + n.len() + v.len();
        }
    }
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 5.1), consumed.
fn integer(buf: &mut &[u8], n: u8) -> Result<u32, HpackError> {
    let (&first, mut rest) = buf.split_first().ok_or(HpackError::Truncated)?;
    let max = (1u32 << n) - 1;
    let mut value = u32::from(first) & max;
    if value == max {
        let mut shift = 0u32;
        loop {
            let (&b, r) = rest.split_first().ok_or(HpackError::Truncated)?;
            rest = r;
            if shift > 28 {
                return Err(HpackError::IntegerOverflow);
            }
            value = value.checked_add(u32::from(b & 0x7f) << shift).ok_or(HpackError::IntegerOverflow)?;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    *buf = rest;
    Ok(value)
}

/// A string literal (RFC 7541 5.2), consumed, appended to `out` (cut at
/// [`MAX_STRING`]).
fn string(buf: &mut &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let huffman = buf.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(buf, 7)? as usize;
    if buf.len() < len {
        return Err(HpackError::Truncated);
    }
    let (raw, rest) = buf.split_at(len);
    *buf = rest;
    if huffman {
        match huffman::decode(raw, MAX_STRING, out) {
            Err(huffman::HuffmanError::TooLong) => Ok(()),
            r => r.map_err(HpackError::from),
        }
    } else {
        out.extend_from_slice(&raw[..len.min(MAX_STRING)]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(d: &mut Decoder, block: &[u8]) -> (Vec<(String, String)>, BlockStats) {
        let mut out = Vec::new();
        let stats = d
            .decode(block, |n, v| {
                out.push((String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned()))
            })
            .unwrap();
        (out, stats)
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn rfc_7541_c3_requests_without_huffman_share_one_table() {
        let mut d = Decoder::default();
        let first = b"\x82\x86\x84\x41\x0fwww.example.com";
        let (h, _) = decode_all(&mut d, first);
        assert_eq!(
            h,
            pairs(&[(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")])
        );
        assert_eq!(d.size, 57);
        let second = b"\x82\x86\x84\xbe\x58\x08no-cache";
        let (h, _) = decode_all(&mut d, second);
        assert_eq!(h[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(h[4], ("cache-control".into(), "no-cache".into()));
        assert_eq!(d.size, 110);
    }

    #[test]
    fn rfc_7541_c4_huffman_request() {
        let mut d = Decoder::default();
        let block =
            [0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff];
        let (h, _) = decode_all(&mut d, &block);
        assert_eq!(h[3], (":authority".into(), "www.example.com".into()));
    }

    #[test]
    fn rfc_7541_c5_responses_evict_from_a_256_byte_table() {
        let mut d = Decoder { max_size: 256, ..Decoder::default() };
        let r1 = b"\x48\x03302\x58\x07private\x61\x1dMon, 21 Oct 2013 20:13:21 GMT\x6e\x17https://www.example.com";
        decode_all(&mut d, r1);
        assert_eq!(d.size, 222);
        let r2 = b"\x48\x03307\xc1\xc0\xbf";
        let (h, _) = decode_all(&mut d, r2);
        assert_eq!(h[0], (":status".into(), "307".into()));
        assert_eq!(h[3], ("location".into(), "https://www.example.com".into()));
        assert_eq!(d.size, 222);
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn references_to_entries_never_seen_are_counted_and_the_rest_decodes() {
        // A connection older than the agent: index 62 and a literal whose
        // name is index 63 are unknown; :path /a still decodes.
        let mut d = Decoder::default();
        let block = b"\xbe\x7f\x00\x01x\x44\x02/a";
        let (h, stats) = decode_all(&mut d, block);
        assert_eq!(stats.unknown, 2);
        assert_eq!(h[2], (":path".into(), "/a".into()));
        assert!(d.uncertain);
        assert_eq!(d.len(), 2, "insertions keep the indices aligned");
    }

    #[test]
    fn malformed_blocks_are_errors_not_panics() {
        let mut d = Decoder::default();
        assert_eq!(d.decode(b"\x80", |_, _| {}), Err(HpackError::ZeroIndex));
        assert_eq!(d.decode(b"\xff\xff\xff\xff\xff\xff\x01", |_, _| {}), Err(HpackError::IntegerOverflow));
        assert_eq!(d.decode(b"\x40\x05ab", |_, _| {}), Err(HpackError::Truncated));
        // A size update beyond the bound is clamped.
        d.decode(b"\x3f\xe1\xff\x1f", |_, _| {}).unwrap();
        assert_eq!(d.max_size, MAX_TABLE_SIZE);
    }
}

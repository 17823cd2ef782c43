//! HTTP/1.x message heads: request and response lines plus the few headers
//! periscope needs. Complete heads go through httparse; a head cut short by
//! the capture limit is read leniently line by line.
use std::str;

use crate::model::TraceParent;

/// Longest head periscope buffers while waiting for its end.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 96;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    pub host: Option<String>,
    /// W3C context, parsed here once (an invalid value is no context).
    pub traceparent: Option<TraceParent>,
    pub tracestate: Option<String>,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub connection_close: bool,
    pub connection_keep_alive: bool,
    pub upgrade: bool,
    /// `Upgrade: h2c` (HTTP/2 over cleartext, RFC 7540 section 3.2).
    pub upgrade_h2c: bool,
    pub user_agent: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The request target as sent: origin form (`/a?b`) or absolute form.
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1; 2 for an HTTP/2
    /// stream (`http2::VERSION`).
    pub version: u8,
    pub headers: Headers,
    /// The head did not fit in the captured bytes: headers may be missing.
    pub truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub version: u8,
    pub headers: Headers,
    pub truncated: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// A whole head and its length in bytes (including the blank line).
    Complete(T, usize),
    /// Valid so far; more bytes are needed.
    Partial,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("not an HTTP/1.x head: {0}")]
    Invalid(&'static str),
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE"];

/// Cheap check on the first bytes of a message: does it start like a request?
pub fn looks_like_request(buf: &[u8]) -> bool {
    METHODS.iter().any(|m| buf.len() > m.len() && buf.starts_with(m.as_bytes()) && buf[m.len()] == b' ')
        && (buf.len() < 16 || buf[..buf.len().min(8192)].windows(6).any(|w| w == b"HTTP/1"))
}

/// Could more bytes still make this the start of a request? True for a
/// prefix of a method token, or a method and target whose line has not ended.
pub fn may_become_request(buf: &[u8]) -> bool {
    !buf.is_empty()
        && !buf.contains(&b'\n')
        && METHODS.iter().any(|m| {
            let token = m.len() + 1;
            if buf.len() <= token {
                m.as_bytes().iter().chain(b" ").zip(buf).all(|(a, b)| a == b)
            } else {
                buf.starts_with(m.as_bytes()) && buf[m.len()] == b' '
            }
        })
}

/// Does it start like a response status line?
pub fn looks_like_response(buf: &[u8]) -> bool {
    buf.len() >= 12
        && (buf.starts_with(b"HTTP/1.1 ") || buf.starts_with(b"HTTP/1.0 "))
        && buf[9..12].iter().all(u8::is_ascii_digit)
}

fn header_value(v: &[u8]) -> String {
    String::from_utf8_lossy(v).trim().to_owned()
}

fn absorb_header(h: &mut Headers, name: &str, value: &[u8]) {
    if name.eq_ignore_ascii_case("host") {
        h.host = Some(header_value(value));
    } else if name.eq_ignore_ascii_case("traceparent") {
        h.traceparent = h.traceparent.or_else(|| TraceParent::parse(&header_value(value)));
    } else if name.eq_ignore_ascii_case("tracestate") {
        h.tracestate = Some(header_value(value));
    } else if name.eq_ignore_ascii_case("content-length") {
        h.content_length = str::from_utf8(value).ok().and_then(|s| s.trim().parse().ok());
    } else if name.eq_ignore_ascii_case("transfer-encoding") {
        h.chunked = header_value(value).to_ascii_lowercase().ends_with("chunked");
    } else if name.eq_ignore_ascii_case("connection") {
        let v = header_value(value).to_ascii_lowercase();
        h.connection_close |= v.split(',').any(|t| t.trim() == "close");
        h.connection_keep_alive |= v.split(',').any(|t| t.trim() == "keep-alive");
        h.upgrade |= v.split(',').any(|t| t.trim() == "upgrade");
    } else if name.eq_ignore_ascii_case("upgrade") {
        h.upgrade_h2c |= header_value(value).split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c"));
    } else if name.eq_ignore_ascii_case("user-agent") {
        h.user_agent = Some(header_value(value));
    }
}

fn map_err(e: httparse::Error) -> HeadError {
    HeadError::Invalid(match e {
        httparse::Error::HeaderName => "bad header name",
        httparse::Error::HeaderValue => "bad header value",
        httparse::Error::NewLine => "bad line ending",
        httparse::Error::Status => "bad status",
        httparse::Error::Token => "bad token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "bad version",
    })
}

pub fn parse_request(buf: &[u8]) -> Result<Parsed<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf).map_err(map_err)? {
        httparse::Status::Partial => Ok(Parsed::Partial),
        httparse::Status::Complete(len) => {
            let mut h = Headers::default();
            for header in req.headers.iter() {
                absorb_header(&mut h, header.name, header.value);
            }
            Ok(Parsed::Complete(
                RequestHead {
                    method: req.method.unwrap_or_default().to_owned(),
                    target: req.path.unwrap_or_default().to_owned(),
                    version: req.version.unwrap_or(1),
                    headers: h,
                    truncated: false,
                },
                len,
            ))
        }
    }
}

pub fn parse_response(buf: &[u8]) -> Result<Parsed<ResponseHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf).map_err(map_err)? {
        httparse::Status::Partial => Ok(Parsed::Partial),
        httparse::Status::Complete(len) => {
            let mut h = Headers::default();
            for header in resp.headers.iter() {
                absorb_header(&mut h, header.name, header.value);
            }
            Ok(Parsed::Complete(
                ResponseHead {
                    status: resp.code.unwrap_or(0),
                    version: resp.version.unwrap_or(1),
                    headers: h,
                    truncated: false,
                },
                len,
            ))
        }
    }
}

/// `name: value` pairs of a head's complete header lines.
type HeaderLines<'a> = Box<dyn Iterator<Item = (&'a str, &'a [u8])> + 'a>;

/// The complete lines of a head that was cut short: first line plus every
/// whole `name: value` line before the cut.
fn lenient_lines(buf: &[u8]) -> Option<(&[u8], HeaderLines<'_>)> {
    let mut lines = buf.split(|&b| b == b'\n');
    let first = lines.next()?;
    if first.len() == buf.len() {
        return None; // not even the first line is complete
    }
    let complete = buf.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let body = &buf[first.len() + 1..=complete.max(first.len())];
    let headers = body.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        let name = str::from_utf8(&line[..colon]).ok()?;
        Some((name.trim(), &line[colon + 1..]))
    });
    Some((first.strip_suffix(b"\r").unwrap_or(first), Box::new(headers)))
}

/// Reads a request head whose end was never captured.
pub fn parse_truncated_request(buf: &[u8]) -> Option<RequestHead> {
    let (first, headers) = lenient_lines(buf)?;
    let line = str::from_utf8(first).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !METHODS.contains(&method) || !version.starts_with("HTTP/1.") {
        return None;
    }
    let mut h = Headers::default();
    headers.for_each(|(n, v)| absorb_header(&mut h, n, v));
    Some(RequestHead {
        method: method.to_owned(),
        target: target.to_owned(),
        version: u8::from(version.ends_with('1')),
        headers: h,
        truncated: true,
    })
}

/// Reads a response head whose end was never captured.
pub fn parse_truncated_response(buf: &[u8]) -> Option<ResponseHead> {
    if !looks_like_response(buf) {
        return None;
    }
    let (first, headers) = lenient_lines(buf)?;
    let status = str::from_utf8(first.get(9..12)?).ok()?.parse().ok()?;
    let mut h = Headers::default();
    headers.for_each(|(n, v)| absorb_header(&mut h, n, v));
    Some(ResponseHead { status, version: u8::from(first[7] == b'1'), headers: h, truncated: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_with_headers_of_interest() {
        let raw = b"POST /users/7?x=1 HTTP/1.1\r\nHost: api:8080\r\nContent-Length: 5\r\n\
traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\nhello";
        let Parsed::Complete(head, len) = parse_request(raw).unwrap() else { panic!() };
        assert_eq!(len, raw.len() - 5);
        assert_eq!(head.method, "POST");
        assert_eq!(head.target, "/users/7?x=1");
        assert_eq!(head.headers.host.as_deref(), Some("api:8080"));
        assert_eq!(head.headers.content_length, Some(5));
        assert!(head.headers.traceparent.unwrap().to_string().starts_with("00-0af7"));
    }

    #[test]
    fn partial_and_invalid_heads() {
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: a").unwrap(), Parsed::Partial);
        assert!(parse_request(b"\x16\x03\x01\x02\x00\x01").is_err());
        assert!(parse_response(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
    }

    #[test]
    fn response_framing_headers() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n";
        let Parsed::Complete(head, _) = parse_response(raw).unwrap() else { panic!() };
        assert_eq!(head.status, 200);
        assert!(head.headers.chunked);
        assert!(head.headers.connection_close);
    }

    #[test]
    fn truncated_heads_keep_what_is_visible() {
        let raw = b"GET /big HTTP/1.1\r\nHost: h\r\nX-Long: aaaaaaaaaaaaaa";
        let head = parse_truncated_request(raw).unwrap();
        assert_eq!((head.method.as_str(), head.target.as_str()), ("GET", "/big"));
        assert_eq!(head.headers.host.as_deref(), Some("h"));
        assert!(head.truncated);
        assert!(parse_truncated_request(b"GET /only-part-of-the-first-li").is_none());
        let resp = parse_truncated_response(b"HTTP/1.1 404 Not Found\r\nContent-Le").unwrap();
        assert_eq!(resp.status, 404);
        assert_eq!(resp.headers.content_length, None);
    }

    #[test]
    fn detection() {
        assert!(looks_like_request(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_request(b"DELETE /x"));
        assert!(!looks_like_request(b"GETX / HTTP/1.1"));
        assert!(!looks_like_request(b"\x00\x00\x00\x08\x04\xd2\x16\x2f"));
        assert!(!looks_like_request(b"GET something that is long but never says the version"));
        assert!(looks_like_response(b"HTTP/1.1 204 No Content\r\n"));
        assert!(may_become_request(b"G") && may_become_request(b"POS") && may_become_request(b"GET /a/b"));
        assert!(!may_become_request(b"GX") && !may_become_request(b"\x16\x03") && !may_become_request(b""));
        assert!(!looks_like_response(b"HTTP/2 200"));
    }
}

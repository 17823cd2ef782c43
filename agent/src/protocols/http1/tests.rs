use super::*;
use Direction::{Egress, Ingress};

/// A syscall at time `t` (enter) .. `t + 1` (exit) that moved `total` bytes
/// of which `data` was captured.
fn c(direction: Direction, data: &[u8], total: usize, t: u64) -> Chunk<'_> {
    Chunk { direction, data, total, ts_enter: t, ts_exit: t + 1 }
}

fn full(direction: Direction, data: &[u8], t: u64) -> Chunk<'_> {
    c(direction, data, data.len(), t)
}

fn server() -> (Http1Session, Vec<Exchange>) {
    (Http1Session::new(Ingress), Vec::new())
}

const OK_HELLO: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

#[test]
fn keep_alive_pairs_in_order() {
    let (mut s, mut out) = server();
    s.on_chunk(&full(Ingress, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", 10), &mut out);
    s.on_chunk(&full(Egress, OK_HELLO, 20), &mut out);
    s.on_chunk(&full(Ingress, b"POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 30), &mut out);
    s.on_chunk(&full(Egress, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 40), &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!((out[0].request.target.as_str(), out[0].response.status), ("/a", 200));
    assert_eq!((out[0].request_start_exit, out[0].response_end), (11, 21));
    assert_eq!((out[1].request.method.as_str(), out[1].response.status), ("POST", 201));
    assert_eq!(out[1].request_body_bytes, 3);
    assert_eq!(out[0].response_body_bytes, 5);
    assert_eq!(s.pending(), 0);
    assert_eq!(s.stats(), &Http1Stats::default());
}

#[test]
fn request_split_across_many_reads() {
    let (mut s, mut out) = server();
    let req = b"PUT /items/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody";
    for (i, piece) in req.chunks(3).enumerate() {
        s.on_chunk(&full(Ingress, piece, 100 + i as u64 * 10), &mut out);
    }
    s.on_chunk(&full(Egress, OK_HELLO, 1000), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request_start_enter, 100, "starts at the first piece");
    assert_eq!(out[0].request_end, 100 + ((req.len() as u64 - 1) / 3) * 10 + 1, "ends at the last piece");
    assert_eq!(out[0].request_body_bytes, 4);
}

#[test]
fn pipelined_requests_in_one_read() {
    let (mut s, mut out) = server();
    let reqs = b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n";
    s.on_chunk(&full(Ingress, reqs, 10), &mut out);
    assert_eq!(s.pending(), 3);
    let two = [OK_HELLO, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"].concat();
    s.on_chunk(&full(Egress, &two, 20), &mut out);
    s.on_chunk(&full(Egress, b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nno", 30), &mut out);
    let got: Vec<_> = out.iter().map(|e| (e.request.target.as_str(), e.response.status)).collect();
    assert_eq!(got, [("/1", 200), ("/2", 404), ("/3", 500)]);
    assert_eq!(out[2].response_end, 31);
}

#[test]
fn chunked_response_split_anywhere() {
    let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n";
    for split in 1..resp.len() {
        let (mut s, mut out) = server();
        s.on_chunk(&full(Ingress, b"GET / HTTP/1.1\r\n\r\n", 1), &mut out);
        s.on_chunk(&full(Egress, &resp[..split], 10), &mut out);
        assert!(out.is_empty(), "ended early at split {split}");
        s.on_chunk(&full(Egress, &resp[split..], 20), &mut out);
        assert_eq!(out.len(), 1, "split {split}");
        assert_eq!(out[0].response_end, 21);
    }
}

#[test]
fn head_204_304_and_informational_have_no_body() {
    let (mut s, mut out) = server();
    s.on_chunk(&full(Ingress, b"HEAD /h HTTP/1.1\r\n\r\n", 1), &mut out);
    s.on_chunk(&full(Egress, b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n", 2), &mut out);
    s.on_chunk(&full(Ingress, b"DELETE /d HTTP/1.1\r\n\r\n", 3), &mut out);
    s.on_chunk(&full(Egress, b"HTTP/1.1 204 No Content\r\n\r\n", 4), &mut out);
    s.on_chunk(&full(Ingress, b"GET /c HTTP/1.1\r\n\r\n", 5), &mut out);
    s.on_chunk(&full(Egress, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", 6), &mut out);
    s.on_chunk(&full(Ingress, b"POST /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", 7), &mut out);
    s.on_chunk(&full(Egress, b"HTTP/1.1 100 Continue\r\n\r\n", 8), &mut out);
    s.on_chunk(&full(Ingress, b"hi", 9), &mut out);
    s.on_chunk(&full(Egress, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 10), &mut out);
    let got: Vec<_> = out.iter().map(|e| (e.request.method.as_str(), e.response.status)).collect();
    assert_eq!(got, [("HEAD", 200), ("DELETE", 204), ("GET", 304), ("POST", 201)]);
    assert_eq!(out[3].request_end, 10, "the body after 100 Continue belongs to the request");
}

#[test]
fn response_framed_by_close() {
    let (mut s, mut out) = server();
    s.on_chunk(&full(Ingress, b"GET / HTTP/1.0\r\n\r\n", 1), &mut out);
    s.on_chunk(&full(Egress, b"HTTP/1.0 200 OK\r\n\r\nsome", 5), &mut out);
    s.on_chunk(&full(Egress, b" more body", 7), &mut out);
    assert!(out.is_empty());
    s.on_close(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].response_end, 8);
    assert_eq!(out[0].response_body_bytes, 14);
}

#[test]
fn head_longer_than_capture_ends_at_next_request() {
    let (mut s, mut out) = server();
    // 600 bytes read, 64 captured: the end of the head is not visible.
    let captured = b"GET /long HTTP/1.1\r\nHost: big\r\nCookie: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    s.on_chunk(&c(Ingress, captured, 600, 10), &mut out);
    s.on_chunk(&c(Egress, b"HTTP/1.1 200 OK\r\nSet-Cookie: zzzzzzzzzzzz", 900, 20), &mut out);
    assert!(out.is_empty());
    s.on_chunk(&full(Ingress, b"GET /next HTTP/1.1\r\n\r\n", 30), &mut out);
    assert_eq!(out.len(), 1);
    assert!(out[0].request.truncated && out[0].response.truncated);
    assert_eq!(out[0].request.headers.host.as_deref(), Some("big"));
    assert_eq!(out[0].response_end, 21);
    s.on_chunk(&full(Egress, OK_HELLO, 40), &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].request.target, "/next");
}

#[test]
fn body_larger_than_capture_is_skipped_by_length() {
    let (mut s, mut out) = server();
    s.on_chunk(&full(Ingress, b"GET /big HTTP/1.1\r\n\r\n", 1), &mut out);
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
    let mut captured = head.to_vec();
    captured.extend_from_slice(&[b'x'; 100]);
    s.on_chunk(&c(Egress, &captured, head.len() + 60_000, 5), &mut out);
    assert!(out.is_empty());
    s.on_chunk(&c(Egress, &[b'x'; 512], 40_000, 9), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].response_body_bytes, 100_000);
    assert_eq!(out[0].response_end, 10);
    assert_eq!(s.stats().desyncs, 0);
}

#[test]
fn garbage_is_counted_and_recovered_from() {
    let (mut s, mut out) = server();
    s.on_chunk(&full(Ingress, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 1), &mut out);
    s.on_chunk(&full(Egress, b"\x16\x03\x03\x00\x5d\x02", 2), &mut out);
    assert_eq!(s.stats().parse_errors, 2);
    s.on_chunk(&full(Ingress, b"GET /ok HTTP/1.1\r\n\r\n", 3), &mut out);
    s.on_chunk(&full(Egress, OK_HELLO, 4), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.target, "/ok");
}

#[test]
fn client_side_and_unanswered_requests() {
    let mut s = Http1Session::new(Egress);
    let mut out = Vec::new();
    s.on_chunk(&full(Egress, b"GET /x HTTP/1.1\r\nHost: svc\r\n\r\n", 100), &mut out);
    s.on_chunk(&full(Ingress, OK_HELLO, 200), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request_start_enter, 100);
    assert_eq!(out[0].response_end, 201);
    s.on_chunk(&full(Egress, b"GET /y HTTP/1.1\r\n\r\n", 300), &mut out);
    s.on_close(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(s.stats().unmatched, 1);
}

#[test]
fn upgrade_stops_parsing() {
    let (mut s, mut out) = server();
    s.on_chunk(&full(Ingress, b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 1), &mut out);
    s.on_chunk(&full(Egress, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", 2), &mut out);
    assert_eq!(out.len(), 1);
    assert!(s.upgraded());
    s.on_chunk(&full(Ingress, b"\x81\x85garbage", 3), &mut out);
    assert_eq!(s.stats().parse_errors, 0);
}

#[test]
fn random_input_never_panics() {
    // Deterministic xorshift so failures reproduce.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let seeds: [&[u8]; 3] = [b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n", b"\r\n0\r\n"];
    for round in 0..2000 {
        let mut s = Http1Session::new(if round % 2 == 0 { Ingress } else { Egress });
        let mut out = Vec::new();
        for _ in 0..8 {
            let mut buf = seeds[(next() % 3) as usize].to_vec();
            let n = (next() % 64) as usize;
            buf.extend((0..n).map(|_| (next() % 256) as u8));
            let dir = if next() % 2 == 0 { Ingress } else { Egress };
            let total = buf.len() + (next() % 3 * 100) as usize;
            s.on_chunk(&c(dir, &buf, total, next() % 1000), &mut out);
        }
        s.on_idle(&mut out);
        s.on_close(&mut out);
    }
}

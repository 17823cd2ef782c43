use super::*;

const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Literal with incremental indexing, new name (so the table fills).
fn lit(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0x40);
    block.push(name.len() as u8);
    block.extend_from_slice(name.as_bytes());
    block.push(value.len() as u8);
    block.extend_from_slice(value.as_bytes());
}

fn request_block(path: &str, grpc: bool) -> Vec<u8> {
    let mut b = vec![0x83, 0x86]; // POST, http
    b.push(0x04); // :path, literal without indexing
    b.push(path.len() as u8);
    b.extend_from_slice(path.as_bytes());
    lit(&mut b, ":authority", "svc:50051");
    if grpc {
        lit(&mut b, "content-type", "application/grpc");
    }
    lit(&mut b, "traceparent", TP);
    b
}

fn chunk(direction: Direction, data: &[u8], ts: u64) -> Chunk<'_> {
    Chunk { direction, data, total: data.len(), ts_enter: ts, ts_exit: ts + 1 }
}

fn finished(out: &[Http2Message]) -> Vec<&StreamExchange> {
    out.iter()
        .filter_map(|m| match m {
            Http2Message::Finished(e) => Some(&**e),
            _ => None,
        })
        .collect()
}

fn grpc_response(stream: u32, status: u32) -> Vec<u8> {
    let mut w = frame(frame::HEADERS, frame::FLAG_END_HEADERS, stream, &[0x88]);
    w.extend(frame(frame::DATA, 0, stream, &[0, 0, 0, 0, 2, 8, 1]));
    let mut trailers = Vec::new();
    lit(&mut trailers, "grpc-status", &status.to_string());
    w.extend(frame(frame::HEADERS, frame::FLAG_END_HEADERS | frame::FLAG_END_STREAM, stream, &trailers));
    w
}

#[test]
fn a_grpc_server_sees_two_unary_calls_on_one_connection() {
    let mut s = Http2Session::new(Direction::Ingress, true);
    let mut out = Vec::new();
    let mut first = frame::PREFACE.to_vec();
    first.extend(frame(frame::SETTINGS, 0, 0, &[]));
    first.extend(frame(frame::HEADERS, frame::FLAG_END_HEADERS, 1, &request_block("/shop.Cart/Add", true)));
    first.extend(frame(frame::DATA, frame::FLAG_END_STREAM, 1, &[0, 0, 0, 0, 0]));
    s.on_chunk(&chunk(Direction::Ingress, &first, 100), &mut out);
    assert!(matches!(
        &out[..],
        [Http2Message::Started(StreamStart { stream: 1, ts_enter: 100, traceparent: Some(_), .. })]
    ));
    s.on_chunk(&chunk(Direction::Egress, &grpc_response(1, 0), 200), &mut out);
    // The second request refers to the dynamic table: authority, content-type, traceparent.
    let mut block = vec![0x83, 0x86, 0x04, 15];
    block.extend_from_slice(b"/shop.Cart/Drop");
    block.extend_from_slice(&[0xbe, 0xbf, 0xc0]);
    let second = frame(frame::HEADERS, frame::FLAG_END_HEADERS | frame::FLAG_END_STREAM, 3, &block);
    s.on_chunk(&chunk(Direction::Ingress, &second, 300), &mut out);
    s.on_chunk(&chunk(Direction::Egress, &grpc_response(3, 5), 400), &mut out);
    let done = finished(&out);
    assert_eq!(done.len(), 2, "{out:?}");
    let (a, b) = (done[0], done[1]);
    assert_eq!(a.exchange.request.method, "POST");
    assert_eq!(a.exchange.request.target, "/shop.Cart/Add");
    assert_eq!(a.exchange.request.version, VERSION);
    assert_eq!(a.exchange.response.status, 200);
    assert_eq!((a.exchange.request_start_exit, a.exchange.response_end), (101, 201));
    assert_eq!(a.grpc, Some(GrpcCall { service: "shop.Cart".into(), method: "Add".into(), status: Some(0) }));
    assert_eq!(b.exchange.request.headers.host.as_deref(), Some("svc:50051"));
    assert_eq!(b.exchange.request.headers.traceparent, TraceParent::parse(TP));
    assert_eq!(b.grpc.as_ref().map(|g| (g.method.as_str(), g.status)), Some(("Drop", Some(5))));
    assert_eq!(s.stats(), &Http2Stats::default());
}

#[test]
fn interleaved_streams_and_split_frames() {
    let mut s = Http2Session::new(Direction::Egress, true);
    let mut out = Vec::new();
    let mut w = frame::PREFACE.to_vec();
    for id in [1, 3, 5] {
        let mut b = vec![0x82, 0x86, 0x04, 3];
        b.extend_from_slice(format!("/r{id}").as_bytes());
        w.extend(frame(frame::HEADERS, frame::FLAG_END_HEADERS | frame::FLAG_END_STREAM, id, &b));
    }
    // Written byte by byte: split headers and payloads.
    for (i, b) in w.iter().enumerate() {
        s.on_chunk(&chunk(Direction::Egress, std::slice::from_ref(b), i as u64), &mut out);
    }
    assert_eq!(out.len(), 3);
    let mut r = Vec::new();
    for id in [5, 1, 3] {
        r.extend(frame(frame::HEADERS, frame::FLAG_END_HEADERS, id, &[0x8e])); // 500
        r.extend(frame(frame::DATA, frame::FLAG_END_STREAM, id, b"oops"));
    }
    s.on_chunk(&chunk(Direction::Ingress, &r, 1000), &mut out);
    let done: Vec<_> =
        finished(&out).iter().map(|e| (e.exchange.request.target.clone(), e.exchange.response.status)).collect();
    assert_eq!(done, [("/r5".to_string(), 500), ("/r1".into(), 500), ("/r3".into(), 500)]);
    assert!(finished(&out).iter().all(|e| e.grpc.is_none() && e.exchange.response_body_bytes == 4));
}

#[test]
fn data_beyond_the_capture_is_skipped_and_trailers_after_it_are_found() {
    let mut s = Http2Session::new(Direction::Ingress, false);
    let mut out = Vec::new();
    s.on_chunk(&chunk(Direction::Ingress, &frame(frame::HEADERS, 5, 1, &request_block("/a.B/C", true)), 1), &mut out);
    // A large DATA frame whose payload was not captured, alone in its write.
    let mut big = frame(frame::HEADERS, frame::FLAG_END_HEADERS, 1, &[0x88]);
    big.extend(frame(frame::DATA, 0, 1, &vec![7u8; 10_000]));
    let c = Chunk { direction: Direction::Egress, data: &big[..512], total: big.len(), ts_enter: 2, ts_exit: 3 };
    s.on_chunk(&c, &mut out);
    let mut t = Vec::new();
    lit(&mut t, "grpc-status", "13");
    s.on_chunk(&chunk(Direction::Egress, &frame(frame::HEADERS, 5, 1, &t), 4), &mut out);
    let done = finished(&out);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].grpc.as_ref().and_then(|g| g.status), Some(13));
    assert_eq!(done[0].exchange.response_body_bytes, 10_000);
    assert_eq!(s.stats().desyncs, 0);
}

#[test]
fn a_frame_header_in_the_gap_loses_framing_until_a_write_starts_with_a_frame() {
    let mut s = Http2Session::new(Direction::Ingress, false);
    let mut out = Vec::new();
    let mut w = frame(frame::HEADERS, 5, 1, &request_block("/x", false));
    w.extend(frame(frame::HEADERS, 5, 3, &request_block("/y", false)));
    let c = Chunk { direction: Direction::Ingress, data: &w[..20], total: w.len(), ts_enter: 1, ts_exit: 2 };
    s.on_chunk(&c, &mut out);
    assert_eq!(s.stats().desyncs, 1);
    s.on_chunk(&chunk(Direction::Ingress, b"garbage that is no frame", 3), &mut out);
    s.on_chunk(&chunk(Direction::Ingress, &frame(frame::HEADERS, 5, 5, &[0x82, 0x84]), 5), &mut out);
    s.on_chunk(&chunk(Direction::Egress, &frame(frame::HEADERS, 5, 5, &[0x88]), 6), &mut out);
    let done = finished(&out);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].exchange.request.target, "/");
}

#[test]
fn a_connection_older_than_the_agent_decodes_what_the_static_table_names() {
    let mut s = Http2Session::new(Direction::Ingress, false);
    let mut out = Vec::new();
    // :method GET, :path from the dynamic table (unknown), authority unknown.
    s.on_chunk(&chunk(Direction::Ingress, &frame(frame::HEADERS, 5, 41, &[0x82, 0xc1, 0xbe]), 1), &mut out);
    s.on_chunk(&chunk(Direction::Egress, &frame(frame::HEADERS, 5, 41, &[0x88]), 2), &mut out);
    let done = finished(&out);
    assert_eq!(done[0].exchange.request.method, "GET");
    assert_eq!(done[0].exchange.request.target, "", "no path rather than a wrong one");
    assert!(done[0].exchange.request.truncated);
    assert_eq!(s.stats().unknown_fields, 2);
    // A response to a stream whose request was never seen.
    s.on_chunk(&chunk(Direction::Egress, &frame(frame::HEADERS, 5, 39, &[0x88]), 3), &mut out);
    assert_eq!(s.stats().unmatched, 1);
}

#[test]
fn continuation_frames_and_reset_streams() {
    let mut s = Http2Session::new(Direction::Ingress, false);
    let mut out = Vec::new();
    let block = request_block("/long", false);
    let (a, b) = block.split_at(7);
    let mut w = frame(frame::HEADERS, frame::FLAG_END_STREAM, 1, a);
    w.extend(frame(frame::CONTINUATION, frame::FLAG_END_HEADERS, 1, b));
    w.extend(frame(frame::HEADERS, 5, 3, &[0x82, 0x84]));
    s.on_chunk(&chunk(Direction::Ingress, &w, 1), &mut out);
    assert_eq!(out.len(), 2);
    s.on_chunk(&chunk(Direction::Egress, &frame(frame::HEADERS, 5, 1, &[0x88]), 2), &mut out);
    // Stream 3 is reset before an answer: nothing to report but a count.
    s.on_chunk(&chunk(Direction::Ingress, &frame(frame::RST_STREAM, 0, 3, &[0, 0, 0, 8]), 3), &mut out);
    let done = finished(&out);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].exchange.request.target, "/long");
    assert_eq!(s.stats().unmatched, 1);
}

#[test]
fn streams_are_bounded() {
    let mut s = Http2Session::new(Direction::Ingress, false);
    let mut out = Vec::new();
    for i in 0..(MAX_STREAMS as u32 + 10) {
        let f = frame(frame::HEADERS, 5, 2 * i + 1, &[0x82, 0x84]);
        s.on_chunk(&chunk(Direction::Ingress, &f, u64::from(i)), &mut out);
    }
    assert_eq!(s.streams.len(), MAX_STREAMS);
    assert_eq!(s.stats().streams_dropped, 10);
}

#[test]
fn garbage_never_panics() {
    let mut seed = 0x1234_5678u32;
    for _ in 0..200 {
        let mut s = Http2Session::new(Direction::Ingress, true);
        let mut out = Vec::new();
        let mut buf = frame::PREFACE.to_vec();
        for _ in 0..300 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            buf.push(if seed.is_multiple_of(3) { 0 } else { seed as u8 });
        }
        for (i, part) in buf.chunks(37).enumerate() {
            let dir = if i % 2 == 0 { Direction::Ingress } else { Direction::Egress };
            s.on_chunk(&chunk(dir, part, i as u64), &mut out);
        }
        s.on_close(&mut out);
    }
}

#[test]
fn grpc_is_known_by_its_path_when_its_content_type_was_never_seen() {
    assert!(looks_like_grpc_path("/shop.Cart/Add"));
    assert!(!looks_like_grpc_path("/ok/1"));
    assert!(!looks_like_grpc_path("/a.b/c/d"));
    let mut s = Http2Session::new(Direction::Ingress, false);
    let mut out = Vec::new();
    // :path literal, content-type and authority from a table we never saw.
    let mut block = vec![0x83, 0x86, 0x04, 14];
    block.extend_from_slice(b"/shop.Cart/Add");
    block.extend_from_slice(&[0xbe, 0xbf]);
    s.on_chunk(&chunk(Direction::Ingress, &frame(frame::HEADERS, 5, 9, &block), 1), &mut out);
    let mut resp = frame(frame::HEADERS, 4, 9, &[0x88]);
    resp.extend(frame(frame::HEADERS, 5, 9, &[0xc0]));
    s.on_chunk(&chunk(Direction::Egress, &resp, 2), &mut out);
    let done = finished(&out);
    assert_eq!(done[0].grpc, Some(GrpcCall { service: "shop.Cart".into(), method: "Add".into(), status: None }));
}

// Frame capture (PERISCOPE_CAPTURE_HTTP2_FRAMES): syscalls arrive as
// segments (frame headers, header blocks; DATA payloads not copied), as
// segmented data events that `DataEvent::chunks` turns into chunks.

/// Bytes `syscall` of one direction's `stream` as the kernel walk sends
/// them (`copies`: frame::walk_copies of the whole stream), through the
/// agent's own decoding into chunks.
fn segmented<'a>(
    stream: &'a [u8],
    syscall: std::ops::Range<usize>,
    copies: &[std::ops::Range<usize>],
    direction: Direction,
    ts: u64,
    record: &'a mut Vec<u8>,
) -> Vec<Chunk<'a>> {
    use crate::capture::{DataEvent, Header, Layout, Role, Tuple};
    record.clear();
    for r in copies {
        let (from, to) = (r.start.max(syscall.start), r.end.min(syscall.end));
        if from < to {
            record.extend_from_slice(&((from - syscall.start) as u32).to_ne_bytes());
            record.extend_from_slice(&((to - from) as u32).to_ne_bytes());
            record.extend_from_slice(&stream[from..to]);
        }
    }
    let addr = "127.0.0.1:1".parse().unwrap();
    let event = DataEvent {
        header: Header { pid: 1, tid: 1, fd: 3, ts_enter: ts, ts_exit: ts + 1, loop_seq: 0, goid: 0 },
        tuple: Tuple { local: addr, remote: addr, netns: 0 },
        role: Role::Client,
        direction,
        bytes: syscall.len(),
        data: &record[..],
        layout: Layout::Segments { start: 0, end: syscall.len() },
        tls: false,
    };
    event.chunks().collect()
}

/// A server stream of 20 messages of 1 KiB, then trailers, as frames.
fn server_stream(stream: u32, status: u32) -> Vec<u8> {
    let mut w = frame(frame::HEADERS, frame::FLAG_END_HEADERS, stream, &[0x88]);
    for i in 0..20u8 {
        let mut msg = vec![0, 0, 0, 4, 0];
        msg.extend(std::iter::repeat_n(b'A' + i, 1024));
        w.extend(frame(frame::DATA, 0, stream, &msg));
    }
    let mut trailers = Vec::new();
    lit(&mut trailers, "grpc-status", &status.to_string());
    lit(&mut trailers, "grpc-message", "fine");
    w.extend(frame(frame::HEADERS, frame::FLAG_END_HEADERS | frame::FLAG_END_STREAM, stream, &trailers));
    w
}

/// A gRPC client's calls, with responses read in syscalls cut at `cuts`
/// (offsets in the response bytes), each captured whole (`kernel`: false)
/// or as the kernel walk's segments: what finished.
fn client_calls(responses: &[u8], cuts: &[usize], kernel: bool) -> Vec<StreamExchange> {
    let mut s = Http2Session::new(Direction::Egress, false);
    let mut out = Vec::new();
    let mut req = frame(frame::HEADERS, frame::FLAG_END_HEADERS, 1, &request_block("/demo.Items/List", true));
    req.extend(frame(frame::DATA, frame::FLAG_END_STREAM, 1, &[0, 0, 0, 0, 1, b'x']));
    let mut more = request_block("/demo.Items/List", true);
    more[2] = 0x04; // the same fields again
    req.extend(frame(frame::HEADERS, frame::FLAG_END_HEADERS, 3, &more));
    req.extend(frame(frame::DATA, frame::FLAG_END_STREAM, 3, &[0, 0, 0, 0, 1, b'y']));
    s.on_chunk(&chunk(Direction::Egress, &req, 1), &mut out);
    let copies = frame::walk_copies(responses).expect("frames the walk accepts");
    let mut bounds = vec![0];
    bounds.extend(cuts.iter().copied().filter(|&c| c > 0 && c < responses.len()));
    bounds.push(responses.len());
    let mut record = Vec::new();
    for (i, w) in bounds.windows(2).enumerate() {
        let ts = 10 + 10 * i as u64;
        if kernel {
            for c in segmented(responses, w[0]..w[1], &copies, Direction::Ingress, ts, &mut record) {
                s.on_chunk(&c, &mut out);
            }
        } else {
            s.on_chunk(&chunk(Direction::Ingress, &responses[w[0]..w[1]], ts), &mut out);
        }
    }
    assert_eq!(s.stats().desyncs, 0, "{:?}", s.stats());
    assert_eq!(s.stats().parse_errors, 0, "{:?}", s.stats());
    finished(&out).into_iter().cloned().collect()
}

#[test]
fn segmented_server_streams_read_as_every_byte_would() {
    let mut responses = server_stream(1, 0);
    responses.extend(server_stream(3, 13));
    let total = responses.len();
    // One read of everything; reads of ~6 KiB; cuts inside a frame header,
    // inside a DATA payload, inside the trailers' header block.
    let trailers = server_stream(1, 0).len() - 30;
    for cuts in [vec![], vec![6000, 12000, 18000, 24000, 30000, 36000], vec![4, 13, 1500, trailers, trailers + 20]] {
        let whole = client_calls(&responses, &cuts, false);
        let walked = client_calls(&responses, &cuts, true);
        assert_eq!(walked, whole, "cuts {cuts:?}");
        let statuses: Vec<_> = walked.iter().map(|e| e.grpc.as_ref().and_then(|g| g.status)).collect();
        assert_eq!(statuses, [Some(0), Some(13)]);
        assert_eq!(walked[0].exchange.response_body_bytes, 20 * 1029);
    }
    // What the kernel sends of it: frame headers and header blocks only.
    let copied: usize = frame::walk_copies(&responses).unwrap().iter().map(|r| r.len()).sum();
    assert!(copied < total / 40, "{copied} of {total} bytes");
}

#[test]
fn a_segmented_body_ends_at_its_content_length() {
    // curl stops reading at the content-length: no END_STREAM is seen.
    let mut s = Http2Session::new(Direction::Egress, false);
    let mut out = Vec::new();
    let req = frame(frame::HEADERS, frame::FLAG_END_HEADERS | frame::FLAG_END_STREAM, 1, &[0x82, 0x86, 0x84]);
    s.on_chunk(&chunk(Direction::Egress, &req, 1), &mut out);
    let mut resp = frame(frame::HEADERS, frame::FLAG_END_HEADERS, 1, &[0x88, 0x5c, 0x04, b'9', b'0', b'0', b'0']);
    resp.extend(frame(frame::DATA, 0, 1, &[b'x'; 5000]));
    resp.extend(frame(frame::DATA, 0, 1, &[b'y'; 4000]));
    let copies = frame::walk_copies(&resp).unwrap();
    let mut record = Vec::new();
    for c in segmented(&resp, 0..resp.len(), &copies, Direction::Ingress, 5, &mut record) {
        s.on_chunk(&c, &mut out);
    }
    let done = finished(&out);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].exchange.response_body_bytes, 9000);
    assert_eq!(done[0].exchange.response.status, 200);
}

#[test]
fn the_walk_refuses_what_the_parser_would() {
    let mut ok = frame(frame::SETTINGS, 0, 0, &[0; 6]);
    ok.extend(frame(frame::DATA, frame::FLAG_END_STREAM, 1, &[1; 100]));
    assert_eq!(frame::walk_copies(&ok), Some(std::iter::once(0..15 + 9).collect()));
    assert_eq!(frame::walk_copies(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), None, "the preface is no frame");
    assert_eq!(frame::walk_copies(&frame(0x0b, 0, 1, b"")), None, "unknown type");
    assert_eq!(frame::walk_copies(&frame(frame::DATA, 0, 0, b"")), None, "DATA on stream 0");
    // A long GOAWAY: its first bytes only.
    let goaway = frame(frame::GOAWAY, 0, 0, &[0; 200]);
    assert_eq!(frame::walk_copies(&goaway), Some(std::iter::once(0..9 + frame::WALK_CONTROL_KEEP).collect()));
}

/// The kernel gave up on a syscall (a header that did not check out, its
/// limits): it came as a prefix; the parser finds the frames again at the
/// next syscall that starts with one, as the kernel does.
#[test]
fn a_prefix_between_segmented_syscalls_resynchronises() {
    let mut s = Http2Session::new(Direction::Egress, false);
    let mut out = Vec::new();
    let req = frame(frame::HEADERS, frame::FLAG_END_HEADERS, 1, &request_block("/demo.Items/List", true));
    s.on_chunk(&chunk(Direction::Egress, &req, 1), &mut out);
    let first = server_stream(1, 0);
    // The last DATA frame and the trailers come in one syscall.
    let trailers = 9 + 15 + 19; // grpc-status 0, grpc-message fine
    let cut = first.len() - trailers - (9 + 1029);
    let copies = frame::walk_copies(&first[..cut]).unwrap();
    let mut record = Vec::new();
    for c in segmented(&first[..cut], 0..cut, &copies, Direction::Ingress, 5, &mut record) {
        s.on_chunk(&c, &mut out);
    }
    // That syscall as a prefix of 8 bytes: its frames, the trailers, are lost.
    let rest = first.len() - cut;
    s.on_chunk(&Chunk { data: &first[cut..cut + 8], total: rest, ..chunk(Direction::Ingress, &[], 7) }, &mut out);
    assert_eq!(s.stats().desyncs, 1);
    assert!(finished(&out).is_empty());
    // The next call's frames are read again.
    let req = frame(frame::HEADERS, frame::FLAG_END_HEADERS, 3, &request_block("/demo.Items/List", true));
    s.on_chunk(&chunk(Direction::Egress, &req, 9), &mut out);
    let next = server_stream(3, 5);
    let copies = frame::walk_copies(&next).unwrap();
    for c in segmented(&next, 0..next.len(), &copies, Direction::Ingress, 11, &mut record) {
        s.on_chunk(&c, &mut out);
    }
    let done = finished(&out);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].grpc.as_ref().unwrap().status, Some(5));
}

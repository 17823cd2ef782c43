//! Http2Session on a fuzzed connection history (frames split, gapped and
//! interleaved), as server or client, from the preface or mid-stream;
//! streams stay bounded, every finished stream ends no earlier than it began.
//!
//! Flag 4: the kernel's frame capture (PERISCOPE_CAPTURE_HTTP2_FRAMES). The
//! same history (gaps left out) is fed once whole and once as the kernel
//! walk sends it (`frame::walk_copies`: frame headers and header blocks,
//! DATA payloads as bytes not captured, each syscall's segments as
//! `DataEvent::chunks` makes chunks of them); both must give the same
//! messages. Histories whose frames the walk refuses are fed whole only.
#![no_main]
use std::ops::Range;

use libfuzzer_sys::fuzz_target;
use periscope::protocols::http2::{frame, Http2Message, Http2Session, MAX_STREAMS};
use periscope::protocols::{Chunk, Direction, Session};
use periscope_fuzz::{Script, Step};

fuzz_target!(|input: &[u8]| {
    let (flags, script) = Script::new(input);
    let requests = if flags & 1 == 0 { Direction::Ingress } else { Direction::Egress };
    let preface = flags & 2 != 0;
    if flags & 4 != 0 {
        walked_as_whole(requests, preface, script);
        return;
    }
    let mut s = Http2Session::new(requests, preface);
    let mut out = Vec::new();
    let mut started = 0usize;
    for step in script {
        if let Step::Chunk(c) = step {
            s.on_chunk(&c, &mut out);
        }
        for m in out.drain(..) {
            match m {
                Http2Message::Started(_) => started += 1,
                Http2Message::Finished(done) => {
                    let e = &done.exchange;
                    assert!(e.response_end >= e.request_start_enter);
                    assert!(e.request.target.len() <= 8 * 1024);
                }
            }
        }
        assert!(s.open_streams() <= MAX_STREAMS);
    }
    Session::on_close(&mut s, &mut out);
    assert_eq!(s.open_streams(), 0);
    if periscope_fuzz::verbose() {
        eprintln!("{started} streams started, {:?}", s.stats());
    }
});

/// The chunks of bytes `syscall` of a direction as the kernel sends them:
/// its part of each copied range a segment reaching to the next one (the
/// bytes between not captured), a gap before the first.
fn segmented<'a>(stream: &'a [u8], syscall: Range<usize>, copies: &[Range<usize>], c: &Chunk<'a>) -> Vec<Chunk<'a>> {
    let segs: Vec<Range<usize>> = copies
        .iter()
        .map(|r| r.start.max(syscall.start)..r.end.min(syscall.end))
        .filter(|r| r.start < r.end)
        .collect();
    let mut out = Vec::new();
    let first = segs.first().map_or(syscall.end, |r| r.start);
    if first > syscall.start {
        out.push(Chunk { data: &[], total: first - syscall.start, ..*c });
    }
    for (i, r) in segs.iter().enumerate() {
        let next = segs.get(i + 1).map_or(syscall.end, |n| n.start);
        out.push(Chunk { data: &stream[r.clone()], total: next - r.start, ..*c });
    }
    out
}

fn walked_as_whole(requests: Direction, preface: bool, script: Script<'_>) {
    let steps: Vec<Chunk<'_>> = script.filter_map(|s| if let Step::Chunk(c) = s { Some(c) } else { None }).collect();
    let stream = |d: Direction| -> Vec<u8> {
        steps.iter().filter(|c| c.direction == d).flat_map(|c| c.data.iter().copied()).collect()
    };
    let (ingress, egress) = (stream(Direction::Ingress), stream(Direction::Egress));
    // The preface passes before the policy is set: copied whole.
    let copies = |bytes: &[u8], d: Direction| -> Option<Vec<Range<usize>>> {
        let skip = if preface && d == requests { frame::PREFACE.len().min(bytes.len()) } else { 0 };
        if skip > 0 && bytes[..skip] != frame::PREFACE[..skip] {
            return None;
        }
        let mut v = vec![0..skip];
        v.extend(frame::walk_copies(&bytes[skip..])?.into_iter().map(|r| r.start + skip..r.end + skip));
        Some(v)
    };
    let (Some(in_copies), Some(out_copies)) = (copies(&ingress, Direction::Ingress), copies(&egress, Direction::Egress))
    else {
        return;
    };
    let (mut whole, mut walked) = (Http2Session::new(requests, preface), Http2Session::new(requests, preface));
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut at = [0usize; 2];
    for c in &steps {
        let whole_chunk = Chunk { total: c.data.len(), ..*c };
        whole.on_chunk(&whole_chunk, &mut a);
        let i = usize::from(c.direction == Direction::Egress);
        let (bytes, cp) = if i == 0 { (&ingress, &in_copies) } else { (&egress, &out_copies) };
        let syscall = at[i]..at[i] + c.data.len();
        at[i] = syscall.end;
        for piece in segmented(bytes, syscall, cp, &whole_chunk) {
            walked.on_chunk(&piece, &mut b);
        }
        assert_eq!(a, b, "the walk's segments read otherwise than every byte");
    }
    assert_eq!(whole.open_streams(), walked.open_streams());
}

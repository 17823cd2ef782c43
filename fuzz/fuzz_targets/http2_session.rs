//! Http2Session on a fuzzed connection history (frames split, gapped and
//! interleaved), as server or client, from the preface or mid-stream;
//! streams stay bounded, every finished stream ends no earlier than it began.
#![no_main]
use libfuzzer_sys::fuzz_target;
use periscope::protocols::http2::{Http2Message, Http2Session, MAX_STREAMS};
use periscope::protocols::{Direction, Session};
use periscope_fuzz::{Script, Step};

fuzz_target!(|input: &[u8]| {
    let (flags, script) = Script::new(input);
    let requests = if flags & 1 == 0 { Direction::Ingress } else { Direction::Egress };
    let mut s = Http2Session::new(requests, flags & 2 != 0);
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

//! Http1Session on a fuzzed connection history, as server (requests
//! Ingress) or client (requests Egress), ending with on_idle and on_close.
#![no_main]
use libfuzzer_sys::fuzz_target;
use periscope::protocols::http1::Http1Session;
use periscope::protocols::Direction;
use periscope_fuzz::{Script, Step};

fuzz_target!(|input: &[u8]| {
    let (flags, script) = Script::new(input);
    let requests = if flags & 1 == 0 { Direction::Ingress } else { Direction::Egress };
    let mut s = Http1Session::new(requests);
    let mut out = Vec::new();
    for step in script {
        match step {
            Step::Chunk(c) => s.on_chunk(&c, &mut out),
            Step::Idle => s.on_idle(&mut out),
        }
        assert!(s.pending() <= 64, "pipeline depth unbounded: {}", s.pending());
    }
    s.on_idle(&mut out);
    s.on_close(&mut out);
    assert_eq!(s.pending(), 0);
    // Chunks after close must be harmless too (late records in the ring).
    if flags & 2 != 0 {
        let (_, again) = Script::new(input);
        for step in again {
            if let Step::Chunk(c) = step {
                s.on_chunk(&c, &mut out);
            }
        }
    }
    if periscope_fuzz::verbose() {
        eprintln!(
            "{} exchanges {:?}: {:?}",
            out.len(),
            s.stats(),
            out.iter().map(|e| (&e.request.target, e.response.status)).collect::<Vec<_>>()
        );
    }
    for e in &out {
        assert!(e.request.target.len() <= 16 * 1024);
    }
});

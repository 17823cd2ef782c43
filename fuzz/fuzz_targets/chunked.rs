//! ChunkedDecoder fed a chunked body in fuzzed pieces with skipped
//! (uncaptured) runs. Splitting must not change the outcome.
#![no_main]
use libfuzzer_sys::fuzz_target;
use periscope::protocols::http1::chunked::{ChunkedDecoder, Progress};

fuzz_target!(|input: &[u8]| {
    // [ncuts][cuts...][body]; a cut with the high bit set is a skip of
    // (cut & 0x7f) uncaptured bytes instead of a piece.
    let Some((&n, rest)) = input.split_first() else { return };
    let n = usize::from(n & 0x0f).min(rest.len());
    let (cuts, body) = rest.split_at(n);

    // Reference: the whole body in one feed.
    let mut whole = ChunkedDecoder::default();
    let reference = whole.feed(body);

    // Split into pieces: the same outcome, at the same offset.
    let mut d = ChunkedDecoder::default();
    let mut offset = 0usize;
    let mut split_result = None;
    let plain_cuts: Vec<u8> = cuts.iter().map(|c| c & 0x7f).collect();
    for piece in periscope_fuzz::pieces(body, &plain_cuts) {
        match d.feed(piece) {
            Ok(Progress::NeedMore) => offset += piece.len(),
            Ok(Progress::Done(k)) => {
                assert!(k <= piece.len());
                split_result = Some(Ok(Progress::Done(offset + k)));
                break;
            }
            Err(e) => {
                split_result = Some(Err(e));
                break;
            }
        }
    }
    let split_result = split_result.unwrap_or(Ok(Progress::NeedMore));
    match (&reference, &split_result) {
        (Ok(Progress::Done(a)), Ok(Progress::Done(b))) => assert_eq!(a, b),
        (a, b) => assert_eq!(a.is_err(), b.is_err(), "whole {a:?} vs split {b:?}"),
    }

    // With skips: must not panic; a skip is refused outside chunk data.
    let mut d = ChunkedDecoder::default();
    let mut body = body;
    for &c in cuts {
        if c & 0x80 != 0 {
            let _ = d.skip(u64::from(c & 0x7f));
        } else {
            let k = usize::from(c).min(body.len());
            if d.feed(&body[..k]).is_err() {
                return;
            }
            body = &body[k..];
        }
    }
    let _ = d.feed(body);
});

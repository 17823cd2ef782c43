//! HPACK decoding: the input is a sequence of header blocks (a length byte,
//! then the block) decoded in order with one dynamic table, as a direction
//! of a connection does. Never panics; names and values stay bounded; the
//! table stays within its bound.
#![no_main]
use libfuzzer_sys::fuzz_target;
use periscope::protocols::http2::hpack::{Decoder, MAX_STRING, MAX_TABLE_SIZE};

fuzz_target!(|input: &[u8]| {
    let mut d = Decoder::default();
    let mut rest = input;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (block, next) = tail.split_at(n);
        rest = next;
        let _ = d.decode(block, |name, value| {
            assert!(name.len() <= MAX_STRING && value.len() <= MAX_STRING);
        });
        // Every entry costs at least 32 bytes of the table's size.
        assert!(d.len() * 32 <= MAX_TABLE_SIZE);
    }
});

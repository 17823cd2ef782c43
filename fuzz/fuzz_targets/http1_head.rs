//! HTTP/1 head parsing: complete (httparse) and lenient truncated parsing of
//! requests and responses, on the whole input and on every prefix cut.
#![no_main]
use libfuzzer_sys::fuzz_target;
use periscope::protocols::http1::head::{
    looks_like_request, looks_like_response, parse_request, parse_response, parse_truncated_request,
    parse_truncated_response, Parsed,
};

fuzz_target!(|data: &[u8]| {
    let _ = looks_like_request(data);
    let _ = looks_like_response(data);
    if let Ok(Parsed::Complete(_, n)) = parse_request(data) {
        assert!(n <= data.len());
    }
    if let Ok(Parsed::Complete(_, n)) = parse_response(data) {
        assert!(n <= data.len());
    }
    let _ = parse_truncated_request(data);
    let _ = parse_truncated_response(data);
    // A cut inside the head: what the capture limit does to it.
    if !data.is_empty() {
        let cut = usize::from(data[0]) % data.len();
        let p = &data[..cut];
        let _ = parse_request(p);
        let _ = parse_response(p);
        let _ = parse_truncated_request(p);
        let _ = parse_truncated_response(p);
    }
});

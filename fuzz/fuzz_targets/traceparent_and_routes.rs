//! W3C traceparent parsing and http.route resolution (patterns, ignored
//! patterns, every unmatched mode, the per-service cap).
#![no_main]
use libfuzzer_sys::fuzz_target;
use periscope::model::traceparent::TraceParent;
use periscope::spans::routes::{heuristic, Route, Router, Unmatched};

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else { return };
    let text = String::from_utf8_lossy(rest);

    if let Some(tp) = TraceParent::parse(&text) {
        let _ = tp.sampled();
        // A parsed traceparent prints back to the same ids.
        let t = tp.trace_id.to_string();
        let p = tp.parent_id.to_string();
        let v = text.trim();
        assert_eq!(&v[3..35], t);
        assert_eq!(&v[36..52], p);
    }

    let h = heuristic(&text);
    assert!(h.starts_with('/'));
    assert_eq!(heuristic(&h), h, "heuristic is not idempotent on {text:?}");

    // Lines: first patterns, then ignored ones (after an empty line), then paths.
    let mut lines = text.split('\n');
    let patterns: Vec<String> = lines.by_ref().take_while(|l| !l.is_empty()).take(8).map(String::from).collect();
    let ignored: Vec<String> = lines.by_ref().take_while(|l| !l.is_empty()).take(8).map(String::from).collect();
    let unmatched = match flags & 3 {
        0 => Unmatched::Heuristic,
        1 => Unmatched::Path,
        2 => Unmatched::Wildcard,
        _ => Unmatched::Unset,
    };
    let max_routes = usize::from(flags >> 2);
    let Ok(mut router) = Router::new(&patterns, &ignored, unmatched, max_routes) else { return };
    for (i, path) in lines.enumerate() {
        let service = if i % 3 == 0 { "a" } else { "b" };
        if let Route::Some(r) = router.route(service, path) {
            // Patterns, the heuristic and the wildcard all give a route
            // starting with '/'; mode `path` gives the path as it came.
            assert!(r.starts_with('/') || (unmatched == Unmatched::Path && r == path), "{r:?}");
        }
        if i % 7 == 6 {
            router.forget(service);
        }
    }
});

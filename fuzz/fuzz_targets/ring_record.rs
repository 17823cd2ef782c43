//! Decoding kernel ring buffer records from arbitrary bytes, and a data
//! event's chunks (prefix, or segments with the gaps between them).
#![no_main]
use libfuzzer_sys::fuzz_target;
use periscope::capture::{decode, Event, Layout};

fuzz_target!(|record: &[u8]| {
    if let Ok(ev) = decode(record) {
        match ev {
            Event::Data(d) => {
                assert!(d.data.len() <= record.len());
                // The data slice is the tail of the record it borrows from.
                let start = d.data.as_ptr() as usize - record.as_ptr() as usize;
                assert!(start + d.data.len() <= record.len());
                let _ = (d.tuple.local.to_string(), d.tuple.remote.to_string());
                let covered: usize = d.chunks().map(|c| c.total).sum();
                if let Layout::Segments { start, end } = d.layout {
                    // Segments are in order and inside the event's range:
                    // the chunks cover it exactly, each holding at most its total.
                    assert!(d.chunks().all(|c| c.data.len() <= c.total));
                    assert_eq!(covered, end - start);
                    assert!(end <= d.bytes);
                }
            }
            Event::ConnOpen(c) | Event::ConnClose(c) => {
                let _ = c.tuple.remote.to_string();
            }
            Event::ProcFork(p) | Event::ProcExit(p) | Event::ProcExec(p) => {
                let _ = p.comm().len();
            }
            Event::Async(a) => {
                let _ = (a.key, a.phase);
            }
            Event::Goroutine(g) => {
                let _ = (g.from, g.to, g.relation);
            }
        }
    }
});

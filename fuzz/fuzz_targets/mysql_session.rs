//! MySqlSession (client or server role) on a fuzzed connection history.
#![no_main]
use libfuzzer_sys::fuzz_target;
use periscope::protocols::mysql::{looks_like_mysql_command, looks_like_mysql_server_greeting, MySqlSession};
use periscope::protocols::Side;
use periscope_fuzz::{Script, Step};

fuzz_target!(|input: &[u8]| {
    let (flags, script) = Script::new(input);
    let role = if flags & 1 == 0 { Side::Server } else { Side::Client };
    let mut s = MySqlSession::new(role);
    let mut out = Vec::new();
    let mut first = true;
    for step in script {
        if let Step::Chunk(c) = step {
            if first {
                let _ = looks_like_mysql_server_greeting(c.data);
                let _ = looks_like_mysql_command(c.data);
                first = false;
            }
            s.on_chunk(&c, &mut out);
        }
    }
    let _ = (s.namespace(), s.encrypted(), s.stats());
    if periscope_fuzz::verbose() {
        eprintln!(
            "{} calls ns={:?} {:?}: {:?}",
            out.len(),
            s.namespace(),
            s.stats(),
            out.iter().map(|c| (&c.query, &c.outcome)).collect::<Vec<_>>()
        );
    }
});

//! SQL text analysis on arbitrary UTF-8: sanitize / sanitize_for, analyze /
//! analyze_for, split_statements / split_statements_for, with every dialect.
//!
//! Runs on a thread with a 2 MiB stack, the size of the agent's tokio
//! workers, so deep recursion in the SQL parser is caught at the size that
//! matters (libFuzzer's main thread has 8 MiB).
//!
//! Invariants checked:
//! - split_statements returns non-empty, trimmed substrings of the input;
//! - no literal survives sanitizing: the input followed by a newline and a
//!   numeric literal (`= 9876543210`) sanitizes to text without that number
//!   (unless the input itself contains it). The newline ends any line
//!   comment; an unterminated string, quoted identifier, dollar quote or
//!   block comment swallows the number, which must then be masked too.
#![no_main]
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use periscope::protocols::sql::{
    analyze, analyze_for, sanitize, sanitize_for, split_statements, split_statements_for, DbSystem,
};

const MARK: &str = "9876543210";

fn check(sql: &str) {
    for stmts in [
        split_statements(sql),
        split_statements_for(DbSystem::Postgresql, sql),
        split_statements_for(DbSystem::Mysql, sql),
    ] {
        for s in &stmts {
            assert!(!s.is_empty());
            assert_eq!(s.trim(), s);
            assert!(sql.contains(s.as_str()));
        }
    }
    let _ = analyze(sql);
    let _ = analyze_for(DbSystem::Postgresql, sql);
    let _ = analyze_for(DbSystem::Mysql, sql);

    let plain = [sanitize(sql), sanitize_for(DbSystem::Postgresql, sql), sanitize_for(DbSystem::Mysql, sql)];
    for s in &plain {
        // Spaces are collapsed and never lead or trail. (Other whitespace,
        // e.g. \x0b, may be kept as punctuation when the text does not
        // tokenize: harmless, so not checked.)
        assert_eq!(s.trim_matches(' '), s, "sanitized text has outer spaces");
    }
    if !sql.contains(MARK) {
        let marked = format!("{sql}\n = {MARK}");
        for (name, s) in [
            ("generic", sanitize(&marked)),
            ("postgresql", sanitize_for(DbSystem::Postgresql, &marked)),
            ("mysql", sanitize_for(DbSystem::Mysql, &marked)),
        ] {
            assert!(!s.contains(MARK), "{name}: literal leaked: {marked:?} -> {s:?}");
        }
    }
}

type Worker = (SyncSender<String>, Receiver<()>);

fn worker() -> &'static Mutex<Worker> {
    static W: OnceLock<Mutex<Worker>> = OnceLock::new();
    W.get_or_init(|| {
        let (to_worker, inbox) = sync_channel::<String>(0);
        let (to_main, done) = sync_channel::<()>(0);
        std::thread::Builder::new()
            .name("sql-2MiB".into())
            .stack_size(2 << 20)
            .spawn(move || {
                for sql in inbox {
                    check(&sql);
                    to_main.send(()).unwrap();
                }
            })
            .unwrap();
        Mutex::new((to_worker, done))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    let w = worker().lock().unwrap_or_else(|e| e.into_inner());
    w.0.send(sql.to_owned()).unwrap();
    // A panic on the worker drops its sender: recv fails, and we fail too.
    w.1.recv().expect("sql worker panicked");
});

//! A small hand-written SQL lexer: never fails, never panics, works on
//! truncated text. Used to split statements, as the fallback of the
//! sanitizer when sqlparser's tokenizer rejects the text, and for the token
//! based operation/table guess.

use super::STok;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LexKind {
    Ws,
    Comment,
    /// Bare word (keyword or identifier).
    Word,
    /// `"ident"` (PostgreSQL) or `` `ident` ``.
    QuotedIdent,
    /// Any string literal, including its prefix (`E'..'`, `X'..'`, `$$..$$`).
    Str,
    Number,
    /// `$1`, `?`, `:name`.
    Placeholder,
    /// One punctuation byte.
    Punct,
    /// A quote or comment that never closes: runs to the end of the text.
    Unterminated,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Lexeme {
    pub kind: LexKind,
    pub start: usize,
    pub end: usize,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// Lexes `s`. `mysql` selects MySQL rules: backslash escapes in strings,
/// `#` comments, `"` delimits strings, no dollar quoting.
pub(crate) fn lex(s: &str, mysql: bool) -> Vec<Lexeme> {
    let b = s.as_bytes();
    let n = b.len();
    let mut out: Vec<Lexeme> = Vec::new();
    let mut i = 0;
    while i < n {
        let c = b[i];
        let start = i;
        let kind;
        if c.is_ascii_whitespace() {
            while i < n && b[i].is_ascii_whitespace() {
                i += 1;
            }
            kind = LexKind::Ws;
        } else if (c == b'-' && b.get(i + 1) == Some(&b'-')) || (mysql && c == b'#') {
            while i < n && b[i] != b'\n' {
                i += 1;
            }
            kind = LexKind::Comment;
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            let mut depth = 1;
            while i < n && depth > 0 {
                if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                } else if !mysql && b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else {
                    i += 1;
                }
            }
            kind = if depth == 0 { LexKind::Comment } else { LexKind::Unterminated };
        } else if c == b'\'' {
            // A prefix word glued to the quote makes it part of the literal.
            let mut backslash = mysql;
            let mut lit_start = start;
            if let Some(prev) = out.last() {
                if prev.kind == LexKind::Word && prev.end == start {
                    let w = &s[prev.start..prev.end];
                    if matches!(
                        w.to_ascii_lowercase().as_str(),
                        "e" | "x" | "b" | "n" | "u" | "_utf8" | "_utf8mb4" | "_latin1" | "_binary"
                    ) {
                        backslash |= w.eq_ignore_ascii_case("e");
                        lit_start = prev.start;
                        out.pop();
                    }
                } else if prev.kind == LexKind::Punct && prev.end == start && &s[prev.start..prev.end] == "&" {
                    // U&'...'
                    if out.len() >= 2 {
                        let w = out[out.len() - 2];
                        if w.kind == LexKind::Word && w.end == prev.start && s[w.start..w.end].eq_ignore_ascii_case("u")
                        {
                            lit_start = w.start;
                            out.pop();
                            out.pop();
                        }
                    }
                }
            }
            let (end, closed) = quoted(b, i, b'\'', backslash);
            i = end;
            out.push(Lexeme {
                kind: if closed { LexKind::Str } else { LexKind::Unterminated },
                start: lit_start,
                end: i,
            });
            continue;
        } else if c == b'"' {
            let (end, closed) = quoted(b, i, b'"', mysql);
            i = end;
            kind = if !closed {
                LexKind::Unterminated
            } else if mysql {
                LexKind::Str
            } else {
                LexKind::QuotedIdent
            };
        } else if c == b'`' {
            let (end, closed) = quoted(b, i, b'`', false);
            i = end;
            kind = if closed { LexKind::QuotedIdent } else { LexKind::Unterminated };
        } else if c == b'$' && !mysql {
            if b.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                i += 1;
                while i < n && b[i].is_ascii_digit() {
                    i += 1;
                }
                kind = LexKind::Placeholder;
            } else if let Some(tag_end) = dollar_tag(b, i) {
                let tag = &b[i..tag_end];
                match find(b, tag_end, tag) {
                    Some(close) => {
                        i = close + tag.len();
                        kind = LexKind::Str;
                    }
                    None => {
                        i = n;
                        kind = LexKind::Unterminated;
                    }
                }
            } else {
                i += 1;
                kind = LexKind::Punct;
            }
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            i += 1;
            while i < n {
                let d = b[i];
                let exponent_sign = (d == b'+' || d == b'-') && matches!(b[i - 1], b'e' | b'E');
                if d.is_ascii_alphanumeric() || d == b'.' || d == b'_' || exponent_sign {
                    i += 1;
                } else {
                    break;
                }
            }
            kind = LexKind::Number;
        } else if c == b'?' {
            i += 1;
            kind = LexKind::Placeholder;
        } else if c == b':' && b.get(i + 1).is_some_and(|&d| is_ident_start(d)) && (i == 0 || b[i - 1] != b':') {
            i += 1;
            while i < n && is_ident_cont(b[i]) {
                i += 1;
            }
            kind = LexKind::Placeholder;
        } else if is_ident_start(c) {
            while i < n && is_ident_cont(b[i]) {
                i += 1;
            }
            kind = LexKind::Word;
        } else {
            i += 1;
            kind = LexKind::Punct;
        }
        out.push(Lexeme { kind, start, end: i });
    }
    out
}

/// Scans a quoted run starting at `b[i] == q`; doubled quotes are escapes,
/// and backslash escapes when `backslash`. Returns (end, closed).
fn quoted(b: &[u8], mut i: usize, q: u8, backslash: bool) -> (usize, bool) {
    i += 1;
    while i < b.len() {
        let c = b[i];
        if backslash && c == b'\\' {
            i += 2;
        } else if c == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
            } else {
                return (i + 1, true);
            }
        } else {
            i += 1;
        }
    }
    (b.len(), false)
}

/// `$tag$` starting at `b[i] == '$'`: returns the index after the second `$`.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if j < b.len() && b[j] == b'$' {
        return Some(j + 1);
    }
    if j >= b.len() || !(b[j].is_ascii_alphabetic() || b[j] == b'_' || b[j] >= 0x80) {
        return None;
    }
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
        j += 1;
    }
    if j < b.len() && b[j] == b'$' {
        Some(j + 1)
    } else {
        None
    }
}

fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..].windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// Significant tokens for the token based analysis.
pub(crate) fn significant(s: &str, lexemes: &[Lexeme]) -> Vec<STok> {
    let mut out = Vec::new();
    for l in lexemes {
        let text = &s[l.start..l.end];
        let t = match l.kind {
            LexKind::Ws | LexKind::Comment => continue,
            LexKind::Word => STok::Word(text.to_string(), text.to_ascii_uppercase()),
            LexKind::QuotedIdent => {
                let q = text.as_bytes()[0] as char;
                let inner = &text[1..text.len() - 1];
                STok::Ident(inner.replace(&format!("{q}{q}"), &q.to_string()))
            }
            LexKind::Punct => STok::Punct(text.chars().next().unwrap_or(' ')),
            _ => STok::Other,
        };
        out.push(t);
    }
    out
}

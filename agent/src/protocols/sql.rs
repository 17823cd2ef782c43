//! Shared SQL types and text analysis for the PostgreSQL and MySQL wire
//! protocol parsers: what one statement execution looks like ([`SqlCall`]),
//! statement splitting, operation/table extraction ([`analyze`]) and literal
//! masking ([`sanitize`]).
//!
//! Everything here is pure: text in, values out.

use sqlparser::ast::{
    CopySource, FromTable, ObjectName, Query, SetExpr, Statement, TableFactor, TableObject, TableWithJoins,
};
use sqlparser::dialect::{Dialect, GenericDialect, MySqlDialect, PostgreSqlDialect};
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

pub(crate) mod framing;
mod lex;

use lex::{LexKind, Lexeme};

/// Which database protocol a call came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DbSystem {
    Postgresql,
    Mysql,
}

impl DbSystem {
    /// The OpenTelemetry `db.system.name` value.
    pub fn as_str(self) -> &'static str {
        match self {
            DbSystem::Postgresql => "postgresql",
            DbSystem::Mysql => "mysql",
        }
    }
}

/// How one statement execution ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SqlOutcome {
    Ok {
        /// Rows returned or affected, when the protocol says.
        rows: Option<u64>,
    },
    Error {
        /// SQLSTATE for PostgreSQL; for MySQL the SQLSTATE when present,
        /// else the numeric error code as text.
        code: String,
        message: String,
        mysql_errno: Option<u16>,
    },
}

/// One statement execution: what becomes a CLIENT (or SERVER) span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlCall {
    pub system: DbSystem,
    /// The raw statement text (possibly truncated to the capture limit).
    /// Empty when the statement was prepared before we started watching.
    pub query: String,
    /// Upper-case operation: SELECT, INSERT, UPDATE, DELETE, CREATE, BEGIN...
    pub operation: Option<String>,
    /// First / main table, as written (schema-qualified when it was), unquoted.
    pub collection: Option<String>,
    /// Database name.
    pub namespace: Option<String>,
    /// CLOCK_MONOTONIC ns: request start and completion.
    pub start_ns: u64,
    pub end_ns: u64,
    pub outcome: SqlOutcome,
    /// Came through the extended protocol / a prepared statement.
    pub prepared: bool,
}

/// Counters kept by a protocol session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SqlStats {
    /// Protocol messages (PostgreSQL) or packets (MySQL) fully framed.
    pub messages: u64,
    /// Messages deliberately skipped: COPY data, notifications, cancel
    /// requests, LOCAL INFILE data, TLS-encrypted chunks...
    pub skipped: u64,
    /// Messages whose content could not be parsed.
    pub parse_errors: u64,
    /// Times framing was lost on an implausible header, and state for that
    /// direction was dropped.
    pub desyncs: u64,
    /// Times framing was lost because uncaptured bytes ran past a message
    /// boundary (a message larger than the capture): expected with large
    /// results; the call still ends (at the next request).
    pub desyncs_uncaptured: u64,
    /// Chunks dropped while waiting to re-align after a desync.
    pub chunks_dropped: u64,
    /// Calls that were started but never completed (lost responses, state
    /// dropped on desync).
    pub calls_dropped: u64,
    /// Responses that matched no outstanding request.
    pub orphan_responses: u64,
    /// The connection switched to TLS/GSS encryption; nothing after that
    /// point is parsed.
    pub encrypted: bool,
}

impl SqlStats {
    /// As a session's counts.
    pub fn counts(&self) -> super::Counts {
        use super::{Count, NO_COUNT};
        [
            (Count::ParseError, "malformed message", self.parse_errors),
            (Count::Desync, "implausible header", self.desyncs),
            (Count::Desync, "message beyond capture", self.desyncs_uncaptured),
            (Count::Unmatched, "response without request", self.orphan_responses),
            (Count::Unmatched, "call never completed", self.calls_dropped),
            (Count::Skipped, "not parsed", self.skipped),
            NO_COUNT,
            NO_COUNT,
        ]
    }

    pub(crate) fn count_desync(&mut self, uncaptured: bool) {
        if uncaptured {
            self.desyncs_uncaptured += 1;
        } else {
            self.desyncs += 1;
        }
    }
}

/// Operation and main table of one statement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SqlInfo {
    pub operation: Option<String>,
    pub collection: Option<String>,
}

fn dialect_for(system: Option<DbSystem>) -> Box<dyn Dialect> {
    match system {
        Some(DbSystem::Postgresql) => Box::new(PostgreSqlDialect {}),
        Some(DbSystem::Mysql) => Box::new(MySqlDialect {}),
        None => Box::new(GenericDialect {}),
    }
}

fn is_mysql(system: Option<DbSystem>) -> bool {
    system == Some(DbSystem::Mysql)
}

// ---------------------------------------------------------------------------
// Splitting
// ---------------------------------------------------------------------------

/// Splits a multi-statement string on top-level `;`, respecting quotes,
/// dollar quotes and comments (PostgreSQL lexical rules). Statements that
/// are empty or only comments are dropped; each statement is trimmed and
/// has no trailing `;`.
pub fn split_statements(sql: &str) -> Vec<String> {
    split_statements_for(DbSystem::Postgresql, sql)
}

/// [`split_statements`] with the lexical rules of `system` (MySQL: backslash
/// escapes, `#` comments, `"` strings, no dollar quotes).
pub fn split_statements_for(system: DbSystem, sql: &str) -> Vec<String> {
    let lexemes = lex::lex(sql, system == DbSystem::Mysql);
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut significant = false;
    for l in &lexemes {
        match l.kind {
            LexKind::Punct if &sql[l.start..l.end] == ";" => {
                // `trim` also drops Unicode whitespace the lexer keeps as
                // text (\x0b, U+00A0...): such a statement is empty too.
                let stmt = sql[start..l.start].trim();
                if significant && !stmt.is_empty() {
                    out.push(stmt.to_string());
                }
                start = l.end;
                significant = false;
            }
            LexKind::Ws | LexKind::Comment => {}
            _ => significant = true,
        }
    }
    let stmt = sql[start..].trim();
    if significant && !stmt.is_empty() {
        out.push(stmt.to_string());
    }
    out
}

// ---------------------------------------------------------------------------
// Analysis
// ---------------------------------------------------------------------------

/// Operation and main table of one statement, with the generic dialect.
pub fn analyze(sql: &str) -> SqlInfo {
    analyze_impl(None, sql)
}

/// Operation and main table of one statement, with `system`'s dialect.
pub fn analyze_for(system: DbSystem, sql: &str) -> SqlInfo {
    analyze_impl(Some(system), sql)
}

/// Statements longer than this are not given to the full parser (the token
/// based guess is used instead): bounded CPU per statement.
const MAX_PARSE_LEN: usize = 64 * 1024;

/// Distinct statement shapes remembered per thread (cleared when full), and
/// the longest statement cached: at most 4096 x 2 KiB per thread.
const ANALYSIS_CACHE: usize = 4096;
const CACHED_LEN: usize = 2048;

thread_local! {
    static CACHE: std::cell::RefCell<std::collections::HashMap<(u8, String), SqlInfo>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Statements that differ only in their literals (`... WHERE aid = 17`) have
/// the same operation and table: the full parse runs once per shape.
fn analyze_impl(system: Option<DbSystem>, sql: &str) -> SqlInfo {
    if sql.len() > CACHED_LEN {
        return analyze_uncached(system, sql);
    }
    let tag = match system {
        None => 0,
        Some(DbSystem::Postgresql) => 1,
        Some(DbSystem::Mysql) => 2,
    };
    let shape = (
        tag,
        match system {
            Some(s) => sanitize_for(s, sql),
            None => sanitize(sql),
        },
    );
    if let Some(hit) = CACHE.with(|c| c.borrow().get(&shape).cloned()) {
        return hit;
    }
    let info = analyze_uncached(system, sql);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= ANALYSIS_CACHE {
            c.clear();
        }
        c.insert(shape, info.clone());
    });
    info
}

fn analyze_uncached(system: Option<DbSystem>, sql: &str) -> SqlInfo {
    let lexemes = lex::lex(sql, is_mysql(system));
    let words = lex::significant(sql, &lexemes);
    let operation = operation_from_tokens(&words);
    let mut collection = None;
    let mut parsed = false;
    if sql.len() <= MAX_PARSE_LEN {
        let dialect = dialect_for(system);
        let stmts = Parser::parse_sql(dialect.as_ref(), sql).unwrap_or_default();
        if let Some(stmt) = stmts.first() {
            parsed = true;
            collection = table_of_statement(stmt, &[], 0);
        }
    }
    if !parsed {
        collection = table_from_tokens(&words);
    }
    SqlInfo { operation, collection }
}

/// Significant token (no whitespace or comments) for the token based
/// analysis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum STok {
    /// Bare word, upper-cased copy kept alongside the original text.
    Word(String, String),
    /// Quoted identifier, unquoted.
    Ident(String),
    Punct(char),
    Other,
}

impl STok {
    fn kw(&self) -> Option<&str> {
        match self {
            STok::Word(_, up) => Some(up.as_str()),
            _ => None,
        }
    }
}

fn operation_from_tokens(toks: &[STok]) -> Option<String> {
    let mut iter = toks.iter().skip_while(|t| matches!(t, STok::Punct('(')));
    let first = iter.next()?.kw()?;
    if first != "WITH" {
        return Some(first.to_string());
    }
    // The main statement of a CTE query: the first DML keyword at paren
    // depth 0 after the WITH list.
    let mut depth = 0i32;
    for t in iter {
        match t {
            STok::Punct('(') => depth += 1,
            STok::Punct(')') => depth -= 1,
            STok::Word(_, up) if depth == 0 => {
                if matches!(up.as_str(), "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "VALUES" | "TABLE") {
                    return Some(up.clone());
                }
            }
            _ => {}
        }
    }
    Some("SELECT".to_string())
}

const NOT_A_TABLE: &[&str] = &[
    "SELECT",
    "VALUES",
    "LATERAL",
    "ONLY",
    "IF",
    "NOT",
    "EXISTS",
    "TEMPORARY",
    "TEMP",
    "UNLOGGED",
    "TABLE",
    "WITH",
    "SET",
    "WHERE",
    "STDIN",
    "STDOUT",
    "DUAL",
    "IGNORE",
    "LOW_PRIORITY",
    "DELAYED",
    "HIGH_PRIORITY",
    "QUICK",
    "UNNEST",
];

fn table_from_tokens(toks: &[STok]) -> Option<String> {
    // CTE names are not tables: `name AS (` / `name (cols) AS (` at depth 0.
    let mut ctes: Vec<String> = Vec::new();
    if toks.first().and_then(STok::kw) == Some("WITH") {
        let mut depth = 0;
        for (i, t) in toks.iter().enumerate() {
            match t {
                STok::Punct('(') => depth += 1,
                STok::Punct(')') => depth -= 1,
                STok::Word(w, _) | STok::Ident(w) if depth == 0 => {
                    let next = toks.get(i + 1);
                    if next.and_then(STok::kw) == Some("AS") || next == Some(&STok::Punct('(')) {
                        ctes.push(w.to_ascii_lowercase());
                    }
                }
                _ => {}
            }
        }
    }
    let first_kw = toks.iter().find_map(STok::kw);
    for (i, t) in toks.iter().enumerate() {
        let Some(kw) = t.kw() else { continue };
        let trigger = matches!(kw, "FROM" | "INTO" | "UPDATE" | "TABLE" | "JOIN" | "TRUNCATE")
            || (kw == "COPY" && i == 0)
            || (kw == "ON" && first_kw == Some("CREATE"));
        if !trigger {
            continue;
        }
        let mut j = i + 1;
        // Skip modifiers: IF NOT EXISTS, ONLY, LATERAL...
        while let Some(STok::Word(_, up)) = toks.get(j) {
            if matches!(
                up.as_str(),
                "IF" | "NOT"
                    | "EXISTS"
                    | "ONLY"
                    | "LATERAL"
                    | "TABLE"
                    | "IGNORE"
                    | "LOW_PRIORITY"
                    | "QUICK"
                    | "CONCURRENTLY"
            ) {
                j += 1;
            } else {
                break;
            }
        }
        if let Some(name) = dotted_name(toks, j) {
            let lower = name.to_ascii_lowercase();
            if ctes.contains(&lower) {
                continue;
            }
            return Some(name);
        }
    }
    None
}

/// `a`, `a.b`, `"a"."b"` starting at `toks[j]`.
fn dotted_name(toks: &[STok], mut j: usize) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    loop {
        match toks.get(j)? {
            STok::Word(w, up) => {
                if parts.is_empty() && NOT_A_TABLE.contains(&up.as_str()) {
                    return None;
                }
                parts.push(w.clone());
            }
            STok::Ident(w) => parts.push(w.clone()),
            _ => break,
        }
        if toks.get(j + 1) == Some(&STok::Punct('.')) {
            j += 2;
        } else {
            break;
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("."))
    }
}

fn object_name(name: &ObjectName) -> Option<String> {
    let parts: Vec<&str> = name.0.iter().filter_map(|p| p.as_ident().map(|i| i.value.as_str())).collect();
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("."))
    }
}

/// Recursion guard for pathological nesting.
const MAX_DEPTH: usize = 16;

fn table_of_statement(stmt: &Statement, ctes: &[(String, &Query)], depth: usize) -> Option<String> {
    if depth > MAX_DEPTH {
        return None;
    }
    match stmt {
        Statement::Query(q) => table_of_query(q, ctes, depth + 1),
        Statement::Insert(ins) => match &ins.table {
            TableObject::TableName(n) => object_name(n),
            _ => None,
        },
        Statement::Update(u) => table_of_twj(&u.table, ctes, depth + 1),
        Statement::Delete(d) => {
            if let Some(n) = d.tables.first() {
                return object_name(n);
            }
            let (FromTable::WithFromKeyword(v) | FromTable::WithoutKeyword(v)) = &d.from;
            v.iter().find_map(|t| table_of_twj(t, ctes, depth + 1))
        }
        Statement::CreateTable(c) => object_name(&c.name),
        Statement::CreateIndex(c) => object_name(&c.table_name),
        Statement::AlterTable(a) => object_name(&a.name),
        Statement::Drop { names, .. } => names.first().and_then(object_name),
        Statement::Truncate(t) => t.table_names.first().and_then(|t| object_name(&t.name)),
        Statement::Copy { source, .. } => match source {
            CopySource::Table { table_name, .. } => object_name(table_name),
            CopySource::Query(q) => table_of_query(q, ctes, depth + 1),
        },
        _ => None,
    }
}

fn table_of_query<'a>(q: &'a Query, outer: &[(String, &'a Query)], depth: usize) -> Option<String> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut ctes: Vec<(String, &Query)> = outer.to_vec();
    if let Some(with) = &q.with {
        for cte in &with.cte_tables {
            ctes.push((cte.alias.name.value.to_ascii_lowercase(), &cte.query));
        }
    }
    table_of_setexpr(&q.body, &ctes, depth + 1)
}

fn table_of_setexpr(e: &SetExpr, ctes: &[(String, &Query)], depth: usize) -> Option<String> {
    if depth > MAX_DEPTH {
        return None;
    }
    match e {
        SetExpr::Select(s) => s.from.iter().find_map(|t| table_of_twj(t, ctes, depth + 1)),
        SetExpr::Query(q) => table_of_query(q, ctes, depth + 1),
        SetExpr::SetOperation { left, right, .. } => {
            table_of_setexpr(left, ctes, depth + 1).or_else(|| table_of_setexpr(right, ctes, depth + 1))
        }
        SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) => table_of_statement(s, ctes, depth + 1),
        _ => None,
    }
}

fn table_of_twj(t: &TableWithJoins, ctes: &[(String, &Query)], depth: usize) -> Option<String> {
    table_of_factor(&t.relation, ctes, depth + 1)
        .or_else(|| t.joins.iter().find_map(|j| table_of_factor(&j.relation, ctes, depth + 1)))
}

fn table_of_factor(f: &TableFactor, ctes: &[(String, &Query)], depth: usize) -> Option<String> {
    if depth > MAX_DEPTH {
        return None;
    }
    match f {
        TableFactor::Table { name, args, .. } => {
            if args.is_some() {
                return None; // table function
            }
            let single = if name.0.len() == 1 { name.0[0].as_ident() } else { None };
            if let Some(id) = single {
                let lower = id.value.to_ascii_lowercase();
                if let Some((_, q)) = ctes.iter().find(|(n, _)| *n == lower) {
                    // The CTE's own main table; the CTE itself is not
                    // visible to nested lookups of the same name.
                    let inner: Vec<(String, &Query)> = ctes.iter().filter(|(n, _)| *n != lower).cloned().collect();
                    return table_of_query(q, &inner, depth + 1);
                }
            }
            object_name(name)
        }
        TableFactor::Derived { subquery, .. } => table_of_query(subquery, ctes, depth + 1),
        TableFactor::NestedJoin { table_with_joins, .. } => table_of_twj(table_with_joins, ctes, depth + 1),
        _ => None,
    }
}

/// Operation name from a PostgreSQL CommandComplete tag (`INSERT 0 1` ->
/// `INSERT`), used when the statement text is unknown.
pub(crate) fn operation_from_tag(tag: &str) -> Option<String> {
    let w = tag.split_ascii_whitespace().next()?;
    if w.bytes().all(|b| b.is_ascii_alphabetic()) {
        Some(w.to_ascii_uppercase())
    } else {
        None
    }
}

// ---------------------------------------------------------------------------
// Sanitizing
// ---------------------------------------------------------------------------

/// Replaces every literal (strings of any flavour, numbers, hex/bit
/// strings, dollar-quoted strings) with `?`, drops comments, collapses
/// whitespace; keeps keywords, identifiers, `TRUE`/`FALSE`/`NULL` and
/// placeholders (`$1`, `?`, `:name`). Generic (PostgreSQL-like) lexical
/// rules: `"x"` is an identifier.
pub fn sanitize(sql: &str) -> String {
    sanitize_impl(None, sql)
}

/// [`sanitize`] with the lexical rules of `system`; for MySQL `"x"` is a
/// string literal and backslash escapes apply.
pub fn sanitize_for(system: DbSystem, sql: &str) -> String {
    sanitize_impl(Some(system), sql)
}

/// One output piece of the sanitizer, before joining.
#[derive(PartialEq)]
enum Piece {
    Space,
    Literal,
    Minus,
    /// Something after which a `-` is binary (identifier, literal, `)`).
    Operand(String),
    Other(String),
}

fn sanitize_impl(system: Option<DbSystem>, sql: &str) -> String {
    let pieces = sanitize_with_sqlparser(system, sql).unwrap_or_else(|| sanitize_by_hand(is_mysql(system), sql));
    join_pieces(pieces)
}

fn sanitize_with_sqlparser(system: Option<DbSystem>, sql: &str) -> Option<Vec<Piece>> {
    let dialect = dialect_for(system);
    let tokens = Tokenizer::new(dialect.as_ref(), sql).with_unescape(false).tokenize().ok()?;
    let mut out = Vec::with_capacity(tokens.len());
    for t in tokens {
        let p = match t {
            Token::EOF => continue,
            Token::Whitespace(_) => Piece::Space,
            Token::Word(w) => match w.quote_style {
                None | Some('"') | Some('`') | Some('[') => Piece::Operand(w.to_string()),
                Some(_) => Piece::Literal,
            },
            Token::Placeholder(p) if is_placeholder(&p) => Piece::Operand(p),
            Token::Minus => Piece::Minus,
            Token::RParen => Piece::Operand(")".into()),
            // Punctuation and operators carry no data.
            t @ (Token::Comma
            | Token::DoubleEq
            | Token::Eq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Spaceship
            | Token::Plus
            | Token::Mul
            | Token::Div
            | Token::DuckIntDiv
            | Token::Mod
            | Token::StringConcat
            | Token::LParen
            | Token::Period
            | Token::Colon
            | Token::DoubleColon
            | Token::Assignment
            | Token::SemiColon
            | Token::Backslash
            | Token::LBracket
            | Token::RBracket
            | Token::Ampersand
            | Token::Pipe
            | Token::Caret
            | Token::LBrace
            | Token::RBrace
            | Token::RArrow
            | Token::Sharp
            | Token::Tilde
            | Token::ExclamationMark
            | Token::AtSign
            | Token::Arrow
            | Token::LongArrow
            | Token::HashArrow
            | Token::HashLongArrow
            | Token::AtArrow
            | Token::ArrowAt
            | Token::Question
            | Token::ShiftLeft
            | Token::ShiftRight) => Piece::Other(t.to_string()),
            Token::Char(c) if c.is_ascii_punctuation() && c != '\'' && c != '"' => Piece::Other(c.to_string()),
            // Everything else: literals of all kinds, COPY data, custom
            // operators and anything a future sqlparser adds.
            _ => Piece::Literal,
        };
        out.push(p);
    }
    // Whitespace variants other than comments are spaces; comments were
    // mapped to spaces above as well (Whitespace covers both).
    let _ = Whitespace::Space;
    Some(out)
}

/// `$1`, `?`, `?1`, `:name`, `@name`: bind markers, not data.
fn is_placeholder(p: &str) -> bool {
    let (head, rest) = p.split_at(p.chars().next().map_or(0, char::len_utf8));
    match head {
        "$" => !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()),
        "?" => rest.bytes().all(|b| b.is_ascii_digit()),
        ":" | "@" => !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        _ => false,
    }
}

fn sanitize_by_hand(mysql: bool, sql: &str) -> Vec<Piece> {
    lex::lex(sql, mysql)
        .iter()
        .map(|l: &Lexeme| {
            let text = &sql[l.start..l.end];
            match l.kind {
                LexKind::Ws | LexKind::Comment => Piece::Space,
                LexKind::Str | LexKind::Number | LexKind::Unterminated => Piece::Literal,
                LexKind::Word | LexKind::QuotedIdent | LexKind::Placeholder => Piece::Operand(text.to_string()),
                LexKind::Punct if text == "-" => Piece::Minus,
                LexKind::Punct if text == ")" => Piece::Operand(text.to_string()),
                LexKind::Punct => Piece::Other(text.to_string()),
            }
        })
        .collect()
}

fn join_pieces(pieces: Vec<Piece>) -> String {
    // Drop unary minus in front of a literal: `= -5` -> `= ?`.
    let mut out = String::new();
    let mut prev_operand = false; // last significant piece was an operand
    let mut pending_space = false;
    let n = pieces.len();
    for i in 0..n {
        match &pieces[i] {
            Piece::Space => {
                pending_space = !out.is_empty();
                continue;
            }
            Piece::Minus => {
                let next_lit =
                    pieces[i + 1..].iter().find(|p| **p != Piece::Space).is_some_and(|p| *p == Piece::Literal);
                if next_lit && !prev_operand {
                    continue; // unary minus of a literal
                }
                push(&mut out, &mut pending_space, "-");
                prev_operand = false;
            }
            Piece::Literal => {
                push(&mut out, &mut pending_space, "?");
                prev_operand = true;
            }
            Piece::Operand(s) => {
                push(&mut out, &mut pending_space, s);
                prev_operand = true;
            }
            Piece::Other(s) => {
                push(&mut out, &mut pending_space, s);
                prev_operand = false;
            }
        }
    }
    out
}

fn push(out: &mut String, pending_space: &mut bool, s: &str) {
    if *pending_space {
        out.push(' ');
        *pending_space = false;
    }
    out.push_str(s);
}

// ---------------------------------------------------------------------------
// Detection helper
// ---------------------------------------------------------------------------

const SQL_KEYWORDS: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "WITH",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "START",
    "END",
    "SET",
    "SHOW",
    "CREATE",
    "DROP",
    "ALTER",
    "TRUNCATE",
    "COPY",
    "EXPLAIN",
    "ANALYZE",
    "VACUUM",
    "LISTEN",
    "NOTIFY",
    "UNLISTEN",
    "DECLARE",
    "FETCH",
    "CLOSE",
    "DISCARD",
    "DEALLOCATE",
    "PREPARE",
    "EXECUTE",
    "CALL",
    "DO",
    "LOCK",
    "GRANT",
    "REVOKE",
    "VALUES",
    "TABLE",
    "MERGE",
    "SAVEPOINT",
    "RELEASE",
    "RESET",
    "COMMENT",
    "REFRESH",
    "REINDEX",
    "CLUSTER",
    "ABORT",
    "CHECKPOINT",
    "LOAD",
    "SELECT",
    "USE",
    "REPLACE",
    "DESCRIBE",
    "DESC",
    "HANDLER",
];

/// Whether `b` (a prefix of SQL text) starts like a SQL statement: optional
/// whitespace, comments or `(`, then a known keyword; printable throughout.
pub(crate) fn looks_like_sql_text(b: &[u8]) -> bool {
    let b = &b[..b.len().min(256)];
    if b.iter().any(|&c| c < 0x20 && !matches!(c, b'\t' | b'\n' | b'\r')) {
        return false;
    }
    let mut i = 0;
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'(') {
            i += 1;
        }
        if b[i..].starts_with(b"--") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            match b[i..].windows(2).position(|w| w == b"*/") {
                Some(p) => i += p + 2,
                None => return false,
            }
        } else {
            break;
        }
    }
    let w: Vec<u8> = b[i..].iter().take_while(|c| c.is_ascii_alphabetic()).map(u8::to_ascii_uppercase).collect();
    let next = b.get(i + w.len()).copied();
    let boundary = next.is_none_or(|c| !c.is_ascii_alphanumeric() && c != b'_');
    boundary && SQL_KEYWORDS.iter().any(|k| k.as_bytes() == w.as_slice())
}

#[cfg(test)]
pub(crate) mod tests;

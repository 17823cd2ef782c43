//! Spans: routes, query strings, SQL text, old attribute names
//! (`--routes`, `--include-query-string`, `--db-query-*`,
//! `--semconv-stability-opt-in`).
use crate::spans::{
    http::HttpSpanOptions,
    routes::{RouterConfig, Unmatched},
    sql::SqlSpanOptions,
};

use super::ConfigError;

/// The span flags.
#[derive(Clone, Debug, clap::Args)]
pub struct SpanArgs {
    /// Route patterns, e.g. "/users/{id},/static/**".
    #[arg(long, env = "PERISCOPE_ROUTES", value_delimiter = ',')]
    pub routes: Vec<String>,

    /// Paths for which no span or metric is made, e.g. "/health,/metrics".
    #[arg(long, env = "PERISCOPE_IGNORED_ROUTES", value_delimiter = ',')]
    pub ignored_routes: Vec<String>,

    /// What http.route is for paths no pattern matches: heuristic, path, wildcard, unset.
    #[arg(long, env = "PERISCOPE_ROUTE_UNMATCHED", default_value = "heuristic")]
    pub route_unmatched: Unmatched,

    /// Distinct routes per service before new ones are folded into "/**".
    #[arg(long, env = "PERISCOPE_MAX_ROUTES", default_value_t = 200)]
    pub max_routes: usize,

    /// Keep URL query strings (redacted by default).
    #[arg(long, env = "PERISCOPE_INCLUDE_QUERY_STRING", default_value_t = false, action = clap::ArgAction::Set)]
    pub include_query_string: bool,

    /// Put the sanitized SQL text (literals replaced by `?`) in db.query.text.
    #[arg(long, env = "PERISCOPE_DB_QUERY_TEXT", default_value_t = true, action = clap::ArgAction::Set)]
    pub db_query_text: bool,

    /// Keep SQL literals in db.query.text and error messages (privacy: off by default).
    #[arg(long, env = "PERISCOPE_DB_QUERY_LITERALS", default_value_t = false, action = clap::ArgAction::Set)]
    pub db_query_literals: bool,

    /// Comma-separated: `http/dup` adds the old HTTP attribute names, `database/dup` the old DB names.
    #[arg(long, env = "OTEL_SEMCONV_STABILITY_OPT_IN", default_value = "")]
    pub semconv_stability_opt_in: String,
}

/// The span group resolved: what the span builders and the router take.
#[derive(Clone, Debug)]
pub struct SpanSettings {
    /// The validated route patterns; the pipeline builds its router from them.
    pub router: RouterConfig,
    /// Old attribute names, query strings.
    pub http: HttpSpanOptions,
    /// Query text, literals, old attribute names.
    pub sql: SqlSpanOptions,
}

impl SpanArgs {
    /// Validates the route patterns.
    pub fn resolve(&self) -> Result<SpanSettings, ConfigError> {
        let router = RouterConfig::new(&self.routes, &self.ignored_routes, self.route_unmatched, self.max_routes)
            .map_err(|message| ConfigError::Invalid { key: "routes", message })?;
        let opt_in = SemconvOptIns::parse(&self.semconv_stability_opt_in);
        Ok(SpanSettings {
            router,
            http: HttpSpanOptions {
                old_semconv: opt_in.contains(SemconvOptIn::HttpDup),
                include_query: self.include_query_string,
            },
            sql: SqlSpanOptions {
                query_text: self.db_query_text,
                old_semconv: opt_in.contains(SemconvOptIn::DatabaseDup),
                query_text_literals: self.db_query_literals,
            },
        })
    }
}

/// An `OTEL_SEMCONV_STABILITY_OPT_IN` value periscope acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SemconvOptIn {
    /// `http/dup`: the old HTTP attribute names next to the new ones.
    HttpDup,
    /// `database/dup`: the old database attribute names next to the new ones.
    DatabaseDup,
}

impl SemconvOptIn {
    const ALL: [Self; 2] = [Self::HttpDup, Self::DatabaseDup];

    /// The value as written in the variable.
    pub fn name(self) -> &'static str {
        match self {
            Self::HttpDup => "http/dup",
            Self::DatabaseDup => "database/dup",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The set of opt-ins in a comma-separated `OTEL_SEMCONV_STABILITY_OPT_IN`.
/// Other values (`http`, `database`: the new names only, which periscope
/// emits anyway; anything else) are ignored, as the SDKs ignore them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SemconvOptIns(u8);

impl SemconvOptIns {
    /// Parses a list such as `http/dup, database/dup`; never fails.
    pub fn parse(list: &str) -> Self {
        let mut set = Self::default();
        for value in list.split(',').map(str::trim) {
            if let Some(opt) = SemconvOptIn::ALL.into_iter().find(|o| o.name() == value) {
                set.0 |= opt.bit();
            }
        }
        set
    }

    /// Whether `opt` was given.
    pub fn contains(self, opt: SemconvOptIn) -> bool {
        self.0 & opt.bit() != 0
    }
}

//! `http.route`: user patterns first (`/users/{id}`), then a heuristic that
//! folds identifiers into `*`; a per-service cap keeps cardinality bounded.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

/// Route given to requests once a service has used up its distinct routes.
pub const OVERFLOW_ROUTE: &str = "/**";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// Fold ids, numbers, uuids and hex into `*` (default).
    #[default]
    Heuristic,
    /// The path as is (high cardinality: use with care).
    Path,
    /// Every unmatched path is `/**`.
    Wildcard,
    /// No http.route at all; span names use the method only.
    Unset,
}

impl std::str::FromStr for Unmatched {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "heuristic" => Ok(Self::Heuristic),
            "path" => Ok(Self::Path),
            "wildcard" => Ok(Self::Wildcard),
            "unset" => Ok(Self::Unset),
            other => Err(format!("unknown route mode {other:?} (heuristic, path, wildcard, unset)")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
    /// `*` in a pattern: any single segment; `**` at the end: the rest.
    Rest,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

impl Pattern {
    fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("route pattern {text:?} must start with '/'"));
        }
        let segments = split(text)
            .map(|s| {
                if s == "**" {
                    Segment::Rest
                } else if s == "*" || (s.starts_with('{') && s.ends_with('}')) || s.starts_with(':') {
                    Segment::Param
                } else {
                    Segment::Literal(s.to_owned())
                }
            })
            .collect();
        Ok(Self { text: text.to_owned(), segments })
    }

    fn matches(&self, path: &str) -> bool {
        let mut parts = split(path);
        for seg in &self.segments {
            match seg {
                Segment::Rest => return true,
                Segment::Param => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

fn split(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// Is this path segment an identifier rather than a name?
fn is_identifier(seg: &str) -> bool {
    let digits = seg.bytes().filter(u8::is_ascii_digit).count();
    if digits == 0 {
        return false;
    }
    let all_hex = seg.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    digits == seg.len() || (all_hex && seg.len() >= 8) || seg.len() >= 16 || (seg.len() > 3 && digits * 2 >= seg.len())
}

/// The heuristic low-cardinality form of a path.
pub fn heuristic(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for seg in split(path) {
        out.push('/');
        out.push_str(if is_identifier(seg) { "*" } else { seg });
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The route options, validated (patterns parsed): what a [`Router`] is
/// built from. Made once at startup by the configuration.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    patterns: Vec<Pattern>,
    ignored: Vec<Pattern>,
    unmatched: Unmatched,
    max_routes: usize,
}

impl RouterConfig {
    /// `patterns` (`/users/{id}`, `/static/**`) name routes, `ignored` paths
    /// make no span; every pattern must start with `/`.
    pub fn new(
        patterns: &[String],
        ignored: &[String],
        unmatched: Unmatched,
        max_routes: usize,
    ) -> Result<Self, String> {
        Ok(Self {
            patterns: patterns.iter().map(|p| Pattern::parse(p)).collect::<Result<_, _>>()?,
            ignored: ignored.iter().map(|p| Pattern::parse(p)).collect::<Result<_, _>>()?,
            unmatched,
            max_routes,
        })
    }

    /// The route patterns as given.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(|p| p.text.as_str())
    }

    /// What `http.route` is for paths no pattern matches.
    pub fn unmatched(&self) -> Unmatched {
        self.unmatched
    }
}

/// Resolves routes for every service; one instance lives in the pipeline.
#[derive(Debug)]
pub struct Router {
    config: RouterConfig,
    seen: HashMap<String, HashSet<String>>,
}

/// What the router decided for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Some(String),
    /// No route (mode `unset`).
    None,
    /// The path matches an ignored pattern: make no span or metric.
    Ignored,
    /// The per-service cap was reached: the overflow route.
    Overflow,
}

impl Router {
    /// A router from the validated options.
    pub fn from_config(config: RouterConfig) -> Self {
        Self { config, seen: HashMap::default() }
    }

    /// Validates the options and builds the router (see [`RouterConfig::new`]).
    pub fn new(
        patterns: &[String],
        ignored: &[String],
        unmatched: Unmatched,
        max_routes: usize,
    ) -> Result<Self, String> {
        RouterConfig::new(patterns, ignored, unmatched, max_routes).map(Self::from_config)
    }

    /// `service` is the service.instance.id the cap applies to; `path` has no query.
    pub fn route(&mut self, service: &str, path: &str) -> Route {
        let config = &self.config;
        if config.ignored.iter().any(|p| p.matches(path)) {
            return Route::Ignored;
        }
        let route = match config.patterns.iter().find(|p| p.matches(path)) {
            Some(p) => p.text.clone(),
            None => match config.unmatched {
                Unmatched::Heuristic => heuristic(path),
                Unmatched::Path => path.to_owned(),
                Unmatched::Wildcard => OVERFLOW_ROUTE.to_owned(),
                Unmatched::Unset => return Route::None,
            },
        };
        // Known routes (the hot path) allocate nothing more.
        if let Some(seen) = self.seen.get_mut(service) {
            if seen.contains(&route) {
                return Route::Some(route);
            }
            if seen.len() >= config.max_routes {
                return Route::Overflow;
            }
            seen.insert(route.clone());
            return Route::Some(route);
        }
        self.seen.entry(service.to_owned()).or_default().insert(route.clone());
        Route::Some(route)
    }

    /// Forget a service's routes (its process exited).
    pub fn forget(&mut self, service: &str) {
        self.seen.remove(service);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heuristic_folds_identifiers_only() {
        assert_eq!(heuristic("/users/12345/orders"), "/users/*/orders");
        assert_eq!(heuristic("/items/550e8400-e29b-41d4-a716-446655440000"), "/items/*");
        assert_eq!(heuristic("/blob/deadbeef12"), "/blob/*");
        assert_eq!(heuristic("/api/v1/health"), "/api/v1/health");
        assert_eq!(heuristic("/unicorn"), "/unicorn");
        assert_eq!(heuristic("/"), "/");
        assert_eq!(heuristic("/a//b/"), "/a/b");
    }

    #[test]
    fn patterns_win_and_ignored_paths_vanish() {
        let mut r =
            Router::new(&["/users/{id}".into(), "/static/**".into()], &["/health".into()], Unmatched::Heuristic, 10)
                .unwrap();
        assert_eq!(r.route("s", "/users/abc"), Route::Some("/users/{id}".into()));
        assert_eq!(r.route("s", "/users/abc/x"), Route::Some("/users/abc/x".into()));
        assert_eq!(r.route("s", "/static/css/site.css"), Route::Some("/static/**".into()));
        assert_eq!(r.route("s", "/health"), Route::Ignored);
        assert!(Router::new(&["users".into()], &[], Unmatched::Path, 1).is_err());
    }

    #[test]
    fn cap_is_per_service() {
        let mut r = Router::new(&[], &[], Unmatched::Path, 2).unwrap();
        assert_eq!(r.route("a", "/x"), Route::Some("/x".into()));
        assert_eq!(r.route("a", "/y"), Route::Some("/y".into()));
        assert_eq!(r.route("a", "/z"), Route::Overflow);
        assert_eq!(r.route("a", "/x"), Route::Some("/x".into()), "known routes still resolve");
        assert_eq!(r.route("b", "/z"), Route::Some("/z".into()));
        r.forget("a");
        assert_eq!(r.route("a", "/z"), Route::Some("/z".into()));
    }
}

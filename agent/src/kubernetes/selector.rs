//! Selecting processes by the pod they run in: namespace, labels, owner.
use globset::{Glob, GlobMatcher};

use super::{attributes::Owners, store::PodMatch};

#[derive(Debug, thiserror::Error)]
pub enum PodSelectorError {
    #[error("invalid glob {pattern:?}: {source}")]
    Glob {
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("pod label selector {0:?} is not key=glob")]
    Label(String),
}

#[derive(Debug, Clone)]
struct Pattern {
    source: String,
    matcher: GlobMatcher,
}

impl Pattern {
    fn new(p: &str) -> Result<Self, PodSelectorError> {
        let glob = Glob::new(p).map_err(|source| PodSelectorError::Glob { pattern: p.to_owned(), source })?;
        Ok(Self { source: p.to_owned(), matcher: glob.compile_matcher() })
    }

    fn is_match(&self, s: &str) -> bool {
        self.matcher.is_match(s)
    }
}

fn any(patterns: &[Pattern], s: &str) -> bool {
    patterns.iter().any(|p| p.is_match(s))
}

/// A pod matches when it meets EVERY criterion given: its namespace matches
/// one of the namespace globs, each `key=glob` label matches, and one of its
/// owners (ReplicaSet, Deployment, StatefulSet, ...) matches one of the owner
/// globs. An empty selector matches nothing.
#[derive(Debug, Clone, Default)]
pub struct PodSelector {
    namespaces: Vec<Pattern>,
    labels: Vec<(String, Pattern)>,
    owners: Vec<Pattern>,
}

impl PodSelector {
    /// From globs: namespaces (`shop`, `team-*`), labels (`app=web*`,
    /// `tier=backend`), owner names (`checkout*`). Blank items are skipped.
    pub fn new<S: AsRef<str>>(namespaces: &[S], labels: &[S], owners: &[S]) -> Result<Self, PodSelectorError> {
        let globs = |items: &[S]| -> Result<Vec<Pattern>, PodSelectorError> {
            items.iter().map(|s| s.as_ref().trim()).filter(|s| !s.is_empty()).map(Pattern::new).collect()
        };
        let mut label_patterns = Vec::new();
        for l in labels.iter().map(|s| s.as_ref().trim()).filter(|s| !s.is_empty()) {
            let (k, v) = l.split_once('=').ok_or_else(|| PodSelectorError::Label(l.to_owned()))?;
            let k = k.trim();
            if k.is_empty() {
                return Err(PodSelectorError::Label(l.to_owned()));
            }
            label_patterns.push((k.to_owned(), Pattern::new(v.trim())?));
        }
        Ok(Self { namespaces: globs(namespaces)?, labels: label_patterns, owners: globs(owners)? })
    }

    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.labels.is_empty() && self.owners.is_empty()
    }

    pub fn matches(&self, m: &PodMatch) -> bool {
        if self.is_empty() {
            return false;
        }
        let pod = &m.pod;
        if !self.namespaces.is_empty() && !any(&self.namespaces, &pod.namespace) {
            return false;
        }
        let labels_ok = self.labels.iter().all(|(k, p)| pod.labels.get(k).is_some_and(|v| p.is_match(v)));
        if !labels_ok {
            return false;
        }
        self.owners.is_empty() || Owners::of(m).names().any(|n| any(&self.owners, n))
    }

    /// The namespace globs (blank ones skipped).
    pub fn namespace_globs(&self) -> Vec<&str> {
        self.namespaces.iter().map(|p| p.source.as_str()).collect()
    }

    /// The label criteria, as `key=glob`.
    pub fn label_globs(&self) -> Vec<String> {
        self.labels.iter().map(|(k, p)| format!("{k}={}", p.source)).collect()
    }

    /// The owner-name globs (blank ones skipped).
    pub fn owner_globs(&self) -> Vec<&str> {
        self.owners.iter().map(|p| p.source.as_str()).collect()
    }

    /// The criteria as given (for logs).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.namespaces.is_empty() {
            let ns: Vec<&str> = self.namespaces.iter().map(|p| p.source.as_str()).collect();
            parts.push(format!("namespace in [{}]", ns.join(",")));
        }
        for (k, p) in &self.labels {
            parts.push(format!("label {k}={}", p.source));
        }
        if !self.owners.is_empty() {
            let o: Vec<&str> = self.owners.iter().map(|p| p.source.as_str()).collect();
            parts.push(format!("owner in [{}]", o.join(",")));
        }
        parts.join(" and ")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::kubernetes::store::{OwnerRef, PodMeta};

    fn m(ns: &str, labels: &[(&str, &str)], rs: &str, deployment: Option<&str>) -> PodMatch {
        PodMatch {
            pod: Arc::new(PodMeta {
                uid: "u".into(),
                name: "p".into(),
                namespace: ns.into(),
                labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
                owner: Some(OwnerRef { kind: "ReplicaSet".into(), name: rs.into() }),
                ..PodMeta::default()
            }),
            container_name: None,
            container_id: None,
            deployment: deployment.map(Into::into),
            node: None,
        }
    }

    #[test]
    fn all_given_criteria_must_match() {
        let s = PodSelector::new(&["shop", "team-*"], &["app=web*", "tier=backend"], &[]).unwrap();
        let labels = [("app", "web-frontend"), ("tier", "backend")];
        assert!(s.matches(&m("shop", &labels, "rs", None)));
        assert!(s.matches(&m("team-a", &labels, "rs", None)));
        assert!(!s.matches(&m("default", &labels, "rs", None)));
        assert!(!s.matches(&m("shop", &[("app", "web")], "rs", None)), "tier label missing");
        assert!(!s.matches(&m("shop", &[("app", "api"), ("tier", "backend")], "rs", None)));
    }

    #[test]
    fn owners_include_the_deployment() {
        let s = PodSelector::new::<&str>(&[], &[], &["checkout"]).unwrap();
        assert!(s.matches(&m("x", &[], "checkout-7d9f8b6c5", Some("checkout"))));
        assert!(!s.matches(&m("x", &[], "checkout-7d9f8b6c5", None)));
        let s = PodSelector::new::<&str>(&[], &[], &["checkout-*"]).unwrap();
        assert!(s.matches(&m("x", &[], "checkout-7d9f8b6c5", None)), "the ReplicaSet name");
    }

    #[test]
    fn empty_and_invalid() {
        let s = PodSelector::new(&[" "], &[], &[]).unwrap();
        assert!(s.is_empty() && !s.matches(&m("shop", &[], "rs", None)));
        assert!(PodSelector::new(&[], &["novalue"], &[]).is_err());
        assert!(PodSelector::new(&[], &["=x"], &[]).is_err());
        let e = PodSelector::new(&["[bad"], &[], &[]).unwrap_err().to_string();
        assert!(e.contains("[bad"), "{e}");
        let s = PodSelector::new(&["shop"], &["app=web"], &["c*"]).unwrap();
        assert_eq!(s.describe(), "namespace in [shop] and label app=web and owner in [c*]");
    }
}

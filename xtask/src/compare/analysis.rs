//! Matching periscope's spans to the SDK's and the per-row statistics.
//!
//! Two spans match when they have the same matching key (service, kind,
//! method and exact path / peer port, or SQL operation and table), their
//! intervals overlap (give or take [`SLACK_NS`]) and their starts are at most
//! [`MAX_START_GAP_NS`] apart;
//! among candidates the one with the smallest start + end difference wins,
//! each SDK span matched at most once; a span carrying the SDK span's own id
//! (periscope named it after the `traceparent` the SDK wrote) is its
//! counterpart before any of that. SQL spans are matched by their end
//! instead: the SDK's starts when the app calls `query()`, so behind a busy
//! client's queue it starts seconds before the statement is sent (periscope's
//! start); both end when the answer is read. An SDK SQL span then contains
//! periscope's, and their ends are at most [`MAX_START_GAP_NS`] apart.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::spans::{Side, Span};

pub const MAX_START_GAP_NS: u64 = 200_000_000;
/// The Node SDK's span start times have millisecond resolution (its clock is
/// anchored to `Date.now()`; durations come from the high-resolution timer),
/// so its spans can sit up to 1 ms earlier than the same operation seen by
/// periscope: a short SQL span may end before periscope's counterpart starts.
pub const SLACK_NS: u64 = 1_000_000;

/// How a matched periscope span's parent compares with its SDK counterpart's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Parent {
    /// Both roots, or the parents are counterparts.
    Agree,
    /// The parent id is an SDK span (taken from a `traceparent` the SDK
    /// wrote) and it is the SDK span's own parent (nearest non-INTERNAL).
    AgreeViaSdkHeader,
    /// periscope made a root where the SDK has a parent.
    Missing,
    /// periscope's parent has no SDK counterpart.
    NoCounterpart,
    /// A different parent.
    Wrong,
    /// The parent id is in neither side's spans (e.g. a hand-made header).
    Unknown,
}

pub const PARENT_KINDS: [Parent; 6] =
    [Parent::Agree, Parent::AgreeViaSdkHeader, Parent::Missing, Parent::NoCounterpart, Parent::Wrong, Parent::Unknown];

#[derive(Default, Debug)]
pub struct Row {
    pub sdk: Vec<usize>,
    pub periscope: Vec<usize>,
    /// (periscope index, SDK index)
    pub pairs: Vec<(usize, usize)>,
    pub status_agree: usize,
    pub parents: BTreeMap<Parent, usize>,
    pub attrs_sdk: BTreeSet<String>,
    pub attrs_periscope: BTreeSet<String>,
    /// Matched periscope spans whose parent id is also an SDK span's id.
    pub parent_id_from_sdk: usize,
    /// Attributes both spans of a pair have, with different values: pairs,
    /// and the first example (SDK value, periscope value).
    pub value_diffs: BTreeMap<String, (usize, String, String)>,
}

pub struct Analysis {
    pub sdk: Vec<Span>,
    pub periscope: Vec<Span>,
    /// Report rows by group, for spans that start inside the window.
    pub rows: BTreeMap<String, Row>,
    /// SDK spans without a row (INTERNAL Express spans...), by name, inside the window.
    pub sdk_unclassified: BTreeMap<String, usize>,
    pub periscope_unclassified: BTreeMap<String, usize>,
    /// periscope SERVER spans whose parent id is an SDK span id (and whose
    /// trace id is that span's): the SDK's injected `traceparent` at work.
    pub sdk_header_parents: usize,
    pub sdk_header_same_trace: usize,
    /// periscope spans (inside the window) whose own span id is an SDK
    /// span's: client spans that take their id from the `traceparent` the
    /// SDK wrote into the request.
    pub shared_span_ids: usize,
}

fn in_window(s: &Span, window: (u64, u64)) -> bool {
    s.start >= window.0 && s.start < window.1
}

/// The nearest ancestor of SDK span `i` that has a row (skipping INTERNAL spans).
fn sdk_anchor(sdk: &[Span], by_id: &HashMap<u64, usize>, i: usize) -> Option<usize> {
    let mut cur = sdk[i].parent;
    for _ in 0..64 {
        let j = *by_id.get(&cur?)?;
        if sdk[j].class.is_some() {
            return Some(j);
        }
        cur = sdk[j].parent;
    }
    None
}

pub fn analyze(sdk: Vec<Span>, periscope: Vec<Span>, window: (u64, u64)) -> Analysis {
    let sdk_by_id: HashMap<u64, usize> = sdk.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
    let p_by_id: HashMap<u64, usize> = periscope.iter().enumerate().map(|(i, s)| (s.id, i)).collect();

    // Matching over all spans (a parent may start before the window).
    let mut sdk_by_key: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, s) in sdk.iter().enumerate() {
        if let Some(c) = &s.class {
            sdk_by_key.entry(c.key.as_str()).or_default().push(i);
        }
    }
    let mut p_order: Vec<usize> = (0..periscope.len()).filter(|&i| periscope[i].class.is_some()).collect();
    p_order.sort_by_key(|&i| periscope[i].start);
    let mut taken = vec![false; sdk.len()];
    let mut counterpart: Vec<Option<usize>> = vec![None; periscope.len()];
    for pi in p_order {
        let p = &periscope[pi];
        let class = p.class.as_ref().expect("classified");
        let Some(cands) = sdk_by_key.get(class.key.as_str()) else { continue };
        let sql = class.group.split(' ').nth(1) == Some("SQL");
        // The same span id (periscope took it from the traceparent the SDK
        // wrote): that is the counterpart, whatever the clocks say.
        let same_id = sdk_by_id.get(&p.id).copied().filter(|&si| !taken[si] && cands.contains(&si));
        let best = same_id.or_else(|| {
            cands
                .iter()
                .copied()
                .filter(|&si| !taken[si])
                .filter(|&si| {
                    let s = &sdk[si];
                    if sql {
                        s.start <= p.start + SLACK_NS
                            && p.end <= s.end + SLACK_NS
                            && s.end.abs_diff(p.end) <= MAX_START_GAP_NS
                    } else {
                        s.start < p.end + SLACK_NS
                            && p.start < s.end + SLACK_NS
                            && s.start.abs_diff(p.start) <= MAX_START_GAP_NS
                    }
                })
                .min_by_key(|&si| {
                    if sql {
                        sdk[si].end.abs_diff(p.end)
                    } else {
                        sdk[si].start.abs_diff(p.start) + sdk[si].end.abs_diff(p.end)
                    }
                })
        });
        if let Some(si) = best {
            taken[si] = true;
            counterpart[pi] = Some(si);
        }
    }

    let mut a = Analysis {
        rows: BTreeMap::new(),
        sdk_unclassified: BTreeMap::new(),
        periscope_unclassified: BTreeMap::new(),
        sdk_header_parents: 0,
        sdk_header_same_trace: 0,
        shared_span_ids: 0,
        sdk: Vec::new(),
        periscope: Vec::new(),
    };
    for (i, s) in sdk.iter().enumerate().filter(|(_, s)| in_window(s, window)) {
        match &s.class {
            Some(c) => {
                let row = a.rows.entry(c.group.clone()).or_default();
                row.sdk.push(i);
                row.attrs_sdk.extend(s.attrs.keys().cloned());
            }
            None => {
                *a.sdk_unclassified
                    .entry(format!("{} {} {}", s.service, super::spans::kind_name(s.kind), s.name))
                    .or_default() += 1
            }
        }
    }
    for (pi, p) in periscope.iter().enumerate().filter(|(_, s)| in_window(s, window)) {
        if sdk_by_id.contains_key(&p.id) {
            a.shared_span_ids += 1;
        }
        if let Some(parent) = p.parent {
            if let Some(&si) = sdk_by_id.get(&parent) {
                a.sdk_header_parents += 1;
                if sdk[si].trace_id == p.trace_id {
                    a.sdk_header_same_trace += 1;
                }
            }
        }
        let Some(c) = &p.class else {
            *a.periscope_unclassified
                .entry(format!("{} {} {}", p.service, super::spans::kind_name(p.kind), p.name))
                .or_default() += 1;
            continue;
        };
        let row = a.rows.entry(c.group.clone()).or_default();
        row.periscope.push(pi);
        row.attrs_periscope.extend(p.attrs.keys().cloned());
        let Some(si) = counterpart[pi] else { continue };
        row.pairs.push((pi, si));
        if p.error == sdk[si].error {
            row.status_agree += 1;
        }
        for (k, pv) in &p.attrs {
            if let Some(sv) = sdk[si].attrs.get(k).filter(|sv| *sv != pv) {
                row.value_diffs.entry(k.clone()).or_insert_with(|| (0, sv.clone(), pv.clone())).0 += 1;
            }
        }
        if p.parent.is_some_and(|id| sdk_by_id.contains_key(&id)) {
            row.parent_id_from_sdk += 1;
        }
        let anchor = sdk_anchor(&sdk, &sdk_by_id, si);
        let verdict = match p.parent {
            None if anchor.is_none() => Parent::Agree,
            None => Parent::Missing,
            Some(id) => {
                if let Some(&pp) = p_by_id.get(&id) {
                    match counterpart[pp] {
                        None => Parent::NoCounterpart,
                        Some(sp) if Some(sp) == anchor => Parent::Agree,
                        Some(_) => Parent::Wrong,
                    }
                } else if let Some(&sp) = sdk_by_id.get(&id) {
                    if Some(sp) == anchor || sdk[si].parent == Some(id) {
                        Parent::AgreeViaSdkHeader
                    } else {
                        Parent::Wrong
                    }
                } else {
                    Parent::Unknown
                }
            }
        };
        *row.parents.entry(verdict).or_default() += 1;
    }
    a.sdk = sdk;
    a.periscope = periscope;
    a
}

/// Nearest-rank percentile of unsorted values (None when empty).
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

impl Analysis {
    pub fn durations(&self, row: &Row, side: Side) -> Vec<f64> {
        match side {
            Side::Sdk => row.sdk.iter().map(|&i| self.sdk[i].duration_ms()).collect(),
            Side::Periscope => row.periscope.iter().map(|&i| self.periscope[i].duration_ms()).collect(),
        }
    }

    /// Median of periscope duration minus SDK duration over the pairs.
    pub fn paired_delta_ms(&self, row: &Row) -> Option<f64> {
        let d: Vec<f64> =
            row.pairs.iter().map(|&(p, s)| self.periscope[p].duration_ms() - self.sdk[s].duration_ms()).collect();
        percentile(&d, 50.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::spans::{classify, CLIENT, SERVER};

    fn span(id: u64, parent: Option<u64>, kind: i32, start: u64, end: u64, attrs: &[(&str, &str)]) -> Span {
        let mut s = Span {
            service: "svc".into(),
            kind,
            name: "n".into(),
            trace_id: vec![1],
            id,
            parent,
            start,
            end,
            error: false,
            attrs: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            resource: BTreeMap::new(),
            class: None,
        };
        s.class = classify(&s);
        s
    }

    const GET: &[(&str, &str)] = &[("http.method", "GET"), ("http.target", "/unicorn")];
    const SQL: &[(&str, &str)] = &[("db.system", "postgresql"), ("db.statement", "SELECT name from unicorn")];

    #[test]
    fn matches_by_key_and_time_and_judges_parents() {
        // SDK: server 10 -> internal 11 -> SQL 12; a second request 20 -> 22.
        let sdk = vec![
            span(10, None, SERVER, 1_000, 9_000, GET),
            span(11, Some(10), 1, 2_000, 8_000, &[]),
            span(12, Some(11), CLIENT, 3_000, 4_000, SQL),
            span(20, None, SERVER, 100_000, 109_000, GET),
            span(22, Some(20), CLIENT, 103_000, 104_000, SQL),
        ];
        // periscope: first SQL linked to its server span, second SQL a root.
        let p = vec![
            span(1, None, SERVER, 1_100, 9_100, GET),
            span(2, Some(1), CLIENT, 3_050, 3_900, SQL),
            span(3, None, SERVER, 100_100, 109_100, GET),
            span(4, None, CLIENT, 103_050, 103_900, SQL),
        ];
        let a = analyze(sdk, p, (0, u64::MAX));
        let server = &a.rows["svc SERVER GET /{beast}"];
        assert_eq!((server.sdk.len(), server.periscope.len(), server.pairs.len()), (2, 2, 2));
        assert_eq!(server.parents[&Parent::Agree], 2);
        let sql = &a.rows["svc SQL SELECT {beast}"];
        assert_eq!(sql.pairs, vec![(1, 2), (3, 4)]);
        assert_eq!(sql.parents[&Parent::Agree], 1);
        assert_eq!(sql.parents[&Parent::Missing], 1);
        assert_eq!(a.sdk_unclassified.values().sum::<usize>(), 1);
    }

    #[test]
    fn sdk_written_traceparent_and_window() {
        let sdk =
            vec![span(50, None, CLIENT, 0, 10_000, &[("http.method", "GET"), ("http.url", "http://h:4000/unicorn")])];
        // periscope's server span took the SDK client span as parent; it has no
        // counterpart (no SDK server span), so it counts only as a header parent.
        let p =
            vec![span(1, Some(50), SERVER, 1_000, 9_000, GET), span(2, None, SERVER, 500_000_000, 500_000_100, GET)];
        let a = analyze(sdk, p, (0, 400_000_000));
        assert_eq!(a.sdk_header_parents, 1);
        assert_eq!(a.sdk_header_same_trace, 1);
        let row = &a.rows["svc SERVER GET /{beast}"];
        assert_eq!(row.periscope.len(), 1, "the span after the window is left out");
        assert!(row.pairs.is_empty());
    }

    #[test]
    fn far_apart_spans_do_not_match() {
        let sdk = vec![span(10, None, SERVER, 0, 1_000, GET)];
        let p = vec![span(1, None, SERVER, 1_000_000_000, 1_000_001_000, GET)];
        let a = analyze(sdk, p, (0, u64::MAX));
        assert!(a.rows["svc SERVER GET /{beast}"].pairs.is_empty());
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}

//! Late trace ids: the spans a request causes in one process form a *group*
//! whose trace id is decided once, when the group is complete — from the
//! incoming traceparent, from the caller's group when the caller is a
//! tracked process on this host, or a new random id. Until then the group's
//! finished spans are held (bounded in count and time), so every span of a
//! trace leaves with the same trace id, and the sampling decision is taken
//! once per trace.
use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use super::sampler::Sampler;
use crate::spans::{Span, TraceId};
use crate::telemetry::{Counter, Telemetry};

pub type GroupId = u64;

/// The trace a group belongs to, once decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Decided {
    pub trace_id: TraceId,
    pub sampled: bool,
    pub trace_state: Option<String>,
}

/// The trace a caller named in its `traceparent`.
#[derive(Clone, Debug, PartialEq)]
pub struct Explicit {
    pub trace_id: TraceId,
    pub sampled: bool,
    pub trace_state: Option<String>,
}

/// A finished span waiting for its group's trace id.
#[derive(Debug)]
struct Held {
    span: Span,
    /// The span carries a trace id of its own (a traceparent the process
    /// itself wrote): it keeps it.
    pinned: bool,
}

#[derive(Debug)]
enum State {
    Open {
        held: Vec<Held>,
        /// Exchanges of the group started and not finished.
        open: u32,
        explicit: Option<Explicit>,
        /// The caller's group was decided before we joined it.
        inherited: Option<Decided>,
    },
    Joined(GroupId),
    Decided(Decided),
}

#[derive(Debug)]
struct Group {
    state: State,
    created: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct AssemblyOptions {
    /// A group is decided at the latest this long after it started (ns).
    pub max_wait_ns: u64,
    /// Decided groups are remembered this long, for late children (ns).
    pub keep_decided_ns: u64,
    /// At most this many groups, and held spans, at a time.
    pub max_groups: usize,
    pub max_held: usize,
}

impl Default for AssemblyOptions {
    fn default() -> Self {
        Self { max_wait_ns: 10_000_000_000, keep_decided_ns: 2_000_000_000, max_groups: 16_384, max_held: 8_192 }
    }
}

#[derive(Debug)]
pub struct Assembler {
    groups: FxHashMap<GroupId, Group>,
    /// Undecided groups in creation order (entries of groups decided since
    /// are skipped when they come up).
    order: VecDeque<GroupId>,
    /// Decided groups in the order they were decided, with when.
    decided_order: VecDeque<(GroupId, u64)>,
    /// The latest time seen (ns), for stamping decisions.
    now: u64,
    next: GroupId,
    held: usize,
    opts: AssemblyOptions,
    sampler: Sampler,
    /// Spans whose trace is decided, for the trace sinks.
    pub out: Vec<Span>,
}

impl Assembler {
    pub fn new(opts: AssemblyOptions, sampler: Sampler) -> Self {
        Self {
            groups: FxHashMap::default(),
            order: VecDeque::new(),
            decided_order: VecDeque::new(),
            now: 0,
            next: 1,
            held: 0,
            opts,
            sampler,
            out: Vec::new(),
        }
    }

    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    pub fn held(&self) -> usize {
        self.held
    }

    pub fn new_group(&mut self, now: u64, t: &Telemetry) -> GroupId {
        self.now = self.now.max(now);
        if self.groups.len() >= self.opts.max_groups {
            self.evict_oldest(t);
        }
        let id = self.next;
        self.next += 1;
        self.groups.insert(
            id,
            Group { state: State::Open { held: Vec::new(), open: 0, explicit: None, inherited: None }, created: now },
        );
        self.order.push_back(id);
        id
    }

    /// The group that decides for `id` (following joins); None once forgotten.
    fn root(&self, mut id: GroupId) -> Option<GroupId> {
        for _ in 0..64 {
            match &self.groups.get(&id)?.state {
                State::Joined(next) => id = *next,
                _ => return Some(id),
            }
        }
        None
    }

    /// An exchange of the group started.
    pub fn open(&mut self, id: GroupId) {
        let Some(root) = self.root(id) else { return };
        if let Some(Group { state: State::Open { open, .. }, .. }) = self.groups.get_mut(&root) {
            *open += 1;
        }
    }

    /// An exchange of the group will never finish.
    pub fn abandon(&mut self, id: GroupId, t: &Telemetry) {
        let Some(root) = self.root(id) else { return };
        if let Some(Group { state: State::Open { open, .. }, .. }) = self.groups.get_mut(&root) {
            *open = open.saturating_sub(1);
        }
        self.decide_if_complete(root, t);
    }

    /// The group's first request came with a traceparent.
    pub fn set_explicit(&mut self, id: GroupId, e: Explicit) {
        let Some(root) = self.root(id) else { return };
        if let Some(Group { state: State::Open { explicit, .. }, .. }) = self.groups.get_mut(&root) {
            explicit.get_or_insert(e);
        }
    }

    /// The group's requests were made by `caller`'s group (another tracked
    /// process on this host): they share its trace.
    pub fn join(&mut self, id: GroupId, caller: GroupId, t: &Telemetry) {
        let (Some(from), Some(to)) = (self.root(id), self.root(caller)) else { return };
        if from == to {
            return;
        }
        let to_decided = match &self.groups[&to].state {
            State::Decided(d) => Some(d.clone()),
            _ => None,
        };
        let Some(Group { state: from_state @ State::Open { .. }, .. }) = self.groups.get_mut(&from) else { return };
        if let Some(d) = to_decided {
            if let State::Open { inherited, .. } = from_state {
                *inherited = Some(d);
            }
            return;
        }
        let State::Open { held, open, .. } = std::mem::replace(from_state, State::Joined(to)) else { return };
        if let Some(Group { state: State::Open { held: to_held, open: to_open, .. }, .. }) = self.groups.get_mut(&to) {
            to_held.extend(held);
            *to_open += open;
        }
        self.decide_if_complete(to, t);
    }

    /// A span of the group finished.
    pub fn finish(&mut self, id: GroupId, mut span: Span, pinned: bool, t: &Telemetry) {
        let root = self.root(id);
        match root.and_then(|r| self.groups.get_mut(&r)) {
            Some(Group { state: State::Open { held, open, .. }, .. }) => {
                held.push(Held { span, pinned });
                *open = open.saturating_sub(1);
                self.held += 1;
            }
            Some(Group { state: State::Decided(d), .. }) => {
                let d = d.clone();
                self.stamp_and_emit(&d, Held { span, pinned }, t);
                return;
            }
            _ => {
                // The group was forgotten (a child long after its request):
                // the span still leaves, as the root of its own trace.
                t.inc(Counter::ContextExpired);
                span.parent_span_id = None;
                let d = Decided { trace_id: TraceId::random(), sampled: true, trace_state: None };
                self.stamp_and_emit(&d, Held { span, pinned }, t);
                return;
            }
        }
        if let Some(root) = root {
            self.decide_if_complete(root, t);
        }
        if self.held > self.opts.max_held {
            self.evict_oldest(t);
        }
    }

    fn decide_if_complete(&mut self, root: GroupId, t: &Telemetry) {
        if let Some(Group { state: State::Open { open: 0, .. }, .. }) = self.groups.get(&root) {
            self.decide(root, t);
        }
    }

    /// Fixes the group's trace id and sends its held spans on.
    fn decide(&mut self, root: GroupId, t: &Telemetry) {
        let Some(group) = self.groups.get_mut(&root) else { return };
        let State::Open { explicit, inherited, .. } = &group.state else { return };
        let decided = match (explicit, inherited) {
            (Some(e), _) => Decided {
                trace_id: e.trace_id,
                sampled: self.sampler.sample(&e.trace_id, Some(e.sampled)),
                trace_state: e.trace_state.clone(),
            },
            (None, Some(d)) => d.clone(),
            (None, None) => {
                let trace_id = TraceId::random();
                Decided { trace_id, sampled: self.sampler.sample(&trace_id, None), trace_state: None }
            }
        };
        let State::Open { held, .. } = std::mem::replace(&mut group.state, State::Decided(decided.clone())) else {
            return;
        };
        self.decided_order.push_back((root, self.now));
        self.held -= held.len();
        for h in held {
            self.stamp_and_emit(&decided, h, t);
        }
    }

    fn stamp_and_emit(&mut self, d: &Decided, h: Held, t: &Telemetry) {
        let Held { mut span, pinned } = h;
        if pinned {
            // The process named its own trace: a parent in another trace is
            // no parent.
            if span.trace_id != d.trace_id {
                span.parent_span_id = None;
            }
        } else {
            span.trace_id = d.trace_id;
            span.trace_state.clone_from(&d.trace_state);
            span.trace_flags = (span.trace_flags & !1) | u8::from(d.sampled);
        }
        if d.sampled {
            self.out.push(span);
        } else {
            t.inc(Counter::SpansSampledOut);
        }
    }

    /// Makes room: forgets the oldest decided group, or when there is none,
    /// decides the oldest undecided one now.
    fn evict_oldest(&mut self, t: &Telemetry) {
        while let Some((id, _)) = self.decided_order.pop_front() {
            if matches!(self.groups.get(&id), Some(Group { state: State::Decided(_), .. })) {
                self.groups.remove(&id);
                return;
            }
        }
        while let Some(id) = self.order.pop_front() {
            match self.groups.get(&id) {
                Some(Group { state: State::Open { .. }, .. }) => {
                    t.inc(Counter::ContextForced);
                    self.decide(id, t);
                    self.decided_order.pop_back();
                    self.groups.remove(&id);
                    return;
                }
                // Joined groups go with the group they joined.
                Some(Group { state: State::Joined(_), .. }) => {
                    self.groups.remove(&id);
                }
                _ => {}
            }
        }
    }

    /// Housekeeping: decides groups that waited too long, forgets old ones.
    pub fn sweep(&mut self, now: u64, t: &Telemetry) {
        self.now = self.now.max(now);
        while let Some(&id) = self.order.front() {
            let Some(group) = self.groups.get(&id) else {
                self.order.pop_front();
                continue;
            };
            match group.state {
                State::Open { .. } if now.saturating_sub(group.created) >= self.opts.max_wait_ns => {
                    t.inc(Counter::ContextForced);
                    self.order.pop_front();
                    self.decide(id, t);
                }
                State::Open { .. } => break,
                State::Joined(_) if now.saturating_sub(group.created) >= self.opts.max_wait_ns => {
                    self.order.pop_front();
                    self.groups.remove(&id);
                }
                State::Joined(_) => break,
                State::Decided(_) => {
                    self.order.pop_front();
                }
            }
        }
        while let Some(&(id, at)) = self.decided_order.front() {
            if now.saturating_sub(at) < self.opts.keep_decided_ns {
                break;
            }
            self.decided_order.pop_front();
            if matches!(self.groups.get(&id), Some(Group { state: State::Decided(_), .. })) {
                self.groups.remove(&id);
            }
        }
    }

    /// Everything still held leaves now (shutdown).
    pub fn flush(&mut self, t: &Telemetry) {
        let ids: Vec<GroupId> = self.order.iter().copied().collect();
        for id in ids {
            self.decide(id, t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::{Service, SpanId, SpanKind};
    use std::sync::Arc;

    fn span(name: &str) -> Span {
        let service = Arc::new(Service { name: "s".into(), namespace: None, instance_id: "i".into(), attributes: vec![] });
        Span { start_unix_nanos: 1, end_unix_nanos: 2, ..Span::for_test(&service, SpanKind::Internal, name) }
    }

    fn asm() -> Assembler {
        Assembler::new(AssemblyOptions::default(), Sampler::default())
    }

    #[test]
    fn a_group_leaves_when_its_last_span_finishes_all_with_one_trace_id() {
        let t = Telemetry::default();
        let mut a = asm();
        let g = a.new_group(0, &t);
        a.open(g);
        a.open(g);
        a.finish(g, span("child"), false, &t);
        assert!(a.out.is_empty(), "held while the server span is open");
        a.finish(g, span("server"), false, &t);
        assert_eq!(a.out.len(), 2);
        assert_eq!(a.out[0].trace_id, a.out[1].trace_id);
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn an_explicit_traceparent_names_the_trace_and_its_sampled_flag_is_followed() {
        let t = Telemetry::default();
        let mut a = asm();
        let g = a.new_group(0, &t);
        a.open(g);
        let id = TraceId([9; 16]);
        a.set_explicit(g, Explicit { trace_id: id, sampled: true, trace_state: Some("k=v".into()) });
        a.finish(g, span("server"), false, &t);
        assert_eq!(a.out[0].trace_id, id);
        assert_eq!(a.out[0].trace_state.as_deref(), Some("k=v"));

        let g = a.new_group(0, &t);
        a.open(g);
        a.set_explicit(g, Explicit { trace_id: id, sampled: false, trace_state: None });
        a.finish(g, span("not sampled"), false, &t);
        assert_eq!(a.out.len(), 1, "parent-based: the caller said not sampled");
        assert_eq!(t.get(Counter::SpansSampledOut), 1);
    }

    #[test]
    fn a_joined_group_takes_the_callers_trace_whether_or_not_it_is_decided_yet() {
        let t = Telemetry::default();
        let mut a = asm();
        // Caller still open: the callee's spans wait for it.
        let caller = a.new_group(0, &t);
        a.open(caller);
        let callee = a.new_group(1, &t);
        a.open(callee);
        a.join(callee, caller, &t);
        a.finish(callee, span("server"), false, &t);
        assert!(a.out.is_empty());
        a.finish(caller, span("client"), false, &t);
        assert_eq!(a.out.len(), 2);
        assert_eq!(a.out[0].trace_id, a.out[1].trace_id);

        // Caller decided already: the callee inherits its trace.
        let callee = a.new_group(2, &t);
        a.open(callee);
        a.join(callee, caller, &t);
        a.finish(callee, span("late server"), false, &t);
        assert_eq!(a.out[2].trace_id, a.out[0].trace_id);
    }

    #[test]
    fn a_pinned_span_keeps_its_trace_and_loses_a_foreign_parent() {
        let t = Telemetry::default();
        let mut a = asm();
        let g = a.new_group(0, &t);
        a.open(g);
        let mut s = span("client with own traceparent");
        s.parent_span_id = Some(SpanId([1; 8]));
        let own = s.trace_id;
        a.finish(g, s, true, &t);
        assert_eq!(a.out[0].trace_id, own);
        assert_eq!(a.out[0].parent_span_id, None);
    }

    #[test]
    fn groups_are_bounded_in_time_and_number() {
        let t = Telemetry::default();
        let mut a = Assembler::new(
            AssemblyOptions { max_wait_ns: 100, keep_decided_ns: 100, max_groups: 4, max_held: 100 },
            Sampler::default(),
        );
        let g = a.new_group(0, &t);
        a.open(g);
        a.open(g);
        a.finish(g, span("child of a request that never ends"), false, &t);
        a.sweep(50, &t);
        assert!(a.out.is_empty());
        a.sweep(100, &t);
        assert_eq!(a.out.len(), 1, "decided after max_wait");
        assert_eq!(t.get(Counter::ContextForced), 1);
        // The late server span still joins the same trace.
        a.finish(g, span("server"), false, &t);
        assert_eq!(a.out[1].trace_id, a.out[0].trace_id);
        a.sweep(300, &t);
        assert_eq!(a.groups(), 0, "decided groups are forgotten after keep_decided");
        for i in 0..10 {
            a.new_group(400 + i, &t);
        }
        assert!(a.groups() <= 4);
    }

    #[test]
    fn a_full_table_forgets_decided_groups_before_forcing_open_ones() {
        let t = Telemetry::default();
        let mut a = Assembler::new(
            AssemblyOptions { max_wait_ns: 1_000, keep_decided_ns: 1_000, max_groups: 4, max_held: 100 },
            Sampler::default(),
        );
        // One slow request stays open while many fast ones come and go.
        let slow = a.new_group(0, &t);
        a.open(slow);
        for i in 1..50 {
            let g = a.new_group(i, &t);
            a.open(g);
            a.finish(g, span("fast"), false, &t);
        }
        assert_eq!(t.get(Counter::ContextForced), 0, "decided groups made room");
        assert!(a.groups() <= 4);
        a.finish(slow, span("slow"), false, &t);
        assert_eq!(a.out.len(), 50);
    }

    #[test]
    fn always_off_exports_nothing_but_counts() {
        let t = Telemetry::default();
        let mut a = Assembler::new(AssemblyOptions::default(), Sampler::AlwaysOff);
        let g = a.new_group(0, &t);
        a.open(g);
        a.finish(g, span("s"), false, &t);
        assert!(a.out.is_empty());
        assert_eq!(t.get(Counter::SpansSampledOut), 1);
    }
}

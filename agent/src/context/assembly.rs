//! Late trace ids: the spans a request causes in one process form a *group*
//! whose trace id is decided once, as soon as the group's link to the rest of
//! its trace is known: the incoming traceparent (known when the request's
//! head is read), the caller's group when the caller is a tracked process on
//! this host, or nothing (a new random id). Until then the group's finished
//! spans are held (bounded in count and time); every span of a trace leaves
//! with the same trace id, and the sampling decision is taken once per trace.
//!
//! A decided group is remembered while any of its exchanges is still open,
//! however long that takes (a request stuck for a minute behind a queue
//! keeps its trace), and a little while after, for late children.
use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use super::sampler::Sampler;
use crate::model::{Span, SpanId, TraceId};
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

/// What links a group to the rest of its trace.
#[derive(Clone, Debug, PartialEq)]
pub enum Link {
    /// The request came with a traceparent.
    Explicit(Explicit),
    /// The request was made by this group (a tracked process on this host,
    /// or the producer of a message consumed here).
    Caller(GroupId),
    /// Nothing: the group starts a trace of its own.
    None,
}

/// How a finished span takes the group's trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stamp {
    /// The group's trace id, sampled flag and tracestate.
    Group,
    /// The span carries a trace id of its own (a traceparent the process
    /// itself wrote). `keep_parent`: its parent came from that header too;
    /// otherwise its parent is the in-process one, dropped when the group's
    /// trace turns out to be another.
    Pinned { keep_parent: bool },
}

/// A finished span waiting for its group's trace id.
#[derive(Debug)]
struct Held {
    span: Span,
    stamp: Stamp,
}

#[derive(Debug)]
enum State {
    /// Its link is not known yet: finished spans are held.
    Open {
        held: Vec<Held>,
    },
    Joined(GroupId),
    Decided(Decided),
}

#[derive(Debug)]
struct Group {
    state: State,
    created: u64,
    /// Exchanges of the group (and of the groups joined into it) started
    /// and not finished yet.
    open: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct AssemblyOptions {
    /// A group whose link never became known is decided this long after it
    /// started (ns).
    pub max_wait_ns: u64,
    /// Decided groups are remembered this long after their last open
    /// exchange ended, for late children (ns).
    pub keep_decided_ns: u64,
    /// A decided group whose exchanges never end (they were lost without
    /// being given up) is forgotten this long after it started (ns).
    pub max_open_ns: u64,
    /// At most this many groups, and held spans, at a time.
    pub max_groups: usize,
    pub max_held: usize,
}

impl Default for AssemblyOptions {
    fn default() -> Self {
        Self {
            max_wait_ns: 10_000_000_000,
            keep_decided_ns: 2_000_000_000,
            max_open_ns: 600_000_000_000,
            max_groups: 16_384,
            max_held: 8_192,
        }
    }
}

#[derive(Debug)]
pub struct Assembler {
    groups: FxHashMap<GroupId, Group>,
    /// Undecided groups in creation order (entries of groups decided or
    /// joined since are skipped when they come up).
    undecided: VecDeque<GroupId>,
    /// Decided groups with open exchanges, in creation order.
    busy: VecDeque<GroupId>,
    /// Decided groups in the order their last exchange ended, with when
    /// (stale entries, of groups busy again, are skipped).
    idle: VecDeque<(GroupId, u64)>,
    /// The latest time seen (ns).
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
            undecided: VecDeque::new(),
            busy: VecDeque::new(),
            idle: VecDeque::new(),
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

    /// A new group whose link will be settled later (`settle`).
    pub fn new_group(&mut self, now: u64, t: &Telemetry) -> GroupId {
        self.now = self.now.max(now);
        if self.groups.len() >= self.opts.max_groups {
            self.evict_oldest(t);
        }
        let id = self.next;
        self.next += 1;
        self.groups.insert(id, Group { state: State::Open { held: Vec::new() }, created: now, open: 0 });
        self.undecided.push_back(id);
        id
    }

    /// A new group that starts a trace of its own, decided at once (a call
    /// made outside any request, a span whose start was not seen).
    pub fn new_root(&mut self, now: u64, t: &Telemetry) -> GroupId {
        let id = self.new_group(now, t);
        self.decide(id, None, t);
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

    /// Whether the group's trace is decided (false once forgotten).
    pub fn is_decided(&self, id: GroupId) -> bool {
        self.root(id).and_then(|r| self.groups.get(&r)).is_some_and(|g| matches!(g.state, State::Decided(_)))
    }

    /// An exchange of the group started.
    pub fn open(&mut self, id: GroupId) {
        let Some(root) = self.root(id) else { return };
        if let Some(g) = self.groups.get_mut(&root) {
            g.open += 1;
            if g.open == 1 && matches!(g.state, State::Decided(_)) {
                self.mark_busy(root);
            }
        }
    }

    /// `id` is decided with open exchanges: watched for `max_open_ns`.
    /// Entries of groups idle again stay behind a long-busy one until it
    /// ends; compacted when they outnumber the groups.
    fn mark_busy(&mut self, id: GroupId) {
        self.busy.push_back(id);
        if self.busy.len() > 2 * self.groups.len() + 64 {
            let groups = &self.groups;
            let mut seen = rustc_hash::FxHashSet::default();
            self.busy.retain(|id| {
                groups.get(id).is_some_and(|g| g.open > 0 || matches!(g.state, State::Joined(_))) && seen.insert(*id)
            });
        }
    }

    /// An exchange of the group will never finish.
    pub fn abandon(&mut self, id: GroupId) {
        if let Some(root) = self.root(id) {
            self.close_one(root);
        }
    }

    /// One open exchange of `root` ended.
    fn close_one(&mut self, root: GroupId) {
        let now = self.now;
        if let Some(g) = self.groups.get_mut(&root) {
            g.open = g.open.saturating_sub(1);
            if g.open == 0 && matches!(g.state, State::Decided(_)) {
                self.idle.push_back((root, now));
            }
        }
    }

    /// The group's link is known: decides its trace now (or, joined to a
    /// caller still undecided, with it). Groups already decided keep theirs.
    pub fn settle(&mut self, id: GroupId, link: Link, t: &Telemetry) {
        let Some(from) = self.root(id) else { return };
        if !matches!(self.groups.get(&from), Some(Group { state: State::Open { .. }, .. })) {
            return;
        }
        match link {
            Link::Explicit(e) => self.decide(from, Some(e), t),
            Link::None => self.decide(from, None, t),
            Link::Caller(caller) => {
                let Some(to) = self.root(caller) else {
                    self.decide(from, None, t);
                    return;
                };
                if to == from {
                    return;
                }
                match &self.groups[&to].state {
                    State::Decided(d) => {
                        let d = d.clone();
                        self.decide_as(from, d, t);
                    }
                    _ => {
                        let Some(g) = self.groups.get_mut(&from) else { return };
                        let State::Open { held } = std::mem::replace(&mut g.state, State::Joined(to)) else {
                            return;
                        };
                        let open = g.open;
                        if let Some(Group { state: State::Open { held: to_held }, open: to_open, .. }) =
                            self.groups.get_mut(&to)
                        {
                            to_held.extend(held);
                            *to_open += open;
                        }
                    }
                }
            }
        }
    }

    /// A span of the group finished.
    pub fn finish(&mut self, id: GroupId, mut span: Span, stamp: Stamp, t: &Telemetry) {
        let root = self.root(id);
        match root.and_then(|r| self.groups.get_mut(&r)) {
            Some(Group { state: State::Open { held }, .. }) => {
                held.push(Held { span, stamp });
                self.held += 1;
            }
            Some(Group { state: State::Decided(d), .. }) => {
                let d = d.clone();
                self.stamp_and_emit(&d, Held { span, stamp }, t);
            }
            _ => {
                // The group was forgotten (a child long after its request):
                // the span still leaves, as the root of its own trace.
                t.inc(Counter::ContextExpired);
                if stamp == Stamp::Group {
                    span.parent_span_id = None;
                }
                let d = Decided { trace_id: TraceId::random(), sampled: true, trace_state: None };
                self.stamp_and_emit(&d, Held { span, stamp }, t);
                return;
            }
        }
        if let Some(root) = root {
            self.close_one(root);
        }
        if self.held > self.opts.max_held {
            self.evict_oldest(t);
        }
    }

    /// Fixes the trace of an undecided group from its explicit link or a new id.
    fn decide(&mut self, root: GroupId, explicit: Option<Explicit>, t: &Telemetry) {
        let decided = match explicit {
            Some(e) => Decided {
                trace_id: e.trace_id,
                sampled: self.sampler.sample(&e.trace_id, Some(e.sampled)),
                trace_state: e.trace_state,
            },
            None => {
                let trace_id = TraceId::random();
                Decided { trace_id, sampled: self.sampler.sample(&trace_id, None), trace_state: None }
            }
        };
        self.decide_as(root, decided, t);
    }

    fn decide_as(&mut self, root: GroupId, decided: Decided, t: &Telemetry) {
        let now = self.now;
        let Some(group) = self.groups.get_mut(&root) else { return };
        if !matches!(group.state, State::Open { .. }) {
            return;
        }
        let State::Open { held } = std::mem::replace(&mut group.state, State::Decided(decided.clone())) else {
            return;
        };
        if group.open > 0 {
            self.mark_busy(root);
        } else {
            self.idle.push_back((root, now));
        }
        self.held -= held.len();
        for h in held {
            self.stamp_and_emit(&decided, h, t);
        }
    }

    fn stamp_and_emit(&mut self, d: &Decided, h: Held, t: &Telemetry) {
        let Held { mut span, stamp } = h;
        match stamp {
            Stamp::Pinned { keep_parent } => {
                // The process named its own trace: an in-process parent in
                // another trace is no parent.
                if !keep_parent && span.trace_id != d.trace_id {
                    span.parent_span_id = None;
                }
            }
            Stamp::Group => {
                span.trace_id = d.trace_id;
                span.trace_state.clone_from(&d.trace_state);
                span.trace_flags = (span.trace_flags & !1) | u8::from(d.sampled);
            }
        }
        if d.sampled {
            self.out.push(span);
        } else {
            t.inc(Counter::SpansSampledOut);
        }
    }

    /// Makes room: forgets the group idle the longest, else the decided
    /// group busy the longest, else decides the oldest undecided one now.
    fn evict_oldest(&mut self, t: &Telemetry) {
        while let Some((id, _)) = self.idle.pop_front() {
            if self.forget_if(id, |g| g.open == 0) {
                return;
            }
        }
        while let Some(id) = self.busy.pop_front() {
            if self.forget_if(id, |_| true) {
                t.inc(Counter::ContextEvicted);
                return;
            }
        }
        while let Some(id) = self.undecided.pop_front() {
            match self.groups.get(&id).map(|g| &g.state) {
                Some(State::Open { .. }) => {
                    t.inc(Counter::ContextForced);
                    self.decide(id, None, t);
                    self.groups.remove(&id);
                    return;
                }
                // Joined groups go with the group they joined.
                Some(State::Joined(_)) => {
                    self.groups.remove(&id);
                }
                _ => {}
            }
        }
    }

    /// Removes a decided group when `cond` holds; whether it did.
    fn forget_if(&mut self, id: GroupId, cond: impl Fn(&Group) -> bool) -> bool {
        match self.groups.get(&id) {
            Some(g) if matches!(g.state, State::Decided(_)) && cond(g) => {
                self.groups.remove(&id);
                true
            }
            _ => false,
        }
    }

    /// Housekeeping: decides groups that waited too long for their link,
    /// forgets decided ones that are done (or stuck).
    pub fn sweep(&mut self, now: u64, t: &Telemetry) {
        self.now = self.now.max(now);
        while let Some(&id) = self.undecided.front() {
            let Some(group) = self.groups.get(&id) else {
                self.undecided.pop_front();
                continue;
            };
            let late = now.saturating_sub(group.created) >= self.opts.max_wait_ns;
            match group.state {
                State::Open { .. } if late => {
                    t.inc(Counter::ContextForced);
                    self.undecided.pop_front();
                    self.decide(id, None, t);
                }
                State::Joined(_) if late => {
                    // Its root decides; keep the forwarding entry as long as the root lives.
                    self.undecided.pop_front();
                    self.mark_busy(id);
                }
                State::Open { .. } | State::Joined(_) => break,
                State::Decided(_) => {
                    self.undecided.pop_front();
                }
            }
        }
        while let Some(&(id, at)) = self.idle.front() {
            if now.saturating_sub(at) < self.opts.keep_decided_ns {
                break;
            }
            self.idle.pop_front();
            self.forget_if(id, |g| g.open == 0);
        }
        while let Some(&id) = self.busy.front() {
            let Some(group) = self.groups.get(&id) else {
                self.busy.pop_front();
                continue;
            };
            let root = self.root(id);
            let root_alive = root.is_some_and(|r| r != id && self.groups.contains_key(&r));
            match group.state {
                State::Joined(_) if !root_alive => {
                    self.busy.pop_front();
                    self.groups.remove(&id);
                }
                State::Decided(_) if group.open == 0 => {
                    self.busy.pop_front(); // idle now: it is in `idle`
                }
                _ if now.saturating_sub(group.created) >= self.opts.max_open_ns => {
                    self.busy.pop_front();
                    self.groups.remove(&id);
                    t.inc(Counter::ContextEvicted);
                }
                _ => break,
            }
        }
    }

    /// Everything still held leaves now (shutdown).
    pub fn flush(&mut self, t: &Telemetry) {
        let ids: Vec<GroupId> = self.undecided.iter().copied().collect();
        for id in ids {
            if matches!(self.groups.get(&id), Some(Group { state: State::Open { .. }, .. })) {
                self.decide(id, None, t);
            }
        }
    }
}

/// Span ids that a traceparent written by a process gave to one of our
/// spans, or that an incoming traceparent named as its parent (someone
/// else's span): a header written again with the same parent id (one header
/// object reused for two requests, a proxy forwarding what it received)
/// cannot name a second span.
#[derive(Debug, Default)]
pub struct ClaimedIds {
    set: rustc_hash::FxHashSet<SpanId>,
    order: VecDeque<SpanId>,
}

/// Span ids remembered (the reuse of a header is seen within this many).
const MAX_CLAIMED: usize = 65_536;

impl ClaimedIds {
    /// Records `id`; false when it was claimed already.
    pub fn claim(&mut self, id: SpanId) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        if self.order.len() >= MAX_CLAIMED {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(id);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Service, SpanKind};
    use std::sync::Arc;

    fn span(name: &str) -> Span {
        let service =
            Arc::new(Service { name: "s".into(), namespace: None, instance_id: "i".into(), attributes: vec![] });
        Span { start_unix_nanos: 1, end_unix_nanos: 2, ..Span::for_test(&service, SpanKind::Internal, name) }
    }

    fn asm() -> Assembler {
        Assembler::new(AssemblyOptions::default(), Sampler::default())
    }

    fn explicit(id: TraceId, sampled: bool) -> Link {
        Link::Explicit(Explicit { trace_id: id, sampled, trace_state: None })
    }

    #[test]
    fn spans_are_held_until_the_link_is_known_then_leave_with_one_trace_id() {
        let t = Telemetry::default();
        let mut a = asm();
        let g = a.new_group(0, &t);
        a.open(g);
        a.open(g);
        a.finish(g, span("child"), Stamp::Group, &t);
        assert!(a.out.is_empty(), "held while the link is unknown");
        a.settle(g, Link::None, &t);
        assert_eq!(a.out.len(), 1, "decided: what was held leaves");
        a.finish(g, span("server"), Stamp::Group, &t);
        assert_eq!(a.out.len(), 2, "after the decision spans leave as they finish");
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
        a.settle(g, Link::Explicit(Explicit { trace_id: id, sampled: true, trace_state: Some("k=v".into()) }), &t);
        a.finish(g, span("server"), Stamp::Group, &t);
        assert_eq!(a.out[0].trace_id, id);
        assert_eq!(a.out[0].trace_state.as_deref(), Some("k=v"));

        let g = a.new_group(0, &t);
        a.open(g);
        a.settle(g, explicit(id, false), &t);
        a.finish(g, span("not sampled"), Stamp::Group, &t);
        assert_eq!(a.out.len(), 1, "parent-based: the caller said not sampled");
        assert_eq!(t.get(Counter::SpansSampledOut), 1);
    }

    #[test]
    fn a_long_request_keeps_its_explicit_trace_however_long_it_lasts() {
        let t = Telemetry::default();
        let mut a = asm();
        let id = TraceId([7; 16]);
        let g = a.new_group(0, &t);
        a.open(g);
        a.settle(g, explicit(id, true), &t);
        a.open(g);
        a.finish(g, span("sql, after 1 s"), Stamp::Group, &t);
        // 30 s of sweeps: decided groups with an open exchange stay.
        for s in 1..=30 {
            a.sweep(s * 1_000_000_000, &t);
        }
        a.finish(g, span("server, after 30 s"), Stamp::Group, &t);
        assert_eq!(a.out.len(), 2);
        assert!(a.out.iter().all(|s| s.trace_id == id));
        assert_eq!(t.get(Counter::ContextExpired), 0);
        a.sweep(33_000_000_000, &t);
        assert_eq!(a.groups(), 0, "forgotten keep_decided after its last exchange");
    }

    #[test]
    fn a_joined_group_takes_the_callers_trace_whether_or_not_it_is_decided_yet() {
        let t = Telemetry::default();
        let mut a = asm();
        // Caller still undecided: the callee's spans wait for it.
        let caller = a.new_group(0, &t);
        a.open(caller);
        let callee = a.new_group(1, &t);
        a.open(callee);
        a.settle(callee, Link::Caller(caller), &t);
        a.finish(callee, span("server"), Stamp::Group, &t);
        assert!(a.out.is_empty());
        a.finish(caller, span("client"), Stamp::Group, &t);
        a.settle(caller, Link::None, &t);
        assert_eq!(a.out.len(), 2);
        assert_eq!(a.out[0].trace_id, a.out[1].trace_id);

        // Caller decided already: the callee inherits its trace.
        let callee = a.new_group(2, &t);
        a.open(callee);
        a.settle(callee, Link::Caller(caller), &t);
        a.finish(callee, span("late server"), Stamp::Group, &t);
        assert_eq!(a.out[2].trace_id, a.out[0].trace_id);
    }

    #[test]
    fn a_pinned_span_keeps_its_trace_and_loses_a_foreign_in_process_parent_only() {
        let t = Telemetry::default();
        let mut a = asm();
        let g = a.new_root(0, &t);
        a.open(g);
        a.open(g);
        let mut s = span("client with own traceparent");
        s.parent_span_id = Some(SpanId([1; 8]));
        let own = s.trace_id;
        a.finish(g, s, Stamp::Pinned { keep_parent: false }, &t);
        assert_eq!(a.out[0].trace_id, own);
        assert_eq!(a.out[0].parent_span_id, None);
        let mut s = span("client reusing a header");
        s.parent_span_id = Some(SpanId([2; 8]));
        a.finish(g, s, Stamp::Pinned { keep_parent: true }, &t);
        assert_eq!(a.out[1].parent_span_id, Some(SpanId([2; 8])), "the header named it");
    }

    #[test]
    fn groups_are_bounded_in_time_and_number() {
        let t = Telemetry::default();
        let mut a = Assembler::new(
            AssemblyOptions {
                max_wait_ns: 100,
                keep_decided_ns: 100,
                max_open_ns: 1_000,
                max_groups: 4,
                max_held: 100,
            },
            Sampler::default(),
        );
        let g = a.new_group(0, &t);
        a.open(g);
        a.open(g);
        a.finish(g, span("child of a request whose link never comes"), Stamp::Group, &t);
        a.sweep(50, &t);
        assert!(a.out.is_empty());
        a.sweep(100, &t);
        assert_eq!(a.out.len(), 1, "decided after max_wait");
        assert_eq!(t.get(Counter::ContextForced), 1);
        // The late server span still joins the same trace.
        a.finish(g, span("server"), Stamp::Group, &t);
        assert_eq!(a.out[1].trace_id, a.out[0].trace_id);
        a.sweep(300, &t);
        assert_eq!(a.groups(), 0, "decided groups are forgotten after keep_decided");
        // An exchange that never ends nor is given up: forgotten at max_open.
        let g = a.new_root(400, &t);
        a.open(g);
        a.sweep(1_399, &t);
        assert_eq!(a.groups(), 1);
        a.sweep(1_400, &t);
        assert_eq!(a.groups(), 0);
        assert_eq!(t.get(Counter::ContextEvicted), 1);
        for i in 0..10 {
            a.new_group(2_000 + i, &t);
        }
        assert!(a.groups() <= 4);
    }

    #[test]
    fn a_full_table_forgets_idle_groups_before_busy_or_undecided_ones() {
        let t = Telemetry::default();
        let mut a = Assembler::new(
            AssemblyOptions {
                max_wait_ns: 1_000,
                keep_decided_ns: 1_000,
                max_open_ns: 10_000,
                max_groups: 4,
                max_held: 100,
            },
            Sampler::default(),
        );
        // One slow request stays open while many fast ones come and go.
        let slow = a.new_group(0, &t);
        a.open(slow);
        a.settle(slow, Link::None, &t);
        for i in 1..50 {
            let g = a.new_root(i, &t);
            a.open(g);
            a.finish(g, span("fast"), Stamp::Group, &t);
        }
        assert_eq!(t.get(Counter::ContextForced) + t.get(Counter::ContextEvicted), 0, "idle groups made room");
        assert!(a.groups() <= 4);
        a.finish(slow, span("slow"), Stamp::Group, &t);
        assert_eq!(a.out.len(), 50);
        assert_eq!(t.get(Counter::ContextExpired), 0);
    }

    #[test]
    fn always_off_exports_nothing_but_counts() {
        let t = Telemetry::default();
        let mut a = Assembler::new(AssemblyOptions::default(), Sampler::AlwaysOff);
        let g = a.new_root(0, &t);
        a.open(g);
        a.finish(g, span("s"), Stamp::Group, &t);
        assert!(a.out.is_empty());
        assert_eq!(t.get(Counter::SpansSampledOut), 1);
    }

    #[test]
    fn a_reused_span_id_is_claimed_once() {
        let mut c = ClaimedIds::default();
        assert!(c.claim(SpanId([1; 8])));
        assert!(!c.claim(SpanId([1; 8])));
        assert!(c.claim(SpanId([2; 8])));
    }
}

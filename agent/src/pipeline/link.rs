//! Settles the trace link of each request and delivery as soon as it
//! starts: the request's own traceparent, else the tracked caller on this
//! host (the same connection seen from the other end), else the PRODUCER
//! span of the same message published on this host, else nothing. The
//! remote parent found is kept for the span the exchange becomes.
//!
//! The tracked caller is the same connection seen from the other end
//! (`connections::peers`: across network namespaces, loopback per
//! namespace), else, when the server's peer address is the local address of
//! a tracked client connection that called another address, the connection
//! conntrack says it was before translation (DNAT): the server's request
//! waits for that answer (`conntrack`, on its own thread) as it waits for a
//! late caller event. Every caller looked for is counted once as tried,
//! then as made or missed, with how or why.
use std::{collections::VecDeque, num::NonZeroUsize};

use lru::LruCache;
use rustc_hash::FxHashMap;

use crate::{
    capture::Tuple,
    connections::{ConnKey, Connection, ConnectionTable, DeliveryLink},
    conntrack::{Namespace, Query, Translation},
    context::{
        assembly::{Explicit, Link},
        GroupId, SpanCtx, Started, Tracker,
    },
    model::{Span, SpanId, TraceParent},
    protocols::amqp::Publish,
    telemetry::{Counter, Telemetry},
};

/// What is known of recently published messages, by body fingerprint, for
/// deliveries that carry no traceparent (both ends on this host). `T` is
/// the publish span's context (the pipeline keeps span id and trace group).
/// Bounded: the oldest entry goes first.
#[derive(Debug)]
struct PublishContexts<T> {
    map: FxHashMap<u64, T>,
    order: VecDeque<u64>,
    cap: usize,
}

impl<T> PublishContexts<T> {
    fn new(cap: usize) -> Self {
        PublishContexts { map: FxHashMap::default(), order: VecDeque::new(), cap: cap.max(1) }
    }

    /// Remembers the context of a publish.
    fn remember(&mut self, p: &Publish, ctx: T) {
        let Some(fp) = p.fingerprint else { return };
        if self.map.insert(fp, ctx).is_none() {
            self.order.push_back(fp);
        }
        // Taken entries stay in `order` until they come up: no scan per take.
        while self.map.len() > self.cap || self.order.len() > 2 * self.cap {
            let Some(old) = self.order.pop_front() else { break };
            self.map.remove(&old);
        }
    }

    /// The context of the publish whose message has this fingerprint (once).
    fn take_fingerprint(&mut self, fingerprint: u64) -> Option<T> {
        self.map.remove(&fingerprint)
    }
}

/// Server requests waiting for their tracked caller's request event at once.
const MAX_WAITS: usize = 4096;
/// Remote parents kept for spans not finished yet (a request stuck behind a
/// queue for a minute keeps its parent; beyond, the oldest are forgotten).
const MAX_PARENTS: usize = 65_536;
/// Publishes remembered for consumers on this host.
const MAX_PUBLISHES: usize = 8192;
/// Server connections whose translation is remembered (a keep-alive
/// connection asks once); least recently used forgotten first.
const MAX_TRANSLATIONS: usize = 16_384;
/// A translation known is asked again after this long (the tuple may have
/// become another connection's).
const TRANSLATION_TTL_NS: u64 = 30_000_000_000;
/// A question without an answer for this long is asked again.
const QUESTION_TTL_NS: u64 = 5_000_000_000;
/// Contexts of possible translated callers kept per waiting request.
const MAX_SEEN: usize = 8;
/// The protocol label of the link counters: links are about connections.
const LINK: &str = "tcp";

/// What is known of a server connection's address translation.
#[derive(Clone, Copy, Debug)]
enum Nat {
    /// Asked of conntrack, no answer yet.
    Asked,
    /// The client's connection, as the client sees it.
    Client(Tuple),
    /// Not a translated connection of a tracked client, or unknown (why).
    Missed(&'static str),
}

/// Who called a server request, as far as is known now.
#[derive(Debug)]
enum Caller {
    /// This client exchange (how it was found: the counters' reason).
    Found(SpanCtx, &'static str),
    /// A tracked caller whose request (or translation) is not known yet.
    NotYet,
    /// Not a tracked process on this host.
    Untracked,
    /// A tracked caller that cannot be told (why).
    Missed(&'static str),
}

/// A server request whose caller is a tracked process on this host, whose
/// request event has not arrived yet (the ring buffer has no order across
/// CPUs).
#[derive(Debug)]
struct Wait {
    span: SpanId,
    group: GroupId,
    tuple: Tuple,
    request_start: u64,
    /// HTTP/2: the stream id its caller's stream has.
    stream: Option<u32>,
    /// The request named its trace itself: only its exact parent is looked for.
    explicit: bool,
    /// The server process (its namespace may be where a translation is known).
    pid: u32,
    /// Counted as a link tried (a tracked caller looked for).
    tried: bool,
    /// Exchanges in flight at the request's start on the client connections
    /// that may be its translated caller, kept while conntrack is asked: the
    /// connection may have closed by the time the answer comes.
    seen: Vec<(Tuple, SpanCtx)>,
    due: u64,
    /// The request's span, when it finished before its link was known: it
    /// leaves with its parent once the wait is over.
    parked: Option<Span>,
}

#[derive(Debug)]
pub struct Linker {
    waits: VecDeque<Wait>,
    wait_ns: u64,
    parents: FxHashMap<SpanId, SpanId>,
    parent_order: VecDeque<SpanId>,
    published: PublishContexts<SpanCtx>,
    /// Parked spans whose wait is over, with their parent: for the pipeline
    /// to finish (`take_ready`).
    ready: Vec<(GroupId, Span)>,
    /// Translations of server connections, by the server's tuple, with when.
    nat: LruCache<Tuple, (Nat, u64)>,
    /// Questions for the conntrack thread (`take_queries`).
    queries: Vec<Query>,
}

/// A server request that began, for the link stage.
#[derive(Debug)]
pub struct ServerRequest<'a> {
    pub key: ConnKey,
    pub tuple: Tuple,
    pub started: &'a Started,
    /// HTTP/2: its stream id, which names its caller's stream.
    pub stream: Option<u32>,
    pub traceparent: Option<&'a TraceParent>,
    pub tracestate: Option<String>,
}

pub fn explicit(tp: &TraceParent, trace_state: Option<String>) -> Explicit {
    Explicit { trace_id: tp.trace_id, sampled: tp.sampled(), trace_state }
}

impl Linker {
    pub fn new(wait_ns: u64) -> Self {
        Self {
            waits: VecDeque::new(),
            wait_ns,
            parents: FxHashMap::default(),
            parent_order: VecDeque::new(),
            published: PublishContexts::new(MAX_PUBLISHES),
            ready: Vec::new(),
            nat: LruCache::new(NonZeroUsize::new(MAX_TRANSLATIONS).expect("not zero")),
            queries: Vec::new(),
        }
    }

    /// Questions for the conntrack thread since the last call.
    pub fn take_queries(&mut self) -> std::vec::Drain<'_, Query> {
        self.queries.drain(..)
    }

    /// Whether there are questions for the conntrack thread.
    pub fn has_queries(&self) -> bool {
        !self.queries.is_empty()
    }

    /// The conntrack thread's answer for a server connection (or the
    /// question could not be sent: `Translation::Failed`). The waiting
    /// requests use it at their next retry.
    pub fn on_translation(&mut self, server: Tuple, translation: Translation, now: u64) {
        let nat = match translation {
            // Conntrack names no namespace: a loopback translation (REDIRECT)
            // stays in the server's, any other is keyed without one.
            Translation::Original { client, called } => {
                Nat::Client(Tuple { local: client, remote: called, netns: server.netns })
            }
            Translation::NotTranslated => Nat::Missed("not translated"),
            Translation::Failed => Nat::Missed("lookup failed"),
        };
        self.nat.put(server, (nat, now));
    }

    /// A server span finished while its request still waits for its
    /// caller: it is kept until the wait is over (given back when no wait
    /// is under way).
    pub fn park(&mut self, span: Span) -> Option<Span> {
        match self.waits.iter_mut().find(|w| w.span == span.span_id) {
            Some(w) => {
                w.parked = Some(span);
                None
            }
            None => Some(span),
        }
    }

    /// Parked spans whose wait is over, with their parent set.
    pub fn take_ready(&mut self) -> std::vec::Drain<'_, (GroupId, Span)> {
        self.ready.drain(..)
    }

    /// A wait is over with `parent` (None: no link): its parked span is ready.
    fn release(&mut self, wait: &mut Wait, parent: Option<SpanId>) {
        if let Some(mut span) = wait.parked.take() {
            if parent.is_some() {
                span.parent_span_id = parent;
            }
            self.ready.push((wait.group, span));
        }
    }

    /// The remote parent found for the span `span` (once).
    pub fn take_parent(&mut self, span: SpanId) -> Option<SpanId> {
        self.parents.remove(&span)
    }

    fn keep_parent(&mut self, span: SpanId, parent: SpanId) {
        if self.parents.len() >= MAX_PARENTS {
            while let Some(old) = self.parent_order.pop_front() {
                if self.parents.remove(&old).is_some() {
                    break;
                }
            }
        }
        self.parents.insert(span, parent);
        self.parent_order.push_back(span);
        if self.parent_order.len() > 2 * self.parents.len() + 64 {
            let parents = &self.parents;
            self.parent_order.retain(|id| parents.contains_key(id));
        }
    }

    /// Whether any server request waits for its caller.
    pub fn has_waits(&self) -> bool {
        !self.waits.is_empty()
    }

    /// Whether a server request is still waiting for its caller.
    pub fn is_waiting(&self, span: SpanId) -> bool {
        self.waits.iter().any(|w| w.span == span)
    }

    /// A server request began: settles its trace now, or waits (briefly) for
    /// its tracked caller's request event.
    pub fn on_request_started(
        &mut self,
        table: &ConnectionTable,
        ctx: &mut Tracker,
        request: ServerRequest<'_>,
        now: u64,
        t: &Telemetry,
    ) {
        let started = request.started;
        let group = started.ctx.group;
        let explicit_link = request.traceparent.is_some();
        if let Some(tp) = request.traceparent {
            // The caller said who it is: that wins over anything inferred.
            ctx.settle(group, Link::Explicit(explicit(tp, request.tracestate)), t);
        }
        let wait = Wait {
            span: started.ctx.span_id,
            group,
            tuple: request.tuple,
            request_start: started.ts_exit,
            stream: request.stream,
            explicit: explicit_link,
            pid: request.key.pid,
            tried: false,
            seen: Vec::new(),
            due: now + self.wait_ns,
            parked: None,
        };
        if let Some(wait) = self.try_link(table, ctx, wait, now, t) {
            if self.wait_ns == 0 || self.waits.len() >= MAX_WAITS {
                self.give_up(ctx, wait, t);
            } else {
                self.waits.push_back(wait);
            }
        }
    }

    /// Links to the caller's client exchange when the caller is a tracked
    /// process on this host; hands the wait back when the caller is tracked
    /// but its request (or the connection's translation) is not known yet.
    fn try_link(
        &mut self,
        table: &ConnectionTable,
        ctx: &mut Tracker,
        mut wait: Wait,
        now: u64,
        t: &Telemetry,
    ) -> Option<Wait> {
        let caller = match self.caller(table, &mut wait, now, t) {
            Caller::NotYet => return Some(wait),
            Caller::Found(caller, how) => Some((caller, how)),
            Caller::Missed(why) => {
                t.add_for(Counter::LinksMissed, LINK, why, 1);
                None
            }
            // A caller was seen, and its connection closed before its
            // request was (every link tried ends made or missed).
            Caller::Untracked if wait.tried => {
                t.add_for(Counter::LinksMissed, LINK, "partner gone", 1);
                None
            }
            Caller::Untracked => None,
        };
        match caller {
            Some((caller, how)) => {
                if wait.parked.is_some() {
                    self.release(&mut wait, Some(caller.span_id));
                } else {
                    self.keep_parent(wait.span, caller.span_id);
                }
                if !wait.explicit {
                    ctx.settle(wait.group, Link::Caller(caller.group), t);
                }
                t.add_for(Counter::SpansLinked, LINK, how, 1);
            }
            None => {
                self.release(&mut wait, None);
                if !wait.explicit {
                    ctx.settle(wait.group, Link::None, t);
                }
            }
        }
        None
    }

    /// The caller of a waiting request: the other end of its connection,
    /// else the client connection conntrack says it was before translation.
    fn caller(&mut self, table: &ConnectionTable, wait: &mut Wait, now: u64, t: &Telemetry) -> Caller {
        let tried = |wait: &mut Wait, how: &'static str| {
            if !wait.tried {
                wait.tried = true;
                t.add_for(Counter::LinksTried, LINK, how, 1);
            }
        };
        let mut direct = table.peers(&wait.tuple).peekable();
        if let Some((_, peer)) = direct.peek() {
            tried(wait, "same connection");
            let how = if peer.tuple.netns == wait.tuple.netns { "same namespace" } else { "across namespaces" };
            return choose(direct.map(|(_, c)| c), wait.request_start, wait.stream, how);
        }
        let known = self.nat.get(&wait.tuple).copied().filter(|(nat, at)| {
            let ttl = if matches!(nat, Nat::Asked) { QUESTION_TTL_NS } else { TRANSLATION_TTL_NS };
            now.saturating_sub(*at) < ttl
        });
        match known.map(|(nat, _)| nat) {
            Some(Nat::Asked) => {
                remember_callers(table, wait);
                Caller::NotYet
            }
            Some(Nat::Client(client)) => {
                let seen = wait.seen.iter().find(|(tuple, _)| same_ends(tuple, &client)).map(|(_, ctx)| *ctx);
                if seen.is_none() && table.with_ends(&client).next().is_none() {
                    // Not (or no longer) a tracked connection.
                    return Caller::Untracked;
                }
                tried(wait, "translated");
                let callers = table.with_ends(&client).map(|(_, c)| c);
                match (choose(callers, wait.request_start, wait.stream, "translated"), seen) {
                    (found @ (Caller::Found(..) | Caller::Missed(_)), _) => found,
                    (_, Some(ctx)) => Caller::Found(ctx, "translated"),
                    (_, None) => Caller::NotYet,
                }
            }
            Some(Nat::Missed(why)) => {
                if wait.tried {
                    Caller::Missed(why)
                } else {
                    Caller::Untracked
                }
            }
            None => {
                // A tracked client whose own address is the server's peer,
                // which called another address: a translation, maybe.
                let callers: Vec<(ConnKey, &Connection)> = table
                    .at_endpoint(wait.tuple.remote, wait.tuple.netns)
                    .filter(|(_, c)| c.tuple.remote != wait.tuple.local)
                    .take(MAX_SEEN)
                    .collect();
                if callers.is_empty() {
                    return Caller::Untracked;
                }
                tried(wait, "translated");
                let mut namespaces: Vec<Namespace> =
                    callers.iter().map(|(k, c)| Namespace { inode: c.tuple.netns, pid: k.pid }).collect();
                namespaces.push(Namespace { inode: wait.tuple.netns, pid: wait.pid });
                self.queries.push(Query { server: wait.tuple, namespaces });
                self.nat.put(wait.tuple, (Nat::Asked, now));
                remember_callers(table, wait);
                Caller::NotYet
            }
        }
    }

    fn give_up(&mut self, ctx: &mut Tracker, mut wait: Wait, t: &Telemetry) {
        let asked = matches!(self.nat.peek(&wait.tuple), Some((Nat::Asked, _)));
        if asked && wait.tried {
            t.add_for(Counter::LinksMissed, LINK, "translation late", 1);
        } else {
            t.inc(Counter::LinkPartnerLate);
            t.add_for(Counter::LinksMissed, LINK, "partner late", 1);
        }
        self.release(&mut wait, None);
        if !wait.explicit {
            ctx.settle(wait.group, Link::None, t);
        }
    }

    /// Retries waiting links; those past their time (or all, at the end)
    /// start traces of their own.
    pub fn retry(&mut self, table: &ConnectionTable, ctx: &mut Tracker, now: u64, all: bool, t: &Telemetry) {
        for _ in 0..self.waits.len() {
            let Some(wait) = self.waits.pop_front() else { break };
            let Some(wait) = self.try_link(table, ctx, wait, now, t) else { continue };
            if all || wait.due <= now {
                self.give_up(ctx, wait, t);
            } else {
                self.waits.push_back(wait);
            }
        }
    }

    /// A PRODUCER span's message, remembered for a consumer on this host.
    pub fn on_published(&mut self, publish: &Publish, ctx: SpanCtx) {
        self.published.remember(publish, ctx);
    }

    /// A message was delivered: its CONSUMER span's trace is the message's
    /// traceparent, else the PRODUCER span of the same message published on
    /// this host, else its own.
    pub fn on_delivered(&mut self, ctx: &mut Tracker, started: &Started, link: DeliveryLink, t: &Telemetry) {
        let group = started.ctx.group;
        if let Some(tp) = &link.traceparent {
            ctx.settle(group, Link::Explicit(explicit(tp, link.tracestate)), t);
            return;
        }
        match link.fingerprint.and_then(|fp| self.published.take_fingerprint(fp)) {
            Some(producer) => {
                self.keep_parent(started.ctx.span_id, producer.span_id);
                ctx.settle(group, Link::Caller(producer.group), t);
                t.add_for(Counter::SpansLinked, "amqp", "message", 1);
            }
            None => ctx.settle(group, Link::None, t),
        }
    }
}

/// The client exchange in flight at `ts` (of HTTP/2 stream `stream`) on
/// one of `conns` (the other ends of one connection: almost always one).
fn choose<'a>(conns: impl Iterator<Item = &'a Connection>, ts: u64, stream: Option<u32>, how: &'static str) -> Caller {
    let mut found: Option<SpanCtx> = None;
    let mut any = false;
    for conn in conns {
        any = true;
        if let Some(ctx) = conn.trace.in_flight_at(ts, stream) {
            if found.is_some_and(|f| f.span_id != ctx.span_id) {
                // One address in two namespaces, both calling at once.
                return Caller::Missed("ambiguous");
            }
            found = Some(ctx);
        }
    }
    match found {
        Some(ctx) => Caller::Found(ctx, how),
        None if any => Caller::NotYet,
        None => Caller::Untracked,
    }
}

/// Two tuples with the same addresses, as the link keys them (conntrack
/// answers carry no namespace).
fn same_ends(a: &Tuple, b: &Tuple) -> bool {
    a.local == b.local && a.remote == b.remote
}

/// Keeps the exchanges in flight at the request's start on the client
/// connections that may be its translated caller.
fn remember_callers(table: &ConnectionTable, wait: &mut Wait) {
    let callers =
        table.at_endpoint(wait.tuple.remote, wait.tuple.netns).filter(|(_, c)| c.tuple.remote != wait.tuple.local);
    for (_, conn) in callers {
        let Some(ctx) = conn.trace.in_flight_at(wait.request_start, wait.stream) else { continue };
        if wait.seen.len() < MAX_SEEN && !wait.seen.iter().any(|(tuple, _)| same_ends(tuple, &conn.tuple)) {
            wait.seen.push((conn.tuple, ctx));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Role;
    use crate::connections::{ConnKey, Outcome};
    use crate::context::{assembly::AssemblyOptions, sampler::Sampler, Assembler, ThreadKey};
    use crate::model::{Service, SpanKind};
    use crate::protocols::{http2::frame, Chunk, Direction};

    const REQ: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";

    fn chunk(direction: Direction, data: &[u8], ts: u64) -> Chunk<'_> {
        Chunk { direction, data, total: data.len(), ts_enter: ts, ts_exit: ts + 1 }
    }

    #[test]
    fn a_delivery_finds_the_publish_of_the_same_message_once() {
        let mut contexts = PublishContexts::new(2);
        let publish = |fp: u64| Publish {
            channel: 1,
            exchange: String::new(),
            routing_key: "batch".into(),
            mandatory: false,
            body_size: 3,
            traceparent: None,
            tracestate: None,
            message_id: None,
            correlation_id: None,
            fingerprint: Some(fp),
            confirm_seq: None,
            ts_start: 1,
            ts_end: 2,
        };
        for fp in [10, 20, 30] {
            contexts.remember(&publish(fp), fp * 2);
        }
        assert_eq!(contexts.take_fingerprint(10), None, "bounded: the oldest went first");
        assert_eq!(contexts.take_fingerprint(20), Some(40));
        assert_eq!(contexts.take_fingerprint(20), None, "matched once");
        assert_eq!(contexts.take_fingerprint(30), Some(60));
    }

    #[test]
    fn a_server_span_done_before_its_callers_request_was_seen_leaves_with_that_parent() {
        let t = Telemetry::default();
        let mut table = ConnectionTable::new(16);
        let mut tracker = Tracker::new(Assembler::new(AssemblyOptions::default(), Sampler::default()), 16);
        let mut linker = Linker::new(1_000_000_000);
        let mut out = Vec::new();
        let server_tuple =
            Tuple { local: "127.0.0.1:80".parse().unwrap(), remote: "127.0.0.1:1000".parse().unwrap(), netns: 1 };
        let (server, client) = (ConnKey { pid: 2, fd: 5 }, ConnKey { pid: 1, fd: 7 });
        let th = |pid| ThreadKey { pid, tid: pid, loop_seq: 0 };
        // The caller's connect is known, its request event not yet (it comes late).
        table.open(client, server_tuple.reversed(), Role::Client, th(1), 10, &mut tracker, &mut out, &t);
        table.data(
            server,
            server_tuple,
            Role::Server,
            th(2),
            &chunk(Direction::Ingress, REQ, 100),
            &mut tracker,
            &mut out,
            &t,
        );
        let Some(Outcome::RequestStarted { started, .. }) = out.pop() else { panic!("{out:?}") };
        let request = ServerRequest {
            key: server,
            tuple: server_tuple,
            started: &started,
            stream: None,
            traceparent: None,
            tracestate: None,
        };
        linker.on_request_started(&table, &mut tracker, request, 100, &t);
        assert!(linker.is_waiting(started.ctx.span_id));
        // The server span finished: parked, not lost, not parentless.
        let service = std::sync::Arc::new(Service {
            name: "s".into(),
            namespace: None,
            instance_id: "i".into(),
            attributes: vec![],
        });
        let span = Span { span_id: started.ctx.span_id, ..Span::for_test(&service, SpanKind::Server, "GET") };
        assert!(linker.park(span).is_none());
        // The caller's write (it started before the server's read) arrives.
        table.data(
            client,
            server_tuple.reversed(),
            Role::Client,
            th(1),
            &chunk(Direction::Egress, REQ, 90),
            &mut tracker,
            &mut out,
            &t,
        );
        let caller = table.peers(&server_tuple).next().unwrap().1.trace.in_flight_at(101, None).unwrap();
        linker.retry(&table, &mut tracker, 200, false, &t);
        let ready: Vec<_> = linker.take_ready().collect();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].1.parent_span_id, Some(caller.span_id));
        assert!(tracker.is_decided(started.ctx.group), "joined to the caller's (decided) trace");
        assert_eq!(t.get(Counter::SpansLinked), 1);
    }

    /// An HTTP/2 HEADERS frame of `stream` (GET, http, literal :path).
    fn h2_request(stream: u32) -> Vec<u8> {
        let path = format!("/s/{stream}");
        let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
        block.extend_from_slice(path.as_bytes());
        let len = block.len() as u32;
        let flags = frame::FLAG_END_HEADERS | frame::FLAG_END_STREAM;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, frame::HEADERS, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend(block);
        f
    }

    #[test]
    fn concurrent_http2_streams_link_to_the_client_stream_of_the_same_id() {
        let t = Telemetry::default();
        let mut table = ConnectionTable::new(16);
        let mut tracker = Tracker::new(Assembler::new(AssemblyOptions::default(), Sampler::default()), 16);
        let mut linker = Linker::new(1_000_000_000);
        let mut out = Vec::new();
        let server_tuple =
            Tuple { local: "127.0.0.1:443".parse().unwrap(), remote: "127.0.0.1:1000".parse().unwrap(), netns: 1 };
        let (server, client) = (ConnKey { pid: 2, fd: 5 }, ConnKey { pid: 1, fd: 7 });
        let th = |pid| ThreadKey { pid, tid: pid, loop_seq: 0 };
        // The client opens streams 1, 3, 5, 7 in one write (Node's
        // http2.connect with four requests at once, nginx's curl -Z).
        let mut write = frame::PREFACE.to_vec();
        write.extend([0, 0, 0, frame::SETTINGS, 0, 0, 0, 0, 0]);
        for stream in [1, 3, 5, 7] {
            write.extend(h2_request(stream));
        }
        table.open(client, server_tuple.reversed(), Role::Client, th(1), 10, &mut tracker, &mut out, &t);
        let egress = chunk(Direction::Egress, &write, 90);
        table.data(client, server_tuple.reversed(), Role::Client, th(1), &egress, &mut tracker, &mut out, &t);
        // The server reads them all at once: four requests started.
        out.clear();
        let ingress = chunk(Direction::Ingress, &write, 100);
        table.data(server, server_tuple, Role::Server, th(2), &ingress, &mut tracker, &mut out, &t);
        let mut parents = Vec::new();
        for o in std::mem::take(&mut out) {
            let Outcome::RequestStarted { started, stream, .. } = o else { continue };
            let request = ServerRequest {
                key: server,
                tuple: server_tuple,
                started: &started,
                stream,
                traceparent: None,
                tracestate: None,
            };
            linker.on_request_started(&table, &mut tracker, request, 100, &t);
            parents.push((format!("/s/{}", stream.unwrap()), linker.take_parent(started.ctx.span_id)));
        }
        // The client reads the answers: its spans' ids, by path.
        let mut answers = Vec::new();
        for stream in [7u32, 5, 3, 1] {
            answers.extend([0, 0, 1, frame::HEADERS, frame::FLAG_END_HEADERS | frame::FLAG_END_STREAM]);
            answers.extend(stream.to_be_bytes());
            answers.push(0x88); // :status 200
        }
        let ingress = chunk(Direction::Ingress, &answers, 200);
        table.data(client, server_tuple.reversed(), Role::Client, th(1), &ingress, &mut tracker, &mut out, &t);
        let mut clients: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Outcome::Http { server_side: false, started, exchange, .. } => {
                    Some((exchange.request.target.clone(), Some(started.ctx.span_id)))
                }
                _ => None,
            })
            .collect();
        clients.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(clients.len(), 4, "{out:?}");
        // Each server stream is the child of its own client stream, not
        // all of the latest one started.
        assert_eq!(parents, clients);
        assert_eq!(t.get(Counter::SpansLinked), 4);
        // Finished, each stays findable by its id (a server's late read).
        let peer = &table.peers(&server_tuple).next().unwrap().1.trace;
        for (path, id) in &clients {
            let stream = path["/s/".len()..].parse().unwrap();
            assert_eq!(peer.in_flight_at(101, Some(stream)).map(|c| c.span_id), *id, "finished {path}");
        }
    }
}

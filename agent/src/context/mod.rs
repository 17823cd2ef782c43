//! Trace context without touching anyone's traffic: which request a syscall
//! works for, so that spans connect into one trace.
//!
//! In-process nesting (see `Tracker`):
//! - every thread has a *current request*: the server request it read or
//!   answered last, or the request a response it just read was made for;
//! - a client request written by a thread becomes a child of that thread's
//!   current request;
//! - event-loop threads (Node.js, nginx) run many requests on one thread:
//!   the kernel counts each thread's entries into epoll_wait/poll/select
//!   (`loop_seq`), and a current request is only believed within the same
//!   loop iteration — a callback started by a read names its request, a
//!   callback started by a timer has none;
//! - a connection opened while a request was current remembers it, so a
//!   request written later from a "connected" callback (no read before it)
//!   still finds its parent;
//! - queues inside the process (one shared database connection, a pool that
//!   is full, an HTTP agent at maxSockets) hand a connection to the next
//!   waiting request in the callback that read the previous answer: a
//!   request written on a connection right after that connection's previous
//!   answer was read (same loop iteration, no other read in between) goes to
//!   the oldest request of
//!   the thread that is waiting on nothing we can see (no call in flight, no
//!   answer begun), when there is one — a FIFO queue's order.
//!
//! Trace ids are decided late (see `assembly`): span ids are fixed when an
//! exchange starts, trace ids when the local part of a trace is complete and
//! its link to a caller (traceparent or a tracked client on this host) is known.
pub mod assembly;
pub mod sampler;

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::model::{traceparent::TraceParent, SpanId, TraceId};
use crate::protocols::{Chunk, Direction};
use crate::telemetry::{Counter, Telemetry};

use assembly::ClaimedIds;
pub use assembly::{Assembler, GroupId};

/// A span that may become a parent: its id and the group deciding its trace id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanCtx {
    pub span_id: SpanId,
    pub group: GroupId,
}

/// The identity an exchange got when its first byte was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Started {
    pub ctx: SpanCtx,
    /// The in-process parent (client side only; a server's parent is its caller).
    pub parent: Option<SpanCtx>,
    /// Entry and exit of the syscall that carried the first byte.
    pub ts_enter: u64,
    pub ts_exit: u64,
    /// Client side: the request carried a traceparent that the process
    /// itself wrote, which names this span.
    pub pin: Option<Pin>,
}

impl Started {
    fn new(ctx: SpanCtx, parent: Option<SpanCtx>, ts_enter: u64, ts_exit: u64) -> Self {
        Self { ctx, parent, ts_enter, ts_exit, pin: None }
    }
}

/// The trace a process named on a request it wrote (`traceparent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pin {
    pub trace_id: TraceId,
    pub flags: u8,
    /// The header's parent id already named another span (one header sent
    /// twice, or forwarded as received): this span has an id of its own and
    /// the header's parent id as its parent. None: the span took the
    /// header's parent id as its own id (the callee will name it as parent).
    pub header_parent: Option<SpanId>,
}

/// A client exchange that completed, kept a little while so that the server
/// end (another tracked process) can find its parent.
#[derive(Clone, Copy, Debug)]
pub struct Finished {
    pub started: Started,
    pub end: u64,
    /// HTTP/2: its stream id (the same at both ends of the connection).
    pub stream: Option<u32>,
}

/// Exchanges started on one connection and not completed yet, beyond which
/// the oldest is given up (a peer that never answers).
const MAX_PENDING: usize = 16;
/// Completed client exchanges remembered per connection for partner matching.
const MAX_RECENT: usize = 4;

/// What the context layer keeps per connection.
#[derive(Debug, Default)]
pub struct ConnTrace {
    last_dir: Option<Direction>,
    connect_ctx: Option<SpanCtx>,
    requests: u32,
    pending: VecDeque<Started>,
    recent: VecDeque<Finished>,
    /// Client side: the thread and loop iteration that read the last answer.
    last_answer: Option<(u32, u32)>,
    /// Server side: the thread that reads the requests.
    server_tid: Option<u32>,
    /// Client side: the thread whose request's connect is still a call in flight.
    connect_tid: Option<u32>,
    /// Client side: exchanges completed, and how many when the last request
    /// was written (handshakes complete nothing: they are no hand-off).
    completed: u32,
    completed_before: u32,
    /// AMQP: (channel, delivery tag) -> identity of the CONSUMER span of a
    /// delivery not settled yet.
    deliveries: FxHashMap<(u16, u64), Started>,
    /// HTTP/2: stream id -> identity of its exchange, while open.
    streams: FxHashMap<u32, Started>,
}

/// HTTP/2 streams of one connection whose identity is kept (the parser
/// bounds them first; this is the context layer's own bound).
const MAX_STREAMS: usize = 512;

/// Deliveries of one connection remembered until settled (beyond: all are
/// given up, counted, and their spans become roots).
const MAX_DELIVERIES: usize = 4096;

impl ConnTrace {
    /// The exchange of this connection started at `start` (the latest one
    /// started by then), if it is still open.
    pub fn started_at(&self, start: u64) -> Option<Started> {
        self.pending.iter().rev().find(|s| s.ts_enter <= start).copied()
    }

    /// The client exchange on this connection that was in flight at `ts`
    /// (CLOCK_MONOTONIC ns), if any; for a server's HTTP/2 stream, the
    /// client stream of the same id (concurrent streams all started before
    /// the server read any of them: time cannot tell them apart).
    pub fn in_flight_at(&self, ts: u64, stream: Option<u32>) -> Option<SpanCtx> {
        let started_before = |s: &Started| s.ts_enter <= ts;
        if let Some(id) = stream {
            let open = self.streams.get(&id).copied();
            let done = || self.recent.iter().rev().find(|f| f.stream == Some(id)).map(|f| f.started);
            return open.or_else(done).filter(started_before).map(|s| s.ctx);
        }
        self.recent
            .iter()
            .rev()
            .find(|f| started_before(&f.started) && ts <= f.end)
            .map(|f| f.started.ctx)
            .or_else(|| self.pending.iter().rev().find(|s| started_before(s)).map(|s| s.ctx))
            .or_else(|| {
                // HTTP/2 streams in flight: the latest one started by then.
                self.streams.values().filter(|s| started_before(s)).max_by_key(|s| s.ts_enter).map(|s| s.ctx)
            })
    }
}

/// A thread of a tracked process, with its event-loop iteration. In an
/// instrumented Go process the logical thread is the goroutine
/// ([`ThreadKey::of`]): goroutines move between OS threads, and a goroutine
/// is sequential code, whose current request holds until it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadKey {
    pub pid: u32,
    pub tid: u32,
    pub loop_seq: u32,
}

/// Marks a goroutine's `ThreadKey::tid`: Linux tids stay below 2^22, so a
/// goroutine never takes an OS thread's place (ids are kept modulo 2^31).
const GOROUTINE_BIT: u32 = 0x8000_0000;

impl ThreadKey {
    /// The logical thread of an event: the goroutine when the kernel named
    /// one (`goid` != 0), else the OS thread in its loop iteration.
    pub fn of(pid: u32, tid: u32, loop_seq: u32, goid: u32) -> Self {
        if goid != 0 {
            Self::goroutine(pid, u64::from(goid))
        } else {
            Self { pid, tid, loop_seq }
        }
    }

    /// Goroutine `goid` of Go process `pid`.
    pub fn goroutine(pid: u32, goid: u64) -> Self {
        Self { pid, tid: GOROUTINE_BIT | (goid as u32 & !GOROUTINE_BIT), loop_seq: 0 }
    }

    pub fn is_goroutine(&self) -> bool {
        self.tid & GOROUTINE_BIT != 0
    }
}

/// Server requests a thread read and has not begun to answer, each with its
/// client requests in flight. A request with none is waiting on nothing we
/// can see (in an in-process queue, on a timer), since it was read or since
/// its last call came back: they are kept in that order.
#[derive(Debug, Default)]
struct WaitQueue {
    /// (request, its mark): the order in which requests began waiting on
    /// nothing we can see; an entry whose mark is not its request's current
    /// one is stale (skipped, compacted).
    order: VecDeque<(SpanId, u32)>,
    waiting: FxHashMap<SpanId, Waiting>,
    next_mark: u32,
}

#[derive(Debug, Clone, Copy)]
struct Waiting {
    ctx: SpanCtx,
    /// Client requests (and connects, thread-pool hops) in flight.
    calls: u16,
    /// Its entry in `order`, given when its calls last reached none.
    mark: u32,
}

/// Server requests tracked per thread for queue hand-offs (a backlog of tens
/// of seconds at hundreds of requests per second), beyond which the oldest
/// are dropped from that bookkeeping (counted).
const MAX_WAITING: usize = 16_384;

impl WaitQueue {
    fn push(&mut self, ctx: SpanCtx, telemetry: &Telemetry) {
        if self.waiting.len() >= MAX_WAITING {
            while let Some(old) = self.order.pop_front() {
                if self.is_current(&old) && self.waiting.remove(&old.0).is_some() {
                    telemetry.inc(Counter::ContextWaitingDropped);
                    break;
                }
            }
        }
        let mark = self.mark();
        self.waiting.insert(ctx.span_id, Waiting { ctx, calls: 0, mark });
        self.order.push_back((ctx.span_id, mark));
    }

    fn mark(&mut self) -> u32 {
        self.next_mark = self.next_mark.wrapping_add(1);
        self.next_mark
    }

    fn is_current(&self, (id, mark): &(SpanId, u32)) -> bool {
        self.waiting.get(id).is_some_and(|w| w.mark == *mark)
    }

    /// A call of `span` started.
    fn call_started(&mut self, span: SpanId) {
        if let Some(w) = self.waiting.get_mut(&span) {
            w.calls = w.calls.saturating_add(1);
        }
    }

    /// A call of `span` is over; with none left it waits on nothing we can
    /// see again, from now on (the end of the order).
    fn call_done(&mut self, span: SpanId) {
        let Some(w) = self.waiting.get_mut(&span) else { return };
        if w.calls == 0 {
            return;
        }
        w.calls -= 1;
        if w.calls == 0 {
            self.next_mark = self.next_mark.wrapping_add(1);
            w.mark = self.next_mark;
            self.order.push_back((span, w.mark));
            self.compact();
        }
    }

    fn remove(&mut self, span: SpanId) {
        if self.waiting.remove(&span).is_some() {
            self.compact();
        }
    }

    fn compact(&mut self) {
        if self.order.len() > 2 * self.waiting.len() + 64 {
            let mut order = std::mem::take(&mut self.order);
            order.retain(|e| self.is_current(e));
            self.order = order;
        }
    }

    /// The request that has waited longest on nothing we can see, other
    /// than `except`.
    fn oldest_stalled(&mut self, except: Option<SpanCtx>) -> Option<SpanCtx> {
        while self.order.front().is_some_and(|e| !self.is_current(e)) {
            self.order.pop_front();
        }
        self.order
            .iter()
            .filter(|e| self.is_current(e))
            .filter_map(|(id, _)| self.waiting.get(id))
            .find(|w| w.calls == 0 && Some(w.ctx) != except)
            .map(|w| w.ctx)
    }
}

#[derive(Debug, Default)]
struct Current {
    ctx: Option<SpanCtx>,
    /// The thread has read server requests (a goroutine serving a
    /// connection): it works for its own requests, never for a waker's.
    serves: bool,
    loop_seq: u32,
    /// The fd the thread last read from, and in which loop iteration.
    last_read: Option<(i32, u32)>,
    /// asyncio: the loop iteration in which a Task step began on this
    /// thread, until the thread reads a socket (reads run in I/O callbacks,
    /// outside steps).
    in_task_step: Option<u32>,
    /// Node.js: the loop iteration in which the thread began running
    /// JavaScript timers, until it next reads a socket, and the request
    /// that was current then.
    deferred: Option<u32>,
    before_deferred: Option<SpanCtx>,
    waiting: WaitQueue,
}

/// Per-thread current requests, bounded.
#[derive(Debug)]
struct Threads {
    map: FxHashMap<(u32, u32), Current>,
    max: usize,
}

impl Threads {
    fn current(&self, t: ThreadKey) -> Option<SpanCtx> {
        self.map.get(&(t.pid, t.tid)).filter(|c| c.loop_seq == t.loop_seq).and_then(|c| c.ctx)
    }

    fn entry(&mut self, pid: u32, tid: u32, telemetry: &Telemetry) -> &mut Current {
        if self.map.len() >= self.max && !self.map.contains_key(&(pid, tid)) {
            // Threads that ended without their process exiting: start over.
            telemetry.add(Counter::ContextThreadsReset, self.map.len() as u64);
            self.map.clear();
        }
        self.map.entry((pid, tid)).or_default()
    }

    fn set(&mut self, t: ThreadKey, ctx: Option<SpanCtx>, telemetry: &Telemetry) {
        let c = self.entry(t.pid, t.tid, telemetry);
        c.ctx = ctx;
        c.loop_seq = t.loop_seq;
    }

    fn last_read(&self, t: ThreadKey) -> Option<(i32, u32)> {
        self.map.get(&(t.pid, t.tid)).and_then(|c| c.last_read)
    }

    /// A call of waiting request `span` started.
    fn call_started(&mut self, pid: u32, tid: u32, span: SpanId) {
        if let Some(c) = self.map.get_mut(&(pid, tid)) {
            c.waiting.call_started(span);
        }
    }

    /// A call of waiting request `span` is over.
    fn call_done(&mut self, pid: u32, tid: u32, span: SpanId) {
        if let Some(c) = self.map.get_mut(&(pid, tid)) {
            c.waiting.call_done(span);
        }
    }

    /// The thread runs JavaScript timers in this iteration.
    fn in_deferred(&self, t: ThreadKey) -> bool {
        t.loop_seq != 0 && self.map.get(&(t.pid, t.tid)).is_some_and(|c| c.deferred == Some(t.loop_seq))
    }

    fn stop_waiting(&mut self, pid: u32, tid: u32, span: SpanId) {
        if let Some(c) = self.map.get_mut(&(pid, tid)) {
            c.waiting.remove(span);
        }
    }

    /// The oldest request of the thread waiting on nothing we can see.
    fn oldest_stalled(&mut self, t: ThreadKey, except: Option<SpanCtx>) -> Option<SpanCtx> {
        self.map.get_mut(&(t.pid, t.tid))?.waiting.oldest_stalled(except)
    }
}

/// Async hops in flight at once (submitted, callback not run yet), over
/// every tracked process; beyond, the oldest is forgotten (counted).
const MAX_ASYNC_HOPS: usize = 65_536;

/// A hop a request handed to a runtime's thread pool.
#[derive(Clone, Copy, Debug)]
struct Hop {
    /// None: submitted outside any request.
    ctx: Option<SpanCtx>,
    tid: u32,
}

/// The context stage. Decides the span ids and in-process parents of
/// exchanges as their bytes go by (every span id is given here), and, with
/// its [`Assembler`], the trace ids of the groups they form.
#[derive(Debug)]
pub struct Tracker {
    threads: Threads,
    assembly: Assembler,
    /// Span ids named by traceparent headers seen so far.
    claimed: ClaimedIds,
    /// (pid, runtime key) -> the request that submitted the work.
    hops: lru::LruCache<(u32, u64), Hop>,
    /// (pid, asyncio Task) -> the request the task works for (None: none).
    tasks: lru::LruCache<(u32, u64), Option<SpanCtx>>,
}

impl Tracker {
    pub fn new(assembly: Assembler, max_threads: usize) -> Self {
        Self {
            threads: Threads { map: FxHashMap::default(), max: max_threads },
            assembly,
            claimed: ClaimedIds::default(),
            hops: lru::LruCache::new(std::num::NonZeroUsize::new(MAX_ASYNC_HOPS).expect("not zero")),
            tasks: lru::LruCache::new(std::num::NonZeroUsize::new(MAX_ASYNC_HOPS).expect("not zero")),
        }
    }

    /// A runtime async hop (libuv's thread pool): the request current when
    /// the work was submitted is current again when its callback starts, in
    /// whatever loop iteration that is; calls the callback makes (a connect
    /// after dns.lookup, a query after fs.readFile) are its children. While
    /// the work is out, the request waits on something: it is not taken for
    /// a queue hand-off.
    ///
    /// asyncio: a Task works for the request current when it was created,
    /// then for the request current whenever a future it waits on is done
    /// (a read of the request, the answer to its call); each of its steps
    /// makes that request current.
    pub fn on_async(&mut self, thread: ThreadKey, key: u64, phase: crate::capture::AsyncPhase, telemetry: &Telemetry) {
        const RUNTIME: &str = "libuv";
        tracing::trace!(tid = thread.tid, seq = thread.loop_seq, key = format_args!("{key:#x}"), ?phase, current = ?self.threads.current(thread).map(|c| c.span_id), bound = ?self.tasks.peek(&(thread.pid, key)).map(|c| c.map(|c| c.span_id)), "async");
        match phase {
            crate::capture::AsyncPhase::Submit => {
                let ctx = self.current_or_deferred(thread, telemetry);
                match ctx {
                    Some(ctx) => self.threads.call_started(thread.pid, thread.tid, ctx.span_id),
                    None => telemetry.add_for(Counter::ContextAsyncHops, RUNTIME, "no request", 1),
                }
                // Given back: the same key's earlier hop (its callback was not
                // seen: it is over, the memory reused), or the oldest (full).
                if let Some((old_key, old)) = self.hops.push((thread.pid, key), Hop { ctx, tid: thread.tid }) {
                    self.hop_done(old_key.0, old);
                    if old_key != (thread.pid, key) {
                        telemetry.inc(Counter::ContextAsyncDropped);
                    }
                }
            }
            crate::capture::AsyncPhase::TaskSpawn => {
                // A task works for the request that created it (or none);
                // a new task at a freed one's address starts over.
                let ctx = self.threads.current(thread);
                if self.tasks.push((thread.pid, key), ctx).is_some_and(|(k, _)| k != (thread.pid, key)) {
                    telemetry.inc(Counter::ContextAsyncDropped);
                }
            }
            crate::capture::AsyncPhase::TaskWake => {
                // Woken from an I/O callback that works for a request (the
                // read of a request, the answer to a call the task made): it
                // works for that one. Woken by a timer: it goes on with its
                // own. Woken by another task's step (a pool or a queue handed
                // on, a lock released): its own too, unless it has none.
                let in_step = self.threads.map.get(&(thread.pid, thread.tid)).and_then(|c| c.in_task_step)
                    == Some(thread.loop_seq);
                let unbound = !matches!(self.tasks.peek(&(thread.pid, key)), Some(Some(_)));
                if let Some(ctx) = self.threads.current(thread).filter(|_| !in_step || unbound) {
                    if self.tasks.push((thread.pid, key), Some(ctx)).is_some_and(|(k, _)| k != (thread.pid, key)) {
                        telemetry.inc(Counter::ContextAsyncDropped);
                    }
                }
            }
            crate::capture::AsyncPhase::TaskStep => {
                self.threads.entry(thread.pid, thread.tid, telemetry).in_task_step = Some(thread.loop_seq);
                match self.tasks.get(&(thread.pid, key)).copied() {
                    Some(ctx) => {
                        self.threads.set(thread, ctx, telemetry);
                        if ctx.is_some() {
                            telemetry.add_for(Counter::ContextAsyncHops, "asyncio", "carried", 1);
                        }
                    }
                    // Created before it was hooked: the step keeps the iteration's rules.
                    None => telemetry.add_for(Counter::ContextAsyncHops, "asyncio", "unmatched", 1),
                }
            }
            crate::capture::AsyncPhase::Deferred => {
                // What runs now was deferred by requests of earlier reads:
                // the last read's request is not believed any more.
                let before = self.threads.current(thread);
                let c = self.threads.entry(thread.pid, thread.tid, telemetry);
                c.deferred = Some(thread.loop_seq);
                c.before_deferred = before;
                c.ctx = None;
                c.loop_seq = thread.loop_seq;
            }
            crate::capture::AsyncPhase::Resume => match self.hops.pop(&(thread.pid, key)) {
                Some(hop) => {
                    self.hop_done(thread.pid, hop);
                    // Submitted outside any request: the callback works for none.
                    self.threads.set(thread, hop.ctx, telemetry);
                    if hop.ctx.is_some() {
                        telemetry.add_for(Counter::ContextAsyncHops, RUNTIME, "carried", 1);
                    }
                }
                None => telemetry.add_for(Counter::ContextAsyncHops, RUNTIME, "unmatched", 1),
            },
        }
    }

    /// A hop's work is back: one call fewer in flight for its request.
    fn hop_done(&mut self, pid: u32, hop: Hop) {
        if let Some(ctx) = hop.ctx {
            self.threads.call_done(pid, hop.tid, ctx.span_id);
        }
    }

    /// The thread's current request. While a Node.js thread runs JavaScript
    /// timers with none, a call started there goes to the request that has
    /// waited longest on nothing we can see: its callback is the one due
    /// first when requests defer by the same delay (a FIFO list per delay);
    /// with nobody waiting, to the request of the iteration's read, if any.
    /// A guess, counted.
    fn current_or_deferred(&mut self, thread: ThreadKey, telemetry: &Telemetry) -> Option<SpanCtx> {
        let current = self.threads.current(thread);
        if current.is_some() || !self.threads.in_deferred(thread) {
            return current;
        }
        if let Some(picked) = self.threads.oldest_stalled(thread, None) {
            telemetry.add_for(Counter::ContextAsyncHops, "node", "deferred", 1);
            return Some(picked);
        }
        // Nobody waits: a timer of the request the iteration read (a write
        // flushed by a zero-delay timer after its response), if any.
        let before = self.threads.map.get(&(thread.pid, thread.tid)).and_then(|c| c.before_deferred);
        telemetry.add_for(
            Counter::ContextAsyncHops,
            "node",
            if before.is_some() { "deferred" } else { "no request" },
            1,
        );
        before
    }

    /// An exchange of `group` will never finish.
    pub fn abandon(&mut self, group: GroupId) {
        self.assembly.abandon(group);
    }

    /// `group`'s link is known (see [`Assembler::settle`]).
    pub fn settle(&mut self, group: GroupId, link: assembly::Link, telemetry: &Telemetry) {
        self.assembly.settle(group, link, telemetry);
    }

    pub fn is_decided(&self, group: GroupId) -> bool {
        self.assembly.is_decided(group)
    }

    /// A finished span of `group`, with its final id and parent.
    pub fn finish(&mut self, group: GroupId, span: crate::model::Span, stamp: assembly::Stamp, telemetry: &Telemetry) {
        self.assembly.finish(group, span, stamp, telemetry);
    }

    /// Spans whose trace is decided, for the trace sinks (drained by the caller).
    pub fn decided(&mut self) -> &mut Vec<crate::model::Span> {
        &mut self.assembly.out
    }

    /// Housekeeping of trace groups.
    pub fn sweep(&mut self, now: u64, telemetry: &Telemetry) {
        self.assembly.sweep(now, telemetry);
    }

    /// Everything still held leaves now (shutdown).
    pub fn flush(&mut self, telemetry: &Telemetry) {
        self.assembly.flush(telemetry);
    }

    /// An incoming request named `tp` as its parent: that id is the caller's.
    pub fn on_incoming_traceparent(&mut self, tp: &TraceParent) {
        self.claimed.claim(tp.parent_id);
    }

    /// How a traceparent the process wrote names its span: by its parent id,
    /// unless that id already named another span.
    pub fn pin(&mut self, tp: &TraceParent) -> Pin {
        let header_parent = (!self.claimed.claim(tp.parent_id)).then_some(tp.parent_id);
        Pin { trace_id: tp.trace_id, flags: tp.flags, header_parent }
    }

    /// The head of a client request that started at `start` carried `tp`,
    /// written by the process: its span takes the header's parent id as its
    /// own id (the callee will name it as its parent), unless that id was
    /// named before (the header reused or forwarded): then the span keeps
    /// an id of its own, with the header's parent id as its parent.
    pub fn on_outgoing_traceparent(&mut self, trace: &mut ConnTrace, start: u64, tp: &TraceParent) {
        let Some(started) = trace.pending.iter_mut().rev().find(|s| s.ts_enter <= start) else { return };
        if started.pin.is_some() {
            return;
        }
        let header_parent = if self.claimed.claim(tp.parent_id) {
            started.ctx.span_id = tp.parent_id;
            None
        } else {
            Some(tp.parent_id)
        };
        started.pin = Some(Pin { trace_id: tp.trace_id, flags: tp.flags, header_parent });
        // (the span id was just given: `pin` would find it claimed)
    }

    /// A connection was opened by `thread` (connect or accept).
    pub fn on_open(&mut self, trace: &mut ConnTrace, thread: ThreadKey, client: bool, telemetry: &Telemetry) {
        if client {
            trace.connect_ctx = self.current_or_deferred(thread, telemetry);
            // A connection being opened is a call in flight: its request
            // is not waiting in a queue.
            if let Some(c) = trace.connect_ctx {
                self.threads.call_started(thread.pid, thread.tid, c.span_id);
                trace.connect_tid = Some(thread.tid);
            }
        }
    }

    /// The call a connect stood for is over (its first request or its close).
    fn connect_done(&mut self, trace: &mut ConnTrace, pid: u32) {
        if let (Some(tid), Some(c)) = (trace.connect_tid.take(), trace.connect_ctx) {
            self.threads.call_done(pid, tid, c.span_id);
        }
    }

    /// A chunk of a connection whose protocol is known, before it is parsed.
    /// Returns the identity of a server request this chunk starts: its trace
    /// group waits for its link (`Assembler::settle`).
    #[allow(clippy::too_many_arguments)]
    pub fn on_chunk(
        &mut self,
        trace: &mut ConnTrace,
        server_side: bool,
        thread: ThreadKey,
        fd: i32,
        chunk: &Chunk<'_>,
        telemetry: &Telemetry,
    ) -> Option<Started> {
        // Checked before this chunk counts as the thread's last read. A
        // write from a timer or an immediate is not in a read's callback.
        let deferred = self.threads.in_deferred(thread);
        let handoff = chunk.direction == Direction::Egress
            && thread.loop_seq != 0
            && !deferred
            && self.threads.last_read(thread) == Some((fd, thread.loop_seq));
        if chunk.direction == Direction::Ingress {
            let c = self.threads.entry(thread.pid, thread.tid, telemetry);
            c.last_read = Some((fd, thread.loop_seq));
            c.in_task_step = None;
            c.deferred = None;
        }
        let request_dir = if server_side { Direction::Ingress } else { Direction::Egress };
        let new_request = chunk.direction == request_dir && trace.last_dir != Some(request_dir);
        trace.last_dir = Some(chunk.direction);
        if server_side {
            if new_request {
                let group = self.assembly.new_group(chunk.ts_exit, telemetry);
                let ctx = SpanCtx { span_id: SpanId::random(), group };
                let started = Started::new(ctx, None, chunk.ts_enter, chunk.ts_exit);
                self.push(trace, started);
                trace.server_tid = Some(thread.tid);
                let current = self.threads.entry(thread.pid, thread.tid, telemetry);
                current.serves = true;
                current.waiting.push(started.ctx, telemetry);
                tracing::trace!(tid = thread.tid, seq = thread.loop_seq, fd, span = ?started.ctx.span_id, "server request");
                let ctx = trace.pending.back().map(|s| s.ctx);
                self.threads.set(thread, ctx, telemetry);
                return Some(started);
            } else if chunk.direction == Direction::Egress {
                // Its answer begins: no longer waiting for anything.
                if let Some(s) = trace.pending.front() {
                    self.threads.stop_waiting(thread.pid, thread.tid, s.ctx.span_id);
                }
            }
            // Reading a request or writing its response: working for it
            // (a response written from a timer says nothing of the next
            // timer's callback).
            let ctx = trace.pending.back().map(|s| s.ctx);
            if ctx.is_some() && !deferred {
                self.threads.set(thread, ctx, telemetry);
            }
            return None;
        }
        if new_request {
            let current = self.current_or_deferred(thread, telemetry);
            // A request written from a "connected" callback has no read before
            // it in its loop iteration: the connect's request is its parent.
            // A goroutine's own current request is better than its connect's:
            // the connection a goroutine dialled may serve another request
            // first (Go's http.Transport hands a new connection to whoever
            // waits), and its writer goroutine is woken by that request.
            let mut parent = match (trace.requests, thread.is_goroutine()) {
                (0, false) => trace.connect_ctx.or(current),
                (0, true) => current.or(trace.connect_ctx),
                _ => current,
            };
            self.connect_done(trace, thread.pid);
            // Written in the callback that read this connection's previous
            // answer (no other read in between): a queue inside the process
            // handing the connection on.
            let completed_one = std::mem::replace(&mut trace.completed_before, trace.completed) != trace.completed;
            if handoff && completed_one && trace.last_answer == Some((thread.tid, thread.loop_seq)) {
                if let Some(next) = self.threads.oldest_stalled(thread, current) {
                    parent = Some(next);
                    telemetry.inc(Counter::ContextHandoffs);
                }
            }
            if let Some(p) = parent {
                self.threads.call_started(thread.pid, thread.tid, p.span_id);
            }
            let group = match parent {
                Some(p) => p.group,
                None => self.assembly.new_root(chunk.ts_enter, telemetry),
            };
            tracing::trace!(
                tid = thread.tid, seq = thread.loop_seq, fd, handoff, current = ?current.map(|c| c.span_id),
                parent = ?parent.map(|c| c.span_id), last_answer = ?trace.last_answer, "client request"
            );
            trace.requests = trace.requests.saturating_add(1);
            let ctx = SpanCtx { span_id: SpanId::random(), group };
            self.push(trace, Started::new(ctx, parent, chunk.ts_enter, chunk.ts_exit));
        } else if chunk.direction == Direction::Ingress {
            // A response: the code reading it continues the work of whoever asked.
            trace.last_answer = Some((thread.tid, thread.loop_seq));
            tracing::trace!(tid = thread.tid, seq = thread.loop_seq, fd, bytes = chunk.total, "answer read");
            if let Some(s) = trace.pending.front() {
                self.threads.set(thread, s.parent, telemetry);
            }
        }
        None
    }

    fn push(&mut self, trace: &mut ConnTrace, started: Started) {
        if trace.pending.len() >= MAX_PENDING {
            if let Some(old) = trace.pending.pop_front() {
                self.assembly.abandon(old.ctx.group);
            }
        }
        self.assembly.open(started.ctx.group);
        trace.pending.push_back(started);
    }

    /// An exchange that started at `start` (ns, the entry or exit of its first
    /// syscall) completed at `end`: its identity. Exchanges started before it
    /// that produced nothing (handshakes, authentication) are given up.
    #[allow(clippy::too_many_arguments)]
    pub fn take_started(
        &mut self,
        trace: &mut ConnTrace,
        server_side: bool,
        pid: u32,
        start: u64,
        end: u64,
        telemetry: &Telemetry,
    ) -> Started {
        let at = trace
            .pending
            .iter()
            .rposition(|s| s.ts_enter <= start)
            .or_else(|| (!trace.pending.is_empty()).then_some(0));
        let started = match at {
            Some(i) => {
                for old in trace.pending.drain(..i).collect::<Vec<_>>() {
                    self.assembly.abandon(old.ctx.group);
                    if !server_side {
                        // A handshake is over too: its request waits on it no more.
                        self.parent_call_done(trace, pid, old.parent);
                    }
                }
                trace.pending.pop_front()
            }
            None => None,
        };
        // Its start was not seen as such (mid-stream, pipelining): a root.
        let started = started.unwrap_or_else(|| self.missing_start(start, telemetry));
        if server_side {
            if let Some(tid) = trace.server_tid {
                self.threads.stop_waiting(pid, tid, started.ctx.span_id);
            }
        } else {
            if trace.recent.len() >= MAX_RECENT {
                trace.recent.pop_front();
            }
            trace.recent.push_back(Finished { started, end, stream: None });
            trace.completed = trace.completed.wrapping_add(1);
            // Its parent has one call less in flight.
            self.parent_call_done(trace, pid, started.parent);
        }
        started
    }

    /// A client exchange of `parent` on this connection is over.
    fn parent_call_done(&mut self, trace: &ConnTrace, pid: u32, parent: Option<SpanCtx>) {
        if let (Some(p), Some((tid, _))) = (parent, trace.last_answer) {
            self.threads.call_done(pid, tid, p.span_id);
        }
    }

    /// The connection is gone: exchanges that never completed are given up.
    pub fn on_close(&mut self, trace: &mut ConnTrace, pid: u32) {
        self.connect_done(trace, pid);
        for old in trace.pending.drain(..).collect::<Vec<_>>() {
            match trace.server_tid {
                Some(tid) => self.threads.stop_waiting(pid, tid, old.ctx.span_id),
                None => self.parent_call_done(trace, pid, old.parent),
            }
            self.assembly.abandon(old.ctx.group);
        }
        for (_, old) in trace.deliveries.drain() {
            self.assembly.abandon(old.ctx.group);
        }
        for (_, old) in trace.streams.drain() {
            self.assembly.abandon(old.ctx.group);
        }
    }

    /// A message was published by `thread`: a child of its current request.
    pub fn started_publish(&mut self, thread: Option<ThreadKey>, ts: u64, telemetry: &Telemetry) -> Started {
        let parent = thread.and_then(|t| self.current_or_deferred(t, telemetry));
        let group = match parent {
            Some(p) => p.group,
            None => self.assembly.new_root(ts, telemetry),
        };
        self.assembly.open(group);
        Started::new(SpanCtx { span_id: SpanId::random(), group }, parent, ts, ts)
    }

    /// Message `(channel, tag)` of a connection was delivered to `thread`:
    /// the code that handles it works for its CONSUMER span, whose own
    /// parent is the message's creator (its group is settled once the
    /// delivery is matched to it).
    pub fn started_delivery(
        &mut self,
        trace: &mut ConnTrace,
        id: (u16, u64),
        thread: Option<ThreadKey>,
        ts: u64,
        telemetry: &Telemetry,
    ) -> Started {
        if trace.deliveries.len() >= MAX_DELIVERIES {
            // Deliveries never settled: give them up.
            for (_, s) in trace.deliveries.drain() {
                self.assembly.abandon(s.ctx.group);
                telemetry.inc(Counter::ContextMissing);
            }
        }
        let group = self.assembly.new_group(ts, telemetry);
        self.assembly.open(group);
        let ctx = SpanCtx { span_id: SpanId::random(), group };
        if let Some(thread) = thread {
            self.threads.set(thread, Some(ctx), telemetry);
        }
        let started = Started::new(ctx, None, ts, ts);
        if let Some(old) = trace.deliveries.insert(id, started) {
            self.assembly.abandon(old.ctx.group);
        }
        started
    }

    /// The handling of delivery `(channel, tag)` is over: its identity
    /// (a root of its own when its delivery was not seen).
    pub fn take_delivery(&mut self, trace: &mut ConnTrace, id: (u16, u64), ts: u64, telemetry: &Telemetry) -> Started {
        trace.deliveries.remove(&id).unwrap_or_else(|| self.missing_start(ts, telemetry))
    }

    /// HTTP/2 stream `stream` began (its request HEADERS went by): a server
    /// request of a group of its own, whose link is settled next, or a
    /// client call, the child of the writing thread's current request.
    #[allow(clippy::too_many_arguments)]
    pub fn started_stream(
        &mut self,
        trace: &mut ConnTrace,
        server_side: bool,
        stream: u32,
        thread: Option<ThreadKey>,
        ts_enter: u64,
        ts_exit: u64,
        telemetry: &Telemetry,
    ) -> Started {
        if trace.streams.len() >= MAX_STREAMS {
            for (_, s) in trace.streams.drain() {
                self.assembly.abandon(s.ctx.group);
                telemetry.inc(Counter::ContextMissing);
            }
        }
        let (group, parent) = if server_side {
            (self.assembly.new_group(ts_exit, telemetry), None)
        } else {
            let current = thread.and_then(|t| self.current_or_deferred(t, telemetry));
            let parent = if trace.requests == 0 { trace.connect_ctx.or(current) } else { current };
            trace.requests = trace.requests.saturating_add(1);
            match parent {
                Some(p) => (p.group, Some(p)),
                None => (self.assembly.new_root(ts_enter, telemetry), None),
            }
        };
        self.assembly.open(group);
        let ctx = SpanCtx { span_id: SpanId::random(), group };
        if let (true, Some(t)) = (server_side, thread) {
            // The thread that read the request works for it.
            self.threads.set(t, Some(ctx), telemetry);
        }
        let started = Started::new(ctx, parent, ts_enter, ts_exit);
        if let Some(old) = trace.streams.insert(stream, started) {
            self.assembly.abandon(old.ctx.group);
        }
        started
    }

    /// HTTP/2 stream `stream` ended at `end`: its identity (a root of its own
    /// when its start was not seen); a client stream stays findable by the
    /// server end for a while.
    pub fn take_stream(
        &mut self,
        trace: &mut ConnTrace,
        stream: u32,
        ts: u64,
        end: u64,
        telemetry: &Telemetry,
    ) -> Started {
        let started = trace.streams.remove(&stream).unwrap_or_else(|| self.missing_start(ts, telemetry));
        if trace.recent.len() >= MAX_RECENT {
            trace.recent.pop_front();
        }
        trace.recent.push_back(Finished { started, end, stream: Some(stream) });
        started
    }

    /// The identity of an exchange whose start was not seen: the root of a
    /// trace of its own (counted).
    pub fn missing_start(&mut self, ts: u64, telemetry: &Telemetry) -> Started {
        telemetry.inc(Counter::ContextMissing);
        let group = self.assembly.new_root(ts, telemetry);
        self.assembly.open(group);
        Started::new(SpanCtx { span_id: SpanId::random(), group }, None, ts, ts)
    }

    /// Go: goroutine `child` was created by `parent` (a `go` statement): it
    /// starts out working for its creator's current request.
    pub fn on_goroutine_created(&mut self, pid: u32, parent: u64, child: u64, telemetry: &Telemetry) {
        if let Some(ctx) = self.threads.current(ThreadKey::goroutine(pid, parent)) {
            self.threads.set(ThreadKey::goroutine(pid, child), Some(ctx), telemetry);
        }
    }

    /// Go: goroutine `waker` handed work to `woken` (net/http's Transport: a
    /// request to write, to the connection's writeLoop). A goroutine that
    /// serves no requests of its own now works for the waker's current
    /// request; a goroutine serving requests keeps its own.
    pub fn on_goroutine_readied(&mut self, pid: u32, waker: u64, woken: u64, telemetry: &Telemetry) {
        let woken = ThreadKey::goroutine(pid, woken);
        if self.threads.map.get(&(pid, woken.tid)).is_some_and(|c| c.serves) {
            return;
        }
        if let Some(ctx) = self.threads.current(ThreadKey::goroutine(pid, waker)) {
            self.threads.set(woken, Some(ctx), telemetry);
        }
    }

    /// Go: goroutine `goid` exited.
    pub fn on_goroutine_exited(&mut self, pid: u32, goid: u64) {
        self.threads.map.remove(&(pid, ThreadKey::goroutine(pid, goid).tid));
    }

    /// A process exited: forget its threads.
    pub fn forget_process(&mut self, pid: u32) {
        self.threads.map.retain(|(p, _), _| *p != pid);
    }
}

#[cfg(test)]
mod tests;

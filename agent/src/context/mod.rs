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
//!   still finds its parent.
//!
//! Trace ids are decided late (see `assembly`): span ids are fixed when an
//! exchange starts, trace ids when the local part of a trace is complete and
//! its link to a caller (traceparent or a tracked client on this host) is known.
pub mod assembly;
pub mod sampler;

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::protocols::{Chunk, Direction};
use crate::spans::SpanId;
use crate::telemetry::{Counter, Telemetry};

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
}

/// A client exchange that completed, kept a little while so that the server
/// end (another tracked process) can find its parent.
#[derive(Clone, Copy, Debug)]
pub struct Finished {
    pub started: Started,
    pub end: u64,
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
}

impl ConnTrace {
    /// The client exchange on this connection that was in flight at `ts`
    /// (CLOCK_MONOTONIC ns), if any.
    pub fn in_flight_at(&self, ts: u64) -> Option<SpanCtx> {
        let started_before = |s: &Started| s.ts_enter <= ts;
        self.recent
            .iter()
            .rev()
            .find(|f| started_before(&f.started) && ts <= f.end)
            .map(|f| f.started.ctx)
            .or_else(|| self.pending.iter().rev().find(|s| started_before(s)).map(|s| s.ctx))
    }

    /// Has this connection seen a request that could still match a server
    /// exchange starting at `ts`? (False: its event may not have arrived yet.)
    pub fn has_history_after(&self, ts: u64) -> bool {
        self.recent.back().is_some_and(|f| f.end >= ts) || !self.pending.is_empty()
    }
}

/// A thread of a tracked process, with its event-loop iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadKey {
    pub pid: u32,
    pub tid: u32,
    pub loop_seq: u32,
}

#[derive(Clone, Copy, Debug)]
struct Current {
    ctx: Option<SpanCtx>,
    loop_seq: u32,
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

    fn set(&mut self, t: ThreadKey, ctx: Option<SpanCtx>, telemetry: &Telemetry) {
        if self.map.len() >= self.max && !self.map.contains_key(&(t.pid, t.tid)) {
            // Threads that ended without their process exiting: start over.
            telemetry.add(Counter::ContextThreadsReset, self.map.len() as u64);
            self.map.clear();
        }
        self.map.insert((t.pid, t.tid), Current { ctx, loop_seq: t.loop_seq });
    }
}

/// Decides the span ids and in-process parents of exchanges as their bytes go by.
#[derive(Debug)]
pub struct Tracker {
    threads: Threads,
    pub assembly: Assembler,
}

impl Tracker {
    pub fn new(assembly: Assembler, max_threads: usize) -> Self {
        Self { threads: Threads { map: FxHashMap::default(), max: max_threads }, assembly }
    }

    /// A connection was opened by `thread` (connect or accept).
    pub fn on_open(&mut self, trace: &mut ConnTrace, thread: ThreadKey, client: bool) {
        if client {
            trace.connect_ctx = self.threads.current(thread);
        }
    }

    /// A chunk of a connection whose protocol is known, before it is parsed.
    pub fn on_chunk(
        &mut self,
        trace: &mut ConnTrace,
        server_side: bool,
        thread: ThreadKey,
        chunk: &Chunk<'_>,
        telemetry: &Telemetry,
    ) {
        let request_dir = if server_side { Direction::Ingress } else { Direction::Egress };
        let new_request = chunk.direction == request_dir && trace.last_dir != Some(request_dir);
        trace.last_dir = Some(chunk.direction);
        if server_side {
            if new_request {
                let group = self.assembly.new_group(chunk.ts_exit, telemetry);
                let started = Started {
                    ctx: SpanCtx { span_id: SpanId::random(), group },
                    parent: None,
                    ts_enter: chunk.ts_enter,
                    ts_exit: chunk.ts_exit,
                };
                self.push(trace, started, telemetry);
            }
            // Reading a request or writing its response: working for it.
            let ctx = trace.pending.back().map(|s| s.ctx);
            if ctx.is_some() {
                self.threads.set(thread, ctx, telemetry);
            }
            return;
        }
        if new_request {
            let current = self.threads.current(thread);
            // A request written from a "connected" callback has no read before
            // it in its loop iteration: the connect's request is its parent.
            let parent = if trace.requests == 0 { trace.connect_ctx.or(current) } else { current };
            let group = match parent {
                Some(p) => p.group,
                None => self.assembly.new_group(chunk.ts_enter, telemetry),
            };
            trace.requests = trace.requests.saturating_add(1);
            let started = Started {
                ctx: SpanCtx { span_id: SpanId::random(), group },
                parent,
                ts_enter: chunk.ts_enter,
                ts_exit: chunk.ts_exit,
            };
            self.push(trace, started, telemetry);
        } else if chunk.direction == Direction::Ingress {
            // A response: the code reading it continues the work of whoever asked.
            if let Some(s) = trace.pending.front() {
                self.threads.set(thread, s.parent, telemetry);
            }
        }
    }

    fn push(&mut self, trace: &mut ConnTrace, started: Started, telemetry: &Telemetry) {
        if trace.pending.len() >= MAX_PENDING {
            if let Some(old) = trace.pending.pop_front() {
                self.assembly.abandon(old.ctx.group, telemetry);
            }
        }
        self.assembly.open(started.ctx.group);
        trace.pending.push_back(started);
    }

    /// An exchange that started at `start` (ns, the entry or exit of its first
    /// syscall) completed at `end`: its identity. Exchanges started before it
    /// that produced nothing (handshakes, authentication) are given up.
    pub fn take_started(
        &mut self,
        trace: &mut ConnTrace,
        server_side: bool,
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
                for old in trace.pending.drain(..i) {
                    self.assembly.abandon(old.ctx.group, telemetry);
                }
                trace.pending.pop_front()
            }
            None => None,
        };
        let started = started.unwrap_or_else(|| {
            // Its start was not seen as such (mid-stream, pipelining): a root.
            telemetry.inc(Counter::ContextMissing);
            let group = self.assembly.new_group(start, telemetry);
            self.assembly.open(group);
            Started { ctx: SpanCtx { span_id: SpanId::random(), group }, parent: None, ts_enter: start, ts_exit: start }
        });
        if !server_side {
            if trace.recent.len() >= MAX_RECENT {
                trace.recent.pop_front();
            }
            trace.recent.push_back(Finished { started, end });
        }
        started
    }

    /// The connection is gone: exchanges that never completed are given up.
    pub fn on_close(&mut self, trace: &mut ConnTrace, telemetry: &Telemetry) {
        for old in trace.pending.drain(..) {
            self.assembly.abandon(old.ctx.group, telemetry);
        }
    }

    /// A process exited: forget its threads.
    pub fn forget_process(&mut self, pid: u32) {
        self.threads.map.retain(|(p, _), _| *p != pid);
    }

    pub fn threads(&self) -> usize {
        self.threads.map.len()
    }
}

#[cfg(test)]
mod tests;

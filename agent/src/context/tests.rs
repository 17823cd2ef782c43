//! The nesting rules on byte streams shaped like real servers' syscalls.
use super::*;
use crate::capture::{Role, Tuple};
use crate::connections::{ConnKey, ConnectionTable, Outcome};
use crate::context::{assembly::AssemblyOptions, sampler::Sampler};

const REQ: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

struct World {
    table: ConnectionTable,
    tracker: Tracker,
    out: Vec<Outcome>,
    t: Telemetry,
    now: u64,
}

fn tuple(local: u16, remote: u16) -> Tuple {
    Tuple {
        local: format!("127.0.0.1:{local}").parse().unwrap(),
        remote: format!("127.0.0.1:{remote}").parse().unwrap(),
        netns: 1,
    }
}

impl World {
    fn new() -> Self {
        let tracker = Tracker::new(Assembler::new(AssemblyOptions::default(), Sampler::default()), 64);
        Self { table: ConnectionTable::new(64), tracker, out: Vec::new(), t: Telemetry::default(), now: 100 }
    }

    /// Server connection `fd` of pid 1 (local port 80, peer port = 1000 + fd).
    fn server_io(&mut self, tid: u32, seq: u32, fd: i32, dir: Direction, data: &[u8]) {
        self.io(tid, seq, fd, tuple(80, 1000 + fd as u16), Role::Server, dir, data);
    }

    /// Client connection `fd` of pid 1 to port 5000 + fd.
    fn client_io(&mut self, tid: u32, seq: u32, fd: i32, dir: Direction, data: &[u8]) {
        self.io(tid, seq, fd, tuple(2000 + fd as u16, 5000 + fd as u16), Role::Client, dir, data);
    }

    #[allow(clippy::too_many_arguments)]
    fn io(&mut self, tid: u32, seq: u32, fd: i32, tuple: Tuple, role: Role, dir: Direction, data: &[u8]) {
        self.now += 10;
        let chunk = Chunk { direction: dir, data, total: data.len(), ts_enter: self.now, ts_exit: self.now + 5 };
        let thread = ThreadKey { pid: 1, tid, loop_seq: seq };
        self.table.data(ConnKey { pid: 1, fd }, tuple, role, thread, &chunk, &mut self.tracker, &mut self.out, &self.t);
    }

    fn connect(&mut self, tid: u32, seq: u32, fd: i32) {
        self.now += 10;
        let thread = ThreadKey { pid: 1, tid, loop_seq: seq };
        let tuple = tuple(2000 + fd as u16, 5000 + fd as u16);
        self.table.open(
            ConnKey { pid: 1, fd },
            tuple,
            Role::Client,
            thread,
            self.now,
            &mut self.tracker,
            &mut self.out,
            &self.t,
        );
    }

    /// (fd, server_side, span id, parent span id) of every outcome so far.
    fn spans(&self) -> Vec<(i32, bool, SpanId, Option<SpanId>)> {
        self.out
            .iter()
            .filter(|o| {
                !matches!(
                    o,
                    Outcome::RequestStarted { .. }
                        | Outcome::Delivered { .. }
                        | Outcome::DatabaseUnknown { .. }
                        | Outcome::Capture { .. }
                )
            })
            .map(|o| match o {
                Outcome::Http { key, server_side, started, .. } | Outcome::Sql { key, server_side, started, .. } => {
                    (key.fd, *server_side, started.ctx.span_id, started.parent.map(|p| p.span_id))
                }
                Outcome::Published { key, started, .. } | Outcome::Consumed { key, started, .. } => {
                    (key.fd, false, started.ctx.span_id, started.parent.map(|p| p.span_id))
                }
                Outcome::RequestStarted { .. }
                | Outcome::Delivered { .. }
                | Outcome::DatabaseUnknown { .. }
                | Outcome::Capture { .. } => {
                    unreachable!("filtered")
                }
            })
            .collect()
    }

    fn span_of(&self, fd: i32, server: bool, nth: usize) -> (SpanId, Option<SpanId>) {
        let all: Vec<_> = self.spans().into_iter().filter(|s| s.0 == fd && s.1 == server).collect();
        (all[nth].2, all[nth].3)
    }
}

use Direction::{Egress as OUT, Ingress as IN};

#[test]
fn thread_per_request_nests_every_call_under_the_request_of_its_thread() {
    let mut w = World::new();
    // Two worker threads, interleaved; each blocks in its own calls (loop_seq 0).
    w.server_io(11, 0, 5, IN, REQ);
    w.server_io(12, 0, 6, IN, REQ);
    w.client_io(11, 0, 7, OUT, REQ);
    w.client_io(12, 0, 8, OUT, REQ);
    w.client_io(12, 0, 8, IN, RESP);
    w.client_io(11, 0, 7, IN, RESP);
    w.client_io(11, 0, 7, OUT, REQ); // a second call of thread 11 on the same connection
    w.client_io(11, 0, 7, IN, RESP);
    w.server_io(12, 0, 6, OUT, RESP);
    w.server_io(11, 0, 5, OUT, RESP);
    let (s5, p5) = w.span_of(5, true, 0);
    let (s6, _) = w.span_of(6, true, 0);
    assert_eq!(p5, None, "a server span's parent comes from its caller, not from here");
    assert_eq!(w.span_of(7, false, 0).1, Some(s5));
    assert_eq!(w.span_of(7, false, 1).1, Some(s5));
    assert_eq!(w.span_of(8, false, 0).1, Some(s6));
    assert_eq!(w.spans().len(), 5);
}

#[test]
fn an_event_loop_thread_follows_each_callback_to_its_request() {
    let mut w = World::new();
    // Iteration 1: request A arrives; its handler calls fd 7.
    w.server_io(1, 1, 5, IN, REQ);
    w.client_io(1, 1, 7, OUT, REQ);
    // Same iteration, next ready fd: request B; its handler calls fd 8.
    w.server_io(1, 1, 6, IN, REQ);
    w.client_io(1, 1, 8, OUT, REQ);
    // Iteration 2: B's call answers first; B's handler makes a second call on fd 9.
    w.client_io(1, 2, 8, IN, RESP);
    w.client_io(1, 2, 9, OUT, REQ);
    // Then A's call answers; A's handler calls fd 10 and answers A.
    w.client_io(1, 2, 7, IN, RESP);
    w.client_io(1, 2, 10, OUT, REQ);
    // Iteration 3: both second calls answer, both requests are answered.
    w.client_io(1, 3, 9, IN, RESP);
    w.server_io(1, 3, 6, OUT, RESP);
    w.client_io(1, 3, 10, IN, RESP);
    w.server_io(1, 3, 5, OUT, RESP);
    let (a, _) = w.span_of(5, true, 0);
    let (b, _) = w.span_of(6, true, 0);
    assert_eq!(w.span_of(7, false, 0).1, Some(a));
    assert_eq!(w.span_of(8, false, 0).1, Some(b));
    assert_eq!(w.span_of(9, false, 0).1, Some(b));
    assert_eq!(w.span_of(10, false, 0).1, Some(a));
}

#[test]
fn a_timer_callback_in_a_later_iteration_starts_a_new_trace() {
    let mut w = World::new();
    w.server_io(1, 1, 5, IN, REQ);
    w.server_io(1, 1, 5, OUT, RESP);
    // Iteration 2 starts with no read: a timer fires and calls out.
    w.client_io(1, 2, 7, OUT, REQ);
    w.client_io(1, 3, 7, IN, RESP);
    assert_eq!(w.span_of(7, false, 0).1, None);
}

#[test]
fn a_connection_opened_for_a_request_carries_it_to_the_first_write() {
    let mut w = World::new();
    w.server_io(1, 1, 5, IN, REQ);
    w.connect(1, 1, 7); // non-blocking connect in the handler
                        // The "connected" callback of a later iteration, after another request was read.
    w.server_io(1, 2, 6, IN, REQ);
    w.client_io(1, 2, 7, OUT, REQ);
    w.client_io(1, 3, 7, IN, RESP);
    w.server_io(1, 3, 5, OUT, RESP);
    let (a, _) = w.span_of(5, true, 0);
    assert_eq!(w.span_of(7, false, 0).1, Some(a));
}

#[test]
fn handshakes_that_produce_no_span_do_not_shift_identities() {
    let mut w = World::new();
    // A client speaking PostgreSQL: startup + auth round trips, then a query.
    let startup = {
        let mut m = Vec::new();
        let body: &[u8] = b"\x00\x03\x00\x00user\x00app\x00database\x00shop\x00\x00";
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    };
    w.server_io(1, 0, 5, IN, REQ);
    w.client_io(1, 0, 7, OUT, &startup);
    w.client_io(1, 0, 7, IN, b"R\x00\x00\x00\x08\x00\x00\x00\x00Z\x00\x00\x00\x05I");
    let query = b"Q\x00\x00\x00\x0dSELECT 1\x00";
    w.client_io(1, 0, 7, OUT, query);
    w.client_io(
        1,
        0,
        7,
        IN,
        b"T\x00\x00\x00\x21\x00\x01?column?\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x011C\x00\x00\x00\x0dSELECT 1\x00Z\x00\x00\x00\x05I",
    );
    w.server_io(1, 0, 5, OUT, RESP);
    let (a, _) = w.span_of(5, true, 0);
    let sql = w.spans().into_iter().filter(|s| s.0 == 7).collect::<Vec<_>>();
    assert_eq!(sql.len(), 1, "{sql:?}");
    assert_eq!(sql[0].3, Some(a));
    assert_eq!(w.t.get(Counter::ContextMissing), 0);
}

#[test]
fn a_shared_connection_handed_on_by_a_queue_goes_to_the_oldest_waiting_request() {
    let mut w = World::new();
    // Iteration 1: three requests arrive; only the first one's query is sent,
    // the others queue inside the process (no syscall).
    w.server_io(1, 1, 5, IN, REQ);
    w.client_io(1, 1, 7, OUT, REQ); // the shared connection, busy from now on
    w.server_io(1, 1, 6, IN, REQ);
    w.server_io(1, 1, 8, IN, REQ);
    // Iteration 2: the answer for request 5; the queue sends request 6's
    // query at once, then request 5 goes on and calls fd 10.
    w.client_io(1, 2, 7, IN, RESP);
    w.client_io(1, 2, 7, OUT, REQ);
    w.client_io(1, 2, 10, OUT, REQ);
    // Iteration 3: the answer for request 6; request 8's query is sent;
    // request 6 calls fd 11; fd 10 answers; request 5 answers.
    w.client_io(1, 3, 7, IN, RESP);
    w.client_io(1, 3, 7, OUT, REQ);
    w.client_io(1, 3, 11, OUT, REQ);
    w.client_io(1, 3, 10, IN, RESP);
    w.server_io(1, 3, 5, OUT, RESP);
    // Iteration 4: request 8's answer; it calls fd 12; all answer.
    w.client_io(1, 4, 7, IN, RESP);
    w.client_io(1, 4, 12, OUT, REQ);
    w.client_io(1, 4, 11, IN, RESP);
    w.server_io(1, 4, 6, OUT, RESP);
    w.client_io(1, 5, 12, IN, RESP);
    w.server_io(1, 5, 8, OUT, RESP);
    let (r5, _) = w.span_of(5, true, 0);
    let (r6, _) = w.span_of(6, true, 0);
    let (r8, _) = w.span_of(8, true, 0);
    let queries: Vec<_> = (0..3).map(|i| w.span_of(7, false, i).1).collect();
    assert_eq!(queries, [Some(r5), Some(r6), Some(r8)]);
    assert_eq!(w.span_of(10, false, 0).1, Some(r5));
    assert_eq!(w.span_of(11, false, 0).1, Some(r6));
    assert_eq!(w.span_of(12, false, 0).1, Some(r8));
    assert_eq!(w.t.get(Counter::ContextHandoffs), 2);
}

impl World {
    fn hop(&mut self, tid: u32, seq: u32, key: u64, phase: crate::capture::AsyncPhase) {
        self.tracker.on_async(ThreadKey { pid: 1, tid, loop_seq: seq }, key, phase, &self.t);
    }
}

/// dns.lookup on libuv's pool: the connect and the request run from the
/// lookup's callback, iterations later, after other requests were read.
#[test]
fn a_thread_pool_hop_carries_its_request_to_the_callback() {
    use crate::capture::AsyncPhase::{Resume, Submit};
    let mut w = World::new();
    // Iteration 1: A and B arrive; each looks a host name up.
    w.server_io(1, 1, 5, IN, REQ);
    w.hop(1, 1, 0xa, Submit);
    w.server_io(1, 1, 6, IN, REQ);
    w.hop(1, 1, 0xb, Submit);
    // Iteration 2: C arrives; then B's lookup is done: B connects and calls.
    w.server_io(1, 2, 8, IN, REQ);
    w.hop(1, 2, 0xb, Resume);
    w.connect(1, 2, 9);
    w.client_io(1, 3, 9, OUT, REQ);
    // Iteration 4: A's lookup is done: A calls on a new connection at once.
    w.hop(1, 4, 0xa, Resume);
    w.connect(1, 4, 10);
    w.client_io(1, 4, 10, OUT, REQ);
    // Iteration 5: a lookup submitted outside any request (a timer).
    w.hop(1, 5, 0xc, Submit);
    w.hop(1, 6, 0xc, Resume);
    w.connect(1, 6, 11);
    w.client_io(1, 6, 11, OUT, REQ);
    for fd in [9, 10, 11] {
        w.client_io(1, 7, fd, IN, RESP);
    }
    for fd in [5, 6, 8] {
        w.server_io(1, 7, fd, OUT, RESP);
    }
    let (a, _) = w.span_of(5, true, 0);
    let (b, _) = w.span_of(6, true, 0);
    assert_eq!(w.span_of(9, false, 0).1, Some(b));
    assert_eq!(w.span_of(10, false, 0).1, Some(a));
    assert_eq!(w.span_of(11, false, 0).1, None, "no request submitted it");
    let hops = |w: &World, reason| w.t.get_labeled(Counter::ContextAsyncHops, "libuv", reason);
    assert_eq!((hops(&w, "carried"), hops(&w, "no request"), hops(&w, "unmatched")), (2, 1, 0));
    // A callback whose submit was never seen changes nothing.
    w.hop(1, 8, 0xd, Resume);
    assert_eq!(hops(&w, "unmatched"), 1);
}

/// A request whose work is out on the pool waits on something: a shared
/// connection handed on meanwhile goes to the next one that waits on nothing.
#[test]
fn a_request_with_work_on_the_pool_is_not_taken_for_a_queue_hand_off() {
    use crate::capture::AsyncPhase::{Resume, Submit};
    let mut w = World::new();
    w.server_io(1, 1, 5, IN, REQ);
    w.client_io(1, 1, 7, OUT, REQ); // A's query on the shared connection
    w.server_io(1, 1, 6, IN, REQ); // B: looks a name up first
    w.hop(1, 1, 0xb, Submit);
    w.server_io(1, 1, 8, IN, REQ); // C: queued behind A's query
                                   // Iteration 2: A's answer; the queue sends C's query (B is busy with its lookup).
    w.client_io(1, 2, 7, IN, RESP);
    w.client_io(1, 2, 7, OUT, REQ);
    w.hop(1, 3, 0xb, Resume);
    w.client_io(1, 4, 7, IN, RESP);
    for fd in [5, 6, 8] {
        w.server_io(1, 4, fd, OUT, RESP);
    }
    let (c, _) = w.span_of(8, true, 0);
    assert_eq!(w.span_of(7, false, 1).1, Some(c));
}

/// asyncio: handler tasks run loop iterations after the read that woke
/// them; each Task carries its request, and a task woken by another task's
/// step (a pool handing a connection on) keeps its own.
#[test]
fn asyncio_tasks_carry_their_requests_across_iterations() {
    use crate::capture::AsyncPhase::{TaskSpawn, TaskStep, TaskWake};
    let mut w = World::new();
    // Two connection tasks exist before any request (created outside one).
    w.hop(1, 1, 0x71, TaskSpawn);
    w.hop(1, 1, 0x72, TaskSpawn);
    // Iteration 2: A read on fd 5 wakes task 1; B read on fd 6 wakes task 2.
    w.server_io(1, 2, 5, IN, REQ);
    w.hop(1, 2, 0x71, TaskWake);
    w.server_io(1, 2, 6, IN, REQ);
    w.hop(1, 2, 0x72, TaskWake);
    // Iteration 3: task 2 steps first and queries; task 1 steps and
    // releases a pool slot, waking task 2 from its step.
    w.hop(1, 3, 0x72, TaskStep);
    w.client_io(1, 3, 7, OUT, REQ);
    w.hop(1, 3, 0x71, TaskStep);
    w.hop(1, 3, 0x72, TaskWake);
    w.client_io(1, 3, 8, OUT, REQ);
    // Iteration 4: a timer wakes task 2 (no request current); its step calls.
    w.hop(1, 4, 0x72, TaskWake);
    w.hop(1, 5, 0x72, TaskStep);
    w.client_io(1, 5, 9, OUT, REQ);
    for fd in [7, 8, 9] {
        w.client_io(1, 6, fd, IN, RESP);
    }
    for fd in [5, 6] {
        w.server_io(1, 6, fd, OUT, RESP);
    }
    let (a, _) = w.span_of(5, true, 0);
    let (b, _) = w.span_of(6, true, 0);
    assert_eq!(w.span_of(7, false, 0).1, Some(b));
    assert_eq!(w.span_of(8, false, 0).1, Some(a));
    assert_eq!(w.span_of(9, false, 0).1, Some(b), "woken by a task, then a timer: still B's");
}

/// Node.js timers and immediates: a call started in a timers phase goes to
/// the request that has waited longest on nothing visible, counted from its
/// read or from its last answer (the order its timer was set in), never to
/// the request of the iteration's last read.
#[test]
fn calls_from_timers_go_to_the_request_that_waited_longest() {
    use crate::capture::AsyncPhase::Deferred;
    let mut w = World::new();
    // Iteration 1: A, then B are read; each sets a timer.
    w.server_io(1, 1, 5, IN, REQ);
    w.server_io(1, 1, 6, IN, REQ);
    // Its timers phase: A's callback queries, then B's.
    w.hop(1, 1, 0, Deferred);
    w.client_io(1, 1, 7, OUT, REQ);
    w.client_io(1, 1, 8, OUT, REQ);
    // Iteration 2: B's answer first, then A's; each sets its next timer.
    w.client_io(1, 2, 8, IN, RESP);
    w.client_io(1, 2, 7, IN, RESP);
    // Iteration 3: C is read; then the timers phase runs B's callback, then A's.
    w.server_io(1, 3, 9, IN, REQ);
    w.hop(1, 3, 0, Deferred);
    w.client_io(1, 3, 10, OUT, REQ);
    w.client_io(1, 3, 11, OUT, REQ);
    // A timers phase with nobody waiting: a root.
    w.hop(1, 4, 0, Deferred);
    w.server_io(1, 4, 9, OUT, RESP);
    w.hop(1, 5, 0, Deferred);
    w.client_io(1, 5, 12, OUT, REQ);
    for fd in [10, 11, 12] {
        w.client_io(1, 6, fd, IN, RESP);
    }
    for fd in [5, 6] {
        w.server_io(1, 6, fd, OUT, RESP);
    }
    let (a, _) = w.span_of(5, true, 0);
    let (b, _) = w.span_of(6, true, 0);
    assert_eq!(w.span_of(7, false, 0).1, Some(a));
    assert_eq!(w.span_of(8, false, 0).1, Some(b));
    assert_eq!(w.span_of(10, false, 0).1, Some(b), "B's answer came first: its timer is due first");
    assert_eq!(w.span_of(11, false, 0).1, Some(a));
    assert_eq!(w.span_of(12, false, 0).1, None, "nobody was waiting");
    let hops = |w: &World, reason| w.t.get_labeled(Counter::ContextAsyncHops, "node", reason);
    assert_eq!((hops(&w, "deferred"), hops(&w, "no request")), (4, 1));
}

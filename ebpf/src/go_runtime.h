/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Go runtime uprobes: in a Go process the goroutine, not the OS thread,
 * carries the current request (goroutines move between threads). For the
 * processes the agent found to run a Go version it knows (`go_procs`):
 * - every socket event's header names the goroutine that made the syscall,
 *   read from the g register (R14 in Go's ABIInternal, amd64) of the
 *   thread's user registers: no hook on goroutine switches is needed;
 * - goroutine creations (the call of runqput after newproc1, or each RET
 *   of newproc1) and runtime.goexit0
 *   send `struct periscope_goroutine_event`s, so that the agent hands a
 *   creator's current request on to the goroutines it starts;
 * - net/http's Transport: a handler's http.Client call is written by the
 *   connection's writeLoop goroutine; the handover of each request to it
 *   is reported (below). Wake-ups in general (runtime.ready) are not
 *   followed: a lock released or a channel shared by many goroutines says
 *   nothing about whom the woken goroutine works for (measured: that made
 *   4% of the http.Client calls at 50 concurrent wrong).
 * Events are sent only for goroutines that did socket I/O or descend from
 * one that did (`go_known`): the runtime's own goroutines cost one map
 * lookup. Never a uretprobe: Go moves stacks, and a return address rewritten
 * by the kernel crashes the process; the agent puts uprobes on the RET
 * instructions instead. Entry probes sit on the jump of the stack-check
 * prologue, which the kernel emulates (a probe elsewhere costs a
 * single-step trap: `agent/src/probes/go/elf.rs`, entry_site). */
#pragma once

#include "maps.h"

/* tgid -> the Go runtime offsets of that process (set by the agent). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct periscope_go_offsets);
} go_procs SEC(".maps");

struct go_key {
	__u32 pid;
	__u32 _pad;
	__u64 goid;
};

/* Goroutines that did socket I/O, or were created by one that is here:
 * the ones whose creations, wake-ups and exits the agent hears of. LRU:
 * goroutines whose exit was not seen age out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct go_key);
	__type(value, __u8);
} go_known SEC(".maps");

/* The goroutine id at `g` (a *runtime.g), 0 when it cannot be read. */
static __always_inline __u64 go_goid(const struct periscope_go_offsets *o, __u64 g)
{
	__u64 goid = 0;
	if (!g || bpf_probe_read_user(&goid, sizeof(goid), (void *)(g + o->g_goid)))
		return 0;
	return goid;
}

/* The user goroutine a thread runs, from its g register: g.m.curg (the
 * register holds g0 on the system stack, where the runtime's hooked
 * functions run; curg is the goroutine that called them, 0 in the
 * scheduler). */
static __always_inline __u64 go_curg(const struct periscope_go_offsets *o, __u64 g)
{
	__u64 m = 0, curg = 0;
	if (!g || bpf_probe_read_user(&m, sizeof(m), (void *)(g + o->g_m)) || !m)
		return 0;
	if (bpf_probe_read_user(&curg, sizeof(curg), (void *)(m + o->m_curg)))
		return 0;
	return curg;
}

static __always_inline __u64 go_g_register(struct pt_regs *regs)
{
#if defined(__TARGET_ARCH_x86)
	__u64 g = 0;
	bpf_probe_read_kernel(&g, sizeof(g), &regs->r14);
	return g;
#else
	return 0; /* Go hooks are amd64 only: the agent sets no go_procs entry */
#endif
}

static __always_inline int go_is_known(__u32 pid, __u64 goid)
{
	struct go_key k = { .pid = pid, .goid = goid };
	return bpf_map_lookup_elem(&go_known, &k) != NULL;
}

static __always_inline void go_mark_known(__u32 pid, __u64 goid)
{
	struct go_key k = { .pid = pid, .goid = goid };
	if (bpf_map_lookup_elem(&go_known, &k))
		return;
	__u8 one = 1;
	bpf_map_update_elem(&go_known, &k, &one, BPF_ANY);
}

/* For a socket event's header: the goroutine of the calling thread (a Go
 * syscall runs on the goroutine's own g: the g register is that goroutine),
 * or 0 when the process is not an instrumented Go process. */
static __always_inline __u32 go_syscall_goid(__u64 id)
{
	__u32 tgid = id >> 32;
	struct periscope_go_offsets *o = bpf_map_lookup_elem(&go_procs, &tgid);
	if (!o)
		return 0;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	__u64 goid = go_goid(o, go_g_register(regs));
	if (goid)
		go_mark_known(tgid, goid);
	return (__u32)goid;
}

static __always_inline void emit_goroutine_event(__u64 id, __u32 relation, __u64 from, __u64 to)
{
	struct periscope_goroutine_event e = {};
	e.hdr.kind = PERISCOPE_EV_GOROUTINE;
	e.hdr.pid = id >> 32;
	e.hdr.tid = (__u32)id;
	e.hdr.fd = -1;
	e.hdr.ts_enter_ns = bpf_ktime_get_ns();
	e.hdr.ts_exit_ns = e.hdr.ts_enter_ns;
	e.from = from;
	e.to = to;
	e.relation = relation;
	/* Like data events: wake the agent only when the backlog crosses the
	 * threshold (it drains on a timer too). */
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 flags = (avail < wakeup_bytes && avail + sizeof(e) >= wakeup_bytes)
			      ? BPF_RB_FORCE_WAKEUP
			      : BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(&events, &e, sizeof(e), flags))
		count(PERISCOPE_CNT_RINGBUF_FULL);
}

/* Goroutine `newg` was just made by the goroutine the thread runs (on the
 * system stack: g.m.curg is the creator); it is not runnable yet, so this
 * event precedes anything it does. */
static __always_inline int go_created(struct pt_regs *ctx, __u64 newg)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct periscope_go_offsets *o = bpf_map_lookup_elem(&go_procs, &tgid);
	if (!o)
		return 0;
	__u64 parent = go_goid(o, go_curg(o, go_g_register(ctx)));
	if (!parent || !go_is_known(tgid, parent))
		return 0;
	__u64 child = go_goid(o, newg);
	if (!child)
		return 0;
	go_mark_known(tgid, child);
	emit_goroutine_event(id, PERISCOPE_GO_CREATED, parent, child);
	return 0;
}

/* At the call of runqput(pp, newg, true) that follows newproc1 in
 * runtime.newproc.func1: RBX is the new goroutine. The kernel emulates a
 * probed call; a probed RET it single-steps, at the cost of a second trap
 * (the agent uses this site when the code has that shape). */
SEC("uprobe")
int handle_go_newg_call(struct pt_regs *ctx) { return go_created(ctx, ctx->bx); }

/* At each RET of runtime.newproc1(fn, callergp, callerpc) *g: RAX is the
 * new goroutine. */
SEC("uprobe")
int handle_go_newproc1_ret(struct pt_regs *ctx) { return go_created(ctx, ctx->ax); }

/* Entry of runtime.goexit0(gp): gp (RAX) is done. */
SEC("uprobe")
int handle_go_goexit0(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct periscope_go_offsets *o = bpf_map_lookup_elem(&go_procs, &tgid);
	if (!o)
		return 0;
	__u64 goid = go_goid(o, ctx->ax);
	struct go_key k = { .pid = tgid, .goid = goid };
	if (!goid || bpf_map_delete_elem(&go_known, &k))
		return 0;
	emit_goroutine_event(id, PERISCOPE_GO_EXITED, 0, goid);
	return 0;
}

/* net/http's Transport writes a request on the connection's writeLoop
 * goroutine, handed over through a buffered channel: a writeLoop that has
 * not parked yet (a fresh connection, given to another request than the
 * one that dialled it) is woken by no one. So the handover itself is
 * reported, per (pid, *persistConn): the entry of writeLoop names the
 * connection's writer goroutine, the entry of persistConn.roundTrip (on the
 * requesting goroutine) the requester; whichever comes second sends "the
 * requester readied the writer". */
struct go_conn_key {
	__u32 pid;
	__u32 _pad;
	__u64 conn; /* *net/http.persistConn */
};

struct go_conn_hand {
	__u64 writer;    /* goid of its writeLoop, 0 until it started */
	__u64 requester; /* a round trip begun before the writer started */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct go_conn_key);
	__type(value, struct go_conn_hand);
} go_http_conns SEC(".maps");

/* Entry of net/http.(*persistConn).writeLoop(pc): the goroutine it starts. */
SEC("uprobe")
int handle_go_http_writeloop(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct periscope_go_offsets *o = bpf_map_lookup_elem(&go_procs, &tgid);
	if (!o)
		return 0;
	__u64 goid = go_goid(o, go_g_register(ctx));
	if (!goid)
		return 0;
	struct go_conn_key k = { .pid = tgid, .conn = ctx->ax };
	struct go_conn_hand *h = bpf_map_lookup_elem(&go_http_conns, &k);
	if (h && h->requester)
		emit_goroutine_event(id, PERISCOPE_GO_READIED, h->requester, goid);
	struct go_conn_hand v = { .writer = goid };
	bpf_map_update_elem(&go_http_conns, &k, &v, BPF_ANY);
	go_mark_known(tgid, goid);
	return 0;
}

/* Entry of net/http.(*persistConn).roundTrip(pc, req), on the goroutine
 * that makes the request. */
SEC("uprobe")
int handle_go_http_roundtrip(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct periscope_go_offsets *o = bpf_map_lookup_elem(&go_procs, &tgid);
	if (!o)
		return 0;
	__u64 requester = go_goid(o, go_g_register(ctx));
	if (!requester)
		return 0;
	struct go_conn_key k = { .pid = tgid, .conn = ctx->ax };
	struct go_conn_hand *h = bpf_map_lookup_elem(&go_http_conns, &k);
	/* A writer that exited belongs to an earlier connection at the same
	 * address (the old one was freed): this one's has not started yet. */
	if (h && h->writer && go_is_known(tgid, h->writer)) {
		if (h->writer != requester)
			emit_goroutine_event(id, PERISCOPE_GO_READIED, requester, h->writer);
		return 0;
	}
	struct go_conn_hand v = { .requester = requester };
	bpf_map_update_elem(&go_http_conns, &k, &v, BPF_ANY);
	return 0;
}

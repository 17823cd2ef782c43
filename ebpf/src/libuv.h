/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* libuv's thread pool (Node.js: dns.lookup, fs, crypto, zlib): a request
 * that hands work to the pool gets its callback in a later loop iteration,
 * after an eventfd read that names no request. Two uprobes, attached by the
 * agent to the binary that embeds libuv (node) or to libuv.so, report the
 * hop; the agent carries the thread's current request across it.
 *   uv__work_submit(loop, struct uv__work *w, kind, work, done): submit, w;
 *   the `done` callbacks (uv__getaddrinfo_done, uv__fs_done, uv__queue_done,
 *   ...; each takes w first), run on the loop thread: resume, w.
 * Node.js also runs its JavaScript timers from one libuv timer callback,
 * node::Environment::RunTimers: entering it is reported (deferred), so the
 * agent stops believing the request of the iteration's last read for what
 * runs there.
 * Entry uprobes only: nothing here needs the return. */
#pragma once

#include <bpf/bpf_tracing.h>
#include "maps.h"

static __always_inline int emit_async(__u64 key, __u32 phase)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!is_tracked(id >> 32))
		return 0;
	struct periscope_async_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(PERISCOPE_CNT_RINGBUF_FULL);
		return 0;
	}
	__u64 now = bpf_ktime_get_ns();
	e->hdr.kind = PERISCOPE_EV_ASYNC;
	e->hdr.pid = id >> 32;
	e->hdr.tid = (__u32)id;
	e->hdr.fd = -1;
	e->hdr.ts_enter_ns = now;
	e->hdr.ts_exit_ns = now;
	e->hdr.loop_seq = loop_seq((__u32)id);
	e->hdr.goid = 0; /* not a Go process: runtimes with their own hooks */
	e->key = key;
	e->phase = phase;
	e->_pad = 0;
	/* The agent drains on its timer: no wakeup per hop. */
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}

SEC("uprobe")
int handle_uv_work_submit(struct pt_regs *ctx)
{
	return emit_async(PT_REGS_PARM2(ctx), PERISCOPE_ASYNC_SUBMIT);
}

SEC("uprobe")
int handle_uv_work_done(struct pt_regs *ctx)
{
	return emit_async(PT_REGS_PARM1(ctx), PERISCOPE_ASYNC_RESUME);
}

SEC("uprobe")
int handle_node_deferred(struct pt_regs *ctx) { return emit_async(0, PERISCOPE_ASYNC_DEFERRED); }

/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Event-loop iterations: a thread of a tracked process that enters
 * epoll_wait/poll/select has finished the callbacks of one iteration. The
 * agent uses the count (loop_seq in every event header) to tell whether two
 * syscalls of an event-loop thread (Node.js, nginx, ...) ran in the same
 * batch of callbacks, and so may belong to the same request. No event is
 * sent: the count travels in the headers of the next socket events. */
#pragma once

#include "maps.h"

static __always_inline int handle_loop_wait(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!is_tracked(id >> 32))
		return 0;
	__u32 tid = (__u32)id;
	__u32 *v = bpf_map_lookup_elem(&loop_seqs, &tid);
	if (v) {
		__sync_fetch_and_add(v, 1);
	} else {
		__u32 one = 1;
		bpf_map_update_elem(&loop_seqs, &tid, &one, BPF_ANY);
	}
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_epoll_wait")
int handle_enter_epoll_wait(struct trace_event_raw_sys_enter *ctx) { return handle_loop_wait(); }

SEC("tracepoint/syscalls/sys_enter_epoll_pwait")
int handle_enter_epoll_pwait(struct trace_event_raw_sys_enter *ctx) { return handle_loop_wait(); }

SEC("tracepoint/syscalls/sys_enter_epoll_pwait2")
int handle_enter_epoll_pwait2(struct trace_event_raw_sys_enter *ctx) { return handle_loop_wait(); }

SEC("tracepoint/syscalls/sys_enter_poll")
int handle_enter_poll(struct trace_event_raw_sys_enter *ctx) { return handle_loop_wait(); }

SEC("tracepoint/syscalls/sys_enter_ppoll")
int handle_enter_ppoll(struct trace_event_raw_sys_enter *ctx) { return handle_loop_wait(); }

SEC("tracepoint/syscalls/sys_enter_select")
int handle_enter_select(struct trace_event_raw_sys_enter *ctx) { return handle_loop_wait(); }

SEC("tracepoint/syscalls/sys_enter_pselect6")
int handle_enter_pselect6(struct trace_event_raw_sys_enter *ctx) { return handle_loop_wait(); }

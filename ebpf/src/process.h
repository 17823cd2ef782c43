/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Process lifecycle: children of tracked processes are tracked from their
 * first instruction; exits clear kernel state; execs let the agent match new
 * processes against its selectors without polling. */
#pragma once

#include "maps.h"

static __always_inline void emit_proc_event(__u32 kind, __u32 pid, __u32 tid, __u32 ppid,
					    __u64 start_boottime_ns)
{
	struct periscope_proc_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(PERISCOPE_CNT_RINGBUF_FULL);
		return;
	}
	e->hdr.kind = kind;
	e->hdr.pid = pid;
	e->hdr.tid = tid;
	e->hdr.fd = -1;
	e->hdr.ts_enter_ns = bpf_ktime_get_ns();
	e->hdr.ts_exit_ns = e->hdr.ts_enter_ns;
	e->hdr.loop_seq = 0;
	e->hdr.goid = 0;
	e->ppid = ppid;
	e->_pad = 0;
	e->start_boottime_ns = start_boottime_ns;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
}

/* raw_tp args: (struct task_struct *parent, struct task_struct *child).
 * Read through a plain __u64 pointer: ctx->args[1] on vmlinux.h's zero-length
 * args[] is a CO-RE access that aya rejects ("array index out of bounds"). */
SEC("raw_tracepoint/sched_process_fork")
int handle_fork(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 *args = (__u64 *)ctx;
	struct task_struct *parent = (struct task_struct *)args[0];
	struct task_struct *child = (struct task_struct *)args[1];
	__u32 parent_tgid = BPF_CORE_READ(parent, tgid);
	struct periscope_pid_config *cfg = bpf_map_lookup_elem(&tracked_pids, &parent_tgid);
	if (!cfg)
		return 0;
	__u32 child_tgid = BPF_CORE_READ(child, tgid);
	__u32 child_pid = BPF_CORE_READ(child, pid);
	if (child_tgid != child_pid || child_tgid == parent_tgid)
		return 0; /* a new thread, not a new process */
	struct periscope_pid_config copy = *cfg;
	bpf_map_update_elem(&tracked_pids, &child_tgid, &copy, BPF_ANY);
	/* The child's start time (what /proc shows) names its instance before
	 * the agent has read /proc. */
	emit_proc_event(PERISCOPE_EV_PROC_FORK, child_tgid, child_pid, parent_tgid,
			BPF_CORE_READ(child, start_boottime));
	return 0;
}

/* Whether the exiting thread ends its process. do_exit() decrements
 * signal->live, the number of live threads of the group, before it fires
 * sched_process_exit (kernel/exit.c: so in 4.x, so still in 6.18): the last
 * thread out reads 0. The tracepoint's own `group_dead` field is recent (older
 * kernels give sched_process_exit the sched_process_template record, without
 * it); a bpf_core_field_exists() test with this as the fallback would leave
 * the older kernels' path unexercised on newer ones, so one rule serves all.
 * Threads that exit together (exit_group) may each read 0, the last
 * decrement being done by the time they look: handle_exit emits only for the
 * one whose delete of the tgid from tracked_pids succeeds. */
static __always_inline int process_is_dead(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	return BPF_CORE_READ(task, signal, live.counter) == 0;
}

/* No field of the record is read (the context type is the sched_process
 * template, the layout every kernel's vmlinux.h has). */
SEC("tracepoint/sched/sched_process_exit")
int handle_exit(struct trace_event_raw_sched_process_template *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if (!is_tracked(tgid))
		return 0;
	__u32 tid = (__u32)id;
	bpf_map_delete_elem(&loop_seqs, &tid);
	if (!process_is_dead())
		return 0;
	/* Fails for every thread but one when several saw the group dead. */
	if (bpf_map_delete_elem(&tracked_pids, &tgid))
		return 0;
	emit_proc_event(PERISCOPE_EV_PROC_EXIT, tgid, tid, 0, 0);
	return 0;
}

SEC("tracepoint/sched/sched_process_exec")
int handle_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	emit_proc_event(PERISCOPE_EV_PROC_EXEC, id >> 32, (__u32)id, 0, 0);
	return 0;
}

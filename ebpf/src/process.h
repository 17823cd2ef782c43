/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Process lifecycle: children of tracked processes are tracked from their
 * first instruction; exits clear kernel state; execs let the agent match new
 * processes against its selectors without polling. */
#pragma once

#include "maps.h"

struct sched_exit_ctx {
	__u64 common;
	char comm[16];
	__s32 pid;
	__s32 prio;
	__u8 group_dead;
};

static __always_inline void emit_proc_event(__u32 kind, __u32 pid, __u32 tid, __u32 ppid)
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
	e->hdr._pad = 0;
	e->ppid = ppid;
	e->_pad = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
}

/* raw_tp args: (struct task_struct *parent, struct task_struct *child).
 * Read through a __u64 pointer (see DEVELOPERS.md on aya and ctx->args). */
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
	emit_proc_event(PERISCOPE_EV_PROC_FORK, child_tgid, child_pid, parent_tgid);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int handle_exit(struct sched_exit_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	/* A thread dying inside a blocking syscall never reaches sys_exit; done
	 * for every thread, since its process may have been untracked meanwhile. */
	bpf_map_delete_elem(&pending, &id);
	if (!is_tracked(tgid))
		return 0;
	__u32 tid = (__u32)id;
	bpf_map_delete_elem(&loop_seqs, &tid);
	if (!ctx->group_dead)
		return 0;
	bpf_map_delete_elem(&tracked_pids, &tgid);
	emit_proc_event(PERISCOPE_EV_PROC_EXIT, tgid, (__u32)id, 0);
	return 0;
}

SEC("tracepoint/sched/sched_process_exec")
int handle_exec(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	emit_proc_event(PERISCOPE_EV_PROC_EXEC, id >> 32, (__u32)id, 0);
	return 0;
}

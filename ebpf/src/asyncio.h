/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* CPython's asyncio (the C `_asyncio` module of CPython 3.11): which Task
 * works for which request. A handler task runs in a later loop iteration
 * than the read that woke it, so the loop iteration alone cannot tell; three
 * entry uprobes on the module's own functions report the Task:
 *   _asyncio_Task___init__(self, args, kwargs): a task is created (spawn);
 *   future_schedule_callbacks(fut): a future is done; its first callback is
 *     the waiting task's wakeup, a PyCFunction whose m_self is the Task
 *     (wake; another first callback gives a key no step ever names);
 *   task_step(task, exc), task_wakeup(task, fut) and
 *   TaskStepMethWrapper_call(wrapper, ...) (the first step of a new task,
 *   scheduled with call_soon; wrapper->sw_task): a step of the task starts
 *   (step). The static task_step may be inlined into its callers, which are
 *   called through function pointers and so never are.
 * Offsets: FutureObj.fut_callback0 and PyCFunctionObject.m_self, 3.11. */
#pragma once

#include "libuv.h"

#define PY311_FUT_CALLBACK0 24
#define PY311_CFUNCTION_SELF 24
#define PY311_STEP_WRAPPER_TASK 16

SEC("uprobe")
int handle_asyncio_task_init(struct pt_regs *ctx)
{
	return emit_async(PT_REGS_PARM1(ctx), PERISCOPE_ASYNC_TASK_SPAWN);
}

SEC("uprobe")
int handle_asyncio_future_done(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!is_tracked(id >> 32))
		return 0;
	__u64 fut = PT_REGS_PARM1(ctx), callback = 0, task = 0;
	if (bpf_probe_read_user(&callback, sizeof(callback), (void *)(fut + PY311_FUT_CALLBACK0)) ||
	    !callback)
		return 0;
	if (bpf_probe_read_user(&task, sizeof(task), (void *)(callback + PY311_CFUNCTION_SELF)) ||
	    !task)
		return 0;
	return emit_async(task, PERISCOPE_ASYNC_TASK_WAKE);
}

SEC("uprobe")
int handle_asyncio_task_step(struct pt_regs *ctx)
{
	return emit_async(PT_REGS_PARM1(ctx), PERISCOPE_ASYNC_TASK_STEP);
}

SEC("uprobe")
int handle_asyncio_step_wrapper(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!is_tracked(id >> 32))
		return 0;
	__u64 task = 0;
	if (bpf_probe_read_user(&task, sizeof(task),
				(void *)(PT_REGS_PARM1(ctx) + PY311_STEP_WRAPPER_TASK)) ||
	    !task)
		return 0;
	return emit_async(task, PERISCOPE_ASYNC_TASK_STEP);
}

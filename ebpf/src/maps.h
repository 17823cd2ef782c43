/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Maps and small helpers shared by the periscope kernel programs. */
#pragma once

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "events.h"

/* Set by the agent before load (EbpfLoader::override_global). */
const volatile __u32 capture_size = PERISCOPE_DEFAULT_CAPTURE;
/* Data events wake the agent only once this many bytes wait in the ring
 * buffer; the agent also drains on a short timer. Waking it on every event
 * costs an irq_work per syscall and a wakeup per event in the agent. */
const volatile __u32 wakeup_bytes = PERISCOPE_DEFAULT_WAKEUP_BYTES;

/* tgid -> config: only these processes produce socket events. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct periscope_pid_config);
} tracked_pids SEC(".maps");

/* Arguments of a syscall in flight, kept from entry to exit in the thread's
 * own task storage. */
struct pending_io {
	__u64 ts_enter_ns;
	__u64 buf;    /* user pointer: data, iovec array, or msghdr */
	__u32 iovcnt; /* iovec entries when kind is IOV */
	__s32 fd;
	__u8 kind;    /* enum pending_kind */
	__u8 syscall; /* enum periscope_syscall */
	__u8 direction;
	__u8 active; /* set at entry, cleared at exit: a slot with nothing in flight is 0 */
	/* The thread's last read of a TCP socket (fd + 1, 0: none) and when:
	 * an SSL object on a memory BIO (Node.js) is fed from it (tls.h). */
	__u32 last_read_fd1;
	__u64 last_read_ns;
};

struct ps_iovec {
	__u64 base;
	__u64 len;
};

enum pending_kind {
	PENDING_PLAIN = 0, /* buf is the data */
	PENDING_IOV = 1,   /* buf is a struct iovec array */
	PENDING_MSG = 2,   /* buf is a struct user_msghdr */
	PENDING_NONE = 3,  /* no user buffer (sendfile): count bytes only */
	PENDING_ACCEPT = 4,
	PENDING_CONNECT = 5,
};

/* Task storage: one slot per thread, created at its first tracked syscall and
 * freed by the kernel with the thread. No hash insert and delete per syscall
 * (a lookup in the task's own small storage list instead), no capacity to run
 * out of, nothing to clean when a thread dies inside a syscall. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct pending_io);
} pending SEC(".maps");

/* The calling thread's slot (created when `create`), or NULL. */
static __always_inline struct pending_io *pending_slot(int create)
{
	return bpf_task_storage_get(&pending, bpf_get_current_task_btf(), 0,
				    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

/* Takes what the calling thread's entry left (0 when nothing is in flight). */
static __always_inline int take_pending(struct pending_io *out)
{
	struct pending_io *p = pending_slot(0);
	if (!p || !p->active)
		return 0;
	*out = *p;
	p->active = 0;
	return 1;
}

/* (tgid, fd) of a tracked process -> what that fd is (events.h). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct periscope_conn_key);
	__type(value, struct periscope_conn_info);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024); /* the agent may override */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PERISCOPE_CNT__MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* A data event plus slack, so that bounded writes at a variable offset below
 * PERISCOPE_MAX_CAPTURE stay inside the map value for the verifier. */
struct scratch_event {
	struct periscope_data_event ev;
	__u8 slack[PERISCOPE_MAX_CAPTURE];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch_event);
} scratch SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1;
}

/* Sends a data event of `size` bytes (bounded by the caller). Wakes the
 * agent once, when this record makes the backlog cross the threshold:
 * forcing a wakeup on every record while the agent lags would cost an
 * irq_work per syscall exactly when the host is busiest. */
static __always_inline void send_data(struct periscope_data_event *e, __u64 size)
{
	if (size > sizeof(*e))
		size = sizeof(*e);
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 flags = (avail < wakeup_bytes && avail + size >= wakeup_bytes) ? BPF_RB_FORCE_WAKEUP
									     : BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(&events, e, size, flags))
		count(PERISCOPE_CNT_RINGBUF_FULL);
	else
		count(PERISCOPE_CNT_DATA_EVENTS);
}

static __always_inline int is_tracked(__u32 tgid)
{
	return bpf_map_lookup_elem(&tracked_pids, &tgid) != NULL;
}

/* tid of a tracked process -> event-loop iterations (see loop_seq in events.h).
 * LRU: threads that exit without being seen again age out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} loop_seqs SEC(".maps");

static __always_inline __u32 loop_seq(__u32 tid)
{
	__u32 *v = bpf_map_lookup_elem(&loop_seqs, &tid);
	return v ? *v : 0;
}

/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The only definition of the structs, enums and limits shared by the kernel
 * programs and the agent. The agent's Rust types are generated from this file
 * by bindgen at build time (agent/build.rs); never retype them by hand.
 *
 * Kernel -> user: records in the `events` ring buffer. Every record starts with
 * `struct periscope_event_header`; `kind` says which struct follows.
 * User -> kernel: `struct periscope_pid_config` values in `tracked_pids`, and
 * the capture policy of a classified connection in `conns`
 * (`struct periscope_conn_info`).
 */
#ifndef PERISCOPE_EVENTS_H
#define PERISCOPE_EVENTS_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Upper bound of the configurable per-syscall capture (power of two). */
#define PERISCOPE_MAX_CAPTURE 4096
/* Default bytes captured per syscall when the agent does not override it. */
#define PERISCOPE_DEFAULT_CAPTURE 512
/* Bytes waiting in the ring buffer before a data event wakes the agent. */
#define PERISCOPE_DEFAULT_WAKEUP_BYTES (64 * 1024)
/* iovec entries walked per readv/writev/recvmsg/sendmsg call. gRPC's
 * HTTP/2 transport writes a header block as one iovec per name and value
 * (22 for a first request of grpcio): 8 cut its HEADERS frames. */
#define PERISCOPE_MAX_IOV 32

/* AMQP 0-9-1 frame capture (PERISCOPE_CAPTURE_AMQP_FRAMES): payload bytes
 * copied per frame, by frame type. Method arguments are short strings and
 * integers; a content header carries the properties and the headers table
 * (traceparent); of a body frame, the bytes the agent fingerprints. */
#define PERISCOPE_AMQP_METHOD_KEEP 256
#define PERISCOPE_AMQP_HEADER_KEEP 512
#define PERISCOPE_AMQP_BODY_KEEP 64
/* Frames walked per read; a read with more loses the framing. */
#define PERISCOPE_AMQP_MAX_FRAMES 16384
/* Segments kept per read; beyond, frames are still walked (the framing is
 * kept) but no longer copied. */
#define PERISCOPE_AMQP_MAX_SEGMENTS 2048
/* Events sent per read; beyond, the rest of the read is not copied. */
#define PERISCOPE_AMQP_MAX_EVENTS 64
/* HTTP/2 frame capture (PERISCOPE_CAPTURE_HTTP2_FRAMES): payload bytes
 * copied per frame. Every frame header is copied; of the payload, a header
 * block fragment (HEADERS, CONTINUATION, PUSH_PROMISE) up to the agent's
 * longest header block, a control frame's (SETTINGS, PING, RST_STREAM,
 * PRIORITY, WINDOW_UPDATE, GOAWAY) first bytes, nothing of DATA. */
#define PERISCOPE_H2_HEADERS_KEEP 16384
#define PERISCOPE_H2_CONTROL_KEEP 64
/* Steps of one syscall's walk (a frame header, a payload piece, the next
 * iovec); beyond, the rest of the syscall is not copied and the framing of
 * that direction is lost until a syscall starts with frames. */
#define PERISCOPE_H2_MAX_STEPS 8192
/* iovec entries walked per syscall (UIO_MAXIOV). */
#define PERISCOPE_H2_MAX_IOV 1024
/* Segments kept per syscall; beyond, frames are still walked (the framing
 * is kept) but no longer copied. */
#define PERISCOPE_H2_MAX_SEGMENTS 1024
/* Events sent per syscall; beyond, the rest of it is not copied. */
#define PERISCOPE_H2_MAX_EVENTS 64
/* Longest segment: a segment always fits in one event of its own. */
#define PERISCOPE_MAX_SEGMENT                                        \
	(PERISCOPE_MAX_CAPTURE - sizeof(struct periscope_segments) - \
	 sizeof(struct periscope_segment))

enum periscope_event_kind {
	PERISCOPE_EV_DATA = 1,       /* struct periscope_data_event */
	PERISCOPE_EV_CONN_OPEN = 2,  /* struct periscope_conn_event: accept/connect */
	PERISCOPE_EV_CONN_CLOSE = 3, /* struct periscope_conn_event: close */
	PERISCOPE_EV_PROC_FORK = 4,  /* struct periscope_proc_event: child of a tracked pid */
	PERISCOPE_EV_PROC_EXIT = 5,  /* struct periscope_proc_event: tracked pid exited */
	PERISCOPE_EV_PROC_EXEC = 6,  /* struct periscope_proc_event: any exec */
	PERISCOPE_EV_ASYNC = 7,      /* struct periscope_async_event: a runtime's async hop */
	PERISCOPE_EV_GOROUTINE = 8,  /* struct periscope_goroutine_event: Go runtime uprobes */
};

/* An async hop inside a tracked process, seen by a runtime uprobe: work
 * handed to another thread or a later loop iteration (submit), then its
 * completion callback starting (resume) on the loop thread. */
enum periscope_async_phase {
	PERISCOPE_ASYNC_SUBMIT = 0,
	PERISCOPE_ASYNC_RESUME = 1,
	/* Python asyncio (key: the Task): a task is created (it works for the
	 * creator's current request, or none); a future it waits on is done
	 * (it works for the current request, if there is one); one of its steps
	 * starts (its request is current). */
	PERISCOPE_ASYNC_TASK_SPAWN = 2,
	PERISCOPE_ASYNC_TASK_WAKE = 3,
	PERISCOPE_ASYNC_TASK_STEP = 4,
	/* Node.js (key 0): the loop thread starts running JavaScript timers
	 * (Environment::RunTimers): callbacks deferred by requests of earlier
	 * reads, started by no read. */
	PERISCOPE_ASYNC_DEFERRED = 5,
};

enum periscope_direction {
	PERISCOPE_DIR_INGRESS = 0, /* the process read these bytes */
	PERISCOPE_DIR_EGRESS = 1,  /* the process wrote these bytes */
};

/* Which end of the connection the tracked process is. */
enum periscope_role {
	PERISCOPE_ROLE_UNKNOWN = 0, /* socket predates tracking: userspace infers */
	PERISCOPE_ROLE_SERVER = 1,  /* accepted */
	PERISCOPE_ROLE_CLIENT = 2,  /* connected */
};

enum periscope_syscall {
	PERISCOPE_SYS_READ = 0,
	PERISCOPE_SYS_READV = 1,
	PERISCOPE_SYS_RECVFROM = 2,
	PERISCOPE_SYS_RECVMSG = 3,
	PERISCOPE_SYS_WRITE = 4,
	PERISCOPE_SYS_WRITEV = 5,
	PERISCOPE_SYS_SENDTO = 6,
	PERISCOPE_SYS_SENDMSG = 7,
	PERISCOPE_SYS_SENDFILE = 8,
	/* Plaintext of a TLS connection, from uprobes on the TLS library
	 * (ebpf/src/tls.h); fd, tuple and role are those of its socket. */
	PERISCOPE_SYS_SSL_READ = 9,
	PERISCOPE_SYS_SSL_WRITE = 10,
};

/* Indexes of the per-CPU `counters` array; the agent exports each one. */
enum periscope_counter {
	PERISCOPE_CNT_RINGBUF_FULL = 0,  /* event dropped: ring buffer reservation failed */
	PERISCOPE_CNT_PENDING_FULL = 1,  /* syscall not followed: no pending-args slot */
	PERISCOPE_CNT_CONN_FULL = 2,     /* connection not cached: map update failed */
	PERISCOPE_CNT_IOV_TRUNCATED = 3, /* more than PERISCOPE_MAX_IOV iovecs */
	PERISCOPE_CNT_READ_FAILED = 4,   /* bpf_probe_read_user of a buffer failed */
	PERISCOPE_CNT_DATA_EVENTS = 5,   /* data events submitted */
	/* AMQP reads captured as a prefix only: the frame boundaries were not
	 * known (policy just set, a frame that did not check out, several iovecs) */
	PERISCOPE_CNT_AMQP_UNALIGNED = 6,
	/* AMQP reads captured in part: more frames, segments or events than the
	 * limits above, or a user buffer that could not be read */
	PERISCOPE_CNT_AMQP_TRUNCATED = 7,
	/* Syscalls on a TLS connection (inside an SSL call, or on a socket an
	 * SSL call used) not sent: their bytes are ciphertext */
	PERISCOPE_CNT_TLS_CIPHERTEXT = 8,
	/* SSL_read/SSL_write plaintext dropped: the SSL object's socket is not
	 * known yet (no syscall of it seen inside an SSL call) */
	PERISCOPE_CNT_TLS_NO_SOCKET = 9,
	/* SSL_read/SSL_write plaintext events sent */
	PERISCOPE_CNT_TLS_DATA_EVENTS = 10,
	/* HTTP/2 syscalls captured as a prefix only: where the frames stand
	 * was not known (policy just set, a frame header that did not check
	 * out, bytes without a user buffer where frames had to be read) */
	PERISCOPE_CNT_H2_UNALIGNED = 11,
	/* HTTP/2 syscalls captured in part: more steps, iovecs, segments or
	 * events than the limits above, or a user buffer that could not be read */
	PERISCOPE_CNT_H2_TRUNCATED = 12,
	PERISCOPE_CNT__MAX = 13,
};

/* How the kernel captures a connection's bytes; set by the agent in `conns`
 * once it knows what the connection speaks. */
enum periscope_capture_policy {
	PERISCOPE_CAPTURE_PREFIX = 0,      /* the first capture_size bytes of each syscall */
	PERISCOPE_CAPTURE_AMQP_FRAMES = 1, /* reads: bytes of each AMQP frame the agent parses */
	PERISCOPE_CAPTURE_HTTP2_FRAMES =
		2, /* both ways: frame headers, header blocks; no DATA payload */
};

/* How data[] of a data event is laid out. */
enum periscope_data_layout {
	PERISCOPE_LAYOUT_PREFIX = 0,   /* the first `captured` bytes of the syscall */
	PERISCOPE_LAYOUT_SEGMENTS = 1, /* struct periscope_segments, then segments */
};

/* A TCP connection seen from the tracked process. IPv4 addresses are stored
 * IPv4-mapped (::ffff:a.b.c.d); ports are in host byte order. */
struct periscope_tuple {
	__u8 local_addr[16];
	__u8 remote_addr[16];
	__u16 local_port;
	__u16 remote_port;
	__u16 family; /* AF_INET or AF_INET6 of the socket itself */
	__u16 _pad;
	__u32 netns; /* inode number of the socket's network namespace */
};

struct periscope_event_header {
	__u32 kind; /* enum periscope_event_kind */
	__u32 pid;  /* tgid */
	__u32 tid;
	__s32 fd;
	__u64 ts_enter_ns; /* CLOCK_MONOTONIC (bpf_ktime_get_ns) at syscall entry */
	__u64 ts_exit_ns;  /* ... at syscall exit */
	/* How many times this thread has entered epoll_wait/poll/select since it
	 * was first seen: an event loop's iteration. Two events of a thread with
	 * the same value ran in the same callback batch (0 for threads that never
	 * wait on many fds: thread-per-request servers). */
	__u32 loop_seq;
	/* Go processes the agent instrumented (`go_procs`): low 32 bits of the
	 * id of the goroutine that made the syscall, the logical thread whose
	 * current request counts (goroutines move between OS threads); 0 when
	 * not a Go process or not known. */
	__u32 goid;
};

struct periscope_data_event {
	struct periscope_event_header hdr;
	struct periscope_tuple tuple;
	__s64 bytes;    /* what the syscall returned: bytes transferred */
	__u32 captured; /* bytes of data[] that follow (<= bytes, <= capture size) */
	__u8 direction; /* enum periscope_direction */
	__u8 role;      /* enum periscope_role */
	__u8 syscall;   /* enum periscope_syscall */
	__u8 layout;    /* enum periscope_data_layout */
	__u8 data[PERISCOPE_MAX_CAPTURE]; /* only `captured` bytes are sent */
};

/* Head of data[] in a segmented event. One syscall may send several such
 * events (same header and timestamps), covering consecutive byte ranges of
 * it: the first starts at 0, the last ends at `bytes`. Bytes of the range
 * that no segment holds were not captured. */
struct periscope_segments {
	__u32 start; /* first byte of the syscall this event covers */
	__u32 end;   /* one past its last */
};

/* One segment: `len` bytes of the syscall from `offset` follow it directly
 * (unaligned). Segments are in order and do not overlap. */
struct periscope_segment {
	__u32 offset;
	__u32 len;
};

struct periscope_conn_event {
	struct periscope_event_header hdr;
	struct periscope_tuple tuple;
	__u8 role;
	__u8 _pad[7];
};

struct periscope_async_event {
	struct periscope_event_header hdr; /* fd = -1; ts_enter_ns = ts_exit_ns */
	/* What ties the two phases together in the process: libuv, the address
	 * of the request's `struct uv__work` */
	__u64 key;
	__u32 phase; /* enum periscope_async_phase */
	__u32 _pad;
};

struct periscope_proc_event {
	struct periscope_event_header hdr; /* pid = the process concerned */
	__u32 ppid;                        /* fork: the tracked parent */
	__u32 _pad;
	/* fork: the child's task_struct start_boottime (CLOCK_BOOTTIME ns), what
	 * /proc/PID/stat shows in clock ticks as its start time; else 0 */
	__u64 start_boottime_ns;
	char comm[16];
};

/* How one goroutine caused another (struct periscope_goroutine_event). */
enum periscope_goroutine_relation {
	PERISCOPE_GO_CREATED = 0, /* `from` ran the go statement that made `to` */
	PERISCOPE_GO_READIED = 1, /* `from` handed work to `to` (net/http: a request to write) */
	PERISCOPE_GO_EXITED = 2,  /* `to` exited (from = 0) */
};

/* Sent by the Go runtime uprobes (ebpf/src/go_runtime.h) for goroutines
 * that did socket I/O or descend from one that did: the only goroutines
 * whose current request the agent keeps. hdr.goid is 0; ids are full. */
struct periscope_goroutine_event {
	struct periscope_event_header hdr;
	__u64 from;
	__u64 to;
	__u32 relation; /* enum periscope_goroutine_relation */
	__u32 _pad;
};

/* Value of `go_procs` (key: tgid): where the Go runtime of this process
 * keeps what the kernel reads, byte offsets of the Go version it runs. */
struct periscope_go_offsets {
	__u16 g_goid; /* runtime.g.goid */
	__u16 g_m;    /* runtime.g.m */
	__u16 m_curg; /* runtime.m.curg: the user goroutine the thread runs */
	__u16 _pad;
};

/* Key of the kernel's `conns` cache; the agent purges a process's keys when it
 * exits or execs (its fds vanish without close()). */
struct periscope_conn_key {
	__u32 pid; /* tgid */
	__s32 fd;
};

/* Value of `conns`: what (tgid, fd) of a tracked process is. Negative
 * entries (is_tcp = 0) keep files and pipes from being looked up again. The
 * agent sets `policy` once it has classified the connection. */
struct periscope_conn_info {
	struct periscope_tuple tuple;
	__u8 is_tcp;
	__u8 role;   /* enum periscope_role */
	__u8 policy; /* enum periscope_capture_policy */
	/* Set by the kernel once an SSL call used the socket: its syscalls
	 * carry ciphertext and are dropped (the plaintext comes from uprobes). */
	__u8 tls;
	__u8 _pad[4];
};

/* Value of `tracked_pids` (key: tgid). */
struct periscope_pid_config {
	__u32 flags; /* reserved */
};

#endif /* PERISCOPE_EVENTS_H */

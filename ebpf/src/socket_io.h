/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Socket I/O on syscall tracepoints: remember the arguments at entry, and at
 * exit send the bytes the syscall moved (first `capture_size` of them). */
#pragma once

#include "conn.h"
#include "amqp_capture.h"
#include "h2_capture.h"
#include "tls_sockets.h"
#include "go_runtime.h"

/* The programs' contexts are the syscalls:sys_enter_* / sys_exit_* records,
 * vmlinux.h's struct trace_event_raw_sys_enter (args[6]) and
 * trace_event_raw_sys_exit (ret). */

static __always_inline int remember(struct trace_event_raw_sys_enter *ctx, __u8 kind, __u8 syscall,
				    __u8 direction, __u64 buf, __u32 iovcnt)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!is_tracked(id >> 32))
		return 0;
	struct pending_io *p = pending_slot(1);
	if (!p) {
		/* no memory for the thread's slot */
		count(PERISCOPE_CNT_PENDING_FULL);
		return 0;
	}
	p->ts_enter_ns = bpf_ktime_get_ns();
	p->buf = buf;
	p->iovcnt = iovcnt;
	p->fd = (__s32)ctx->args[0];
	p->kind = kind;
	p->syscall = syscall;
	p->direction = direction;
	p->active = 1;
	return 0;
}

/* One iovec walk: bpf_loop's context. */
struct iov_walk {
	__u64 iov_ptr;
	__u64 limit;
	__u32 iovcnt;
	__u32 copied;
};

/* One iovec into the scratch event's data (bpf_loop callback): 0 to go on,
 * 1 when done. */
static long copy_one_iov(__u64 i, void *ctx)
{
	struct iov_walk *w = ctx;
	if (i >= w->iovcnt || w->copied >= w->limit)
		return 1;
	__u32 zero = 0;
	struct scratch_event *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 1;
	struct ps_iovec iov;
	if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(w->iov_ptr + i * sizeof(iov))))
		return 1;
	__u64 len = iov.len;
	if (len > w->limit - w->copied)
		len = w->limit - w->copied;
	if (len > PERISCOPE_MAX_CAPTURE)
		len = PERISCOPE_MAX_CAPTURE;
	if (len == 0)
		return 0;
	__u32 off = w->copied & (PERISCOPE_MAX_CAPTURE - 1);
	if (bpf_probe_read_user(s->ev.data + off, len, (void *)iov.base)) {
		count(PERISCOPE_CNT_READ_FAILED);
		return 1;
	}
	w->copied += len;
	return 0;
}

/* Copies up to `limit` bytes from an iovec array into the scratch event's
 * data, returns bytes copied. A bpf_loop, not an unrolled loop: gRPC writes
 * a header block as one iovec per name and value, more than an unrolled
 * loop's worth. */
static __always_inline __u32 copy_iov(__u64 iov_ptr, __u32 iovcnt, __u64 limit)
{
	if (iovcnt > PERISCOPE_MAX_IOV) {
		count(PERISCOPE_CNT_IOV_TRUNCATED);
		iovcnt = PERISCOPE_MAX_IOV;
	}
	struct iov_walk w = { .iov_ptr = iov_ptr, .limit = limit, .iovcnt = iovcnt, .copied = 0 };
	bpf_loop(PERISCOPE_MAX_IOV, copy_one_iov, &w, 0);
	return w.copied;
}

/* `goid`: go_syscall_goid(id), computed once by the caller. */
static __always_inline void fill_header(struct periscope_event_header *h, __u32 kind, __u64 id,
					__s32 fd, __u64 ts_enter, __u32 goid)
{
	h->kind = kind;
	h->pid = id >> 32;
	h->tid = (__u32)id;
	h->fd = fd;
	h->ts_enter_ns = ts_enter;
	h->ts_exit_ns = bpf_ktime_get_ns();
	h->loop_seq = loop_seq((__u32)id);
	h->goid = goid;
}

static __always_inline void emit_conn_event(__u32 kind, __u64 id, __s32 fd, __u64 ts_enter,
					    struct periscope_conn_info *info)
{
	struct periscope_conn_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(PERISCOPE_CNT_RINGBUF_FULL);
		return;
	}
	fill_header(&e->hdr, kind, id, fd, ts_enter, go_syscall_goid(id));
	e->tuple = info->tuple;
	e->role = info->role;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	bpf_ringbuf_submit(e, 0);
}

/* `reads`: the exit of a read-side syscall (a constant: write-side programs
 * carry no frame-capture code for the verifier to walk). */
static __always_inline int handle_io_exit(struct trace_event_raw_sys_exit *ctx, const int reads)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct pending_io args;
	if (!take_pending(&args))
		return 0;

	__s64 ret = ctx->ret;
	if (ret <= 0)
		return 0;
	struct periscope_conn_info *info = lookup_conn(id >> 32, args.fd);
	if (!info || !info->is_tcp)
		return 0;
	if (reads) {
		struct pending_io *p = pending_slot(0);
		if (p) {
			p->last_read_fd1 = (__u32)args.fd + 1;
			p->last_read_ns = bpf_ktime_get_ns();
		}
	}
	/* TLS: the plaintext comes from the SSL call's uprobes. */
	__u32 goid = go_syscall_goid(id);
	if (tls_ciphertext(id, goid, args.fd, info))
		return 0;

	__u32 zero = 0;
	struct scratch_event *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 0;
	struct periscope_data_event *e = &s->ev;
	fill_header(&e->hdr, PERISCOPE_EV_DATA, id, args.fd, args.ts_enter_ns, goid);
	e->tuple = info->tuple;
	e->bytes = ret;
	e->direction = args.direction;
	e->role = info->role;
	e->syscall = args.syscall;
	e->layout = PERISCOPE_LAYOUT_PREFIX;
	/* The policy lives in the entry just looked up: prefix-captured
	 * connections pay one byte compare. */
	if (reads && info->policy == PERISCOPE_CAPTURE_AMQP_FRAMES &&
	    amqp_capture(s, &args, id >> 32, (__u32)ret))
		return 0;
	if (info->policy == PERISCOPE_CAPTURE_HTTP2_FRAMES &&
	    h2_capture_io(s, &args, id >> 32, (__u32)ret))
		return 0;

	__u64 limit = capture_size;
	if (limit > PERISCOPE_MAX_CAPTURE)
		limit = PERISCOPE_MAX_CAPTURE;
	if (limit > (__u64)ret)
		limit = ret;

	__u32 captured = 0;
	if (args.kind == PENDING_PLAIN) {
		if (limit > 0 && bpf_probe_read_user(e->data, limit, (void *)args.buf) == 0)
			captured = limit;
		else if (limit > 0)
			count(PERISCOPE_CNT_READ_FAILED);
	} else if (args.kind == PENDING_IOV) {
		captured = copy_iov(args.buf, args.iovcnt, limit); /* into s->ev, that is e */
	} else if (args.kind == PENDING_MSG) {
		struct user_msghdr msg;
		if (bpf_probe_read_user(&msg, sizeof(msg), (void *)args.buf) == 0)
			captured = copy_iov((__u64)msg.msg_iov, msg.msg_iovlen, limit);
		else
			count(PERISCOPE_CNT_READ_FAILED);
	}
	if (captured > PERISCOPE_MAX_CAPTURE)
		captured = PERISCOPE_MAX_CAPTURE;
	e->captured = captured;
	if (!reads)
		amqp_classify_write(info, e);
	h2_classify(info, e);

	send_data(e, offsetof(struct periscope_data_event, data) + captured);
	return 0;
}

/* --- entries --- */

SEC("tracepoint/syscalls/sys_enter_read")
int handle_enter_read(struct trace_event_raw_sys_enter *ctx)
{
	return remember(ctx, PENDING_PLAIN, PERISCOPE_SYS_READ, PERISCOPE_DIR_INGRESS, ctx->args[1],
			0);
}

SEC("tracepoint/syscalls/sys_enter_readv")
int handle_enter_readv(struct trace_event_raw_sys_enter *ctx)
{
	return remember(ctx, PENDING_IOV, PERISCOPE_SYS_READV, PERISCOPE_DIR_INGRESS, ctx->args[1],
			ctx->args[2]);
}

/* MSG_PEEK: the bytes stay in the socket for the next read, which is the
 * one followed (curl peeks one byte to check a kept-alive connection: taken
 * as read, that byte shifted HTTP/2's framing by one). */
#define PERISCOPE_MSG_PEEK 2

SEC("tracepoint/syscalls/sys_enter_recvfrom")
int handle_enter_recvfrom(struct trace_event_raw_sys_enter *ctx)
{
	if (ctx->args[3] & PERISCOPE_MSG_PEEK)
		return 0;
	return remember(ctx, PENDING_PLAIN, PERISCOPE_SYS_RECVFROM, PERISCOPE_DIR_INGRESS,
			ctx->args[1], 0);
}

SEC("tracepoint/syscalls/sys_enter_recvmsg")
int handle_enter_recvmsg(struct trace_event_raw_sys_enter *ctx)
{
	if (ctx->args[2] & PERISCOPE_MSG_PEEK)
		return 0;
	return remember(ctx, PENDING_MSG, PERISCOPE_SYS_RECVMSG, PERISCOPE_DIR_INGRESS,
			ctx->args[1], 0);
}

SEC("tracepoint/syscalls/sys_enter_write")
int handle_enter_write(struct trace_event_raw_sys_enter *ctx)
{
	return remember(ctx, PENDING_PLAIN, PERISCOPE_SYS_WRITE, PERISCOPE_DIR_EGRESS, ctx->args[1],
			0);
}

SEC("tracepoint/syscalls/sys_enter_writev")
int handle_enter_writev(struct trace_event_raw_sys_enter *ctx)
{
	return remember(ctx, PENDING_IOV, PERISCOPE_SYS_WRITEV, PERISCOPE_DIR_EGRESS, ctx->args[1],
			ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_enter_sendto")
int handle_enter_sendto(struct trace_event_raw_sys_enter *ctx)
{
	return remember(ctx, PENDING_PLAIN, PERISCOPE_SYS_SENDTO, PERISCOPE_DIR_EGRESS,
			ctx->args[1], 0);
}

SEC("tracepoint/syscalls/sys_enter_sendmsg")
int handle_enter_sendmsg(struct trace_event_raw_sys_enter *ctx)
{
	return remember(ctx, PENDING_MSG, PERISCOPE_SYS_SENDMSG, PERISCOPE_DIR_EGRESS, ctx->args[1],
			0);
}

/* sendfile64(out_fd, in_fd, offset, count): bytes only, no user buffer. */
SEC("tracepoint/syscalls/sys_enter_sendfile64")
int handle_enter_sendfile(struct trace_event_raw_sys_enter *ctx)
{
	return remember(ctx, PENDING_NONE, PERISCOPE_SYS_SENDFILE, PERISCOPE_DIR_EGRESS, 0, 0);
}

/* --- exits --- */

SEC("tracepoint/syscalls/sys_exit_read")
int handle_exit_read(struct trace_event_raw_sys_exit *ctx) { return handle_io_exit(ctx, 1); }
SEC("tracepoint/syscalls/sys_exit_readv")
int handle_exit_readv(struct trace_event_raw_sys_exit *ctx) { return handle_io_exit(ctx, 1); }
SEC("tracepoint/syscalls/sys_exit_recvfrom")
int handle_exit_recvfrom(struct trace_event_raw_sys_exit *ctx) { return handle_io_exit(ctx, 1); }
SEC("tracepoint/syscalls/sys_exit_recvmsg")
int handle_exit_recvmsg(struct trace_event_raw_sys_exit *ctx) { return handle_io_exit(ctx, 1); }
SEC("tracepoint/syscalls/sys_exit_write")
int handle_exit_write(struct trace_event_raw_sys_exit *ctx) { return handle_io_exit(ctx, 0); }
SEC("tracepoint/syscalls/sys_exit_writev")
int handle_exit_writev(struct trace_event_raw_sys_exit *ctx) { return handle_io_exit(ctx, 0); }
SEC("tracepoint/syscalls/sys_exit_sendto")
int handle_exit_sendto(struct trace_event_raw_sys_exit *ctx) { return handle_io_exit(ctx, 0); }
SEC("tracepoint/syscalls/sys_exit_sendmsg")
int handle_exit_sendmsg(struct trace_event_raw_sys_exit *ctx) { return handle_io_exit(ctx, 0); }
SEC("tracepoint/syscalls/sys_exit_sendfile64")
int handle_exit_sendfile(struct trace_event_raw_sys_exit *ctx) { return handle_io_exit(ctx, 0); }

/* --- connection lifecycle --- */

SEC("tracepoint/syscalls/sys_enter_accept")
int handle_enter_accept(struct trace_event_raw_sys_enter *ctx)
{
	return remember(ctx, PENDING_ACCEPT, 0, 0, 0, 0);
}

SEC("tracepoint/syscalls/sys_enter_accept4")
int handle_enter_accept4(struct trace_event_raw_sys_enter *ctx)
{
	return remember(ctx, PENDING_ACCEPT, 0, 0, 0, 0);
}

SEC("tracepoint/syscalls/sys_enter_connect")
int handle_enter_connect(struct trace_event_raw_sys_enter *ctx)
{
	return remember(ctx, PENDING_CONNECT, 0, 0, 0, 0);
}

#define PS_EINPROGRESS 115

static __always_inline int handle_open_exit(struct trace_event_raw_sys_exit *ctx, __u8 expect_kind)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct pending_io args;
	if (!take_pending(&args))
		return 0;
	if (args.kind != expect_kind)
		return 0;

	__s32 fd;
	__u8 role;
	if (expect_kind == PENDING_ACCEPT) {
		if (ctx->ret < 0)
			return 0;
		fd = (__s32)ctx->ret;
		role = PERISCOPE_ROLE_SERVER;
	} else {
		if (ctx->ret != 0 && ctx->ret != -PS_EINPROGRESS)
			return 0;
		fd = args.fd;
		role = PERISCOPE_ROLE_CLIENT;
	}
	struct periscope_conn_info info = {};
	describe_fd(fd, &info);
	if (!info.is_tcp)
		return 0;
	info.role = role;
	struct periscope_conn_key key = { .pid = id >> 32, .fd = fd };
	if (bpf_map_update_elem(&conns, &key, &info, BPF_ANY))
		count(PERISCOPE_CNT_CONN_FULL);
	/* A new connection on this fd: nothing of an earlier one's framing holds. */
	bpf_map_delete_elem(&amqp_streams, &key);
	bpf_map_delete_elem(&h2_streams, &key);
	emit_conn_event(PERISCOPE_EV_CONN_OPEN, id, fd, args.ts_enter_ns, &info);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept")
int handle_exit_accept(struct trace_event_raw_sys_exit *ctx)
{
	return handle_open_exit(ctx, PENDING_ACCEPT);
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int handle_exit_accept4(struct trace_event_raw_sys_exit *ctx)
{
	return handle_open_exit(ctx, PENDING_ACCEPT);
}

SEC("tracepoint/syscalls/sys_exit_connect")
int handle_exit_connect(struct trace_event_raw_sys_exit *ctx)
{
	return handle_open_exit(ctx, PENDING_CONNECT);
}

SEC("tracepoint/syscalls/sys_enter_close")
int handle_enter_close(struct trace_event_raw_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!is_tracked(id >> 32))
		return 0;
	struct periscope_conn_key key = { .pid = id >> 32, .fd = (__s32)ctx->args[0] };
	struct periscope_conn_info *info = bpf_map_lookup_elem(&conns, &key);
	if (!info)
		return 0;
	if (info->is_tcp)
		emit_conn_event(PERISCOPE_EV_CONN_CLOSE, id, key.fd, bpf_ktime_get_ns(), info);
	if (info->policy == PERISCOPE_CAPTURE_AMQP_FRAMES)
		bpf_map_delete_elem(&amqp_streams, &key);
	if (info->policy == PERISCOPE_CAPTURE_HTTP2_FRAMES)
		bpf_map_delete_elem(&h2_streams, &key);
	bpf_map_delete_elem(&conns, &key);
	return 0;
}

/* dup2/dup3 silently close the target fd: forget what it was. */
static __always_inline int forget_fd(__s32 fd)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!is_tracked(id >> 32))
		return 0;
	struct periscope_conn_key key = { .pid = id >> 32, .fd = fd };
	bpf_map_delete_elem(&conns, &key);
	bpf_map_delete_elem(&amqp_streams, &key);
	bpf_map_delete_elem(&h2_streams, &key);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_dup2")
int handle_enter_dup2(struct trace_event_raw_sys_enter *ctx)
{
	return forget_fd((__s32)ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_dup3")
int handle_enter_dup3(struct trace_event_raw_sys_enter *ctx)
{
	return forget_fd((__s32)ctx->args[1]);
}

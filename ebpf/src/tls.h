/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* TLS plaintext from uprobes on OpenSSL 3 (libssl, or an executable that
 * embeds it): SSL_read/SSL_write and their _ex forms, sent as data events of
 * the SSL object's socket, so the agent parses them as it parses a plaintext
 * connection. uretprobes are safe here: C libraries, no moving stacks. */
#pragma once

#include <bpf/bpf_tracing.h>
#include "socket_io.h"

static __always_inline int tls_enter(struct pt_regs *ctx, __u8 kind)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!is_tracked(id >> 32))
		return 0;
	struct tls_call call = {
		.ssl = PT_REGS_PARM1(ctx),
		.buf = PT_REGS_PARM2(ctx),
		.out_len = (kind == TLS_CALL_READ_EX || kind == TLS_CALL_WRITE_EX)
				   ? PT_REGS_PARM4(ctx)
				   : 0,
		.ts_enter_ns = bpf_ktime_get_ns(),
		.fd = -1,
		.kind = kind,
	};
	if (kind == TLS_CALL_HANDSHAKE) {
		/* Inside SSL_read/SSL_write already: that call owns the slot. */
		struct tls_call *outer = bpf_map_lookup_elem(&tls_calls, &id);
		if (outer && outer->ssl == call.ssl)
			return 0;
	}
	struct tls_ssl_key key = { .tgid = id >> 32, .ssl = call.ssl };
	__s32 *fd = bpf_map_lookup_elem(&tls_sockets, &key);
	if (fd) {
		/* Only while that fd is still a TLS connection: a freed SSL object's
		 * address may come back for a new connection. */
		struct periscope_conn_key ck = { .pid = id >> 32, .fd = *fd };
		struct periscope_conn_info *info = bpf_map_lookup_elem(&conns, &ck);
		if (info && info->tls)
			call.fd = *fd;
	}
	bpf_map_update_elem(&tls_calls, &id, &call, BPF_ANY);
	return 0;
}

/* An SSL object whose calls made no syscall (its BIO is memory: Node.js
 * feeds it the ciphertext the same thread has just read from the socket):
 * tied to the thread's last TCP read, when that was moments ago. The
 * connection is marked TLS, so its later ciphertext is dropped. -1: none. */
#define TLS_TIE_WINDOW_NS (5 * 1000 * 1000ULL)

static __always_inline __s32 tls_tie_to_last_read(__u64 id, __u64 ssl)
{
	struct pending_io *p = pending_slot(0);
	if (!p || p->last_read_fd1 == 0 || bpf_ktime_get_ns() - p->last_read_ns > TLS_TIE_WINDOW_NS)
		return -1;
	__s32 fd = (__s32)(p->last_read_fd1 - 1);
	struct periscope_conn_info *info = lookup_conn(id >> 32, fd);
	if (!info || !info->is_tcp)
		return -1;
	info->tls = 1;
	struct tls_ssl_key key = { .tgid = id >> 32, .ssl = ssl };
	bpf_map_update_elem(&tls_sockets, &key, &fd, BPF_ANY);
	return fd;
}

static __always_inline int tls_exit(struct pt_regs *ctx, __u8 kind)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_call *slot = bpf_map_lookup_elem(&tls_calls, &id);
	if (!slot || slot->kind != kind)
		return 0;
	struct tls_call call = *slot;
	bpf_map_delete_elem(&tls_calls, &id);
	if (call.fd < 0)
		call.fd = tls_tie_to_last_read(id, call.ssl);
	if (kind == TLS_CALL_HANDSHAKE)
		return 0;

	long ret = PT_REGS_RC(ctx);
	__s64 bytes;
	if (kind == TLS_CALL_READ_EX || kind == TLS_CALL_WRITE_EX) {
		__u64 n = 0;
		if ((int)ret != 1 || bpf_probe_read_user(&n, sizeof(n), (void *)call.out_len))
			return 0;
		bytes = n;
	} else {
		if ((int)ret <= 0)
			return 0;
		bytes = (int)ret;
	}
	if (bytes <= 0)
		return 0;
	if (call.fd < 0) {
		count(PERISCOPE_CNT_TLS_NO_SOCKET);
		return 0;
	}
	struct periscope_conn_info *info = lookup_conn(id >> 32, call.fd);
	if (!info || !info->is_tcp)
		return 0;

	__u32 zero = 0;
	struct scratch_event *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 0;
	struct periscope_data_event *e = &s->ev;
	int reads = kind == TLS_CALL_READ || kind == TLS_CALL_READ_EX;
	fill_header(&e->hdr, PERISCOPE_EV_DATA, id, call.fd, call.ts_enter_ns);
	e->tuple = info->tuple;
	e->bytes = bytes;
	e->direction = reads ? PERISCOPE_DIR_INGRESS : PERISCOPE_DIR_EGRESS;
	e->role = info->role;
	e->syscall = reads ? PERISCOPE_SYS_SSL_READ : PERISCOPE_SYS_SSL_WRITE;
	e->layout = PERISCOPE_LAYOUT_PREFIX;

	__u64 limit = capture_size;
	if (limit > PERISCOPE_MAX_CAPTURE)
		limit = PERISCOPE_MAX_CAPTURE;
	if (limit > (__u64)bytes)
		limit = bytes;
	__u32 captured = 0;
	if (limit > 0 && bpf_probe_read_user(e->data, limit, (void *)call.buf) == 0)
		captured = limit;
	else if (limit > 0)
		count(PERISCOPE_CNT_READ_FAILED);
	e->captured = captured;
	send_data(e, offsetof(struct periscope_data_event, data) + captured);
	count(PERISCOPE_CNT_TLS_DATA_EVENTS);
	return 0;
}

SEC("uprobe")
int handle_ssl_read(struct pt_regs *ctx) { return tls_enter(ctx, TLS_CALL_READ); }
SEC("uretprobe")
int handle_ssl_read_ret(struct pt_regs *ctx) { return tls_exit(ctx, TLS_CALL_READ); }
SEC("uprobe")
int handle_ssl_write(struct pt_regs *ctx) { return tls_enter(ctx, TLS_CALL_WRITE); }
SEC("uretprobe")
int handle_ssl_write_ret(struct pt_regs *ctx) { return tls_exit(ctx, TLS_CALL_WRITE); }
SEC("uprobe")
int handle_ssl_read_ex(struct pt_regs *ctx) { return tls_enter(ctx, TLS_CALL_READ_EX); }
SEC("uretprobe")
int handle_ssl_read_ex_ret(struct pt_regs *ctx) { return tls_exit(ctx, TLS_CALL_READ_EX); }
SEC("uprobe")
int handle_ssl_write_ex(struct pt_regs *ctx) { return tls_enter(ctx, TLS_CALL_WRITE_EX); }
SEC("uretprobe")
int handle_ssl_write_ex_ret(struct pt_regs *ctx) { return tls_exit(ctx, TLS_CALL_WRITE_EX); }
SEC("uprobe")
int handle_ssl_do_handshake(struct pt_regs *ctx) { return tls_enter(ctx, TLS_CALL_HANDSHAKE); }
SEC("uretprobe")
int handle_ssl_do_handshake_ret(struct pt_regs *ctx) { return tls_exit(ctx, TLS_CALL_HANDSHAKE); }

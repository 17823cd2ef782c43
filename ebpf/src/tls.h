/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* TLS plaintext from uprobes on OpenSSL 3 (libssl, or an executable that
 * embeds it): SSL_read/SSL_write and their _ex forms, sent as data events of
 * the SSL object's socket, so the agent parses them as it parses a plaintext
 * connection. uretprobes are safe here: C libraries, no moving stacks. */
#pragma once

#include <bpf/bpf_tracing.h>
#include "socket_io.h"

/* Records `call` (its ssl, buf, kind set) as the call in flight under `key`
 * of process `tgid`, with its socket when the SSL object is tied already. */
static __always_inline void tls_begin(__u64 key, __u32 tgid, struct tls_call *call)
{
	call->ts_enter_ns = bpf_ktime_get_ns();
	call->fd = -1;
	if (call->kind == TLS_CALL_HANDSHAKE) {
		/* Inside SSL_read/SSL_write already: that call owns the slot. */
		struct tls_call *outer = bpf_map_lookup_elem(&tls_calls, &key);
		if (outer && outer->ssl == call->ssl)
			return;
	}
	struct tls_ssl_key sk = { .tgid = tgid, .ssl = call->ssl };
	__s32 *fd = bpf_map_lookup_elem(&tls_sockets, &sk);
	if (fd) {
		/* Only while that fd is still a TLS connection: a freed SSL object's
		 * address may come back for a new connection. */
		struct periscope_conn_key ck = { .pid = tgid, .fd = *fd };
		struct periscope_conn_info *info = bpf_map_lookup_elem(&conns, &ck);
		if (info && info->tls)
			call->fd = *fd;
	}
	bpf_map_update_elem(&tls_calls, &key, call, BPF_ANY);
}

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
		.kind = kind,
	};
	tls_begin(id, id >> 32, &call);
	return 0;
}

/* An SSL object whose calls made no syscall (its BIO is memory: Node.js
 * feeds it the ciphertext the same thread has just read from the socket):
 * tied to the thread's last TCP read, when that came moments before the
 * call began (`entered_ns`: the call that completes a handshake verifies
 * the peer's certificate and derives keys, which can take milliseconds on
 * a loaded host, so its exit is not the measure). The connection is marked
 * TLS, so its later ciphertext is dropped. -1: none. */
#define TLS_TIE_WINDOW_NS (5 * 1000 * 1000ULL)

static __always_inline __s32 tls_tie_to_last_read(__u64 id, __u64 ssl, __u64 entered_ns)
{
	struct pending_io *p = pending_slot(0);
	if (!p || p->last_read_fd1 == 0 || p->last_read_ns + TLS_TIE_WINDOW_NS < entered_ns)
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

/* Sends the `bytes` of plaintext that `call` moved as a data event of its
 * socket (at most the capture size). */
static __always_inline int tls_send_plaintext(__u64 id, const struct tls_call *call, __s64 bytes)
{
	if (bytes <= 0)
		return 0;
	if (call->fd < 0) {
		count(PERISCOPE_CNT_TLS_NO_SOCKET);
		return 0;
	}
	struct periscope_conn_info *info = lookup_conn(id >> 32, call->fd);
	if (!info || !info->is_tcp)
		return 0;

	__u32 zero = 0;
	struct scratch_event *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 0;
	struct periscope_data_event *e = &s->ev;
	int reads = call->kind == TLS_CALL_READ || call->kind == TLS_CALL_READ_EX;
	fill_header(&e->hdr, PERISCOPE_EV_DATA, id, call->fd, call->ts_enter_ns,
		    go_syscall_goid(id));
	e->tuple = info->tuple;
	e->bytes = bytes;
	e->direction = reads ? PERISCOPE_DIR_INGRESS : PERISCOPE_DIR_EGRESS;
	e->role = info->role;
	e->syscall = reads ? PERISCOPE_SYS_SSL_READ : PERISCOPE_SYS_SSL_WRITE;
	e->layout = PERISCOPE_LAYOUT_PREFIX;
	/* h2 over TLS: the plaintext buffer is walked as a socket's would be. */
	if (info->policy == PERISCOPE_CAPTURE_HTTP2_FRAMES &&
	    h2_capture(s, id >> 32, call->fd, e->direction, call->buf, 0, 0, (__u32)bytes)) {
		count(PERISCOPE_CNT_TLS_DATA_EVENTS);
		return 0;
	}

	__u64 limit = capture_size;
	if (limit > PERISCOPE_MAX_CAPTURE)
		limit = PERISCOPE_MAX_CAPTURE;
	if (limit > (__u64)bytes)
		limit = bytes;
	__u32 captured = 0;
	if (limit > 0 && bpf_probe_read_user(e->data, limit, (void *)call->buf) == 0)
		captured = limit;
	else if (limit > 0)
		count(PERISCOPE_CNT_READ_FAILED);
	e->captured = captured;
	h2_classify(info, e);
	send_data(e, offsetof(struct periscope_data_event, data) + captured);
	count(PERISCOPE_CNT_TLS_DATA_EVENTS);
	return 0;
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
		call.fd = tls_tie_to_last_read(id, call.ssl, call.ts_enter_ns);
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
	return tls_send_plaintext(id, &call, bytes);
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

/* Go crypto/tls (a Go process the agent instrumented, `go_procs`): the
 * same calls keyed by goroutine, since a goroutine may move to another
 * thread while it waits for the socket. ABIInternal (amd64): the receiver
 * *tls.Conn in RAX, the slice b in RBX (pointer) and RCX (length); at each
 * RET, n in RAX. Entries at the first instruction (the stack-growth check
 * may run it twice: the second overwrites the first with the same
 * arguments), returns at every RET instruction: never a uretprobe in Go.
 * Read, Write, and serverHandshake / clientHandshake (once per connection,
 * from Read/Write or directly from net/http's server and Transport; not
 * handshakeContext, which every Read and Write calls). The socket is tied
 * by the syscalls made inside these calls, as for OpenSSL (tls_ciphertext). */
/* A function entered twice this close together by one goroutine was
 * restarted by its stack-growth check (runtime.morestack), not called again. */
#define GO_RESTART_WINDOW_NS (1000 * 1000ULL)

static __always_inline __u64 go_tls_key(struct pt_regs *ctx, __u64 id)
{
	__u32 tgid = id >> 32;
	struct periscope_go_offsets *o = bpf_map_lookup_elem(&go_procs, &tgid);
	if (!o)
		return 0;
	__u32 goid = (__u32)go_goid(o, go_g_register(ctx));
	return goid ? go_tls_call_key(tgid, goid) : 0;
}

/* Entry of Read, Write or a handshake. Write sends its plaintext here, when
 * the socket is known (tied by the handshake): at its RET, the answer, read
 * by another goroutine on another CPU (net/http's readLoop), could be sent
 * before the request it answers. */
static __always_inline int go_tls_enter(struct pt_regs *ctx, __u8 kind)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 key = go_tls_key(ctx, id);
	if (!key)
		return 0;
	struct tls_call call = { .ssl = ctx->ax, .buf = ctx->bx, .kind = kind };
	if (kind == TLS_CALL_WRITE) {
		/* The same Write again, within moments: the stack-growth check
		 * restarted the function; it was sent already. */
		struct tls_call *prev = bpf_map_lookup_elem(&tls_calls, &key);
		if (prev && prev->sent && prev->ssl == call.ssl && prev->kind == kind &&
		    bpf_ktime_get_ns() - prev->ts_enter_ns < GO_RESTART_WINDOW_NS)
			return 0;
	}
	tls_begin(key, id >> 32, &call);
	if (kind != TLS_CALL_WRITE || call.fd < 0)
		return 0;
	tls_send_plaintext(id, &call, (__s64)ctx->cx);
	struct tls_call *slot = bpf_map_lookup_elem(&tls_calls, &key);
	if (slot)
		slot->sent = 1;
	return 0;
}

static __always_inline int go_tls_exit(struct pt_regs *ctx, __u8 kind)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 key = go_tls_key(ctx, id);
	if (!key)
		return 0;
	struct tls_call *slot = bpf_map_lookup_elem(&tls_calls, &key);
	if (!slot || slot->kind != kind)
		return 0;
	struct tls_call call = *slot;
	bpf_map_delete_elem(&tls_calls, &key);
	if (kind == TLS_CALL_HANDSHAKE || call.sent)
		return 0;
	return tls_send_plaintext(id, &call, (__s64)ctx->ax);
}

SEC("uprobe")
int handle_go_tls_read(struct pt_regs *ctx) { return go_tls_enter(ctx, TLS_CALL_READ); }
SEC("uprobe")
int handle_go_tls_read_ret(struct pt_regs *ctx) { return go_tls_exit(ctx, TLS_CALL_READ); }
SEC("uprobe")
int handle_go_tls_write(struct pt_regs *ctx) { return go_tls_enter(ctx, TLS_CALL_WRITE); }
SEC("uprobe")
int handle_go_tls_write_ret(struct pt_regs *ctx) { return go_tls_exit(ctx, TLS_CALL_WRITE); }
SEC("uprobe")
int handle_go_tls_handshake(struct pt_regs *ctx) { return go_tls_enter(ctx, TLS_CALL_HANDSHAKE); }
SEC("uprobe")
int handle_go_tls_handshake_ret(struct pt_regs *ctx)
{
	return go_tls_exit(ctx, TLS_CALL_HANDSHAKE);
}

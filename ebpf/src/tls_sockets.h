/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Which socket an SSL object talks through, learned from the syscalls a
 * thread makes while it is inside an SSL call (ebpf/src/tls.h), and the
 * dropping of those syscalls' ciphertext. */
#pragma once

#include "maps.h"

enum tls_call_kind {
	TLS_CALL_READ = 0,      /* SSL_read(ssl, buf, num) -> bytes */
	TLS_CALL_WRITE = 1,     /* SSL_write(ssl, buf, num) -> bytes */
	TLS_CALL_READ_EX = 2,   /* SSL_read_ex(ssl, buf, num, size_t *readbytes) -> 1 */
	TLS_CALL_WRITE_EX = 3,  /* SSL_write_ex(ssl, buf, num, size_t *written) -> 1 */
	TLS_CALL_HANDSHAKE = 4, /* SSL_do_handshake(ssl): only its socket is learned */
};

/* The SSL call a thread is inside, from the uprobe to the uretprobe; in a
 * Go process the crypto/tls call a goroutine is inside (`ssl` is then the
 * *tls.Conn), from its entry to one of its RET instructions. */
struct tls_call {
	__u64 ssl;
	__u64 buf;
	__u64 out_len; /* size_t * of the _ex calls */
	__u64 ts_enter_ns;
	__s32 fd;  /* -1 until known */
	__u8 kind; /* enum tls_call_kind */
	__u8 sent; /* the plaintext was sent at the entry already (Go Write) */
	__u8 _pad[2];
};

/* pid_tgid -> its SSL call in flight, or go_tls_call_key(tgid, goid) -> the
 * crypto/tls call of that goroutine. LRU: a thread that dies inside a call
 * (no uretprobe) ages out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct tls_call);
} tls_calls SEC(".maps");

/* Key of a goroutine's crypto/tls call in `tls_calls`: bit 63 set, so that
 * it is never a pid_tgid (tgids are below 2^22). */
static __always_inline __u64 go_tls_call_key(__u32 tgid, __u32 goid)
{
	return (1ULL << 63) | ((__u64)tgid << 32) | goid;
}

struct tls_ssl_key {
	__u32 tgid;
	__u32 _pad;
	__u64 ssl;
};

/* (tgid, SSL *) -> fd of its socket: for SSL_read answered from bytes the
 * library had already read (no syscall inside that call). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tls_ssl_key);
	__type(value, __s32);
} tls_sockets SEC(".maps");

/* At the exit of a socket syscall of a tracked thread (of goroutine `goid`
 * in an instrumented Go process, else 0): true when its bytes are
 * ciphertext (not to be sent). Inside an SSL call, the call's SSL object is
 * tied to this socket and the connection marked TLS. */
static __always_inline int tls_ciphertext(__u64 id, __u32 goid, __s32 fd,
					  struct periscope_conn_info *info)
{
	struct tls_call *call = bpf_map_lookup_elem(&tls_calls, &id);
	if (!call && goid) {
		__u64 key = go_tls_call_key(id >> 32, goid);
		call = bpf_map_lookup_elem(&tls_calls, &key);
	}
	if (call) {
		call->fd = fd;
		struct tls_ssl_key key = { .tgid = id >> 32, .ssl = call->ssl };
		bpf_map_update_elem(&tls_sockets, &key, &fd, BPF_ANY);
		info->tls = 1;
	} else if (!info->tls) {
		return 0;
	}
	count(PERISCOPE_CNT_TLS_CIPHERTEXT);
	return 1;
}

/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* fd -> TCP connection: walk the current task's fd table (CO-RE) once per fd
 * and cache the answer in `conns`. */
#pragma once

#include "maps.h"

#define PS_AF_INET 2
#define PS_AF_INET6 10
#define PS_S_IFMT 00170000
#define PS_S_IFSOCK 0140000
#define PS_SOCK_STREAM 1
#define PS_IPPROTO_TCP 6

static __always_inline struct sock *sock_of_fd(__s32 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || fd < 0)
		return NULL;
	unsigned int max_fds = BPF_CORE_READ(fdt, max_fds);
	if ((unsigned int)fd >= max_fds)
		return NULL;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = NULL;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return NULL;
	umode_t mode = BPF_CORE_READ(file, f_inode, i_mode);
	if ((mode & PS_S_IFMT) != PS_S_IFSOCK)
		return NULL;
	struct socket *sock = BPF_CORE_READ(file, private_data);
	if (!sock)
		return NULL;
	return BPF_CORE_READ(sock, sk);
}

static __always_inline void map_v4(__u8 *dst, __be32 addr)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &addr, 4);
}

/* Fills `info` for fd; is_tcp = 0 when fd is anything but an IPv4/IPv6 TCP socket. */
static __always_inline void describe_fd(__s32 fd, struct periscope_conn_info *info)
{
	struct sock *sk = sock_of_fd(fd);
	info->is_tcp = 0;
	if (!sk)
		return;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	__u16 type = BPF_CORE_READ(sk, sk_type);
	__u16 proto = BPF_CORE_READ(sk, sk_protocol);
	if (type != PS_SOCK_STREAM || proto != PS_IPPROTO_TCP)
		return;
	if (family == PS_AF_INET) {
		map_v4(info->tuple.local_addr, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
		map_v4(info->tuple.remote_addr, BPF_CORE_READ(sk, __sk_common.skc_daddr));
	} else if (family == PS_AF_INET6) {
		BPF_CORE_READ_INTO(&info->tuple.local_addr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&info->tuple.remote_addr, sk, __sk_common.skc_v6_daddr);
	} else {
		return;
	}
	info->tuple.family = family;
	info->tuple.local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	info->tuple.remote_port = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	/* Same addresses in two namespaces are two different connections. */
	info->tuple.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	info->is_tcp = 1;
}

/* Cached description of (tgid, fd); NULL only when the cache cannot hold it. */
static __always_inline struct periscope_conn_info *lookup_conn(__u32 tgid, __s32 fd)
{
	struct periscope_conn_key key = { .pid = tgid, .fd = fd };
	struct periscope_conn_info *info = bpf_map_lookup_elem(&conns, &key);
	if (info)
		return info;
	struct periscope_conn_info fresh = {};
	describe_fd(fd, &fresh);
	fresh.role = PERISCOPE_ROLE_UNKNOWN;
	if (bpf_map_update_elem(&conns, &key, &fresh, BPF_ANY)) {
		count(PERISCOPE_CNT_CONN_FULL);
		return NULL;
	}
	return bpf_map_lookup_elem(&conns, &key);
}

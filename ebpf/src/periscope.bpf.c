/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* The periscope kernel object: one translation unit, one file per concern. */
#include "socket_io.h"
#include "process.h"
#include "event_loop.h"
#include "libuv.h"
#include "asyncio.h"
#include "tls.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Never used at run time: puts every shared struct in the object's BTF, where
 * a test compares its layout with the agent's generated Rust types. */
struct wire_types {
	struct periscope_conn_event conn;
	struct periscope_proc_event proc;
	struct periscope_async_event async;
	struct periscope_event_header header;
	struct periscope_conn_info conn_info;
	struct periscope_segments segments;
	struct periscope_segment segment;
	struct periscope_goroutine_event goroutine;
	struct periscope_go_offsets go_offsets;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wire_types);
} wire_types SEC(".maps");

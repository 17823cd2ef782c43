/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* AMQP 0-9-1 frame capture (PERISCOPE_CAPTURE_AMQP_FRAMES). A consumer that
 * falls behind reads many deliveries at once; a prefix of the read holds only
 * the first few. On connections the agent classified as AMQP clients, the
 * exit of a read walks the frames of the buffer
 *     type (1) | channel (2) | size (4) | payload (size) | 0xCE
 * and copies of each frame only what the agent parses (events.h: method
 * arguments, content header properties, the first body bytes), as segments of
 * one or more data events. Every frame-end octet that lies in the buffer is
 * checked; a read whose frames do not check out is sent as a prefix, as
 * without the policy. Reads cut frames anywhere: where the last frame of a
 * read stands is kept per connection (`amqp_streams`), so the next read is
 * walked from its first byte. When that is not known (the policy was just
 * set, a frame did not check out), reads are sent as prefixes until one
 * starts with frames that check out. */
#pragma once

#include "segments.h"

#define AMQP_FRAME_METHOD 1
#define AMQP_FRAME_HEADER 2
#define AMQP_FRAME_BODY 3
#define AMQP_FRAME_HEARTBEAT 8
#define AMQP_FRAME_END 0xCE
#define AMQP_HEADER_LEN 7
/* Header bytes plus the class and method ids (or content header class and
 * weight) that make a frame start plausible. */
#define AMQP_PROBE_LEN 11
/* Same sanity bound on a frame's payload as the agent's framer. */
#define AMQP_MAX_FRAME_SIZE (128 << 20)

/* Where a connection's incoming frames stand between two reads. */
struct amqp_stream {
	__u32 pos;    /* bytes of the frame in progress already read (0: none) */
	__u32 len;    /* its length: header, payload, end octet */
	__u32 want;   /* its first bytes to copy */
	__u8 aligned; /* where the next read starts in the frames is known */
	__u8 hdr_len; /* bytes of a frame header cut by the end of the last read */
	__u8 _pad[2];
	/* That header, completed in place by the next read (room for a masked
	 * offset plus AMQP_PROBE_LEN bytes). */
	__u8 hdr[24];
};

/* (tgid, fd) -> the read side of an AMQP connection. Only connections with
 * the AMQP policy have an entry; close, accept/connect and dup2 drop it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct periscope_conn_key);
	__type(value, struct amqp_stream);
} amqp_streams SEC(".maps");

/* Bytes of the read copied at once for the walk to read frame headers from:
 * one helper call per window instead of one per frame (power of two). */
#define AMQP_WINDOW 4096

/* Per-CPU scratch of one read's walk: the segments it found, copied once the
 * walk checked out, and the window it reads headers from. */
struct amqp_scratch {
	__u32 offset[PERISCOPE_AMQP_MAX_SEGMENTS];
	__u32 len[PERISCOPE_AMQP_MAX_SEGMENTS];
	/* room for a masked offset plus the bytes read there */
	__u8 window[AMQP_WINDOW + AMQP_PROBE_LEN + 1];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct amqp_scratch);
} amqp_scratch SEC(".maps");

enum amqp_walk_status {
	AMQP_WALK_MORE = 0,
	AMQP_WALK_DONE = 1,   /* every frame checked out to the end of the read */
	AMQP_WALK_BAD = 2,    /* a frame did not: not where we thought */
	AMQP_WALK_FAILED = 3, /* the buffer could not be read, or too many frames */
};

/* One read's walk: bpf_loop's context. */
struct amqp_walk {
	__u64 buf;
	__u32 len;       /* bytes read */
	__u32 at;        /* offset of the next frame; the byte before it ends a frame */
	__u32 seg_start; /* segment being grown: [seg_start, seg_end) */
	__u32 seg_end;
	__u32 nseg;      /* segments recorded in amqp_scratch */
	__u32 checked;   /* frame-end octets verified */
	__u32 win_start; /* bytes [win_start, win_start + win_len) are in the window */
	__u32 win_len;
	/* The frame the read ends in, for the next read. */
	__u32 next_pos;
	__u32 next_len;
	__u32 next_want;
	__u8 cut[8]; /* a header cut by the end of the read */
	__u8 cut_len;
	__u8 status; /* enum amqp_walk_status */
	__u8 segs_full;
	__u8 _pad;
};

/* Class ids of AMQP 0-9-1 methods (connection, channel, exchange, queue,
 * basic, confirm, tx). */
static __always_inline int amqp_known_class(__u16 class)
{
	return class == 10 || class == 20 || class == 40 || class == 50 || class == 60 ||
	       class == 85 || class == 90;
}

/* Length of the frame whose header (and up to 4 payload bytes: `have` in
 * all) is at h, and in *want how many of its first bytes to copy; 0 when no
 * frame plausibly starts there. */
static __always_inline __u32 amqp_frame(const __u8 *h, __u32 have, __u32 *want)
{
	__u8 kind = h[0];
	__u16 channel = ((__u16)h[1] << 8) | h[2];
	__u32 size = ((__u32)h[3] << 24) | ((__u32)h[4] << 16) | ((__u32)h[5] << 8) | h[6];
	__u32 keep;
	if (size > AMQP_MAX_FRAME_SIZE)
		return 0;
	switch (kind) {
	case AMQP_FRAME_METHOD:
		if (size < 4)
			return 0;
		if (have >= 9) {
			__u16 class = ((__u16)h[7] << 8) | h[8];
			if (!amqp_known_class(class) || (class == 10) != (channel == 0))
				return 0;
		}
		keep = PERISCOPE_AMQP_METHOD_KEEP;
		break;
	case AMQP_FRAME_HEADER:
		/* class 60 (basic), weight 0 */
		if (size < 14 || channel == 0)
			return 0;
		if (have >= 11 && (h[7] != 0 || h[8] != 60 || h[9] != 0 || h[10] != 0))
			return 0;
		keep = PERISCOPE_AMQP_HEADER_KEEP;
		break;
	case AMQP_FRAME_BODY:
		if (channel == 0)
			return 0;
		keep = PERISCOPE_AMQP_BODY_KEEP;
		break;
	case AMQP_FRAME_HEARTBEAT:
		if (channel != 0 || size != 0)
			return 0;
		keep = 0;
		break;
	default:
		return 0;
	}
	__u32 len = size + AMQP_HEADER_LEN + 1;
	__u32 w = AMQP_HEADER_LEN + (size < keep ? size : keep);
	/* Only the end octet would be left out: take the whole frame, so that
	 * it joins the next frame's bytes in one segment. */
	if (w + 1 >= len)
		w = len;
	*want = w;
	return len;
}

static __always_inline void amqp_close_segment(struct amqp_walk *w)
{
	if (w->seg_end == w->seg_start)
		return;
	__u32 zero = 0;
	struct amqp_scratch *s = bpf_map_lookup_elem(&amqp_scratch, &zero);
	if (!s || w->nseg >= PERISCOPE_AMQP_MAX_SEGMENTS) {
		w->segs_full = 1;
	} else {
		__u32 i = w->nseg & (PERISCOPE_AMQP_MAX_SEGMENTS - 1);
		s->offset[i] = w->seg_start;
		s->len[i] = w->seg_end - w->seg_start;
		w->nseg++;
	}
	w->seg_start = w->seg_end;
}

/* Bytes [from, to) of the read are to be copied. */
static __always_inline void amqp_add_range(struct amqp_walk *w, __u32 from, __u32 to)
{
	if (from >= to)
		return;
	if (w->seg_end == from && w->seg_end > w->seg_start &&
	    to - w->seg_start <= PERISCOPE_MAX_SEGMENT) {
		w->seg_end = to;
		return;
	}
	amqp_close_segment(w);
	w->seg_start = from;
	w->seg_end = to;
}

/* One frame of the read (bpf_loop callback): 0 to go on, 1 when done. */
static long amqp_walk_frame(__u64 index, void *ctx)
{
	struct amqp_walk *w = ctx;
	__u32 zero = 0;
	struct amqp_scratch *sc = bpf_map_lookup_elem(&amqp_scratch, &zero);
	if (!sc) {
		w->status = AMQP_WALK_FAILED;
		return 1;
	}
	__u32 at = w->at, len = w->len;
	/* Bytes wanted: the end octet of the frame before (when at > 0), then
	 * the frame's first AMQP_PROBE_LEN bytes, as far as the read goes. */
	__u32 from = at > 0 ? at - 1 : 0;
	__u32 to = len;
	if (at < len && len - at > AMQP_PROBE_LEN)
		to = at + AMQP_PROBE_LEN;
	if (from < w->win_start || to > w->win_start + w->win_len) {
		__u32 n = len - from < AMQP_WINDOW ? len - from : AMQP_WINDOW;
		if (bpf_probe_read_user(sc->window, n, (void *)(w->buf + from))) {
			w->status = AMQP_WALK_FAILED;
			return 1;
		}
		w->win_start = from;
		w->win_len = n;
	}
	const __u8 *b = sc->window + ((from - w->win_start) & (AMQP_WINDOW - 1));
	if (at > 0) {
		if (b[0] != AMQP_FRAME_END) {
			w->status = AMQP_WALK_BAD;
			return 1;
		}
		w->checked++;
		b++;
	}
	if (at >= len) {
		/* The read ended with that end octet. */
		w->status = AMQP_WALK_DONE;
		return 1;
	}
	__u32 have = to - at;
	if (have < AMQP_HEADER_LEN) {
		/* The header continues in the next read. */
		amqp_add_range(w, at, len);
#pragma unroll
		for (int i = 0; i < AMQP_HEADER_LEN - 1; i++)
			w->cut[i] = b[i];
		w->cut_len = have;
		w->status = AMQP_WALK_DONE;
		return 1;
	}
	__u32 want = 0;
	__u32 flen = amqp_frame(b, have, &want);
	if (!flen) {
		w->status = AMQP_WALK_BAD;
		return 1;
	}
	__u64 end = (__u64)at + want;
	amqp_add_range(w, at, end < len ? (__u32)end : len);
	__u64 next = (__u64)at + flen;
	if (next > len) {
		/* The frame continues in the next read. */
		w->next_pos = len - at;
		w->next_len = flen;
		w->next_want = want;
		w->status = AMQP_WALK_DONE;
		return 1;
	}
	w->at = (__u32)next;
	return 0;
}

/* Copying the segments into data events (bpf_loop context). */
struct amqp_emit {
	__u64 buf;
	__u32 nseg;
	__u32 _pad;
	struct seg_emit out;
};

/* One segment (bpf_loop callback). */
static long amqp_emit_segment(__u64 index, void *ctx)
{
	struct amqp_emit *m = ctx;
	__u32 zero = 0;
	struct amqp_scratch *segs = bpf_map_lookup_elem(&amqp_scratch, &zero);
	struct scratch_event *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!segs || !s || index >= m->nseg)
		return 1;
	__u32 i = index & (PERISCOPE_AMQP_MAX_SEGMENTS - 1);
	__u32 off = segs->offset[i], len = segs->len[i];
	return seg_emit(&m->out, s, off, m->buf + off, len, PERISCOPE_AMQP_MAX_EVENTS,
			PERISCOPE_CNT_AMQP_TRUNCATED);
}

/* The read's user buffer when it is contiguous: read/recvfrom, or
 * readv/recvmsg with one iovec. 0 otherwise. */
static __always_inline __u64 amqp_read_buffer(struct pending_io *args)
{
	struct ps_iovec iov;
	if (args->kind == PENDING_PLAIN)
		return args->buf;
	__u64 iov_ptr = args->buf;
	__u64 iovcnt = args->iovcnt;
	if (args->kind == PENDING_MSG) {
		struct user_msghdr msg;
		if (bpf_probe_read_user(&msg, sizeof(msg), (void *)args->buf))
			return 0;
		iov_ptr = (__u64)msg.msg_iov;
		iovcnt = msg.msg_iovlen;
	} else if (args->kind != PENDING_IOV) {
		return 0;
	}
	if (iovcnt != 1 || bpf_probe_read_user(&iov, sizeof(iov), (void *)iov_ptr))
		return 0;
	return iov.base;
}

/* "AMQP" 0 0 9 1, the protocol header a client writes first, as a
 * little-endian u64. */
#define AMQP_PROTOCOL_HEADER 0x0109000050514d41ULL

/* A write that starts with the AMQP 0-9-1 protocol header makes the
 * connection an AMQP client's: its reads are walked from the server's first
 * frame on, without waiting for the agent to classify the connection (an
 * agent busy attaching uprobes read the first burst of deliveries too late,
 * as a prefix). The agent's own classification agrees and may change it. */
static __always_inline void amqp_classify_write(struct periscope_conn_info *info,
						const struct periscope_data_event *e)
{
	if (info->policy != PERISCOPE_CAPTURE_PREFIX || e->captured < 8)
		return;
	__u64 head;
	__builtin_memcpy(&head, e->data, sizeof(head));
	if (head == AMQP_PROTOCOL_HEADER)
		info->policy = PERISCOPE_CAPTURE_AMQP_FRAMES;
}

/* Captures a read of `len` bytes on an AMQP connection as segments; the
 * event header in `s` is filled. Returns 0 when the read is to be captured
 * as a prefix instead. */
static __always_inline int amqp_capture(struct scratch_event *s, struct pending_io *args,
					__u32 tgid, __u32 len)
{
	struct periscope_conn_key key = { .pid = tgid, .fd = args->fd };
	struct amqp_stream *st = bpf_map_lookup_elem(&amqp_streams, &key);
	if (!st) {
		struct amqp_stream fresh = {};
		bpf_map_update_elem(&amqp_streams, &key, &fresh, BPF_NOEXIST);
		st = bpf_map_lookup_elem(&amqp_streams, &key);
		if (!st) {
			count(PERISCOPE_CNT_AMQP_UNALIGNED);
			return 0;
		}
	}
	__u64 buf = amqp_read_buffer(args);
	if (!buf) {
		st->aligned = 0;
		count(PERISCOPE_CNT_AMQP_UNALIGNED);
		return 0;
	}
	if (!st->aligned) {
		st->pos = 0;
		st->hdr_len = 0;
	}
	struct amqp_walk w = { .buf = buf, .len = len };

	if (st->hdr_len) {
		/* Complete the header the last read cut, in place. */
		__u32 have = st->hdr_len & 7;
		__u32 need = AMQP_PROBE_LEN - have;
		__u32 n = len < need ? len : need;
		if (n > AMQP_PROBE_LEN)
			n = AMQP_PROBE_LEN;
		if (bpf_probe_read_user(st->hdr + have, n, (void *)buf)) {
			st->aligned = 0;
			count(PERISCOPE_CNT_AMQP_UNALIGNED);
			return 0;
		}
		if (have + n < AMQP_HEADER_LEN) {
			st->hdr_len = have + n;
			amqp_add_range(&w, 0, len);
			goto emit;
		}
		__u32 want = 0;
		__u32 flen = amqp_frame(st->hdr, have + n, &want);
		if (!flen)
			goto bad;
		st->hdr_len = 0;
		st->pos = have;
		st->len = flen;
		st->want = want;
	}
	if (st->pos) {
		/* The frame in progress continues here. */
		__u32 rest = st->len - st->pos;
		if (st->want > st->pos)
			amqp_add_range(&w, 0, st->want - st->pos < len ? st->want - st->pos : len);
		if (rest > len) {
			st->pos += len;
			goto emit;
		}
		w.at = rest;
	}
	bpf_loop(PERISCOPE_AMQP_MAX_FRAMES, amqp_walk_frame, &w, 0);
	if (w.status == AMQP_WALK_BAD ||
	    (!st->aligned && (w.status != AMQP_WALK_DONE || !w.checked)))
		goto bad;
	if (w.status != AMQP_WALK_DONE) {
		/* Too many frames, or unreadable: where the next read starts is unknown. */
		st->aligned = 0;
		count(PERISCOPE_CNT_AMQP_TRUNCATED);
	} else {
		st->aligned = 1;
		st->pos = w.next_pos;
		st->len = w.next_len;
		st->want = w.next_want;
		st->hdr_len = w.cut_len;
#pragma unroll
		for (int i = 0; i < AMQP_HEADER_LEN - 1; i++)
			st->hdr[i] = w.cut[i];
	}
emit:
	amqp_close_segment(&w);
	if (w.segs_full)
		count(PERISCOPE_CNT_AMQP_TRUNCATED);
	struct amqp_emit m = { .buf = buf, .nseg = w.nseg };
	seg_begin(&m.out, s);
	bpf_loop(PERISCOPE_AMQP_MAX_SEGMENTS, amqp_emit_segment, &m, 0);
	seg_flush(&m.out, s, len);
	return 1;
bad:
	st->aligned = 0;
	count(PERISCOPE_CNT_AMQP_UNALIGNED);
	return 0;
}

/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* HTTP/2 frame capture (PERISCOPE_CAPTURE_HTTP2_FRAMES). One syscall of an
 * HTTP/2 connection often moves many frames: a gRPC client reads kilobytes
 * of a server stream's DATA at once, the trailers (grpc-status) last, and
 * a prefix of the syscall holds only the first frames. On connections the
 * agent classified as HTTP/2, each read and write (and each SSL_read /
 * SSL_write of TLS plaintext) walks the frames
 *     length (3) | type (1) | flags (1) | stream (4) | payload (length)
 * and copies every frame header, header block fragments (HEADERS,
 * CONTINUATION, PUSH_PROMISE), the first bytes of control frames, nothing
 * of DATA payloads: the agent needs only their length and flags. The pieces
 * go out as segments of one or more data events (segments.h).
 *
 * The walk runs over the syscall's bytes as the process sees them: one
 * buffer, or an iovec array (gRPC writes a header block as one iovec per
 * name and value), a frame header cut by an iovec's end read on in the
 * next one. Where the last frame of a syscall stands is kept per
 * connection and direction (`h2_streams`), so the next syscall is walked
 * from its first byte. Every frame header must be one the agent's parser
 * accepts (frame.rs, FrameHeader::plausible); when one is not, or where the
 * frames stand is not known (the policy was just set), syscalls are sent as
 * prefixes until one starts with frames that check out. */
#pragma once

#include "segments.h"

#define H2_HEADER_LEN 9
#define H2_DATA 0x0
#define H2_HEADERS 0x1
#define H2_PRIORITY 0x2
#define H2_RST_STREAM 0x3
#define H2_SETTINGS 0x4
#define H2_PUSH_PROMISE 0x5
#define H2_PING 0x6
#define H2_GOAWAY 0x7
#define H2_WINDOW_UPDATE 0x8
#define H2_CONTINUATION 0x9
/* Payload bytes copied per step, so that every segment fits in one event. */
#define H2_COPY_STEP 2048

/* Where one direction's frames stand between two syscalls. */
struct h2_direction {
	__u32 left;   /* payload bytes of the frame in progress still to come */
	__u32 keep;   /* of those, the first ones to copy */
	__u8 aligned; /* where the next syscall starts in the frames is known */
	__u8 hdr_len; /* bytes of a frame header cut by the end of the last syscall */
	__u8 _pad[2];
	__u8 hdr[12]; /* those bytes */
};

/* (tgid, fd) -> both directions of an HTTP/2 connection (index: enum
 * periscope_direction). Only connections with the HTTP/2 policy have an
 * entry; close, accept/connect and dup2 drop it. */
struct h2_stream {
	struct h2_direction dir[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct periscope_conn_key);
	__type(value, struct h2_stream);
} h2_streams SEC(".maps");

/* Per-CPU scratch of one syscall's walk: the segments it found (offset in
 * the syscall, length, user address), and the frame header being read. */
struct h2_scratch {
	__u32 offset[PERISCOPE_H2_MAX_SEGMENTS];
	__u32 len[PERISCOPE_H2_MAX_SEGMENTS];
	__u64 addr[PERISCOPE_H2_MAX_SEGMENTS];
	/* room for a masked offset plus a header */
	__u8 hdr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct h2_scratch);
} h2_scratch SEC(".maps");

enum h2_walk_status {
	H2_WALK_MORE = 0,
	H2_WALK_DONE = 1,   /* every frame checked out to the end of the syscall */
	H2_WALK_BAD = 2,    /* a frame header did not: not where we thought */
	H2_WALK_FAILED = 3, /* an iovec or buffer could not be read */
};

/* One syscall's walk: bpf_loop's context. The bytes come in pieces (one
 * buffer, or iovecs); `addr` 0 is a piece without a user buffer (sendfile):
 * only DATA payload may be skipped through it. */
struct h2_walk {
	__u64 iov_ptr;  /* the iovec array; 0: one buffer */
	__u64 addr;     /* user address of the current piece */
	__u64 seg_addr; /* user address of seg_start */
	__u32 iovcnt;
	__u32 next_iov; /* index of the next iovec to read */
	__u32 base;     /* offset in the syscall of the piece's first byte */
	__u32 plen;     /* bytes of the piece the syscall moved */
	__u32 pos;      /* bytes of the piece walked */
	__u32 total;    /* bytes the syscall moved */
	__u32 left;     /* as struct h2_direction */
	__u32 keep;
	__u32 seg_start; /* segment being grown: [seg_start, seg_end) */
	__u32 seg_end;
	__u32 nseg;    /* segments recorded in h2_scratch */
	__u32 checked; /* frame headers verified */
	__u8 hdr_len;
	__u8 status; /* enum h2_walk_status */
	__u8 segs_full;
	__u8 _pad;
};

/* Is the header at h one the agent's parser accepts (FrameHeader::plausible)?
 * Its payload length in *len, and in *keep how many of its first bytes to copy. */
static __always_inline int h2_frame(const __u8 *h, __u32 *len, __u32 *keep)
{
	__u32 n = ((__u32)h[0] << 16) | ((__u32)h[1] << 8) | h[2];
	__u8 kind = h[3];
	__u32 stream = ((__u32)h[5] << 24) | ((__u32)h[6] << 16) | ((__u32)h[7] << 8) | h[8];
	__u32 k = PERISCOPE_H2_CONTROL_KEEP;
	if (stream & 0x80000000)
		return 0;
	switch (kind) {
	case H2_DATA:
		if (!stream)
			return 0;
		k = 0;
		break;
	case H2_HEADERS:
	case H2_CONTINUATION:
	case H2_PUSH_PROMISE:
		if (!stream)
			return 0;
		k = PERISCOPE_H2_HEADERS_KEEP;
		break;
	case H2_PRIORITY:
	case H2_RST_STREAM:
		if (!stream)
			return 0;
		break;
	case H2_SETTINGS:
		if (stream || n % 6)
			return 0;
		break;
	case H2_PING:
		if (stream || n != 8)
			return 0;
		break;
	case H2_GOAWAY:
		if (stream || n < 8)
			return 0;
		break;
	case H2_WINDOW_UPDATE:
		if (n != 4)
			return 0;
		break;
	default:
		return 0;
	}
	*len = n;
	*keep = n < k ? n : k;
	return 1;
}

static __always_inline void h2_close_segment(struct h2_walk *w)
{
	if (w->seg_end == w->seg_start)
		return;
	__u32 zero = 0;
	struct h2_scratch *s = bpf_map_lookup_elem(&h2_scratch, &zero);
	if (!s || w->nseg >= PERISCOPE_H2_MAX_SEGMENTS) {
		w->segs_full = 1;
	} else {
		__u32 i = w->nseg & (PERISCOPE_H2_MAX_SEGMENTS - 1);
		s->offset[i] = w->seg_start;
		s->len[i] = w->seg_end - w->seg_start;
		s->addr[i] = w->seg_addr;
		w->nseg++;
	}
	w->seg_start = w->seg_end;
}

/* Bytes [at, at + n) of the syscall, at user address `addr`, are to be
 * copied: grown into the current segment when they follow it in the
 * syscall and in memory (the same piece). */
static __always_inline void h2_add_range(struct h2_walk *w, __u32 at, __u32 n, __u64 addr)
{
	if (!n)
		return;
	if (w->seg_end == at && w->seg_end > w->seg_start &&
	    w->seg_addr + (w->seg_end - w->seg_start) == addr &&
	    at + n - w->seg_start <= PERISCOPE_MAX_SEGMENT) {
		w->seg_end = at + n;
		return;
	}
	h2_close_segment(w);
	w->seg_start = at;
	w->seg_end = at + n;
	w->seg_addr = addr;
}

/* Moves the walk to its next iovec: 0 when there is none to read. */
static __always_inline int h2_next_piece(struct h2_walk *w)
{
	if (!w->iov_ptr || w->next_iov >= w->iovcnt || w->next_iov >= PERISCOPE_H2_MAX_IOV)
		return 0;
	struct ps_iovec iov;
	if (bpf_probe_read_user(&iov, sizeof(iov),
				(void *)(w->iov_ptr + (__u64)w->next_iov * sizeof(iov))))
		return 0;
	w->next_iov++;
	w->base += w->plen;
	__u32 rest = w->total - w->base;
	w->addr = iov.base;
	w->plen = iov.len < rest ? (__u32)iov.len : rest;
	w->pos = 0;
	return 1;
}

/* One step of the walk (bpf_loop callback): the next piece, a frame header
 * (or what of it this piece holds), or a stretch of payload. 0 to go on,
 * 1 when done. */
static long h2_walk_step(__u64 index, void *ctx)
{
	struct h2_walk *w = ctx;
	__u32 zero = 0;
	struct h2_scratch *sc = bpf_map_lookup_elem(&h2_scratch, &zero);
	if (!sc) {
		w->status = H2_WALK_FAILED;
		return 1;
	}
	if (w->pos >= w->plen) {
		if (w->base + w->plen >= w->total) {
			w->status = H2_WALK_DONE;
			return 1;
		}
		if (!h2_next_piece(w)) {
			w->status = H2_WALK_FAILED;
			return 1;
		}
		return 0;
	}
	__u32 avail = w->plen - w->pos;
	__u32 at = w->base + w->pos;
	__u64 src = w->addr + w->pos;
	if (w->left == 0) {
		/* A frame header, or the rest of one. */
		__u32 have = w->hdr_len;
		if (have >= H2_HEADER_LEN || !w->addr) {
			w->status = H2_WALK_BAD;
			return 1;
		}
		__u32 n = H2_HEADER_LEN - have;
		if (n > avail)
			n = avail;
		if (n > H2_HEADER_LEN)
			n = H2_HEADER_LEN;
		if (bpf_probe_read_user(sc->hdr + (have & 7), n, (void *)src)) {
			w->status = H2_WALK_FAILED;
			return 1;
		}
		h2_add_range(w, at, n, src);
		w->pos += n;
		w->hdr_len = have + n;
		if (w->hdr_len < H2_HEADER_LEN)
			return 0;
		w->hdr_len = 0;
		__u32 len = 0, keep = 0;
		if (!h2_frame(sc->hdr, &len, &keep)) {
			w->status = H2_WALK_BAD;
			return 1;
		}
		w->checked++;
		w->left = len;
		w->keep = keep;
		return 0;
	}
	if (w->keep) {
		if (!w->addr) {
			w->status = H2_WALK_BAD;
			return 1;
		}
		__u32 c = w->keep < avail ? w->keep : avail;
		if (c > H2_COPY_STEP)
			c = H2_COPY_STEP;
		h2_add_range(w, at, c, src);
		w->keep -= c;
		w->left -= c;
		w->pos += c;
		return 0;
	}
	__u32 n = w->left < avail ? w->left : avail;
	w->left -= n;
	w->pos += n;
	return 0;
}

/* Copying the segments into data events (bpf_loop context). */
struct h2_emit {
	__u32 nseg;
	__u32 _pad;
	struct seg_emit out;
};

static long h2_emit_segment(__u64 index, void *ctx)
{
	struct h2_emit *m = ctx;
	__u32 zero = 0;
	struct h2_scratch *segs = bpf_map_lookup_elem(&h2_scratch, &zero);
	struct scratch_event *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!segs || !s || index >= m->nseg)
		return 1;
	__u32 i = index & (PERISCOPE_H2_MAX_SEGMENTS - 1);
	return seg_emit(&m->out, s, segs->offset[i], segs->addr[i], segs->len[i],
			PERISCOPE_H2_MAX_EVENTS, PERISCOPE_CNT_H2_TRUNCATED);
}

/* Captures `total` bytes moved in `direction` on an HTTP/2 connection as
 * segments; the event header in `s` is filled. The bytes are `buf`, or,
 * with `iov_ptr`, `iovcnt` iovecs; neither: no user buffer (sendfile).
 * Returns 0 when the syscall is to be captured as a prefix instead. */
static __always_inline int h2_capture(struct scratch_event *s, __u32 tgid, __s32 fd, __u8 direction,
				      __u64 buf, __u64 iov_ptr, __u32 iovcnt, __u32 total)
{
	struct periscope_conn_key key = { .pid = tgid, .fd = fd };
	struct h2_stream *st = bpf_map_lookup_elem(&h2_streams, &key);
	if (!st) {
		struct h2_stream fresh = {};
		bpf_map_update_elem(&h2_streams, &key, &fresh, BPF_NOEXIST);
		st = bpf_map_lookup_elem(&h2_streams, &key);
		if (!st) {
			count(PERISCOPE_CNT_H2_UNALIGNED);
			return 0;
		}
	}
	__u32 zero = 0;
	struct h2_scratch *sc = bpf_map_lookup_elem(&h2_scratch, &zero);
	if (!sc)
		return 0;
	struct h2_direction *d = &st->dir[direction & 1];
	struct h2_walk w = { .iov_ptr = iov_ptr, .iovcnt = iovcnt, .total = total };
	if (d->aligned) {
		w.left = d->left;
		w.keep = d->keep;
		w.hdr_len = d->hdr_len < H2_HEADER_LEN ? d->hdr_len : 0;
		__builtin_memcpy(sc->hdr, d->hdr, H2_HEADER_LEN);
	}
	if (!iov_ptr) {
		/* One piece: the buffer (or none). */
		w.addr = buf;
		w.plen = total;
	}
	bpf_loop(PERISCOPE_H2_MAX_STEPS, h2_walk_step, &w, 0);
	if (w.status == H2_WALK_BAD || (!d->aligned && (w.status != H2_WALK_DONE || !w.checked))) {
		d->aligned = 0;
		count(PERISCOPE_CNT_H2_UNALIGNED);
		return 0;
	}
	if (w.status != H2_WALK_DONE) {
		/* Too many steps, or unreadable: where the next syscall starts is
		 * unknown; what was walked is sent. */
		d->aligned = 0;
		count(PERISCOPE_CNT_H2_TRUNCATED);
	} else {
		d->aligned = 1;
		d->left = w.left;
		d->keep = w.keep;
		d->hdr_len = w.hdr_len;
		__builtin_memcpy(d->hdr, sc->hdr, H2_HEADER_LEN);
	}
	h2_close_segment(&w);
	if (w.segs_full)
		count(PERISCOPE_CNT_H2_TRUNCATED);
	struct h2_emit m = { .nseg = w.nseg };
	seg_begin(&m.out, s);
	bpf_loop(PERISCOPE_H2_MAX_SEGMENTS, h2_emit_segment, &m, 0);
	seg_flush(&m.out, s, total);
	return 1;
}

/* The first 16 bytes of the client connection preface
 * "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", as two little-endian u64. */
#define H2_PREFACE_0 0x5448202a20495250ULL /* "PRI * HT" */
#define H2_PREFACE_1 0x0a0d302e322f5054ULL /* "TP/2.0\r\n" */

/* A prefix-captured syscall (or TLS plaintext) that starts with the client
 * preface, written by the client or read by the server, makes the
 * connection HTTP/2 at once: the syscalls after it are walked frame by
 * frame (from the first one whose frames check out) without waiting for
 * the agent to classify the connection, which a short-lived client (one
 * curl) may close first. The agent's own classification agrees. */
static __always_inline void h2_classify(struct periscope_conn_info *info,
					const struct periscope_data_event *e)
{
	if (info->policy != PERISCOPE_CAPTURE_PREFIX || e->captured < 16)
		return;
	__u64 head[2];
	__builtin_memcpy(head, e->data, sizeof(head));
	if (head[0] == H2_PREFACE_0 && head[1] == H2_PREFACE_1)
		info->policy = PERISCOPE_CAPTURE_HTTP2_FRAMES;
}

/* The syscall's bytes as h2_capture takes them (pending_io of socket_io.h). */
static __always_inline int h2_capture_io(struct scratch_event *s, struct pending_io *args,
					 __u32 tgid, __u32 total)
{
	__u64 iov_ptr = 0, buf = 0;
	__u32 iovcnt = 0;
	switch (args->kind) {
	case PENDING_PLAIN:
		buf = args->buf;
		break;
	case PENDING_IOV:
		iov_ptr = args->buf;
		iovcnt = args->iovcnt;
		break;
	case PENDING_MSG: {
		struct user_msghdr msg;
		if (bpf_probe_read_user(&msg, sizeof(msg), (void *)args->buf)) {
			count(PERISCOPE_CNT_READ_FAILED);
			return 0;
		}
		iov_ptr = (__u64)msg.msg_iov;
		iovcnt = msg.msg_iovlen;
		break;
	}
	case PENDING_NONE:
		break;
	default:
		return 0;
	}
	if (iov_ptr && !iovcnt)
		return 0;
	return h2_capture(s, tgid, args->fd, args->direction, buf, iov_ptr, iovcnt, total);
}

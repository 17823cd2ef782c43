/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Sending the segments a frame walk chose (amqp_capture.h, h2_capture.h) as
 * one or more data events of the same syscall (events.h: struct
 * periscope_segments, then each struct periscope_segment and its bytes). */
#pragma once

#include "maps.h"

/* The events being filled for one syscall. */
struct seg_emit {
	__u32 used;   /* bytes of data[] used in the event being filled */
	__u32 start;  /* first byte of the syscall it covers */
	__u32 events; /* events sent */
	__u8 stop;    /* out of events, or a buffer could not be read */
	__u8 _pad[3];
};

static __always_inline void seg_begin(struct seg_emit *m, struct scratch_event *s)
{
	m->used = sizeof(struct periscope_segments);
	m->start = 0;
	m->events = 0;
	m->stop = 0;
	s->ev.layout = PERISCOPE_LAYOUT_SEGMENTS;
}

/* Sends the event being filled, covering the syscall up to `end`. */
static __always_inline void seg_flush(struct seg_emit *m, struct scratch_event *s, __u32 end)
{
	struct periscope_segments head = { .start = m->start, .end = end };
	__builtin_memcpy(s->ev.data, &head, sizeof(head));
	__u32 used = m->used;
	if (used > PERISCOPE_MAX_CAPTURE)
		used = PERISCOPE_MAX_CAPTURE;
	s->ev.captured = used;
	send_data(&s->ev, offsetof(struct periscope_data_event, data) + used);
	m->events++;
	m->start = end;
	m->used = sizeof(struct periscope_segments);
}

/* Appends `n` bytes at user address `addr`, bytes [off, off + n) of the
 * syscall, as one segment (n fits). */
static __always_inline void seg_put(struct seg_emit *m, struct scratch_event *s, __u32 off,
				    __u64 addr, __u32 n)
{
	if (n > PERISCOPE_MAX_SEGMENT)
		n = PERISCOPE_MAX_SEGMENT;
	struct periscope_segment rec = { .offset = off, .len = n };
	__u32 at = m->used & (PERISCOPE_MAX_CAPTURE - 1);
	__builtin_memcpy(s->ev.data + at, &rec, sizeof(rec));
	at = (m->used + sizeof(rec)) & (PERISCOPE_MAX_CAPTURE - 1);
	if (bpf_probe_read_user(s->ev.data + at, n, (void *)addr)) {
		count(PERISCOPE_CNT_READ_FAILED);
		m->stop = 1;
		return;
	}
	m->used += sizeof(rec) + n;
}

/* One segment of `len` bytes (at most PERISCOPE_MAX_SEGMENT), split over
 * two events when it does not fit in what is left of the current one. At
 * `max_events`, the rest of the syscall goes uncopied (`truncated` counted).
 * Returns 1 once nothing more is to be sent. */
static __always_inline int seg_emit(struct seg_emit *m, struct scratch_event *s, __u32 off,
				    __u64 addr, __u32 len, __u32 max_events, __u32 truncated)
{
	if (m->stop)
		return 1;
	/* What a record in this event can still hold. */
	__u32 room = m->used + sizeof(struct periscope_segment) < PERISCOPE_MAX_CAPTURE
			     ? PERISCOPE_MAX_CAPTURE - m->used - sizeof(struct periscope_segment)
			     : 0;
	__u32 take = len < room ? len : room;
	if (take > 0)
		seg_put(m, s, off, addr, take);
	if (take == len || m->stop)
		return m->stop ? 1 : 0;
	if (m->events + 1 >= max_events) {
		/* The last event: the rest of the syscall goes uncopied. */
		count(truncated);
		m->stop = 1;
		return 1;
	}
	seg_flush(m, s, off + take);
	seg_put(m, s, off + take, addr + take, len - take);
	return m->stop ? 1 : 0;
}

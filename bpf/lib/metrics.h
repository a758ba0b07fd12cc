/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Packet counters per (reason, direction). reason is a trace reason (< 128,
 * events.h) for packets that went on, a drop reason (>= 130, drop.h) for
 * dropped ones. Per-CPU, so updates need no atomics; userspace sums the CPUs.
 */
#ifndef CM_METRICS_H
#define CM_METRICS_H

#include "common.h"

/* Direction from the pod's point of view. */
enum cm_direction {
	DIR_UNKNOWN = 0,
	DIR_INGRESS = 1, /* towards a local pod (from_overlay) */
	DIR_EGRESS  = 2, /* leaving a local pod (from_container) */
};

/* cm_metrics' layout, exported for the reader (src/datapath/maps/metrics.ts). */
enum cm_metrics_layout {
	METRICS_DIRS = 4, /* slots per reason: every enum cm_direction fits */
};

/*
 * One slot per (reason, direction): index reason * METRICS_DIRS + dir, every
 * __u8 reason with every direction. An array, not a hash: its lookup is
 * inlined by the verifier into an index computation (no hashing, no bucket
 * walk), and every slot exists, so there is no insert path. Slots never hit
 * stay zero; userspace skips them.
 */
#define METRICS_MAX_ENTRIES (256 * METRICS_DIRS)

/* 16 bytes per CPU. */
struct metrics_value {
	__u64 packets;
	__u64 bytes; /* skb->len: the L2 frame as the program saw it */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32); /* reason * METRICS_DIRS + dir */
	__type(value, struct metrics_value);
	__uint(max_entries, METRICS_MAX_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_metrics SEC(".maps");

CM_BTF_EXPORT(enum cm_direction, direction);
CM_BTF_EXPORT(enum cm_metrics_layout, metrics_layout);

static __always_inline void metrics_update(__u8 reason, __u8 dir, __u32 bytes)
{
#ifdef CM_VARIANT_NO_METRICS
	/* Measurement variant (bpf/lib/variant.h): no counters at all. */
	return;
#else
	/* dir & 3 keeps the index in range for the verifier and the reader. */
	__u32 idx = (__u32)reason * METRICS_DIRS + (dir & (METRICS_DIRS - 1));
	struct metrics_value *v;

	/* Per-CPU and tc runs with migration disabled: plain adds suffice. */
	v = bpf_map_lookup_elem(&cm_metrics, &idx);
	if (v) {
		v->packets++;
		v->bytes += bytes;
	}
#endif
}

#endif /* CM_METRICS_H */

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Packet counters per (reason, direction). reason is a trace reason (< 128,
 * events.h) for packets that went on, a drop reason (>= 130, drop.h) for
 * dropped ones. Per-CPU, so updates need no atomics; userspace sums the CPUs.
 */
#ifndef CM_METRICS_H
#define CM_METRICS_H

#include "common.h"

#define METRICS_MAX_ENTRIES 1024

/* Direction from the pod's point of view. */
enum cm_direction {
	DIR_UNKNOWN = 0,
	DIR_INGRESS = 1, /* towards a local pod (from_overlay) */
	DIR_EGRESS  = 2, /* leaving a local pod (from_container) */
};

/* 4 bytes. */
struct metrics_key {
	__u8  reason;
	__u8  dir;   /* enum cm_direction */
	__u16 pad;   /* 0 */
};

/* 16 bytes per CPU. */
struct metrics_value {
	__u64 packets;
	__u64 bytes; /* skb->len: the L2 frame as the program saw it */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct metrics_key);
	__type(value, struct metrics_value);
	__uint(max_entries, METRICS_MAX_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_metrics SEC(".maps");

CM_BTF_EXPORT(enum cm_direction, direction);

static __always_inline void metrics_update(__u8 reason, __u8 dir, __u32 bytes)
{
#ifdef CM_VARIANT_NO_METRICS
	/* Measurement variant (bpf/lib/variant.h): no counters at all. */
	return;
#else
	struct metrics_key key = { .reason = reason, .dir = dir };
	struct metrics_value *v, init = { .packets = 1, .bytes = bytes };

	v = bpf_map_lookup_elem(&cm_metrics, &key);
	if (v) {
		v->packets++;
		v->bytes += bytes;
		return;
	}
	/* Lost race with another packet on this CPU is impossible (tc runs
	 * with migration disabled); a full map only loses counts. */
	bpf_map_update_elem(&cm_metrics, &key, &init, BPF_NOEXIST);
#endif
}

#endif /* CM_METRICS_H */

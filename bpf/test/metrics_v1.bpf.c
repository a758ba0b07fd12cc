// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Test object: cm_metrics as agents before the per-CPU array pinned it (a
// PERCPU_HASH keyed by struct { __u8 reason, dir; __u16 pad; }). Loaded into
// a node's pin directory, it leaves that old-shaped pin for an upgrade test
// (src/datapath/node.test-helper.ts). Not part of the datapath.
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct metrics_v1_key {
	__u8  reason;
	__u8  dir;
	__u16 pad;
};

struct metrics_v1_value {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct metrics_v1_key);
	__type(value, struct metrics_v1_value);
	__uint(max_entries, 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_metrics SEC(".maps");

// Counts a packet the way the old metrics_update() did.
SEC("tc")
int metrics_v1_count(struct __sk_buff *ctx)
{
	struct metrics_v1_key key = { .reason = 1, .dir = 2 };
	struct metrics_v1_value *v, init = { .packets = 1, .bytes = ctx->len };

	v = bpf_map_lookup_elem(&cm_metrics, &key);
	if (v) {
		v->packets++;
		v->bytes += ctx->len;
	} else {
		bpf_map_update_elem(&cm_metrics, &key, &init, BPF_NOEXIST);
	}
	return TC_ACT_OK;
}

char _license[] SEC("license") = "Dual BSD/GPL";

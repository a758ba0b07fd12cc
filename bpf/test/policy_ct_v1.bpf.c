// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Test object: policy conntrack as agents before cm_policy_conn pinned it:
// cm_policy_ct, one entry per direction (struct policy_ct_key: saddr,
// daddr, sport, dport, proto -> lifetime, flags), and the cached verdicts
// apart in cm_policy_verdict. Loaded into a node's pin directory, it leaves
// those old pins for an upgrade test (src/datapath/node.test-helper.ts).
// Not part of the datapath.
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct policy_ct_v1_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8  proto;
	__u8  pad[3];
};

struct policy_ct_v1_value {
	__u32 lifetime;
	__u32 flags;
};

struct policy_verdict_v1 {
	__u32 rev;
	__u32 egress_remote;
	__u32 ingress_remote;
	__u16 egress_ep;
	__u16 ingress_ep;
	__u32 checks;
	__u32 sum;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct policy_ct_v1_key);
	__type(value, struct policy_ct_v1_value);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_policy_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct policy_ct_v1_key);
	__type(value, struct policy_verdict_v1);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_policy_verdict SEC(".maps");

// Keeps both maps referenced by a program, as the old datapath's were.
SEC("tc")
int policy_ct_v1_touch(struct __sk_buff *ctx)
{
	struct policy_ct_v1_key key = {};

	if (bpf_map_lookup_elem(&cm_policy_ct, &key) || bpf_map_lookup_elem(&cm_policy_verdict, &key))
		return TC_ACT_OK;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

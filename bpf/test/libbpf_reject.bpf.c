// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Compiles but must not verify: src/datapath/libbpf tests load it to observe
// VerifierError and the verifier log. Not part of the datapath.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} rj_hash SEC(".maps");

SEC("tc")
int rj_unchecked(struct __sk_buff *skb)
{
	__u32 zero = 0;
	__u64 *v = bpf_map_lookup_elem(&rj_hash, &zero);

	// no NULL check: the verifier rejects the dereference
	return (int)*v;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

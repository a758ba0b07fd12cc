// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Test object for src/datapath/libbpf: one map of each kind the binding must
// drive, and tc programs whose return value and side effects the tests observe
// through BPF_PROG_TEST_RUN. Not part of the datapath.
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

// Set by the loader before load (BpfObject.setConst); fx_verdict is the
// return value of fx_ret, fx_tag travels in every fx_emit event.
const volatile __u32 fx_verdict = 0;
const volatile __u64 fx_tag = 0;

struct fx_lpm_key {
	__u32 prefixlen;
	__u32 addr; // network byte order
};

struct fx_event {
	__u32 magic;
	__u32 ingress_ifindex;
	__u32 mark;
	__u32 len;
	__u64 tag;
};

// Small on purpose: the tests fill it to observe E2BIG.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} fx_hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fx_lpm_key);
	__type(value, __u32);
} fx_lpm SEC(".maps");

// Counts fx_ret runs per CPU.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} fx_percpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u32);
} fx_percpu_hash SEC(".maps");

// Pinned by name so that a second load of this object reuses it.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, __u32);
} fx_pinned SEC(".maps");

// A map type without kernel batch operations: the batch fallback is tested on it.
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u32); // ifindex
} fx_devmap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} fx_events SEC(".maps");

SEC("tc")
int fx_ret(struct __sk_buff *skb)
{
	__u32 zero = 0;
	__u64 *runs = bpf_map_lookup_elem(&fx_percpu, &zero);

	if (runs)
		*runs += 1;
	return fx_verdict;
}

SEC("tc")
int fx_emit(struct __sk_buff *skb)
{
	struct fx_event *ev = bpf_ringbuf_reserve(&fx_events, sizeof(*ev), 0);

	if (!ev)
		return TC_ACT_SHOT;
	ev->magic = 0xc1a55e7e;
	ev->ingress_ifindex = skb->ingress_ifindex;
	ev->mark = skb->mark;
	ev->len = skb->len;
	ev->tag = fx_tag;
	bpf_ringbuf_submit(ev, 0);
	return TC_ACT_OK;
}

// What from-container does for a remote destination: tunnel key, then
// redirect; BPF_PROG_TEST_RUN reports TC_ACT_REDIRECT.
SEC("tc")
int fx_redirect(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};

	key.remote_ipv4 = 0x0a010002; // 10.1.0.2, host order as the helper expects
	key.tunnel_id = 42;
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex ? skb->ifindex : 1, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

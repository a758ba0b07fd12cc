/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Test-only entry for from_overlay's logic. BPF_PROG_TEST_RUN cannot give a
 * packet tunnel metadata, so test_from_overlay takes what
 * bpf_skb_get_tunnel_key would have returned from cm_test_tunnel (written by
 * the test) and runs the very same handle_overlay() + cm_finish().
 * The object also contains the real from_overlay (this file includes it).
 */
#include "../overlay.bpf.c"

/* 8 bytes. */
struct test_tunnel {
	__u32 identity; /* the VNI */
	__u32 remote;   /* sending node, network byte order */
};

/* Not pinned: private to each loaded test object. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct test_tunnel);
	__uint(max_entries, 1);
} cm_test_tunnel SEC(".maps");

SEC("tc")
int test_from_overlay(struct __sk_buff *ctx)
{
	struct trace_ctx tc = { .dir = DIR_INGRESS };
	const struct test_tunnel *t;
	__u32 zero = 0;
	int ret;

	t = bpf_map_lookup_elem(&cm_test_tunnel, &zero);
	if (!t)
		ret = -DROP_NO_TUNNEL_KEY;
	else
		ret = handle_overlay(ctx, &tc, t->identity, t->remote);
	return cm_finish(ctx, &tc, ret);
}

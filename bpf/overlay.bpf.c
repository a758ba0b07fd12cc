/* SPDX-License-Identifier: Apache-2.0 */
/*
 * from_overlay: tc ingress of the node's VXLAN device (external/collect_md).
 * Every packet here came from another node's from_container: the VNI is the
 * source pod's identity, the destination must be a pod of this node.
 */
#include "common.h"
#include "config.h"
#include "ipcache.h"
#include "eps.h"
#include "metrics.h"
#include "events.h"
#include "drop.h"
#include "l3.h"
#include "conntrack.h"
#include "lb.h"
#include "policy.h"

/*
 * Everything after the tunnel metadata was read; separate so a test program
 * (bpf/test/overlay_test.bpf.c) can feed it an identity, because
 * BPF_PROG_TEST_RUN cannot attach tunnel metadata to a packet.
 * @remote: sending node, network byte order.
 */
static __always_inline int handle_overlay(struct __sk_buff *ctx, struct trace_ctx *tc,
					  __u32 src_identity, __u32 remote)
{
	const struct endpoint_info *ep;
	struct policy_pkt orig, pkt;
	bool track = false;
	struct lb4_tuple t;
	struct ethhdr *eth;
	struct iphdr *ip;
	int ret = 0;

	tc->src_identity = src_identity;
	tc->tunnel_endpoint = remote;

	if (!parse_eth(ctx, &eth))
		return -DROP_INVALID_PACKET;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return -DROP_UNSUPPORTED_L3;
	if (!trace_parse_ipv4(ctx, tc, &eth, &ip))
		return -DROP_INVALID_PACKET;
	policy_pkt_init(ip, tc, &orig);

	/* A reply of a service connection whose backend is on another node:
	 * back to VIP:port before delivery (lb4_rev_nat says why here). */
	if (lb4_extract(ctx, ip, tc, &t))
		ret = lb4_rev_nat(ctx, &t, tc);
	if (ret < 0)
		return ret;
	if (!policy_pkt_after_lb(ctx, ret, tc, &orig, &pkt, &eth, &ip))
		return -DROP_INVALID_PACKET;

	ep = lookup_endpoint4(ip->daddr);
	if (!ep)
		return -DROP_UNKNOWN_ENDPOINT;

	/* Ingress policy of @ep against the sender's identity from the VNI;
	 * the sender's egress was checked on its node. */
	ret = policy_check(ctx, ep->endpoint_id, DIR_INGRESS, src_identity, &pkt, &orig, &track);
	if (ret < 0) {
		tc->dst_identity = ep->identity;
		return ret;
	}
	if (track)
		policy_ct_record(ctx, &pkt);

	return ipv4_deliver_local(ctx, eth, ip, ep, tc);
}

SEC("tc")
int from_overlay(struct __sk_buff *ctx)
{
	struct trace_ctx tc = { .dir = DIR_INGRESS };
	struct bpf_tunnel_key key = {};
	int ret;

	if (bpf_skb_get_tunnel_key(ctx, &key, sizeof(key), 0) < 0)
		ret = -DROP_NO_TUNNEL_KEY;
	else
		ret = handle_overlay(ctx, &tc, key.tunnel_id, bpf_htonl(key.remote_ipv4));
	return cm_finish(ctx, &tc, ret);
}

char LICENSE[] SEC("license") = "GPL";

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The L3 hop both programs make towards a local pod: TTL, MACs, redirect.
 */
#ifndef CM_L3_H
#define CM_L3_H

#include "common.h"
#include "config.h"
#include "eps.h"
#include "drop.h"

/* Redirect into a local pod given the ifindex of its host-side veth. A
 * plain redirect passes that veth's egress (to_container): marked as checked. */
static __always_inline int redirect_to_endpoint(struct __sk_buff *ctx, __u32 ifindex)
{
	if (CFG_REDIRECT_PEER)
		return bpf_redirect_peer(ifindex, 0);
	ctx->mark = CM_MARK_DELIVERED;
	return bpf_redirect(ifindex, 0);
}

/*
 * Deliver an IPv4 packet to the local endpoint @ep: the node is the pod's
 * router, so TTL goes down by one and the frame is re-addressed from the
 * pod's gateway (host-side veth MAC) to the pod.
 */
static __always_inline int ipv4_deliver_local(struct __sk_buff *ctx,
					      struct ethhdr *eth, struct iphdr *ip,
					      const struct endpoint_info *ep,
					      struct trace_ctx *tc)
{
	if (ip->ttl <= 1)
		return -DROP_TTL_EXCEEDED;
	ipv4_dec_ttl(ip);
	eth_set_macs(eth, ep->mac, ep->node_mac);
	tc->dst_identity = ep->identity;
	tc->target_ifindex = ep->ifindex;
	tc->reason = TRACE_TO_ENDPOINT;
	return redirect_to_endpoint(ctx, ep->ifindex);
}

#endif /* CM_L3_H */

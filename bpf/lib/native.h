/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Native routing (CFG_ROUTING_NATIVE): no encapsulation towards destinations
 * the underlay routes (CFG_NATIVE_CIDRS). The sending node forwards like a
 * router with the kernel's FIB; the receiving node's from_netdev learns the
 * sender's identity from the ipcache by source address (there is no VNI).
 */
#ifndef CM_NATIVE_H
#define CM_NATIVE_H

#include "common.h"
#include "config.h"
#include "drop.h"
#include "events.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* @daddr (network byte order) is inside a native routing CIDR. */
static __always_inline bool native_route_to(__u32 daddr)
{
	if (!CFG_ROUTING_NATIVE)
		return false;
#pragma unroll
	for (int i = 0; i < CM_NATIVE_CIDRS_MAX; i++) {
		__u32 mask = CFG_NATIVE_CIDRS[i].mask;

		if (mask == 0)
			break;
		if ((daddr & mask) == CFG_NATIVE_CIDRS[i].addr)
			return true;
	}
	return false;
}

/*
 * Out of the device bpf_fib_lookup() chose (@rc its answer, SUCCESS or
 * NO_NEIGH): a plain redirect when the FIB knew the next hop's MAC (the
 * caller has written it), else bpf_redirect_neigh resolves it (fib->ipv4_dst
 * is the next hop then: the gateway, or the destination on-link).
 */
static __always_inline int fib_redirect(const struct bpf_fib_lookup *fib, int rc)
{
	struct bpf_redir_neigh nh = {};

	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		nh.nh_family = AF_INET;
		nh.ipv4_nh = fib->ipv4_dst;
		return bpf_redirect_neigh(fib->ifindex, &nh, sizeof(nh), 0);
	}
	return bpf_redirect(fib->ifindex, 0);
}

/*
 * Forward an IPv4 packet from a pod the way the node's routing table says,
 * unencapsulated: TTL - 1, MACs of the next hop when the FIB knows its
 * neighbour (plain redirect), else bpf_redirect_neigh resolves it. tot_len
 * stays 0 so the kernel checks the skb (GSO-aware) against the egress MTU.
 */
static __always_inline int ipv4_forward_native(struct __sk_buff *ctx, struct iphdr *ip,
					       struct trace_ctx *tc)
{
	struct bpf_fib_lookup fib = {};
	struct ethhdr *eth;
	int rc;

	if (ip->ttl <= 1)
		return -DROP_TTL_EXCEEDED;
	fib.family = AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = ip->protocol;
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;
	fib.ifindex = ctx->ifindex;
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return -DROP_FRAG_NEEDED;
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return -DROP_NO_ROUTE;
	ipv4_dec_ttl(ip);
	tc->target_ifindex = fib.ifindex;
	tc->reason = TRACE_TO_NETWORK;
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		if (!parse_eth(ctx, &eth))
			return -DROP_INVALID_PACKET;
		eth_set_macs(eth, fib.dmac, fib.smac);
	}
	return fib_redirect(&fib, rc);
}

#endif /* CM_NATIVE_H */

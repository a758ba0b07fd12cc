/* SPDX-License-Identifier: Apache-2.0 */
/*
 * from_container: tc ingress of a pod's host-side veth, i.e. every packet the
 * pod sends. Answers ARP for the pod's gateway, then routes IPv4: to a local
 * pod, into the VXLAN tunnel towards the node hosting the destination,
 * unencapsulated through the node's FIB when the destination is natively
 * routable (native.h), or to the host stack (world).
 *
 * to_container: tc egress of the same veth, i.e. what enters the pod without
 * bpf_redirect_peer: everything the node's stack routes to it (world, CIDR
 * peers, the host) gets the pod's ingress policy there. What our programs
 * delivered with a plain redirect was checked already and carries
 * CM_MARK_DELIVERED (common.h).
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
#include "native.h"
#include "encap.h"
#include "variant.h"

/* ARP body for Ethernet/IPv4 (RFC 826), after struct arphdr. */
struct arp_eth_ipv4 {
	__u8 sha[ETH_ALEN];
	__u8 spa[4];
	__u8 tha[ETH_ALEN];
	__u8 tpa[4];
};

/*
 * ARP from the pod is answered here, whatever address it asks for, with the
 * host-side veth MAC: the node routes everything the pod sends, so that MAC is
 * the right next hop for any address, and pods then work even without the
 * static gateway neighbour the CNI plugin installs (or after it was flushed).
 * Not answered (handed to the stack): replies, non-Ethernet/IPv4 ARP,
 * gratuitous ARP and DAD probes (sender 0.0.0.0), which must not be answered.
 */
static __always_inline int handle_arp(struct __sk_buff *ctx, struct trace_ctx *tc)
{
	const __u32 len = ETH_HLEN + sizeof(struct arphdr) + sizeof(struct arp_eth_ipv4);
	const struct endpoint_info *ep;
	struct arp_eth_ipv4 *body;
	void *data, *data_end;
	struct ethhdr *eth;
	struct arphdr *arp;
	__u32 spa, tpa;

	if (!pkt_pull(ctx, len))
		return -DROP_INVALID_PACKET;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + len > data_end)
		return -DROP_INVALID_PACKET;
	eth = data;
	arp = (void *)(eth + 1);
	body = (void *)(arp + 1);

	tc->reason = TRACE_TO_STACK;
	if (arp->ar_hrd != bpf_htons(ARPHRD_ETHER) || arp->ar_pro != bpf_htons(ETH_P_IP) ||
	    arp->ar_hln != ETH_ALEN || arp->ar_pln != 4)
		return TC_ACT_OK;
	__builtin_memcpy(&spa, body->spa, 4);
	__builtin_memcpy(&tpa, body->tpa, 4);
	tc->src_ip = spa;
	tc->dst_ip = tpa;
	if (arp->ar_op != bpf_htons(ARPOP_REQUEST) || spa == 0 || spa == tpa)
		return TC_ACT_OK;

	ep = lookup_endpoint4(spa);
	if (!ep)
		return -DROP_UNKNOWN_SOURCE;
	if (ep->ifindex != ctx->ifindex)
		return -DROP_SOURCE_MISMATCH;
	tc->src_identity = ep->identity;

	/* Turn the request into the reply, in place. */
	arp->ar_op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(body->tha, body->sha, ETH_ALEN);
	__builtin_memcpy(body->tpa, &spa, 4);
	__builtin_memcpy(body->sha, ep->node_mac, ETH_ALEN);
	__builtin_memcpy(body->spa, &tpa, 4);
	eth_set_macs(eth, body->tha, ep->node_mac);

	tc->reason = TRACE_ARP_REPLY;
	tc->target_ifindex = ctx->ifindex;
	ctx->mark = CM_MARK_DELIVERED;
	/* Back out of the same veth, i.e. into the pod. */
	return bpf_redirect(ctx->ifindex, 0);
}

/*
 * Into the tunnel towards @remote (network byte order). VNI = identity of the
 * source pod, so the receiving node knows who sent it without a lookup.
 */
static __always_inline int ipv4_encap(struct __sk_buff *ctx, struct iphdr *ip,
				      __u32 src_identity, __u32 remote, struct trace_ctx *tc)
{
	struct bpf_tunnel_key key = {};

	if (src_identity > IDENTITY_VNI_MAX)
		return -DROP_INVALID_IDENTITY;
	if (CFG_VXLAN_IFINDEX == 0)
		return -DROP_NO_TUNNEL_DEVICE;
	/* The outer header gets DF, so an oversized packet would die in the
	 * underlay without a trace; drop it here, counted. */
	if (CFG_TUNNEL_MTU && ipv4_wire_len(ctx, ip) > CFG_TUNNEL_MTU)
		return -DROP_FRAG_NEEDED;
	if (ip->ttl <= 1)
		return -DROP_TTL_EXCEEDED;
	ipv4_dec_ttl(ip);

#ifdef CM_VARIANT_PEER_DEVICE
	{
		const struct peer_device *pd = bpf_map_lookup_elem(&cm_variant_peer_dev, &remote);

		if (pd && pd->vni == src_identity) {
			tc->tunnel_endpoint = remote;
			tc->target_ifindex = pd->ifindex;
			tc->reason = TRACE_TO_OVERLAY;
			return bpf_redirect(pd->ifindex, 0);
		}
	}
#endif
	if (CFG_TUNNEL_BPF) {
		int r = ipv4_encap_bpf(ctx, src_identity, remote, tc);

		if (r != ENCAP_USE_DEVICE)
			return r;
	}
	key.tunnel_id = src_identity;
	key.remote_ipv4 = bpf_ntohl(remote);
	key.tunnel_ttl = CM_TUNNEL_TTL;
	if (bpf_skb_set_tunnel_key(ctx, &key, sizeof(key),
				   BPF_F_ZERO_CSUM_TX | BPF_F_DONT_FRAGMENT) < 0)
		return -DROP_WRITE_ERROR;

	tc->tunnel_endpoint = remote;
	tc->target_ifindex = CFG_VXLAN_IFINDEX;
	tc->reason = TRACE_TO_OVERLAY;
	return bpf_redirect(CFG_VXLAN_IFINDEX, 0);
}

static __always_inline int handle_ipv4_from_container(struct __sk_buff *ctx,
						      struct trace_ctx *tc)
{
	const struct endpoint_info *src_ep, *dst_ep;
	const struct ipcache_value *info = NULL;
	struct policy_verdict sig = {};
	struct policy_pkt orig, pkt;
	__u8 drop_dir = DIR_EGRESS;
#ifndef CM_VARIANT_NO_LB
	struct lb4_tuple t;
#endif
	struct ethhdr *eth;
	struct iphdr *ip;
	__u32 dst_identity, daddr;
	int ret = 0;

	if (!trace_parse_ipv4(ctx, tc, &eth, &ip))
		return -DROP_INVALID_PACKET;

	/* The source identity travels in the VNI: a pod may only send with an
	 * address the agent gave it, from its own veth. */
	src_ep = lookup_endpoint4(ip->saddr);
	if (!src_ep)
		return -DROP_UNKNOWN_SOURCE;
	if (src_ep->ifindex != ctx->ifindex)
		return -DROP_SOURCE_MISMATCH;
	tc->src_identity = src_ep->identity;
	/* Before translation: what a reply looks like to the connection that
	 * policy recorded (policy.h). */
	policy_pkt_init(ip, tc, &orig);

	/* The destination as sent: only a packet to a local endpoint (or the
	 * hairpin address) can be the reply of a translated connection
	 * (lb4_rev_nat_lookup), so the rest skip that conntrack lookup. */
	daddr = ip->daddr;
	dst_ep = lookup_endpoint4(daddr);

	/* Services (lb.h): a reply of a local backend gets its VIP back
	 * (lb4_rev_nat_lookup says why here), a packet to a VIP gets its
	 * backend. Never both: replies are not addressed to a VIP. Egress
	 * policy goes after this, so it sees the real backend. */
#ifndef CM_VARIANT_NO_LB
	if (lb4_extract(ctx, ip, tc, &t))
		ret = lb4_translate(ctx, &t, tc, true, dst_ep || daddr == LB_HAIRPIN_IP);
	if (ret < 0)
		return ret;
#endif
	if (!policy_pkt_after_lb(ctx, ret, tc, &orig, &pkt, &eth, &ip))
		return -DROP_INVALID_PACKET;

	/* Translation moved the destination (to a backend; hairpin: to the
	 * client): resolve it again. A reply's VIP is its new source only. */
	if (ret > 0 && ip->daddr != daddr)
		dst_ep = lookup_endpoint4(ip->daddr);
	if (dst_ep)
		dst_identity = dst_ep->identity;
	else if ((info = ipcache_lookup4(ip->daddr)))
		dst_identity = info->identity;
	else
		dst_identity = IDENTITY_WORLD;

	/* Egress of the sender, then (local destination) ingress of the
	 * receiver: both must pass. A drop reports the side whose policy said
	 * no in its direction. */
	sig.egress_ep = src_ep->endpoint_id;
	sig.egress_remote = dst_identity;
	sig.checks = POLICY_V_EGRESS;
	if (dst_ep) {
		sig.ingress_ep = dst_ep->endpoint_id;
		sig.ingress_remote = src_ep->identity;
		sig.checks |= POLICY_V_INGRESS;
	}
	ret = policy_enforce(ctx, &sig, &pkt, &orig, &drop_dir);
	if (ret < 0) {
		tc->dir = drop_dir;
		tc->dst_identity = policy_report_identity(dst_identity, pkt.daddr);
		return ret;
	}

	if (dst_ep)
		return ipv4_deliver_local(ctx, eth, ip, dst_ep, tc);

	if (!info) {
		tc->dst_identity = IDENTITY_WORLD;
		tc->reason = TRACE_TO_STACK;
		return TC_ACT_OK;
	}
	tc->dst_identity = info->identity;
	/* A node-local (CIDR) identity is outside the mesh whatever the entry
	 * says about a tunnel: the stack routes it, as world. (The agent keeps
	 * CIDR identities in cm_policy_cidr; an ipcache pinned by an older
	 * agent may still hold some until they are pruned.) */
	if (identity_is_local(info->identity)) {
		tc->reason = TRACE_TO_STACK;
		return TC_ACT_OK;
	}
	if (info->tunnel_endpoint == 0) {
		/* Host, world, remote-node...: the stack routes those. A workload
		 * without a node to send it to is a hole in the ipcache. */
		if (identity_is_reserved(info->identity)) {
			tc->reason = TRACE_TO_STACK;
			return TC_ACT_OK;
		}
		return -DROP_NO_TUNNEL_ENDPOINT;
	}
	if (CFG_NODE_IP && info->tunnel_endpoint == CFG_NODE_IP)
		return -DROP_UNKNOWN_ENDPOINT;
	if (native_route_to(ip->daddr))
		return ipv4_forward_native(ctx, ip, tc);
	return ipv4_encap(ctx, ip, src_ep->identity, info->tunnel_endpoint, tc);
}

static __always_inline int handle_from_container(struct __sk_buff *ctx, struct trace_ctx *tc)
{
	struct ethhdr *eth;

	if (!parse_eth(ctx, &eth))
		return -DROP_INVALID_PACKET;
	switch (eth->h_proto) {
	case bpf_htons(ETH_P_IP):
		return handle_ipv4_from_container(ctx, tc);
	case bpf_htons(ETH_P_ARP):
		return handle_arp(ctx, tc);
	default:
		return -DROP_UNSUPPORTED_L3;
	}
}

SEC("tc")
int from_container(struct __sk_buff *ctx)
{
	struct trace_ctx tc = { .dir = DIR_EGRESS };
	int ret = handle_from_container(ctx, &tc);

	return cm_finish(ctx, &tc, ret);
}

/*
 * A packet the stack routes into the pod behind this veth: ingress policy
 * of the destination endpoint against the source's identity from the
 * ipcache (a pod, a node; world when no prefix matches) and its address
 * (CIDR rules, policy.h). No service translation here: a reply of a service connection
 * reaches the client pod through from_container or from_overlay.
 */
static __always_inline int handle_ipv4_to_container(struct __sk_buff *ctx, struct trace_ctx *tc)
{
	const struct ipcache_value *info;
	const struct endpoint_info *ep;
	struct policy_verdict sig = {};
	struct policy_pkt pkt;
	__u8 drop_dir;
	struct ethhdr *eth;
	struct iphdr *ip;
	__u32 src_identity;
	int ret;

	if (!trace_parse_ipv4(ctx, tc, &eth, &ip))
		return -DROP_INVALID_PACKET;
	tc->reason = TRACE_TO_ENDPOINT;

	/* Not (yet) an endpoint: no policy to apply, as before this program. */
	ep = lookup_endpoint4(ip->daddr);
	if (!ep)
		return TC_ACT_OK;
	tc->dst_identity = ep->identity;
	info = ipcache_lookup4(ip->saddr);
	src_identity = info ? info->identity : IDENTITY_WORLD;
	tc->src_identity = src_identity;

	policy_pkt_init(ip, tc, &pkt);
	sig.ingress_ep = ep->endpoint_id;
	sig.ingress_remote = src_identity;
	sig.checks = POLICY_V_INGRESS;
	ret = policy_enforce(ctx, &sig, &pkt, &pkt, &drop_dir);
	if (ret < 0) {
		tc->src_identity = policy_report_identity(src_identity, pkt.saddr);
		return ret;
	}
	return TC_ACT_OK;
}

static __always_inline int handle_to_container(struct __sk_buff *ctx, struct trace_ctx *tc)
{
	struct ethhdr *eth;

	if (!parse_eth(ctx, &eth))
		return -DROP_INVALID_PACKET;
	/* ARP and anything else the stack sends the pod: as before. */
	tc->reason = TRACE_TO_ENDPOINT;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	return handle_ipv4_to_container(ctx, tc);
}

SEC("tc")
int to_container(struct __sk_buff *ctx)
{
	struct trace_ctx tc = { .dir = DIR_INGRESS };

	/* Checked and counted by the program that redirected it. */
	if ((ctx->mark & CM_MARK_MASK) == CM_MARK_DELIVERED) {
		ctx->mark = 0;
		return TC_ACT_OK;
	}
	return cm_finish(ctx, &tc, handle_to_container(ctx, &tc));
}

char LICENSE[] SEC("license") = "GPL";

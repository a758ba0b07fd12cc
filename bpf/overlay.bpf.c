/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What another node sends to a pod of this one.
 *
 * from_overlay: tc ingress of the node's VXLAN device (external/collect_md).
 * Every packet here came from another node's from_container: the VNI is the
 * source pod's identity, the destination must be a pod of this node.
 *
 * from_netdev: tc ingress of the node's underlay device, attached in native
 * routing mode (CFG_ROUTING_NATIVE, native.h) and with tunnelEncap bpf
 * (CFG_TUNNEL_BPF, encap.h). Native: a packet there addressed to a local pod
 * came unencapsulated from another node; the sender's identity is the
 * ipcache's for its source address (there is no VNI). BPF encapsulation: a
 * VXLAN packet for this node loses its outer headers here and goes on as
 * from_overlay's would. Every other packet (the node's own traffic, what
 * the VXLAN device must take, ARP) goes to the stack untouched and
 * uncounted.
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
#include "encap.h"

/*
 * Service reverse translation, ingress policy of the destination pod against
 * @src_identity (the sender's egress was checked on its node), delivery.
 * @ep: the caller's lookup_endpoint4() of the destination as it arrived, or
 * NULL: then it is looked up here, after translation (from_overlay, whose
 * only lookup this is). Looked up again if translation moved the destination.
 */
static __always_inline int deliver_from_node(struct __sk_buff *ctx, struct trace_ctx *tc,
					     struct ethhdr *eth, struct iphdr *ip,
					     __u32 src_identity, const struct endpoint_info *ep)
{
	__u32 daddr = ip->daddr;
	struct policy_verdict sig = {};
	struct policy_pkt orig, pkt;
	__u8 drop_dir;
#ifndef CM_VARIANT_NO_LB
	struct lb4_tuple t;
#endif
	int ret = 0;

	policy_pkt_init(ip, tc, &orig);

	/* A reply of a service connection whose backend is on another node:
	 * back to VIP:port before delivery (lb4_rev_nat_lookup says why here). */
#ifndef CM_VARIANT_NO_LB
	if (lb4_extract(ctx, ip, tc, &t))
		ret = lb4_translate(ctx, &t, tc, false, true);
	if (ret < 0)
		return ret;
#endif
	if (!policy_pkt_after_lb(ctx, ret, tc, &orig, &pkt, &eth, &ip))
		return -DROP_INVALID_PACKET;

	/* A reply's translation rewrites its source only, but a hairpin entry
	 * would move the destination: then resolve it again. */
	if (!ep || (ret > 0 && ip->daddr != daddr))
		ep = lookup_endpoint4(ip->daddr);
	if (!ep)
		return -DROP_UNKNOWN_ENDPOINT;

	sig.ingress_ep = ep->endpoint_id;
	sig.ingress_remote = src_identity;
	sig.checks = POLICY_V_INGRESS;
	ret = policy_enforce(ctx, &sig, &pkt, &orig, &drop_dir);
	if (ret < 0) {
		tc->dst_identity = ep->identity;
		tc->src_identity = policy_report_identity(src_identity, pkt.saddr);
		return ret;
	}

	return ipv4_deliver_local(ctx, eth, ip, ep, tc);
}

/*
 * Everything after the tunnel metadata was read; separate so a test program
 * (bpf/test/overlay_test.bpf.c) can feed it an identity, because
 * BPF_PROG_TEST_RUN cannot attach tunnel metadata to a packet.
 * @remote: sending node, network byte order.
 */
static __always_inline int handle_overlay(struct __sk_buff *ctx, struct trace_ctx *tc,
					  __u32 src_identity, __u32 remote)
{
	struct ethhdr *eth;
	struct iphdr *ip;

	tc->src_identity = src_identity;
	tc->tunnel_endpoint = remote;

	if (!parse_eth(ctx, &eth))
		return -DROP_INVALID_PACKET;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return -DROP_UNSUPPORTED_L3;
	if (!trace_parse_ipv4(ctx, tc, &eth, &ip))
		return -DROP_INVALID_PACKET;
	return deliver_from_node(ctx, tc, eth, ip, src_identity, NULL);
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

/*
 * A native packet for a local pod: everything from_overlay does after the
 * tunnel metadata, with the identity from the ipcache. An address of this
 * node's pod range that is no pod is dropped as from_overlay drops it (the
 * stack would route it back to the underlay).
 */
static __always_inline int handle_netdev(struct __sk_buff *ctx, struct trace_ctx *tc,
					 struct ethhdr *eth, struct iphdr *ip)
{
	const struct endpoint_info *ep = lookup_endpoint4(ip->daddr);
	const struct ipcache_value *info, *dst;
	__u32 src_identity;

	/* ep goes on to deliver_from_node: one endpoint lookup per packet. */
	if (!ep) {
		dst = ipcache_lookup4(ip->daddr);
		if (!dst || !CFG_NODE_IP || dst->tunnel_endpoint != CFG_NODE_IP)
			return TC_ACT_UNSPEC;
	}
	info = ipcache_lookup4(ip->saddr);
	src_identity = info ? info->identity : IDENTITY_WORLD;
	tc->src_identity = src_identity;
	if (!ep)
		return -DROP_UNKNOWN_ENDPOINT;
	return deliver_from_node(ctx, tc, eth, ip, src_identity, ep);
}

SEC("tc")
int from_netdev(struct __sk_buff *ctx)
{
	struct trace_ctx tc = { .dir = DIR_INGRESS };
	struct ethhdr *eth;
	struct iphdr *ip;
	int ret;

	if (!parse_eth(ctx, &eth) || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	/* Malformed IPv4 is the stack's to drop; the node's own address is the
	 * bulk of what arrives here (tunnel packets, the control plane). */
	if (!parse_ipv4(ctx, &eth, &ip))
		return TC_ACT_OK;
	if (ip->daddr == CFG_NODE_IP) {
		__u32 remote = ip->saddr;
		__s64 vni;

		if (!CFG_TUNNEL_BPF)
			return TC_ACT_OK;
		vni = vxlan_decap(ctx, ip);
		if (vni < 0)
			return TC_ACT_OK;
		return cm_finish(ctx, &tc, handle_overlay(ctx, &tc, vni, remote));
	}
	if (!CFG_ROUTING_NATIVE)
		return TC_ACT_OK;
	if (!trace_parse_ipv4(ctx, &tc, &eth, &ip))
		return TC_ACT_OK;
	ret = handle_netdev(ctx, &tc, eth, ip);
	if (ret == TC_ACT_UNSPEC)
		return TC_ACT_OK;
	return cm_finish(ctx, &tc, ret);
}

char LICENSE[] SEC("license") = "GPL";

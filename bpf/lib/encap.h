/* SPDX-License-Identifier: Apache-2.0 */
/*
 * VXLAN in BPF (CFG_TUNNEL_BPF, the agent's tunnelEncap: bpf): the sending
 * node's from_container writes the outer headers itself and hands the packet
 * to the underlay device; the receiving node's from_netdev on that device
 * strips them and delivers to the pod. Neither passes the kernel's VXLAN
 * device: no tunnel route lookup per packet (bpf_skb_set_tunnel_key marks
 * the tunnel info no-cache), no ip_local_out and no UDP socket lookup with
 * its GRO cell on receipt.
 *
 * The wire format is the device's (RFC 7348, the I flag, VNI = the source
 * identity, an inner Ethernet header, outer UDP checksum 0, DF set), so a
 * node that encapsulates in BPF and one that uses the device talk to each
 * other either way. What this path does not handle goes the device's way
 * (the device stays configured):
 *   - sending: the underlay route is not one bpf_fib_lookup() answers from
 *     the pod's veth (forwarding off, a blackhole, ...), an skb too large
 *     for a 16-bit outer total length, or one the kernel will not grow
 *     (already encapsulated by the pod);
 *   - receiving: an outer header with options or fragmented, a non-zero
 *     outer UDP checksum (the UDP layer verifies it), flags without I, or an
 *     inner frame that is not IPv4.
 */
#ifndef CM_ENCAP_H
#define CM_ENCAP_H

#include "common.h"
#include "config.h"
#include "drop.h"
#include "events.h"
#include "native.h"

#define VXLAN_FLAG_VNI 0x08000000U /* the I flag: the VNI is valid */

struct vxlan_hdr {
	__be32 flags;
	__be32 vni; /* VNI << 8 */
};

/* What CFG_TUNNEL_BPF puts in front of the pod's IPv4 packet, from @eth on:
 * the outer Ethernet header and, after it, the 50 bytes of VXLAN_OVERHEAD.
 * @align puts the outer IPv4 header on a 4-byte boundary of the stack (the
 * verifier refuses misaligned stack stores). */
struct vxlan_encap {
	__u16 align;
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
	struct vxlan_hdr vx;
	struct ethhdr inner;
};

#define VXLAN_ENCAP_WIRE (ETH_HLEN + sizeof(struct iphdr) + sizeof(struct udphdr) + \
			  sizeof(struct vxlan_hdr) + ETH_HLEN) /* 64 */
#define VXLAN_ENCAP_LEN (VXLAN_ENCAP_WIRE - ETH_HLEN) /* 50 */
_Static_assert(__builtin_offsetof(struct vxlan_encap, inner) + ETH_HLEN ==
	       __builtin_offsetof(struct vxlan_encap, eth) + VXLAN_ENCAP_WIRE,
	       "struct vxlan_encap has a hole");

/* ipv4_encap_bpf(): the device must take this packet. */
#define ENCAP_USE_DEVICE 1

/*
 * Encapsulate towards @remote (network byte order) with VNI @vni and send
 * it out of the underlay: the caller has checked the MTU and taken the TTL
 * down. Returns a tc verdict, -DROP_*, or ENCAP_USE_DEVICE with the packet
 * untouched. Global (common.h): its 150 bytes of headers and FIB query
 * would not fit into from_container's stack frame.
 */
__cm_global int ipv4_encap_bpf(struct __sk_buff *ctx, __u32 vni, __u32 remote,
			       struct trace_ctx *tc __arg_nonnull)
{
	struct bpf_fib_lookup fib = {};
	struct vxlan_encap h;
	struct iphdr *ip = &h.ip;
	__u32 outer_len = ctx->len - ETH_HLEN + VXLAN_ENCAP_LEN;
	__u16 sport;
	int rc;

	if (!tc) /* kernels before 6.8 (common.h, __arg_nonnull) */
		return ENCAP_USE_DEVICE;
	if (outer_len > 0xffff)
		return ENCAP_USE_DEVICE;
	fib.family = AF_INET;
	fib.l4_protocol = IPPROTO_UDP;
	fib.ipv4_src = CFG_NODE_IP;
	fib.ipv4_dst = remote;
	fib.ifindex = ctx->ifindex;
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return ENCAP_USE_DEVICE;
	if (bpf_skb_load_bytes(ctx, 0, &h.inner, ETH_HLEN) < 0)
		return -DROP_INVALID_PACKET;

	/* Source port from the inner flow's hash, as the device picks it:
	 * the underlay spreads flows over paths (ECMP, RSS) by it. */
	sport = (bpf_get_hash_recalc(ctx) & 0x3fff) | 0xc000;

	__builtin_memcpy(h.eth.h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(h.eth.h_source, fib.smac, ETH_ALEN);
	h.eth.h_proto = bpf_htons(ETH_P_IP);
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(outer_len);
	ip->id = 0;
	ip->frag_off = bpf_htons(CM_IP_DF);
	ip->ttl = CM_TUNNEL_TTL;
	ip->protocol = IPPROTO_UDP;
	ip->check = 0;
	ip->saddr = CFG_NODE_IP;
	ip->daddr = remote;
	ip->check = ~csum_fold32(bpf_csum_diff(NULL, 0, (__be32 *)ip, sizeof(*ip), 0));
	h.udp.source = bpf_htons(sport);
	h.udp.dest = bpf_htons(CFG_TUNNEL_PORT);
	h.udp.len = bpf_htons(outer_len - sizeof(struct iphdr));
	h.udp.check = 0;
	h.vx.flags = bpf_htonl(VXLAN_FLAG_VNI);
	h.vx.vni = bpf_htonl(vni << 8);

	/* FIXED_GSO: a GSO packet keeps the pod's segment size; the underlay
	 * cuts UDP-tunnel segments of it (the pod's MTU already leaves room
	 * for these 50 bytes). A refusal leaves the packet as it was: one the
	 * pod encapsulated itself (-EALREADY: the skb is marked
	 * encapsulated already), or one the kernel cannot grow, goes to the
	 * device, which nests tunnels. */
	if (bpf_skb_adjust_room(ctx, VXLAN_ENCAP_LEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 |
				BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH |
				BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN)) < 0)
		return ENCAP_USE_DEVICE;
	if (bpf_skb_store_bytes(ctx, 0, &h.eth, VXLAN_ENCAP_WIRE, 0) < 0)
		return -DROP_WRITE_ERROR;

	tc->tunnel_endpoint = remote;
	tc->target_ifindex = fib.ifindex;
	tc->reason = TRACE_TO_OVERLAY;
	/* The outer MACs are the FIB's; zeros while the neighbour is
	 * unresolved, which bpf_redirect_neigh then writes. */
	return fib_redirect(&fib, rc);
}

/*
 * A VXLAN packet for this node on the underlay (@ip: its outer header, the
 * destination CFG_NODE_IP): strips the outer headers and returns the VNI,
 * or -1 with the packet untouched when the device must take it.
 */
static __always_inline __s64 vxlan_decap(struct __sk_buff *ctx, const struct iphdr *ip)
{
	struct {
		struct udphdr udp;
		struct vxlan_hdr vx;
		struct ethhdr inner;
	} __attribute__((packed)) h;

	if (ip->protocol != IPPROTO_UDP || ip->ihl != 5 ||
	    (ip->frag_off & bpf_htons(CM_IP_MF | CM_IP_OFFSET)))
		return -1;
	if (bpf_skb_load_bytes(ctx, ETH_HLEN + sizeof(struct iphdr), &h, sizeof(h)) < 0)
		return -1;
	if (h.udp.dest != bpf_htons(CFG_TUNNEL_PORT) || h.udp.check != 0 ||
	    !(h.vx.flags & bpf_htonl(VXLAN_FLAG_VNI)) || h.inner.h_proto != bpf_htons(ETH_P_IP))
		return -1;
	if (bpf_skb_adjust_room(ctx, -(__s32)VXLAN_ENCAP_LEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO) < 0)
		return -1;
	return bpf_ntohl(h.vx.vni) >> 8;
}

#endif /* CM_ENCAP_H */

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Packet parsing and checksum helpers shared by every clustermesh program.
 *
 * Every read of a header goes through a bounds check against data_end; a
 * header that is not in the linear part of the skb is pulled in first
 * (bpf_skb_pull_data) so that veth/vxlan skbs with paged headers still parse.
 * Helpers return false/0 on "cannot parse" and leave the choice of drop
 * reason to the caller, so this header does not depend on drop.h.
 */
#ifndef CM_COMMON_H
#define CM_COMMON_H

#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/*
 * ARP header (RFC 826) and the constants we use. The kernel's UAPI
 * <linux/if_arp.h> pulls in <linux/if.h>, which includes glibc's
 * <sys/socket.h>; the datapath is built without any libc headers
 * (bpf/Makefile), so the few definitions it needs live here.
 */
#define ARPHRD_ETHER  1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY   2

struct arphdr {
	__be16 ar_hrd;
	__be16 ar_pro;
	__u8 ar_hln;
	__u8 ar_pln;
	__be16 ar_op;
};

#ifndef __maybe_unused
#define __maybe_unused __attribute__((unused))
#endif

/*
 * A global BPF function (BPF-to-BPF call, never inlined): the verifier checks
 * it once per program, on its own, with its arguments as their types say
 * (the context, unknown scalars, pointers to memory of the pointee's size)
 * and its return value unknown to the caller, instead of once for every
 * state a caller reaches it in. What inlined helpers at several call sites
 * of from_container cost in verifier time (hundreds of thousands of
 * instructions, most of an agent's start) goes away for about 1 ns per call
 * (BENCHMARKS.md, load). Rules the verifier sets: the return value is a
 * scalar (never a pointer into a map), a pointer argument points to a struct
 * of scalars, and a caller's packet pointers are invalid after a call to one
 * that may change the packet (then the caller parses again). Non-static on
 * purpose: a static function would be verified per call site.
 */
#define __cm_global __attribute__((noinline))

/* A pointer argument of a global function the verifier may assume is not
 * NULL (kernel 6.8+ BTF tag); every caller passes its own stack's struct.
 * Kernels before 6.8 ignore the tag and hand the function a pointer that may
 * be NULL, which it must test before use: each global function does (one
 * compare; dead on 6.8+), failing closed where it decides a drop. */
#define __arg_nonnull __attribute__((btf_decl_tag("arg:nonnull")))

/* TTL of the outer (VXLAN) header; IPDEFTTL of the kernel. */
#define CM_TUNNEL_TTL 64

/* IPv4 fragment offset mask and "more fragments"/"don't fragment" bits. */
#define CM_IP_MF     0x2000
#define CM_IP_DF     0x4000
#define CM_IP_OFFSET 0x1fff

/*
 * skb->mark of a packet one of our programs already checked and redirected
 * into a pod through the egress of its host-side veth (bpf_redirect without
 * _peer: delivery with CFG_REDIRECT_PEER off, the ARP reply, a service RST):
 * to_container lets exactly such a packet through once, unchecked, and
 * clears the mark. bpf_redirect_peer skips that egress, so it sets no mark.
 * Only the bits under CM_MARK_MASK are ours; the stack never sets them (a
 * root user's iptables MARK rule setting this value would skip ingress
 * policy from the stack, like any root user can detach the program).
 */
#define CM_MARK_MASK      0xffff0000U
#define CM_MARK_DELIVERED 0x434d0000U /* "CM" */

/*
 * Emit @type into the object's BTF without creating a map or a helper call.
 * The TypeScript codecs are checked against BTF (src/datapath/maps/btf.test.ts);
 * structs and enums that reach userspace only through the ring buffer or as
 * bare numbers would otherwise not appear there. The anchors are unused
 * zero-initialised .rodata variables named __cm_btf_<name>.
 */
#define CM_BTF_EXPORT(type, name) \
	const volatile type __cm_btf_##name __maybe_unused

/* Make sure the first @len bytes of the packet are in the linear area. */
static __always_inline bool pkt_pull(struct __sk_buff *ctx, __u32 len)
{
	if ((void *)(long)ctx->data + len <= (void *)(long)ctx->data_end)
		return true;
	if (len > ctx->len)
		return false;
	return bpf_skb_pull_data(ctx, len) == 0;
}

/* Ethernet header; the pointer is valid until the next packet-changing helper. */
static __always_inline bool parse_eth(struct __sk_buff *ctx, struct ethhdr **eth)
{
	void *data, *data_end;

	if (!pkt_pull(ctx, ETH_HLEN))
		return false;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + ETH_HLEN > data_end)
		return false;
	*eth = data;
	return true;
}

/*
 * Ethernet + IPv4 header including options. Rejects what no IPv4 stack would
 * accept: wrong version, IHL below 5, a header past the end of the packet, or
 * (for non-GSO packets, whose tot_len is exact) a total length shorter than
 * the header.
 */
static __always_inline bool parse_ipv4(struct __sk_buff *ctx, struct ethhdr **eth,
				       struct iphdr **ip)
{
	void *data, *data_end;
	struct iphdr *iph;
	__u32 hlen;

	if (!pkt_pull(ctx, ETH_HLEN + sizeof(struct iphdr)))
		return false;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	iph = data + ETH_HLEN;
	if ((void *)(iph + 1) > data_end)
		return false;
	if (iph->version != 4 || iph->ihl < 5)
		return false;
	hlen = iph->ihl * 4;
	if (hlen > sizeof(struct iphdr)) {
		/* Options: make them linear too (reloads the pointers). */
		if (!pkt_pull(ctx, ETH_HLEN + hlen))
			return false;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		iph = data + ETH_HLEN;
		if ((void *)(iph + 1) > data_end)
			return false;
		hlen = iph->ihl * 4;
		if ((void *)iph + hlen > data_end)
			return false;
	}
	if (ctx->gso_segs <= 1 && bpf_ntohs(iph->tot_len) < hlen)
		return false;
	*eth = data;
	*ip = iph;
	return true;
}

static __always_inline bool ipv4_is_later_fragment(const struct iphdr *ip)
{
	return (ip->frag_off & bpf_htons(CM_IP_OFFSET)) != 0;
}

/*
 * Ports (TCP/UDP/SCTP, host byte order) or ICMP type/code into sport and dport.
 * Uses bpf_skb_load_bytes so it neither needs a linear L4 header nor
 * invalidates packet pointers. Later fragments and other protocols give 0/0.
 */
static __always_inline void parse_l4_ports(struct __sk_buff *ctx, const struct iphdr *ip,
					   __u16 *sport, __u16 *dport)
{
	__u32 off = ETH_HLEN + ip->ihl * 4;
	__u8 b[4];

	*sport = 0;
	*dport = 0;
	if (ipv4_is_later_fragment(ip))
		return;
	switch (ip->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP: /* ports where TCP and UDP have them */
		if (bpf_skb_load_bytes(ctx, off, b, 4) < 0)
			return;
		*sport = ((__u16)b[0] << 8) | b[1];
		*dport = ((__u16)b[2] << 8) | b[3];
		break;
	case IPPROTO_ICMP:
		if (bpf_skb_load_bytes(ctx, off, b, 2) < 0)
			return;
		*sport = b[0]; /* type */
		*dport = b[1]; /* code */
		break;
	}
}

/*
 * Size of the IPv4 packets this skb will become on the wire. For GSO skbs the
 * kernel cuts segments of gso_size payload bytes later, so the IP total length
 * of the super-packet says nothing about the segments.
 */
static __always_inline __u32 ipv4_wire_len(struct __sk_buff *ctx, const struct iphdr *ip)
{
	__u32 hlen = ip->ihl * 4;
	__u8 doff = 0;

	if (ctx->gso_segs <= 1 || ctx->gso_size == 0)
		return bpf_ntohs(ip->tot_len);
	switch (ip->protocol) {
	case IPPROTO_TCP:
		/* data offset is the high nibble of byte 12 of the TCP header */
		if (bpf_skb_load_bytes(ctx, ETH_HLEN + hlen + 12, &doff, 1) < 0)
			return bpf_ntohs(ip->tot_len);
		return hlen + (doff >> 4) * 4 + ctx->gso_size;
	case IPPROTO_UDP:
		return hlen + sizeof(struct udphdr) + ctx->gso_size;
	default:
		return hlen + ctx->gso_size;
	}
}

/* Fold a 32-bit one's complement sum into 16 bits. */
static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/*
 * Incremental update of a 16-bit one's complement checksum when one 16-bit
 * word of the covered data changes from @old to @new (RFC 1624, eqn. 3).
 * All three values are in the same (network) byte order.
 */
static __always_inline void csum_replace2(__u16 *sum, __u16 old, __u16 new)
{
	__u32 s = (__u16)~*sum;

	s += (__u16)~old;
	s += new;
	*sum = ~csum_fold32(s);
}

/*
 * Forwarding hop: TTL - 1 with the header checksum patched in place. The
 * caller has checked ttl > 1. TTL shares a 16-bit word with the protocol.
 */
static __always_inline void ipv4_dec_ttl(struct iphdr *ip)
{
	__u16 old = bpf_htons(((__u16)ip->ttl << 8) | ip->protocol);
	__u16 new;

	ip->ttl--;
	new = bpf_htons(((__u16)ip->ttl << 8) | ip->protocol);
	csum_replace2(&ip->check, old, new);
}

static __always_inline void eth_set_macs(struct ethhdr *eth, const __u8 *dst, const __u8 *src)
{
	__builtin_memcpy(eth->h_dest, dst, ETH_ALEN);
	__builtin_memcpy(eth->h_source, src, ETH_ALEN);
}

#endif /* CM_COMMON_H */

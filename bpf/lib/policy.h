/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Network policy by identity (issue 5). The lookup implements exactly
 * src/policy/decide.ts for one (local endpoint, direction, remote identity,
 * protocol, destination port):
 *
 *   1. a matching deny entry drops (DROP_POLICY_DENY), enforced or not;
 *   2. a direction that is not enforced passes;
 *   3. a matching allow entry passes;
 *   4. otherwise the packet is dropped (DROP_POLICY, default deny).
 *
 * cm_policy is an LPM trie. The prefix always covers endpoint, direction,
 * protocol and identity (64 bits) and then 0..16 leading bits of the port,
 * so a port range is stored as the few prefixes that cover it (at most 30,
 * src/datapath/maps/policy-entries.ts) and "any port" is the /0 port prefix. Wildcards for
 * identity and protocol are the value 0 and cost one lookup each: four
 * lookups per check (two more for a CIDR identity, below). An LPM lookup returns only the longest matching
 * prefix, so the TypeScript side stores in every prefix the flags of itself
 * merged with all shorter stored prefixes of the same (endpoint, direction,
 * protocol, identity): one lookup then sees every entry that contains the
 * port, and "any matching deny" needs no second lookup.
 *
 * CIDR rules match by address, per address (issue 19): ipBlock,
 * toCIDR/fromCIDR(Set) select addresses, not identities, and Kubernetes
 * expects them to match pods and nodes too (an egress rule to a pod's /32,
 * a wide block whose `except` carves out one pod). An identity cannot say
 * that: several pods share one, and only some of their addresses may lie in
 * the block. So a peer has two identities here:
 *   - what it is: its identity from the endpoint map, the VNI or the
 *     ipcache (a pod, host, remote-node, world), as before;
 *   - where it is: the node-local CIDR identity (1<<24 | n, ipcache.h) of
 *     the longest prefix in cm_policy_cidr that contains its address, 0 when
 *     none does. cm_policy_cidr holds exactly the prefixes CIDR rules name
 *     (a block minus its excepts, as disjoint prefixes), whatever the
 *     address is: inside or outside the mesh, local, other node, other
 *     cluster. A rule for prefix P has entries for the CIDR identity of
 *     every named prefix inside P, so "P contains the address" is "P
 *     contains the longest named prefix containing it", exactly per address.
 * The checks look up both, and the flags are or-ed: a rule naming the
 * identity and a rule naming the block are two peers of a union; a deny by
 * either denies. Identity-based entries are untouched; an address no named
 * prefix contains costs one LPM lookup more and matches no CIDR rule (fails
 * closed). On ingress from the tunnel the identity is the VNI and the
 * address the inner source, so the check is per address there as well.
 *
 * Protocols without ports (ICMP, ...) and later fragments (no L4 header) are
 * looked up with the port prefix length 0, i.e. only entries for all ports
 * match them (decide() only knows TCP, UDP and SCTP).
 *
 * Replies: a check that would drop passes when the packet is the reverse of
 * a connection in cm_policy_ct. A connection is recorded there by a packet
 * that passed the checks of an endpoint with any enforcement switched on
 * (cm_policy_enforce), at that node; so with no enforcement nothing is
 * written and behaviour is exactly that of the datapath without policy.
 * A connection opened before its endpoint became enforced is not recorded:
 * its replies meet policy like new packets.
 *
 * Where: egress in from_container; ingress from a local pod in
 * from_container, from a remote pod in from_overlay, and from everything
 * the node's stack routes into a pod (world, CIDR peers, the host, other
 * nodes' stacks) in to_container (lxc.bpf.c), with the source identity from
 * the ipcache (world when no prefix matches). to_container records the
 * connections it admits, so replies of connections opened from outside
 * pass the pod's egress, and replies of connections the pod opened towards
 * the stack pass its ingress.
 *
 * The host (reserved identity 1) is exempt from default deny on ingress:
 * Kubernetes lets a node reach its own pods (kubelet probes), as Cilium's
 * allow-localhost=always. Deny entries that match the host (ingressDeny
 * fromEntities host, a deny for any identity, or a CIDR deny whose block
 * holds the node's address) still drop it.
 *
 * Cost: an endpoint without POLICY_ENFORCE_ACTIVE (no policy) costs one
 * inlined array lookup per check and nothing else. to_container adds an
 * endpoint and an ipcache lookup per packet from the stack (BPF_PROG_TEST_RUN
 * on a 2-vCPU VM: ~145 ns/packet including the test-run loop, the same as a
 * marked packet that is only let through; an enforced endpoint with a
 * matching fromCIDR allow and the conntrack refresh: ~290 ns). A check of
 * an enforced endpoint adds one cm_policy_cidr lookup, and two cm_policy
 * lookups when the address lies in a named prefix.
 */
#ifndef CM_POLICY_H
#define CM_POLICY_H

#include "common.h"
#include "metrics.h"
#include "conntrack.h"
#include "drop.h"
#include "ipcache.h"

#define POLICY_MAX_ENTRIES         65536
#define POLICY_ENFORCE_MAX_ENTRIES 65536 /* every __u16 endpoint id */
#define POLICY_CT_MAX_ENTRIES      65536
#define POLICY_CIDR_MAX_ENTRIES    65536

/* Bits of the prefix that are not the port: endpoint_id, direction,
 * protocol, identity. */
#define POLICY_PREFIX_FIXED 64
#define POLICY_PREFIX_FULL  (POLICY_PREFIX_FIXED + 16)

/* Bits of policy_value.flags. */
enum cm_policy_flag {
	POLICY_F_ALLOW = 1 << 0,
	POLICY_F_DENY  = 1 << 1,
};

/* Bits of policy_enforce_value.flags; a direction's bit is 1 << enum cm_direction. */
enum cm_policy_enforce_flag {
	POLICY_ENFORCE_ACTIVE  = 1 << 0, /* the endpoint has policy: entries or enforcement */
	POLICY_ENFORCE_INGRESS = 1 << DIR_INGRESS,
	POLICY_ENFORCE_EGRESS  = 1 << DIR_EGRESS,
};

/* 16 bytes. LPM key; prefixlen = 64 + leading bits of port that count. */
struct policy_key {
	__u32 prefixlen;   /* host byte order, 64..80 */
	__u16 endpoint_id; /* local endpoint (endpoint_info.endpoint_id), host byte order */
	__u8  direction;   /* enum cm_direction of the local endpoint */
	__u8  protocol;    /* IPPROTO_TCP/UDP/SCTP, 0 = any */
	__u32 identity;    /* remote identity, host byte order, 0 = any;
			    * ingress: the source, egress: the destination */
	__u16 port;        /* destination port, NETWORK byte order (the trie
			    * compares bytes most significant first) */
	__u16 pad;         /* 0, never part of the prefix */
};

/* 4 bytes. */
struct policy_value {
	__u32 flags; /* POLICY_F_*, merged with every shorter prefix (see above) */
};

/* 4 bytes; cm_policy_enforce is an array indexed by endpoint id (an inlined
 * lookup, so an endpoint without policy costs next to nothing). Without
 * POLICY_ENFORCE_ACTIVE the endpoint has no policy at all and its cm_policy
 * lookups are skipped: entries of an endpoint that is not ACTIVE here are
 * ignored (src/datapath/maps/policy-entries.ts sets ACTIVE for every endpoint with entries
 * or an enforced direction). */
struct policy_enforce_value {
	__u32 flags; /* POLICY_ENFORCE_* */
};

/* 16 bytes. A connection as its first packet went, after service
 * translation. Addresses and ports network byte order; ports 0 for protocols
 * without ports and later fragments (so ICMP is tracked per address pair and
 * protocol only: after A pinged B, any ICMP from B to A passes as a reply
 * while the entry lives). */
struct policy_ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8  proto;
	__u8  pad[3]; /* 0 */
};

/* 8 bytes. */
struct policy_ct_value {
	__u32 lifetime; /* expiry, seconds of CLOCK_MONOTONIC (as ct_entry) */
	__u32 flags;    /* CT_F_CLOSING or 0 */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, POLICY_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32); /* endpoint id */
	__type(value, struct policy_enforce_value);
	__uint(max_entries, POLICY_ENFORCE_MAX_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_policy_enforce SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct policy_ct_key);
	__type(value, struct policy_ct_value);
	__uint(max_entries, POLICY_CT_MAX_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_policy_ct SEC(".maps");

/* 8 bytes. LPM key like ipcache_key: the prefixes CIDR rules name. */
struct policy_cidr_key {
	__u32 prefixlen; /* host byte order, 0..32 */
	__u32 addr;      /* IPv4, network byte order */
};

/* 4 bytes. */
struct policy_cidr_value {
	__u32 identity; /* node-local CIDR identity (IDENTITY_SCOPE_LOCAL | n) */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_cidr_key);
	__type(value, struct policy_cidr_value);
	__uint(max_entries, POLICY_CIDR_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_policy_cidr SEC(".maps");

CM_BTF_EXPORT(enum cm_policy_flag, policy_flag);
CM_BTF_EXPORT(enum cm_policy_enforce_flag, policy_enforce_flag);

/* What the checks need of a packet. */
struct policy_pkt {
	__u32 saddr;     /* network byte order */
	__u32 daddr;     /* network byte order */
	__u16 sport;     /* host byte order, 0 when !has_ports */
	__u16 dport;     /* host byte order, 0 when !has_ports */
	__u8  proto;
	__u8  has_ports; /* TCP/UDP/SCTP with its L4 header (not a later fragment) */
	__u16 l4_off;    /* offset of the L4 header in the frame */
};

/* @tc: ports as parse_l4_ports() (or a translation) left them. */
static __always_inline void policy_pkt_init(const struct iphdr *ip, const struct trace_ctx *tc,
					    struct policy_pkt *p)
{
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->proto = ip->protocol;
	p->l4_off = ETH_HLEN + ip->ihl * 4;
	p->has_ports = (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP ||
			ip->protocol == IPPROTO_SCTP) && !ipv4_is_later_fragment(ip);
	p->sport = p->has_ports ? tc->sport : 0;
	p->dport = p->has_ports ? tc->dport : 0;
}

/*
 * After service translation (lb.h): @rewritten (its return value > 0) means
 * the packet changed and the helpers that changed it invalidated the header
 * pointers, so the header is read again and described anew for policy;
 * otherwise the packet is still what @orig describes.
 */
static __always_inline bool policy_pkt_after_lb(struct __sk_buff *ctx, int rewritten,
						const struct trace_ctx *tc,
						const struct policy_pkt *orig,
						struct policy_pkt *pkt,
						struct ethhdr **eth, struct iphdr **ip)
{
	if (rewritten <= 0) {
		*pkt = *orig;
		return true;
	}
	if (!parse_ipv4(ctx, eth, ip))
		return false;
	policy_pkt_init(*ip, tc, pkt);
	return true;
}

/* TCP flags for the conntrack lifetime, loaded only when conntrack is
 * touched (translation never changes them); 0 for other protocols. */
static __always_inline __u8 policy_tcp_flags(struct __sk_buff *ctx, const struct policy_pkt *p)
{
	__u8 flags = 0;

	if (p->has_ports && p->proto == IPPROTO_TCP &&
	    bpf_skb_load_bytes(ctx, p->l4_off + 13, &flags, 1) < 0)
		return 0;
	return flags;
}


static __always_inline __u32 policy_flags(__u16 endpoint_id, __u8 dir, __u8 proto,
					  __u32 identity, const struct policy_pkt *p)
{
	struct policy_key key = {
		.prefixlen = p->has_ports ? POLICY_PREFIX_FULL : POLICY_PREFIX_FIXED,
		.endpoint_id = endpoint_id,
		.direction = dir,
		.protocol = proto,
		.identity = identity,
		.port = bpf_htons(p->dport),
	};
	const struct policy_value *v = bpf_map_lookup_elem(&cm_policy, &key);

	return v ? v->flags : 0;
}

/* The CIDR identity of @addr (network byte order): that of the longest
 * prefix a CIDR rule names around it, 0 when there is none. */
static __always_inline __u32 policy_cidr_identity(__u32 addr)
{
	struct policy_cidr_key key = { .prefixlen = 32, .addr = addr };
	const struct policy_cidr_value *v = bpf_map_lookup_elem(&cm_policy_cidr, &key);

	return v ? v->identity : 0;
}

/* For events: world says little when a CIDR identity names the address. */
static __always_inline __u32 policy_report_identity(__u32 identity, __u32 addr)
{
	__u32 cidr;

	if (identity != IDENTITY_WORLD)
		return identity;
	cidr = policy_cidr_identity(addr);
	return cidr ? cidr : identity;
}

/* The reverse of a recorded connection, i.e. a reply: refreshed, true. */
static __always_inline bool policy_ct_is_reply(struct __sk_buff *ctx, const struct policy_pkt *p)
{
	struct policy_ct_key key = {
		.saddr = p->daddr,
		.daddr = p->saddr,
		.sport = bpf_htons(p->dport),
		.dport = bpf_htons(p->sport),
		.proto = p->proto,
	};
	struct policy_ct_value *v = bpf_map_lookup_elem(&cm_policy_ct, &key);
	__u32 now = ct_now();
	__u8 tcp_flags;
	__u16 flags;

	if (!v || v->lifetime < now)
		return false;
	tcp_flags = policy_tcp_flags(ctx, p);
	flags = ct_flags_after(v->flags, p->proto, tcp_flags);
	now += ct_timeout(p->proto, tcp_flags, flags);
	if (v->lifetime != now || v->flags != flags) {
		v->lifetime = now;
		v->flags = flags;
	}
	return true;
}

/* Record (or refresh) the connection of a packet that passed. A reply of a
 * recorded connection only refreshes that: recorded in its own direction it
 * would make the next packet of the opener look like a reply, past a deny
 * (ICMP is tracked per address pair: an echo reply recorded as a connection
 * would admit every later echo request). A full LRU evicts; a failed write
 * only costs the replies a policy check. Global (common.h): called only
 * for enforced endpoints; returns 0. */
__cm_global int policy_ct_record(struct __sk_buff *ctx, const struct policy_pkt *p __arg_nonnull)
{
	if (!p) /* kernels before 6.8 (common.h, __arg_nonnull) */
		return 0;
	struct policy_ct_key key = {
		.saddr = p->saddr,
		.daddr = p->daddr,
		.sport = bpf_htons(p->sport),
		.dport = bpf_htons(p->dport),
		.proto = p->proto,
	};
	struct policy_ct_value *v = bpf_map_lookup_elem(&cm_policy_ct, &key);
	struct policy_ct_value init = {};
	__u8 tcp_flags = policy_tcp_flags(ctx, p);
	__u32 now = ct_now();
	__u16 flags;

	if (v) {
		flags = ct_flags_after(v->flags, p->proto, tcp_flags);
		now += ct_timeout(p->proto, tcp_flags, flags);
		if (v->lifetime != now || v->flags != flags) {
			v->lifetime = now;
			v->flags = flags;
		}
		return 0;
	}
	if (policy_ct_is_reply(ctx, p))
		return 0;
	init.flags = ct_flags_after(0, p->proto, tcp_flags);
	init.lifetime = now + ct_timeout(p->proto, tcp_flags, init.flags);
	bpf_map_update_elem(&cm_policy_ct, &key, &init, BPF_ANY);
	return 0;
}

/* policy_check_enforced()'s @who: endpoint id, direction, and whether that
 * direction is enforced, in one argument (a BPF call takes five). */
#define POLICY_WHO(endpoint_id, dir, enforced) \
	((__u32)(endpoint_id) | ((__u32)(dir) << 16) | ((enforced) ? 1U << 24 : 0))

/*
 * The lookups of policy_check() for an endpoint with policy, @who from
 * POLICY_WHO(). Global (common.h): policy_check() runs at two places of
 * from_container, and inlined there the verifier walked these six LPM
 * lookups and the conntrack test again for every state it reached them in.
 * An endpoint without policy never calls it. Returns 0 or -DROP_*.
 */
__cm_global int policy_check_enforced(struct __sk_buff *ctx, __u32 who, __u32 remote,
				      const struct policy_pkt *p __arg_nonnull,
				      const struct policy_pkt *orig __arg_nonnull)
{
	__u16 endpoint_id = who & 0xffff;
	__u8 dir = (who >> 16) & 0xff;
	bool enforced = who & (1U << 24);
	__u32 flags, cidr;
	__u8 proto;
	int ret;

	if (!p || !orig) /* kernels before 6.8 (common.h, __arg_nonnull): fail closed */
		return -DROP_POLICY;
	proto = p->proto;
	flags = policy_flags(endpoint_id, dir, proto, remote, p);
	flags |= policy_flags(endpoint_id, dir, proto, 0, p);
	flags |= policy_flags(endpoint_id, dir, 0, remote, p);
	flags |= policy_flags(endpoint_id, dir, 0, 0, p);
	cidr = policy_cidr_identity(dir == DIR_INGRESS ? p->saddr : p->daddr);
	if (cidr && cidr != remote) {
		flags |= policy_flags(endpoint_id, dir, proto, cidr, p);
		flags |= policy_flags(endpoint_id, dir, 0, cidr, p);
	}

	if (flags & POLICY_F_DENY)
		ret = -DROP_POLICY_DENY;
	else if (!enforced)
		return 0;
	else if (dir == DIR_INGRESS && remote == IDENTITY_HOST)
		return 0; /* the node reaches its pods (see the top) */
	else if (flags & POLICY_F_ALLOW)
		return 0;
	else
		ret = -DROP_POLICY;
	if (policy_ct_is_reply(ctx, orig))
		return 0;
	return ret;
}

/*
 * Policy of local endpoint @endpoint_id in direction @dir (DIR_INGRESS: @p
 * comes from @remote; DIR_EGRESS: it goes to @remote), and of the peer's
 * address (its source on ingress, destination on egress) for CIDR rules
 * (see the top). Returns 0 to pass or
 * -DROP_POLICY_DENY / -DROP_POLICY. @orig is the packet as it arrived, before
 * any service translation: a reply is the reverse of a recorded connection
 * only before its reverse NAT. *@track becomes true when the endpoint
 * has any enforcement, i.e. the caller should record the connection once
 * every check passed.
 */
static __always_inline int policy_check(struct __sk_buff *ctx, __u16 endpoint_id, __u8 dir,
					__u32 remote, const struct policy_pkt *p,
					const struct policy_pkt *orig, bool *track)
{
	const struct policy_enforce_value *ev;
	__u32 ekey = endpoint_id;
	__u32 enforce;

	ev = bpf_map_lookup_elem(&cm_policy_enforce, &ekey);
	if (!ev || !(ev->flags & POLICY_ENFORCE_ACTIVE))
		return 0;
	enforce = ev->flags;
	if (enforce & (POLICY_ENFORCE_INGRESS | POLICY_ENFORCE_EGRESS))
		*track = true;
	return policy_check_enforced(ctx, POLICY_WHO(endpoint_id, dir, enforce & (1U << dir)),
				     remote, p, orig);
}

#endif /* CM_POLICY_H */

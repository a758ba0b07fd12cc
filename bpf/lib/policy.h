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
 * a connection in cm_policy_conn. A connection is recorded there by a packet
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
 * Established connections (policy_enforce(), policy_fast()): a packet of a
 * recorded connection skips the lookups above when their answer is known.
 * A reply passes on its connection, as the checks would let it. A packet in
 * the recorded direction passes when the connection's cached verdict says
 * the same checks (the endpoints, directions and remote identities, the
 * packet having ports or not) passed by policy at the same revision of
 * policy (cm_policy_rev, which every writer of cm_policy, cm_policy_enforce
 * and cm_policy_cidr changes after writing): the verdict is a function of
 * those maps, that description and the tuple, so it is the one the lookups
 * would give. A changed policy or a changed identity therefore applies to
 * the next packet of an existing connection, as before; drops always take
 * the lookups.
 *
 * One entry per connection (cm_policy_conn): both directions of a
 * connection have the same key (its two ends in a fixed order, lower
 * address and port first), and the entry says which way its opener sent
 * and holds the cached verdict. An established packet costs one hash
 * lookup per program, either way, and a new connection writes one LRU
 * entry. (Before, cm_policy_ct and cm_policy_verdict took a lookup of the
 * packet's own direction, one of its reverse and one of the verdict, and
 * a new connection wrote two entries; node.ts carries the live entries of
 * cm_policy_ct over on upgrade.)
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

/* 4 bytes. cm_policy_rev's one value: changed by the agent after every
 * write to cm_policy, cm_policy_enforce or cm_policy_cidr (the revision of
 * policy). A connection's cached verdict (policy_conn.verdict) holds only
 * while it is the same. */
struct policy_rev_value {
	__u32 rev;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32); /* 0 */
	__type(value, struct policy_rev_value);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_policy_rev SEC(".maps");

/* Bits of policy_verdict.checks: which checks a program made, and whether
 * the packet had ports (a later fragment is looked up without them). A
 * verdict with no check bit is no verdict (a connection recorded without
 * one). */
enum cm_policy_verdict_flag {
	POLICY_V_EGRESS  = 1 << 0, /* egress of egress_ep towards egress_remote */
	POLICY_V_INGRESS = 1 << 1, /* ingress of ingress_ep from ingress_remote */
	POLICY_V_PORTS   = 1 << 2, /* policy_pkt.has_ports */
};

/*
 * 20 bytes. What the checks of one program depended on besides the maps
 * that cm_policy_rev covers and the connection's tuple: the endpoints, the
 * remote identities (the ipcache, endpoint map or VNI said them per packet)
 * and the revision. A connection whose checks all passed by policy (not as
 * a reply) keeps it: a later packet of the connection in the same
 * direction with the same description at the same revision would get the
 * same answer, so it skips the lookups. Fields of a check not made are 0.
 */
struct policy_verdict {
	__u32 rev;
	__u32 egress_remote;
	__u32 ingress_remote;
	__u16 egress_ep;
	__u16 ingress_ep;
	__u32 checks; /* POLICY_V_*; 0: none cached */
};

/* Which way a connection's opener sent, in terms of its key. */
enum cm_policy_conn_way {
	POLICY_CONN_A_TO_B = 0,
	POLICY_CONN_B_TO_A = 1,
};

/* 16 bytes. A connection as its first packet went, after service
 * translation, the same for both directions: end a is the one with the
 * lower address (host order) or, at the same address, the lower port
 * (host order, 0 for protocols without ports and later fragments, so ICMP
 * is tracked per address pair and protocol only: after A pinged B, any
 * ICMP from B to A passes as a reply while the entry lives). Addresses and
 * ports are stored network byte order. */
struct policy_conn_key {
	__u32 addr_a;
	__u32 addr_b;
	__u16 port_a;
	__u16 port_b;
	__u8  proto;
	__u8  pad[3]; /* 0 */
};

/* 36 bytes. @sum guards against reading an entry while another CPU
 * replaces it (an LRU element can be reused at once, for another key):
 * policy_conn_sum() of the key, @opener and @verdict. The expiry, the
 * flags and @refresh_at are refreshed in place and are not in it. */
struct policy_conn {
	__u32 lifetime;   /* expiry, seconds of CLOCK_MONOTONIC (as ct_entry) */
	__u16 flags;      /* CT_F_CLOSING or 0 */
	__u8  opener;     /* enum cm_policy_conn_way */
	__u8  pad;
	__u32 refresh_at; /* policy_ticks() from which the next packet refreshes
			   * @lifetime (about a second after the last refresh);
			   * 0: the next packet does */
	struct policy_verdict verdict;
	__u32 sum;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct policy_conn_key);
	__type(value, struct policy_conn);
	__uint(max_entries, POLICY_CT_MAX_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_policy_conn SEC(".maps");

CM_BTF_EXPORT(enum cm_policy_conn_way, policy_conn_way);
CM_BTF_EXPORT(enum cm_policy_verdict_flag, policy_verdict_flag);
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

/* Seconds of CLOCK_MONOTONIC for cm_policy_conn: ct_now(), the coarse clock. */
static __always_inline __u32 policy_now(void)
{
	return ct_now();
}

/* The coarse clock in ticks of 2^24 ns (16.8 ms), without a division: when
 * a connection's expiry is refreshed next (policy_conn.refresh_at). A u32
 * wraps after 2.28 years; compared as a signed difference, so an entry left
 * unrefreshed for over 1.14 years would look fresh again (the agent's GC
 * deletes it within 30 s of its expiry, long before). */
#define POLICY_TICK_SHIFT    24
#define POLICY_REFRESH_TICKS 60 /* 1.007 s */

static __always_inline __u32 policy_ticks(void)
{
	return bpf_ktime_get_coarse_ns() >> POLICY_TICK_SHIFT;
}

/* TCP flags for the conntrack lifetime, loaded only when conntrack is
 * touched (translation never changes them); 0 for other protocols. Read in
 * place when the TCP header is in the linear part (nearly always: the
 * programs parsed the ports there), else copied out. */
static __always_inline __u8 policy_tcp_flags(struct __sk_buff *ctx, const struct policy_pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 off = p->l4_off;
	__u8 flags = 0;
	__u8 *f;

	if (!p->has_ports || p->proto != IPPROTO_TCP)
		return 0;
	if (off <= ETH_HLEN + 60) {
		f = data + off + 13;
		if ((void *)(f + 1) <= data_end)
			return *f;
	}
	if (bpf_skb_load_bytes(ctx, off + 13, &flags, 1) < 0)
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

/* The key of @p's connection (policy_conn_key), and which way @p goes in
 * its terms. */
static __always_inline __u8 policy_conn_key_of(const struct policy_pkt *p, struct policy_conn_key *key)
{
	__u32 s = bpf_ntohl(p->saddr), d = bpf_ntohl(p->daddr);
	bool ab = s < d || (s == d && p->sport <= p->dport);

	key->addr_a = ab ? p->saddr : p->daddr;
	key->addr_b = ab ? p->daddr : p->saddr;
	key->port_a = bpf_htons(ab ? p->sport : p->dport);
	key->port_b = bpf_htons(ab ? p->dport : p->sport);
	key->proto = p->proto;
	key->pad[0] = key->pad[1] = key->pad[2] = 0;
	return ab ? POLICY_CONN_A_TO_B : POLICY_CONN_B_TO_A;
}

/* policy_conn.sum (src/datapath/maps/policy.ts computes the same). */
static __always_inline __u32 policy_conn_sum(const struct policy_conn_key *k, const struct policy_conn *c)
{
	const struct policy_verdict *v = &c->verdict;
	__u32 h = (k->addr_a ^ c->opener) * 0x9e3779b1U;

	h = (h ^ k->addr_b) * 0x85ebca6bU;
	h = (h ^ (((__u32)k->port_a << 16) | k->port_b)) * 0xc2b2ae35U;
	h = (h ^ k->proto) * 0x27d4eb2fU;
	h = (h ^ v->rev) * 0x165667b1U;
	h = (h ^ v->egress_remote) * 0x9e3779b1U;
	h = (h ^ v->ingress_remote) * 0x85ebca6bU;
	h = (h ^ (((__u32)v->egress_ep << 16) | v->ingress_ep)) * 0xc2b2ae35U;
	h = (h ^ v->checks) * 0x27d4eb2fU;
	return h ^ (h >> 15);
}

/* Refresh a recorded connection for a packet of @p (either way) with
 * @tcp_flags, at @t (policy_ticks()) and @now (policy_now()): in place,
 * none of it is in the sum. */
static __always_inline void policy_conn_refresh(const struct policy_pkt *p, struct policy_conn *e,
						__u8 tcp_flags, __u32 t, __u32 now)
{
	__u16 flags = ct_flags_after(e->flags, p->proto, tcp_flags);

	now += ct_timeout(p->proto, tcp_flags, flags);
	if (e->lifetime != now || e->flags != flags) {
		e->lifetime = now;
		e->flags = flags;
	}
	e->refresh_at = (t + POLICY_REFRESH_TICKS) ?: 1;
}

/*
 * A packet that changes nothing of its connection's state (no SYN, FIN or
 * RST) less than a second after the connection was refreshed leaves it as
 * it is: its expiry is then at least its timeout less a second ahead (10 s
 * at the least), so the connection is live, and a refresh would move the
 * expiry by less than a second. This spares the clock's division and the
 * compares on nearly every packet (bench/programs: 20-40 ns per program
 * that enforces). An expiry may therefore come up to a second early.
 */
static __always_inline bool policy_conn_fresh(const struct policy_conn *c, __u32 t, __u8 tcp_flags)
{
	return c->refresh_at && (__s32)(t - c->refresh_at) < 0 &&
	       !(tcp_flags & (CM_TCP_SYN | CM_TCP_FIN | CM_TCP_RST));
}

/* The entry under @key: false without one or when the copy in *@c was not
 * read whole (its sum does not hold: the checks run); true with *@e the
 * entry (to refresh) and *@c its copy (to read). */
static __always_inline bool policy_conn_read(const struct policy_conn_key *key, struct policy_conn **e,
					     struct policy_conn *c)
{
	struct policy_conn *v = bpf_map_lookup_elem(&cm_policy_conn, key);

	if (!v)
		return false;
	*c = *v;
	if (c->sum != policy_conn_sum(key, c))
		return false;
	*e = v;
	return true;
}

/* The reverse of a live recorded connection, i.e. a reply: refreshed, true. */
static __always_inline bool policy_conn_is_reply(struct __sk_buff *ctx, const struct policy_pkt *p)
{
	struct policy_conn_key key;
	struct policy_conn c, *e;
	__u8 way = policy_conn_key_of(p, &key);
	__u32 now = policy_now();

	if (!policy_conn_read(&key, &e, &c) || c.opener == way || c.lifetime < now)
		return false;
	policy_conn_refresh(p, e, policy_tcp_flags(ctx, p), policy_ticks(), now);
	return true;
}

/* @cached describes the checks @sig describes, at the same revision. */
static __always_inline bool policy_verdict_holds(const struct policy_verdict *cached,
						 const struct policy_verdict *sig)
{
	return cached->rev == sig->rev && cached->egress_remote == sig->egress_remote &&
	       cached->ingress_remote == sig->ingress_remote &&
	       cached->egress_ep == sig->egress_ep && cached->ingress_ep == sig->ingress_ep &&
	       cached->checks == sig->checks;
}

/* Record (or refresh) the connection of a packet that passed. A reply of a
 * live recorded connection only refreshes that: the entry keeps its opener,
 * or the next packet of the opener would look like a reply, past a deny
 * (ICMP is tracked per address pair: an echo reply recorded as a connection
 * would admit every later echo request). An expired entry of the other way
 * is replaced: this packet opens a new connection. A full LRU evicts; a
 * failed write only costs the replies a policy check. @store: every check
 * passed by policy (none as a reply), so @sig becomes the connection's
 * cached verdict. Global (common.h): called only for enforced endpoints;
 * returns 0. */
__cm_global int policy_conn_record(struct __sk_buff *ctx, const struct policy_pkt *p __arg_nonnull,
				   const struct policy_verdict *sig __arg_nonnull, __u32 store)
{
	if (!p || !sig) /* kernels before 6.8 (common.h, __arg_nonnull) */
		return 0;
	struct policy_conn_key key;
	struct policy_conn c, *e;
	__u8 way = policy_conn_key_of(p, &key);
	__u8 tcp_flags = policy_tcp_flags(ctx, p);
	__u32 t = policy_ticks();
	__u32 now = policy_now();

	if (policy_conn_read(&key, &e, &c) && (c.opener == way || c.lifetime >= now)) {
		policy_conn_refresh(p, e, tcp_flags, t, now);
		if (c.opener != way || !store || policy_verdict_holds(&c.verdict, sig))
			return 0;
		/* The same connection, a verdict (again): a new element below,
		 * never a change in place, so a reader sees one or the other. */
		c.lifetime = e->lifetime;
		c.flags = e->flags;
	} else {
		c.flags = ct_flags_after(0, p->proto, tcp_flags);
		c.lifetime = now + ct_timeout(p->proto, tcp_flags, c.flags);
		c.opener = way;
		c.pad = 0;
	}
	c.refresh_at = (t + POLICY_REFRESH_TICKS) ?: 1;
	if (store)
		c.verdict = *sig;
	else
		__builtin_memset(&c.verdict, 0, sizeof(c.verdict));
	c.sum = policy_conn_sum(&key, &c);
	bpf_map_update_elem(&cm_policy_conn, &key, &c, BPF_ANY);
	return 0;
}

/*
 * Packets of a recorded connection without the lookups; the answers are
 * those of the checks (policy_enforce() runs them otherwise):
 *   - a packet the way the connection's opener sent whose checks, as @sig
 *     describes them at this revision, passed by policy before (the
 *     connection's verdict) passes again, and refreshes the connection as
 *     policy_conn_record() would;
 *   - a reply (the other way, while the connection lives) that no
 *     translation changed passes every check (policy_check_enforced() lets
 *     a reply through whatever it finds) and refreshes its connection, as
 *     policy_conn_record() would.
 * One lookup of cm_policy_conn. Returns 1 when the packet passed here, 0
 * when the checks must run. Global (common.h); called only when an
 * endpoint is enforced.
 */
__cm_global int policy_fast(struct __sk_buff *ctx, const struct policy_pkt *p __arg_nonnull,
			    const struct policy_pkt *orig __arg_nonnull,
			    const struct policy_verdict *sig __arg_nonnull)
{
	struct policy_conn_key key;
	struct policy_conn c, *e;
	__u8 way, tcp_flags;
	__u32 t, now;

	if (!p || !orig || !sig) /* kernels before 6.8 (common.h, __arg_nonnull) */
		return 0;
	way = policy_conn_key_of(p, &key);
	if (!policy_conn_read(&key, &e, &c))
		return 0;
	if (c.opener == way) {
		if (!policy_verdict_holds(&c.verdict, sig))
			return 0;
	} else if (p->saddr != orig->saddr || p->daddr != orig->daddr || p->sport != orig->sport ||
		   p->dport != orig->dport || p->proto != orig->proto) {
		return 0;
	}
	tcp_flags = policy_tcp_flags(ctx, p);
	t = policy_ticks();
	if (policy_conn_fresh(&c, t, tcp_flags))
		return 1;
	now = policy_now();
	if (c.opener != way && c.lifetime < now)
		return 0;
	policy_conn_refresh(p, e, tcp_flags, t, now);
	return 1;
}

/* policy_check_enforced()'s @who: endpoint id, direction, and whether that
 * direction is enforced, in one argument (a BPF call takes five). */
#define POLICY_WHO(endpoint_id, dir, enforced) \
	((__u32)(endpoint_id) | ((__u32)(dir) << 16) | ((enforced) ? 1U << 24 : 0))

/*
 * The lookups of one check for an endpoint with policy, @who from
 * POLICY_WHO(). Global (common.h): inlined, the verifier walked these six
 * LPM lookups and the conntrack test again for every state it reached them
 * in. An endpoint without policy never calls it. Returns 0 (passed by
 * policy), 1 (would drop, but a reply of a recorded connection) or
 * -DROP_*.
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
	if (policy_conn_is_reply(ctx, orig))
		return 1;
	return ret;
}

/* cm_policy_enforce's flags of an endpoint with policy, 0 without. */
static __always_inline __u32 policy_enforce_flags(__u16 endpoint_id)
{
	const struct policy_enforce_value *ev;
	__u32 ekey = endpoint_id;

	ev = bpf_map_lookup_elem(&cm_policy_enforce, &ekey);
	if (!ev || !(ev->flags & POLICY_ENFORCE_ACTIVE))
		return 0;
	return ev->flags;
}

static __always_inline __u32 policy_rev(void)
{
	const struct policy_rev_value *v;
	__u32 zero = 0;

	v = bpf_map_lookup_elem(&cm_policy_rev, &zero);
	return v ? v->rev : 0;
}

/*
 * The policy one program applies to @p: egress of sig->egress_ep towards
 * sig->egress_remote (POLICY_V_EGRESS in sig->checks), then ingress of
 * sig->ingress_ep from sig->ingress_remote (POLICY_V_INGRESS); the
 * caller fills those, the rest of @sig is 0. Each check is that of the
 * endpoint in its direction (DIR_INGRESS: @p comes from the remote;
 * DIR_EGRESS: it goes to it), and of the peer's address (its source on
 * ingress, destination on egress) for CIDR rules (see the top). @orig is
 * the packet as it arrived, before any service translation: a reply is the
 * reverse of a recorded connection only before its reverse NAT. When an
 * endpoint has any enforcement, a packet that passed is recorded, and a
 * packet of a recorded connection may pass without the lookups
 * (policy_fast()). Returns 0 to pass or -DROP_POLICY_DENY / -DROP_POLICY
 * with *@drop_dir the direction of the check that said no.
 */
static __always_inline int policy_enforce(struct __sk_buff *ctx, struct policy_verdict *sig,
					  const struct policy_pkt *p, const struct policy_pkt *orig,
					  __u8 *drop_dir)
{
	__u32 eg = 0, in = 0;
	int r, replied = 0;
	bool track;

	if (sig->checks & POLICY_V_EGRESS)
		eg = policy_enforce_flags(sig->egress_ep);
	if (sig->checks & POLICY_V_INGRESS)
		in = policy_enforce_flags(sig->ingress_ep);
	if (!(eg | in))
		return 0;
	if (p->has_ports)
		sig->checks |= POLICY_V_PORTS;
	track = (eg | in) & (POLICY_ENFORCE_INGRESS | POLICY_ENFORCE_EGRESS);
	if (track) {
		/* Read before any lookup: a verdict stored under it was
		 * reached with maps at least as new. */
		sig->rev = policy_rev();
		if (policy_fast(ctx, p, orig, sig))
			return 0;
	}
	if (eg) {
		r = policy_check_enforced(ctx, POLICY_WHO(sig->egress_ep, DIR_EGRESS,
							  eg & POLICY_ENFORCE_EGRESS),
					  sig->egress_remote, p, orig);
		if (r < 0) {
			*drop_dir = DIR_EGRESS;
			return r;
		}
		replied |= r;
	}
	if (in) {
		r = policy_check_enforced(ctx, POLICY_WHO(sig->ingress_ep, DIR_INGRESS,
							  in & POLICY_ENFORCE_INGRESS),
					  sig->ingress_remote, p, orig);
		if (r < 0) {
			*drop_dir = DIR_INGRESS;
			return r;
		}
		replied |= r;
	}
	if (track)
		policy_conn_record(ctx, p, sig, !replied);
	return 0;
}

#endif /* CM_POLICY_H */

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Service translation (east-west load balancing) for IPv4 TCP and UDP.
 *
 *   cm_services       VIP, port, protocol -> service (one per frontend)
 *   cm_backend_slots  service, slot -> backend id       (flag-less services)
 *   cm_maglev         service -> Maglev table of backend ids (SVC_F_MAGLEV)
 *   cm_backends       backend id -> address, port, cluster, flags
 *   cm_revnat         revnat id -> VIP, port (what replies are rewritten to)
 *   cm_affinity       client, service -> backend, last use (SVC_F_AFFINITY)
 *   cm_ct             conntrack.h
 *   cm_lb_hint        which addresses may be a VIP or a backend (below)
 *
 * The control plane (src/loadbalancer) computes the slot and Maglev tables,
 * already filtered by topology affinity and readiness; the datapath only
 * hashes a connection onto them. It still refuses, for a new connection, a
 * backend flagged terminating, not ready or cluster-gone, so neither a table
 * not yet rewritten after such a flag change nor a session-affinity entry
 * can send new connections there; it then probes the next few slots.
 * Backends that take no new connections stay in cm_backends for the
 * connections they have.
 */
#ifndef CM_LB_H
#define CM_LB_H

#include "common.h"
#include "events.h"
#include "drop.h"
#include "conntrack.h"

#define LB_SERVICES_MAX_ENTRIES 131072
#define LB_BACKENDS_MAX_ENTRIES 131072
#define LB_SLOTS_MAX_ENTRIES    262144
#define LB_REVNAT_MAX_ENTRIES   131072
#define LB_MAGLEV_MAX_ENTRIES   8192
#define LB_AFFINITY_MAX_ENTRIES 65536

/* Entries of one Maglev table; prime. Changing it means a new map name. */
#define LB_MAGLEV_SIZE 1021

/* Slots tried after the hashed one when it holds no usable backend. */
#define LB_SELECT_TRIES 4

#define LB_HASH_SEED 0x9e3779b9

/* Hide a value from the optimiser so that a bounds check on it stays. */
#define lb_barrier_var(v) asm volatile("" : "+r"(v))

/*
 * Source a pod's connection gets when it reaches itself through a VIP
 * (hairpin): the pod's stack drops packets whose source is one of its own
 * addresses, so the source becomes this link-local address, which the pod
 * routes back through its gateway, i.e. into from_container, where the
 * CT_REVNAT entry turns the reply into VIP -> pod again. 169.254.42.1.
 */
#define LB_HAIRPIN_IP bpf_htonl(0xa9fe2a01)

/* Bits of lb_service_value.flags; stable API (TypeScript services.ts). */
enum lb_service_flag {
	SVC_F_AFFINITY = 1 << 0, /* sessionAffinity ClientIP: cm_affinity, affinity_timeout */
	SVC_F_MAGLEV   = 1 << 1, /* backends from cm_maglev instead of cm_backend_slots */
};

/* Bits of lb_backend_value.flags; stable API (TypeScript backends.ts). */
enum lb_backend_flag {
	BACKEND_F_TERMINATING  = 1 << 0, /* keeps its connections, takes no new ones */
	BACKEND_F_CLUSTER_GONE = 1 << 1, /* its cluster announced it gone: no new connections */
	BACKEND_F_NOT_READY    = 1 << 2, /* not ready: keeps its connections, takes no new ones */
};

#define BACKEND_F_NO_NEW (BACKEND_F_TERMINATING | BACKEND_F_CLUSTER_GONE | BACKEND_F_NOT_READY)

/* 8 bytes. vip and dport network byte order. */
struct lb_service_key {
	__u32 vip;
	__u16 dport;
	__u8  proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8  pad;   /* 0 */
};

/* 16 bytes, host byte order. */
struct lb_service_value {
	__u32 service_id;       /* key of cm_backend_slots / cm_maglev / cm_affinity */
	__u32 revnat_id;        /* cm_revnat key for the replies */
	__u32 affinity_timeout; /* seconds, with SVC_F_AFFINITY */
	__u16 backend_count;    /* slots 0..count-1 in cm_backend_slots; with
				 * SVC_F_MAGLEV the number of backends in the
				 * table. 0 = no backend: DROP_NO_SERVICE_BACKEND */
	__u16 flags;            /* SVC_F_* */
};

/* 12 bytes; key: the backend id (__u32, host byte order, 0 is never used). */
struct lb_backend_value {
	__u32 addr;       /* IPv4, network byte order */
	__u16 port;       /* network byte order */
	__u16 cluster_id; /* host byte order; cluster of the backend */
	__u8  flags;      /* BACKEND_F_* */
	__u8  pad[3];     /* 0 */
};

/* 8 bytes, host byte order; value: the backend id (__u32). */
struct lb_slot_key {
	__u32 service_id;
	__u16 slot;
	__u16 pad; /* 0 */
};

/* LB_MAGLEV_SIZE * 4 bytes; key: the service id (__u32). */
struct lb_maglev_value {
	__u32 backend_ids[LB_MAGLEV_SIZE];
};

/* 8 bytes; key: the revnat id (__u32, host byte order). */
struct lb_revnat_value {
	__u32 vip;  /* network byte order */
	__u16 port; /* network byte order */
	__u16 pad;  /* 0 */
};

/* 8 bytes. */
struct lb_affinity_key {
	__u32 client;     /* IPv4, network byte order; 0.x.y.z for a socket of
			   * socket-level LB: its netns (sock.h SOCK_CLIENT_MASK) */
	__u32 service_id; /* host byte order */
};

/* 8 bytes, host byte order. */
struct lb_affinity_value {
	__u32 backend_id;
	__u32 last_used; /* seconds of CLOCK_MONOTONIC, like ct_entry.lifetime */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_service_key);
	__type(value, struct lb_service_value);
	__uint(max_entries, LB_SERVICES_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb_backend_value);
	__uint(max_entries, LB_BACKENDS_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_slot_key);
	__type(value, __u32);
	__uint(max_entries, LB_SLOTS_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_backend_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb_maglev_value);
	__uint(max_entries, LB_MAGLEV_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb_revnat_value);
	__uint(max_entries, LB_REVNAT_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb_affinity_key);
	__type(value, struct lb_affinity_value);
	__uint(max_entries, LB_AFFINITY_MAX_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_affinity SEC(".maps");

/*
 * Which addresses may be a VIP (an address of a cm_services key) and which a
 * backend (an address of a cm_backends value), one bit per hash of the
 * address: a packet whose destination has no bit in @vip is no service
 * traffic, and one whose source has none in @backend no reply of a
 * translated connection (a CT_REVNAT key's source is its backend), so most
 * pod-to-pod packets skip the cm_services or cm_ct lookup (a hash of the
 * key and a bucket walk) for an array lookup and one bit. A bit may be set
 * for an address that is neither (another address with the same hash, or
 * one not cleared yet): that packet only takes the lookup. The agent
 * (src/agent/services.ts) sets the bits of new addresses before it writes
 * the entries that name them, and clears bits only after their entries are
 * gone, each by one update of the whole value; an update writes each byte
 * to its new value, so a bit set before and after never reads as clear.
 * @valid 0 (a map nobody has written, e.g. just created on an upgrade, or
 * maps a test writes directly): every address may be either, as without
 * the hint.
 */
#define LB_HINT_BITS 65536 /* per set; a power of 2 */

struct lb_hint {
	__u32 valid;
	__u32 pad;
	__u64 vip[LB_HINT_BITS / 64];
	__u64 backend[LB_HINT_BITS / 64];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct lb_hint);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_lb_hint SEC(".maps");

CM_BTF_EXPORT(enum lb_service_flag, lb_service_flag);
CM_BTF_EXPORT(enum lb_backend_flag, lb_backend_flag);

/* What translation needs of a TCP/UDP packet; addresses and ports network order. */
struct lb4_tuple {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u32 l4_off;    /* offset of the TCP/UDP header in the frame */
	__u8  proto;
	__u8  tcp_flags; /* 0 for UDP */
	__u8  frag;      /* part of a fragmented datagram (first fragment: MF set) */
};

/*
 * Fills @t from a TCP or UDP packet whose L4 header is complete. False for
 * other protocols, later fragments (no L4 header) and truncated headers:
 * those are never translated. The ports come from @tc, which both programs
 * fill with parse_l4_ports() first, so only TCP pays one more load (flags).
 */
static __always_inline bool lb4_extract(struct __sk_buff *ctx, const struct iphdr *ip,
					const struct trace_ctx *tc, struct lb4_tuple *t)
{
	__u32 l4_len;

	if (ip->protocol == IPPROTO_TCP)
		l4_len = sizeof(struct tcphdr);
	else if (ip->protocol == IPPROTO_UDP)
		l4_len = sizeof(struct udphdr);
	else
		return false;
	if (ipv4_is_later_fragment(ip))
		return false;
	t->l4_off = ETH_HLEN + ip->ihl * 4;
	if (t->l4_off + l4_len > ctx->len)
		return false;
	t->saddr = ip->saddr;
	t->daddr = ip->daddr;
	t->proto = ip->protocol;
	t->frag = (ip->frag_off & bpf_htons(CM_IP_MF)) != 0;
	t->sport = bpf_htons(tc->sport);
	t->dport = bpf_htons(tc->dport);
	/* Read once, by trace_parse_ipv4 (events.h), like the ports: the TCP
	 * header is whole here (checked above). */
	t->tcp_flags = t->proto == IPPROTO_TCP ? tc->tcp_flags : 0;
	return true;
}

/* A multiply-xorshift finaliser: every input bit reaches every output bit. */
static __always_inline __u32 lb_mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x7feb352d;
	h ^= h >> 15;
	h *= 0x846ca68b;
	h ^= h >> 16;
	return h;
}

enum lb_hint_set {
	LB_HINT_VIP,
	LB_HINT_BACKEND,
};

/* False when @addr (network byte order) is certainly no VIP (@set
 * LB_HINT_VIP) or no backend (LB_HINT_BACKEND): cm_lb_hint above. */
static __always_inline bool lb_hint_may(enum lb_hint_set set, __u32 addr)
{
	const struct lb_hint *h;
	__u32 zero = 0, bit;

	h = bpf_map_lookup_elem(&cm_lb_hint, &zero);
	if (!h || !h->valid)
		return true;
	bit = lb_mix32(addr) & (LB_HINT_BITS - 1);
	if (set == LB_HINT_VIP)
		return (h->vip[bit / 64] >> (bit % 64)) & 1;
	return (h->backend[bit / 64] >> (bit % 64)) & 1;
}

/* Hash of the connection as the client sent it; spreads new connections. */
static __always_inline __u32 lb4_hash(const struct lb4_tuple *t)
{
	__u32 h = lb_mix32(t->saddr ^ LB_HASH_SEED);

	h = lb_mix32(h ^ t->daddr);
	h = lb_mix32(h ^ (((__u32)t->sport << 16) | t->dport));
	return lb_mix32(h ^ t->proto);
}

/* The backend @id when it may take a new connection. */
static __always_inline const struct lb_backend_value *lb_backend_for_new(__u32 id)
{
	const struct lb_backend_value *b;

	if (id == 0)
		return NULL;
	b = bpf_map_lookup_elem(&cm_backends, &id);
	if (!b || (b->flags & BACKEND_F_NO_NEW))
		return NULL;
	return b;
}

/* Backend for a new connection with @hash from the service's table; 0 = none. */
static __always_inline __u32 lb4_select(const struct lb_service_value *svc, __u32 hash,
					const struct lb_backend_value **out)
{
	__u32 service_id = svc->service_id;
	__u32 count = svc->backend_count;
	__u32 i, id;

	if (svc->flags & SVC_F_MAGLEV) {
		const struct lb_maglev_value *tbl = bpf_map_lookup_elem(&cm_maglev, &service_id);
		__u32 idx = hash % LB_MAGLEV_SIZE;

		if (!tbl)
			return 0;
#pragma unroll
		for (i = 0; i < LB_SELECT_TRIES; i++) {
			if (idx >= LB_MAGLEV_SIZE)
				idx = 0;
			/* The compiler knows idx < LB_MAGLEV_SIZE and would drop
			 * the check the verifier needs to see. */
			lb_barrier_var(idx);
			if (idx >= LB_MAGLEV_SIZE)
				return 0;
			id = tbl->backend_ids[idx];
			*out = lb_backend_for_new(id);
			if (*out)
				return id;
			idx++;
		}
		return 0;
	}

	if (count == 0)
		return 0;
	{
		struct lb_slot_key key = { .service_id = service_id };
		__u32 slot = hash % count;
		const __u32 *idp;

#pragma unroll
		for (i = 0; i < LB_SELECT_TRIES; i++) {
			if (slot >= count)
				slot = 0;
			key.slot = slot;
			idp = bpf_map_lookup_elem(&cm_backend_slots, &key);
			if (idp) {
				id = *idp;
				*out = lb_backend_for_new(id);
				if (*out)
					return id;
			}
			slot++;
		}
	}
	return 0;
}

/*
 * Backend for a new connection: the client's previous one while session
 * affinity holds (and that backend still takes connections), else a hash of
 * the connection onto the table. Returns the id, 0 = none.
 */
static __always_inline __u32 lb4_choose(const struct lb_service_value *svc,
					const struct lb4_tuple *t, __u32 now,
					const struct lb_backend_value **out)
{
	struct lb_affinity_key akey = { .client = t->saddr, .service_id = svc->service_id };
	struct lb_affinity_value *a, av = {};
	__u32 id;

	*out = NULL;
	if (svc->backend_count == 0)
		return 0;
	if (svc->flags & SVC_F_AFFINITY) {
		a = bpf_map_lookup_elem(&cm_affinity, &akey);
		/* last_used <= now always (one clock); unsigned math stays safe. */
		if (a && now - a->last_used <= svc->affinity_timeout) {
			id = a->backend_id;
			*out = lb_backend_for_new(id);
			if (*out) {
				/* Like kube-proxy: each new connection renews it. */
				a->last_used = now;
				return id;
			}
		}
	}
	id = lb4_select(svc, lb4_hash(t), out);
	if (id && (svc->flags & SVC_F_AFFINITY)) {
		av.backend_id = id;
		av.last_used = now;
		/* A failed write only loses stickiness, not the connection. */
		bpf_map_update_elem(&cm_affinity, &akey, &av, BPF_ANY);
	}
	return id;
}

static __always_inline __u32 lb4_csum_off(const struct lb4_tuple *t)
{
	return t->l4_off + (t->proto == IPPROTO_TCP ? __builtin_offsetof(struct tcphdr, check)
						    : __builtin_offsetof(struct udphdr, check));
}

/*
 * Rewrite the IPv4 source (@field = offsetof saddr) or destination address.
 * The kernel helpers keep both checksums right whatever the skb's checksum
 * state: for CHECKSUM_PARTIAL (a pod's TCP with offload) only the pseudo
 * header sum in the L4 field changes; BPF_F_MARK_MANGLED_0 leaves a UDP
 * checksum of 0 ("none") alone and never produces 0 from a real one.
 */
static __always_inline int lb4_write_addr(struct __sk_buff *ctx, const struct lb4_tuple *t,
					  __u32 field, __u32 old, __u32 new)
{
	__u64 l4flags = BPF_F_PSEUDO_HDR | sizeof(new);

	if (old == new)
		return 0;
	if (t->proto == IPPROTO_UDP)
		l4flags |= BPF_F_MARK_MANGLED_0;
	if (bpf_l4_csum_replace(ctx, lb4_csum_off(t), old, new, l4flags) < 0)
		return -DROP_WRITE_ERROR;
	if (bpf_l3_csum_replace(ctx, ETH_HLEN + __builtin_offsetof(struct iphdr, check),
				old, new, sizeof(new)) < 0)
		return -DROP_WRITE_ERROR;
	if (bpf_skb_store_bytes(ctx, ETH_HLEN + field, &new, sizeof(new), 0) < 0)
		return -DROP_WRITE_ERROR;
	return 0;
}

/* Rewrite the L4 source (@field 0) or destination (@field 2) port. */
static __always_inline int lb4_write_port(struct __sk_buff *ctx, const struct lb4_tuple *t,
					  __u32 field, __u16 old, __u16 new)
{
	__u64 l4flags = sizeof(new);

	if (old == new)
		return 0;
	if (t->proto == IPPROTO_UDP)
		l4flags |= BPF_F_MARK_MANGLED_0;
	if (bpf_l4_csum_replace(ctx, lb4_csum_off(t), old, new, l4flags) < 0)
		return -DROP_WRITE_ERROR;
	if (bpf_skb_store_bytes(ctx, t->l4_off + field, &new, sizeof(new), 0) < 0)
		return -DROP_WRITE_ERROR;
	return 0;
}

#define LB_SADDR_OFF __builtin_offsetof(struct iphdr, saddr)
#define LB_DADDR_OFF __builtin_offsetof(struct iphdr, daddr)
#define LB_SPORT_OFF 0
#define LB_DPORT_OFF 2

/* 12 bytes: the IPv4 pseudo header of the TCP checksum. */
struct lb4_pseudo_hdr {
	__u32 saddr;
	__u32 daddr;
	__u8  zero;
	__u8  proto;
	__u16 len;
};

/*
 * Turn a TCP segment to a service without backends into the RST its sender
 * would get from a closed port (RFC 9293 3.10.7.1), in place, and mark the
 * drop as answered: cm_finish then still counts and reports the drop but
 * sends the packet back out of the pod's device. The RST is 40 bytes of IP;
 * the frame keeps its length (the pod's stack trims to tot_len), so counters
 * see the dropped packet's size. Not for a RST, IP options or GSO packets:
 * those are dropped silently apart from the counter and event. Global
 * (common.h), on the drop path only; returns 0.
 */
__cm_global int lb4_reset(struct __sk_buff *ctx, const struct lb4_tuple *t __arg_nonnull,
			  struct trace_ctx *tc __arg_nonnull)
{
	struct lb4_pseudo_hdr ph = {};
	struct iphdr iph = {};
	struct tcphdr in, th = {};
	__u8 macs[2 * ETH_ALEN], swapped[2 * ETH_ALEN];
	__u16 tot_len;
	__u32 seg_len, hdr_len, sum;

	if (!t || !tc) /* kernels before 6.8 (common.h, __arg_nonnull) */
		return 0;
	if (t->l4_off != ETH_HLEN + sizeof(struct iphdr) || ctx->gso_segs > 1 ||
	    (t->tcp_flags & CM_TCP_RST))
		return 0;
	if (bpf_skb_load_bytes(ctx, t->l4_off, &in, sizeof(in)) < 0 ||
	    bpf_skb_load_bytes(ctx, ETH_HLEN + __builtin_offsetof(struct iphdr, tot_len),
			       &tot_len, sizeof(tot_len)) < 0 ||
	    bpf_skb_load_bytes(ctx, 0, macs, sizeof(macs)) < 0)
		return 0;
	hdr_len = sizeof(struct iphdr) + in.doff * 4;
	if (in.doff < 5 || bpf_ntohs(tot_len) < hdr_len)
		return 0;
	seg_len = bpf_ntohs(tot_len) - hdr_len + in.syn + in.fin;

	th.source = in.dest;
	th.dest = in.source;
	th.doff = 5;
	th.rst = 1;
	if (in.ack) {
		th.seq = in.ack_seq;
	} else {
		th.ack = 1;
		th.ack_seq = bpf_htonl(bpf_ntohl(in.seq) + seg_len);
	}
	ph.saddr = t->daddr;
	ph.daddr = t->saddr;
	ph.proto = IPPROTO_TCP;
	ph.len = bpf_htons(sizeof(th));
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&ph, sizeof(ph), 0);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&th, sizeof(th), sum);
	th.check = ~csum_fold32(sum);

	iph.version = 4;
	iph.ihl = 5;
	iph.tot_len = bpf_htons(sizeof(iph) + sizeof(th));
	iph.frag_off = bpf_htons(CM_IP_DF);
	iph.ttl = 64;
	iph.protocol = IPPROTO_TCP;
	iph.saddr = t->daddr;
	iph.daddr = t->saddr;
	iph.check = ~csum_fold32(bpf_csum_diff(NULL, 0, (__be32 *)&iph, sizeof(iph), 0));

	__builtin_memcpy(swapped, macs + ETH_ALEN, ETH_ALEN);
	__builtin_memcpy(swapped + ETH_ALEN, macs, ETH_ALEN);
	if (bpf_skb_store_bytes(ctx, 0, swapped, sizeof(swapped), 0) < 0 ||
	    bpf_skb_store_bytes(ctx, ETH_HLEN, &iph, sizeof(iph), 0) < 0 ||
	    bpf_skb_store_bytes(ctx, t->l4_off, &th, sizeof(th), 0) < 0)
		return 0;
	/* Back out of the pod's own veth: checked already (common.h). */
	ctx->mark = CM_MARK_DELIVERED;
	tc->reply = 1;
	tc->target_ifindex = ctx->ifindex;
	return 0;
}

/*
 * A TCP connection opened straight to a backend (socket-level load balancing
 * translated it at connect(), sock.bpf.c) may reuse the tuple of a connection
 * this path translated before, whose CT_REVNAT entry outlives it for a while
 * (CT_LIFETIME_TCP_CLOSE, longer after a lost FIN): the new connection's
 * replies would then be rewritten to come from the VIP, and its socket, which
 * is connected to the backend, would refuse them. So the bare SYN of a
 * connection to no VIP removes a reply entry of its tuple (one hash delete
 * per new connection, nothing per later packet).
 */
static __always_inline void lb4_forget_revnat(const struct lb4_tuple *t)
{
	struct ct_key key = {};

	if (t->proto != IPPROTO_TCP || (t->tcp_flags & (CM_TCP_SYN | CM_TCP_ACK)) != CM_TCP_SYN ||
	    !lb_hint_may(LB_HINT_BACKEND, t->daddr))
		return;
	key.saddr = t->daddr;
	key.daddr = t->saddr;
	key.sport = t->dport;
	key.dport = t->sport;
	key.proto = t->proto;
	key.dir = CT_REVNAT;
	bpf_map_delete_elem(&cm_ct, &key);
}

/* What lb4_lookup() found to write into the packet. */
struct lb4_nat {
	__u32 addr;    /* forward: the backend (new destination); reverse: the VIP (new source) */
	__u16 port;    /* its port, network byte order */
	__u8  rev;     /* 1: reverse translation of a reply, 0: forward */
	__u8  hairpin; /* the client is its own backend (CT_F_HAIRPIN) */
};

/*
 * Forward translation in from_container, for a packet a local pod sent
 * (@tp from lb4_extract): the lookups, no writes (lb4_translate writes).
 * Returns 0 when the packet is no service traffic, 1 with the backend in
 * @nat, or -DROP_*.
 *
 * The first packet of a connection picks a backend and records the
 * connection twice in cm_ct: CT_SERVICE keyed as the client sends (later
 * packets follow it, so a connection stays on its backend even when the
 * service's backends change, as long as the backend itself exists) and
 * CT_REVNAT keyed as the backend replies (lb4_rev_nat_lookup).
 */
static __always_inline int lb4_xlate_lookup(const struct lb4_tuple *tp, struct trace_ctx *tc,
					    struct lb4_nat *nat)
{
	struct lb_service_key skey = {};
	const struct lb_service_value *svc;
	const struct lb_backend_value *backend = NULL;
	struct ct_key fkey = {}, rkey = {};
	struct ct_entry *e, *r, entry = {};
	struct lb4_tuple t = *tp;
	__u32 backend_id = 0, now, baddr;
	__u16 bport;

	skey.vip = t.daddr;
	skey.dport = t.dport;
	skey.proto = t.proto;
	svc = lb_hint_may(LB_HINT_VIP, t.daddr) ? bpf_map_lookup_elem(&cm_services, &skey) : NULL;
	if (!svc) {
		lb4_forget_revnat(&t);
		return 0;
	}
	tc->svc_ip = t.daddr;
	tc->svc_port = bpf_ntohs(t.dport);
	/* Later fragments carry no ports, so they could not follow the first. */
	if (t.frag)
		return -DROP_SERVICE_FRAGMENT;

	now = ct_now();
	fkey.saddr = t.saddr;
	fkey.daddr = t.daddr;
	fkey.sport = t.sport;
	fkey.dport = t.dport;
	fkey.proto = t.proto;
	fkey.dir = CT_SERVICE;
	e = ct_lookup(&fkey, &now);
	/* A bare SYN on a closing connection's tuple is a new connection. */
	if (e && (e->flags & CT_F_CLOSING) &&
	    (t.tcp_flags & (CM_TCP_SYN | CM_TCP_ACK)) == CM_TCP_SYN)
		e = NULL;
	if (e) {
		backend_id = e->backend_id;
		backend = bpf_map_lookup_elem(&cm_backends, &backend_id);
	}
	if (!backend) {
		/* New connection, or its backend was withdrawn: choose (again). */
		e = NULL;
		backend_id = lb4_choose(svc, &t, now, &backend);
		if (!backend_id || !backend)
			return -DROP_NO_SERVICE_BACKEND;
	}
	baddr = backend->addr;
	bport = backend->port;

	rkey.saddr = baddr;
	rkey.daddr = baddr == t.saddr ? LB_HAIRPIN_IP : t.saddr;
	rkey.sport = bport;
	rkey.dport = t.sport;
	rkey.proto = t.proto;
	rkey.dir = CT_REVNAT;
	if (!e) {
		entry.backend_id = backend_id;
		entry.revnat_id = svc->revnat_id;
		entry.flags = ct_flags_after(baddr == t.saddr ? CT_F_HAIRPIN : 0, t.proto, t.tcp_flags);
		entry.lifetime = now + ct_timeout(t.proto, t.tcp_flags, entry.flags);
		/* A full table refuses (cm_ct is no LRU): the connection is
		 * dropped and counted, and no half of it is left behind. */
		if (bpf_map_update_elem(&cm_ct, &fkey, &entry, BPF_ANY) < 0)
			return -DROP_CT_WRITE_FAILED;
		if (bpf_map_update_elem(&cm_ct, &rkey, &entry, BPF_ANY) < 0) {
			bpf_map_delete_elem(&cm_ct, &fkey);
			return -DROP_CT_WRITE_FAILED;
		}
	} else if (ct_refresh(e, now, t.proto, t.tcp_flags)) {
		/* Once a second or so: keep the reply entry at least as alive as
		 * the connection (one-way UDP, half-closed TCP) and bring it back
		 * if it went (lb4_forget_revnat, a sweep that raced the refresh). */
		r = bpf_map_lookup_elem(&cm_ct, &rkey);
		if (!r) {
			entry = *e;
			if (bpf_map_update_elem(&cm_ct, &rkey, &entry, BPF_ANY) < 0)
				return -DROP_CT_WRITE_FAILED;
		} else if (r->lifetime < e->lifetime) {
			r->lifetime = e->lifetime;
		}
	}

	nat->addr = baddr;
	nat->port = bport;
	nat->rev = 0;
	nat->hairpin = baddr == t.saddr;
	return 1;
}

/*
 * Reverse translation of a reply (@tp from lb4_extract): backend:port ->
 * client becomes VIP:port -> client (and, for hairpin, the destination the
 * client again). The lookups, no writes (lb4_translate writes). Returns 0
 * when the packet is no reply of a translated connection, 1 with the VIP
 * in @nat, or -DROP_*.
 *
 * Where it runs, and why there: the CT_REVNAT entry exists only on the
 * client's node, and every reply reaches the client's node through exactly
 * one of two doors, which both call this before they look at the
 * destination:
 *  - from_container of the backend's veth, when the backend is a pod of the
 *    same node (including the client itself, hairpin);
 *  - from_overlay, when the backend is on another node or in another
 *    cluster (its node has no entry and forwards the reply unchanged).
 * A single hook on the client's own device would have to be tc egress of
 * its host-side veth, which bpf_redirect_peer() delivery skips. Backends
 * outside the pod network (host-network, world) reply through the host
 * stack and are not reverse-translated; backends must be pods.
 * A reply whose service (cm_revnat entry) is gone is left untranslated: the
 * client's stack then resets the connection, which is what it should learn.
 *
 * Which packets can match: a CT_REVNAT entry has the client as its
 * destination, i.e. the source of a packet from_container translated, which
 * that program had checked to be a local endpoint, or LB_HAIRPIN_IP. So
 * from_container asks only for packets addressed to a local endpoint or to
 * LB_HAIRPIN_IP (lb4_lookup's @reply): a pod's packet to a remote pod or the
 * world cannot be such a reply and skips this lookup. (An entry whose client
 * pod went away is left alone then: its reply has nowhere to go here anyway.)
 * And a packet whose source has no bit in cm_lb_hint's backend set is no
 * such reply either: it skips the lookup wherever it is asked.
 */
static __always_inline int lb4_rev_nat_lookup(const struct lb4_tuple *tp, struct lb4_nat *nat)
{
	const struct lb_revnat_value *rn;
	struct ct_key key = {};
	struct ct_entry *e;
	struct lb4_tuple t = *tp;
	__u32 now, rid;

	if (!lb_hint_may(LB_HINT_BACKEND, t.saddr))
		return 0;
	key.saddr = t.saddr;
	key.daddr = t.daddr;
	key.sport = t.sport;
	key.dport = t.dport;
	key.proto = t.proto;
	key.dir = CT_REVNAT;
	e = ct_lookup(&key, &now);
	if (!e)
		return 0;
	rid = e->revnat_id;
	rn = bpf_map_lookup_elem(&cm_revnat, &rid);
	if (!rn)
		return 0;
	if (t.frag)
		return -DROP_SERVICE_FRAGMENT;
	nat->addr = rn->vip;
	nat->port = rn->port;
	nat->rev = 1;
	nat->hairpin = (e->flags & CT_F_HAIRPIN) != 0;
	ct_refresh(e, now, t.proto, t.tcp_flags);
	return 1;
}

/*
 * Every map lookup (and conntrack write) of service translation for one
 * packet in from_container: reverse translation of a reply first (only when
 * @reply: the packet may be one, lb4_rev_nat_lookup says which can), then,
 * when the packet is no reply, forward translation. Never both: replies are
 * not addressed to a VIP. Returns 0 (nothing to translate), 1 (@nat says what
 * to write) or -DROP_*. The programs that only see replies (from_overlay,
 * from_netdev) inline the reverse half: as a call it cost them more verified
 * instructions (about 10,900 against 9,200 for from_overlay).
 *
 * Global (common.h): inlined, these lookups, their conntrack branches and the
 * unrolled backend selection were most of what the verifier walked for
 * from_container (about 90% of its 640,000 instructions), because it walked
 * them again for every state the program reached them in. Packet writes stay
 * in the caller (lb4_translate), so a packet that is no service traffic keeps
 * its header pointers.
 */
__cm_global int lb4_lookup(const struct lb4_tuple *t __arg_nonnull,
			   struct trace_ctx *tc __arg_nonnull,
			   struct lb4_nat *nat __arg_nonnull, __u32 reply)
{
	int ret;

	if (!t || !tc || !nat) /* kernels before 6.8 (common.h, __arg_nonnull) */
		return 0;
	if (reply) {
		ret = lb4_rev_nat_lookup(t, nat);
		if (ret != 0)
			return ret;
	}
	return lb4_xlate_lookup(t, tc, nat);
}

/*
 * Service translation of a packet (@tp from lb4_extract): lb4_lookup, then
 * the rewrite it asks for. @fwd (a constant): also forward translation
 * (from_container, one call of lb4_lookup, which tries reverse translation
 * only when @reply); reverse translation only otherwise (from_overlay,
 * from_netdev; inline, @reply ignored). Returns 0
 * when the packet was left as it was, 1 when it was rewritten (packet
 * pointers are then invalid), or -DROP_*. A TCP segment to a service without
 * a usable backend becomes a RST to its sender (lb4_reset).
 */
static __always_inline int lb4_translate(struct __sk_buff *ctx, const struct lb4_tuple *tp,
					 struct trace_ctx *tc, const bool fwd, bool reply)
{
	struct lb4_tuple t = *tp;
	struct lb4_nat nat = {};
	int ret;

	ret = fwd ? lb4_lookup(&t, tc, &nat, reply) : lb4_rev_nat_lookup(&t, &nat);
	if (fwd && ret == -DROP_NO_SERVICE_BACKEND && t.proto == IPPROTO_TCP)
		lb4_reset(ctx, &t, tc);
	if (ret <= 0)
		return ret;

	if (nat.rev) {
		ret = lb4_write_addr(ctx, &t, LB_SADDR_OFF, t.saddr, nat.addr);
		if (ret < 0)
			return ret;
		ret = lb4_write_port(ctx, &t, LB_SPORT_OFF, t.sport, nat.port);
		if (ret < 0)
			return ret;
		if (nat.hairpin) {
			/* The client is the backend itself: it gets the reply. */
			ret = lb4_write_addr(ctx, &t, LB_DADDR_OFF, t.daddr, t.saddr);
			if (ret < 0)
				return ret;
			tc->dst_ip = t.saddr;
		}
		tc->src_ip = nat.addr;
		tc->sport = bpf_ntohs(nat.port);
		return 1;
	}

	ret = lb4_write_addr(ctx, &t, LB_DADDR_OFF, t.daddr, nat.addr);
	if (ret < 0)
		return ret;
	ret = lb4_write_port(ctx, &t, LB_DPORT_OFF, t.dport, nat.port);
	if (ret < 0)
		return ret;
	if (nat.hairpin) {
		ret = lb4_write_addr(ctx, &t, LB_SADDR_OFF, t.saddr, LB_HAIRPIN_IP);
		if (ret < 0)
			return ret;
		tc->src_ip = LB_HAIRPIN_IP;
	}
	tc->dst_ip = nat.addr;
	tc->dport = bpf_ntohs(nat.port);
	return 1;
}

#endif /* CM_LB_H */

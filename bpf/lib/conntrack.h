/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Connection tracking for service translation (lb.h). One hash holds two
 * kinds of entries per service connection, told apart by ct_key.dir:
 *
 *   CT_SERVICE  client:port -> VIP:port, as the client sent it. Pins the
 *               connection to the backend chosen for its first packet.
 *   CT_REVNAT   backend:port -> client:port, the tuple of the replies after
 *               DNAT. Tells the reply path which VIP:port to put back.
 *
 * Both live on the client's node only: that is where the first packet was
 * translated, and every reply comes back there (see lb4_rev_nat in lb.h).
 * A plain hash, not an LRU: a full table refuses the new connection (dropped
 * with DROP_CT_WRITE_FAILED, counted) and never evicts a live one to make
 * room. Entries carry an expiry (lifetime) checked on lookup, so an expired
 * entry is never used; the agent sweeps expired entries out to free their
 * room (ct.ts gc, every gcIntervalMs of the service manager).
 */
#ifndef CM_CONNTRACK_H
#define CM_CONNTRACK_H

#include "common.h"

#define CT_MAX_ENTRIES 65536

/* Idle timeouts in seconds. TCP connections get the long one once past the
 * handshake, and the short close one after a FIN or RST; UDP (and anything
 * else that is not TCP) is refreshed by every packet. An enum, so that BTF
 * carries them to the TypeScript check. */
enum cm_ct_lifetime {
	CT_LIFETIME_TCP       = 21600,
	CT_LIFETIME_TCP_SYN   = 60,
	CT_LIFETIME_TCP_CLOSE = 10,
	CT_LIFETIME_NONTCP    = 60,
};

#define CM_NSEC_PER_SEC 1000000000ULL

/* TCP flag bits of byte 13 of the TCP header. */
#define CM_TCP_FIN 0x01
#define CM_TCP_SYN 0x02
#define CM_TCP_RST 0x04
#define CM_TCP_ACK 0x10

/* Kinds of entries; values are stable API (TypeScript ct.ts). */
enum cm_ct_dir {
	CT_SERVICE = 1, /* client -> VIP, before DNAT */
	CT_REVNAT  = 2, /* backend -> client, the replies after DNAT */
};

/* Bits of ct_entry.flags. */
enum cm_ct_flag {
	CT_F_CLOSING = 1 << 0, /* a FIN or RST was seen: short lifetime, a new SYN starts over */
	CT_F_HAIRPIN = 1 << 1, /* client is its own backend: source was rewritten to LB_HAIRPIN_IP */
};

/* 16 bytes. Addresses and ports network byte order, as in the packet. */
struct ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8  proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8  dir;   /* enum cm_ct_dir */
	__u16 pad;   /* 0 */
};

/* 16 bytes, host byte order. */
struct ct_entry {
	__u32 backend_id; /* cm_backends key the connection goes to */
	__u32 revnat_id;  /* cm_revnat key: the VIP:port replies come from */
	__u32 lifetime;   /* expiry, seconds of CLOCK_MONOTONIC (ct_now()) */
	__u16 flags;      /* CT_F_* */
	__u16 pad;        /* 0 */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, CT_MAX_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_ct SEC(".maps");

CM_BTF_EXPORT(enum cm_ct_dir, ct_dir);
CM_BTF_EXPORT(enum cm_ct_flag, ct_flag);
CM_BTF_EXPORT(enum cm_ct_lifetime, ct_lifetime);

/* Seconds of CLOCK_MONOTONIC, from the coarse clock: the time of the last
 * tick (a few ms behind), read without the clock source, which on this VM's
 * kvm-clock cost ~30-40 ns a packet (bench/programs --against). Lifetimes
 * are whole seconds of at least 10: an expiry at most one second early, when
 * a second boundary falls inside a tick, is the only difference the agent's
 * GC (monotonicSeconds) could see. */
static __always_inline __u32 ct_now(void)
{
	return bpf_ktime_get_coarse_ns() / CM_NSEC_PER_SEC;
}

/* Idle timeout for an entry whose latest packet had @tcp_flags (0 for UDP). */
static __always_inline __u32 ct_timeout(__u8 proto, __u8 tcp_flags, __u16 ct_flags)
{
	if (proto != IPPROTO_TCP)
		return CT_LIFETIME_NONTCP;
	if ((ct_flags & CT_F_CLOSING) || (tcp_flags & (CM_TCP_FIN | CM_TCP_RST)))
		return CT_LIFETIME_TCP_CLOSE;
	if (tcp_flags & CM_TCP_SYN)
		return CT_LIFETIME_TCP_SYN;
	return CT_LIFETIME_TCP;
}

static __always_inline __u16 ct_flags_after(__u16 flags, __u8 proto, __u8 tcp_flags)
{
	if (proto == IPPROTO_TCP && (tcp_flags & (CM_TCP_FIN | CM_TCP_RST)))
		flags |= CT_F_CLOSING;
	return flags;
}

/* A live entry for @key, or NULL when there is none or it has expired;
 * *@now is set (ct_now()) when there is one: a miss, the common case where
 * most packets are looked up, does not read the clock. */
static __always_inline struct ct_entry *ct_lookup(const struct ct_key *key, __u32 *now)
{
	struct ct_entry *e = bpf_map_lookup_elem(&cm_ct, key);

	if (!e)
		return NULL;
	*now = ct_now();
	if (e->lifetime < *now)
		return NULL;
	return e;
}

/*
 * Refresh @e for a packet with @tcp_flags. Writes only when the expiry or the
 * flags change, i.e. at most about once a second per connection, so a busy
 * flow does not dirty the shared cache line on every packet. Returns true
 * when it wrote.
 */
static __always_inline bool ct_refresh(struct ct_entry *e, __u32 now, __u8 proto, __u8 tcp_flags)
{
	__u16 flags = ct_flags_after(e->flags, proto, tcp_flags);
	__u32 lifetime = now + ct_timeout(proto, tcp_flags, flags);

	if (e->lifetime == lifetime && e->flags == flags)
		return false;
	e->lifetime = lifetime;
	e->flags = flags;
	return true;
}

#endif /* CM_CONNTRACK_H */

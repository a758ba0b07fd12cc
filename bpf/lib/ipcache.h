/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ipcache: every IPv4 prefix the mesh knows -> security identity and the node
 * that hosts it (tunnel endpoint). Longest-prefix match, so pod /32s, node
 * /32s and pod CIDRs share one map.
 */
#ifndef CM_IPCACHE_H
#define CM_IPCACHE_H

#include "common.h"

#define IPCACHE_MAX_ENTRIES 65536

/* Identities below this are reserved (ARCHITECTURE §3): host, world,
 * remote-node, ... Traffic to them without a tunnel endpoint goes to the stack. */
#define IDENTITY_RESERVED_MAX 255
#define IDENTITY_HOST 1
#define IDENTITY_WORLD 2
/* Identities of the mesh ride in the 24-bit VXLAN VNI. */
#define IDENTITY_VNI_MAX 0xffffff

/*
 * Scope of an identity: its bits 24..31. Global identities (scope 0) are the
 * mesh's, the same on every node; they fit the VNI. Node-local identities
 * (IDENTITY_SCOPE_LOCAL | n, n = 1..0xffffff, as Cilium's local scope) are
 * this node's numbers for the prefixes CIDR rules name (src/agent/policy.ts),
 * kept in cm_policy_cidr (policy.h), not here: the ipcache says what an
 * address is, policy asks both. One never travels: the VNI carries the
 * *source* pod's identity, and ipv4_encap() refuses anything above
 * IDENTITY_VNI_MAX.
 */
enum cm_identity_scope {
	IDENTITY_SCOPE_GLOBAL = 0,
	IDENTITY_SCOPE_LOCAL  = 1 << 24,
};
#define IDENTITY_SCOPE_MASK 0xff000000U

CM_BTF_EXPORT(enum cm_identity_scope, identity_scope);

/* 8 bytes. LPM trie keys start with the prefix length in bits (0..32). */
struct ipcache_key {
	__u32 prefixlen; /* host byte order, bits of addr that count */
	__u32 addr;      /* IPv4, network byte order */
};

/* 12 bytes. */
struct ipcache_value {
	__u32 identity;        /* host byte order */
	/* Underlay IPv4 of the node hosting the prefix, NETWORK byte order like
	 * every address in these maps; 0 = not behind a tunnel. The program
	 * converts it with bpf_ntohl() because bpf_tunnel_key.remote_ipv4 is
	 * host byte order. */
	__u32 tunnel_endpoint;
	__u32 flags;           /* reserved, 0 */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, IPCACHE_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_ipcache SEC(".maps");

static __always_inline const struct ipcache_value *ipcache_lookup4(__u32 addr)
{
	struct ipcache_key key = { .prefixlen = 32, .addr = addr };

	return bpf_map_lookup_elem(&cm_ipcache, &key);
}

static __always_inline bool identity_is_reserved(__u32 identity)
{
	return identity <= IDENTITY_RESERVED_MAX;
}

static __always_inline bool identity_is_local(__u32 identity)
{
	return (identity & IDENTITY_SCOPE_MASK) == IDENTITY_SCOPE_LOCAL;
}

#endif /* CM_IPCACHE_H */

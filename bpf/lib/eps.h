/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Local endpoints: the pods of this node, by IPv4 address. Written by the
 * agent when the CNI plugin creates a pod, read for delivery (where is the
 * pod, which MACs) and for the source identity of its packets.
 */
#ifndef CM_EPS_H
#define CM_EPS_H

#include "common.h"

#define ENDPOINTS_MAX_ENTRIES 16384

/* 4 bytes. */
struct endpoint_key {
	__u32 ip; /* pod IPv4, network byte order */
};

/* 24 bytes. */
struct endpoint_info {
	__u32 ifindex;            /* host-side veth ifindex, host byte order */
	__u32 identity;           /* security identity of the pod, host byte order */
	__u16 endpoint_id;        /* agent's endpoint ID, host byte order */
	__u16 flags;              /* reserved, 0 */
	__u8  mac[ETH_ALEN];      /* pod-side (eth0) MAC */
	__u8  node_mac[ETH_ALEN]; /* host-side veth MAC: the pod's gateway MAC */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, ENDPOINTS_MAX_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_endpoints SEC(".maps");

static __always_inline const struct endpoint_info *lookup_endpoint4(__u32 addr)
{
	struct endpoint_key key = { .ip = addr };

	return bpf_map_lookup_elem(&cm_endpoints, &key);
}

#endif /* CM_EPS_H */

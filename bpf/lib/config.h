/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Per-node settings. The loader writes them into the object's .rodata before
 * load (libbpf-bootstrap style); after load they are frozen and the verifier
 * prunes branches on them, so a disabled feature costs nothing at run time.
 * All are __u32 so the loader writes every one the same way.
 */
#ifndef CM_CONFIG_H
#define CM_CONFIG_H

#include "common.h"

/* ifindex of this node's VXLAN device (external/collect_md). 0 = no tunnel:
 * packets that would need it are dropped with DROP_NO_TUNNEL_DEVICE. */
const volatile __u32 CFG_VXLAN_IFINDEX = 0;

/* This node's underlay IPv4 address, network byte order (the same order as
 * ipcache tunnel_endpoint). An ipcache entry pointing at this node whose
 * address is no local endpoint is dropped (DROP_UNKNOWN_ENDPOINT) instead of
 * being sent into the tunnel to ourselves. */
const volatile __u32 CFG_NODE_IP = 0;

/* This node's cluster ID (1..511, 0 = not meshed). Carried for the policy and
 * NAT code of later issues; no current program branches on it. */
const volatile __u32 CFG_CLUSTER_ID = 0;

/* 1: deliver to pods with bpf_redirect_peer() (straight into the pod's netns,
 * skipping the host-side veth's backlog); 0: bpf_redirect() to the host-side
 * veth's egress. Whether the kernel supports peer redirect cannot be probed
 * from BPF at run time, so the agent probes and decides. */
const volatile __u32 CFG_REDIRECT_PEER = 0;

/* Largest inner IPv4 packet (IP total length) that fits into the tunnel:
 * underlay MTU - 50. Larger packets going to the tunnel are dropped with
 * DROP_FRAG_NEEDED. 0 disables the check. */
const volatile __u32 CFG_TUNNEL_MTU = 1450;

/* 1: native routing (routingMode native): a packet to a mesh workload whose
 * address is inside one of CFG_NATIVE_CIDRS leaves unencapsulated, routed by
 * the node's FIB (bpf_fib_lookup + bpf_redirect_neigh, native.h), and
 * from_netdev on the underlay device delivers what arrives that way. Every
 * other mesh destination still goes through the tunnel, so a native node
 * talks to tunnel-mode clusters as before. 0: tunnel only. */
const volatile __u32 CFG_ROUTING_NATIVE = 0;

/* The pod address ranges the underlay routes to their nodes (the cluster's
 * nativeRoutingCIDRs), network byte order; a slot with mask 0 ends the list. */
#define CM_NATIVE_CIDRS_MAX 8
struct cm_cidr {
	__u32 addr; /* network byte order, host bits cleared */
	__u32 mask; /* network byte order; 0 = unused slot */
};
const volatile struct cm_cidr CFG_NATIVE_CIDRS[CM_NATIVE_CIDRS_MAX] = {};

/* 1: tunnelEncap bpf: from_container writes the VXLAN headers itself and
 * sends out of the underlay, and from_netdev (attached to the underlay
 * device) strips them (encap.h); the VXLAN device takes what that path
 * leaves. 0: every tunnel packet goes through the VXLAN device. */
const volatile __u32 CFG_TUNNEL_BPF = 0;

/* The tunnel's UDP destination port, host byte order (the VXLAN device's). */
const volatile __u32 CFG_TUNNEL_PORT = 8472;

#endif /* CM_CONFIG_H */

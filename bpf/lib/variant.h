/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Measurement variants of the datapath: each removes one suspected cost of a
 * round trip, so bench/peers (--suspects) can say which microsecond is which.
 * Built only by `make -C bpf variants` into build/variants/<name>/ with one or
 * more of these defines; the objects of `make -C bpf` define none of them, and
 * then this header declares nothing.
 *
 *   CM_VARIANT_NO_LB       no service lookup or reverse translation at all
 *                          (lxc.bpf.c, overlay.bpf.c): wrong for service traffic
 *   CM_VARIANT_NO_METRICS  no per-CPU counters (metrics.h)
 *   CM_VARIANT_NO_TRACE    no cm_settings lookup and no event for forwarded
 *                          packets (events.h); drops are still reported
 *   CM_VARIANT_PEER_DEVICE into the tunnel through a VXLAN device per remote
 *                          node that is not external (collect_md): a fixed
 *                          remote and VNI, so the device caches its route
 *                          (bpf_skb_set_tunnel_key always marks the tunnel
 *                          info no-cache: the external device looks the route
 *                          up per packet). cm_variant_peer_dev maps a remote
 *                          node to that device and the VNI it sends; a source
 *                          identity other than that VNI takes the usual path.
 */
#ifndef CM_VARIANT_H
#define CM_VARIANT_H

#include "common.h"

#ifdef CM_VARIANT_PEER_DEVICE
struct peer_device {
	__u32 ifindex; /* the non-external VXLAN device towards this node */
	__u32 vni;     /* the VNI it was created with: the identity it may carry */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* remote node IPv4, network byte order */
	__type(value, struct peer_device);
	__uint(max_entries, 256);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_variant_peer_dev SEC(".maps");
#endif

#endif /* CM_VARIANT_H */

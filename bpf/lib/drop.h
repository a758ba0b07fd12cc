/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Drop reasons and the one place where a verdict becomes counters + events.
 * handle_*() return a TC verdict (>= 0) or -DROP_*; each SEC("tc") entry point
 * ends with `return cm_finish(ctx, &tc, ret);`. No drop without a reason.
 */
#ifndef CM_DROP_H
#define CM_DROP_H

#include "common.h"
#include "metrics.h"
#include "events.h"

/* Values are stable API (metrics, events, TypeScript reasons.ts); append only.
 * They start at 130 so they never collide with TC verdicts or trace reasons. */
enum cm_drop_reason {
	DROP_INVALID_PACKET     = 130, /* truncated/malformed Ethernet, ARP or IPv4 header */
	DROP_UNSUPPORTED_L3     = 131, /* neither IPv4 nor ARP (IPv6 is not supported yet) */
	DROP_UNKNOWN_SOURCE     = 132, /* source IPv4 of a pod packet is no local endpoint */
	DROP_SOURCE_MISMATCH    = 133, /* source IPv4 belongs to an endpoint behind another device */
	DROP_UNKNOWN_ENDPOINT   = 134, /* destination should be local but is no local endpoint */
	DROP_TTL_EXCEEDED       = 135, /* TTL <= 1 on a forwarding hop */
	DROP_FRAG_NEEDED        = 136, /* larger than CFG_TUNNEL_MTU going to the tunnel, or than the route's MTU natively routed */
	DROP_NO_TUNNEL_ENDPOINT = 137, /* workload identity in ipcache without tunnel endpoint */
	DROP_NO_TUNNEL_DEVICE   = 138, /* tunnel needed but CFG_VXLAN_IFINDEX is 0 */
	DROP_NO_TUNNEL_KEY      = 139, /* overlay packet without tunnel metadata */
	DROP_INVALID_IDENTITY   = 140, /* source identity does not fit the 24-bit VNI */
	DROP_WRITE_ERROR        = 141, /* a helper failed to write packet or tunnel metadata */
	DROP_INTERNAL           = 142, /* a negative return that is no DROP_* (a bug) */
	DROP_NO_SERVICE_BACKEND = 143, /* service without a backend that takes new connections */
	DROP_SERVICE_FRAGMENT   = 144, /* fragmented datagram to or from a service (not supported) */
	DROP_CT_WRITE_FAILED    = 145, /* a conntrack entry for a new service connection could not be written */
	DROP_POLICY_DENY        = 146, /* an explicit deny entry of the policy matched */
	DROP_POLICY             = 147, /* enforced direction and no allow entry matched (default deny) */
	DROP_NO_ROUTE           = 148, /* native routing: bpf_fib_lookup found no usable route (none, blackhole, forwarding off) */
	__DROP_MAX,
};

CM_BTF_EXPORT(enum cm_drop_reason, drop_reason);

static __always_inline int cm_finish(struct __sk_buff *ctx, struct trace_ctx *tc, int ret)
{
	if (ret < 0) {
		__u32 reason = -ret;

		if (reason < DROP_INVALID_PACKET || reason >= __DROP_MAX)
			reason = DROP_INTERNAL;
		metrics_update(reason, tc->dir, ctx->len);
		event_emit(ctx, tc, EVENT_DROP, reason);
		/* Answered drop (lb4_reset): the packet became the answer. */
		if (tc->reply)
			return bpf_redirect(tc->target_ifindex, 0);
		return TC_ACT_SHOT;
	}
	metrics_update(tc->reason, tc->dir, ctx->len);
	if (tc->svc_ip)
		metrics_update(TRACE_SERVICE_XLATE, tc->dir, ctx->len);
	if (settings_trace_forward(tc))
		event_emit(ctx, tc, EVENT_TRACE, tc->reason);
	return ret;
}

#endif /* CM_DROP_H */

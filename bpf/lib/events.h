/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Events to userspace (the agent reads them into flows): one per drop always;
 * one per forwarded packet while SETTINGS_F_TRACE_FORWARD is set in
 * cm_settings; with SETTINGS_F_TRACE_NEW, one per forwarded TCP packet that
 * opens a connection (SYN without ACK), a sample cheap enough to leave on.
 * The flags are a map, not .rodata, so they can be flipped on a running node.
 */
#ifndef CM_EVENTS_H
#define CM_EVENTS_H

#include "common.h"
#include "metrics.h"

/*
 * 4 MiB: a record is 64 bytes (56 + the 8-byte ring header), so at 10,000
 * events/s the ring absorbs 6.5 s without a read. The reader (the agent)
 * was seen starved for about 0.7 s on a loaded 2-vCPU machine, when 256 KiB
 * (0.4 s) lost events: about 9 times that. A power of two, as the kernel
 * requires; changing it replaces the pinned ring on the next agent start
 * (src/datapath/node.ts).
 */
#define EVENTS_RINGBUF_SIZE (4 * 1024 * 1024)

enum cm_event_type {
	EVENT_DROP  = 1,
	EVENT_TRACE = 2,
};

/* Why a packet went on (metrics reason and EVENT_TRACE reason). */
enum cm_trace_reason {
	TRACE_TO_ENDPOINT = 1, /* redirected to a local pod */
	TRACE_TO_OVERLAY  = 2, /* tunnel key set, redirected to the VXLAN device */
	TRACE_TO_STACK    = 3, /* handed to the host stack (world, host, ARP...) */
	TRACE_ARP_REPLY   = 4, /* ARP request answered from BPF */
	/* Counter only (no event, no forward of its own): a packet addressed to a
	 * service frontend and translated to a backend, counted besides where it went. */
	TRACE_SERVICE_XLATE = 5,
	TRACE_TO_NETWORK  = 6, /* native routing: unencapsulated, redirected to the FIB's next hop */
	/* Not a packet: an event the ring buffer had no room for (bytes = 0). */
	TRACE_EVENT_LOST  = 127,
};

/* 56 bytes. Addresses network byte order, everything else host order. */
struct cm_event {
	__u64 timestamp;       /* bpf_ktime_get_ns(), CLOCK_MONOTONIC */
	__u32 src_ip;          /* network byte order, 0 if not parsed */
	__u32 dst_ip;          /* network byte order, 0 if not parsed */
	__u32 src_identity;
	__u32 dst_identity;
	__u32 ifindex;         /* device the program ran on (skb->ifindex) */
	__u32 target_ifindex;  /* redirect target, 0 if none */
	__u32 tunnel_endpoint; /* network byte order: remote node the packet goes
				* to (egress) or came from (overlay ingress); 0 if none */
	__u32 length;          /* skb->len */
	__u16 src_port;        /* TCP/UDP port; ICMP: type */
	__u16 dst_port;        /* TCP/UDP port; ICMP: code */
	__u8  type;            /* enum cm_event_type */
	__u8  reason;          /* enum cm_trace_reason or enum cm_drop_reason */
	__u8  direction;       /* enum cm_direction */
	__u8  protocol;        /* IP protocol, 0 if not IPv4 */
	__u8  tcp_flags;       /* TCP header flags (FIN 0x01 ... CWR 0x80), 0 if not TCP */
	__u8  pad0;            /* 0 */
	__u16 svc_port;        /* service frontend port (host order) when the
				* packet was addressed to a service, else 0 */
	__u32 svc_ip;          /* network byte order: that service's frontend
				* (the destination before translation), else 0 */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RINGBUF_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_events SEC(".maps");

/* Bits of settings_value.flags. */
enum cm_settings_flag {
	SETTINGS_F_TRACE_FORWARD = 1 << 0,
	/* Forwarded TCP SYN (without ACK) only: the first packet of each connection. */
	SETTINGS_F_TRACE_NEW     = 1 << 1,
};

/* 4 bytes; the only element of cm_settings, key (__u32) 0. */
struct settings_value {
	__u32 flags; /* SETTINGS_F_* */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct settings_value);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_settings SEC(".maps");

CM_BTF_EXPORT(struct cm_event, event);
CM_BTF_EXPORT(enum cm_event_type, event_type);
CM_BTF_EXPORT(enum cm_trace_reason, trace_reason);
CM_BTF_EXPORT(enum cm_settings_flag, settings_flag);

/*
 * What the handlers learned about a packet, filled as they go so that the
 * entry point wrapper can report a drop with whatever was known at that point.
 */
struct trace_ctx {
	__u32 src_ip;
	__u32 dst_ip;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 target_ifindex;
	__u32 tunnel_endpoint;
	__u32 svc_ip;       /* service frontend the packet was addressed to (lb.h), 0 if none */
	__u16 svc_port;     /* its port, host order */
	__u16 sport;
	__u16 dport;
	__u8  protocol;
	__u8  tcp_flags;    /* TCP header flags, 0 if not TCP (or not read) */
	__u8  dir;          /* enum cm_direction */
	__u8  reason;       /* enum cm_trace_reason, set by the handler on success */
	__u8  reply;        /* with a drop: the handler rewrote the packet into an
			     * answer to its sender (a TCP RST), which goes out of
			     * target_ifindex instead of being dropped */
};

/*
 * Parses the IPv4 header and notes addresses, protocol and ports in @tc, so
 * that a drop from here on reports them. False when the packet is not IPv4.
 */
static __always_inline bool trace_parse_ipv4(struct __sk_buff *ctx, struct trace_ctx *tc,
					     struct ethhdr **eth, struct iphdr **ip)
{
	if (!parse_ipv4(ctx, eth, ip))
		return false;
	tc->src_ip = (*ip)->saddr;
	tc->dst_ip = (*ip)->daddr;
	tc->protocol = (*ip)->protocol;
	parse_l4_ports(ctx, *ip, &tc->sport, &tc->dport);
	tc->tcp_flags = 0;
	if (tc->protocol == IPPROTO_TCP && !ipv4_is_later_fragment(*ip))
		bpf_skb_load_bytes(ctx, ETH_HLEN + (*ip)->ihl * 4 + 13, &tc->tcp_flags, 1);
	return true;
}

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/* Whether a forwarded packet is reported: all of them, or those opening a TCP connection. */
static __always_inline bool settings_trace_forward(const struct trace_ctx *tc)
{
#ifdef CM_VARIANT_NO_TRACE
	/* Measurement variant (bpf/lib/variant.h): forwards are never reported
	 * and cm_settings is not read; drops still are. */
	return false;
#else
	__u32 zero = 0;
	const struct settings_value *s = bpf_map_lookup_elem(&cm_settings, &zero);

	if (!s)
		return false;
	if (s->flags & SETTINGS_F_TRACE_FORWARD)
		return true;
	return (s->flags & SETTINGS_F_TRACE_NEW) &&
	       (tc->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
#endif
}

static __always_inline void event_emit(struct __sk_buff *ctx, const struct trace_ctx *tc,
				       __u8 type, __u8 reason)
{
	struct cm_event *ev;

	ev = bpf_ringbuf_reserve(&cm_events, sizeof(*ev), 0);
	if (!ev) {
		metrics_update(TRACE_EVENT_LOST, tc->dir, 0);
		return;
	}
	ev->timestamp = bpf_ktime_get_ns();
	ev->src_ip = tc->src_ip;
	ev->dst_ip = tc->dst_ip;
	ev->src_identity = tc->src_identity;
	ev->dst_identity = tc->dst_identity;
	ev->ifindex = ctx->ifindex;
	ev->target_ifindex = tc->target_ifindex;
	ev->tunnel_endpoint = tc->tunnel_endpoint;
	ev->length = ctx->len;
	ev->src_port = tc->sport;
	ev->dst_port = tc->dport;
	ev->type = type;
	ev->reason = reason;
	ev->direction = tc->dir;
	ev->protocol = tc->protocol;
	ev->tcp_flags = tc->tcp_flags;
	ev->pad0 = 0;
	ev->svc_port = tc->svc_port;
	ev->svc_ip = tc->svc_ip;
	bpf_ringbuf_submit(ev, 0);
}

#endif /* CM_EVENTS_H */

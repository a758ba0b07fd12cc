/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Socket-level load balancing: cgroup sock_addr programs on the cgroup of a
 * node's pods (the agent attaches them there, src/datapath/sock.ts). A
 * connect() to a service VIP:port (and, for unconnected UDP, each datagram
 * sent to one) is pointed at a backend before the socket has a packet, with
 * the same choice the per-packet path makes (lb.h: the slot or Maglev table,
 * session affinity, no new connections to terminating, not-ready or
 * cluster-gone backends). Every packet of that connection is then addressed
 * to the backend: from_container finds no VIP in it, makes no conntrack
 * entry and rewrites nothing; egress and ingress policy see the backend's
 * identity as before. getpeername() and recvmsg() are translated back, so
 * the application sees the VIP it asked for.
 *
 * What is not a socket of this cgroup (another node's traffic, a process
 * outside the cgroup, a service without a usable backend) keeps the
 * per-packet path of lxc.bpf.c, which is unchanged.
 *
 * A sock_addr program returns 1 to let the call go on (with the address as
 * the program left it); no program here refuses a call.
 */
#include "common.h"
#include "events.h"
#include "drop.h"
#include "conntrack.h"
#include "lb.h"
#include "sock.h"

#define SOCK_ALLOW 1

/* The affinity client of the calling socket (sock.h). */
static __always_inline __u32 sock_client(struct bpf_sock_addr *ctx)
{
	return bpf_htonl((__u32)bpf_get_netns_cookie(ctx) & SOCK_CLIENT_MASK);
}

/*
 * Points a connect() or sendmsg() to VIP:port at a backend. The hash that
 * spreads connections is built from the socket cookie, so the datagrams of
 * one unconnected UDP socket to one VIP keep going to one backend while the
 * service's table is unchanged, as the CT_SERVICE entry does per packet.
 */
static __always_inline void sock4_xlate_fwd(struct bpf_sock_addr *ctx, __u32 stat)
{
	struct lb_service_key skey = {};
	const struct lb_service_value *svc;
	const struct lb_backend_value *backend = NULL;
	struct sock_revnat_key rkey = {};
	struct sock_revnat_value rval = {};
	struct lb4_tuple t = {};
	__u64 cookie;
	__u32 id;

	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return;
	skey.vip = ctx->user_ip4;
	skey.dport = (__u16)ctx->user_port;
	skey.proto = ctx->protocol;
	if (!lb_hint_may(LB_HINT_VIP, skey.vip))
		return;
	svc = bpf_map_lookup_elem(&cm_services, &skey);
	if (!svc)
		return;

	cookie = bpf_get_socket_cookie(ctx);
	t.saddr = sock_client(ctx);
	t.daddr = skey.vip;
	t.sport = (__u16)lb_mix32((__u32)cookie ^ (__u32)(cookie >> 32));
	t.dport = skey.dport;
	t.proto = skey.proto;
	id = lb4_choose(svc, &t, ct_now(), &backend);
	if (!id || !backend) {
		/* from_container refuses it with its reason (RST, counter, event). */
		sock_stat_inc(SOCK_STAT_NO_BACKEND);
		return;
	}

	rkey.cookie = cookie;
	rkey.addr = backend->addr;
	rkey.port = backend->port;
	rval.vip = skey.vip;
	rval.port = skey.dport;
	rval.revnat_id = svc->revnat_id;
	/* Without the way back the application would see the backend: then
	 * rather leave the VIP to the per-packet path. */
	if (bpf_map_update_elem(&cm_sock_revnat, &rkey, &rval, BPF_ANY) < 0) {
		sock_stat_inc(SOCK_STAT_REVNAT_FAIL);
		return;
	}
	ctx->user_ip4 = backend->addr;
	ctx->user_port = backend->port;
	sock_stat_inc(stat);
}

/*
 * Shows VIP:port instead of backend:port to the application when this socket
 * was sent there by sock4_xlate_fwd and the service still has that frontend.
 */
static __always_inline void sock4_xlate_rev(struct bpf_sock_addr *ctx, __u32 stat)
{
	const struct sock_revnat_value *rval;
	const struct lb_revnat_value *rn;
	struct sock_revnat_key rkey = {};
	__u32 rid;

	rkey.cookie = bpf_get_socket_cookie(ctx);
	rkey.addr = ctx->user_ip4;
	rkey.port = (__u16)ctx->user_port;
	rval = bpf_map_lookup_elem(&cm_sock_revnat, &rkey);
	if (!rval)
		return;
	rid = rval->revnat_id;
	rn = bpf_map_lookup_elem(&cm_revnat, &rid);
	if (!rn || rn->vip != rval->vip || rn->port != rval->port)
		return;
	ctx->user_ip4 = rval->vip;
	ctx->user_port = rval->port;
	sock_stat_inc(stat);
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx)
{
	sock4_xlate_fwd(ctx, SOCK_STAT_CONNECT);
	return SOCK_ALLOW;
}

SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	sock4_xlate_fwd(ctx, SOCK_STAT_SENDMSG);
	return SOCK_ALLOW;
}

SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	sock4_xlate_rev(ctx, SOCK_STAT_RECVMSG);
	return SOCK_ALLOW;
}

SEC("cgroup/getpeername4")
int sock4_getpeername(struct bpf_sock_addr *ctx)
{
	sock4_xlate_rev(ctx, SOCK_STAT_GETPEERNAME);
	return SOCK_ALLOW;
}

char LICENSE[] SEC("license") = "GPL";

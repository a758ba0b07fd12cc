/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Socket-level load balancing (sock.bpf.c): what the cgroup sock_addr
 * programs keep besides the service maps of lb.h.
 *
 *   cm_sock_revnat  socket cookie, backend:port -> VIP:port. Written when
 *                   connect()/sendmsg() was sent to a backend instead of a
 *                   VIP; read by getpeername()/recvmsg() so the application
 *                   sees the address it asked for. LRU: a closed socket's
 *                   entries age out, nobody has to delete them.
 *   cm_sock_stats   per-CPU counters of what the programs did (SOCK_STAT_*).
 */
#ifndef CM_SOCK_H
#define CM_SOCK_H

#include "common.h"

#define SOCK_REVNAT_MAX_ENTRIES 65536

/*
 * Client of a socket for session affinity (lb_affinity_key.client): the
 * socket has no source address yet at connect(), so the client is its
 * network namespace (one per pod): 0.x.y.z with x.y.z the low 24 bits of the
 * namespace cookie. 0.0.0.0/8 is never a packet's source address, so these
 * keys cannot meet the per-packet path's (client IP) keys in cm_affinity.
 */
#define SOCK_CLIENT_MASK 0x00ffffffU

/* 16 bytes. addr and port network byte order. */
struct sock_revnat_key {
	__u64 cookie; /* bpf_get_socket_cookie() */
	__u32 addr;   /* backend */
	__u16 port;   /* backend */
	__u16 pad;    /* 0 */
};

/* 12 bytes. vip and port network byte order, revnat_id host order. */
struct sock_revnat_value {
	__u32 vip;
	__u16 port;
	__u16 pad;       /* 0 */
	__u32 revnat_id; /* cm_revnat key: the reverse translation holds while it names this VIP:port */
};

/* Index of cm_sock_stats; stable API (TypeScript sock.ts). */
enum cm_sock_stat {
	SOCK_STAT_CONNECT     = 0, /* connect() to a VIP sent to a backend */
	SOCK_STAT_SENDMSG     = 1, /* an unconnected UDP datagram to a VIP sent to a backend */
	SOCK_STAT_RECVMSG     = 2, /* a datagram's source shown as the VIP */
	SOCK_STAT_GETPEERNAME = 3, /* getpeername() shown the VIP */
	SOCK_STAT_NO_BACKEND  = 4, /* VIP without a usable backend: left to the per-packet path */
	SOCK_STAT_REVNAT_FAIL = 5, /* cm_sock_revnat full or failing: left to the per-packet path */
	SOCK_STAT_MAX         = 6,
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sock_revnat_key);
	__type(value, struct sock_revnat_value);
	__uint(max_entries, SOCK_REVNAT_MAX_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_sock_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, SOCK_STAT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_sock_stats SEC(".maps");

CM_BTF_EXPORT(enum cm_sock_stat, sock_stat);

static __always_inline void sock_stat_inc(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&cm_sock_stats, &which);

	if (v)
		*v += 1;
}

#endif /* CM_SOCK_H */

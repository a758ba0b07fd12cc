// The maps of socket-level load balancing (bpf/lib/sock.h, bpf/sock.bpf.c):
//   cm_sock_revnat  LRU hash, (socket cookie, backend, port) -> VIP, port,
//                   revnat id: what getpeername()/recvmsg() show instead of
//                   the backend. Written by the programs only.
//   cm_sock_stats   per-CPU array of counters, SOCK_STAT_*.
import type { BpfMap } from '../libbpf/map.ts';
import { expectSize, field, readIPv4, readU32, readU64, struct, typedOps, writeIPv4, writeU32, writeU64 } from './codec.ts';

export const REVNAT_MAP_NAME = 'cm_sock_revnat';
export const STATS_MAP_NAME = 'cm_sock_stats';

/** struct sock_revnat_key: cookie host order, addr and port network order. */
export const KEY_LAYOUT = struct('sock_revnat_key', 16, {
  cookie: field(0, 8),
  addr: field(8, 4),
  port: field(12, 2),
  pad: field(14, 2),
});

/** struct sock_revnat_value: vip and port network order, revnat id host order. */
export const VALUE_LAYOUT = struct('sock_revnat_value', 12, {
  vip: field(0, 4),
  port: field(4, 2),
  pad: field(6, 2),
  revnat_id: field(8, 4),
});

export interface Key {
  cookie: bigint;
  backend: string;
  backendPort: number;
}

export interface Value {
  vip: string;
  port: number;
  revnatId: number;
}

export function encodeKey(k: Key): Buffer {
  const b = Buffer.alloc(KEY_LAYOUT.size);
  writeU64(b, KEY_LAYOUT.fields.cookie.offset, k.cookie);
  writeIPv4(b, KEY_LAYOUT.fields.addr.offset, k.backend);
  b.writeUInt16BE(k.backendPort, KEY_LAYOUT.fields.port.offset);
  return b;
}

export function decodeKey(b: Buffer): Key {
  expectSize(b, KEY_LAYOUT);
  return { cookie: readU64(b, 0), backend: readIPv4(b, KEY_LAYOUT.fields.addr.offset), backendPort: b.readUInt16BE(KEY_LAYOUT.fields.port.offset) };
}

export function encodeValue(v: Value): Buffer {
  const b = Buffer.alloc(VALUE_LAYOUT.size);
  writeIPv4(b, VALUE_LAYOUT.fields.vip.offset, v.vip);
  b.writeUInt16BE(v.port, VALUE_LAYOUT.fields.port.offset);
  writeU32(b, VALUE_LAYOUT.fields.revnat_id.offset, v.revnatId);
  return b;
}

export function decodeValue(b: Buffer): Value {
  expectSize(b, VALUE_LAYOUT);
  return { vip: readIPv4(b, VALUE_LAYOUT.fields.vip.offset), port: b.readUInt16BE(VALUE_LAYOUT.fields.port.offset), revnatId: readU32(b, VALUE_LAYOUT.fields.revnat_id.offset) };
}

export const { lookup, entries } = typedOps<Key, Value>({ encode: encodeKey, decode: decodeKey }, { encode: encodeValue, decode: decodeValue });

/** enum cm_sock_stat, in index order. */
export const SOCK_STATS = ['connect', 'sendmsg', 'recvmsg', 'getpeername', 'noBackend', 'revnatFail'] as const;
export type SockStatName = (typeof SOCK_STATS)[number];
/** C names of SOCK_STATS, for the BTF check. */
export const SOCK_STAT_C_NAMES: Readonly<Record<SockStatName, string>> = {
  connect: 'SOCK_STAT_CONNECT',
  sendmsg: 'SOCK_STAT_SENDMSG',
  recvmsg: 'SOCK_STAT_RECVMSG',
  getpeername: 'SOCK_STAT_GETPEERNAME',
  noBackend: 'SOCK_STAT_NO_BACKEND',
  revnatFail: 'SOCK_STAT_REVNAT_FAIL',
};

export type SockStats = Record<SockStatName, number>;

/** Every counter of cm_sock_stats, summed over CPUs. */
export function readStats(map: Pick<BpfMap, 'lookupPerCpu'>): SockStats {
  const out = {} as SockStats;
  SOCK_STATS.forEach((name, i) => {
    const k = Buffer.alloc(4);
    writeU32(k, 0, i);
    const per = map.lookupPerCpu(k) ?? [];
    out[name] = Number(per.reduce((n, v) => n + v.readBigUInt64LE(0), 0n));
  });
  return out;
}

// cm_backends (bpf/lib/lb.h): hash, backend id -> IPv4, port, cluster id,
// flags. A backend is one (address, port) some service translates to; the
// same backend may serve several frontends. Id 0 is never used.
import { expectSize, field, readIPv4, readU16, readU32, struct, typedOps, writeIPv4, writeU16, writeU32 } from './codec.ts';
import { checkPort } from './services.ts';

export const MAP_NAME = 'cm_backends';

/** enum lb_backend_flag: bits of lb_backend_value.flags. */
export const BackendFlag = {
  BACKEND_F_TERMINATING: 1 << 0,
  BACKEND_F_CLUSTER_GONE: 1 << 1,
  BACKEND_F_NOT_READY: 1 << 2,
} as const;

const KNOWN_FLAGS = BackendFlag.BACKEND_F_TERMINATING | BackendFlag.BACKEND_F_CLUSTER_GONE | BackendFlag.BACKEND_F_NOT_READY;

/** struct lb_backend_value: addr and port network order, the rest host order. The key is a __u32 id. */
export const VALUE_LAYOUT = struct('lb_backend_value', 12, {
  addr: field(0, 4),
  port: field(4, 2),
  cluster_id: field(6, 2),
  flags: field(8, 1),
  pad: field(9, 3),
});

export type Key = number;

export interface Value {
  ip: string;
  port: number;
  /** Cluster the backend lives in (0 = not meshed). */
  clusterId: number;
  /** Keeps its connections, never chosen for a new one (BACKEND_F_TERMINATING). */
  terminating: boolean;
  /** Its cluster announced it gone: never chosen for a new connection (BACKEND_F_CLUSTER_GONE). */
  clusterGone: boolean;
  /** Not ready: keeps its connections, never chosen for a new one (BACKEND_F_NOT_READY). */
  notReady: boolean;
}

export function encodeKey(id: Key): Buffer {
  if (!Number.isInteger(id) || id < 1 || id > 0xffffffff) throw new RangeError(`backend id ${id} not in 1..2^32-1`);
  const b = Buffer.alloc(4);
  writeU32(b, 0, id);
  return b;
}

export function decodeKey(b: Buffer): Key {
  if (b.length !== 4) throw new RangeError(`backend key: ${b.length} bytes, expected 4`);
  return readU32(b, 0);
}

export function encodeValue(v: Value): Buffer {
  const f = VALUE_LAYOUT.fields;
  const b = Buffer.alloc(VALUE_LAYOUT.size);
  writeIPv4(b, f.addr.offset, v.ip);
  checkPort(v.port);
  b.writeUInt16BE(v.port, f.port.offset);
  writeU16(b, f.cluster_id.offset, v.clusterId);
  b[f.flags.offset] =
    (v.terminating ? BackendFlag.BACKEND_F_TERMINATING : 0) |
    (v.clusterGone ? BackendFlag.BACKEND_F_CLUSTER_GONE : 0) |
    (v.notReady ? BackendFlag.BACKEND_F_NOT_READY : 0);
  return b;
}

export function decodeValue(b: Buffer): Value {
  expectSize(b, VALUE_LAYOUT);
  const f = VALUE_LAYOUT.fields;
  const flags = b[f.flags.offset]!;
  if ((flags & ~KNOWN_FLAGS) !== 0) throw new RangeError(`lb_backend_value.flags has unknown bits: 0x${flags.toString(16)}`);
  return {
    ip: readIPv4(b, f.addr.offset),
    port: b.readUInt16BE(f.port.offset),
    clusterId: readU16(b, f.cluster_id.offset),
    terminating: (flags & BackendFlag.BACKEND_F_TERMINATING) !== 0,
    clusterGone: (flags & BackendFlag.BACKEND_F_CLUSTER_GONE) !== 0,
    notReady: (flags & BackendFlag.BACKEND_F_NOT_READY) !== 0,
  };
}

export const { lookup, update, remove, entries, updateMany, removeMany } = typedOps<Key, Value>(
  { encode: encodeKey, decode: decodeKey },
  { encode: encodeValue, decode: decodeValue },
);

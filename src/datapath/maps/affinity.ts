// cm_affinity (bpf/lib/lb.h): LRU hash, (client IPv4, service id) ->
// backend and the last time a new connection of that client used it. For
// services with sessionAffinity ClientIP (SVC_F_AFFINITY). Clients of
// socket-level LB (bpf/sock.bpf.c) have no address at connect(): their key is
// 0.x.y.z, the low 24 bits of the pod's network namespace cookie. The datapath does
// not know which backends belong to a service: when a backend leaves a
// service, the reconciler deletes its entries (removeForBackends).
import { type MapHandle, expectSize, field, readIPv4, readU32, struct, typedOps, writeIPv4, writeU32 } from './codec.ts';

export const MAP_NAME = 'cm_affinity';

/** struct lb_affinity_key: client network order, service id host order. */
export const KEY_LAYOUT = struct('lb_affinity_key', 8, {
  client: field(0, 4),
  service_id: field(4, 4),
});

/** struct lb_affinity_value: host order. */
export const VALUE_LAYOUT = struct('lb_affinity_value', 8, {
  backend_id: field(0, 4),
  last_used: field(4, 4),
});

export interface Key {
  client: string;
  serviceId: number;
}

export interface Value {
  backendId: number;
  /** Seconds of CLOCK_MONOTONIC (ct.monotonicSeconds()). */
  lastUsed: number;
}

export function encodeKey(k: Key): Buffer {
  const b = Buffer.alloc(KEY_LAYOUT.size);
  writeIPv4(b, KEY_LAYOUT.fields.client.offset, k.client);
  writeU32(b, KEY_LAYOUT.fields.service_id.offset, k.serviceId);
  return b;
}

export function decodeKey(b: Buffer): Key {
  expectSize(b, KEY_LAYOUT);
  return { client: readIPv4(b, KEY_LAYOUT.fields.client.offset), serviceId: readU32(b, KEY_LAYOUT.fields.service_id.offset) };
}

export function encodeValue(v: Value): Buffer {
  const b = Buffer.alloc(VALUE_LAYOUT.size);
  writeU32(b, VALUE_LAYOUT.fields.backend_id.offset, v.backendId);
  writeU32(b, VALUE_LAYOUT.fields.last_used.offset, v.lastUsed);
  return b;
}

export function decodeValue(b: Buffer): Value {
  expectSize(b, VALUE_LAYOUT);
  return { backendId: readU32(b, VALUE_LAYOUT.fields.backend_id.offset), lastUsed: readU32(b, VALUE_LAYOUT.fields.last_used.offset) };
}

const ops = typedOps<Key, Value>({ encode: encodeKey, decode: decodeKey }, { encode: encodeValue, decode: decodeValue });
export const { lookup, update, remove, entries, updateMany, removeMany } = ops;

/**
 * Deletes the entries of serviceId that point at one of backendIds (they left
 * the service), or all of the service's entries when backendIds is omitted.
 * Collects first, deletes after; returns how many it deleted.
 */
export function removeForBackends(map: MapHandle, serviceId: number, backendIds?: Iterable<number>): number {
  const ids = backendIds === undefined ? undefined : new Set(backendIds);
  const doomed = [...ops.entries(map)].filter(([k, v]) => k.serviceId === serviceId && (ids === undefined || ids.has(v.backendId))).map(([k]) => k);
  return ops.removeMany(map, doomed);
}

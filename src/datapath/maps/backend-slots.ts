// cm_backend_slots (bpf/lib/lb.h): hash, (service id, slot) -> backend id.
// For a service without SVC_F_MAGLEV, slots 0..backendCount-1 hold its
// active backends; a new connection takes slot hash % backendCount.
import { expectSize, field, readU16, readU32, struct, typedOps, writeU16, writeU32, type MapHandle } from './codec.ts';
import { encodeKey as encodeBackendId, decodeKey as decodeBackendId } from './backends.ts';

export const MAP_NAME = 'cm_backend_slots';

/** struct lb_slot_key: host order. The value is a __u32 backend id. */
export const KEY_LAYOUT = struct('lb_slot_key', 8, {
  service_id: field(0, 4),
  slot: field(4, 2),
  pad: field(6, 2),
});

export interface Key {
  serviceId: number;
  /** 0..65534 */
  slot: number;
}

/** The backend id. */
export type Value = number;

export function encodeKey(k: Key): Buffer {
  const b = Buffer.alloc(KEY_LAYOUT.size);
  writeU32(b, KEY_LAYOUT.fields.service_id.offset, k.serviceId);
  writeU16(b, KEY_LAYOUT.fields.slot.offset, k.slot);
  return b;
}

export function decodeKey(b: Buffer): Key {
  expectSize(b, KEY_LAYOUT);
  return { serviceId: readU32(b, KEY_LAYOUT.fields.service_id.offset), slot: readU16(b, KEY_LAYOUT.fields.slot.offset) };
}

export const encodeValue = encodeBackendId;
export const decodeValue = decodeBackendId;

const ops = typedOps<Key, Value>({ encode: encodeKey, decode: decodeKey }, { encode: encodeValue, decode: decodeValue });
export const { lookup, update, remove, entries, updateMany, removeMany } = ops;

/** The entries that make backendIds the slot table of serviceId (slot i -> backendIds[i]). */
export function tableEntries(serviceId: number, backendIds: readonly number[]): Array<[Key, Value]> {
  return backendIds.map((id, slot) => [{ serviceId, slot }, id]);
}

/**
 * Deletes the slots of serviceId at or beyond count (after its table shrank);
 * returns how many there were. Order of a change that keeps every slot the
 * datapath may hash to filled: growing, write the new slots before raising
 * backendCount in cm_services; shrinking, lower backendCount first and prune
 * after. (A missing slot is not fatal: the datapath probes the next ones.)
 */
export function pruneBeyond(map: MapHandle, serviceId: number, count: number): number {
  const stale = [...ops.entries(map)].filter(([k]) => k.serviceId === serviceId && k.slot >= count).map(([k]) => k);
  return ops.removeMany(map, stale);
}

// cm_metrics (bpf/lib/metrics.h): per-CPU hash, (reason, direction) ->
// packets and bytes. Reason is a trace reason (< 128) or a drop reason (>= 128).
import {
  type MapHandle,
  expectSize,
  field,
  readU16,
  readU64,
  struct,
  typedOps,
  writeU16,
  writeU64,
  writeU8,
} from './codec.ts';
import { type DirectionName, directionCode, directionName, isDropReason, reasonName } from './reasons.ts';

export const MAP_NAME = 'cm_metrics';

/** struct metrics_key. */
export const KEY_LAYOUT = struct('metrics_key', 4, {
  reason: field(0, 1),
  dir: field(1, 1),
  pad: field(2, 2),
});

/** struct metrics_value, per CPU (the kernel pads each CPU's copy to 8 bytes: 16). */
export const VALUE_LAYOUT = struct('metrics_value', 16, {
  packets: field(0, 8),
  bytes: field(8, 8),
});

export interface Key {
  reason: number;
  direction: DirectionName;
}

export interface Value {
  packets: bigint;
  /** skb->len, the L2 frame as the program saw it. */
  bytes: bigint;
}

export function encodeKey(k: Key): Buffer {
  const b = Buffer.alloc(KEY_LAYOUT.size);
  writeU8(b, KEY_LAYOUT.fields.reason.offset, k.reason);
  writeU8(b, KEY_LAYOUT.fields.dir.offset, directionCode(k.direction));
  writeU16(b, KEY_LAYOUT.fields.pad.offset, 0);
  return b;
}

export function decodeKey(b: Buffer): Key {
  expectSize(b, KEY_LAYOUT);
  if (readU16(b, KEY_LAYOUT.fields.pad.offset) !== 0) throw new RangeError('metrics_key with non-zero padding');
  return { reason: b[KEY_LAYOUT.fields.reason.offset]!, direction: directionName(b[KEY_LAYOUT.fields.dir.offset]!) };
}

/** One value (16 bytes), e.g. to seed a per-CPU map, where BpfMap.update replicates it to every CPU. */
export function encodeValue(v: Value): Buffer {
  const b = Buffer.alloc(VALUE_LAYOUT.size);
  writeU64(b, VALUE_LAYOUT.fields.packets.offset, v.packets);
  writeU64(b, VALUE_LAYOUT.fields.bytes.offset, v.bytes);
  return b;
}

/** A per-CPU lookup result (nCPUs × 16 bytes) summed over the CPUs; a single 16-byte value works too. */
export function decodeValue(b: Buffer): Value {
  const stride = VALUE_LAYOUT.size; // already a multiple of 8
  if (b.length === 0 || b.length % stride !== 0) throw new RangeError(`metrics_value: ${b.length} bytes is no multiple of ${stride}`);
  let packets = 0n;
  let bytes = 0n;
  for (let off = 0; off < b.length; off += stride) {
    packets += readU64(b, off + VALUE_LAYOUT.fields.packets.offset);
    bytes += readU64(b, off + VALUE_LAYOUT.fields.bytes.offset);
  }
  return { packets, bytes };
}

const ops = typedOps<Key, Value>({ encode: encodeKey, decode: decodeKey }, { encode: encodeValue, decode: decodeValue });
export const { lookup, update, remove, entries, removeMany } = ops;

export interface Row extends Key, Value {
  /** 'DROP_TTL_EXCEEDED', 'TRACE_TO_OVERLAY', ... */
  reasonName: string;
  drop: boolean;
}

/** Every counter, summed over CPUs, ordered by reason then direction. */
export function read(map: MapHandle): Row[] {
  const rows: Row[] = [];
  for (const [k, v] of ops.entries(map)) rows.push({ ...k, ...v, reasonName: reasonName(k.reason), drop: isDropReason(k.reason) });
  return rows.sort((a, b) => a.reason - b.reason || a.direction.localeCompare(b.direction));
}

/** Packets and bytes of one counter; zeros when it was never hit. */
export function get(map: MapHandle, key: Key): Value {
  return ops.lookup(map, key) ?? { packets: 0n, bytes: 0n };
}

/** Deletes every counter; returns how many there were. */
export function reset(map: MapHandle): number {
  return ops.removeMany(map, [...ops.entries(map)].map(([k]) => k));
}

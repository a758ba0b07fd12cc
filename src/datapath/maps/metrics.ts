// cm_metrics (bpf/lib/metrics.h): per-CPU array, one slot per (reason,
// direction) at index reason * METRICS_DIRS + direction -> packets and bytes.
// Reason is a trace reason (< 128) or a drop reason (>= 128). Every slot
// exists; a counter never hit is an all-zero slot, which read() skips.
import type { BpfMap } from '../libbpf/map.ts';
import {
  type MapHandle,
  field,
  readU32,
  readU64,
  struct,
  writeU32,
  writeU64,
} from './codec.ts';
import { type DirectionName, directionCode, directionName, isDropReason, reasonName } from './reasons.ts';

export const MAP_NAME = 'cm_metrics';

/** enum cm_metrics_layout: slots per reason. */
export const MetricsLayout = {
  METRICS_DIRS: 4,
} as const;
const DIRS = MetricsLayout.METRICS_DIRS;

/** Slots: every __u8 reason with every direction (METRICS_MAX_ENTRIES). */
export const MAX_ENTRIES = 256 * DIRS;

/** The key, a __u32 slot index. */
export const KEY_SIZE = 4;

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

/** The slot of (reason, direction), as metrics_update() computes it. */
export function slot(k: Key): number {
  if (!Number.isInteger(k.reason) || k.reason < 0 || k.reason > 255) throw new RangeError(`metrics: reason ${k.reason} is no __u8`);
  return k.reason * DIRS + directionCode(k.direction);
}

export function encodeKey(k: Key): Buffer {
  const b = Buffer.alloc(KEY_SIZE);
  writeU32(b, 0, slot(k));
  return b;
}

export function decodeKey(b: Buffer): Key {
  if (b.length !== KEY_SIZE) throw new RangeError(`metrics key: ${b.length} bytes, expected ${KEY_SIZE}`);
  const i = readU32(b, 0);
  if (i >= MAX_ENTRIES) throw new RangeError(`metrics key: slot ${i} beyond ${MAX_ENTRIES}`);
  return { reason: Math.floor(i / DIRS), direction: directionName(i % DIRS) };
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

/** What read() needs of the map; scan (BpfMap) reads all slots in a few batch syscalls. */
export type MetricsMapHandle = MapHandle & Partial<Pick<BpfMap, 'scan' | 'valueBufferSize'>>;

function isZero(b: Buffer, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (b[i] !== 0) return false;
  return true;
}

export interface Row extends Key, Value {
  /** 'DROP_TTL_EXCEEDED', 'TRACE_TO_OVERLAY', ... */
  reasonName: string;
  drop: boolean;
}

/** Every counter that was hit, summed over CPUs, ordered by reason then direction. */
export function read(map: MetricsMapHandle): Row[] {
  const rows: Row[] = [];
  const add = (k: Buffer, v: Buffer): void => {
    const key = decodeKey(k);
    const val = decodeValue(v);
    if (val.packets === 0n && val.bytes === 0n) return;
    rows.push({ ...key, ...val, reasonName: reasonName(key.reason), drop: isDropReason(key.reason) });
  };
  if (map.scan && map.valueBufferSize !== undefined) {
    const vs = map.valueBufferSize;
    map.scan((keys, values, i) => {
      // most slots are zero: test the bytes before decoding anything
      if (isZero(values, i * vs, (i + 1) * vs)) return;
      add(keys.subarray(i * KEY_SIZE, (i + 1) * KEY_SIZE), values.subarray(i * vs, (i + 1) * vs));
    });
  } else {
    for (const [k, v] of map.entries()) add(k, v);
  }
  return rows.sort((a, b) => a.reason - b.reason || a.direction.localeCompare(b.direction));
}

/** Packets and bytes of one counter; zeros when it was never hit. */
export function get(map: MapHandle, key: Key): Value {
  const v = map.lookup(encodeKey(key));
  return v === undefined ? { packets: 0n, bytes: 0n } : decodeValue(v);
}

/** Zeroes every counter (array slots cannot be deleted); returns how many were non-zero. */
export function reset(map: MetricsMapHandle): number {
  const hit = read(map);
  const zero = encodeValue({ packets: 0n, bytes: 0n });
  for (const r of hit) map.update(encodeKey(r), zero);
  return hit.length;
}

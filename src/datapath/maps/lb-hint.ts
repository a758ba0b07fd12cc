// cm_lb_hint (bpf/lib/lb.h): a one-element array, one bit per hash of an
// address for the addresses that may be a VIP (cm_services keys) and those
// that may be a backend (cm_backends values). A packet whose destination has
// no VIP bit skips the service lookup, one whose source has no backend bit
// the reverse translation's conntrack lookup. A bit set for another address
// costs that address a lookup and nothing else; a bit missing for a VIP or
// a backend would leave its traffic untranslated, so writers set bits before
// the entries that need them and clear them only after those are gone
// (src/agent/services.ts). `valid` 0 (never written): the programs look up
// every address, as without the hint.
import { type MapHandle, field, ipv4Bytes, struct } from './codec.ts';

export const MAP_NAME = 'cm_lb_hint';

/** LB_HINT_BITS: bits per set. */
export const HINT_BITS = 65536;
const SET_BYTES = HINT_BITS / 8;

/** struct lb_hint; the key is a __u32 index, always 0. */
export const VALUE_LAYOUT = struct('lb_hint', 8 + 2 * SET_BYTES, {
  valid: field(0, 4),
  pad: field(4, 4),
  vip: field(8, SET_BYTES),
  backend: field(8 + SET_BYTES, SET_BYTES),
});
export const VALUE_SIZE = VALUE_LAYOUT.size;
const VIP_OFFSET = VALUE_LAYOUT.fields.vip.offset;
const BACKEND_OFFSET = VALUE_LAYOUT.fields.backend.offset;

/** The addresses of one set each (IPv4, dotted). */
export interface HintAddresses {
  vips: Iterable<string>;
  backends: Iterable<string>;
}

/** lb_mix32 (bpf/lib/lb.h). */
function mix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d);
  h ^= h >>> 15;
  h = Math.imul(h, 0x846ca68b);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The bit of @addr: lb_mix32 of the address as the programs load it (network order in a little-endian u32). */
export function hintBit(addr: string): number {
  return mix32(ipv4Bytes(addr).readUInt32LE(0)) & (HINT_BITS - 1);
}

function setBits(b: Buffer, offset: number, addrs: Iterable<string>): void {
  for (const a of addrs) {
    const bit = hintBit(a);
    b[offset + (bit >>> 3)]! |= 1 << (bit & 7);
  }
}

/** A value with exactly the bits of @a, valid. */
export function encode(a: HintAddresses): Buffer {
  const b = Buffer.alloc(VALUE_SIZE);
  b.writeUInt32LE(1, 0);
  setBits(b, VIP_OFFSET, a.vips);
  setBits(b, BACKEND_OFFSET, a.backends);
  return b;
}

const KEY = Buffer.alloc(4); // index 0

/** The current value (all zero for a map nobody wrote). */
export function read(map: MapHandle): Buffer {
  const b = map.lookup(KEY);
  if (b === undefined) return Buffer.alloc(VALUE_SIZE);
  if (b.length !== VALUE_SIZE) throw new RangeError(`struct lb_hint: ${b.length} bytes, expected ${VALUE_SIZE}`);
  return b;
}

/** Whether @value's valid flag is set. */
export function isValid(value: Buffer): boolean {
  return value.readUInt32LE(0) !== 0;
}

/** Whether @value has @addr's bit in @set, valid or not. */
export function hasBit(value: Buffer, set: 'vip' | 'backend', addr: string): boolean {
  const bit = hintBit(addr);
  return (value[(set === 'vip' ? VIP_OFFSET : BACKEND_OFFSET) + (bit >>> 3)]! & (1 << (bit & 7))) !== 0;
}

/** Whether the programs would look @addr up as a VIP / a backend (lb_hint_may; everywhere while not valid). */
export function mayBe(value: Buffer, set: 'vip' | 'backend', addr: string): boolean {
  return !isValid(value) || hasBit(value, set, addr);
}

/**
 * Replaces @current (what the map holds, read()) by @next, a valid value.
 * Only once nothing needs a bit it clears. A hint not valid yet gets the
 * bits first and `valid` in a second write: a reader never sees `valid`
 * before the bits. Returns false when @next is what the map holds (nothing
 * written).
 */
export function writeValue(map: MapHandle, next: Buffer, current: Buffer): boolean {
  if (next.equals(current)) return false;
  if (!isValid(current)) {
    const bitsFirst = Buffer.from(next);
    bitsFirst.writeUInt32LE(0, 0);
    map.update(KEY, bitsFirst);
  }
  map.update(KEY, next);
  return true;
}

/** Replaces the hint by exactly @a's bits, valid (writeValue). */
export function write(map: MapHandle, a: HintAddresses): void {
  writeValue(map, encode(a), read(map));
}

/**
 * Adds @a's bits to the hint; it stays as valid as it was. Before writing
 * entries that name them. Writes only when a bit is new; returns whether it wrote.
 */
export function add(map: MapHandle, a: HintAddresses): boolean {
  const current = read(map);
  const b = Buffer.from(current);
  setBits(b, VIP_OFFSET, a.vips);
  setBits(b, BACKEND_OFFSET, a.backends);
  if (b.equals(current)) return false;
  map.update(KEY, b);
  return true;
}

/**
 * How many addresses of each set need each bit: a writer that keeps a large
 * set (the agent: every programmed VIP and backend) counts what it adds and
 * removes, and encodes the hint from the counts, instead of hashing every
 * address again for each change.
 */
export class HintCounts {
  private readonly vip = new Uint32Array(HINT_BITS);
  private readonly backend = new Uint32Array(HINT_BITS);

  /** Counts @a's addresses once more (+1) or once less (-1); all or, when one was not counted, none (a RangeError). */
  change(a: HintAddresses, delta: 1 | -1): void {
    const sets = [[this.vip, [...a.vips].map(hintBit)], [this.backend, [...a.backends].map(hintBit)]] as const;
    if (delta < 0) {
      for (const [counts, bits] of sets) {
        const taken = new Map<number, number>();
        for (const bit of bits) {
          const n = (taken.get(bit) ?? 0) + 1;
          if (n > counts[bit]!) throw new RangeError(`cm_lb_hint: an address of bit ${bit} removed more often than added`);
          taken.set(bit, n);
        }
      }
    }
    for (const [counts, bits] of sets) for (const bit of bits) counts[bit]! += delta;
  }

  /** A valid value with the bits of every counted address, and of @extra's. */
  encode(extra: HintAddresses = { vips: [], backends: [] }): Buffer {
    const b = encode(extra);
    for (const [offset, counts] of [[VIP_OFFSET, this.vip], [BACKEND_OFFSET, this.backend]] as const) {
      for (let bit = 0; bit < HINT_BITS; bit++) if (counts[bit] !== 0) b[offset + (bit >>> 3)]! |= 1 << (bit & 7);
    }
    return b;
  }
}

/** Sets the hint not valid, its bits as they are: every address is looked up (a writer that could not keep it right). */
export function invalidate(map: MapHandle): void {
  const b = Buffer.from(read(map));
  b.writeUInt32LE(0, 0);
  map.update(KEY, b);
}

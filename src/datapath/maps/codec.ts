// Shared pieces of the map codecs: struct layouts (checked against the
// objects' BTF by btf.test.ts), host/network byte order readers and writers,
// and typed map operations over a BpfMap.
//
// Byte orders: numbers in these structs are host byte order (what the BPF
// program reads natively); IPv4 addresses are network byte order, exactly as
// in the packet, and appear in TypeScript as dotted strings.
import { endianness } from 'node:os';
import type { BpfMap, UpdateFlag } from '../libbpf/map.ts';

const LE = endianness() === 'LE';

/** Where one C struct member lives. */
export interface FieldLayout {
  readonly offset: number;
  readonly size: number;
}

/** A C struct as a codec sees it. Every member (padding included) is named, with the C name. */
export interface StructLayout<F extends string = string> {
  /** The C struct name (`struct <cName>`) in bpf/lib/*.h. */
  readonly cName: string;
  readonly size: number;
  readonly fields: Readonly<Record<F, FieldLayout>>;
}

/** Declares a layout; throws at import time if fields overlap or leave the struct. */
export function struct<F extends string>(cName: string, size: number, fields: Record<F, FieldLayout>): StructLayout<F> {
  const sorted = (Object.entries(fields) as Array<[string, FieldLayout]>).sort((a, b) => a[1].offset - b[1].offset);
  let end = 0;
  for (const [name, f] of sorted) {
    if (f.offset < end) throw new Error(`struct ${cName}: ${name} at ${f.offset} overlaps the previous member`);
    end = f.offset + f.size;
  }
  if (end > size) throw new Error(`struct ${cName}: members end at ${end}, beyond its size ${size}`);
  return { cName, size, fields };
}

export const field = (offset: number, size: number): FieldLayout => ({ offset, size });

export function readU16(b: Buffer, off: number): number {
  return LE ? b.readUInt16LE(off) : b.readUInt16BE(off);
}
export function writeU16(b: Buffer, off: number, v: number): void {
  checkUint(v, 0xffff);
  if (LE) b.writeUInt16LE(v, off);
  else b.writeUInt16BE(v, off);
}
export function readU32(b: Buffer, off: number): number {
  return LE ? b.readUInt32LE(off) : b.readUInt32BE(off);
}
export function writeU32(b: Buffer, off: number, v: number): void {
  checkUint(v, 0xffffffff);
  if (LE) b.writeUInt32LE(v, off);
  else b.writeUInt32BE(v, off);
}
export function readU64(b: Buffer, off: number): bigint {
  return LE ? b.readBigUInt64LE(off) : b.readBigUInt64BE(off);
}
export function writeU64(b: Buffer, off: number, v: bigint): void {
  if (LE) b.writeBigUInt64LE(v, off);
  else b.writeBigUInt64BE(v, off);
}
export function writeU8(b: Buffer, off: number, v: number): void {
  checkUint(v, 0xff);
  b.writeUInt8(v, off);
}

function checkUint(v: number, max: number): void {
  if (!Number.isInteger(v) || v < 0 || v > max) throw new RangeError(`${v} is not an integer in 0..${max}`);
}

const IPV4_RE = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/** '10.1.2.3' -> its 4 bytes, network order. Throws on anything else. */
export function ipv4Bytes(ip: string): Buffer {
  const m = IPV4_RE.exec(ip);
  if (!m) throw new RangeError(`not an IPv4 address: ${JSON.stringify(ip)}`);
  const out = Buffer.alloc(4);
  for (let i = 0; i < 4; i++) {
    const n = Number(m[i + 1]);
    if (n > 255) throw new RangeError(`not an IPv4 address: ${JSON.stringify(ip)}`);
    out[i] = n;
  }
  return out;
}

/** IPv4 in network byte order at b[off..off+4]. */
export function readIPv4(b: Buffer, off: number): string {
  return `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`;
}
export function writeIPv4(b: Buffer, off: number, ip: string): void {
  ipv4Bytes(ip).copy(b, off);
}

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;

export function readMac(b: Buffer, off: number): string {
  return [...b.subarray(off, off + 6)].map((x) => x.toString(16).padStart(2, '0')).join(':');
}
export function writeMac(b: Buffer, off: number, mac: string): void {
  if (!MAC_RE.test(mac)) throw new RangeError(`not a MAC address: ${JSON.stringify(mac)}`);
  mac.split(':').forEach((h, i) => (b[off + i] = parseInt(h, 16)));
}

/** Throws if a buffer from the kernel does not have the struct's size. */
export function expectSize(b: Buffer, layout: StructLayout): void {
  if (b.length !== layout.size) throw new RangeError(`struct ${layout.cName}: ${b.length} bytes, expected ${layout.size}`);
}

/** What the typed operations need of a map: BpfMap, or a fake in unit tests. */
export type MapHandle = Pick<BpfMap, 'lookup' | 'update' | 'delete' | 'entries'> & Partial<Pick<BpfMap, 'updateBatch' | 'deleteBatch'>>;

export interface Codec<T> {
  encode(v: T): Buffer;
  decode(b: Buffer): T;
}

/** Typed element operations for one map's key and value codecs. */
export interface TypedOps<K, V> {
  lookup(map: MapHandle, key: K): V | undefined;
  update(map: MapHandle, key: K, value: V, flags?: UpdateFlag): void;
  /** false when the key was not there (callers that delete treat that as done). */
  remove(map: MapHandle, key: K): boolean;
  entries(map: MapHandle): Generator<[K, V], void, undefined>;
  /** Writes all entries, with BPF_MAP_UPDATE_BATCH where the map has it; returns how many. */
  updateMany(map: MapHandle, entries: ReadonlyArray<readonly [K, V]>, flags?: UpdateFlag): number;
  /** Deletes all keys (batch where possible); returns how many were there. */
  removeMany(map: MapHandle, keys: readonly K[]): number;
}

/** Writes encoded entries, with BPF_MAP_UPDATE_BATCH where the map has it; returns how many. */
export function writeMany(map: MapHandle, raw: ReadonlyArray<readonly [Buffer, Buffer]>, flags: UpdateFlag = 'any'): number {
  if (map.updateBatch) return map.updateBatch(raw, flags);
  for (const [k, v] of raw) map.update(k, v, flags);
  return raw.length;
}

/** Deletes encoded keys (batch where possible); returns how many were there. */
export function deleteMany(map: MapHandle, keys: readonly Buffer[]): number {
  if (map.deleteBatch) return map.deleteBatch(keys);
  let n = 0;
  for (const k of keys) if (map.delete(k)) n++;
  return n;
}

export function typedOps<K, V>(key: Codec<K>, value: Codec<V>): TypedOps<K, V> {
  return {
    lookup(map, k) {
      const v = map.lookup(key.encode(k));
      return v === undefined ? undefined : value.decode(v);
    },
    update(map, k, v, flags = 'any') {
      map.update(key.encode(k), value.encode(v), flags);
    },
    remove(map, k) {
      return map.delete(key.encode(k));
    },
    *entries(map) {
      for (const [k, v] of map.entries()) yield [key.decode(k), value.decode(v)];
    },
    updateMany(map, entries, flags = 'any') {
      return writeMany(map, entries.map(([k, v]) => [key.encode(k), value.encode(v)] as const), flags);
    },
    removeMany(map, keys) {
      return deleteMany(map, keys.map((k) => key.encode(k)));
    },
  };
}

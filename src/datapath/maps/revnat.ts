// cm_revnat (bpf/lib/lb.h): hash, revnat id -> the VIP and port replies of
// a translated connection are rewritten to come from.
import { expectSize, field, readIPv4, readU32, struct, typedOps, writeIPv4, writeU32 } from './codec.ts';
import { checkPort } from './services.ts';

export const MAP_NAME = 'cm_revnat';

/** struct lb_revnat_value: network order. The key is a __u32 revnat id. */
export const VALUE_LAYOUT = struct('lb_revnat_value', 8, {
  vip: field(0, 4),
  port: field(4, 2),
  pad: field(6, 2),
});

export type Key = number;

export interface Value {
  vip: string;
  port: number;
}

export function encodeKey(id: Key): Buffer {
  if (!Number.isInteger(id) || id < 1 || id > 0xffffffff) throw new RangeError(`revnat id ${id} not in 1..2^32-1`);
  const b = Buffer.alloc(4);
  writeU32(b, 0, id);
  return b;
}

export function decodeKey(b: Buffer): Key {
  if (b.length !== 4) throw new RangeError(`revnat key: ${b.length} bytes, expected 4`);
  return readU32(b, 0);
}

export function encodeValue(v: Value): Buffer {
  const b = Buffer.alloc(VALUE_LAYOUT.size);
  writeIPv4(b, VALUE_LAYOUT.fields.vip.offset, v.vip);
  checkPort(v.port);
  b.writeUInt16BE(v.port, VALUE_LAYOUT.fields.port.offset);
  return b;
}

export function decodeValue(b: Buffer): Value {
  expectSize(b, VALUE_LAYOUT);
  return { vip: readIPv4(b, VALUE_LAYOUT.fields.vip.offset), port: b.readUInt16BE(VALUE_LAYOUT.fields.port.offset) };
}

export const { lookup, update, remove, entries, updateMany, removeMany } = typedOps<Key, Value>(
  { encode: encodeKey, decode: decodeKey },
  { encode: encodeValue, decode: decodeValue },
);

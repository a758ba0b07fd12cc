// cm_maglev (bpf/lib/lb.h): hash, service id -> Maglev lookup table of
// MAGLEV_TABLE_SIZE backend ids (src/loadbalancer/maglev.ts computes it).
// Used for services with SVC_F_MAGLEV; a new connection takes entry
// hash % MAGLEV_TABLE_SIZE.
import { expectSize, field, readU32, struct, typedOps, writeU32 } from './codec.ts';

export const MAP_NAME = 'cm_maglev';

/** LB_MAGLEV_SIZE in bpf/lib/lb.h (prime). btf.test.ts checks it through the struct size. */
export const MAGLEV_TABLE_SIZE = 1021;

/** struct lb_maglev_value. The key is a __u32 service id. */
export const VALUE_LAYOUT = struct('lb_maglev_value', MAGLEV_TABLE_SIZE * 4, {
  backend_ids: field(0, MAGLEV_TABLE_SIZE * 4),
});

export type Key = number;
/** Backend id per table entry; exactly MAGLEV_TABLE_SIZE of them. */
export type Value = ArrayLike<number>;

export function encodeKey(serviceId: Key): Buffer {
  const b = Buffer.alloc(4);
  writeU32(b, 0, serviceId);
  return b;
}

export function decodeKey(b: Buffer): Key {
  if (b.length !== 4) throw new RangeError(`maglev key: ${b.length} bytes, expected 4`);
  return readU32(b, 0);
}

export function encodeValue(table: Value): Buffer {
  if (table.length !== MAGLEV_TABLE_SIZE) throw new RangeError(`Maglev table of ${table.length} entries, the datapath's has ${MAGLEV_TABLE_SIZE}`);
  const b = Buffer.alloc(VALUE_LAYOUT.size);
  for (let i = 0; i < table.length; i++) writeU32(b, i * 4, table[i]!);
  return b;
}

export function decodeValue(b: Buffer): Uint32Array {
  expectSize(b, VALUE_LAYOUT);
  const out = new Uint32Array(MAGLEV_TABLE_SIZE);
  for (let i = 0; i < out.length; i++) out[i] = readU32(b, i * 4);
  return out;
}

export const { lookup, update, remove, entries, updateMany, removeMany } = typedOps<Key, Value>(
  { encode: encodeKey, decode: decodeKey },
  { encode: encodeValue, decode: decodeValue },
);

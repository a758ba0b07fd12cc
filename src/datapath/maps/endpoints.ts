// cm_endpoints (bpf/lib/eps.h): hash, local pod IPv4 -> where the pod is
// (host-side veth), its MACs, endpoint ID and identity.
import {
  expectSize,
  field,
  readIPv4,
  readMac,
  readU16,
  readU32,
  struct,
  typedOps,
  writeIPv4,
  writeMac,
  writeU16,
  writeU32,
} from './codec.ts';

export const MAP_NAME = 'cm_endpoints';

/** struct endpoint_key: ip network order. */
export const KEY_LAYOUT = struct('endpoint_key', 4, {
  ip: field(0, 4),
});

/** struct endpoint_info: numbers host order, MACs as on the wire. */
export const VALUE_LAYOUT = struct('endpoint_info', 24, {
  ifindex: field(0, 4),
  identity: field(4, 4),
  endpoint_id: field(8, 2),
  flags: field(10, 2),
  mac: field(12, 6),
  node_mac: field(18, 6),
});

export interface Key {
  ip: string;
}

export interface Value {
  /** ifindex of the pod's host-side veth (target of the redirect). */
  ifindex: number;
  identity: number;
  /** 0..65535 */
  endpointId: number;
  /** Reserved, 0. */
  flags: number;
  /** The pod's own MAC (eth0 in the pod). */
  mac: string;
  /** The host-side veth MAC: the pod's gateway MAC and the source MAC of delivered frames. */
  nodeMac: string;
}

export function encodeKey(k: Key): Buffer {
  const b = Buffer.alloc(KEY_LAYOUT.size);
  writeIPv4(b, KEY_LAYOUT.fields.ip.offset, k.ip);
  return b;
}

export function decodeKey(b: Buffer): Key {
  expectSize(b, KEY_LAYOUT);
  return { ip: readIPv4(b, KEY_LAYOUT.fields.ip.offset) };
}

export function encodeValue(v: Value): Buffer {
  const f = VALUE_LAYOUT.fields;
  const b = Buffer.alloc(VALUE_LAYOUT.size);
  writeU32(b, f.ifindex.offset, v.ifindex);
  writeU32(b, f.identity.offset, v.identity);
  writeU16(b, f.endpoint_id.offset, v.endpointId);
  writeU16(b, f.flags.offset, v.flags);
  writeMac(b, f.mac.offset, v.mac);
  writeMac(b, f.node_mac.offset, v.nodeMac);
  return b;
}

export function decodeValue(b: Buffer): Value {
  expectSize(b, VALUE_LAYOUT);
  const f = VALUE_LAYOUT.fields;
  return {
    ifindex: readU32(b, f.ifindex.offset),
    identity: readU32(b, f.identity.offset),
    endpointId: readU16(b, f.endpoint_id.offset),
    flags: readU16(b, f.flags.offset),
    mac: readMac(b, f.mac.offset),
    nodeMac: readMac(b, f.node_mac.offset),
  };
}

export const { lookup, update, remove, entries, updateMany, removeMany } = typedOps<Key, Value>(
  { encode: encodeKey, decode: decodeKey },
  { encode: encodeValue, decode: decodeValue },
);

// cm_policy, cm_policy_enforce and cm_policy_ct (bpf/lib/policy.h).
//
// cm_policy: LPM trie (local endpoint, direction, protocol, remote identity,
// destination port prefix) -> allow/deny flags. The prefix always covers
// endpoint..identity (64 bits) plus portPrefixLen (0..16) leading bits of the
// port; "any port" is portPrefixLen 0, a range is stored as the prefixes that
// cover it. The stored flags of a prefix are its own merged with those of
// every shorter stored prefix of the same (endpoint, direction, protocol,
// identity), because the kernel returns only the longest match
// (policy-entries.ts computes them).
// cm_policy_enforce: array indexed by endpoint id -> ACTIVE (the endpoint
// has policy; without it the datapath skips its cm_policy lookups) and which
// directions are enforced. An array: "removing" an endpoint writes zeros
// (clearEnforce), and entries() walks all 65536 slots.
// cm_policy_ct: LRU of connections whose replies pass policy.
// cm_policy_cidr: LPM trie, the prefixes CIDR rules name -> their node-local
// CIDR identity; policy looks up the peer's address there besides its
// identity, so CIDR rules match pods and nodes per address (policy.h).
// cm_policy_rev: one __u32, the revision of the three maps above; every
// writer of them calls bumpRevision() after its writes, so that the verdicts
// the datapath cached per connection (cm_policy_verdict, an LRU the
// datapath alone writes) stop holding and the next packet of each
// connection is checked against the new policy.
import { type MapHandle, expectSize, field, ipv4Bytes, readIPv4, readU16, readU32, struct, typedOps, writeIPv4, writeU16, writeU32 } from './codec.ts';
import type { BpfMap } from '../libbpf/map.ts';
import { Direction } from './reasons.ts';

export const MAP_NAME = 'cm_policy';
export const ENFORCE_MAP_NAME = 'cm_policy_enforce';
export const CT_MAP_NAME = 'cm_policy_ct';
export const CIDR_MAP_NAME = 'cm_policy_cidr';
export const REV_MAP_NAME = 'cm_policy_rev';
export const VERDICT_MAP_NAME = 'cm_policy_verdict';

/** Capacity of cm_policy_cidr (POLICY_CIDR_MAX_ENTRIES). */
export const CIDR_MAX_ENTRIES = 65536;

/** Capacity of cm_policy (POLICY_MAX_ENTRIES). */
export const MAX_ENTRIES = 65536;

/** enum cm_policy_flag: bits of policy_value.flags. */
export const PolicyFlag = {
  POLICY_F_ALLOW: 1 << 0,
  POLICY_F_DENY: 1 << 1,
} as const;

/** enum cm_policy_enforce_flag: bits of policy_enforce_value.flags (1 << enum cm_direction). */
export const PolicyEnforceFlag = {
  POLICY_ENFORCE_ACTIVE: 1 << 0,
  POLICY_ENFORCE_INGRESS: 1 << Direction.DIR_INGRESS,
  POLICY_ENFORCE_EGRESS: 1 << Direction.DIR_EGRESS,
} as const;

/** Bits of the LPM prefix before the port (POLICY_PREFIX_FIXED). */
export const PREFIX_FIXED_BITS = 64;

/** struct policy_key: numbers host order except port (network order). */
export const KEY_LAYOUT = struct('policy_key', 16, {
  prefixlen: field(0, 4),
  endpoint_id: field(4, 2),
  direction: field(6, 1),
  protocol: field(7, 1),
  identity: field(8, 4),
  port: field(12, 2),
  pad: field(14, 2),
});

export const VALUE_LAYOUT = struct('policy_value', 4, {
  flags: field(0, 4),
});

export const ENFORCE_VALUE_LAYOUT = struct('policy_enforce_value', 4, {
  flags: field(0, 4),
});

/** struct policy_ct_key: addresses and ports network order. */
export const CT_KEY_LAYOUT = struct('policy_ct_key', 16, {
  saddr: field(0, 4),
  daddr: field(4, 4),
  sport: field(8, 2),
  dport: field(10, 2),
  proto: field(12, 1),
  pad: field(13, 3),
});

export const CT_VALUE_LAYOUT = struct('policy_ct_value', 8, {
  lifetime: field(0, 4),
  flags: field(4, 4),
});

export const REV_VALUE_LAYOUT = struct('policy_rev_value', 4, {
  rev: field(0, 4),
});

/** struct policy_verdict (cm_policy_verdict's value; written by the datapath only). */
export const VERDICT_LAYOUT = struct('policy_verdict', 24, {
  rev: field(0, 4),
  egress_remote: field(4, 4),
  ingress_remote: field(8, 4),
  egress_ep: field(12, 2),
  ingress_ep: field(14, 2),
  checks: field(16, 4),
  sum: field(20, 4),
});

/** enum cm_policy_verdict_flag: bits of policy_verdict.checks. */
export const PolicyVerdictFlag = {
  POLICY_V_EGRESS: 1 << 0,
  POLICY_V_INGRESS: 1 << 1,
  POLICY_V_PORTS: 1 << 2,
} as const;

/** struct policy_cidr_key: prefixlen host order, addr network order. */
export const CIDR_KEY_LAYOUT = struct('policy_cidr_key', 8, {
  prefixlen: field(0, 4),
  addr: field(4, 4),
});

export const CIDR_VALUE_LAYOUT = struct('policy_cidr_value', 4, {
  identity: field(0, 4),
});

export type PolicyDirection = 'ingress' | 'egress';

export interface Key {
  endpointId: number;
  direction: PolicyDirection;
  /** IP protocol number, 0 = any. */
  protocol: number;
  /** Remote identity, 0 = any. */
  identity: number;
  /** First port of the prefix; its low 16 - portPrefixLen bits are 0. */
  port: number;
  /** Leading bits of port that count, 0 (any port) .. 16 (exactly port). */
  portPrefixLen: number;
}

export interface Value {
  allow: boolean;
  deny: boolean;
}

export interface EnforceKey {
  endpointId: number;
}

export interface EnforceValue {
  /** The endpoint has policy (entries or enforcement); false: none, lookups skipped. */
  active: boolean;
  ingress: boolean;
  egress: boolean;
}

export interface CtKey {
  src: string;
  dst: string;
  sport: number;
  dport: number;
  protocol: number;
}

export interface CtValue {
  /** Expiry, seconds of CLOCK_MONOTONIC. */
  lifetime: number;
  flags: number;
}

export interface CidrKey {
  /** Network address; host bits are cleared on encode. */
  addr: string;
  /** 0..32 */
  prefixLen: number;
}

export interface CidrValue {
  /** Node-local CIDR identity (LOCAL_IDENTITY_SCOPE | n). */
  identity: number;
}

function dirCode(d: PolicyDirection): number {
  return d === 'ingress' ? Direction.DIR_INGRESS : Direction.DIR_EGRESS;
}

function dirName(c: number): PolicyDirection {
  if (c === Direction.DIR_INGRESS) return 'ingress';
  if (c === Direction.DIR_EGRESS) return 'egress';
  throw new RangeError(`policy_key.direction ${c}`);
}

function checkPrefix(k: Pick<Key, 'port' | 'portPrefixLen'>): void {
  if (!Number.isInteger(k.portPrefixLen) || k.portPrefixLen < 0 || k.portPrefixLen > 16) {
    throw new RangeError(`port prefix length ${k.portPrefixLen} is not in 0..16`);
  }
  if (!Number.isInteger(k.port) || k.port < 0 || k.port > 0xffff) throw new RangeError(`port ${k.port} is not in 0..65535`);
  const hostBits = 16 - k.portPrefixLen;
  if (k.port & ((1 << hostBits) - 1)) throw new RangeError(`port ${k.port}/${k.portPrefixLen} has bits set beyond its prefix`);
}

export function encodeKey(k: Key): Buffer {
  const f = KEY_LAYOUT.fields;
  checkPrefix(k);
  const b = Buffer.alloc(KEY_LAYOUT.size);
  writeU32(b, f.prefixlen.offset, PREFIX_FIXED_BITS + k.portPrefixLen);
  writeU16(b, f.endpoint_id.offset, k.endpointId);
  b[f.direction.offset] = dirCode(k.direction);
  if (!Number.isInteger(k.protocol) || k.protocol < 0 || k.protocol > 255) throw new RangeError(`protocol ${k.protocol}`);
  b[f.protocol.offset] = k.protocol;
  writeU32(b, f.identity.offset, k.identity);
  b.writeUInt16BE(k.port, f.port.offset);
  return b;
}

export function decodeKey(b: Buffer): Key {
  expectSize(b, KEY_LAYOUT);
  const f = KEY_LAYOUT.fields;
  const prefixlen = readU32(b, f.prefixlen.offset);
  if (prefixlen < PREFIX_FIXED_BITS || prefixlen > PREFIX_FIXED_BITS + 16) throw new RangeError(`policy_key.prefixlen ${prefixlen}`);
  return {
    endpointId: readU16(b, f.endpoint_id.offset),
    direction: dirName(b[f.direction.offset]!),
    protocol: b[f.protocol.offset]!,
    identity: readU32(b, f.identity.offset),
    port: b.readUInt16BE(f.port.offset),
    portPrefixLen: prefixlen - PREFIX_FIXED_BITS,
  };
}

export function encodeValue(v: Value): Buffer {
  const b = Buffer.alloc(VALUE_LAYOUT.size);
  writeU32(b, VALUE_LAYOUT.fields.flags.offset, (v.allow ? PolicyFlag.POLICY_F_ALLOW : 0) | (v.deny ? PolicyFlag.POLICY_F_DENY : 0));
  return b;
}

export function decodeValue(b: Buffer): Value {
  expectSize(b, VALUE_LAYOUT);
  const flags = readU32(b, VALUE_LAYOUT.fields.flags.offset);
  return { allow: (flags & PolicyFlag.POLICY_F_ALLOW) !== 0, deny: (flags & PolicyFlag.POLICY_F_DENY) !== 0 };
}

/** Key of cm_policy_enforce: the endpoint id as a __u32 array index. */
export function encodeEnforceKey(k: EnforceKey): Buffer {
  if (!Number.isInteger(k.endpointId) || k.endpointId < 0 || k.endpointId > 0xffff) throw new RangeError(`endpoint id ${k.endpointId}`);
  const b = Buffer.alloc(4);
  writeU32(b, 0, k.endpointId);
  return b;
}

export function decodeEnforceKey(b: Buffer): EnforceKey {
  if (b.length !== 4) throw new RangeError(`cm_policy_enforce key: ${b.length} bytes, expected 4`);
  return { endpointId: readU32(b, 0) };
}

export function encodeEnforceValue(v: EnforceValue): Buffer {
  const b = Buffer.alloc(ENFORCE_VALUE_LAYOUT.size);
  const flags =
    (v.active ? PolicyEnforceFlag.POLICY_ENFORCE_ACTIVE : 0) |
    (v.ingress ? PolicyEnforceFlag.POLICY_ENFORCE_INGRESS : 0) |
    (v.egress ? PolicyEnforceFlag.POLICY_ENFORCE_EGRESS : 0);
  writeU32(b, ENFORCE_VALUE_LAYOUT.fields.flags.offset, flags);
  return b;
}

export function decodeEnforceValue(b: Buffer): EnforceValue {
  expectSize(b, ENFORCE_VALUE_LAYOUT);
  const flags = readU32(b, ENFORCE_VALUE_LAYOUT.fields.flags.offset);
  return {
    active: (flags & PolicyEnforceFlag.POLICY_ENFORCE_ACTIVE) !== 0,
    ingress: (flags & PolicyEnforceFlag.POLICY_ENFORCE_INGRESS) !== 0,
    egress: (flags & PolicyEnforceFlag.POLICY_ENFORCE_EGRESS) !== 0,
  };
}

export function encodeCtKey(k: CtKey): Buffer {
  const f = CT_KEY_LAYOUT.fields;
  const b = Buffer.alloc(CT_KEY_LAYOUT.size);
  writeIPv4(b, f.saddr.offset, k.src);
  writeIPv4(b, f.daddr.offset, k.dst);
  b.writeUInt16BE(k.sport, f.sport.offset);
  b.writeUInt16BE(k.dport, f.dport.offset);
  b.writeUInt8(k.protocol, f.proto.offset);
  return b;
}

export function decodeCtKey(b: Buffer): CtKey {
  expectSize(b, CT_KEY_LAYOUT);
  const f = CT_KEY_LAYOUT.fields;
  return {
    src: readIPv4(b, f.saddr.offset),
    dst: readIPv4(b, f.daddr.offset),
    sport: b.readUInt16BE(f.sport.offset),
    dport: b.readUInt16BE(f.dport.offset),
    protocol: b[f.proto.offset]!,
  };
}

export function encodeCtValue(v: CtValue): Buffer {
  const b = Buffer.alloc(CT_VALUE_LAYOUT.size);
  writeU32(b, CT_VALUE_LAYOUT.fields.lifetime.offset, v.lifetime);
  writeU32(b, CT_VALUE_LAYOUT.fields.flags.offset, v.flags);
  return b;
}

export function decodeCtValue(b: Buffer): CtValue {
  expectSize(b, CT_VALUE_LAYOUT);
  return { lifetime: readU32(b, CT_VALUE_LAYOUT.fields.lifetime.offset), flags: readU32(b, CT_VALUE_LAYOUT.fields.flags.offset) };
}

export function encodeCidrKey(k: CidrKey): Buffer {
  if (!Number.isInteger(k.prefixLen) || k.prefixLen < 0 || k.prefixLen > 32) throw new RangeError(`prefix length ${k.prefixLen} is not in 0..32`);
  const b = Buffer.alloc(CIDR_KEY_LAYOUT.size);
  writeU32(b, CIDR_KEY_LAYOUT.fields.prefixlen.offset, k.prefixLen);
  const a = ipv4Bytes(k.addr).readUInt32BE(0);
  b.writeUInt32BE(k.prefixLen === 0 ? 0 : (a & (~0 << (32 - k.prefixLen))) >>> 0, CIDR_KEY_LAYOUT.fields.addr.offset);
  return b;
}

export function decodeCidrKey(b: Buffer): CidrKey {
  expectSize(b, CIDR_KEY_LAYOUT);
  return { prefixLen: readU32(b, CIDR_KEY_LAYOUT.fields.prefixlen.offset), addr: readIPv4(b, CIDR_KEY_LAYOUT.fields.addr.offset) };
}

export function encodeCidrValue(v: CidrValue): Buffer {
  const b = Buffer.alloc(CIDR_VALUE_LAYOUT.size);
  writeU32(b, CIDR_VALUE_LAYOUT.fields.identity.offset, v.identity);
  return b;
}

export function decodeCidrValue(b: Buffer): CidrValue {
  expectSize(b, CIDR_VALUE_LAYOUT);
  return { identity: readU32(b, CIDR_VALUE_LAYOUT.fields.identity.offset) };
}

/** '192.0.2.0/24' or '192.0.2.1' (a /32) -> CidrKey. */
export function parseCidrKey(prefix: string): CidrKey {
  const [addr, len, ...rest] = prefix.split('/');
  const prefixLen = len === undefined ? 32 : Number(len);
  if (addr === undefined || rest.length > 0 || !/^\d{1,2}$/.test(len ?? '32') || prefixLen > 32) throw new RangeError(`not an IPv4 prefix: ${JSON.stringify(prefix)}`);
  ipv4Bytes(addr);
  return { addr, prefixLen };
}

export const formatCidrKey = (k: CidrKey): string => `${k.addr}/${k.prefixLen}`;

export const { lookup, update, remove, entries, updateMany, removeMany } = typedOps<Key, Value>(
  { encode: encodeKey, decode: decodeKey },
  { encode: encodeValue, decode: decodeValue },
);

export const enforce = typedOps<EnforceKey, EnforceValue>(
  { encode: encodeEnforceKey, decode: decodeEnforceKey },
  { encode: encodeEnforceValue, decode: decodeEnforceValue },
);

export const ct = typedOps<CtKey, CtValue>({ encode: encodeCtKey, decode: decodeCtKey }, { encode: encodeCtValue, decode: decodeCtValue });

/** cm_policy_cidr. Note that lookup() is a longest-prefix match, as the datapath's. */
export const cidr = typedOps<CidrKey, CidrValue>({ encode: encodeCidrKey, decode: decodeCidrKey }, { encode: encodeCidrValue, decode: decodeCidrValue });

/**
 * The slots of cm_policy_enforce with a flag set (an endpoint with policy),
 * by endpoint id. The array has a value in each of its 65536 slots, nearly
 * all zero: they are read in batches in place and only the others decoded
 * (a full pass every 30 s in each agent).
 */
export function enforcedSlots(map: Pick<BpfMap, 'scan'>): Array<[number, EnforceValue]> {
  const out: Array<[number, EnforceValue]> = [];
  const off = ENFORCE_VALUE_LAYOUT.fields.flags.offset;
  const size = ENFORCE_VALUE_LAYOUT.size;
  map.scan((keys, values, i) => {
    if (readU32(values, i * size + off) === 0) return;
    const v = decodeEnforceValue(values.subarray(i * size, (i + 1) * size));
    if (v.active || v.ingress || v.egress) out.push([readU32(keys, i * 4), v]);
  }, 4096);
  return out;
}

/** The array's "delete": endpoints without policy get zeros (not ACTIVE). */
export function clearEnforce(map: MapHandle, endpointIds: Iterable<number>): void {
  const none: EnforceValue = { active: false, ingress: false, egress: false };
  enforce.updateMany(map, [...endpointIds].map((endpointId) => [{ endpointId }, none] as const));
}

const REV_KEY = Buffer.alloc(4);

/** cm_policy_rev's value (0 in a new map). */
export function revision(map: Pick<BpfMap, 'lookup'>): number {
  const v = map.lookup(REV_KEY);
  return v ? readU32(v, REV_VALUE_LAYOUT.fields.rev.offset) : 0;
}

/**
 * Changes cm_policy_rev: every verdict the datapath cached (cm_policy_verdict)
 * stops holding, and the next packet of each connection is checked against
 * the maps as they are now. Call after writing cm_policy, cm_policy_enforce
 * or cm_policy_cidr (after: a packet checked between a write and the bump
 * caches its verdict under the old revision). Never 0 again once bumped, and
 * never back to a value of a map replaced under the same pin name (it starts
 * from a random value), so an old cached verdict cannot match by chance.
 */
export function bumpRevision(map: Pick<BpfMap, 'lookup' | 'update'>): number {
  const cur = revision(map);
  let next = cur === 0 ? (Math.floor(Math.random() * 0xfffffffe) + 1) >>> 0 : (cur + 1) >>> 0;
  if (next === 0) next = 1;
  const b = Buffer.alloc(REV_VALUE_LAYOUT.size);
  writeU32(b, REV_VALUE_LAYOUT.fields.rev.offset, next);
  map.update(REV_KEY, b);
  return next;
}


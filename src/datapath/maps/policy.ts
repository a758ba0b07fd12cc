// cm_policy, cm_policy_enforce, cm_policy_conn, cm_policy_cidr and
// cm_policy_rev (bpf/lib/policy.h).
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
// cm_policy_conn: LRU of connections whose replies pass policy, one entry
// per connection under one key for both directions (its ends in a fixed
// order), which says which way the opener sent and holds the connection's
// cached verdict. It replaced cm_policy_ct and cm_policy_verdict (one entry
// per direction, the verdict apart); NodeDatapath carries the live
// connections of an old cm_policy_ct over on upgrade (legacyConnections).
// cm_policy_cidr: LPM trie, the prefixes CIDR rules name -> their node-local
// CIDR identity; policy looks up the peer's address there besides its
// identity, so CIDR rules match pods and nodes per address (policy.h).
// cm_policy_rev: one __u32, the revision of the three maps above; every
// writer of them calls bumpRevision() after its writes, so that the verdicts
// the datapath cached per connection (in cm_policy_conn) stop holding and
// the next packet of each connection is checked against the new policy.
import { type MapHandle, expectSize, field, ipv4Bytes, readIPv4, readU16, readU32, struct, typedOps, deleteMany, writeMany, writeIPv4, writeU16, writeU32 } from './codec.ts';
import type { BpfMap } from '../libbpf/map.ts';
import { Direction } from './reasons.ts';

export const MAP_NAME = 'cm_policy';
export const ENFORCE_MAP_NAME = 'cm_policy_enforce';
export const CONN_MAP_NAME = 'cm_policy_conn';
export const CIDR_MAP_NAME = 'cm_policy_cidr';
export const REV_MAP_NAME = 'cm_policy_rev';
/** The maps cm_policy_conn replaced (one entry per direction; the verdicts apart). */
export const LEGACY_CT_MAP_NAME = 'cm_policy_ct';
export const LEGACY_VERDICT_MAP_NAME = 'cm_policy_verdict';

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

/** struct policy_conn_key: addresses and ports network order; end a has the lower (address, port). */
export const CONN_KEY_LAYOUT = struct('policy_conn_key', 16, {
  addr_a: field(0, 4),
  addr_b: field(4, 4),
  port_a: field(8, 2),
  port_b: field(10, 2),
  proto: field(12, 1),
  pad: field(13, 3),
});

/** struct policy_conn (cm_policy_conn's value). */
export const CONN_VALUE_LAYOUT = struct('policy_conn', 36, {
  lifetime: field(0, 4),
  flags: field(4, 2),
  opener: field(6, 1),
  pad: field(7, 1),
  /** Coarse-clock ticks (2^24 ns) from which the next packet refreshes the expiry; 0: the next packet does (what encodeConn writes). */
  refresh_at: field(8, 4),
  verdict: field(12, 20),
  sum: field(32, 4),
});

/** The key and value sizes of the replaced cm_policy_ct (policy_ct_key: saddr, daddr, sport, dport, proto; policy_ct_value: lifetime, flags). */
const LEGACY_CT_KEY_SIZE = 16;
const LEGACY_CT_VALUE_SIZE = 8;

export const REV_VALUE_LAYOUT = struct('policy_rev_value', 4, {
  rev: field(0, 4),
});

/** struct policy_verdict (policy_conn.verdict; cached by the datapath). */
export const VERDICT_LAYOUT = struct('policy_verdict', 20, {
  rev: field(0, 4),
  egress_remote: field(4, 4),
  ingress_remote: field(8, 4),
  egress_ep: field(12, 2),
  ingress_ep: field(14, 2),
  checks: field(16, 4),
});

/** enum cm_policy_verdict_flag: bits of policy_verdict.checks. */
export const PolicyVerdictFlag = {
  POLICY_V_EGRESS: 1 << 0,
  POLICY_V_INGRESS: 1 << 1,
  POLICY_V_PORTS: 1 << 2,
} as const;

/** enum cm_policy_conn_way: which way a connection's opener sent, in its key's terms. */
export const PolicyConnWay = {
  POLICY_CONN_A_TO_B: 0,
  POLICY_CONN_B_TO_A: 1,
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

/** A connection the way its opener sent (its first packet, after service translation). */
export interface Connection {
  src: string;
  dst: string;
  /** 0 for protocols without ports. */
  sport: number;
  dport: number;
  protocol: number;
}

/** policy_verdict: the checks a connection passed by policy, as the datapath cached them. */
export interface Verdict {
  rev: number;
  egressRemote: number;
  ingressRemote: number;
  egressEndpoint: number;
  ingressEndpoint: number;
  /** PolicyVerdictFlag bits; never 0. */
  checks: number;
}

/** A cm_policy_conn entry, decoded. */
export interface ConnEntry extends Connection {
  /** Expiry, seconds of CLOCK_MONOTONIC. */
  lifetime: number;
  /** CT_F_* (CtFlag of ct.ts): CLOSING after a FIN or RST. */
  flags: number;
  /** The cached verdict; null: none (a connection recorded without one). */
  verdict: Verdict | null;
  /** The entry's sum holds; false: the datapath ignores it (it was torn or written wrong). */
  valid: boolean;
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

const ipv4Number = (a: string): number => ipv4Bytes(a).readUInt32BE(0);

/** cm_policy_conn's key of @c, and which way @c goes in its terms (policy_conn_key_of). */
export function encodeConnKey(c: Connection): { key: Buffer; way: number } {
  for (const [name, port] of [['sport', c.sport], ['dport', c.dport]] as const) {
    if (!Number.isInteger(port) || port < 0 || port > 0xffff) throw new RangeError(`${name} ${port} is not in 0..65535`);
  }
  if (!Number.isInteger(c.protocol) || c.protocol < 0 || c.protocol > 255) throw new RangeError(`protocol ${c.protocol}`);
  const s = ipv4Number(c.src);
  const d = ipv4Number(c.dst);
  const ab = s < d || (s === d && c.sport <= c.dport);
  const f = CONN_KEY_LAYOUT.fields;
  const key = Buffer.alloc(CONN_KEY_LAYOUT.size);
  writeIPv4(key, f.addr_a.offset, ab ? c.src : c.dst);
  writeIPv4(key, f.addr_b.offset, ab ? c.dst : c.src);
  key.writeUInt16BE(ab ? c.sport : c.dport, f.port_a.offset);
  key.writeUInt16BE(ab ? c.dport : c.sport, f.port_b.offset);
  key[f.proto.offset] = c.protocol;
  return { key, way: ab ? PolicyConnWay.POLICY_CONN_A_TO_B : PolicyConnWay.POLICY_CONN_B_TO_A };
}

/** policy_conn_sum(): the key and the value's opener and verdict, as the program reads them (host order words). */
export function connSum(key: Buffer, value: Buffer): number {
  const kf = CONN_KEY_LAYOUT.fields;
  const vf = CONN_VALUE_LAYOUT.fields;
  const v = vf.verdict.offset;
  const vv = VERDICT_LAYOUT.fields;
  const mix = (h: number, x: number, m: number): number => Math.imul((h ^ x) >>> 0, m) >>> 0;
  let h = Math.imul((readU32(key, kf.addr_a.offset) ^ value[vf.opener.offset]!) >>> 0, 0x9e3779b1) >>> 0;
  h = mix(h, readU32(key, kf.addr_b.offset), 0x85ebca6b);
  h = mix(h, ((readU16(key, kf.port_a.offset) << 16) | readU16(key, kf.port_b.offset)) >>> 0, 0xc2b2ae35);
  h = mix(h, key[kf.proto.offset]!, 0x27d4eb2f);
  h = mix(h, readU32(value, v + vv.rev.offset), 0x165667b1);
  h = mix(h, readU32(value, v + vv.egress_remote.offset), 0x9e3779b1);
  h = mix(h, readU32(value, v + vv.ingress_remote.offset), 0x85ebca6b);
  h = mix(h, ((readU16(value, v + vv.egress_ep.offset) << 16) | readU16(value, v + vv.ingress_ep.offset)) >>> 0, 0xc2b2ae35);
  h = mix(h, readU32(value, v + vv.checks.offset), 0x27d4eb2f);
  return (h ^ (h >>> 15)) >>> 0;
}

/** A cm_policy_conn entry for @c (the opener's way), its sum computed. */
export function encodeConn(c: Connection, v: { lifetime: number; flags: number; verdict?: Verdict | null }): [Buffer, Buffer] {
  const { key, way } = encodeConnKey(c);
  const f = CONN_VALUE_LAYOUT.fields;
  const value = Buffer.alloc(CONN_VALUE_LAYOUT.size);
  writeU32(value, f.lifetime.offset, v.lifetime);
  writeU16(value, f.flags.offset, v.flags);
  value[f.opener.offset] = way;
  if (v.verdict) {
    const vf = VERDICT_LAYOUT.fields;
    const o = f.verdict.offset;
    if (v.verdict.checks === 0) throw new RangeError('a verdict needs at least one check (checks 0 means none)');
    writeU32(value, o + vf.rev.offset, v.verdict.rev);
    writeU32(value, o + vf.egress_remote.offset, v.verdict.egressRemote);
    writeU32(value, o + vf.ingress_remote.offset, v.verdict.ingressRemote);
    writeU16(value, o + vf.egress_ep.offset, v.verdict.egressEndpoint);
    writeU16(value, o + vf.ingress_ep.offset, v.verdict.ingressEndpoint);
    writeU32(value, o + vf.checks.offset, v.verdict.checks);
  }
  writeU32(value, f.sum.offset, connSum(key, value));
  return [key, value];
}

export function decodeConn(key: Buffer, value: Buffer): ConnEntry {
  expectSize(key, CONN_KEY_LAYOUT);
  expectSize(value, CONN_VALUE_LAYOUT);
  const kf = CONN_KEY_LAYOUT.fields;
  const f = CONN_VALUE_LAYOUT.fields;
  const a = { addr: readIPv4(key, kf.addr_a.offset), port: key.readUInt16BE(kf.port_a.offset) };
  const b = { addr: readIPv4(key, kf.addr_b.offset), port: key.readUInt16BE(kf.port_b.offset) };
  const way = value[f.opener.offset]!;
  if (way !== PolicyConnWay.POLICY_CONN_A_TO_B && way !== PolicyConnWay.POLICY_CONN_B_TO_A) throw new RangeError(`policy_conn.opener ${way}`);
  const [from, to] = way === PolicyConnWay.POLICY_CONN_A_TO_B ? [a, b] : [b, a];
  const o = f.verdict.offset;
  const vf = VERDICT_LAYOUT.fields;
  const checks = readU32(value, o + vf.checks.offset);
  return {
    src: from.addr,
    dst: to.addr,
    sport: from.port,
    dport: to.port,
    protocol: key[kf.proto.offset]!,
    lifetime: readU32(value, f.lifetime.offset),
    flags: readU16(value, f.flags.offset),
    verdict:
      checks === 0
        ? null
        : {
            rev: readU32(value, o + vf.rev.offset),
            egressRemote: readU32(value, o + vf.egress_remote.offset),
            ingressRemote: readU32(value, o + vf.ingress_remote.offset),
            egressEndpoint: readU16(value, o + vf.egress_ep.offset),
            ingressEndpoint: readU16(value, o + vf.ingress_ep.offset),
            checks,
          },
    valid: readU32(value, f.sum.offset) === connSum(key, value),
  };
}

/** cm_policy_conn's entries, each the way its opener sent. */
export function* connections(map: Pick<BpfMap, 'entries'>): Generator<ConnEntry> {
  for (const [k, v] of map.entries()) yield decodeConn(k, v);
}

/** Writes connections into cm_policy_conn (tests; the upgrade from cm_policy_ct). Returns how many were written. */
export function writeConnections(map: MapHandle, conns: ReadonlyArray<readonly [Connection, { lifetime: number; flags: number; verdict?: Verdict | null }]>): number {
  return writeMany(map, conns.map(([c, v]) => encodeConn(c, v)));
}

/** Deletes the expired connections (lifetime < @now): collects first, deletes after. Returns how many went. */
export function removeExpiredConnections(map: MapHandle, now: number): number {
  const off = CONN_VALUE_LAYOUT.fields.lifetime.offset;
  const dead: Buffer[] = [];
  for (const [k, v] of map.entries()) if (readU32(v, off) < now) dead.push(k);
  return deleteMany(map, dead);
}

/**
 * The live connections of an old cm_policy_ct (one entry per direction:
 * saddr, daddr, sport, dport, proto -> lifetime, flags), for cm_policy_conn.
 * An old entry has no verdict (cm_policy_verdict's are not carried over: the
 * next packet of each connection is checked again and caches a new one).
 * Where both directions of a tuple were recorded, the longer-lived wins.
 */
export function legacyConnections(map: Pick<BpfMap, 'entries' | 'keySize' | 'valueSize'>, now: number): Array<[Connection, { lifetime: number; flags: number }]> {
  if (map.keySize !== LEGACY_CT_KEY_SIZE || map.valueSize !== LEGACY_CT_VALUE_SIZE) {
    throw new RangeError(`${LEGACY_CT_MAP_NAME}: key ${map.keySize} and value ${map.valueSize} bytes, expected ${LEGACY_CT_KEY_SIZE} and ${LEGACY_CT_VALUE_SIZE}`);
  }
  const byKey = new Map<string, [Connection, { lifetime: number; flags: number }]>();
  for (const [k, v] of map.entries()) {
    const lifetime = readU32(v, 0);
    if (lifetime < now) continue;
    const c: Connection = { src: readIPv4(k, 0), dst: readIPv4(k, 4), sport: k.readUInt16BE(8), dport: k.readUInt16BE(10), protocol: k[12]! };
    const id = encodeConnKey(c).key.toString('hex');
    const had = byKey.get(id);
    if (!had || had[1].lifetime < lifetime) byKey.set(id, [c, { lifetime, flags: readU32(v, 4) & 0xffff }]);
  }
  return [...byKey.values()];
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
 * Changes cm_policy_rev: every verdict the datapath cached (cm_policy_conn)
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


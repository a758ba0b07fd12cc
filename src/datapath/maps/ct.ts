// cm_ct (bpf/lib/conntrack.h): hash of service connections (no LRU: a full
// table refuses new connections, DROP_CT_WRITE_FAILED, and evicts none). Per
// connection two entries: CT_SERVICE keyed as the client sent it (client ->
// VIP; pins the backend) and CT_REVNAT keyed as the backend replies (backend
// -> client, or -> LB_HAIRPIN_IP when the client is its own backend).
import { type MapHandle, expectSize, field, readIPv4, readU16, readU32, struct, typedOps, writeIPv4, writeU16, writeU32 } from './codec.ts';
import { type L4Protocol, checkPort, protocolName, protocolNumber } from './services.ts';

export const MAP_NAME = 'cm_ct';

/** enum cm_ct_dir. */
export const CtDir = {
  CT_SERVICE: 1,
  CT_REVNAT: 2,
} as const;
export type CtDirName = 'service' | 'revnat';

/** enum cm_ct_flag: bits of ct_entry.flags. */
export const CtFlag = {
  CT_F_CLOSING: 1 << 0,
  CT_F_HAIRPIN: 1 << 1,
} as const;

/** enum cm_ct_lifetime: idle timeouts, seconds. */
export const CtLifetime = {
  CT_LIFETIME_TCP: 21600,
  CT_LIFETIME_TCP_SYN: 60,
  CT_LIFETIME_TCP_CLOSE: 10,
  CT_LIFETIME_NONTCP: 60,
} as const;

/** Source address of hairpin connections (LB_HAIRPIN_IP). */
export const HAIRPIN_IP = '169.254.42.1';

/** struct ct_key: addresses and ports network order. */
export const KEY_LAYOUT = struct('ct_key', 16, {
  saddr: field(0, 4),
  daddr: field(4, 4),
  sport: field(8, 2),
  dport: field(10, 2),
  proto: field(12, 1),
  dir: field(13, 1),
  pad: field(14, 2),
});

/** struct ct_entry: host order. */
export const VALUE_LAYOUT = struct('ct_entry', 16, {
  backend_id: field(0, 4),
  revnat_id: field(4, 4),
  lifetime: field(8, 4),
  flags: field(12, 2),
  pad: field(14, 2),
});

export interface Key {
  src: string;
  dst: string;
  sport: number;
  dport: number;
  protocol: L4Protocol;
  dir: CtDirName;
}

export interface Value {
  backendId: number;
  revnatId: number;
  /** Expiry in seconds of CLOCK_MONOTONIC (compare with monotonicSeconds()). */
  lifetime: number;
  closing: boolean;
  hairpin: boolean;
}

export function encodeKey(k: Key): Buffer {
  const f = KEY_LAYOUT.fields;
  const b = Buffer.alloc(KEY_LAYOUT.size);
  writeIPv4(b, f.saddr.offset, k.src);
  writeIPv4(b, f.daddr.offset, k.dst);
  checkPort(k.sport);
  checkPort(k.dport);
  b.writeUInt16BE(k.sport, f.sport.offset);
  b.writeUInt16BE(k.dport, f.dport.offset);
  b[f.proto.offset] = protocolNumber(k.protocol);
  b[f.dir.offset] = k.dir === 'service' ? CtDir.CT_SERVICE : CtDir.CT_REVNAT;
  return b;
}

export function decodeKey(b: Buffer): Key {
  expectSize(b, KEY_LAYOUT);
  const f = KEY_LAYOUT.fields;
  const dir = b[f.dir.offset]!;
  if (dir !== CtDir.CT_SERVICE && dir !== CtDir.CT_REVNAT) throw new RangeError(`ct_key.dir ${dir}`);
  return {
    src: readIPv4(b, f.saddr.offset),
    dst: readIPv4(b, f.daddr.offset),
    sport: b.readUInt16BE(f.sport.offset),
    dport: b.readUInt16BE(f.dport.offset),
    protocol: protocolName(b[f.proto.offset]!),
    dir: dir === CtDir.CT_SERVICE ? 'service' : 'revnat',
  };
}

export function encodeValue(v: Value): Buffer {
  const f = VALUE_LAYOUT.fields;
  const b = Buffer.alloc(VALUE_LAYOUT.size);
  writeU32(b, f.backend_id.offset, v.backendId);
  writeU32(b, f.revnat_id.offset, v.revnatId);
  writeU32(b, f.lifetime.offset, v.lifetime);
  writeU16(b, f.flags.offset, (v.closing ? CtFlag.CT_F_CLOSING : 0) | (v.hairpin ? CtFlag.CT_F_HAIRPIN : 0));
  return b;
}

export function decodeValue(b: Buffer): Value {
  expectSize(b, VALUE_LAYOUT);
  const f = VALUE_LAYOUT.fields;
  const flags = readU16(b, f.flags.offset);
  return {
    backendId: readU32(b, f.backend_id.offset),
    revnatId: readU32(b, f.revnat_id.offset),
    lifetime: readU32(b, f.lifetime.offset),
    closing: (flags & CtFlag.CT_F_CLOSING) !== 0,
    hairpin: (flags & CtFlag.CT_F_HAIRPIN) !== 0,
  };
}

const ops = typedOps<Key, Value>({ encode: encodeKey, decode: decodeKey }, { encode: encodeValue, decode: decodeValue });
export const { lookup, update, remove, entries, updateMany, removeMany } = ops;

/** Seconds of CLOCK_MONOTONIC, the clock of ct_entry.lifetime and lb_affinity_value.last_used (ct_now(): bpf_ktime_get_coarse_ns). */
export function monotonicSeconds(): number {
  return Number(process.hrtime.bigint() / 1_000_000_000n);
}

/**
 * The sweep: deletes the entries expired at `now` (seconds of CLOCK_MONOTONIC;
 * the datapath already ignores them). cm_ct is no LRU, so this is what frees
 * their room for new connections (the service manager runs it every
 * gcIntervalMs). Collects first, deletes after. Returns how many it deleted.
 */
export function gc(map: MapHandle, now = monotonicSeconds()): number {
  const dead = [...ops.entries(map)].filter(([, v]) => v.lifetime < now).map(([k]) => k);
  return ops.removeMany(map, dead);
}

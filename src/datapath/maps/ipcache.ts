// cm_ipcache (bpf/lib/ipcache.h): LPM trie, IPv4 prefix -> identity and
// tunnel endpoint (the node hosting the prefix).
import {
  type MapHandle,
  expectSize,
  field,
  ipv4Bytes,
  readIPv4,
  readU32,
  struct,
  typedOps,
  writeIPv4,
  writeU32,
} from './codec.ts';
import { LOCAL_IDENTITY_SCOPE } from '../../policy/cidr.ts';

export const MAP_NAME = 'cm_ipcache';

/**
 * enum cm_identity_scope: bits 24..31 of an identity. Node-local identities
 * (CIDR peers, kept in cm_policy_cidr) never ride in the VNI; one found in
 * the ipcache (written by an older agent) goes to the stack like world.
 */
export const IdentityScope = {
  IDENTITY_SCOPE_GLOBAL: 0,
  IDENTITY_SCOPE_LOCAL: LOCAL_IDENTITY_SCOPE,
} as const;

/** struct ipcache_key: prefixlen host order, addr network order. */
export const KEY_LAYOUT = struct('ipcache_key', 8, {
  prefixlen: field(0, 4),
  addr: field(4, 4),
});

/** struct ipcache_value: identity and flags host order, tunnel_endpoint network order (0 = none). */
export const VALUE_LAYOUT = struct('ipcache_value', 12, {
  identity: field(0, 4),
  tunnel_endpoint: field(4, 4),
  flags: field(8, 4),
});

export interface Key {
  /** Network address; host bits are cleared on encode. */
  addr: string;
  /** 0..32 */
  prefixLen: number;
}

export interface Value {
  /** Global (0..0xffffff); node-local ones (LOCAL_IDENTITY_SCOPE | n) belong in cm_policy_cidr. */
  identity: number;
  /** Underlay IPv4 of the node hosting the prefix; null when not behind a tunnel. */
  tunnelEndpoint: string | null;
  /** Reserved, 0. */
  flags: number;
}

/** '10.1.0.0/16' or '10.1.2.3' (a /32) -> Key. */
export function parsePrefix(cidr: string): Key {
  const [addr, len, ...rest] = cidr.split('/');
  if (addr === undefined || rest.length > 0) throw new RangeError(`not an IPv4 prefix: ${JSON.stringify(cidr)}`);
  const prefixLen = len === undefined ? 32 : Number(len);
  if (!/^\d{1,2}$/.test(len ?? '32') || prefixLen > 32) throw new RangeError(`not an IPv4 prefix: ${JSON.stringify(cidr)}`);
  ipv4Bytes(addr);
  return { addr, prefixLen };
}

export function formatPrefix(k: Key): string {
  return `${k.addr}/${k.prefixLen}`;
}

export function encodeKey(k: Key): Buffer {
  if (!Number.isInteger(k.prefixLen) || k.prefixLen < 0 || k.prefixLen > 32) throw new RangeError(`prefix length ${k.prefixLen}`);
  const b = Buffer.alloc(KEY_LAYOUT.size);
  writeU32(b, KEY_LAYOUT.fields.prefixlen.offset, k.prefixLen);
  const a = ipv4Bytes(k.addr);
  const masked = k.prefixLen === 0 ? 0 : (a.readUInt32BE(0) & (~0 << (32 - k.prefixLen))) >>> 0;
  b.writeUInt32BE(masked, KEY_LAYOUT.fields.addr.offset);
  return b;
}

export function decodeKey(b: Buffer): Key {
  expectSize(b, KEY_LAYOUT);
  return { prefixLen: readU32(b, KEY_LAYOUT.fields.prefixlen.offset), addr: readIPv4(b, KEY_LAYOUT.fields.addr.offset) };
}

export function encodeValue(v: Value): Buffer {
  const b = Buffer.alloc(VALUE_LAYOUT.size);
  writeU32(b, VALUE_LAYOUT.fields.identity.offset, v.identity);
  writeIPv4(b, VALUE_LAYOUT.fields.tunnel_endpoint.offset, v.tunnelEndpoint ?? '0.0.0.0');
  writeU32(b, VALUE_LAYOUT.fields.flags.offset, v.flags);
  return b;
}

export function decodeValue(b: Buffer): Value {
  expectSize(b, VALUE_LAYOUT);
  const ep = readIPv4(b, VALUE_LAYOUT.fields.tunnel_endpoint.offset);
  return {
    identity: readU32(b, VALUE_LAYOUT.fields.identity.offset),
    tunnelEndpoint: ep === '0.0.0.0' ? null : ep,
    flags: readU32(b, VALUE_LAYOUT.fields.flags.offset),
  };
}

const ops = typedOps<Key, Value>({ encode: encodeKey, decode: decodeKey }, { encode: encodeValue, decode: decodeValue });

/** Exact-prefix update / delete / walk. (The kernel has no batch ops for LPM tries; updateMany falls back.) */
export const { update, remove, entries, updateMany, removeMany } = ops;

/**
 * Longest-prefix match for one address, as the datapath sees it. Note that a
 * lookup in an LPM trie is never exact: asking for 10.1.0.0/16 returns the
 * value of the longest stored prefix covering it.
 */
export function match(map: MapHandle, ip: string): Value | undefined {
  return ops.lookup(map, { addr: ip, prefixLen: 32 });
}

/** LPM lookup with an explicit key (see match). */
export const lookup = ops.lookup;

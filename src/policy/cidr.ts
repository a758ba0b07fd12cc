// IPv4 prefix arithmetic for CIDR peers: parse, contain, subtract.

/** An IPv4 prefix; `addr` has its host bits cleared (unsigned 32-bit). */
export interface Prefix {
  addr: number;
  len: number;
}

const IPV4_RE = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

export function parseIPv4(s: string): number | undefined {
  if (!IPV4_RE.test(s)) return undefined;
  const p = s.split('.').map(Number);
  return ((p[0]! << 24) | (p[1]! << 16) | (p[2]! << 8) | p[3]!) >>> 0;
}

export function formatIPv4(addr: number): string {
  return `${addr >>> 24}.${(addr >>> 16) & 255}.${(addr >>> 8) & 255}.${addr & 255}`;
}

function mask(len: number): number {
  return len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
}

/** `a.b.c.d/len` or a bare address (= /32); host bits are cleared. undefined when not IPv4. */
export function parsePrefix(s: string): Prefix | undefined {
  const slash = s.indexOf('/');
  const addr = parseIPv4(slash < 0 ? s : s.slice(0, slash));
  if (addr === undefined) return undefined;
  let len = 32;
  if (slash >= 0) {
    const l = s.slice(slash + 1);
    if (!/^(3[0-2]|[12]?\d)$/.test(l)) return undefined;
    len = Number(l);
  }
  return { addr: (addr & mask(len)) >>> 0, len };
}

/** True when `s` has host bits set (`10.1.2.3/8`). */
export function hasHostBits(s: string): boolean {
  const slash = s.indexOf('/');
  const addr = parseIPv4(slash < 0 ? s : s.slice(0, slash));
  const p = parsePrefix(s);
  return addr !== undefined && p !== undefined && addr !== p.addr;
}

export function formatPrefix(p: Prefix): string {
  return `${formatIPv4(p.addr)}/${p.len}`;
}

/** `inner` lies inside `outer` (equal counts). */
export function prefixContains(outer: Prefix, inner: Prefix): boolean {
  return outer.len <= inner.len && ((inner.addr & mask(outer.len)) >>> 0) === outer.addr;
}

/** A prefix minus another that lies strictly inside it: the siblings along the path down to it. */
function subtractInside(p: Prefix, e: Prefix): Prefix[] {
  const out: Prefix[] = [];
  for (let len = p.len + 1; len <= e.len; len++) {
    const bit = 2 ** (32 - len);
    const onPath = (e.addr & mask(len)) >>> 0;
    out.push({ addr: (onPath ^ bit) >>> 0, len });
  }
  return out;
}

/** `cidr` minus each of `except`, as a minimal sorted list of disjoint prefixes. */
export function subtractPrefixes(cidr: Prefix, except: readonly Prefix[]): Prefix[] {
  let set: Prefix[] = [cidr];
  for (const e of except) {
    const next: Prefix[] = [];
    for (const p of set) {
      if (prefixContains(e, p)) continue; // removed entirely
      if (prefixContains(p, e)) next.push(...subtractInside(p, e));
      else next.push(p); // disjoint
    }
    set = next;
  }
  return set.sort((a, b) => a.addr - b.addr || a.len - b.len);
}

// ---- node-local identities for CIDR peers

/**
 * Node-local identity scope (bit 24, as Cilium's local scope; enum
 * cm_identity_scope in bpf/lib/ipcache.h). CIDR peers of policies get
 * LOCAL_IDENTITY_SCOPE | n (n = 1..0xffffff) from the agent of each node: the
 * numbers mean nothing on another node and never travel (the VXLAN VNI has 24
 * bits and carries only source pod identities). They live in the datapath's
 * cm_policy_cidr (prefix -> identity), where policy looks up every peer
 * address besides the peer's own identity (bpf/lib/policy.h).
 */
export const LOCAL_IDENTITY_SCOPE = 0x01000000;
export const IDENTITY_SCOPE_MASK = 0xff000000;
export const LOCAL_IDENTITY_MIN = LOCAL_IDENTITY_SCOPE + 1;
export const LOCAL_IDENTITY_MAX = LOCAL_IDENTITY_SCOPE + 0xffffff;

/** True for a node-local (CIDR) identity. */
export function isLocalIdentity(id: number): boolean {
  return Number.isInteger(id) && id >= LOCAL_IDENTITY_MIN && id <= LOCAL_IDENTITY_MAX;
}

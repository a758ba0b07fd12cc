// Who owns which addresses in the mesh, so that a remote cluster, lying or
// misconfigured, cannot steer another cluster's traffic (issue 17 §2).
//
// Claims:
//   pod CIDRs      every node announces its pod CIDR (nodes/v1 ipv4AllocCIDR;
//                  for the local cluster, its own nodes' podCIDRs)
//   node addresses every node's addresses
// Rules:
//   - The local cluster's claims come first, then remote claims in the order
//     they arrived. A remote pod CIDR that overlaps a CIDR of another cluster
//     claimed earlier is refused (both clusters are flagged); it is accepted
//     again once the earlier claim is withdrawn. A node address claimed by
//     another cluster earlier refuses the later node entirely. Whether a claim
//     stands depends only on the earlier claims that exist, not on whether
//     those stand, so one change never cascades through the mesh.
//   - An endpoint IP (ip/v1 entry) of cluster C is accepted when it lies in an
//     accepted pod CIDR of C or is an address of one of C's accepted nodes. It
//     is refused when it lies in a pod CIDR or node address of another cluster,
//     whatever C announces. A cluster that announces no pod CIDR at all (IPAM
//     that gives nodes no ranges) cannot be checked positively: its entries
//     outside everyone else's claims are accepted, and it is reported as
//     unverified.
//
// Pure: inputs in, decisions out. ClusterMesh feeds it and re-evaluates the
// entries of every cluster whose accepted ranges changed.

export const LOCAL = Symbol('local cluster');
type Owner = string | typeof LOCAL;

interface Range {
  base: number;
  len: number;
  text: string;
}

/** A claimed range, with its place in the order of claims (kept while the node keeps claiming it). */
interface Claimed extends Range {
  seq: number;
}

function parseV4(ip: string): number | undefined {
  // Four decimal parts of 1..3 digits, each <= 255 (leading zeros allowed), by hand:
  // every remote endpoint passes here, and a split and four regexes per IP show in a profile.
  let v = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < ip.length; i++) {
    const ch = ip.charCodeAt(i);
    if (ch === 46) {
      if (digits === 0 || ++dots > 3) return undefined;
      v = v * 256 + part;
      part = 0;
      digits = 0;
    } else if (ch >= 48 && ch <= 57) {
      if (++digits > 3) return undefined;
      part = part * 10 + (ch - 48);
    } else return undefined;
    if (part > 255) return undefined;
  }
  if (dots !== 3 || digits === 0) return undefined;
  return v * 256 + part;
}

/** 'a.b.c.d/len' (or a bare address: /32) → a range with host bits cleared; undefined for anything else (IPv6 included). */
export function parseRange(s: string): Range | undefined {
  const [addr, len, ...rest] = s.split('/');
  if (rest.length || addr === undefined) return undefined;
  const v = parseV4(addr);
  if (v === undefined) return undefined;
  if (len !== undefined && !/^\d{1,2}$/.test(len)) return undefined;
  const n = len === undefined ? 32 : Number(len);
  if (n > 32) return undefined;
  const size = 2 ** (32 - n);
  const base = v - (v % size);
  // text on demand: only refusals and claims print it, not the check of every endpoint
  return {
    base,
    len: n,
    get text() {
      return `${[24, 16, 8, 0].map((sh) => Math.floor(base / 2 ** sh) % 256).join('.')}/${n}`;
    },
  };
}

const end = (r: Range): number => r.base + 2 ** (32 - r.len);
const overlaps = (a: Range, b: Range): boolean => a.base < end(b) && b.base < end(a);
const contains = (outer: Range, inner: Range): boolean => outer.base <= inner.base && end(inner) <= end(outer);

interface NodeClaim {
  owner: Owner;
  node: string;
  cidrs: Claimed[];
  addresses: Claimed[];
}

/** One claimed range (pod CIDR or node address) of a node. */
interface CidrClaim {
  node: NodeClaim;
  range: Claimed;
}

export interface OwnershipConflict {
  kind: 'pod-cidr' | 'node-address';
  /** The later claim, refused. */
  cluster: string;
  node: string;
  value: string;
  /** The earlier claim that stands against it. */
  ownerCluster: string;
  ownerNode: string;
  ownerValue: string;
}

/**
 * ok (unverified: the cluster announces no pod CIDR to check against), or
 * refused: 'foreign' (another cluster's claim covers it), 'outside' (not in
 * what its own cluster announces), 'invalid' (not an IPv4 address/prefix).
 */
export type IpVerdict = { ok: true; unverified?: boolean } | { ok: false; kind: 'foreign' | 'outside' | 'invalid'; reason: string };

const ownerName = (o: Owner): string => (o === LOCAL ? 'the local cluster' : o);
const BUCKET_BITS = 16;
const bucketOf = (v: number): number => Math.floor(v / 2 ** (32 - BUCKET_BITS));

interface Accepted {
  /** Pod CIDRs of the owner that stand. */
  cidrs: Claimed[];
  /** Addresses of the owner's nodes that stand. */
  addresses: Set<number>;
  /** Some node of the owner announces a pod CIDR. */
  announces: boolean;
}

/**
 * Indexed so that every operation costs the claims near the address, not the
 * whole mesh: pod CIDRs by /16 bucket (wider ones in a list of their own),
 * node addresses by value, and each owner's standing ranges cached until a
 * change touches that owner.
 */
export class OwnershipRegistry {
  private readonly nodes = new Map<string, NodeClaim>();
  private readonly byAddress = new Map<number, Set<CidrClaim>>();
  private readonly buckets = new Map<number, Set<CidrClaim>>();
  private readonly wide = new Set<CidrClaim>();
  private readonly cidrClaims = new Map<NodeClaim, CidrClaim[]>();
  private readonly addrClaims = new Map<NodeClaim, CidrClaim[]>();
  private readonly accepted = new Map<Owner, Accepted>();
  private seq = 0;

  private key(owner: Owner, node: string): string {
    return `${owner === LOCAL ? '' : owner}\u0000${node}`;
  }

  /**
   * Sets (or replaces) one node's claims. A range keeps its place in the
   * order while the node keeps claiming it; a new or changed range goes to
   * the back (an update cannot jump ahead of others). Returns the owners
   * whose standing ranges may have changed (re-evaluate their entries).
   */
  setNode(owner: Owner, node: string, claims: { cidrs: readonly string[]; addresses: readonly string[] }): Set<Owner> {
    const k = this.key(owner, node);
    const prev = this.nodes.get(k);
    // A range the node claimed before keeps its place; a new one (a changed CIDR too) goes to the back.
    const parse = (xs: readonly string[], before: readonly Claimed[] = []): Claimed[] =>
      xs.flatMap((x) => {
        const r = parseRange(x);
        if (!r) return [];
        const had = before.find((b) => b.text === r.text);
        return [{ ...r, seq: had ? had.seq : owner === LOCAL ? -1e9 + ++this.seq : ++this.seq }];
      });
    const next: NodeClaim = { owner, node, cidrs: parse(claims.cidrs, prev?.cidrs), addresses: parse(claims.addresses, prev?.addresses) };
    const affected = new Set<Owner>([owner]);
    if (prev) {
      this.neighbours(prev, affected);
      this.unindex(prev);
    }
    this.nodes.set(k, next);
    this.index(next);
    this.neighbours(next, affected);
    for (const o of affected) this.accepted.delete(o);
    return affected;
  }

  removeNode(owner: Owner, node: string): Set<Owner> {
    const k = this.key(owner, node);
    const prev = this.nodes.get(k);
    if (!prev) return new Set();
    const affected = new Set<Owner>([owner]);
    this.neighbours(prev, affected);
    this.unindex(prev);
    this.nodes.delete(k);
    for (const o of affected) this.accepted.delete(o);
    return affected;
  }

  /** Every node of `owner` is forgotten (a remote cluster removed). */
  removeCluster(owner: Owner): Set<Owner> {
    const affected = new Set<Owner>();
    for (const n of [...this.nodes.values()]) if (n.owner === owner) for (const o of this.removeNode(owner, n.node)) affected.add(o);
    return affected;
  }

  /** The pod CIDRs of this node that stand (those overlapping an earlier claim of another cluster are left out). */
  acceptedCidrs(owner: Owner, node: string): string[] {
    const n = this.nodes.get(this.key(owner, node));
    if (!n || this.refusedNode(n)) return [];
    return n.cidrs.filter((c) => !this.earlierCidr(n, c)).map((c) => c.text);
  }

  /** Why this node is refused (an address claimed earlier by another cluster), or null. */
  nodeRefusal(owner: Owner, node: string): string | null {
    const n = this.nodes.get(this.key(owner, node));
    const hit = n && this.refusedNode(n);
    return hit ? `node address ${hit.value} is already claimed by ${ownerName(hit.by.owner)} (node ${hit.by.node})` : null;
  }

  /** Whether endpoint address/prefix `prefix` announced by `cluster` is its to announce. */
  checkIp(cluster: string, prefix: string): IpVerdict {
    const r = parseRange(prefix);
    if (!r) return { ok: false, kind: 'invalid', reason: `${JSON.stringify(prefix)} is not an IPv4 address or prefix` };
    const own = this.acceptedOf(cluster);
    if (own.cidrs.some((c) => contains(c, r))) return { ok: true };
    if (r.len === 32 && own.addresses.has(r.base)) return { ok: true };
    const other = this.overlapping(r).find((c) => c.node.owner !== cluster);
    if (other) return { ok: false, kind: 'foreign', reason: `${r.text} lies in pod CIDR ${other.range.text} of ${ownerName(other.node.owner)} (node ${other.node.node})` };
    for (const { node: n } of r.len === 32 ? (this.byAddress.get(r.base) ?? []) : []) {
      if (n.owner !== cluster) return { ok: false, kind: 'foreign', reason: `${r.text} is the address of node ${n.node} of ${ownerName(n.owner)}` };
    }
    if (own.announces) return { ok: false, kind: 'outside', reason: `${r.text} is outside the pod CIDRs and node addresses that cluster ${cluster}'s nodes announce` };
    return { ok: true, unverified: true };
  }

  /** Remote clusters with nodes but no pod CIDR on any of them (their entries cannot be checked positively). */
  unverifiedClusters(): string[] {
    const owners = new Set<string>();
    for (const n of this.nodes.values()) if (n.owner !== LOCAL) owners.add(n.owner);
    return [...owners].filter((o) => !this.acceptedOf(o).announces).sort();
  }

  /** Every refused claim with the claim that stands against it. */
  conflicts(): OwnershipConflict[] {
    const out: OwnershipConflict[] = [];
    for (const n of this.nodes.values()) {
      if (n.owner === LOCAL) continue;
      const hit = this.refusedNode(n);
      if (hit) {
        out.push({ kind: 'node-address', cluster: n.owner, node: n.node, value: hit.value, ownerCluster: ownerName(hit.by.owner), ownerNode: hit.by.node, ownerValue: hit.value });
        continue;
      }
      for (const c of n.cidrs) {
        const by = this.earlierCidr(n, c);
        if (by) out.push({ kind: 'pod-cidr', cluster: n.owner, node: n.node, value: c.text, ownerCluster: ownerName(by.node.owner), ownerNode: by.node.node, ownerValue: by.range.text });
      }
    }
    return out.sort((a, b) => (`${a.cluster}/${a.node}/${a.value}` < `${b.cluster}/${b.node}/${b.value}` ? -1 : 1));
  }

  /** Clusters flagged by a conflict, on either side (the local cluster is not named). */
  flaggedClusters(): string[] {
    const s = new Set<string>();
    for (const c of this.conflicts()) {
      s.add(c.cluster);
      if (c.ownerCluster !== ownerName(LOCAL)) s.add(c.ownerCluster);
    }
    return [...s].sort();
  }

  // ---- internals

  private acceptedOf(owner: Owner): Accepted {
    let a = this.accepted.get(owner);
    if (a) return a;
    a = { cidrs: [], addresses: new Set(), announces: false };
    for (const n of this.nodes.values()) {
      if (n.owner !== owner) continue;
      if (n.cidrs.length) a.announces = true;
      if (this.refusedNode(n)) continue;
      for (const c of n.cidrs) if (!this.earlierCidr(n, c)) a.cidrs.push(c);
      for (const x of n.addresses) a.addresses.add(x.base);
    }
    this.accepted.set(owner, a);
    return a;
  }

  /** Owners of the claims that share an address or overlap a CIDR with `n`. */
  private neighbours(n: NodeClaim, out: Set<Owner>): void {
    for (const a of n.addresses) for (const o of this.byAddress.get(a.base) ?? []) out.add(o.node.owner);
    for (const c of n.cidrs) for (const o of this.overlapping(c)) out.add(o.node.owner);
  }

  private index(n: NodeClaim): void {
    const addrs = n.addresses.map((range) => ({ node: n, range }));
    for (const a of addrs) {
      let s = this.byAddress.get(a.range.base);
      if (!s) this.byAddress.set(a.range.base, (s = new Set()));
      s.add(a);
    }
    this.addrClaims.set(n, addrs);
    const claims = n.cidrs.map((range) => ({ node: n, range }));
    this.cidrClaims.set(n, claims);
    for (const c of claims) {
      if (c.range.len < BUCKET_BITS) this.wide.add(c);
      else {
        const b = bucketOf(c.range.base);
        let s = this.buckets.get(b);
        if (!s) this.buckets.set(b, (s = new Set()));
        s.add(c);
      }
    }
  }

  private unindex(n: NodeClaim): void {
    for (const a of this.addrClaims.get(n) ?? []) {
      const s = this.byAddress.get(a.range.base);
      s?.delete(a);
      if (s?.size === 0) this.byAddress.delete(a.range.base);
    }
    this.addrClaims.delete(n);
    for (const c of this.cidrClaims.get(n) ?? []) {
      if (c.range.len < BUCKET_BITS) this.wide.delete(c);
      else {
        const b = bucketOf(c.range.base);
        const s = this.buckets.get(b);
        s?.delete(c);
        if (s?.size === 0) this.buckets.delete(b);
      }
    }
    this.cidrClaims.delete(n);
  }

  /** CIDR claims overlapping `r`, oldest first. */
  private overlapping(r: Range): CidrClaim[] {
    const out: CidrClaim[] = [];
    for (const c of this.wide) if (overlaps(c.range, r)) out.push(c);
    const first = bucketOf(r.base);
    const last = bucketOf(end(r) - 1);
    if (last - first < this.buckets.size) {
      for (let b = first; b <= last; b++) for (const c of this.buckets.get(b) ?? []) if (overlaps(c.range, r)) out.push(c);
    } else {
      for (const s of this.buckets.values()) for (const c of s) if (overlaps(c.range, r)) out.push(c);
    }
    return out.sort((a, b) => a.range.seq - b.range.seq);
  }

  /** An address of `n` claimed earlier by a node of another cluster. */
  private refusedNode(n: NodeClaim): { value: string; by: NodeClaim } | undefined {
    for (const a of n.addresses) {
      for (const o of this.byAddress.get(a.base) ?? []) if (o.node.owner !== n.owner && o.range.seq < a.seq) return { value: a.text.replace(/\/32$/, ''), by: o.node };
    }
    return undefined;
  }

  /** A pod CIDR of another cluster's node, claimed earlier, that overlaps `c` of `n`. */
  private earlierCidr(n: NodeClaim, c: Claimed): CidrClaim | undefined {
    return this.overlapping(c).find((o) => o.node.owner !== n.owner && o.range.seq < c.seq);
  }
}

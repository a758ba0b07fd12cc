// The desired content of a node's ipcache map (prefix → identity, tunnel
// endpoint), derived from everything the agent knows:
//
//   origin            prefix                    identity        tunnel endpoint
//   local-endpoint    pod IP /32                its identity    none (delivered locally)
//   cluster-endpoint  pod IP /32 (other nodes)  its identity    its node's IP
//   remote-endpoint   remote pod IP /32         its identity    HostIP of the entry
//   node              other nodes' IPs /32      remote-node 6   none (the stack routes it)
//   self              this node's IP /32        host 1          none
//   pod-cidr          every node's pod CIDR     world 2         that node (an address there
//                                                               that is no pod is dropped by
//                                                               the node owning the range)
//
// The prefixes CIDR rules name are not here: they classify addresses for
// policy only, whatever the address is (a pod, a node, the world), in
// cm_policy_cidr (src/agent/policy.ts, bpf/lib/policy.h).
//
// One prefix may be claimed by several owners; the origin earlier in the
// table wins, then the earlier claim. Everything not covered is world (the
// datapath's default on a miss).
//
// IpcacheTable keeps the claims incrementally (owner → contributions) and
// reports changes of the winning entry to a sink (the ipcache reconciler);
// computeIpcache is the same computation over complete inputs.
import type { RemoteIpEntry, RemoteNode } from '../clustermesh/clustermesh.ts';
import type * as ipcacheMap from '../datapath/maps/ipcache.ts';
import { nodePodCIDRs, ReservedIdentity, type Endpoint, type Node } from '../model/index.ts';

export type IpcacheEntry = ipcacheMap.Value;

export type IpcacheOrigin = 'local-endpoint' | 'cluster-endpoint' | 'remote-endpoint' | 'self' | 'node' | 'pod-cidr';

/** Lower wins. */
export const ORIGIN_PRIORITY: Readonly<Record<IpcacheOrigin, number>> = {
  'local-endpoint': 0,
  'cluster-endpoint': 1,
  'remote-endpoint': 2,
  self: 3,
  node: 4,
  'pod-cidr': 5,
};

export interface Contribution {
  origin: IpcacheOrigin;
  /** Normalized 'a.b.c.d/len' with host bits cleared. */
  prefix: string;
  entry: IpcacheEntry;
}

export interface SelfNode {
  nodeName: string;
  nodeIP: string;
  podCIDR: string;
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;

export function isIPv4(s: string): boolean {
  return IPV4.test(s);
}

/** 'a.b.c.d[/len]' → 'a.b.c.d/len' with host bits cleared; undefined for anything else (IPv6 included). */
export function normalizePrefix(p: string): string | undefined {
  const [addr, len, ...rest] = p.split('/');
  if (rest.length || addr === undefined || !IPV4.test(addr)) return undefined;
  if (len !== undefined && !/^\d{1,2}$/.test(len)) return undefined;
  const n = len === undefined ? 32 : Number(len);
  if (n > 32) return undefined;
  const v = addr.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
  const m = (v & (n === 0 ? 0 : (~0 << (32 - n)) >>> 0)) >>> 0;
  return `${[24, 16, 8, 0].map((s) => (m >>> s) & 255).join('.')}/${n}`;
}

const entry = (identity: number, tunnelEndpoint: string | null): IpcacheEntry => ({ identity, tunnelEndpoint, flags: 0 });

function contribution(origin: IpcacheOrigin, prefix: string, e: IpcacheEntry): Contribution[] {
  const p = normalizePrefix(prefix);
  return p === undefined ? [] : [{ origin, prefix: p, entry: e }];
}

// ---- contributions of each kind of input

/** An endpoint on this node. */
export function localEndpointContributions(ep: { ip: string; identity: number }): Contribution[] {
  return contribution('local-endpoint', `${ep.ip}/32`, entry(ep.identity, null));
}

/** An Endpoint object of this cluster; those of this node are the local endpoints' business. */
export function clusterEndpointContributions(ep: Endpoint, self: Pick<SelfNode, 'nodeName'>): Contribution[] {
  const net = ep.status.networking;
  if (net.nodeName === self.nodeName) return [];
  return contribution('cluster-endpoint', `${net.podIP}/32`, entry(ep.status.identity.id, net.nodeIP));
}

/** This node: its own IP (host) and its pod CIDR (tunnel to itself: an unknown address there is dropped here, with a reason). */
export function selfContributions(self: SelfNode): Contribution[] {
  return [
    ...contribution('self', `${self.nodeIP}/32`, entry(ReservedIdentity.host, null)),
    ...contribution('pod-cidr', self.podCIDR, entry(ReservedIdentity.world, self.nodeIP)),
  ];
}

function nodeAddressContributions(addresses: string[], tunnelIP: string | undefined, podCIDR: string | null | undefined): Contribution[] {
  const out: Contribution[] = [];
  for (const a of addresses) out.push(...contribution('node', `${a}/32`, entry(ReservedIdentity.remoteNode, null)));
  if (podCIDR && tunnelIP) out.push(...contribution('pod-cidr', podCIDR, entry(ReservedIdentity.world, tunnelIP)));
  return out;
}

/** A Node object of this cluster (this node's own object contributes nothing: selfContributions covers it). */
export function clusterNodeContributions(node: Node, self: Pick<SelfNode, 'nodeName'>): Contribution[] {
  if (node.metadata.name === self.nodeName) return [];
  const addrs = node.status.addresses.filter((a) => (a.type === 'InternalIP' || a.type === 'ExternalIP') && isIPv4(a.address)).map((a) => a.address);
  const internal = node.status.addresses.find((a) => a.type === 'InternalIP' && isIPv4(a.address))?.address;
  return nodeAddressContributions(addrs, internal, node.spec.podCIDR);
}

/** What a Node of this cluster claims against remote clusters (ownership.ts): its pod CIDRs and addresses. */
export function localNodeClaims(node: Node): { cidrs: string[]; addresses: string[] } {
  return { cidrs: nodePodCIDRs(node), addresses: node.status.addresses.map((a) => a.address) };
}

/** A node of a remote cluster. */
export function remoteNodeContributions(node: RemoteNode): Contribution[] {
  const addrs = node.addresses.filter((a) => (a.type === 'InternalIP' || a.type === 'ExternalIP') && isIPv4(a.ip)).map((a) => a.ip);
  const internal = node.addresses.find((a) => a.type === 'InternalIP' && isIPv4(a.ip))?.ip;
  return nodeAddressContributions(addrs, internal, node.ipv4AllocCIDR);
}

/** An endpoint IP of a remote cluster. */
export function remoteEndpointContributions(e: RemoteIpEntry): Contribution[] {
  if (!isIPv4(e.hostIP)) return [];
  return contribution('remote-endpoint', e.prefix, entry(e.identity, e.hostIP));
}

// ---- the table

export interface IpcacheSink {
  upsert(prefix: string, value: IpcacheEntry): void;
  remove(prefix: string): void;
}

interface Claim {
  origin: IpcacheOrigin;
  entry: IpcacheEntry;
  seq: number;
}

const sameEntry = (a: IpcacheEntry, b: IpcacheEntry): boolean => a.identity === b.identity && a.tunnelEndpoint === b.tunnelEndpoint && a.flags === b.flags;

export class IpcacheTable {
  private readonly byPrefix = new Map<string, Map<string, Claim>>();
  private readonly byOwner = new Map<string, Map<string, Claim>>();
  private readonly winners = new Map<string, IpcacheEntry>();
  private seq = 0;

  constructor(private readonly sink: IpcacheSink = { upsert: () => undefined, remove: () => undefined }) {}

  /** Makes `owner`'s claims exactly `contributions` (an owner: a pod, a node, a remote entry). */
  setOwner(owner: string, contributions: readonly Contribution[]): void {
    const prev = this.byOwner.get(owner) ?? new Map<string, Claim>();
    const next = new Map<string, Claim>();
    for (const c of contributions) {
      const have = next.get(c.prefix);
      if (have && ORIGIN_PRIORITY[have.origin] <= ORIGIN_PRIORITY[c.origin]) continue;
      const old = prev.get(c.prefix);
      next.set(c.prefix, { origin: c.origin, entry: c.entry, seq: old?.seq ?? ++this.seq });
    }
    const touched = new Set<string>([...prev.keys(), ...next.keys()]);
    for (const p of prev.keys()) if (!next.has(p)) this.byPrefix.get(p)?.delete(owner);
    for (const [p, claim] of next) {
      let claims = this.byPrefix.get(p);
      if (!claims) this.byPrefix.set(p, (claims = new Map()));
      claims.set(owner, claim);
    }
    if (next.size > 0) this.byOwner.set(owner, next);
    else this.byOwner.delete(owner);
    for (const p of touched) this.recompute(p);
  }

  removeOwner(owner: string): void {
    this.setOwner(owner, []);
  }

  get(prefix: string): IpcacheEntry | undefined {
    return this.winners.get(prefix);
  }

  entries(): Map<string, IpcacheEntry> {
    return new Map(this.winners);
  }

  get size(): number {
    return this.winners.size;
  }

  /** Owners known (for status and tests). */
  get owners(): number {
    return this.byOwner.size;
  }

  private recompute(prefix: string): void {
    const claims = this.byPrefix.get(prefix);
    let best: Claim | undefined;
    for (const c of claims?.values() ?? []) {
      if (!best || ORIGIN_PRIORITY[c.origin] < ORIGIN_PRIORITY[best.origin] || (ORIGIN_PRIORITY[c.origin] === ORIGIN_PRIORITY[best.origin] && c.seq < best.seq)) best = c;
    }
    const cur = this.winners.get(prefix);
    if (!best) {
      this.byPrefix.delete(prefix);
      if (cur) {
        this.winners.delete(prefix);
        this.sink.remove(prefix);
      }
      return;
    }
    if (cur && sameEntry(cur, best.entry)) return;
    this.winners.set(prefix, best.entry);
    this.sink.upsert(prefix, best.entry);
  }
}

// ---- owner keys: one function each, so the wiring and tests agree

export const ownerKeys = {
  self: (): string => 'self',
  localEndpoint: (containerID: string): string => `local/${containerID}`,
  clusterEndpoint: (namespace: string, name: string): string => `endpoint/${namespace}/${name}`,
  clusterNode: (name: string): string => `node/${name}`,
  remoteNode: (key: string): string => `remote-node/${key}`,
  remoteEndpoint: (ip: string): string => `remote-ip/${ip}`,
};

// ---- the whole computation over complete inputs

export interface IpcacheInputs {
  self: SelfNode;
  localEndpoints: Array<{ containerID: string; ip: string; identity: number }>;
  clusterEndpoints: Endpoint[];
  clusterNodes: Node[];
  remoteEndpoints: RemoteIpEntry[];
  /** Keyed "<cluster>/<node>" as ClusterMesh.nodes. */
  remoteNodes: Array<[string, RemoteNode]>;
}

/** Fills a table with every input (the agent does the same incrementally). */
export function fillIpcacheTable(table: IpcacheTable, inputs: IpcacheInputs): void {
  table.setOwner(ownerKeys.self(), selfContributions(inputs.self));
  for (const ep of inputs.localEndpoints) table.setOwner(ownerKeys.localEndpoint(ep.containerID), localEndpointContributions(ep));
  for (const ep of inputs.clusterEndpoints)
    table.setOwner(ownerKeys.clusterEndpoint(ep.metadata.namespace, ep.metadata.name), clusterEndpointContributions(ep, inputs.self));
  for (const n of inputs.clusterNodes) table.setOwner(ownerKeys.clusterNode(n.metadata.name), clusterNodeContributions(n, inputs.self));
  for (const e of inputs.remoteEndpoints) table.setOwner(ownerKeys.remoteEndpoint(e.ip), remoteEndpointContributions(e));
  for (const [key, n] of inputs.remoteNodes) table.setOwner(ownerKeys.remoteNode(key), remoteNodeContributions(n));
}

/** The desired ipcache for complete inputs: prefix → entry. */
export function computeIpcache(inputs: IpcacheInputs): Map<string, IpcacheEntry> {
  const t = new IpcacheTable();
  fillIpcacheTable(t, inputs);
  return t.entries();
}

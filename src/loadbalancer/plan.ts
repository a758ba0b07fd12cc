// One service frontend (VIP, port, protocol) and its backend candidates ->
// exactly what the datapath's service maps must hold for it. Pure data; the
// agent's reconciler writes it (src/datapath/maps/{services,backends,
// backend-slots,maglev,revnat}.ts take these shapes as they are).
import { maglevTable } from './maglev.ts';
import { type BackendCandidate, type Selection, type TopologyAffinity, selectBackends } from './select.ts';

/** LB_MAGLEV_SIZE of bpf/lib/lb.h; the maps' codec refuses any other size. */
export const MAGLEV_TABLE_SIZE = 1021;

/** Kubernetes' default sessionAffinityConfig.clientIP.timeoutSeconds. */
export const DEFAULT_AFFINITY_TIMEOUT = 10800;

/** Largest slot table (backend_count is a __u16). */
export const MAX_SLOTS = 0xffff;

/**
 * How a frontend spreads new connections: 'slots' hashes onto a table of its
 * active backends (cheap: one map entry per backend); 'maglev' onto a
 * Maglev table (4 KiB per frontend, at most 8192 frontends per node), which
 * keeps most clients on the same backend when the backend set changes.
 */
export type Algorithm = 'slots' | 'maglev';

export type L4Protocol = 'TCP' | 'UDP';

export interface FrontendSpec {
  vip: string;
  port: number;
  protocol: L4Protocol;
  /** cm_services service id of this frontend (IdAllocator), > 0. */
  serviceId: number;
  /** cm_revnat id; default: the service id. */
  revnatId?: number;
  /** Service spec.sessionAffinity ClientIP, with its timeout (default 10800 s). */
  sessionAffinity?: { timeoutSeconds?: number } | undefined;
  /** service.cilium.io/affinity of a global service; default 'none'. */
  topologyAffinity?: TopologyAffinity;
  /** Default 'slots'. */
  algorithm?: Algorithm;
  /** Every backend the frontend has, usable or not, local and remote. Ids unique. */
  backends: readonly BackendCandidate[];
}

export interface ServiceEntry {
  key: { vip: string; port: number; protocol: L4Protocol };
  value: { serviceId: number; revnatId: number; backendCount: number; sessionAffinity: boolean; affinityTimeout: number; maglev: boolean };
}

export interface BackendEntry {
  ip: string;
  port: number;
  clusterId: number;
  terminating: boolean;
  clusterGone: boolean;
  notReady: boolean;
}

export interface FrontendPlan {
  service: ServiceEntry;
  revnat: { key: number; value: { vip: string; port: number } };
  /** cm_backend_slots: slot i -> slots[i]; empty with Maglev. */
  slots: number[];
  /** cm_maglev table; undefined without Maglev or without active backends (then no cm_maglev entry). */
  maglev: Uint32Array | undefined;
  /**
   * cm_backends entries of every candidate, usable or not: the unusable ones
   * are flagged so that they keep their connections but get no new ones.
   */
  backends: Array<[id: number, value: BackendEntry]>;
  /** Which backends take new connections and why (for inspect). */
  selection: Selection;
}

/** The map contents for one frontend. */
export function planFrontend(spec: FrontendSpec): FrontendPlan {
  const ids = new Set<number>();
  for (const b of spec.backends) {
    if (ids.has(b.id)) throw new RangeError(`frontend ${spec.vip}:${spec.port}/${spec.protocol}: backend id ${b.id} listed twice`);
    ids.add(b.id);
  }
  const selection = selectBackends(spec.backends, spec.topologyAffinity ?? 'none');
  const algorithm = spec.algorithm ?? 'slots';
  const active = selection.active;
  if (algorithm === 'slots' && active.length > MAX_SLOTS) throw new RangeError(`${active.length} backends exceed ${MAX_SLOTS} slots`);
  const maglev =
    algorithm === 'maglev' && active.length > 0
      ? maglevTable(active.map((b) => ({ id: b.id, key: `${b.ip}:${b.port}` })), MAGLEV_TABLE_SIZE)
      : undefined;
  const revnatId = spec.revnatId ?? spec.serviceId;
  return {
    service: {
      key: { vip: spec.vip, port: spec.port, protocol: spec.protocol },
      value: {
        serviceId: spec.serviceId,
        revnatId,
        backendCount: active.length,
        sessionAffinity: spec.sessionAffinity !== undefined,
        affinityTimeout: spec.sessionAffinity ? (spec.sessionAffinity.timeoutSeconds ?? DEFAULT_AFFINITY_TIMEOUT) : 0,
        maglev: algorithm === 'maglev',
      },
    },
    revnat: { key: revnatId, value: { vip: spec.vip, port: spec.port } },
    slots: algorithm === 'slots' ? active.map((b) => b.id) : [],
    maglev,
    backends: [...spec.backends]
      .sort((a, b) => a.id - b.id)
      .map((b) => [b.id, { ip: b.ip, port: b.port, clusterId: b.clusterId, terminating: b.terminating, clusterGone: b.clusterGone, notReady: !b.ready && !b.terminating }]),
    selection,
  };
}

/**
 * The desired contents of the service maps for a set of frontends, keyed by
 * strings (for the agent's reconcilers): cm_services by 'vip:port/PROTO',
 * cm_backends and cm_revnat by id, cm_backend_slots by 'serviceId/slot',
 * cm_maglev by service id. A backend shared by several frontends appears
 * once; throws if two frontends disagree about it, or share a service or
 * revnat id.
 */
export interface ServiceTables {
  services: Map<string, ServiceEntry>;
  backends: Map<string, { id: number; value: BackendEntry }>;
  slots: Map<string, { serviceId: number; slot: number; backendId: number }>;
  maglev: Map<string, { serviceId: number; table: Uint32Array }>;
  revnat: Map<string, { id: number; value: { vip: string; port: number } }>;
}

export const frontendKey = (k: ServiceEntry['key']): string => `${k.vip}:${k.port}/${k.protocol}`;

export function serviceTables(plans: Iterable<FrontendPlan>): ServiceTables {
  const t: ServiceTables = { services: new Map(), backends: new Map(), slots: new Map(), maglev: new Map(), revnat: new Map() };
  const serviceIds = new Map<number, string>();
  for (const p of plans) {
    const fk = frontendKey(p.service.key);
    if (t.services.has(fk)) throw new RangeError(`frontend ${fk} planned twice`);
    const owner = serviceIds.get(p.service.value.serviceId);
    if (owner !== undefined) throw new RangeError(`service id ${p.service.value.serviceId} used by ${owner} and ${fk}`);
    serviceIds.set(p.service.value.serviceId, fk);
    t.services.set(fk, p.service);
    const rk = String(p.revnat.key);
    const rv = t.revnat.get(rk);
    if (rv && (rv.value.vip !== p.revnat.value.vip || rv.value.port !== p.revnat.value.port)) throw new RangeError(`revnat id ${rk} means two frontends`);
    t.revnat.set(rk, { id: p.revnat.key, value: p.revnat.value });
    for (const [id, value] of p.backends) {
      const have = t.backends.get(String(id));
      if (have && JSON.stringify(have.value) !== JSON.stringify(value)) throw new RangeError(`backend ${id}: frontends disagree (${JSON.stringify(have.value)} vs ${JSON.stringify(value)})`);
      t.backends.set(String(id), { id, value });
    }
    const sid = p.service.value.serviceId;
    p.slots.forEach((backendId, slot) => t.slots.set(`${sid}/${slot}`, { serviceId: sid, slot, backendId }));
    if (p.maglev) t.maglev.set(String(sid), { serviceId: sid, table: p.maglev });
  }
  return t;
}

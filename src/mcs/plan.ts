// What one cluster's MCS controller wants, computed from what it read (issue 18):
// the ServiceExports and Services of its own Kubernetes API, the namespaces
// that exist there, and the exports every other cluster published in its
// kvstore. Pure: the apiserver's controller (src/apiserver/mcs.ts) reads,
// calls planMcs, and writes the difference.
//
// The datapath side reuses the global-service machinery: per imported name,
// a derived Service `derived-<hash of the name>` in the namespace, annotated
// global (and shared where this cluster exports the name, with the exported
// Service's selector, so its pods are the local backends). Every cluster
// derives the same name, so each cluster's agents balance the derived
// Service's VIP over the backends of every exporting cluster; that VIP
// (allocated by the cluster's Kubernetes API like any ClusterIP) is the
// ServiceImport's spec.ips[0]. The exported Service itself is untouched: if
// it is also annotated global, it keeps its own VIP and its own (same) pods,
// and the derived Service lists each pod once: one set of backends per VIP.
import { createHash } from 'node:crypto';
import { encodeExportSpec, exportSpecOf, serviceExportKey, type ExportPort, type ExportSpec, type ImportType } from './export.ts';
import { conflictCondition, exportValidity, mergeAll, type MergedImport } from './merge.ts';
import type { Service } from '../model/service.ts';

/** The MCS API's group/version. */
export const MCS_API_VERSION = 'multicluster.x-k8s.io/v1alpha1';
/** KEP-1645's label naming the multi-cluster service an object belongs to. */
export const SERVICE_NAME_LABEL = 'multicluster.kubernetes.io/service-name';
/** Marks the objects this controller owns (derived Services, ServiceImports). */
export const MANAGED_BY_LABEL = 'app.kubernetes.io/managed-by';
export const MANAGED_BY = 'clustermesh-mcs';
export const AFFINITY_ANNOTATION = 'service.cilium.io/affinity';

/** The derived Service carrying an import's VIP: the same name in every cluster. */
export function derivedServiceName(name: string): string {
  return `derived-${createHash('sha256').update(name).digest('hex').slice(0, 10)}`;
}

/** A Kubernetes condition as written to status.conditions. */
export interface KubeCondition {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  reason: string;
  message: string;
  lastTransitionTime?: string;
}

/** A ServiceExport as read (metadata and status only matter). */
export interface LocalExport {
  namespace: string;
  name: string;
  creationTimestamp: string;
  conditions: KubeCondition[];
}

/** A Service as read, with what the model does not carry (ExternalName, targetPort names, annotations). */
export interface LocalService {
  namespace: string;
  name: string;
  /** spec.type as stored ('ClusterIP' when absent). */
  type: string;
  clusterIP: string | undefined;
  ports: Array<{ name?: string; protocol: 'TCP' | 'UDP' | 'SCTP'; port: number; targetPort?: number | string }>;
  selector: Record<string, string> | undefined;
  sessionAffinity: 'None' | 'ClientIP';
  affinityTimeoutSeconds: number | undefined;
  labels: Record<string, string>;
  annotations: Record<string, string>;
}

export interface DerivedServiceSpec {
  namespace: string;
  /** derivedServiceName(import name). */
  name: string;
  importName: string;
  headless: boolean;
  ports: Array<{ name?: string; protocol: string; port: number; targetPort: number | string }>;
  selector: Record<string, string> | undefined;
  sessionAffinity: 'None' | 'ClientIP';
  affinityTimeoutSeconds: number | undefined;
  annotations: Record<string, string>;
}

export interface ImportPlan {
  namespace: string;
  name: string;
  type: ImportType;
  ports: ExportPort[];
  sessionAffinity: 'None' | 'ClientIP';
  affinityTimeoutSeconds: number | undefined;
  /** Exporting clusters, oldest export first. */
  clusters: string[];
  derived: DerivedServiceSpec;
}

export interface McsPlan {
  /** kvstore key → value of this cluster's valid exports. */
  exports: Map<string, string>;
  /** ns/name of each local ServiceExport → the conditions it should carry (Valid, Ready, Conflict). */
  exportConditions: Map<string, KubeCondition[]>;
  /** ns/name → the ServiceImport (and its derived Service) wanted in this cluster. */
  imports: Map<string, ImportPlan>;
  /** Every merged name (ns/name), also those whose namespace is absent here. */
  merged: Map<string, MergedImport>;
}

/** The model Service exportSpecOf reads, from what was read. */
function asModelService(s: LocalService): Service {
  return {
    kind: 'Service',
    metadata: { namespace: s.namespace, name: s.name, labels: s.labels, annotations: s.annotations } as Service['metadata'],
    spec: {
      type: 'ClusterIP',
      ...(s.clusterIP !== undefined ? { clusterIP: s.clusterIP as Service['spec']['clusterIP'] } : {}),
      ports: s.ports.map((p) => ({ ...(p.name ? { name: p.name } : {}), protocol: p.protocol, port: p.port })),
      sessionAffinity: s.sessionAffinity,
      ...(s.affinityTimeoutSeconds !== undefined ? { sessionAffinityConfig: { clientIP: { timeoutSeconds: s.affinityTimeoutSeconds } } } : {}),
    },
  };
}

/** Keeps lastTransitionTime of a condition whose status did not change. */
export function withTransitions(wanted: KubeCondition[], current: readonly KubeCondition[], now: string): KubeCondition[] {
  return wanted.map((c) => {
    const old = current.find((o) => o.type === c.type);
    return { ...c, lastTransitionTime: old && old.status === c.status && old.lastTransitionTime ? old.lastTransitionTime : now };
  });
}

export function planMcs(input: {
  cluster: string;
  exports: readonly LocalExport[];
  services: ReadonlyMap<string, LocalService>;
  namespaces: ReadonlySet<string>;
  /** The other clusters' exports (already parsed and checked against their keys). */
  remote: readonly ExportSpec[];
}): McsPlan {
  const own: ExportSpec[] = [];
  const validity = new Map<string, ReturnType<typeof exportValidity>>();
  for (const e of input.exports) {
    const key = `${e.namespace}/${e.name}`;
    const svc = input.services.get(key);
    const v = exportValidity(e.namespace, e.name, svc?.type);
    validity.set(key, v);
    if (v.status === 'True' && svc) own.push(exportSpecOf(input.cluster, asModelService(svc), e.creationTimestamp));
  }
  const all = [...own, ...input.remote.filter((r) => r.cluster !== input.cluster)];
  const merged = mergeAll(all);

  const exports = new Map(own.map((s) => [serviceExportKey(s.cluster, s.namespace, s.name), encodeExportSpec(s)] as const));
  const exportConditions = new Map<string, KubeCondition[]>();
  for (const e of input.exports) {
    const key = `${e.namespace}/${e.name}`;
    const v = validity.get(key)!;
    const conds: KubeCondition[] = [{ type: 'Valid', status: v.status, reason: v.reason, message: v.message }];
    const m = merged.get(key);
    if (v.status === 'True' && m) {
      conds.push({ type: 'Ready', status: 'True', reason: 'Exported', message: `published to the clusterset; exported by ${m.clusters.join(', ')}` });
      const c = conflictCondition(m);
      conds.push({ type: 'Conflict', status: c.status, reason: c.reason, message: c.message });
    } else {
      conds.push({ type: 'Ready', status: 'False', reason: v.reason, message: 'not exported: the export is not valid' });
    }
    exportConditions.set(key, conds);
  }

  const imports = new Map<string, ImportPlan>();
  for (const [key, m] of merged) {
    if (!input.namespaces.has(m.namespace)) continue;
    const local = own.some((s) => s.namespace === m.namespace && s.name === m.name) ? input.services.get(key) : undefined;
    const targetOf = (p: ExportPort): number | string => {
      const lp = local?.ports.find((q) => (p.name ? q.name === p.name : q.port === p.port) && q.protocol === p.protocol);
      return lp?.targetPort ?? p.port;
    };
    const annotations: Record<string, string> = { 'service.cilium.io/global': 'true', 'service.cilium.io/shared': local ? 'true' : 'false' };
    const affinity = local?.annotations[AFFINITY_ANNOTATION];
    if (affinity !== undefined) annotations[AFFINITY_ANNOTATION] = affinity;
    imports.set(key, {
      namespace: m.namespace,
      name: m.name,
      type: m.type,
      ports: m.ports,
      sessionAffinity: m.sessionAffinity,
      affinityTimeoutSeconds: m.affinityTimeoutSeconds,
      clusters: m.clusters,
      derived: {
        namespace: m.namespace,
        name: derivedServiceName(m.name),
        importName: m.name,
        headless: m.type === 'Headless',
        ports: m.ports.map((p) => ({ ...(p.name ? { name: p.name } : {}), protocol: p.protocol, port: p.port, targetPort: targetOf(p) })),
        selector: local?.selector,
        sessionAffinity: m.sessionAffinity,
        affinityTimeoutSeconds: m.affinityTimeoutSeconds,
        annotations,
      },
    });
  }
  return { exports, exportConditions, imports, merged };
}

// ---------------------------------------------------------------------------
// EndpointSlices of headless imports

/** KEP-1645's label naming the cluster an imported EndpointSlice's endpoints live in. */
export const SOURCE_CLUSTER_LABEL = 'multicluster.kubernetes.io/source-cluster';
/** Kubernetes' label naming a slice's manager: set so no EndpointSlice controller takes ours for its own. */
export const SLICE_MANAGED_BY_LABEL = 'endpointslice.kubernetes.io/managed-by';

/** One endpoint of an exporting cluster, as the importing cluster learned it. */
export interface ImportEndpoint {
  ip: string;
  hostname?: string | undefined;
  ready: boolean;
}
/** What one exporting cluster has behind a headless import. */
export interface ClusterEndpoints {
  endpoints: ImportEndpoint[];
  /** The endpoints' ports (target ports): name, protocol, port. */
  ports: Array<{ name: string; protocol: string; port: number }>;
}

/** An EndpointSlice the controller wants (discovery.k8s.io/v1, the fields it owns). */
export interface ImportSliceSpec {
  namespace: string;
  name: string;
  importName: string;
  cluster: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  endpoints: Array<{ addresses: string[]; conditions: { ready: boolean }; hostname?: string }>;
  ports: Array<{ name: string; protocol: string; port: number }>;
}

/** The slice of import `name` holding cluster `cluster`'s endpoints: derivedServiceName(name)-<cluster>. */
export function importSliceName(name: string, cluster: string): string {
  return `${derivedServiceName(name)}-${cluster}`;
}

/**
 * Per headless import and exporting cluster whose endpoints are known, one
 * EndpointSlice in the import's namespace, labelled as KEP-1645 and CoreDNS's
 * multicluster plugin read them (`multicluster.kubernetes.io/service-name` =
 * the import's name, `multicluster.kubernetes.io/source-cluster`, the latter
 * also as an annotation, where older plugin versions look), with each
 * endpoint's address, hostname and ready condition. They carry no
 * `kubernetes.io/service-name`: no Service claims them as its own backends
 * (the datapath balances nothing for a headless import; its agents already
 * know every cluster's backends through the mesh). A cluster in `endpoints`
 * that is not among the import's clusters is ignored; an exporting cluster
 * missing from it gets no slice (unknown is not empty). Keyed ns/slice name.
 */
export function planImportSlices(imports: ReadonlyMap<string, ImportPlan>, endpoints: ReadonlyMap<string, ReadonlyMap<string, ClusterEndpoints>>): Map<string, ImportSliceSpec> {
  const out = new Map<string, ImportSliceSpec>();
  for (const [key, p] of imports) {
    if (p.type !== 'Headless') continue;
    const known = endpoints.get(key);
    for (const cluster of p.clusters) {
      const eps = known?.get(cluster);
      if (!eps) continue;
      const name = importSliceName(p.name, cluster);
      const byIp = new Map<string, ImportEndpoint>();
      for (const e of eps.endpoints) {
        const seen = byIp.get(e.ip);
        byIp.set(e.ip, seen ? { ip: e.ip, ready: seen.ready || e.ready, hostname: seen.hostname ?? e.hostname } : e);
      }
      out.set(`${p.namespace}/${name}`, {
        namespace: p.namespace,
        name,
        importName: p.name,
        cluster,
        labels: { [SERVICE_NAME_LABEL]: p.name, [SOURCE_CLUSTER_LABEL]: cluster, [MANAGED_BY_LABEL]: MANAGED_BY, [SLICE_MANAGED_BY_LABEL]: MANAGED_BY },
        annotations: { [SOURCE_CLUSTER_LABEL]: cluster },
        endpoints: [...byIp.values()]
          .sort((a, b) => compareIp(a.ip, b.ip))
          .map((e) => ({ addresses: [e.ip], conditions: { ready: e.ready }, ...(e.hostname ? { hostname: e.hostname } : {}) })),
        ports: [...eps.ports].sort((a, b) => a.name.localeCompare(b.name) || a.protocol.localeCompare(b.protocol) || a.port - b.port),
      });
    }
  }
  return out;
}

function compareIp(a: string, b: string): number {
  const n = (ip: string) => ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
  return n(a) - n(b) || a.localeCompare(b);
}

/**
 * What a remote cluster's ClusterService of a derived Service says (its
 * published backends are those that take new connections: all ready), as the
 * endpoints of that cluster. `ports` come from the first backend (one slice
 * per cluster holds one port list).
 */
export function endpointsOfClusterService(v: { backends: Record<string, Record<string, { Protocol: string; Port: number }>>; hostnames: Record<string, string> }): ClusterEndpoints {
  const ips = Object.keys(v.backends).filter((ip) => !ip.includes(':')).sort(compareIp);
  const first = ips[0] !== undefined ? v.backends[ips[0]]! : {};
  return {
    endpoints: ips.map((ip) => ({ ip, ready: true, ...(v.hostnames[ip] ? { hostname: v.hostnames[ip] } : {}) })),
    ports: Object.entries(first).map(([name, p]) => ({ name, protocol: p.Protocol, port: p.Port })),
  };
}

/** The endpoints of the local cluster's exported Service, from its EndpointSlices as the API returns them. */
export function endpointsOfSlices(slices: readonly unknown[]): ClusterEndpoints {
  const rec = (v: unknown): Record<string, unknown> => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : {});
  const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
  const endpoints: ImportEndpoint[] = [];
  let ports: ClusterEndpoints['ports'] | undefined;
  for (const s of slices) {
    if (rec(s).addressType !== 'IPv4') continue;
    const sp = arr(rec(s).ports).map((p) => ({ name: typeof rec(p).name === 'string' ? (rec(p).name as string) : '', protocol: typeof rec(p).protocol === 'string' ? (rec(p).protocol as string) : 'TCP', port: Number(rec(p).port) })).filter((p) => Number.isInteger(p.port) && p.port > 0);
    if (!ports && sp.length > 0) ports = sp;
    for (const e of arr(rec(s).endpoints)) {
      const ready = rec(rec(e).conditions).ready;
      const hostname = rec(e).hostname;
      for (const ip of arr(rec(e).addresses)) if (typeof ip === 'string') endpoints.push({ ip, ready: ready !== false, ...(typeof hostname === 'string' && hostname ? { hostname } : {}) });
    }
  }
  return { endpoints, ports: ports ?? [] };
}

// Services on this node: the cluster's Services (ClusterIP, ports, named
// target ports, readiness, sessionAffinity ClientIP) and, for a global
// Service, the backends other clusters export under the same namespace and
// name, turned into the contents of the service maps (cm_services,
// cm_backends, cm_backend_slots, cm_maglev, cm_revnat) and written through one
// Reconciler per map.
//
//   local Service + its local backends ─┐
//   ClusterMesh.globalServices ──────────┼─ frontendSpecs() ─ planFrontend() ─ apply() ─ reconcilers
//   remote cluster states ───────────────┘   (pure)            (loadbalancer)   (ordered)
//
// Local backends (LocalBackendIndex, sources/service-backends.ts): with a
// Kubernetes source, the Service's EndpointSlices (ready endpoints take new
// connections; while none of a port is ready, its serving terminating ones do;
// Services without a selector work); with a source that says 'selectors' (a
// test's fake), the Service's selector over the Pods. Everything after that (frontends, the merge with
// remote backends, affinity, the write order) is one code path.
//
// Write order (the datapath must never find a service pointing at a backend
// that is not there): backends, slots, Maglev tables and revnat first; the
// cm_services entries after those are in the maps; what became unused
// (slots beyond a shrunken table, backends no frontend uses, frontends that
// went) only after the cm_services entries no longer point at it.
//
// Remote backends: a cluster that is unreachable keeps its backends (their
// connections keep working) unless serviceCacheTTLSeconds > 0 and it has been
// unreachable that long; a cluster removed from the mesh is drained by
// ClusterMesh, which withdraws its backends; a cluster that withdrew its
// cluster-config (reachable, cluster-config deleted: it announced it is gone)
// keeps its backends flagged clusterGone, never chosen for a new connection.
//
// Restart without loss: ids are re-adopted from the pinned cm_services and
// cm_backends before anything is written, nothing is programmed until the
// sources have synced (canProgram), and the reconcilers prune nothing until
// then either.
import type { Logger } from 'pino';
import { systemClock, type Clock, type TimerHandle } from '../util/clock.ts';
import type { GlobalService, RemoteClusterStatus, RemoteService } from '../clustermesh/clustermesh.ts';
import type { ObservableMap } from '../clustermesh/cache.ts';
import type { MapHandle } from '../datapath/maps/codec.ts';
import * as affinityMap from '../datapath/maps/affinity.ts';
import * as backendSlotsMap from '../datapath/maps/backend-slots.ts';
import * as backendsMap from '../datapath/maps/backends.ts';
import * as ctMap from '../datapath/maps/ct.ts';
import * as lbHintMap from '../datapath/maps/lb-hint.ts';
import * as maglevMap from '../datapath/maps/maglev.ts';
import * as revnatMap from '../datapath/maps/revnat.ts';
import * as servicesMap from '../datapath/maps/services.ts';
import {
  AFFINITY_ANNOTATION,
  IdAllocator,
  frontendKey,
  parseTopologyAffinity,
  planFrontend,
  type BackendCandidate,
  type BackendEntry,
  type FrontendPlan,
  type FrontendSpec,
  type L4Protocol,
  type SelectionTier,
  type ServiceEntry,
  type TopologyAffinity,
} from '../loadbalancer/index.ts';
import { isGlobalService, isSharedService, type LocalBackend, type Service } from '../model/index.ts';
import { LocalBackendIndex, type Resource, type ServiceBackendInput, type Unsubscribe } from '../sources/index.ts';
import { Reconciler, type ReconcileTarget } from './reconciler.ts';

// ---------------------------------------------------------------------------
// Pure part: which frontends a Service has and which backends each may use

/** The backends one remote cluster exports for a global service, with how this node treats that cluster. */
export interface RemoteBackendSet {
  cluster: string;
  clusterId: number;
  ip: string;
  ports: Array<{ name: string; protocol: string; port: number }>;
  /** The cluster announced it is gone (its cluster-config was withdrawn). */
  clusterGone: boolean;
}

export interface IdSource {
  service(frontendKey: string): number;
  backend(backendKey: string): number;
}

/** Stable name of a backend (what its cm_backends id is allocated for). */
export const backendKey = (clusterId: number, ip: string, port: number): string => `${clusterId}/${ip}:${port}`;

/** Annotation choosing how a service spreads new connections: 'maglev' (consistent hashing) or the default slot table. */
export const LB_ALGORITHM_ANNOTATION = 'service.cilium.io/lb-algorithm';

/** A Service the datapath translates: it has a ClusterIP (not headless). */
export function hasVip(svc: Service): boolean {
  return svc.spec.clusterIP !== undefined && svc.spec.clusterIP !== 'None';
}

/** The service's topology affinity: from the annotation of a global service, 'none' otherwise. */
export function topologyAffinityOf(svc: Service): TopologyAffinity {
  return isGlobalService(svc) ? parseTopologyAffinity(svc.metadata.annotations[AFFINITY_ANNOTATION]) : 'none';
}

/**
 * One FrontendSpec per TCP/UDP port of a Service with a ClusterIP: the
 * Service's local backends of that port (`local`, same index as
 * svc.spec.ports: ready or not, terminating or not, so that a backend that
 * stops taking new connections keeps the ones it has), plus, for a global
 * Service, the remote clusters' backends whose port of the same name and
 * protocol exists. Pure but for the ids it takes from `ids`.
 */
export function frontendSpecs(svc: Service, local: readonly (readonly LocalBackend[])[], remote: readonly RemoteBackendSet[], localClusterId: number, ids: IdSource): FrontendSpec[] {
  if (!hasVip(svc)) return [];
  const vip = svc.spec.clusterIP!;
  const global = isGlobalService(svc);
  const sessionAffinity =
    svc.spec.sessionAffinity === 'ClientIP' ? { timeoutSeconds: svc.spec.sessionAffinityConfig?.clientIP.timeoutSeconds ?? 10800 } : undefined;
  const topologyAffinity = topologyAffinityOf(svc);
  const algorithm = svc.metadata.annotations[LB_ALGORITHM_ANNOTATION]?.trim().toLowerCase() === 'maglev' ? 'maglev' : 'slots';
  const out: FrontendSpec[] = [];
  svc.spec.ports.forEach((sp, i) => {
    if (sp.protocol !== 'TCP' && sp.protocol !== 'UDP') return;
    const byId = new Map<number, BackendCandidate>();
    for (const b of local[i] ?? []) {
      const id = ids.backend(backendKey(localClusterId, b.ip, b.port));
      byId.set(id, { id, ip: b.ip, port: b.port, clusterId: localClusterId, local: true, ready: b.ready, terminating: b.terminating, clusterGone: false });
    }
    if (global) {
      for (const r of remote) {
        const p = r.ports.find((x) => x.name === (sp.name ?? '') && x.protocol === sp.protocol);
        if (!p) continue;
        const id = ids.backend(backendKey(r.clusterId, r.ip, p.port));
        byId.set(id, { id, ip: r.ip, port: p.port, clusterId: r.clusterId, local: false, ready: true, terminating: false, clusterGone: r.clusterGone });
      }
    }
    const fk = frontendKey({ vip, port: sp.port, protocol: sp.protocol as L4Protocol });
    out.push({
      vip,
      port: sp.port,
      protocol: sp.protocol as L4Protocol,
      serviceId: ids.service(fk),
      sessionAffinity,
      topologyAffinity,
      algorithm,
      backends: [...byId.values()],
    });
  });
  return out;
}

/** How this node treats a remote cluster's service backends now. */
export interface RemoteClusterView {
  /** Its cluster-config was withdrawn while it stays reachable: backends kept, flagged clusterGone. */
  gone: boolean;
  /** Unreachable longer than serviceCacheTTLSeconds: its backends are withheld. */
  expired: boolean;
}

/** A remote is gone when it is reachable but its cluster-config is withdrawn. */
export function remoteGone(state: RemoteClusterStatus['state']): boolean {
  return state === 'waiting-config';
}

/** Tracks since when each remote has been unreachable, and decides gone / expired. */
export class RemoteTracker {
  private readonly since = new Map<string, number>();
  private readonly views = new Map<string, RemoteClusterView>();

  constructor(private readonly ttlMs: number) {}

  /** Feeds the current states; returns the clusters whose view changed. */
  update(remotes: ReadonlyArray<Pick<RemoteClusterStatus, 'name' | 'state' | 'connected'>>, now: number): string[] {
    const changed: string[] = [];
    const seen = new Set<string>();
    for (const r of remotes) {
      seen.add(r.name);
      if (r.connected) this.since.delete(r.name);
      else if (!this.since.has(r.name)) this.since.set(r.name, now);
      const since = this.since.get(r.name);
      const v: RemoteClusterView = { gone: remoteGone(r.state), expired: this.ttlMs > 0 && since !== undefined && now - since >= this.ttlMs };
      const old = this.views.get(r.name);
      if (!old || old.gone !== v.gone || old.expired !== v.expired) changed.push(r.name);
      this.views.set(r.name, v);
    }
    for (const name of [...this.views.keys()]) {
      if (seen.has(name)) continue;
      this.views.delete(name);
      this.since.delete(name);
      changed.push(name);
    }
    return changed;
  }

  view(name: string): RemoteClusterView {
    return this.views.get(name) ?? { gone: false, expired: false };
  }

  expiredClusters(): string[] {
    return [...this.views].filter(([, v]) => v.expired).map(([n]) => n).sort();
  }

  goneClusters(): string[] {
    return [...this.views].filter(([, v]) => v.gone).map(([n]) => n).sort();
  }
}

// ---------------------------------------------------------------------------
// Reconcile targets over the pinned maps

/** The service maps of this node (opened by the datapath). */
export interface ServiceMaps {
  services: MapHandle;
  backends: MapHandle;
  backendSlots: MapHandle;
  maglev: MapHandle;
  revnat: MapHandle;
  ct: MapHandle;
  affinity: MapHandle;
  /** cm_lb_hint: which addresses may be a VIP or a backend (bpf/lib/lb.h). */
  lbHint: MapHandle;
}

type SlotValue = { serviceId: number; slot: number; backendId: number };
type MaglevValue = { serviceId: number; table: ArrayLike<number> };
type RevnatValue = { id: number; value: { vip: string; port: number } };
type BackendValue = { id: number; value: BackendEntry };

const sameService = (a: ServiceEntry, b: ServiceEntry): boolean =>
  a.key.vip === b.key.vip &&
  a.key.port === b.key.port &&
  a.key.protocol === b.key.protocol &&
  a.value.serviceId === b.value.serviceId &&
  a.value.revnatId === b.value.revnatId &&
  a.value.backendCount === b.value.backendCount &&
  a.value.sessionAffinity === b.value.sessionAffinity &&
  a.value.affinityTimeout === b.value.affinityTimeout &&
  a.value.maglev === b.value.maglev;

const sameBackend = (a: BackendValue, b: BackendValue): boolean =>
  a.id === b.id &&
  a.value.ip === b.value.ip &&
  a.value.port === b.value.port &&
  a.value.clusterId === b.value.clusterId &&
  a.value.terminating === b.value.terminating &&
  a.value.clusterGone === b.value.clusterGone &&
  a.value.notReady === b.value.notReady;

function sameTable(a: ArrayLike<number>, b: ArrayLike<number>): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function serviceTargets(maps: () => ServiceMaps): {
  services: ReconcileTarget<ServiceEntry>;
  backends: ReconcileTarget<BackendValue>;
  slots: ReconcileTarget<SlotValue>;
  maglev: ReconcileTarget<MaglevValue>;
  revnat: ReconcileTarget<RevnatValue>;
} {
  return {
    services: {
      list: () => [...servicesMap.entries(maps().services)].map(([k, v]) => [frontendKey(k), { key: k, value: v }] as const),
      update: (_k, e) => servicesMap.update(maps().services, e.key, e.value),
      delete: (k) => servicesMap.remove(maps().services, parseFrontendKey(k)),
    },
    backends: {
      list: () => [...backendsMap.entries(maps().backends)].map(([id, v]) => [String(id), { id, value: v }] as const),
      update: (_k, b) => backendsMap.update(maps().backends, b.id, b.value),
      delete: (k) => backendsMap.remove(maps().backends, Number(k)),
    },
    slots: {
      list: () => [...backendSlotsMap.entries(maps().backendSlots)].map(([k, id]) => [`${k.serviceId}/${k.slot}`, { serviceId: k.serviceId, slot: k.slot, backendId: id }] as const),
      update: (_k, s) => backendSlotsMap.update(maps().backendSlots, { serviceId: s.serviceId, slot: s.slot }, s.backendId),
      delete: (k) => {
        const [sid, slot] = k.split('/').map(Number) as [number, number];
        return backendSlotsMap.remove(maps().backendSlots, { serviceId: sid, slot });
      },
    },
    maglev: {
      list: () => [...maglevMap.entries(maps().maglev)].map(([sid, t]) => [String(sid), { serviceId: sid, table: t }] as const),
      update: (_k, m) => maglevMap.update(maps().maglev, m.serviceId, m.table),
      delete: (k) => maglevMap.remove(maps().maglev, Number(k)),
    },
    revnat: {
      list: () => [...revnatMap.entries(maps().revnat)].map(([id, v]) => [String(id), { id, value: v }] as const),
      update: (_k, r) => revnatMap.update(maps().revnat, r.id, r.value),
      delete: (k) => revnatMap.remove(maps().revnat, Number(k)),
    },
  };
}

/** The VIPs and backend addresses of @plans, for cm_lb_hint. */
function hintAddresses(plans: Iterable<FrontendPlan>): { vips: string[]; backends: string[] } {
  const vips: string[] = [];
  const backends: string[] = [];
  for (const f of plans) {
    vips.push(f.service.key.vip);
    for (const [, b] of f.backends) backends.push(b.ip);
  }
  return { vips, backends };
}

/** 'vip:port/PROTO' → the cm_services key. */
export function parseFrontendKey(k: string): servicesMap.Key {
  const m = /^(\d+\.\d+\.\d+\.\d+):(\d+)\/(TCP|UDP)$/.exec(k);
  if (!m) throw new RangeError(`not a frontend key: ${JSON.stringify(k)}`);
  return { vip: m[1]!, port: Number(m[2]), protocol: m[3] as L4Protocol };
}

// ---------------------------------------------------------------------------
// What the inspect surface shows

export interface ServiceBackendInfo {
  id: number;
  ip: string;
  port: number;
  cluster: string;
  clusterId: number;
  local: boolean;
  ready: boolean;
  /** Shutting down (an EndpointSlice's terminating condition) and not taking new connections. */
  terminating: boolean;
  clusterGone: boolean;
  /** Takes new connections now (in the selected tier). */
  active: boolean;
}

export interface ServiceFrontendInfo {
  vip: string;
  port: number;
  protocol: L4Protocol;
  /** The Service port's name ('' when unnamed). */
  name: string;
  serviceId: number;
  /** Which group takes new connections: all, local, remote, local-fallback, remote-fallback, none. */
  tier: SelectionTier;
  /** Backends taking new connections. */
  activeBackends: number;
  /** Every backend, by cluster name. */
  backends: Record<string, ServiceBackendInfo[]>;
}

export interface ServiceInfo {
  namespace: string;
  name: string;
  global: boolean;
  /** A global service that offers its backends to other clusters (service.cilium.io/shared). */
  shared: boolean;
  affinity: TopologyAffinity;
  sessionAffinity: { timeoutSeconds: number } | null;
  /** Remote clusters contributing backends. */
  remoteClusters: string[];
  frontends: ServiceFrontendInfo[];
}

export interface ServicesStatus {
  /** Local Services with a ClusterIP programmed. */
  services: number;
  frontends: number;
  backends: number;
  /** Programmed services with backends of other clusters. */
  globalServices: number;
  remoteBackends: number;
  /** Frontends without a backend for new connections. */
  frontendsWithoutBackends: number;
  /** Remote clusters whose backends are withheld (unreachable longer than serviceCacheTTLSeconds). */
  expiredClusters: string[];
  /** Remote clusters that announced they are gone (backends kept, take no new connections). */
  goneClusters: string[];
  cacheTTLSeconds: number;
  /** Nothing programmed yet because the sources have not synced. */
  waitingForSync: boolean;
  /** Services not yet written completely. */
  pending: number;
  errors: number;
  lastError: { message: string; at: string } | null;
  gc: { runs: number; ctDeleted: number; affinityDeleted: number; last: string | null };
}

// ---------------------------------------------------------------------------
// The manager

export interface ServiceManagerOptions {
  clusterName: string;
  clusterId: number;
  services: Resource<Service>;
  /** Where the local backends come from: serviceBackendInput(source) (EndpointSlices or selectors over Pods). */
  backends: ServiceBackendInput;
  mesh: {
    readonly globalServices: ObservableMap<string, GlobalService>;
    readonly services: ObservableMap<string, RemoteService>;
    status(): { remotes: ReadonlyArray<Pick<RemoteClusterStatus, 'name' | 'state' | 'connected' | 'clusterId'>> };
  };
  maps: () => ServiceMaps;
  /** False while the sources have not synced: nothing is programmed (a partial view would drop backends). */
  canProgram: () => boolean;
  /** Why pruning must wait, or null. */
  pruneBlocker: () => string | null;
  /** 0 = keep an unreachable cluster's backends forever. */
  cacheTTLMs?: number;
  gcIntervalMs?: number;
  /** How often remote cluster states are looked at (TTL, gone). Default 1000 ms. */
  remotePollMs?: number;
  /** How long a phase waits for its entries to be in the maps before going on. Default 10 s. */
  applyTimeoutMs?: number;
  fullSyncIntervalMs?: number;
  clock?: Clock;
  log: Pick<Logger, 'info' | 'warn' | 'debug'>;
  onReconcileError?: (name: string) => (key: string | null, err: unknown, attempt: number) => void;
}

interface Programmed {
  plans: FrontendPlan[];
  info: ServiceInfo;
}

export class ServiceManager {
  readonly reconcilers: {
    services: Reconciler<ServiceEntry>;
    backends: Reconciler<BackendValue>;
    slots: Reconciler<SlotValue>;
    maglev: Reconciler<MaglevValue>;
    revnat: Reconciler<RevnatValue>;
  };
  private readonly o: ServiceManagerOptions;
  private readonly clock: Clock;
  private readonly serviceIds = new IdAllocator();
  private readonly backendIds = new IdAllocator();
  private readonly remotes: RemoteTracker;
  private readonly svcs = new Map<string, Service>();
  private readonly local: LocalBackendIndex;
  private readonly programmed = new Map<string, Programmed>();
  /** The cm_lb_hint bits of every programmed VIP and backend, counted. */
  private readonly hintCounts = new lbHintMap.HintCounts();
  /** backend id → frontend keys using it. */
  private readonly backendUsers = new Map<number, Set<string>>();
  /** backend id → cluster name (for inspect). */
  private readonly backendCluster = new Map<number, string>();
  private readonly dirty = new Set<string>();
  private running: Promise<void> | undefined;
  private started = false;
  private stopped = false;
  private idsReleased = false;
  private retryArmed = false;
  /** Everything the synced sources said has been applied once. */
  private caughtUp = false;
  /** remote cluster name → id, refreshed per apply. */
  private remoteIds = new Map<string, number | null>();
  private timers: TimerHandle[] = [];
  private errors = 0;
  private lastError: { message: string; at: string } | null = null;
  private readonly gcStats = { runs: 0, ctDeleted: 0, affinityDeleted: 0, last: null as string | null };

  constructor(opts: ServiceManagerOptions) {
    this.o = opts;
    this.clock = opts.clock ?? systemClock;
    this.local = new LocalBackendIndex(opts.backends);
    this.remotes = new RemoteTracker(opts.cacheTTLMs ?? 0);
    const t = serviceTargets(opts.maps);
    // Pruning also waits until the services are programmed from synced sources:
    // before, every entry of the previous run would look stale.
    const pruneBlocker = (): string | null => opts.pruneBlocker() ?? (this.caughtUp && !this.running && this.dirty.size === 0 ? null : 'services not programmed yet');
    const common = (name: string) => ({
      clock: this.clock,
      pruneBlocker,
      ...(opts.fullSyncIntervalMs !== undefined ? { fullSyncIntervalMs: opts.fullSyncIntervalMs } : {}),
      ...(opts.onReconcileError ? { onError: opts.onReconcileError(name) } : {}),
    });
    this.reconcilers = {
      backends: new Reconciler({ name: 'lb-backends', target: t.backends, equals: sameBackend, ...common('lb-backends') }),
      slots: new Reconciler({
        name: 'lb-slots',
        target: t.slots,
        equals: (a, b) => a.serviceId === b.serviceId && a.slot === b.slot && a.backendId === b.backendId,
        ...common('lb-slots'),
      }),
      maglev: new Reconciler({ name: 'lb-maglev', target: t.maglev, equals: (a, b) => a.serviceId === b.serviceId && sameTable(a.table, b.table), ...common('lb-maglev') }),
      revnat: new Reconciler({
        name: 'lb-revnat',
        target: t.revnat,
        equals: (a, b) => a.id === b.id && a.value.vip === b.value.vip && a.value.port === b.value.port,
        ...common('lb-revnat'),
      }),
      services: new Reconciler({ name: 'lb-services', target: t.services, equals: sameService, ...common('lb-services') }),
    };
  }

  /** In write order: what a service points at first, the services last. */
  get reconcilerList(): Array<Pick<Reconciler<unknown>, 'name' | 'start' | 'stop' | 'fullSync' | 'status' | 'passSeconds'>> {
    const r = this.reconcilers;
    return [r.backends, r.slots, r.maglev, r.revnat, r.services];
  }

  /**
   * Re-adopts the ids the pinned maps hold (a previous run), so that the same
   * frontends and backends get the same ids again and nothing is rewritten
   * that need not be. Returns how many of each it adopted.
   */
  adoptIds(): { services: number; backends: number } {
    const m = this.o.maps();
    let services = 0;
    let backends = 0;
    for (const [k, v] of servicesMap.entries(m.services)) {
      try {
        this.serviceIds.restore(frontendKey(k), v.serviceId);
        services++;
      } catch (err) {
        this.o.log.warn({ frontend: frontendKey(k), serviceId: v.serviceId, err: (err as Error).message }, 'service id in cm_services not adopted; the entry will be replaced');
      }
    }
    for (const [id, v] of backendsMap.entries(m.backends)) {
      try {
        this.backendIds.restore(backendKey(v.clusterId, v.ip, v.port), id);
        backends++;
      } catch (err) {
        this.o.log.warn({ backendId: id, err: (err as Error).message }, 'backend id in cm_backends not adopted; the entry will be pruned');
      }
    }
    return { services, backends };
  }

  /** Follows the sources. Returns the unsubscribe functions. */
  subscribe(): Unsubscribe[] {
    return [
      this.o.services.watch((ev) => {
        if (ev.kind === 'synced') return this.kick();
        const key = `${ev.object.metadata.namespace}/${ev.object.metadata.name}`;
        if (ev.kind === 'upsert') this.svcs.set(key, ev.object);
        else this.svcs.delete(key);
        this.markDirty(key);
      }),
      this.local.watch(
        () => this.svcs.values(),
        (key) => {
          if (this.svcs.has(key)) this.markDirty(key);
        },
        () => this.kick(),
      ),
      this.o.mesh.globalServices.subscribe((ev) => {
        if (this.svcs.has(ev.key)) this.markDirty(ev.key);
      }),
    ];
  }

  /** Starts the reconcilers (in write order), the remote poll and the garbage collection. */
  async start(): Promise<void> {
    this.started = true;
    for (const r of this.reconcilerList) await r.start();
    this.pollRemotes();
    this.every(this.o.remotePollMs ?? 1000, () => this.pollRemotes());
    const gcMs = this.o.gcIntervalMs ?? 30_000;
    if (gcMs > 0) this.every(gcMs, () => this.gc());
    this.kick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) this.clock.clearTimeout(t);
    this.timers = [];
    await this.running?.catch(() => undefined);
    for (const r of [...this.reconcilerList].reverse()) await r.stop();
  }

  /** A full pass of every map, in write order (after a source synced late: prunes). */
  async fullSync(): Promise<void> {
    await this.flush();
    this.releaseUnusedIds();
    for (const r of this.reconcilerList) await r.fullSync();
  }

  /** Resolves when nothing is dirty and no apply runs (or programming is held back until the sources sync). */
  async flush(): Promise<void> {
    this.kick();
    for (;;) {
      if (this.running) {
        await this.running.catch(() => undefined);
        continue;
      }
      if (this.dirty.size === 0 || !this.canProgram() || !this.started || this.stopped) return;
      this.kick();
      if (!this.running) return;
    }
  }

  list(): ServiceInfo[] {
    return [...this.programmed.values()].map((p) => p.info).sort((a, b) => (a.namespace + '/' + a.name < b.namespace + '/' + b.name ? -1 : 1));
  }

  status(): ServicesStatus {
    let frontends = 0;
    let empty = 0;
    let global = 0;
    let remoteBackends = 0;
    for (const p of this.programmed.values()) {
      frontends += p.plans.length;
      empty += p.plans.filter((f) => f.service.value.backendCount === 0).length;
      if (p.info.remoteClusters.length > 0) global++;
    }
    for (const id of this.backendUsers.keys()) if (this.backendCluster.get(id) !== this.o.clusterName) remoteBackends++;
    const pending = this.reconcilerList.reduce((n, r) => n + r.status().pending, 0);
    return {
      services: this.programmed.size,
      frontends,
      backends: this.backendUsers.size,
      globalServices: global,
      remoteBackends,
      frontendsWithoutBackends: empty,
      expiredClusters: this.remotes.expiredClusters(),
      goneClusters: this.remotes.goneClusters(),
      cacheTTLSeconds: (this.o.cacheTTLMs ?? 0) / 1000,
      waitingForSync: !this.canProgram(),
      pending: this.dirty.size + pending,
      errors: this.errors,
      lastError: this.lastError,
      gc: { ...this.gcStats },
    };
  }

  /** Deletes expired conntrack entries and stale session-affinity entries. */
  gc(): { ct: number; affinity: number } {
    const m = this.o.maps();
    let ct = 0;
    let aff = 0;
    try {
      ct = ctMap.gc(m.ct);
      const now = ctMap.monotonicSeconds();
      // An affinity entry is live while its frontend has ClientIP affinity, the
      // backend is still one of the frontend's active ones, and it has not timed out.
      const live = new Map<number, { timeout: number; active: Set<number> }>();
      for (const p of this.programmed.values()) {
        for (const f of p.plans) {
          if (f.service.value.sessionAffinity) live.set(f.service.value.serviceId, { timeout: f.service.value.affinityTimeout, active: new Set(f.selection.active.map((b) => b.id)) });
        }
      }
      // Only with the whole picture programmed: before, every entry would look stale.
      if (this.canProgram() && this.started && !this.running && this.dirty.size === 0) {
        const dead = [...affinityMap.entries(m.affinity)]
          .filter(([k, v]) => {
            const l = live.get(k.serviceId);
            return !l || !l.active.has(v.backendId) || v.lastUsed + l.timeout < now;
          })
          .map(([k]) => k);
        aff = affinityMap.removeMany(m.affinity, dead);
      }
    } catch (err) {
      this.error(`garbage collection of cm_ct / cm_affinity failed: ${(err as Error).message}`);
    }
    this.gcStats.runs++;
    this.gcStats.ctDeleted += ct;
    this.gcStats.affinityDeleted += aff;
    this.gcStats.last = new Date(this.clock.now()).toISOString();
    return { ct, affinity: aff };
  }

  // ---- internals

  /** The agent's sources synced, and the local backends' resource too (EndpointSlices are not among the agent's kinds). */
  private canProgram(): boolean {
    return this.o.canProgram() && this.local.synced;
  }

  private every(ms: number, fn: () => void): void {
    const arm = (): void => {
      if (this.stopped) return;
      const h = this.clock.setTimeout(() => {
        this.timers = this.timers.filter((t) => t !== h);
        try {
          fn();
        } finally {
          arm();
        }
      }, ms);
      this.timers.push(h);
    };
    arm();
  }

  private pollRemotes(): void {
    const changed = this.remotes.update(this.o.mesh.status().remotes, this.clock.now());
    if (changed.length === 0) return;
    this.o.log.info({ clusters: changed, expired: this.remotes.expiredClusters(), gone: this.remotes.goneClusters() }, 'remote clusters changed how their service backends are used');
    for (const [key, svc] of this.svcs) if (isGlobalService(svc)) this.markDirty(key);
  }

  private markDirty(key: string): void {
    this.dirty.add(key);
    this.kick();
  }

  private kick(): void {
    if (!this.running && this.started && this.dirty.size === 0 && this.canProgram()) this.caughtUp = true;
    if (this.running || !this.started || this.stopped || this.dirty.size === 0) return;
    if (!this.canProgram()) {
      // Try again shortly: the agent's sync state is polled, not an event.
      if (this.retryArmed) return;
      this.retryArmed = true;
      const h = this.clock.setTimeout(() => {
        this.timers = this.timers.filter((t) => t !== h);
        this.retryArmed = false;
        this.kick();
      }, 100);
      this.timers.push(h);
      return;
    }
    this.running = (async () => {
      try {
        // Let a burst of events (a whole listing) land in one batch.
        await new Promise<void>((r) => setImmediate(r));
        while (this.dirty.size > 0 && !this.stopped) {
          const batch = [...this.dirty];
          this.dirty.clear();
          await this.apply(batch);
        }
      } catch (err) {
        this.error(`programming services failed: ${(err as Error).message}`);
      } finally {
        this.running = undefined;
        // more work, or (nothing left) caught up
        this.kick();
      }
    })();
  }

  private error(message: string): void {
    this.errors++;
    this.lastError = { message, at: new Date(this.clock.now()).toISOString() };
    this.o.log.warn(message);
  }

  private remoteBackends(key: string): RemoteBackendSet[] {
    const gs = this.o.mesh.globalServices.get(key);
    if (!gs) return [];
    const ids = this.remoteIds;
    const out: RemoteBackendSet[] = [];
    for (const b of gs.backends) {
      const view = this.remotes.view(b.cluster);
      if (view.expired) continue;
      const clusterId = this.o.mesh.services.get(`${b.cluster}/${key}`)?.clusterId ?? ids.get(b.cluster) ?? null;
      if (!clusterId) continue;
      out.push({ cluster: b.cluster, clusterId, ip: b.ip, ports: b.ports, clusterGone: view.gone });
    }
    return out;
  }

  /** The plans and inspect view of one service now (empty when it is gone or has no ClusterIP). */
  private compute(key: string): Programmed | undefined {
    const svc = this.svcs.get(key);
    if (!svc || !hasVip(svc)) return undefined;
    const remote = isGlobalService(svc) ? this.remoteBackends(key) : [];
    const clusterOfId = new Map<number, string>([[this.o.clusterId, this.o.clusterName]]);
    for (const r of remote) clusterOfId.set(r.clusterId, r.cluster);
    const specs = frontendSpecs(svc, this.local.backends(svc), remote, this.o.clusterId, {
      service: (fk) => this.serviceIds.acquire(fk),
      backend: (bk) => this.backendIds.acquire(bk),
    });
    const plans = specs.map(planFrontend);
    const frontends: ServiceFrontendInfo[] = plans.map((p, i) => {
      const active = new Set(p.selection.active.map((b) => b.id));
      const backends: Record<string, ServiceBackendInfo[]> = {};
      for (const b of specs[i]!.backends) {
        const cluster = clusterOfId.get(b.clusterId) ?? String(b.clusterId);
        (backends[cluster] ??= []).push({ id: b.id, ip: b.ip, port: b.port, cluster, clusterId: b.clusterId, local: b.local, ready: b.ready, terminating: b.terminating, clusterGone: b.clusterGone, active: active.has(b.id) });
        this.backendCluster.set(b.id, cluster);
      }
      for (const list of Object.values(backends)) list.sort((a, b) => a.id - b.id);
      const sp = svc.spec.ports.find((x) => x.port === p.service.key.port && x.protocol === p.service.key.protocol);
      return {
        vip: p.service.key.vip,
        port: p.service.key.port,
        protocol: p.service.key.protocol,
        name: sp?.name ?? '',
        serviceId: p.service.value.serviceId,
        tier: p.selection.tier,
        activeBackends: active.size,
        backends,
      };
    });
    const global = isGlobalService(svc);
    return {
      plans,
      info: {
        namespace: svc.metadata.namespace,
        name: svc.metadata.name,
        global,
        shared: global && isSharedService(svc),
        affinity: topologyAffinityOf(svc),
        sessionAffinity: plans[0]?.service.value.sessionAffinity ? { timeoutSeconds: plans[0].service.value.affinityTimeout } : null,
        remoteClusters: [...new Set(remote.map((r) => r.cluster))].sort(),
        frontends,
      },
    };
  }

  /** Applies the current state of `keys` to the maps, in the order that never leaves a service pointing at nothing. */
  private async apply(keys: string[]): Promise<void> {
    const r = this.reconcilers;
    const timeout = this.o.applyTimeoutMs ?? 10_000;
    // Fresh views (not up to a poll period old): a cluster that just came back is not withheld.
    this.pollRemotes();
    this.remoteIds = new Map(this.o.mesh.status().remotes.map((x) => [x.name, x.clusterId] as const));
    const next = new Map<string, Programmed | undefined>();
    for (const key of keys) {
      try {
        next.set(key, this.compute(key));
      } catch (err) {
        this.error(`service ${key}: ${(err as Error).message}`);
      }
    }
    const waitAll = async (rec: { whenApplied(key: string, timeoutMs?: number): Promise<void> }, ks: Iterable<string>, phase: string): Promise<void> => {
      const results = await Promise.allSettled([...ks].map((k) => rec.whenApplied(k, timeout)));
      const failed = results.filter((x): x is PromiseRejectedResult => x.status === 'rejected');
      if (failed.length) this.error(`${phase}: ${failed.length} entries not written in time (${(failed[0]!.reason as Error).message}); going on`);
    };

    // 1. backends, slots, Maglev tables, revnat of the new plans
    const written = { backends: new Set<string>(), slots: new Set<string>(), maglev: new Set<string>(), revnat: new Set<string>() };
    for (const p of next.values()) {
      for (const f of p?.plans ?? []) {
        const fk = frontendKey(f.service.key);
        for (const [id, value] of f.backends) {
          let users = this.backendUsers.get(id);
          if (!users) this.backendUsers.set(id, (users = new Set()));
          users.add(fk);
          r.backends.upsert(String(id), { id, value });
          written.backends.add(String(id));
        }
        const sid = f.service.value.serviceId;
        f.slots.forEach((backendId, slot) => {
          const k = `${sid}/${slot}`;
          r.slots.upsert(k, { serviceId: sid, slot, backendId });
          written.slots.add(k);
        });
        if (f.maglev) {
          r.maglev.upsert(String(sid), { serviceId: sid, table: f.maglev });
          written.maglev.add(String(sid));
        }
        r.revnat.upsert(String(f.revnat.key), { id: f.revnat.key, value: f.revnat.value });
        written.revnat.add(String(f.revnat.key));
      }
    }
    await Promise.all([
      waitAll(r.backends, written.backends, 'cm_backends'),
      waitAll(r.slots, written.slots, 'cm_backend_slots'),
      waitAll(r.maglev, written.maglev, 'cm_maglev'),
      waitAll(r.revnat, written.revnat, 'cm_revnat'),
    ]);

    // 2. the cm_services entries: new and changed ones written, gone ones deleted
    const svcKeys = new Set<string>();
    const old = new Map<string, FrontendPlan>();
    for (const key of next.keys()) for (const f of this.programmed.get(key)?.plans ?? []) old.set(frontendKey(f.service.key), f);
    const now = new Map<string, FrontendPlan>();
    for (const p of next.values()) for (const f of p?.plans ?? []) now.set(frontendKey(f.service.key), f);
    // Before any entry names them: the hint's bits of these VIPs and backends.
    if (now.size) this.hintAdd(now.values());
    for (const [fk, f] of now) {
      r.services.upsert(fk, f.service);
      svcKeys.add(fk);
    }
    for (const fk of old.keys()) {
      if (now.has(fk)) continue;
      r.services.remove(fk);
      svcKeys.add(fk);
    }
    await waitAll(r.services, svcKeys, 'cm_services');
    for (const [key, p] of next) {
      const was = this.programmed.get(key);
      if (was) this.hintCounts.change(hintAddresses(was.plans), -1);
      if (p) {
        this.programmed.set(key, p);
        this.hintCounts.change(hintAddresses(p.plans), 1);
      } else this.programmed.delete(key);
    }

    // 3. what no cm_services entry points at any more
    const affinityDrops: Array<[number, number[] | undefined]> = [];
    const gone = { backends: new Set<string>(), slots: new Set<string>(), maglev: new Set<string>(), revnat: new Set<string>() };
    for (const [fk, o] of old) {
      const n = now.get(fk);
      const sid = o.service.value.serviceId;
      const newSlots = n && n.service.value.serviceId === sid ? n.slots.length : 0;
      for (let slot = newSlots; slot < o.slots.length; slot++) {
        r.slots.remove(`${sid}/${slot}`);
        gone.slots.add(`${sid}/${slot}`);
      }
      if (o.maglev && !(n?.maglev && n.service.value.serviceId === sid)) {
        r.maglev.remove(String(sid));
        gone.maglev.add(String(sid));
      }
      // (the revnat id is the service id, stable while the frontend exists)
      if (!n) {
        r.revnat.remove(String(o.revnat.key));
        gone.revnat.add(String(o.revnat.key));
      }
      const keep = new Set(n?.backends.map(([id]) => id) ?? []);
      const left: number[] = [];
      for (const [id] of o.backends) {
        if (keep.has(id)) continue;
        left.push(id);
        const users = this.backendUsers.get(id);
        users?.delete(fk);
        if (users && users.size === 0) {
          this.backendUsers.delete(id);
          this.backendCluster.delete(id);
          r.backends.remove(String(id));
          gone.backends.add(String(id));
          const bk = this.backendIds.keyOf(id);
          if (bk !== undefined) this.backendIds.release(bk);
        }
      }
      if (!n) {
        this.serviceIds.release(fk);
        if (o.service.value.sessionAffinity) affinityDrops.push([sid, undefined]);
      } else if (o.service.value.sessionAffinity) {
        // backends that no longer take new connections of this frontend lose their sticky clients
        const active = new Set(n.selection.active.map((b) => b.id));
        const lost = o.selection.active.map((b) => b.id).filter((id) => !active.has(id));
        if (lost.length) affinityDrops.push([sid, lost]);
      }
    }
    await Promise.all([
      waitAll(r.backends, gone.backends, 'cm_backends cleanup'),
      waitAll(r.slots, gone.slots, 'cm_backend_slots cleanup'),
      waitAll(r.maglev, gone.maglev, 'cm_maglev cleanup'),
      waitAll(r.revnat, gone.revnat, 'cm_revnat cleanup'),
    ]);
    if (affinityDrops.length) {
      try {
        const m = this.o.maps().affinity;
        for (const [sid, ids] of affinityDrops) this.gcStats.affinityDeleted += affinityMap.removeForBackends(m, sid, ids);
      } catch (err) {
        this.error(`cm_affinity cleanup failed: ${(err as Error).message}`);
      }
    }
    // 4. the hint, now that what went is gone
    this.hintSettle();
  }

  /** Sets the hint's bits of @plans' VIPs and backends (cm_lb_hint, bpf/lib/lb.h); on failure, lookups everywhere. */
  private hintAdd(plans: Iterable<FrontendPlan>): void {
    try {
      lbHintMap.add(this.o.maps().lbHint, hintAddresses(plans));
    } catch (err) {
      this.error(`cm_lb_hint: ${(err as Error).message}; every address is looked up`);
      try {
        lbHintMap.invalidate(this.o.maps().lbHint);
      } catch {
        // the same map failed twice: the error above is what there is to say
      }
    }
  }

  /**
   * The hint rewritten to exactly what the maps may hold: every programmed
   * frontend once the agent may prune (what it did not program goes), else
   * what cm_services and cm_backends hold now (entries from before a
   * restart whose sources have not synced, e.g. a remote cluster's
   * backends, keep their bits and their translation), and the programmed
   * frontends too (an entry whose write is still being retried).
   */
  private hintSettle(): void {
    try {
      const m = this.o.maps();
      const held: { vips: string[]; backends: string[] } = { vips: [], backends: [] };
      if (this.o.pruneBlocker() !== null) {
        for (const [k] of servicesMap.entries(m.services)) held.vips.push(k.vip);
        for (const [, v] of backendsMap.entries(m.backends)) held.backends.push(v.ip);
      }
      // (from the counts: an apply costs what it changed, not every programmed address hashed again)
      lbHintMap.writeValue(m.lbHint, this.hintCounts.encode(held), lbHintMap.read(m.lbHint));
    } catch (err) {
      this.error(`cm_lb_hint: ${(err as Error).message}`);
    }
  }

  /** Ids adopted from the maps that nothing uses once every source has synced. */
  private releaseUnusedIds(): void {
    if (this.idsReleased || this.o.pruneBlocker() !== null || !this.canProgram() || this.dirty.size > 0) return;
    this.idsReleased = true;
    const usedFrontends = new Set<string>();
    for (const p of this.programmed.values()) for (const f of p.plans) usedFrontends.add(frontendKey(f.service.key));
    for (const [k] of [...this.serviceIds.entries()]) if (!usedFrontends.has(k)) this.serviceIds.release(k);
    for (const [k, id] of [...this.backendIds.entries()]) if (!this.backendUsers.has(id)) this.backendIds.release(k);
  }
}


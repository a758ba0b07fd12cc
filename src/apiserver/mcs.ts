// The Multi-Cluster Services controller of the apiserver (issue 18), run when
// the cluster source is the Kubernetes API (--kubeconfig). Level-triggered,
// driven by changes: a round reads what is (ServiceExports, Services,
// Namespaces, ServiceImports, EndpointSlices of its cluster; the exports every
// remote cluster published in its kvstore), computes what should be
// (src/mcs/plan.ts) and writes the difference. A round runs when a watch sees
// a change to something it reads (Kubernetes watches of those kinds; etcd
// watches of each remote's serviceexports, derived services, cluster-config
// and serviceexports canary), shortly after (changes come in bursts), and
// every resync interval anyway (a safety net for a missed event). Rounds
// write:
//   - this cluster's valid exports under cilium/state/serviceexports/v1/<cluster>/
//     (leased, with a synced canary, stale keys of a previous run pruned);
//   - the Valid, Ready and Conflict conditions of each local ServiceExport;
//   - per merged name whose namespace exists here: the derived global Service
//     (the VIP the agents balance over every exporting cluster's backends)
//     and the ServiceImport (spec.ips = that VIP, ports, type; status.clusters);
//   - derived Services and ServiceImports it made that are no longer wanted
//     are deleted (the last export gone: the import goes).
// Remote clusters are read through the same per-cluster files the agents use
// (--clustermesh-config-dir), with the read-only `remote` user; a remote that
// cannot be read keeps its last known exports (as the agents keep a remote's
// state during an outage) and is reported in status(). A remote's exports are
// merged only once its cluster-config advertises serviceExportsEnabled and its
// serviceexports synced canary is present (until then its last merged set, or
// none): a remote still writing its first exports is not merged from a part.
import type { Logger } from 'pino';
import { scanConfigDir, toConnectionConfig } from '../clustermesh/config.ts';
import { KvClient, type WatchHandle } from '../kvstore/client.ts';
import { KubeApiError, type KubeHttp, type RawWatchEvent } from '../sources/kubernetes/http.ts';
import { clusterConfigKey, serviceKey, servicesPrefix } from '../clustermesh/keys.ts';
import { decodeClusterConfig, decodeService, type WireSource } from '../clustermesh/wire.ts';
import { parseExportSpec, remoteExportsReadiness, serviceExportsClusterPrefix, serviceExportsSyncedKey, type ExportSpec } from '../mcs/export.ts';
import type { McsImportView } from '../mcs/view.ts';
import {
  derivedServiceName,
  endpointsOfClusterService,
  endpointsOfSlices,
  MANAGED_BY,
  MANAGED_BY_LABEL,
  MCS_API_VERSION,
  planImportSlices,
  planMcs,
  SERVICE_NAME_LABEL,
  SLICE_MANAGED_BY_LABEL,
  withTransitions,
  type ClusterEndpoints,
  type DerivedServiceSpec,
  type ImportSliceSpec,
  type ImportPlan,
  type KubeCondition,
  type LocalExport,
  type LocalService,
  type McsPlan,
} from '../mcs/plan.ts';
import { sleep, systemClock, type Clock } from '../util/clock.ts';
import type { PrefixExport } from './export.ts';

const MCS_PATH = `/apis/${MCS_API_VERSION}`;
/** How often the CRDs are looked for while neither is served. */
export const CRD_ABSENT_RETRY_MS = 15_000;
/** After a change is seen, wait this long for more before the round (one round for a burst). */
export const MCS_DEBOUNCE_MS = 100;
/** A failed watch is started again after this long (a round runs then too: events may have been missed). */
const WATCH_RETRY_MS = 1000;
const exportsPath = (ns?: string, name?: string): string => (ns ? `${MCS_PATH}/namespaces/${ns}/serviceexports${name ? `/${name}` : ''}` : `${MCS_PATH}/serviceexports`);
const importsPath = (ns?: string, name?: string): string => (ns ? `${MCS_PATH}/namespaces/${ns}/serviceimports${name ? `/${name}` : ''}` : `${MCS_PATH}/serviceimports`);
const servicesPath = (ns?: string, name?: string): string => (ns ? `/api/v1/namespaces/${ns}/services${name ? `/${name}` : ''}` : '/api/v1/services');
const slicesPath = (ns?: string, name?: string): string => (ns ? `/apis/discovery.k8s.io/v1/namespaces/${ns}/endpointslices${name ? `/${name}` : ''}` : '/apis/discovery.k8s.io/v1/endpointslices');

type Obj = Record<string, unknown>;
const rec = (v: unknown): Obj => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
const strMap = (v: unknown): Record<string, string> => Object.fromEntries(Object.entries(rec(v)).filter(([, x]) => typeof x === 'string')) as Record<string, string>;
const metaOf = (o: unknown): { namespace: string; name: string; labels: Record<string, string>; annotations: Record<string, string>; creationTimestamp: string } => {
  const m = rec(rec(o).metadata);
  return { namespace: str(m.namespace) ?? '', name: str(m.name) ?? '', labels: strMap(m.labels), annotations: strMap(m.annotations), creationTimestamp: str(m.creationTimestamp) ?? '' };
};
const conditionsOf = (o: unknown): KubeCondition[] =>
  (Array.isArray(rec(rec(o).status).conditions) ? (rec(o).status as { conditions: unknown[] }).conditions : []).map((c) => {
    const r = rec(c);
    return { type: str(r.type) ?? '', status: (str(r.status) ?? 'Unknown') as KubeCondition['status'], reason: str(r.reason) ?? '', message: str(r.message) ?? '', ...(str(r.lastTransitionTime) ? { lastTransitionTime: str(r.lastTransitionTime)! } : {}) };
  });

/** A Service as the API returns it, in the planner's terms. */
export function localServiceOf(o: unknown): LocalService {
  const m = metaOf(o);
  const spec = rec(rec(o).spec);
  const timeout = rec(rec(rec(spec.sessionAffinityConfig).clientIP)).timeoutSeconds;
  return {
    namespace: m.namespace,
    name: m.name,
    type: str(spec.type) ?? 'ClusterIP',
    clusterIP: str(spec.clusterIP),
    ports: (Array.isArray(spec.ports) ? spec.ports : []).map((p) => {
      const r = rec(p);
      const protocol = (str(r.protocol) ?? 'TCP') as 'TCP' | 'UDP' | 'SCTP';
      const tp = typeof r.targetPort === 'number' || typeof r.targetPort === 'string' ? r.targetPort : undefined;
      return { ...(str(r.name) ? { name: str(r.name)! } : {}), protocol, port: Number(r.port), ...(tp !== undefined ? { targetPort: tp } : {}) };
    }),
    selector: spec.selector === undefined || spec.selector === null ? undefined : strMap(spec.selector),
    sessionAffinity: str(spec.sessionAffinity) === 'ClientIP' ? 'ClientIP' : 'None',
    affinityTimeoutSeconds: typeof timeout === 'number' ? timeout : undefined,
    labels: m.labels,
    annotations: m.annotations,
  };
}

const sameConditions = (a: readonly KubeCondition[], b: readonly KubeCondition[]): boolean =>
  a.length === b.length && a.every((c) => b.some((d) => d.type === c.type && d.status === c.status && d.reason === c.reason && d.message === c.message));

const affinityConfig = (timeout: number | undefined): Obj | null => (timeout !== undefined ? { clientIP: { timeoutSeconds: timeout } } : null);

/** The fields of a derived Service this controller owns (a merge patch: null removes). */
function derivedBody(d: DerivedServiceSpec, current: LocalService | undefined): Obj {
  const nulls = (now: Record<string, string> | undefined, want: Record<string, string> | undefined, keep: (k: string) => boolean = () => false): Record<string, string | null> => ({
    ...Object.fromEntries(Object.keys(now ?? {}).filter((k) => !keep(k) && !(want && k in want)).map((k) => [k, null])),
    ...(want ?? {}),
  });
  return {
    metadata: {
      labels: { [MANAGED_BY_LABEL]: MANAGED_BY, [SERVICE_NAME_LABEL]: d.importName },
      annotations: nulls(current?.annotations, d.annotations, (k) => !k.startsWith('service.cilium.io/')),
    },
    spec: {
      ...(d.headless ? { clusterIP: 'None' } : {}),
      ports: d.ports,
      selector: d.selector ? nulls(current?.selector, d.selector) : null,
      sessionAffinity: d.sessionAffinity,
      sessionAffinityConfig: d.sessionAffinity === 'ClientIP' ? affinityConfig(d.affinityTimeoutSeconds) : null,
    },
  };
}

function derivedDiffers(d: DerivedServiceSpec, s: LocalService): boolean {
  const norm = (p: { name?: string; protocol: string; port: number; targetPort?: number | string }) => `${p.name ?? ''}|${p.protocol}|${p.port}|${p.targetPort ?? p.port}`;
  const sel = (x: Record<string, string> | undefined) => JSON.stringify(Object.entries(x ?? {}).sort());
  const ann = (x: Record<string, string>) => JSON.stringify(Object.entries(x).filter(([k]) => k.startsWith('service.cilium.io/')).sort());
  return (
    s.ports.map(norm).join(',') !== d.ports.map(norm).join(',') ||
    sel(s.selector) !== sel(d.selector) ||
    ann(s.annotations) !== ann(d.annotations) ||
    s.sessionAffinity !== d.sessionAffinity ||
    (d.sessionAffinity === 'ClientIP' && s.affinityTimeoutSeconds !== d.affinityTimeoutSeconds) ||
    s.labels[SERVICE_NAME_LABEL] !== d.importName ||
    s.labels[MANAGED_BY_LABEL] !== MANAGED_BY
  );
}

/** spec of a ServiceImport (what CoreDNS's multicluster plugin reads: type, ips, ports). */
function importSpec(p: ImportPlan, vip: string | undefined): Obj {
  return {
    type: p.type,
    ips: p.type === 'ClusterSetIP' && vip && vip !== 'None' ? [vip] : [],
    ports: p.ports.map((q) => ({ ...(q.name ? { name: q.name } : {}), protocol: q.protocol, ...(q.appProtocol ? { appProtocol: q.appProtocol } : {}), port: q.port })),
    sessionAffinity: p.sessionAffinity,
    sessionAffinityConfig: p.sessionAffinity === 'ClientIP' ? affinityConfig(p.affinityTimeoutSeconds) : null,
  };
}

const canonical = (v: unknown): string => JSON.stringify(v, (_k, x: unknown) => (x && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.entries(x as Obj).filter(([, y]) => y !== null).sort(([a], [b]) => (a < b ? -1 : 1))) : x));

export interface McsExportStatus {
  namespace: string;
  name: string;
  conditions: KubeCondition[];
}
/** An import as `clustermesh status` shows it, and the derived Service behind its VIP. */
export interface McsImportStatus extends McsImportView {
  derivedService: string;
}
export interface McsStatus {
  /** False until the first complete round. */
  synced: boolean;
  rounds: number;
  /** The ServiceExport CRD is not served (the kinds are not installed). */
  crdAbsent: boolean;
  exports: McsExportStatus[];
  imports: McsImportStatus[];
  /** Per remote cluster: exports read, the last read's error when it failed, why its exports are not merged yet (waiting). */
  remotes: Record<string, { exports: number; error?: string; waiting?: string }>;
  lastError?: string;
}

export interface McsControllerOptions {
  cluster: string;
  kube: KubeHttp;
  /** This cluster's exports (a SyncStore under serviceExportsClusterPrefix(cluster)). */
  out: PrefixExport;
  remoteConfigDir?: string | undefined;
  /** Resync: a round at least this often even without a change seen. */
  intervalMs: number;
  clock?: Clock;
  log: Logger;
}

interface RemoteReader {
  fingerprint: string;
  kv: KvClient;
  exports: ExportSpec[];
  error?: string;
  /** Why the remote's exports are not read yet (remoteExportsReadiness). */
  waiting?: string;
  /** What its values are checked against (from its cluster-config), once read. */
  source?: WireSource;
  /** Its etcd watches (they kick a round); stop() ends them. */
  watch?: { stop: AbortController };
  /** Why its watches could not be set up, last time (logged once per message). */
  watchError?: string;
}

export class McsController {
  private readonly clock: Clock;
  private readonly stopCtl = new AbortController();
  private loop: Promise<void> | undefined;
  private readonly remotes = new Map<string, RemoteReader>();
  private readonly rejected = new Set<string>();
  /** Per headless import (ns/name), per exporting cluster: its endpoints as last read (kept while a read fails). */
  private readonly importEndpoints = new Map<string, Map<string, ClusterEndpoints>>();
  private last: { plan: McsPlan; imports: McsImportStatus[]; exports: McsExportStatus[] } | undefined;
  private rounds = 0;
  private crdAbsent = false;
  private lastError: string | undefined;
  private resolveFirst!: () => void;
  /** Resolves after the first complete round (own exports handed to the kvstore). */
  readonly initialSyncDone = new Promise<void>((r) => (this.resolveFirst = r));

  constructor(private readonly o: McsControllerOptions) {
    this.clock = o.clock ?? systemClock;
  }

  private dirty = false;
  private wakeCtl: AbortController | undefined;

  /** Something a round reads changed: run one soon. */
  kick(): void {
    this.dirty = true;
    this.wakeCtl?.abort();
  }

  /** Until a change is seen (then a short debounce) or the resync interval passed; false once stopped. */
  private async waitForChange(): Promise<boolean> {
    const resync = this.crdAbsent ? Math.max(this.o.intervalMs, CRD_ABSENT_RETRY_MS) : this.o.intervalMs;
    if (!this.dirty) {
      this.wakeCtl = new AbortController();
      await sleep(this.clock, resync, AbortSignal.any([this.stopCtl.signal, this.wakeCtl.signal]));
      this.wakeCtl = undefined;
    }
    if (this.dirty && !this.stopCtl.signal.aborted) await sleep(this.clock, MCS_DEBOUNCE_MS, this.stopCtl.signal);
    return !this.stopCtl.signal.aborted;
  }

  /** Follows one kind of this cluster's API; every relevant event kicks a round. */
  private async watchKube(path: string, relevant: (ev: RawWatchEvent) => boolean): Promise<void> {
    let failures = 0;
    while (!this.stopCtl.signal.aborted) {
      let seen = false;
      try {
        await this.o.kube.watch(path, { allowWatchBookmarks: 'true', timeoutSeconds: '300' }, this.stopCtl.signal, 330_000, (ev) => {
          seen = true;
          if (ev.type !== 'BOOKMARK' && relevant(ev)) this.kick();
        });
        failures = 0;
      } catch (err) {
        if (this.stopCtl.signal.aborted) return;
        if (failures++ === 0 && !(err instanceof KubeApiError && err.code === 404)) this.o.log.debug({ path, err: (err as Error).message }, 'MCS watch failed; starting it again');
      }
      if (seen) this.kick();
      // An unserved kind (the CRDs absent) is looked for as often as the round does.
      await sleep(this.clock, failures > 0 && this.crdAbsent ? CRD_ABSENT_RETRY_MS : WATCH_RETRY_MS, this.stopCtl.signal);
    }
  }

  private startKubeWatches(): void {
    const labels = (ev: RawWatchEvent): Record<string, string> => metaOf(ev.object).labels;
    const all = (): boolean => true;
    for (const [path, relevant] of [
      [exportsPath(), all],
      [importsPath(), all],
      [servicesPath(), all],
      ['/api/v1/namespaces', all],
      // Slices matter for headless imports only: those of an exported Service of one, and the controller's own.
      [
        slicesPath(),
        (ev: RawWatchEvent) => {
          const l = labels(ev);
          const owner = l['kubernetes.io/service-name'];
          return l[SLICE_MANAGED_BY_LABEL] === MANAGED_BY || (owner !== undefined && this.last?.plan.imports.get(`${metaOf(ev.object).namespace}/${owner}`)?.type === 'Headless');
        },
      ],
    ] as const) {
      void this.watchKube(path, relevant);
    }
  }

  /** Follows what a round reads of a remote cluster's etcd: its exports, derived services, cluster-config and exports canary. */
  private watchRemote(name: string, r: RemoteReader): void {
    const stop = new AbortController();
    r.watch = { stop };
    const derivedPrefix = `${servicesPrefix}${name}/`;
    void (async () => {
      while (!stop.signal.aborted && !this.stopCtl.signal.aborted) {
        const failed = new AbortController();
        const handles: WatchHandle[] = [];
        try {
          // The revision from a key the `remote` user may read (its role grants no range over the whole store).
          const from = String(BigInt((await r.kv.getWithRevision(clusterConfigKey(name))).revision) + 1n);
          const onError = (err: Error): void => {
            if (err.message !== r.watchError) this.o.log.warn({ cluster: name, err: err.message }, "a watch of a remote cluster's serviceexports ended; starting it again");
            r.watchError = err.message;
            failed.abort();
          };
          const onEvent = (ev: { key: string }): void => {
            delete r.watchError; // it works (again): the next failure is logged
            // Of the services, only derived ones (headless imports' endpoints).
            if (!ev.key.startsWith(derivedPrefix) || ev.key.slice(derivedPrefix.length).split('/')[1]?.startsWith('derived-')) this.kick();
          };
          handles.push(r.kv.watch(serviceExportsClusterPrefix(name), from, onEvent, onError));
          handles.push(r.kv.watch(derivedPrefix, from, onEvent, onError));
          handles.push(r.kv.watch(clusterConfigKey(name), from, onEvent, onError, { exact: true }));
          handles.push(r.kv.watch(serviceExportsSyncedKey(name), from, onEvent, onError, { exact: true }));
          // Changes between the last round's read and `from` would be missed.
          this.kick();
          await new Promise<void>((resolve) => {
            const signals = [failed.signal, stop.signal, this.stopCtl.signal];
            if (signals.some((s) => s.aborted)) return resolve();
            for (const s of signals) s.addEventListener('abort', () => resolve(), { once: true });
          });
        } catch (err) {
          // etcd not reachable: the round reports it too; try again, saying so once per kind of failure.
          const msg = (err as Error).message;
          if (msg !== r.watchError) this.o.log.warn({ cluster: name, err: msg }, "cannot watch a remote cluster's serviceexports; retrying (until then only the resync interval runs rounds)");
          r.watchError = msg;
        }
        await Promise.all(handles.map((h) => h.cancel().catch(() => undefined)));
        await sleep(this.clock, WATCH_RETRY_MS, AbortSignal.any([stop.signal, this.stopCtl.signal]));
      }
    })();
  }

  start(): void {
    this.loop ??= (async () => {
      this.startKubeWatches();
      do {
        this.dirty = false;
        try {
          await this.round();
          this.lastError = undefined;
        } catch (err) {
          if (this.stopCtl.signal.aborted) return;
          const msg = (err as Error).message;
          if (msg !== this.lastError) this.o.log.warn({ err: msg }, 'MCS round failed; retrying');
          this.lastError = msg;
        }
        // Without the CRDs there is nothing to read or write: look again less often (as the source retries an absent CRD).
      } while (await this.waitForChange());
    })();
  }

  async stop(): Promise<void> {
    this.stopCtl.abort();
    await this.loop;
    for (const r of this.remotes.values()) r.watch?.stop.abort();
    await Promise.all([...this.remotes.values()].map((r) => r.kv.close().catch(() => undefined)));
    this.remotes.clear();
  }

  status(): McsStatus {
    return {
      synced: this.rounds > 0,
      rounds: this.rounds,
      crdAbsent: this.crdAbsent,
      exports: this.last?.exports ?? [],
      imports: this.last?.imports ?? [],
      remotes: Object.fromEntries([...this.remotes].map(([n, r]) => [n, { exports: r.exports.length, ...(r.error ? { error: r.error } : {}), ...(r.waiting ? { waiting: r.waiting } : {}) }])),
      ...(this.lastError ? { lastError: this.lastError } : {}),
    };
  }

  private async listOrNone(path: string, labelSelector?: string): Promise<unknown[] | undefined> {
    try {
      return (await this.o.kube.list(path, labelSelector ? { labelSelector } : {}, this.stopCtl.signal)).items;
    } catch (err) {
      if (err instanceof KubeApiError && err.code === 404) return undefined;
      throw err;
    }
  }

  /** DELETE; already gone is fine. */
  private async deleteIfPresent(path: string): Promise<void> {
    try {
      await this.o.kube.request('DELETE', path);
    } catch (err) {
      if (!(err instanceof KubeApiError && err.code === 404)) throw err;
    }
  }

  private async readRemotes(): Promise<ExportSpec[]> {
    if (!this.o.remoteConfigDir) return [];
    const scan = await scanConfigDir(this.o.remoteConfigDir);
    for (const [name, r] of this.remotes) {
      if (scan.configs.get(name)?.fingerprint !== r.fingerprint) {
        this.remotes.delete(name);
        r.watch?.stop.abort();
        void r.kv.close().catch(() => undefined);
      }
    }
    await Promise.all(
      [...scan.configs.values()]
        .filter((c) => c.name !== this.o.cluster)
        .map(async (c) => {
          let r = this.remotes.get(c.name);
          if (!r) {
            r = { fingerprint: c.fingerprint, kv: new KvClient(toConnectionConfig(c, 5000)), exports: [] };
            this.remotes.set(c.name, r);
            if (this.loop) this.watchRemote(c.name, r);
          }
          try {
            const [config, canary] = await Promise.all([r.kv.get(clusterConfigKey(c.name)), r.kv.get(serviceExportsSyncedKey(c.name))]);
            const ready = remoteExportsReadiness(c.name, config?.value, canary !== undefined);
            delete r.error;
            if (!ready.ready) {
              if (r.waiting !== ready.why) this.o.log.info({ cluster: c.name, why: ready.why }, "not merging a remote cluster's serviceexports yet; keeping what was read before");
              r.waiting = ready.why;
              return;
            }
            delete r.waiting;
            const cfg = decodeClusterConfig(c.name, clusterConfigKey(c.name), config!.value);
            if (cfg.ok) r.source = { cluster: c.name, clusterId: cfg.value.id, maxConnectedClusters: cfg.value.capabilities.maxConnectedClusters };
            const pairs = (await r.kv.list(serviceExportsClusterPrefix(c.name))).pairs;
            const got: ExportSpec[] = [];
            for (const p of pairs) {
              try {
                got.push(parseExportSpec(p.key, p.value, c.name));
              } catch (err) {
                if (!this.rejected.has(p.key)) this.o.log.warn({ key: p.key, err: (err as Error).message }, 'remote serviceexport rejected');
                this.rejected.add(p.key);
              }
            }
            r.exports = got;
            delete r.error;
          } catch (err) {
            if (r.error !== (err as Error).message) this.o.log.warn({ cluster: c.name, err: (err as Error).message }, "reading a remote cluster's serviceexports failed; keeping what was read before");
            r.error = (err as Error).message;
          }
        }),
    );
    return [...this.remotes.values()].flatMap((r) => r.exports);
  }

  /** Each exporting cluster's endpoints of each headless import: the local exported Service's slices, a remote's published derived Service. */
  private async readImportEndpoints(plan: McsPlan): Promise<Map<string, Map<string, ClusterEndpoints>>> {
    for (const k of this.importEndpoints.keys()) if (plan.imports.get(k)?.type !== 'Headless') this.importEndpoints.delete(k);
    await Promise.all(
      [...plan.imports].filter(([, p]) => p.type === 'Headless').flatMap(([key, p]) => {
        let known = this.importEndpoints.get(key);
        if (!known) this.importEndpoints.set(key, (known = new Map()));
        for (const c of known.keys()) if (!p.clusters.includes(c)) known.delete(c);
        return p.clusters.map(async (cluster) => {
          try {
            if (cluster === this.o.cluster) {
              const items = await this.listOrNone(slicesPath(p.namespace), `kubernetes.io/service-name=${p.name}`);
              known.set(cluster, endpointsOfSlices(items ?? []));
              return;
            }
            const r = this.remotes.get(cluster);
            if (!r?.source) return;
            const key = serviceKey(cluster, p.namespace, derivedServiceName(p.name));
            const kv = await r.kv.get(key);
            if (kv === undefined) return void known.set(cluster, { endpoints: [], ports: [] });
            const v = decodeService(r.source, key, kv.value);
            if (!v.ok) throw new Error(`${key}: ${v.reason}: ${v.detail}`);
            known.set(cluster, endpointsOfClusterService(v.value));
          } catch (err) {
            this.o.log.warn({ import: key, cluster, err: (err as Error).message }, "reading an exporting cluster's endpoints failed; keeping what was read before");
          }
        });
      }),
    );
    return this.importEndpoints;
  }

  /** EndpointSlices of headless imports (planImportSlices): created, patched, deleted when no longer wanted. */
  private async syncImportSlices(plan: McsPlan): Promise<void> {
    const wanted = planImportSlices(plan.imports, await this.readImportEndpoints(plan));
    const current = new Map((await this.listOrNone(slicesPath(), `${SLICE_MANAGED_BY_LABEL}=${MANAGED_BY}`) ?? []).map((o) => [`${metaOf(o).namespace}/${metaOf(o).name}`, o]));
    for (const [key, s] of wanted) {
      const body = sliceBody(s);
      const cur = current.get(key);
      if (!cur) {
        await this.o.kube.request('POST', slicesPath(s.namespace), body);
        this.o.log.info({ slice: key, cluster: s.cluster, endpoints: s.endpoints.length }, 'import endpointslice created');
      } else if (sliceContent(cur) !== sliceContent(body)) {
        await this.o.kube.request('PATCH', slicesPath(s.namespace, s.name), { metadata: { labels: s.labels, annotations: s.annotations }, endpoints: s.endpoints, ports: s.ports });
      }
    }
    for (const [key, o] of current) {
      if (wanted.has(key)) continue;
      await this.deleteIfPresent(slicesPath(metaOf(o).namespace, metaOf(o).name));
      this.o.log.info({ slice: key }, 'import endpointslice deleted');
    }
  }

  /** One pass: read, plan, write the difference. */
  async round(): Promise<void> {
    const kube = this.o.kube;
    const [exportItems, importItems] = await Promise.all([this.listOrNone(exportsPath()), this.listOrNone(importsPath())]);
    const absent = exportItems === undefined && importItems === undefined;
    if (this.crdAbsent !== absent) this.o.log.info(absent ? 'the MCS API CRDs are not served; nothing to export or import' : 'the MCS API CRDs are served');
    this.crdAbsent = absent;
    if (absent) {
      this.o.out.markInitialSyncDone();
      for (const k of this.o.out.keys()) this.o.out.remove(k);
      this.last = undefined;
      if (this.rounds++ === 0) this.resolveFirst();
      return;
    }
    const [serviceItems, namespaceItems, remote] = await Promise.all([this.listOrNone(servicesPath()), this.listOrNone('/api/v1/namespaces'), this.readRemotes()]);
    const exports: LocalExport[] = (exportItems ?? []).map((o) => {
      const m = metaOf(o);
      return { namespace: m.namespace, name: m.name, creationTimestamp: m.creationTimestamp, conditions: conditionsOf(o) };
    });
    const services = new Map((serviceItems ?? []).map((o) => localServiceOf(o)).map((s) => [`${s.namespace}/${s.name}`, s]));
    const namespaces = new Set((namespaceItems ?? []).map((o) => metaOf(o).name));
    const plan = planMcs({ cluster: this.o.cluster, exports, services, namespaces, remote });

    // 1. Our exports in the kvstore.
    for (const [k, v] of plan.exports) this.o.out.set(k, v);
    for (const k of this.o.out.keys()) if (!plan.exports.has(k)) this.o.out.remove(k);
    this.o.out.markInitialSyncDone();

    // 2. Conditions of the local ServiceExports.
    const now = new Date(this.clock.now()).toISOString().replace(/\.\d+Z$/, 'Z');
    const exportStatus: McsExportStatus[] = [];
    for (const e of exports) {
      const wanted = withTransitions(plan.exportConditions.get(`${e.namespace}/${e.name}`) ?? [], e.conditions, now);
      exportStatus.push({ namespace: e.namespace, name: e.name, conditions: wanted });
      if (!sameConditions(wanted, e.conditions)) await kube.request('PATCH', `${exportsPath(e.namespace, e.name)}/status`, { status: { conditions: wanted } });
    }

    // 3. Derived Services and ServiceImports.
    const vips = new Map<string, string | undefined>();
    for (const [key, p] of plan.imports) {
      const d = p.derived;
      const current = services.get(`${d.namespace}/${d.name}`);
      let vip = current?.clusterIP;
      if (current && current.labels[MANAGED_BY_LABEL] !== MANAGED_BY) {
        this.o.log.warn({ service: `${d.namespace}/${d.name}` }, 'a Service not made by the MCS controller has the derived name; import left without a VIP');
        vips.set(key, undefined);
        continue;
      }
      if (current && (current.clusterIP === 'None') !== d.headless) {
        await this.deleteIfPresent(servicesPath(d.namespace, d.name));
        services.delete(`${d.namespace}/${d.name}`);
        vip = undefined;
      }
      if (!services.has(`${d.namespace}/${d.name}`)) {
        const created = await kube.request('POST', servicesPath(d.namespace), { apiVersion: 'v1', kind: 'Service', ...deepMerge({ metadata: { name: d.name, namespace: d.namespace } }, stripNulls(derivedBody(d, undefined))) });
        vip = localServiceOf(created).clusterIP;
        this.o.log.info({ service: `${d.namespace}/${d.name}`, import: key, vip }, 'derived service created');
      } else if (current && derivedDiffers(d, current)) {
        await kube.request('PATCH', servicesPath(d.namespace, d.name), derivedBody(d, current));
      }
      vips.set(key, vip);
    }
    for (const s of services.values()) {
      if (s.labels[MANAGED_BY_LABEL] !== MANAGED_BY || !s.name.startsWith('derived-')) continue;
      const k = `${s.namespace}/${s.labels[SERVICE_NAME_LABEL] ?? ''}`;
      if (plan.imports.get(k)?.derived.name === s.name) continue;
      await this.deleteIfPresent(servicesPath(s.namespace, s.name));
      this.o.log.info({ service: `${s.namespace}/${s.name}` }, 'derived service deleted (no export of its name left)');
    }

    const importStatus: McsImportStatus[] = [];
    const currentImports = new Map<string, unknown>((importItems ?? []).map((o) => [`${metaOf(o).namespace}/${metaOf(o).name}`, o]));
    if (importItems !== undefined) {
      for (const [key, p] of plan.imports) {
        const spec = importSpec(p, vips.get(key));
        const status = { clusters: p.clusters.map((cluster) => ({ cluster })) };
        const cur = currentImports.get(key);
        if (cur && metaOf(cur).labels[MANAGED_BY_LABEL] !== MANAGED_BY) continue; // someone else's
        if (!cur) {
          await kube.request('POST', importsPath(p.namespace), {
            apiVersion: MCS_API_VERSION,
            kind: 'ServiceImport',
            metadata: { name: p.name, namespace: p.namespace, labels: { [MANAGED_BY_LABEL]: MANAGED_BY, [SERVICE_NAME_LABEL]: p.name } },
            spec: stripNulls(spec),
          });
          await kube.request('PATCH', `${importsPath(p.namespace, p.name)}/status`, { status });
          this.o.log.info({ import: key, ips: spec.ips, clusters: p.clusters }, 'serviceimport created');
        } else {
          if (canonical(rec(cur).spec) !== canonical(spec)) await kube.request('PATCH', importsPath(p.namespace, p.name), { spec });
          if (canonical(rec(rec(cur).status).clusters) !== canonical(status.clusters)) await kube.request('PATCH', `${importsPath(p.namespace, p.name)}/status`, { status });
        }
        importStatus.push({
          namespace: p.namespace,
          name: p.name,
          type: p.type,
          ips: spec.ips as string[],
          ports: p.ports.map((q) => `${q.name ? `${q.name}:` : ''}${q.port}/${q.protocol}`),
          clusters: p.clusters,
          derivedService: p.derived.name,
        });
      }
      for (const [key, o] of currentImports) {
        if (plan.imports.has(key) || metaOf(o).labels[MANAGED_BY_LABEL] !== MANAGED_BY) continue;
        await this.deleteIfPresent(importsPath(metaOf(o).namespace, metaOf(o).name));
        this.o.log.info({ import: key }, 'serviceimport deleted (no export of its name left)');
      }
    }
    await this.syncImportSlices(plan);
    this.last = { plan, imports: importStatus, exports: exportStatus };
    if (this.rounds++ === 0) this.resolveFirst();
  }
}

/** The fields of an import's EndpointSlice this controller owns, comparable with what the API returns. */
const sliceContent = (o: unknown): string => {
  const m = metaOf(o);
  const r = rec(o);
  return canonical({
    labels: m.labels,
    annotations: m.annotations,
    addressType: r.addressType,
    endpoints: (Array.isArray(r.endpoints) ? r.endpoints : []).map((e) => ({ addresses: rec(e).addresses, ready: rec(rec(e).conditions).ready ?? true, hostname: rec(e).hostname ?? null })),
    ports: (Array.isArray(r.ports) ? r.ports : []).map((p) => ({ name: rec(p).name ?? '', protocol: rec(p).protocol ?? 'TCP', port: rec(p).port })),
  });
};
const sliceBody = (s: ImportSliceSpec): Obj => ({
  apiVersion: 'discovery.k8s.io/v1',
  kind: 'EndpointSlice',
  metadata: { name: s.name, namespace: s.namespace, labels: s.labels, annotations: s.annotations },
  addressType: 'IPv4',
  endpoints: s.endpoints,
  ports: s.ports,
});

function stripNulls(o: Obj): Obj {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== null).map(([k, v]) => [k, v && typeof v === 'object' && !Array.isArray(v) ? stripNulls(v as Obj) : v]));
}

function deepMerge(a: Obj, b: Obj): Obj {
  const out: Obj = { ...a };
  for (const [k, v] of Object.entries(b)) out[k] = v && typeof v === 'object' && !Array.isArray(v) && out[k] && typeof out[k] === 'object' ? deepMerge(out[k] as Obj, v as Obj) : v;
  return out;
}

// `clustermesh apiserver`: the composition root. Reads the cluster source and
// publishes the cluster's state into its mesh kvstore (ARCHITECTURE §4). The
// logic lives in export.ts, identities.ts and heartbeat.ts.
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import pino, { type Logger } from 'pino';
import { sleep, systemClock, type Clock } from '../util/clock.ts';
import { identitiesPrefix, ipPrefix, nodesClusterPrefix, servicesClusterPrefix, syncedKey, writerKey, type SyncedPrefixName } from '../clustermesh/keys.ts';
import { IdentityAllocator } from '../identity/allocator.ts';
import { KvClient } from '../kvstore/client.ts';
import { KvError } from '../kvstore/types.ts';
import { SyncStore, type SyncStoreStatus } from '../kvstore/sync-store.ts';
import type { KvConnectionConfig } from '../kvstore/types.ts';
import { serviceBackendInput, type ClusterSource, type Unsubscribe } from '../sources/index.ts';
import { openLocalSource } from '../sources/local.ts';
import { exportIps, exportNodes, exportServices, PrefixExport, type ExportCluster } from './export.ts';
import { Heartbeat } from './heartbeat.ts';
import { PodIdentities } from './identities.ts';
import { apiserverReady, apiserverRegistry } from './metrics.ts';
import { loadEtcdConfig, type ApiserverConfig } from './options.ts';
import { startMetricsServer } from '../util/metrics.ts';
import { serviceExportsClusterPrefix, serviceExportsSyncedKey } from '../mcs/export.ts';
import { KubeHttp } from '../sources/kubernetes/http.ts';
import { readKubeAccess } from '../sources/kubernetes/kube-access.ts';
import { McsController, type McsStatus } from './mcs.ts';
import { KvstoreMesh, type KvstoreMeshStatus } from './kvstoremesh.ts';

/**
 * The MCS controller's resync: a round at least this often. Rounds are driven
 * by watches (a change seen: a round 0.1 s later); this is the safety net for
 * a missed event.
 */
export const MCS_INTERVAL_MS = 30_000;

/** The user the apiserver's identity references are held under. */
export const APISERVER_IDENTITY_USER = 'apiserver';

export interface ApiserverDeps {
  /** Use this instead of reading cfg.etcdConfigFile. */
  connection?: KvConnectionConfig;
  /** MCS controller resync interval (default MCS_INTERVAL_MS). */
  mcsIntervalMs?: number;
  /** The cluster source (default: the Kubernetes API, Endpoint objects from the same etcd: openLocalSource). */
  source?: ClusterSource;
  clock?: Clock;
  logger?: Logger;
  /** Aborts a start still waiting for etcd: startApiserver then rejects, leaving nothing running. */
  signal?: AbortSignal;
  /**
   * Runs once the metrics endpoint serves and before the first write (phase
   * etcd-bootstrap): the command sets up etcd's roles and users with
   * --etcd-bootstrap-config here. Its rejection fails the start; `signal`
   * aborts with the start.
   */
  bootstrap?: (signal: AbortSignal) => Promise<void>;
}

/**
 * Where a start is: setting up etcd (--etcd-bootstrap-config), claiming the
 * writer key (the first write: waits for etcd), the first listing and export
 * (up to the synced canaries), ready. Served as clustermesh_apiserver_phase.
 */
export type ApiserverPhase = 'etcd-bootstrap' | 'claiming' | 'exporting' | 'ready';
export const APISERVER_PHASES: readonly ApiserverPhase[] = ['etcd-bootstrap', 'claiming', 'exporting', 'ready'];

export interface ApiserverStatus {
  cluster: string;
  clusterId: number;
  /** The cluster source: `kubernetes <kubeconfig> <server>; …`. */
  source: string;
  synced: boolean;
  heartbeats: number;
  exported: { nodes: number; ip: number; services: number };
  identities: ReturnType<PodIdentities['status']>;
  stores: Record<SyncedPrefixName, SyncStoreStatus>;
  /** The Multi-Cluster Services controller (only with --kubeconfig). */
  mcs?: McsStatus;
  /** The cache tier (only with --kvstoremesh). */
  kvstoremesh?: KvstoreMeshStatus;
}

export interface Apiserver {
  /** Resolves when cluster-config is written and every synced canary is written. */
  readonly ready: Promise<void>;
  status(): ApiserverStatus;
  /** Where GET /metrics is served (null: nowhere, see metricsError). */
  readonly metricsAddress: string | null;
  readonly metricsError: string | null;
  /** Stops exporting. Keys stay on the session lease until it expires (default 15 min), so a restart within the TTL loses nothing. */
  stop(): Promise<void>;
}

export async function startApiserver(cfg: ApiserverConfig, deps: ApiserverDeps = {}): Promise<Apiserver> {
  const log = deps.logger ?? pino({ name: 'clustermesh-apiserver', level: cfg.logLevel });
  const clock = deps.clock ?? systemClock;
  const connection = deps.connection ?? (await loadEtcdConfig(cfg.etcdConfigFile));
  const kv = new KvClient(connection, { sessionTtlSeconds: cfg.sessionTtlSeconds });
  const cluster: ExportCluster = { name: cfg.clusterName, id: cfg.clusterId, maxConnectedClusters: cfg.maxConnectedClusters };
  const stopCtl = new AbortController();
  deps.signal?.addEventListener('abort', () => stopCtl.abort(), { once: true });
  const cleanups: (() => unknown)[] = [];
  const kvError = (what: string) => (err: unknown) => log.warn({ err: (err as Error).message }, what);
  // A newer apiserver of this cluster claimed the writer key (an upgrade overlap): our writes change
  // nothing from then on (KvClient.setWriteFence); said once, not retried as if etcd were down.
  let superseded = false;
  const writeError = (err: unknown, what: string, fields: Record<string, unknown> = {}): void => {
    if (err instanceof KvError && err.kind === 'superseded') {
      if (!superseded) log.warn({ err: err.message }, 'a newer apiserver of this cluster took over: this one writes nothing more (stop it)');
      superseded = true;
      return;
    }
    log.warn({ ...fields, err: (err as Error).message }, what);
  };
  // The Kubernetes API is the source (cfg.kubeconfig, else KUBECONFIG or the in-cluster service account), unless a test injects a source without one.
  const kubeApi = cfg.kubeconfig !== undefined || deps.source === undefined;

  // Before any write: this process is the cluster's writer. Every later write of ours is fenced
  // on the claim, so of two apiservers running at once (an upgrade overlap) only the newer writes,
  // and every key ends on its session lease, none on the lease of the one about to stop
  // (where it would expire with that lease, and every remote drop what it names).
  const writer = `${hostname()}/${process.pid}/${randomUUID()}`;
  const heartbeat = new Heartbeat({
    kv,
    claim: async () => {
      await kv.put(writerKey(cfg.clusterName), writer);
      kv.setWriteFence(writerKey(cfg.clusterName), writer);
      log.info({ key: writerKey(cfg.clusterName), writer }, 'writer of the cluster');
    },
    cluster: cfg.clusterName,
    clusterId: cfg.clusterId,
    maxConnectedClusters: cfg.maxConnectedClusters,
    serviceExportsEnabled: kubeApi,
    intervalMs: cfg.heartbeatIntervalMs,
    clock,
    onError: (err) => writeError(err, 'heartbeat / cluster-config write failed'),
  });

  const prefixes: Record<SyncedPrefixName, string> = {
    nodes: nodesClusterPrefix(cfg.clusterName),
    ip: ipPrefix,
    services: servicesClusterPrefix(cfg.clusterName),
    identities: identitiesPrefix,
  };
  const stores = Object.fromEntries(
    (Object.keys(prefixes) as SyncedPrefixName[]).map((name) => [
      name,
      new SyncStore(kv, {
        canaryKey: syncedKey(cfg.clusterName, name),
        prefix: prefixes[name],
        clock,
        onError: (err, key) => writeError(err, 'kvstore write failed; retrying', { key }),
      }),
    ]),
  ) as Record<SyncedPrefixName, SyncStore>;

  // ---- Prometheus metrics (read at scrape time), served from the start (an etcd
  // that is down at start shows as kvstore_connected 0 and its phase); a port in use is reported, not fatal.
  let exports: { status: () => ApiserverStatus; errors: () => Record<'nodes' | 'ip' | 'services' | 'identities', number> } | undefined;
  let phase: ApiserverPhase = deps.bootstrap ? 'etcd-bootstrap' : 'claiming';
  let metricsAddress: string | null = null;
  let metricsError: string | null = null;
  if (cfg.metricsAddress !== '') {
    const registry = apiserverRegistry({
      phase: () => phase,
      status: () => exports?.status(),
      exportErrors: () => exports?.errors() ?? {},
      heartbeat: () => ({ writes: heartbeat.count, failures: heartbeat.failures, lastRoundOk: heartbeat.lastRoundOk }),
    });
    try {
      const server = await startMetricsServer(cfg.metricsAddress, [registry], { ready: () => apiserverReady(phase) });
      metricsAddress = server.address;
      cleanups.push(() => server.close());
      log.info({ address: server.address }, 'metrics served on /metrics');
    } catch (err) {
      metricsError = `${cfg.metricsAddress}: ${(err as Error).message}`;
      log.warn({ address: cfg.metricsAddress, err: (err as Error).message }, 'metrics endpoint not started');
    }
  }

  const allocator = new IdentityAllocator({
    kv,
    cluster: cfg.clusterName,
    clusterId: cfg.clusterId,
    maxConnectedClusters: cfg.maxConnectedClusters,
    user: APISERVER_IDENTITY_USER,
    gracePeriodMs: cfg.identityGcGraceMs,
    clock,
    onError: (err) => writeError(err, 'identity reference maintenance failed'),
  });
  // The Kubernetes API, with Endpoint objects from etcd.
  // A start that fails from here on leaves nothing running (heartbeat, metrics endpoint, etcd client).
  /** fn until it succeeds (etcd may be down at start), with backoff; throws once stopped. */
  const retry = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    let backoff = 200;
    for (;;) {
      try {
        return await fn();
      } catch (err) {
        kvError(`${what} failed; retrying`)(err);
        if (!(await sleep(clock, backoff, stopCtl.signal))) throw err;
        backoff = Math.min(backoff * 2, 10_000);
      }
    }
  };
  const failStart = async (err: unknown): Promise<never> => {
    stopCtl.abort();
    await heartbeat.stop();
    await Promise.all(cleanups.map((c) => c()));
    await Promise.all(Object.values(stores).map((s) => s.stop()));
    await allocator.close();
    await kv.close();
    throw err;
  };
  if (deps.bootstrap) {
    log.info('setting up etcd (--etcd-bootstrap-config)');
    await deps.bootstrap(stopCtl.signal).catch(failStart);
    phase = 'claiming';
  }
  // The claim is the first write of the heartbeat's first round: while etcd is down it counts as failed rounds.
  heartbeat.start();
  await new Promise<void>((resolve, reject) => {
    const stopped = () => reject(new Error(`stopped before claiming ${writerKey(cfg.clusterName)}`));
    if (stopCtl.signal.aborted) stopped();
    stopCtl.signal.addEventListener('abort', stopped, { once: true });
    void heartbeat.claimed.then(() => {
      stopCtl.signal.removeEventListener('abort', stopped);
      resolve();
    });
  }).catch(failStart);
  phase = 'exporting';

  let local: { source: ClusterSource; description: string };
  try {
    local = deps.source
      ? { source: deps.source, description: deps.source.type }
      : openLocalSource(kv, {
          kubeconfig: cfg.kubeconfig,
          onProblem: (p) => log.warn({ kind: p.kind, key: p.key }, p.message),
          onError: (kind, err) => log.warn({ kind, err: err.message }, 'cluster source watch failed; re-listing'),
          onHandlerError: (kind, err) => log.error({ kind, err: (err as Error).message }, 'export handler failed'),
          clock,
        });
  } catch (err) {
    return failStart(err);
  }
  const source = local.source;
  log.info({ source: local.description }, 'cluster source');

  // Keys already under our prefixes (a previous run): deleted if not desired after the initial sync.
  const existing = async (prefix: string): Promise<Set<string>> => new Set((await retry(`listing ${prefix}`, () => kv.list(prefix))).pairs.map((p) => p.key));
  const [nodesExisting, ipExisting, servicesExisting] = await Promise.all([existing(prefixes.nodes), existing(prefixes.ip), existing(prefixes.services)]).catch(failStart);
  const nodesOut = new PrefixExport('nodes', stores.nodes, nodesExisting);
  const ipOut = new PrefixExport('ip', stores.ip, ipExisting);
  const servicesOut = new PrefixExport('services', stores.services, servicesExisting);
  const identities = new PodIdentities({
    cluster: cfg.clusterName,
    pods: source.pods,
    namespaces: source.namespaces,
    allocator,
    canary: stores.identities,
    log,
    clock,
  });

  const unsubscribe: Unsubscribe[] = [
    exportNodes(cluster, source.nodes, nodesOut, log),
    exportIps(cluster, source.endpoints, source.pods, ipOut, log),
    exportServices(cluster, source.services, serviceBackendInput(source), servicesOut, log),
  ];
  identities.start();
  await source.start().catch(async (err: unknown) => {
    for (const off of unsubscribe) off();
    identities.stop();
    return failStart(err);
  });

  // Multi-Cluster Services (issue 18): ServiceExports and ServiceImports are CRDs of the Kubernetes API.
  let mcs: McsController | undefined;
  if (kubeApi) {
    const mcsStore = new SyncStore(kv, {
      canaryKey: serviceExportsSyncedKey(cfg.clusterName),
      prefix: serviceExportsClusterPrefix(cfg.clusterName),
      clock,
      onError: (err, key) => writeError(err, 'kvstore write failed; retrying', { key }),
    });
    mcs = new McsController({
      cluster: cfg.clusterName,
      kube: new KubeHttp(readKubeAccess(cfg.kubeconfig !== undefined ? { kubeconfig: cfg.kubeconfig } : {}).access),
      out: new PrefixExport('serviceexports', mcsStore, await existing(serviceExportsClusterPrefix(cfg.clusterName))),
      remoteConfigDir: cfg.clustermeshConfigDir,
      intervalMs: deps.mcsIntervalMs ?? MCS_INTERVAL_MS,
      clock,
      log: log.child({ controller: 'mcs' }),
    });
    mcs.start();
    const controller = mcs;
    cleanups.push(async () => {
      await controller.stop();
      await mcsStore.stop();
    });
  }

  // The cache tier: every remote imported once, written under cilium/cache/ for this cluster's agents.
  let cacheTier: KvstoreMesh | undefined;
  if (cfg.kvstoremesh && cfg.clustermeshConfigDir !== undefined) {
    const tier = new KvstoreMesh({
      kv,
      local: cluster,
      configDir: cfg.clustermeshConfigDir,
      logger: log.child({ component: 'kvstoremesh' }),
      clock,
      onError: (err, key) => writeError(err, 'kvstoremesh cache write failed; retrying', { key }),
    });
    cacheTier = tier;
    await retry('starting the cache tier (kvstoremesh)', () => tier.start()).catch(failStart);
    cleanups.push(() => tier.stop());
  }

  // Identity gc: unreferenced identities of our range go after the grace period.
  const gcLoop = (async () => {
    while (await sleep(clock, cfg.identityGcIntervalMs, stopCtl.signal)) {
      try {
        const r = await allocator.gc();
        if (r.deleted.length > 0) log.info({ deleted: r.deleted }, 'unused identities deleted');
      } catch (err) {
        kvError('identity gc failed')(err);
      }
    }
  })();
  cleanups.push(() => gcLoop);

  const ready = (async () => {
    await Promise.all([
      heartbeat.firstWrite,
      nodesOut.initialSyncDone,
      ipOut.initialSyncDone,
      servicesOut.initialSyncDone,
      identities.initialSyncDone,
    ]);
    await Promise.all(Object.values(stores).map((s) => s.flush()));
    phase = 'ready';
    log.info({ cluster: cfg.clusterName, clusterId: cfg.clusterId }, 'initial export complete; synced canaries written');
  })();
  ready.catch(() => undefined);

  const status = (): ApiserverStatus => ({
    cluster: cfg.clusterName,
    clusterId: cfg.clusterId,
    source: local.description,
    synced: Object.values(stores).every((s) => s.synced),
    heartbeats: heartbeat.count,
    exported: { nodes: nodesOut.size, ip: ipOut.size, services: servicesOut.size },
    identities: identities.status(),
    stores: Object.fromEntries(Object.entries(stores).map(([k, s]) => [k, s.status()])) as Record<SyncedPrefixName, SyncStoreStatus>,
    ...(mcs ? { mcs: mcs.status() } : {}),
    ...(cacheTier ? { kvstoremesh: cacheTier.status() } : {}),
  });

  exports = {
    status,
    errors: () => ({ nodes: nodesOut.errors, ip: ipOut.errors, services: servicesOut.errors, identities: identities.status().failures }),
  };

  let stopped: Promise<void> | undefined;
  return {
    ready,
    status,
    metricsAddress,
    metricsError,
    stop: () =>
      (stopped ??= (async () => {
        stopCtl.abort();
        for (const off of unsubscribe) off();
        identities.stop();
        if (!deps.source) await source.stop();
        await heartbeat.stop();
        await Promise.all(cleanups.map((c) => c()));
        await Promise.all(Object.values(stores).map((s) => s.stop()));
        await allocator.close();
        await kv.close();
      })()),
  };
}

// ClusterMesh: the remote clusters named by the config directory, and the
// state imported from them merged into typed observable caches. This is what
// the agent wires into its datapath.
//
//   config file added   → connect
//   config file changed → reconnect with the new config (data kept, resynced)
//   config file removed → disconnect and drain
//   stop()              → disconnect all, keep everything (datapath keeps forwarding)
//
// With `cache` (the agent's option clustermeshCache): the remotes are not dialed.
// The cluster's cache tier (src/apiserver/kvstoremesh.ts) imports them and
// writes them into the local etcd (keys.ts, cache layout); the remotes are the
// cached cluster-configs found there (one added → attach, one deleted → detach
// and drain), each read through the one local client.
//
// Merge rules:
//   nodes        "<cluster>/<node>"          one owner each
//   identities   id                           ranges of distinct cluster IDs are disjoint
//   ipcache      ip                           only an IP the remote owns (ownership.ts: in the
//                                             pod CIDRs its nodes announce, not in another
//                                             cluster's); if two remotes claim one IP, the
//                                             first claim wins until it is withdrawn
//   nodes        (ownership)                  a node whose address another cluster claimed
//                                             first is refused; a pod CIDR overlapping an
//                                             earlier claim is withheld (ipv4AllocCIDR null)
//   services     "<cluster>/<ns>/<name>"      as imported
//   globalServices "<ns>/<name>"              backends of the shared services of that
//                                             name, across remote clusters

import type { Registry } from 'prom-client';
import promClient from 'prom-client';
import pino from 'pino';
import { Cache, type ObservableMap } from './cache.ts';
import { systemClock, type Clock } from '../util/clock.ts';
import { ConfigDirWatcher, toConnectionConfig, type ConfigDirEvent, type RemoteClusterConfig } from './config.ts';
import {
  DEFAULT_BACKOFF,
  RemoteCluster,
  SyncSlots,
  type BackoffOptions,
  type ClusterIdRegistry,
  type LocalCluster,
  type Logger,
  type RemoteClusterStatus,
  type RemoteIdentity,
  type RemoteIpEntry,
  type RemoteNode,
  type RemoteService,
  type ServicePort,
} from './remote-cluster.ts';
import type { KvClient } from '../kvstore/client.ts';
import { WatchStore } from '../kvstore/watch-store.ts';
import { clusterConfigPrefix } from './keys.ts';
import type { KvConnectionConfig } from '../kvstore/types.ts';
import { isValidClusterId, isValidClusterName, type MaxConnectedClusters } from './wire.ts';
import { LOCAL, OwnershipRegistry, type OwnershipConflict } from './ownership.ts';

export type { RemoteIdentity, RemoteIpEntry, RemoteNode, RemoteService, RemoteClusterStatus };

/** An IP known in the mesh: what the ipcache map needs. */
export type IpCacheEntry = RemoteIpEntry;

export interface GlobalServiceBackend {
  cluster: string;
  ip: string;
  ports: ServicePort[];
}
/** A service name shared by remote clusters, with their backends merged. */
export interface GlobalService {
  namespace: string;
  name: string;
  /** Clusters exporting it (shared), sorted. */
  clusters: string[];
  backends: GlobalServiceBackend[];
}

export interface ClusterMeshOptions {
  localCluster: { name: string; id: number; maxConnectedClusters?: MaxConnectedClusters };
  /** One file per remote cluster (config.ts). */
  configDir: string;
  clock?: Clock;
  random?: () => number;
  logger?: Logger;
  registry?: Registry;
  backoff?: Partial<BackoffOptions>;
  /** Largest remote value accepted, bytes. Default 64 KiB. */
  maxValueBytes?: number;
  /** Per-request deadline towards remote etcds. Default 5000 ms. */
  requestTimeoutMs?: number;
  /** Periodic rescan of the config dir. Default 10 s. */
  rescanIntervalMs?: number;
  /** Use fs.watch on the config dir (default true). */
  useFsWatch?: boolean;
  connect?: (config: KvConnectionConfig) => KvClient;
  /** Report a remote stale when its heartbeat has not changed for this long (default 180 s). */
  heartbeatStaleMs?: number;
  /** How many remotes connect, or list a prefix for the first time in a session, at once (default 16). */
  syncConcurrency?: number;
  /** Read every remote from the cache tier through this client of the local etcd (not closed here); configDir is then unused. */
  cache?: { client: KvClient };
}

interface CompiledOptions {
  local: LocalCluster;
  configDir: string;
  clock: Clock;
  random: () => number;
  logger: Logger;
  registry: Registry | undefined;
  backoff: BackoffOptions;
  maxValueBytes: number | undefined;
  requestTimeoutMs: number;
  rescanIntervalMs: number;
  useFsWatch: boolean;
  connect: ((config: KvConnectionConfig) => KvClient) | undefined;
  heartbeatStaleMs: number | undefined;
  syncSlots: SyncSlots;
  cache: { client: KvClient } | undefined;
}

/** Remotes connecting or listing at once (SyncSlots): enough to keep the pipe full, few enough that no deadline runs out in our own queue. */
export const DEFAULT_SYNC_CONCURRENCY = 16;

function compile(o: ClusterMeshOptions): CompiledOptions {
  const max = o.localCluster.maxConnectedClusters ?? 255;
  if (!isValidClusterName(o.localCluster.name)) throw new Error(`clustermesh: invalid local cluster name ${JSON.stringify(o.localCluster.name)}`);
  if (!isValidClusterId(o.localCluster.id, max)) throw new Error(`clustermesh: local cluster ID ${o.localCluster.id} is outside 1..${max}`);
  return {
    local: { name: o.localCluster.name, id: o.localCluster.id, maxConnectedClusters: max },
    configDir: o.configDir,
    clock: o.clock ?? systemClock,
    random: o.random ?? Math.random,
    logger: o.logger ?? pino({ name: 'clustermesh', level: process.env.CLUSTERMESH_LOG_LEVEL ?? 'info' }),
    registry: o.registry,
    backoff: { ...DEFAULT_BACKOFF, ...o.backoff },
    maxValueBytes: o.maxValueBytes,
    requestTimeoutMs: o.requestTimeoutMs ?? 5000,
    rescanIntervalMs: o.rescanIntervalMs ?? 10_000,
    useFsWatch: o.useFsWatch ?? true,
    connect: o.connect,
    heartbeatStaleMs: o.heartbeatStaleMs,
    syncSlots: new SyncSlots(o.syncConcurrency ?? DEFAULT_SYNC_CONCURRENCY),
    cache: o.cache,
  };
}

export interface ClusterMeshStatus {
  localCluster: LocalCluster;
  configDir: string;
  /** Every remote is ready (true with no remotes). */
  ready: boolean;
  remotes: RemoteClusterStatus[];
  /** Config files that could not be used, by file. */
  configErrors: { file: string; error: string }[];
  counts: { nodes: number; identities: number; ipcache: number; services: number; globalServices: number };
  /** IPs claimed by more than one remote cluster. */
  ipConflicts: number;
  /** Address ownership between clusters (ownership.ts). */
  ownership: {
    /** Refused pod CIDRs and nodes, with the claim that stands against each. */
    conflicts: OwnershipConflict[];
    /** Clusters on either side of a conflict. */
    flagged: string[];
    /** Remote endpoint IPs refused, per cluster, and the first few with their reason. */
    refusedIps: { cluster: string; count: number; examples: { ip: string; reason: string }[] }[];
    /** Remotes whose nodes announce no pod CIDR (their IPs are checked only against other clusters' claims). */
    unverified: string[];
  };
}

interface Attached {
  remote: RemoteCluster;
  /** null: a remote of the cache tier. */
  config: RemoteClusterConfig | null;
  unsubscribe: (() => void)[];
}

const samePorts = (a: readonly ServicePort[], b: readonly ServicePort[]): boolean =>
  a.length === b.length && a.every((p, i) => p.name === b[i]!.name && p.port === b[i]!.port && p.protocol === b[i]!.protocol);

/** One cluster's part of a global service, unchanged? (Its own size, not the merge's.) */
const samePart = (a: readonly GlobalServiceBackend[], b: readonly GlobalServiceBackend[]): boolean =>
  a.length === b.length && a.every((x, i) => x.ip === b[i]!.ip && samePorts(x.ports, b[i]!.ports));

/**
 * A global service as published: the member clusters' parts, concatenated on
 * first read of `backends` (an own enumerable getter, so JSON and deep
 * equality see it). Built at every change of a member, read by the agent once
 * per reconcile round: with 254 members a flat copy at each change was
 * quadratic in clusters during the initial sync (issue 17).
 */
function mergedGlobalService(namespace: string, name: string, clusters: string[], parts: readonly (readonly GlobalServiceBackend[])[]): GlobalService {
  let flat: GlobalServiceBackend[] | undefined;
  return {
    namespace,
    name,
    clusters,
    get backends(): GlobalServiceBackend[] {
      if (!flat) {
        flat = [];
        for (const p of parts) for (const b of p) flat.push(b);
      }
      return flat;
    },
  };
}

/** The remotes' shared services of one "<ns>/<name>". */
interface SharedService {
  /** Names the global service (every member has the same namespace and name). */
  first: RemoteService;
  /** cluster → its backends as the global service lists them. */
  backends: Map<string, GlobalServiceBackend[]>;
  /** The member clusters, sorted. */
  clusters: string[];
}

/** Where `x` goes in the sorted `xs`. */
function sortedIndex(xs: readonly string[], x: string): number {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid]! < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

const meshesByRegistry = new WeakMap<Registry, Set<ClusterMesh>>();

/** `clustermesh_remote_refused_claims{source_cluster, kind}`: what each remote claimed that is not its own, read at scrape time. */
function ownershipGauge(registry: Registry): Set<ClusterMesh> {
  let meshes = meshesByRegistry.get(registry);
  if (meshes) return meshes;
  const set = (meshes = new Set());
  meshesByRegistry.set(registry, set);
  new promClient.Gauge({
    name: 'clustermesh_remote_refused_claims',
    help: 'Claims of remote clusters refused by address ownership: kind pod_cidr (overlaps an earlier claim), node (address of another cluster), endpoint_ip (not inside the remote\'s own pod CIDRs)',
    labelNames: ['source_cluster', 'kind'] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const m of set) {
        const o = m.status().ownership;
        for (const c of o.conflicts) this.inc({ source_cluster: c.cluster, kind: c.kind === 'pod-cidr' ? 'pod_cidr' : 'node' });
        for (const r of o.refusedIps) this.inc({ source_cluster: r.cluster, kind: 'endpoint_ip' }, r.count);
      }
    },
  });
  return meshes;
}

export class ClusterMesh {
  private readonly o: CompiledOptions;
  private readonly remotes = new Map<string, Attached>();
  private readonly idOwners = new Map<number, string>();
  private readonly configErrors = new Map<string, string>();
  private readonly watcher: ConfigDirWatcher;
  private started = false;
  /** The cached cluster-configs in the local etcd (cache mode). */
  private cacheConfigs: WatchStore | null = null;
  /** Serializes config events and start/stop. */
  private queue: Promise<void> = Promise.resolve();

  private readonly nodeCache = new Cache<string, RemoteNode>();
  private readonly identityCache = new Cache<number, RemoteIdentity>();
  private readonly ipCache = new Cache<string, IpCacheEntry>();
  private readonly serviceCache = new Cache<string, RemoteService>();
  /** Set only when a member's part or the members changed (updateGlobalService compares the one part). */
  private readonly globalServiceCache = new Cache<string, GlobalService>({ equals: (a, b) => a === b });
  /** ip → the claim, or the claims in arrival order when two or more clusters claim it; only entries the ownership
   * check accepted. (Nearly every IP has one claim: no array or Map per IP, which weighs on memory and GC at 250k.) */
  private readonly ipClaims = new Map<string, RemoteIpEntry | RemoteIpEntry[]>();
  /** Everything each remote announced: cluster → ip → entry (accepted or not). */
  private readonly announcedIps = new Map<string, Map<string, RemoteIpEntry>>();
  /** cluster → IPs accepted as inside the cluster's own pod CIDRs (not merely unverified). */
  private readonly verifiedIps = new Map<string, Set<string>>();
  /** cluster → ip → why it was refused. */
  private readonly refusedIps = new Map<string, Map<string, string>>();
  /** Every remote node as announced: cluster → node key → node. */
  private readonly announcedNodes = new Map<string, Map<string, RemoteNode>>();
  private readonly ownership = new OwnershipRegistry();
  /** "<ns>/<name>" → cluster → service. */
  private readonly servicesByName = new Map<string, SharedService>();

  /** "<cluster>/<node>" → node. */
  readonly nodes: ObservableMap<string, RemoteNode> = this.nodeCache;
  /** identity id → identity (labels). */
  readonly identities: ObservableMap<number, RemoteIdentity> = this.identityCache;
  /** endpoint IP ("ip/len" for a prefix entry) → identity, host IP (tunnel endpoint), cluster, named ports. */
  readonly ipcache: ObservableMap<string, IpCacheEntry> = this.ipCache;
  /** "<cluster>/<ns>/<name>" → service. */
  readonly services: ObservableMap<string, RemoteService> = this.serviceCache;
  /** "<ns>/<name>" → backends of the shared services of that name across remotes. */
  readonly globalServices: ObservableMap<string, GlobalService> = this.globalServiceCache;

  private readonly ids: ClusterIdRegistry = {
    claim: (cluster, id) => {
      const owner = this.idOwners.get(id);
      if (owner !== undefined && owner !== cluster) return `cluster ID ${id} is already used by remote cluster ${owner}`;
      for (const [i, c] of this.idOwners) if (c === cluster && i !== id) this.idOwners.delete(i);
      this.idOwners.set(id, cluster);
      return null;
    },
    release: (cluster) => {
      for (const [i, c] of [...this.idOwners]) if (c === cluster) this.idOwners.delete(i);
    },
  };

  constructor(options: ClusterMeshOptions) {
    this.o = compile(options);
    if (this.o.registry) ownershipGauge(this.o.registry).add(this);
    this.watcher = new ConfigDirWatcher(this.o.configDir, (ev) => this.enqueue(() => this.onConfig(ev)), {
      rescanIntervalMs: this.o.rescanIntervalMs,
      useFsWatch: this.o.useFsWatch,
      clock: this.o.clock,
    });
  }

  get localCluster(): LocalCluster {
    return this.o.local;
  }

  /** Reads the config dir, connects to every remote, keeps watching. Resumes after stop(). */
  async start(): Promise<void> {
    await this.enqueue(async () => {
      if (this.started) return;
      this.started = true;
      for (const a of this.remotes.values()) a.remote.start();
    });
    if (this.o.cache) this.watchCachedConfigs(this.o.cache.client);
    else await this.watcher.start();
  }

  /** Names of the remotes (configured or, in cache mode, found in the cache). */
  remoteNames(): string[] {
    return [...this.remotes.keys()];
  }

  private watchCachedConfigs(client: KvClient): void {
    if (this.cacheConfigs) return;
    const nameOf = (key: string): string | null => {
      const name = key.slice(clusterConfigPrefix.length);
      return name !== this.o.local.name && isValidClusterName(name) ? name : null;
    };
    this.cacheConfigs = new WatchStore(client, clusterConfigPrefix, {
      onEvent: (ev) => {
        const name = nameOf(ev.key);
        if (name === null) return;
        // A config without cached (a stale direct-mode leftover) is attached too and refused with the reason in its status.
        if (ev.kind === 'upsert') void this.enqueue(() => this.attach({ name, connection: null, config: null }));
        else void this.enqueue(() => this.detach(name));
      },
      onError: (err) => this.o.logger.warn({ err: err.message }, 'watching the cached cluster-configs failed; re-listing'),
      clock: this.o.clock,
      random: this.o.random,
    });
    this.cacheConfigs.start();
  }

  /** Disconnects from every remote; keeps everything imported. */
  async stop(): Promise<void> {
    this.watcher.stop();
    await this.stopCachedConfigs();
    await this.enqueue(async () => {
      this.started = false;
      await Promise.all([...this.remotes.values()].map((a) => a.remote.stop()));
    });
  }

  /** Disconnects and drains every remote (the mesh is torn down). */
  async close(): Promise<void> {
    if (this.o.registry) meshesByRegistry.get(this.o.registry)?.delete(this);
    this.watcher.stop();
    await this.stopCachedConfigs();
    await this.enqueue(async () => {
      this.started = false;
      for (const name of [...this.remotes.keys()]) await this.detach(name);
    });
  }

  private async stopCachedConfigs(): Promise<void> {
    const w = this.cacheConfigs;
    this.cacheConfigs = null;
    await w?.stop();
  }

  /** Rescans the config dir now (tests, `clustermesh connect`). */
  async rescan(): Promise<void> {
    await this.watcher.rescan();
    await this.queue;
  }

  remote(name: string): RemoteCluster | undefined {
    return this.remotes.get(name)?.remote;
  }

  /** Remotes whose prefixes have not all synced, by name (cheap: the agent asks before every prune). */
  unsyncedRemotes(): string[] {
    const out: string[] = [];
    for (const [name, a] of this.remotes) if (!a.remote.prefixesSynced) out.push(name);
    return out.sort();
  }

  /** Per remote cluster (by name) its brief state, and the config files not used: the part of status() an agent's Pod status summary shows, without building the rest. */
  brief(): { remotes: Array<ReturnType<RemoteCluster['brief']>>; configErrors: ClusterMeshStatus['configErrors'] } {
    return {
      remotes: [...this.remotes.values()].map((a) => a.remote.brief()).sort((a, b) => (a.name < b.name ? -1 : 1)),
      configErrors: [...this.configErrors].map(([file, error]) => ({ file, error })),
    };
  }

  status(): ClusterMeshStatus {
    const remotes = [...this.remotes.values()].map((a) => a.remote.status()).sort((a, b) => (a.name < b.name ? -1 : 1));
    let conflicts = 0;
    for (const claims of this.ipClaims.values()) if (Array.isArray(claims)) conflicts++;
    return {
      localCluster: { ...this.o.local },
      configDir: this.o.configDir,
      ready: remotes.every((r) => r.ready),
      remotes,
      configErrors: [...this.configErrors].map(([file, error]) => ({ file, error })),
      counts: {
        nodes: this.nodeCache.size,
        identities: this.identityCache.size,
        ipcache: this.ipCache.size,
        services: this.serviceCache.size,
        globalServices: this.globalServiceCache.size,
      },
      ipConflicts: conflicts,
      ownership: {
        conflicts: this.ownership.conflicts(),
        flagged: this.ownership.flaggedClusters(),
        refusedIps: [...this.refusedIps]
          .filter(([, m]) => m.size > 0)
          .map(([cluster, m]) => ({ cluster, count: m.size, examples: [...m].slice(0, 5).map(([ip, reason]) => ({ ip, reason })) }))
          .sort((a, b) => (a.cluster < b.cluster ? -1 : 1)),
        unverified: this.ownership.unverifiedClusters(),
      },
    };
  }

  /**
   * The local cluster's own nodes (pod CIDRs and addresses), which no remote
   * may claim. The agent sets them from its cluster's Node objects and itself.
   */
  setLocalNode(name: string, claims: { cidrs: readonly string[]; addresses: readonly string[] }): void {
    this.reevaluate(this.ownership.setNode(LOCAL, name, claims));
  }

  removeLocalNode(name: string): void {
    this.reevaluate(this.ownership.removeNode(LOCAL, name));
  }

  /** Resolves when every remote is ready (polls status; for tests and startup gates). */
  async waitReady(opts: { timeoutMs?: number; clusters?: string[] } = {}): Promise<void> {
    const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
    for (;;) {
      // Only the remotes' states: status() is O(entries) and this polls every 20 ms.
      const want = opts.clusters ?? [...this.remotes.keys()];
      if (want.every((n) => this.remotes.get(n)?.remote.ready === true)) return;
      if (Date.now() > deadline) {
        const st = this.status();
        throw new Error(`clustermesh: not ready after ${opts.timeoutMs ?? 30_000} ms: ${JSON.stringify(st.remotes.map((r) => [r.name, r.state, r.lastError]))}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  // -------------------------------------------------------------------------

  private enqueue(fn: () => Promise<void>): Promise<void> {
    const p = this.queue.then(fn, fn);
    this.queue = p.catch(() => {});
    return p;
  }

  private async onConfig(ev: ConfigDirEvent): Promise<void> {
    switch (ev.kind) {
      case 'invalid':
        this.configErrors.set(ev.file, ev.error.message);
        this.o.logger.error({ file: ev.file, field: ev.error.field }, ev.error.message);
        return;
      case 'add':
        this.configErrors.delete(ev.config.file);
        if (ev.cluster === this.o.local.name) {
          this.o.logger.info({ cluster: ev.cluster }, 'ignoring the config of the local cluster');
          return;
        }
        await this.attach({ name: ev.cluster, connection: toConnectionConfig(ev.config, this.o.requestTimeoutMs), config: ev.config });
        return;
      case 'change': {
        this.configErrors.delete(ev.config.file);
        const a = this.remotes.get(ev.cluster);
        if (!a) {
          if (ev.cluster !== this.o.local.name) await this.attach({ name: ev.cluster, connection: toConnectionConfig(ev.config, this.o.requestTimeoutMs), config: ev.config });
          return;
        }
        a.config = ev.config;
        this.o.logger.info({ cluster: ev.cluster }, 'remote cluster config changed; reconnecting');
        await a.remote.reconfigure(toConnectionConfig(ev.config, this.o.requestTimeoutMs));
        if (this.started) a.remote.start();
        return;
      }
      case 'remove':
        this.configErrors.delete(ev.previous.file);
        await this.detach(ev.cluster);
        return;
    }
  }

  private async attach(r: { name: string; connection: KvConnectionConfig | null; config: RemoteClusterConfig | null }): Promise<void> {
    const config = r.config;
    if (this.remotes.has(r.name)) return;
    const remote = new RemoteCluster({
      name: r.name,
      // via the cache: the local client is used, this connection never
      connection: r.connection ?? { endpoints: [], caFile: '', certFile: '', keyFile: '' },
      ...(this.o.cache && !r.connection ? { cached: this.o.cache } : {}),
      local: this.o.local,
      ids: this.ids,
      clock: this.o.clock,
      random: this.o.random,
      logger: this.o.logger,
      backoff: this.o.backoff,
      ...(this.o.registry ? { registry: this.o.registry } : {}),
      ...(this.o.maxValueBytes !== undefined ? { maxValueBytes: this.o.maxValueBytes } : {}),
      ...(this.o.connect ? { connect: this.o.connect } : {}),
      ...(this.o.heartbeatStaleMs !== undefined ? { heartbeatStaleMs: this.o.heartbeatStaleMs } : {}),
      syncSlots: this.o.syncSlots,
    });
    const cluster = r.name;
    const unsubscribe = [
      remote.nodes.subscribe((ev) => {
        const key = `${cluster}/${ev.key}`;
        let mine = this.announcedNodes.get(cluster);
        if (!mine) this.announcedNodes.set(cluster, (mine = new Map()));
        if (ev.kind === 'upsert') {
          mine.set(ev.key, ev.value);
          this.reevaluate(this.ownership.setNode(cluster, ev.key, { cidrs: ev.value.ipv4AllocCIDR ? [ev.value.ipv4AllocCIDR] : [], addresses: ev.value.addresses.map((a) => a.ip) }));
        } else {
          mine.delete(ev.key);
          this.nodeCache.delete(key);
          this.reevaluate(this.ownership.removeNode(cluster, ev.key));
        }
      }),
      remote.identities.subscribe((ev) => {
        if (ev.kind === 'upsert') {
          const cur = this.identityCache.get(ev.key);
          if (cur && cur.cluster !== cluster) {
            this.o.logger.warn({ cluster, id: ev.key, owner: cur.cluster }, 'identity already imported from another cluster; ignored');
            return;
          }
          this.identityCache.set(ev.key, ev.value);
        } else if (this.identityCache.get(ev.key)?.cluster === cluster) {
          this.identityCache.delete(ev.key);
        }
      }),
      remote.ipEntries.subscribe((ev) => {
        let mine = this.announcedIps.get(cluster);
        if (!mine) this.announcedIps.set(cluster, (mine = new Map()));
        if (ev.kind === 'upsert') {
          mine.set(ev.key, ev.value);
          this.judgeIp(cluster, ev.key, ev.value);
        } else {
          mine.delete(ev.key);
          this.refusedIps.get(cluster)?.delete(ev.key);
          this.verifiedIps.get(cluster)?.delete(ev.key);
          this.withdrawIp(cluster, ev.key);
        }
      }),
      remote.services.subscribe((ev) => {
        const key = `${cluster}/${ev.key}`;
        const changed = ev.kind === 'upsert' ? this.serviceCache.set(key, ev.value) : this.serviceCache.delete(key);
        if (changed) this.updateGlobalService(cluster, ev.key, ev.kind === 'upsert' ? ev.value : undefined);
      }),
    ];
    this.remotes.set(cluster, { remote, config, unsubscribe });
    this.o.logger.info({ cluster, endpoints: config?.endpoints ?? 'via the cache' }, 'remote cluster added');
    if (this.started) remote.start();
  }

  private async detach(name: string): Promise<void> {
    const a = this.remotes.get(name);
    if (!a) return;
    await a.remote.remove(); // drains through the subscriptions
    for (const u of a.unsubscribe) u();
    this.remotes.delete(name);
    this.ids.release(name);
    this.announcedIps.delete(name);
    this.announcedNodes.delete(name);
    this.refusedIps.delete(name);
    this.verifiedIps.delete(name);
    this.reevaluate(this.ownership.removeCluster(name));
    this.o.logger.info({ cluster: name }, 'remote cluster removed and drained');
  }

  /**
   * Claims or refuses one announced entry by the ownership rules. On a
   * re-judgement after a change of claims (`rejudge`), an entry that was
   * verified inside its cluster's own pod CIDRs is not withdrawn merely
   * because that range went away (its node pruned or being resynced): it goes
   * with its own withdrawal, as the resync rules say. It is withdrawn at once
   * when another cluster's claim covers it; an entry accepted unverified (its
   * cluster announced no range yet) must pass the check once ranges appear.
   */
  private judgeIp(cluster: string, ip: string, entry: RemoteIpEntry, rejudge = false): void {
    const v = this.ownership.checkIp(cluster, entry.prefix);
    let verified = this.verifiedIps.get(cluster);
    if (!verified) this.verifiedIps.set(cluster, (verified = new Set()));
    if (v.ok) {
      if (v.unverified) verified.delete(ip);
      else verified.add(ip);
      this.refusedIps.get(cluster)?.delete(ip);
      this.claimIp(cluster, ip, entry);
      return;
    }
    if (rejudge && v.kind === 'outside' && verified.has(ip)) return;
    verified.delete(ip);
    let refused = this.refusedIps.get(cluster);
    if (!refused) this.refusedIps.set(cluster, (refused = new Map()));
    if (refused.get(ip) !== v.reason) this.o.logger.warn({ cluster, ip, reason: v.reason }, "remote endpoint IP refused: not the cluster's to announce");
    refused.set(ip, v.reason);
    this.withdrawIp(cluster, ip);
  }

  /**
   * After a change of claims: the published view of every node of the
   * affected remotes (refused nodes withdrawn, withheld pod CIDRs nulled), and
   * every entry they announced judged again.
   */
  private reevaluate(owners: Iterable<string | typeof LOCAL>): void {
    for (const owner of owners) {
      if (owner === LOCAL) continue;
      for (const [nodeKey, node] of this.announcedNodes.get(owner) ?? []) {
        const key = `${owner}/${nodeKey}`;
        const refusal = this.ownership.nodeRefusal(owner, nodeKey);
        if (refusal) {
          if (this.nodeCache.get(key)) this.o.logger.warn({ cluster: owner, node: node.name, reason: refusal }, 'remote node refused');
          this.nodeCache.delete(key);
          continue;
        }
        const accepted = this.ownership.acceptedCidrs(owner, nodeKey);
        const cidr = node.ipv4AllocCIDR && accepted.length > 0 ? node.ipv4AllocCIDR : null;
        if (node.ipv4AllocCIDR && !cidr && this.nodeCache.get(key)?.ipv4AllocCIDR !== null) {
          this.o.logger.warn({ cluster: owner, node: node.name, podCIDR: node.ipv4AllocCIDR }, 'remote pod CIDR overlaps an earlier claim of another cluster; withheld');
        }
        this.nodeCache.set(key, cidr === node.ipv4AllocCIDR ? node : { ...node, ipv4AllocCIDR: cidr });
      }
      for (const [ip, entry] of this.announcedIps.get(owner) ?? []) this.judgeIp(owner, ip, entry, true);
    }
  }

  /** `ip` is the IP of a host entry, "ip/len" of a prefix entry. */
  private claimIp(cluster: string, ip: string, entry: RemoteIpEntry): void {
    const had = this.ipClaims.get(ip);
    if (had === undefined || (!Array.isArray(had) && had.cluster === cluster)) {
      this.ipClaims.set(ip, entry);
      this.ipCache.set(ip, entry);
      return;
    }
    const claims = Array.isArray(had) ? had : [had];
    const i = claims.findIndex((c) => c.cluster === cluster);
    if (i >= 0) claims[i] = entry;
    else claims.push(entry);
    this.ipClaims.set(ip, claims);
    if (claims[0]!.cluster !== cluster) {
      this.o.logger.warn({ ip, cluster, owner: claims[0]!.cluster }, 'IP claimed by two remote clusters; the first claim stays');
    }
    this.ipCache.set(ip, claims[0]!);
  }

  private withdrawIp(cluster: string, ip: string): void {
    const had = this.ipClaims.get(ip);
    if (had === undefined) return;
    if (!Array.isArray(had)) {
      if (had.cluster !== cluster) return;
      this.ipClaims.delete(ip);
      this.ipCache.delete(ip);
      return;
    }
    const i = had.findIndex((c) => c.cluster === cluster);
    if (i < 0) return;
    had.splice(i, 1);
    const rest = had.length === 1 ? had[0]! : had;
    this.ipClaims.set(ip, rest);
    this.ipCache.set(ip, had[0]!);
  }

  private updateGlobalService(cluster: string, nsName: string, svc: RemoteService | undefined): void {
    let shared = this.servicesByName.get(nsName);
    if (svc && svc.shared) {
      if (!shared) this.servicesByName.set(nsName, (shared = { first: svc, backends: new Map(), clusters: [] }));
      // Each cluster's part is built once per change of its service and compared alone.
      const part = svc.backends.map((b) => ({ cluster, ip: b.ip, ports: b.ports }));
      const prev = shared.backends.get(cluster);
      if (prev && samePart(prev, part)) return;
      if (!prev) shared.clusters.splice(sortedIndex(shared.clusters, cluster), 0, cluster);
      shared.backends.set(cluster, part);
    } else {
      if (!shared?.backends.delete(cluster)) return;
      shared.clusters.splice(shared.clusters.indexOf(cluster), 1);
    }
    if (shared.clusters.length === 0) {
      this.servicesByName.delete(nsName);
      this.globalServiceCache.delete(nsName);
      return;
    }
    const clusters = [...shared.clusters];
    const members = shared;
    this.globalServiceCache.set(nsName, mergedGlobalService(shared.first.namespace, shared.first.name, clusters, clusters.map((c) => members.backends.get(c) ?? [])));
  }
}

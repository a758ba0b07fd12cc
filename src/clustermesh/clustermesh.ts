// ClusterMesh: the remote clusters named by the config directory, and the
// state imported from them merged into typed observable caches. This is what
// the agent wires into its datapath.
//
//   config file added   → connect
//   config file changed → reconnect with the new config (data kept, resynced)
//   config file removed → disconnect and drain
//   stop()              → disconnect all, keep everything (datapath keeps forwarding)
//
// Merge rules:
//   nodes        "<cluster>/<node>"          one owner each
//   identities   id                           ranges of distinct cluster IDs are disjoint
//   ipcache      ip                           if two remotes claim one IP, the first claim
//                                             wins until it is withdrawn (then the next one)
//   services     "<cluster>/<ns>/<name>"      as imported
//   globalServices "<ns>/<name>"              backends of the shared services of that
//                                             name, across remote clusters

import type { Registry } from 'prom-client';
import pino from 'pino';
import { Cache, type ObservableMap } from './cache.ts';
import { systemClock, type Clock } from '../util/clock.ts';
import { ConfigDirWatcher, toConnectionConfig, type ConfigDirEvent, type RemoteClusterConfig } from './config.ts';
import {
  DEFAULT_BACKOFF,
  RemoteCluster,
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
import type { KvConnectionConfig } from '../kvstore/types.ts';
import { isValidClusterId, isValidClusterName, type MaxConnectedClusters } from './wire.ts';

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
}

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
}

interface Attached {
  remote: RemoteCluster;
  config: RemoteClusterConfig;
  unsubscribe: (() => void)[];
}

export class ClusterMesh {
  private readonly o: CompiledOptions;
  private readonly remotes = new Map<string, Attached>();
  private readonly idOwners = new Map<number, string>();
  private readonly configErrors = new Map<string, string>();
  private readonly watcher: ConfigDirWatcher;
  private started = false;
  /** Serializes config events and start/stop. */
  private queue: Promise<void> = Promise.resolve();

  private readonly nodeCache = new Cache<string, RemoteNode>();
  private readonly identityCache = new Cache<number, RemoteIdentity>();
  private readonly ipCache = new Cache<string, IpCacheEntry>();
  private readonly serviceCache = new Cache<string, RemoteService>();
  private readonly globalServiceCache = new Cache<string, GlobalService>();
  /** ip → claims in arrival order (cluster → entry). */
  private readonly ipClaims = new Map<string, Map<string, RemoteIpEntry>>();
  /** "<ns>/<name>" → cluster → service. */
  private readonly servicesByName = new Map<string, Map<string, RemoteService>>();

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
    await this.watcher.start();
  }

  /** Disconnects from every remote; keeps everything imported. */
  async stop(): Promise<void> {
    this.watcher.stop();
    await this.enqueue(async () => {
      this.started = false;
      await Promise.all([...this.remotes.values()].map((a) => a.remote.stop()));
    });
  }

  /** Disconnects and drains every remote (the mesh is torn down). */
  async close(): Promise<void> {
    this.watcher.stop();
    await this.enqueue(async () => {
      this.started = false;
      for (const name of [...this.remotes.keys()]) await this.detach(name);
    });
  }

  /** Rescans the config dir now (tests, `clustermesh connect`). */
  async rescan(): Promise<void> {
    await this.watcher.rescan();
    await this.queue;
  }

  remote(name: string): RemoteCluster | undefined {
    return this.remotes.get(name)?.remote;
  }

  status(): ClusterMeshStatus {
    const remotes = [...this.remotes.values()].map((a) => a.remote.status()).sort((a, b) => (a.name < b.name ? -1 : 1));
    let conflicts = 0;
    for (const claims of this.ipClaims.values()) if (claims.size > 1) conflicts++;
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
    };
  }

  /** Resolves when every remote is ready (polls status; for tests and startup gates). */
  async waitReady(opts: { timeoutMs?: number; clusters?: string[] } = {}): Promise<void> {
    const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
    for (;;) {
      const st = this.status();
      const want = opts.clusters ?? st.remotes.map((r) => r.name);
      if (want.every((n) => st.remotes.find((r) => r.name === n)?.ready)) return;
      if (Date.now() > deadline) {
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
        await this.attach(ev.config);
        return;
      case 'change': {
        this.configErrors.delete(ev.config.file);
        const a = this.remotes.get(ev.cluster);
        if (!a) {
          if (ev.cluster !== this.o.local.name) await this.attach(ev.config);
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

  private async attach(config: RemoteClusterConfig): Promise<void> {
    if (this.remotes.has(config.name)) return;
    const remote = new RemoteCluster({
      name: config.name,
      connection: toConnectionConfig(config, this.o.requestTimeoutMs),
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
    });
    const cluster = config.name;
    const unsubscribe = [
      remote.nodes.subscribe((ev) => {
        const key = `${cluster}/${ev.key}`;
        if (ev.kind === 'upsert') this.nodeCache.set(key, ev.value);
        else this.nodeCache.delete(key);
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
        if (ev.kind === 'upsert') this.claimIp(cluster, ev.key, ev.value);
        else this.withdrawIp(cluster, ev.key);
      }),
      remote.services.subscribe((ev) => {
        const key = `${cluster}/${ev.key}`;
        if (ev.kind === 'upsert') this.serviceCache.set(key, ev.value);
        else this.serviceCache.delete(key);
        this.updateGlobalService(cluster, ev.key, ev.kind === 'upsert' ? ev.value : undefined);
      }),
    ];
    this.remotes.set(cluster, { remote, config, unsubscribe });
    this.o.logger.info({ cluster, endpoints: config.endpoints }, 'remote cluster added');
    if (this.started) remote.start();
  }

  private async detach(name: string): Promise<void> {
    const a = this.remotes.get(name);
    if (!a) return;
    await a.remote.remove(); // drains through the subscriptions
    for (const u of a.unsubscribe) u();
    this.remotes.delete(name);
    this.ids.release(name);
    this.o.logger.info({ cluster: name }, 'remote cluster removed and drained');
  }

  /** `ip` is the IP of a host entry, "ip/len" of a prefix entry. */
  private claimIp(cluster: string, ip: string, entry: RemoteIpEntry): void {
    let claims = this.ipClaims.get(ip);
    if (!claims) {
      claims = new Map();
      this.ipClaims.set(ip, claims);
    }
    claims.set(cluster, entry);
    if (claims.size > 1 && claims.keys().next().value !== cluster) {
      this.o.logger.warn({ ip, cluster, owner: claims.keys().next().value }, 'IP claimed by two remote clusters; the first claim stays');
    }
    const winner = claims.values().next().value;
    if (winner) this.ipCache.set(ip, winner);
  }

  private withdrawIp(cluster: string, ip: string): void {
    const claims = this.ipClaims.get(ip);
    if (!claims?.delete(cluster)) return;
    const winner = claims.values().next().value;
    if (winner) this.ipCache.set(ip, winner);
    else {
      this.ipClaims.delete(ip);
      this.ipCache.delete(ip);
    }
  }

  private updateGlobalService(cluster: string, nsName: string, svc: RemoteService | undefined): void {
    let byCluster = this.servicesByName.get(nsName);
    if (svc && svc.shared) {
      if (!byCluster) {
        byCluster = new Map();
        this.servicesByName.set(nsName, byCluster);
      }
      byCluster.set(cluster, svc);
    } else {
      if (!byCluster?.delete(cluster)) return;
    }
    if (!byCluster || byCluster.size === 0) {
      this.servicesByName.delete(nsName);
      this.globalServiceCache.delete(nsName);
      return;
    }
    const clusters = [...byCluster.keys()].sort();
    const first = byCluster.values().next().value as RemoteService;
    const backends: GlobalServiceBackend[] = [];
    for (const c of clusters) for (const b of byCluster.get(c)?.backends ?? []) backends.push({ cluster: c, ip: b.ip, ports: b.ports });
    this.globalServiceCache.set(nsName, { namespace: first.namespace, name: first.name, clusters, backends });
  }
}

// The cache tier (issue 17; Cilium's KVStoreMesh): the cluster's apiserver
// imports every remote once, with the agent's own importer (ClusterMesh: the
// wire decoders, cluster-config checks, address ownership), and writes what it
// accepted into its own etcd under the cache layout (keys.ts cacheKeyPrefix),
// so the cluster's agents read every remote through one connection to their
// own etcd instead of one connection per remote each.
//
// Per remote <c>, in the local etcd:
//   cilium/cache/<kind>/v1/<c>/...          the accepted entries, re-encoded from what the importer keeps
//   cilium/synced/<c>/cilium/cache/<kind>/v1 once the remote's first full import is written (per kind)
//   cilium/cluster-config/<c>               its ID, capabilities cached + syncedCanaries
//   cilium/cache/status/v1/<c>              this process's session to <c> (state, last error): agents show it
// A restart keeps everything in place: keys found at start that the new import
// does not desire are deleted once that remote's first import is complete (the
// canaries of the previous run stay meanwhile, so agents prune nothing still
// valid). A remote removed from the config directory is drained: its entries,
// canaries, cluster-config and status are deleted, and agents drop it.
// Entries are not leased (a lease with 250k keys slows every put on it,
// etcd-io/etcd#15993); the keys of a remote stay until this tier deletes them.
// They are written 64 to a transaction (SyncStore batch).
import type { Registry } from 'prom-client';
import { ClusterMesh } from '../clustermesh/clustermesh.ts';
import {
  cacheKeyPrefix,
  cachePrefix,
  cacheStatusKey,
  cacheSyncedKey,
  clusterConfigKey,
  clusterConfigPrefix,
  SYNCED_PREFIX_NAMES,
  type SyncedPrefixName,
} from '../clustermesh/keys.ts';
import type { CachedRemoteStatus, Logger, RemoteIpEntry, RemoteNode, RemoteService } from '../clustermesh/remote-cluster.ts';
import { decodeClusterConfig, encodeClusterConfig, encodeIdentity, encodeIpEntry, encodeNode, encodeService, type MaxConnectedClusters } from '../clustermesh/wire.ts';
import type { KvClient } from '../kvstore/client.ts';
import { SyncStore } from '../kvstore/sync-store.ts';
import type { KvConnectionConfig, KvError } from '../kvstore/types.ts';
import { systemClock, type Clock } from '../util/clock.ts';
import { PrefixExport } from './export.ts';

export interface KvstoreMeshOptions {
  /** The cluster's own etcd (the apiserver's client). */
  kv: KvClient;
  local: { name: string; id: number; maxConnectedClusters: MaxConnectedClusters };
  /** One file per remote cluster (the agents' layout). */
  configDir: string;
  logger: Logger;
  clock?: Clock;
  registry?: Registry;
  /** Tests and the benchmark: how a remote's client is made. */
  connect?: (config: KvConnectionConfig) => KvClient;
  syncConcurrency?: number;
  useFsWatch?: boolean;
  rescanIntervalMs?: number;
  /** How often each remote's status is looked at (default 100 ms). */
  reconcileMs?: number;
  onError?: (err: KvError, key: string) => void;
}

export interface KvstoreMeshRemoteStatus {
  name: string;
  state: string;
  ready: boolean;
  /** Every kind's first import of this process is written, canaries included. */
  cached: boolean;
  keys: Record<SyncedPrefixName, number>;
  lastError: string | null;
}

export interface KvstoreMeshStatus {
  remotes: KvstoreMeshRemoteStatus[];
  /** Remotes every kind of which is written with its canary. */
  synced: number;
  /** Entries the cache could not encode (counted, logged). */
  encodeErrors: number;
}

/** One remote's part of the cache. */
interface Part {
  outs: Record<SyncedPrefixName, PrefixExport>;
  stores: Record<SyncedPrefixName, SyncStore>;
  initialDone: boolean;
}

const CACHE_KINDS: Record<string, SyncedPrefixName> = { nodes: 'nodes', identities: 'identities', ip: 'ip', services: 'services' };

/** `cilium/cache/<kind>/v1/<cluster>/…` → its remote and kind (status keys and strangers: null). */
function parseCacheKey(key: string): { cluster: string; kind: SyncedPrefixName } | null {
  const parts = key.slice(cachePrefix.length).split('/');
  const kind = CACHE_KINDS[parts[0] ?? ''];
  if (!kind || parts[1] !== 'v1' || !parts[2]) return null;
  return { cluster: parts[2], kind };
}

const ports = (list: RemoteService['frontends']): Record<string, Record<string, { Protocol: 'TCP' | 'UDP' | 'SCTP'; Port: number }>> =>
  Object.fromEntries(list.map((a) => [a.ip, Object.fromEntries(a.ports.map((p) => [p.name, { Protocol: p.protocol, Port: p.port }]))]));

export class KvstoreMesh {
  readonly mesh: ClusterMesh;
  private readonly kv: KvClient;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly parts = new Map<string, Part>();
  /** Keys under cilium/cache/ at start, per remote and kind. */
  private readonly existing = new Map<string, Record<SyncedPrefixName, Set<string>>>();
  /** Remotes the previous run left a cached cluster-config or status for. */
  private readonly existingRemotes = new Set<string>();
  /** cluster-config, status, canary deletions: few keys, retried by the store. */
  private readonly meta: SyncStore;
  private readonly unsubscribe: (() => void)[] = [];
  private timer: ReturnType<typeof setInterval> | null = null;
  private readonly removing = new Set<string>();
  encodeErrors = 0;

  constructor(private readonly o: KvstoreMeshOptions) {
    this.kv = o.kv;
    this.log = o.logger;
    this.clock = o.clock ?? systemClock;
    this.mesh = new ClusterMesh({
      localCluster: o.local,
      configDir: o.configDir,
      logger: o.logger,
      clock: this.clock,
      ...(o.registry ? { registry: o.registry } : {}),
      ...(o.connect ? { connect: o.connect } : {}),
      ...(o.syncConcurrency !== undefined ? { syncConcurrency: o.syncConcurrency } : {}),
      ...(o.useFsWatch !== undefined ? { useFsWatch: o.useFsWatch } : {}),
      ...(o.rescanIntervalMs !== undefined ? { rescanIntervalMs: o.rescanIntervalMs } : {}),
    });
    this.meta = this.store('cilium/', 'cilium/.kvstoremesh-unused-canary');
  }

  private store(prefix: string, canaryKey: string): SyncStore {
    return new SyncStore(this.kv, {
      prefix,
      canaryKey,
      leased: false,
      rateLimit: { perSecond: 1_000_000, burst: 1_000_000 },
      concurrency: 8,
      // A remote's whole keyspace is written at once: 64 keys per transaction, not one put each.
      batch: 64,
      clock: this.clock,
      ...(this.o.onError ? { onError: this.o.onError } : {}),
    });
  }

  /** Reads what a previous run left, then imports every remote and keeps the cache in step. */
  async start(): Promise<void> {
    for (const p of (await this.kv.list(cachePrefix)).pairs) {
      const k = parseCacheKey(p.key);
      if (k) this.existingOf(k.cluster)[k.kind].add(p.key);
      else if (p.key.startsWith(cacheStatusKey(''))) this.existingRemotes.add(p.key.slice(cacheStatusKey('').length));
    }
    for (const p of (await this.kv.list(clusterConfigPrefix)).pairs) {
      const name = p.key.slice(clusterConfigPrefix.length);
      if (name === this.o.local.name) continue;
      const d = decodeClusterConfig(name, p.key, p.value);
      if (d.ok && d.value.capabilities.cached) this.existingRemotes.add(name);
    }
    const m = this.mesh;
    this.unsubscribe.push(
      m.nodes.subscribe((ev) => {
        if (ev.kind === 'delete') return this.remove(ev.previous.cluster, 'nodes', ev.previous.name);
        if (ev.previous && ev.previous.cluster !== ev.value.cluster) this.remove(ev.previous.cluster, 'nodes', ev.previous.name);
        this.set(ev.value.cluster, 'nodes', ev.value.name, () => encodeNode(nodeValue(ev.value)));
      }),
      m.identities.subscribe((ev) => {
        if (ev.kind === 'delete') return this.remove(ev.previous.cluster, 'identities', String(ev.key));
        if (ev.previous && ev.previous.cluster !== ev.value.cluster) this.remove(ev.previous.cluster, 'identities', String(ev.key));
        this.set(ev.value.cluster, 'identities', String(ev.key), () => encodeIdentity(ev.value.labels));
      }),
      m.ipcache.subscribe((ev) => {
        if (ev.kind === 'delete') return this.remove(ev.previous.cluster, 'ip', ev.key);
        if (ev.previous && ev.previous.cluster !== ev.value.cluster) this.remove(ev.previous.cluster, 'ip', ev.key);
        this.set(ev.value.cluster, 'ip', ev.key, () => encodeIpEntry(ipValue(ev.key, ev.value)));
      }),
      m.services.subscribe((ev) => {
        const svc = ev.kind === 'delete' ? ev.previous : ev.value;
        const rest = `${svc.namespace}/${svc.name}`;
        if (ev.kind === 'delete') return this.remove(svc.cluster, 'services', rest);
        this.set(svc.cluster, 'services', rest, () => encodeService(serviceValue(ev.value)));
      }),
    );
    await m.start();
    this.reconcile();
    this.timer = setInterval(() => this.reconcile(), this.o.reconcileMs ?? 100);
    this.timer.unref?.();
  }

  /** Resolves once every configured remote is cached (entries and canaries written). */
  async waitSynced(timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.mesh.remoteNames().every((n) => this.parts.get(n)?.initialDone && SYNCED_PREFIX_NAMES.every((k) => this.parts.get(n)!.stores[k].synced))) {
      if (Date.now() > deadline) throw new Error(`kvstoremesh: not synced after ${timeoutMs} ms: ${JSON.stringify(this.status().remotes.filter((r) => !r.cached).map((r) => [r.name, r.state, r.lastError]))}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  status(): KvstoreMeshStatus {
    const remotes = this.mesh
      .remoteNames()
      .sort()
      .map((name): KvstoreMeshRemoteStatus => {
        const st = this.mesh.remote(name)!.status();
        const part = this.parts.get(name);
        return {
          name,
          state: st.state,
          ready: st.ready,
          cached: !!part?.initialDone && SYNCED_PREFIX_NAMES.every((k) => part.stores[k].synced),
          keys: Object.fromEntries(SYNCED_PREFIX_NAMES.map((k) => [k, part?.outs[k].size ?? 0])) as Record<SyncedPrefixName, number>,
          lastError: st.lastError,
        };
      });
    return { remotes, synced: remotes.filter((r) => r.cached).length, encodeErrors: this.encodeErrors };
  }

  /** Stops importing and writing; the cache stays as it is (a restart resumes from it). */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    for (const u of this.unsubscribe.splice(0)) u();
    await this.mesh.stop();
    await Promise.all([...[...this.parts.values()].flatMap((p) => Object.values(p.stores)), this.meta].map((s) => s.stop()));
  }

  // -------------------------------------------------------------------------

  private existingOf(cluster: string): Record<SyncedPrefixName, Set<string>> {
    let e = this.existing.get(cluster);
    if (!e) this.existing.set(cluster, (e = { nodes: new Set(), identities: new Set(), ip: new Set(), services: new Set() }));
    return e;
  }

  private partOf(cluster: string): Part {
    let p = this.parts.get(cluster);
    if (!p) {
      const existing = this.existingOf(cluster);
      const stores = {} as Record<SyncedPrefixName, SyncStore>;
      const outs = {} as Record<SyncedPrefixName, PrefixExport>;
      for (const kind of SYNCED_PREFIX_NAMES) {
        stores[kind] = this.store(cacheKeyPrefix(kind, cluster), cacheSyncedKey(cluster, kind));
        outs[kind] = new PrefixExport(kind, stores[kind], existing[kind]);
      }
      this.parts.set(cluster, (p = { outs, stores, initialDone: false }));
    }
    return p;
  }

  private set(cluster: string, kind: SyncedPrefixName, rest: string, encode: () => string): void {
    let value: string;
    try {
      value = encode();
    } catch (err) {
      this.encodeErrors++;
      this.log.warn({ cluster, kind, key: rest, err: (err as Error).message }, 'remote entry not cached: it does not encode');
      return this.remove(cluster, kind, rest);
    }
    this.partOf(cluster).outs[kind].set(cacheKeyPrefix(kind, cluster) + rest, value);
  }

  private remove(cluster: string, kind: SyncedPrefixName, rest: string): void {
    this.parts.get(cluster)?.outs[kind].remove(cacheKeyPrefix(kind, cluster) + rest);
  }

  /** Per remote: its status and cluster-config written, its first import sealed with the canaries; removed remotes drained. */
  private reconcile(): void {
    const names = new Set(this.mesh.remoteNames());
    for (const name of names) {
      const remote = this.mesh.remote(name)!;
      const st = remote.status();
      const status: CachedRemoteStatus = {
        state: st.state,
        connected: st.connected,
        ready: st.ready,
        lastError: st.lastError,
        lastErrorAt: st.lastErrorAt,
        reconnections: st.reconnections,
        refusedReason: st.refusedReason,
      };
      this.meta.upsert(cacheStatusKey(name), JSON.stringify(status));
      if (st.clusterId !== null && st.config) {
        this.meta.upsert(
          clusterConfigKey(name),
          encodeClusterConfig({ id: st.clusterId, capabilities: { syncedCanaries: true, cached: true, maxConnectedClusters: this.o.local.maxConnectedClusters, ...(st.config.serviceExportsEnabled !== null ? { serviceExportsEnabled: st.config.serviceExportsEnabled } : {}) } }),
        );
      }
      const part = this.partOf(name);
      if (!part.initialDone && remote.ready && remote.prefixesSynced) {
        part.initialDone = true;
        for (const kind of SYNCED_PREFIX_NAMES) part.outs[kind].markInitialSyncDone();
        this.log.info({ cluster: name }, 'remote imported; writing its cache canaries once its entries are written');
      }
    }
    const gone = new Set([...this.parts.keys(), ...this.existing.keys(), ...this.existingRemotes].filter((n) => !names.has(n)));
    for (const name of gone) if (!this.removing.has(name)) void this.drop(name);
  }

  /** A remote no longer configured: its stores stopped, everything of it deleted from the cache. */
  private async drop(name: string): Promise<void> {
    this.removing.add(name);
    try {
      const part = this.parts.get(name);
      if (part) await Promise.all(Object.values(part.stores).map((s) => s.stop()));
      // the cluster-config first: agents detach (and drain) on its deletion, not entry by entry
      await this.kv.delete(clusterConfigKey(name));
      for (const kind of SYNCED_PREFIX_NAMES) {
        await this.kv.delete(cacheSyncedKey(name, kind));
        await this.kv.deletePrefix(cacheKeyPrefix(kind, name));
      }
      await this.kv.delete(cacheStatusKey(name));
      this.parts.delete(name);
      this.existing.delete(name);
      this.existingRemotes.delete(name);
      this.log.info({ cluster: name }, 'remote removed from the config directory: its cache deleted');
    } catch (err) {
      this.log.warn({ cluster: name, err: (err as Error).message }, 'deleting a removed remote from the cache failed; retrying');
    } finally {
      this.removing.delete(name);
    }
  }
}

function nodeValue(n: RemoteNode): Parameters<typeof encodeNode>[0] {
  return {
    Name: n.name,
    Cluster: n.cluster,
    ClusterID: n.clusterId,
    IPAddresses: n.addresses.map((a) => ({ Type: a.type, IP: a.ip })),
    IPv4AllocCIDR: n.ipv4AllocCIDR,
    IPv6AllocCIDR: n.ipv6AllocCIDR,
    Labels: n.labels,
  };
}

/** `key`: the ipcache key, the IP of a host entry or "ip/len" of a prefix entry (which has a Mask). */
function ipValue(key: string, e: RemoteIpEntry): Parameters<typeof encodeIpEntry>[0] {
  const slash = key.indexOf('/');
  return {
    IP: e.ip,
    Mask: slash < 0 ? null : Number(key.slice(slash + 1)),
    HostIP: e.hostIP,
    ID: e.identity,
    Key: e.encryptKey,
    K8sNamespace: e.namespace,
    K8sPodName: e.podName,
    K8sServiceAccount: e.serviceAccount,
    NamedPorts: e.namedPorts.map((p) => ({ Name: p.name, Port: p.port, Protocol: p.protocol })),
  };
}

function serviceValue(s: RemoteService): Parameters<typeof encodeService>[0] {
  return {
    cluster: s.cluster,
    namespace: s.namespace,
    name: s.name,
    frontends: ports(s.frontends),
    backends: ports(s.backends),
    labels: s.labels,
    selector: s.selector,
    shared: s.shared,
    includeExternal: s.includeExternal,
    clusterID: s.clusterId,
  };
}

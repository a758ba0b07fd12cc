// One remote cluster: connect to its mesh etcd (mutual TLS, the read-only
// `remote` user), check its cluster-config, wait for each prefix's synced
// canary, then list-then-watch its nodes, identities, ip entries and services.
// Every value is validated (wire.ts) before it is believed.
//
// Lifecycle (Cilium remote_cluster.go):
//   - a session is one connection; any failure (etcd unreachable, watch
//     broken, compaction, cluster-config changed) ends it, and a new session
//     starts after a backoff (injected clock). Each session waits for the
//     canaries again, re-lists every prefix and prunes what is gone.
//   - stop(): ends the session, keeps everything learned (the datapath keeps
//     forwarding); start() resumes and resyncs.
//   - remove(): stops and drains (a delete for every entry).
//   - a rejected value is counted (per reason), logged once per key, and does
//     not replace what was learned for that key before.

import type { Counter, Gauge, Registry } from 'prom-client';
import { connect as netConnect } from 'node:net';
import promClient from 'prom-client';
import { KvClient } from '../kvstore/client.ts';
import { KvError, type KvConnectionConfig, type KvPair } from '../kvstore/types.ts';
import { WatchStore } from '../kvstore/watch-store.ts';
import type { WatchHandle } from '../kvstore/client.ts';
import { Cache, type ObservableMap } from './cache.ts';
import { sleep, systemClock, type Clock } from '../util/clock.ts';
import {
  cacheKeyPrefix,
  cacheStatusKey,
  cacheSyncedKey,
  clusterConfigKey,
  heartbeatKey,
  identitiesPrefix,
  ipPrefix,
  nodesClusterPrefix,
  servicesClusterPrefix,
  syncedKey,
  SYNCED_PREFIX_NAMES,
  type SyncedPrefixName,
} from './keys.ts';
import {
  decodeClusterConfig,
  decodeHeartbeat,
  decodeIdentity,
  decodeIpEntry,
  decodeNode,
  decodeService,
  isValidClusterName,
  REJECT_REASONS,
  type ClusterConfig,
  type Decoded,
  type LabelSet,
  type MaxConnectedClusters,
  type NodeAddressType,
  type RejectReason,
  type WireSource,
} from './wire.ts';

// ---------------------------------------------------------------------------
// Domain types of imported state

export interface RemoteNode {
  cluster: string;
  clusterId: number;
  name: string;
  addresses: { type: NodeAddressType; ip: string }[];
  ipv4AllocCIDR: string | null;
  ipv6AllocCIDR: string | null;
  labels: Record<string, string>;
}

export interface RemoteIdentity {
  id: number;
  cluster: string;
  labels: LabelSet;
}

/** An endpoint IP of a remote cluster: ip → identity, reached through hostIP. */
export interface RemoteIpEntry {
  cluster: string;
  ip: string;
  /** "ip/len": /32 or /128 unless the entry carries a mask. */
  prefix: string;
  /** A reserved identity (1..255) or one of the cluster's range. */
  identity: number;
  /** The tunnel endpoint (the node hosting the IP); "" when the entry names none. */
  hostIP: string;
  encryptKey: number;
  namespace: string;
  podName: string;
  serviceAccount: string;
  /** The pod's named container ports (egress policy towards the pod resolves them). */
  namedPorts: { name: string; port: number; protocol: 'TCP' | 'UDP' | 'SCTP' }[];
}

export interface ServicePort {
  name: string;
  protocol: 'TCP' | 'UDP' | 'SCTP';
  port: number;
}
export interface ServiceAddress {
  ip: string;
  ports: ServicePort[];
}

export interface RemoteService {
  cluster: string;
  clusterId: number;
  namespace: string;
  name: string;
  frontends: ServiceAddress[];
  backends: ServiceAddress[];
  labels: Record<string, string>;
  selector: Record<string, string>;
  shared: boolean;
  includeExternal: boolean;
}

// ---------------------------------------------------------------------------
// Status

export type RemoteClusterState =
  | 'connecting' // opening the connection, reading cluster-config
  | 'waiting-config' // connected, the remote has not published its cluster-config yet
  | 'refused' // cluster-config unacceptable (ID clash, layout); retried with backoff
  | 'syncing' // waiting for canaries / initial lists
  | 'ready' // every prefix listed and watched
  | 'disconnected' // session failed; retry pending
  | 'stopped' // stop(): data kept
  | 'removed'; // remove(): drained

export interface RemoteClusterStatus {
  name: string;
  state: RemoteClusterState;
  connected: boolean;
  /** Connected and every prefix listed in the current session. */
  ready: boolean;
  clusterId: number | null;
  /** Sticky: the prefix's first full list has been applied. */
  synced: Record<SyncedPrefixName, boolean>;
  counts: { nodes: number; endpoints: number; identities: number; services: number };
  /** Values rejected, per reason (each distinct key revision counted once). */
  rejected: Record<RejectReason, number>;
  /** Sessions that connected after an earlier connected session ended. */
  reconnections: number;
  lastError: string | null;
  lastErrorAt: string | null;
  /** Why the cluster is refused, while it is. */
  refusedReason: string | null;
  /** direct: this process's own connection to the remote's etcd; cache: read from the local etcd's cache prefix (the cache tier's import). */
  via: 'direct' | 'cache';
  /** Via the cache: the cache tier's own session to the remote, as it last wrote it (null until it has). */
  upstream: CachedRemoteStatus | null;
  /** The remote's cluster-config capabilities (null before one was accepted). */
  config: { cached: boolean; serviceExportsEnabled: boolean | null; syncedCanaries: boolean } | null;
  /**
   * cilium/.heartbeat, which the remote apiserver rewrites every minute or so:
   * when it was last seen to change (our clock), the time it carries, and
   * `stale` once connected without a change for longer than the limit.
   */
  heartbeat: {
    lastSeenAt: string | null;
    value: string | null;
    ageMs: number | null;
    stale: boolean;
    staleAfterMs: number;
    /** The remote's heartbeat interval as its values show it (the shortest of the last few gaps), null until two were seen. */
    intervalMs?: number | null;
  };
  /** Backoffs cut short because the remote became reachable again (TCP probe) since the start. */
  reachableAgain?: number;
}

const REMOTE_STATES: readonly RemoteClusterState[] = ['connecting', 'waiting-config', 'refused', 'syncing', 'ready', 'disconnected', 'stopped', 'removed'];

/** What the cache tier writes at cacheStatusKey(cluster): its own session to the remote. */
export interface CachedRemoteStatus {
  state: RemoteClusterState;
  connected: boolean;
  ready: boolean;
  lastError: string | null;
  lastErrorAt: string | null;
  reconnections: number;
  refusedReason: string | null;
}

/** Parses a cache status value; null when it is not one (a reader never trusts its shape). */
export function decodeCachedRemoteStatus(raw: string): CachedRemoteStatus | null {
  try {
    const v = JSON.parse(raw) as Record<string, unknown>;
    const str = (x: unknown): string | null => (typeof x === 'string' ? x.slice(0, 1024) : null);
    if (typeof v !== 'object' || v === null || !REMOTE_STATES.includes(v.state as RemoteClusterState)) return null;
    return {
      state: v.state as RemoteClusterState,
      connected: v.connected === true,
      ready: v.ready === true,
      lastError: str(v.lastError),
      lastErrorAt: str(v.lastErrorAt),
      reconnections: typeof v.reconnections === 'number' && Number.isSafeInteger(v.reconnections) ? v.reconnections : 0,
      refusedReason: str(v.refusedReason),
    };
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------
// Options

export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
  factor: number;
  /** Random extra delay, as a fraction of the delay (0..1). */
  jitter: number;
}
export const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 200, maxMs: 30_000, factor: 2, jitter: 0.2 };

export function backoffDelay(b: BackoffOptions, attempt: number, random: () => number): number {
  const base = Math.min(b.maxMs, b.initialMs * b.factor ** Math.max(0, attempt));
  return Math.round(base * (1 + b.jitter * random()));
}

export interface LocalCluster {
  name: string;
  id: number;
  maxConnectedClusters: MaxConnectedClusters;
}

/** Decides whether a remote may use a cluster ID (no other remote holds it). */
export interface ClusterIdRegistry {
  /** null when `cluster` now holds `id`; else why not. */
  claim(cluster: string, id: number): string | null;
  release(cluster: string): void;
}

/**
 * Bounds how many remotes connect and list at once. With hundreds of remotes
 * starting together, one event loop decodes every answer in turn; the request
 * deadlines of the others run out meanwhile, their sessions fail and list
 * again (a reconnection storm of our own making). A slot is held while
 * connecting (TLS, cluster-config, heartbeat) and for each prefix's first
 * list, never while waiting for a remote's canaries.
 */
export class SyncSlots {
  private free: number;
  private readonly waiting: Array<() => void> = [];
  constructor(readonly size: number) {
    if (!Number.isInteger(size) || size < 1) throw new Error(`sync slots: size must be an integer >= 1, got ${size}`);
    this.free = size;
  }
  /** Remotes waiting for a slot. */
  get queued(): number {
    return this.waiting.length;
  }
  /**
   * Resolves once a slot is taken; its release function is pushed onto `held`
   * in the same step (so an owner that stops waiting can still release it).
   * Rejects when `signal` aborts first; a waiter is never granted after that.
   */
  acquire(signal: AbortSignal, held: Array<() => void>): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal.aborted) return reject(new Error('aborted'));
      let done = false;
      const grant = (): void => {
        signal.removeEventListener('abort', onAbort);
        held.push(() => {
          if (done) return;
          done = true;
          const next = this.waiting.shift();
          if (next) next();
          else this.free++;
        });
        resolve();
      };
      const onAbort = (): void => {
        const i = this.waiting.indexOf(grant);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(new Error('aborted'));
      };
      if (this.free > 0) {
        this.free--;
        grant();
        return;
      }
      this.waiting.push(grant);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }
}

export interface RemoteClusterOptions {
  name: string;
  connection: KvConnectionConfig;
  local: LocalCluster;
  ids?: ClusterIdRegistry;
  clock?: Clock;
  random?: () => number;
  logger?: Logger;
  registry?: Registry;
  backoff?: Partial<BackoffOptions>;
  maxValueBytes?: number;
  /** Creates the client (tests inject faults); default `new KvClient(config)`. */
  connect?: (config: KvConnectionConfig) => KvClient;
  /**
   * Report the remote stale when its heartbeat has not changed for this long (default 180 s, as
   * Cilium); once the remote's interval is known (from the times two successive heartbeats carry),
   * sooner: after HEARTBEAT_STALE_INTERVALS of them (at least HEARTBEAT_STALE_FLOOR_MS).
   */
  heartbeatStaleMs?: number;
  /**
   * While backing off after a failed session: a plain TCP connect to the remote's endpoints every
   * intervalMs (no TLS, no request). Once one failed and a later one connects (the network or the
   * etcd came back), the backoff is cut short after a random 0..spreadMs. false: backoff only.
   * Default { intervalMs: 1000, spreadMs: 2000, probe: tcpReachable }.
   */
  reachability?: false | Partial<ReachabilityOptions>;
  /** Shared with the other remotes of the mesh (default: slots of its own, no limit in effect). */
  syncSlots?: SyncSlots;
  /**
   * Read the remote from the cache tier instead (kvstoremesh): `client` is the
   * local etcd's, shared by every remote and never closed here; the remote's
   * cluster-config there must say cached, its prefixes and canaries are the
   * cache's (keys.ts cacheKeyPrefix, cacheSyncedKey).
   */
  cached?: { client: KvClient };
}

export const DEFAULT_HEARTBEAT_STALE_MS = 180_000;
/** Heartbeat intervals without a new one before the remote is reported stale (two missed, half an interval of slack). */
export const HEARTBEAT_STALE_INTERVALS = 2.5;
/** Never stale sooner than this (a remote writing every 200 ms is not stale after 500 ms of a busy event loop). */
export const HEARTBEAT_STALE_FLOOR_MS = 5_000;

export interface ReachabilityOptions {
  intervalMs: number;
  spreadMs: number;
  /** True when some endpoint accepts a TCP connection within timeoutMs. */
  probe: (endpoints: readonly string[], timeoutMs: number) => Promise<boolean>;
}

/** True when some endpoint (https://host:port) accepts a TCP connection within timeoutMs; closed at once. */
export function tcpReachable(endpoints: readonly string[], timeoutMs: number): Promise<boolean> {
  const one = (endpoint: string): Promise<boolean> =>
    new Promise((resolve) => {
      let url: URL;
      try {
        url = new URL(endpoint);
      } catch {
        return resolve(false);
      }
      const port = Number(url.port || (url.protocol === 'http:' ? 80 : 443));
      const sock = netConnect({ host: url.hostname.replace(/^\[|\]$/g, ''), port });
      const done = (ok: boolean): void => {
        clearTimeout(timer);
        sock.destroy();
        resolve(ok);
      };
      const timer = setTimeout(() => done(false), timeoutMs);
      timer.unref?.();
      sock.once('connect', () => done(true));
      sock.once('error', () => done(false));
    });
  return Promise.all(endpoints.map(one)).then((r) => r.some(Boolean));
}

export const DEFAULT_REACHABILITY: ReachabilityOptions = { intervalMs: 1000, spreadMs: 2000, probe: tcpReachable };

// ---------------------------------------------------------------------------
// Metrics, one set per registry

export interface ClusterMeshMetrics {
  rejected: Counter<'source_cluster' | 'prefix' | 'reason'>;
  ready: Gauge<'source_cluster'>;
  reconnections: Counter<'source_cluster'>;
}
const metricsByRegistry = new WeakMap<Registry, ClusterMeshMetrics>();

export function clusterMeshMetrics(registry: Registry = promClient.register): ClusterMeshMetrics {
  let m = metricsByRegistry.get(registry);
  if (!m) {
    m = {
      rejected: new promClient.Counter({
        name: 'clustermesh_remote_values_rejected_total',
        help: 'Values read from remote clusters that failed validation',
        labelNames: ['source_cluster', 'prefix', 'reason'] as const,
        registers: [registry],
      }),
      ready: new promClient.Gauge({
        name: 'clustermesh_remote_cluster_ready',
        help: '1 when the remote cluster is connected and every prefix is synced',
        labelNames: ['source_cluster'] as const,
        registers: [registry],
      }),
      reconnections: new promClient.Counter({
        name: 'clustermesh_remote_cluster_reconnections_total',
        help: 'Reconnections to remote clusters',
        labelNames: ['source_cluster'] as const,
        registers: [registry],
      }),
    };
    metricsByRegistry.set(registry, m);
  }
  return m;
}

// ---------------------------------------------------------------------------
// One prefix: accepted values by etcd key, rejected keys, the typed cache.

class SessionEnd extends Error {
  constructor(
    readonly why: 'stopped' | 'failed' | 'refused' | 'config-changed',
    message: string,
    override readonly cause?: unknown,
  ) {
    super(message);
  }
}

interface PrefixSpec<W, K, V> {
  name: SyncedPrefixName;
  /** The etcd prefix watched. */
  prefix: (cluster: string) => string;
  decode: (src: WireSource, key: string, raw: string) => Decoded<W>;
  toDomain: (w: W, src: WireSource) => { key: K; value: V };
}

class PrefixMirror<W, K, V> {
  readonly cache = new Cache<K, V>();
  /** etcd key → domain key of the accepted value. */
  private readonly accepted = new Map<string, K>();
  /** etcd key → modRevision of the rejected value (logged and counted once). */
  private readonly rejected = new Map<string, string>();
  synced = false;

  constructor(
    readonly spec: PrefixSpec<W, K, V>,
    private readonly owner: RemoteCluster,
  ) {}

  upsert(src: WireSource, key: string, raw: string, modRevision: string): void {
    const d = this.spec.decode(src, key, raw);
    if (!d.ok) {
      if (this.rejected.get(key) !== modRevision) {
        this.rejected.set(key, modRevision);
        this.owner.noteRejected(this.spec.name, key, d.reason, d.detail);
      }
      return; // keep what was learned for this key
    }
    this.rejected.delete(key);
    const { key: dk, value } = this.spec.toDomain(d.value, src);
    const prevDk = this.accepted.get(key);
    if (prevDk !== undefined && prevDk !== dk) this.cache.delete(prevDk);
    this.accepted.set(key, dk);
    this.cache.set(dk, value);
  }

  delete(key: string): void {
    this.rejected.delete(key);
    const dk = this.accepted.get(key);
    if (dk === undefined) return;
    this.accepted.delete(key);
    this.cache.delete(dk);
  }

  /** After a full listing: deletes every accepted key not in `listed` (stale pruning). */
  pruneExcept(listed: { has(key: string): boolean }): void {
    const stale: string[] = [];
    for (const key of this.accepted.keys()) if (!listed.has(key)) stale.push(key);
    for (const key of stale) this.delete(key);
    for (const key of [...this.rejected.keys()]) if (!listed.has(key)) this.rejected.delete(key);
    this.synced = true;
  }

  drain(): void {
    for (const key of [...this.accepted.keys()]) this.delete(key);
    this.rejected.clear();
  }
}

function ports(m: Record<string, Record<string, { Protocol: 'TCP' | 'UDP' | 'SCTP'; Port: number }>>): ServiceAddress[] {
  return Object.keys(m)
    .sort()
    .map((ip) => ({
      ip,
      ports: Object.entries(m[ip] ?? {})
        .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
        .map(([name, p]) => ({ name, protocol: p.Protocol, port: p.Port })),
    }));
}

const NODE_SPEC: PrefixSpec<import('./wire.ts').NodeValue, string, RemoteNode> = {
  name: 'nodes',
  prefix: nodesClusterPrefix,
  decode: decodeNode,
  toDomain: (n) => ({
    key: n.Name,
    value: {
      cluster: n.Cluster,
      clusterId: n.ClusterID,
      name: n.Name,
      addresses: n.IPAddresses.map((a) => ({ type: a.Type, ip: a.IP })),
      ipv4AllocCIDR: n.IPv4AllocCIDR,
      ipv6AllocCIDR: n.IPv6AllocCIDR,
      labels: { ...n.Labels },
    },
  }),
};
const IDENTITY_SPEC: PrefixSpec<RemoteIdentity, number, RemoteIdentity> = {
  name: 'identities',
  prefix: () => identitiesPrefix,
  decode: decodeIdentity,
  toDomain: (i) => ({ key: i.id, value: i }),
};
const IP_SPEC: PrefixSpec<import('./wire.ts').IpEntryValue, string, RemoteIpEntry> = {
  name: 'ip',
  prefix: () => ipPrefix,
  decode: decodeIpEntry,
  // Keyed by the IP for a host entry, by "ip/len" for a prefix.
  toDomain: (e, src) => ({
    key: e.Mask === null ? e.IP : `${e.IP}/${e.Mask}`,
    value: {
      cluster: src.cluster,
      ip: e.IP,
      prefix: `${e.IP}/${e.Mask ?? (e.IP.includes(':') ? 128 : 32)}`,
      identity: e.ID,
      hostIP: e.HostIP,
      encryptKey: e.Key,
      namespace: e.K8sNamespace,
      podName: e.K8sPodName,
      serviceAccount: e.K8sServiceAccount,
      namedPorts: e.NamedPorts.map((p) => ({ name: p.Name, port: p.Port, protocol: p.Protocol })),
    },
  }),
};
const SERVICE_SPEC: PrefixSpec<import('./wire.ts').ServiceValue, string, RemoteService> = {
  name: 'services',
  prefix: servicesClusterPrefix,
  decode: decodeService,
  toDomain: (s) => ({
    key: `${s.namespace}/${s.name}`,
    value: {
      cluster: s.cluster,
      clusterId: s.clusterID,
      namespace: s.namespace,
      name: s.name,
      frontends: ports(s.frontends),
      backends: ports(s.backends),
      labels: { ...s.labels },
      selector: { ...s.selector },
      shared: s.shared,
      includeExternal: s.includeExternal,
    },
  }),
};

const emptyRejected = (): Record<RejectReason, number> =>
  Object.fromEntries(REJECT_REASONS.map((r) => [r, 0])) as Record<RejectReason, number>;

// ---------------------------------------------------------------------------

export class RemoteCluster {
  readonly name: string;
  private connection: KvConnectionConfig;
  private readonly local: LocalCluster;
  private readonly ids: ClusterIdRegistry | null;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly log: Logger;
  private readonly metrics: ClusterMeshMetrics;
  private readonly backoff: BackoffOptions;
  private readonly maxValueBytes: number | undefined;
  private readonly connectFn: (config: KvConnectionConfig) => KvClient;
  private readonly cached: { client: KvClient } | null;
  private upstream: CachedRemoteStatus | null = null;

  private readonly nodeMirror: PrefixMirror<import('./wire.ts').NodeValue, string, RemoteNode>;
  private readonly identityMirror: PrefixMirror<RemoteIdentity, number, RemoteIdentity>;
  private readonly ipMirror: PrefixMirror<import('./wire.ts').IpEntryValue, string, RemoteIpEntry>;
  private readonly serviceMirror: PrefixMirror<import('./wire.ts').ServiceValue, string, RemoteService>;

  /** Node name → node. */
  readonly nodes: ObservableMap<string, RemoteNode>;
  /** Identity id → identity. */
  readonly identities: ObservableMap<number, RemoteIdentity>;
  /** Endpoint IP → entry. */
  readonly ipEntries: ObservableMap<string, RemoteIpEntry>;
  /** "namespace/name" → service. */
  readonly services: ObservableMap<string, RemoteService>;

  private state: RemoteClusterState = 'stopped';
  private clusterId: number | null = null;
  /** "id/maxConnectedClusters" of the accepted cluster-config. */
  private acceptedLayout: string | null = null;
  private connected = false;
  private everConnected = false;
  private reconnections = 0;
  private lastError: string | null = null;
  private lastErrorAt: string | null = null;
  private refusedReason: string | null = null;
  private readonly rejectedCounts = emptyRejected();
  private readonly heartbeatStaleMs: number;
  private readonly syncSlots: SyncSlots;
  private acceptedConfig: ClusterConfig | null = null;
  /** Our clock when the heartbeat was last seen to change, or the session connected (whichever is later). */
  private heartbeatSince: number | null = null;
  private heartbeatSeenAt: number | null = null;
  private heartbeatValue: number | null = null;
  /** The last gaps between successive heartbeat values (the remote's clock), newest last. */
  private readonly heartbeatGaps: number[] = [];
  private staleTimer: object | null = null;
  private readonly reachability: ReachabilityOptions | null;
  private reachableAgain = 0;
  /** The last reachability probe failed (kept across attempts: a heal during an attempt is still a transition). */
  private lastProbeFailed = false;
  private running: Promise<void> | null = null;
  private lifecycle: AbortController | null = null;
  private session: AbortController | null = null;
  private readonly listeners = new Set<(s: RemoteClusterStatus) => void>();

  constructor(opts: RemoteClusterOptions) {
    this.name = opts.name;
    this.connection = opts.connection;
    this.local = opts.local;
    this.ids = opts.ids ?? null;
    this.clock = opts.clock ?? systemClock;
    this.random = opts.random ?? Math.random;
    this.log = opts.logger ?? silentLogger;
    this.metrics = clusterMeshMetrics(opts.registry);
    this.backoff = { ...DEFAULT_BACKOFF, ...opts.backoff };
    this.maxValueBytes = opts.maxValueBytes;
    this.connectFn = opts.connect ?? ((c) => new KvClient(c));
    this.cached = opts.cached ?? null;
    this.heartbeatStaleMs = opts.heartbeatStaleMs ?? DEFAULT_HEARTBEAT_STALE_MS;
    this.reachability = opts.reachability === false ? null : { ...DEFAULT_REACHABILITY, ...opts.reachability };
    this.syncSlots = opts.syncSlots ?? new SyncSlots(5);
    this.nodeMirror = new PrefixMirror(NODE_SPEC, this);
    this.identityMirror = new PrefixMirror(IDENTITY_SPEC, this);
    this.ipMirror = new PrefixMirror(IP_SPEC, this);
    this.serviceMirror = new PrefixMirror(SERVICE_SPEC, this);
    this.nodes = this.nodeMirror.cache;
    this.identities = this.identityMirror.cache;
    this.ipEntries = this.ipMirror.cache;
    this.services = this.serviceMirror.cache;
  }

  private get mirrors(): PrefixMirror<unknown, unknown, unknown>[] {
    return [this.nodeMirror, this.identityMirror, this.ipMirror, this.serviceMirror] as unknown as PrefixMirror<unknown, unknown, unknown>[];
  }

  /** Connected and every prefix listed in the current session (status().ready, without building the status). */
  get ready(): boolean {
    return this.state === 'ready';
  }

  /** Every prefix's synced canary seen in the current session (all of status().synced, without building the status). */
  get prefixesSynced(): boolean {
    return this.mirrors.every((m) => m.synced);
  }

  /** name, connected, ready and the last error of status(), without building the rest (the agent's Pod status summary asks every second). */
  brief(): Pick<RemoteClusterStatus, 'name' | 'connected' | 'ready' | 'lastError'> {
    return { name: this.name, connected: this.connected, ready: this.state === 'ready', lastError: this.lastError };
  }

  status(): RemoteClusterStatus {
    const synced = {} as Record<SyncedPrefixName, boolean>;
    for (const m of this.mirrors) synced[m.spec.name] = m.synced;
    return {
      name: this.name,
      state: this.state,
      connected: this.connected,
      ready: this.state === 'ready',
      clusterId: this.clusterId,
      synced,
      counts: {
        nodes: this.nodes.size,
        endpoints: this.ipEntries.size,
        identities: this.identities.size,
        services: this.services.size,
      },
      rejected: { ...this.rejectedCounts },
      reconnections: this.reconnections,
      lastError: this.lastError,
      lastErrorAt: this.lastErrorAt,
      refusedReason: this.refusedReason,
      via: this.cached ? 'cache' : 'direct',
      upstream: this.upstream,
      config: this.acceptedConfig
        ? {
            cached: this.acceptedConfig.capabilities.cached,
            serviceExportsEnabled: this.acceptedConfig.capabilities.serviceExportsEnabled,
            syncedCanaries: this.acceptedConfig.capabilities.syncedCanaries,
          }
        : null,
      heartbeat: this.heartbeatStatus(),
      reachableAgain: this.reachableAgain,
    };
  }

  private heartbeatInterval(): number | null {
    return this.heartbeatGaps.length === 0 ? null : Math.min(...this.heartbeatGaps);
  }

  /** How long without a new heartbeat before stale: the configured limit, or sooner once the remote's interval is known. */
  private staleAfterMs(): number {
    const interval = this.heartbeatInterval();
    if (interval === null) return this.heartbeatStaleMs;
    return Math.min(this.heartbeatStaleMs, Math.max(HEARTBEAT_STALE_FLOOR_MS, Math.round(HEARTBEAT_STALE_INTERVALS * interval)));
  }

  private heartbeatStatus(): RemoteClusterStatus['heartbeat'] {
    const now = this.clock.now();
    const ageMs = this.heartbeatSince === null ? null : Math.max(0, now - this.heartbeatSince);
    const staleAfterMs = this.staleAfterMs();
    return {
      lastSeenAt: this.heartbeatSeenAt === null ? null : new Date(this.heartbeatSeenAt).toISOString(),
      value: this.heartbeatValue === null ? null : new Date(this.heartbeatValue).toISOString(),
      ageMs,
      stale: this.connected && ageMs !== null && ageMs > staleAfterMs,
      staleAfterMs,
      intervalMs: this.heartbeatInterval(),
    };
  }

  /** A heartbeat was seen (listed or changed). */
  private noteHeartbeat(raw: string): void {
    const now = this.clock.now();
    const wasStale = this.heartbeatStatus().stale;
    const value = decodeHeartbeat(raw);
    if (value !== null && this.heartbeatValue !== null && value > this.heartbeatValue) {
      this.heartbeatGaps.push(value - this.heartbeatValue);
      if (this.heartbeatGaps.length > 4) this.heartbeatGaps.shift();
    }
    this.heartbeatSince = now;
    this.heartbeatSeenAt = now;
    this.heartbeatValue = value;
    if (wasStale) {
      this.log.info({ cluster: this.name }, 'remote heartbeat resumed');
      this.notify();
    }
    this.armStaleTimer();
  }

  /**
   * Tells the log and the status listeners when the heartbeat goes stale while connected. Only a
   * report: a connection that is slow but alive is kept (keepalive and watch errors end a dead one).
   */
  private armStaleTimer(): void {
    if (this.staleTimer) this.clock.clearTimeout(this.staleTimer);
    this.staleTimer = null;
    if (!this.connected || this.heartbeatSince === null) return;
    const due = this.heartbeatSince + this.staleAfterMs() + 1 - this.clock.now();
    this.staleTimer = this.clock.setTimeout(() => {
      this.staleTimer = null;
      const hb = this.heartbeatStatus();
      if (!hb.stale) return this.armStaleTimer();
      this.log.warn({ cluster: this.name, ageMs: hb.ageMs, staleAfterMs: hb.staleAfterMs, intervalMs: hb.intervalMs }, 'remote heartbeat stale (connection kept)');
      this.notify();
    }, Math.max(0, due));
  }

  private disarmStaleTimer(): void {
    if (this.staleTimer) this.clock.clearTimeout(this.staleTimer);
    this.staleTimer = null;
  }

  /** Called on every state change. Returns the unsubscribe function. */
  onStatus(fn: (s: RemoteClusterStatus) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Starts (or resumes) importing. Returns at once; progress shows in status(). */
  start(): void {
    if (this.state === 'removed') throw new Error(`remote cluster ${this.name} was removed`);
    if (this.running) return;
    const lc = new AbortController();
    this.lifecycle = lc;
    this.running = this.loop(lc.signal).finally(() => {
      if (this.lifecycle === lc) this.lifecycle = null;
      this.running = null;
    });
  }

  /** Ends the connection; keeps everything learned. */
  async stop(): Promise<void> {
    this.lifecycle?.abort();
    this.session?.abort();
    await this.running;
    if (this.state !== 'removed') this.setState('stopped');
  }

  /** Uses a new connection config (certificate rotated, endpoints moved): reconnects, keeps data. */
  async reconfigure(connection: KvConnectionConfig): Promise<void> {
    const wasRunning = this.running !== null;
    await this.stop();
    this.connection = connection;
    if (wasRunning) this.start();
  }

  /** Stops and drains: every entry is deleted from the caches; the cluster ID is released. */
  async remove(): Promise<void> {
    await this.stop();
    this.forgetLayout();
    this.setState('removed');
    this.metrics.ready.remove({ source_cluster: this.name });
  }

  /** @internal called by a mirror for a rejected value. */
  noteRejected(prefix: SyncedPrefixName, key: string, reason: RejectReason, detail: string): void {
    this.rejectedCounts[reason]++;
    this.metrics.rejected.inc({ source_cluster: this.name, prefix, reason });
    this.log.warn({ cluster: this.name, prefix, key, reason, detail }, 'rejected remote value');
  }

  // -------------------------------------------------------------------------

  private setState(s: RemoteClusterState): void {
    const changed = this.state !== s;
    this.state = s;
    this.metrics.ready.set({ source_cluster: this.name }, s === 'ready' ? 1 : 0);
    if (changed) this.notify();
  }

  private notify(): void {
    const st = this.status();
    for (const fn of [...this.listeners]) {
      try {
        fn(st);
      } catch {
        /* a listener's failure is its own */
      }
    }
  }

  private noteError(err: unknown): void {
    const msg = err instanceof KvError ? `${err.kind}: ${err.message}` : err instanceof Error ? err.message : String(err);
    this.lastError = msg;
    this.lastErrorAt = new Date(this.clock.now()).toISOString();
  }

  private async loop(stop: AbortSignal): Promise<void> {
    let attempt = 0;
    if (!isValidClusterName(this.name) || this.name === this.local.name) {
      this.refusedReason =
        this.name === this.local.name ? `cluster name ${this.name} is the local cluster's name` : `invalid cluster name ${JSON.stringify(this.name)}`;
      this.noteError(new Error(this.refusedReason));
      this.log.error({ cluster: this.name }, this.refusedReason);
      this.setState('refused');
      return; // a name never becomes valid: wait for a config change
    }
    while (!stop.aborted) {
      const session = new AbortController();
      this.session = session;
      const onStop = () => session.abort();
      stop.addEventListener('abort', onStop, { once: true });
      let becameReady = false;
      try {
        await this.runSession(session.signal, () => {
          becameReady = true;
        });
      } catch (err) {
        if (!(err instanceof SessionEnd && err.why === 'stopped')) {
          this.noteError(err instanceof SessionEnd && err.cause !== undefined ? err.cause : err);
          this.log.warn({ cluster: this.name, err: this.lastError }, 'remote cluster session ended');
        }
      } finally {
        stop.removeEventListener('abort', onStop);
        session.abort();
        if (this.session === session) this.session = null;
        this.connected = false;
        this.disarmStaleTimer();
      }
      if (stop.aborted) break;
      if (this.state !== 'refused') this.setState('disconnected');
      attempt = becameReady ? 0 : attempt + 1;
      await this.backoffWait(backoffDelay(this.backoff, attempt, this.random), stop);
    }
  }

  /**
   * The backoff before the next session; cut short when the remote becomes reachable again.
   * A cut of minutes grows the backoff to its cap (30 s and jitter), so the heal would wait up to
   * that long. Instead a bare TCP connect every reachability.intervalMs (nothing at the remote
   * while it is unreachable, an accept and a close once it is back) watches for the transition
   * from unreachable to reachable (the last probe before an attempt counts too: a heal while an
   * attempt was timing out is still a transition); then the next session starts after a random
   * 0..spreadMs, so the agents of a mesh do not all connect in the same instant. A remote that
   * is reachable but fails (refused config, TLS, an overloaded etcd timing out) never shows that
   * transition and keeps the full backoff: the storm protection of the cap is unchanged there.
   */
  private async backoffWait(delayMs: number, stop: AbortSignal): Promise<void> {
    const r = this.reachability;
    if (!r || delayMs <= r.intervalMs || this.state === 'refused') {
      await sleep(this.clock, delayMs, stop);
      return;
    }
    const wake = new AbortController();
    const onStop = (): void => wake.abort();
    stop.addEventListener('abort', onStop, { once: true });
    const watching = (async (): Promise<void> => {
      while (await sleep(this.clock, r.intervalMs, wake.signal)) {
        const up = await r.probe(this.connection.endpoints, r.intervalMs).catch(() => false);
        if (wake.signal.aborted) return;
        const transition = up && this.lastProbeFailed;
        this.lastProbeFailed = !up;
        if (!transition) continue;
        if (!(await sleep(this.clock, Math.round(this.random() * r.spreadMs), wake.signal))) return;
        this.reachableAgain++;
        this.log.info({ cluster: this.name }, 'remote reachable again: reconnecting before the backoff ends');
        wake.abort();
        return;
      }
    })();
    await sleep(this.clock, delayMs, wake.signal);
    wake.abort();
    stop.removeEventListener('abort', onStop);
    void watching; // a probe still in flight ends on its own timeout and changes nothing
  }

  private async runSession(signal: AbortSignal, onReady: () => void): Promise<void> {
    if (this.state !== 'refused') this.setState('connecting');
    let fail!: (e: SessionEnd) => void;
    const ended = new Promise<never>((_, reject) => {
      fail = reject;
    });
    ended.catch(() => {});
    const onAbort = () => fail(new SessionEnd('stopped', 'stopped'));
    if (signal.aborted) onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    const race = <T>(p: Promise<T>): Promise<T> => {
      p.catch(() => {});
      return Promise.race([p, ended]);
    };
    const wrap = (err: unknown): SessionEnd => (err instanceof SessionEnd ? err : new SessionEnd('failed', String(err), err));

    let client: KvClient | null = null;
    const watches: WatchHandle[] = [];
    const stores: WatchStore[] = [];
    // Sync slots this session holds (their release functions), and what stops its waits for one.
    const held: Array<() => void> = [];
    const slotGate = new AbortController();
    const slot = async (): Promise<void> => {
      await race(this.syncSlots.acquire(slotGate.signal, held));
    };
    const releaseSlot = (): void => held.pop()?.();
    try {
      await slot();
      const c = this.cached ? this.cached.client : (client = this.connectFn(this.connection));

      // cluster-config
      const cfgKey = clusterConfigKey(this.name);
      // Exactly the key (get and watch, no prefix range): Cilium's `remote` role grants only that key.
      const cfgRead = await race(c.getWithRevision(cfgKey)).catch((e) => {
        throw wrap(e);
      });
      let cfgPair = cfgRead.pair;
      let cfgRevision = cfgRead.revision;
      if (!cfgPair) {
        // reachable, but nothing published yet (a new or wiped etcd): wait for it in this session
        this.connected = true;
        this.setState('waiting-config');
        this.log.info({ cluster: this.name }, `waiting for ${cfgKey}`);
        cfgPair = await race(
          new Promise<KvPair>((resolve) => {
            const h = c.watch(
              cfgKey,
              (BigInt(cfgRead.revision) + 1n).toString(),
              (ev) => {
                if (ev.key === cfgKey && ev.kind === 'upsert') resolve({ key: ev.key, value: ev.value, modRevision: ev.modRevision, lease: '0' });
              },
              (err) => fail(wrap(err)),
              { exact: true },
            );
            watches.push(h);
          }),
        );
        cfgRevision = cfgPair.modRevision;
      }
      const cfg = this.checkConfig(cfgPair);
      const acceptedValue = cfgPair.value;
      this.connected = true;
      this.lastProbeFailed = false;
      if (this.everConnected) {
        this.reconnections++;
        this.metrics.reconnections.inc({ source_cluster: this.name });
      }
      this.everConnected = true;
      this.refusedReason = null;
      const src: WireSource = {
        cluster: this.name,
        clusterId: cfg.id,
        maxConnectedClusters: cfg.capabilities.maxConnectedClusters,
        ...(this.maxValueBytes !== undefined ? { maxValueBytes: this.maxValueBytes } : {}),
      };
      // a changed cluster-config ends the session
      watches.push(
        c.watch(
          cfgKey,
          (BigInt(cfgRevision) + 1n).toString(),
          (ev) => {
            if (ev.key !== cfgKey) return;
            if (ev.kind === 'upsert' && ev.value === acceptedValue) return;
            fail(new SessionEnd('config-changed', `${cfgKey} ${ev.kind === 'delete' ? 'was deleted' : 'changed'}`));
          },
          (err) => fail(wrap(err)),
          { exact: true },
        ),
      );
      // The heartbeat: its age counts from now until it is seen.
      this.heartbeatSince = this.clock.now();
      const hb = await race(c.list(heartbeatKey)).catch((e) => {
        throw wrap(e);
      });
      const hbPair = hb.pairs.find((p) => p.key === heartbeatKey);
      if (hbPair) this.noteHeartbeat(hbPair.value);
      else this.armStaleTimer();
      watches.push(
        c.watch(
          heartbeatKey,
          (BigInt(hb.revision) + 1n).toString(),
          (ev) => {
            if (ev.key === heartbeatKey && ev.kind === 'upsert' && !signal.aborted) this.noteHeartbeat(ev.value);
          },
          (err) => fail(wrap(err)),
        ),
      );
      if (this.cached) {
        // the cache tier's own session to the remote (shown in status, never trusted for data)
        const key = cacheStatusKey(this.name);
        const st = await race(c.getWithRevision(key)).catch((e) => {
          throw wrap(e);
        });
        this.upstream = st.pair ? decodeCachedRemoteStatus(st.pair.value) : null;
        watches.push(
          c.watch(
            key,
            (BigInt(st.revision) + 1n).toString(),
            (ev) => {
              if (ev.key === key && !signal.aborted) this.upstream = ev.kind === 'upsert' ? decodeCachedRemoteStatus(ev.value) : null;
            },
            (err) => fail(wrap(err)),
            { exact: true },
          ),
        );
      }
      this.setState('syncing');
      releaseSlot();

      const runPrefix = async (m: PrefixMirror<unknown, unknown, unknown>): Promise<void> => {
        if (cfg.capabilities.syncedCanaries) await race(this.waitCanary(c, m.spec.name, watches, fail));
        if (signal.aborted) return;
        await slot();
        // A WatchStore per session: list-then-watch. Its first list upserts
        // everything present; what the mirror had that is not listed is pruned
        // right after. Any failure ends the session (the next one waits for the
        // canary again before re-listing), so the store's own retry never runs.
        // Via the cache, keys are read under the cache prefix and validated as
        // the remote's own keys (the same decoders, key checks included).
        const statePrefix = m.spec.prefix(this.name);
        const watched = this.cached ? cacheKeyPrefix(m.spec.name, this.name) : statePrefix;
        const toState = this.cached ? (k: string): string => statePrefix + k.slice(watched.length) : (k: string): string => k;
        const store = new WatchStore(c, watched, {
          onEvent: (ev) => {
            if (signal.aborted) return;
            if (ev.kind === 'upsert') m.upsert(src, toState(ev.key), ev.value, ev.modRevision);
            else m.delete(toState(ev.key));
          },
          onError: (err) => fail(wrap(err)),
          clock: this.clock,
          random: this.random,
          backoff: { initialMs: this.backoff.maxMs, maxMs: this.backoff.maxMs },
          retainValues: false, // the mirror keeps the decoded entry; a raw copy of every remote value would double the memory
        });
        stores.push(store);
        store.start();
        await race(store.synced);
        // the continuation runs before any watch event: the store holds exactly the listing
        if (!signal.aborted) m.pruneExcept(this.cached ? { has: (k: string) => store.has(watched + k.slice(statePrefix.length)) } : store);
        releaseSlot();
      };
      await race(Promise.all(this.mirrors.map((m) => runPrefix(m)))).catch((e) => {
        throw wrap(e);
      });
      this.setState('ready');
      onReady();
      await ended;
    } finally {
      slotGate.abort();
      for (const release of held.splice(0)) release();
      signal.removeEventListener('abort', onAbort);
      await Promise.all([...stores.map((st) => st.stop().catch(() => {})), ...watches.map((w) => w.cancel().catch(() => {}))]);
      if (client) await client.close().catch(() => {});
    }
  }

  /** Validates the remote's cluster-config; throws SessionEnd('refused'). */
  private checkConfig(pair: KvPair): ClusterConfig {
    const refuse = (why: string): never => {
      if (this.refusedReason !== why) this.log.error({ cluster: this.name, reason: why }, 'refusing remote cluster');
      this.refusedReason = why;
      this.setState('refused');
      throw new SessionEnd('refused', why);
    };
    const d = decodeClusterConfig(this.name, pair.key, pair.value, this.maxValueBytes);
    if (!d.ok) return refuse(`invalid cluster-config: ${d.detail}`);
    const cfg = d.value;
    const layout = `${cfg.id}/${cfg.capabilities.maxConnectedClusters}`;
    if (this.acceptedLayout !== null && this.acceptedLayout !== layout) {
      // came back with another ID or layout: what we learned was checked against the old one
      this.log.warn({ cluster: this.name, was: this.acceptedLayout, now: layout }, 'remote cluster changed its ID; draining');
      this.forgetLayout();
    }
    if (cfg.capabilities.maxConnectedClusters !== this.local.maxConnectedClusters) {
      return refuse(`${this.name} uses maxConnectedClusters ${cfg.capabilities.maxConnectedClusters}, this cluster ${this.local.maxConnectedClusters}`);
    }
    if (cfg.id === this.local.id) return refuse(`${this.name} uses cluster ID ${cfg.id}, the ID of the local cluster ${this.local.name}`);
    if (cfg.capabilities.cached && !this.cached) return refuse(`${this.name}'s cluster-config says cached: its data is a kvstoremesh cache under cilium/cache/, read only by agents of the cache's own cluster (agent option clustermeshCache)`);
    if (!cfg.capabilities.cached && this.cached) return refuse(`${this.name}'s cluster-config in the local etcd does not say cached: no cache tier wrote it`);
    const clash = this.ids?.claim(this.name, cfg.id) ?? null;
    if (clash !== null) return refuse(clash);
    this.clusterId = cfg.id;
    this.acceptedLayout = layout;
    this.acceptedConfig = cfg;
    return cfg;
  }

  private forgetLayout(): void {
    for (const m of this.mirrors) {
      m.drain();
      m.synced = false;
    }
    this.ids?.release(this.name);
    this.clusterId = null;
    this.acceptedLayout = null;
    this.acceptedConfig = null;
  }

  /** Resolves once `cilium/synced/<cluster>/<prefix>` exists. */
  private async waitCanary(c: KvClient, prefix: SyncedPrefixName, watches: WatchHandle[], fail: (e: SessionEnd) => void): Promise<void> {
    const key = this.cached ? cacheSyncedKey(this.name, prefix) : syncedKey(this.name, prefix);
    const listed = await c.list(key);
    if (listed.pairs.some((p) => p.key === key)) return;
    this.log.info({ cluster: this.name, prefix }, 'waiting for synced canary');
    await new Promise<void>((resolve, reject) => {
      const h = c.watch(
        key,
        (BigInt(listed.revision) + 1n).toString(),
        (ev) => {
          if (ev.key === key && ev.kind === 'upsert') {
            void h.cancel();
            resolve();
          }
        },
        (err) => {
          const e = new SessionEnd('failed', err.message, err);
          fail(e);
          reject(e);
        },
      );
      watches.push(h);
    });
  }
}

export const SYNCED_PREFIXES = SYNCED_PREFIX_NAMES;

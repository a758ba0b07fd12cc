// The agent's reader of cm_events: decodes every record into a Flow (named by
// an AgentFlowNamer) and keeps it in the FlowStore. It consumes every
// intervalMs from the event loop, and on demand before an API answer, so a
// GET /v1/flows right after some traffic sees it.
import type { ObservableMap } from '../clustermesh/cache.ts';
import type { RemoteIdentity, RemoteNode, IpCacheEntry } from '../clustermesh/clustermesh.ts';
import * as eventsMap from '../datapath/maps/events.ts';
import * as metricsMap from '../datapath/maps/metrics.ts';
import type { BpfMap } from '../datapath/libbpf/map.ts';
import { RingBufferReader } from '../datapath/libbpf/ringbuf.ts';
import { TraceReason } from '../datapath/maps/reasons.ts';
import { labelStrings } from '../identity/labels.ts';
import { clusterIdOfIdentity, MIN_ALLOCATED_IDENTITY, nodeInternalIP, RESERVED_IDENTITY_LABELS, type Endpoint, type MaxConnectedClusters, type Node } from '../model/index.ts';
import { FlowStore, isLostMarker, monotonicToDate, toFlow, type FlowNamer, type FlowStoreStatus } from './flows.ts';
import type { Logger } from './endpoints.ts';

export interface FlowNamerSources {
  cluster: string;
  clusterID: number;
  maxConnectedClusters: MaxConnectedClusters;
  nodeName: string;
  /** This node's endpoints (fresh: not yet published ones too). */
  localEndpoints(): Array<{ ip: string; namespace: string; podName: string; identity: number | null; identityLabels: string[] }>;
  /** The local cluster's published endpoints and nodes. */
  clusterEndpoints(): Endpoint[];
  clusterNodes(): Node[];
  remoteIpcache: ObservableMap<string, IpCacheEntry>;
  remoteIdentities: ObservableMap<number, RemoteIdentity>;
  remoteNodes: ObservableMap<string, RemoteNode>;
  now?: () => number;
}

type PodName = NonNullable<ReturnType<FlowNamer['pod']>>;

/**
 * Names addresses and identities from the agent's own state. The local
 * cluster's endpoints and the nodes are indexed by IP, rebuilt at most once a
 * second (events come in bursts); remote ipcache and identities are looked up
 * directly.
 */
export class AgentFlowNamer implements FlowNamer {
  readonly node: string;
  #builtAt = -Infinity;
  #pods = new Map<string, PodName>();
  #labels = new Map<number, string[]>();
  #nodes = new Map<string, string>();

  constructor(private readonly s: FlowNamerSources) {
    this.node = `${s.cluster}/${s.nodeName}`;
  }

  #index(): void {
    const now = (this.s.now ?? Date.now)();
    if (now - this.#builtAt < 1000) return;
    this.#builtAt = now;
    const pods = new Map<string, PodName>();
    const labels = new Map<number, string[]>();
    const nodes = new Map<string, string>();
    for (const n of this.s.clusterNodes()) {
      const ip = nodeInternalIP(n);
      if (ip) nodes.set(ip, `${this.s.cluster}/${n.metadata.name}`);
    }
    for (const n of this.s.remoteNodes.values()) for (const a of n.addresses) if (a.type === 'InternalIP') nodes.set(a.ip, `${n.cluster}/${n.name}`);
    for (const e of this.s.clusterEndpoints()) {
      const net = e.status.networking;
      pods.set(net.podIP, { namespace: e.metadata.namespace ?? 'default', name: e.metadata.name, cluster: this.s.cluster, node: `${this.s.cluster}/${net.nodeName}`, identity: e.status.identity.id });
      if (e.status.identity.labels.length > 0) labels.set(e.status.identity.id, [...e.status.identity.labels].sort());
    }
    for (const e of this.s.localEndpoints()) {
      pods.set(e.ip, { namespace: e.namespace, name: e.podName, cluster: this.s.cluster, node: this.node, identity: e.identity });
      if (e.identity !== null && e.identityLabels.length > 0) labels.set(e.identity, [...e.identityLabels].sort());
    }
    this.#pods = pods;
    this.#labels = labels;
    this.#nodes = nodes;
  }

  pod(ip: string): PodName | undefined {
    this.#index();
    const local = this.#pods.get(ip);
    if (local) return local;
    const r = this.s.remoteIpcache.get(ip);
    if (!r || !r.podName) return undefined;
    let node: string | null = null;
    if (r.hostIP) node = this.nodeOfIP(r.hostIP);
    return { namespace: r.namespace, name: r.podName, cluster: r.cluster, node, identity: r.identity };
  }

  labels(id: number): string[] {
    if (id < MIN_ALLOCATED_IDENTITY) return RESERVED_IDENTITY_LABELS[id] ? [RESERVED_IDENTITY_LABELS[id]!] : [];
    this.#index();
    const local = this.#labels.get(id);
    if (local) return local;
    const r = this.s.remoteIdentities.get(id);
    return r ? labelStrings(r.labels) : [];
  }

  clusterOfIdentity(id: number): string | null {
    if (id < MIN_ALLOCATED_IDENTITY || id > 0xffffff) return null; // reserved, or node-local (CIDR)
    const r = this.s.remoteIdentities.get(id);
    if (r) return r.cluster;
    const cid = clusterIdOfIdentity(id, this.s.maxConnectedClusters);
    if (cid === this.s.clusterID) return this.s.cluster;
    for (const n of this.s.remoteNodes.values()) if (n.clusterId === cid) return n.cluster;
    return cid > 0 ? `cluster-id-${cid}` : null;
  }

  nodeOfIP(ip: string): string | null {
    this.#index();
    return this.#nodes.get(ip) ?? null;
  }
}

export interface FlowsStatus extends FlowStoreStatus {
  /**
   * Events the datapath had no room for in the ring buffer (the reader was
   * behind), counted in cm_metrics as TRACE_EVENT_LOST: since the maps were
   * created, and since this agent started reading.
   */
  lost: { datapath: number; sinceStart: number };
}

/** Counted lost events of a node (TRACE_EVENT_LOST, every direction). */
export function lostEvents(metrics: BpfMap): number {
  let n = 0;
  for (const direction of ['unknown', 'ingress', 'egress'] as const) n += Number(metricsMap.get(metrics, { reason: TraceReason.TRACE_EVENT_LOST, direction }).packets);
  return n;
}

/** What FlowReader needs of a ring buffer reader (RingBufferReader; a fake in unit tests). */
export interface RingSource {
  consume(): number;
  close(): void;
}

export interface FlowReaderDeps {
  /** Opens a reader of one ring (default: a RingBufferReader). */
  openRing?: (map: BpfMap, onData: (data: Buffer) => void) => RingSource;
  /** Counted lost events of the metrics map (default: lostEvents). */
  lostEvents?: (metrics: BpfMap) => number;
}

export class FlowReader {
  readonly store: FlowStore;
  // cm_events, and the ring it replaced on an upgrade (retired) while programs attached
  // before the restart may still write into it: read first in every round (its events are the older ones).
  #live: RingSource;
  #retired: RingSource | undefined;
  readonly #lostAtStart: number;
  readonly #lostEvents: (metrics: BpfMap) => number;

  constructor(
    private readonly maps: { events: BpfMap; metrics: BpfMap; retiredEvents?: BpfMap | undefined },
    private readonly namer: FlowNamer,
    capacity: number,
    private readonly log: Logger,
    deps: FlowReaderDeps = {},
  ) {
    this.store = new FlowStore(capacity);
    this.#lostEvents = deps.lostEvents ?? lostEvents;
    this.#lostAtStart = this.#lostEvents(maps.metrics);
    const onData = (data: Buffer): void => {
      let flow;
      try {
        const e = eventsMap.decode(data);
        if (isLostMarker(e)) return;
        flow = toFlow(e, this.namer, monotonicToDate(e.timestamp, this.#mono, this.#wall));
      } catch {
        // a record that does not decode (or name) is counted and skipped, never stops the reader
        this.store.decodeErrors++;
        return;
      }
      this.store.add(flow);
    };
    const open = deps.openRing ?? ((m: BpfMap, h: (data: Buffer) => void): RingSource => new RingBufferReader(m, h));
    this.#live = open(maps.events, onData);
    if (maps.retiredEvents) {
      try {
        this.#retired = open(maps.retiredEvents, onData);
      } catch (err) {
        // the old ring's events are lost, the live ring's are not
        log.warn({ err: (err as Error).message, map: maps.retiredEvents.name }, 'cannot read the retired cm_events ring (replaced by this start); its events are not kept');
      }
    }
  }

  /** Whether the ring replaced at start is still read (until it fails or close()). */
  get readingRetired(): boolean {
    return this.#retired !== undefined;
  }

  // One clock offset per consume round (the records of a round arrive together).
  #mono = 0n;
  #wall = 0;

  /** Reads what the rings hold now: the retired one first (older events), then cm_events. */
  consume(): number {
    this.#mono = process.hrtime.bigint();
    this.#wall = Date.now();
    let n = 0;
    if (this.#retired) {
      try {
        n += this.#retired.consume();
      } catch (err) {
        // A failing retired ring is let go (said once); the live ring is still read.
        this.log.warn({ err: (err as Error).message }, 'reading the retired cm_events ring failed; no longer read');
        this.#closeRetired();
      }
    }
    try {
      n += this.#live.consume();
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'reading cm_events failed');
    }
    return n;
  }

  #closeRetired(): void {
    const r = this.#retired;
    this.#retired = undefined;
    try {
      r?.close();
    } catch {
      // already unusable
    }
  }

  #timer: NodeJS.Timeout | undefined;

  start(intervalMs = 50): void {
    if (this.#timer) return;
    this.consume();
    this.#timer = setInterval(() => this.consume(), intervalMs);
    this.#timer.unref?.();
  }

  status(): FlowsStatus {
    let datapath = 0;
    try {
      datapath = this.#lostEvents(this.maps.metrics);
    } catch {
      // the map closed under us (stopping)
    }
    return { ...this.store.status(), lost: { datapath, sinceStart: Math.max(0, datapath - this.#lostAtStart) } };
  }

  close(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    this.consume();
    this.#closeRetired();
    this.#live.close();
  }
}

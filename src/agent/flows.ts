// Flows: the agent is the one reader of its node's cm_events ring buffer
// (bpf/lib/events.h). Each event becomes a Flow named with what the agent
// knows (local endpoints, the local cluster's endpoints, remote clusters'
// ipcache entries and identities); the last N flows are kept in memory and
// served by the API (GET /v1/flows, and ?follow=1 as newline-delimited JSON).
//
// Lost events are counted, never silent: the datapath counts every event it
// had no room for in the ring buffer (cm_metrics, TRACE_EVENT_LOST: the ring
// was full because the reader was behind), and a follower whose socket does
// not drain drops flows, counted per follower and in total.
import type { DatapathEvent } from '../datapath/maps/events.ts';
import { reasonDescription, TraceReason, DropReason } from '../datapath/maps/reasons.ts';

export type Verdict = 'DROPPED' | 'FORWARDED';
export const VERDICTS: readonly Verdict[] = ['DROPPED', 'FORWARDED'];

export interface FlowPeer {
  ip: string;
  /** TCP/UDP port; null for other protocols. */
  port: number | null;
  identity: number;
  /** `source:key=value`, sorted; [] when the identity is not known here. */
  labels: string[];
  cluster: string | null;
  namespace: string | null;
  /** 'namespace/name' of the pod, null when the address is no known pod. */
  pod: string | null;
  /** 'cluster/node' hosting the pod, when known. */
  node: string | null;
}

export interface Flow {
  time: string;
  /** 'cluster/node' of the agent that saw it. */
  node: string;
  verdict: Verdict;
  /** DROP_* or TRACE_* name. */
  reason: string;
  reasonCode: number;
  description: string;
  direction: string;
  protocol: string;
  /** TCP header flags of the packet ('SYN', 'ACK', ...); null when not TCP. */
  tcpFlags: string[] | null;
  source: FlowPeer;
  destination: FlowPeer;
  /** The service frontend (ClusterIP:port) the source addressed, when the datapath translated it to the destination backend; null otherwise. */
  service: { ip: string; port: number } | null;
  /** Remote node the packet goes to (egress) or came from (overlay ingress). */
  tunnelEndpoint: string | null;
  tunnelNode: string | null;
  /** For policy drops: what decided (the datapath reports the reason, the agent names the enforced side). */
  policy: string | null;
  length: number;
}

/** What the agent knows about addresses and identities, looked up per event. */
export interface FlowNamer {
  /** 'cluster/node' of this agent. */
  readonly node: string;
  pod(ip: string): { namespace: string; name: string; cluster: string; node: string | null; identity: number | null } | undefined;
  labels(identity: number): string[];
  clusterOfIdentity(identity: number): string | null;
  nodeOfIP(ip: string): string | null;
}

/** TCP header flag bits, lowest first. */
const TCP_FLAG_NAMES = ['FIN', 'SYN', 'RST', 'PSH', 'ACK', 'URG', 'ECE', 'CWR'] as const;

export function tcpFlagNames(bits: number): string[] {
  return TCP_FLAG_NAMES.filter((_, i) => (bits & (1 << i)) !== 0);
}

export function tcpFlagBits(names: readonly string[]): number {
  let bits = 0;
  for (const n of names) {
    const i = (TCP_FLAG_NAMES as readonly string[]).indexOf(n);
    if (i >= 0) bits |= 1 << i;
  }
  return bits;
}

export function protoName(p: number): string {
  return p === 6 ? 'TCP' : p === 17 ? 'UDP' : p === 1 ? 'ICMP' : p === 132 ? 'SCTP' : p === 0 ? '-' : String(p);
}

/** CLOCK_MONOTONIC ns (bpf_ktime_get_ns) -> wall-clock time, by the offset between the clocks now. */
export function monotonicToDate(ns: bigint, nowMonoNs = process.hrtime.bigint(), nowMs = Date.now()): Date {
  return new Date(nowMs - Number((nowMonoNs - ns) / 1_000_000n));
}

function peer(n: FlowNamer, ip: string, port: number | null, eventIdentity: number): FlowPeer {
  const p = n.pod(ip);
  // The datapath's identity when it had one, else what the agent knows of the address.
  const identity = eventIdentity || p?.identity || 0;
  return {
    ip,
    port,
    identity,
    labels: n.labels(identity),
    cluster: p?.cluster ?? n.clusterOfIdentity(identity),
    namespace: p?.namespace ?? null,
    pod: p ? `${p.namespace}/${p.name}` : null,
    node: p?.node ?? null,
  };
}

function policyOf(e: DatapathEvent, src: FlowPeer, dst: FlowPeer): string | null {
  if (e.type !== 'drop') return null;
  const local = e.direction === 'ingress' ? dst : src;
  const who = local.pod ?? local.ip;
  if (e.reason === DropReason.DROP_POLICY) return `default deny: ${e.direction} of ${who} is enforced and no allow entry matched`;
  if (e.reason === DropReason.DROP_POLICY_DENY) return `deny entry of ${who}'s ${e.direction} policy`;
  return null;
}

/** A decoded datapath event as a flow. TRACE_EVENT_LOST is no packet: callers count it, they do not store it. */
export function toFlow(e: DatapathEvent, n: FlowNamer, when: Date): Flow {
  const ports = e.protocol === 6 || e.protocol === 17 || e.protocol === 132;
  const source = peer(n, e.srcIp, ports ? e.srcPort : null, e.srcIdentity);
  const destination = peer(n, e.dstIp, ports ? e.dstPort : null, e.dstIdentity);
  return {
    time: when.toISOString(),
    node: n.node,
    verdict: e.type === 'drop' ? 'DROPPED' : 'FORWARDED',
    reason: e.reasonName,
    reasonCode: e.reason,
    description: reasonDescription(e.reason),
    direction: e.direction,
    protocol: protoName(e.protocol),
    tcpFlags: e.protocol === 6 ? tcpFlagNames(e.tcpFlags) : null,
    source,
    destination,
    service: e.service,
    tunnelEndpoint: e.tunnelEndpoint,
    tunnelNode: e.tunnelEndpoint ? n.nodeOfIP(e.tunnelEndpoint) : null,
    policy: policyOf(e, source, destination),
    length: e.length,
  };
}

export function isLostMarker(e: Pick<DatapathEvent, 'type' | 'reason'>): boolean {
  return e.type === 'trace' && e.reason === TraceReason.TRACE_EVENT_LOST;
}

// ---- queries -----------------------------------------------------------------

/** GET /v1/flows query; every field narrows (AND). A peer filter matches source or destination unless from/to says which. */
export interface FlowQuery {
  /** Flows at or after this time. */
  since?: Date;
  verdict?: Verdict;
  cluster?: string;
  namespace?: string;
  /** 'name' or 'namespace/name'. */
  pod?: string;
  identity?: number;
  port?: number;
  protocol?: string;
  fromCluster?: string;
  toCluster?: string;
  fromPod?: string;
  toPod?: string;
  /** The last n matching flows (default: all kept). */
  limit?: number;
}

export const FLOW_QUERY_KEYS = ['since', 'verdict', 'cluster', 'namespace', 'pod', 'identity', 'port', 'protocol', 'from-cluster', 'to-cluster', 'from-pod', 'to-pod', 'limit', 'follow'] as const;

export class FlowQueryError extends Error {}

function intParam(key: string, v: string, min: number, max: number): number {
  if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) throw new FlowQueryError(`${key}=${v}: must be an integer ${min}..${max}`);
  return Number(v);
}

/** Parses a time: ISO-8601, or a duration back from now ('30s', '5m', '2h'). */
export function parseSince(v: string, now = Date.now()): Date {
  const d = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(v);
  if (d) return new Date(now - Number(d[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[d[2] as 'ms' | 's' | 'm' | 'h']);
  const t = Date.parse(v);
  if (Number.isNaN(t)) throw new FlowQueryError(`since=${v}: must be an ISO-8601 time or a duration such as 30s, 5m, 2h`);
  return new Date(t);
}

export function parseVerdict(v: string): Verdict {
  const u = v.toUpperCase();
  if (u !== 'DROPPED' && u !== 'FORWARDED') throw new FlowQueryError(`verdict=${v}: must be DROPPED or FORWARDED`);
  return u;
}

export function parseProtocol(v: string): string {
  const u = v.toUpperCase();
  if (!['TCP', 'UDP', 'ICMP', 'SCTP'].includes(u)) throw new FlowQueryError(`protocol=${v}: must be TCP, UDP, ICMP or SCTP`);
  return u;
}

/** URL query → FlowQuery; an unknown key or a bad value is an error naming it. */
export function parseFlowQuery(params: URLSearchParams): FlowQuery & { follow: boolean } {
  const q: FlowQuery & { follow: boolean } = { follow: false };
  for (const [key, v] of params) {
    switch (key) {
      case 'since':
        q.since = parseSince(v);
        break;
      case 'verdict':
        q.verdict = parseVerdict(v);
        break;
      case 'cluster':
        q.cluster = v;
        break;
      case 'namespace':
        q.namespace = v;
        break;
      case 'pod':
        q.pod = v;
        break;
      case 'identity':
        q.identity = intParam(key, v, 0, 0xffffffff);
        break;
      case 'port':
        q.port = intParam(key, v, 0, 65535);
        break;
      case 'protocol':
        q.protocol = parseProtocol(v);
        break;
      case 'from-cluster':
        q.fromCluster = v;
        break;
      case 'to-cluster':
        q.toCluster = v;
        break;
      case 'from-pod':
        q.fromPod = v;
        break;
      case 'to-pod':
        q.toPod = v;
        break;
      case 'limit':
        q.limit = intParam(key, v, 1, 10_000_000);
        break;
      case 'follow':
        if (!['', '1', 'true', '0', 'false'].includes(v)) throw new FlowQueryError(`follow=${v}: must be 1, true, 0 or false`);
        q.follow = v === '' || v === '1' || v === 'true';
        break;
      default:
        throw new FlowQueryError(`unknown query parameter '${key}' (known: ${FLOW_QUERY_KEYS.join(', ')})`);
    }
  }
  return q;
}

/** FlowQuery → URL query (the inverse of parseFlowQuery). */
export function flowQueryString(q: FlowQuery & { follow?: boolean }): string {
  const p = new URLSearchParams();
  if (q.since) p.set('since', q.since.toISOString());
  if (q.verdict) p.set('verdict', q.verdict);
  if (q.cluster) p.set('cluster', q.cluster);
  if (q.namespace) p.set('namespace', q.namespace);
  if (q.pod) p.set('pod', q.pod);
  if (q.identity !== undefined) p.set('identity', String(q.identity));
  if (q.port !== undefined) p.set('port', String(q.port));
  if (q.protocol) p.set('protocol', q.protocol);
  if (q.fromCluster) p.set('from-cluster', q.fromCluster);
  if (q.toCluster) p.set('to-cluster', q.toCluster);
  if (q.fromPod) p.set('from-pod', q.fromPod);
  if (q.toPod) p.set('to-pod', q.toPod);
  if (q.limit !== undefined) p.set('limit', String(q.limit));
  if (q.follow) p.set('follow', '1');
  const s = p.toString();
  return s ? `?${s}` : '';
}

function podIs(p: FlowPeer, want: string): boolean {
  if (!p.pod) return false;
  return want.includes('/') ? p.pod === want : p.pod.slice(p.pod.indexOf('/') + 1) === want;
}

export function matchesFlow(f: Flow, q: FlowQuery): boolean {
  if (q.since && Date.parse(f.time) < q.since.getTime()) return false;
  if (q.verdict && f.verdict !== q.verdict) return false;
  if (q.protocol && f.protocol !== q.protocol) return false;
  const either = (pred: (p: FlowPeer) => boolean): boolean => pred(f.source) || pred(f.destination);
  if (q.cluster !== undefined && !either((p) => p.cluster === q.cluster)) return false;
  if (q.namespace !== undefined && !either((p) => p.namespace === q.namespace)) return false;
  if (q.pod !== undefined && !either((p) => podIs(p, q.pod!))) return false;
  if (q.identity !== undefined && !either((p) => p.identity === q.identity)) return false;
  if (q.port !== undefined && !either((p) => p.port === q.port)) return false;
  if (q.fromCluster !== undefined && f.source.cluster !== q.fromCluster) return false;
  if (q.toCluster !== undefined && f.destination.cluster !== q.toCluster) return false;
  if (q.fromPod !== undefined && !podIs(f.source, q.fromPod)) return false;
  if (q.toPod !== undefined && !podIs(f.destination, q.toPod)) return false;
  return true;
}

// ---- the store ---------------------------------------------------------------

export interface FlowFollower {
  /** Returns false when the consumer cannot take more now (the flow is dropped for it and counted). */
  write(f: Flow): boolean;
}

export interface FlowStoreStatus {
  /** How many flows are kept (the agent's flowBufferSize). */
  capacity: number;
  stored: number;
  /** Flows decoded since the agent started. */
  seen: number;
  /** Oldest and newest kept flow. */
  oldest: string | null;
  newest: string | null;
  followers: number;
  /** Flows a follower was too slow to take (its socket did not drain), summed over followers. */
  followerDropped: number;
  /** Records of the ring buffer that did not decode. */
  decodeErrors: number;
}

/** The last `capacity` flows, in arrival order, and the followers to tell about new ones. */
export class FlowStore {
  readonly #ring: Array<Flow | undefined>;
  #next = 0;
  #size = 0;
  #seen = 0;
  #followerDropped = 0;
  decodeErrors = 0;
  readonly #followers = new Map<FlowFollower, FlowQuery>();

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`flow buffer size must be a positive integer, got ${capacity}`);
    this.#ring = new Array<Flow | undefined>(capacity);
  }

  add(f: Flow): void {
    this.#ring[this.#next] = f;
    this.#next = (this.#next + 1) % this.capacity;
    if (this.#size < this.capacity) this.#size++;
    this.#seen++;
    for (const [w, q] of this.#followers) {
      if (!matchesFlow(f, q)) continue;
      if (!w.write(f)) this.#followerDropped++;
    }
  }

  /** Kept flows matching q, oldest first; with q.limit the last limit of them. */
  query(q: FlowQuery = {}): Flow[] {
    const out: Flow[] = [];
    const start = (this.#next - this.#size + this.capacity) % this.capacity;
    for (let i = 0; i < this.#size; i++) {
      const f = this.#ring[(start + i) % this.capacity]!;
      if (matchesFlow(f, q)) out.push(f);
    }
    return q.limit !== undefined && out.length > q.limit ? out.slice(out.length - q.limit) : out;
  }

  /** Tells `w` about every new flow matching q until the returned function is called. */
  follow(w: FlowFollower, q: FlowQuery = {}): () => void {
    this.#followers.set(w, { ...q, since: undefined, limit: undefined });
    return () => void this.#followers.delete(w);
  }

  status(): FlowStoreStatus {
    const at = (i: number): Flow | undefined => (this.#size === 0 ? undefined : this.#ring[(this.#next - this.#size + i + this.capacity) % this.capacity]);
    return {
      capacity: this.capacity,
      stored: this.#size,
      seen: this.#seen,
      oldest: at(0)?.time ?? null,
      newest: at(this.#size - 1)?.time ?? null,
      followers: this.#followers.size,
      followerDropped: this.#followerDropped,
      decodeErrors: this.decodeErrors,
    };
  }
}

// What `clustermesh ui` shows, as plain data: the mesh's topology (clusters,
// nodes, pods, services, remote-cluster connections) and one edge per pair of
// workloads and outcome seen in the agents' flows. Pure: the server feeds it
// what the agents answer and sends what it returns to the page.
import type { Flow, FlowPeer } from '../agent/flows.ts';
import type { EndpointInfo, ServiceInfo } from '../agent/types.ts';
import { shortLabels } from '../cli/directory.ts';
import type { StatusReport } from '../cli/status.ts';

export interface ViewRemote {
  /** The remote cluster's name. */
  name: string;
  /** Nodes of the local cluster whose agent has it configured / connected / ready, out of `nodes`. */
  nodes: number;
  configured: number;
  connected: number;
  ready: number;
  reconnections: number;
  lastError: string | null;
}

export interface ViewNode {
  /** 'cluster/node'. */
  key: string;
  name: string;
  cluster: string;
  reachable: boolean;
  ready: boolean;
  error: string | null;
  /** The UI's flow stream from this node's agent: null while it is live, else why not. */
  streamError: string | null;
}

export interface ViewPod {
  /** Graph id: 'pod:cluster/namespace/name'. */
  id: string;
  cluster: string;
  /** 'cluster/node'. */
  node: string;
  namespace: string;
  name: string;
  ip: string;
  identity: number | null;
  labels: string;
}

export interface ViewService {
  /** Graph id: 'svc:cluster/namespace/name'. */
  id: string;
  cluster: string;
  namespace: string;
  name: string;
  global: boolean;
  /** 'vip:port/PROTO' per frontend. */
  frontends: string[];
  /** Graph ids of the backends' pods (pods of other clusters for a global service), or 'ip:port' when the address is no known pod. */
  backends: string[];
}

export interface ViewCluster {
  name: string;
  id: number | null;
  ready: boolean;
  notReady: string[];
  remotes: ViewRemote[];
}

export interface Topology {
  clusters: ViewCluster[];
  nodes: ViewNode[];
  pods: ViewPod[];
  services: ViewService[];
}

/** One end of an edge: a pod, or an address that is no known pod (world, a remote node, an address nobody has). */
export interface EdgeEnd {
  id: string;
  label: string;
  kind: 'pod' | 'address';
  cluster: string | null;
  /** 'cluster/node' for a pod. */
  node: string | null;
  ip: string;
  labels: string;
}

export interface ViewEdge {
  /** 'source>target>verdict>reason'. */
  id: string;
  source: EdgeEnd;
  target: EdgeEnd;
  verdict: Flow['verdict'];
  /** DROP_* / TRACE_* of the last flow (the key for drops). */
  reason: string;
  description: string;
  /** For policy drops: what decided. */
  policy: string | null;
  crossCluster: boolean;
  /** Flow events seen (a packet seen by both nodes counts twice). */
  count: number;
  first: string;
  last: string;
  /** 'PROTO port' seen, at most MAX_PORTS. */
  ports: string[];
  /** Service frontends translated on the way ('vip:port'). */
  services: string[];
}

/** A flow as the page lists it. */
export interface ViewFlow {
  time: string;
  node: string;
  verdict: Flow['verdict'];
  reason: string;
  edge: string;
  text: string;
}

const MAX_PORTS = 8;

export const podId = (cluster: string, namespace: string, name: string): string => `pod:${cluster}/${namespace}/${name}`;

export function edgeEnd(p: FlowPeer): EdgeEnd {
  const labels = shortLabels(p.labels);
  if (p.pod && p.cluster) {
    const [ns, name] = p.pod.split('/') as [string, string];
    return { id: podId(p.cluster, ns, name), label: name, kind: 'pod', cluster: p.cluster, node: p.node, ip: p.ip, labels };
  }
  // One node per address: the same IP is the same thing on every node that saw it.
  return { id: `addr:${p.ip}`, label: p.labels.length ? `${p.ip} (${labels})` : p.ip, kind: 'address', cluster: p.cluster, node: null, ip: p.ip, labels };
}

function peerText(e: EdgeEnd, port: number | null): string {
  return `${e.kind === 'pod' ? `${e.cluster}:${e.label}` : e.ip}${port !== null ? `:${port}` : ''}`;
}

/** The page's one-line text of a flow. */
export function flowText(f: Flow, src = edgeEnd(f.source), dst = edgeEnd(f.destination)): string {
  const svc = f.service ? ` via service ${f.service.ip}:${f.service.port}` : '';
  return `${f.verdict} ${f.reason} ${peerText(src, f.source.port)} -> ${peerText(dst, f.destination.port)} ${f.protocol}${svc} (${f.node}, ${f.direction})`;
}

/** Aggregates flows into edges; remembers which edges changed since the last take. */
export class EdgeBook {
  readonly #edges = new Map<string, ViewEdge>();
  readonly #dirty = new Set<string>();
  #recent: ViewFlow[] = [];
  #fresh: ViewFlow[] = [];

  constructor(private readonly maxEdges = 2000, private readonly maxRecent = 200) {}

  add(f: Flow): ViewEdge {
    const source = edgeEnd(f.source);
    const target = edgeEnd(f.destination);
    // Forwarded flows of a pair are one edge; drops one per reason.
    const id = `${source.id}>${target.id}>${f.verdict}${f.verdict === 'DROPPED' ? `>${f.reason}` : ''}`;
    let e = this.#edges.get(id);
    if (!e) {
      if (this.#edges.size >= this.maxEdges) this.#evictOldest();
      e = {
        id,
        source,
        target,
        verdict: f.verdict,
        reason: f.reason,
        description: f.description,
        policy: f.policy,
        crossCluster: source.cluster !== null && target.cluster !== null && source.cluster !== target.cluster,
        count: 0,
        first: f.time,
        last: f.time,
        ports: [],
        services: [],
      };
      this.#edges.set(id, e);
    }
    e.count++;
    if (f.time >= e.last) {
      e.last = f.time;
      e.reason = f.reason;
      e.description = f.description;
      if (f.policy) e.policy = f.policy;
    }
    if (f.time < e.first) e.first = f.time;
    const port = f.destination.port !== null ? `${f.protocol} ${f.destination.port}` : f.protocol;
    if (!e.ports.includes(port) && e.ports.length < MAX_PORTS) e.ports.push(port);
    if (f.service) {
      const s = `${f.service.ip}:${f.service.port}`;
      if (!e.services.includes(s)) e.services.push(s);
    }
    this.#dirty.add(id);
    const vf: ViewFlow = { time: f.time, node: f.node, verdict: f.verdict, reason: f.reason, edge: id, text: flowText(f, source, target) };
    this.#recent.push(vf);
    this.#fresh.push(vf);
    if (this.#recent.length > this.maxRecent * 2) this.#recent = this.#recent.slice(-this.maxRecent);
    if (this.#fresh.length > this.maxRecent * 2) this.#fresh = this.#fresh.slice(-this.maxRecent);
    return e;
  }

  #evictOldest(): void {
    let oldest: ViewEdge | undefined;
    for (const e of this.#edges.values()) if (!oldest || e.last < oldest.last) oldest = e;
    if (oldest) {
      this.#edges.delete(oldest.id);
      this.#dirty.delete(oldest.id);
    }
  }

  /** The edges changed since the last call. */
  takeDirty(): ViewEdge[] {
    const out = [...this.#dirty].flatMap((id) => {
      const e = this.#edges.get(id);
      return e ? [e] : [];
    });
    this.#dirty.clear();
    return out;
  }

  /** The flows added since the last call (at most maxRecent, the newest). */
  takeFresh(): ViewFlow[] {
    const out = this.#fresh.slice(-this.maxRecent);
    this.#fresh = [];
    return out;
  }

  all(): ViewEdge[] {
    return [...this.#edges.values()];
  }

  /** The last n flows, oldest first. */
  recent(n = this.maxRecent): ViewFlow[] {
    return this.#recent.slice(-n);
  }
}

/** What one agent answered (null: not reachable). */
export interface NodeAnswer {
  key: string;
  name: string;
  cluster: string;
  endpoints: EndpointInfo[] | null;
  services: ServiceInfo[] | null;
  error: string | null;
}

/** The topology from the agents' endpoints and services and the status report's clusters. */
export function buildTopology(report: StatusReport, answers: NodeAnswer[]): Topology {
  const clusters = report.clusters;
  const nodes: ViewNode[] = answers.map((a) => {
    const d = clusters.find((c) => c.name === a.cluster)?.nodeDetails.find((n) => n.name === a.key);
    return { key: a.key, name: a.name, cluster: a.cluster, reachable: a.endpoints !== null, ready: d?.ready ?? false, error: a.error ?? d?.error ?? null, streamError: null };
  });
  const pods: ViewPod[] = [];
  const podByIP = new Map<string, string>();
  for (const a of answers) {
    for (const e of a.endpoints ?? []) {
      const id = podId(a.cluster, e.namespace, e.podName);
      pods.push({ id, cluster: a.cluster, node: a.key, namespace: e.namespace, name: e.podName, ip: e.ip, identity: e.identity, labels: shortLabels(e.identityLabels) });
      podByIP.set(e.ip, id);
    }
  }
  // A service is the same on every node of its cluster: the first node that answers names it.
  const services = new Map<string, ViewService>();
  for (const a of answers) {
    for (const s of a.services ?? []) {
      const id = `svc:${a.cluster}/${s.namespace}/${s.name}`;
      if (services.has(id)) continue;
      const backends = new Set<string>();
      for (const f of s.frontends) for (const bs of Object.values(f.backends)) for (const b of bs) backends.add(podByIP.get(b.ip) ?? `${b.ip}:${b.port}`);
      services.set(id, { id, cluster: a.cluster, namespace: s.namespace, name: s.name, global: s.global, frontends: s.frontends.map((f) => `${f.vip}:${f.port}/${f.protocol}`), backends: [...backends].sort() });
    }
  }
  const viewClusters: ViewCluster[] = clusters.map((c) => ({
    name: c.name,
    id: c.id,
    ready: c.ready,
    notReady: report.notReady.filter((s) => s.startsWith(`${c.name}: `)).map((s) => s.slice(c.name.length + 2)),
    remotes: c.remoteClusters.map((r) => ({ name: r.name, nodes: r.nodes, configured: r.configured, connected: r.connected, ready: r.ready, reconnections: r.reconnections, lastError: r.lastError?.error ?? null })),
  }));
  return { clusters: viewClusters, nodes, pods: pods.sort((a, b) => a.id.localeCompare(b.id)), services: [...services.values()].sort((a, b) => a.id.localeCompare(b.id)) };
}

// Names for the numbers the datapath holds: identities with their labels,
// pod IPs with their pod, cluster IDs with their cluster, node addresses with
// their node. Read from every cluster's mesh kvstore (the exported keys of
// ARCHITECTURE §4), from the agents' endpoint lists and from the lab state.
// For display only: a value that does not parse is skipped, not trusted.
import { AgentClient } from '../agent/client.ts';
import type { EndpointInfo } from '../agent/types.ts';
import { clusterConfigPrefix, identitiesPrefix, ipPrefix } from '../clustermesh/keys.ts';
import { CLUSTER_LABEL_KEY, decodeClusterConfig } from '../clustermesh/wire.ts';
import { KvClient } from '../kvstore/client.ts';
import { clusterIdOfIdentity } from '../model/cluster.ts';
import { MIN_ALLOCATED_IDENTITY, RESERVED_IDENTITY_LABELS } from '../model/identity.ts';
import type { Closer } from './common.ts';
import { labEtcdConnection, type ClusterTarget, type NodeTarget, type Targets } from './targets.ts';

export interface PodRef {
  namespace: string;
  pod: string;
  cluster: string | undefined;
  node: string | undefined;
  identity: number | undefined;
}

export interface Directory {
  clusterById: Map<number, string>;
  /** Identity -> labels `source:key=value`, sorted. */
  identities: Map<number, string[]>;
  /** Pod IP -> pod. */
  pods: Map<string, PodRef>;
  /** Underlay IP -> 'cluster/node'. */
  nodesByIP: Map<string, string>;
  /** Sources that could not be read (shown, not fatal). */
  warnings: string[];
}

export function emptyDirectory(): Directory {
  return { clusterById: new Map(), identities: new Map(), pods: new Map(), nodesByIP: new Map(), warnings: [] };
}

function parseLabelString(s: string): string[] {
  return s
    .split(';')
    .filter((p) => p !== '')
    .sort();
}

/** Adds what one cluster's kvstore exports. */
export async function readClusterKv(d: Directory, cluster: string, kv: KvClient): Promise<void> {
  const [configs, ids, ips] = await Promise.all([kv.list(clusterConfigPrefix), kv.list(identitiesPrefix), kv.list(ipPrefix)]);
  for (const p of configs.pairs) {
    const name = p.key.slice(clusterConfigPrefix.length);
    const c = decodeClusterConfig(name, p.key, p.value);
    if (c.ok) d.clusterById.set(c.value.id, name);
  }
  for (const p of ids.pairs) {
    const id = Number(p.key.slice(identitiesPrefix.length));
    if (Number.isInteger(id) && id > 0) d.identities.set(id, parseLabelString(p.value));
  }
  for (const p of ips.pairs) {
    try {
      const v = JSON.parse(p.value) as { IP?: string; ID?: number; K8sNamespace?: string; K8sPodName?: string; HostIP?: string };
      if (typeof v.IP !== 'string') continue;
      const prev = d.pods.get(v.IP);
      d.pods.set(v.IP, {
        namespace: v.K8sNamespace ?? prev?.namespace ?? '',
        pod: v.K8sPodName ?? prev?.pod ?? '',
        cluster: prev?.cluster ?? cluster,
        node: prev?.node ?? (v.HostIP ? d.nodesByIP.get(v.HostIP) : undefined),
        identity: typeof v.ID === 'number' ? v.ID : prev?.identity,
      });
    } catch {
      // not ours to judge here
    }
  }
}

export function addEndpoints(d: Directory, node: NodeTarget, eps: EndpointInfo[]): void {
  for (const ep of eps) {
    d.pods.set(ep.ip, { namespace: ep.namespace, pod: ep.podName, cluster: node.cluster, node: node.key, identity: ep.identity ?? undefined });
    if (ep.identity !== null && ep.identityLabels.length > 0 && !d.identities.has(ep.identity)) d.identities.set(ep.identity, [...ep.identityLabels].sort());
  }
}

/**
 * Everything the targets can tell: every cluster's kvstore (identities, ip
 * entries, cluster-configs), every agent's endpoints, the lab's clusters and
 * nodes. Unreachable sources become warnings.
 */
export async function loadDirectory(t: Targets, closer: Closer, o: { kv?: boolean; agents?: boolean } = {}): Promise<Directory> {
  const d = emptyDirectory();
  for (const c of t.clusters) if (c.id !== undefined) d.clusterById.set(c.id, c.name);
  for (const n of t.lab?.nodes ?? []) d.nodesByIP.set(n.underlayIP, `${n.cluster}/${n.name}`);
  for (const n of t.nodes) if (n.underlayIP) d.nodesByIP.set(n.underlayIP, n.key);
  // Every cluster of the lab, not only the narrowed ones: a remote identity is named by its own cluster.
  const allClusters: Array<{ name: string; etcd: ClusterTarget['etcd'] }> = t.lab ? t.lab.clusters.map((c) => ({ name: c.name, etcd: labEtcdConnection(c) })) : t.clusters;
  if (t.lab) for (const c of t.lab.clusters) d.clusterById.set(c.id, c.name);
  if (o.kv !== false) {
    await Promise.all(
      allClusters.map(async (c) => {
        if (!c.etcd) return;
        const kv = new KvClient({ ...c.etcd, timeoutMs: Math.min(c.etcd.timeoutMs ?? 5000, 5000) });
        closer.add(() => kv.close());
        try {
          await readClusterKv(d, c.name, kv);
        } catch (err) {
          d.warnings.push(`cluster ${c.name}: kvstore not readable (${(err as Error).message}); identities of ${c.name} are shown as numbers`);
        }
      }),
    );
  }
  if (o.agents !== false) {
    await Promise.all(
      t.nodes.map(async (n) => {
        if (!n.socket) return;
        const api = new AgentClient(n.socket, { timeoutMs: 5000 });
        closer.add(() => api.close());
        try {
          addEndpoints(d, n, await api.listEndpoints());
        } catch (err) {
          d.warnings.push(`node ${n.key}: agent not reachable (${(err as Error).message}); its pods are named from the kvstore only`);
        }
      }),
    );
  }
  return d;
}

/** The labels of an identity: reserved ones by name, others as read; [] when unknown. */
export function labelsOf(d: Directory, id: number): string[] {
  if (id < MIN_ALLOCATED_IDENTITY) return RESERVED_IDENTITY_LABELS[id] ? [RESERVED_IDENTITY_LABELS[id]!] : [];
  return d.identities.get(id) ?? [];
}

/** The cluster an identity was allocated by (reserved identities have none). */
export function clusterOfIdentity(d: Directory, id: number): string | undefined {
  if (id < MIN_ALLOCATED_IDENTITY) return undefined;
  const fromLabel = (d.identities.get(id) ?? []).find((l) => l.startsWith(`k8s:${CLUSTER_LABEL_KEY}=`));
  if (fromLabel) return fromLabel.slice(`k8s:${CLUSTER_LABEL_KEY}=`.length);
  const cid = clusterIdOfIdentity(id, 255);
  return d.clusterById.get(cid) ?? (cid > 0 ? `cluster-id-${cid}` : undefined);
}

/** Labels for a human: without the source prefix, the cluster label (shown apart) and a default service account. */
export function shortLabels(labels: readonly string[]): string {
  const out = labels
    .filter((l) => !l.startsWith(`k8s:${CLUSTER_LABEL_KEY}=`) && l !== 'k8s:io.cilium.k8s.policy.serviceaccount=default' && !l.startsWith('k8s:io.cilium.k8s.namespace.labels.'))
    .map((l) => (l.startsWith('k8s:') ? l.slice(4) : l))
    .map((l) => l.replace(/^io\.kubernetes\.pod\.namespace=/, 'ns='));
  return out.join(',');
}

/** "12345 (app=x,ns=default)" or "2 (reserved:world)" or "70001 (labels unknown)". */
export function describeIdentity(d: Directory, id: number): string {
  const l = labelsOf(d, id);
  return `${id} (${l.length ? shortLabels(l) : 'labels unknown'})`;
}

/** "default/web" (with the cluster when asked), or undefined for an IP no pod has. */
export function podName(d: Directory, ip: string, withCluster = false): string | undefined {
  const p = d.pods.get(ip);
  if (!p || !p.pod) return undefined;
  return `${withCluster && p.cluster ? `${p.cluster}:` : ''}${p.namespace}/${p.pod}`;
}

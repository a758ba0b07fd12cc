// What this node publishes to its cluster's store (the "store" cluster
// source): its own Node object and one Endpoint object per local pod, so the
// cluster's apiserver exports them to the mesh. A reconcile target over the
// store: the source's cache is what the store holds, StoreWriter writes.
//
// Keys: `Node/<name>`, `Endpoint/<namespace>/<name>`. The target lists only
// this node's objects (Endpoint objects whose networking.nodeName is this
// node, and this node's Node), so pruning never touches another node's.
import type { ClusterObject, Endpoint, Node } from '../model/index.ts';
import { parseObject } from '../model/index.ts';
import type { ClusterSource, StoreWriter } from '../sources/index.ts';
import type { ReconcileTarget } from './reconciler.ts';

export const publishKeys = {
  node: (name: string): string => `Node/${name}`,
  endpoint: (namespace: string, name: string): string => `Endpoint/${namespace}/${name}`,
};

function parseKey(key: string): { kind: 'Node' | 'Endpoint'; namespace?: string; name: string } {
  const [kind, a, b] = key.split('/');
  if (kind === 'Node' && a && b === undefined) return { kind, name: a };
  if (kind === 'Endpoint' && a && b) return { kind, namespace: a, name: b };
  throw new Error(`not a publish key: ${key}`);
}

/** JSON with object keys sorted at every level: equal content, equal text. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const entries = Object.entries(v as Record<string, unknown>).filter(([, x]) => x !== undefined);
    entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${canonical(x)}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

/** The fields that matter when comparing what we want with what the store has (not uid, resourceVersion, annotations). */
function projection(obj: ClusterObject): string {
  const o = obj as { kind: string; metadata: { name: string; namespace?: string; labels?: unknown }; spec?: unknown; status?: unknown };
  return canonical([o.kind, o.metadata.namespace ?? null, o.metadata.name, o.metadata.labels ?? {}, o.spec ?? null, o.status ?? null]);
}

export function samePublished(desired: ClusterObject, actual: ClusterObject): boolean {
  return projection(desired) === projection(actual);
}

export interface NodeObjectInput {
  nodeName: string;
  nodeIP: string;
  podCIDR: string;
  labels?: Record<string, string>;
}

export function nodeObject(n: NodeObjectInput): Node {
  return parseObject('Node', {
    kind: 'Node',
    metadata: { name: n.nodeName, labels: { 'kubernetes.io/hostname': n.nodeName, ...(n.labels ?? {}) } },
    spec: { podCIDR: n.podCIDR },
    status: { addresses: [{ type: 'InternalIP', address: n.nodeIP }, { type: 'Hostname', address: n.nodeName }] },
  });
}

export interface EndpointObjectInput {
  namespace: string;
  podName: string;
  uid: string;
  labels: Record<string, string>;
  endpointID: number;
  identity: number;
  identityLabels: string[];
  ip: string;
  nodeName: string;
  nodeIP: string;
}

export function endpointObject(e: EndpointObjectInput): Endpoint {
  return parseObject('Endpoint', {
    kind: 'Endpoint',
    metadata: { name: e.podName, namespace: e.namespace, labels: e.labels, uid: e.uid },
    status: {
      endpointId: e.endpointID,
      identity: { id: e.identity, labels: e.identityLabels },
      networking: { podIP: e.ip, nodeName: e.nodeName, nodeIP: e.nodeIP },
    },
  });
}

/** The store as a reconcile target, restricted to this node's objects. */
export function storeTarget(source: Pick<ClusterSource, 'endpoints'> & Partial<Pick<ClusterSource, 'nodes'>>, writer: Pick<StoreWriter, 'apply' | 'delete'>, nodeName: string): ReconcileTarget<ClusterObject> {
  return {
    list() {
      const out: Array<[string, ClusterObject]> = [];
      for (const ep of source.endpoints.list()) {
        if (ep.status.networking.nodeName === nodeName) out.push([publishKeys.endpoint(ep.metadata.namespace, ep.metadata.name), ep]);
      }
      // Without nodes (the Kubernetes API is the source: the Node is the kubelet's), only Endpoints are published.
      const self = source.nodes?.get({ name: nodeName });
      if (self) out.push([publishKeys.node(nodeName), self]);
      return out;
    },
    async update(_key, obj) {
      await writer.apply(obj);
    },
    async delete(key) {
      const k = parseKey(key);
      return await writer.delete(k.kind, k.namespace ? { namespace: k.namespace, name: k.name } : { name: k.name });
    },
  };
}

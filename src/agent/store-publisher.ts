// What this node publishes to its cluster's etcd (mesh state, Cilium's
// kvstore mode): one Endpoint object per local pod, so the cluster's
// apiserver exports them to the mesh. (Its Node object is the kubelet's, in
// the Kubernetes API.) A reconcile target over the Endpoint objects in etcd:
// the source's cache is what etcd holds, EndpointWriter writes.
//
// Keys: `Endpoint/<namespace>/<name>`. The target lists only this node's
// objects (networking.nodeName is this node), so pruning never touches
// another node's.
import type { Endpoint } from '../model/index.ts';
import { parseObject } from '../model/index.ts';
import type { ClusterSource, EndpointWriter } from '../sources/index.ts';
import type { ReconcileTarget } from './reconciler.ts';

export const publishKeys = {
  endpoint: (namespace: string, name: string): string => `Endpoint/${namespace}/${name}`,
};

function parseKey(key: string): { namespace: string; name: string } {
  const [kind, a, b] = key.split('/');
  if (kind === 'Endpoint' && a && b) return { namespace: a, name: b };
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

/** The fields that matter when comparing what we want with what etcd has (not uid, resourceVersion, annotations). */
function projection(obj: Endpoint): string {
  const o = obj as { kind: string; metadata: { name: string; namespace?: string; labels?: unknown }; spec?: unknown; status?: unknown };
  return canonical([o.kind, o.metadata.namespace ?? null, o.metadata.name, o.metadata.labels ?? {}, o.spec ?? null, o.status ?? null]);
}

export function samePublished(desired: Endpoint, actual: Endpoint): boolean {
  return projection(desired) === projection(actual);
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

/** The Endpoint objects in etcd as a reconcile target, restricted to this node's. */
export function storeTarget(source: Pick<ClusterSource, 'endpoints'>, writer: Pick<EndpointWriter, 'apply' | 'delete'>, nodeName: string): ReconcileTarget<Endpoint> {
  return {
    list() {
      const out: Array<[string, Endpoint]> = [];
      for (const ep of source.endpoints.list()) {
        if (ep.status.networking.nodeName === nodeName) out.push([publishKeys.endpoint(ep.metadata.namespace, ep.metadata.name), ep]);
      }
      return out;
    },
    async update(_key, obj) {
      await writer.apply(obj);
    },
    async delete(key) {
      return await writer.delete(parseKey(key));
    },
  };
}

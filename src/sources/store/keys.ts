// Key paths of the "store" cluster source inside the cluster's own etcd.
// STABLE API (the lab, agents and the apiserver share it); versioned through
// storePrefix (`clustermesh/store/v1/`). Namespaced kinds live at
// `<storePrefix><kind>/<namespace>/<name>`, cluster-scoped kinds (Namespace,
// Node) at `<storePrefix><kind>/<name>`, as Kubernetes lays out its own etcd.
import { storePrefix } from '../../clustermesh/keys.ts';
import { NAMESPACED_KINDS, type ClusterObject, type ObjectKind } from '../../model/index.ts';
import type { ObjectRef } from '../types.ts';

/** The path segment of each kind (the Kubernetes resource name). */
export const STORE_KIND_SEGMENTS: Readonly<Record<ObjectKind, string>> = {
  Namespace: 'namespaces',
  Pod: 'pods',
  Service: 'services',
  Node: 'nodes',
  Endpoint: 'ciliumendpoints',
  EndpointSlice: 'endpointslices',
  NetworkPolicy: 'networkpolicies',
  CiliumNetworkPolicy: 'ciliumnetworkpolicies',
  CiliumClusterwideNetworkPolicy: 'ciliumclusterwidenetworkpolicies',
};

/** `clustermesh/store/v1/<kind>/`: everything of one kind. */
export function storeKindPrefix(kind: ObjectKind): string {
  return `${storePrefix}${STORE_KIND_SEGMENTS[kind]}/`;
}

/** The key of one object. Throws when a namespaced kind lacks a namespace or a cluster-scoped kind has one. */
export function storeKey(kind: ObjectKind, ref: ObjectRef): string {
  const namespaced = NAMESPACED_KINDS.has(kind);
  if (namespaced && !ref.namespace) throw new Error(`store key: ${kind} ${ref.name} needs a namespace`);
  if (!namespaced && ref.namespace) throw new Error(`store key: ${kind} is cluster-scoped, got namespace ${ref.namespace}`);
  return namespaced ? `${storeKindPrefix(kind)}${ref.namespace}/${ref.name}` : `${storeKindPrefix(kind)}${ref.name}`;
}

export function storeObjectKey(obj: ClusterObject): string {
  return storeKey(obj.kind, obj.metadata as ObjectRef);
}

/** The ref a key names, or undefined when the key is not a well-formed key of `kind`. */
export function refFromStoreKey(kind: ObjectKind, key: string): ObjectRef | undefined {
  const prefix = storeKindPrefix(kind);
  if (!key.startsWith(prefix)) return undefined;
  const parts = key.slice(prefix.length).split('/');
  if (NAMESPACED_KINDS.has(kind)) {
    const [namespace, name] = parts;
    return parts.length === 2 && namespace && name ? { namespace, name } : undefined;
  }
  const [name] = parts;
  return parts.length === 1 && name ? { name } : undefined;
}

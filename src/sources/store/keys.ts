// Key paths of the Endpoint objects (mesh state, Cilium's kvstore mode)
// inside the cluster's own etcd. STABLE API (agents write, agents and the
// apiserver read); versioned through storePrefix (`clustermesh/store/v1/`):
// `<storePrefix>ciliumendpoints/<namespace>/<name>`. The Kubernetes kinds are
// the Kubernetes API's (src/sources/kubernetes), not kept here.
import { storePrefix } from '../../clustermesh/keys.ts';
import type { Endpoint } from '../../model/index.ts';
import type { ObjectRef } from '../types.ts';

/** `clustermesh/store/v1/ciliumendpoints/`: every Endpoint object of the cluster. */
export const ENDPOINTS_PREFIX = `${storePrefix}ciliumendpoints/`;

/** The key of one Endpoint object. Throws when the ref lacks a namespace. */
export function endpointKey(ref: ObjectRef): string {
  if (!ref.namespace) throw new Error(`endpoint key: ${ref.name} needs a namespace`);
  return `${ENDPOINTS_PREFIX}${ref.namespace}/${ref.name}`;
}

export function endpointObjectKey(obj: Endpoint): string {
  return endpointKey(obj.metadata);
}

/** The ref a key names, or undefined when it is not a well-formed Endpoint key. */
export function refFromEndpointKey(key: string): Required<ObjectRef> | undefined {
  if (!key.startsWith(ENDPOINTS_PREFIX)) return undefined;
  const parts = key.slice(ENDPOINTS_PREFIX.length).split('/');
  const [namespace, name] = parts;
  return parts.length === 2 && namespace && name ? { namespace, name } : undefined;
}

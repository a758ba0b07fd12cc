// Where each kind the source reads lives in the Kubernetes API.
import type { ObjectKind } from '../../model/index.ts';

export interface KubeKindApi {
  group: string;
  version: string;
  /** Resource name in URLs. */
  plural: string;
  namespaced: boolean;
  /** Served by a CustomResourceDefinition that may be missing: 404 means "none yet", not a failure. */
  optional: boolean;
}

/** The kinds read from the Kubernetes API (Endpoint is mesh state: it stays in the cluster's etcd). */
export type KubeKind = Exclude<ObjectKind, 'Endpoint'>;

export const KUBE_KINDS: Readonly<Record<KubeKind, KubeKindApi>> = {
  Namespace: { group: '', version: 'v1', plural: 'namespaces', namespaced: false, optional: false },
  Pod: { group: '', version: 'v1', plural: 'pods', namespaced: true, optional: false },
  Service: { group: '', version: 'v1', plural: 'services', namespaced: true, optional: false },
  Node: { group: '', version: 'v1', plural: 'nodes', namespaced: false, optional: false },
  EndpointSlice: { group: 'discovery.k8s.io', version: 'v1', plural: 'endpointslices', namespaced: true, optional: false },
  NetworkPolicy: { group: 'networking.k8s.io', version: 'v1', plural: 'networkpolicies', namespaced: true, optional: false },
  CiliumNetworkPolicy: { group: 'cilium.io', version: 'v2', plural: 'ciliumnetworkpolicies', namespaced: true, optional: true },
  CiliumClusterwideNetworkPolicy: { group: 'cilium.io', version: 'v2', plural: 'ciliumclusterwidenetworkpolicies', namespaced: false, optional: true },
};

export const KUBE_KIND_NAMES = Object.keys(KUBE_KINDS) as KubeKind[];

/** `/api/v1/pods`, `/apis/discovery.k8s.io/v1/endpointslices`: every object of the kind, all namespaces. */
export function kindPath(api: KubeKindApi): string {
  return api.group === '' ? `/api/${api.version}/${api.plural}` : `/apis/${api.group}/${api.version}/${api.plural}`;
}

export function apiVersionOf(api: KubeKindApi): string {
  return api.group === '' ? api.version : `${api.group}/${api.version}`;
}

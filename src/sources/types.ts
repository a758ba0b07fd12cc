// The local cluster source: typed list+watch of the cluster's own objects.
// The implementation is the Kubernetes API (src/sources/kubernetes, Endpoint
// objects from etcd); tests hand in fakes. Nothing above this interface may
// know which one it has.
import type {
  CiliumClusterwideNetworkPolicy,
  CiliumNetworkPolicy,
  Endpoint,
  EndpointSlice,
  Namespace,
  NetworkPolicy,
  Node,
  ObjectKind,
  ObjectKinds,
  Pod,
  Service,
  ServiceBackendsFrom,
} from '../model/index.ts';

/**
 * What a watcher sees. After subscribing it first receives one `upsert` per
 * object already known, then `synced` once the initial list is complete (at
 * once when it already is), then live changes. `delete` carries the last
 * known state of the object.
 */
export type ResourceEvent<T> =
  | { kind: 'upsert'; object: T }
  | { kind: 'delete'; object: T }
  | { kind: 'synced' };

export type ResourceEventKind = ResourceEvent<unknown>['kind'];

/** Stops delivering events to one watcher. */
export type Unsubscribe = () => void;

/** Namespace and name; `namespace` is undefined for cluster-scoped kinds. */
export interface ObjectRef {
  namespace?: string | undefined;
  name: string;
}

/** One kind of object: a cache kept current by the source, and its change stream. */
export interface Resource<T> {
  readonly kind: ObjectKind;
  /** True once the initial list has been delivered. */
  readonly synced: boolean;
  /** Resolves when synced; rejects when the signal aborts or the source stops first. */
  waitSynced(signal?: AbortSignal): Promise<void>;
  /** Objects currently known (complete once synced). */
  list(): T[];
  get(ref: ObjectRef): T | undefined;
  /** See ResourceEvent for the order of events. Handlers must not throw; what they throw is reported and dropped. */
  watch(handler: (event: ResourceEvent<T>) => void): Unsubscribe;
}

export type SourceType = 'kubernetes';

export interface ClusterSource {
  /** Which implementation; for logs and status only, never for decisions. */
  readonly type: SourceType;
  readonly namespaces: Resource<Namespace>;
  readonly pods: Resource<Pod>;
  readonly services: Resource<Service>;
  readonly nodes: Resource<Node>;
  readonly endpoints: Resource<Endpoint>;
  readonly networkPolicies: Resource<NetworkPolicy>;
  readonly ciliumNetworkPolicies: Resource<CiliumNetworkPolicy>;
  readonly ciliumClusterwideNetworkPolicies: Resource<CiliumClusterwideNetworkPolicy>;
  /** A Service's backends as Kubernetes publishes them (IPv4 slices). */
  readonly endpointSlices: Resource<EndpointSlice>;
  /**
   * Where Services' local backends come from with this source: its
   * EndpointSlices ('endpointslices': an EndpointSlice controller maintains
   * them, as in a Kubernetes cluster), or the Services' selectors run over its
   * Pods ('selectors': a source without such a controller). A property of the
   * source, not of what it has listed: an empty slice list must not switch
   * to selectors. See LocalBackendIndex (service-backends.ts).
   */
  readonly serviceBackends: ServiceBackendsFrom;
  resource<K extends ObjectKind>(kind: K): Resource<ObjectKinds[K]>;
  /** Begins list+watch of every kind. */
  start(): Promise<void>;
  /** Stops watching; the caches keep their last state. */
  stop(): Promise<void>;
}

/** Something the source could not believe (an object that fails its schema). */
export interface SourceProblem {
  kind: ObjectKind;
  /** Where the object was read: a store key, or `namespace/name` (`name` when cluster-scoped). */
  key: string;
  message: string;
}

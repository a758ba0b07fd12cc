// The "kubernetes" cluster source: the cluster's own objects read from the
// Kubernetes API, as an informer reads them (see reflector.ts).
//
// What it watches, per kind, every namespace: Namespace, Pod, Service,
// EndpointSlice (discovery.k8s.io/v1), Node, NetworkPolicy
// (networking.k8s.io/v1), CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy
// (cilium.io/v2; their CRDs may be absent: such a kind is synced and empty
// until the CRD appears). Objects are converted to the model's types
// (convert.ts); one that fails its schema is reported through onProblem with
// its kind, namespace/name and the error, and the cache keeps its last good
// version; the other objects and kinds go on.
//
// Endpoint (what agents publish per pod: identity, node) is mesh state, not a
// Kubernetes object: it stays in the cluster's etcd, as in Cilium's kvstore
// mode. The source does not read it from the API; pass `endpoints`, a
// Resource<Endpoint> kept from etcd, e.g. the `endpoints` of a
// `new EndpointSource(kv)` (src/sources/store) that the caller starts and
// stops. Without one, `endpoints` is an empty resource, synced at start.
//
// Connection: a client-node KubeConfig (loadKubeConnection in kubeconfig.ts
// builds one from --kubeconfig, KUBECONFIG, a context, or the in-cluster
// service account), or kube-access.ts's KubeAccess (readKubeAccess, the same
// sources without client-node): a KubeHttpConfig.
import {
  type CiliumClusterwideNetworkPolicy,
  type CiliumNetworkPolicy,
  type ClusterObject,
  type Endpoint,
  type EndpointSlice,
  type Namespace,
  type NetworkPolicy,
  type Node,
  type ObjectKind,
  type ObjectKinds,
  type Pod,
  type Service,
} from '../../model/index.ts';
import { ResourceCache } from '../resource.ts';
import type { ClusterSource, Resource, SourceProblem } from '../types.ts';
import { KubeHttp, type KubeHttpConfig } from './http.ts';
import { KUBE_KIND_NAMES, type KubeKind } from './kinds.ts';
import { Reflector, type ReflectorOptions, type ReflectorStatus } from './reflector.ts';

export interface KubernetesSourceOptions extends Omit<ReflectorOptions, 'onProblem' | 'onError' | 'fieldSelector'> {
  /** client-node's KubeConfig, or kube-access.ts's KubeAccess. */
  kubeConfig: KubeHttpConfig;
  /** Field selectors per kind, e.g. `{ Pod: 'spec.nodeName=node1' }` for an agent that needs only its node's pods. */
  fieldSelectors?: Partial<Record<KubeKind, string>>;
  /** Endpoints from the cluster's etcd (mesh state); the caller starts and stops it. */
  endpoints?: Resource<Endpoint>;
  /** An object that fails its schema; `key` is namespace/name (name when cluster-scoped). */
  onProblem?: (problem: SourceProblem) => void;
  /** A list or watch failure (the source recovers by itself: re-list with backoff, prune, watch). */
  onError?: (kind: ObjectKind, err: Error) => void;
  /** A watcher's handler threw. */
  onHandlerError?: (kind: ObjectKind, err: unknown) => void;
}

export type KubernetesSourceStatus = Record<
  KubeKind,
  Omit<ReflectorStatus, 'problems' | 'skipped'> & { objects: number; problems: Record<string, string>; skipped: Record<string, string> }
>;

type Caches = { [K in KubeKind]: ResourceCache<ObjectKinds[K]> };

export class KubernetesSource implements ClusterSource {
  readonly type = 'kubernetes' as const;
  /** The cluster's EndpointSlice controller (kube-controller-manager, or the lab's) is the truth about backends. */
  readonly serviceBackends = 'endpointslices' as const;
  private readonly caches: Caches;
  private readonly endpointResource: Resource<Endpoint>;
  private readonly reflectors = new Map<KubeKind, Reflector>();
  private readonly http: KubeHttp;
  private started = false;
  private stopped = false;

  constructor(private readonly opts: KubernetesSourceOptions) {
    this.http = new KubeHttp(opts.kubeConfig);
    const make = <K extends ObjectKind>(kind: K): ResourceCache<ObjectKinds[K]> =>
      new ResourceCache<ObjectKinds[K]>(kind, (err) => opts.onHandlerError?.(kind, err));
    this.caches = {
      Namespace: make('Namespace'),
      Pod: make('Pod'),
      Service: make('Service'),
      Node: make('Node'),
      EndpointSlice: make('EndpointSlice'),
      NetworkPolicy: make('NetworkPolicy'),
      CiliumNetworkPolicy: make('CiliumNetworkPolicy'),
      CiliumClusterwideNetworkPolicy: make('CiliumClusterwideNetworkPolicy'),
    };
    if (opts.endpoints) this.endpointResource = opts.endpoints;
    else {
      const none = make('Endpoint');
      none.markSynced();
      this.endpointResource = none;
    }
  }

  get namespaces(): Resource<Namespace> {
    return this.caches.Namespace;
  }
  get pods(): Resource<Pod> {
    return this.caches.Pod;
  }
  get services(): Resource<Service> {
    return this.caches.Service;
  }
  get nodes(): Resource<Node> {
    return this.caches.Node;
  }
  get endpoints(): Resource<Endpoint> {
    return this.endpointResource;
  }
  get endpointSlices(): Resource<EndpointSlice> {
    return this.caches.EndpointSlice;
  }
  get networkPolicies(): Resource<NetworkPolicy> {
    return this.caches.NetworkPolicy;
  }
  get ciliumNetworkPolicies(): Resource<CiliumNetworkPolicy> {
    return this.caches.CiliumNetworkPolicy;
  }
  get ciliumClusterwideNetworkPolicies(): Resource<CiliumClusterwideNetworkPolicy> {
    return this.caches.CiliumClusterwideNetworkPolicy;
  }

  resource<K extends ObjectKind>(kind: K): Resource<ObjectKinds[K]> {
    if (kind === 'Endpoint') return this.endpointResource as Resource<ObjectKinds[K]>;
    return this.caches[kind as KubeKind] as unknown as Resource<ObjectKinds[K]>;
  }

  /** Resolves once every kind read from the API has completed its first list. */
  async waitSynced(signal?: AbortSignal): Promise<void> {
    await Promise.all(KUBE_KIND_NAMES.map((k) => this.caches[k].waitSynced(signal)));
  }

  async start(): Promise<void> {
    if (this.stopped) throw new Error('kubernetes source: stopped; create a new one');
    if (this.started) return;
    this.started = true;
    const { kubeConfig: _kc, endpoints: _ep, onProblem, onError, onHandlerError: _h, fieldSelectors, ...reflectorOpts } = this.opts;
    for (const kind of KUBE_KIND_NAMES) {
      const r = new Reflector(kind, this.http, this.caches[kind] as unknown as ResourceCache<ClusterObject>, {
        ...reflectorOpts,
        ...(fieldSelectors?.[kind] ? { fieldSelector: fieldSelectors[kind] } : {}),
        onProblem: (key, err) => onProblem?.({ kind, key, message: err.message }),
        onError: (err) => onError?.(kind, err),
      });
      this.reflectors.set(kind, r);
      r.start();
    }
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await Promise.all([...this.reflectors.values()].map((r) => r.stop()));
    for (const kind of KUBE_KIND_NAMES) this.caches[kind].fail(new Error(`kubernetes source stopped before ${kind} synced`));
  }

  /** Per kind: synced, watching, list/watch/410 counts, last error, object count, current problems. */
  status(): KubernetesSourceStatus {
    const out = {} as KubernetesSourceStatus;
    for (const kind of KUBE_KIND_NAMES) {
      const s = this.reflectors.get(kind)?.status;
      const base = s ?? { synced: false, watching: false, absent: false, lists: 0, watches: 0, expired: 0, resourceVersion: undefined, lastError: undefined, problems: new Map<string, string>(), skipped: new Map<string, string>() };
      const { problems, skipped, ...rest } = base;
      out[kind] = { ...rest, objects: this.caches[kind].keys().length, problems: Object.fromEntries(problems), skipped: Object.fromEntries(skipped) };
    }
    return out;
  }
}

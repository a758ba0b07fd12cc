// The "store" cluster source: Kubernetes-shaped objects kept in the cluster's
// own etcd under storePrefix, one list-then-watch (kvstore WatchStore) per kind.
import type { Clock } from '../../util/clock.ts';
import type { KvClient } from '../../kvstore/client.ts';
import type { KvError } from '../../kvstore/types.ts';
import { WatchStore, type BackoffOptions } from '../../kvstore/watch-store.ts';
import {
  OBJECT_KINDS,
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
import { ResourceCache, refKey } from '../resource.ts';
import type { ClusterSource, Resource, SourceProblem } from '../types.ts';
import { refFromStoreKey, storeKindPrefix } from './keys.ts';
import { decodeStoreObject } from './writer.ts';

export interface StoreSourceOptions {
  /** An object that fails its schema or sits at the wrong key (it is not believed). */
  onProblem?: (problem: SourceProblem) => void;
  /** A watch failure (the source recovers by itself: re-list, prune, watch). */
  onError?: (kind: ObjectKind, err: KvError) => void;
  /** A watcher's handler threw. */
  onHandlerError?: (kind: ObjectKind, err: unknown) => void;
  clock?: Clock;
  backoff?: BackoffOptions;
  pageSize?: number;
  /** Only these kinds are watched (default all); e.g. ['Endpoint'] beside a KubernetesSource. The others never sync. */
  kinds?: readonly ObjectKind[];
}

type Caches = { [K in ObjectKind]: ResourceCache<ObjectKinds[K]> };

export class StoreSource implements ClusterSource {
  readonly type = 'store' as const;
  /** No EndpointSlice controller writes to the store: backends come from the Services' selectors. */
  readonly serviceBackends = 'selectors' as const;
  private readonly caches: Caches;
  private readonly stores = new Map<ObjectKind, WatchStore>();
  private started = false;
  private stopped = false;

  constructor(
    private readonly kv: KvClient,
    private readonly opts: StoreSourceOptions = {},
  ) {
    const make = <K extends ObjectKind>(kind: K): ResourceCache<ObjectKinds[K]> =>
      new ResourceCache<ObjectKinds[K]>(kind, (err) => opts.onHandlerError?.(kind, err));
    this.caches = {
      Namespace: make('Namespace'),
      Pod: make('Pod'),
      Service: make('Service'),
      Node: make('Node'),
      Endpoint: make('Endpoint'),
      EndpointSlice: make('EndpointSlice'),
      NetworkPolicy: make('NetworkPolicy'),
      CiliumNetworkPolicy: make('CiliumNetworkPolicy'),
      CiliumClusterwideNetworkPolicy: make('CiliumClusterwideNetworkPolicy'),
    };
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
    return this.caches.Endpoint;
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
  get endpointSlices(): Resource<EndpointSlice> {
    return this.caches.EndpointSlice;
  }

  resource<K extends ObjectKind>(kind: K): Resource<ObjectKinds[K]> {
    return this.caches[kind];
  }

  async start(): Promise<void> {
    if (this.stopped) throw new Error('store source: stopped; create a new one');
    if (this.started) return;
    this.started = true;
    for (const kind of this.opts.kinds ?? OBJECT_KINDS) this.startKind(kind);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await Promise.all([...this.stores.values()].map((s) => s.stop()));
    for (const kind of OBJECT_KINDS) this.caches[kind].fail(new Error(`store source stopped before ${kind} synced`));
  }

  private startKind<K extends ObjectKind>(kind: K): void {
    const cache = this.caches[kind] as ResourceCache<ClusterObject>;
    /** key → ref of the object believed at that key. */
    const byKey = new Map<string, string>();
    const forget = (key: string): void => {
      const ref = refFromStoreKey(kind, key);
      if (ref && byKey.delete(key)) cache.remove(ref);
    };
    const store = new WatchStore(this.kv, storeKindPrefix(kind), {
      onEvent: (ev) => {
        if (ev.kind === 'delete') return forget(ev.key);
        const ref = refFromStoreKey(kind, ev.key);
        let problem: string | undefined;
        let obj: ClusterObject | undefined;
        if (!ref) problem = 'not a key of the form <kind>/[<namespace>/]<name>';
        else {
          try {
            obj = decodeStoreObject(kind, ev.key, ev.value, ev.modRevision);
            if (refKey(obj.metadata as { name: string; namespace?: string }) !== refKey(ref))
              problem = `holds ${refKey(obj.metadata as { name: string; namespace?: string })}, not ${refKey(ref)}`;
          } catch (err) {
            problem = (err as Error).message;
          }
        }
        if (problem !== undefined || obj === undefined || ref === undefined) {
          this.opts.onProblem?.({ kind, key: ev.key, message: problem ?? 'invalid' });
          forget(ev.key);
          return;
        }
        byKey.set(ev.key, refKey(ref));
        cache.set(obj);
      },
      onError: (err) => this.opts.onError?.(kind, err),
      ...(this.opts.clock ? { clock: this.opts.clock } : {}),
      ...(this.opts.backoff ? { backoff: this.opts.backoff } : {}),
      ...(this.opts.pageSize ? { pageSize: this.opts.pageSize } : {}),
    });
    this.stores.set(kind, store);
    store.synced.then(
      () => cache.markSynced(),
      () => undefined,
    );
    store.start();
  }
}

// The Endpoint objects of the cluster's own etcd (mesh state: what the agents
// publish, Cilium's kvstore mode), one list-then-watch (kvstore WatchStore)
// under ENDPOINTS_PREFIX. Beside the Kubernetes source, it is the `endpoints`
// resource of the agent's and the apiserver's local source (src/sources/local.ts).
import type { Clock } from '../../util/clock.ts';
import type { KvClient } from '../../kvstore/client.ts';
import type { KvError } from '../../kvstore/types.ts';
import { WatchStore, type BackoffOptions } from '../../kvstore/watch-store.ts';
import type { Endpoint, ObjectKind } from '../../model/index.ts';
import { ResourceCache, refKey } from '../resource.ts';
import type { Resource, SourceProblem } from '../types.ts';
import { ENDPOINTS_PREFIX, refFromEndpointKey } from './keys.ts';
import { decodeEndpoint } from './writer.ts';

export interface EndpointSourceOptions {
  /** An object that fails its schema or sits at the wrong key (it is not believed). */
  onProblem?: (problem: SourceProblem) => void;
  /** A watch failure (the source recovers by itself: re-list, prune, watch). */
  onError?: (kind: ObjectKind, err: KvError) => void;
  /** A watcher's handler threw. */
  onHandlerError?: (kind: ObjectKind, err: unknown) => void;
  clock?: Clock;
  backoff?: BackoffOptions;
  pageSize?: number;
}

export class EndpointSource {
  private readonly cache: ResourceCache<Endpoint>;
  private store: WatchStore | undefined;
  private started = false;
  private stopped = false;

  constructor(
    private readonly kv: KvClient,
    private readonly opts: EndpointSourceOptions = {},
  ) {
    this.cache = new ResourceCache<Endpoint>('Endpoint', (err) => opts.onHandlerError?.('Endpoint', err));
  }

  get endpoints(): Resource<Endpoint> {
    return this.cache;
  }

  async start(): Promise<void> {
    if (this.stopped) throw new Error('endpoint source: stopped; create a new one');
    if (this.started) return;
    this.started = true;
    /** key → ref of the object believed at that key. */
    const byKey = new Map<string, string>();
    const forget = (key: string): void => {
      const ref = refFromEndpointKey(key);
      if (ref && byKey.delete(key)) this.cache.remove(ref);
    };
    const store = new WatchStore(this.kv, ENDPOINTS_PREFIX, {
      onEvent: (ev) => {
        if (ev.kind === 'delete') return forget(ev.key);
        const ref = refFromEndpointKey(ev.key);
        let problem: string | undefined;
        let obj: Endpoint | undefined;
        if (!ref) problem = 'not a key of the form ciliumendpoints/<namespace>/<name>';
        else {
          try {
            obj = decodeEndpoint(ev.key, ev.value, ev.modRevision);
            if (refKey(obj.metadata) !== refKey(ref)) problem = `holds ${refKey(obj.metadata)}, not ${refKey(ref)}`;
          } catch (err) {
            problem = (err as Error).message;
          }
        }
        if (problem !== undefined || obj === undefined || ref === undefined) {
          this.opts.onProblem?.({ kind: 'Endpoint', key: ev.key, message: problem ?? 'invalid' });
          forget(ev.key);
          return;
        }
        byKey.set(ev.key, refKey(ref));
        this.cache.set(obj);
      },
      onError: (err) => this.opts.onError?.('Endpoint', err),
      ...(this.opts.clock ? { clock: this.opts.clock } : {}),
      ...(this.opts.backoff ? { backoff: this.opts.backoff } : {}),
      ...(this.opts.pageSize ? { pageSize: this.opts.pageSize } : {}),
    });
    this.store = store;
    store.synced.then(
      () => this.cache.markSynced(),
      () => undefined,
    );
    store.start();
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await this.store?.stop();
    this.cache.fail(new Error('endpoint source stopped before Endpoint synced'));
  }
}

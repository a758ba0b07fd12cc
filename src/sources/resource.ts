// A Resource<T> kept by a source: the cache, the subscribers and the synced
// latch. Sources feed it with set/remove/markSynced; watchers see the order
// promised by ResourceEvent.
import type { ObjectKind } from '../model/index.ts';
import type { ObjectRef, Resource, ResourceEvent, Unsubscribe } from './types.ts';

export function refKey(ref: ObjectRef): string {
  return ref.namespace ? `${ref.namespace}/${ref.name}` : ref.name;
}

type MetaObject = { metadata: { name: string; namespace?: string | undefined } };

export class ResourceCache<T extends MetaObject> implements Resource<T> {
  private readonly objects = new Map<string, T>();
  private readonly handlers = new Set<(ev: ResourceEvent<T>) => void>();
  private readonly syncWaiters = new Set<{ resolve: () => void; reject: (e: Error) => void }>();
  private isSynced = false;
  private stoppedWith: Error | undefined;

  constructor(
    readonly kind: ObjectKind,
    private readonly onHandlerError: (err: unknown) => void = () => undefined,
  ) {}

  get synced(): boolean {
    return this.isSynced;
  }

  list(): T[] {
    return [...this.objects.values()];
  }

  get(ref: ObjectRef): T | undefined {
    return this.objects.get(refKey(ref));
  }

  waitSynced(signal?: AbortSignal): Promise<void> {
    if (this.isSynced) return Promise.resolve();
    if (this.stoppedWith) return Promise.reject(this.stoppedWith);
    if (signal?.aborted) return Promise.reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
    return new Promise<void>((resolve, reject) => {
      const w = {
        resolve: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
        reject: (e: Error) => {
          signal?.removeEventListener('abort', onAbort);
          reject(e);
        },
      };
      const onAbort = (): void => {
        this.syncWaiters.delete(w);
        reject(signal?.reason instanceof Error ? signal.reason : new Error('aborted'));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.syncWaiters.add(w);
    });
  }

  watch(handler: (event: ResourceEvent<T>) => void): Unsubscribe {
    for (const object of this.objects.values()) this.call(handler, { kind: 'upsert', object });
    if (this.isSynced) this.call(handler, { kind: 'synced' });
    this.handlers.add(handler);
    return () => {
      this.handlers.delete(handler);
    };
  }

  // ---- fed by the source

  /** Stores the object; emits upsert unless it is identical to what is cached. */
  set(object: T): void {
    const key = refKey(object.metadata);
    const old = this.objects.get(key);
    if (old !== undefined && JSON.stringify(old) === JSON.stringify(object)) return;
    this.objects.set(key, object);
    this.emit({ kind: 'upsert', object });
  }

  /** Removes the object by ref; emits delete with the last known state. */
  remove(ref: ObjectRef): void {
    const key = refKey(ref);
    const old = this.objects.get(key);
    if (old === undefined) return;
    this.objects.delete(key);
    this.emit({ kind: 'delete', object: old });
  }

  /** Keys of the cached objects (for pruning after a re-list). */
  keys(): string[] {
    return [...this.objects.keys()];
  }

  markSynced(): void {
    if (this.isSynced) return;
    this.isSynced = true;
    this.emit({ kind: 'synced' });
    for (const w of this.syncWaiters) w.resolve();
    this.syncWaiters.clear();
  }

  /** Fails pending waitSynced() calls (the source stopped before syncing). */
  fail(err: Error): void {
    this.stoppedWith = err;
    for (const w of this.syncWaiters) w.reject(err);
    this.syncWaiters.clear();
  }

  private emit(ev: ResourceEvent<T>): void {
    for (const h of [...this.handlers]) this.call(h, ev);
  }

  private call(h: (ev: ResourceEvent<T>) => void, ev: ResourceEvent<T>): void {
    try {
      h(ev);
    } catch (err) {
      this.onHandlerError(err);
    }
  }
}

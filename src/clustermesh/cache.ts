// Observable maps: what clustermesh exposes to the agent. A map plus
// subscribe(upsert/delete). Subscribers are called synchronously, in order,
// after the map has changed; a throwing subscriber does not stop the others.

export type CacheEvent<K, V> =
  | { kind: 'upsert'; key: K; value: V; previous: V | undefined }
  | { kind: 'delete'; key: K; previous: V };

export type CacheListener<K, V> = (ev: CacheEvent<K, V>) => void;

export interface ObservableMap<K, V> {
  readonly size: number;
  get(key: K): V | undefined;
  has(key: K): boolean;
  keys(): IterableIterator<K>;
  values(): IterableIterator<V>;
  entries(): IterableIterator<[K, V]>;
  [Symbol.iterator](): IterableIterator<[K, V]>;
  /**
   * Calls `fn` on every change. With `replay` (default true) it is first called
   * with an upsert for every current entry, so a late subscriber sees the same
   * state as an early one. Returns the unsubscribe function.
   */
  subscribe(fn: CacheListener<K, V>, opts?: { replay?: boolean }): () => void;
}

export interface CacheOptions<V> {
  /** Values equal under this are not re-announced. Default: JSON equality. */
  equals?: (a: V, b: V) => boolean;
  /** Called when a listener throws. */
  onListenerError?: (err: unknown) => void;
}

const jsonEquals = (a: unknown, b: unknown): boolean => a === b || JSON.stringify(a) === JSON.stringify(b);

/** A writable observable map. The owner writes; others get the ObservableMap view. */
export class Cache<K, V> implements ObservableMap<K, V> {
  private readonly map = new Map<K, V>();
  private readonly listeners = new Set<CacheListener<K, V>>();
  private readonly equals: (a: V, b: V) => boolean;
  private readonly onListenerError: (err: unknown) => void;

  constructor(opts: CacheOptions<V> = {}) {
    this.equals = opts.equals ?? jsonEquals;
    this.onListenerError = opts.onListenerError ?? (() => {});
  }

  get size(): number {
    return this.map.size;
  }
  get(key: K): V | undefined {
    return this.map.get(key);
  }
  has(key: K): boolean {
    return this.map.has(key);
  }
  keys(): IterableIterator<K> {
    return this.map.keys();
  }
  values(): IterableIterator<V> {
    return this.map.values();
  }
  entries(): IterableIterator<[K, V]> {
    return this.map.entries();
  }
  [Symbol.iterator](): IterableIterator<[K, V]> {
    return this.map.entries();
  }

  /** Sets `key`; returns false (and announces nothing) when the value is unchanged. */
  set(key: K, value: V): boolean {
    const previous = this.map.get(key);
    if (previous !== undefined && this.equals(previous, value)) return false;
    this.map.set(key, value);
    this.emit({ kind: 'upsert', key, value, previous });
    return true;
  }

  /** Deletes `key`; a missing key is not an error (returns false). */
  delete(key: K): boolean {
    const previous = this.map.get(key);
    if (previous === undefined && !this.map.has(key)) return false;
    this.map.delete(key);
    this.emit({ kind: 'delete', key, previous: previous as V });
    return true;
  }

  subscribe(fn: CacheListener<K, V>, opts: { replay?: boolean } = {}): () => void {
    if (opts.replay ?? true) {
      for (const [key, value] of [...this.map]) this.call(fn, { kind: 'upsert', key, value, previous: undefined });
    }
    this.listeners.add(fn);
    return () => {
      this.listeners.delete(fn);
    };
  }

  /** A read-only view of this cache. */
  view(): ObservableMap<K, V> {
    return this;
  }

  private emit(ev: CacheEvent<K, V>): void {
    for (const fn of [...this.listeners]) this.call(fn, ev);
  }

  private call(fn: CacheListener<K, V>, ev: CacheEvent<K, V>): void {
    try {
      fn(ev);
    } catch (err) {
      this.onListenerError(err);
    }
  }
}

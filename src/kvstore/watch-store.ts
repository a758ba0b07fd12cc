// WatchStore: a cache of every key under a prefix, kept with list-then-watch.
// After every failure (etcd gone, compaction, any watch error) it re-lists with
// backoff and reconciles: keys it had that are gone become `delete` events
// (stale pruning), new or changed values become `upsert` events; unchanged
// values produce nothing. (Cilium pkg/kvstore/store, Kubernetes reflector.)

import { sleep, systemClock, type Clock } from '../util/clock.ts';
import { toKvError, type KvClient, type WatchHandle } from './client.ts';
import { KvError, type KvErrorKind, type WatchEvent } from './types.ts';
import { backoffDelay, type BackoffOptions } from './backoff.ts';

export { backoffDelay, type BackoffOptions };

export interface WatchStoreOptions {
  /** Called with every change of the cache, in order. A throw is reported to onError, not fatal. */
  onEvent: (ev: WatchEvent) => void;
  /** Every failure (list, watch, onEvent) as it happens; the store recovers by itself. */
  onError?: (err: KvError) => void;
  pageSize?: number;
  backoff?: BackoffOptions;
  /** A watch that stayed up this long resets the backoff (default 30 s). */
  stableAfterMs?: number;
  clock?: Clock;
  /** Random source for jitter (tests: () => 0). */
  random?: () => number;
  /**
   * Keep each key's value (default true). Without, only its mod revision is
   * kept: a re-list announces a key again when its revision changed (even to
   * the same value), get() and snapshot() answer with '' for every value, and
   * the store costs a fraction of the memory (an importer of 250k remote keys
   * keeps its own decoded copy anyway).
   */
  retainValues?: boolean;
}

export interface WatchStoreStatus {
  /** A watch is established on top of a completed list. */
  connected: boolean;
  /** The first full list completed. */
  synced: boolean;
  /** Re-lists after a failure. */
  reconnections: number;
  lastError: { kind: KvErrorKind; message: string; at: number } | undefined;
  keys: number;
  /** The revision the cache reflects. */
  revision: string | undefined;
  stopped: boolean;
}

interface Cached {
  value: string;
  modRevision: string;
}

export class WatchStore {
  private readonly cache = new Map<string, Cached>();
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly abort = new AbortController();
  private running = false;
  private stopped = false;
  private isSynced = false;
  private connected = false;
  private reconnections = 0;
  private lastError: WatchStoreStatus['lastError'];
  private revision: string | undefined;
  private handle: WatchHandle | undefined;
  private loop: Promise<void> | undefined;
  /** Ends the current watch wait (stop()). */
  private endWatch: ((err: KvError) => void) | undefined;
  private resolveSynced!: () => void;
  private rejectSynced!: (err: KvError) => void;
  /** Resolves after the first full list; rejects (kind 'closed') if stopped before. */
  readonly synced: Promise<void>;

  constructor(
    private readonly client: KvClient,
    readonly prefix: string,
    private readonly opts: WatchStoreOptions,
  ) {
    this.clock = opts.clock ?? systemClock;
    this.random = opts.random ?? Math.random;
    this.synced = new Promise<void>((resolve, reject) => {
      this.resolveSynced = resolve;
      this.rejectSynced = reject;
    });
    this.synced.catch(() => undefined); // nobody has to await it
  }

  /** Starts list-then-watch. Idempotent; a stopped store cannot be restarted. */
  start(): this {
    if (this.stopped) throw new KvError('closed', 'watch-store', 'store was stopped');
    if (!this.running) {
      this.running = true;
      this.loop = this.run();
    }
    return this;
  }

  get isSyncedNow(): boolean {
    return this.isSynced;
  }

  status(): WatchStoreStatus {
    return {
      connected: this.connected,
      synced: this.isSynced,
      reconnections: this.reconnections,
      lastError: this.lastError,
      keys: this.cache.size,
      revision: this.revision,
      stopped: this.stopped,
    };
  }

  get(key: string): string | undefined {
    return this.cache.get(key)?.value;
  }

  has(key: string): boolean {
    return this.cache.has(key);
  }

  /** A copy of the cache: key → value. */
  snapshot(): Map<string, string> {
    return new Map([...this.cache].map(([k, v]) => [k, v.value]));
  }

  get size(): number {
    return this.cache.size;
  }

  /** Stops watching and keeps the cached keys (the caller decides whether to
   * drain). No event is emitted once this resolves. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.connected = false;
    this.abort.abort();
    if (!this.isSynced) this.rejectSynced(new KvError('closed', 'watch-store', 'stopped before the first list completed'));
    this.endWatch?.(new KvError('closed', 'watch-store', 'stopped'));
    await this.handle?.cancel();
    // The loop may still be waiting for a list; it checks `stopped` before emitting.
  }

  /** Stops (if running) and emits a delete for every cached key, then forgets them. */
  async drain(): Promise<void> {
    await this.stop();
    const rev = this.revision ?? '0';
    const keys = [...this.cache.keys()];
    this.cache.clear();
    for (const key of keys) this.emit({ kind: 'delete', key, modRevision: rev });
  }

  private emit(ev: WatchEvent): void {
    try {
      this.opts.onEvent(ev);
    } catch (err) {
      this.report(new KvError('other', 'watch-store', `onEvent threw for ${ev.key}: ${err instanceof Error ? err.message : String(err)}`, err));
    }
  }

  private report(err: KvError): void {
    this.lastError = { kind: err.kind, message: err.message, at: this.clock.now() };
    try {
      this.opts.onError?.(err);
    } catch {
      /* a logger must not break the store */
    }
  }

  private async run(): Promise<void> {
    let attempt = 0;
    let first = true;
    while (!this.stopped) {
      if (!first) this.reconnections++;
      first = false;
      let watchStartedAt: number | undefined;
      try {
        const res = await this.client.list(this.prefix, this.opts.pageSize !== undefined ? { pageSize: this.opts.pageSize } : {});
        if (this.stopped) break;
        this.reconcile(res.pairs, res.revision);
        if (!this.isSynced) {
          this.isSynced = true;
          this.resolveSynced();
        }
        const from = (BigInt(res.revision) + 1n).toString();
        const failure = await new Promise<KvError>((resolve) => {
          this.endWatch = resolve;
          this.handle = this.client.watch(this.prefix, from, (ev) => this.apply(ev), resolve);
          this.connected = true;
          watchStartedAt = this.clock.now();
        });
        this.endWatch = undefined;
        this.connected = false;
        this.handle = undefined;
        if (this.stopped) break;
        this.report(failure);
      } catch (err) {
        this.connected = false;
        if (this.stopped) break;
        this.report(toKvError('watch-store', err));
      }
      if (watchStartedAt !== undefined && this.clock.now() - watchStartedAt >= (this.opts.stableAfterMs ?? 30_000)) attempt = 0;
      const wait = backoffDelay(attempt, this.opts.backoff, this.random);
      attempt++;
      if (!(await sleep(this.clock, wait, this.abort.signal))) break;
    }
    this.connected = false;
  }

  /** Makes the cache equal to a fresh list, emitting only the differences. */
  private reconcile(pairs: readonly { key: string; value: string; modRevision: string }[], revision: string): void {
    const seen = new Set<string>();
    for (const p of pairs) {
      seen.add(p.key);
      const had = this.cache.get(p.key);
      this.cache.set(p.key, this.cached(p));
      if (this.changed(had, p)) this.emit({ kind: 'upsert', key: p.key, value: p.value, modRevision: p.modRevision });
    }
    // Stale pruning: collect first, delete after.
    const gone = [...this.cache.keys()].filter((k) => !seen.has(k));
    for (const key of gone) {
      this.cache.delete(key);
      this.emit({ kind: 'delete', key, modRevision: revision });
    }
    this.revision = revision;
  }

  private apply(ev: WatchEvent): void {
    if (this.stopped) return;
    this.revision = ev.modRevision;
    if (ev.kind === 'delete') {
      if (this.cache.delete(ev.key)) this.emit(ev);
      return;
    }
    const had = this.cache.get(ev.key);
    this.cache.set(ev.key, this.cached(ev));
    if (this.changed(had, ev)) this.emit(ev);
  }

  private cached(p: Cached): Cached {
    return this.opts.retainValues === false ? { value: '', modRevision: p.modRevision } : { value: p.value, modRevision: p.modRevision };
  }

  private changed(had: Cached | undefined, now: Cached): boolean {
    if (had === undefined) return true;
    return this.opts.retainValues === false ? had.modRevision !== now.modRevision : had.value !== now.value;
  }
}

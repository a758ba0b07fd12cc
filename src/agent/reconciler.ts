// A generic reconciler: makes a target (a BPF map, the cluster store) hold a
// desired table, with the semantics of CONVENTIONS "desired state, then
// reconcile" (after Cilium's statedb reconciler):
//
//   - desired state is a map key → value that the owner edits (upsert/remove);
//     every edit marks the key pending and kicks an incremental pass, batched
//     per event-loop turn;
//   - update is idempotent; delete treats "missing" as done;
//   - a full pass reads the whole target, rewrites what differs, and prunes
//     what is not desired (collect first, delete after) — unless pruning is
//     blocked (a source has not synced yet: what it would have said is unknown);
//   - a failed key is retried with exponential backoff on the injected clock;
//   - a periodic full pass repairs drift (an entry changed or deleted behind
//     the reconciler's back), counted in status().driftRepaired.
//
// Nothing is written before start(); edits made before are applied by the
// first pass. Operations of one reconciler never overlap.
import { systemClock, type Clock, type TimerHandle } from '../util/clock.ts';
import { Buckets } from '../util/metrics.ts';

export interface ReconcileTarget<V> {
  /** Every entry the target holds now (full pass). */
  list(): Iterable<readonly [string, V]> | Promise<Iterable<readonly [string, V]>>;
  /** Writes one entry; must be idempotent. */
  update(key: string, value: V): void | Promise<void>;
  /** Deletes one entry; a missing entry is success (return false, or throw what isNotFound recognises). */
  delete(key: string): boolean | void | Promise<boolean | void>;
}

export interface ReconcilerBackoff {
  initialMs: number;
  maxMs: number;
  factor: number;
  /** Random extra delay as a fraction of the delay (0..1). */
  jitter: number;
}

export const DEFAULT_RECONCILER_BACKOFF: ReconcilerBackoff = { initialMs: 50, maxMs: 10_000, factor: 2, jitter: 0.1 };

export interface ReconcilerOptions<V> {
  name: string;
  target: ReconcileTarget<V>;
  clock?: Clock;
  /** desired vs actual; default: JSON equality. */
  equals?: (desired: V, actual: V) => boolean;
  backoff?: Partial<ReconcilerBackoff>;
  random?: () => number;
  /** Period of the full pass after start; 0 = none. */
  fullSyncIntervalMs?: number;
  /** Keys of the target this reconciler may prune (default: all it lists). */
  owns?: (key: string) => boolean;
  /** Why pruning must wait (e.g. a source has not synced), or null when it may run. */
  pruneBlocker?: () => string | null;
  /** Recognises a "no such key" error from delete (default: code/errno ENOENT). */
  isNotFound?: (err: unknown) => boolean;
  /** Each failed operation (after it was scheduled for retry). */
  onError?: (key: string | null, err: unknown, attempt: number) => void;
  /** A key's desired state reached the target (not for keys a full pass found already right). */
  onApplied?: (key: string) => void;
  /** Schedules the next incremental pass "soon"; default setImmediate. */
  defer?: (fn: () => void) => void;
}

export interface ReconcilerError {
  /** The key, or null for a failed listing of the target. */
  key: string | null;
  message: string;
  at: string;
}

export interface ReconcilerStatus {
  name: string;
  started: boolean;
  /** Entries of the desired state. */
  desired: number;
  /** Keys whose desired state is not (known to be) in the target yet. */
  pending: number;
  /** Pending keys whose last attempt failed. */
  errors: number;
  lastError: ReconcilerError | null;
  lastFullSync: string | null;
  fullSyncs: number;
  /** Attempts that were retries of a failed one. */
  retries: number;
  /** Failed operations (each attempt), listing the target included. */
  failures: number;
  /** Failed writes because the target was full (E2BIG/ENOSPC from a BPF map), each attempt. */
  mapFull: number;
  /** Pending keys whose last write was refused because the target was full: entries not in the map now for lack of room (retried; nothing is evicted for them). */
  refused: number;
  updates: number;
  deletes: number;
  /** Entries removed by full passes because they were not desired. */
  pruned: number;
  /** Entries a full pass found wrong or missing although they had been applied. */
  driftRepaired: number;
  /** Why pruning is held back now, or null. */
  pruneBlocked: string | null;
}

export interface FullSyncResult {
  desired: number;
  /** Entries written because they were missing or different. */
  written: number;
  /** Entries deleted (pruned, or pending deletes). */
  removed: number;
  /** Operations that failed (retried with backoff). */
  failed: number;
  pruneBlocked: string | null;
}

interface Pending {
  gen: number;
  attempts: number;
  notBefore: number;
  lastError: ReconcilerError | undefined;
  /** The last attempt failed because the target was full. */
  full?: boolean;
}

interface Waiter {
  resolve: () => void;
  reject: (err: Error) => void;
  timer: TimerHandle | undefined;
}

const jsonEquals = (a: unknown, b: unknown): boolean => a === b || JSON.stringify(a) === JSON.stringify(b);

function defaultIsNotFound(err: unknown): boolean {
  const e = err as { code?: unknown; errno?: unknown } | null;
  return e?.code === 'ENOENT' || e?.errno === 2;
}

/** A BPF map update refused because the map has max_entries entries. */
export function isMapFull(err: unknown): boolean {
  const e = err as { code?: unknown; errno?: unknown } | null;
  return e?.errno === 7 || e?.errno === 28 || e?.code === 'E2BIG' || e?.code === 'ENOSPC';
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export class Reconciler<V> {
  readonly name: string;
  private readonly target: ReconcileTarget<V>;
  private readonly clock: Clock;
  private readonly equals: (d: V, a: V) => boolean;
  private readonly backoff: ReconcilerBackoff;
  private readonly random: () => number;
  private readonly fullSyncIntervalMs: number;
  private readonly owns: (key: string) => boolean;
  private readonly pruneBlocker: () => string | null;
  private readonly isNotFound: (err: unknown) => boolean;
  private readonly onError: (key: string | null, err: unknown, attempt: number) => void;
  private readonly defer: (fn: () => void) => void;
  private readonly onApplied: (key: string) => void;
  /** How long passes that did work took, in seconds (full: every full pass). */
  readonly passSeconds = { full: new Buckets(), incremental: new Buckets() };

  private readonly desiredMap = new Map<string, V>();
  private readonly pending = new Map<string, Pending>();
  private readonly waiters = new Map<string, Set<Waiter>>();
  private gen = 0;
  private started = false;
  private stopped = false;
  private running: Promise<void> | undefined;
  private rerun = false;
  private deferred = false;
  private fullRequested = false;
  private fullAttempts = 0;
  private retryTimer: { handle: TimerHandle; due: number } | undefined;
  private periodicTimer: TimerHandle | undefined;
  private fullRetryTimer: TimerHandle | undefined;
  private readonly fullWaiters: Array<{ resolve: (r: FullSyncResult) => void; reject: (e: Error) => void }> = [];

  private stats = { fullSyncs: 0, retries: 0, failures: 0, mapFull: 0, updates: 0, deletes: 0, pruned: 0, driftRepaired: 0 };
  private lastError: ReconcilerError | null = null;
  private lastFullSync: number | null = null;

  constructor(opts: ReconcilerOptions<V>) {
    this.name = opts.name;
    this.target = opts.target;
    this.clock = opts.clock ?? systemClock;
    this.equals = opts.equals ?? jsonEquals;
    this.backoff = { ...DEFAULT_RECONCILER_BACKOFF, ...opts.backoff };
    this.random = opts.random ?? Math.random;
    this.fullSyncIntervalMs = opts.fullSyncIntervalMs ?? 0;
    this.owns = opts.owns ?? (() => true);
    this.pruneBlocker = opts.pruneBlocker ?? (() => null);
    this.isNotFound = opts.isNotFound ?? defaultIsNotFound;
    this.onError = opts.onError ?? (() => undefined);
    this.defer = opts.defer ?? ((fn) => void setImmediate(fn));
    this.onApplied = opts.onApplied ?? (() => undefined);
  }

  // ---- desired state

  /** The desired state (read-only view). */
  get desired(): ReadonlyMap<string, V> {
    return this.desiredMap;
  }

  /** Sets the desired value of key. A value equal to the current desired one changes nothing. */
  upsert(key: string, value: V): void {
    const cur = this.desiredMap.get(key);
    if (cur !== undefined && this.equals(value, cur) && !this.pending.get(key)?.lastError) return;
    this.desiredMap.set(key, value);
    this.markPending(key);
  }

  /** Removes key from the desired state (the target entry is deleted). */
  remove(key: string): void {
    // Even when key was not desired, the target may hold it from before: the
    // delete is cheap, and "missing" is success.
    this.desiredMap.delete(key);
    this.markPending(key);
  }

  /**
   * Writes the desired value of `keys` (default: every desired key) again at
   * the next pass, whatever the reconciler believes the target holds: for
   * when the target is known to have lost entries (a store that came back
   * empty, an object deleted behind our back).
   */
  refresh(keys?: Iterable<string>): void {
    for (const key of keys ?? [...this.desiredMap.keys()]) if (this.desiredMap.has(key)) this.markPending(key);
  }

  /** Makes the desired state exactly `entries`. */
  replaceAll(entries: Iterable<readonly [string, V]>): void {
    const next = new Map(entries);
    for (const key of [...this.desiredMap.keys()]) if (!next.has(key)) this.remove(key);
    for (const [k, v] of next) this.upsert(k, v);
  }

  // ---- lifecycle

  /** Enables writing: a full pass now, then incremental passes, retries and the periodic full pass. */
  start(): Promise<FullSyncResult> {
    if (this.stopped) throw new Error(`reconciler ${this.name}: stopped`);
    this.started = true;
    return this.fullSync();
  }

  /** Stops all timers; waiters are rejected. The desired state is kept. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.started = false;
    if (this.retryTimer) this.clock.clearTimeout(this.retryTimer.handle);
    if (this.periodicTimer) this.clock.clearTimeout(this.periodicTimer);
    if (this.fullRetryTimer) this.clock.clearTimeout(this.fullRetryTimer);
    this.retryTimer = this.periodicTimer = this.fullRetryTimer = undefined;
    await this.running;
    const err = new Error(`reconciler ${this.name}: stopped`);
    for (const set of this.waiters.values()) for (const w of set) this.settleWaiter(w, err);
    this.waiters.clear();
    for (const w of this.fullWaiters.splice(0)) w.reject(err);
  }

  /** Requests a full pass; resolves with its result. */
  fullSync(): Promise<FullSyncResult> {
    if (!this.started) return Promise.reject(new Error(`reconciler ${this.name}: not started`));
    return new Promise((resolve, reject) => {
      this.fullWaiters.push({ resolve, reject });
      this.fullRequested = true;
      void this.run();
    });
  }

  /**
   * Resolves once key's desired state is in the target (at once when nothing
   * is pending for it). With timeoutMs, rejects after that long with the last
   * error of the key.
   */
  whenApplied(key: string, timeoutMs?: number): Promise<void> {
    if (!this.pending.has(key)) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = { resolve, reject, timer: undefined };
      let set = this.waiters.get(key);
      if (!set) this.waiters.set(key, (set = new Set()));
      set.add(w);
      if (timeoutMs !== undefined) {
        w.timer = this.clock.setTimeout(() => {
          this.waiters.get(key)?.delete(w);
          const last = this.pending.get(key)?.lastError;
          const why = last ? `: ${last.message}` : this.started ? '' : ' (not started)';
          reject(new Error(`reconciler ${this.name}: ${key} not applied after ${timeoutMs} ms${why}`));
        }, timeoutMs);
      }
    });
  }

  /** True when key has nothing pending. */
  isApplied(key: string): boolean {
    return this.started && !this.pending.has(key);
  }

  /** Runs due work now and resolves when no pass is running (tests; after advancing a manual clock). */
  async settle(): Promise<void> {
    for (let i = 0; i < 100; i++) {
      if (this.running) await this.running;
      else if (this.started && (this.rerun || this.fullRequested || this.hasDue())) await this.run();
      else return;
    }
  }

  status(): ReconcilerStatus {
    let errors = 0;
    let refused = 0;
    for (const p of this.pending.values()) {
      if (p.lastError) errors++;
      if (p.full) refused++;
    }
    return {
      name: this.name,
      started: this.started,
      desired: this.desiredMap.size,
      pending: this.pending.size,
      errors,
      refused,
      lastError: this.lastError,
      lastFullSync: this.lastFullSync === null ? null : new Date(this.lastFullSync).toISOString(),
      ...this.stats,
      pruneBlocked: this.pruneBlocker(),
    };
  }

  // ---- the loop

  private markPending(key: string): void {
    this.pending.set(key, { gen: ++this.gen, attempts: 0, notBefore: this.clock.now(), lastError: undefined });
    this.kick();
  }

  private kick(): void {
    if (!this.started) return;
    if (this.running) {
      this.rerun = true;
      return;
    }
    if (this.deferred) return;
    this.deferred = true;
    this.defer(() => {
      this.deferred = false;
      void this.run();
    });
  }

  private hasDue(): boolean {
    const now = this.clock.now();
    for (const p of this.pending.values()) if (p.notBefore <= now) return true;
    return false;
  }

  private run(): Promise<void> {
    if (!this.started) return Promise.resolve();
    if (this.running) {
      this.rerun = true;
      return this.running;
    }
    const p = (async () => {
      try {
        do {
          this.rerun = false;
          if (this.fullRequested) {
            this.fullRequested = false;
            const waiters = this.fullWaiters.splice(0);
            try {
              const t0 = performance.now();
              const r = await this.fullPass();
              this.passSeconds.full.observe((performance.now() - t0) / 1000);
              for (const w of waiters) w.resolve(r);
            } catch (err) {
              for (const w of waiters) w.reject(err as Error);
            }
          }
          await this.incrementalPass();
        } while (this.started && (this.rerun || this.fullRequested));
      } finally {
        this.running = undefined;
        this.armRetryTimer();
      }
    })();
    this.running = p;
    return p;
  }

  private async incrementalPass(): Promise<void> {
    const now = this.clock.now();
    const due: Array<[string, number]> = [];
    for (const [key, p] of this.pending) if (p.notBefore <= now) due.push([key, p.gen]);
    if (due.length === 0) return;
    const t0 = performance.now();
    for (const [key, gen] of due) {
      if (!this.started) return;
      const p = this.pending.get(key);
      if (!p || p.gen !== gen) continue; // changed meanwhile: a later pass handles it
      const value = this.desiredMap.get(key);
      try {
        if (p.attempts > 0) this.stats.retries++;
        if (value !== undefined) await this.doUpdate(key, value);
        else await this.doDelete(key);
        this.applied(key, gen);
      } catch (err) {
        this.failed(key, gen, err);
      }
    }
    this.passSeconds.incremental.observe((performance.now() - t0) / 1000);
  }

  private async fullPass(): Promise<FullSyncResult> {
    const result: FullSyncResult = { desired: this.desiredMap.size, written: 0, removed: 0, failed: 0, pruneBlocked: null };
    let current: Map<string, V>;
    try {
      current = new Map(await this.target.list());
    } catch (err) {
      this.fullAttempts++;
      this.stats.failures++;
      this.lastError = { key: null, message: `listing the target: ${message(err)}`, at: new Date(this.clock.now()).toISOString() };
      this.onError(null, err, this.fullAttempts);
      if (this.fullRetryTimer) this.clock.clearTimeout(this.fullRetryTimer);
      this.fullRetryTimer = this.clock.setTimeout(() => {
        this.fullRetryTimer = undefined;
        this.fullRequested = true;
        void this.run();
      }, this.delay(this.fullAttempts));
      throw err;
    }
    this.fullAttempts = 0;
    // A snapshot of the pending generations: a key edited during this pass is left pending.
    const gens = new Map<string, number>();
    for (const [k, p] of this.pending) gens.set(k, p.gen);

    for (const [key, value] of [...this.desiredMap]) {
      if (!this.started) break;
      const actual = current.get(key);
      const gen = gens.get(key);
      if (actual !== undefined && this.equals(value, actual)) {
        if (gen !== undefined) this.applied(key, gen);
        continue;
      }
      try {
        await this.doUpdate(key, value);
        result.written++;
        if (gen === undefined) this.stats.driftRepaired++;
        else this.applied(key, gen);
      } catch (err) {
        result.failed++;
        this.failed(key, gen ?? this.markPendingSilently(key), err);
      }
    }

    // Prune: collect first, delete after. Pending deletes are explicit and go even when pruning is blocked.
    const blocked = this.pruneBlocker();
    result.pruneBlocked = blocked;
    const stale: string[] = [];
    for (const key of current.keys()) {
      if (this.desiredMap.has(key)) continue;
      if (gens.has(key) || (blocked === null && this.owns(key))) stale.push(key);
    }
    for (const key of stale) {
      if (!this.started) break;
      const gen = gens.get(key);
      try {
        await this.doDelete(key);
        result.removed++;
        if (gen === undefined) this.stats.pruned++;
        else this.applied(key, gen);
      } catch (err) {
        result.failed++;
        this.failed(key, gen ?? this.markPendingSilently(key), err);
      }
    }
    // Pending deletes of keys the target does not hold are done.
    for (const [key, gen] of gens) if (!this.desiredMap.has(key) && !current.has(key)) this.applied(key, gen);

    this.stats.fullSyncs++;
    this.lastFullSync = this.clock.now();
    this.armPeriodic();
    return result;
  }

  private async doUpdate(key: string, value: V): Promise<void> {
    await this.target.update(key, value);
    this.stats.updates++;
  }

  private async doDelete(key: string): Promise<void> {
    try {
      await this.target.delete(key);
    } catch (err) {
      if (!this.isNotFound(err)) throw err;
    }
    this.stats.deletes++;
  }

  /** A key the full pass found wrong but that had no pending record: make it one (for retries). */
  private markPendingSilently(key: string): number {
    const gen = ++this.gen;
    this.pending.set(key, { gen, attempts: 0, notBefore: this.clock.now(), lastError: undefined });
    return gen;
  }

  private applied(key: string, gen: number): void {
    const p = this.pending.get(key);
    if (!p || p.gen !== gen) return;
    this.pending.delete(key);
    this.onApplied(key);
    const set = this.waiters.get(key);
    if (set) {
      this.waiters.delete(key);
      for (const w of set) this.settleWaiter(w);
    }
  }

  private failed(key: string, gen: number, err: unknown): void {
    const p = this.pending.get(key);
    const e: ReconcilerError = { key, message: message(err), at: new Date(this.clock.now()).toISOString() };
    this.lastError = e;
    this.stats.failures++;
    const full = isMapFull(err);
    if (full) this.stats.mapFull++;
    if (!p || p.gen !== gen) return;
    p.attempts++;
    p.lastError = e;
    p.full = full;
    p.notBefore = this.clock.now() + this.delay(p.attempts);
    this.onError(key, err, p.attempts);
  }

  private delay(attempt: number): number {
    const b = this.backoff;
    const base = Math.min(b.maxMs, b.initialMs * b.factor ** Math.max(0, attempt - 1));
    return Math.round(base * (1 + b.jitter * this.random()));
  }

  private settleWaiter(w: Waiter, err?: Error): void {
    if (w.timer) this.clock.clearTimeout(w.timer);
    if (err) w.reject(err);
    else w.resolve();
  }

  /** One timer for the earliest retry in the future. */
  private armRetryTimer(): void {
    if (!this.started) return;
    let due = Infinity;
    for (const p of this.pending.values()) if (p.notBefore < due) due = p.notBefore;
    if (due === Infinity) {
      if (this.retryTimer) this.clock.clearTimeout(this.retryTimer.handle);
      this.retryTimer = undefined;
      return;
    }
    if (this.retryTimer && this.retryTimer.due === due) return;
    if (this.retryTimer) this.clock.clearTimeout(this.retryTimer.handle);
    const now = this.clock.now();
    if (due <= now) {
      this.retryTimer = undefined;
      this.kick();
      return;
    }
    const handle = this.clock.setTimeout(() => {
      this.retryTimer = undefined;
      void this.run();
    }, due - now);
    this.retryTimer = { handle, due };
  }

  private armPeriodic(): void {
    if (!this.started || this.fullSyncIntervalMs <= 0) return;
    if (this.periodicTimer) this.clock.clearTimeout(this.periodicTimer);
    this.periodicTimer = this.clock.setTimeout(() => {
      this.periodicTimer = undefined;
      this.fullRequested = true;
      void this.run();
    }, this.fullSyncIntervalMs);
  }
}

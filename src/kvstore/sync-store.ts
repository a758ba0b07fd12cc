// SyncStore: writes a set of keys the caller owns into etcd, and tells readers
// when the initial set is complete with the synced canary (ARCHITECTURE §4).
// Changes are coalesced per key (only the latest desired state is written, and
// a value equal to the last one written is not rewritten), rate-limited, and
// retried with backoff. With `leased`, keys live on the client's session lease;
// when the session is lost, everything is rewritten on the new one. A write
// refused as 'superseded' (KvClient.setWriteFence) is dropped, not retried.
// (Cilium pkg/kvstore/store SyncStore.)

import { systemClock, type Clock, type TimerHandle } from '../util/clock.ts';
import { toKvError, type KvClient, type KvSession } from './client.ts';
import { KvError, type KvErrorKind } from './types.ts';
import { backoffDelay, type BackoffOptions } from './watch-store.ts';

export interface RateLimit {
  /** Sustained writes per second. */
  perSecond: number;
  /** Writes allowed at once before the rate applies. */
  burst: number;
}

export interface SyncStoreOptions {
  /** The synced canary's key (the caller's layout, e.g. `cilium/synced/<cluster>/cilium/state/nodes/v1`). */
  canaryKey: string;
  /** Every key written must lie under this prefix. */
  prefix: string;
  /** Attach keys (and the canary) to the session lease (default true). */
  leased?: boolean;
  /** Default 200 writes/s, burst 100. */
  rateLimit?: RateLimit;
  /** Retry backoff per key (default 100 ms … 10 s). */
  backoff?: BackoffOptions;
  /** Writes in flight at once (default 8). */
  concurrency?: number;
  /** Up to this many keys per write, in one etcd transaction (default 1; at most
   * 128, etcd's default --max-txn-ops). A transaction takes one token of the rate
   * limit and is one failure (onError once, naming its first key); its keys go
   * back to the queue, each with its own backoff. */
  batch?: number;
  clock?: Clock;
  random?: () => number;
  /** Every failed write (it is retried). */
  onError?: (err: KvError, key: string) => void;
}

export interface SyncStoreStatus {
  /** Keys waiting to be written or deleted. */
  queued: number;
  inFlight: number;
  puts: number;
  deletes: number;
  failures: number;
  /** The synced canary has been written. */
  synced: boolean;
  lastError: { kind: KvErrorKind; message: string; key: string; at: number } | undefined;
}

type Op = { kind: 'put'; value: string } | { kind: 'delete' };

interface Pending {
  op: Op;
  attempts: number;
  /** clock time before which it is not retried. */
  notBefore: number;
}

/** RFC3339 UTC time without fractions, as Go's time.RFC3339 writes it. */
export function rfc3339(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

const CANARY = Symbol('canary');
type Item = string | typeof CANARY;

export class SyncStore {
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly leased: boolean;
  private readonly rate: RateLimit;
  private readonly concurrency: number;
  private readonly batch: number;
  private readonly canaryKey: string;
  /** Desired changes not yet written, in arrival order. */
  private readonly pending = new Map<string, Pending>();
  /** Last value successfully written per key (what etcd holds, as far as we know). */
  private readonly written = new Map<string, string>();
  private readonly inFlight = new Set<Item>();
  /** The change each key in flight carries (what etcd will hold once it lands). */
  private readonly inFlightOps = new Map<string, Op>();
  /** Counts lost sessions: a write that started before a loss does not count as written (its key may be gone with the lease). */
  private sessionEpoch = 0;
  /** Requests (puts, deletes, transactions, the canary) in flight: what `concurrency` bounds. */
  private requests = 0;
  /** Keys queued when markInitialSyncDone() was called and not written since. */
  private initialOutstanding: Set<string> | undefined;
  private canary: 'none' | 'waiting' | 'queued' | 'written' = 'none';
  private canaryAttempts = 0;
  private canaryNotBefore = 0;
  private tokens: number;
  private tokensAt: number;
  private stopped = false;
  private kickQueued = false;
  private timer: TimerHandle | undefined;
  private timerDue = Infinity;
  private idleWaiters: (() => void)[] = [];
  private readonly sessions = new WeakSet<KvSession>();
  private stats = { puts: 0, deletes: 0, failures: 0 };
  private lastError: SyncStoreStatus['lastError'];

  constructor(
    private readonly client: KvClient,
    private readonly opts: SyncStoreOptions,
  ) {
    this.clock = opts.clock ?? systemClock;
    this.random = opts.random ?? Math.random;
    this.leased = opts.leased ?? true;
    this.rate = opts.rateLimit ?? { perSecond: 200, burst: 100 };
    if (!(this.rate.perSecond > 0) || !(this.rate.burst >= 1)) throw new Error('sync-store: rateLimit needs perSecond > 0 and burst >= 1');
    this.concurrency = Math.max(1, opts.concurrency ?? 8);
    this.batch = Math.min(128, Math.max(1, Math.floor(opts.batch ?? 1)));
    this.canaryKey = opts.canaryKey;
    this.tokens = this.rate.burst;
    this.tokensAt = this.clock.now();
  }

  /** Desires `key` = `value`. Coalesced with earlier changes of the key. */
  upsert(key: string, value: string): void {
    this.checkKey(key);
    if (this.written.get(key) === value && !this.pending.has(key) && !this.inFlight.has(key)) return;
    this.enqueue(key, { kind: 'put', value });
  }

  /** Desires `key` gone. */
  delete(key: string): void {
    this.checkKey(key);
    this.enqueue(key, { kind: 'delete' });
  }

  /** The caller has queued its whole initial set: once all of it is written,
   * the synced canary is written. Later calls do nothing. */
  markInitialSyncDone(): void {
    if (this.canary !== 'none') return;
    this.canary = 'waiting';
    this.initialOutstanding = new Set([...this.pending.keys(), ...[...this.inFlight].filter((i): i is string => i !== CANARY)]);
    this.maybeQueueCanary();
    this.kickSoon();
  }

  get synced(): boolean {
    return this.canary === 'written';
  }

  status(): SyncStoreStatus {
    return {
      queued: this.pending.size + (this.canary === 'queued' && !this.inFlight.has(CANARY) ? 1 : 0),
      inFlight: this.inFlight.size,
      ...this.stats,
      synced: this.synced,
      lastError: this.lastError,
    };
  }

  /** Resolves once nothing is queued or in flight (including the canary, if due). */
  flush(): Promise<void> {
    if (this.idle()) return Promise.resolve();
    return new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  /** Stops writing (in-flight writes finish); queued changes are dropped. Keys stay in etcd. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
    if (this.inFlight.size > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  // ---- internals -----------------------------------------------------------

  private checkKey(key: string): void {
    if (this.stopped) throw new KvError('closed', 'sync-store', 'store was stopped');
    if (!key.startsWith(this.opts.prefix) || key.length === this.opts.prefix.length) {
      throw new KvError('other', 'sync-store', `key ${key} is not under ${this.opts.prefix}`);
    }
  }

  private enqueue(key: string, op: Op): void {
    const prev = this.pending.get(key);
    // A newer change replaces an older one; its retry state is kept so a
    // failing key is not hammered by frequent updates.
    this.pending.set(key, { op, attempts: prev?.attempts ?? 0, notBefore: prev?.notBefore ?? 0 });
    this.kickSoon();
  }

  /** Kicks after the current synchronous burst, so that a burst of changes of
   * one key coalesces into one write. */
  private kickSoon(): void {
    if (this.kickQueued) return;
    this.kickQueued = true;
    queueMicrotask(() => {
      this.kickQueued = false;
      this.kick();
    });
  }

  private idle(): boolean {
    const canaryDue = this.canary === 'queued';
    return this.inFlight.size === 0 && (this.stopped || (this.pending.size === 0 && !canaryDue));
  }

  private notifyIdle(): void {
    if (!this.idle()) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  private maybeQueueCanary(): void {
    if (this.canary === 'waiting' && this.initialOutstanding !== undefined && this.initialOutstanding.size === 0) {
      this.canary = 'queued';
      this.canaryAttempts = 0;
      this.canaryNotBefore = 0;
    }
  }

  private refillTokens(now: number): void {
    const add = ((now - this.tokensAt) / 1000) * this.rate.perSecond;
    this.tokens = Math.min(this.rate.burst, this.tokens + add);
    this.tokensAt = now;
  }

  private schedule(at: number): void {
    if (this.stopped) return;
    if (this.timer !== undefined && this.timerDue <= at) return;
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timerDue = at;
    this.timer = this.clock.setTimeout(() => {
      this.timer = undefined;
      this.timerDue = Infinity;
      this.kick();
    }, Math.max(0, at - this.clock.now()));
  }

  /** Starts as many ready writes as concurrency and the rate limit allow. */
  private kick(): void {
    if (this.stopped) return;
    for (;;) {
      if (this.requests >= this.concurrency) return;
      const now = this.clock.now();
      const next = this.nextReady(now);
      if (next === undefined) {
        // Nothing ready (a retry is scheduled, or all done).
        this.notifyIdle();
        return;
      }
      if (next !== CANARY) {
        const p = this.pending.get(next)!;
        if (p.op.kind === 'put' && this.written.get(next) === p.op.value) {
          // Already there: nothing to write, no token spent.
          this.pending.delete(next);
          this.initialOutstanding?.delete(next);
          this.maybeQueueCanary();
          continue;
        }
      }
      this.refillTokens(now);
      if (this.tokens < 1) {
        this.schedule(now + Math.ceil(((1 - this.tokens) / this.rate.perSecond) * 1000));
        return;
      }
      this.tokens -= 1;
      this.requests++;
      this.inFlight.add(next);
      if (next === CANARY) void this.writeCanary();
      else {
        const keys = [next, ...this.moreReady(now, next, this.batch - 1)];
        const ps = keys.map((k) => {
          const p = this.pending.get(k)!;
          this.pending.delete(k);
          this.inFlight.add(k);
          this.inFlightOps.set(k, p.op);
          return p;
        });
        void this.write(keys, ps);
      }
    }
  }

  /** Up to `max` more keys ready now besides `first`, none of them already written as desired. */
  private moreReady(now: number, first: string, max: number): string[] {
    const out: string[] = [];
    if (max <= 0) return out;
    for (const [key, p] of this.pending) {
      if (out.length >= max) break;
      if (key === first || this.inFlight.has(key) || p.notBefore > now) continue;
      if (p.op.kind === 'put' && this.written.get(key) === p.op.value) {
        this.pending.delete(key);
        this.initialOutstanding?.delete(key);
        continue;
      }
      out.push(key);
    }
    this.maybeQueueCanary();
    return out;
  }

  /** The first item ready now; schedules a wake-up for the earliest one that is not. */
  private nextReady(now: number): Item | undefined {
    let earliest = Infinity;
    for (const [key, p] of this.pending) {
      if (this.inFlight.has(key)) continue; // one write per key at a time
      if (p.notBefore <= now) return key;
      earliest = Math.min(earliest, p.notBefore);
    }
    if (this.canary === 'queued' && !this.inFlight.has(CANARY)) {
      if (this.canaryNotBefore <= now) return CANARY;
      earliest = Math.min(earliest, this.canaryNotBefore);
    }
    if (earliest < Infinity) this.schedule(earliest);
    return undefined;
  }

  /** The session the next leased write uses; a loss of any session we wrote
   * with re-queues everything. */
  private async useSession(): Promise<void> {
    if (!this.leased) return;
    const s = await this.client.lease();
    if (this.sessions.has(s)) return;
    this.sessions.add(s);
    s.once('lost', () => this.onSessionLost());
  }

  /**
   * The keys of a lost session are gone from etcd: write everything desired
   * again. Desired is what was written, overridden by the change in flight
   * (a delete in flight must not come back as a put of the old value when it
   * lands), overridden by a pending change (left as it is).
   */
  private onSessionLost(): void {
    if (this.stopped) return;
    this.sessionEpoch++;
    const desired = new Map(this.written);
    for (const [key, op] of this.inFlightOps) {
      if (op.kind === 'put') desired.set(key, op.value);
      else desired.delete(key);
    }
    for (const [key, value] of desired) {
      if (!this.pending.has(key)) this.pending.set(key, { op: { kind: 'put', value }, attempts: 0, notBefore: 0 });
    }
    this.written.clear();
    if (this.canary === 'written') this.canary = 'queued';
    this.kick();
  }

  /** Writes `keys` (their desired changes `ps`): one put or delete, or one transaction for several. */
  private async write(keys: string[], ps: Pending[]): Promise<void> {
    const epoch = this.sessionEpoch;
    try {
      if (keys.length === 1) {
        const [key, p] = [keys[0]!, ps[0]!];
        if (p.op.kind === 'put') {
          await this.useSession();
          await this.client.put(key, p.op.value, { lease: this.leased });
        } else await this.client.delete(key);
      } else {
        if (ps.some((p) => p.op.kind === 'put')) await this.useSession();
        await this.client.writeMany(
          keys.map((key, i) => {
            const op = ps[i]!.op;
            return op.kind === 'put' ? { key, value: op.value } : { key, delete: true as const };
          }),
          { lease: this.leased },
        );
      }
      for (const [i, key] of keys.entries()) {
        const op = ps[i]!.op;
        if (op.kind === 'put') {
          this.stats.puts++;
          // Landed before a session loss that was seen meanwhile: gone with the lease, queued again by onSessionLost.
          if (epoch === this.sessionEpoch) this.written.set(key, op.value);
        } else {
          this.stats.deletes++;
          this.written.delete(key);
        }
        this.initialOutstanding?.delete(key);
      }
      this.maybeQueueCanary();
    } catch (err) {
      const e = toKvError('sync-store', err);
      this.stats.failures++;
      this.lastError = { kind: e.kind, message: e.message, key: keys[0]!, at: this.clock.now() };
      this.report(e, keys[0]!);
      for (const [i, key] of keys.entries()) this.retryLater(key, ps[i]!, e);
    } finally {
      for (const key of keys) {
        this.inFlight.delete(key);
        this.inFlightOps.delete(key);
      }
      this.requests--;
      this.kick();
      this.notifyIdle();
    }
  }

  /** A failed change of `key` is queued again with its backoff, unless a newer one arrived meanwhile (that one is written instead). */
  private retryLater(key: string, p: Pending, e: KvError): void {
    // Superseded (a write fence names another writer): no write of ours can succeed again.
    if (e.kind === 'superseded') this.pending.delete(key);
    else if (!this.pending.has(key) && !this.stopped) {
      this.pending.set(key, { op: p.op, attempts: p.attempts + 1, notBefore: this.clock.now() + backoffDelay(p.attempts, this.opts.backoff, this.random) });
    } else if (this.pending.has(key)) {
      const newer = this.pending.get(key)!;
      newer.attempts = p.attempts + 1;
      newer.notBefore = this.clock.now() + backoffDelay(p.attempts, this.opts.backoff, this.random);
    }
  }

  private async writeCanary(): Promise<void> {
    const epoch = this.sessionEpoch;
    try {
      await this.useSession();
      await this.client.put(this.canaryKey, rfc3339(this.clock.now()), { lease: this.leased });
      this.stats.puts++;
      // Landed before a session loss that was seen meanwhile: gone with the lease; it stays queued and is written again.
      if (this.canary === 'queued' && epoch === this.sessionEpoch) this.canary = 'written';
    } catch (err) {
      const e = toKvError('sync-store', err);
      this.stats.failures++;
      this.lastError = { kind: e.kind, message: e.message, key: this.canaryKey, at: this.clock.now() };
      this.report(e, this.canaryKey);
      if (e.kind === 'superseded') this.canary = 'none';
      this.canaryNotBefore = this.clock.now() + backoffDelay(this.canaryAttempts++, this.opts.backoff, this.random);
    } finally {
      this.inFlight.delete(CANARY);
      this.requests--;
      this.kick();
      this.notifyIdle();
    }
  }

  private report(err: KvError, key: string): void {
    try {
      this.opts.onError?.(err, key);
    } catch {
      /* a logger must not break the store */
    }
  }
}

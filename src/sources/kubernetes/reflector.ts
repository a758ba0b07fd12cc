// One kind: list, then watch from the list's resourceVersion, forever.
//
// - A watch that the server ends (timeoutSeconds, a restart that closed it
//   cleanly) is opened again from the last resourceVersion seen (events and
//   bookmarks advance it).
// - 410 Gone / Expired (the resourceVersion was compacted): re-list at once
//   (with backoff when 410s keep coming right after a fresh list).
// - Any other failure (connection refused or reset, 5xx, a dead connection
//   detected by the idle timeout): re-list with backoff.
// - A re-list caches each page's objects as the page arrives; only once it
//   is complete (every page) are objects the list lacks deleted (stale
//   pruning). During an outage, or a list that fails part-way, nothing is
//   removed.
// - A kind served by a CRD (`optional`): 404 means the CRD is absent, which
//   is "no objects" (the kind is synced, empty), and the list is tried again
//   every `optionalRetryMs` until the CRD appears.
import { backoffDelay, type BackoffOptions } from '../../kvstore/backoff.ts';
import type { ClusterObject } from '../../model/index.ts';
import { sleep, systemClock, type Clock } from '../../util/clock.ts';
import type { ResourceCache } from '../resource.ts';
import { refKey } from '../resource.ts';
import { fromKubernetes, rawRef } from './convert.ts';
import { KubeApiError, type KubeHttp, type RawWatchEvent } from './http.ts';
import { KUBE_KINDS, kindPath, type KubeKind } from './kinds.ts';

export interface ReflectorOptions {
  /** A field selector for list and watch (e.g. `spec.nodeName=node1` for a node's own pods). */
  fieldSelector?: string;
  backoff?: BackoffOptions;
  /** Objects per list page (default 500). */
  pageSize?: number;
  /** Retry interval of a CRD kind whose CRD is absent (default 30 s). */
  optionalRetryMs?: number;
  /** Server-side watch timeout: a random value in [t, 2t) seconds per watch (default 300, as client-go). */
  watchTimeoutSeconds?: number;
  /** A watch that receives nothing (not even a bookmark) for this long is dead (default: the watch timeout + 30 s). */
  watchIdleMs?: number;
  /** A watch that lasted this long resets the backoff (default 10 s). */
  stableAfterMs?: number;
  clock?: Clock;
  random?: () => number;
  onProblem?: (key: string, err: Error) => void;
  onError?: (err: Error) => void;
}

export interface ReflectorStatus {
  synced: boolean;
  /** A watch is open on top of a complete list. */
  watching: boolean;
  /** For a CRD kind: the CRD was absent at the last list. */
  absent: boolean;
  lists: number;
  watches: number;
  /** 410 Gone answers (each one re-lists). */
  expired: number;
  resourceVersion: string | undefined;
  lastError: { message: string; at: number } | undefined;
  /** Objects whose latest version failed to parse (the cache keeps their last good one): key → error. */
  problems: Map<string, string>;
  /** Objects the mesh does not carry (an IPv6 EndpointSlice, an ExternalName Service): key → why. */
  skipped: Map<string, string>;
}

/** Thrown inside the loop: a 410 from a watch (the loop re-lists without backoff). */
class Expired extends Error {}

export class Reflector {
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly abort = new AbortController();
  private loop: Promise<void> | undefined;
  readonly status: ReflectorStatus = {
    synced: false,
    watching: false,
    absent: false,
    lists: 0,
    watches: 0,
    expired: 0,
    resourceVersion: undefined,
    lastError: undefined,
    problems: new Map(),
    skipped: new Map(),
  };

  constructor(
    readonly kind: KubeKind,
    private readonly http: KubeHttp,
    private readonly cache: ResourceCache<ClusterObject>,
    private readonly opts: ReflectorOptions = {},
  ) {
    this.clock = opts.clock ?? systemClock;
    this.random = opts.random ?? Math.random;
  }

  start(): void {
    this.loop ??= this.run().catch((err: unknown) => this.fail(err));
  }

  async stop(): Promise<void> {
    this.abort.abort(new Error('stopped'));
    await this.loop;
  }

  private get stopped(): boolean {
    return this.abort.signal.aborted;
  }

  private fail(err: unknown): void {
    if (this.stopped) return;
    const e = err instanceof Error ? err : new Error(String(err));
    this.status.lastError = { message: e.message, at: this.clock.now() };
    this.opts.onError?.(e);
  }

  private async run(): Promise<void> {
    let attempt = 0;
    let quickExpired = 0;
    const api = KUBE_KINDS[this.kind];
    const stableAfter = this.opts.stableAfterMs ?? 10_000;
    while (!this.stopped) {
      let wait = 0;
      let listedAt: number | undefined;
      try {
        let rv = await this.relist();
        listedAt = this.clock.now();
        for (;;) {
          const began = this.clock.now();
          rv = await this.watchFrom(rv);
          if (this.stopped) return;
          // Ended by the server. A watch that lasted is re-opened; one that ends at once is a failure.
          if (this.clock.now() - began < 1000) throw new Error(`watch ${kindPath(api)} ended at once`);
          if (this.clock.now() - listedAt >= stableAfter) attempt = 0;
        }
      } catch (err) {
        this.status.watching = false;
        if (this.stopped) return;
        // A list and watch that stayed up a while start the backoff over.
        const upFor = listedAt === undefined ? 0 : this.clock.now() - listedAt;
        if (upFor >= stableAfter) attempt = 0;
        if (err instanceof Expired || (err instanceof KubeApiError && err.code === 410)) {
          // Re-list at once; 410s that keep coming right after a fresh list back off (no tight loop).
          this.status.expired++;
          quickExpired = upFor < 1000 ? quickExpired + 1 : 0;
          if (quickExpired > 1) wait = backoffDelay(attempt++, this.opts.backoff, this.random);
        } else if (api.optional && err instanceof KubeApiError && err.code === 404) {
          // The CRD is absent: the kind has no objects until it appears.
          if (!this.status.absent) this.fail(new Error(`${this.kind}: not served (no CRD ${api.plural}.${api.group}); retrying every ${this.opts.optionalRetryMs ?? 30_000} ms`));
          this.status.absent = true;
          this.prune(new Set());
          wait = this.opts.optionalRetryMs ?? 30_000;
          attempt = 0;
        } else {
          this.fail(err);
          wait = backoffDelay(attempt++, this.opts.backoff, this.random);
        }
      }
      await sleep(this.clock, wait, this.abort.signal);
    }
  }

  private selector(): Record<string, string> {
    return this.opts.fieldSelector ? { fieldSelector: this.opts.fieldSelector } : {};
  }

  /**
   * Lists every page, caching each page's objects as it arrives (only one
   * page of raw objects is held at a time); once the last page is in, prunes
   * what the list lacked and marks the kind synced. Returns the list's
   * resourceVersion. A list that fails part-way prunes nothing.
   */
  private async relist(): Promise<string> {
    const path = kindPath(KUBE_KINDS[this.kind]);
    const listed = new Set<string>();
    let cont: string | undefined;
    let rv = '';
    do {
      const page = await this.http.list(path, { ...this.selector(), limit: String(this.opts.pageSize ?? 500), ...(cont ? { continue: cont } : {}) }, this.abort.signal);
      if (this.stopped) throw new Error('stopped');
      for (const raw of page.items) {
        const key = this.apply(raw);
        if (key !== undefined) listed.add(key);
      }
      // Every page carries the first page's resourceVersion; the last one is the list's.
      rv = page.resourceVersion;
      cont = page.continue;
    } while (cont !== undefined);
    this.status.lists++;
    this.status.absent = false;
    this.prune(listed);
    this.status.resourceVersion = rv;
    return rv;
  }

  /** After a complete list: deletes what the list lacked; the kind is synced. */
  private prune(listed: ReadonlySet<string>): void {
    for (const key of this.cache.keys()) if (!listed.has(key)) this.remove(key);
    for (const key of [...this.status.problems.keys()]) if (!listed.has(key)) this.status.problems.delete(key);
    for (const key of [...this.status.skipped.keys()]) if (!listed.has(key)) this.status.skipped.delete(key);
    this.cache.markSynced();
    this.status.synced = true;
  }

  private remove(key: string): void {
    const slash = key.indexOf('/');
    this.cache.remove(slash >= 0 ? { namespace: key.slice(0, slash), name: key.slice(slash + 1) } : { name: key });
    this.status.problems.delete(key);
    this.status.skipped.delete(key);
  }

  /**
   * Converts and caches one object; returns its key when it is (or stays) in
   * the cache or is skipped. An object that fails its schema is reported and
   * its last good version stays; an object the mesh does not carry is removed
   * and listed with the reason in status.skipped.
   */
  private apply(raw: unknown): string | undefined {
    const ref = rawRef(this.kind, raw);
    if (ref === undefined) {
      this.problem('(unnamed)', new Error(`${this.kind} without metadata.name${KUBE_KINDS[this.kind].namespaced ? ' or metadata.namespace' : ''}`));
      return undefined;
    }
    const key = refKey(ref);
    let converted;
    try {
      converted = fromKubernetes(this.kind, raw);
    } catch (err) {
      this.status.problems.set(key, (err as Error).message);
      this.problem(key, err as Error);
      return key;
    }
    this.status.problems.delete(key);
    if ('skip' in converted) {
      this.cache.remove(ref);
      this.status.skipped.set(key, converted.skip);
      return key;
    }
    this.status.skipped.delete(key);
    this.cache.set(converted.object);
    return key;
  }

  private problem(key: string, err: Error): void {
    this.opts.onProblem?.(key, err);
  }

  /** One watch from `rv`; returns the last resourceVersion seen when the server ends it. */
  private async watchFrom(rv: string): Promise<string> {
    const api = KUBE_KINDS[this.kind];
    const timeoutS = Math.floor((this.opts.watchTimeoutSeconds ?? 300) * (1 + this.random()));
    const idleMs = this.opts.watchIdleMs ?? timeoutS * 1000 + 30_000;
    let last = rv;
    this.status.watches++;
    this.status.watching = true;
    try {
      await this.http.watch(
        kindPath(api),
        { ...this.selector(), resourceVersion: rv, allowWatchBookmarks: 'true', timeoutSeconds: String(timeoutS) },
        this.abort.signal,
        idleMs,
        (ev: RawWatchEvent) => {
          if (ev.type === 'ERROR') {
            const s = ev.object as { code?: number; reason?: string; message?: string };
            if (s.code === 410 || s.reason === 'Expired' || s.reason === 'Gone') throw new Expired(s.message ?? 'resource version expired');
            throw new KubeApiError(s.code ?? 0, s.reason ?? '', `watch ${kindPath(api)}: ${s.code ?? ''} ${s.reason ?? ''}: ${s.message ?? ''}`);
          }
          const objRv = (ev.object?.metadata as { resourceVersion?: unknown } | undefined)?.resourceVersion;
          if (typeof objRv === 'string' && objRv !== '') last = objRv;
          if (ev.type === 'BOOKMARK') return;
          if (ev.type === 'DELETED') {
            const ref = rawRef(this.kind, ev.object);
            if (ref !== undefined) this.remove(refKey(ref));
          } else if (ev.type === 'ADDED' || ev.type === 'MODIFIED') this.apply(ev.object);
          this.status.resourceVersion = last;
        },
      );
    } finally {
      this.status.watching = false;
    }
    return last;
  }
}

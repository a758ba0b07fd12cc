// Identity allocation in the cluster's etcd (ARCHITECTURE §3).
//
// Keys (identity/keys.ts):
//   id/<id>            → label string   (exported; create-only: one owner per number)
//   value/<labels>     → id             (create-only: the same labels get the same number)
//   refs/<id>/<user>   → time           (on the user's session lease: who holds it)
//
// allocate: look the labels up in value/; if absent, claim a free number with a
// create-only id/<id>, then a create-only value/<labels>; the loser of a race
// for the same labels drops its number and takes the winner's. Then write the
// ref and re-read value/<labels>: if it changed meanwhile (a collector removed
// it) the ref is withdrawn and the allocation retried.
//
// gc: an identity with no refs for `gracePeriodMs` is removed: value/ first
// (compare-and-delete), then refs are listed again — a ref that appeared in
// between wins and the mapping is restored — then id/ (compare-and-delete).
// A user that writes its ref after value/ is gone sees the change on re-read
// and retries, so no user is ever left holding a number whose keys are deleted.
import { systemClock, sleep, type Clock } from '../util/clock.ts';
import { CLUSTER_LABEL_KEY, type Label } from '../clustermesh/wire.ts';
import type { KvClient, KvSession } from '../kvstore/client.ts';
import type { KvPair } from '../kvstore/types.ts';
import {
  identityRange,
  validateClusterId,
  validateClusterName,
  type IdentityRange,
  type MaxConnectedClusters,
} from '../model/index.ts';
import {
  idFromRefKey,
  identitiesPrefix,
  identityKey,
  identityRefKey,
  identityRefsOfIdPrefix,
  identityRefsPrefix,
  identityValueKey,
  identityValuePrefix,
} from './keys.ts';
import { labelString, parseLabelString } from './labels.ts';

/** The subset of KvClient the allocator uses. */
export type AllocatorKv = Pick<KvClient, 'get' | 'list' | 'put' | 'delete' | 'createOnly' | 'compareAndDelete' | 'lease'>;

export interface IdentityAllocatorOptions {
  kv: AllocatorKv;
  cluster: string;
  clusterId: number;
  maxConnectedClusters?: MaxConnectedClusters;
  /** Who holds the references this allocator writes (node name, 'apiserver'). */
  user: string;
  /** How long an identity must be unreferenced before gc() deletes it (default 5 minutes). */
  gracePeriodMs?: number;
  clock?: Clock;
  /** Random source for picking candidate numbers (default Math.random). */
  random?: () => number;
  /** Attempts before allocate() gives up on contention (default 50). */
  maxAttempts?: number;
  /** Called with failures of background work (resync after a lost session). */
  onError?: (err: unknown) => void;
}

export interface AllocatedIdentity {
  id: number;
  /** The canonical label string (the value of id/<id>). */
  labels: string;
  /** True when this call created the number. */
  isNew: boolean;
}

export interface GcResult {
  /** Identities deleted by this run. */
  deleted: number[];
  /** Unreferenced identities still within their grace period. */
  pending: number[];
}

export type AllocatorErrorKind = 'invalid-labels' | 'exhausted' | 'contention' | 'closed' | 'not-held';

export class AllocatorError extends Error {
  constructor(
    readonly kind: AllocatorErrorKind,
    message: string,
  ) {
    super(`identity allocator: ${message}`);
    this.name = 'AllocatorError';
  }
}

const DEFAULT_GRACE_MS = 5 * 60_000;
const ID_RE = /^(0|[1-9]\d{0,7})$/;

interface Held {
  id: number;
  labels: string;
  count: number;
}

export class IdentityAllocator {
  readonly user: string;
  readonly range: IdentityRange;
  private readonly kv: AllocatorKv;
  private readonly cluster: string;
  private readonly grace: number;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly maxAttempts: number;
  private readonly onError: (err: unknown) => void;
  private readonly heldByLabels = new Map<string, Held>();
  private readonly heldById = new Map<number, Held>();
  private readonly locks = new Map<string, Promise<void>>();
  /** id (or `value:<key>` for orphaned label keys) → when gc first saw it unreferenced. */
  private readonly unrefSince = new Map<string, number>();
  private watchedSession: KvSession | undefined;
  private closed = false;
  private readonly stop = new AbortController();

  constructor(opts: IdentityAllocatorOptions) {
    const nameProblem = validateClusterName(opts.cluster);
    if (nameProblem) throw new RangeError(`identity allocator: ${nameProblem}`);
    const max = opts.maxConnectedClusters ?? 255;
    const idProblem = validateClusterId(opts.clusterId, max);
    if (idProblem) throw new RangeError(`identity allocator: ${idProblem}`);
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(opts.user)) throw new RangeError(`identity allocator: bad user name ${JSON.stringify(opts.user)}`);
    this.kv = opts.kv;
    this.cluster = opts.cluster;
    this.user = opts.user;
    this.range = identityRange(opts.clusterId, max);
    this.grace = opts.gracePeriodMs ?? DEFAULT_GRACE_MS;
    this.clock = opts.clock ?? systemClock;
    this.random = opts.random ?? Math.random;
    this.maxAttempts = opts.maxAttempts ?? 50;
    this.onError = opts.onError ?? (() => undefined);
  }

  /** Identities this allocator holds references to: id → label string. */
  held(): Map<number, string> {
    return new Map([...this.heldById].filter(([, h]) => h.count > 0).map(([id, h]) => [id, h.labels]));
  }

  /**
   * The number for `labels`, taking one reference for this user. Labels must
   * carry exactly one `k8s:io.cilium.k8s.policy.cluster` label naming this cluster.
   */
  async allocate(labels: Iterable<Label> | string): Promise<AllocatedIdentity> {
    const str = this.canonical(labels);
    return await this.locked(str, async () => {
      this.checkOpen();
      const local = this.heldByLabels.get(str);
      if (local) {
        local.count++;
        return { id: local.id, labels: str, isNew: false };
      }
      const { id, isNew } = await this.acquire(str);
      const h: Held = { id, labels: str, count: 1 };
      this.heldByLabels.set(str, h);
      this.heldById.set(id, h);
      return { id, labels: str, isNew };
    });
  }

  /**
   * Drops one reference. When this user holds none any more its ref key is
   * deleted; the identity itself goes after the grace period (gc()). Returns
   * true when that was the user's last reference.
   */
  async release(id: number): Promise<boolean> {
    const h = this.heldById.get(id);
    if (!h) throw new AllocatorError('not-held', `identity ${id} is not held by ${this.user}`);
    return await this.locked(h.labels, async () => {
      const cur = this.heldById.get(id);
      if (!cur) throw new AllocatorError('not-held', `identity ${id} is not held by ${this.user}`);
      cur.count--;
      if (cur.count > 0) return false;
      try {
        await this.dropRef(cur);
      } catch (err) {
        // Dropped for the caller; the ref key is deleted in the background.
        this.onError(err);
        void this.retryDropRef(cur);
      }
      return true;
    });
  }

  private async dropRef(h: Held): Promise<void> {
    await this.kv.delete(identityRefKey(h.id, this.user));
    this.heldById.delete(h.id);
    this.heldByLabels.delete(h.labels);
  }

  private async retryDropRef(h: Held): Promise<void> {
    let backoff = 200;
    for (;;) {
      if (!(await sleep(this.clock, backoff, this.stop.signal))) return;
      backoff = Math.min(backoff * 2, 10_000);
      try {
        const done = await this.locked(h.labels, async () => {
          // Allocated again meanwhile: the ref stays.
          if (this.heldById.get(h.id) !== h || h.count > 0) return true;
          await this.dropRef(h);
          return true;
        });
        if (done) return;
      } catch (err) {
        this.onError(err);
      }
    }
  }

  /** The label string of `id` as stored, or undefined. */
  async lookup(id: number): Promise<string | undefined> {
    return (await this.kv.get(identityKey(id)))?.value;
  }

  /** The number the labels have now, without taking a reference. */
  async lookupByLabels(labels: Iterable<Label> | string): Promise<number | undefined> {
    const pair = await this.kv.get(identityValueKey(this.canonical(labels)));
    const id = pair ? this.parseId(pair.value) : undefined;
    return id;
  }

  /**
   * Deletes identities of this cluster's range that have had no reference for
   * the grace period (and label keys whose identity is gone). Safe to run from
   * several users at once.
   */
  async gc(): Promise<GcResult> {
    this.checkOpen();
    const now = this.clock.now();
    const [masters, values, refs] = await Promise.all([
      this.kv.list(identitiesPrefix),
      this.kv.list(identityValuePrefix),
      this.kv.list(identityRefsPrefix),
    ]);
    const referenced = new Set<number>();
    for (const p of refs.pairs) {
      const id = idFromRefKey(p.key);
      if (id !== undefined) referenced.add(id);
    }
    for (const id of this.heldById.keys()) referenced.add(id);
    const seen = new Set<string>();
    const result: GcResult = { deleted: [], pending: [] };
    const masterIds = new Set<number>();

    for (const m of masters.pairs) {
      const id = this.parseId(m.key.slice(identitiesPrefix.length));
      if (id === undefined) continue;
      masterIds.add(id);
      if (referenced.has(id)) continue;
      const tag = String(id);
      seen.add(tag);
      const since = this.unrefSince.get(tag) ?? now;
      this.unrefSince.set(tag, since);
      if (now - since < this.grace) {
        result.pending.push(id);
        continue;
      }
      if (await this.collect(id, m)) {
        result.deleted.push(id);
        this.unrefSince.delete(tag);
      }
    }
    // Label keys whose number has no identity key and no reference (left by a crash).
    for (const v of values.pairs) {
      const id = this.parseId(v.value);
      if (id !== undefined && (masterIds.has(id) || referenced.has(id))) continue;
      if (id !== undefined && (id < this.range.first || id > this.range.last)) continue;
      const tag = `value:${v.key}`;
      seen.add(tag);
      const since = this.unrefSince.get(tag) ?? now;
      this.unrefSince.set(tag, since);
      if (now - since >= this.grace && (await this.kv.compareAndDelete(v.key, v.modRevision))) this.unrefSince.delete(tag);
    }
    for (const tag of [...this.unrefSince.keys()]) if (!seen.has(tag)) this.unrefSince.delete(tag);
    return result;
  }

  /**
   * Rewrites what this user relies on: its refs (on the current session lease)
   * and, when missing, the identity and label keys of what it holds. Runs by
   * itself after the session lease was lost.
   */
  async resync(): Promise<void> {
    for (const h of [...this.heldById.values()]) {
      await this.locked(h.labels, async () => {
        if (this.heldById.get(h.id) !== h || h.count === 0) return;
        const master = await this.kv.get(identityKey(h.id));
        if (!master) await this.kv.createOnly(identityKey(h.id), h.labels);
        else if (master.value !== h.labels)
          throw new AllocatorError('contention', `identity ${h.id} now holds other labels; ${this.user} keeps using it until released`);
        await this.kv.createOnly(identityValueKey(h.labels), String(h.id));
        await this.putRef(h.id);
      });
    }
  }

  /** Stops background work. With `release`, deletes this user's refs now (identities then age out by gc). */
  async close(opts: { release?: boolean } = {}): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.stop.abort();
    if (opts.release) {
      await Promise.all([...this.heldById.keys()].map((id) => this.kv.delete(identityRefKey(id, this.user))));
    }
    this.heldById.clear();
    this.heldByLabels.clear();
  }

  // ---- internals

  private canonical(labels: Iterable<Label> | string): string {
    let list: Label[];
    try {
      list = typeof labels === 'string' ? parseLabelString(labels) : [...labels];
      const str = labelString(list);
      const cl = list.filter((l) => l.key === CLUSTER_LABEL_KEY);
      if (cl.length !== 1 || cl[0]?.source !== 'k8s' || cl[0].value !== this.cluster)
        throw new Error(`needs exactly one k8s:${CLUSTER_LABEL_KEY}=${this.cluster} label`);
      return str;
    } catch (err) {
      throw new AllocatorError('invalid-labels', (err as Error).message);
    }
  }

  private parseId(s: string): number | undefined {
    if (!ID_RE.test(s)) return undefined;
    const n = Number(s);
    return n >= this.range.first && n <= this.range.last ? n : undefined;
  }

  private checkOpen(): void {
    if (this.closed) throw new AllocatorError('closed', 'allocator is closed');
  }

  /** Runs fn with the per-label lock held (allocate/release of one label set never interleave). */
  private async locked<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(key) ?? Promise.resolve();
    let done!: () => void;
    const mine = new Promise<void>((r) => (done = r));
    const chained = prev.then(() => mine);
    this.locks.set(key, chained);
    await prev;
    try {
      return await fn();
    } finally {
      done();
      if (this.locks.get(key) === chained) this.locks.delete(key);
    }
  }

  private async acquire(str: string): Promise<{ id: number; isNew: boolean }> {
    const valueKey = identityValueKey(str);
    for (let attempt = 0; attempt < this.maxAttempts; attempt++) {
      this.checkOpen();
      const existing = await this.kv.get(valueKey);
      if (existing) {
        const id = this.parseId(existing.value);
        const ok = id !== undefined && (await this.ensureMaster(id, str));
        if (!ok) {
          // A label key for a number outside our range (cluster ID changed) or whose
          // number now holds other labels: replace it.
          await this.kv.compareAndDelete(valueKey, existing.modRevision);
          continue;
        }
        if (await this.refAndVerify(id, valueKey, existing.modRevision)) return { id, isNew: false };
        continue;
      }
      const id = await this.claimFreeNumber(str);
      if (await this.kv.createOnly(valueKey, String(id))) {
        const created = await this.kv.get(valueKey);
        if (created && created.value === String(id) && (await this.refAndVerify(id, valueKey, created.modRevision)))
          return { id, isNew: true };
        continue;
      }
      // Another user allocated these labels at the same time: give our number back.
      const mine = await this.kv.get(identityKey(id));
      if (mine && mine.value === str) await this.kv.compareAndDelete(identityKey(id), mine.modRevision);
    }
    throw new AllocatorError('contention', `no stable number for ${str} after ${this.maxAttempts} attempts`);
  }

  /** True when id/<id> holds `str` (created when missing). */
  private async ensureMaster(id: number, str: string): Promise<boolean> {
    const master = await this.kv.get(identityKey(id));
    if (master) return master.value === str;
    if (await this.kv.createOnly(identityKey(id), str)) return true;
    return (await this.kv.get(identityKey(id)))?.value === str;
  }

  /** Writes our ref, then checks the label key was not replaced meanwhile; withdraws the ref if it was. */
  private async refAndVerify(id: number, valueKey: string, modRevision: string): Promise<boolean> {
    await this.putRef(id);
    const again = await this.kv.get(valueKey);
    if (again && again.modRevision === modRevision) return true;
    if (!this.heldById.has(id)) await this.kv.delete(identityRefKey(id, this.user));
    return false;
  }

  private async putRef(id: number): Promise<void> {
    await this.kv.put(identityRefKey(id, this.user), new Date(this.clock.now()).toISOString(), { lease: true });
    await this.watchSession();
  }

  /** Claims a free number with a create-only id/<id>; random start so parallel allocators rarely collide. */
  private async claimFreeNumber(str: string): Promise<number> {
    const size = this.range.last - this.range.first + 1;
    for (let attempt = 0; attempt < this.maxAttempts; attempt++) {
      const used = new Set<number>();
      for (const p of (await this.kv.list(identitiesPrefix)).pairs) {
        const id = this.parseId(p.key.slice(identitiesPrefix.length));
        if (id !== undefined) used.add(id);
      }
      if (used.size >= size) throw new AllocatorError('exhausted', `all ${size} identities of ${this.range.first}..${this.range.last} are in use`);
      const start = Math.floor(this.random() * size);
      let candidate: number | undefined;
      for (let i = 0; i < size; i++) {
        const id = this.range.first + ((start + i) % size);
        if (!used.has(id)) {
          candidate = id;
          break;
        }
      }
      if (candidate === undefined) continue;
      if (await this.kv.createOnly(identityKey(candidate), str)) return candidate;
    }
    throw new AllocatorError('contention', `could not claim a free identity after ${this.maxAttempts} attempts`);
  }

  /** Deletes one unreferenced identity; false when a user appeared and it stays. */
  private async collect(id: number, master: KvPair): Promise<boolean> {
    const valueKey = identityValueKey(master.value);
    const value = await this.kv.get(valueKey);
    const mapped = value !== undefined && value.value === String(id);
    if (mapped && !(await this.kv.compareAndDelete(valueKey, value.modRevision))) return false;
    const refs = await this.kv.list(identityRefsOfIdPrefix(id));
    if (refs.pairs.length > 0) {
      // A user took a reference before the label key went away: it keeps the number.
      if (mapped) await this.kv.createOnly(valueKey, String(id));
      this.unrefSince.delete(String(id));
      return false;
    }
    return await this.kv.compareAndDelete(identityKey(id), master.modRevision);
  }

  /** After the session lease is lost our refs are gone: write them again on the next one. */
  private async watchSession(): Promise<void> {
    const s = await this.kv.lease();
    if (s === this.watchedSession) return;
    this.watchedSession = s;
    s.once('lost', () => {
      void (async () => {
        let backoff = 200;
        while (!this.closed) {
          try {
            await this.resync();
            return;
          } catch (err) {
            this.onError(err);
            if (!(await sleep(this.clock, backoff, this.stop.signal))) return;
            backoff = Math.min(backoff * 2, 10_000);
          }
        }
      })();
    });
  }
}

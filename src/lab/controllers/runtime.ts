// What the lab's controllers share: a keyed work queue, informers that start
// again after an error, label selectors, and small helpers.
//
// The controllers are level-triggered: an informer event only names the key
// (namespace/name) to look at again; a reconcile reads what it needs fresh
// from the API server (a consistent read of etcd) and writes the difference.
// Reading fresh instead of from the informers' caches means a reconcile never
// acts on a cache that has not yet seen its own last writes (no "expectations"
// bookkeeping, as kube-controller-manager needs). What it costs at lab scale
// is bounded by WorkQueue's minIntervalMs (the controllers: 500 ms): a
// Deployment of 100 starting pods is not listed again on each pod event.
import { createHash, randomInt } from 'node:crypto';
import { ApiException, makeInformer, type CoreV1Api, type KubeConfig, type V1Pod, type KubernetesListObject, type KubernetesObject, type V1LabelSelector } from '@kubernetes/client-node';

export const log = (msg: string, extra: Record<string, unknown> = {}): void => {
  process.stdout.write(JSON.stringify({ time: new Date().toISOString(), msg, ...extra }) + '\n');
};

/** The HTTP status of a failed API call (undefined: not an API answer). */
export function apiCode(err: unknown): number | undefined {
  return err instanceof ApiException ? err.code : undefined;
}

/** The message of a failed API call: the Status message when there is one. */
export function apiMessage(err: unknown): string {
  if (err instanceof ApiException) {
    const body = err.body as unknown;
    const parsed = typeof body === 'string' ? (() => { try { return JSON.parse(body) as { message?: string }; } catch { return undefined; } })() : (body as { message?: string } | undefined);
    return `${err.code}: ${parsed?.message ?? String(body).slice(0, 200)}`;
  }
  return (err as Error).message;
}

export const keyOf = (namespace: string | undefined, name: string | undefined): string => `${namespace ?? ''}/${name ?? ''}`;

export function splitKey(key: string): { namespace: string; name: string } {
  const i = key.indexOf('/');
  return { namespace: key.slice(0, i), name: key.slice(i + 1) };
}

/**
 * A queue of keys with one worker: a key queued while it is being reconciled
 * runs again afterwards (never twice at once); a failed reconcile is retried
 * with backoff (250 ms doubling to 10 s); `resync` queues every key again.
 * With `minIntervalMs`, a key runs at most once per that interval: what is
 * added meanwhile waits and runs once (a Deployment of 100 starting pods gets
 * hundreds of pod events, each of which would list all its pods again).
 */
export class WorkQueue {
  private readonly pending = new Set<string>();
  private readonly failures = new Map<string, number>();
  private readonly timers = new Set<NodeJS.Timeout>();
  /** key → when its last reconcile began (minIntervalMs only). */
  private readonly lastStart = new Map<string, number>();
  /** Keys waiting out minIntervalMs (a timer adds each once). */
  private readonly delayed = new Set<string>();
  private running = false;
  private stopped = false;
  private idleWaiters: Array<() => void> = [];

  constructor(
    private readonly name: string,
    private readonly reconcile: (key: string) => Promise<void>,
    private readonly minIntervalMs = 0,
  ) {}

  add(key: string): void {
    if (this.stopped || this.delayed.has(key)) return;
    const wait = this.minIntervalMs > 0 ? (this.lastStart.get(key) ?? -Infinity) + this.minIntervalMs - Date.now() : 0;
    if (wait > 0) {
      this.delayed.add(key);
      const t = setTimeout(() => {
        this.timers.delete(t);
        this.delayed.delete(key);
        this.add(key);
      }, wait);
      this.timers.add(t);
      return;
    }
    this.pending.add(key);
    if (!this.running) void this.drain();
  }

  private async drain(): Promise<void> {
    this.running = true;
    while (!this.stopped && this.pending.size > 0) {
      const key = this.pending.values().next().value as string;
      this.pending.delete(key);
      if (this.minIntervalMs > 0) {
        const now = Date.now();
        if (this.lastStart.size > 1000) for (const [k, at] of this.lastStart) if (now - at >= this.minIntervalMs) this.lastStart.delete(k);
        this.lastStart.set(key, now);
      }
      try {
        await this.reconcile(key);
        this.failures.delete(key);
      } catch (err) {
        const n = (this.failures.get(key) ?? 0) + 1;
        this.failures.set(key, n);
        const delay = Math.min(10_000, 250 * 2 ** Math.min(n - 1, 6));
        log(`${this.name}: reconcile failed; retrying`, { key, attempt: n, inMs: delay, error: apiMessage(err) });
        const t = setTimeout(() => {
          this.timers.delete(t);
          this.add(key);
        }, delay);
        this.timers.add(t);
      }
    }
    this.running = false;
    for (const w of this.idleWaiters.splice(0)) w();
  }

  stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    return this.running ? new Promise((r) => this.idleWaiters.push(r)) : Promise.resolve();
  }
}

/**
 * An informer of `path` that calls `onEvent` for every add, update and delete,
 * and starts again (list, then watch) with backoff after an error: the
 * client's informer stops on any error but 410 Gone.
 */
export function watchKind<T extends KubernetesObject>(
  kc: KubeConfig,
  path: string,
  list: () => Promise<KubernetesListObject<T>>,
  onEvent: (obj: T, deleted: boolean) => void,
): { start: () => Promise<void>; stop: () => Promise<void> } {
  const informer = makeInformer<T>(kc, path, list);
  let stopped = false;
  let failures = 0;
  let timer: NodeJS.Timeout | undefined;
  informer.on('add', (o) => onEvent(o, false));
  informer.on('update', (o) => onEvent(o, false));
  informer.on('delete', (o) => onEvent(o, true));
  informer.on('connect', () => {
    failures = 0;
  });
  informer.on('error', (err: unknown) => {
    if (stopped) return;
    failures++;
    const delay = Math.min(10_000, 250 * 2 ** Math.min(failures - 1, 6));
    log('informer stopped; starting it again', { path, inMs: delay, error: apiMessage(err) });
    timer = setTimeout(() => {
      timer = undefined;
      if (!stopped) informer.start().catch(() => undefined);
    }, delay);
  });
  return {
    start: () => informer.start(),
    stop: async () => {
      stopped = true;
      if (timer) clearTimeout(timer);
      await informer.stop();
    },
  };
}

/** The pods of `namespace` matching `selector` whose controller is the object with `uid`. */
export async function ownedPods(core: CoreV1Api, namespace: string, selector: string, uid: string): Promise<V1Pod[]> {
  return (await core.listNamespacedPod({ namespace, labelSelector: selector })).items.filter((p) => p.metadata?.ownerReferences?.some((r) => r.controller === true && r.uid === uid));
}

/** A LabelSelector as the `labelSelector` query parameter (undefined: selects nothing). */
export function selectorString(sel: V1LabelSelector | undefined): string | undefined {
  if (sel === undefined) return undefined;
  const parts = Object.entries(sel.matchLabels ?? {}).map(([k, v]) => `${k}=${v}`);
  for (const e of sel.matchExpressions ?? []) {
    const values = (e.values ?? []).join(',');
    if (e.operator === 'In') parts.push(`${e.key} in (${values})`);
    else if (e.operator === 'NotIn') parts.push(`${e.key} notin (${values})`);
    else if (e.operator === 'Exists') parts.push(e.key);
    else if (e.operator === 'DoesNotExist') parts.push(`!${e.key}`);
    else throw new Error(`label selector: unknown operator '${e.operator}' for key ${e.key}`);
  }
  return parts.length ? parts.join(',') : undefined;
}

/** JSON with object keys sorted (a stable text to hash or compare). */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    return `{${Object.keys(v as object)
      .filter((k) => (v as Record<string, unknown>)[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

/** The characters Kubernetes uses in generated name suffixes (no vowels, no look-alikes). */
const SAFE = 'bcdfghjklmnpqrstvwxz2456789';

/** `n` characters of SAFE from a hash of `text` (stable). */
export function safeHash(text: string, n = 10): string {
  const digest = createHash('sha256').update(text).digest();
  let out = '';
  for (let i = 0; i < n; i++) out += SAFE[digest[i]! % SAFE.length];
  return out;
}

/** `n` random characters of SAFE. */
export function randomSuffix(n = 5): string {
  let out = '';
  for (let i = 0; i < n; i++) out += SAFE[randomInt(SAFE.length)];
  return out;
}

// Objects in etcd, through the mesh's KvClient.
//
// Key:   <prefix><group or "core">/<plural>/<namespace>/<name>   (namespaced)
//        <prefix><group or "core">/<plural>/<name>               (cluster-scoped)
// Value: {"op":"create"|"update","object":{…}} — the object without its
//        resourceVersion, which is the key's etcd mod revision when read. `op`
//        tells a watcher whether a put created the key (ADDED) or changed it
//        (MODIFIED): the KvClient watch carries no create revision.
//
// Every write of this server goes through a per-key lock (get, check, put), so
// a write returns the exact revision it made; the server is the only writer of
// its prefix. A DELETED watch event carries the object's last state: from what
// the watcher saw before, or from the server's record of what it deleted.

import { KvError, type KvClient, type WatchHandle } from '../../kvstore/index.ts';
import { ApiError } from './errors.ts';
import { isObject, meta, type JsonObject } from './json.ts';
import type { ResourceType } from './resources.ts';

export interface StoredObject {
  key: string;
  object: JsonObject;
  /** etcd mod revision, the object's resourceVersion. */
  revision: string;
}

export type StoreEvent =
  | { type: 'ADDED' | 'MODIFIED'; key: string; object: JsonObject; revision: string }
  | { type: 'DELETED'; key: string; object: JsonObject | undefined; revision: string };

interface Envelope {
  op: 'create' | 'update';
  object: JsonObject;
}

const TOMBSTONES_PER_KEY = 4;
const TOMBSTONE_KEYS = 20_000;

export class ObjectStore {
  private readonly locks = new Map<string, Promise<unknown>>();
  /** Last states of deleted objects by key: (revision it had, object). */
  private readonly tombstones = new Map<string, { revision: bigint; object: JsonObject }[]>();

  constructor(
    readonly kv: KvClient,
    /** Ends with '/'. */
    readonly prefix: string,
  ) {
    if (!prefix.endsWith('/')) throw new Error(`kube-api: key prefix must end with '/': ${JSON.stringify(prefix)}`);
  }

  resourcePrefix(r: Pick<ResourceType, 'group' | 'plural'>): string {
    return `${this.prefix}${r.group === '' ? 'core' : r.group}/${r.plural}/`;
  }

  /** Prefix of a list: all namespaces, or one. */
  listPrefix(r: ResourceType, namespace: string | undefined): string {
    return r.namespaced && namespace !== undefined ? `${this.resourcePrefix(r)}${namespace}/` : this.resourcePrefix(r);
  }

  key(r: ResourceType, namespace: string | undefined, name: string): string {
    return r.namespaced ? `${this.resourcePrefix(r)}${namespace ?? ''}/${name}` : `${this.resourcePrefix(r)}${name}`;
  }

  /** Runs `fn` with the key locked against other writers of this server. */
  async locked<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(key) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const tail = run.catch(() => undefined);
    this.locks.set(key, tail);
    try {
      return await run;
    } finally {
      if (this.locks.get(key) === tail) this.locks.delete(key);
    }
  }

  private decode(key: string, value: string, revision: string): { envelope: Envelope; object: JsonObject } {
    let env: unknown;
    try {
      env = JSON.parse(value);
    } catch (err) {
      throw new ApiError('InternalError', `stored object ${key} is not JSON: ${(err as Error).message}`);
    }
    if (!isObject(env) || !isObject(env.object)) throw new ApiError('InternalError', `stored object ${key} has no object`);
    const object = env.object;
    meta(object).resourceVersion = revision;
    return { envelope: env as unknown as Envelope, object };
  }

  async get(key: string): Promise<StoredObject | undefined> {
    const pair = await this.kv.get(key);
    if (pair === undefined) return undefined;
    return { key, object: this.decode(key, pair.value, pair.modRevision).object, revision: pair.modRevision };
  }

  async list(prefix: string): Promise<{ items: StoredObject[]; revision: string }> {
    const res = await this.kv.list(prefix);
    return {
      revision: res.revision,
      items: res.pairs.map((p) => ({ key: p.key, object: this.decode(p.key, p.value, p.modRevision).object, revision: p.modRevision })),
    };
  }

  /** Writes `object` (its resourceVersion is not stored); returns it with the new one. Call under `locked`. */
  async put(key: string, object: JsonObject, op: 'create' | 'update'): Promise<StoredObject> {
    const copy = structuredClone(object);
    delete meta(copy).resourceVersion;
    const revision = await this.kv.put(key, JSON.stringify({ op, object: copy } satisfies Envelope));
    meta(copy).resourceVersion = revision;
    return { key, object: copy, revision };
  }

  /** Deletes the key holding `current`. Call under `locked`. */
  async remove(current: StoredObject): Promise<void> {
    let list = this.tombstones.get(current.key);
    if (list === undefined) {
      if (this.tombstones.size >= TOMBSTONE_KEYS) this.tombstones.delete(this.tombstones.keys().next().value!);
      list = [];
      this.tombstones.set(current.key, list);
    }
    list.push({ revision: BigInt(current.revision), object: structuredClone(current.object) });
    if (list.length > TOMBSTONES_PER_KEY) list.shift();
    await this.kv.delete(current.key);
  }

  /** The last state this server deleted of `key` before `deleteRevision`. */
  private tombstone(key: string, deleteRevision: string): JsonObject | undefined {
    const rev = BigInt(deleteRevision);
    let best: { revision: bigint; object: JsonObject } | undefined;
    for (const t of this.tombstones.get(key) ?? []) if (t.revision < rev && (best === undefined || t.revision > best.revision)) best = t;
    return best === undefined ? undefined : structuredClone(best.object);
  }

  /**
   * Watches `prefix` from `fromRevision` (inclusive). `known` holds the objects
   * the watcher knows (key → last state), for DELETED events; the watch keeps
   * it up to date. `onError` is called once when the watch ends on a failure
   * (kind 'compacted': the revision is gone).
   */
  watch(prefix: string, fromRevision: string, known: Map<string, JsonObject>, onEvent: (ev: StoreEvent) => void, onError: (err: KvError) => void): WatchHandle {
    return this.kv.watch(
      prefix,
      fromRevision,
      (ev) => {
        try {
          if (ev.kind === 'delete') {
            const last = known.get(ev.key) ?? this.tombstone(ev.key, ev.modRevision);
            known.delete(ev.key);
            if (last !== undefined) meta(last).resourceVersion = ev.modRevision;
            onEvent({ type: 'DELETED', key: ev.key, object: last, revision: ev.modRevision });
            return;
          }
          const { envelope, object } = this.decode(ev.key, ev.value, ev.modRevision);
          known.set(ev.key, object);
          onEvent({ type: envelope.op === 'create' ? 'ADDED' : 'MODIFIED', key: ev.key, object, revision: ev.modRevision });
        } catch (err) {
          onError(new KvError('other', 'watch', (err as Error).message, err));
        }
      },
      onError,
    );
  }
}

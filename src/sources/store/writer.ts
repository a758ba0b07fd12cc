// Fills "the cluster" of the store source: the lab (`lab apply`), agents
// (their Endpoints) and tests write typed, validated objects into the
// cluster's own etcd. Values are the objects as JSON; resourceVersion is the
// key's mod revision and is not stored.
import { randomUUID } from 'node:crypto';
import type { KvClient } from '../../kvstore/client.ts';
import {
  parseAnyObject,
  parseObject,
  type ClusterObject,
  type ObjectKind,
  type ObjectKinds,
} from '../../model/index.ts';
import type { ObjectRef } from '../types.ts';
import { storeKey, storeKindPrefix, storeObjectKey } from './keys.ts';

export type StoreWriterKv = Pick<KvClient, 'get' | 'list' | 'put' | 'delete'>;

/** The JSON a store key holds for `obj`. */
export function encodeStoreObject(obj: ClusterObject): string {
  const { resourceVersion: _rv, ...metadata } = obj.metadata;
  return JSON.stringify({ ...obj, metadata });
}

/** Decodes and validates a stored value; throws ModelError naming the key, object and field. */
export function decodeStoreObject<K extends ObjectKind>(kind: K, key: string, value: string, modRevision?: string): ObjectKinds[K] {
  let raw: unknown;
  try {
    raw = JSON.parse(value);
  } catch (err) {
    throw new Error(`store key ${key}: not JSON: ${(err as Error).message}`);
  }
  const obj = parseObject(kind, raw, `store key ${key}`);
  if (modRevision !== undefined) obj.metadata.resourceVersion = modRevision;
  return obj;
}

export class StoreWriter {
  constructor(private readonly kv: StoreWriterKv) {}

  /**
   * Validates `input` (kind from its `kind` field) and writes it. Keeps the uid
   * of an existing object, assigns one to a new object. `context` (a file name)
   * prefixes validation errors. Returns the object as stored.
   */
  async apply(input: unknown, context?: string): Promise<ClusterObject> {
    const obj = parseAnyObject(input, context);
    const key = storeObjectKey(obj);
    if (!obj.metadata.uid) {
      const existing = await this.kv.get(key);
      let uid: string | undefined;
      if (existing) {
        try {
          uid = (JSON.parse(existing.value) as { metadata?: { uid?: unknown } }).metadata?.uid as string | undefined;
        } catch {
          uid = undefined;
        }
      }
      obj.metadata.uid = typeof uid === 'string' && uid ? uid : randomUUID();
    }
    const rev = await this.kv.put(key, encodeStoreObject(obj));
    obj.metadata.resourceVersion = rev;
    return obj;
  }

  /** apply() for each, in order (namespaces before what lives in them is the caller's order). */
  async applyAll(inputs: readonly unknown[], context?: string): Promise<ClusterObject[]> {
    const out: ClusterObject[] = [];
    for (const [i, input] of inputs.entries()) out.push(await this.apply(input, context ? `${context}[${i}]` : undefined));
    return out;
  }

  /** Deletes one object; true when it existed. */
  async delete(kind: ObjectKind, ref: ObjectRef): Promise<boolean> {
    return await this.kv.delete(storeKey(kind, ref));
  }

  async deleteObject(obj: ClusterObject): Promise<boolean> {
    return await this.kv.delete(storeObjectKey(obj));
  }

  async get<K extends ObjectKind>(kind: K, ref: ObjectRef): Promise<ObjectKinds[K] | undefined> {
    const key = storeKey(kind, ref);
    const pair = await this.kv.get(key);
    return pair ? decodeStoreObject(kind, key, pair.value, pair.modRevision) : undefined;
  }

  /** Every valid object of `kind` (invalid values are skipped). */
  async list<K extends ObjectKind>(kind: K): Promise<ObjectKinds[K][]> {
    const res = await this.kv.list(storeKindPrefix(kind));
    const out: ObjectKinds[K][] = [];
    for (const p of res.pairs) {
      try {
        out.push(decodeStoreObject(kind, p.key, p.value, p.modRevision));
      } catch {
        /* not believed; the source reports it */
      }
    }
    return out;
  }
}

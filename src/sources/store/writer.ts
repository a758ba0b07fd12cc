// Writes the Endpoint objects of the cluster's etcd (mesh state): the agents
// publish one per local pod (src/agent/store-publisher.ts), tests write them
// directly. Values are the objects as JSON; resourceVersion is the key's mod
// revision and is not stored. Only kind Endpoint: the Kubernetes kinds are the
// Kubernetes API's.
import { randomUUID } from 'node:crypto';
import type { KvClient } from '../../kvstore/client.ts';
import { parseObject, type Endpoint } from '../../model/index.ts';
import type { ObjectRef } from '../types.ts';
import { ENDPOINTS_PREFIX, endpointKey, endpointObjectKey } from './keys.ts';

export type EndpointWriterKv = Pick<KvClient, 'get' | 'list' | 'put' | 'delete'>;

/** The JSON an Endpoint key holds for `obj`. */
export function encodeEndpoint(obj: Endpoint): string {
  const { resourceVersion: _rv, ...metadata } = obj.metadata;
  return JSON.stringify({ ...obj, metadata });
}

/** Decodes and validates a stored value; throws ModelError naming the key, object and field. */
export function decodeEndpoint(key: string, value: string, modRevision?: string): Endpoint {
  let raw: unknown;
  try {
    raw = JSON.parse(value);
  } catch (err) {
    throw new Error(`store key ${key}: not JSON: ${(err as Error).message}`);
  }
  const obj = parseObject('Endpoint', raw, `store key ${key}`);
  if (modRevision !== undefined) obj.metadata.resourceVersion = modRevision;
  return obj;
}

export class EndpointWriter {
  constructor(private readonly kv: EndpointWriterKv) {}

  /**
   * Validates `input` as an Endpoint and writes it. Keeps the uid of an
   * existing object, assigns one to a new object. `context` (a file name)
   * prefixes validation errors. Returns the object as stored.
   */
  async apply(input: unknown, context?: string): Promise<Endpoint> {
    const obj = parseObject('Endpoint', input, context);
    const key = endpointObjectKey(obj);
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
    obj.metadata.resourceVersion = await this.kv.put(key, encodeEndpoint(obj));
    return obj;
  }

  /** Deletes one Endpoint object; true when it existed. */
  async delete(ref: ObjectRef): Promise<boolean> {
    return await this.kv.delete(endpointKey(ref));
  }

  async get(ref: ObjectRef): Promise<Endpoint | undefined> {
    const key = endpointKey(ref);
    const pair = await this.kv.get(key);
    return pair ? decodeEndpoint(key, pair.value, pair.modRevision) : undefined;
  }

  /** Every valid Endpoint object (invalid values are skipped). */
  async list(): Promise<Endpoint[]> {
    const res = await this.kv.list(ENDPOINTS_PREFIX);
    const out: Endpoint[] = [];
    for (const p of res.pairs) {
      try {
        out.push(decodeEndpoint(p.key, p.value, p.modRevision));
      } catch {
        /* not believed; the source reports it */
      }
    }
    return out;
  }
}

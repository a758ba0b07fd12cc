// A small client of a cluster's Kubernetes API for the test rig and the
// benches (src/lab/mesh.ts `mesh.kube(c)`): apply an object (created, or
// replaced whole when it exists -- labels left out are gone, as when a file
// is applied with `kubectl replace`), its status too where the kind has a
// status subresource (a test's Pod with its IP and readiness, a Node with its
// address), delete, get and list in the model's types, patch labels.
//
// Objects may be written in the model's shape (src/model): apiVersion is
// filled in from the kind, namespaced kinds default to namespace `default`.
// The server validates (an unknown field, a bad selector) and its message is
// thrown, prefixed with the object (and `context`, e.g. a file name).
import type { ObjectKinds } from '../model/index.ts';
import { KubeApiError, KubeHttp, type KubeHttpConfig } from '../sources/kubernetes/http.ts';
import { KUBE_KINDS, apiVersionOf, fromKubernetes, type KubeKind, type KubeKindApi } from '../sources/kubernetes/index.ts';
import type { ObjectRef } from '../sources/types.ts';

type Json = Record<string, unknown>;

/** The kinds besides the source's that the rig writes (what a test or bench sets up beside the mesh). */
const MORE_KINDS: Record<string, KubeKindApi> = {
  Deployment: { group: 'apps', version: 'v1', plural: 'deployments', namespaced: true, optional: false },
  ConfigMap: { group: '', version: 'v1', plural: 'configmaps', namespaced: true, optional: false },
  CustomResourceDefinition: { group: 'apiextensions.k8s.io', version: 'v1', plural: 'customresourcedefinitions', namespaced: false, optional: false },
};

/** Kinds whose status is written through the status subresource (an update of the object keeps the old status). */
const STATUS_KINDS = new Set(['Pod', 'Node', 'Service', 'Deployment']);

const isObj = (v: unknown): v is Json => v !== null && typeof v === 'object' && !Array.isArray(v);

export class KubeObjects {
  private readonly http: KubeHttp;

  constructor(kubeConfig: KubeHttpConfig) {
    this.http = new KubeHttp(kubeConfig);
  }

  private static api(kind: string): KubeKindApi {
    const api = (KUBE_KINDS as Record<string, KubeKindApi>)[kind] ?? MORE_KINDS[kind];
    if (!api) throw new Error(`kube: kind '${kind}' is not one this client writes (${[...Object.keys(KUBE_KINDS), ...Object.keys(MORE_KINDS)].join(', ')})`);
    return api;
  }

  private static path(api: KubeKindApi, namespace: string | undefined, name?: string, sub?: string): string {
    const base = api.group === '' ? `/api/${api.version}` : `/apis/${api.group}/${api.version}`;
    const ns = api.namespaced && namespace !== undefined ? `/namespaces/${encodeURIComponent(namespace)}` : '';
    return `${base}${ns}/${api.plural}${name !== undefined ? `/${encodeURIComponent(name)}` : ''}${sub ? `/${sub}` : ''}`;
  }

  /**
   * Creates `input`, or replaces the object of that name (whole, at its current
   * resourceVersion). Its `status`, when given, is written too. Returns the
   * server's object.
   */
  async apply(input: unknown, context?: string): Promise<Json> {
    if (!isObj(input) || typeof input.kind !== 'string' || !isObj(input.metadata) || typeof input.metadata.name !== 'string') {
      throw new Error(`kube: ${context ? `${context}: ` : ''}an object needs kind and metadata.name`);
    }
    const o = structuredClone(input) as Json & { kind: string; metadata: Json };
    const api = KubeObjects.api(o.kind);
    o.apiVersion ??= apiVersionOf(api);
    for (const k of ['resourceVersion', 'uid', 'creationTimestamp', 'generation']) delete o.metadata[k];
    if (api.namespaced) o.metadata.namespace ??= 'default';
    const namespace = api.namespaced ? String(o.metadata.namespace) : undefined;
    const name = String(o.metadata.name);
    const what = `${context ? `${context}: ` : ''}${o.kind} ${namespace ? `${namespace}/` : ''}${name}`;
    try {
      let out: Json;
      try {
        out = await this.http.request('POST', KubeObjects.path(api, namespace), o);
      } catch (err) {
        if (!(err instanceof KubeApiError && err.code === 409)) throw err;
        out = await this.update(api, namespace, name, () => o);
      }
      if (o.status !== undefined && STATUS_KINDS.has(o.kind) && JSON.stringify(out.status ?? null) !== JSON.stringify(o.status)) {
        out = await this.update(api, namespace, name, (cur) => ({ ...cur, status: o.status }), 'status');
      }
      return out;
    } catch (err) {
      throw new Error(`kube: ${what}: ${(err as Error).message}`);
    }
  }

  /** Read, change, replace at the read resourceVersion; again on a conflict (someone else wrote in between). */
  private async update(api: KubeKindApi, namespace: string | undefined, name: string, change: (cur: Json) => Json, sub?: string): Promise<Json> {
    for (let attempt = 1; ; attempt++) {
      const cur = await this.http.request('GET', KubeObjects.path(api, namespace, name));
      const next = change(cur);
      const meta = isObj(next.metadata) ? next.metadata : {};
      next.metadata = { ...meta, resourceVersion: (cur.metadata as Json).resourceVersion };
      try {
        return await this.http.request('PUT', KubeObjects.path(api, namespace, name, sub), next);
      } catch (err) {
        if (!(err instanceof KubeApiError && err.code === 409) || attempt >= 10) throw err;
      }
    }
  }

  /** apply() for each, in order (namespaces before what lives in them is the caller's order). */
  async applyAll(inputs: readonly unknown[], context?: string): Promise<Json[]> {
    const out: Json[] = [];
    for (const [i, input] of inputs.entries()) out.push(await this.apply(input, context ? `${context}[${i}]` : undefined));
    return out;
  }

  /** Deletes one object (dependents in the background); true when it existed. */
  async delete(kind: string, ref: ObjectRef): Promise<boolean> {
    const api = KubeObjects.api(kind);
    try {
      await this.http.request('DELETE', KubeObjects.path(api, ref.namespace ?? (api.namespaced ? 'default' : undefined), ref.name), { kind: 'DeleteOptions', apiVersion: 'v1', propagationPolicy: 'Background' });
      return true;
    } catch (err) {
      if (err instanceof KubeApiError && err.code === 404) return false;
      throw new Error(`kube: delete ${kind} ${ref.namespace ? `${ref.namespace}/` : ''}${ref.name}: ${(err as Error).message}`);
    }
  }

  async deleteObject(obj: { kind: string; metadata: { name: string; namespace?: string | undefined } }): Promise<boolean> {
    return await this.delete(obj.kind, { name: obj.metadata.name, ...(obj.metadata.namespace !== undefined ? { namespace: obj.metadata.namespace } : {}) });
  }

  /** The object as the server has it, or undefined. */
  async getRaw(kind: string, ref: ObjectRef): Promise<Json | undefined> {
    const api = KubeObjects.api(kind);
    try {
      return await this.http.request('GET', KubeObjects.path(api, ref.namespace ?? (api.namespaced ? 'default' : undefined), ref.name));
    } catch (err) {
      if (err instanceof KubeApiError && err.code === 404) return undefined;
      throw err;
    }
  }

  /** The object in the model's type (as the agents read it), or undefined. */
  async get<K extends KubeKind>(kind: K, ref: ObjectRef): Promise<ObjectKinds[K] | undefined> {
    const raw = await this.getRaw(kind, ref);
    if (raw === undefined) return undefined;
    const c = fromKubernetes(kind, raw);
    return 'object' in c ? c.object : undefined;
  }

  /** Every object of the kind, all namespaces, as the server has them. */
  async listRaw(kind: string): Promise<Json[]> {
    const out = await this.http.request('GET', KubeObjects.path(KubeObjects.api(kind), undefined));
    return (Array.isArray(out.items) ? out.items : []) as Json[];
  }

  /** Every object of the kind in the model's type (those the mesh does not carry are left out). */
  async list<K extends KubeKind>(kind: K): Promise<Array<ObjectKinds[K]>> {
    const out: Array<ObjectKinds[K]> = [];
    for (const raw of await this.listRaw(kind)) {
      const c = fromKubernetes(kind, raw);
      if ('object' in c) out.push(c.object);
    }
    return out;
  }

  /** Sets the object's labels to exactly `labels` (the others removed). */
  async setLabels(kind: string, ref: ObjectRef, labels: Record<string, string>): Promise<Json> {
    const api = KubeObjects.api(kind);
    return await this.update(api, ref.namespace ?? (api.namespaced ? 'default' : undefined), ref.name, (cur) => ({ ...cur, metadata: { ...(cur.metadata as Json), labels } }));
  }
}

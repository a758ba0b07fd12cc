// OpenAPI v3: what kubectl reads before `apply`, `create`, `diff`.
//
// kubectl (1.27+) validates with `--validate=strict` by default: it looks in
// /openapi/v3/<group-version> for the PATCH operation of the object's kind
// (by its x-kubernetes-group-version-kind) and, when that operation lists the
// `fieldValidation` query parameter, leaves validation to the server
// (`?fieldValidation=Strict`) — which this server does (validate.ts). So the
// documents describe the operations of every served kind; schemas are given
// only for the kinds CRDs define (their openAPIV3Schema). Built-in kinds carry
// no schema on purpose: kubectl then computes `apply` patches from its own
// compiled-in types, whose strategic-merge metadata is exact.

import { createHash } from 'node:crypto';

import type { JsonObject } from './json.ts';
import type { ResourceRegistry, ResourceType } from './resources.ts';

const param = (name: string, where: 'query' | 'path' = 'query'): JsonObject => ({
  name,
  in: where,
  ...(where === 'path' ? { required: true } : {}),
  schema: { type: 'string', uniqueItems: true },
});

const OK = { responses: { '200': { description: 'OK' } } };

function operations(r: ResourceType): Record<string, JsonObject> {
  const gvk = { group: r.group, version: r.version, kind: r.kind };
  const base = r.group === '' ? `/api/${r.version}` : `/apis/${r.group}/${r.version}`;
  const coll = r.namespaced ? `${base}/namespaces/{namespace}/${r.plural}` : `${base}/${r.plural}`;
  const nsParam = r.namespaced ? [param('namespace', 'path')] : [];
  const op = (action: string, extra: JsonObject[] = []): JsonObject => ({
    ...OK,
    'x-kubernetes-action': action,
    'x-kubernetes-group-version-kind': gvk,
    parameters: [...extra],
  });
  const write = ['dryRun', 'fieldManager', 'fieldValidation'].map((n) => param(n));
  const paths: Record<string, JsonObject> = {
    [coll]: {
      parameters: nsParam,
      get: op('list', ['labelSelector', 'fieldSelector', 'limit', 'continue', 'resourceVersion', 'watch', 'allowWatchBookmarks', 'timeoutSeconds'].map((n) => param(n))),
      post: op('post', write),
      delete: op('deletecollection', ['labelSelector', 'fieldSelector', 'dryRun'].map((n) => param(n))),
    },
    [`${coll}/{name}`]: {
      parameters: [param('name', 'path'), ...nsParam],
      get: op('get'),
      put: op('put', write),
      patch: op('patch', [...write, param('force')]),
      delete: op('delete', ['dryRun', 'gracePeriodSeconds', 'propagationPolicy'].map((n) => param(n))),
    },
  };
  if (r.statusSubresource) {
    paths[`${coll}/{name}/status`] = {
      parameters: [param('name', 'path'), ...nsParam],
      get: op('get'),
      put: op('put', write),
      patch: op('patch', [...write, param('force')]),
    };
  }
  return paths;
}

/** The document of one group-version. */
export function groupVersionDocument(types: ResourceType[]): JsonObject {
  const paths: JsonObject = {};
  const schemas: JsonObject = {};
  for (const r of types) {
    Object.assign(paths, operations(r));
    if (r.crd?.schema !== undefined) {
      const id = `${r.group.split('.').reverse().join('.')}.${r.version}.${r.kind}`;
      schemas[id] = { ...r.crd.schema, 'x-kubernetes-group-version-kind': [{ group: r.group, version: r.version, kind: r.kind }] };
    }
  }
  return {
    openapi: '3.0.0',
    info: { title: 'Kubernetes', version: 'unversioned' },
    paths,
    components: { schemas },
  };
}

/** The URL path key of a group-version in the /openapi/v3 index: `api/v1`, `apis/apps/v1`. */
export const openapiPathOf = (group: string, version: string): string => (group === '' ? `api/${version}` : `apis/${group}/${version}`);

/** /openapi/v3: every group-version with a URL whose hash changes with its content. */
export function openapiIndex(registry: ResourceRegistry): JsonObject {
  const paths: JsonObject = {};
  for (const g of registry.groups()) {
    for (const v of g.versions) {
      const doc = JSON.stringify(groupVersionDocument(registry.inGroupVersion(g.name, v)));
      const hash = createHash('sha512').update(doc).digest('hex').slice(0, 32).toUpperCase();
      const p = openapiPathOf(g.name, v);
      paths[p] = { serverRelativeURL: `/openapi/v3/${p}?hash=${hash}` };
    }
  }
  return { paths };
}


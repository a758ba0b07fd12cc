// Object metadata shared by every Kubernetes-shaped object, and the one place
// that turns schema failures into errors naming the object and the field.
import { z } from 'zod';

import {
  DNS1123_LABEL_MSG,
  DNS1123_LABEL_RE,
  DNS1123_SUBDOMAIN_MSG,
  DNS1123_SUBDOMAIN_RE,
  LABEL_VALUE_MSG,
  LABEL_VALUE_RE,
  QUALIFIED_NAME_MSG,
  atMost,
  isQualifiedName,
} from './names.ts';

// The rules and messages live in names.ts (zod-free, for the CNI plugin's path).
export { isQualifiedName };

export const dns1123Label = z.string().max(63, atMost(63)).regex(DNS1123_LABEL_RE, DNS1123_LABEL_MSG);

export const dns1123Subdomain = z.string().max(253, atMost(253)).regex(DNS1123_SUBDOMAIN_RE, DNS1123_SUBDOMAIN_MSG);

export const qualifiedName = z.string().refine(isQualifiedName, QUALIFIED_NAME_MSG);
export const labelValue = z.string().max(63, atMost(63)).regex(LABEL_VALUE_RE, LABEL_VALUE_MSG);

export const labelsSchema = z.record(qualifiedName, labelValue);
export type Labels = z.infer<typeof labelsSchema>;
export const annotationsSchema = z.record(qualifiedName, z.string());
export type Annotations = z.infer<typeof annotationsSchema>;

const metaFields = {
  name: dns1123Subdomain,
  labels: labelsSchema.default({}),
  annotations: annotationsSchema.default({}),
  uid: z.string().optional(),
  resourceVersion: z.string().optional(),
};

/** Metadata of a namespaced object. */
export const objectMetaSchema = z.object({ ...metaFields, namespace: dns1123Label });
export type ObjectMeta = z.infer<typeof objectMetaSchema>;

/** Metadata of a cluster-scoped object (Namespace, Node); `namespace` is not allowed. */
export const clusterObjectMetaSchema = z.object({ ...metaFields, namespace: z.undefined().optional() });
export type ClusterObjectMeta = z.infer<typeof clusterObjectMetaSchema>;

export const ipv4Schema = z.ipv4();
export const cidrV4Schema = z.cidrv4();

/** An input failed its schema. The message names the object and each bad field. */
export class ModelError extends Error {
  constructor(
    /** What was parsed, e.g. `Pod default/web-1` or `file pods.yaml: Service default/echo`. */
    readonly object: string,
    /** One entry per issue: dotted field path and what is wrong with it. */
    readonly issues: readonly { path: string; message: string }[],
  ) {
    super(`${object}: ${issues.map((i) => `${i.path || '(root)'}: ${i.message}`).join('; ')}`);
    this.name = 'ModelError';
  }
}

/** `spec.ports[0].port` from a zod issue path. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += out === '' ? String(seg) : `.${String(seg)}`;
  }
  return out;
}

/** Best-effort `Kind namespace/name` of raw input, for error messages before it is valid. */
export function describeRaw(kind: string, input: unknown): string {
  const meta = (input as { metadata?: { name?: unknown; namespace?: unknown } } | null)?.metadata;
  const name = typeof meta?.name === 'string' ? meta.name : '<unnamed>';
  const ns = typeof meta?.namespace === 'string' ? `${meta.namespace}/` : '';
  return `${kind} ${ns}${name}`;
}

/**
 * Parse `input` with `schema`; on failure throw a ModelError naming the object
 * (`context` is prepended, e.g. a file name) and every failing field.
 */
export function parseWith<S extends z.ZodType>(schema: S, kind: string, input: unknown, context?: string): z.output<S> {
  const r = schema.safeParse(input);
  if (r.success) return r.data;
  const what = describeRaw(kind, input);
  throw new ModelError(
    context ? `${context}: ${what}` : what,
    r.error.issues.map((i) => ({ path: formatPath(i.path), message: i.message })),
  );
}

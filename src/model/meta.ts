// Object metadata shared by every Kubernetes-shaped object, and the one place
// that turns schema failures into errors naming the object and the field.
import { z } from 'zod';

/** DNS-1123 label: lowercase alphanumerics and '-', starts and ends alphanumeric, at most 63 chars. */
const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
/** DNS-1123 subdomain: dot-separated DNS-1123 labels, at most 253 chars. */
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
/** Name part of a qualified name (label keys, annotation keys). */
const QUALIFIED_NAME = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;
/** Label value: empty, or alphanumerics with '-', '_', '.' inside; at most 63 chars. */
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;

export const dns1123Label = z
  .string()
  .max(63, 'at most 63 characters')
  .regex(DNS1123_LABEL, 'lowercase alphanumerics and "-", starting and ending alphanumeric');

export const dns1123Subdomain = z
  .string()
  .max(253, 'at most 253 characters')
  .regex(DNS1123_SUBDOMAIN, 'lowercase alphanumerics, "-" and ".", starting and ending alphanumeric');

/** `[prefix/]name` as Kubernetes requires for label and annotation keys. */
export function isQualifiedName(key: string): boolean {
  const slash = key.indexOf('/');
  const prefix = slash >= 0 ? key.slice(0, slash) : undefined;
  const name = slash >= 0 ? key.slice(slash + 1) : key;
  if (prefix !== undefined && (prefix.length === 0 || prefix.length > 253 || !DNS1123_SUBDOMAIN.test(prefix))) return false;
  return name.length > 0 && name.length <= 63 && QUALIFIED_NAME.test(name);
}

export const qualifiedName = z.string().refine(isQualifiedName, 'not a qualified name ([prefix/]name)');
export const labelValue = z
  .string()
  .max(63, 'at most 63 characters')
  .regex(LABEL_VALUE, 'alphanumerics, "-", "_" and ".", starting and ending alphanumeric');

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

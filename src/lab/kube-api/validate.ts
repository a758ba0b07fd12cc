// Server-side field validation (`?fieldValidation=Strict|Warn`): the fields of
// an object this server does not know, as `kubectl apply` reports them
// (`strict decoding error: unknown field "spec.containers[0].imagee"`).
//
// Built-in kinds are described by shapes of their well-known fields (ObjectMeta,
// pod template, Service, …; deeper parts are open); a CRD's kinds by its
// openAPIV3Schema (properties, items, additionalProperties,
// x-kubernetes-preserve-unknown-fields).

import { isObject, type JsonObject } from './json.ts';
import type { ResourceType } from './resources.ts';

/** 'any': not checked; an object: its known fields; a one-element array: a list of that shape. */
type Shape = 'any' | { [field: string]: Shape } | [Shape];

const fields = (names: string, extra: Record<string, Shape> = {}): Record<string, Shape> => {
  const out: Record<string, Shape> = {};
  for (const n of names.split(/\s+/).filter((x) => x !== '')) out[n] = 'any';
  return { ...out, ...extra };
};

const OBJECT_META = fields('name generateName namespace labels annotations uid resourceVersion generation creationTimestamp deletionTimestamp deletionGracePeriodSeconds finalizers ownerReferences managedFields selfLink');

const CONTAINER = fields(
  'name image command args workingDir env envFrom resources volumeMounts volumeDevices livenessProbe readinessProbe startupProbe lifecycle terminationMessagePath terminationMessagePolicy imagePullPolicy securityContext stdin stdinOnce tty resizePolicy restartPolicy',
  { ports: [fields('name containerPort hostPort protocol hostIP')] },
);

const POD_SPEC = fields(
  'volumes ephemeralContainers restartPolicy terminationGracePeriodSeconds activeDeadlineSeconds dnsPolicy nodeSelector serviceAccountName serviceAccount automountServiceAccountToken nodeName hostNetwork hostPID hostIPC shareProcessNamespace securityContext imagePullSecrets hostname subdomain affinity schedulerName tolerations hostAliases priorityClassName priority dnsConfig readinessGates runtimeClassName enableServiceLinks preemptionPolicy overhead topologySpreadConstraints setHostnameAsFQDN os hostUsers schedulingGates resourceClaims resources',
  { containers: [CONTAINER], initContainers: [CONTAINER] },
);

const TEMPLATE = { metadata: OBJECT_META, spec: POD_SPEC };

const TOP: Record<string, Record<string, Shape>> = {
  Namespace: { spec: fields('finalizers'), status: 'any' },
  Pod: { spec: POD_SPEC, status: 'any' },
  Service: {
    spec: fields(
      'selector clusterIP clusterIPs type externalIPs sessionAffinity loadBalancerIP loadBalancerSourceRanges externalName externalTrafficPolicy healthCheckNodePort publishNotReadyAddresses sessionAffinityConfig ipFamilies ipFamilyPolicy allocateLoadBalancerNodePorts loadBalancerClass internalTrafficPolicy trafficDistribution',
      { ports: [fields('name protocol appProtocol port targetPort nodePort')] },
    ),
    status: 'any',
  },
  Node: { spec: fields('podCIDR podCIDRs providerID unschedulable taints configSource externalID'), status: 'any' },
  ConfigMap: fields('data binaryData immutable'),
  Secret: fields('data stringData type immutable'),
  ServiceAccount: fields('secrets imagePullSecrets automountServiceAccountToken'),
  Event: fields('involvedObject reason message source firstTimestamp lastTimestamp count type eventTime series action related reportingComponent reportingInstance'),
  Deployment: { spec: fields('replicas selector strategy minReadySeconds revisionHistoryLimit paused progressDeadlineSeconds', { template: TEMPLATE }), status: 'any' },
  DaemonSet: { spec: fields('selector updateStrategy minReadySeconds revisionHistoryLimit', { template: TEMPLATE }), status: 'any' },
  EndpointSlice: fields('addressType endpoints ports'),
  NetworkPolicy: { spec: fields('podSelector ingress egress policyTypes') },
  CustomResourceDefinition: { spec: fields('group names scope versions conversion preserveUnknownFields'), status: 'any' },
};

/** The shape of a CRD's openAPIV3Schema. */
function shapeOfSchema(s: unknown): Shape {
  if (!isObject(s) || s['x-kubernetes-preserve-unknown-fields'] === true) return 'any';
  if (s.type === 'array') return [shapeOfSchema(s.items)];
  if (isObject(s.properties)) {
    const out: Record<string, Shape> = {};
    for (const [k, v] of Object.entries(s.properties)) out[k] = shapeOfSchema(v);
    return out;
  }
  return 'any';
}

function walk(value: unknown, shape: Shape, path: string, out: string[]): void {
  if (shape === 'any' || value === null || value === undefined) return;
  if (Array.isArray(shape)) {
    if (Array.isArray(value)) value.forEach((v, i) => walk(v, shape[0], `${path}[${i}]`, out));
    return;
  }
  if (!isObject(value)) return;
  for (const [k, v] of Object.entries(value)) {
    const sub = shape[k];
    const p = path === '' ? k : `${path}.${k}`;
    if (sub === undefined) out.push(p);
    else walk(v, sub, p, out);
  }
}

/** Paths of the fields of `o` unknown to its kind (empty when all are known). */
export function checkFields(r: ResourceType, o: JsonObject): string[] {
  let body: Shape;
  if (r.crd !== undefined) {
    const s = shapeOfSchema(r.crd.schema);
    if (s === 'any' || Array.isArray(s)) return [];
    body = s;
  } else {
    const top = TOP[r.kind];
    if (top === undefined) return [];
    body = top;
  }
  const shape: Record<string, Shape> = { ...(body as Record<string, Shape>), apiVersion: 'any', kind: 'any', metadata: OBJECT_META };
  const out: string[] = [];
  walk(o, shape, '', out);
  return out;
}

type Cause = { field: string; type: string; message: string };

const typeOf = (v: unknown): string => (v === null ? 'null' : Array.isArray(v) ? 'array' : Number.isInteger(v) ? 'integer' : typeof v);

/**
 * The values of a custom resource checked against its CRD's structural schema,
 * as kube-apiserver does (a subset: type, enum, required, minimum/maximum,
 * minLength/maxLength, minItems/maxItems), with its wording:
 * `spec.type: Unsupported value: "LoadBalancer": supported values: "ClusterSetIP", "Headless"`.
 * Metadata is checked elsewhere; `status` only through the status subresource,
 * like the rest (the schema applies to it too).
 */
export function schemaProblems(r: ResourceType, o: JsonObject): Cause[] {
  if (r.crd === undefined || !isObject(r.crd.schema)) return [];
  const out: Cause[] = [];
  const props = isObject(r.crd.schema.properties) ? r.crd.schema.properties : {};
  for (const [k, sub] of Object.entries(props)) {
    if (k === 'metadata' || k === 'apiVersion' || k === 'kind') continue;
    if (o[k] !== undefined) checkValue(sub, o[k], k, out);
  }
  for (const k of Array.isArray(r.crd.schema.required) ? r.crd.schema.required : []) {
    if (typeof k === 'string' && k !== 'metadata' && o[k] === undefined) out.push({ field: k, type: 'Required value', message: '' });
  }
  return out;
}

function checkValue(s: unknown, v: unknown, path: string, out: Cause[]): void {
  if (!isObject(s) || v === undefined) return;
  if (v === null) {
    if (s.nullable !== true && s.type !== undefined) out.push({ field: path, type: 'Invalid value', message: `"null": ${path} in body must be of type ${String(s.type)}: "null"` });
    return;
  }
  const t = typeOf(v);
  const want = s.type;
  if (typeof want === 'string' && !(want === t || (want === 'number' && t === 'integer'))) {
    out.push({ field: path, type: 'Invalid value', message: `"${t}": ${path} in body must be of type ${want}: "${t}"` });
    return;
  }
  if (Array.isArray(s.enum) && !s.enum.some((e) => JSON.stringify(e) === JSON.stringify(v))) {
    out.push({ field: path, type: 'Unsupported value', message: `${JSON.stringify(v)}: supported values: ${s.enum.map((e) => JSON.stringify(e)).join(', ')}` });
  }
  if (typeof v === 'number') {
    if (typeof s.minimum === 'number' && v < s.minimum) out.push({ field: path, type: 'Invalid value', message: `${v}: ${path} in body should be greater than or equal to ${s.minimum}` });
    if (typeof s.maximum === 'number' && v > s.maximum) out.push({ field: path, type: 'Invalid value', message: `${v}: ${path} in body should be less than or equal to ${s.maximum}` });
  }
  if (typeof v === 'string') {
    if (typeof s.minLength === 'number' && v.length < s.minLength) out.push({ field: path, type: 'Invalid value', message: `${JSON.stringify(v)}: ${path} in body should be at least ${s.minLength} chars long` });
    if (typeof s.maxLength === 'number' && v.length > s.maxLength) out.push({ field: path, type: 'Too long', message: `may not be more than ${s.maxLength} bytes` });
  }
  if (Array.isArray(v)) {
    if (typeof s.minItems === 'number' && v.length < s.minItems) out.push({ field: path, type: 'Invalid value', message: `${v.length}: ${path} in body should have at least ${s.minItems} items` });
    if (typeof s.maxItems === 'number' && v.length > s.maxItems) out.push({ field: path, type: 'Too many', message: `${v.length}: must have at most ${s.maxItems} items` });
    v.forEach((el, i) => checkValue(s.items, el, `${path}[${i}]`, out));
    return;
  }
  if (isObject(v)) {
    if (s['x-kubernetes-preserve-unknown-fields'] === true && !isObject(s.properties)) return;
    const props = isObject(s.properties) ? s.properties : {};
    for (const [k, sub] of Object.entries(props)) if (v[k] !== undefined) checkValue(sub, v[k], `${path}.${k}`, out);
    if (isObject(s.additionalProperties)) for (const [k, el] of Object.entries(v)) if (!(k in props)) checkValue(s.additionalProperties, el, `${path}.${k}`, out);
    for (const k of Array.isArray(s.required) ? s.required : []) if (typeof k === 'string' && v[k] === undefined) out.push({ field: `${path}.${k}`, type: 'Required value', message: '' });
  }
}

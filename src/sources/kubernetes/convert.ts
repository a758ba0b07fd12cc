// Kubernetes objects (the API's JSON) → the model's types. Pure functions.
//
// Each converter picks the fields the mesh reads and hands them to the model's
// schema, which validates them (a ModelError names the object and the field).
// What the model cannot carry is skipped, not reported: the model is IPv4, so
// IPv6 addresses, CIDRs and slices are left out, and an ExternalName Service
// (no cluster IP, no backends) is not a Service the datapath serves.
// resourceVersion and kubectl's last-applied annotation are not carried, so a
// change the mesh does not read (a pod's container statuses, a re-apply)
// produces no event downstream.
import { isIPv4 } from 'node:net';
import { parseObject, type ObjectKinds } from '../../model/index.ts';
import { KUBE_KINDS, apiVersionOf, type KubeKind } from './kinds.ts';

type Json = Record<string, unknown>;

/** The object in the model's type, or why it is not one the mesh carries. */
export type Converted<T> = { object: T } | { skip: string };

export const LAST_APPLIED_ANNOTATION = 'kubectl.kubernetes.io/last-applied-configuration';

const obj = (v: unknown): Json => (v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Json) : {});
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
/** Drops keys whose value is undefined (so the model's defaults apply and JSON comparisons are stable). */
function defined<T extends Json>(o: T): T {
  for (const k of Object.keys(o)) if (o[k] === undefined) delete o[k];
  return o;
}

/** namespace/name (name for cluster-scoped kinds) of raw input, or undefined when it has no name. */
export function rawRef(kind: KubeKind, raw: unknown): { namespace?: string; name: string } | undefined {
  const m = obj(obj(raw).metadata);
  if (typeof m.name !== 'string' || m.name === '') return undefined;
  if (!KUBE_KINDS[kind].namespaced) return { name: m.name };
  return typeof m.namespace === 'string' ? { namespace: m.namespace, name: m.name } : undefined;
}

function metadata(raw: Json): Json {
  const m = obj(raw.metadata);
  let annotations = m.annotations;
  if (annotations !== null && typeof annotations === 'object' && LAST_APPLIED_ANNOTATION in (annotations as Json)) {
    const { [LAST_APPLIED_ANNOTATION]: _drop, ...rest } = annotations as Json;
    annotations = rest;
  }
  return defined({ name: m.name, namespace: m.namespace, labels: m.labels ?? undefined, annotations: annotations ?? undefined, uid: m.uid });
}

const firstIPv4 = (candidates: unknown[]): string | undefined => candidates.find((c): c is string => typeof c === 'string' && isIPv4(c));
const isCidrV4 = (c: unknown): c is string => typeof c === 'string' && isIPv4(c.split('/')[0] ?? '');

function pod(raw: Json): Json {
  const spec = obj(raw.spec);
  const status = obj(raw.status);
  return {
    spec: defined({
      nodeName: spec.nodeName || undefined,
      serviceAccountName: spec.serviceAccountName || undefined,
      containers: arr(spec.containers).map((c) =>
        defined({ name: obj(c).name, image: obj(c).image, ports: arr(obj(c).ports).map((p) => defined({ name: obj(p).name, containerPort: obj(p).containerPort, protocol: obj(p).protocol })) }),
      ),
    }),
    status: defined({
      phase: status.phase,
      podIP: firstIPv4([...arr(status.podIPs).map((p) => obj(p).ip), status.podIP]),
      conditions: arr(status.conditions).map((c) => ({ type: obj(c).type, status: obj(c).status })),
    }),
  };
}

function service(raw: Json): Json | string {
  const spec = obj(raw.spec);
  if (spec.type === 'ExternalName') return 'an ExternalName Service has no cluster IP or backends';
  let clusterIP: string | undefined;
  if (spec.clusterIP === 'None') clusterIP = 'None';
  else if (typeof spec.clusterIP === 'string' && spec.clusterIP !== '') {
    clusterIP = firstIPv4([...arr(spec.clusterIPs), spec.clusterIP]);
    if (clusterIP === undefined) return `no IPv4 cluster IP (${String(spec.clusterIP)})`;
  }
  return {
    spec: defined({
      type: spec.type,
      clusterIP,
      ports: arr(spec.ports).map((p) => defined({ name: obj(p).name || undefined, port: obj(p).port, targetPort: obj(p).targetPort, protocol: obj(p).protocol })),
      selector: spec.selector ?? undefined,
      sessionAffinity: spec.sessionAffinity,
      sessionAffinityConfig: spec.sessionAffinityConfig ?? undefined,
    }),
  };
}

function endpointSlice(raw: Json): Json | string {
  if (raw.addressType !== 'IPv4') return `addressType ${String(raw.addressType)} (the mesh carries IPv4 slices)`;
  return {
    addressType: raw.addressType,
    endpoints: arr(raw.endpoints).map((e) => {
      const o = obj(e);
      const c = obj(o.conditions);
      const t = o.targetRef === undefined || o.targetRef === null ? undefined : obj(o.targetRef);
      return defined({
        addresses: o.addresses,
        conditions: defined({ ready: c.ready ?? undefined, serving: c.serving ?? undefined, terminating: c.terminating ?? undefined }),
        hostname: o.hostname ?? undefined,
        nodeName: o.nodeName ?? undefined,
        zone: o.zone ?? undefined,
        targetRef: t && defined({ kind: t.kind, namespace: t.namespace, name: t.name, uid: t.uid }),
      });
    }),
    ports: arr(raw.ports).map((p) => defined({ name: obj(p).name ?? undefined, port: obj(p).port ?? undefined, protocol: obj(p).protocol ?? undefined, appProtocol: obj(p).appProtocol ?? undefined })),
  };
}

function node(raw: Json): Json {
  const spec = obj(raw.spec);
  const podCIDRs = arr(spec.podCIDRs).filter(isCidrV4);
  if (podCIDRs.length === 0 && isCidrV4(spec.podCIDR)) podCIDRs.push(spec.podCIDR);
  const addresses = arr(obj(raw.status).addresses)
    .map(obj)
    .filter((a) => a.type === 'Hostname' || ((a.type === 'InternalIP' || a.type === 'ExternalIP') && typeof a.address === 'string' && isIPv4(a.address)))
    .map((a) => ({ type: a.type, address: a.address }));
  return {
    spec: defined({ podCIDR: podCIDRs[0], podCIDRs: podCIDRs.length > 0 ? podCIDRs : undefined }),
    status: { addresses },
  };
}

const ciliumPolicy = (raw: Json): Json => defined({ spec: raw.spec ?? undefined, specs: raw.specs ?? undefined });

const BODIES: { [K in KubeKind]: (raw: Json) => Json | string } = {
  Namespace: () => ({}),
  Pod: pod,
  Service: service,
  Node: node,
  EndpointSlice: endpointSlice,
  NetworkPolicy: (raw) => defined({ spec: raw.spec ?? undefined }),
  CiliumNetworkPolicy: ciliumPolicy,
  CiliumClusterwideNetworkPolicy: ciliumPolicy,
};

/**
 * One Kubernetes object (as the API serves it, in a list or a watch event)
 * in the model's type. Throws ModelError when it fails the model's schema;
 * returns `{ skip }` for objects the mesh does not carry.
 */
export function fromKubernetes<K extends KubeKind>(kind: K, raw: unknown): Converted<ObjectKinds[K]> {
  const r = obj(raw);
  const body = BODIES[kind](r);
  if (typeof body === 'string') return { skip: body };
  const input = { kind, apiVersion: apiVersionOf(KUBE_KINDS[kind]), metadata: metadata(r), ...body };
  return { object: parseObject(kind, input) };
}

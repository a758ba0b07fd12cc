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

// The lab's EndpointSlice controller: what kube-controller-manager's
// endpointslice controller does, for the lab's needs. For every Service with a
// selector, EndpointSlices (discovery.k8s.io/v1) labelled
// kubernetes.io/service-name=<service> and managed-by this controller, owned by
// the Service:
// - an endpoint per selected pod that has an IP and has not finished
//   (Succeeded/Failed), with conditions ready (pod Ready and not terminating),
//   serving (pod Ready) and terminating (deletionTimestamp set), targetRef,
//   nodeName, and hostname when the pod has spec.hostname and its
//   spec.subdomain names the Service (Kubernetes' rule);
// - ports resolved per pod: a named targetPort is looked up among the pod's
//   container ports (a pod without it is left out of that port), a number is
//   taken as is, none means the Service port. Pods whose ports resolve alike
//   share slices; one slice holds at most 100 endpoints;
// - a Service whose selector selects no pod gets one empty slice (as
//   Kubernetes does); a Service without a selector gets none (its slices are
//   someone else's to write).
// Slices are named <service>-<hash of address type and ports>[-<n>], so a
// reconcile that runs twice cannot create a slice twice.
import type { CoreV1Api, DiscoveryV1Api, DiscoveryV1EndpointPort, V1EndpointSlice, V1Pod, V1Service, V1ServicePort } from '@kubernetes/client-node';
import { apiCode, canonicalJson, log, safeHash, splitKey } from './runtime.ts';
import { isPodReady } from './deployment.ts';

export const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';
export const MANAGED_BY_LABEL = 'endpointslice.kubernetes.io/managed-by';
export const MANAGED_BY = 'endpointslice-controller.k8s.io';
export const MAX_ENDPOINTS_PER_SLICE = 100;

type Endpoint = NonNullable<V1EndpointSlice['endpoints']>[number];

/** The ports of `svc` as `pod` serves them; a port whose named targetPort the pod lacks is left out. */
export function resolvePorts(svc: V1Service, pod: V1Pod): DiscoveryV1EndpointPort[] {
  const out: DiscoveryV1EndpointPort[] = [];
  for (const sp of svc.spec?.ports ?? []) {
    const port = resolveTargetPort(sp, pod);
    if (port === undefined) continue;
    out.push({ name: sp.name ?? '', port, protocol: sp.protocol ?? 'TCP', ...(sp.appProtocol ? { appProtocol: sp.appProtocol } : {}) });
  }
  return out;
}

function resolveTargetPort(sp: V1ServicePort, pod: V1Pod): number | undefined {
  const t = sp.targetPort as number | string | undefined;
  if (t === undefined || t === '' || t === 0) return sp.port;
  if (typeof t === 'number') return t;
  if (/^\d+$/.test(t)) return Number(t);
  for (const c of pod.spec?.containers ?? []) {
    for (const p of c.ports ?? []) if (p.name === t && (p.protocol ?? 'TCP') === (sp.protocol ?? 'TCP')) return p.containerPort;
  }
  return undefined;
}

/** The slices `svc` should have, given the pods of its namespace its selector selects. */
export function desiredSlices(svc: V1Service, pods: V1Pod[]): V1EndpointSlice[] {
  const groups = new Map<string, { addressType: string; ports: DiscoveryV1EndpointPort[]; endpoints: Endpoint[] }>();
  for (const pod of pods) {
    const ip = pod.status?.podIP;
    if (!ip || pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed') continue;
    const terminating = Boolean(pod.metadata?.deletionTimestamp);
    const ready = isPodReady(pod);
    const publish = svc.spec?.publishNotReadyAddresses === true;
    const addressType = ip.includes(':') ? 'IPv6' : 'IPv4';
    const ports = resolvePorts(svc, pod);
    const key = `${addressType}|${canonicalJson(ports)}`;
    let g = groups.get(key);
    if (!g) groups.set(key, (g = { addressType, ports, endpoints: [] }));
    g.endpoints.push({
      addresses: [ip],
      conditions: { ready: publish || (ready && !terminating), serving: publish || ready, terminating },
      targetRef: { kind: 'Pod', namespace: pod.metadata!.namespace!, name: pod.metadata!.name!, uid: pod.metadata!.uid! },
      ...(pod.spec?.hostname && pod.spec.subdomain === svc.metadata!.name ? { hostname: pod.spec.hostname } : {}),
      ...(pod.spec?.nodeName ? { nodeName: pod.spec.nodeName } : {}),
    });
  }
  const name = svc.metadata!.name!;
  const namespace = svc.metadata!.namespace!;
  const slice = (sliceName: string, addressType: string, ports: DiscoveryV1EndpointPort[], endpoints: Endpoint[]): V1EndpointSlice => ({
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: {
      name: sliceName,
      namespace,
      labels: { ...(svc.metadata?.labels ?? {}), [SERVICE_NAME_LABEL]: name, [MANAGED_BY_LABEL]: MANAGED_BY },
      ownerReferences: [{ apiVersion: 'v1', kind: 'Service', name, uid: svc.metadata!.uid!, controller: true, blockOwnerDeletion: true }],
    },
    addressType,
    ports,
    endpoints,
  });
  if (groups.size === 0) return [slice(`${name}-${safeHash('placeholder', 5)}`, 'IPv4', [], [])];
  const out: V1EndpointSlice[] = [];
  for (const [key, g] of [...groups].sort(([a], [b]) => a.localeCompare(b))) {
    const eps = g.endpoints.sort((a, b) => a.addresses[0]!.localeCompare(b.addresses[0]!));
    for (let i = 0; i * MAX_ENDPOINTS_PER_SLICE < eps.length; i++) {
      out.push(slice(`${name}-${safeHash(key, 5)}${i ? `-${i}` : ''}`, g.addressType, g.ports, eps.slice(i * MAX_ENDPOINTS_PER_SLICE, (i + 1) * MAX_ENDPOINTS_PER_SLICE)));
    }
  }
  return out;
}

/** What a slice says, in a form where what the server defaulted compares equal to what was asked. */
function sliceContent(s: V1EndpointSlice): string {
  return canonicalJson({
    labels: s.metadata?.labels ?? {},
    owner: s.metadata?.ownerReferences?.map((r) => r.uid) ?? [],
    addressType: s.addressType,
    ports: (s.ports ?? []).map((p) => ({ name: p.name ?? '', port: p.port ?? null, protocol: p.protocol ?? 'TCP', appProtocol: p.appProtocol ?? null })),
    endpoints: (s.endpoints ?? []).map((e) => ({
      addresses: e.addresses,
      ready: e.conditions?.ready ?? null,
      serving: e.conditions?.serving ?? null,
      terminating: e.conditions?.terminating ?? null,
      target: e.targetRef ? `${e.targetRef.kind}/${e.targetRef.namespace}/${e.targetRef.name}/${e.targetRef.uid}` : null,
      nodeName: e.nodeName ?? null,
      hostname: e.hostname ?? null,
    })),
  });
}

export class EndpointSliceController {
  constructor(
    private readonly core: CoreV1Api,
    private readonly discovery: DiscoveryV1Api,
  ) {}

  async reconcile(key: string): Promise<void> {
    const { namespace, name } = splitKey(key);
    let svc: V1Service | undefined;
    try {
      svc = await this.core.readNamespacedService({ name, namespace });
    } catch (err) {
      if (apiCode(err) !== 404) throw err;
    }
    const existing = (await this.discovery.listNamespacedEndpointSlice({ namespace, labelSelector: `${SERVICE_NAME_LABEL}=${name},${MANAGED_BY_LABEL}=${MANAGED_BY}` })).items;
    const selector = svc?.spec?.selector;
    let desired: V1EndpointSlice[] = [];
    if (svc && !svc.metadata?.deletionTimestamp && selector && Object.keys(selector).length > 0) {
      const labelSelector = Object.entries(selector).map(([k, v]) => `${k}=${v}`).join(',');
      desired = desiredSlices(svc, (await this.core.listNamespacedPod({ namespace, labelSelector })).items);
    }
    const changed: string[] = [];
    for (const want of desired) {
      const have = existing.find((s) => s.metadata?.name === want.metadata!.name);
      if (!have) {
        try {
          await this.discovery.createNamespacedEndpointSlice({ namespace, body: want });
        } catch (err) {
          // Someone else's slice of the same name (or ours from a previous life of the Service): replace it next round.
          if (apiCode(err) === 409) throw new Error(`endpointslice ${namespace}/${want.metadata!.name} exists but is not in the list of ${key}'s slices`);
          throw err;
        }
        changed.push(`+${want.metadata!.name}`);
      } else if (sliceContent(have) !== sliceContent(want)) {
        await this.discovery.replaceNamespacedEndpointSlice({ name: want.metadata!.name!, namespace, body: { ...want, metadata: { ...want.metadata, resourceVersion: have.metadata!.resourceVersion! } } });
        changed.push(`~${want.metadata!.name}`);
      }
    }
    for (const s of existing) {
      if (desired.some((w) => w.metadata!.name === s.metadata?.name)) continue;
      try {
        await this.discovery.deleteNamespacedEndpointSlice({ name: s.metadata!.name!, namespace });
      } catch (err) {
        if (apiCode(err) !== 404) throw err;
      }
      changed.push(`-${s.metadata!.name}`);
    }
    if (changed.length) log('endpointslices changed', { service: key, slices: changed, endpoints: desired.reduce((n, s) => n + (s.endpoints?.length ?? 0), 0) });
  }
}

// Cluster objects → wire values (ARCHITECTURE §4). Pure functions; the encoders
// of clustermesh/wire.ts fix the JSON.
import type { IpEntryInput, NodeInput, ServiceValue, WireNamedPort, WirePort } from '../clustermesh/wire.ts';
import { isGlobalService, isSharedService, type Endpoint, type LocalBackend, type Node, type Pod, type Service } from '../model/index.ts';

export interface LocalCluster {
  name: string;
  id: number;
}

/** The node entry; Hostname addresses are not part of the wire format. */
export function nodeValue(cluster: LocalCluster, node: Node): NodeInput {
  const IPAddresses: NodeInput['IPAddresses'] = [];
  for (const a of node.status.addresses) {
    if (a.type === 'InternalIP' || a.type === 'ExternalIP') IPAddresses.push({ Type: a.type, IP: a.address });
  }
  return {
    Name: node.metadata.name,
    Cluster: cluster.name,
    ClusterID: cluster.id,
    IPAddresses,
    IPv4AllocCIDR: node.spec.podCIDR ?? null,
    Labels: { ...node.metadata.labels },
    // What a Cilium clustermesh-apiserver writes for nodes it exports.
    Source: 'custom-resource',
  };
}

/**
 * The ip/v1 entry of an endpoint: HostIP is the node the pod runs on (the
 * tunnel endpoint). With the Pod object, its named container ports and service
 * account go along (remote policies resolve named ports with them).
 */
export function ipEntryValue(ep: Endpoint, pod?: Pod): IpEntryInput {
  const NamedPorts: WireNamedPort[] = [];
  for (const c of pod?.spec.containers ?? []) {
    for (const p of c.ports) if (p.name) NamedPorts.push({ Name: p.name, Port: p.containerPort, Protocol: p.protocol });
  }
  NamedPorts.sort((a, b) => (a.Name < b.Name ? -1 : a.Name > b.Name ? 1 : a.Port - b.Port));
  return {
    IP: ep.status.networking.podIP,
    Mask: null,
    HostIP: ep.status.networking.nodeIP,
    ID: ep.status.identity.id,
    Key: 0,
    K8sNamespace: ep.metadata.namespace,
    K8sPodName: ep.metadata.name,
    ...(pod ? { K8sServiceAccount: pod.spec.serviceAccountName } : {}),
    NamedPorts,
  };
}

/**
 * The services/v1 value of a global service, or undefined when the service is
 * not exported: not global, or global but annotated `service.cilium.io/shared:
 * "false"` (as Cilium: its export is deleted, the other clusters' backends
 * still reach this cluster, its own stay local). `local` holds the backends
 * of each port (same index as svc.spec.ports, LocalBackendIndex.backends());
 * those that take new connections here are published (the wire format has no
 * conditions: what a remote cluster sees, it uses), so a remote cluster sends
 * to the backends this cluster's agents send to.
 */
/** `hostnames`: ip → hostname of local endpoints; only those of published backends are kept. */
export function serviceValue(cluster: LocalCluster, svc: Service, local: readonly (readonly LocalBackend[])[], hostnames: ReadonlyMap<string, string> = new Map()): ServiceValue | undefined {
  if (!isGlobalService(svc)) return undefined;
  if (!isSharedService(svc)) return undefined;
  const frontends: ServiceValue['frontends'] = {};
  const vip = svc.spec.clusterIP;
  if (vip && vip !== 'None') {
    const ports: Record<string, WirePort> = {};
    for (const p of svc.spec.ports) ports[p.name ?? ''] = { Protocol: p.protocol, Port: p.port };
    frontends[vip] = ports;
  }
  const backends: ServiceValue['backends'] = {};
  svc.spec.ports.forEach((sp, i) => {
    for (const b of local[i] ?? []) {
      if (b.ready) (backends[b.ip] ??= {})[sp.name ?? ''] = { Protocol: sp.protocol, Port: b.port };
    }
  });
  return {
    cluster: cluster.name,
    namespace: svc.metadata.namespace,
    name: svc.metadata.name,
    frontends,
    backends,
    hostnames: Object.fromEntries([...hostnames].filter(([ip]) => ip in backends)),
    labels: { ...svc.metadata.labels },
    selector: { ...(svc.spec.selector ?? {}) },
    includeExternal: true,
    shared: true,
    clusterID: cluster.id,
  };
}

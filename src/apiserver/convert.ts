// Cluster objects → wire values (ARCHITECTURE §4). Pure functions; the encoders
// of clustermesh/wire.ts fix the JSON.
import type { IpEntryValue, NodeValue, ServiceValue, WirePort } from '../clustermesh/wire.ts';
import {
  backendPods,
  isGlobalService,
  isSharedService,
  servicePortTarget,
  type Endpoint,
  type Node,
  type Pod,
  type Service,
} from '../model/index.ts';

export interface LocalCluster {
  name: string;
  id: number;
}

/** The node entry; Hostname addresses are not part of the wire format. */
export function nodeValue(cluster: LocalCluster, node: Node): NodeValue {
  const IPAddresses: NodeValue['IPAddresses'] = [];
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
  };
}

/** The ip/v1 entry of an endpoint: HostIP is the node the pod runs on (the tunnel endpoint). */
export function ipEntryValue(ep: Endpoint): IpEntryValue {
  return {
    IP: ep.status.networking.podIP,
    Mask: null,
    HostIP: ep.status.networking.nodeIP,
    ID: ep.status.identity.id,
    Key: 0,
    K8sNamespace: ep.metadata.namespace,
    K8sPodName: ep.metadata.name,
  };
}

/**
 * The services/v1 value of a global service, or undefined when the service is
 * not global. A service annotated `shared: "false"` is exported with no backends.
 */
export function serviceValue(cluster: LocalCluster, svc: Service, pods: Iterable<Pod>): ServiceValue | undefined {
  if (!isGlobalService(svc)) return undefined;
  const shared = isSharedService(svc);
  const frontends: ServiceValue['frontends'] = {};
  const vip = svc.spec.clusterIP;
  if (vip && vip !== 'None') {
    const ports: Record<string, WirePort> = {};
    for (const p of svc.spec.ports) ports[p.name ?? ''] = { Protocol: p.protocol, Port: p.port };
    frontends[vip] = ports;
  }
  const backends: ServiceValue['backends'] = {};
  if (shared) {
    for (const pod of backendPods(svc, pods)) {
      const ports: Record<string, WirePort> = {};
      for (const sp of svc.spec.ports) {
        const port = servicePortTarget(sp, pod);
        if (port !== undefined) ports[sp.name ?? ''] = { Protocol: sp.protocol, Port: port };
      }
      if (Object.keys(ports).length > 0) backends[pod.status.podIP!] = ports;
    }
  }
  return {
    cluster: cluster.name,
    namespace: svc.metadata.namespace,
    name: svc.metadata.name,
    frontends,
    backends,
    labels: { ...svc.metadata.labels },
    selector: { ...(svc.spec.selector ?? {}) },
    shared,
    includeExternal: true,
    clusterID: cluster.id,
  };
}

// Fixtures for the flow tests: an event through the codec and a fixed namer.
import { events as eventsMap, DropReason } from '../datapath/maps/index.ts';
import type { DatapathEvent } from '../datapath/maps/events.ts';
import type { FlowNamer } from './flows.ts';

export function event(o: Partial<Omit<DatapathEvent, 'reasonName'>> = {}): DatapathEvent {
  // Through the codec, as the ring buffer delivers it.
  return eventsMap.decode(
    eventsMap.encode({
      timestamp: 5_000_000_000n,
      type: 'drop',
      reason: DropReason.DROP_UNKNOWN_ENDPOINT,
      direction: 'ingress',
      srcIp: '10.101.1.11',
      dstIp: '10.102.1.99',
      srcIdentity: (1 << 16) | 256,
      dstIdentity: 0,
      ifindex: 4,
      targetIfindex: 0,
      tunnelEndpoint: '10.1.0.1',
      length: 84,
      protocol: 17,
      srcPort: 40000,
      dstPort: 53,
      ...o,
    }),
  );
}

export const FRONTEND = (1 << 16) | 256;
export const FRONTEND_LABELS = ['k8s:app=frontend', 'k8s:io.cilium.k8s.policy.cluster=c1', 'k8s:io.kubernetes.pod.namespace=default'];

export const namer: FlowNamer = {
  node: 'c2/node1',
  pod: (ip) =>
    ip === '10.101.1.11'
      ? { namespace: 'default', name: 'frontend', cluster: 'c1', node: 'c1/node1', identity: FRONTEND }
      : ip === '10.102.1.12'
        ? { namespace: 'shop', name: 'backend', cluster: 'c2', node: 'c2/node1', identity: (2 << 16) | 300 }
        : undefined,
  labels: (id) => (id === FRONTEND ? FRONTEND_LABELS : id === 0 ? ['reserved:unknown'] : []),
  clusterOfIdentity: (id) => (id >= 256 ? `c${id >> 16}` : null),
  nodeOfIP: (ip) => (ip === '10.1.0.1' ? 'c1/node1' : null),
};


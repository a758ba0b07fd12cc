import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Flow, FlowPeer } from '../agent/flows.ts';
import type { EndpointInfo, ServiceInfo } from '../agent/types.ts';
import type { StatusReport } from '../cli/status.ts';
import { buildTopology, EdgeBook } from './view.ts';

const peer = (ip: string, pod: string | null, cluster: string | null, port: number | null = null): FlowPeer => ({
  ip,
  port,
  identity: 70000,
  labels: pod ? ['k8s:app=x'] : ['reserved:world'],
  cluster,
  namespace: pod ? 'default' : null,
  pod: pod ? `default/${pod}` : null,
  node: pod && cluster ? `${cluster}/node1` : null,
});

function flow(o: Partial<Flow> & { source: FlowPeer; destination: FlowPeer }): Flow {
  return {
    time: '2026-01-01T00:00:00.000Z',
    node: 'c1/node1',
    verdict: 'FORWARDED',
    reason: 'TRACE_TO_OVERLAY',
    reasonCode: 0,
    description: 'to overlay',
    direction: 'egress',
    protocol: 'TCP',
    tcpFlags: ['SYN'],
    service: null,
    tunnelEndpoint: null,
    tunnelNode: null,
    policy: null,
    length: 60,
    ...o,
  };
}

test('EdgeBook: one edge per pair and verdict (drops per reason), counted, cross-cluster marked, addresses as their own ends', () => {
  const b = new EdgeBook();
  const a = peer('10.1.0.10', 'a', 'c1');
  const z = peer('10.2.0.10', 'z', 'c2', 80);
  b.add(flow({ source: a, destination: z }));
  b.add(flow({ source: a, destination: { ...z, port: 443 }, time: '2026-01-01T00:00:01.000Z', node: 'c2/node1', reason: 'TRACE_TO_ENDPOINT', service: { ip: '10.96.0.1', port: 443 } }));
  b.add(flow({ source: a, destination: z, verdict: 'DROPPED', reason: 'DROP_POLICY', description: 'not allowed by policy', policy: 'default deny: ingress of default/z is enforced and no allow entry matched' }));
  b.add(flow({ source: a, destination: z, verdict: 'DROPPED', reason: 'DROP_POLICY_DENY' }));
  b.add(flow({ source: a, destination: peer('10.9.9.9', null, null, 53), protocol: 'UDP', tcpFlags: null }));
  const edges = b.takeDirty();
  assert.deepEqual(
    edges.map((e) => [e.id, e.count, e.crossCluster]),
    [
      ['pod:c1/default/a>pod:c2/default/z>FORWARDED', 2, true],
      ['pod:c1/default/a>pod:c2/default/z>DROPPED>DROP_POLICY', 1, true],
      ['pod:c1/default/a>pod:c2/default/z>DROPPED>DROP_POLICY_DENY', 1, true],
      ['pod:c1/default/a>addr:10.9.9.9>FORWARDED', 1, false],
    ],
  );
  const fwd = edges[0]!;
  assert.deepEqual([fwd.ports, fwd.services, fwd.first, fwd.last, fwd.reason], [['TCP 80', 'TCP 443'], ['10.96.0.1:443'], '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:01.000Z', 'TRACE_TO_ENDPOINT']);
  assert.equal(edges[1]!.policy, 'default deny: ingress of default/z is enforced and no allow entry matched');
  assert.deepEqual(edges[3]!.target, { id: 'addr:10.9.9.9', label: '10.9.9.9 (reserved:world)', kind: 'address', cluster: null, node: null, ip: '10.9.9.9', labels: 'reserved:world' });
  assert.deepEqual(b.takeDirty(), [], 'nothing changed since');
  const fresh = b.takeFresh();
  assert.equal(fresh.length, 5);
  assert.equal(fresh[1]!.text, 'FORWARDED TRACE_TO_ENDPOINT c1:a -> c2:z:443 TCP via service 10.96.0.1:443 (c2/node1, egress)');
  assert.deepEqual(b.takeFresh(), []);
  assert.equal(b.recent(2).length, 2);
});

test('EdgeBook: past maxEdges the edge seen longest ago goes', () => {
  const b = new EdgeBook(2);
  const a = peer('10.1.0.10', 'a', 'c1');
  b.add(flow({ source: a, destination: peer('10.1.0.11', 'b', 'c1'), time: '2026-01-01T00:00:02.000Z' }));
  b.add(flow({ source: a, destination: peer('10.1.0.12', 'c', 'c1'), time: '2026-01-01T00:00:01.000Z' }));
  b.add(flow({ source: a, destination: peer('10.1.0.13', 'd', 'c1'), time: '2026-01-01T00:00:03.000Z' }));
  assert.deepEqual(b.all().map((e) => e.target.label), ['b', 'd']);
});

test('buildTopology: pods under their node, a service once per cluster with its backends as pods (any cluster) or addresses, not-ready reasons per cluster', () => {
  const ep = (name: string, ip: string): EndpointInfo => ({ namespace: 'default', podName: name, ip, identity: 70001, identityLabels: ['k8s:app=web', 'k8s:io.cilium.k8s.policy.cluster=c1'] }) as EndpointInfo;
  const svc: ServiceInfo = {
    namespace: 'default',
    name: 'web',
    global: true,
    shared: true,
    affinity: 'none' as ServiceInfo['affinity'],
    sessionAffinity: null,
    remoteClusters: ['c2'],
    frontends: [
      {
        vip: '10.96.1.10',
        port: 80,
        protocol: 'TCP',
        name: 'http',
        serviceId: 1,
        tier: 'all' as ServiceInfo['frontends'][number]['tier'],
        activeBackends: 2,
        backends: { c1: [{ ip: '10.1.0.10', port: 8080 }], c2: [{ ip: '10.2.0.10', port: 8080 }, { ip: '10.2.0.99', port: 8080 }] } as unknown as ServiceInfo['frontends'][number]['backends'],
      },
    ],
  };
  const report = {
    ready: false,
    notReady: ['c2: agent on c2/node1 is not reachable (ECONNREFUSED)', 'c1x: something else'],
    clusters: [
      { name: 'c1', id: 1, ready: true, nodeDetails: [{ name: 'c1/node1', ready: true, error: null }], remoteClusters: [{ name: 'c2', nodes: 2, configured: 2, connected: 2, ready: 1, reconnections: 3, lastError: { node: 'c1/node2', error: 'timeout', at: null } }] },
      { name: 'c2', id: 2, ready: false, nodeDetails: [{ name: 'c2/node1', ready: false, error: 'ECONNREFUSED' }], remoteClusters: [] },
    ],
  } as unknown as StatusReport;
  const t = buildTopology(report, [
    { key: 'c1/node1', name: 'node1', cluster: 'c1', endpoints: [ep('web-1', '10.1.0.10')], services: [svc], error: null },
    { key: 'c1/node2', name: 'node2', cluster: 'c1', endpoints: [], services: [svc], error: null },
    { key: 'c2/node1', name: 'node1', cluster: 'c2', endpoints: null, services: null, error: 'ECONNREFUSED' },
    { key: 'c2/node2', name: 'node2', cluster: 'c2', endpoints: [ep('web-2', '10.2.0.10')], services: [], error: null },
  ]);
  assert.deepEqual(t.pods.map((p) => [p.id, p.node, p.labels]), [['pod:c1/default/web-1', 'c1/node1', 'app=web'], ['pod:c2/default/web-2', 'c2/node2', 'app=web']]);
  assert.deepEqual(t.services, [{ id: 'svc:c1/default/web', cluster: 'c1', namespace: 'default', name: 'web', global: true, frontends: ['10.96.1.10:80/TCP'], backends: ['10.2.0.99:8080', 'pod:c1/default/web-1', 'pod:c2/default/web-2'] }]);
  assert.deepEqual(t.nodes.map((n) => [n.key, n.reachable, n.ready]), [['c1/node1', true, true], ['c1/node2', true, false], ['c2/node1', false, false], ['c2/node2', true, false]]);
  assert.deepEqual(t.clusters[0]!.remotes, [{ name: 'c2', nodes: 2, configured: 2, connected: 2, ready: 1, reconnections: 3, lastError: 'timeout' }]);
  assert.deepEqual(t.clusters.map((c) => c.notReady), [[], ['agent on c2/node1 is not reachable (ECONNREFUSED)']]);
});

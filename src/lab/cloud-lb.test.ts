// The lab's cloud load balancer, its pure part: which address a LoadBalancer
// Service gets and which node it goes on.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { V1EndpointSlice, V1Service } from '@kubernetes/client-node';
import { labLbPool, planLoadBalancer } from './cloud-lb.ts';

const pool = labLbPool(3);
const nodeIPs = new Map([
  ['node1', '10.3.0.1'],
  ['node2', '10.3.0.2'],
]);
const svc = (o: { had?: string; asked?: string } = {}): V1Service => ({
  spec: { type: 'LoadBalancer', ...(o.asked ? { loadBalancerIP: o.asked } : {}) },
  ...(o.had ? { status: { loadBalancer: { ingress: [{ ip: o.had }] } } } : {}),
});
const slice = (...eps: Array<[string, string, boolean?]>): V1EndpointSlice => ({
  addressType: 'IPv4',
  endpoints: eps.map(([ip, nodeName, ready]) => ({ addresses: [ip], nodeName, conditions: { ready: ready ?? true } })),
});

test('the pool of a lab cluster is on its underlay, after the nodes and before the router', () => {
  assert.equal(pool[0], '10.3.0.200');
  assert.equal(pool.at(-1), '10.3.0.249');
});

test('an address: the one it has, else the one asked for when free, else the first free', () => {
  assert.equal(planLoadBalancer(svc({ had: '10.3.0.207' }), [], nodeIPs, pool, new Set(['10.3.0.200']), undefined).vip, '10.3.0.207');
  assert.equal(planLoadBalancer(svc({ asked: '10.3.0.210' }), [], nodeIPs, pool, new Set(), undefined).vip, '10.3.0.210');
  assert.equal(planLoadBalancer(svc({ asked: '10.3.0.210' }), [], nodeIPs, pool, new Set(['10.3.0.210']), undefined).vip, '10.3.0.200');
  assert.equal(planLoadBalancer(svc({ asked: '192.0.2.1' }), [], nodeIPs, pool, new Set(['10.3.0.200']), undefined).vip, '10.3.0.201');
  const full = planLoadBalancer(svc(), [], nodeIPs, pool, new Set(pool), undefined);
  assert.equal(full.vip, undefined);
  assert.match(full.problem ?? '', /exhausted/);
});

test('a node: one with a ready host-network backend, staying where it is while that holds', () => {
  const both = [slice(['10.3.0.2', 'node2'], ['10.3.0.1', 'node1'])];
  assert.equal(planLoadBalancer(svc(), both, nodeIPs, pool, new Set(), undefined).node, 'node1', 'first by name');
  assert.equal(planLoadBalancer(svc(), both, nodeIPs, pool, new Set(), 'node2').node, 'node2', 'no move while node2 still qualifies');
  const moved = [slice(['10.3.0.2', 'node2', false], ['10.3.0.1', 'node1'])];
  assert.equal(planLoadBalancer(svc(), moved, nodeIPs, pool, new Set(), 'node2').node, 'node1', 'moves off a node whose backend is not ready');
});

test('backends on the pod network, or none ready: an address, no node, and the reason', () => {
  const pods = planLoadBalancer(svc(), [slice(['10.103.1.10', 'node1'])], nodeIPs, pool, new Set(), undefined);
  assert.equal(pods.vip, '10.3.0.200');
  assert.equal(pods.node, undefined);
  assert.match(pods.problem ?? '', /pod network; the lab's load balancer reaches host-network backends only/);
  const none = planLoadBalancer(svc(), [slice(['10.3.0.1', 'node1', false])], nodeIPs, pool, new Set(), undefined);
  assert.equal(none.node, undefined);
  assert.equal(none.problem, 'no ready backend');
});

test("the Service's ports, translated to the backend's port of the same name", () => {
  const s: V1Service = { spec: { type: 'LoadBalancer', ports: [{ name: 'etcd', port: 2379, targetPort: 'etcd' as unknown as number }, { name: 'x', port: 80, protocol: 'UDP', targetPort: 8080 }, { name: 's', port: 9, protocol: 'SCTP' }] } };
  const sl: V1EndpointSlice = { addressType: 'IPv4', ports: [{ name: 'etcd', port: 2391, protocol: 'TCP' }], endpoints: [{ addresses: ['10.3.0.1'], nodeName: 'node1' }] };
  assert.deepEqual(planLoadBalancer(s, [sl], nodeIPs, pool, new Set(), undefined).ports, [
    { protocol: 'TCP', port: 2379, target: 2391 },
    { protocol: 'UDP', port: 80, target: 8080 },
  ]);
});

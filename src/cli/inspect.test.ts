import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backends as backendsMap, backendSlots, ipcache as ipcacheMap, lbHint, revnat as revnatMap, services as servicesMap } from '../datapath/maps/index.ts';
import { emptyDirectory, shortLabels, type Directory } from './directory.ts';
import { ctRows, formatRows, ipcacheRows, policyRows, portRange, serviceRows } from './inspect.ts';

function dir(): Directory {
  const d = emptyDirectory();
  d.clusterById.set(1, 'c1');
  d.clusterById.set(2, 'c2');
  d.identities.set((2 << 16) | 256, ['k8s:app=backend', 'k8s:io.cilium.k8s.policy.cluster=c2', 'k8s:io.cilium.k8s.policy.serviceaccount=default', 'k8s:io.kubernetes.pod.namespace=default']);
  d.pods.set('10.102.1.11', { namespace: 'default', pod: 'backend-1', cluster: 'c2', node: 'c2/node1', identity: (2 << 16) | 256 });
  d.nodesByIP.set('10.2.0.1', 'c2/node1');
  return d;
}

const backend = (ip: string, clusterId: number, o: Partial<backendsMap.Value> = {}): backendsMap.Value => ({ ip, port: 8080, clusterId, terminating: false, clusterGone: false, notReady: false, ...o });

test('ipcache rows: labels, cluster of the identity, pod, tunnel node; reserved identities by name; sorted by address', () => {
  const rows = ipcacheRows(
    [
      [ipcacheMap.parsePrefix('10.102.1.11/32'), { identity: (2 << 16) | 256, tunnelEndpoint: '10.2.0.1', flags: 0 }],
      [ipcacheMap.parsePrefix('10.102.1.0/24'), { identity: 2, tunnelEndpoint: '10.2.0.1', flags: 0 }],
      [ipcacheMap.parsePrefix('10.2.0.1/32'), { identity: 6, tunnelEndpoint: null, flags: 0 }],
    ],
    dir(),
  );
  assert.deepEqual(rows.map((r) => r.prefix), ['10.2.0.1/32', '10.102.1.0/24', '10.102.1.11/32']);
  const pod = rows[2]!;
  assert.equal(pod.cluster, 'c2');
  assert.equal(pod.pod, 'default/backend-1');
  assert.equal(pod.tunnelNode, 'c2/node1');
  assert.deepEqual(rows[0]!.labels, ['reserved:remote-node']);
  assert.equal(rows[1]!.cluster, null);
  assert.equal(rows[1]!.pod, null, 'a /24 is no pod');
  const text = formatRows('ipcache', rows, dir());
  assert.match(text, /10\.102\.1\.11\/32 +131328 \(app=backend,ns=default\) +c2 +default\/backend-1 +10\.2\.0\.1 \(c2\/node1\)/);
});

test('service rows: backends per cluster, active only when selectable and not flagged, stale slots and missing revnat shown', () => {
  const rows = serviceRows(
    {
      services: [[{ vip: '10.96.0.20', port: 80, protocol: 'TCP' }, { serviceId: 7, revnatId: 7, backendCount: 2, sessionAffinity: false, affinityTimeout: 0, maglev: false }]],
      backends: new Map([
        [1, backend('10.101.1.11', 1)],
        [2, backend('10.102.1.11', 2)],
        [3, backend('10.102.1.12', 2, { terminating: true })],
      ]),
      slots: [
        [{ serviceId: 7, slot: 0 }, 1],
        [{ serviceId: 7, slot: 1 }, 2],
        [{ serviceId: 7, slot: 2 }, 3],
        [{ serviceId: 8, slot: 0 }, 1],
      ],
      maglev: new Map(),
      revnat: new Map<number, revnatMap.Value>(),
    },
    dir(),
  );
  assert.equal(rows.length, 1);
  const s = rows[0]!;
  assert.equal(s.frontend, '10.96.0.20:80/TCP');
  assert.equal(s.revnat, null);
  assert.deepEqual(s.backends.map((b) => [b.address, b.cluster, b.active, b.flags]), [
    ['10.101.1.11:8080', 'c1', true, []],
    ['10.102.1.11:8080', 'c2', true, []],
    ['10.102.1.12:8080', 'c2', false, ['terminating']],
  ]);
  assert.deepEqual(s.byCluster, { c1: { active: 1, total: 1 }, c2: { active: 1, total: 2 } });
  assert.equal(s.backends[1]!.pod, 'default/backend-1');
  assert.match(formatRows('services', rows, dir()), /revnat 7 -> MISSING/);
});

test('service rows: a VIP or a backend without its cm_lb_hint bit is flagged; a hint not valid flags nothing', () => {
  const maps = (hint?: Buffer) => ({
    services: [[{ vip: '10.96.0.20', port: 80, protocol: 'TCP' as const }, { serviceId: 7, revnatId: 7, backendCount: 2, sessionAffinity: false, affinityTimeout: 0, maglev: false }]] as Array<[servicesMap.Key, servicesMap.Value]>,
    backends: new Map([
      [1, backend('10.101.1.11', 1)],
      [2, backend('10.102.1.11', 2)],
    ]),
    slots: [[{ serviceId: 7, slot: 0 }, 1], [{ serviceId: 7, slot: 1 }, 2]] as Array<[backendSlots.Key, number]>,
    maglev: new Map(),
    revnat: new Map([[7, { vip: '10.96.0.20', port: 80 }]]),
    ...(hint ? { hint } : {}),
  });
  const whole = serviceRows(maps(lbHint.encode({ vips: ['10.96.0.20'], backends: ['10.101.1.11', '10.102.1.11'] })), dir())[0]!;
  assert.equal(whole.vipHinted, true);
  assert.deepEqual(whole.backends.map((b) => b.flags), [[], []]);
  assert.doesNotMatch(formatRows('services', [whole], dir()), /HINT/);
  const lacking = serviceRows(maps(lbHint.encode({ vips: [], backends: ['10.101.1.11'] })), dir())[0]!;
  assert.equal(lacking.vipHinted, false);
  assert.deepEqual(lacking.backends.map((b) => [b.address, b.active, b.flags]), [
    ['10.101.1.11:8080', true, []],
    ['10.102.1.11:8080', true, ['no-hint-bit']],
  ]);
  assert.match(formatRows('services', [lacking], dir()), /revnat 7 -> 10\.96\.0\.20:80  NO HINT BIT[^\n]*\n[^]*10\.102\.1\.11:8080 .*\[no-hint-bit\]/);
  const notValid = Buffer.alloc(lbHint.VALUE_SIZE);
  for (const h of [notValid, undefined]) {
    const r = serviceRows(maps(h), dir())[0]!;
    assert.equal(r.vipHinted, true);
    assert.deepEqual(r.backends.map((b) => b.flags), [[], []]);
  }
});

test('service rows: a Maglev frontend selects the distinct backends of its table; a flagged one is inactive', () => {
  const table = new Uint32Array(1021).map((_, i) => (i % 2 ? 1 : 2));
  const rows = serviceRows(
    {
      services: [[{ vip: '10.96.0.21', port: 53, protocol: 'UDP' }, { serviceId: 9, revnatId: 9, backendCount: 2, sessionAffinity: true, affinityTimeout: 30, maglev: true }]],
      backends: new Map([
        [1, backend('10.101.1.11', 1)],
        [2, backend('10.102.1.11', 2, { clusterGone: true })],
      ]),
      slots: [],
      maglev: new Map([[9, table]]),
      revnat: new Map([[9, { vip: '10.96.0.21', port: 53 }]]),
    },
    dir(),
  );
  assert.equal(rows[0]!.mode, 'maglev');
  assert.equal(rows[0]!.revnat, '10.96.0.21:53');
  assert.deepEqual(rows[0]!.backends.map((b) => [b.id, b.active]).sort(), [[1, true], [2, false]]);
});

test('policy rows: port prefixes become ranges, any identity and any port spelled out, verdicts, enforced endpoints', () => {
  assert.equal(portRange(80, 16), '80');
  assert.equal(portRange(8080, 13), '8080-8087');
  assert.equal(portRange(0, 0), 'any');
  const { rules, enforced } = policyRows(
    [
      [{ endpointId: 3, direction: 'ingress', protocol: 6, identity: (2 << 16) | 256, port: 8080, portPrefixLen: 16 }, { allow: true, deny: false }],
      [{ endpointId: 3, direction: 'ingress', protocol: 0, identity: 0, port: 0, portPrefixLen: 0 }, { allow: false, deny: true }],
    ],
    [
      [{ endpointId: 3 }, { active: true, ingress: true, egress: false }],
      [{ endpointId: 4 }, { active: false, ingress: false, egress: false }],
    ],
    new Map([[3, 'default/frontend']]),
    dir(),
  );
  assert.deepEqual(rules.map((r) => [r.pod, r.direction, r.identity, r.protocol, r.ports, r.verdict]), [
    ['default/frontend', 'ingress', 0, 'any', 'any', 'deny'],
    ['default/frontend', 'ingress', (2 << 16) | 256, 'TCP', '8080', 'allow'],
  ]);
  assert.ok(rules[1]!.labels.includes('k8s:app=backend'));
  assert.deepEqual(enforced, [{ endpointId: 3, pod: 'default/frontend', ingress: true, egress: false }]);
  assert.match(formatRows('policy', { rules, enforced }, dir()), /enforced: default\/frontend \(ingress\)/);
});

test('ct rows: backend address and its cluster, revnat, seconds to expiry', () => {
  const rows = ctRows(
    [[{ src: '10.101.1.11', dst: '10.96.0.20', sport: 40000, dport: 80, protocol: 'TCP', dir: 'service' }, { backendId: 2, revnatId: 7, lifetime: 1100, closing: false, hairpin: false }]],
    new Map([[2, backend('10.102.1.11', 2)]]),
    new Map([[7, { vip: '10.96.0.20', port: 80 }]]),
    dir(),
    1000,
  );
  assert.deepEqual(rows[0], {
    dir: 'service',
    protocol: 'TCP',
    src: '10.101.1.11:40000',
    dst: '10.96.0.20:80',
    srcPod: null,
    backend: '10.102.1.11:8080',
    backendCluster: 'c2',
    revnat: '10.96.0.20:80',
    expiresIn: 100,
    closing: false,
    hairpin: false,
  });
});

test('short labels drop the source, the cluster label and a default service account', () => {
  assert.equal(shortLabels(['k8s:app=x', 'k8s:io.cilium.k8s.policy.cluster=c1', 'k8s:io.cilium.k8s.policy.serviceaccount=default', 'k8s:io.kubernetes.pod.namespace=prod']), 'app=x,ns=prod');
  assert.equal(shortLabels(['reserved:world']), 'reserved:world');
});

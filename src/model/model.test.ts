import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ModelError,
  ReservedIdentity,
  clusterIdOfIdentity,
  identityRange,
  isGlobalService,
  isIdentityInClusterRange,
  isPodReady,
  isSharedService,
  nodeInternalIP,
  parseAnyObject,
  parseObject,
  validateClusterId,
  validateClusterName,
} from './index.ts';

const pod = {
  kind: 'Pod',
  metadata: { name: 'web-1', namespace: 'default', labels: { app: 'web', 'app.kubernetes.io/name': 'web' } },
  spec: { nodeName: 'node1', containers: [{ name: 'c', ports: [{ name: 'http', containerPort: 8080 }] }] },
  status: { phase: 'Running', podIP: '10.101.1.5', conditions: [{ type: 'Ready', status: 'True' }] },
};

test('pod parses with defaults', () => {
  const p = parseObject('Pod', pod);
  assert.equal(p.spec.serviceAccountName, 'default');
  assert.equal(p.spec.containers[0]?.ports[0]?.protocol, 'TCP');
  assert.deepEqual(p.metadata.annotations, {});
  assert.equal(isPodReady(p), true);
  assert.equal(isPodReady(parseObject('Pod', { ...pod, status: { podIP: '10.101.1.5' } })), false);
});

test('errors name the object and the field', () => {
  const bad = { ...pod, status: { ...pod.status, podIP: '10.1.2' } };
  assert.throws(
    () => parseObject('Pod', bad, 'pods.yaml'),
    (e: unknown) => e instanceof ModelError && /^pods\.yaml: Pod default\/web-1: status\.podIP: /.test(e.message),
  );
  const badPort = {
    kind: 'Service',
    metadata: { name: 'echo', namespace: 'default' },
    spec: { ports: [{ name: 'a', port: 70000 }, { port: 80 }] },
  };
  assert.throws(
    () => parseObject('Service', badPort),
    (e: unknown) =>
      e instanceof ModelError &&
      e.message.includes('Service default/echo') &&
      e.issues.some((i) => i.path === 'spec.ports[0].port') &&
      e.issues.some((i) => i.path === 'spec.ports[1].name'),
  );
  assert.throws(() => parseObject('Pod', { ...pod, metadata: { ...pod.metadata, labels: { 'a;b': 'x' } } }), /metadata\.labels/);
  assert.throws(() => parseObject('Pod', { ...pod, metadata: { ...pod.metadata, labels: { a: 'x;y' } } }), /metadata\.labels\.a/);
  assert.throws(() => parseAnyObject({ kind: 'Deployment', metadata: { name: 'x' } }), /Deployment x: kind/);
});

test('service: targetPort number or name, protocols, global/shared annotations', () => {
  const svc = parseObject('Service', {
    kind: 'Service',
    metadata: { name: 'echo', namespace: 'default', annotations: { 'service.cilium.io/global': 'true', 'service.cilium.io/shared': 'false' } },
    spec: {
      clusterIP: '10.96.0.10',
      selector: { app: 'echo' },
      ports: [
        { name: 'http', port: 80, targetPort: 'http' },
        { name: 'dns', port: 53, targetPort: 5353, protocol: 'UDP' },
      ],
    },
  });
  assert.equal(svc.spec.sessionAffinity, 'None');
  assert.equal(svc.spec.ports[0]?.protocol, 'TCP');
  assert.equal(isGlobalService(svc), true);
  assert.equal(isSharedService(svc), false);
  const legacy = parseObject('Service', {
    kind: 'Service',
    metadata: { name: 'x', namespace: 'default', annotations: { 'io.cilium/global-service': 'true' } },
    spec: { ports: [{ port: 80, protocol: 'SCTP' }] },
  });
  assert.equal(isGlobalService(legacy), true);
  assert.equal(isSharedService(legacy), true);
  assert.throws(() => parseObject('Service', { kind: 'Service', metadata: { name: 'x', namespace: 'd' }, spec: { ports: [{ port: 1, protocol: 'ICMP' }] } }), /spec\.ports\[0\]\.protocol/);
});

test('node, namespace, endpoint, policies', () => {
  const n = parseObject('Node', {
    kind: 'Node',
    metadata: { name: 'node1' },
    spec: { podCIDR: '10.101.1.0/24' },
    status: { addresses: [{ type: 'Hostname', address: 'node1' }, { type: 'InternalIP', address: '10.1.0.1' }] },
  });
  assert.equal(nodeInternalIP(n), '10.1.0.1');
  assert.throws(() => parseObject('Node', { kind: 'Node', metadata: { name: 'n' }, status: { addresses: [{ type: 'InternalIP', address: 'x' }] } }), /status\.addresses\[0\]\.address/);
  assert.throws(() => parseObject('Node', { kind: 'Node', metadata: { name: 'n' }, spec: { podCIDR: '10.0.0.0/33' } }), /spec\.podCIDR/);
  assert.throws(() => parseObject('Namespace', { kind: 'Namespace', metadata: { name: 'Bad_NS' } }), /metadata\.name/);
  const ep = parseObject('Endpoint', {
    kind: 'Endpoint',
    metadata: { name: 'web-1', namespace: 'default', labels: { app: 'web' } },
    status: { identity: { id: 65536 + 300 }, networking: { podIP: '10.101.1.5', nodeName: 'node1', nodeIP: '10.1.0.1' } },
  });
  assert.deepEqual(ep.status.identity.labels, []);
  assert.throws(() => parseObject('Endpoint', { ...ep, status: { ...ep.status, identity: { id: 2 ** 24 } } }), /status\.identity\.id/);
  const np = parseObject('NetworkPolicy', { kind: 'NetworkPolicy', metadata: { name: 'p', namespace: 'default' }, spec: { podSelector: {} } });
  assert.deepEqual(np.spec, { podSelector: {} });
  assert.throws(() => parseObject('CiliumNetworkPolicy', { kind: 'CiliumNetworkPolicy', metadata: { name: 'p' } }), /metadata\.namespace/);
});

test('cluster names', () => {
  for (const ok of ['c1', 'cluster-1', 'a', 'x'.repeat(32), '1abc'])
    assert.equal(validateClusterName(ok), undefined, ok);
  for (const bad of ['', 'x'.repeat(33), 'C1', '-a', 'a-', 'a_b', 'a.b'])
    assert.match(validateClusterName(bad) ?? '', /cluster name/, bad);
});

test('cluster ID ranges for 255 and 511 clusters', () => {
  assert.deepEqual(identityRange(1, 255), { first: 65536, last: 131071 });
  assert.deepEqual(identityRange(255, 255), { first: 255 << 16, last: 0xffffff });
  assert.deepEqual(identityRange(0, 255), { first: 256, last: 65535 });
  assert.deepEqual(identityRange(1, 511), { first: 32768, last: 65535 });
  assert.deepEqual(identityRange(511, 511), { first: 511 << 15, last: 0xffffff });
  assert.deepEqual(identityRange(0, 511), { first: 256, last: 32767 });
  assert.throws(() => identityRange(256, 255), /out of range/);
  assert.equal(validateClusterId(511, 511), undefined);
  assert.match(validateClusterId(-1) ?? '', /out of range/);
  assert.equal(clusterIdOfIdentity(65536 * 3 + 5, 255), 3);
  assert.equal(clusterIdOfIdentity(32768 * 3 + 5, 511), 3);
  assert.equal(isIdentityInClusterRange(65536 + 10, 1, 255), true);
  assert.equal(isIdentityInClusterRange(65536 + 10, 2, 255), false);
  assert.equal(isIdentityInClusterRange(100, 0, 255), false);
});

test('reserved identities', () => {
  assert.deepEqual(Object.values(ReservedIdentity), [0, 1, 2, 3, 4, 5, 6, 7, 8]);
  assert.equal(ReservedIdentity.ingress, 8);
  assert.equal(ReservedIdentity.remoteNode, 6);
});

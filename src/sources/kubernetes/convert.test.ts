import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sliceBackends, type EndpointSlice } from '../../model/index.ts';
import { fromKubernetes, rawRef, LAST_APPLIED_ANNOTATION } from './convert.ts';

const object = <T>(c: { object: T } | { skip: string }): T => {
  if ('skip' in c) throw new Error(`skipped: ${c.skip}`);
  return c.object;
};

test('Pod: the fields the mesh reads; IPv4 from podIPs; list items without kind convert', () => {
  const pod = object(
    fromKubernetes('Pod', {
      metadata: { name: 'web-1', namespace: 'default', labels: { app: 'web' }, uid: 'u1', resourceVersion: '42', managedFields: [{ manager: 'kubectl' }], creationTimestamp: '2026-01-01T00:00:00Z' },
      spec: { nodeName: 'node1', serviceAccountName: 'web', containers: [{ name: 'c', image: 'nginx', ports: [{ name: 'http', containerPort: 80 }], resources: {} }], dnsPolicy: 'ClusterFirst' },
      status: { phase: 'Running', podIP: 'fd00::5', podIPs: [{ ip: 'fd00::5' }, { ip: '10.101.1.5' }], conditions: [{ type: 'Ready', status: 'True', lastTransitionTime: null }], containerStatuses: [{ restartCount: 3 }] },
    }),
  );
  assert.deepEqual(pod, {
    kind: 'Pod',
    apiVersion: 'v1',
    metadata: { name: 'web-1', namespace: 'default', labels: { app: 'web' }, annotations: {}, uid: 'u1' },
    spec: { nodeName: 'node1', serviceAccountName: 'web', containers: [{ name: 'c', image: 'nginx', ports: [{ name: 'http', containerPort: 80, protocol: 'TCP' }] }] },
    status: { phase: 'Running', podIP: '10.101.1.5', conditions: [{ type: 'Ready', status: 'True' }] },
  });
  // A pending pod: no IP, no node, no status at all.
  const pending = object(fromKubernetes('Pod', { metadata: { name: 'p', namespace: 'd' }, spec: { containers: [{ name: 'c' }] } }));
  assert.equal(pending.status.phase, 'Pending');
  assert.equal(pending.status.podIP, undefined);
  assert.equal(pending.spec.nodeName, undefined);
});

test('Service: dual-stack picks the IPv4 cluster IP; ExternalName and IPv6-only are skipped; bad ports throw naming the field', () => {
  const svc = object(
    fromKubernetes('Service', {
      metadata: { name: 'echo', namespace: 'default', annotations: { [LAST_APPLIED_ANNOTATION]: '{"big":"json"}', 'service.cilium.io/global': 'true' } },
      spec: { type: 'ClusterIP', clusterIP: 'fd00::10', clusterIPs: ['fd00::10', '10.96.0.10'], ports: [{ name: '', port: 80, targetPort: 8080, protocol: 'TCP' }], selector: { app: 'echo' }, ipFamilies: ['IPv6', 'IPv4'] },
    }),
  );
  assert.equal(svc.spec.clusterIP, '10.96.0.10');
  assert.deepEqual(svc.spec.ports, [{ port: 80, targetPort: 8080, protocol: 'TCP' }]);
  assert.deepEqual(svc.metadata.annotations, { 'service.cilium.io/global': 'true' }, 'the last-applied annotation is not carried');
  const headless = object(fromKubernetes('Service', { metadata: { name: 'h', namespace: 'd' }, spec: { clusterIP: 'None', ports: [{ port: 53, protocol: 'UDP', targetPort: 'dns' }] } }));
  assert.equal(headless.spec.clusterIP, 'None');
  assert.equal(headless.spec.ports[0]!.targetPort, 'dns');
  const noSelector = object(fromKubernetes('Service', { metadata: { name: 'ns', namespace: 'd' }, spec: { clusterIP: '10.96.0.11', ports: [{ port: 80 }] } }));
  assert.equal(noSelector.spec.selector, undefined);
  assert.match((fromKubernetes('Service', { metadata: { name: 'x', namespace: 'd' }, spec: { type: 'ExternalName', externalName: 'example.com' } }) as { skip: string }).skip, /ExternalName/);
  assert.match((fromKubernetes('Service', { metadata: { name: 'x', namespace: 'd' }, spec: { clusterIP: 'fd00::1', clusterIPs: ['fd00::1'] } }) as { skip: string }).skip, /no IPv4 cluster IP/);
  assert.throws(() => fromKubernetes('Service', { metadata: { name: 'bad', namespace: 'd' }, spec: { clusterIP: '10.96.0.12', ports: [{ port: 70000 }] } }), /^ModelError: Service d\/bad: spec\.ports\[0\]\.port: /);
});

test('EndpointSlice: addresses, conditions, node, targetRef, ports; IPv6 slices skipped; null lists are empty', () => {
  const slice = object(
    fromKubernetes('EndpointSlice', {
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: { name: 'echo-abc', namespace: 'default', labels: { 'kubernetes.io/service-name': 'echo', 'endpointslice.kubernetes.io/managed-by': 'x' } },
      addressType: 'IPv4',
      endpoints: [
        { addresses: ['10.101.1.5'], conditions: { ready: true, serving: true, terminating: false }, nodeName: 'node1', targetRef: { kind: 'Pod', namespace: 'default', name: 'echo-1', uid: 'u1', resourceVersion: '9' } },
        { addresses: ['10.101.2.5'], conditions: { ready: false, serving: true, terminating: true }, nodeName: 'node2' },
        { addresses: ['10.101.3.5'], conditions: {} },
      ],
      ports: [{ name: 'http', port: 8080, protocol: 'TCP', appProtocol: 'http' }],
    }),
  );
  assert.deepEqual(slice.endpoints[0], { addresses: ['10.101.1.5'], conditions: { ready: true, serving: true, terminating: false }, nodeName: 'node1', targetRef: { kind: 'Pod', namespace: 'default', name: 'echo-1', uid: 'u1' } });
  const backends = sliceBackends([slice], 'http');
  assert.deepEqual(
    backends.map((b) => [b.ip, b.port, b.ready, b.serving, b.terminating]),
    [
      ['10.101.1.5', 8080, true, true, false],
      ['10.101.2.5', 8080, false, true, true],
      ['10.101.3.5', 8080, true, true, false], // absent conditions: ready, serving, not terminating
    ],
  );
  assert.deepEqual(sliceBackends([slice], ''), [], 'another port name maps nothing');
  const empty = object(fromKubernetes('EndpointSlice', { metadata: { name: 'e', namespace: 'd' }, addressType: 'IPv4', endpoints: null, ports: null }));
  assert.deepEqual([empty.endpoints, empty.ports], [[], []]);
  assert.match((fromKubernetes('EndpointSlice', { metadata: { name: 'v6', namespace: 'd' }, addressType: 'IPv6', endpoints: [] }) as { skip: string }).skip, /IPv6/);
  assert.throws(() => fromKubernetes('EndpointSlice', { metadata: { name: 'b', namespace: 'd' }, addressType: 'IPv4', endpoints: [{ addresses: ['not-an-ip'] }] }), /endpoints\[0\]\.addresses\[0\]/);
});

test('sliceBackends: several slices of one service, duplicates once', () => {
  const mk = (name: string, ips: string[]): EndpointSlice =>
    object(fromKubernetes('EndpointSlice', { metadata: { name, namespace: 'd' }, addressType: 'IPv4', endpoints: ips.map((ip) => ({ addresses: [ip] })), ports: [{ port: 80 }] }));
  assert.deepEqual(sliceBackends([mk('a', ['10.0.0.1', '10.0.0.2']), mk('b', ['10.0.0.2', '10.0.0.3'])], '').map((b) => b.ip), ['10.0.0.1', '10.0.0.2', '10.0.0.3']);
});

test('Node: IPv4 pod CIDRs from podCIDRs (else podCIDR); IPv4 InternalIP; IPv6 and DNS addresses left out', () => {
  const n = object(
    fromKubernetes('Node', {
      metadata: { name: 'node1', labels: { 'kubernetes.io/hostname': 'node1' } },
      spec: { podCIDR: 'fd00:1::/64', podCIDRs: ['fd00:1::/64', '10.101.1.0/24'], providerID: 'x' },
      status: { addresses: [{ type: 'InternalIP', address: 'fd00::1' }, { type: 'InternalIP', address: '10.1.0.1' }, { type: 'InternalDNS', address: 'node1.internal' }, { type: 'Hostname', address: 'node1' }], capacity: { cpu: '2' } },
    }),
  );
  assert.deepEqual(n.spec, { podCIDR: '10.101.1.0/24', podCIDRs: ['10.101.1.0/24'] });
  assert.deepEqual(n.status.addresses, [{ type: 'InternalIP', address: '10.1.0.1' }, { type: 'Hostname', address: 'node1' }]);
  const old = object(fromKubernetes('Node', { metadata: { name: 'n2' }, spec: { podCIDR: '10.101.2.0/24' } }));
  assert.deepEqual(old.spec, { podCIDR: '10.101.2.0/24', podCIDRs: ['10.101.2.0/24'] });
  const none = object(fromKubernetes('Node', { metadata: { name: 'n3' } }));
  assert.deepEqual([none.spec, none.status.addresses], [{}, []]);
});

test('Namespace, NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy', () => {
  const ns = object(fromKubernetes('Namespace', { metadata: { name: 'prod', labels: { team: 'a' } }, spec: { finalizers: ['kubernetes'] }, status: { phase: 'Active' } }));
  assert.deepEqual(ns, { kind: 'Namespace', apiVersion: 'v1', metadata: { name: 'prod', labels: { team: 'a' }, annotations: {} } });
  const np = object(fromKubernetes('NetworkPolicy', { metadata: { name: 'p', namespace: 'prod' }, spec: { podSelector: {}, policyTypes: ['Ingress'] } }));
  assert.deepEqual(np.spec, { podSelector: {}, policyTypes: ['Ingress'] });
  assert.equal(np.apiVersion, 'networking.k8s.io/v1');
  const cnp = object(fromKubernetes('CiliumNetworkPolicy', { metadata: { name: 'c', namespace: 'prod' }, spec: { endpointSelector: {} }, status: { derivativePolicies: {} } }));
  assert.deepEqual([cnp.apiVersion, cnp.spec, cnp.specs], ['cilium.io/v2', { endpointSelector: {} }, undefined]);
  const ccnp = object(fromKubernetes('CiliumClusterwideNetworkPolicy', { metadata: { name: 'cw' }, specs: [{ nodeSelector: {} }] }));
  assert.deepEqual([ccnp.kind, ccnp.metadata.namespace, ccnp.specs], ['CiliumClusterwideNetworkPolicy', undefined, [{ nodeSelector: {} }]]);
  assert.throws(() => fromKubernetes('Namespace', { metadata: { name: 'Bad_NS' } }), /^ModelError: Namespace Bad_NS: metadata\.name/);
});

test('rawRef: namespace/name, cluster-scoped name, nothing without a name', () => {
  assert.deepEqual(rawRef('Pod', { metadata: { name: 'a', namespace: 'b' } }), { namespace: 'b', name: 'a' });
  assert.deepEqual(rawRef('Node', { metadata: { name: 'n', namespace: 'ignored' } }), { name: 'n' });
  assert.equal(rawRef('Pod', { metadata: { name: 'a' } }), undefined);
  assert.equal(rawRef('Pod', null), undefined);
});

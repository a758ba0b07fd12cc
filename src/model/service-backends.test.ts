import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { applyEndpointConditions, endpointSliceBackends, selectorBackends } from './service-backends.ts';
import { parseObject, type EndpointConditions, type EndpointSlice, type Service } from './index.ts';

function service(o: { selector?: Record<string, string>; ports?: unknown[] } = {}): Service {
  return parseObject('Service', {
    kind: 'Service',
    metadata: { name: 'web', namespace: 'default' },
    spec: {
      clusterIP: '10.96.0.10',
      ...(o.selector ? { selector: o.selector } : {}),
      ports: o.ports ?? [
        { name: 'http', port: 80, targetPort: 'http' },
        { name: 'dns', port: 53, targetPort: 5353, protocol: 'UDP' },
      ],
    },
  });
}

type Ep = [ip: string, conditions?: EndpointConditions, nodeName?: string];

function slice(name: string, endpoints: Ep[], ports: unknown[] = [{ name: 'http', port: 8080 }], service = 'web'): EndpointSlice {
  return parseObject('EndpointSlice', {
    kind: 'EndpointSlice',
    metadata: { name, namespace: 'default', labels: { 'kubernetes.io/service-name': service } },
    addressType: 'IPv4',
    endpoints: endpoints.map(([ip, conditions, nodeName]) => ({ addresses: [ip], ...(conditions ? { conditions } : {}), ...(nodeName ? { nodeName } : {}) })),
    ports,
  });
}

/** ip → [ready (takes new connections), terminating flag] of the first port. */
const states = (svc: Service, slices: EndpointSlice[]) =>
  Object.fromEntries(endpointSliceBackends(svc, slices)[0]!.map((b) => [b.ip, [b.ready, b.terminating]]));

describe('local backends from EndpointSlices', () => {
  it('conditions: absent = ready; not ready = flagged; terminating = flagged; ready wins over terminating', () => {
    const s = slice('web-1', [
      ['10.101.1.1'], // conditions absent: ready (the API's nil = true)
      ['10.101.1.2', { ready: true }],
      ['10.101.1.3', { ready: false }], // not ready (starting): kept, no new connections
      ['10.101.1.4', { ready: false, serving: true, terminating: true }], // draining while others are ready: no new connections
      ['10.101.1.5', { ready: false, serving: false, terminating: true }],
      ['10.101.1.6', { ready: true, terminating: true }], // Ready decides (kube-proxy)
      ['10.101.1.7', { serving: false }], // ready absent = ready; serving only matters while terminating
    ]);
    assert.deepEqual(states(service(), [s]), {
      '10.101.1.1': [true, false],
      '10.101.1.2': [true, false],
      '10.101.1.3': [false, false],
      '10.101.1.4': [false, true],
      '10.101.1.5': [false, true],
      '10.101.1.6': [true, false],
      '10.101.1.7': [true, false],
    });
  });

  it('graceful termination: while no endpoint of the port is ready, serving terminating ones take new connections', () => {
    const draining = slice('web-1', [
      ['10.101.1.4', { ready: false, serving: true, terminating: true }],
      ['10.101.1.5', { ready: false, serving: false, terminating: true }], // no longer serving: never
      ['10.101.1.3', { ready: false }], // starting: not a fallback
    ]);
    assert.deepEqual(states(service(), [draining]), {
      '10.101.1.4': [true, false],
      '10.101.1.5': [false, true],
      '10.101.1.3': [false, false],
    });
    // A new pod turns ready (in another slice): the draining one stops taking new connections.
    const fresh = slice('web-2', [['10.101.1.9', { ready: true }]]);
    assert.deepEqual(states(service(), [draining, fresh])['10.101.1.4'], [false, true]);
    assert.deepEqual(states(service(), [draining, fresh])['10.101.1.9'], [true, false]);
  });

  it('the fallback is per port: a port with a ready endpoint does not end it for another port', () => {
    const svc = service();
    const httpOnly = slice('a', [['10.101.1.1', { ready: true }]], [{ name: 'http', port: 8080 }]);
    const dnsDraining = slice('b', [['10.101.1.2', { ready: false, serving: true, terminating: true }]], [{ name: 'dns', port: 5353, protocol: 'UDP' }]);
    const [http, dns] = endpointSliceBackends(svc, [httpOnly, dnsDraining]);
    assert.deepEqual(http!.map((b) => [b.ip, b.port, b.ready]), [['10.101.1.1', 8080, true]]);
    assert.deepEqual(dns!.map((b) => [b.ip, b.port, b.ready, b.terminating]), [['10.101.1.2', 5353, true, false]]);
  });

  it('ports map by name and protocol; a slice port of another name, protocol or without a number maps nothing', () => {
    const svc = service();
    const s = slice(
      'web-1',
      [['10.101.1.1', undefined, 'node1']],
      [
        { name: 'http', port: 9090 }, // targetPort 'http' resolved by the controller: 9090 on these pods
        { name: 'dns', port: 5353, protocol: 'UDP' },
        { name: 'dns', port: 5354, protocol: 'TCP' }, // the Service's dns port is UDP
        { name: 'metrics', port: 9100 }, // not a port of the Service
        { name: 'http' }, // no port: nothing
      ],
    );
    const [http, dns] = endpointSliceBackends(svc, [s]);
    assert.deepEqual(http, [{ ip: '10.101.1.1', port: 9090, ready: true, terminating: false, nodeName: 'node1' }]);
    assert.deepEqual(dns, [{ ip: '10.101.1.1', port: 5353, ready: true, terminating: false, nodeName: 'node1' }]);
    // A single unnamed port matches the slice port without a name.
    const single = service({ ports: [{ port: 80, targetPort: 8080 }] });
    assert.deepEqual(
      endpointSliceBackends(single, [slice('s', [['10.101.1.1']], [{ port: 8080 }])])[0]!.map((b) => b.port),
      [8080],
    );
    assert.deepEqual(endpointSliceBackends(single, [slice('s', [['10.101.1.1']], [{ name: 'http', port: 8080 }])]), [[]]);
  });

  it('several slices merge; an endpoint listed twice (moving between slices) is as available as its best listing', () => {
    const a = slice('web-a', [['10.101.1.1'], ['10.101.1.2', { ready: false, serving: false, terminating: true }]]);
    const b = slice('web-b', [['10.101.1.2', { ready: true }], ['10.101.1.3', { ready: false }]]);
    assert.deepEqual(states(service(), [a, b]), { '10.101.1.1': [true, false], '10.101.1.2': [true, false], '10.101.1.3': [false, false] });
    assert.deepEqual(states(service(), [b, a]), states(service(), [a, b]), 'order does not matter');
    assert.deepEqual(states(service(), []), {}, 'no slices: no backends');
  });

  it('a Service without a selector gets the backends of its hand-written slices', () => {
    const svc = service({ ports: [{ name: 'http', port: 80 }] });
    assert.equal(svc.spec.selector, undefined);
    assert.deepEqual(states(svc, [slice('manual', [['192.0.2.10'], ['192.0.2.11', { ready: false }]])]), { '192.0.2.10': [true, false], '192.0.2.11': [false, false] });
  });

  it('applyEndpointConditions leaves the port and node as they are', () => {
    assert.deepEqual(applyEndpointConditions([{ ip: '10.0.0.1', port: 80, protocol: 'TCP', nodeName: 'n1', ready: false, serving: true, terminating: true }]), [
      { ip: '10.0.0.1', port: 80, ready: true, terminating: false, nodeName: 'n1' },
    ]);
  });
});

describe('local backends from selectors (store source)', () => {
  it('selected pods with an IP per port at the resolved target port; ready from the pod condition', () => {
    const pod = (name: string, ip: string, ready: boolean, labels = { app: 'web' }) =>
      parseObject('Pod', {
        kind: 'Pod',
        metadata: { name, namespace: 'default', labels },
        spec: { nodeName: 'node1', containers: [{ name: 'c', ports: [{ name: 'http', containerPort: 8080 }] }] },
        status: { phase: 'Running', podIP: ip, conditions: [{ type: 'Ready', status: ready ? 'True' : 'False' }] },
      });
    const svc = service({ selector: { app: 'web' } });
    const [http, dns] = selectorBackends(svc, [pod('a', '10.101.1.1', true), pod('b', '10.101.1.2', false), pod('c', '10.101.1.3', true, { app: 'x' })]);
    assert.deepEqual(http!.map((b) => [b.ip, b.port, b.ready, b.terminating]), [['10.101.1.1', 8080, true, false], ['10.101.1.2', 8080, false, false]]);
    assert.deepEqual(dns!.map((b) => [b.ip, b.port]), [['10.101.1.1', 5353], ['10.101.1.2', 5353]]);
    assert.deepEqual(selectorBackends(service(), [pod('a', '10.101.1.1', true)]), [[], []], 'no selector: no backends from pods');
  });
});

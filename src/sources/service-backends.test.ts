import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseObject, type EndpointSlice, type Pod, type Service } from '../model/index.ts';
import { ResourceCache } from './resource.ts';
import { LocalBackendIndex, serviceBackendInput } from './service-backends.ts';

const service = (name: string, selector?: Record<string, string>): Service =>
  parseObject('Service', { kind: 'Service', metadata: { name, namespace: 'default' }, spec: { clusterIP: '10.96.0.10', ...(selector ? { selector } : {}), ports: [{ name: 'http', port: 80, targetPort: 8080 }] } });

const slice = (name: string, owner: string | undefined, ips: string[], ns = 'default'): EndpointSlice =>
  parseObject('EndpointSlice', {
    kind: 'EndpointSlice',
    metadata: { name, namespace: ns, labels: owner ? { 'kubernetes.io/service-name': owner } : {} },
    addressType: 'IPv4',
    endpoints: ips.map((ip) => ({ addresses: [ip] })),
    ports: [{ name: 'http', port: 8080 }],
  });

const pod = (name: string, ip: string, labels: Record<string, string>): Pod =>
  parseObject('Pod', { kind: 'Pod', metadata: { name, namespace: 'default', labels }, spec: { containers: [{ name: 'c' }] }, status: { phase: 'Running', podIP: ip, conditions: [{ type: 'Ready', status: 'True' }] } });

const ips = (idx: LocalBackendIndex, svc: Service): string[] => idx.backends(svc)[0]!.map((b) => b.ip).sort();

describe('LocalBackendIndex', () => {
  it('endpointslices: files slices under their service-name label; a slice moving to another Service changes both', () => {
    const slices = new ResourceCache<EndpointSlice>('EndpointSlice');
    const idx = new LocalBackendIndex({ from: 'endpointslices', endpointSlices: slices });
    const a = service('a');
    const b = service('b');
    const changed: string[] = [];
    let synced = 0;
    slices.set(slice('a-1', 'a', ['10.101.1.1']));
    const off = idx.watch(() => [a, b], (k) => changed.push(k), () => synced++);
    assert.equal(idx.synced, false);
    slices.markSynced();
    assert.equal(idx.synced, true);
    assert.equal(synced, 1);
    assert.deepEqual(changed, ['default/a']);
    assert.deepEqual(ips(idx, a), ['10.101.1.1']);

    changed.length = 0;
    slices.set(slice('a-2', 'a', ['10.101.1.2']));
    assert.deepEqual(ips(idx, a), ['10.101.1.1', '10.101.1.2'], 'two slices merged');
    slices.set(slice('a-2', 'b', ['10.101.1.2'])); // relabelled: moves to b
    assert.deepEqual(changed, ['default/a', 'default/a', 'default/b']);
    assert.deepEqual(ips(idx, a), ['10.101.1.1']);
    assert.deepEqual(ips(idx, b), ['10.101.1.2']);

    changed.length = 0;
    slices.set(slice('a-1', undefined, ['10.101.1.1'])); // label removed: belongs to no Service
    assert.deepEqual(changed, ['default/a']);
    assert.deepEqual(ips(idx, a), []);
    slices.set(slice('x', 'a', ['10.101.9.9'], 'other')); // same Service name, other namespace
    assert.deepEqual(ips(idx, a), []);
    changed.length = 0;
    slices.remove({ namespace: 'default', name: 'a-2' });
    assert.deepEqual(changed, ['default/b']);
    assert.deepEqual(ips(idx, b), []);
    off();
  });

  it('endpointslices: pods do not matter; a Service without a selector has its slices', () => {
    const slices = new ResourceCache<EndpointSlice>('EndpointSlice');
    const pods = new ResourceCache<Pod>('Pod');
    const idx = new LocalBackendIndex(serviceBackendInput({ serviceBackends: 'endpointslices', pods, endpointSlices: slices }));
    assert.equal(idx.from, 'endpointslices');
    const manual = service('manual');
    idx.watch(() => [manual], () => undefined, () => undefined);
    pods.set(pod('p', '10.101.1.7', { app: 'web' }));
    slices.set(slice('manual-1', 'manual', ['192.0.2.1']));
    assert.deepEqual(ips(idx, manual), ['192.0.2.1']);
  });

  it('selectors: a pod change marks the Services whose selector picks it, before or after', () => {
    const pods = new ResourceCache<Pod>('Pod');
    const idx = new LocalBackendIndex(serviceBackendInput({ serviceBackends: 'selectors', pods, endpointSlices: new ResourceCache<EndpointSlice>('EndpointSlice') }));
    const web = service('web', { app: 'web' });
    const api = service('api', { app: 'api' });
    const manual = service('manual');
    const changed: string[] = [];
    idx.watch(() => [web, api, manual], (k) => changed.push(k), () => undefined);
    pods.markSynced();
    assert.equal(idx.synced, true);
    pods.set(pod('p', '10.101.1.1', { app: 'web' }));
    assert.deepEqual(changed, ['default/web']);
    assert.deepEqual(ips(idx, web), ['10.101.1.1']);
    changed.length = 0;
    pods.set(pod('p', '10.101.1.1', { app: 'api' }));
    assert.deepEqual(changed, ['default/web', 'default/api']);
    assert.deepEqual(ips(idx, web), []);
    assert.deepEqual(ips(idx, manual), [], 'no selector, no slices: no backends');
  });
});

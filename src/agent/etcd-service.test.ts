// The etcd by its Kubernetes Service name: the name → address resolution
// (pure, with fake objects), and a real etcd reached through a Service
// resolved from a real lab Kubernetes API, its certificate verified against
// the Service name, found again after it "moved" (stopped, another one behind
// the Service's EndpointSlice).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { KvClient } from '../kvstore/client.ts';
import { startEtcd, type EtcdServer } from '../kvstore/etcd-process.ts';
import { createCA } from '../kvstore/pki.ts';
import { startKubeApi, type KubeApiServer } from '../lab/kube-api/index.ts';
import { KubeHttp } from '../sources/kubernetes/http.ts';
import { loadKubeConnection } from '../sources/kubernetes/kubeconfig.ts';
import { etcdThroughServices, serviceAddresses, serviceOfHost } from './etcd-service.ts';

const svc = { namespace: 'clustermesh-system', name: 'clustermesh-apiserver' };
const service = { spec: { ports: [{ name: 'etcd', port: 2379 }] } };
const slice = (port: number, endpoints: Array<[string, boolean | undefined]>, extra: Record<string, unknown> = {}) => ({
  addressType: 'IPv4',
  ports: [{ name: 'etcd', port }],
  endpoints: endpoints.map(([a, ready]) => ({ addresses: [a], ...(ready === undefined ? {} : { conditions: { ready } }) })),
  ...extra,
});

describe('etcd by Service name: resolution', () => {
  it('recognises <svc>.<ns>.svc and .svc.cluster.local, nothing else', () => {
    assert.deepEqual(serviceOfHost('clustermesh-apiserver.clustermesh-system.svc'), svc);
    assert.deepEqual(serviceOfHost('clustermesh-apiserver.clustermesh-system.svc.cluster.local'), svc);
    for (const h of ['10.0.0.1', 'localhost', 'clustermesh-apiserver', 'clustermesh-apiserver.clustermesh-system', 'etcd.example.com', 'a.b.svc.example.com']) assert.equal(serviceOfHost(h), undefined, h);
  });

  it('the ready IPv4 endpoint addresses on the slice port named as the Service port', () => {
    const slices = [
      slice(2391, [['10.0.0.5', true], ['10.0.0.6', false], ['10.0.0.7', undefined]]),
      slice(2391, [['fd00::5', true]], { addressType: 'IPv6' }),
      { addressType: 'IPv4', ports: [{ name: 'metrics', port: 9963 }], endpoints: [{ addresses: ['10.0.0.8'] }] },
    ];
    assert.deepEqual(serviceAddresses(svc, service, slices, 2379), ['10.0.0.5:2391', '10.0.0.7:2391']);
    assert.deepEqual(serviceAddresses(svc, service, [], 2379), [], 'no endpoint yet');
    // An unnamed single port matches the slice's unnamed port.
    assert.deepEqual(serviceAddresses(svc, { spec: { ports: [{ port: 2379 }] } }, [{ ports: [{ port: 2379 }], endpoints: [{ addresses: ['10.0.0.9'] }] }], 2379), ['10.0.0.9:2379']);
    assert.throws(() => serviceAddresses(svc, service, slices, 443), { message: 'Service clustermesh-system/clustermesh-apiserver has no port 443 (it has 2379)' });
  });
});

describe('etcd by Service name: a real etcd behind a Service of a real Kubernetes API', () => {
  it('dials the EndpointSlice address, verifies the Service name, and re-resolves when the etcd moved', { timeout: 180_000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cmt-etcdsvc-'));
    const ns = `cmt-es-${process.pid}`;
    const host = `clustermesh-apiserver.${ns}.svc`;
    const etcds: EtcdServer[] = [];
    let kubeKv: KvClient | undefined;
    let api: KubeApiServer | undefined;
    const closers: Array<() => Promise<unknown>> = [];
    try {
      // Two etcds of one CA, each with the Service's name on its certificate: where the apiserver pod runs before and after a move.
      const ca = await createCA(join(dir, 'ca'), 'cmt-etcdsvc');
      for (const n of ['one', 'two']) etcds.push(await startEtcd({ dir: join(dir, n), name: n, ca, serverDnsNames: ['localhost', host], auth: false }));
      const [one, two] = etcds as [EtcdServer, EtcdServer];
      for (const [e, v] of [[one, 'one'], [two, 'two']] as const) {
        const c = new KvClient(e.connection('root'));
        await c.put('where', v);
        await c.close();
      }
      kubeKv = new KvClient(two.connection('root', { timeoutMs: 15_000 })); // the API's store stays up through the move
      const started = await startKubeApi({ kv: kubeKv, dir: join(dir, 'api'), clusterName: 'c1' });
      api = started.server;
      const http = new KubeHttp(loadKubeConnection({ kubeconfig: started.kubeconfig }).kubeConfig);
      await http.request('POST', '/api/v1/namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } });
      await http.request('POST', `/api/v1/namespaces/${ns}/services`, { apiVersion: 'v1', kind: 'Service', metadata: { name: 'clustermesh-apiserver', namespace: ns }, spec: { ports: [{ name: 'etcd', port: 2379, targetPort: 'etcd' }] } });
      const slicePath = `/apis/discovery.k8s.io/v1/namespaces/${ns}/endpointslices`;
      const sliceOf = (port: number) => ({
        apiVersion: 'discovery.k8s.io/v1',
        kind: 'EndpointSlice',
        metadata: { name: 'clustermesh-apiserver-x', namespace: ns, labels: { 'kubernetes.io/service-name': 'clustermesh-apiserver' } },
        addressType: 'IPv4',
        ports: [{ name: 'etcd', port, protocol: 'TCP' }],
        endpoints: [{ addresses: ['127.0.0.1'], conditions: { ready: true } }],
      });
      await http.request('POST', slicePath, sliceOf(one.clientPort));

      const files = one.connection('root');
      const log = pino({ level: 'silent' });
      const through = async (hostName: string) => {
        const r = await etcdThroughServices({ endpoints: [`https://${hostName}:2379`], caFile: files.caFile, certFile: files.certFile, keyFile: files.keyFile, timeoutMs: 3000 }, () => http, log);
        closers.push(() => Promise.all(r.proxies.map((p) => p.close())));
        return r;
      };
      const r = await through(host);
      assert.equal(r.proxies.length, 1);
      assert.match(r.etcd.endpoints[0]!, /^https:\/\/127\.0\.0\.1:\d+$/);
      assert.equal(r.etcd.serverName, host, 'the certificate is verified against the Service name');
      const kv = new KvClient(r.etcd);
      closers.push(() => kv.close());
      assert.equal((await kv.get('where'))?.value, 'one');

      // A Service whose name is not on the certificate: refused by TLS verification, not silently accepted.
      await http.request('POST', `/api/v1/namespaces/${ns}/services`, { apiVersion: 'v1', kind: 'Service', metadata: { name: 'other', namespace: ns }, spec: { ports: [{ name: 'etcd', port: 2379 }] } });
      await http.request('POST', slicePath, { ...sliceOf(one.clientPort), metadata: { name: 'other-x', namespace: ns, labels: { 'kubernetes.io/service-name': 'other' } } });
      const wrong = new KvClient((await through(`other.${ns}.svc`)).etcd);
      closers.push(() => wrong.close());
      await assert.rejects(wrong.get('where'), (e: { kind?: string; message: string }) => {
        assert.equal(e.kind, 'tls', e.message);
        return true;
      });

      // The etcd "moves": the first stops, the slice names the second; the same client finds it.
      await one.stop();
      await http.request('PATCH', `${slicePath}/clustermesh-apiserver-x`, { ports: [{ name: 'etcd', port: two.clientPort, protocol: 'TCP' }] });
      const deadline = Date.now() + 60_000;
      let last: unknown;
      for (;;) {
        try {
          if ((await kv.get('where'))?.value === 'two') break;
        } catch (err) {
          last = err;
        }
        if (Date.now() > deadline) assert.fail(`the moved etcd was not reached: ${(last as Error)?.message}`);
        await new Promise((res) => setTimeout(res, 200));
      }
    } finally {
      for (const c of closers.reverse()) await c().catch(() => undefined);
      await api?.stop().catch(() => undefined);
      await kubeKv?.close();
      for (const e of etcds) await e.stop().catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    }
  });
});

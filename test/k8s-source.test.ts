// The kubernetes cluster source (src/sources/kubernetes) against the lab's
// Kubernetes API server (src/lab/kube-api) over real HTTPS, storing in a real
// etcd: initial sync of every kind, changes as events, the server stopped and
// restarted (deletions during the outage pruned only after the re-list), a
// compaction forcing 410, an invalid object, a CRD absent, deleted and re-created.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'node:https';
import { parseAllDocuments } from 'yaml';

import { KvClient, startEtcd, type EtcdServer } from '../src/kvstore/index.ts';
import { KubeApiServer, KUBE_PREFIX, startKubeApi, type KubeApiPki } from '../src/lab/kube-api/index.ts';
import { KubernetesSource, loadKubeConnection, type KubernetesSourceOptions } from '../src/sources/kubernetes/index.ts';
import { EndpointSource, EndpointWriter, type ResourceEvent, type SourceProblem } from '../src/sources/index.ts';
import { sliceBackends, type ObjectKind } from '../src/model/index.ts';
import { eventually } from './helpers/kube.ts';

const ROOT = new URL('..', import.meta.url).pathname;
const CILIUM_CRDS = join(ROOT, 'deploy/crds/cilium-policies.yaml');
const NS = 'cmt-ks';

let dir: string;
let etcd: EtcdServer;
let kv: KvClient;
let server: KubeApiServer;
let pki: KubeApiPki;
let kubeconfig: string;
const sources: KubernetesSource[] = [];

/** A request with the admin certificate; the body as JSON (or the raw text). */
async function api(method: string, path: string, body?: unknown, contentType = 'application/json'): Promise<{ status: number; body: any }> {
  const [ca, cert, key] = await Promise.all([readFile(pki.ca.certFile), readFile(pki.admin.certFile), readFile(pki.admin.keyFile)]);
  return await new Promise((resolve, reject) => {
    const req = request(`${server.url}${path}`, { method, ca, cert, key, headers: { 'Content-Type': contentType } }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => {
        let parsed: unknown = text;
        try {
          parsed = JSON.parse(text);
        } catch {
          // not JSON
        }
        resolve({ status: res.statusCode ?? 0, body: parsed });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    if (body !== undefined) req.write(JSON.stringify(body));
    req.end();
  });
}

async function ok(method: string, path: string, body?: unknown, contentType?: string): Promise<any> {
  const r = await api(method, path, body, contentType);
  assert.ok(r.status >= 200 && r.status < 300, `${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

const merge = (path: string, body: unknown): Promise<any> => ok('PATCH', path, body, 'application/merge-patch+json');

async function applyCrds(): Promise<void> {
  for (const doc of parseAllDocuments(await readFile(CILIUM_CRDS, 'utf8'))) {
    const crd = doc.toJS();
    if (crd) await ok('POST', '/apis/apiextensions.k8s.io/v1/customresourcedefinitions', crd);
  }
}

function pod(name: string, labels: Record<string, string> = { app: 'web' }) {
  return { apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: NS, labels }, spec: { nodeName: 'node1', containers: [{ name: 'c', image: 'busybox', ports: [{ name: 'http', containerPort: 8080 }] }] } };
}

async function createPod(name: string, ip: string, labels?: Record<string, string>): Promise<void> {
  await ok('POST', `/api/v1/namespaces/${NS}/pods`, pod(name, labels));
  await merge(`/api/v1/namespaces/${NS}/pods/${name}/status`, { status: { phase: 'Running', podIP: ip, podIPs: [{ ip }], conditions: [{ type: 'Ready', status: 'True' }] } });
}

interface Recorder {
  problems: SourceProblem[];
  errors: { kind: ObjectKind; message: string }[];
}

async function startSource(extra: Partial<KubernetesSourceOptions> = {}): Promise<{ source: KubernetesSource; rec: Recorder }> {
  const rec: Recorder = { problems: [], errors: [] };
  const source = new KubernetesSource({
    kubeConfig: loadKubeConnection({ kubeconfig, env: {} }).kubeConfig,
    backoff: { initialMs: 50, maxMs: 500 },
    optionalRetryMs: 300,
    pageSize: 3,
    onProblem: (p) => rec.problems.push(p),
    onError: (kind, err) => rec.errors.push({ kind, message: err.message }),
    ...extra,
  });
  sources.push(source);
  await source.start();
  return { source, rec };
}

const serverOptions = (port: number) => ({
  kv,
  prefix: KUBE_PREFIX,
  tls: { certFile: pki.server.certFile, keyFile: pki.server.keyFile, caFile: pki.ca.certFile },
  port,
  bookmarkIntervalMs: 300,
});

describe('kubernetes source against the lab Kubernetes API server', { timeout: 600_000 }, () => {
  let main: KubernetesSource;
  let mainRec: Recorder;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cmt-k8s-source-'));
    etcd = await startEtcd({ dir: join(dir, 'etcd'), clusterName: 'ksrc' });
    await etcd.clientCert('root');
    kv = new KvClient(etcd.connection('root', { timeoutMs: 15_000 }));
    ({ server, pki, kubeconfig } = await startKubeApi({ kv, dir, clusterName: 'cluster1', bookmarkIntervalMs: 300 }));
  });

  after(async () => {
    await Promise.all(sources.map((s) => s.stop()));
    await server?.stop();
    await kv?.close();
    await etcd?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('a CRD kind absent at start does not block sync; it is picked up once the CRD is applied', async () => {
    ({ source: main, rec: mainRec } = await startSource());
    await main.waitSynced(AbortSignal.timeout(60_000));
    assert.deepEqual(main.ciliumNetworkPolicies.list(), []);
    assert.equal(main.status().CiliumNetworkPolicy.absent, true);
    assert.equal(main.status().CiliumClusterwideNetworkPolicy.absent, true);
    assert.ok(main.namespaces.get({ name: 'default' }), 'the built-in namespaces are listed');
    assert.ok(main.endpoints.synced, 'without a store-backed Endpoint resource, endpoints are empty and synced');

    await ok('POST', '/api/v1/namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: NS, labels: { team: 'a' } } });
    await applyCrds();
    await ok('POST', `/apis/cilium.io/v2/namespaces/${NS}/ciliumnetworkpolicies`, { apiVersion: 'cilium.io/v2', kind: 'CiliumNetworkPolicy', metadata: { name: 'cnp1', namespace: NS }, spec: { endpointSelector: { matchLabels: { app: 'web' } }, ingress: [{}] } });
    await ok('POST', '/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies', { apiVersion: 'cilium.io/v2', kind: 'CiliumClusterwideNetworkPolicy', metadata: { name: 'ccnp1' }, spec: { endpointSelector: {}, egress: [{}] } });
    const cnp = await eventually('the CNP in the cache', () => main.ciliumNetworkPolicies.get({ namespace: NS, name: 'cnp1' }));
    assert.deepEqual(cnp.spec, { endpointSelector: { matchLabels: { app: 'web' } }, ingress: [{}] });
    await eventually('the CCNP in the cache', () => main.ciliumClusterwideNetworkPolicies.get({ name: 'ccnp1' }));
    assert.equal(main.status().CiliumNetworkPolicy.absent, false);
  });

  test('initial sync of every kind, converted to the model', async () => {
    await createPod('web-1', '10.101.1.5');
    await ok('POST', `/api/v1/namespaces/${NS}/services`, { apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: NS, annotations: { 'service.cilium.io/global': 'true' } }, spec: { selector: { app: 'web' }, ports: [{ name: 'http', port: 80, targetPort: 'http' }] } });
    await ok('POST', `/api/v1/namespaces/${NS}/services`, { apiVersion: 'v1', kind: 'Service', metadata: { name: 'external', namespace: NS }, spec: { ports: [{ port: 443 }] } });
    await ok('POST', `/apis/discovery.k8s.io/v1/namespaces/${NS}/endpointslices`, {
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: { name: 'web-abc', namespace: NS, labels: { 'kubernetes.io/service-name': 'web' } },
      addressType: 'IPv4',
      endpoints: [
        { addresses: ['10.101.1.5'], conditions: { ready: true, serving: true, terminating: false }, nodeName: 'node1', targetRef: { kind: 'Pod', namespace: NS, name: 'web-1' } },
        { addresses: ['10.101.2.7'], conditions: { ready: false, serving: true, terminating: true }, nodeName: 'node2' },
      ],
      ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
    });
    await ok('POST', '/api/v1/nodes', { apiVersion: 'v1', kind: 'Node', metadata: { name: 'node1' }, spec: { podCIDR: '10.101.1.0/24', podCIDRs: ['10.101.1.0/24', 'fd00:101:1::/64'] }, status: { addresses: [{ type: 'InternalIP', address: '10.1.0.1' }, { type: 'InternalIP', address: 'fd00::1' }, { type: 'Hostname', address: 'node1' }] } });
    await ok('POST', `/apis/networking.k8s.io/v1/namespaces/${NS}/networkpolicies`, { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name: 'deny', namespace: NS }, spec: { podSelector: {}, policyTypes: ['Ingress'] } });

    const { source, rec } = await startSource();
    await source.waitSynced(AbortSignal.timeout(60_000));
    assert.equal(source.type, 'kubernetes');
    assert.deepEqual(source.namespaces.get({ name: NS })?.metadata.labels, { team: 'a', 'kubernetes.io/metadata.name': NS });
    const p = source.pods.get({ namespace: NS, name: 'web-1' });
    assert.deepEqual([p?.spec.nodeName, p?.status.podIP, p?.status.phase, p?.spec.containers[0]?.ports[0]?.name], ['node1', '10.101.1.5', 'Running', 'http']);
    const svc = source.services.get({ namespace: NS, name: 'web' });
    assert.match(svc?.spec.clusterIP ?? '', /^10\.96\./, 'the cluster IP the server allocated');
    assert.deepEqual(svc?.spec.ports, [{ name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' }]);
    assert.equal(source.services.get({ namespace: NS, name: 'external' })?.spec.selector, undefined, 'a Service without a selector');
    const slice = source.endpointSlices.get({ namespace: NS, name: 'web-abc' });
    assert.ok(slice);
    assert.deepEqual(
      sliceBackends([slice], 'http').map((b) => [b.ip, b.port, b.ready, b.serving, b.terminating, b.nodeName]),
      [
        ['10.101.1.5', 8080, true, true, false, 'node1'],
        ['10.101.2.7', 8080, false, true, true, 'node2'],
      ],
    );
    const node = source.nodes.get({ name: 'node1' });
    assert.deepEqual(node?.spec, { podCIDR: '10.101.1.0/24', podCIDRs: ['10.101.1.0/24'] });
    assert.deepEqual(node?.status.addresses, [{ type: 'InternalIP', address: '10.1.0.1' }, { type: 'Hostname', address: 'node1' }]);
    assert.deepEqual(source.networkPolicies.get({ namespace: NS, name: 'deny' })?.spec, { podSelector: {}, policyTypes: ['Ingress'] });
    assert.ok(source.ciliumNetworkPolicies.get({ namespace: NS, name: 'cnp1' }));
    assert.ok(source.ciliumClusterwideNetworkPolicies.get({ name: 'ccnp1' }));
    assert.deepEqual(rec.problems, []);
    // pageSize 3: the namespaces (5) came in pages.
    assert.equal(source.namespaces.list().length, 5);
    // The main source (started before all this) saw the same through its watches.
    await eventually('the main source to see every object', () =>
      main.pods.get({ namespace: NS, name: 'web-1' })?.status.podIP === '10.101.1.5' && main.endpointSlices.get({ namespace: NS, name: 'web-abc' }) && main.nodes.get({ name: 'node1' }) && main.networkPolicies.get({ namespace: NS, name: 'deny' }),
    );
  });

  test('add, update and delete through the API: the cache and the events follow', async () => {
    const events: ResourceEvent<{ metadata: { name: string; labels: Record<string, string> } }>[] = [];
    const unsub = main.pods.watch((ev) => events.push(ev as never));
    try {
      await eventually('the replay of known pods and synced', () => events.some((e) => e.kind === 'synced'));
      events.length = 0;
      await createPod('web-2', '10.101.1.6');
      await eventually('web-2 with its IP', () => main.pods.get({ namespace: NS, name: 'web-2' })?.status.podIP === '10.101.1.6');
      assert.ok(events.some((e) => e.kind === 'upsert' && e.object.metadata.name === 'web-2'));
      await merge(`/api/v1/namespaces/${NS}/pods/web-2`, { metadata: { labels: { app: 'web', tier: 'front' } } });
      await eventually('the new label', () => main.pods.get({ namespace: NS, name: 'web-2' })?.metadata.labels.tier === 'front');
      assert.ok(events.some((e) => e.kind === 'upsert' && e.object.metadata.labels.tier === 'front'));
      await ok('DELETE', `/api/v1/namespaces/${NS}/pods/web-2`);
      await eventually('web-2 gone', () => main.pods.get({ namespace: NS, name: 'web-2' }) === undefined);
      const del = events.find((e) => e.kind === 'delete');
      assert.ok(del && del.kind === 'delete' && del.object.metadata.name === 'web-2' && del.object.metadata.labels.tier === 'front', 'delete carries the last known state');
    } finally {
      unsub();
    }
  });

  test('the server stopped and restarted: nothing lost, deletions during the outage pruned only after the re-list', async () => {
    await createPod('stays', '10.101.1.20');
    await createPod('goes', '10.101.1.21');
    await eventually('both pods in the cache', () => main.pods.get({ namespace: NS, name: 'stays' }) && main.pods.get({ namespace: NS, name: 'goes' }));
    const listsBefore = main.status().Pod.lists;
    const deletes: { name: string; lists: number }[] = [];
    const unsub = main.pods.watch((ev) => {
      if (ev.kind === 'delete') deletes.push({ name: ev.object.metadata.name, lists: main.status().Pod.lists });
    });
    const svcDeletes: string[] = [];
    const unsubSvc = main.services.watch((ev) => ev.kind === 'delete' && svcDeletes.push(ev.object.metadata.name));
    const port = server.port;
    const errorsBefore = mainRec.errors.length;
    try {
      await server.stop();
      // While the API is down: a pod deleted and one added behind its back, straight in etcd.
      assert.equal(await kv.delete(`${KUBE_PREFIX}core/pods/${NS}/goes`), true);
      const stays = JSON.parse((await kv.get(`${KUBE_PREFIX}core/pods/${NS}/stays`))!.value) as { object: any };
      const added = structuredClone(stays.object);
      added.metadata = { ...added.metadata, name: 'born', uid: 'u-born' };
      added.status.podIP = '10.101.1.22';
      added.status.podIPs = [{ ip: '10.101.1.22' }];
      await kv.put(`${KUBE_PREFIX}core/pods/${NS}/born`, JSON.stringify({ op: 'create', object: added }));
      // Other kinds may notice first ("watch ended at once"); wait for the pods' watch itself to fail.
      await eventually('the pods watch to notice the outage', () => mainRec.errors.slice(errorsBefore).some((e) => e.kind === 'Pod'));
      assert.ok(main.pods.get({ namespace: NS, name: 'goes' }), 'not pruned while the server is down');
      assert.ok(main.pods.synced);
      assert.equal(deletes.length, 0, 'no delete while the server is down');

      server = new KubeApiServer(serverOptions(port));
      await server.start();
      await eventually('the deleted pod pruned and the new one listed', () => main.pods.get({ namespace: NS, name: 'goes' }) === undefined && main.pods.get({ namespace: NS, name: 'born' }));
      assert.deepEqual(deletes.map((d) => d.name), ['goes'], 'only the pod deleted during the outage is deleted');
      assert.ok(deletes[0]!.lists > listsBefore, 'pruned by a re-list, after it completed');
      assert.ok(main.pods.get({ namespace: NS, name: 'stays' }) && main.pods.get({ namespace: NS, name: 'web-1' }));
      assert.deepEqual(svcDeletes, []);
      // However the pod watch learnt of it: refused, reset ("socket hang up": the server closed the socket mid-request), closed, ended.
      assert.ok(mainRec.errors.some((e) => e.kind === 'Pod' && /ECONNREFUSED|ECONNRESET|hang up|connection|closed|aborted|ended/i.test(e.message)), JSON.stringify(mainRec.errors.slice(errorsBefore)));
      // Watching again: a change after the restart arrives.
      await createPod('after', '10.101.1.23');
      await eventually('a pod created after the restart', () => main.pods.get({ namespace: NS, name: 'after' }));
      assert.equal(main.status().Pod.watching, true);
    } finally {
      unsub();
      unsubSvc();
    }
  });

  test('an etcd compaction past the watch resourceVersion: 410, re-list, nothing lost', async () => {
    const { source, rec } = await startSource({ watchTimeoutSeconds: 1 });
    await source.waitSynced(AbortSignal.timeout(60_000));
    const { expired: expiredBefore, lists: listsBefore } = source.status().Pod;
    // Pods stay as they are (the pod watch's resourceVersion stays old); other keys move the revision on.
    for (let i = 0; i < 5; i++) await ok('POST', `/api/v1/namespaces/${NS}/configmaps`, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: `filler-${i}`, namespace: NS }, data: { i: String(i) } });
    await kv.compact(await kv.currentRevision());
    await eventually('a 410 on the pod watch', () => source.status().Pod.expired > expiredBefore);
    await eventually('the re-list after the 410', () => source.status().Pod.lists > listsBefore);
    assert.deepEqual(
      source.pods.list().map((p) => p.metadata.name).sort(),
      main.pods.list().map((p) => p.metadata.name).sort(),
      'the same pods as the long-running source',
    );
    await createPod('post-compaction', '10.101.1.30');
    await eventually('a pod created after the compaction', () => source.pods.get({ namespace: NS, name: 'post-compaction' }));
    assert.deepEqual(rec.problems, []);
    await source.stop();
  });

  test('an invalid object is reported by kind and namespace/name; its last good version stays; nothing else stops', async () => {
    const key = `${KUBE_PREFIX}core/services/${NS}/web`;
    const stored = JSON.parse((await kv.get(key))!.value) as { op: string; object: any };
    const good = main.services.get({ namespace: NS, name: 'web' });
    assert.equal(good?.spec.ports[0]?.port, 80);
    stored.object.spec.ports[0].port = 70000; // the API server would refuse it: written raw into etcd
    await kv.put(key, JSON.stringify({ op: 'update', object: stored.object }));
    const problem = await eventually('the problem reported', () => mainRec.problems.find((p) => p.kind === 'Service' && p.key === `${NS}/web`));
    assert.match(problem.message, /^Service cmt-ks\/web: spec\.ports\[0\]\.port: /);
    assert.deepEqual(main.services.get({ namespace: NS, name: 'web' }), good, 'the last good version stays');
    assert.match(main.status().Service.problems[`${NS}/web`] ?? '', /spec\.ports\[0\]\.port/);
    // Other objects and kinds go on.
    await createPod('next', '10.101.1.40');
    await eventually('a pod created after the bad service', () => main.pods.get({ namespace: NS, name: 'next' }));
    await ok('POST', `/api/v1/namespaces/${NS}/services`, { apiVersion: 'v1', kind: 'Service', metadata: { name: 'web2', namespace: NS }, spec: { selector: { app: 'web' }, ports: [{ port: 81 }] } });
    await eventually('a service created after the bad one', () => main.services.get({ namespace: NS, name: 'web2' }));
    // Fixed through the API: believed again, the problem cleared.
    await merge(`/api/v1/namespaces/${NS}/services/web`, { spec: { ports: [{ name: 'http', port: 8080, targetPort: 'http' }] } });
    await eventually('the fixed service', () => main.services.get({ namespace: NS, name: 'web' })?.spec.ports[0]?.port === 8080);
    assert.equal(main.status().Service.problems[`${NS}/web`], undefined);
  });

  test('a field selector narrows a kind (an agent that reads only its node\'s pods)', async () => {
    await ok('POST', `/api/v1/namespaces/${NS}/pods`, { ...pod('elsewhere'), spec: { ...pod('elsewhere').spec, nodeName: 'node2' } });
    const { source } = await startSource({ fieldSelectors: { Pod: 'spec.nodeName=node1' } });
    await source.waitSynced(AbortSignal.timeout(60_000));
    await eventually('the main source sees the node2 pod', () => main.pods.get({ namespace: NS, name: 'elsewhere' }));
    assert.ok(source.pods.get({ namespace: NS, name: 'web-1' }));
    assert.equal(source.pods.get({ namespace: NS, name: 'elsewhere' }), undefined);
    assert.ok(source.pods.list().every((p) => p.spec.nodeName === 'node1'));
    await ok('DELETE', `/api/v1/namespaces/${NS}/pods/elsewhere`);
    await source.stop();
  });

  test('Endpoint (mesh state) comes from the cluster\'s etcd through an etcd-backed resource', async () => {
    const writer = new EndpointWriter(kv);
    await writer.apply({ kind: 'Endpoint', metadata: { name: 'web-1', namespace: NS, labels: { app: 'web' } }, status: { identity: { id: 65536 + 300 }, networking: { podIP: '10.101.1.5', nodeName: 'node1', nodeIP: '10.1.0.1' } } });
    const store = new EndpointSource(kv);
    await store.start();
    try {
      const { source } = await startSource({ endpoints: store.endpoints });
      await source.waitSynced(AbortSignal.timeout(60_000));
      await source.endpoints.waitSynced(AbortSignal.timeout(60_000));
      assert.equal(source.endpoints.get({ namespace: NS, name: 'web-1' })?.status.identity.id, 65536 + 300);
      assert.equal(source.resource('Endpoint'), store.endpoints);
      await source.stop();
    } finally {
      await store.stop();
    }
  });

  test('a CRD deleted and re-created: its objects go, then come back', async () => {
    assert.ok(main.ciliumNetworkPolicies.get({ namespace: NS, name: 'cnp1' }));
    await ok('DELETE', '/apis/apiextensions.k8s.io/v1/customresourcedefinitions/ciliumnetworkpolicies.cilium.io');
    await eventually('the CNP gone with its CRD', () => main.ciliumNetworkPolicies.get({ namespace: NS, name: 'cnp1' }) === undefined);
    assert.ok(main.ciliumClusterwideNetworkPolicies.get({ name: 'ccnp1' }), 'the other CRD kind is untouched');
    // A source started now finds the CRD absent and syncs anyway.
    const { source: late } = await startSource();
    await late.waitSynced(AbortSignal.timeout(60_000));
    assert.equal(late.status().CiliumNetworkPolicy.absent, true);

    const crds = parseAllDocuments(await readFile(CILIUM_CRDS, 'utf8')).map((d) => d.toJS()).filter((c) => c?.metadata?.name === 'ciliumnetworkpolicies.cilium.io');
    await ok('POST', '/apis/apiextensions.k8s.io/v1/customresourcedefinitions', crds[0]);
    await ok('POST', `/apis/cilium.io/v2/namespaces/${NS}/ciliumnetworkpolicies`, { apiVersion: 'cilium.io/v2', kind: 'CiliumNetworkPolicy', metadata: { name: 'cnp2', namespace: NS }, spec: { endpointSelector: {}, ingress: [{}] } });
    await eventually('the new CNP in the running source', () => main.ciliumNetworkPolicies.get({ namespace: NS, name: 'cnp2' }));
    await eventually('the new CNP in the source started without the CRD', () => late.ciliumNetworkPolicies.get({ namespace: NS, name: 'cnp2' }));
    assert.equal(late.status().CiliumNetworkPolicy.absent, false);
    assert.equal(main.ciliumNetworkPolicies.get({ namespace: NS, name: 'cnp1' }), undefined);
  });
});

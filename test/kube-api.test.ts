// The lab's Kubernetes API server (src/lab/kube-api) against real kubectl and
// @kubernetes/client-node, storing in a real etcd with mutual TLS.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'node:https';
import { CoreV1Api, AppsV1Api, CustomObjectsApi, KubeConfig, makeInformer, type V1Pod } from '@kubernetes/client-node';

import { KvClient, startEtcd, type EtcdServer } from '../src/kvstore/index.ts';
import { startKubeApi, KUBE_PREFIX, type KubeApiPki, type KubeApiServer } from '../src/lab/kube-api/index.ts';
import { applyToApi, manifestDocuments, ManifestError } from '../src/lab/kube-apply.ts';
import { KubeHttp, reuseConnections } from '../src/sources/kubernetes/http.ts';
import { issueCert } from '../src/kvstore/pki.ts';
import { copyFile } from 'node:fs/promises';
import { eventually, kubectlFor } from './helpers/kube.ts';

const ROOT = new URL('..', import.meta.url).pathname;
const CILIUM_CRDS = join(ROOT, 'deploy/crds/cilium-policies.yaml');
const MCS_CRDS = join(ROOT, 'deploy/crds/mcs-api.yaml');
const REBEL_BASE = join(ROOT, 'examples/rebel-base');

let dir: string;
let etcd: EtcdServer;
let kv: KvClient;
let server: KubeApiServer;
let pki: KubeApiPki;
let kubeconfig: string;
let kc: KubeConfig;

const { kubectl, kubectlOk } = kubectlFor({ kubeconfig: () => kubeconfig, cacheDir: () => join(dir, 'kube-cache') });
/** A raw HTTPS request with the admin certificate; the body parsed as JSON lines (watch) or JSON. */
async function raw(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; text: string }> {
  const [ca, cert, key] = await Promise.all([readFile(pki.ca.certFile), readFile(pki.admin.certFile), readFile(pki.admin.keyFile)]);
  return await new Promise((resolve, reject) => {
    const req = request(`${server.url}${path}`, { method, ca, cert, key, headers: { 'Content-Type': 'application/json', ...headers } }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (body !== undefined) req.write(typeof body === 'string' ? body : JSON.stringify(body));
    req.end();
  });
}

interface WatchStream {
  events: { type: string; object: Record<string, any> }[];
  ended: boolean;
  close(): void;
}

/** Opens a raw watch and collects its events. */
async function openWatch(path: string): Promise<WatchStream> {
  const [ca, cert, key] = await Promise.all([readFile(pki.ca.certFile), readFile(pki.admin.certFile), readFile(pki.admin.keyFile)]);
  return await new Promise((resolve, reject) => {
    const stream: WatchStream = { events: [], ended: false, close: () => req.destroy() };
    const req = request(`${server.url}${path}`, { ca, cert, key }, (res) => {
      if (res.statusCode !== 200) reject(new Error(`watch ${path}: HTTP ${res.statusCode}`));
      let buf = '';
      res.on('data', (c: Buffer) => {
        buf += c.toString();
        let i: number;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (line.trim() !== '') stream.events.push(JSON.parse(line));
        }
      });
      res.on('end', () => (stream.ended = true));
      res.on('error', () => (stream.ended = true));
      resolve(stream);
    });
    req.on('error', (e) => (stream.ended ? undefined : reject(e)));
    req.end();
  });
}

describe('lab Kubernetes API server', { timeout: 600_000 }, () => {
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cmt-kube-api-'));
    etcd = await startEtcd({ dir: join(dir, 'etcd'), clusterName: 'kapi' });
    await etcd.clientCert('root');
    kv = new KvClient(etcd.connection('root', { timeoutMs: 15_000 }));
    ({ server, pki, kubeconfig } = await startKubeApi({ kv, dir, clusterName: 'cluster1', bookmarkIntervalMs: 300 }));
    kc = new KubeConfig();
    kc.loadFromFile(kubeconfig);
  });

  after(async () => {
    await server?.stop();
    await kv?.close();
    await etcd?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('discovery and version: kubectl sees the served kinds and the server version', async () => {
    const v = JSON.parse(await kubectlOk('version', '-o', 'json'));
    assert.match(v.serverVersion.gitVersion, /^v1\.32\./);
    const res = await kubectlOk('api-resources', '--no-headers');
    for (const kind of ['Pod', 'Service', 'Namespace', 'Node', 'EndpointSlice', 'NetworkPolicy', 'Deployment', 'DaemonSet', 'ConfigMap', 'Secret', 'ServiceAccount', 'Event', 'CustomResourceDefinition']) {
      assert.match(res, new RegExp(`\\s${kind}\\s*$`, 'm'), `api-resources lacks ${kind}`);
    }
    const ns = await kubectlOk('get', 'namespaces');
    assert.match(ns, /^default\s+Active\s/m);
    // The objects live in etcd under the server's prefix.
    const stored = await kv.list(`${KUBE_PREFIX}core/namespaces/`);
    assert.ok(stored.pairs.some((p) => p.key === `${KUBE_PREFIX}core/namespaces/default`));
  });

  test('a Cilium kind is served once its CRD is applied', async () => {
    const before = await kubectl('get', 'ciliumnetworkpolicies');
    assert.notEqual(before.code, 0);
    assert.match(before.stderr, /the server doesn't have a resource type "ciliumnetworkpolicies"/);
    const out = await kubectlOk('apply', '-f', CILIUM_CRDS);
    assert.match(out, /customresourcedefinition.apiextensions.k8s.io\/ciliumnetworkpolicies.cilium.io created/);
    await kubectlOk('wait', '--for=condition=Established', 'crd/ciliumnetworkpolicies.cilium.io', '--timeout=20s');
    const none = await kubectlOk('get', 'ciliumnetworkpolicies', '-A');
    assert.equal(none, '');
  });

  test('kubectl apply -f examples/rebel-base/, get -o wide/json/jsonpath, apply again is unchanged', async () => {
    const first = await kubectlOk('apply', '-f', REBEL_BASE);
    for (const line of ['pod/x-wing created', 'pod/tie-fighter created', 'service/rebel-base created', 'deployment.apps/rebel-base created', 'ciliumnetworkpolicy.cilium.io/rebel-base-admits-frontends-of-cluster1 created']) {
      assert.ok(first.includes(line), `apply output lacks "${line}":\n${first}`);
    }
    const wide = await kubectlOk('get', 'pods', '-o', 'wide');
    assert.match(wide, /^NAME\s+READY\s+STATUS\s+RESTARTS\s+AGE\s+IP\s+NODE\s+NOMINATED NODE\s+READINESS GATES$/m);
    assert.match(wide, /^x-wing\s+0\/1\s+Pending\s+0\s+\S+\s+<none>\s+<none>/m);
    const svc = await kubectlOk('get', 'svc', 'rebel-base', '-o', 'wide');
    assert.match(svc, /^rebel-base\s+ClusterIP\s+10\.96\.\d+\.\d+\s+<none>\s+80\/TCP\s+\S+\s+name=rebel-base$/m);
    const json = JSON.parse(await kubectlOk('get', 'pod', 'x-wing', '-o', 'json'));
    assert.equal(json.kind, 'Pod');
    assert.equal(json.metadata.labels.app, 'frontend');
    assert.match(json.metadata.uid, /^[0-9a-f-]{36}$/);
    assert.match(json.metadata.resourceVersion, /^\d+$/);
    assert.match(json.metadata.creationTimestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    assert.equal(json.status.phase, 'Pending');
    const path = await kubectlOk('get', 'pods', '-l', 'app=frontend', '-o', 'jsonpath={.items[*].metadata.name}');
    assert.equal(path, 'x-wing');
    const cnp = await kubectlOk('get', 'ciliumnetworkpolicies');
    assert.match(cnp, /^rebel-base-admits-frontends-of-cluster1\s+\S+$/m);
    const second = await kubectlOk('apply', '-f', REBEL_BASE);
    const lines = second.trim().split('\n');
    assert.equal(lines.length, 5, second);
    for (const l of lines) assert.match(l, / unchanged$/, second);
    const gen = await kubectlOk('get', 'deploy', 'rebel-base', '-o', 'jsonpath={.metadata.generation}');
    assert.equal(gen, '1');
  });

  test('kubectl diff shows a change without making it; apply makes it and merges container ports by key', async () => {
    const text = (await readFile(join(REBEL_BASE, 'rebel-base.yaml'), 'utf8'))
      .replace('replicas: 2', 'replicas: 3')
      .replace('              containerPort: 8080\n              protocol: TCP\n', '              containerPort: 8080\n              protocol: TCP\n            - name: metrics\n              containerPort: 9090\n');
    assert.match(text, /containerPort: 9090/);
    const file = join(dir, 'rebel-base-changed.yaml');
    await writeFile(file, text);
    const diff = await kubectl('diff', '-f', file);
    assert.equal(diff.code, 1, `kubectl diff should exit 1 on a difference:\n${diff.stderr}`);
    assert.match(diff.stdout, /^-\s+replicas: 2$/m);
    assert.match(diff.stdout, /^\+\s+replicas: 3$/m);
    assert.match(diff.stdout, /^\+\s+- containerPort: 9090$/m);
    assert.equal(await kubectlOk('get', 'deploy', 'rebel-base', '-o', 'jsonpath={.spec.replicas}'), '2', 'diff must not change the object');
    assert.match(await kubectlOk('apply', '-f', file), /deployment.apps\/rebel-base configured/);
    const d = JSON.parse(await kubectlOk('get', 'deploy', 'rebel-base', '-o', 'json'));
    assert.equal(d.spec.replicas, 3);
    assert.equal(d.metadata.generation, 2);
    assert.deepEqual(
      d.spec.template.spec.containers[0].ports.map((p: { containerPort: number; protocol: string }) => `${p.containerPort}/${p.protocol}`),
      ['8080/TCP', '9090/TCP'],
    );
    const same = await kubectl('diff', '-f', file);
    assert.equal(same.code, 0, same.stdout + same.stderr);
  });

  test('errors read as against a real cluster', async () => {
    const missing = await kubectl('get', 'pod', 'no-such-pod');
    assert.equal(missing.code, 1);
    assert.equal(missing.stderr.trim(), 'Error from server (NotFound): pods "no-such-pod" not found');
    // kubectl asks for the namespace after a NotFound, and names it when it is the one missing.
    const missingNs = await kubectl('get', 'pods', '-n', 'nowhere', 'x');
    assert.equal(missingNs.stderr.trim(), 'Error from server (NotFound): namespaces "nowhere" not found');

    await kubectlOk('create', 'configmap', 'twice', '--from-literal=a=b');
    const again = await kubectl('create', 'configmap', 'twice', '--from-literal=a=b');
    assert.equal(again.stderr.trim(), 'error: failed to create configmap: configmaps "twice" already exists');

    const typo = join(dir, 'typo.yaml');
    await writeFile(typo, 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: typo\nspec:\n  containers:\n    - name: c\n      commandd: [sleep]\n');
    const strict = await kubectl('apply', '-f', typo);
    assert.notEqual(strict.code, 0);
    assert.match(strict.stderr, /Error from server \(BadRequest\).*strict decoding error: unknown field "spec.containers\[0\].commandd"/);

    const bad = join(dir, 'bad-service.yaml');
    await writeFile(bad, 'apiVersion: v1\nkind: Service\nmetadata:\n  name: Bad_Name\nspec:\n  ports:\n    - port: 70000\n');
    const inv = await kubectl('apply', '-f', bad);
    assert.match(inv.stderr, /The Service "Bad_Name" is invalid: \n\* metadata.name: Invalid value: "Bad_Name"/);
    assert.match(inv.stderr, /spec.ports\[0\].port: Invalid value: 70000/);

    const core = kc.makeApiClient(CoreV1Api);
    const cm = await core.readNamespacedConfigMap({ name: 'twice', namespace: 'default' });
    await core.replaceNamespacedConfigMap({ name: 'twice', namespace: 'default', body: { ...cm, data: { a: 'c' } } });
    await assert.rejects(core.replaceNamespacedConfigMap({ name: 'twice', namespace: 'default', body: { ...cm, data: { a: 'd' } } }), (err: any) => {
      assert.equal(err.code, 409);
      const body = typeof err.body === 'string' ? JSON.parse(err.body) : err.body;
      assert.equal(body.reason, 'Conflict');
      assert.match(body.message, /the object has been modified/);
      return true;
    });

    const notAllowed = await raw('POST', '/api/v1/namespaces/default/configmaps/twice', {});
    assert.equal(notAllowed.status, 405);
    assert.equal(JSON.parse(notAllowed.text).reason, 'MethodNotAllowed');
    const badSel = await raw('GET', '/api/v1/pods?fieldSelector=spec.bogus%3Dx');
    assert.equal(badSel.status, 400);
    assert.match(JSON.parse(badSel.text).message, /field label not supported: spec.bogus/);

    // A client without a certificate of the server's CA is not let in.
    const anon = await new Promise<number>((resolve, reject) => {
      const req = request(`${server.url}/api/v1/pods`, { rejectUnauthorized: false }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.end();
    });
    assert.equal(anon, 401);
  });

  test('kubectl get events', async () => {
    const core = kc.makeApiClient(CoreV1Api);
    const now = new Date();
    await core.createNamespacedEvent({
      namespace: 'default',
      body: {
        metadata: { name: 'x-wing.scheduled' },
        involvedObject: { kind: 'Pod', name: 'x-wing', namespace: 'default', apiVersion: 'v1' },
        reason: 'Scheduled',
        message: 'Successfully assigned default/x-wing to node1',
        type: 'Normal',
        source: { component: 'default-scheduler' },
        firstTimestamp: now,
        lastTimestamp: now,
        count: 1,
      },
    });
    const out = await kubectlOk('get', 'events');
    assert.match(out, /^LAST SEEN\s+TYPE\s+REASON\s+OBJECT\s+MESSAGE$/m);
    assert.match(out, /^\S+\s+Normal\s+Scheduled\s+pod\/x-wing\s+Successfully assigned default\/x-wing to node1$/m);
    const sel = await kubectlOk('get', 'events', '--field-selector', 'involvedObject.name=x-wing', '-o', 'name');
    assert.equal(sel.trim(), 'event/x-wing.scheduled');
  });

  test('list: label and field selectors, limit and continue', async () => {
    await kubectlOk('create', 'namespace', 'cmt-paging');
    const core = kc.makeApiClient(CoreV1Api);
    for (let i = 0; i < 5; i++) {
      await core.createNamespacedPod({
        namespace: 'cmt-paging',
        body: { metadata: { name: `p${i}`, labels: { idx: String(i), parity: i % 2 === 0 ? 'even' : 'odd' } }, spec: { nodeName: i < 2 ? 'node-a' : 'node-b', containers: [{ name: 'c', image: 'none' }] } },
      });
    }
    const page1 = await core.listNamespacedPod({ namespace: 'cmt-paging', limit: 2 });
    assert.deepEqual(page1.items.map((p) => p.metadata?.name), ['p0', 'p1']);
    assert.ok(page1.metadata?._continue);
    assert.equal(page1.metadata?.remainingItemCount, 3);
    const page2 = await core.listNamespacedPod({ namespace: 'cmt-paging', limit: 2, _continue: page1.metadata!._continue! });
    assert.deepEqual(page2.items.map((p) => p.metadata?.name), ['p2', 'p3']);
    assert.equal(page2.metadata?.resourceVersion, page1.metadata?.resourceVersion);
    const page3 = await core.listNamespacedPod({ namespace: 'cmt-paging', limit: 2, _continue: page2.metadata!._continue! });
    assert.deepEqual(page3.items.map((p) => p.metadata?.name), ['p4']);
    assert.equal(page3.metadata?._continue, undefined);
    const even = await core.listNamespacedPod({ namespace: 'cmt-paging', labelSelector: 'parity=even,idx notin (4)' });
    assert.deepEqual(even.items.map((p) => p.metadata?.name), ['p0', 'p2']);
    const onB = await core.listPodForAllNamespaces({ fieldSelector: 'spec.nodeName=node-b,metadata.namespace=cmt-paging' });
    assert.deepEqual(onB.items.map((p) => p.metadata?.name), ['p2', 'p3', 'p4']);
    const byName = await kubectlOk('get', 'pods', '-n', 'cmt-paging', '--field-selector', 'metadata.name!=p0', '-o', 'name', '--chunk-size=2');
    assert.deepEqual(byName.trim().split('\n'), ['pod/p1', 'pod/p2', 'pod/p3', 'pod/p4']);
  });

  test('status subresource, generation, finalizers', async () => {
    const apps = kc.makeApiClient(AppsV1Api);
    const core = kc.makeApiClient(CoreV1Api);
    await kubectlOk('create', 'namespace', 'cmt-status');
    const d = await apps.createNamespacedDeployment({
      namespace: 'cmt-status',
      body: { metadata: { name: 'web' }, spec: { replicas: 1, selector: { matchLabels: { app: 'web' } }, template: { metadata: { labels: { app: 'web' } }, spec: { containers: [{ name: 'c', image: 'x' }] } }, status: { readyReplicas: 9 } } as any },
    });
    assert.equal(d.metadata?.generation, 1);
    assert.equal(d.status?.readyReplicas, undefined, 'status given on create is dropped');
    const st = await apps.replaceNamespacedDeploymentStatus({ name: 'web', namespace: 'cmt-status', body: { ...d, spec: { ...d.spec!, replicas: 5 }, status: { readyReplicas: 1, replicas: 1 } } });
    assert.equal(st.status?.readyReplicas, 1);
    assert.equal(st.spec?.replicas, 1, 'a status update does not change spec');
    assert.equal(st.metadata?.generation, 1);
    const up = await apps.replaceNamespacedDeployment({ name: 'web', namespace: 'cmt-status', body: { ...st, spec: { ...st.spec!, replicas: 2 }, status: {} } });
    assert.equal(up.spec?.replicas, 2);
    assert.equal(up.status?.readyReplicas, 1, 'a main-resource update keeps status');
    assert.equal(up.metadata?.generation, 2);
    assert.equal(await kubectlOk('get', 'deploy', 'web', '-n', 'cmt-status', '-o', 'jsonpath={.status.readyReplicas}/{.spec.replicas}'), '1/2');

    await core.createNamespacedConfigMap({ namespace: 'cmt-status', body: { metadata: { name: 'held', finalizers: ['example.com/hold'] }, data: { a: '1' } } });
    await kubectlOk('delete', 'configmap', 'held', '-n', 'cmt-status', '--wait=false');
    const held = await core.readNamespacedConfigMap({ name: 'held', namespace: 'cmt-status' });
    assert.ok(held.metadata?.deletionTimestamp, 'a finalizer holds the object, marked for deletion');
    await kubectlOk('patch', 'configmap', 'held', '-n', 'cmt-status', '--type=merge', '-p', '{"metadata":{"finalizers":null}}');
    await eventually('the released object to go', async () => ((await kubectl('get', 'configmap', 'held', '-n', 'cmt-status')).code === 1 ? true : undefined));
  });

  test('deleting an owner deletes what names it in ownerReferences', async () => {
    await kubectlOk('create', 'namespace', 'cmt-gc');
    await kubectlOk('create', 'deployment', 'owner', '-n', 'cmt-gc', '--image=none');
    const uid = await kubectlOk('get', 'deploy', 'owner', '-n', 'cmt-gc', '-o', 'jsonpath={.metadata.uid}');
    const core = kc.makeApiClient(CoreV1Api);
    const ref = { apiVersion: 'apps/v1', kind: 'Deployment', name: 'owner', uid };
    await core.createNamespacedConfigMap({ namespace: 'cmt-gc', body: { metadata: { name: 'owned', ownerReferences: [ref] } } });
    await core.createNamespacedConfigMap({ namespace: 'cmt-gc', body: { metadata: { name: 'free' } } });
    await kubectlOk('delete', 'deployment', 'owner', '-n', 'cmt-gc');
    await eventually('the dependent to go', async () => ((await kubectl('get', 'configmap', 'owned', '-n', 'cmt-gc')).code === 1 ? true : undefined));
    assert.match(await kubectlOk('get', 'configmap', '-n', 'cmt-gc', '-o', 'name'), /^configmap\/free$/m);
  });

  test('watch: an informer of @kubernetes/client-node sees add, modify, delete; a raw watch follows a label selector', async () => {
    await kubectlOk('create', 'namespace', 'cmt-watch');
    const core = kc.makeApiClient(CoreV1Api);
    const informer = makeInformer<V1Pod>(kc, '/api/v1/namespaces/cmt-watch/pods', () => core.listNamespacedPod({ namespace: 'cmt-watch' }));
    const seen: string[] = [];
    informer.on('add', (p) => seen.push(`add ${p.metadata?.name}`));
    informer.on('update', (p) => seen.push(`update ${p.metadata?.name} ${p.metadata?.labels?.tier ?? ''}`));
    informer.on('delete', (p) => seen.push(`delete ${p.metadata?.name} ${p.metadata?.labels?.tier ?? ''}`));
    informer.on('error', () => undefined);
    await informer.start();
    const sel = await openWatch('/api/v1/namespaces/cmt-watch/pods?watch=true&labelSelector=tier%3Dfront');
    try {
      await core.createNamespacedPod({ namespace: 'cmt-watch', body: { metadata: { name: 'w1', labels: { tier: 'back' } }, spec: { containers: [{ name: 'c', image: 'x' }] } } });
      await eventually('add w1', () => (seen.includes('add w1') ? true : undefined));
      await kubectlOk('label', 'pod', 'w1', '-n', 'cmt-watch', 'tier=front', '--overwrite');
      await eventually('update w1', () => (seen.includes('update w1 front') ? true : undefined));
      await kubectlOk('delete', 'pod', 'w1', '-n', 'cmt-watch');
      await eventually('delete w1', () => (seen.includes('delete w1 front') ? true : undefined));
      assert.equal(informer.list('cmt-watch').length, 0);
      // The selected watch saw w1 enter its selection (ADDED) and leave by deletion.
      await eventually('selector events', () => (sel.events.length >= 2 ? true : undefined));
      assert.deepEqual(sel.events.map((e) => `${e.type} ${e.object.metadata.name}`), ['ADDED w1', 'DELETED w1']);
    } finally {
      sel.close();
      await informer.stop();
    }
  });

  test('watch from a resourceVersion, bookmarks, and 410 Gone once etcd compacted it', async () => {
    await kubectlOk('create', 'namespace', 'cmt-compact');
    const list = JSON.parse((await raw('GET', '/api/v1/namespaces/cmt-compact/configmaps')).text);
    const rv0 = list.metadata.resourceVersion as string;
    await kubectlOk('create', 'configmap', 'c1', '-n', 'cmt-compact', '--from-literal=a=1');
    await kubectlOk('create', 'configmap', 'c2', '-n', 'cmt-compact', '--from-literal=a=2');
    // From rv0: exactly the two creations, in order, then bookmarks.
    const w = await openWatch(`/api/v1/namespaces/cmt-compact/configmaps?watch=1&resourceVersion=${rv0}&allowWatchBookmarks=true`);
    try {
      // A bookmark after both creations carries a resourceVersion at least theirs.
      const bookmarkAfter = (): Record<string, any> | undefined => {
        const i = w.events.findIndex((e) => e.type === 'ADDED' && e.object.metadata.name === 'c2');
        return i < 0 ? undefined : w.events.slice(i + 1).find((e) => e.type === 'BOOKMARK');
      };
      const bm = await eventually('a bookmark after the events', bookmarkAfter);
      assert.deepEqual(w.events.filter((e) => e.type !== 'BOOKMARK').map((e) => `${e.type} ${e.object.metadata.name}`), ['ADDED c1', 'ADDED c2']);
      const c2 = w.events.find((e) => e.type === 'ADDED' && e.object.metadata.name === 'c2')!;
      assert.ok(BigInt(bm.object.metadata.resourceVersion) >= BigInt(c2.object.metadata.resourceVersion), 'bookmark resourceVersion');
      assert.ok(BigInt(c2.object.metadata.resourceVersion) > BigInt(rv0));
    } finally {
      w.close();
    }
    await kv.compact(await kv.currentRevision());
    const gone = await openWatch(`/api/v1/namespaces/cmt-compact/configmaps?watch=1&resourceVersion=${rv0}`);
    try {
      await eventually('the ERROR event', () => (gone.events.length > 0 ? true : undefined));
      assert.equal(gone.events[0]!.type, 'ERROR');
      assert.equal(gone.events[0]!.object.code, 410);
      assert.equal(gone.events[0]!.object.reason, 'Expired');
      await eventually('the stream to end', () => (gone.ended ? true : undefined));
    } finally {
      gone.close();
    }
  });

  test('kubectl create (protobuf bodies), scale, wait for a condition written through the status subresource', async () => {
    await kubectlOk('create', 'namespace', 'cmt-typed');
    await kubectlOk('create', 'deployment', 'web', '-n', 'cmt-typed', '--image=none', '--port=8080', '--replicas=1');
    await kubectlOk('create', 'service', 'clusterip', 'web', '-n', 'cmt-typed', '--tcp=80:8080');
    await kubectlOk('create', 'secret', 'generic', 'creds', '-n', 'cmt-typed', '--from-literal=user=luke');
    await kubectlOk('create', 'serviceaccount', 'robot', '-n', 'cmt-typed');
    const d = JSON.parse(await kubectlOk('get', 'deploy', 'web', '-n', 'cmt-typed', '-o', 'json'));
    assert.equal(d.spec.template.spec.containers[0].ports[0].containerPort, 8080);
    assert.equal(d.spec.strategy.type, 'RollingUpdate');
    assert.equal(await kubectlOk('get', 'secret', 'creds', '-n', 'cmt-typed', '-o', 'jsonpath={.data.user}'), Buffer.from('luke').toString('base64'));
    assert.match(await kubectlOk('get', 'svc', 'web', '-n', 'cmt-typed'), /^web\s+ClusterIP\s+10\.96\.\d+\.\d+\s+<none>\s+80\/TCP/m);
    assert.match(await kubectlOk('scale', 'deployment', 'web', '-n', 'cmt-typed', '--replicas=3'), /deployment.apps\/web scaled/);
    assert.equal(await kubectlOk('get', 'deploy', 'web', '-n', 'cmt-typed', '-o', 'jsonpath={.spec.replicas}/{.metadata.generation}'), '3/2');

    // What a kubelet will do: write the pod's status; kubectl wait sees it through a watch.
    const core = kc.makeApiClient(CoreV1Api);
    await core.createNamespacedPod({ namespace: 'cmt-typed', body: { metadata: { name: 'p', labels: { app: 'web' } }, spec: { containers: [{ name: 'c', image: 'none' }] } } });
    const waiting = kubectl('wait', '--for=condition=Ready', 'pod', '-l', 'app=web', '-n', 'cmt-typed', '--timeout=60s');
    await new Promise((r) => setTimeout(r, 500));
    const pod = await core.readNamespacedPod({ name: 'p', namespace: 'cmt-typed' });
    await core.replaceNamespacedPodStatus({
      name: 'p',
      namespace: 'cmt-typed',
      body: { ...pod, status: { phase: 'Running', podIP: '10.1.0.7', conditions: [{ type: 'Ready', status: 'True' }], containerStatuses: [{ name: 'c', ready: true, restartCount: 0, image: 'none', imageID: '' }] } },
    });
    const w = await waiting;
    assert.equal(w.code, 0, w.stderr);
    assert.match(w.stdout, /pod\/p condition met/);
    assert.match(await kubectlOk('get', 'pod', 'p', '-n', 'cmt-typed', '-o', 'wide'), /^p\s+1\/1\s+Running\s+0\s+\S+\s+10\.1\.0\.7\s/m);
  });

  test('the server restarted on the same etcd: objects stay, a watch resumes from its resourceVersion', async () => {
    await kubectlOk('create', 'namespace', 'cmt-restart');
    await kubectlOk('create', 'configmap', 'before', '-n', 'cmt-restart');
    const rv = JSON.parse((await raw('GET', '/api/v1/namespaces/cmt-restart/configmaps')).text).metadata.resourceVersion as string;
    const port = server.port;
    await server.stop();
    ({ server } = await startKubeApi({ kv, dir, clusterName: 'cluster1', port, bookmarkIntervalMs: 300 }));
    assert.match(await kubectlOk('get', 'configmap', '-n', 'cmt-restart'), /^before\s/m);
    await kubectlOk('create', 'configmap', 'after', '-n', 'cmt-restart');
    const w = await openWatch(`/api/v1/namespaces/cmt-restart/configmaps?watch=1&resourceVersion=${rv}`);
    try {
      await eventually('the event after the restart', () => (w.events.some((e) => e.type === 'ADDED') ? true : undefined));
      assert.deepEqual(w.events.map((e) => `${e.type} ${e.object.metadata.name}`), ['ADDED after']);
    } finally {
      w.close();
    }
  });

  test('kubectl delete -f removes what apply made; kubectl delete namespace removes its contents', async () => {
    const out = await kubectlOk('delete', '-f', REBEL_BASE);
    assert.match(out, /deployment.apps "rebel-base" deleted/);
    assert.match(out, /pod "x-wing" deleted/);
    const left = await kubectl('get', 'pods,svc,deploy,cnp', '-o', 'name');
    assert.equal(left.stdout.trim(), '');

    await kubectlOk('create', 'namespace', 'cmt-doomed');
    await kubectlOk('create', 'configmap', 'cfg', '-n', 'cmt-doomed', '--from-literal=a=b');
    await kubectlOk('create', 'deployment', 'web', '-n', 'cmt-doomed', '--image=none');
    const policy = (await readFile(join(REBEL_BASE, 'policy.yaml'), 'utf8')).replace('namespace: default', 'namespace: cmt-doomed');
    await writeFile(join(dir, 'doomed-policy.yaml'), policy);
    await kubectlOk('apply', '-f', join(dir, 'doomed-policy.yaml'));
    const created = await kv.list(`${KUBE_PREFIX}`);
    assert.ok(created.pairs.filter((p) => p.key.includes('/cmt-doomed/')).length >= 3);
    // kubectl waits until the namespace is gone (its contents first).
    assert.match(await kubectlOk('delete', 'namespace', 'cmt-doomed', '--timeout=60s'), /namespace "cmt-doomed" deleted/);
    const after = await kv.list(`${KUBE_PREFIX}`);
    assert.deepEqual(after.pairs.filter((p) => p.key.includes('cmt-doomed')).map((p) => p.key), []);
    const gone = await kubectl('get', 'namespace', 'cmt-doomed');
    assert.match(gone.stderr, /namespaces "cmt-doomed" not found/);
    const create = await kubectl('create', 'configmap', 'late', '-n', 'cmt-doomed');
    assert.match(create.stderr, /namespaces "cmt-doomed" not found/);
  });

  test('the MCS API kinds: ServiceExport/ServiceImport served from deploy/crds/mcs-api.yaml, status conditions, printer columns, schema checked', async () => {
    await kubectlOk('apply', '-f', MCS_CRDS);
    await kubectlOk('wait', '--for=condition=Established', 'crd/serviceexports.multicluster.x-k8s.io', 'crd/serviceimports.multicluster.x-k8s.io', '--timeout=20s');
    await writeFile(
      join(dir, 'mcs.yaml'),
      [
        'apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {name: cart, namespace: default}',
        'apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\nmetadata: {name: cart, namespace: default}\nspec:\n  type: ClusterSetIP\n  ips: [10.96.7.7]\n  ports: [{name: http, protocol: TCP, port: 80}]',
      ].join('\n---\n'),
    );
    assert.match(await kubectlOk('apply', '-f', join(dir, 'mcs.yaml')), /serviceexport.multicluster.x-k8s.io\/cart created/);
    const status = { status: { conditions: [{ type: 'Valid', status: 'True', reason: 'Valid', message: 'ok' }, { type: 'Conflict', status: 'False', reason: 'NoConflicts', message: 'none' }] } };
    await kubectlOk('patch', 'serviceexport', 'cart', '--subresource=status', '--type=merge', '-p', JSON.stringify(status));
    assert.match(await kubectlOk('get', 'svcex', 'cart'), /^cart\s+True\s+False\s/m);
    assert.match(await kubectlOk('get', 'serviceimports'), /^cart\s+ClusterSetIP\s+\["10\.96\.7\.7"\]\s/m);
    // The schema is enforced: a type outside the API's two.
    await writeFile(join(dir, 'bad-import.yaml'), 'apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\nmetadata: {name: bad, namespace: default}\nspec: {type: LoadBalancer}\n');
    const bad = await kubectl('apply', '-f', join(dir, 'bad-import.yaml'));
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /spec\.type/);
    await kubectlOk('delete', '-f', join(dir, 'mcs.yaml'));
  });

  test('a CRD deleted takes its objects; re-created it serves again', async () => {
    const custom = kc.makeApiClient(CustomObjectsApi);
    await custom.createClusterCustomObject({
      group: 'cilium.io',
      version: 'v2',
      plural: 'ciliumclusterwidenetworkpolicies',
      body: { apiVersion: 'cilium.io/v2', kind: 'CiliumClusterwideNetworkPolicy', metadata: { name: 'all' }, spec: { endpointSelector: {} } },
    });
    assert.match(await kubectlOk('get', 'ccnp'), /^all\s/m);
    await kubectlOk('delete', 'crd', 'ciliumclusterwidenetworkpolicies.cilium.io');
    await eventually('the kind to be gone', async () => ((await kubectl('get', 'ccnp')).code !== 0 ? true : undefined));
    await kubectlOk('apply', '-f', CILIUM_CRDS);
    assert.equal((await kubectlOk('get', 'ccnp')).trim(), '');
  });

  test('lab apply: a file with one refused document changes nothing; what needs a namespace or CRD of the same file is checked when applied', async () => {
    const core = kc.makeApiClient(CoreV1Api);
    const exists = async (name: string, namespace = 'default'): Promise<boolean> =>
      core.readNamespacedConfigMap({ name, namespace }).then(() => true, () => false);
    const cm = (name: string, namespace = 'default') => `apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ${name}, namespace: ${namespace}}\ndata: {a: "1"}\n`;
    // Document 2 of 3 is refused (a port out of range): documents 1 and 3 are valid, and neither is stored.
    const bad = [cm('la-first'), 'apiVersion: v1\nkind: Service\nmetadata: {name: la-broken}\nspec: {ports: [{port: 70000}]}\n', cm('la-third')].join('---\n');
    await assert.rejects(applyToApi(kc, manifestDocuments(bad, 'bad.yaml')), (e: unknown) => e instanceof ManifestError && /service\/la-broken: .*70000/.test(e.message));
    assert.equal(await exists('la-first'), false, 'the valid document before the refused one was not applied');
    assert.equal(await exists('la-third'), false);
    // A namespace and a CRD made by the file itself, with objects in/of them after.
    const crd = `apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.la.example.com}
spec:
  group: la.example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions: [{name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}]
`;
    const good = [
      'apiVersion: v1\nkind: Namespace\nmetadata: {name: la-ns}\n',
      cm('la-in-ns', 'la-ns'),
      crd,
      'apiVersion: la.example.com/v1\nkind: Widget\nmetadata: {name: w1, namespace: default}\n',
      cm('la-plain'),
    ].join('---\n');
    const lines = await applyToApi(kc, manifestDocuments(good, 'good.yaml'));
    assert.deepEqual(lines.map((l) => `${l.ref} ${l.action}`), [
      'namespace/la-ns created',
      'configmap/la-in-ns created',
      'customresourcedefinition.apiextensions.k8s.io/widgets.la.example.com created',
      'widget.la.example.com/w1 created',
      'configmap/la-plain created',
    ]);
    assert.ok(await exists('la-in-ns', 'la-ns'));
    const again = await applyToApi(kc, manifestDocuments(good, 'good.yaml'));
    assert.deepEqual(again.map((l) => l.action), ['unchanged', 'unchanged', 'unchanged', 'unchanged', 'unchanged']);
    // A refused object in a namespace the file creates is only seen when applied: what came before it stays (as with kubectl).
    const late = ['apiVersion: v1\nkind: Namespace\nmetadata: {name: la-ns2}\n', 'apiVersion: v1\nkind: Service\nmetadata: {name: la-late, namespace: la-ns2}\nspec: {ports: [{port: 70000}]}\n'].join('---\n');
    await assert.rejects(applyToApi(kc, manifestDocuments(late, 'late.yaml')), /service\/la-late: .*70000/);
    await kubectlOk('delete', 'namespace', 'la-ns', 'la-ns2');
    await kubectlOk('delete', 'crd', 'widgets.la.example.com');
    await core.deleteNamespacedConfigMap({ name: 'la-plain', namespace: 'default' });
  });

  test('connections: KubeHttp and client-node clients with reuseConnections keep one alive; a new client certificate gets a new one', async () => {
    const fresh = (): KubeConfig => {
      const k = new KubeConfig();
      k.loadFromFile(kubeconfig);
      return k;
    };
    const opened = async (f: () => Promise<unknown>): Promise<number> => {
      const before = server.tlsConnections;
      await f();
      return server.tlsConnections - before;
    };
    // client-node as it is: a new agent, so a new connection (a TLS handshake on both ends), per request.
    const plain = fresh().makeApiClient(CoreV1Api);
    assert.equal(await opened(async () => { for (let i = 0; i < 3; i++) await plain.readNamespace({ name: 'default' }); }), 3);
    const kept = reuseConnections(fresh()).makeApiClient(CoreV1Api);
    assert.equal(await opened(async () => { for (let i = 0; i < 5; i++) await kept.readNamespace({ name: 'default' }); }), 1);
    // Concurrent requests need a connection each; later ones reuse them.
    assert.equal(await opened(async () => { await Promise.all([0, 1, 2].map(() => kept.listNamespacedPod({ namespace: 'default' }))); }), 2);
    assert.equal(await opened(async () => { for (let i = 0; i < 3; i++) await kept.readNamespace({ name: 'default' }); }), 0);

    // KubeHttp (the agents' and apiservers' client): requests, errors and lists on one connection.
    const certDir = join(dir, 'rotating');
    const kc2 = fresh();
    await copyFile(pki.admin.certFile, join(dir, 'rot.crt'));
    await copyFile(pki.admin.keyFile, join(dir, 'rot.key'));
    kc2.users[0] = { ...kc2.users[0]!, certFile: join(dir, 'rot.crt'), keyFile: join(dir, 'rot.key') };
    const http = new KubeHttp(kc2);
    try {
      assert.equal(await opened(async () => {
        for (let i = 0; i < 4; i++) assert.equal((await http.request('GET', '/api/v1/namespaces/default')).kind, 'Namespace');
        await assert.rejects(http.request('GET', '/api/v1/namespaces/no-such-ns'), /404/);
        assert.ok((await http.list('/api/v1/namespaces', {}, new AbortController().signal)).items.length > 0);
      }), 1);
      // The certificate file replaced (a rotation): the next request is made with it, on a new connection.
      const next = await issueCert(pki.ca, { commonName: 'rotated', usage: 'client', outDir: certDir, name: 'rotated' });
      await copyFile(next.certFile, join(dir, 'rot.crt'));
      await copyFile(next.keyFile, join(dir, 'rot.key'));
      assert.equal(await opened(async () => { for (let i = 0; i < 3; i++) await http.request('GET', '/api/v1/namespaces/default'); }), 1);
    } finally {
      http.close();
    }
  });
});

// Service-account tokens of the lab's Kubernetes API (src/lab/kube-api/tokens.ts,
// server.ts): the `default` ServiceAccount the controller makes in every
// namespace, TokenRequest through real kubectl (`kubectl create token`), a
// token used by real kubectl and by the in-cluster config of
// src/sources/kubernetes/kubeconfig.ts, and the refusals (401 naming why): a
// deleted ServiceAccount, one made again under the same name, a deleted bound
// pod, an expired token, a token signed by another cluster's key.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'node:https';
import { CoreV1Api } from '@kubernetes/client-node';

import { KvClient, startEtcd, type EtcdServer } from '../src/kvstore/index.ts';
import { startKubeApi, type KubeApiPki, type KubeApiServer } from '../src/lab/kube-api/index.ts';
import { issueToken, newServiceAccountKey } from '../src/lab/kube-api/tokens.ts';
import { kubeConfigFor, startControllers, type RunningControllers } from '../src/lab/controllers/index.ts';
import { loadKubeConnection, SERVICE_ACCOUNT_DIR } from '../src/sources/kubernetes/kubeconfig.ts';
import { eventually, kubectlFor, run, show } from './helpers/kube.ts';

let dir: string;
let etcd: EtcdServer;
let kv: KvClient;
let server: KubeApiServer;
let pki: KubeApiPki;
let kubeconfig: string;
let controllers: RunningControllers;
const { kubectl, kubectlOk } = kubectlFor({ kubeconfig: () => kubeconfig, cacheDir: () => join(dir, 'kube-cache') });

/** A request with a bearer token and no client certificate. */
async function asToken(token: string, path: string): Promise<{ status: number; body: { message?: string; reason?: string; items?: unknown[] } }> {
  const ca = await readFile(pki.ca.certFile);
  return await new Promise((resolve, reject) => {
    const req = request(`${server.url}${path}`, { ca, headers: { Authorization: `Bearer ${token}` } }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
    });
    req.on('error', reject);
    req.end();
  });
}

const createToken = async (ns: string, sa: string, ...extra: string[]): Promise<string> => (await kubectlOk('create', 'token', sa, '-n', ns, ...extra)).trim();

describe('lab Kubernetes API: service-account tokens', { timeout: 300_000 }, () => {
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cmt-kube-tokens-'));
    etcd = await startEtcd({ dir: join(dir, 'etcd'), clusterName: 'tok' });
    await etcd.clientCert('root');
    kv = new KvClient(etcd.connection('root', { timeoutMs: 15_000 }));
    ({ server, pki, kubeconfig } = await startKubeApi({ kv, dir, clusterName: 'c1' }));
    controllers = await startControllers(kubeConfigFor(server.url, { caFile: pki.ca.certFile, certFile: pki.admin.certFile, keyFile: pki.admin.keyFile }), { resyncMs: 1000 });
  });

  after(async () => {
    await controllers?.stop();
    await server?.stop();
    await kv?.close();
    await etcd?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('a default ServiceAccount in every namespace, made again when deleted', async () => {
    await eventually('default/default', async () => (await kubectl('get', 'serviceaccount', 'default', '-n', 'default')).code === 0, 30_000, 200);
    await kubectlOk('create', 'namespace', 'cmt-tok');
    await eventually('cmt-tok/default', async () => (await kubectl('get', 'serviceaccount', 'default', '-n', 'cmt-tok')).code === 0, 30_000, 200);
    const uid = (await kubectlOk('get', 'sa', 'default', '-n', 'cmt-tok', '-o', 'jsonpath={.metadata.uid}')).trim();
    await kubectlOk('delete', 'sa', 'default', '-n', 'cmt-tok');
    const again = await eventually('cmt-tok/default made again', async () => {
      const r = await kubectl('get', 'sa', 'default', '-n', 'cmt-tok', '-o', 'jsonpath={.metadata.uid}');
      return r.code === 0 && r.stdout.trim() !== uid ? r.stdout.trim() : undefined;
    }, 30_000, 200);
    assert.notEqual(again, uid);
  });

  test('kubectl create token; the token works with kubectl and with the in-cluster config; TokenRequest refusals', async () => {
    await kubectlOk('create', 'serviceaccount', 'reader', '-n', 'cmt-tok');
    await kubectlOk('run', 'p1', '-n', 'cmt-tok', '--image', 'busybox', '--restart=Never', '--', 'sleep', '1');
    const token = await createToken('cmt-tok', 'reader', '--duration', '20m');
    const claims = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { sub: string; exp: number; iat: number };
    assert.equal(claims.sub, 'system:serviceaccount:cmt-tok:reader');
    assert.equal(claims.exp - claims.iat, 1200);
    // Real kubectl with nothing but the token and the CA.
    const r = await run('kubectl', ['--server', server.url, '--certificate-authority', pki.ca.certFile, '--token', token, 'get', 'pods', '-n', 'cmt-tok', '-o', 'name'], { env: { ...process.env, KUBECONFIG: '/dev/null', KUBECACHEDIR: join(dir, 'kc2') } });
    assert.equal(r.code, 0, show(r));
    assert.equal(r.stdout.trim(), 'pod/p1');
    // The in-cluster config of the Kubernetes source: KUBERNETES_SERVICE_HOST/PORT and the token directory.
    const root = join(dir, 'pod-root');
    await mkdir(join(root, SERVICE_ACCOUNT_DIR), { recursive: true });
    await writeFile(join(root, SERVICE_ACCOUNT_DIR, 'token'), token);
    await writeFile(join(root, SERVICE_ACCOUNT_DIR, 'ca.crt'), await readFile(pki.ca.certFile));
    await writeFile(join(root, SERVICE_ACCOUNT_DIR, 'namespace'), 'cmt-tok');
    const saved = { host: process.env.KUBERNETES_SERVICE_HOST, port: process.env.KUBERNETES_SERVICE_PORT };
    process.env.KUBERNETES_SERVICE_HOST = '127.0.0.1';
    process.env.KUBERNETES_SERVICE_PORT = String(server.port);
    try {
      const conn = loadKubeConnection({ inCluster: true, serviceAccountRoot: root });
      assert.equal(conn.description, 'in-cluster service account');
      const pods = await conn.kubeConfig.makeApiClient(CoreV1Api).listNamespacedPod({ namespace: 'cmt-tok' });
      assert.deepEqual(pods.items.map((p) => p.metadata?.name), ['p1']);
    } finally {
      for (const [k, v] of [['KUBERNETES_SERVICE_HOST', saved.host], ['KUBERNETES_SERVICE_PORT', saved.port]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
    // TokenRequest: a ServiceAccount that does not exist, a lifetime under 10 minutes.
    const missing = await kubectl('create', 'token', 'nobody', '-n', 'cmt-tok');
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /serviceaccounts "nobody" not found/);
    const short = await kubectl('create', 'token', 'reader', '-n', 'cmt-tok', '--duration', '10s');
    assert.notEqual(short.code, 0);
    assert.match(short.stderr, /may not specify a duration less than 10 minutes/);
  });

  test('refused with 401 naming why: bad signature, expired, deleted or replaced ServiceAccount, deleted bound pod', async () => {
    await kubectlOk('create', 'serviceaccount', 'gone', '-n', 'cmt-tok');
    const token = await createToken('cmt-tok', 'gone');
    assert.equal((await asToken(token, '/api/v1/namespaces/cmt-tok/pods')).status, 200);
    const uid = (await kubectlOk('get', 'sa', 'gone', '-n', 'cmt-tok', '-o', 'jsonpath={.metadata.uid}')).trim();

    // Signed by another cluster's key, with every claim right.
    const foreign = issueToken(newServiceAccountKey(), { namespace: 'cmt-tok', serviceAccount: { name: 'gone', uid }, seconds: 3600 }).token;
    let r = await asToken(foreign, '/api/v1/namespaces/cmt-tok/pods');
    assert.equal(r.status, 401);
    assert.equal(r.body.reason, 'Unauthorized');
    assert.match(r.body.message!, /^Unauthorized: invalid signature/);
    // Expired: this cluster's own key, issued two hours ago for one.
    const key = await readFile(pki.serviceAccountKeyFile, 'utf8');
    const expired = issueToken(key, { namespace: 'cmt-tok', serviceAccount: { name: 'gone', uid }, seconds: 3600, now: Math.floor(Date.now() / 1000) - 7200 }).token;
    r = await asToken(expired, '/api/v1/namespaces/cmt-tok/pods');
    assert.equal(r.status, 401);
    assert.match(r.body.message!, /service account token has expired/);
    // Not a token at all.
    r = await asToken('not-a-token', '/api/v1/pods');
    assert.equal(r.status, 401);

    // The ServiceAccount deleted: its tokens stop working at once; one made again under the name does not revive them.
    await kubectlOk('delete', 'sa', 'gone', '-n', 'cmt-tok');
    r = await asToken(token, '/api/v1/namespaces/cmt-tok/pods');
    assert.equal(r.status, 401);
    assert.match(r.body.message!, /serviceaccounts "gone" not found in namespace cmt-tok/);
    await kubectlOk('create', 'serviceaccount', 'gone', '-n', 'cmt-tok');
    r = await asToken(token, '/api/v1/namespaces/cmt-tok/pods');
    assert.equal(r.status, 401);
    assert.match(r.body.message!, /service account UID \(.+\) does not match claim/);

    // A token bound to a pod ends with the pod.
    await kubectlOk('run', 'p2', '-n', 'cmt-tok', '--image', 'busybox', '--restart=Never', '--', 'sleep', '1');
    const bound = await createToken('cmt-tok', 'gone', '--bound-object-kind', 'Pod', '--bound-object-name', 'p2');
    assert.equal((await asToken(bound, '/api/v1/namespaces/cmt-tok/pods')).status, 200);
    await kubectlOk('delete', 'pod', 'p2', '-n', 'cmt-tok', '--wait=false');
    r = await asToken(bound, '/api/v1/namespaces/cmt-tok/pods');
    assert.equal(r.status, 401);
    assert.match(r.body.message!, /pods "p2" not found \(the token is bound to it\)/);
  });
});

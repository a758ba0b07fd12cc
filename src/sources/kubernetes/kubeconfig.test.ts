import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadKubeConnection, SERVICE_ACCOUNT_DIR } from './kubeconfig.ts';

const CONFIG = `apiVersion: v1
kind: Config
clusters:
- {name: c1, cluster: {server: 'https://127.0.0.1:6443', insecure-skip-tls-verify: true}}
- {name: c2, cluster: {server: 'https://127.0.0.2:6443', insecure-skip-tls-verify: true}}
users:
- {name: u, user: {token: abc}}
contexts:
- {name: one, context: {cluster: c1, user: u}}
- {name: two, context: {cluster: c2, user: u}}
- {name: broken, context: {cluster: nowhere, user: u}}
current-context: one
`;

test('loadKubeConnection: --kubeconfig, context, KUBECONFIG list, clear errors', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'cmt-kubeconfig-'));
  try {
    const file = join(dir, 'config');
    await writeFile(file, CONFIG);
    const home = join(dir, 'home');
    const c = loadKubeConnection({ kubeconfig: file, env: {}, home });
    assert.equal(c.server, 'https://127.0.0.1:6443');
    assert.equal(c.description, `kubeconfig ${file} (context one)`);
    assert.equal(loadKubeConnection({ kubeconfig: file, context: 'two', env: {}, home }).server, 'https://127.0.0.2:6443');
    // KUBECONFIG: missing entries are skipped as kubectl does; all missing is an error.
    assert.equal(loadKubeConnection({ env: { KUBECONFIG: `${join(dir, 'nope')}:${file}` }, home }).server, 'https://127.0.0.1:6443');
    assert.throws(() => loadKubeConnection({ env: { KUBECONFIG: join(dir, 'nope') }, home }), /KUBECONFIG=.*nope: no such file/);
    assert.throws(() => loadKubeConnection({ kubeconfig: join(dir, 'missing'), env: {}, home }), new RegExp(`kubeconfig ${join(dir, 'missing')}: no such file`));
    assert.throws(() => loadKubeConnection({ kubeconfig: file, context: 'three', env: {}, home }), /no context "three" \(it has "one", "two", "broken"\)/);
    assert.throws(() => loadKubeConnection({ kubeconfig: file, context: 'broken', env: {}, home }), /context "broken" names cluster "nowhere", which is not defined/);
    const bad = join(dir, 'bad');
    await writeFile(bad, 'clusters: [');
    assert.throws(() => loadKubeConnection({ kubeconfig: bad, env: {}, home }), new RegExp(`kubeconfig ${bad}: `));
    // Nothing at all.
    const saved = process.env.KUBERNETES_SERVICE_HOST;
    delete process.env.KUBERNETES_SERVICE_HOST;
    try {
      assert.throws(() => loadKubeConnection({ env: {}, home }), /no kubeconfig: pass --kubeconfig, set KUBECONFIG, or run in a pod/);
      assert.throws(() => loadKubeConnection({ env: {}, home, inCluster: true }), /in-cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set/);
    } finally {
      if (saved !== undefined) process.env.KUBERNETES_SERVICE_HOST = saved;
    }
    // ~/.kube/config when nothing else is given.
    await mkdir(join(home, '.kube'), { recursive: true });
    await writeFile(join(home, '.kube', 'config'), CONFIG);
    assert.equal(loadKubeConnection({ env: {}, home }).description, `kubeconfig ${join(home, '.kube', 'config')} (context one)`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('loadKubeConnection: in-cluster service account', async () => {
  const root = await mkdtemp(join(tmpdir(), 'cmt-kubeconfig-sa-'));
  const saved = { host: process.env.KUBERNETES_SERVICE_HOST, port: process.env.KUBERNETES_SERVICE_PORT };
  try {
    process.env.KUBERNETES_SERVICE_HOST = '10.96.0.1';
    process.env.KUBERNETES_SERVICE_PORT = '443';
    assert.throws(() => loadKubeConnection({ inCluster: true, env: {}, serviceAccountRoot: root }), /in-cluster: .*\/serviceaccount\/token: no such file/);
    await mkdir(join(root, SERVICE_ACCOUNT_DIR), { recursive: true });
    await writeFile(join(root, SERVICE_ACCOUNT_DIR, 'token'), 'tok');
    await writeFile(join(root, SERVICE_ACCOUNT_DIR, 'ca.crt'), 'ca');
    const c = loadKubeConnection({ inCluster: true, env: {}, serviceAccountRoot: root });
    assert.equal(c.server, 'https://10.96.0.1:443');
    assert.equal(c.description, 'in-cluster service account');
  } finally {
    for (const [k, v] of [['KUBERNETES_SERVICE_HOST', saved.host], ['KUBERNETES_SERVICE_PORT', saved.port]] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    await rm(root, { recursive: true, force: true });
  }
});

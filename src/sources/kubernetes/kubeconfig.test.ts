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
    const { readKubeAccess } = await import('./kube-access.ts');
    const a = readKubeAccess({ inCluster: true, env: {}, serviceAccountRoot: root });
    assert.equal(a.server, 'https://10.96.0.1:443');
    const opts: { ca?: Buffer; headers?: Record<string, string> } = {};
    await a.access.applyToHTTPSOptions(opts);
    assert.equal(opts.ca?.toString(), 'ca');
    assert.equal(opts.headers?.Authorization, 'Bearer tok');
  } finally {
    for (const [k, v] of [['KUBERNETES_SERVICE_HOST', saved.host], ['KUBERNETES_SERVICE_PORT', saved.port]] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    await rm(root, { recursive: true, force: true });
  }
});

test('readKubeAccess: the same TLS options and Authorization as client-node, without loading it; the rest goes to client-node', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'cmt-kubeaccess-'));
  try {
    await mkdir(join(dir, 'pki'));
    await writeFile(join(dir, 'pki', 'ca.crt'), 'CA-PEM');
    await writeFile(join(dir, 'pki', 'c.crt'), 'CERT-PEM');
    await writeFile(join(dir, 'pki', 'c.key'), 'KEY-PEM');
    await writeFile(join(dir, 'tok'), 'file-token\n');
    const b64 = (s: string): string => Buffer.from(s).toString('base64');
    const file = join(dir, 'config');
    await writeFile(
      file,
      `apiVersion: v1
kind: Config
clusters:
- {name: files, cluster: {server: 'https://127.0.0.1:6443', certificate-authority: pki/ca.crt, tls-server-name: api.local}}
- {name: data, cluster: {server: 'https://127.0.0.2:6443', certificate-authority-data: ${b64('CA-DATA')}}}
- {name: insecure, cluster: {server: 'https://127.0.0.3:6443', insecure-skip-tls-verify: true}}
users:
- {name: cert-files, user: {client-certificate: pki/c.crt, client-key: ${join(dir, 'pki', 'c.key')}}}
- {name: cert-data, user: {client-certificate-data: ${b64('CERT-DATA')}, client-key-data: ${b64('KEY-DATA')}}}
- {name: token, user: {token: abc}}
- {name: token-file, user: {tokenFile: tok}}
- {name: exec, user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/echo}}}
contexts:
- {name: a, context: {cluster: files, user: cert-files}}
- {name: b, context: {cluster: data, user: cert-data}}
- {name: c, context: {cluster: insecure, user: token}}
- {name: d, context: {cluster: files, user: token-file}}
- {name: e, context: {cluster: files, user: exec}}
current-context: a
`,
    );
    const { readKubeAccess } = await import('./kube-access.ts');
    const pick = (o: Record<string, unknown>): Record<string, unknown> => ({
      ca: o.ca?.toString(),
      cert: o.cert?.toString(),
      key: o.key?.toString(),
      rejectUnauthorized: o.rejectUnauthorized,
      servername: o.servername,
      authorization: (o.headers as Record<string, string> | undefined)?.Authorization,
      agent: o.agent?.constructor.name,
    });
    const want = {
      a: { ca: 'CA-PEM', cert: 'CERT-PEM', key: 'KEY-PEM', servername: 'api.local' },
      b: { ca: 'CA-DATA', cert: 'CERT-DATA', key: 'KEY-DATA' },
      c: { rejectUnauthorized: false, authorization: 'Bearer abc' },
      d: { ca: 'CA-PEM', servername: 'api.local', authorization: 'Bearer file-token' },
    };
    for (const [context, expected] of Object.entries(want)) {
      const conn = readKubeAccess({ kubeconfig: file, context, env: {} });
      assert.equal(conn.access.needsClientNode, false, context);
      const ours: Record<string, unknown> = {};
      await conn.access.applyToHTTPSOptions(ours);
      const theirs: Record<string, unknown> = {};
      await loadKubeConnection({ kubeconfig: file, context, env: {} }).kubeConfig.applyToHTTPSOptions(theirs);
      // client-node 1.4 ignores a user's tokenFile (kubectl reads it, as this reader does)
      if (context === 'd') delete theirs.headers;
      assert.deepEqual(pick({ ...ours, ...(context === 'd' ? { headers: undefined } : {}) }), pick(theirs), `context ${context}: as client-node`);
      assert.deepEqual(pick(ours), { ca: undefined, cert: undefined, key: undefined, rejectUnauthorized: undefined, servername: undefined, authorization: undefined, agent: 'Agent', ...expected }, `context ${context}`);
    }
    // exec: client-node applies it (loaded for the first request)
    const e = readKubeAccess({ kubeconfig: file, context: 'e', env: {} });
    assert.equal(e.access.needsClientNode, true);
    assert.deepEqual(e.access.user?.other, ['exec']);
    // names: a duplicate across KUBECONFIG files, as client-node's merge says
    const second = join(dir, 'second');
    await writeFile(second, 'clusters:\n- {name: files, cluster: {server: "https://x:1"}}\n');
    assert.throws(() => readKubeAccess({ env: { KUBECONFIG: `${file}:${second}` } }), new RegExp(`KUBECONFIG file ${second}: Duplicate cluster: files`));
    await writeFile(second, 'users: {a: 1}\n');
    assert.throws(() => readKubeAccess({ kubeconfig: second, env: {} }), new RegExp(`kubeconfig ${second}: users: a list expected`));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

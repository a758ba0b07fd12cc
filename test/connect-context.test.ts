// `clustermesh connect / disconnect --context --destination-context` between
// two clusters installed with `clustermesh install`, each a lab Kubernetes API
// server (real kubectl-compatible API over etcd). The clusters' own etcds are
// real etcds with the mesh's roles, their cluster-config written as an
// apiserver would; the installs' `remote` certificates are replaced by those
// etcds' (what the installed etcd would have issued), so the probe dials what
// agents would dial. Checks what lands in each Secret (Cilium's layout) and
// that every refusal writes nothing.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';

import { startMeshEtcd } from '../src/clustermesh/etcd.ts';
import { clusterConfigKey } from '../src/clustermesh/keys.ts';
import { encodeClusterConfig } from '../src/clustermesh/wire.ts';
import { KvClient, startEtcd, type EtcdServer } from '../src/kvstore/index.ts';
import { startKubeApi, type KubeApiServer } from '../src/lab/kube-api/index.ts';
import { kubectlFor, ok, run } from './helpers/kube.ts';

const CLI = join(new URL('..', import.meta.url).pathname, 'bin/clustermesh.js');

let dir: string;
let store: EtcdServer;
let kv: KvClient;
const servers: KubeApiServer[] = [];
const meshEtcds: Record<string, EtcdServer> = {};
let kubeconfigs: string;

const k = kubectlFor({ kubeconfig: () => kubeconfigs, cacheDir: () => join(dir, 'kube-cache') });
const cli = (...args: string[]) => run(process.execPath, [CLI, ...args], { env: k.env() });
async function remotesSecret(ctx: string): Promise<{ data: Record<string, string>; annotations: Record<string, string>; resourceVersion: string }> {
  const s = JSON.parse(await k.kubectlOk('--context', ctx, '-n', 'clustermesh-system', 'get', 'secret', 'clustermesh-remotes', '-o', 'json'));
  return { data: s.data ?? {}, annotations: s.metadata.annotations ?? {}, resourceVersion: s.metadata.resourceVersion };
}
const endpointOf = (c: string) => meshEtcds[c]!.connection('remote', { via: 'network' }).endpoints[0]!;

describe('connect and disconnect by kube context', { timeout: 600_000 }, () => {
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cmt-connect-'));
    store = await startEtcd({ dir: join(dir, 'store'), clusterName: 'kstore' });
    await store.clientCert('root');
    kv = new KvClient(store.connection('root', { timeoutMs: 15_000 }));
    const files: string[] = [];
    for (const [i, c] of ['c1', 'c2'].entries()) {
      const k = await startKubeApi({ kv, dir: join(dir, c), clusterName: c, prefix: `clustermesh/kube-${c}/` });
      servers.push(k.server);
      files.push(k.kubeconfig);
      // The cluster's own etcd, with the mesh's roles, publishing its cluster-config as its apiserver would.
      const e = await startMeshEtcd({ dir: join(dir, `${c}-etcd`), clusterName: c });
      meshEtcds[c] = e;
      await e.clientCert('root');
      await e.clientCert('remote');
      const root = new KvClient(e.connection('root', { timeoutMs: 10_000 }));
      await root.put(clusterConfigKey(c), encodeClusterConfig({ id: i + 1 }));
      await root.close();
    }
    kubeconfigs = files.join(':');
  });

  after(async () => {
    for (const s of servers) await s.stop();
    await kv?.close();
    await store?.stop();
    for (const e of Object.values(meshEtcds)) await e.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('refusals write nothing; connect writes each side in Cilium layout; disconnect removes it', async () => {
    await ok(cli('install', '--context', 'c1', '--cluster-name', 'c1', '--cluster-id', '1'), 'install c1');
    await ok(cli('install', '--context', 'c2', '--cluster-name', 'c2', '--cluster-id', '2'), 'install c2');
    const before1 = await remotesSecret('c1');
    const before2 = await remotesSecret('c2');
    const args = ['connect', '--context', 'c1', '--destination-context', 'c2', '--endpoint', endpointOf('c1'), '--destination-endpoint', endpointOf('c2')];

    // 1. The installs' own remote certificates come from another CA than these etcds' servers: the probe refuses.
    const tls = await cli(...args);
    assert.equal(tls.code, 2, tls.stderr);
    assert.match(tls.stderr, /cluster c2 \(c2\) cannot be reached as its remote clusters' agents would reach it .*tried:\n\s+https:\/\/127\.0\.0\.1:\d+: /s);
    // Now give each install the `remote` certificate its etcd issued.
    for (const c of ['c1', 'c2']) {
      const conn = meshEtcds[c]!.connection('remote');
      const b64 = async (f: string) => (await readFile(f)).toString('base64');
      const data = { 'ca.crt': await b64(conn.caFile), 'tls.crt': await b64(conn.certFile), 'tls.key': await b64(conn.keyFile) };
      await k.kubectlOk('--context', c, '-n', 'clustermesh-system', 'patch', 'secret', 'clustermesh-etcd-remote', '--type', 'merge', '-p', JSON.stringify({ data }));
    }

    // 2. An endpoint that does not answer, and the other cluster's etcd (its CA does not verify that server): refused, naming them.
    const dead = await cli('connect', '--context', 'c1', '--destination-context', 'c2', '--endpoint', endpointOf('c1'), '--destination-endpoint', 'https://127.0.0.1:1');
    assert.equal(dead.code, 2);
    assert.match(dead.stderr, /tried:\n\s+https:\/\/127\.0\.0\.1:1: /);
    const wrong = await cli('connect', '--context', 'c1', '--destination-context', 'c2', '--endpoint', endpointOf('c1'), '--destination-endpoint', endpointOf('c1'));
    assert.equal(wrong.code, 2);
    assert.match(wrong.stderr, new RegExp(`tried:\\n\\s+${endpointOf('c1').replace(/[.]/g, '\\.')}: .*unable to verify the first certificate`));
    // Without --endpoint the Service says: a NodePort on a cluster without nodes has no address.
    const nonodes = await cli('connect', '--context', 'c1', '--destination-context', 'c2');
    assert.equal(nonodes.code, 2);
    assert.match(nonodes.stderr, /--context c1: service\/clustermesh-apiserver is a NodePort but the cluster lists no node with an InternalIP; give the endpoint with --endpoint/);
    const bad = await cli('connect', '--context', 'c1', '--destination-context', 'c2', '--endpoint', endpointOf('c1'), '--destination-endpoint', 'etcd:2379');
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--destination-endpoint etcd:2379: must be https:\/\/host:port/);
    assert.equal((await remotesSecret('c1')).resourceVersion, before1.resourceVersion, 'c1 untouched by the refusals');
    assert.equal((await remotesSecret('c2')).resourceVersion, before2.resourceVersion, 'c2 untouched by the refusals');

    // 3. Connect: both ways, Cilium's keys, the IDs recorded.
    const out = await ok(cli(...args), 'connect');
    assert.match(out, /connected c1 -> c2 \(c1: secret clustermesh-system\/clustermesh-remotes, key c2\)/);
    assert.match(out, /connected c2 -> c1/);
    for (const [s, d] of [['c1', 'c2'], ['c2', 'c1']] as const) {
      const sec = await remotesSecret(s);
      assert.deepEqual(Object.keys(sec.data).sort(), [d, `${d}.etcd-client-ca.crt`, `${d}.etcd-client.crt`, `${d}.etcd-client.key`]);
      const cfg = parseYaml(Buffer.from(sec.data[d]!, 'base64').toString()) as Record<string, unknown>;
      assert.deepEqual(cfg, {
        endpoints: [endpointOf(d)],
        'trusted-ca-file': `/etc/clustermesh/remotes/${d}.etcd-client-ca.crt`,
        'cert-file': `/etc/clustermesh/remotes/${d}.etcd-client.crt`,
        'key-file': `/etc/clustermesh/remotes/${d}.etcd-client.key`,
      });
      assert.equal(Buffer.from(sec.data[`${d}.etcd-client.crt`]!, 'base64').toString(), await readFile(meshEtcds[d]!.connection('remote').certFile, 'utf8'));
      assert.deepEqual(JSON.parse(sec.annotations['clustermesh.io/remote-cluster-ids']!), { [d]: d === 'c1' ? 1 : 2 });
    }
    // Again: idempotent.
    await ok(cli(...args), 'connect again');
    // A re-install keeps what connect wrote.
    await ok(cli('install', '--context', 'c1', '--cluster-name', 'c1', '--cluster-id', '1'), 're-install c1');
    assert.ok((await remotesSecret('c1')).data.c2, 'the remote entry survives a re-install');

    // 4. Disconnect both ways.
    const gone = await ok(cli('disconnect', '--context', 'c1', '--destination-context', 'c2'), 'disconnect');
    assert.match(gone, /disconnected c1 -> c2/);
    assert.deepEqual(Object.keys((await remotesSecret('c1')).data), []);
    assert.deepEqual(Object.keys((await remotesSecret('c2')).data), []);
  });
  test('status --context reads the install namespace from --install-namespace (as observe/ui) or --namespace; the two disagreeing is a usage error', async () => {
    // c1 is installed in clustermesh-system (the test above): no agent runs there, so it is read but not ready.
    const json = (r: { stdout: string }) => JSON.parse(r.stdout) as { namespace: string; cluster: string | null; notReady: string[] };
    const byInstall = await cli('status', '--context', 'c1', '--install-namespace', 'clustermesh-system', '-o', 'json');
    assert.equal(byInstall.code, 1, byInstall.stderr);
    assert.deepEqual([json(byInstall).namespace, json(byInstall).cluster], ['clustermesh-system', 'c1']);
    const byNamespace = await cli('status', '--context', 'c1', '--namespace', 'clustermesh-system', '-o', 'json');
    assert.deepEqual(json(byNamespace), json(byInstall));
    const elsewhere = await cli('status', '--context', 'c1', '--install-namespace', 'cm-elsewhere', '-o', 'json');
    assert.equal(elsewhere.code, 1, elsewhere.stderr);
    assert.equal(json(elsewhere).namespace, 'cm-elsewhere');
    assert.ok(json(elsewhere).notReady.some((m) => m.includes('in namespace cm-elsewhere: clustermesh is not installed there')), JSON.stringify(json(elsewhere).notReady));
    const both = await cli('status', '--context', 'c1', '--namespace', 'clustermesh-system', '--install-namespace', 'cm-elsewhere');
    assert.equal(both.code, 2);
    assert.match(both.stderr, /--namespace clustermesh-system and --install-namespace cm-elsewhere disagree/);
    assert.equal(both.stdout, '');
    const same = await cli('status', '--context', 'c1', '--namespace', 'clustermesh-system', '--install-namespace', 'clustermesh-system', '-o', 'json');
    assert.equal(json(same).namespace, 'clustermesh-system');
    const help = await cli('status', '--help');
    assert.match(help.stdout, /--install-namespace <ns>\s+with --context: namespace of the install \(default:\s+clustermesh-system\)/);
    assert.match(help.stdout, /--namespace <ns>\s+with --context: the same as --install-namespace/);
  });
});

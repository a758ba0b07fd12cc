// `clustermesh install` / `uninstall` by kube context, against a Kubernetes
// API (the lab's server over a real etcd) with real kubectl: what install
// creates, that a re-install keeps certificates and what connect wrote, that
// a refusal changes nothing, that CRDs someone else made are left alone, and
// that uninstall leaves the cluster as it found it.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { KvClient, startEtcd, type EtcdServer } from '../src/kvstore/index.ts';
import { startKubeApi, type KubeApiServer } from '../src/lab/kube-api/index.ts';
import { CRDS_FILE } from '../src/install/manifests.ts';
import { eventually, kubectlFor, ok, run } from './helpers/kube.ts';

const ROOT = new URL('..', import.meta.url).pathname;
const CLI = join(ROOT, 'bin/clustermesh.js');

let dir: string;
let etcd: EtcdServer;
let kv: KvClient;
let server: KubeApiServer;
let kubeconfig: string;

const k = kubectlFor({ kubeconfig: () => kubeconfig, cacheDir: () => join(dir, 'kube-cache') });
const kubectl = (...args: string[]) => k.kubectl('--context', 'c1', ...args);
const cli = (...args: string[]) => run(process.execPath, [CLI, ...args], { env: k.env() });

/** Everything of the kinds install touches, as `kind/namespace/name@resourceVersion` (the cluster's state, to compare). */
async function snapshot(): Promise<string[]> {
  const out = await ok(kubectl('get', 'namespaces,customresourcedefinitions,clusterroles,clusterrolebindings,configmaps,secrets,serviceaccounts,services,deployments,daemonsets', '-A', '-o', 'json'), 'snapshot');
  const items = (JSON.parse(out) as { items: Array<{ kind: string; metadata: { namespace?: string; name: string; resourceVersion: string } }> }).items;
  return items.map((i) => `${i.kind}/${i.metadata.namespace ?? ''}/${i.metadata.name}@${i.metadata.resourceVersion}`).sort();
}

describe('clustermesh install / uninstall by kube context', { timeout: 600_000 }, () => {
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cmt-install-'));
    etcd = await startEtcd({ dir: join(dir, 'etcd'), clusterName: 'inst' });
    await etcd.clientCert('root');
    kv = new KvClient(etcd.connection('root', { timeoutMs: 15_000 }));
    ({ server, kubeconfig } = await startKubeApi({ kv, dir, clusterName: 'c1' }));
  });

  after(async () => {
    await server?.stop();
    await kv?.close();
    await etcd?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('install, re-install, refusal, uninstall: the cluster ends as it began', async () => {
    // Someone's own CiliumNetworkPolicy CRD (as on a cluster that runs Cilium): install keeps it, uninstall leaves it.
    await ok(kubectl('apply', '-f', CRDS_FILE), 'apply CRDs');
    await ok(kubectl('delete', 'crd', 'ciliumclusterwidenetworkpolicies.cilium.io'), 'delete one CRD');
    const before = await snapshot();

    const first = await ok(cli('install', '--context', 'c1', '--cluster-name', 'c1', '--cluster-id', '7', '--apiserver-address', '192.0.2.7'), 'install');
    assert.match(first, /^namespace\/clustermesh-system created$/m);
    assert.match(first, /^customresourcedefinition\/ciliumnetworkpolicies\.cilium\.io unchanged \(kept\)$/m);
    assert.match(first, /^customresourcedefinition\/ciliumclusterwidenetworkpolicies\.cilium\.io created$/m);
    assert.match(first, /^daemonset\/clustermesh-agent created$/m);
    const svc = JSON.parse(await ok(kubectl('-n', 'clustermesh-system', 'get', 'service', 'clustermesh-apiserver', '-o', 'json'), 'get svc'));
    assert.deepEqual([svc.spec.type, svc.spec.ports[0].nodePort, svc.spec.ports[0].port], ['NodePort', 32007, 2379]);
    const ds = JSON.parse(await ok(kubectl('-n', 'clustermesh-system', 'get', 'daemonset', 'clustermesh-agent', '-o', 'json'), 'get ds'));
    assert.equal(ds.spec.template.spec.hostNetwork, true);
    const hash1 = ds.spec.template.metadata.annotations['clustermesh.io/config-hash'];
    assert.match(hash1, /^[0-9a-f]{16}$/);
    const cm = JSON.parse(await ok(kubectl('-n', 'clustermesh-system', 'get', 'configmap', 'clustermesh-config', '-o', 'json'), 'get cm'));
    assert.deepEqual([cm.data['cluster-name'], cm.data['cluster-id']], ['c1', '7']);
    const secret = async (name: string) => JSON.parse(await ok(kubectl('-n', 'clustermesh-system', 'get', 'secret', name, '-o', 'json'), `get secret ${name}`));
    const ca1 = (await secret('clustermesh-ca')).data['ca.crt'];

    // What install renders also passes the server's own dry run of kubectl apply.
    const rendered = await ok(cli('install', '--cluster-name', 'c1', '--cluster-id', '7', '--dry-run', '-o', 'yaml'), 'dry run');
    await ok(k.kubectlIn(rendered, '--context', 'c1', 'apply', '--dry-run=server', '-f', '-'), 'kubectl apply --dry-run=server');

    // connect would have written a remote cluster into clustermesh-remotes: a re-install keeps it, and the CA.
    await ok(kubectl('-n', 'clustermesh-system', 'patch', 'secret', 'clustermesh-remotes', '--type', 'merge', '-p', JSON.stringify({ stringData: { c2: 'endpoints: [https://192.0.2.8:32008]\n' } })), 'patch remotes');
    const again = await ok(cli('install', '--context', 'c1', '--cluster-name', 'c1', '--cluster-id', '7', '--image', 'example.com/clustermesh:test', '--tunnel-port', '8473'), 're-install');
    assert.match(again, /^secret\/clustermesh-ca unchanged \(kept\)$/m);
    assert.match(again, /^daemonset\/clustermesh-agent configured$/m);
    assert.equal((await secret('clustermesh-ca')).data['ca.crt'], ca1, 'the CA is kept');
    assert.ok((await secret('clustermesh-remotes')).data.c2, 'what connect wrote is kept');
    const ds2 = JSON.parse(await ok(kubectl('-n', 'clustermesh-system', 'get', 'daemonset', 'clustermesh-agent', '-o', 'json'), 'get ds'));
    assert.equal(ds2.spec.template.spec.containers[0].image, 'example.com/clustermesh:test', 'the new settings applied');
    // A changed setting (only in the ConfigMap) changes the agents' pod template too: the DaemonSet rolls them onto it.
    assert.equal(JSON.parse(await ok(kubectl('-n', 'clustermesh-system', 'get', 'configmap', 'clustermesh-config', '-o', 'json'), 'get cm')).data['tunnel-port'], '8473');
    assert.notEqual(ds2.spec.template.metadata.annotations['clustermesh.io/config-hash'], hash1);

    // Another name or ID on an installed cluster is refused, and nothing changes.
    const state = await snapshot();
    const refused = await cli('install', '--context', 'c1', '--cluster-name', 'other', '--cluster-id', '8');
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /namespace clustermesh-system already holds an install of cluster c1 \(ID 7\).*uninstall first/);
    assert.deepEqual(await snapshot(), state, 'a refused install writes nothing');

    // Bad flags and contexts are refused before anything is read or written.
    const bad = await cli('install', '--context', 'c1', '--cluster-name', 'c1', '--cluster-id', '0');
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--cluster-id: 0 is out of range 1\.\.255/);
    const noctx = await cli('install', '--context', 'nope', '--cluster-name', 'c1', '--cluster-id', '7');
    assert.equal(noctx.code, 2);
    assert.match(noctx.stderr, /no context "nope" \(it has "c1"\)/);

    const gone = await ok(cli('uninstall', '--context', 'c1'), 'uninstall');
    assert.match(gone, /^daemonset\/clustermesh-agent deleted$/m);
    assert.match(gone, /^customresourcedefinition\/ciliumclusterwidenetworkpolicies\.cilium\.io deleted$/m);
    assert.doesNotMatch(gone, /ciliumnetworkpolicies\.cilium\.io deleted/, 'a CRD install did not create stays');
    // Namespace deletion finishes asynchronously (its contents first).
    await eventually('the cluster as it was before install', async () => {
      const now = await snapshot();
      return JSON.stringify(now) === JSON.stringify(before) ? now : undefined;
    });
    const nothing = await ok(cli('uninstall', '--context', 'c1'), 'second uninstall');
    assert.match(nothing, /nothing of clustermesh found/);
  });
});

// Every lab cluster serves the Kubernetes API: `clustermesh lab up` starts one
// Kubernetes API server per cluster (over that cluster's Kubernetes etcd, a
// process separate from the mesh's etcd) and writes one
// kubeconfig with a context per cluster; real kubectl talks to it. The lab's
// controllers run beside each server: a Deployment applied with kubectl gets
// its pods. After `down` no Kubernetes API process is left.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { clusterConfigKey } from '../src/clustermesh/keys.ts';
import { KvClient } from '../src/kvstore/index.ts';
import { KUBE_PREFIX } from '../src/lab/kube-api/index.ts';
import { childEnv } from '../src/lab/process.ts';
import { clusterKvConfig, etcdKvConfig, labStateSchema, sameProcessAlive, type LabState } from '../src/lab/state.ts';
import { eventually, kubectlFor, run, show, type Run } from './helpers/kube.ts';

const CLI = resolve(import.meta.dirname, '..', 'bin', 'clustermesh.js');
const root = mkdtempSync(join(tmpdir(), 'cmtk-root-'));
const files = mkdtempSync(join(tmpdir(), 'cmtk-files-'));
const env = childEnv({ CLUSTERMESH_LAB_ROOT: root });
const name = `cmtk${randomBytes(3).toString('hex')}`;


const cli = (args: string[], timeoutMs = 300_000): Promise<Run> => run(process.execPath, [CLI, ...args], { env, timeoutMs });

let kubeconfig = '';

const { kubectl, kubectlOk } = kubectlFor({ kubeconfig: () => kubeconfig, cacheDir: () => join(files, 'kube-cache'), env: () => env });

function readState(): LabState {
  return labStateSchema.parse(JSON.parse(readFileSync(join(root, name, 'lab.json'), 'utf8')));
}

describe('lab: a Kubernetes API per cluster, one kubeconfig, kubectl', { timeout: 900_000 }, () => {
  let up = false;
  after(async () => {
    if (up) {
      const down = await cli(['lab', 'down', '--lab', name]);
      if (down.code !== 0) console.error(`lab down ${name}: ${show(down)}`);
    }
    rmSync(files, { recursive: true, force: true });
    rmSync(root, { recursive: true, force: true });
  });

  test('up writes a kubeconfig with a context per cluster; kubectl reaches each cluster, whose objects are its own', async () => {
    // --direct: this file checks the lab's Kubernetes API beside a mesh of lab processes (the mesh's etcd a process apart
    // from the Kubernetes etcd; the load balancer pool's first address free, which an install's apiserver Service would take).
    const r = await cli(['lab', 'up', '--direct', '--lab', name, '--clusters', '2', '--nodes', '1']);
    up = true;
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /Kubernetes API per cluster: cluster1 https:\/\/127\.0\.0\.1:\d+, cluster2 https:\/\/127\.0\.0\.1:\d+/);

    const path = await cli(['lab', 'kubeconfig', '--lab', name]);
    assert.equal(path.code, 0, show(path));
    kubeconfig = path.stdout.trim();
    assert.equal(kubeconfig, join(root, name, 'kubeconfig'));
    assert.ok(existsSync(kubeconfig));
    assert.deepEqual((await kubectlOk('config', 'get-contexts', '-o', 'name')).trim().split('\n').sort(), ['cluster1', 'cluster2']);

    const state = readState();
    const urls = state.clusters.map((c) => c.kubeApi?.url);
    assert.equal(new Set(urls).size, 2, `two servers: ${urls.join(' ')}`);
    for (const c of state.clusters) {
      assert.ok(c.kubeApi && sameProcessAlive(c.kubeApi), `${c.name}'s Kubernetes API server runs`);
      const rss = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${c.kubeApi.pid}/status`, 'utf8'))?.[1];
      console.log(`# ${c.name}: kube-apiserver with controllers, pid ${c.kubeApi.pid}, RSS ${Math.round(Number(rss) / 1024)} MiB`);
    }

    const nss = await kubectlOk('--context', 'cluster1', 'get', 'namespaces', '-o', 'jsonpath={.items[*].metadata.name}');
    for (const ns of ['default', 'kube-system']) assert.ok(nss.split(' ').includes(ns), `namespace ${ns} in ${nss}`);

    for (const c of ['cluster1', 'cluster2']) {
      const f = join(files, `cm-${c}.yaml`);
      writeFileSync(f, `apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: whoami\n  namespace: default\ndata:\n  cluster: ${c}\n`);
      assert.match(await kubectlOk('--context', c, 'apply', '-f', f), /configmap\/whoami created/);
    }
    writeFileSync(join(files, 'only2.yaml'), 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: only-in-2\ndata: {a: b}\n');
    await kubectlOk('--context', 'cluster2', 'apply', '-f', join(files, 'only2.yaml'));
    for (const c of ['cluster1', 'cluster2']) assert.equal(await kubectlOk('--context', c, 'get', 'configmap', 'whoami', '-o', 'jsonpath={.data.cluster}'), c);
    const missing = await kubectl('--context', 'cluster1', 'get', 'configmap', 'only-in-2');
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /configmaps "only-in-2" not found/);
    // The default context is the first cluster.
    assert.equal(await kubectlOk('get', 'configmap', 'whoami', '-o', 'jsonpath={.data.cluster}'), 'cluster1');

    // The objects are in the cluster's Kubernetes etcd (a process of its own, its own CA), none in the mesh's etcd.
    for (const c of state.clusters) {
      assert.ok(c.kubeEtcd, `${c.name}'s Kubernetes etcd is recorded`);
      assert.ok(sameProcessAlive(c.kubeEtcd) && sameProcessAlive(c.etcd) && c.kubeEtcd.pid !== c.etcd.pid, `${c.name}: two etcd processes (${c.etcd.pid}, ${c.kubeEtcd.pid})`);
      assert.notEqual(c.kubeEtcd.caFile, c.etcd.caFile);
      assert.ok(state.processes.some((p) => p.name === `kube-etcd ${c.name}` && p.pid === c.kubeEtcd!.pid), `kube-etcd ${c.name} recorded for down`);
      const kube = new KvClient(etcdKvConfig(c.kubeEtcd));
      const mesh = new KvClient(clusterKvConfig(c));
      try {
        assert.ok((await kube.get(`${KUBE_PREFIX}core/configmaps/default/whoami`)) !== undefined, `${c.name}: configmap whoami in the Kubernetes etcd`);
        assert.ok((await mesh.get(clusterConfigKey(c.name))) !== undefined, `${c.name}: the mesh's etcd holds the mesh (cluster-config)`);
        assert.deepEqual((await mesh.list(KUBE_PREFIX)).pairs.map((p) => p.key), [], `${c.name}: no Kubernetes object in the mesh's etcd`);
      } finally {
        await Promise.all([kube.close(), mesh.close()]);
      }
    }
    const log = await cli(['lab', 'logs', 'kube-etcd', '--lab', name, '--cluster', 'cluster2']);
    assert.equal(log.code, 0, show(log));
    assert.match(log.stdout, /"user-name":"kube"/, "kube-etcd's log: its user kube set up");

    const status = await cli(['status', '--lab', name]);
    for (const c of state.clusters) assert.ok(status.stdout.includes(`kube-api:    ok  ${c.kubeApi!.url}`), `status shows ${c.name}'s API URL:\n${show(status)}`);
  });

  test("the lab's controllers: a Deployment applied with kubectl gets its pods, scale and delete follow", async (t) => {
    if (!kubeconfig) return t.skip('no lab');
    const f = join(files, 'web.yaml');
    writeFileSync(
      f,
      `apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, command: [sleep, infinity], ports: [{containerPort: 8080, name: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
`,
    );
    await kubectlOk('--context', 'cluster2', 'apply', '-f', f);
    const podNames = async (ctx: string): Promise<string[]> => (await kubectlOk('--context', ctx, 'get', 'pods', '-l', 'app=web', '-o', 'jsonpath={.items[*].metadata.name}')).split(' ').filter(Boolean);
    await eventually('2 pods of deployment web in cluster2', async () => ((await podNames('cluster2')).length === 2 ? true : undefined));
    assert.deepEqual(await podNames('cluster1'), [], 'cluster1 has no pods of a Deployment applied to cluster2');
    const owner = await kubectlOk('--context', 'cluster2', 'get', 'pods', '-l', 'app=web', '-o', 'jsonpath={.items[0].metadata.ownerReferences[0].kind}/{.items[0].metadata.ownerReferences[0].name}');
    assert.equal(owner, 'Deployment/web');
    await eventually('an EndpointSlice of service web', async () => ((await kubectlOk('--context', 'cluster2', 'get', 'endpointslices', '-l', 'kubernetes.io/service-name=web', '-o', 'name')).trim() ? true : undefined));

    await kubectlOk('--context', 'cluster2', 'scale', 'deployment/web', '--replicas', '3');
    await eventually('3 pods after scale', async () => ((await podNames('cluster2')).length === 3 ? true : undefined));
    await kubectlOk('--context', 'cluster2', 'delete', '-f', f);
    await eventually('no pods after delete', async () => ((await podNames('cluster2')).length === 0 ? true : undefined), 180_000); // the kubelet stops each pod first: slow on a loaded machine
  });

  test("the lab's cloud load balancer: a LoadBalancer Service with a host-network backend gets an address the other cluster reaches", async (t) => {
    if (!kubeconfig) return t.skip('no lab');
    const state = readState();
    const n1 = state.nodes.find((n) => n.cluster === 'cluster1')!;
    const n2 = state.nodes.find((n) => n.cluster === 'cluster2')!;
    // A host-network "backend": a server in cluster1's node namespace on the node's addresses, on
    // another port than the Service's (as the installed etcd: Service port 2379, node port 2391).
    const server = spawn('ip', ['netns', 'exec', n1.netns, process.execPath, '-e', "require('net').createServer((s) => s.end('from ' + process.argv[1])).listen(7000, '0.0.0.0')", n1.name], { stdio: 'ignore' });
    const lines = (ip: string) => `
apiVersion: v1
kind: Service
metadata: {name: etcd-lb, namespace: default}
spec:
  type: LoadBalancer
  ports: [{name: tcp, port: 2379, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: etcd-lb-1, namespace: default, labels: {kubernetes.io/service-name: etcd-lb}}
addressType: IPv4
ports: [{name: tcp, port: 7000, protocol: TCP}]
endpoints: [{addresses: ['${ip}'], nodeName: ${n1.name}, conditions: {ready: true}}]
`;
    const f = join(files, 'lb.yaml');
    try {
      writeFileSync(f, lines(n1.underlayIP));
      await kubectlOk('--context', 'cluster1', 'apply', '-f', f);
      const vip = await eventually('status.loadBalancer.ingress of etcd-lb', async () =>
        (await kubectlOk('--context', 'cluster1', 'get', 'service', 'etcd-lb', '-o', 'jsonpath={.status.loadBalancer.ingress[0].ip}')).trim() || undefined,
      );
      assert.equal(vip, '10.1.0.200', 'the first address of cluster1 pool');
      // From the other cluster's node, through the lab's router, to the node that holds the address.
      const reply = await eventually(`a reply through ${vip}:2379 (the Service port; the backend listens on 7000) from cluster2`, async () => {
        const r = await run('ip', ['netns', 'exec', n2.netns, process.execPath, '-e', `const s=require('net').connect(2379,'${vip}');let d='';s.on('data',(b)=>d+=b);s.on('end',()=>{console.log(d);process.exit(0)});s.on('error',(e)=>{console.error(e.message);process.exit(1)});setTimeout(()=>process.exit(2),3000)`]);
        return r.code === 0 ? r.stdout.trim() : undefined;
      });
      assert.equal(reply, `from ${n1.name}`);
      const addrs = async () => (await run('ip', ['-n', n1.netns, '-4', '-o', 'addr', 'show'])).stdout;
      assert.match(await addrs(), new RegExp(`inet ${vip.replace(/\./g, '\\.')}/32`));

      // A backend on the pod network: the address stays the Service's but is placed on no node.
      writeFileSync(f, lines('10.101.1.99'));
      await kubectlOk('--context', 'cluster1', 'apply', '-f', f);
      await eventually('the address leaves the node', async () => (!(await addrs()).includes(`inet ${vip}/32`) ? true : undefined));
      assert.equal((await kubectlOk('--context', 'cluster1', 'get', 'service', 'etcd-lb', '-o', 'jsonpath={.status.loadBalancer.ingress[0].ip}')).trim(), vip);

      writeFileSync(f, lines(n1.underlayIP));
      await kubectlOk('--context', 'cluster1', 'apply', '-f', f);
      await eventually('the address back on the node', async () => ((await addrs()).includes(`inet ${vip}/32`) ? true : undefined));
      await kubectlOk('--context', 'cluster1', 'delete', '-f', f);
      await eventually('the address released with the Service', async () => (!(await addrs()).includes(`inet ${vip}/32`) ? true : undefined));
    } finally {
      server.kill('SIGTERM');
    }
  });

  test('down stops every Kubernetes API server', async (t) => {
    if (!kubeconfig) return t.skip('no lab');
    const servers = readState().clusters.map((c) => c.kubeApi!);
    const down = await cli(['lab', 'down', '--lab', name]);
    assert.equal(down.code, 0, show(down));
    up = false;
    assert.deepEqual(servers.filter((s) => sameProcessAlive(s)).map((s) => s.pid), []);
    assert.equal(existsSync(join(root, name)), false);
  });
});

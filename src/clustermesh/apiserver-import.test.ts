// End to end with the real apiserver: cluster objects written to each
// cluster's Kubernetes API (the lab's server and EndpointSlice controller, in
// this process) and its agents' Endpoints to its etcd → `clustermesh
// apiserver --kubeconfig` exports them → the other cluster's ClusterMesh
// imports them, validated.
import { strict as assert } from 'node:assert';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import pino from 'pino';
import { Registry } from 'prom-client';
import { startApiserver, type Apiserver } from '../apiserver/apiserver.ts';
import { compileApiserverOptions } from '../apiserver/options.ts';
import { KvClient } from '../kvstore/client.ts';
import { kubeConfigFor, startControllers, type RunningControllers } from '../lab/controllers/index.ts';
import { startKubeApi, type KubeApiServer } from '../lab/kube-api/index.ts';
import { KubeObjects } from '../lab/kube-objects.ts';
import { loadKubeConnection } from '../sources/kubernetes/kubeconfig.ts';
import { EndpointWriter } from '../sources/store/writer.ts';
import { ClusterMesh } from './clustermesh.ts';
import { CLUSTER_LABEL_KEY } from './wire.ts';
import { eventually, recordingLogger, tempDir, TestCluster } from './testing.ts';

function objects(c: TestCluster, pods: number): unknown[] {
  const out: unknown[] = [
    { kind: 'Namespace', metadata: { name: 'default' } },
    { kind: 'Node', metadata: { name: 'node1' }, spec: { podCIDR: `10.${100 + c.id}.1.0/24` }, status: { addresses: [{ type: 'InternalIP', address: c.nodeIp(1) }] } },
    {
      kind: 'Service',
      metadata: { name: 'echo', namespace: 'default', annotations: { 'service.cilium.io/global': 'true' } },
      spec: { clusterIP: '10.96.0.10', selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] },
    },
  ];
  for (let i = 1; i <= pods; i++) out.push(...pod(c, i));
  return out;
}

function pod(c: TestCluster, i: number): unknown[] {
  return [
    {
      kind: 'Pod',
      metadata: { name: `echo-${i}`, namespace: 'default', labels: { app: 'echo' } },
      spec: { nodeName: 'node1', containers: [{ name: 'echo', image: 'echo', ports: [{ containerPort: 8080 }] }] },
      status: { phase: 'Running', podIP: c.podIp(1, i), conditions: [{ type: 'Ready', status: 'True' }] },
    },
    {
      kind: 'Endpoint',
      metadata: { name: `echo-${i}`, namespace: 'default', labels: { app: 'echo' } },
      status: { identity: { id: c.identity(1), labels: [] }, networking: { podIP: c.podIp(1, i), nodeName: 'node1', nodeIP: c.nodeIp(1) } },
    },
  ];
}

/** The cluster's Kubernetes API (lab server and controllers, in this process) over its etcd. */
async function startClusterApi(c: TestCluster, dir: string): Promise<{ kube: KubeObjects; kubeconfig: string; stop: () => Promise<void> }> {
  const kv = new KvClient(c.etcd.connection('root', { timeoutMs: 5000 }));
  const { server, pki, kubeconfig } = await startKubeApi({ kv, dir, clusterName: c.name });
  const controllers: RunningControllers = await startControllers(kubeConfigFor(server.url, { caFile: pki.ca.certFile, certFile: pki.admin.certFile, keyFile: pki.admin.keyFile }));
  const stop = async (s: KubeApiServer): Promise<void> => {
    await controllers.stop();
    await s.stop();
    await kv.close();
  };
  return { kube: new KubeObjects(loadKubeConnection({ kubeconfig }).kubeConfig), kubeconfig, stop: () => stop(server) };
}

/** Kubernetes kinds to the API, Endpoint objects (mesh state) to etcd. */
async function write(c: TestCluster, kube: KubeObjects, objs: unknown[]): Promise<void> {
  for (const o of objs) {
    if ((o as { kind: string }).kind === 'Endpoint') await new EndpointWriter(c.writer).apply(o);
    else await kube.apply(o);
  }
}

describe('import from the real apiserver', () => {
  it('two clusters export with the apiserver and import each other', async () => {
    const { dir: root, cleanup } = await tempDir('e2e');
    const clusters: TestCluster[] = [];
    const apis: Apiserver[] = [];
    const meshes: ClusterMesh[] = [];
    const kubeApis: Array<Awaited<ReturnType<typeof startClusterApi>>> = [];
    try {
      for (const [name, id] of [['c1', 1], ['c2', 2]] as const) {
        const c = await TestCluster.start(root, name, id);
        clusters.push(c);
        const api = await startClusterApi(c, join(root, `kube-${name}`));
        kubeApis.push(api);
        await write(c, api.kube, objects(c, 2));
        // The EndpointSlice controller works asynchronously: wait for both pods
        // in echo's slice, so that what the apiserver's first sync exports is
        // the whole state and the assertions after `ready` check that sync.
        await eventually(async () => (await api.kube.listRaw('EndpointSlice')).some((s) => (s.metadata as { labels?: Record<string, string> }).labels?.['kubernetes.io/service-name'] === 'echo' && (s.endpoints as unknown[] | undefined)?.length === 2), `${name}: echo's EndpointSlice with both pods`);
        const cfg = compileApiserverOptions({ clusterName: name, clusterId: String(id), etcdConfig: join(root, 'unused'), kubeconfig: api.kubeconfig, heartbeatInterval: '1s', logLevel: 'silent' });
        apis.push(await startApiserver(cfg, { connection: c.etcd.connection('apiserver'), logger: pino({ level: 'silent' }) }));
      }
      await Promise.all(apis.map((a) => a.ready));
      const [c1, c2] = clusters as [TestCluster, TestCluster];
      for (const [local, remote] of [[c1, c2], [c2, c1]] as const) {
        const dir = join(root, `cfg-${local.name}`);
        await mkdir(dir);
        await remote.writeConfigFile(dir);
        const m = new ClusterMesh({ localCluster: { name: local.name, id: local.id }, configDir: dir, logger: recordingLogger(), registry: new Registry(), backoff: { initialMs: 50, maxMs: 400 } });
        meshes.push(m);
        await m.start();
      }
      await Promise.all(meshes.map((m) => m.waitReady()));

      for (const [i, m] of meshes.entries()) {
        const remote = clusters[1 - i]!;
        const st = m.status().remotes[0]!;
        assert.equal(st.name, remote.name);
        assert.deepEqual(st.rejected, Object.fromEntries(Object.keys(st.rejected).map((k) => [k, 0])), 'the apiserver writes nothing a reader rejects');
        assert.equal(m.nodes.get(`${remote.name}/node1`)?.ipv4AllocCIDR, `10.${100 + remote.id}.1.0/24`);
        const e = m.ipcache.get(remote.podIp(1, 2));
        assert.deepEqual(e && [e.identity, e.hostIP, e.cluster, e.podName], [remote.identity(1), remote.nodeIp(1), remote.name, 'echo-2']);
        const ids = [...m.identities.values()];
        assert.ok(ids.length >= 1);
        assert.ok(ids.every((id) => id.cluster === remote.name && id.labels.some((l) => l.key === CLUSTER_LABEL_KEY && l.value === remote.name)));
        assert.ok(ids.some((id) => id.labels.some((l) => l.key === 'app' && l.value === 'echo')), 'the pods identity');
        const g = m.globalServices.get('default/echo');
        assert.deepEqual(g?.backends.map((b) => `${b.cluster} ${b.ip} ${b.ports[0]?.port}`).sort(), [`${remote.name} ${remote.podIp(1, 1)} 8080`, `${remote.name} ${remote.podIp(1, 2)} 8080`]);
      }

      // a pod added, then removed, in c2 → c1's caches follow
      const [m1] = meshes as [ClusterMesh, ClusterMesh];
      const kube2 = kubeApis[1]!.kube;
      await write(c2, kube2, pod(c2, 3));
      await eventually(() => m1.ipcache.has(c2.podIp(1, 3)) && m1.globalServices.get('default/echo')?.backends.length === 3, 'pod 3 imported');
      await new EndpointWriter(c2.writer).delete({ namespace: 'default', name: 'echo-3' });
      await kube2.delete('Pod', { namespace: 'default', name: 'echo-3' });
      await eventually(() => !m1.ipcache.has(c2.podIp(1, 3)) && m1.globalServices.get('default/echo')?.backends.length === 2, 'pod 3 gone');
    } finally {
      await Promise.all(meshes.map((m) => m.stop().catch(() => {})));
      await Promise.all(apis.map((a) => a.stop().catch(() => {})));
      await Promise.all(kubeApis.map((k) => k.stop().catch(() => {})));
      await Promise.all(clusters.map((c) => c.close()));
      await cleanup();
    }
  });
});

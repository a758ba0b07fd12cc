// The cache tier with real etcds: two remotes, the local cluster's etcd, the
// tier (KvstoreMesh, as the apiserver runs it with --kvstoremesh) importing the
// remotes into it, and an agent's ClusterMesh reading them only through the
// local etcd (option cache: one client, the `agent` user).
import { strict as assert } from 'node:assert';
import { mkdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { ClusterMesh } from '../clustermesh/clustermesh.ts';
import { cacheKeyPrefix, cacheSyncedKey, clusterConfigKey, SYNCED_PREFIX_NAMES } from '../clustermesh/keys.ts';
import { silentLogger } from '../clustermesh/remote-cluster.ts';
import { eventually, recordingLogger, tempDir, TestCluster } from '../clustermesh/testing.ts';
import { decodeClusterConfig } from '../clustermesh/wire.ts';
import { KvClient } from '../kvstore/client.ts';
import { KvstoreMesh } from './kvstoremesh.ts';

interface Harness {
  root: string;
  configDir: string;
  local: TestCluster;
  remotes: TestCluster[];
  stops: (() => Promise<unknown>)[];
}

async function withHarness(fn: (h: Harness) => Promise<void>): Promise<void> {
  const { dir: root, cleanup } = await tempDir('kvsm');
  const configDir = join(root, 'config');
  await mkdir(configDir);
  const stops: (() => Promise<unknown>)[] = [];
  const clusters: TestCluster[] = [];
  try {
    const local = await TestCluster.start(root, 'cmt-local', 9);
    clusters.push(local);
    const remotes = [await TestCluster.start(root, 'cmt-ra', 1), await TestCluster.start(root, 'cmt-rb', 2)];
    clusters.push(...remotes);
    for (const r of remotes) {
      await r.seed();
      await r.writeConfigFile(configDir);
    }
    await fn({ root, configDir, local, remotes, stops });
  } finally {
    for (const s of stops.reverse()) await s().catch(() => {});
    await Promise.all(clusters.map((c) => c.close()));
    await cleanup();
  }
}

function startTier(h: Harness): KvstoreMesh {
  const kv = new KvClient(h.local.etcd.connection('apiserver', { timeoutMs: 3000 }));
  const tier = new KvstoreMesh({
    kv,
    local: { name: h.local.name, id: h.local.id, maxConnectedClusters: 255 },
    configDir: h.configDir,
    logger: silentLogger,
    registry: new Registry(),
    useFsWatch: false,
    rescanIntervalMs: 100,
    reconcileMs: 50,
  });
  h.stops.push(async () => {
    await tier.stop();
    await kv.close();
  });
  return tier;
}

function startAgent(h: Harness): { mesh: ClusterMesh; kv: KvClient; log: ReturnType<typeof recordingLogger> } {
  const kv = new KvClient(h.local.etcd.connection('agent', { timeoutMs: 3000 }));
  const log = recordingLogger();
  const mesh = new ClusterMesh({
    localCluster: { name: h.local.name, id: h.local.id },
    configDir: join(h.root, 'unused'),
    logger: log,
    registry: new Registry(),
    backoff: { initialMs: 50, maxMs: 400 },
    cache: { client: kv },
    connect: () => {
      throw new Error('the agent dialed a remote');
    },
  });
  h.stops.push(async () => {
    await mesh.close();
    await kv.close();
  });
  return { mesh, kv, log };
}

describe('kvstoremesh: the cache tier', () => {
  it('an entry in a remote reaches the agent through the cache; the agent holds no connection to any remote', async () => {
    await withHarness(async (h) => {
      const [a, b] = h.remotes as [TestCluster, TestCluster];
      const tier = startTier(h);
      await tier.start();
      await tier.waitSynced(30_000);
      // what the tier wrote: Cilium's layout, canaries, a cached cluster-config
      const raw = new KvClient(h.local.etcd.connection('root'));
      h.stops.push(() => raw.close());
      assert.equal((await raw.list(cacheKeyPrefix('ip', a.name))).pairs.length, 3);
      for (const k of SYNCED_PREFIX_NAMES) assert.ok(await raw.get(cacheSyncedKey(a.name, k)), `canary ${k} of ${a.name}`);
      const cfg = await raw.get(clusterConfigKey(a.name));
      const d = decodeClusterConfig(a.name, clusterConfigKey(a.name), cfg!.value);
      assert.ok(d.ok && d.value.capabilities.cached && d.value.id === a.id, cfg?.value);

      const agent = startAgent(h);
      await agent.mesh.start();
      await eventually(() => agent.mesh.remoteNames().length === 2, 'both remotes found in the cache');
      await agent.mesh.waitReady({ timeoutMs: 20_000 });
      assert.equal(agent.mesh.ipcache.size, 6);
      assert.equal(agent.mesh.ipcache.get(a.podIp(1, 1))?.cluster, a.name);
      assert.equal(agent.mesh.globalServices.get('default/echo')?.backends.length, 4);
      const st = agent.mesh.status().remotes.find((r) => r.name === a.name)!;
      assert.equal(st.via, 'cache');
      assert.equal(st.upstream?.ready, true);
      assert.equal(st.upstream?.state, 'ready');
      assert.deepEqual(st.synced, { nodes: true, identities: true, ip: true, services: true });
      assert.ok(agent.log.records.every((r) => !JSON.stringify(r).includes('dialed')), 'no remote dialed');

      // a change in remote A: through the tier's import, into the local etcd, into the agent
      await a.putIp(2, 9, 2);
      await eventually(() => agent.mesh.ipcache.get(a.podIp(2, 9))?.cluster === a.name, 'the new endpoint in the agent');
      await a.writer.delete((await import('../clustermesh/keys.ts')).ipKey(a.podIp(1, 2)));
      await eventually(() => agent.mesh.ipcache.get(a.podIp(1, 2)) === undefined, 'the deleted endpoint gone from the agent');
      // an entry the tier refuses by ownership (B announcing an IP of A's pod CIDR) never reaches the cache
      await b.putIpAs(a.podIp(1, 77), b.nodeIp(1), 1);
      await eventually(() => tier.mesh.status().ownership.refusedIps.some((r) => r.cluster === b.name), 'the tier refused the foreign IP');
      assert.equal(await raw.get(cacheKeyPrefix('ip', b.name) + a.podIp(1, 77)), undefined);
      assert.equal(agent.mesh.ipcache.get(a.podIp(1, 77)), undefined);
    });
  });

  it('a remote deleted from the tier\'s config is pruned from the cache and from the agent', async () => {
    await withHarness(async (h) => {
      const [a, b] = h.remotes as [TestCluster, TestCluster];
      const tier = startTier(h);
      await tier.start();
      await tier.waitSynced(30_000);
      const agent = startAgent(h);
      await agent.mesh.start();
      await eventually(() => agent.mesh.remoteNames().length === 2, 'both remotes in the agent');
      await agent.mesh.waitReady({ timeoutMs: 20_000 });
      assert.equal(agent.mesh.ipcache.get(b.podIp(1, 1))?.cluster, b.name);
      await unlink(join(h.configDir, b.name));
      await eventually(() => agent.mesh.remote(b.name) === undefined && agent.mesh.ipcache.get(b.podIp(1, 1)) === undefined, 'remote B drained from the agent');
      assert.equal(agent.mesh.ipcache.get(a.podIp(1, 1))?.cluster, a.name, 'remote A untouched');
      const raw = new KvClient(h.local.etcd.connection('root'));
      h.stops.push(() => raw.close());
      await eventually(async () => (await raw.list(cacheKeyPrefix('ip', b.name))).pairs.length === 0 && (await raw.get(clusterConfigKey(b.name))) === undefined, 'remote B deleted from the cache');
      assert.equal((await raw.list(cacheKeyPrefix('ip', a.name))).pairs.length, 3);
    });
  });

  it('the tier restarted: agents prune nothing still valid, and what went away meanwhile is pruned after the resync', async () => {
    await withHarness(async (h) => {
      const [a] = h.remotes as [TestCluster, TestCluster];
      const tier = startTier(h);
      await tier.start();
      await tier.waitSynced(30_000);
      const agent = startAgent(h);
      await agent.mesh.start();
      await eventually(() => agent.mesh.remoteNames().length === 2, 'both remotes in the agent');
      await agent.mesh.waitReady({ timeoutMs: 20_000 });
      const deletes: string[] = [];
      agent.mesh.ipcache.subscribe((ev) => {
        if (ev.kind === 'delete') deletes.push(ev.key);
      }, { replay: false });
      await tier.stop();
      // while the tier is down: one endpoint of A goes away, one is added
      const { ipKey } = await import('../clustermesh/keys.ts');
      await a.writer.delete(ipKey(a.podIp(2, 1)));
      await a.putIp(1, 50, 1);
      const tier2 = startTier(h);
      await tier2.start();
      await tier2.waitSynced(30_000);
      await eventually(() => agent.mesh.ipcache.get(a.podIp(1, 50)) !== undefined && agent.mesh.ipcache.get(a.podIp(2, 1)) === undefined, 'the agent caught up after the restart');
      assert.deepEqual(deletes, [a.podIp(2, 1)], 'the only delete the agent saw is the endpoint that really went away');
      assert.equal(agent.mesh.ipcache.size, 6);
      assert.ok(agent.mesh.status().remotes.every((r) => r.ready), JSON.stringify(agent.mesh.status().remotes.map((r) => [r.name, r.state, r.lastError])));
    });
  });
});

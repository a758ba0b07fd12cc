// Integration tests of remote-cluster import: real etcd processes with mutual
// TLS and auth, remote data written in wire format with the `apiserver` user,
// imported with the read-only `remote` user.
import { strict as assert } from 'node:assert';
import { mkdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { ClusterMesh, type ClusterMeshOptions } from './clustermesh.ts';
import type { CacheEvent } from './cache.ts';
import { ipKey, nodeKey, syncedKey } from './keys.ts';
import { eventually, recordingLogger, tempDir, TestCluster } from './testing.ts';

interface Harness {
  root: string;
  configDir: string;
  clusters: TestCluster[];
  meshes: ClusterMesh[];
  logger: ReturnType<typeof recordingLogger>;
}

async function withHarness(fn: (h: Harness) => Promise<void>): Promise<void> {
  const { dir: root, cleanup } = await tempDir('mesh');
  const h: Harness = { root, configDir: join(root, 'config'), clusters: [], meshes: [], logger: recordingLogger() };
  await mkdir(h.configDir);
  try {
    await fn(h);
  } finally {
    await Promise.all(h.meshes.map((m) => m.stop().catch(() => {})));
    await Promise.all(h.clusters.map((c) => c.close()));
    await cleanup();
  }
}

async function cluster(h: Harness, name: string, id: number): Promise<TestCluster> {
  const c = await TestCluster.start(h.root, name, id);
  h.clusters.push(c);
  return c;
}

function mesh(h: Harness, local: { name: string; id: number }, over: Partial<ClusterMeshOptions> = {}): ClusterMesh {
  const m = new ClusterMesh({
    localCluster: local,
    configDir: h.configDir,
    logger: h.logger,
    registry: new Registry(),
    backoff: { initialMs: 50, maxMs: 400 },
    requestTimeoutMs: 2000,
    rescanIntervalMs: 200,
    ...over,
  });
  h.meshes.push(m);
  return m;
}

/** Everything a mesh has imported, as plain JSON. */
function snapshot(m: ClusterMesh): string {
  const sorted = <K, V>(map: Iterable<[K, V]>) => [...map].sort(([a], [b]) => (String(a) < String(b) ? -1 : 1));
  return JSON.stringify({
    nodes: sorted(m.nodes),
    identities: sorted(m.identities),
    ipcache: sorted(m.ipcache),
    services: sorted(m.services),
    global: sorted(m.globalServices),
  });
}

function record<K, V>(map: { subscribe(fn: (ev: CacheEvent<K, V>) => void, o?: { replay?: boolean }): () => void }): CacheEvent<K, V>[] {
  const evs: CacheEvent<K, V>[] = [];
  map.subscribe((ev) => evs.push(ev), { replay: false });
  return evs;
}

const remoteStatus = (m: ClusterMesh, name: string) => {
  const s = m.status().remotes.find((r) => r.name === name);
  assert.ok(s, `no status for ${name}`);
  // brief() (the agent's Pod status summary, read every second) says what status() says, in every state the tests reach.
  const b = m.brief();
  assert.deepEqual(b.remotes.find((r) => r.name === name), { name: s.name, connected: s.connected, ready: s.ready, lastError: s.lastError });
  assert.deepEqual(b.configErrors, m.status().configErrors);
  return s;
};

describe('clustermesh import', () => {
  it('two clusters import each other; add, change and remove propagate', async () => {
    await withHarness(async (h) => {
      const c1 = await cluster(h, 'c1', 1);
      const c2 = await cluster(h, 'c2', 2);
      await c1.seed();
      await c2.seed();
      const dir1 = join(h.root, 'cfg1');
      const dir2 = join(h.root, 'cfg2');
      await mkdir(dir1);
      await mkdir(dir2);
      await c2.writeConfigFile(dir1);
      await c1.writeConfigFile(dir2);
      const m1 = mesh(h, { name: 'c1', id: 1 }, { configDir: dir1 });
      const m2 = mesh(h, { name: 'c2', id: 2 }, { configDir: dir2 });
      await Promise.all([m1.start(), m2.start()]);
      await Promise.all([m1.waitReady({ clusters: ['c2'] }), m2.waitReady({ clusters: ['c1'] })]);

      for (const [m, remote] of [[m1, c2], [m2, c1]] as const) {
        const st = remoteStatus(m, remote.name);
        assert.deepEqual(st.counts, { nodes: 2, endpoints: 3, identities: 2, services: 1 });
        assert.deepEqual(st.synced, { nodes: true, identities: true, ip: true, services: true });
        assert.equal(st.clusterId, remote.id);
        const node = m.nodes.get(`${remote.name}/node1`);
        assert.equal(node?.addresses[0]?.ip, remote.nodeIp(1));
        const ip = m.ipcache.get(remote.podIp(1, 2));
        assert.deepEqual(
          ip && { identity: ip.identity, hostIP: ip.hostIP, cluster: ip.cluster, prefix: ip.prefix },
          { identity: remote.identity(2), hostIP: remote.nodeIp(1), cluster: remote.name, prefix: `${remote.podIp(1, 2)}/32` },
        );
        const id = m.identities.get(remote.identity(1));
        assert.ok(id?.labels.some((l) => l.key === 'io.cilium.k8s.policy.cluster' && l.value === remote.name));
        assert.deepEqual(m.services.get(`${remote.name}/default/echo`)?.backends.map((b) => b.ip).sort(), [remote.podIp(1, 1), remote.podIp(2, 1)].sort());
        assert.equal(m.globalServices.get('default/echo')?.backends.length, 2);
      }

      // add, change, remove in c2 → seen by c1's importer
      const nodeEvents = record(m1.nodes);
      const ipEvents = record(m1.ipcache);
      await c2.putNode(3);
      await eventually(() => m1.nodes.has('c2/node3'), 'node3 added');
      await c2.putNode(3, { zone: 'b' });
      await eventually(() => m1.nodes.get('c2/node3')?.labels.zone === 'b', 'node3 changed');
      await c2.writer.delete(nodeKey('c2', 'node3'));
      await eventually(() => !m1.nodes.has('c2/node3'), 'node3 removed');
      assert.deepEqual(
        nodeEvents.map((e) => `${e.kind} ${e.key}`),
        ['upsert c2/node3', 'upsert c2/node3', 'delete c2/node3'],
      );

      await c2.putIp(2, 9, 2);
      await eventually(() => m1.ipcache.get(c2.podIp(2, 9))?.identity === c2.identity(2), 'ip added');
      await c2.putIp(2, 9, 1);
      await eventually(() => m1.ipcache.get(c2.podIp(2, 9))?.identity === c2.identity(1), 'ip changed');
      await c2.writer.delete(`cilium/state/ip/v1/default/${c2.podIp(2, 9)}`);
      await eventually(() => !m1.ipcache.has(c2.podIp(2, 9)), 'ip removed');
      assert.deepEqual(ipEvents.map((e) => e.kind), ['upsert', 'upsert', 'delete']);

      await c2.putIdentity(7, 'seven');
      await eventually(() => m1.identities.has(c2.identity(7)), 'identity added');
      await c2.putService('echo', [c2.podIp(1, 1)]);
      await eventually(() => m1.services.get('c2/default/echo')?.backends.length === 1, 'service changed');
      await eventually(() => m1.globalServices.get('default/echo')?.backends.length === 1, 'global service changed');
      await c2.putService('echo', [c2.podIp(1, 1)], false);
      await eventually(() => !m1.globalServices.has('default/echo'), 'unshared service leaves the global view');
      assert.ok(m1.services.has('c2/default/echo'));

      // nothing of c1's own state leaks into its importer
      assert.ok([...m1.nodes.keys()].every((k) => k.startsWith('c2/')));
    });
  });

  it('three clusters import each other; global services merge backends across remotes', async () => {
    await withHarness(async (h) => {
      const cs = [await cluster(h, 'c1', 1), await cluster(h, 'c2', 2), await cluster(h, 'c3', 3)];
      const meshes: ClusterMesh[] = [];
      for (const local of cs) {
        await local.seed();
        const dir = join(h.root, `cfg-${local.name}`);
        await mkdir(dir);
        for (const r of cs) if (r !== local) await r.writeConfigFile(dir);
        // the local cluster's own file is ignored
        await local.writeConfigFile(dir);
        meshes.push(mesh(h, { name: local.name, id: local.id }, { configDir: dir }));
      }
      await Promise.all(meshes.map((m) => m.start()));
      await Promise.all(meshes.map((m) => m.waitReady()));
      for (const [i, m] of meshes.entries()) {
        const local = cs[i]!;
        const st = m.status();
        assert.deepEqual(st.remotes.map((r) => r.name), cs.filter((c) => c !== local).map((c) => c.name));
        assert.deepEqual(st.counts, { nodes: 4, identities: 4, ipcache: 6, services: 2, globalServices: 1 });
        const g = m.globalServices.get('default/echo');
        assert.deepEqual(g?.clusters, cs.filter((c) => c !== local).map((c) => c.name));
        assert.equal(g?.backends.length, 4);
        for (const id of m.identities.values()) assert.notEqual(id.cluster, local.name);
      }
      // a change in c3 reaches both others
      await cs[2]!.putNode(5);
      await eventually(() => meshes[0]!.nodes.has('c3/node5') && meshes[1]!.nodes.has('c3/node5'), 'node5 in c1 and c2');
    });
  });
});

describe('clustermesh faults', () => {
  it('remote etcd killed while holding data: data stays, status disconnected; comes back and resyncs', async () => {
    await withHarness(async (h) => {
      const c2 = await cluster(h, 'c2', 2);
      await c2.seed();
      // one bad value, to see it is logged once, not again on every re-list
      await c2.writer.put(nodeKey('c2', 'node8'), '{bad');
      await c2.writeConfigFile(h.configDir);
      const m = mesh(h, { name: 'c1', id: 1 });
      await m.start();
      await m.waitReady();
      const before = snapshot(m);
      const deletes = record(m.nodes).concat(record(m.ipcache) as never[], record(m.identities) as never[], record(m.services) as never[]);

      await c2.etcd.kill();
      await eventually(() => !remoteStatus(m, 'c2').connected && remoteStatus(m, 'c2').state === 'disconnected', 'disconnected');
      const st = remoteStatus(m, 'c2');
      assert.equal(st.ready, false);
      assert.ok(st.lastError, 'lastError set');
      assert.equal(snapshot(m), before, 'data kept while unreachable');
      assert.deepEqual(st.counts, { nodes: 2, endpoints: 3, identities: 2, services: 1 });
      // Not a fixed wait: two more failed reconnects after the one seen, then the data is still there.
      for (let i = 0; i < 2; i++) {
        const seen = remoteStatus(m, 'c2').lastErrorAt;
        await eventually(() => remoteStatus(m, 'c2').lastErrorAt !== seen, `failed reconnect ${i + 1} while etcd is down`);
      }
      assert.equal(snapshot(m), before);

      await c2.etcd.start();
      await c2.reconnectWriter();
      await eventually(() => remoteStatus(m, 'c2').ready, 'ready again');
      assert.ok(remoteStatus(m, 'c2').reconnections >= 1);
      assert.equal(snapshot(m), before);
      assert.equal(deletes.filter((e) => e.kind === 'delete').length, 0, 'no entry was dropped');
      await c2.putNode(4);
      await eventually(() => m.nodes.has('c2/node4'), 'watch works after reconnect');
      assert.equal(h.logger.records.filter((r) => r.obj.key === nodeKey('c2', 'node8')).length, 1, 'bad key logged once');
      assert.equal(remoteStatus(m, 'c2').rejected['malformed-json'], 1);
    });
  });

  it('etcd comes back empty and is refilled: keeps what is still there, prunes only what is gone', async () => {
    await withHarness(async (h) => {
      const c2 = await cluster(h, 'c2', 2);
      await c2.seed();
      await c2.writeConfigFile(h.configDir);
      const m = mesh(h, { name: 'c1', id: 1 });
      await m.start();
      await m.waitReady();
      const before = snapshot(m);
      const nodeEvents = record(m.nodes);
      const ipEvents = record(m.ipcache);
      const idEvents = record(m.identities);
      const svcEvents = record(m.services);

      await c2.etcd.kill();
      await c2.etcd.wipe();
      await c2.etcd.start();
      await c2.reconnectWriter();
      // empty store, no cluster-config, no canaries: nothing is pruned
      await eventually(() => remoteStatus(m, 'c2').state === 'waiting-config', 'waiting for cluster-config');
      // refilled partly: node2, identity 2 and ip 1.2 are gone; node3 is new
      await c2.publishConfig();
      await c2.putNode(1);
      await c2.putNode(3);
      await c2.putIdentity(1);
      await c2.putIp(1, 1, 1);
      await c2.putIp(2, 1, 1);
      await c2.putService('echo', [c2.podIp(1, 1), c2.podIp(2, 1)]);
      assert.equal(snapshot(m), before, 'no canaries yet: nothing changes');
      // Not a fixed wait: the nodes canary alone lets the nodes resync; once that later
      // change has arrived, the prefixes still without a canary must not have moved.
      await c2.writer.put(syncedKey('c2', 'nodes'), new Date().toISOString());
      await eventually(() => m.nodes.has('c2/node3') && !m.nodes.has('c2/node2'), 'nodes resynced after their canary');
      assert.deepEqual([...idEvents, ...ipEvents, ...svcEvents].map((e) => `${e.kind} ${String(e.key)}`), [], 'no canary yet: identities, ip entries and services unchanged');
      assert.equal(remoteStatus(m, 'c2').ready, false, 'not ready while canaries are missing');
      await c2.canaries();
      await eventually(() => remoteStatus(m, 'c2').ready, 'ready after refill');

      assert.deepEqual(nodeEvents.map((e) => `${e.kind} ${e.key}`).sort(), ['delete c2/node2', 'upsert c2/node3']);
      assert.deepEqual(idEvents.map((e) => `${e.kind} ${e.key}`), [`delete ${c2.identity(2)}`]);
      assert.deepEqual(ipEvents.map((e) => `${e.kind} ${e.key}`), [`delete ${c2.podIp(1, 2)}`]);
      assert.deepEqual(remoteStatus(m, 'c2').counts, { nodes: 2, endpoints: 2, identities: 1, services: 1 });
    });
  });

  it('importer restarted: resyncs without dropping entries that still exist', async () => {
    await withHarness(async (h) => {
      const c2 = await cluster(h, 'c2', 2);
      await c2.seed();
      await c2.writeConfigFile(h.configDir);
      const m = mesh(h, { name: 'c1', id: 1 });
      await m.start();
      await m.waitReady();
      const all = record(m.nodes);
      await m.stop();
      assert.equal(remoteStatus(m, 'c2').state, 'stopped');
      assert.equal(m.nodes.size, 2, 'stop keeps what was learned');
      // while stopped: node2 goes (with its pod: an endpoint outside every pod CIDR c2 announces is refused), node3 comes, node1 changes
      await c2.writer.delete(nodeKey('c2', 'node2'));
      await c2.writer.delete(ipKey(c2.podIp(2, 1)));
      await c2.putNode(3);
      await c2.putNode(1, { changed: 'yes' });
      await m.start();
      await m.waitReady();
      assert.deepEqual(all.map((e) => `${e.kind} ${e.key}`).sort(), ['delete c2/node2', 'upsert c2/node1', 'upsert c2/node3']);
      assert.equal(m.nodes.get('c2/node1')?.labels.changed, 'yes');
      // a new importer (process restart) sees the same state
      const m2 = mesh(h, { name: 'c1', id: 1 });
      await m2.start();
      await m2.waitReady();
      assert.equal(snapshot(m2), snapshot(m));
    });
  });

  it('removing the config file disconnects and drains; adding it back reconnects', async () => {
    await withHarness(async (h) => {
      const c2 = await cluster(h, 'c2', 2);
      await c2.seed();
      const file = await c2.writeConfigFile(h.configDir);
      const m = mesh(h, { name: 'c1', id: 1 });
      await m.start();
      await m.waitReady();
      const ev = record(m.ipcache);
      await unlink(file);
      await eventually(() => m.status().remotes.length === 0, 'remote removed');
      assert.equal(snapshot(m), snapshot(mesh(h, { name: 'c1', id: 1 })), 'drained to empty');
      assert.equal(ev.filter((e) => e.kind === 'delete').length, 3);
      await c2.writeConfigFile(h.configDir);
      await eventually(() => m.status().remotes[0]?.ready === true, 'back');
      assert.equal(m.ipcache.size, 3);
    });
  });

  it('a remote that lies cannot take IPs it does not own: another cluster\'s pods, the local range, an overlapping pod CIDR, another cluster\'s node address', async () => {
    await withHarness(async (h) => {
      const c2 = await cluster(h, 'c2', 2);
      await c2.seed(); // nodes 10.2.0.1-2 with pod CIDRs 10.102.1.0/24 and 10.102.2.0/24
      await c2.writeConfigFile(h.configDir);
      const registry = new Registry();
      const m = mesh(h, { name: 'c1', id: 1 }, { registry });
      m.setLocalNode('local1', { cidrs: ['10.101.1.0/24'], addresses: ['10.1.0.1'] });
      await m.start();
      await m.waitReady();
      // c3 connects later: its claims come after c2's.
      const liar = await cluster(h, 'c3', 3);
      await liar.publishConfig();
      await liar.putIdentity(1);
      await liar.putNodeAs('honest', '10.3.0.1', '10.103.1.0/24');
      await liar.putNodeAs('greedy', '10.3.0.2', '10.102.0.0/16'); // overlaps c2's pod CIDRs
      await liar.putNodeAs('thief', '10.2.0.1', '10.103.9.0/24'); // c2's node address
      await liar.putIpAs('10.103.1.5', '10.3.0.1', 1); // its own: accepted
      await liar.putIpAs(c2.podIp(1, 1), '10.3.0.2', 1); // c2's pod
      await liar.putIpAs('10.102.200.9', '10.3.0.2', 1); // inside its refused range
      await liar.putIpAs('10.101.1.7', '10.3.0.1', 1); // the local cluster's range
      await liar.putIpAs('10.103.9.9', '10.2.0.1', 1); // in the refused node's range
      await liar.putIpAs('10.55.0.1', '10.3.0.1', 1); // nobody's, but not inside what c3 announces
      await liar.canaries();
      await liar.writeConfigFile(h.configDir);
      await m.rescan();
      await m.waitReady({ clusters: ['c3'] });
      await eventually(() => m.ipcache.get('10.103.1.5')?.cluster === 'c3', 'the honest entry imported');
      assert.equal(m.ipcache.get(c2.podIp(1, 1))?.cluster, 'c2', "c2's pod stays c2's");
      for (const ip of ['10.102.200.9', '10.101.1.7', '10.103.9.9', '10.55.0.1']) assert.equal(m.ipcache.get(ip), undefined, `${ip} refused`);
      assert.equal(m.nodes.get('c3/greedy')?.ipv4AllocCIDR, null, 'the overlapping pod CIDR is withheld');
      assert.equal(m.nodes.get('c3/honest')?.ipv4AllocCIDR, '10.103.1.0/24');
      assert.equal(m.nodes.get('c3/thief'), undefined, "a node with c2's address is refused");
      assert.equal(m.nodes.get('c2/node1')?.ipv4AllocCIDR, '10.102.1.0/24', 'c2 keeps everything');
      const st = m.status().ownership;
      assert.deepEqual(st.conflicts.map((c) => `${c.kind} ${c.cluster}/${c.node} ${c.value} <- ${c.ownerCluster}/${c.ownerNode} ${c.ownerValue}`), [
        'pod-cidr c3/greedy 10.102.0.0/16 <- c2/node1 10.102.1.0/24',
        'node-address c3/thief 10.2.0.1 <- c2/node1 10.2.0.1',
      ]);
      assert.deepEqual(st.flagged, ['c2', 'c3']);
      assert.equal(st.refusedIps.length, 1);
      assert.equal(st.refusedIps[0]!.count, 5);
      const reasons = new Map(st.refusedIps[0]!.examples.map((e) => [e.ip, e.reason]));
      assert.equal(reasons.get(c2.podIp(1, 1)), `${c2.podIp(1, 1)}/32 lies in pod CIDR 10.102.1.0/24 of c2 (node node1)`);
      assert.equal(reasons.get('10.101.1.7'), '10.101.1.7/32 lies in pod CIDR 10.101.1.0/24 of the local cluster (node local1)');
      const metric = (await registry.getSingleMetricAsString('clustermesh_remote_refused_claims')).split('\n').filter((l) => l.startsWith('clustermesh_remote_refused_claims{')).sort();
      assert.deepEqual(metric, [
        'clustermesh_remote_refused_claims{source_cluster="c3",kind="endpoint_ip"} 5',
        'clustermesh_remote_refused_claims{source_cluster="c3",kind="node"} 1',
        'clustermesh_remote_refused_claims{source_cluster="c3",kind="pod_cidr"} 1',
      ]);
      // c2 leaves the mesh: its claims are gone, so c3's /16 and the thief's address stand now.
      await unlink(join(h.configDir, 'c2'));
      await eventually(() => m.nodes.get('c3/greedy')?.ipv4AllocCIDR === '10.102.0.0/16', 'the /16 accepted once c2 is gone');
      await eventually(() => m.ipcache.get(c2.podIp(1, 1))?.cluster === 'c3' && m.ipcache.get('10.102.200.9')?.cluster === 'c3', 'entries inside it accepted');
      assert.ok(m.nodes.get('c3/thief'));
      assert.equal(m.ipcache.get('10.103.9.9')?.cluster, 'c3');
      assert.equal(m.ipcache.get('10.101.1.7'), undefined, 'the local range is never a remote\'s');
      assert.deepEqual(m.status().ownership.conflicts, []);
    });
  });
});

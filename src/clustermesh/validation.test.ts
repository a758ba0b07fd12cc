// Bad input from remote clusters, each its own test: nothing is accepted, and
// nothing already learned is lost. Real etcd with mutual TLS throughout.
import { strict as assert } from 'node:assert';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { KvClient } from '../kvstore/client.ts';
import { createCA, issueCert } from '../kvstore/pki.ts';
import { KvError } from '../kvstore/types.ts';
import { ClusterMesh, type ClusterMeshOptions } from './clustermesh.ts';
import { identityKey, nodeKey, serviceKey, storePrefix } from './keys.ts';
import type { RemoteClusterStatus } from './remote-cluster.ts';
import { eventually, recordingLogger, tempDir, TestCluster } from './testing.ts';
import { encodeIdentity, encodeNode, encodeService, type RejectReason } from './wire.ts';

interface Ctx {
  root: string;
  configDir: string;
  c2: TestCluster;
  mesh: ClusterMesh;
  registry: Registry;
  logger: ReturnType<typeof recordingLogger>;
  extra: TestCluster[];
}

/** c2 seeded and imported by c1's mesh; `fn` then misbehaves. */
async function withImported(fn: (x: Ctx) => Promise<void>, meshOpts: Partial<ClusterMeshOptions> = {}): Promise<void> {
  const { dir: root, cleanup } = await tempDir('val');
  const configDir = join(root, 'config');
  await mkdir(configDir);
  const extra: TestCluster[] = [];
  let c2: TestCluster | undefined;
  let mesh: ClusterMesh | undefined;
  try {
    c2 = await TestCluster.start(root, 'c2', 2);
    await c2.seed();
    await c2.writeConfigFile(configDir);
    const registry = new Registry();
    const logger = recordingLogger();
    mesh = new ClusterMesh({
      localCluster: { name: 'c1', id: 1 },
      configDir,
      logger,
      registry,
      backoff: { initialMs: 50, maxMs: 400 },
      requestTimeoutMs: 2000,
      rescanIntervalMs: 200,
      ...meshOpts,
    });
    await mesh.start();
    await mesh.waitReady();
    await fn({ root, configDir, c2, mesh, registry, logger, extra });
  } finally {
    await mesh?.stop().catch(() => {});
    await Promise.all([c2, ...extra].map((c) => c?.close()));
    await cleanup();
  }
}

function snapshot(m: ClusterMesh): string {
  const sorted = <K, V>(map: Iterable<[K, V]>) => [...map].sort(([a], [b]) => (String(a) < String(b) ? -1 : 1));
  return JSON.stringify([sorted(m.nodes), sorted(m.identities), sorted(m.ipcache), sorted(m.services), sorted(m.globalServices)]);
}

const st = (m: ClusterMesh, name: string): RemoteClusterStatus => {
  const s = m.status().remotes.find((r) => r.name === name);
  assert.ok(s);
  return s;
};

/** Writes bad values, waits until each is rejected for `reason`, checks nothing changed. */
async function expectRejected(x: Ctx, reason: RejectReason, writes: Array<[string, string]>): Promise<void> {
  const before = snapshot(x.mesh);
  const n0 = st(x.mesh, 'c2').rejected[reason];
  for (const [k, v] of writes) await x.c2.writer.put(k, v);
  await eventually(() => st(x.mesh, 'c2').rejected[reason] >= n0 + writes.length, `${writes.length} rejection(s) for ${reason}`);
  // a good write after the bad ones shows the watch has moved past them
  await x.c2.putNode(7);
  await eventually(() => x.mesh.nodes.has('c2/node7'), 'later good write');
  await x.c2.writer.delete(nodeKey('c2', 'node7'));
  await eventually(() => !x.mesh.nodes.has('c2/node7'), 'cleanup');
  assert.equal(snapshot(x.mesh), before, 'nothing accepted, nothing lost');
  assert.equal(st(x.mesh, 'c2').ready, true, 'still connected and ready');
  const metric = await x.registry.getSingleMetric('clustermesh_remote_values_rejected_total')?.get();
  const count = (metric?.values ?? [])
    .filter((v) => v.labels.reason === reason && v.labels.source_cluster === 'c2')
    .reduce((n, v) => n + v.value, 0);
  assert.ok(count >= writes.length, `counted in the prom-client counter (${count})`);
  for (const [k] of writes) assert.ok(x.logger.records.some((r) => r.obj.key === k && r.obj.reason === reason), `logged ${k}`);
}

const goodNode = (c: TestCluster, name: string, over: Record<string, unknown> = {}) =>
  JSON.stringify({
    ...JSON.parse(
      encodeNode({ Name: name, Cluster: c.name, ClusterID: c.id, IPAddresses: [{ Type: 'InternalIP', IP: '10.2.0.99' }], IPv4AllocCIDR: null, Labels: {} }),
    ),
    ...over,
  });

describe('remote values that are rejected', () => {
  it('identity outside the remote cluster range', async () => {
    await withImported(async (x) => {
      await expectRejected(x, 'identity-out-of-range', [
        [identityKey((3 << 16) + 10), encodeIdentity(x.c2.labels('evil'))],
        [identityKey(2), encodeIdentity(x.c2.labels('world'))], // a reserved identity
        [identityKey(1 << 16), encodeIdentity(x.c2.labels('c1s-first'))], // the local cluster's range
      ]);
    });
  });

  it('identity whose cluster label names another cluster', async () => {
    await withImported(async (x) => {
      await expectRejected(x, 'identity-cluster-label', [
        [identityKey(x.c2.identity(50)), encodeIdentity(x.c2.labels('x', 'c3'))],
        // overwriting a known identity does not replace what was learned
        [identityKey(x.c2.identity(1)), encodeIdentity(x.c2.labels('app1', 'c1'))],
      ]);
      assert.ok(x.mesh.identities.get(x.c2.identity(1))?.labels.some((l) => l.value === 'c2'));
    });
  });

  it('node whose value names another cluster', async () => {
    await withImported(async (x) => {
      await expectRejected(x, 'cluster-mismatch', [
        [nodeKey('c2', 'node9'), goodNode(x.c2, 'node9', { Cluster: 'c3' })],
        [nodeKey('c2', 'node1'), goodNode(x.c2, 'node1', { Cluster: 'c1', ClusterID: 1 })],
        [nodeKey('c2', 'node2'), goodNode(x.c2, 'node2', { ClusterID: 3 })],
      ]);
      assert.equal(x.mesh.nodes.get('c2/node1')?.cluster, 'c2');
    });
  });

  it('service whose key and content disagree', async () => {
    await withImported(async (x) => {
      const svc = (name: string, ns = 'default') =>
        encodeService({
          cluster: 'c2', namespace: ns, name, frontends: {}, backends: { '10.66.6.6': { '': { Protocol: 'TCP', Port: 80 } } },
          labels: {}, selector: {}, shared: true, includeExternal: false, clusterID: 2,
        });
      await expectRejected(x, 'key-mismatch', [
        [serviceKey('c2', 'default', 'other'), svc('echo')],
        [serviceKey('c2', 'default', 'echo'), svc('hijack')],
        [serviceKey('c2', 'default', 'echo'), svc('echo', 'kube-system')],
      ]);
      assert.deepEqual(x.mesh.services.get('c2/default/echo')?.backends.map((b) => b.ip).sort(), [x.c2.podIp(1, 1), x.c2.podIp(2, 1)].sort());
    });
  });

  it('malformed JSON', async () => {
    await withImported(async (x) => {
      await expectRejected(x, 'malformed-json', [
        [nodeKey('c2', 'node1'), '{"Name":"node1",'],
        [`cilium/state/ip/v1/default/${x.c2.podIp(1, 1)}`, 'not json'],
        [serviceKey('c2', 'default', 'new'), ''],
      ]);
    });
  });

  it('value over the size limit', async () => {
    await withImported(
      async (x) => {
        await expectRejected(x, 'too-large', [
          [nodeKey('c2', 'node1'), goodNode(x.c2, 'node1', { Labels: { pad: 'x'.repeat(250), a: 'y'.repeat(250), b: 'z'.repeat(250), c: 'w'.repeat(250), d: 'v'.repeat(250) } })],
          [identityKey(x.c2.identity(60)), encodeIdentity(Array.from({ length: 60 }, (_, i) => ({ source: 'k8s', key: `k${i}`, value: 'v'.repeat(60) })).concat(x.c2.labels('big')))],
        ]);
      },
      { maxValueBytes: 1024 },
    );
  });
});

describe('remote clusters that are refused', () => {
  it('a remote that claims our cluster ID', async () => {
    await withImported(async (x) => {
      const c3 = await TestCluster.start(x.root, 'c3', 1);
      x.extra.push(c3);
      await c3.seed();
      const before = snapshot(x.mesh);
      await c3.writeConfigFile(x.configDir);
      await eventually(() => x.mesh.status().remotes.some((r) => r.name === 'c3' && r.state === 'refused'), 'c3 refused');
      const s = st(x.mesh, 'c3');
      assert.match(s.refusedReason ?? '', /cluster ID 1.*local cluster c1/);
      assert.deepEqual(s.counts, { nodes: 0, endpoints: 0, identities: 0, services: 0 });
      assert.equal(snapshot(x.mesh), before);
      assert.equal(st(x.mesh, 'c2').ready, true);
      // it fixes its ID: accepted on a later attempt, without a restart of the importer
      c3.id = 3;
      await c3.writer.deletePrefix('cilium/');
      await c3.seed();
      await eventually(() => st(x.mesh, 'c3').ready, 'c3 accepted after fixing its ID');
      assert.equal(st(x.mesh, 'c3').counts.nodes, 2);
    });
  });

  it('two remotes with the same ID: the second is refused, the first keeps working', async () => {
    await withImported(async (x) => {
      const c3 = await TestCluster.start(x.root, 'c3', 2);
      x.extra.push(c3);
      await c3.seed();
      const before = snapshot(x.mesh);
      await c3.writeConfigFile(x.configDir);
      await eventually(() => x.mesh.status().remotes.some((r) => r.name === 'c3' && r.state === 'refused'), 'c3 refused');
      assert.match(st(x.mesh, 'c3').refusedReason ?? '', /cluster ID 2 is already used by remote cluster c2/);
      assert.equal(snapshot(x.mesh), before);
      await x.c2.putNode(5);
      await eventually(() => x.mesh.nodes.has('c2/node5'), 'c2 still imports');
    });
  });

  it('a remote with another maxConnectedClusters', async () => {
    await withImported(async (x) => {
      const c3 = await TestCluster.start(x.root, 'c3', 3, { max: 511 });
      x.extra.push(c3);
      await c3.seed();
      await c3.writeConfigFile(x.configDir);
      await eventually(() => x.mesh.status().remotes.some((r) => r.name === 'c3' && r.state === 'refused'), 'c3 refused');
      assert.match(st(x.mesh, 'c3').refusedReason ?? '', /maxConnectedClusters 511/);
    });
  });

  it('a config file whose name is not a valid cluster name', async () => {
    await withImported(async (x) => {
      const before = snapshot(x.mesh);
      await x.c2.writeConfigFile(x.configDir, { fileName: 'Bad_Name' });
      await eventually(() => x.mesh.status().configErrors.length === 1, 'config error reported');
      const err = x.mesh.status().configErrors[0]!;
      assert.equal(err.file, join(x.configDir, 'Bad_Name'));
      assert.match(err.error, /not a valid cluster name/);
      assert.deepEqual(x.mesh.status().remotes.map((r) => r.name), ['c2']);
      assert.equal(snapshot(x.mesh), before);
    });
  });

  it('a client certificate from another CA', async () => {
    await withImported(async (x) => {
      const c3 = await TestCluster.start(x.root, 'c3', 3);
      x.extra.push(c3);
      await c3.seed();
      const other = await createCA(join(x.root, 'other-ca'), 'someone-else');
      const certs = await issueCert(other, { commonName: 'remote', usage: 'client', outDir: join(x.root, 'other-ca'), name: 'remote' });
      const before = snapshot(x.mesh);
      await c3.writeConfigFile(x.configDir, { certs });
      await eventually(() => x.mesh.status().remotes.some((r) => r.name === 'c3' && r.lastError !== null), 'c3 failed');
      await new Promise((r) => setTimeout(r, 300));
      const s = st(x.mesh, 'c3');
      assert.equal(s.connected, false);
      assert.equal(s.ready, false);
      assert.match(s.lastError ?? '', /^unauthenticated:/);
      assert.equal(snapshot(x.mesh), before);
    });
  });

  it('a server certificate for the wrong name', async () => {
    await withImported(async (x) => {
      const c3 = await TestCluster.start(x.root, 'c3', 3, { serverDnsNames: ['etcd.c3.example'], serverIpAddresses: [] });
      x.extra.push(c3);
      await c3.seed();
      const before = snapshot(x.mesh);
      // connects to 127.0.0.1, the certificate names only etcd.c3.example
      await c3.writeConfigFile(x.configDir);
      await eventually(() => x.mesh.status().remotes.some((r) => r.name === 'c3' && r.lastError !== null), 'c3 failed');
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(st(x.mesh, 'c3').connected, false);
      assert.match(st(x.mesh, 'c3').lastError ?? '', /^tls:.*altnames/);
      assert.equal(snapshot(x.mesh), before);
      // with the right name to verify, the same server is accepted
      await c3.writeConfigFile(x.configDir, { serverName: 'etcd.c3.example' });
      await eventually(() => st(x.mesh, 'c3').ready, 'c3 ready with server-name');
    });
  });

  it("the remote user's certificate cannot read the store prefix or write anything", async () => {
    await withImported(async (x) => {
      const remote = new KvClient(x.c2.etcd.connection('remote', { timeoutMs: 3000 }));
      try {
        const denied = async (p: Promise<unknown>) =>
          assert.rejects(p, (e: unknown) => e instanceof KvError && e.kind === 'permission');
        await x.c2.writer.put(`${storePrefix}secret`, 'x');
        await denied(remote.list(storePrefix));
        await denied(remote.get(`${storePrefix}secret`));
        await denied(remote.put(nodeKey('c2', 'node1'), goodNode(x.c2, 'node1', { Labels: { owned: 'yes' } })));
        await denied(remote.put('cilium/cluster-config/c2', '{}'));
        await denied(remote.put(`${storePrefix}x`, 'x'));
        await denied(remote.delete(nodeKey('c2', 'node1')));
        await denied(remote.put('elsewhere', 'x'));
        // what it may do: read the exported prefixes
        assert.equal((await remote.list('cilium/state/nodes/v1/c2/')).pairs.length, 2);
        assert.equal(x.mesh.nodes.get('c2/node1')?.labels.owned, undefined);
      } finally {
        await remote.close();
      }
    });
  });
});

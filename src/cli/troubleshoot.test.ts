// troubleshoot's steps against a real etcd with mutual TLS on loopback: one
// good config, and one broken at each step a user meets.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatRemoteClusterConfig } from '../clustermesh/config.ts';
import { clusterConfigKey } from '../clustermesh/keys.ts';
import { encodeClusterConfig } from '../clustermesh/wire.ts';
import { KvClient } from '../kvstore/client.ts';
import { freeLoopbackPort } from '../kvstore/etcd-process.ts';
import { withMeshEtcd as withEtcd } from '../clustermesh/etcd.ts';
import { createCA } from '../kvstore/pki.ts';
import { Closer } from './common.ts';
import { checkConfigDir, formatReport, type RemoteCheck } from './troubleshoot.ts';

const summary = (c: RemoteCheck): Array<[string, boolean | null]> => c.steps.map((s) => [s.step, s.ok]);

test('troubleshoot: each step passes for a good config and fails, with a fix, where a broken one breaks', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'cmtc-ts-'));
  try {
    await withEtcd({ name: 'cmtc-ts', clusterName: 'c2' }, async (server) => {
      const root = new KvClient(server.connection('root'));
      try {
        await root.put(clusterConfigKey('c2'), encodeClusterConfig({ id: 2, capabilities: { syncedCanaries: true, maxConnectedClusters: 255 } }));
      } finally {
        await root.close();
      }
      const remote = await server.clientCert('remote');
      const nobody = await server.clientCert('nobody');
      const otherCA = await createCA(join(dir, 'other-ca'), 'cmtc-other-ca');
      const closedPort = await freeLoopbackPort();
      const cfgDir = join(dir, 'remote-clusters');
      await mkdir(cfgDir);
      const write = (name: string, o: { endpoint?: string; caFile?: string; certFile?: string; keyFile?: string }): Promise<void> =>
        writeFile(
          join(cfgDir, name),
          formatRemoteClusterConfig({ endpoints: [o.endpoint ?? server.endpoint], caFile: o.caFile ?? remote.caFile, certFile: o.certFile ?? remote.certFile, keyFile: o.keyFile ?? remote.keyFile }),
        );
      await write('c2', {});
      await write('c3', {}); // the same etcd under another cluster's name
      await write('c4', { endpoint: `https://127.0.0.1:${closedPort}` });
      await write('c5', { caFile: otherCA.certFile });
      await write('c6', { certFile: nobody.certFile, keyFile: nobody.keyFile });
      await write('c7', { keyFile: nobody.keyFile }); // a key of another certificate
      await writeFile(join(cfgDir, 'c8'), 'endpoints: [http://127.0.0.1:2379]\n');

      const closer = new Closer();
      let checks: RemoteCheck[];
      try {
        checks = await checkConfigDir(cfgDir, 'test', { name: 'c1', id: 1 }, closer);
      } finally {
        await closer.closeAll();
      }
      const by = new Map(checks.map((c) => [c.cluster, c]));
      assert.deepEqual([...by.keys()].sort(), ['c2', 'c3', 'c4', 'c5', 'c6', 'c7', 'c8']);

      const good = by.get('c2')!;
      assert.equal(good.ok, true, formatReport({ ok: false, checks: [good], errors: [] }));
      assert.equal(good.clusterId, 2);
      assert.match(good.steps[0]!.detail, /client certificate CN=remote .*issued by the trusted CA/);

      const wrongName = by.get('c3')!;
      assert.deepEqual(summary(wrongName).map(([, ok]) => ok), [true, true, true, true, false, null]);
      assert.match(wrongName.steps[4]!.detail, /publishes the cluster-config of c2 \(ID 2\), not of c3/);

      const closed = by.get('c4')!;
      assert.deepEqual(summary(closed).map(([, ok]) => ok), [true, true, false, null, null, null]);
      assert.match(closed.steps[2]!.detail, /connection refused/);
      assert.match(closed.steps[2]!.fix ?? '', /nothing listens there/);

      const wrongCA = by.get('c5')!;
      assert.equal(wrongCA.steps[3]!.ok, false);
      assert.match(wrongCA.steps[3]!.detail, /not signed by trusted-ca-file/);

      const unknownUser = by.get('c6')!;
      assert.equal(unknownUser.ok, false);
      const failed = unknownUser.steps.find((s) => s.ok === false)!;
      assert.equal(failed.step, 'etcd-read', formatReport({ ok: false, checks: [unknownUser], errors: [] }));
      assert.match(failed.detail, /user nobody/);

      const wrongKey = by.get('c7')!;
      assert.equal(wrongKey.steps[0]!.ok, false);
      assert.match(wrongKey.steps[0]!.detail, /does not match cert-file/);

      const invalid = by.get('c8')!;
      assert.equal(invalid.steps[0]!.ok, false);
      assert.match(invalid.steps[0]!.detail, /field endpoints\.0: must be an https:\/\/ URL/);

      // The same dir seen from a cluster whose ID is 2: the good remote now clashes.
      const closer2 = new Closer();
      try {
        const again = await checkConfigDir(cfgDir, 'test', { name: 'cx', id: 2 }, closer2);
        const clash = again.find((c) => c.cluster === 'c2')!;
        assert.equal(clash.steps[5]!.step, 'cluster-id');
        assert.equal(clash.steps[5]!.ok, false);
        assert.match(clash.steps[5]!.detail, /the same as this cluster \(cx\)/);
      } finally {
        await closer2.closeAll();
      }
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

// The test bed's baselines forward real packets, and nothing is left behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createTopology, destroyTopology, listNamespaces, podMtu } from '../src/lab/topology.ts';
import { runIn } from '../src/lab/exec.ts';

for (const mode of ['routing', 'kernel-vxlan'] as const) {
  test(`${mode}: pods reach pods on the same node, another node, another cluster`, async () => {
    const topo = await createTopology({ clusters: 2, nodesPerCluster: 2, podsPerNode: 2, mode, prefix: 'cmt' });
    try {
      assert.equal(topo.pods.length, 8);
      const [a, sameNode, otherNode] = topo.pods as [typeof topo.pods[0], typeof topo.pods[0], typeof topo.pods[0]];
      const otherCluster = topo.pods.find((p) => p.cluster === 2)!;
      for (const dst of [sameNode, otherNode, otherCluster]) {
        const { stdout } = await runIn(a.netns, ['ping', '-c', '1', '-W', '2', dst.ip]);
        assert.match(stdout, /1 received/, `${a.ip} -> ${dst.ip}`);
      }
      const { stdout } = await runIn(a.netns, ['ip', '-j', 'link', 'show', 'dev', 'eth0']);
      assert.equal((JSON.parse(stdout) as Array<{ mtu: number }>)[0]!.mtu, podMtu(topo.spec));
    } finally {
      await destroyTopology(topo);
    }
    const left = (await listNamespaces()).filter((n) => n.startsWith(`cmt-${topo.id}`));
    assert.deepEqual(left, []);
  });
}

test('a bad spec is refused before anything is created', async () => {
  const before = await listNamespaces();
  await assert.rejects(createTopology({ clusters: 0, nodesPerCluster: 1, podsPerNode: 1, mode: 'routing' }), /clusters must be an integer in 1\.\.100, got 0/);
  await assert.rejects(createTopology({ clusters: 1, nodesPerCluster: 1, podsPerNode: 1, mode: 'routing', prefix: 'Bad!' }), /prefix/);
  assert.deepEqual(await listNamespaces(), before);
});

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

test('what a crashed process built is swept, what a live one built is left alone', async () => {
  const { spawnSync } = await import('node:child_process');
  const { recordTopology, forgetTopology } = await import('../src/lab/registry.ts');
  const { sweepOrphanedTopologies } = await import('../src/lab/topology.ts');
  const { run } = await import('../src/lab/exec.ts');
  const dead = spawnSync('true').pid!; // a pid whose process has exited
  const tag = Math.random().toString(16).slice(2, 8);
  const orphan = `cmt-${tag}-orphan`;
  const mine = `cmt-${tag}-alive`;
  await run(['ip', 'netns', 'add', orphan]);
  await run(['ip', 'netns', 'add', mine]);
  recordTopology({ name: `cmt-${tag}-o`, pid: dead, namespaces: [orphan, `cmt-${tag}-never-created`] });
  recordTopology({ name: `cmt-${tag}-a`, pid: process.pid, namespaces: [mine] });
  try {
    const swept = await sweepOrphanedTopologies();
    assert.ok(swept.includes(`cmt-${tag}-o`));
    assert.ok(!swept.includes(`cmt-${tag}-a`));
    const left = await listNamespaces();
    assert.ok(!left.includes(orphan), 'the orphan namespace is gone');
    assert.ok(left.includes(mine), 'the live one stays');
  } finally {
    forgetTopology(`cmt-${tag}-a`);
    forgetTopology(`cmt-${tag}-o`);
    await run(['ip', 'netns', 'del', mine]).catch(() => undefined);
    await run(['ip', 'netns', 'del', orphan]).catch(() => undefined);
  }
});

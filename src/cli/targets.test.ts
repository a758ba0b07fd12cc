import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { labStateSchema, writeLabState } from '../lab/state.ts';
import { Closer } from './common.ts';
import { isExplicit, labEtcdConnection, resolveTargets } from './targets.ts';

function cluster(name: string, id: number) {
  return {
    name,
    id,
    netns: `x-${name}cp`,
    ip: `10.${id}.0.250`,
    etcd: { endpoints: [`https://10.${id}.0.250:2379`], localEndpoints: [`unix:///lab/${name}/etcd/localhost:2379`], caFile: `/lab/${name}/ca.crt`, certFile: `/lab/${name}/root.crt`, keyFile: `/lab/${name}/root.key`, logFile: '/dev/null' },
    apiserver: { logFile: '/dev/null' },
    remoteConfigDir: `/lab/${name}/remote-clusters`,
  };
}

function node(c: string, n: number) {
  return { name: `node${n}`, cluster: c, netns: `x-${c}n${n}`, underlayIP: `10.${c.slice(-1)}.0.${n}`, podCIDR: '10.101.1.0/24', pinDir: `/pins/${c}n${n}`, socket: `/s/${c}n${n}.sock`, stateDir: '/s', configFile: '/c', logFile: '/l' };
}

test('lab targets: every cluster and node of the lab, narrowed by --cluster and --node; unknown names refused with what is known', async () => {
  const root = await mkdtemp(join(tmpdir(), 'cmtc-targets-'));
  const saved = process.env.CLUSTERMESH_LAB_ROOT;
  process.env.CLUSTERMESH_LAB_ROOT = root;
  const closer = new Closer();
  try {
    writeLabState(
      labStateSchema.parse({
        version: 1,
        name: 'cmtct',
        createdAt: new Date().toISOString(),
        pid: process.pid,
        phase: 'up',
        bpffsRoot: '/pins',
        router: { netns: 'x-rtr' },
        clusters: [cluster('cluster1', 1), cluster('cluster2', 2)],
        nodes: [node('cluster1', 1), node('cluster1', 2), node('cluster2', 1)],
      }),
    );
    const all = await resolveTargets({ lab: 'cmtct' }, closer);
    assert.deepEqual(all.nodes.map((n) => n.key), ['cluster1/node1', 'cluster1/node2', 'cluster2/node1']);
    assert.deepEqual(all.clusters.map((c) => [c.name, c.id]), [['cluster1', 1], ['cluster2', 2]]);
    // This process reaches a namespaced etcd through its TLS unix socket, verified by the name 'localhost'.
    assert.deepEqual(all.clusters[0]!.etcd!.endpoints, ['unix:///lab/cluster1/etcd/localhost:2379']);
    assert.equal(all.clusters[0]!.etcd!.serverName, 'localhost');
    assert.equal(all.nodes[2]!.configDir, '/lab/cluster2/remote-clusters');

    const c2 = await resolveTargets({ lab: 'cmtct', cluster: ['cluster2'] }, closer);
    assert.deepEqual(c2.nodes.map((n) => n.key), ['cluster2/node1']);
    const n1 = await resolveTargets({ lab: 'cmtct', node: ['node1'] }, closer);
    assert.deepEqual(n1.nodes.map((n) => n.key), ['cluster1/node1', 'cluster2/node1'], "'node1' matches in every cluster");
    const one = await resolveTargets({ lab: 'cmtct', node: ['cluster1/node2'] }, closer);
    assert.deepEqual([one.nodes.map((n) => n.key), one.clusters.map((c) => c.name)], [['cluster1/node2'], ['cluster1']]);

    await assert.rejects(resolveTargets({ lab: 'cmtct', cluster: ['cluster9'] }, closer), /--cluster cluster9: no such cluster in lab cmtct; known: cluster1, cluster2/);
    await assert.rejects(resolveTargets({ lab: 'cmtct', node: ['node7'] }, closer), /--node node7: no such node in lab cmtct; known: cluster1\/node1, cluster1\/node2, cluster2\/node1/);
    await assert.rejects(resolveTargets({ lab: 'cmtcnone' }, closer), /no lab named cmtcnone; .*--agent-config FILE, --socket PATH/);
  } finally {
    await closer.closeAll();
    if (saved === undefined) delete process.env.CLUSTERMESH_LAB_ROOT;
    else process.env.CLUSTERMESH_LAB_ROOT = saved;
    await rm(root, { recursive: true, force: true });
  }
});

test('explicit flags switch the lab off; a pin dir alone is a node named after its directory', async () => {
  assert.equal(isExplicit({ lab: 'default' }), false);
  assert.equal(isExplicit({ lab: 'default', pinDir: ['/p/n1'] }), true);
  const closer = new Closer();
  const t = await resolveTargets({ lab: 'default', pinDir: ['/run/clustermesh/bpffs/cmtc-n1'] }, closer);
  assert.equal(t.lab, undefined);
  assert.deepEqual(t.nodes.map((n) => [n.name, n.pinDir, n.socket]), [['cmtc-n1', '/run/clustermesh/bpffs/cmtc-n1', undefined]]);
  await assert.rejects(resolveTargets({ socket: ['/nonexistent/agent.sock'] }, closer), /--socket \/nonexistent\/agent\.sock: .*is the agent running\?/);
  await closer.closeAll();
  assert.deepEqual(labEtcdConnection({ ...cluster('c3', 3), etcd: { ...cluster('c3', 3).etcd, localEndpoints: [] } } as never).endpoints, ['https://10.3.0.250:2379']);
});

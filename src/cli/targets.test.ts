import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { labStateSchema, writeLabState } from '../lab/state.ts';
import { Closer } from './common.ts';
import { isExplicit, labEtcdConnection, mergeTargets, resolveTargets, type NodeTarget, type Targets } from './targets.ts';

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

// ---- kube context mode: a second resolution against the nodes in use (ui --context) ----

const remoteNode = (cluster: string, node: string, host: string, context = cluster, cert = 'CERT'): NodeTarget => ({
  key: `${cluster}/${node}`,
  name: node,
  cluster,
  socket: undefined,
  pinDir: undefined,
  netns: undefined,
  underlayIP: host,
  configDir: undefined,
  clusterId: 1,
  remote: { host, port: 4247, ca: 'CA', cert, key: 'KEY', serverName: `agents.${cluster}.clustermesh.internal` },
  context,
});
const clusterOf = (name: string) => ({ name, id: 1, etcd: undefined, etcdSource: undefined, remoteConfigDir: undefined, lab: undefined });
const targetsOf = (nodes: NodeTarget[], more: Partial<Targets> = {}): Targets => ({ lab: undefined, clusters: [...new Set(nodes.map((n) => n.cluster!))].map(clusterOf), nodes, ...more });
const keys = (ns: readonly NodeTarget[]): string[] => ns.map((n) => n.key).sort();

test('mergeTargets: a node added, an agent pod restarted on another address, a node removed; unchanged nodes stay the same objects', () => {
  const n1 = remoteNode('c1', 'node1', '10.1.0.1');
  const n2 = remoteNode('c1', 'node2', '10.1.0.2');
  const current = targetsOf([n1, n2]);

  const same = mergeTargets(current, targetsOf([remoteNode('c1', 'node1', '10.1.0.1'), remoteNode('c1', 'node2', '10.1.0.2')]));
  assert.deepEqual([same.added, same.removed, same.replaced], [[], [], []]);
  assert.equal(same.targets.nodes[0], n1, 'the object in use is kept (its client and stream go on)');

  const n3 = remoteNode('c1', 'node3', '10.1.0.3');
  const moved = remoteNode('c1', 'node2', '10.1.0.22');
  const ch = mergeTargets(current, targetsOf([moved, n3]));
  assert.deepEqual(keys(ch.added), ['c1/node3']);
  assert.deepEqual(keys(ch.removed), ['c1/node1']);
  assert.equal(ch.replaced.length, 1);
  assert.equal(ch.replaced[0]!.old, n2);
  assert.equal(ch.replaced[0]!.now, moved);
  assert.deepEqual(keys(ch.targets.nodes), ['c1/node2', 'c1/node3']);
  assert.equal(ch.targets.nodes.find((n) => n.key === 'c1/node2')!.remote!.host, '10.1.0.22');

  // Another port, or rotated TLS material (the observer Secret), is dialled again too.
  const port = { ...remoteNode('c1', 'node1', '10.1.0.1'), remote: { ...n1.remote!, port: 4300 } };
  assert.equal(mergeTargets(targetsOf([n1]), targetsOf([port])).replaced.length, 1);
  assert.equal(mergeTargets(targetsOf([n1]), targetsOf([remoteNode('c1', 'node1', '10.1.0.1', 'c1', 'NEW-CERT')])).replaced.length, 1);
});

test('mergeTargets: a context that cannot be read, or an agent pod without an address yet, keeps the nodes in use', () => {
  const a = remoteNode('c1', 'node1', '10.1.0.1');
  const b = remoteNode('c2', 'node1', '10.2.0.1');
  const current = targetsOf([a, b]);

  // c2's Kubernetes API did not answer this time: its node stays, c1's are compared as usual.
  const unread = mergeTargets(current, targetsOf([], { unreadContexts: ['c2'], problems: ['context c2: unreachable'] }));
  assert.deepEqual(keys(unread.removed), ['c1/node1']);
  assert.deepEqual(keys(unread.targets.nodes), ['c2/node1']);
  assert.deepEqual(unread.targets.clusters.map((c) => c.name), ['c2'], 'its cluster stays with it');

  // The current context ('') unread: nothing is removed.
  assert.deepEqual(mergeTargets(current, targetsOf([], { unreadContexts: [''] })).removed, []);

  // An agent pod listed without a host IP (restarting): kept until it has one.
  const pending = mergeTargets(current, targetsOf([b], { pendingNodes: ['c1/node1'] }));
  assert.deepEqual(pending.removed, []);
  assert.equal(pending.targets.nodes.find((n) => n.key === 'c1/node1'), a);
});

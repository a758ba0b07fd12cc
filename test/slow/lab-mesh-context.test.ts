// Issue 14 §2 on three bare lab clusters, by kube context only, every command
// run as a user would from the lab's workstation (`lab run`): install all
// three, connect cluster1–cluster2, refusals that write nothing (a duplicate
// cluster ID in a mesh connect, an unreachable endpoint), then, while a paced
// transfer flows from a cluster1 pod to a cluster2 pod, cluster3 joins with
// `connect --connection-mode mesh` — a change of the Secrets only: every agent
// picks the new remote up without a restart (same pod UIDs, same restart
// counts), `status --context cluster3 --wait` (the agents' own reports,
// through the Kubernetes API) exits 0, a cluster3 pod reaches a cluster1 pod,
// and the transfer ends intact. Then `enable` / `disable` by context, and
// `disconnect --connection-mode mesh` empties every Secret.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { podRecordsOf } from '../../src/lab/kubelet-config.ts';
import { LAB_INSTALL_IMAGE } from '../../src/lab/lab-install.ts';
import { startTransfer } from '../../src/lab/transfer.ts';
import { eventually, ok, show } from '../helpers/kube.ts';
import { labFixture } from '../helpers/lab-fixture.ts';

const lab = labFixture('cmtmc', { up: ['--bare', '--clusters', '3', '--nodes', '1'] });
const { labDir, ws, kubectlOk, client, kube: k } = lab;
const CLUSTERS = ['cluster1', 'cluster2', 'cluster3'] as const;
const NS = 'clustermesh-system';

/** data and resourceVersion of every cluster's clustermesh-remotes Secret. */
async function secrets(): Promise<Record<string, { rv: string; keys: string[]; data: string }>> {
  const out: Record<string, { rv: string; keys: string[]; data: string }> = {};
  for (const c of CLUSTERS) {
    const s = JSON.parse(await kubectlOk(c, ['-n', NS, 'get', 'secret', 'clustermesh-remotes', '-o', 'json'])) as { data?: Record<string, string>; metadata: { resourceVersion: string } };
    out[c] = { rv: s.metadata.resourceVersion, keys: Object.keys(s.data ?? {}).filter((x) => !x.includes('.')).sort(), data: JSON.stringify(s.data ?? {}) };
  }
  return out;
}

/** uid and restart count of every agent and apiserver pod of every cluster. */
async function meshPods(): Promise<string[]> {
  const out: string[] = [];
  for (const c of CLUSTERS) {
    const s = await kubectlOk(c, ['-n', NS, 'get', 'pods', '-o', 'jsonpath={range .items[*]}{.metadata.name} {.metadata.uid} {.status.containerStatuses[*].restartCount}{"\\n"}{end}']);
    out.push(...s.split('\n').filter(Boolean).map((l) => `${c} ${l}`));
  }
  return out.sort();
}

const POD = (podName: string, command: string[]): string =>
  JSON.stringify({ apiVersion: 'v1', kind: 'Pod', metadata: { name: podName, namespace: 'default', labels: { name: podName } }, spec: { containers: [{ name: 'main', command }] } });
const ECHO = ['clustermesh', 'lab', 'workload', 'echo', '--port', '8080'];
const SLEEP = ['sleep', 'infinity'];

describe('connect three installed clusters by context: mesh mode, refusals, a third cluster joining while traffic flows, status --context', { timeout: 1_200_000 }, () => {
  before(() => lab.up());
  after(() => lab.down());

  test('install three, connect two, refusals write nothing, the third joins by a Secret change while a transfer flows', async () => {
    const t0 = Date.now();
    const installs = await Promise.all(CLUSTERS.map((c) => ws(['install', '--context', c, '--cluster-name', c, '--cluster-id', c.slice(-1), '--service-type', 'LoadBalancer', '--image', LAB_INSTALL_IMAGE])));
    for (const r of installs) assert.equal(r.code, 0, show(r));
    // status --context reads the install through the API alone; with no remote configured it is ready once the pods are.
    for (const c of CLUSTERS) {
      const st = await ws(['status', '--context', c, '--wait', '--timeout', '4m'], 300_000);
      assert.equal(st.code, 0, show(st));
      assert.match(st.stdout, /no remote clusters configured/);
    }
    console.log(`# installed and ready: ${Math.round((Date.now() - t0) / 1000)} s`);

    // enable by context: install exposed it already (LoadBalancer): unchanged, the address printed once it answers.
    const en = await ws(['enable', '--context', 'cluster3']);
    assert.equal(en.code, 0, show(en));
    assert.match(en.stdout, /service\/clustermesh-apiserver unchanged: LoadBalancer/);
    assert.match(en.stdout, /enabled cluster3 \(ID 3, context cluster3\): other clusters reach its etcd at https:\/\/10\.\d+\.0\.2\d\d:2379/);
    const c3endpoint = /at (https:\/\/[\d.]+):2379/.exec(en.stdout)![1]!;

    const conn = await ws(['connect', '--context', 'cluster1', '--destination-context', 'cluster2']);
    assert.equal(conn.code, 0, show(conn));
    for (const c of ['cluster1', 'cluster2']) {
      const st = await ws(['status', '--context', c, '--wait', '--timeout', '3m', '-o', 'json'], 240_000);
      assert.equal(st.code, 0, show(st));
      const rep = JSON.parse(st.stdout) as { ready: boolean; remoteClusters: Array<{ name: string; ready: number; nodes: number }> };
      assert.deepEqual(rep.remoteClusters.map((r) => `${r.name} ${r.ready}/${r.nodes}`), [c === 'cluster1' ? 'cluster2 1/1' : 'cluster1 1/1']);
    }

    // Refusals, each checked against the Secrets of all three clusters: nothing written.
    const before = await secrets();
    assert.deepEqual([before.cluster1!.keys, before.cluster2!.keys, before.cluster3!.keys], [['cluster2'], ['cluster1'], []]);
    // A duplicate ID: cluster3's install record says ID 2 (as a cluster installed with --cluster-id 2 would); connect reads IDs from there.
    await kubectlOk('cluster3', ['-n', NS, 'patch', 'configmap', 'clustermesh-config', '--type', 'merge', '-p', '{"data":{"cluster-id":"2"}}']);
    const dup = await ws(['connect', '--connection-mode', 'mesh', '--context', 'cluster1', '--context', 'cluster2', '--context', 'cluster3']);
    await kubectlOk('cluster3', ['-n', NS, 'patch', 'configmap', 'clustermesh-config', '--type', 'merge', '-p', '{"data":{"cluster-id":"3"}}']);
    assert.equal(dup.code, 2, show(dup));
    assert.match(dup.stderr, /clusters cluster\d and cluster\d both have cluster ID 2/);
    // An endpoint nothing answers on: refused naming what was tried.
    const bad = `${c3endpoint}:2399`;
    const unreach = await ws(['connect', '--context', 'cluster1', '--destination-context', 'cluster3', '--destination-endpoint', bad]);
    assert.equal(unreach.code, 2, show(unreach));
    assert.match(unreach.stderr, new RegExp(`cluster cluster3 \\(cluster3\\) cannot be reached .*tried:\\n\\s+${bad.replace(/[.]/g, '\\.')}`, 's'));
    // Mesh mode with one pair's endpoint: refused before anything is read.
    const meshEp = await ws(['connect', '--connection-mode', 'mesh', '--context', 'cluster1', '--context', 'cluster3', '--endpoint', bad]);
    assert.equal(meshEp.code, 2, show(meshEp));
    assert.match(meshEp.stderr, /--endpoint and --destination-endpoint name one pair/);
    assert.deepEqual(await secrets(), before, 'no Secret changed by a refused connect');

    // Workloads: an echo server in cluster1 and cluster2, clients in cluster1 and cluster3.
    for (const [c, p, cmd] of [['cluster1', 'echo', ECHO], ['cluster2', 'echo', ECHO], ['cluster1', 'client', SLEEP], ['cluster3', 'client', SLEEP]] as const) await ok(k.kubectlIn(POD(p, [...cmd]), '--context', c, 'apply', '-f', '-'), `pod ${p} in ${c}`);
    for (const c of CLUSTERS) await kubectlOk(c, ['wait', '--for=condition=Ready', 'pod', '--all', '-n', 'default', '--timeout', '240s']);
    const ipOf = async (c: string, p: string) => (await kubectlOk(c, ['get', 'pod', p, '-o', 'jsonpath={.status.podIP}'])).trim();
    const echo1 = await ipOf('cluster1', 'echo');
    const echo2 = await ipOf('cluster2', 'echo');
    const client1 = podRecordsOf(labDir).find((r) => r.cluster === 'cluster1' && r.name === 'client');
    assert.ok(client1, 'the client pod of cluster1 runs');

    const podsBefore = await meshPods();
    // 14 MiB at 160 KiB/s: about 90 s, spanning cluster3's joining (about 60 s at a load of 20 on 2 cores).
    const bytes = 14 << 20;
    const tr = startTransfer(client1!.netns, `http://${echo2}:8080/bytes?n=${bytes}`, { rateBytesPerSec: 160 << 10, idleTimeoutSeconds: 60 });
    try {
      await eventually('the transfer started', () => (tr.received() > 0 ? true : undefined), 60_000, 100);
      const mesh = await ws(['connect', '--connection-mode', 'mesh', '--context', 'cluster1', '--context', 'cluster2', '--context', 'cluster3']);
      assert.equal(mesh.code, 0, show(mesh));
      // The Secrets changed while the transfer ran (at a load of 27 on 2 cores, status --wait below may see it end first).
      const connectedAt = tr.received();
      assert.equal(mesh.stdout.split('\n').filter((l) => l.startsWith('connected ')).length, 6, mesh.stdout);
      const st = await ws(['status', '--context', 'cluster3', '--wait', '--timeout', '3m'], 240_000);
      assert.equal(st.code, 0, show(st));
      assert.match(st.stdout, /remote cluster1: connected 1\/1, ready 1\/1/);
      assert.match(st.stdout, /remote cluster2: connected 1\/1, ready 1\/1/);
      const joinedAt = tr.received();
      for (const c of ['cluster1', 'cluster2']) {
        const s = await ws(['status', '--context', c, '--wait', '--timeout', '2m'], 180_000);
        assert.equal(s.code, 0, show(s));
      }
      const after = await secrets();
      assert.deepEqual([after.cluster1!.keys, after.cluster2!.keys, after.cluster3!.keys], [['cluster2', 'cluster3'], ['cluster1', 'cluster3'], ['cluster1', 'cluster2']]);
      // A cluster3 pod reaches a cluster1 pod.
      const tally = await client('client', `http://${echo1}:8080/`, 3, 3000, 'cluster3');
      assert.deepEqual([tally.requests, tally.failures], [3, 0], JSON.stringify(tally));

      const res = await tr.done;
      console.log(`# cluster3 connected with ${connectedAt}, ready with ${joinedAt} of ${bytes} bytes received; transfer: ${JSON.stringify(res)}`);
      assert.equal(res.error, '', tr.describe());
      assert.equal(res.status, 200);
      assert.equal(res.bytes, bytes);
      assert.equal(res.sha256, res.announcedSha256);
      // No agent or apiserver restarted or was replaced: the Secret change was picked up live.
      assert.deepEqual(await meshPods(), podsBefore);
      assert.ok(connectedAt < bytes, `the Secrets changed before the transfer ended (${connectedAt} of ${bytes} bytes by then)`);
    } finally {
      await tr.done.catch(() => undefined);
    }
  });

  test('disable and enable by context; disconnect --connection-mode mesh empties every Secret', async () => {
    const t0 = Date.now();
    const lap = (what: string) => console.log(`# ${what}: ${Math.round((Date.now() - t0) / 1000)} s`);
    const dis = await ws(['disable', '--context', 'cluster3']);
    assert.equal(dis.code, 0, show(dis));
    assert.match(dis.stdout, /disabled cluster3 .*ClusterIP \(was LoadBalancer\)/);
    const refused = await ws(['connect', '--context', 'cluster1', '--destination-context', 'cluster3']);
    assert.equal(refused.code, 2, show(refused));
    assert.match(refused.stderr, /--destination-context cluster3: service\/clustermesh-apiserver is ClusterIP: other clusters cannot reach .*clustermesh enable --context cluster3/);
    const en = await ws(['enable', '--context', 'cluster3', '--service-type', 'LoadBalancer']);
    assert.equal(en.code, 0, show(en));
    assert.match(en.stdout, /service\/clustermesh-apiserver configured: ClusterIP -> LoadBalancer/);
    assert.match(en.stdout, /enabled cluster3 .*reach its etcd at https:\/\/10\.\d+\.0\.2\d\d:2379/);
    lap('disabled, refused, enabled again (a new load balancer address, answering)');
    const again = await ws(['enable', '--context', 'cluster3']);
    assert.equal(again.code, 0, show(again));
    assert.match(again.stdout, /unchanged: LoadBalancer/);

    const d = await ws(['disconnect', '--connection-mode', 'mesh', '--context', 'cluster1', '--context', 'cluster2', '--context', 'cluster3']);
    assert.equal(d.code, 0, show(d));
    assert.equal(d.stdout.split('\n').filter((l) => l.startsWith('disconnected ')).length, 6, d.stdout);
    const s = await secrets();
    assert.deepEqual([s.cluster1!.keys, s.cluster2!.keys, s.cluster3!.keys], [[], [], []]);
    lap('disconnected');
    const st = await ws(['status', '--context', 'cluster1', '--wait', '--timeout', '1m'], 120_000);
    assert.equal(st.code, 0, show(st));
    assert.match(st.stdout, /no remote clusters configured/);
    lap('status after disconnect');
  });
});

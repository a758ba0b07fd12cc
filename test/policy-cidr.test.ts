// ipBlock matches pod addresses, per address, with real traffic (issue 19):
// two clusters of two nodes, real etcd, apiservers and agents. NetworkPolicies
// with ipBlock peers are written to cluster1's Kubernetes API, as a user would, and
// select pods by /32 and by a wide block with excepts, on the same node, on
// another node and in the other cluster. Drops are checked on the enforcing
// node's counters and events.
//
//   c1n1: client (p1), target (p2, echo), server (p3, echo)
//   c1n2: server (p1, echo), server (p2, echo)
//   c2n1: server (p1, echo), server (p2, echo)
// Every "server" shares one identity per cluster: only the address tells them apart.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { collectAgentEvents } from '../src/lab/datapath.ts';
import { startEcho, waitListening } from '../src/lab/echo.ts';
import type { KubeObjects } from '../src/lab/kube-objects.ts';
import { startMesh, type Mesh } from '../src/lab/mesh.ts';
import type { ManagedProcess } from '../src/lab/process.ts';
import { createTopology, destroyTopology, type PodInfo, type Topology } from '../src/lab/topology.ts';
import { enforceFlags, policyCidrs, policyDrops, reaches as reachesOn, sleep, waitFor } from './helpers/policy.ts';

const PORT = 8080;
const reaches = (src: PodInfo, dst: PodInfo, timeoutS?: number): Promise<boolean> => reachesOn(src, dst, PORT, timeoutS);

describe('ipBlock matches pods by address: same node, other node, other cluster (real traffic)', { timeout: 900_000 }, () => {
  let topo: Topology | undefined;
  let mesh: Mesh | undefined;
  const servers: ManagedProcess[] = [];
  const endpointIds = new Map<string, number>();
  const identities = new Map<string, number>();
  const pod = (c: number, n: number, p: number): PodInfo => topo!.pods.find((x) => x.cluster === c && x.node.index === n && x.index === p)!;
  const m = (): Mesh => mesh!;
  const client = (): PodInfo => pod(1, 1, 1);
  const target = (): PodInfo => pod(1, 1, 2);
  const sameNode = (): PodInfo => pod(1, 1, 3);
  const otherNode = (p: number): PodInfo => pod(1, 2, p);
  const otherCluster = (p: number): PodInfo => pod(2, 1, p);
  const n11 = () => client().node;
  const writer = (): KubeObjects => m().kube(1);
  const np = (name: string, spec: Record<string, unknown>) => ({ apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name, namespace: 'default' }, spec });

  before(async () => {
    topo = await createTopology({ clusters: 2, nodesPerCluster: 2, podsPerNode: 3, mode: 'clustermesh', prefix: 'cmtcidr' });
    const dir = await mkdtemp(join(tmpdir(), 'cmtcidr-mesh-'));
    mesh = await startMesh(topo, { dir, readyTimeoutMs: 360_000, agent: { fullSyncIntervalSeconds: 5, syncTimeoutSeconds: 10 }, progress: (l) => console.log(`# ${l}`) });
    const labelled: Array<[PodInfo, string]> = [
      [client(), 'client'],
      [target(), 'target'],
      [sameNode(), 'server'],
      [otherNode(1), 'server'],
      [otherNode(2), 'server'],
      [otherCluster(1), 'server'],
      [otherCluster(2), 'server'],
    ];
    for (const [p, app] of labelled) {
      const ep = await m().addPod(p, { labels: { app } });
      endpointIds.set(p.name, ep.endpointID);
      identities.set(p.name, ep.identity!);
      if (app === 'client') continue;
      servers.push(await startEcho(p, PORT));
    }
    await waitFor('every pod in every ipcache', () => topo!.nodes.every((n) => labelled.every(([p]) => m().readIpcache(n).has(`${p.ip}/32`))), 120_000);
    for (const [p, app] of labelled) {
      if (app !== 'client') await waitListening(p, PORT, 120_000);
    }
    assert.equal(identities.get(otherNode(1).name), identities.get(otherNode(2).name), 'the two servers of c1n2 share one identity');
    assert.equal(identities.get(otherCluster(1).name), identities.get(otherCluster(2).name), 'the two servers of cluster2 share one identity');
  });

  after(async () => {
    await Promise.all(servers.map((s) => s.stop(1000)));
    try {
      await mesh?.stop();
    } finally {
      if (topo) await destroyTopology(topo);
    }
  });

  test('egress to pod /32s: exactly those pods are reachable (same node, other node, other cluster); the others are dropped and counted', async () => {
    const allowed = [target(), otherNode(1), otherCluster(1)];
    const denied = [sameNode(), otherNode(2), otherCluster(2)];
    for (const p of [...allowed, ...denied]) assert.equal(await reaches(client(), p), true, `without policy: client -> ${p.name}`);
    const name = 'client-to-pod-ips';
    const events = collectAgentEvents(m().agent(n11()).socket);
    try {
      await writer().apply(np(name, { podSelector: { matchLabels: { app: 'client' } }, policyTypes: ['Egress'], egress: [{ to: allowed.map((p) => ({ ipBlock: { cidr: `${p.ip}/32` } })) }] }));
      await waitFor('client egress enforced', () => enforceFlags(m().agent(n11()).pinDir, endpointIds.get(client().name)!).egress, 20_000);
      await waitFor('the /32s in cm_policy_cidr', () => allowed.every((p) => policyCidrs(m().agent(n11()).pinDir).has(`${p.ip}/32`)), 20_000);
      const dropsBefore = policyDrops(m().readDrops(n11()));
      const got = await Promise.all([...allowed, ...denied].map(async (p) => [p.name, await reaches(client(), p)] as const));
      assert.deepEqual(got, [...allowed.map((p) => [p.name, true]), ...denied.map((p) => [p.name, false])]);
      await sleep(200);
      assert.ok(policyDrops(m().readDrops(n11())) - dropsBefore >= denied.length, 'every refused pod counted on the client node');
      const drops = (await events.drain()).filter((e) => e.type === 'drop' && e.srcIp === client().ip);
      for (const p of denied) {
        const e = drops.find((x) => x.dstIp === p.ip);
        assert.ok(e, `a drop event towards ${p.name}`);
        assert.deepEqual([e.reasonName, e.direction, e.dstIdentity], ['DROP_POLICY', 'egress', identities.get(p.name)]);
      }
      assert.deepEqual(drops.filter((e) => allowed.some((p) => p.ip === e.dstIp)), [], 'nothing towards the allowed pods dropped');
    } finally {
      events.stop();
      await writer().delete('NetworkPolicy', { namespace: 'default', name }).catch(() => undefined);
    }
    await waitFor('client egress free again', () => !enforceFlags(m().agent(n11()).pinDir, endpointIds.get(client().name)!).egress, 20_000);
    await waitFor('cm_policy_cidr empty again', () => policyCidrs(m().agent(n11()).pinDir).size === 0, 20_000);
  });

  test('ingress from 0.0.0.0/4 with an except for one pod in each place: those pods are dropped, the rest of the block passes', async () => {
    const excepted = [sameNode(), otherNode(2), otherCluster(2)];
    const admitted = [client(), otherNode(1), otherCluster(1)];
    const name = 'target-from-block';
    const events = collectAgentEvents(m().agent(n11()).socket);
    try {
      await writer().apply(
        np(name, {
          podSelector: { matchLabels: { app: 'target' } },
          policyTypes: ['Ingress'],
          ingress: [{ from: [{ ipBlock: { cidr: '0.0.0.0/4', except: excepted.map((p) => `${p.ip}/32`) } }] }],
        }),
      );
      await waitFor('target ingress enforced', () => enforceFlags(m().agent(n11()).pinDir, endpointIds.get(target().name)!).ingress, 20_000);
      await waitFor(`${excepted[0]!.name} refused`, async () => !(await reaches(excepted[0]!, target(), 0.5)), 20_000);
      const dropsBefore = policyDrops(m().readDrops(n11()));
      const got = await Promise.all([...admitted, ...excepted].map(async (p) => [p.name, await reaches(p, target())] as const));
      assert.deepEqual(got, [...admitted.map((p) => [p.name, true]), ...excepted.map((p) => [p.name, false])]);
      await sleep(200);
      assert.ok(policyDrops(m().readDrops(n11())) - dropsBefore >= excepted.length, 'every excepted pod counted on the target node');
      const drops = (await events.drain()).filter((e) => e.type === 'drop' && e.dstIp === target().ip);
      for (const p of excepted) {
        const e = drops.find((x) => x.srcIp === p.ip);
        assert.ok(e, `a drop event from ${p.name}`);
        assert.deepEqual([e.reasonName, e.direction, e.srcIdentity], ['DROP_POLICY', 'ingress', identities.get(p.name)]);
      }
      assert.deepEqual(drops.filter((e) => admitted.some((p) => p.ip === e.srcIp)), [], 'nothing from the admitted pods dropped');
      // Same identity, other address: a server of c1n2 admitted, its twin not; the identity rules are untouched.
      const view = (await m().agent(n11()).api.policy()).endpoints.find((e) => e.podName === target().name)!;
      assert.ok(view.entries.every((e) => e.labels.every((l) => l.startsWith('cidr:'))), 'only CIDR identities in the entries');
    } finally {
      events.stop();
      await writer().delete('NetworkPolicy', { namespace: 'default', name }).catch(() => undefined);
    }
    await waitFor(`${excepted[1]!.name} allowed again`, () => reaches(excepted[1]!, target(), 0.5), 20_000);
  });
});

// A running pod relabelled (issue 19, part 2): its Pod object's labels
// rewritten in the cluster's Kubernetes API, as `kubectl label pod` does, must change
// its identity everywhere — a deny-by-default policy that now selects it is
// enforced, an allow rule that now admits a client lets it in, a client no
// longer admitted is refused again — on the same node, on another node and
// from another cluster. Two clusters of two nodes, real etcd, apiservers,
// agents and traffic; the policy is written to cluster1's API. The time
// from the label write to enforcement is printed (`# relabel ...` lines).
//
//   cluster1/node1: server, client-same-node   cluster1/node2: client-other-node   cluster2/node1: client-other-cluster
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { identityKey, identityRefsOfIdPrefix } from '../src/identity/keys.ts';
import { withPinnedMap } from '../src/datapath/testing.ts';
import * as endpointsMap from '../src/datapath/maps/endpoints.ts';
import * as policyMap from '../src/datapath/maps/policy.ts';
import { startMesh, type Mesh } from '../src/lab/mesh.ts';
import { createTopology, destroyTopology, type NodeInfo, type PodInfo, type Topology } from '../src/lab/topology.ts';
import { enforceFlags, pings, policyDrops, sleep, waitFor } from './helpers/policy.ts';

describe('a running pod relabelled: identity, policy and export follow (2 clusters x 2 nodes)', { timeout: 400_000 }, () => {
  let topo: Topology | undefined;
  let mesh: Mesh | undefined;
  const m = (): Mesh => mesh!;
  const pod = (c: number, n: number, p: number): PodInfo => topo!.pods.find((x) => x.cluster === c && x.node.index === n && x.index === p)!;
  const server = (): PodInfo => pod(1, 1, 1);
  const sameNode = (): PodInfo => pod(1, 1, 2);
  const otherNode = (): PodInfo => pod(1, 2, 1);
  const otherCluster = (): PodInfo => pod(2, 1, 1);
  const clients = (): Array<[string, PodInfo]> => [
    ['same node', sameNode()],
    ['other node', otherNode()],
    ['other cluster', otherCluster()],
  ];
  const labels = new Map<PodInfo, Record<string, string>>();
  const serverEndpointID = (): number => withPinnedMap(m().agent(server().node).pinDir, endpointsMap.MAP_NAME, (mp) => endpointsMap.lookup(mp, { ip: server().ip })!.endpointId);

  /** The identity a pod's packets carry: its entry in its own node's cm_endpoints. */
  const carried = (p: PodInfo): number | undefined => withPinnedMap(m().agent(p.node).pinDir, endpointsMap.MAP_NAME, (mp) => endpointsMap.lookup(mp, { ip: p.ip })?.identity);
  const ipcacheIdentity = (n: NodeInfo, p: PodInfo): number | undefined => m().readIpcache(n).get(`${p.ip}/32`)?.identity;
  const enforced = (): policyMap.EnforceValue => enforceFlags(m().agent(server().node).pinDir, serverEndpointID());
  /** The server's node admits `identity` on ingress (an allow entry in cm_policy). */
  const admits = (identity: number): boolean =>
    withPinnedMap(m().agent(server().node).pinDir, policyMap.MAP_NAME, (mp) => {
      const ep = serverEndpointID();
      for (const [k, v] of policyMap.entries(mp)) if (k.endpointId === ep && k.direction === 'ingress' && k.identity === identity && v.allow) return true;
      return false;
    });

  function podObject(p: PodInfo, l: Record<string, string>): unknown {
    return {
      kind: 'Pod',
      metadata: { name: p.name, namespace: 'default', labels: l },
      spec: { nodeName: p.node.name, containers: [{ name: 'app', image: 'app' }] },
      status: { phase: 'Running', podIP: p.ip, conditions: [{ type: 'Ready', status: 'True' }] },
    };
  }
  /** `kubectl label pod`: the Pod object rewritten with new labels; returns the time of the write. */
  async function relabel(p: PodInfo, l: Record<string, string>): Promise<number> {
    labels.set(p, l);
    await m().kube(p.cluster).apply(podObject(p, l));
    return Date.now();
  }

  before(async () => {
    topo = await createTopology({ clusters: 2, nodesPerCluster: 2, podsPerNode: 2, mode: 'clustermesh', prefix: 'cmtrelab' });
    const dir = await mkdtemp(join(tmpdir(), 'cmtrelab-mesh-'));
    mesh = await startMesh(topo, { dir, readyTimeoutMs: 180_000, agent: { fullSyncIntervalSeconds: 5, syncTimeoutSeconds: 10 }, progress: (l) => console.log(`# ${l}`) });
    const initial: Array<[PodInfo, Record<string, string>]> = [
      [server(), { app: 'server' }],
      [sameNode(), { app: 'client-a' }],
      [otherNode(), { app: 'client-b' }],
      [otherCluster(), { app: 'client-c' }],
    ];
    for (const [p, l] of initial) {
      await relabel(p, l);
      // PUT is idempotent: on a machine loaded enough for the client's 30 s timeout, ask again.
      for (let attempt = 1; ; attempt++) {
        try {
          await m().addPod(p, { labels: l });
          break;
        } catch (err) {
          if (attempt >= 3 || (err as Error).name !== 'AgentUnavailableError') throw err;
          console.log(`# add of ${p.name} not answered (${(err as Error).message}); asking again`);
        }
      }
    }
    // Pods locked=yes admit only role=trusted (of this cluster, or of cluster2): a deny-by-default policy nobody matches yet.
    await m().kube(1).apply({
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name: 'locked-admits-trusted', namespace: 'default' },
      spec: {
        endpointSelector: { matchLabels: { locked: 'yes' } },
        ingress: [{ fromEndpoints: [{ matchLabels: { role: 'trusted' } }, { matchLabels: { role: 'trusted', 'io.cilium.k8s.policy.cluster': 'cluster2' } }] }],
      },
    });
    await waitFor('every pod in every ipcache', () => topo!.nodes.every((n) => initial.every(([p]) => ipcacheIdentity(n, p) !== undefined)), 30_000);
    await waitFor('the policy applied in cluster1', async () => (await m().agentStatus(server().node)).policy.policies.applied === 1, 20_000);
  });

  after(async () => {
    try {
      await mesh?.stop();
    } finally {
      if (topo) await destroyTopology(topo);
    }
  });

  test('the server relabelled so the deny-by-default policy selects it: refused from the same node, another node and another cluster; new identity exported, old one unreferenced', async () => {
    for (const [where, c] of clients()) assert.equal(await pings(c, server()), true, `before: ${where} client reaches the server`);
    const oldIdentity = carried(server())!;
    assert.deepEqual(enforced(), { active: false, ingress: false, egress: false }, 'not enforced before');
    const dropsBefore = policyDrops(m().readDrops(server().node));

    const written = await relabel(server(), { app: 'server', locked: 'yes' });
    const inMap = await waitFor('ACTIVE|INGRESS for the server in its node map', () => enforced().ingress, 30_000);
    const refusedAt = await Promise.all(
      clients().map(async ([where, c]) => {
        await waitFor(`${where} client refused`, async () => !(await pings(c, server())), 30_000);
        return [where, Date.now() - written] as const;
      }),
    );
    const newIdentity = carried(server())!;
    assert.notEqual(newIdentity, oldIdentity, 'the server has a new identity in its cm_endpoints entry');
    const exported = await Promise.all(
      topo!.nodes.map(async (n) => {
        await waitFor(`${n.netns}: ipcache holds the new identity of the server`, () => ipcacheIdentity(n, server()) === newIdentity, 30_000, () => [...m().readIpcache(n)]);
        return [`${n.clusterName}/${n.name}`, Date.now() - written] as const;
      }),
    );
    console.log(
      `# relabel server -> locked (deny-by-default now selects it): enforced in the node's map ${inMap} ms after the label write; first refused probe done: ${refusedAt.map(([w, ms]) => `${w} ${ms} ms`).join(', ')} (a refused probe lasts its 1 s timeout)`,
    );
    console.log(`# relabel server: its new identity ${newIdentity} (was ${oldIdentity}) in the ipcache of ${exported.map(([n, ms]) => `${n} at ${ms} ms`).join(', ')}`);

    await sleep(200);
    const dropsAfter = policyDrops(m().readDrops(server().node));
    assert.ok(dropsAfter - dropsBefore >= 3, `policy drops counted on the server's node: ${dropsBefore} -> ${dropsAfter}`);
    const info = (await m().agent(server().node).api.listEndpoints()).find((e) => e.ip === server().ip)!;
    assert.deepEqual([info.identity, info.labels], [newIdentity, { app: 'server', locked: 'yes' }], 'GET /v1/endpoints shows the new labels and identity');
    assert.ok(info.identityLabels.includes('k8s:locked=yes'));
    // The old identity: no reference left (agent and apiserver both dropped theirs); the number itself
    // stays for the allocator's grace period, so peers that still see it resolve it.
    const kv = m().kv(1, 'root');
    await waitFor('the old identity unreferenced', async () => (await kv.list(identityRefsOfIdPrefix(oldIdentity))).pairs.length === 0, 20_000, async () => (await kv.list(identityRefsOfIdPrefix(oldIdentity))).pairs.map((p) => p.key));
    assert.ok(await kv.get(identityKey(oldIdentity)), 'the old identity is kept during its grace period');
  });

  test('clients relabelled so the allow rule admits them: allowed on the same node, from another node and from another cluster; the others stay refused', async () => {
    assert.equal(enforced().ingress, true);
    const results: string[] = [];
    const list = clients();
    for (const [i, [where, c]] of list.entries()) {
      const oldIdentity = carried(c)!;
      const written = await relabel(c, { ...labels.get(c)!, role: 'trusted' });
      let newIdentity = 0;
      const switched = await waitFor(`${where} client carries a new identity`, () => {
        const id = carried(c);
        if (id === undefined || id === oldIdentity) return false;
        newIdentity = id;
        return true;
      });
      const admitted = await waitFor(`the server's node admits ${where} client's new identity`, () => admits(newIdentity), 30_000);
      const enforcedMs = Date.now() - written;
      await waitFor(`${where} client reaches the server`, () => pings(c, server()), 30_000);
      const reached = Date.now() - written;
      results.push(`${where}: source identity switched ${switched} ms, admitted in the server's map ${enforcedMs} ms, first answered probe ${reached} ms`);
      for (const [w, other] of list.slice(i + 1)) assert.equal(await pings(other, server()), false, `${w} client still refused`);
    }
    console.log(`# relabel client -> role=trusted (the allow rule now admits it), from the label write: ${results.join('; ')}`);
  });

  test('a client relabelled back is refused again (the allow rule no longer admits it)', async () => {
    const results: string[] = [];
    for (const [where, c] of clients()) {
      const trustedIdentity = carried(c)!;
      const dropsBefore = policyDrops(m().readDrops(server().node));
      const { role: _role, ...rest } = labels.get(c)!;
      const written = await relabel(c, rest);
      const switched = await waitFor(`${where} client drops role=trusted`, () => {
        const id = carried(c);
        return id !== undefined && id !== trustedIdentity;
      });
      await waitFor(`${where} client refused`, async () => !(await pings(c, server())), 30_000);
      results.push(`${where}: source identity switched ${switched} ms, first refused probe done ${Date.now() - written} ms`);
      assert.ok(policyDrops(m().readDrops(server().node)) > dropsBefore, `${where}: the refusal counted as a policy drop`);
    }
    console.log(`# relabel client back (no longer admitted), from the label write: ${results.join('; ')}`);
    const st = await m().agentStatus(server().node);
    assert.deepEqual(st.endpoints.problems, []);
  });
});

// Network policy across clusters with real traffic (issue 5): three clusters
// of one node, a real etcd with TLS and an apiserver per cluster, a real agent
// per node. Policies are written to a cluster's Kubernetes API, as a user would;
// nothing here touches a policy map. Each cluster enforces its own policies
// against identities learned from the whole mesh.
//
//   cluster1: frontend (echo server too), other          cluster2: backend, backend-2 (added later), spare
//   cluster3: frontend, backend
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DatapathEvent } from '../src/datapath/maps/events.ts';
import { collectAgentEvents } from '../src/lab/datapath.ts';
import { startEcho, waitListening } from '../src/lab/echo.ts';
import { runIn } from '../src/lab/exec.ts';
import type { KubeObjects } from '../src/lab/kube-objects.ts';
import { startMesh, type Mesh } from '../src/lab/mesh.ts';
import type { ManagedProcess } from '../src/lab/process.ts';
import { createTopology, destroyTopology, type NodeInfo, type PodInfo, type Topology } from '../src/lab/topology.ts';
import { enforceFlags, policyCidrs, policyDrops, reaches as reachesOn, sleep, waitFor } from './helpers/policy.ts';

const PORT = 8080;
const reaches = (src: PodInfo, dst: PodInfo, timeoutS?: number): Promise<boolean> => reachesOn(src, dst, PORT, timeoutS);

describe('network policy across 3 clusters x 1 node, real traffic', { timeout: 300_000 }, () => {
  let topo: Topology | undefined;
  let mesh: Mesh | undefined;
  const servers: ManagedProcess[] = [];
  const identities = new Map<string, number>();
  const pod = (c: number, p: number): PodInfo => topo!.pods.find((x) => x.cluster === c && x.index === p)!;
  const node = (c: number): NodeInfo => topo!.nodes.find((x) => x.cluster === c)!;
  const m = (): Mesh => mesh!;
  const writer = (c: number): KubeObjects => m().kube(c);
  const endpointIds = new Map<string, number>();

  const frontend1 = (): PodInfo => pod(1, 1);
  const other1 = (): PodInfo => pod(1, 2);
  const backend2 = (): PodInfo => pod(2, 1);
  const backendLater2 = (): PodInfo => pod(2, 2);
  const frontend3 = (): PodInfo => pod(3, 1);
  const backend3 = (): PodInfo => pod(3, 2);

  /** The example policy in cluster2: backend admits only app=frontend of cluster1 on TCP 8080, and may open nothing itself. */
  const backendPolicy = {
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumNetworkPolicy',
    metadata: { name: 'backend-from-cluster1-frontend', namespace: 'default' },
    spec: {
      endpointSelector: { matchLabels: { app: 'backend' } },
      ingress: [{ fromEndpoints: [{ matchLabels: { app: 'frontend', 'io.cilium.k8s.policy.cluster': 'cluster1' } }], toPorts: [{ ports: [{ port: String(PORT), protocol: 'TCP' }] }] }],
      // Egress enforced with no peer allowed: replies can only pass through policy conntrack.
      egress: [{ toEndpoints: [{ matchLabels: { app: 'nothing-is-called-this' } }] }],
    },
  };
  /** In cluster1: frontend may open connections only to app=backend of cluster2. */
  const frontendPolicy = {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: { name: 'frontend-to-cluster2-backend', namespace: 'default' },
    spec: {
      podSelector: { matchLabels: { app: 'frontend' } },
      policyTypes: ['Egress'],
      egress: [{ to: [{ podSelector: { matchLabels: { app: 'backend', 'io.cilium.k8s.policy.cluster': 'cluster2' } } }] }],
    },
  };

  before(async () => {
    topo = await createTopology({ clusters: 3, nodesPerCluster: 1, podsPerNode: 3, mode: 'clustermesh', prefix: 'cmtpol' });
    const dir = await mkdtemp(join(tmpdir(), 'cmtpol-mesh-'));
    mesh = await startMesh(topo, { dir, agent: { fullSyncIntervalSeconds: 5, syncTimeoutSeconds: 10 }, progress: (l) => console.log(`# ${l}`) });
    const withServer = [frontend1(), backend2(), backendLater2(), backend3()];
    for (const p of withServer) servers.push(await startEcho(p, PORT));
    const labels: Array<[PodInfo, string]> = [
      [frontend1(), 'frontend'],
      [other1(), 'other'],
      [backend2(), 'backend'],
      [frontend3(), 'frontend'],
      [backend3(), 'backend'],
    ];
    for (const [p, app] of labels) {
      const ep = await m().addPod(p, { labels: { app } });
      identities.set(p.name, ep.identity!);
      endpointIds.set(p.name, ep.endpointID);
    }
    // Every pod known in every ipcache before traffic is looked at.
    await waitFor('every pod in every ipcache', () => topo!.nodes.every((n) => labels.every(([p]) => m().readIpcache(n).has(`${p.ip}/32`))), 30_000);
    for (const p of withServer) await waitListening(p, PORT, 30_000);
  });

  after(async () => {
    await Promise.all(servers.map((s) => s.stop(1000)));
    try {
      await mesh?.stop();
    } finally {
      if (topo) await destroyTopology(topo);
    }
  });

  test('without policy every flow is allowed', async () => {
    for (const src of [frontend1(), other1(), frontend3()]) assert.equal(await reaches(src, backend2()), true, `${src.name} -> ${backend2().name}`);
    assert.equal(await reaches(backend2(), frontend1()), true, 'backend opens a connection to cluster1 frontend');
    const st = await m().agentStatus(node(2));
    assert.equal(st.policy.synced, true);
    assert.equal(st.policy.endpoints.enforced, 0);
  });

  test('the example policy in cluster2 admits exactly frontend of cluster1; the refusal is dropped, counted and reported with identities and port', async () => {
    const n2 = node(2);
    const dropsBefore = policyDrops(m().readDrops(n2));
    const events = collectAgentEvents(m().agent(n2).socket);
    try {
      const t0 = Date.now();
      await writer(2).apply(backendPolicy);
      const written = Date.now();
      const inMapMs = await waitFor('backend ingress enforced in the pinned map', () => enforceFlags(m().agent(n2).pinDir, endpointIds.get(backend2().name)!).ingress, 20_000);
      const p = await m().agent(n2).api.policy();
      assert.ok(
        p.endpoints.some((e) => e.podName === backend2().name && e.enforced.ingress && e.entries.some((x) => x.identity === identities.get(frontend1().name))),
        'GET /v1/policy shows the endpoint enforced with the cluster1 frontend identity',
      );
      await waitFor('other(c1) refused', async () => !(await reaches(other1(), backend2(), 0.5)), 20_000);
      console.log(`# policy written to cluster2's store (${written - t0} ms) -> ACTIVE|INGRESS in the node's map: ${inMapMs} ms; -> first refused probe of other(c1) done: ${Date.now() - written} ms (a refused probe lasts its 0.5 s timeout)`);

      assert.equal(await reaches(frontend1(), backend2()), true, 'frontend(cluster1) -> backend(cluster2) allowed, and its replies pass');
      assert.equal(await reaches(other1(), backend2()), false, 'other(cluster1) refused: not app=frontend');
      assert.equal(await reaches(frontend3(), backend2()), false, 'frontend(cluster3) refused: same labels, other cluster');
      assert.equal(await reaches(backend2(), frontend1()), false, 'backend may not open connections (egress enforced): replies above passed through conntrack only');
      assert.equal(await reaches(frontend1(), backend3()), true, 'cluster3 has no policy: unaffected');

      await sleep(200);
      const dropsAfter = policyDrops(m().readDrops(n2));
      assert.ok(dropsAfter > dropsBefore, `policy drops counted on ${n2.netns}: ${dropsBefore} -> ${dropsAfter}`);
      const seen: DatapathEvent[] = await events.drain();
      const policyEvents = seen.filter((e) => e.type === 'drop' && (e.reason === 146 || e.reason === 147));
      const fromOther = policyEvents.find((e) => e.srcIp === other1().ip && e.dstIp === backend2().ip);
      assert.ok(fromOther, `a drop event for other(c1) -> backend: ${JSON.stringify(policyEvents.slice(0, 5), (_k, v) => (typeof v === 'bigint' ? String(v) : v))}`);
      console.log(`# drop event: ${JSON.stringify(fromOther, (_k, v) => (typeof v === 'bigint' ? String(v) : v))}`);
      assert.equal(fromOther.reasonName, 'DROP_POLICY');
      assert.equal(fromOther.direction, 'ingress');
      assert.equal(fromOther.srcIdentity, identities.get(other1().name), 'source identity (from the VNI)');
      assert.equal(fromOther.dstIdentity, identities.get(backend2().name), 'destination identity');
      assert.equal(fromOther.srcIdentity >> 16, 1, 'the source cluster is in the identity (bits 16-23)');
      assert.equal(fromOther.dstPort, PORT, 'destination port');
      assert.equal(fromOther.protocol, 6);
      const fromC3 = policyEvents.find((e) => e.srcIp === frontend3().ip);
      assert.ok(fromC3 && fromC3.srcIdentity === identities.get(frontend3().name), 'the cluster3 frontend refusal carries its own identity');
      const egress = policyEvents.find((e) => e.srcIp === backend2().ip && e.dstIp === frontend1().ip);
      assert.ok(egress && egress.direction === 'egress' && egress.dstIdentity === identities.get(frontend1().name), 'the backend-initiated connection is an egress drop');
    } finally {
      events.stop();
    }
    const st = await m().agentStatus(n2);
    assert.equal(st.policy.policies.applied, 1);
    assert.equal(st.policy.endpoints.ingressEnforced, 1);
    assert.deepEqual(st.policy.parseErrors, []);
  });

  test('a backend pod appearing in cluster2 later is reachable from cluster1 frontend, without touching cluster1', async () => {
    const p = backendLater2();
    const c1Before = await m().agentStatus(node(1));
    const t0 = Date.now();
    const ep = await m().addPod(p, { labels: { app: 'backend' } });
    identities.set(p.name, ep.identity!);
    endpointIds.set(p.name, ep.endpointID);
    // The add returns once the pod's policy is in the maps: the pod never serves a moment unprotected.
    assert.deepEqual(enforceFlags(m().agent(node(2)).pinDir, ep.endpointID), { active: true, ingress: true, egress: true }, 'enforced in the map when the add returned');
    const view = (await m().agent(node(2)).api.policy()).endpoints.find((e) => e.podName === p.name);
    assert.ok(view?.entries.some((e) => e.identity === identities.get(frontend1().name) && e.port === PORT && e.verdict === 'allow'), 'GET /v1/policy lists its entry');
    await waitFor(`${p.name} reachable from frontend(c1)`, () => reaches(frontend1(), p, 0.5), 20_000);
    console.log(`# new backend pod reachable from cluster1 ${Date.now() - t0} ms after its add`);
    assert.equal(await reaches(other1(), p), false, 'other(c1) refused by the new pod too');
    const c1After = await m().agentStatus(node(1));
    assert.equal(c1After.policy.policies.applied, c1Before.policy.policies.applied, 'nothing changed in cluster1 policy');
  });

  test('an agent restarted (SIGKILL) while the policy is enforced: enforcement never lapses, nothing is rewritten', async () => {
    const n2 = node(2);
    const ids = [backend2(), backendLater2()].map((p) => endpointIds.get(p.name) ?? -1);
    assert.ok(ids.every((i) => i > 0));
    const before = ids.map((i) => enforceFlags(m().agent(n2).pinDir, i));
    for (const b of before) assert.deepEqual(b, { active: true, ingress: true, egress: true });
    const lapses: string[] = [];
    const timer = setInterval(() => {
      for (const i of ids) {
        const f = enforceFlags(m().agent(n2).pinDir, i);
        if (!f.active || !f.ingress || !f.egress) lapses.push(`endpoint ${i}: ${JSON.stringify(f)}`);
      }
    }, 10);
    try {
      await m().killAgent(n2);
      assert.equal(await reaches(other1(), backend2(), 0.5), false, 'refused while the agent is down');
      assert.equal(await reaches(frontend1(), backend2()), true, 'allowed while the agent is down');
      await m().restartAgent(n2);
      await waitFor('the restarted agent to be synced', async () => (await m().agentStatus(n2)).policy.synced && (await m().agentStatus(n2)).policy.flushes > 0, 20_000);
    } finally {
      clearInterval(timer);
    }
    assert.deepEqual(lapses.slice(0, 5), [], 'the flags never went off');
    const st = await m().agentStatus(n2);
    const recs = st.reconcilers.filter((r) => r.name === 'policy' || r.name === 'policy-enforce');
    assert.equal(recs.length, 2);
    for (const r of recs) {
      assert.equal(r.updates, 0, `${r.name}: nothing rewritten after the restart (${JSON.stringify(r)})`);
      assert.ok(r.fullSyncs >= 1 && r.lastError === null && r.pending === 0, `${r.name}: its full pass read the map and found it right (${JSON.stringify(r)})`);
    }
    assert.equal(st.policy.endpoints.ingressEnforced, 2);
    assert.equal(await reaches(other1(), backend2()), false, 'still refused after the restart');
    assert.equal(await reaches(frontend1(), backendLater2()), true, 'still allowed after the restart');
  });

  test('an egress policy in cluster1 naming cluster2 does not admit the same labels in cluster3', async () => {
    const n1 = node(1);
    const dropsBefore = policyDrops(m().readDrops(n1));
    const t0 = Date.now();
    await writer(1).apply(frontendPolicy);
    const written = Date.now();
    const inMapMs = await waitFor('frontend egress enforced in the pinned map', () => enforceFlags(m().agent(n1).pinDir, endpointIds.get(frontend1().name)!).egress, 20_000);
    await waitFor('frontend(c1) -> backend(c3) refused', async () => !(await reaches(frontend1(), backend3(), 0.5)), 20_000);
    console.log(`# egress policy written to cluster1's store (${written - t0} ms) -> ACTIVE|EGRESS in the node's map: ${inMapMs} ms; -> first refused probe done: ${Date.now() - written} ms (probe timeout 0.5 s)`);
    assert.equal(await reaches(frontend1(), backend2()), true, 'frontend(c1) -> backend(c2) allowed');
    assert.equal(await reaches(frontend1(), backendLater2()), true, 'frontend(c1) -> backend-2(c2) allowed');
    assert.equal(await reaches(frontend1(), backend3()), false, 'frontend(c1) -> backend(c3) refused: app=backend but cluster3');
    assert.equal(await reaches(other1(), backend3()), true, 'other(c1) is not selected by the policy');
    assert.ok(policyDrops(m().readDrops(n1)) > dropsBefore, 'egress drops counted on the cluster1 node');
    const view = (await m().agent(n1).api.policy()).endpoints.find((e) => e.podName === frontend1().name)!;
    assert.deepEqual(view.enforced, { ingress: false, egress: true });
    assert.deepEqual(
      [...new Set(view.entries.map((e) => e.identity))].sort(),
      [identities.get(backend2().name)!],
      'the resolved egress entries name only the cluster2 backend identity',
    );
  });

  test('an invalid policy object is reported and not applied; removing the policies restores default allow', async () => {
    await writer(2).apply({
      ...backendPolicy,
      metadata: { name: 'broken', namespace: 'default' },
      spec: { endpointSelector: { matchLabels: { app: 'backend' } }, ingress: [{ toPorts: [{ ports: [{ port: '99999' }] }] }] },
    });
    await waitFor('the broken policy reported', async () => (await m().agentStatus(node(2))).policy.parseErrors.some((e) => e.name === 'broken'), 10_000);
    assert.equal((await m().agentStatus(node(2))).policy.policies.applied, 1, 'only the good policy applied');
    await writer(2).delete('CiliumNetworkPolicy', { namespace: 'default', name: 'broken' });

    let t0 = Date.now();
    await writer(2).delete('CiliumNetworkPolicy', { namespace: 'default', name: backendPolicy.metadata.name });
    const ms2 = await waitFor('other(c1) -> backend(c2) allowed again', () => reaches(other1(), backend2(), 0.5), 20_000);
    console.log(`# cluster2 policy deleted -> other(c1) allowed: ${Date.now() - t0} ms (${ms2} ms polling)`);
    t0 = Date.now();
    await writer(1).delete('NetworkPolicy', { namespace: 'default', name: frontendPolicy.metadata.name });
    const ms1 = await waitFor('frontend(c1) -> backend(c3) allowed again', () => reaches(frontend1(), backend3(), 0.5), 20_000);
    console.log(`# cluster1 policy deleted -> frontend(c1) -> backend(c3) allowed: ${Date.now() - t0} ms (${ms1} ms polling)`);
    for (const src of [frontend1(), other1(), frontend3()]) assert.equal(await reaches(src, backend2()), true, `${src.name} -> backend(c2)`);
    assert.equal(await reaches(backend2(), frontend1()), true, 'backend may open connections again');
    for (const c of [1, 2]) {
      const st = await m().agentStatus(node(c));
      assert.equal(st.policy.endpoints.enforced, 0, `cluster${c}: nothing enforced`);
      assert.equal(st.policy.mapEntries, 0, `cluster${c}: no policy map entries`);
      assert.deepEqual(st.policy.parseErrors, []);
    }
  });

  test('toCIDR / egressDeny towards addresses outside the mesh: node-local CIDR identities in cm_policy_cidr, to the stack, exact identity in drops', async () => {
    const n1 = node(1);
    const src = other1();
    // Addresses outside the mesh on the loopback of the cluster1 node (no dummy links in every kernel):
    // from_container hands them to the node's stack, which answers itself.
    const addrs = ['192.0.2.1/32', '192.0.2.2/32', '198.51.100.1/32'];
    const name = 'other-to-cidr';
    try {
      for (const a of addrs) await runIn(n1.netns, ['ip', 'addr', 'add', a, 'dev', 'lo']);
      const pings = async (dst: string): Promise<boolean> => {
        try {
          await runIn(src.netns, ['ping', '-c', '1', '-W', '1', '-q', dst], { timeoutMs: 5000 });
          return true;
        } catch {
          return false;
        }
      };
      for (const dst of ['192.0.2.1', '198.51.100.1']) assert.equal(await pings(dst), true, `without policy ${src.name} -> ${dst}`);
      const policy = (deny: boolean) => ({
        apiVersion: 'cilium.io/v2',
        kind: 'CiliumNetworkPolicy',
        metadata: { name, namespace: 'default' },
        spec: {
          endpointSelector: { matchLabels: { app: 'other' } },
          egress: [{ toCIDR: ['192.0.2.0/24'] }],
          ...(deny ? { egressDeny: [{ toCIDR: ['192.0.2.1/32'] }] } : {}),
        },
      });
      await writer(1).apply(policy(false));
      await waitFor('198.51.100.1 (world) refused', async () => !(await pings('198.51.100.1')), 20_000);
      assert.equal(await pings('192.0.2.1'), true, 'inside the allowed prefix');
      const cidrId = policyCidrs(m().agent(n1).pinDir).get('192.0.2.0/24');
      assert.ok(cidrId !== undefined && cidrId > 0x1000000 && cidrId <= 0x1ffffff, `node-local identity in cm_policy_cidr: ${cidrId}`);
      assert.equal(m().readIpcache(n1).has('192.0.2.0/24'), false, 'not in the ipcache');
      const view = await m().agent(n1).api.policy();
      assert.deepEqual(view.cidrIdentities, [{ prefix: '192.0.2.0/24', identity: cidrId }]);

      const events = collectAgentEvents(m().agent(n1).socket);
      try {
        await writer(1).apply(policy(true));
        await waitFor('192.0.2.1 denied', async () => !(await pings('192.0.2.1')), 20_000);
        assert.equal(await pings('192.0.2.2'), true, 'the rest of the /24 still allowed');
        await sleep(200);
        const drops = (await events.drain()).filter((e) => e.type === 'drop' && e.srcIp === src.ip);
        const deny = drops.find((e) => e.dstIp === '192.0.2.1' && e.reasonName === 'DROP_POLICY_DENY');
        const ids = policyCidrs(m().agent(n1).pinDir);
        assert.ok(deny, `a DROP_POLICY_DENY event towards 192.0.2.1: ${JSON.stringify(drops.slice(0, 3), (_k, v) => (typeof v === 'bigint' ? String(v) : v))}`);
        assert.equal(deny.direction, 'egress');
        assert.equal(deny.dstIdentity, ids.get('192.0.2.1/32'), 'the exact /32 CIDR identity');
        assert.ok(deny.dstIdentity > 0x1000000 && deny.dstIdentity !== cidrId, 'its own node-local identity');
        // The /32's identity reached cm_policy_cidr only after the entries naming it: never a default-deny in between.
        assert.deepEqual(drops.filter((e) => e.dstIp === '192.0.2.1' && e.reasonName !== 'DROP_POLICY_DENY').map((e) => e.reasonName), []);
      } finally {
        events.stop();
      }
    } finally {
      await writer(1).delete('CiliumNetworkPolicy', { namespace: 'default', name }).catch(() => undefined);
      for (const a of addrs) await runIn(n1.netns, ['ip', 'addr', 'del', a, 'dev', 'lo']).catch(() => undefined);
    }
    await waitFor('the CIDR identities released from cm_policy_cidr', () => policyCidrs(m().agent(n1).pinDir).size === 0, 20_000);
    assert.equal((await m().agentStatus(n1)).policy.mapEntries, 0);
  });

  test('fromCIDR ingress from what the node stack routes into a pod (to_container): the prefix passes, world is refused, the host still reaches the pod', async () => {
    const n1 = node(1);
    const dst = other1();
    const addrs = ['192.0.2.1/32', '198.51.100.1/32'];
    const name = 'other-from-cidr';
    // From the node's netns with a chosen source address: the stack routes it into the pod's veth.
    const pingsFrom = async (src: string): Promise<boolean> => {
      try {
        await runIn(n1.netns, ['ping', '-c', '1', '-W', '1', '-q', '-I', src, dst.ip], { timeoutMs: 5000 });
        return true;
      } catch {
        return false;
      }
    };
    try {
      for (const a of addrs) await runIn(n1.netns, ['ip', 'addr', 'add', a, 'dev', 'lo']);
      for (const src of ['192.0.2.1', '198.51.100.1']) assert.equal(await pingsFrom(src), true, `without policy ${src} -> ${dst.name}`);
      const events = collectAgentEvents(m().agent(n1).socket);
      try {
        await writer(1).apply({
          apiVersion: 'cilium.io/v2',
          kind: 'CiliumNetworkPolicy',
          metadata: { name, namespace: 'default' },
          spec: { endpointSelector: { matchLabels: { app: 'other' } }, ingress: [{ fromCIDR: ['192.0.2.0/24'] }] },
        });
        await waitFor('198.51.100.1 (world) refused', async () => !(await pingsFrom('198.51.100.1')), 20_000);
        assert.equal(await pingsFrom('192.0.2.1'), true, 'inside the allowed prefix');
        assert.equal(await pingsFrom(n1.underlayIP), true, 'the node (reserved:host) reaches its pod');
        await sleep(200);
        const drops = (await events.drain()).filter((e) => e.type === 'drop' && e.dstIp === dst.ip);
        const world = drops.find((e) => e.srcIp === '198.51.100.1');
        assert.ok(world, `a drop event from 198.51.100.1: ${JSON.stringify(drops.slice(0, 3), (_k, v) => (typeof v === 'bigint' ? String(v) : v))}`);
        assert.deepEqual([world.reasonName, world.direction, world.srcIdentity], ['DROP_POLICY', 'ingress', 2]);
        assert.deepEqual(drops.filter((e) => e.srcIp !== '198.51.100.1').map((e) => e.srcIp), [], 'nothing else dropped');
      } finally {
        events.stop();
      }
      await writer(1).delete('CiliumNetworkPolicy', { namespace: 'default', name });
      await waitFor('198.51.100.1 allowed again', () => pingsFrom('198.51.100.1'), 20_000);
    } finally {
      await writer(1).delete('CiliumNetworkPolicy', { namespace: 'default', name }).catch(() => undefined);
      for (const a of addrs) await runIn(n1.netns, ['ip', 'addr', 'del', a, 'dev', 'lo']).catch(() => undefined);
    }
  });
});

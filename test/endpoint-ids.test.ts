// Endpoint IDs under concurrency (issue 19, part 1): many pods added at once
// on one node through the agent API, several rounds, each pod with its own
// labels; half of them selected by a deny-all ingress NetworkPolicy (which
// half changes every round, so a reused ID meets the other verdict). Every
// round: the IDs are unique (in the API answers and in the pinned
// cm_endpoints), the pinned cm_policy_enforce flags of each pod's ID match
// whether the policy selects that pod, and real pings from a client pod are
// refused (and counted as policy drops) exactly for the selected pods.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BpfMap } from '../src/datapath/libbpf/index.ts';
import * as endpointsMap from '../src/datapath/maps/endpoints.ts';
import type { EndpointInfo } from '../src/agent/types.ts';
import { startMesh, type Mesh } from '../src/lab/mesh.ts';
import { createTopology, destroyTopology, type PodInfo, type Topology } from '../src/lab/topology.ts';
import { enforceFlags, pings, policyDrops, waitFor } from './helpers/policy.ts';

const TARGETS = 12;
const ROUNDS = Number(process.env.ROUNDS ?? 3);

function pinnedEndpoints(pinDir: string): Map<string, endpointsMap.Value> {
  const map = BpfMap.openPinned(join(pinDir, endpointsMap.MAP_NAME));
  try {
    return new Map([...endpointsMap.entries(map)].map(([k, v]) => [k.ip, v]));
  } finally {
    map.close();
  }
}

describe(`endpoint IDs: ${TARGETS} pods added at once on one node, ${ROUNDS} rounds`, { timeout: 300_000 }, () => {
  let topo: Topology | undefined;
  let mesh: Mesh | undefined;
  const m = (): Mesh => mesh!;
  const targets = (): PodInfo[] => topo!.pods.slice(0, TARGETS);
  const client = (): PodInfo => topo!.pods[TARGETS]!;

  before(async () => {
    topo = await createTopology({ clusters: 1, nodesPerCluster: 1, podsPerNode: TARGETS + 1, mode: 'clustermesh', prefix: 'cmtepid' });
    const dir = await mkdtemp(join(tmpdir(), 'cmtepid-mesh-'));
    mesh = await startMesh(topo, { dir, readyTimeoutMs: 180_000, agent: { fullSyncIntervalSeconds: 5, syncTimeoutSeconds: 10 }, progress: (l) => console.log(`# ${l}`) });
    await m().addPod(client(), { labels: { app: 'client' } });
    await m().kube(1).apply({
      apiVersion: 'networking.k8s.io/v1',
      kind: 'NetworkPolicy',
      metadata: { name: 'locked-deny-all-ingress', namespace: 'default' },
      spec: { podSelector: { matchLabels: { locked: 'yes' } }, policyTypes: ['Ingress'] },
    });
  });

  after(async () => {
    try {
      await mesh?.stop();
    } finally {
      if (topo) await destroyTopology(topo);
    }
  });

  for (let round = 0; round < ROUNDS; round++) {
    test(`round ${round + 1}: unique IDs, and the policy of each pod enforced under its own ID`, async () => {
      const node = topo!.nodes[0]!;
      const pinDir = m().agent(node).pinDir;
      const locked = (i: number): boolean => (i + round) % 2 === 0;
      const cid = (p: PodInfo): string => `r${round}-${p.name}`;

      const t0 = Date.now();
      const results = await Promise.allSettled(
        targets().map((p, i) => m().addPod(p, { containerID: cid(p), labels: { app: `t${i}`, ...(locked(i) ? { locked: 'yes' } : {}) } })),
      );
      try {
        const failed = results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason));
        assert.deepEqual(failed, [], 'every add succeeded');
        const added = results.map((r) => (r as PromiseFulfilledResult<EndpointInfo>).value);
        console.log(`# round ${round + 1}: ${TARGETS} concurrent adds answered in ${Date.now() - t0} ms; IDs ${added.map((e) => e.endpointID).join(',')}`);

        const ids = added.map((e) => e.endpointID);
        assert.equal(new Set(ids).size, ids.length, `endpoint IDs answered by the API are unique: ${ids.join(',')}`);
        const listed = (await m().agent(node).api.listEndpoints()).map((e) => e.endpointID);
        assert.equal(new Set(listed).size, listed.length, `endpoint IDs listed by the agent are unique: ${listed.join(',')}`);
        const pinned = pinnedEndpoints(pinDir);
        const pinnedIds = targets().map((p) => pinned.get(p.ip)?.endpointId);
        assert.deepEqual(pinnedIds, ids, 'cm_endpoints holds each pod under the ID the API answered');
        const allPinned = [...pinned.values()].map((v) => v.endpointId);
        assert.equal(new Set(allPinned).size, allPinned.length, `no two cm_endpoints entries share an ID: ${allPinned.join(',')}`);

        // The add answers once the pod's policy is in the maps: no wait needed, but the flags are read by ID.
        for (const [i, e] of added.entries()) {
          const f = enforceFlags(pinDir, e.endpointID);
          assert.deepEqual(f, locked(i) ? { active: true, ingress: true, egress: false } : { active: false, ingress: false, egress: false }, `${targets()[i]!.name} (endpoint ${e.endpointID}, locked=${locked(i)}): cm_policy_enforce`);
        }
        const view = await m().agent(node).api.policy();
        for (const [i, e] of added.entries()) {
          const v = view.endpoints.find((x) => x.endpointID === e.endpointID);
          if (locked(i)) assert.ok(v && v.containerID === cid(targets()[i]!) && v.enforced.ingress, `GET /v1/policy: endpoint ${e.endpointID} is ${cid(targets()[i]!)}, ingress enforced`);
        }

        const dropsBefore = policyDrops(m().readDrops(node));
        const answered = await Promise.all(targets().map((p) => pings(client(), p)));
        const wrong = targets()
          .map((p, i) => (answered[i] === locked(i) ? `${p.name}: locked=${locked(i)} answered=${answered[i]}` : ''))
          .filter(Boolean);
        assert.deepEqual(wrong, [], 'exactly the locked pods refuse the client');
        await waitFor('the refusals counted as policy drops', () => policyDrops(m().readDrops(node)) - dropsBefore >= TARGETS / 2, 5000, () => [...m().readDrops(node)]);

        const st = await m().agentStatus(node);
        assert.deepEqual(st.endpoints.problems, [], 'no endpoint problems reported');
      } finally {
        // Every round starts from an empty node, whatever this one found.
        const deleted = await Promise.all(targets().map((p) => m().deletePod(p, { containerID: cid(p) })));
        assert.equal(deleted.filter((d) => d.deleted).length, results.filter((r) => r.status === 'fulfilled').length, 'every added endpoint deleted');
      }
    });
  }
});

// Fault suite, agent family (issue 17 §1): one agent SIGKILLed, and every
// agent of a cluster restarted at once (the rolling-upgrade case of Cilium
// #23823/#26462: no global outage, no drop), under steady traffic on a
// 3-cluster mesh. See test/chaos/etcd.test.ts for what is measured.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ChaosRig, recordResult, type Scenario } from '../../src/lab/chaos.ts';

const scenarios: Scenario[] = [
  {
    name: 'agent SIGKILL',
    fault: "the agent of cluster2's server node killed, restarted 2 s later",
    holdMs: 2000,
    inject: async (rig) => rig.mesh.killAgent(rig.serverPods().find((p) => p.cluster === 2)!.node),
    recover: async (rig) => rig.mesh.restartAgent(rig.serverPods().find((p) => p.cluster === 2)!.node, { waitReady: false }),
  },
  {
    name: 'all agents of a cluster',
    fault: "every agent of cluster2 killed at once, all restarted 2 s later",
    holdMs: 2000,
    inject: async (rig) => {
      await Promise.all(rig.nodesOf(2).map((n) => rig.mesh.killAgent(n)));
    },
    recover: async (rig) => {
      await Promise.all(rig.nodesOf(2).map((n) => rig.mesh.restartAgent(n, { waitReady: false })));
    },
  },
];

describe('fault suite: agents (3 clusters x 2 nodes, steady traffic)', { timeout: 1_800_000 }, () => {
  let rig: ChaosRig | undefined;
  before(async () => {
    rig = await ChaosRig.start({ prefix: 'cmtca', log: (l) => console.log(`# ${l}`) });
  });
  after(async () => {
    await rig?.stop();
  });
  for (const s of scenarios) {
    test(s.name, async () => {
      const r = await rig!.run(s);
      console.log(`# ${JSON.stringify(r)}`);
      recordResult(r);
      assert.deepEqual(r.brokenDetail, [], 'no long-lived connection broken');
      assert.deepEqual(r.wrongExamples, [], 'no map entry wrong at any sampled moment');
      assert.ok(r.greenAfterMs >= 0);
    });
  }
});

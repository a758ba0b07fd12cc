// Fault suite, network family (issue 17 §1): cluster2 cut off from every other
// cluster (its port on the lab router down) for 10 s, then healed, under
// steady traffic on a 3-cluster mesh. Long-lived connections across the cut
// stall and must resume; no cluster may forget another's endpoints meanwhile.
// See test/chaos/etcd.test.ts for what is measured.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ChaosRig, recordResult, type Scenario } from '../../src/lab/chaos.ts';

const CUT_MS = Number(process.env.CHAOS_PARTITION_MS ?? 10_000);

const scenarios: Scenario[] = [
  {
    name: 'partition',
    fault: `cluster2 cut off from the other clusters for ${CUT_MS / 1000} s (router port down), then healed`,
    holdMs: CUT_MS,
    inject: async (rig) => rig.partition(2, true),
    recover: async (rig) => rig.partition(2, false),
  },
];

describe('fault suite: network (3 clusters x 2 nodes, steady traffic)', { timeout: 1_800_000 }, () => {
  let rig: ChaosRig | undefined;
  before(async () => {
    rig = await ChaosRig.start({ prefix: 'cmtcn', log: (l) => console.log(`# ${l}`) });
  });
  after(async () => {
    await rig?.partition(2, false).catch(() => undefined);
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

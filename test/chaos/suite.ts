// One family of the fault suite: a rig started once, each scenario a test that
// fails on a broken long-lived connection or a wrong sampled map entry, its
// result printed and (with CHAOS_RESULTS) recorded for RELIABILITY.md.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ChaosRig, recordResult, type Scenario } from '../../src/lab/chaos.ts';

export function chaosFamily(title: string, prefix: string, scenarios: readonly Scenario[], o: { cleanup?: (rig: ChaosRig) => Promise<void> } = {}): void {
  describe(`fault suite: ${title} (3 clusters x 2 nodes, steady traffic)`, { timeout: 1_800_000 }, () => {
    let rig: ChaosRig | undefined;
    before(async () => {
      rig = await ChaosRig.start({ prefix, log: (l) => console.log(`# ${l}`) });
    });
    after(async () => {
      if (rig && o.cleanup) await o.cleanup(rig).catch(() => undefined);
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
}

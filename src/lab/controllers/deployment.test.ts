import { test } from 'node:test';
import assert from 'node:assert/strict';
import { slowStart } from './deployment.ts';

test('slowStart: batches of 1, 2, 4, … up to 32, each at once; a failure stops before the next batch', async () => {
  let inFlight = 0;
  const batches: number[] = [];
  let n = 0;
  const create = async (): Promise<number> => {
    if (inFlight === 0) batches.push(0);
    inFlight++;
    batches[batches.length - 1]!++;
    await new Promise((r) => setImmediate(r));
    inFlight--;
    return n++;
  };
  assert.equal((await slowStart(100, create)).length, 100);
  assert.deepEqual(batches, [1, 2, 4, 8, 16, 32, 32, 5]);
  assert.deepEqual(await slowStart(0, create), []);

  let calls = 0;
  const failing = async (): Promise<number> => {
    calls++;
    if (calls === 5) throw new Error('quota');
    return calls;
  };
  // Batches 1, 2, 4: the 5th call (in the third batch) fails; that batch ends, no fourth.
  await assert.rejects(slowStart(50, failing), /quota/);
  assert.equal(calls, 7);
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { WorkQueue } from './runtime.ts';

/** A queue whose reconciles are recorded (key and start time) and take `ms`. */
function recorded(minIntervalMs: number, ms = 5): { q: WorkQueue; runs: Array<{ key: string; at: number }> } {
  const runs: Array<{ key: string; at: number }> = [];
  const q = new WorkQueue('test', async (key) => {
    runs.push({ key, at: Date.now() });
    await sleep(ms);
  }, minIntervalMs);
  return { q, runs };
}

test('WorkQueue minIntervalMs: adds within the interval run the key once more, after the interval; other keys are not held', async () => {
  const { q, runs } = recorded(300);
  try {
    q.add('a');
    await sleep(20);
    for (let i = 0; i < 50; i++) q.add('a'); // a burst of events of one Deployment
    q.add('b');
    await sleep(100);
    assert.deepEqual(runs.map((r) => r.key), ['a', 'b'], 'b runs at once; the burst of a waits');
    await sleep(400);
    const a = runs.filter((r) => r.key === 'a');
    assert.equal(a.length, 2, 'the burst ran a once');
    assert.ok(a[1]!.at - a[0]!.at >= 290, `a ran again ${a[1]!.at - a[0]!.at} ms after its last run`);
    await sleep(400);
    assert.equal(runs.filter((r) => r.key === 'a').length, 2, 'nothing more without a new add');
  } finally {
    await q.stop();
  }
});

test('WorkQueue without minIntervalMs: a key added while it runs runs again right after', async () => {
  const { q, runs } = recorded(0, 50);
  try {
    q.add('a');
    await sleep(10);
    q.add('a');
    q.add('a');
    await sleep(150);
    assert.equal(runs.length, 2);
    assert.ok(runs[1]!.at - runs[0]!.at < 200);
  } finally {
    await q.stop();
  }
});

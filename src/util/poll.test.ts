import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PollAbort, PollTimeoutError, pollUntil } from './poll.ts';

test('pollUntil returns the first value that is not undefined or false, asking once a round', async () => {
  const rounds: number[] = [];
  const v = await pollUntil(
    ({ round }) => {
      rounds.push(round);
      return round < 2 ? (round === 0 ? undefined : false) : { at: round };
    },
    { timeoutMs: 5000, intervalMs: 1, describe: 'the third round' },
  );
  assert.deepEqual(v, { at: 2 });
  assert.deepEqual(rounds, [0, 1, 2]);
});

test('pollUntil retries errors and, on timeout, names what it waited for and the last reason', async () => {
  let n = 0;
  const err = await pollUntil(
    async ({ notYet }) => {
      n++;
      if (n % 2) throw new Error(`boom ${n}`);
      return notYet(`${n}/9 ready`);
    },
    { timeoutMs: 60, intervalMs: 5, describe: 'deployment/x available' },
  ).then(
    () => assert.fail('resolved'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof PollTimeoutError);
  assert.ok(n >= 2, `asked ${n} times`);
  const last = n % 2 ? `boom ${n}` : `${n}/9 ready`;
  assert.equal(err.message, `timed out after 60 ms waiting for deployment/x available: ${last}`);
  assert.equal(err.describe, 'deployment/x available');
  assert.equal(err.last instanceof Error ? err.last.message : err.last, last);
});

test('pollUntil keeps a value reported through notYet for the caller (not only its text)', async () => {
  const err = await pollUntil(({ notYet }) => notYet({ ready: false, left: 3 }), { timeoutMs: 20, intervalMs: 5, describe: 'a report' }).catch((e: unknown) => e);
  assert.ok(err instanceof PollTimeoutError);
  assert.deepEqual(err.last, { ready: false, left: 3 });
  assert.match(err.message, /^timed out after 20 ms waiting for a report: \{"ready":false,"left":3\}$/);
});

test("pollUntil with errors: 'throw' ends at the check's first error", async () => {
  let n = 0;
  await assert.rejects(
    pollUntil(
      () => {
        n++;
        throw new Error('unreachable');
      },
      { timeoutMs: 5000, intervalMs: 1, describe: 'x', errors: 'throw' },
    ),
    /^Error: unreachable$/,
  );
  assert.equal(n, 1);
});

test('pollUntil checks at least once, and once more after its last pause', async () => {
  const rounds: number[] = [];
  const err = await pollUntil(({ round }) => void rounds.push(round), { timeoutMs: 0, describe: 'nothing' }).catch((e: unknown) => e);
  assert.ok(err instanceof PollTimeoutError);
  assert.equal(err.message, 'timed out after 0 ms waiting for nothing');
  assert.deepEqual(rounds, [0]);
  // The last round lands on the deadline: a check that holds by then is not lost to the timeout.
  const t0 = Date.now();
  const v = await pollUntil(() => Date.now() - t0 >= 30 && 'late', { timeoutMs: 30, intervalMs: 1000, describe: 'late' });
  assert.equal(v, 'late');
});

test('pollUntil: a PollAbort ends the poll at once; pauses grow by doubling up to maxIntervalMs', async () => {
  let n = 0;
  const err = await pollUntil(
    () => {
      n++;
      if (n === 3) throw new PollAbort('the agent died');
      throw new Error('not yet');
    },
    { timeoutMs: 5000, intervalMs: 1, describe: 'x' },
  ).catch((e: unknown) => e);
  assert.ok(err instanceof PollAbort);
  assert.equal(err.message, 'the agent died');
  assert.equal(n, 3);
  const at: number[] = [];
  const t0 = Date.now();
  await pollUntil(() => (at.push(Date.now() - t0), at.length === 6), { timeoutMs: 5000, intervalMs: 10, maxIntervalMs: 40, describe: 'six rounds' });
  const pauses = at.slice(1).map((t, i) => t - at[i]!);
  // 10, 20, 40, 40, 40 ms: each at least what was asked (timers never fire early by more than a tick).
  [10, 20, 40, 40, 40].forEach((want, i) => assert.ok(pauses[i]! >= want - 2, `pause ${i}: ${pauses[i]} ms, want >= ${want}`));
  assert.ok(at[5]! >= 148, `six rounds in ${at[5]} ms`);
});

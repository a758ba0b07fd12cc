// Unit tests without etcd: the observable cache, backoff on an injected clock,
// refusal of bad names.
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { Registry } from 'prom-client';
import type { KvClient } from '../kvstore/client.ts';
import { KvError } from '../kvstore/types.ts';
import { Cache, type CacheEvent } from './cache.ts';
import { ManualClock } from '../util/clock.ts';
import { backoffDelay, DEFAULT_BACKOFF, RemoteCluster, SyncSlots } from './remote-cluster.ts';

const conn = { endpoints: ['https://127.0.0.1:1'], caFile: '/x', certFile: '/x', keyFile: '/x' };
const local = { name: 'c1', id: 1, maxConnectedClusters: 255 as const };
const flush = () => new Promise((r) => setImmediate(r));

describe('Cache', () => {
  it('announces changes only, replays to late subscribers, treats a missing delete as done', () => {
    const c = new Cache<string, { v: number }>();
    const early: CacheEvent<string, { v: number }>[] = [];
    c.subscribe((e) => early.push(e));
    assert.equal(c.set('a', { v: 1 }), true);
    assert.equal(c.set('a', { v: 1 }), false);
    c.set('a', { v: 2 });
    c.set('b', { v: 3 });
    assert.equal(c.delete('zz'), false);
    c.delete('b');
    assert.deepEqual(early.map((e) => `${e.kind} ${e.key}`), ['upsert a', 'upsert a', 'upsert b', 'delete b']);
    const late: string[] = [];
    const unsub = c.subscribe((e) => late.push(`${e.kind} ${e.key}`));
    assert.deepEqual(late, ['upsert a']);
    unsub();
    c.set('c', { v: 1 });
    assert.deepEqual(late, ['upsert a']);
  });
  it('a throwing subscriber does not stop the others', () => {
    const errs: unknown[] = [];
    const c = new Cache<string, number>({ onListenerError: (e) => errs.push(e) });
    const seen: number[] = [];
    c.subscribe(() => {
      throw new Error('boom');
    });
    c.subscribe((e) => e.kind === 'upsert' && seen.push(e.value));
    c.set('a', 1);
    assert.deepEqual(seen, [1]);
    assert.equal(errs.length, 1);
  });
});

describe('RemoteCluster without etcd', () => {
  it('backoff grows to the cap', () => {
    const b = { ...DEFAULT_BACKOFF, jitter: 0 };
    assert.deepEqual([0, 1, 2, 3, 20].map((a) => backoffDelay(b, a, () => 0)), [200, 400, 800, 1600, 30_000]);
    assert.equal(backoffDelay({ ...b, jitter: 0.5 }, 0, () => 1), 300);
  });

  it('retries an unreachable cluster with backoff on the injected clock; keeps state disconnected', async () => {
    const clock = new ManualClock();
    let attempts = 0;
    let closed = 0;
    const fake = {
      getWithRevision: async () => {
        attempts++;
        throw new KvError('unavailable', 'get', 'connection refused');
      },
      close: async () => void closed++,
    } as unknown as KvClient;
    const rc = new RemoteCluster({
      name: 'c2', connection: conn, local, clock, random: () => 0, registry: new Registry(),
      backoff: { initialMs: 100, maxMs: 1000, factor: 2, jitter: 0 }, connect: () => fake,
    });
    rc.start();
    await flush();
    assert.equal(attempts, 1);
    assert.equal(rc.status().state, 'disconnected');
    assert.match(rc.status().lastError ?? '', /^unavailable: kvstore get: connection refused/);
    // first retry after 200 ms (attempt 1 = initial * 2), then 400, 800, 1000, 1000
    for (const [ms, want] of [[199, 1], [1, 2], [399, 2], [1, 3], [800, 4], [1000, 5], [1000, 6]] as const) {
      clock.advance(ms);
      await flush();
      await flush();
      assert.equal(attempts, want, `after +${ms}`);
    }
    assert.equal(closed, attempts, 'every failed client is closed');
    await rc.stop();
    assert.equal(rc.status().state, 'stopped');
    clock.advance(10_000);
    await flush();
    assert.equal(attempts, 6, 'no retries after stop');
  });

  it('refuses an invalid name or the local name without connecting', async () => {
    for (const name of ['Bad_Name', 'c1']) {
      let connects = 0;
      const rc = new RemoteCluster({ name, connection: conn, local, registry: new Registry(), connect: () => (connects++, {} as KvClient) });
      rc.start();
      await flush();
      assert.equal(rc.status().state, 'refused');
      assert.ok(rc.status().refusedReason);
      assert.equal(connects, 0);
      await rc.stop();
    }
  });
});

describe('SyncSlots', () => {
  it('grants at most `size` at once, in order; an aborted waiter is never granted; a release twice frees one slot', async () => {
    const slots = new SyncSlots(2);
    const a: Array<() => void> = [];
    const b: Array<() => void> = [];
    const c: Array<() => void> = [];
    const d: Array<() => void> = [];
    await slots.acquire(new AbortController().signal, a);
    await slots.acquire(new AbortController().signal, b);
    const order: string[] = [];
    const cAbort = new AbortController();
    const cp = slots.acquire(cAbort.signal, c).then(() => order.push('c'), () => order.push('c aborted'));
    const dp = slots.acquire(new AbortController().signal, d).then(() => order.push('d'));
    await flush();
    assert.deepEqual(order, []);
    assert.equal(slots.queued, 2);
    cAbort.abort();
    await cp;
    assert.deepEqual(order, ['c aborted']);
    a[0]!();
    a[0]!(); // twice: still one slot
    await dp;
    assert.deepEqual(order, ['c aborted', 'd']);
    assert.equal(c.length, 0);
    // b and d hold the two slots: a third waits until one is released
    const e: Array<() => void> = [];
    let granted = false;
    const ep = slots.acquire(new AbortController().signal, e).then(() => (granted = true));
    await flush();
    assert.equal(granted, false);
    d[0]!();
    await ep;
    assert.equal(granted, true);
    assert.throws(() => new SyncSlots(0), /size must be an integer >= 1/);
  });
});

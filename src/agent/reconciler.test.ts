// The generic reconciler against a fake map: idempotence, prune, delete of a
// missing key, retry with backoff on a manual clock, drift repair, ordering.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ManualClock } from '../util/clock.ts';
import { Reconciler, type ReconcileTarget } from './reconciler.ts';

class NotFound extends Error {
  readonly code = 'ENOENT';
}

/** A map with an operation log and injectable failures. */
class FakeMap<V> implements ReconcileTarget<V> {
  readonly data = new Map<string, V>();
  readonly ops: string[] = [];
  /** key → number of next update calls that fail. */
  failUpdates = new Map<string, number>();
  failList = 0;
  /** When set, update awaits this before writing (an async target). */
  gate: Promise<void> | undefined;

  list(): Iterable<[string, V]> {
    if (this.failList > 0) {
      this.failList--;
      throw new Error('list failed');
    }
    return [...this.data];
  }
  async update(key: string, value: V): Promise<void> {
    if (this.gate) await this.gate;
    const n = this.failUpdates.get(key) ?? 0;
    if (n > 0) {
      this.failUpdates.set(key, n - 1);
      this.ops.push(`fail ${key}`);
      throw Object.assign(new Error(`E2BIG: map full (${key})`), { code: 'E2BIG', errno: 7 });
    }
    this.ops.push(`update ${key}=${JSON.stringify(value)}`);
    this.data.set(key, value);
  }
  delete(key: string): boolean {
    if (!this.data.has(key)) {
      this.ops.push(`delete ${key} (missing)`);
      throw new NotFound(`no ${key}`);
    }
    this.ops.push(`delete ${key}`);
    this.data.delete(key);
    return true;
  }
}

function setup(opts: { interval?: number; blocker?: () => string | null; owns?: (k: string) => boolean } = {}) {
  const clock = new ManualClock();
  const map = new FakeMap<number>();
  const errors: Array<[string | null, number]> = [];
  const r = new Reconciler<number>({
    name: 'test',
    target: map,
    clock,
    backoff: { initialMs: 50, maxMs: 400, factor: 2, jitter: 0 },
    fullSyncIntervalMs: opts.interval ?? 0,
    ...(opts.blocker ? { pruneBlocker: opts.blocker } : {}),
    ...(opts.owns ? { owns: opts.owns } : {}),
    onError: (k, _e, attempt) => errors.push([k, attempt]),
  });
  return { clock, map, r, errors };
}

describe('Reconciler', () => {
  it('writes nothing before start; start writes the desired state by difference', async () => {
    const { map, r } = setup();
    map.data.set('same', 1);
    map.data.set('wrong', 9);
    r.upsert('same', 1);
    r.upsert('wrong', 2);
    r.upsert('new', 3);
    await new Promise((res) => setImmediate(res));
    assert.deepEqual(map.ops, [], 'nothing before start');
    const res = await r.start();
    assert.deepEqual(res, { desired: 3, written: 2, removed: 0, failed: 0, pruneBlocked: null });
    assert.deepEqual(map.ops, ['update wrong=2', 'update new=3'], 'the entry that is right is not touched');
    assert.equal(r.status().pending, 0);
  });

  it('is idempotent: the same value again changes nothing; a second full pass writes nothing', async () => {
    const { map, r } = setup();
    await r.start();
    r.upsert('a', 1);
    await r.settle();
    r.upsert('a', 1);
    await r.settle();
    assert.deepEqual(map.ops, ['update a=1']);
    const again = await r.fullSync();
    assert.equal(again.written, 0);
    assert.equal(again.removed, 0);
    assert.deepEqual(map.ops, ['update a=1']);
    assert.equal(r.status().updates, 1);
  });

  it('prunes what is not desired (collect first, delete after), only keys it owns', async () => {
    const { map, r } = setup({ owns: (k) => !k.startsWith('foreign') });
    for (const k of ['stale1', 'stale2', 'keep', 'foreign1']) map.data.set(k, 0);
    r.upsert('keep', 0);
    const res = await r.start();
    assert.equal(res.removed, 2);
    assert.deepEqual([...map.data.keys()].sort(), ['foreign1', 'keep']);
    assert.equal(r.status().pruned, 2);
  });

  it('does not prune while blocked, but explicit deletes still go; prunes once unblocked', async () => {
    let blocked: string | null = 'remote cluster2 not synced';
    const { map, r } = setup({ blocker: () => blocked });
    map.data.set('learned-before-restart', 7);
    map.data.set('explicitly-removed', 8);
    r.remove('explicitly-removed');
    const res = await r.start();
    assert.equal(res.pruneBlocked, 'remote cluster2 not synced');
    assert.deepEqual([...map.data.keys()], ['learned-before-restart'], 'kept: its source has not spoken yet');
    assert.equal(r.status().pruneBlocked, 'remote cluster2 not synced');
    blocked = null;
    await r.fullSync();
    assert.equal(map.data.size, 0);
  });

  it('delete of a missing key is success', async () => {
    const { map, r, errors } = setup();
    await r.start();
    r.remove('never-there');
    await r.settle();
    assert.deepEqual(map.ops, ['delete never-there (missing)']);
    assert.equal(r.status().pending, 0);
    assert.equal(r.status().errors, 0);
    assert.deepEqual(errors, []);
  });

  it('retries a failed key with exponential backoff on the injected clock', async () => {
    const { clock, map, r, errors } = setup();
    await r.start();
    map.failUpdates.set('a', 4);
    r.upsert('a', 1);
    r.upsert('b', 2);
    await r.settle();
    assert.deepEqual(map.ops, ['fail a', 'update b=2'], 'one failing key does not hold back the others');
    let st = r.status();
    assert.equal(st.pending, 1);
    assert.equal(st.errors, 1);
    assert.equal(st.refused, 1, 'a key refused for a full map is counted while it is not written');
    assert.equal(st.mapFull, 1);
    assert.match(st.lastError?.message ?? '', /E2BIG/);
    assert.equal(st.lastError?.key, 'a');

    const attemptsAt: number[] = [];
    for (let t = 1; t <= 800; t++) {
      const before = map.ops.length;
      clock.advance(1);
      await r.settle();
      if (map.ops.length > before) attemptsAt.push(clock.now());
    }
    // failures at 0; retries after 50, 100, 200, 400 (capped at maxMs 400)
    assert.deepEqual(attemptsAt, [50, 150, 350, 750]);
    assert.deepEqual(map.ops.slice(2), ['fail a', 'fail a', 'fail a', 'update a=1']);
    assert.deepEqual(errors.map(([k, n]) => `${k}#${n}`), ['a#1', 'a#2', 'a#3', 'a#4']);
    st = r.status();
    assert.equal(st.pending, 0);
    assert.equal(st.errors, 0);
    assert.equal(st.retries, 4);
    assert.equal(st.refused, 0);
    assert.equal(st.mapFull, 4);
    assert.equal(clock.pending, 0, 'no timer left once everything is applied');
  });

  it('a new desired value of a failing key is tried at once', async () => {
    const { map, r } = setup();
    await r.start();
    map.failUpdates.set('a', 1);
    r.upsert('a', 1);
    await r.settle();
    r.upsert('a', 2);
    await r.settle();
    assert.deepEqual(map.ops, ['fail a', 'update a=2']);
  });

  it('the periodic full pass repairs drift: an entry deleted or changed behind its back comes back', async () => {
    const { clock, map, r } = setup({ interval: 1000 });
    await r.start();
    r.upsert('a', 1);
    r.upsert('b', 2);
    await r.settle();
    map.data.delete('a');
    map.data.set('b', 99);
    map.data.set('intruder', 5);
    clock.advance(999);
    await r.settle();
    assert.equal(map.data.has('a'), false, 'not before the interval');
    clock.advance(1);
    await r.settle();
    assert.deepEqual([...map.data].sort(), [['a', 1], ['b', 2]]);
    const st = r.status();
    assert.equal(st.driftRepaired, 2);
    assert.equal(st.pruned, 1);
    assert.equal(st.fullSyncs, 2);
    assert.equal(st.lastFullSync, new Date(1000).toISOString());
  });

  it('a failed listing is retried with backoff', async () => {
    const { clock, map, r } = setup();
    map.failList = 1;
    r.upsert('a', 1);
    await assert.rejects(r.start(), /list failed/);
    assert.match(r.status().lastError?.message ?? '', /listing the target: list failed/);
    clock.advance(50);
    await r.settle();
    assert.deepEqual([...map.data], [['a', 1]]);
    assert.equal(r.status().fullSyncs, 1);
  });

  it('whenApplied resolves once written, and rejects after its timeout with the last error', async () => {
    const { clock, map, r } = setup();
    const early = r.whenApplied('a');
    r.upsert('a', 1);
    const waiting = r.whenApplied('a');
    await r.start();
    await early;
    await waiting;
    await r.whenApplied('not-desired');
    map.failUpdates.set('b', 100);
    r.upsert('b', 1);
    const p = r.whenApplied('b', 300);
    await r.settle();
    clock.advance(300);
    await assert.rejects(p, /b not applied after 300 ms: E2BIG/);
    assert.equal(r.isApplied('b'), false);
  });

  it('an edit during an in-flight write is not lost: the latest desired value wins', async () => {
    const { map, r } = setup();
    await r.start();
    let open!: () => void;
    map.gate = new Promise((res) => (open = res));
    r.upsert('a', 1);
    await new Promise((res) => setImmediate(res));
    r.upsert('a', 2);
    r.remove('c');
    open();
    map.gate = undefined;
    await r.settle();
    assert.equal(map.data.get('a'), 2);
    assert.equal(r.status().pending, 0);
  });

  it('replaceAll makes the desired state exactly the given entries', async () => {
    const { map, r } = setup();
    await r.start();
    r.replaceAll([['a', 1], ['b', 2]]);
    await r.settle();
    r.replaceAll([['b', 3], ['c', 4]]);
    await r.settle();
    assert.deepEqual([...map.data].sort(), [['b', 3], ['c', 4]]);
    assert.deepEqual([...r.desired].sort(), [['b', 3], ['c', 4]]);
  });

  it('refresh writes desired keys again although they were applied (the target lost them)', async () => {
    const { map, r } = setup();
    await r.start();
    r.upsert('a', 1);
    r.upsert('b', 2);
    await r.settle();
    map.data.clear();
    r.refresh(['a', 'not-desired']);
    await r.settle();
    assert.deepEqual([...map.data], [['a', 1]]);
    r.refresh();
    await r.settle();
    assert.deepEqual([...map.data].sort(), [['a', 1], ['b', 2]]);
    assert.deepEqual(map.ops.filter((o) => o.startsWith('delete')), [], 'a key that is not desired is not deleted by refresh');
  });

  it('stop ends timers and rejects waiters', async () => {
    const { clock, map, r } = setup({ interval: 1000 });
    await r.start();
    map.failUpdates.set('a', 100);
    r.upsert('a', 1);
    await r.settle();
    const p = r.whenApplied('a');
    await r.stop();
    await assert.rejects(p, /stopped/);
    assert.equal(clock.pending, 0);
  });
});

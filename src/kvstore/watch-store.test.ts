// WatchStore against a real etcd: list-then-watch, re-list with stale pruning.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ManualClock } from '../util/clock.ts';
import { nodeKey, nodesPrefix, storePrefix, withTestEtcd as withEtcd } from './testing.ts';
import { KvClient } from './client.ts';
import type { KvError, WatchEvent } from './types.ts';
import { WatchStore, backoffDelay } from './watch-store.ts';

const waitFor = async (cond: () => boolean | Promise<boolean>, ms = 5000, what = 'condition'): Promise<void> => {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
};

const short = (evs: WatchEvent[]): string[] => evs.map((e) => `${e.kind} ${e.key.slice(nodesPrefix.length)}${e.kind === 'upsert' ? `=${e.value}` : ''}`);

test('backoff grows, is capped, and jitters upward only', () => {
  const o = { initialMs: 100, maxMs: 1000, factor: 2, jitter: 0.5 };
  assert.deepEqual([0, 1, 2, 3, 4, 10].map((a) => backoffDelay(a, o, () => 0)), [100, 200, 400, 800, 1000, 1000]);
  assert.equal(backoffDelay(0, o, () => 1), 150);
});

test('watch store: initial list, then only real changes; stop keeps, drain deletes', async () => {
  await withEtcd({ name: 'ws-basic' }, async (server) => {
    const writer = new KvClient(server.connection('apiserver'));
    const reader = new KvClient(server.connection('remote'));
    const events: WatchEvent[] = [];
    const store = new WatchStore(reader, nodesPrefix, { onEvent: (e) => events.push(e) });
    try {
      await writer.put(nodeKey('c1', 'a'), '1');
      await writer.put(nodeKey('c1', 'b'), '2');
      assert.equal(store.status().synced, false);
      store.start();
      await store.synced;
      assert.deepEqual(short(events), ['upsert c1/a=1', 'upsert c1/b=2']);
      await waitFor(() => store.status().connected, 5000, 'connected');
      await writer.put(nodeKey('c1', 'a'), '1'); // same value: no event
      await writer.put(nodeKey('c1', 'b'), '3');
      await writer.delete(nodeKey('c1', 'a'));
      await writer.delete(nodeKey('c1', 'zz')); // absent: no event
      await writer.put(nodeKey('c2', 'c'), '4');
      await waitFor(() => events.length >= 5, 5000, 'watch events');
      assert.deepEqual(short(events), ['upsert c1/a=1', 'upsert c1/b=2', 'upsert c1/b=3', 'delete c1/a', 'upsert c2/c=4']);
      const st = store.status();
      assert.equal(st.keys, 2);
      assert.equal(st.reconnections, 0);
      assert.equal(st.lastError, undefined);
      assert.deepEqual([...store.snapshot()], [[nodeKey('c1', 'b'), '3'], [nodeKey('c2', 'c'), '4']]);

      // A second store on the same connection is the positive marker: once it has seen
      // the write made after stop(), the stopped store would have seen it too.
      const control: WatchEvent[] = [];
      const controlStore = new WatchStore(reader, nodesPrefix, { onEvent: (e) => control.push(e) });
      try {
        controlStore.start();
        await controlStore.synced;
        await store.stop();
        await writer.put(nodeKey('c1', 'x'), 'after stop');
        await waitFor(() => short(control).includes('upsert c1/x=after stop'), 5000, 'the control store to see the write');
      } finally {
        await controlStore.stop();
      }
      assert.equal(events.length, 5, 'no events after stop');
      assert.equal(store.size, 2, 'stop keeps what was learned');
      assert.equal(store.status().connected, false);
      await store.drain();
      assert.deepEqual(short(events.slice(5)).sort(), ['delete c1/b', 'delete c2/c']);
      assert.equal(store.size, 0);
    } finally {
      await store.stop();
      await Promise.all([writer.close(), reader.close()]);
    }
  });
});

test('watch store: after etcd restarts with data changed underneath, re-list prunes stale keys and emits only differences', async () => {
  await withEtcd({ name: 'ws-relist' }, async (server) => {
    const clock = new ManualClock();
    const writer = new KvClient(server.connection('apiserver', { timeoutMs: 2000 }));
    const reader = new KvClient(server.connection('remote', { timeoutMs: 2000 }));
    const events: WatchEvent[] = [];
    const errors: KvError[] = [];
    const store = new WatchStore(reader, nodesPrefix, {
      onEvent: (e) => events.push(e),
      onError: (e) => errors.push(e),
      clock,
      random: () => 0,
      backoff: { initialMs: 1000, maxMs: 8000 },
    });
    try {
      await writer.put(nodeKey('c1', 'a'), 'A');
      await writer.put(nodeKey('c1', 'b'), 'B');
      await writer.put(nodeKey('c1', 'c'), 'C');
      store.start();
      await store.synced;
      await waitFor(() => store.status().connected, 5000, 'connected');
      assert.equal(events.length, 3);

      // etcd dies; the store waits (on the manual clock) to re-list.
      await server.kill();
      await waitFor(() => clock.pending === 1, 5000, 'store to back off');
      assert.equal(store.status().connected, false);
      assert.equal(errors.at(-1)?.kind, 'unavailable');
      assert.equal(store.size, 3, 'keeps its keys while disconnected');

      // A failed re-list backs off further (1 s, then 2 s).
      clock.advance(1000);
      await waitFor(() => store.status().reconnections === 1 && clock.pending === 1 && errors.length === 2, 5000, 'second failure');
      assert.equal(errors.at(-1)?.kind, 'unavailable');

      // It comes back empty; new content is written before the store re-lists.
      await server.wipe();
      await server.start();
      await writer.put(nodeKey('c1', 'b'), 'B'); // same value as before: no event
      await writer.put(nodeKey('c1', 'c'), 'C2'); // changed
      await writer.put(nodeKey('c1', 'd'), 'D'); // new
      clock.advance(1999);
      assert.equal(store.status().reconnections, 1, 'still backing off');
      clock.advance(1);
      await waitFor(() => store.status().connected, 5000, 'reconnected');
      assert.deepEqual(short(events.slice(3)).sort(), ['delete c1/a', 'upsert c1/c=C2', 'upsert c1/d=D']);
      assert.equal(store.status().reconnections, 2);
      assert.equal(store.size, 3);

      // And it follows live changes again.
      await writer.put(nodeKey('c1', 'e'), 'E');
      await waitFor(() => store.get(nodeKey('c1', 'e')) === 'E', 5000, 'live event after re-list');
    } finally {
      await store.stop();
      await Promise.all([writer.close(), reader.close()]);
    }
  });
});

test('watch store: permission denied is reported and retried; stopping before sync rejects synced', async () => {
  await withEtcd({ name: 'ws-perm' }, async (server) => {
    const reader = new KvClient(server.connection('remote'));
    const errors: KvError[] = [];
    const store = new WatchStore(reader, storePrefix, { onEvent: () => assert.fail('no events'), onError: (e) => errors.push(e), backoff: { initialMs: 10, maxMs: 20 } });
    try {
      store.start();
      await waitFor(() => errors.length >= 3, 5000, 'repeated failures');
      const st = store.status();
      assert.equal(st.synced, false);
      assert.equal(st.lastError?.kind, 'permission');
      assert.ok(st.reconnections >= 2);
      await store.stop();
      await assert.rejects(store.synced, (e: KvError) => e.kind === 'closed');
    } finally {
      await store.stop();
      await reader.close();
    }
  });
});

test('watch store without retained values: announces by revision, prunes, keeps no values', async () => {
  await withEtcd({ name: 'ws-novalues' }, async (server) => {
    const writer = new KvClient(server.connection('apiserver'));
    const reader = new KvClient(server.connection('remote'));
    const events: WatchEvent[] = [];
    const store = new WatchStore(reader, nodesPrefix, { onEvent: (e) => events.push(e), retainValues: false });
    try {
      await writer.put(nodeKey('c1', 'a'), '1');
      store.start();
      await store.synced;
      await waitFor(() => store.status().connected, 5000, 'connected');
      await writer.put(nodeKey('c1', 'a'), '1'); // same value, new revision: announced again
      await writer.put(nodeKey('c1', 'b'), '2');
      await writer.delete(nodeKey('c1', 'a'));
      await waitFor(() => events.length === 4, 5000, 'four events');
      assert.deepEqual(short(events), ['upsert c1/a=1', 'upsert c1/a=1', 'upsert c1/b=2', 'delete c1/a']);
      assert.equal(store.has(nodeKey('c1', 'b')), true);
      assert.equal(store.has(nodeKey('c1', 'a')), false);
      assert.equal(store.get(nodeKey('c1', 'b')), '');
    } finally {
      await store.stop();
      await writer.close();
      await reader.close();
    }
  });
});

// SyncStore against a real etcd: coalescing, canary ordering, retry, session loss.
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { test } from 'node:test';

import { canaryKey, nodeKey, nodesPrefix, syncedPrefix, withTestEtcd as withEtcd } from './testing.ts';
import { KvClient } from './client.ts';
import type { EtcdServer } from './etcd-process.ts';
import { SyncStore, rfc3339 } from './sync-store.ts';
import type { KvError, WatchEvent } from './types.ts';

const waitFor = async (cond: () => boolean | Promise<boolean>, ms = 5000, what = 'condition'): Promise<void> => {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
};

/** Records every write etcd sees under cilium/ (from the current revision on). */
async function recordWrites(server: EtcdServer): Promise<{ events: WatchEvent[]; close: () => Promise<void> }> {
  const c = new KvClient(server.connection('root'));
  const events: WatchEvent[] = [];
  const from = String(BigInt(await c.currentRevision()) + 1n);
  const h = c.watch('cilium/', from, (e) => events.push(e), (e) => assert.fail(`recorder watch failed: ${e.message}`));
  return {
    events,
    close: async () => {
      await h.cancel();
      await c.close();
    },
  };
}

test('rfc3339 writes Go time.RFC3339 (UTC, no fraction)', () => {
  assert.equal(rfc3339(Date.UTC(2025, 0, 2, 3, 4, 5, 678)), '2025-01-02T03:04:05Z');
});

test('sync store: coalesces per key and never rewrites an unchanged value', async () => {
  await withEtcd({ name: 'ss-coalesce' }, async (server) => {
    const client = new KvClient(server.connection('apiserver'));
    const rec = await recordWrites(server);
    const store = new SyncStore(client, { canaryKey: canaryKey('c1'), prefix: nodesPrefix, leased: false });
    try {
      for (let i = 0; i < 50; i++) store.upsert(nodeKey('c1', 'n1'), `v${i}`);
      store.upsert(nodeKey('c1', 'n2'), 'x');
      store.delete(nodeKey('c1', 'n3'));
      store.upsert(nodeKey('c1', 'n3'), 'y'); // delete then upsert: only the upsert
      await store.flush();
      assert.equal((await client.get(nodeKey('c1', 'n1')))?.value, 'v49');
      assert.equal(store.status().puts, 3);
      assert.equal(store.status().deletes, 0);

      store.upsert(nodeKey('c1', 'n1'), 'v49'); // unchanged
      store.upsert(nodeKey('c1', 'n2'), 'changed');
      store.upsert(nodeKey('c1', 'n2'), 'x'); // changed back before it was written
      store.delete(nodeKey('c1', 'n3'));
      await store.flush();
      await new Promise((r) => setTimeout(r, 100)); // let the recorder catch up
      // Writes of different keys run concurrently: only the order per key is defined.
      const seen = rec.events.map((e) => `${e.kind} ${e.key.slice(nodesPrefix.length)}`);
      assert.deepEqual(seen.slice(0, 3).sort(), ['upsert c1/n1', 'upsert c1/n2', 'upsert c1/n3']);
      assert.deepEqual(seen.slice(3), ['delete c1/n3']);
      assert.equal(await client.get(nodeKey('c1', 'n3')), undefined);
      assert.equal(store.status().queued, 0);
      assert.throws(() => store.upsert('cilium/state/ip/v1/default/10.0.0.1', 'x'), /not under/);
    } finally {
      await store.stop();
      await rec.close();
      await client.close();
    }
  });
});

test('sync store: the canary is written once the initial set is, and not before', async () => {
  await withEtcd({ name: 'ss-canary' }, async (server) => {
    const client = new KvClient(server.connection('apiserver'));
    const rec = await recordWrites(server);
    // 40 writes at 200/s with a burst of 5 take ~175 ms: the canary must wait for all.
    const store = new SyncStore(client, { canaryKey: canaryKey('c1'), prefix: nodesPrefix, rateLimit: { perSecond: 200, burst: 5 }, concurrency: 4 });
    const canary = canaryKey('c1');
    try {
      for (let i = 0; i < 20; i++) store.upsert(nodeKey('c1', `early-${i}`), 'v');
      await store.flush();
      assert.equal(await client.get(canary), undefined, 'no canary before markInitialSyncDone');
      for (let i = 0; i < 40; i++) store.upsert(nodeKey('c1', `n${i}`), 'v');
      const t0 = Date.now();
      store.markInitialSyncDone();
      assert.equal(store.synced, false);
      store.upsert(nodeKey('c1', 'late'), 'after the mark'); // need not precede the canary
      await store.flush();
      const took = Date.now() - t0;
      assert.equal(store.synced, true);
      const value = (await client.get(canary))?.value ?? '';
      assert.match(value, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
      assert.ok(Math.abs(Date.parse(value) - Date.now()) < 5000);
      assert.ok(took >= 150, `rate limit applied (${took} ms)`);
      await new Promise((r) => setTimeout(r, 100));
      const order = rec.events.map((e) => e.key);
      const at = order.indexOf(canary);
      assert.ok(at > 0, 'canary written');
      for (let i = 0; i < 40; i++) assert.ok(order.indexOf(nodeKey('c1', `n${i}`)) < at, `n${i} before the canary`);
      assert.equal(order.filter((k) => k === canary).length, 1);
      assert.ok(order.every((k) => k.startsWith(nodesPrefix) || k.startsWith(syncedPrefix)));
      // Leased by default.
      assert.notEqual((await client.get(canary))?.lease, '0');
    } finally {
      await store.stop();
      await rec.close();
      await client.close();
    }
  });
});

test('sync store: failed writes are retried with backoff until etcd is back', async () => {
  await withEtcd({ name: 'ss-retry' }, async (server) => {
    const client = new KvClient(server.connection('apiserver', { timeoutMs: 1000 }));
    const errors: KvError[] = [];
    const store = new SyncStore(client, {
      canaryKey: canaryKey('c1'), prefix: nodesPrefix, leased: false,
      backoff: { initialMs: 20, maxMs: 100 },
      onError: (e) => errors.push(e),
    });
    try {
      await server.kill();
      store.upsert(nodeKey('c1', 'n1'), 'v1');
      store.markInitialSyncDone();
      await waitFor(() => errors.length >= 3, 5000, 'repeated failures');
      assert.ok(errors.every((e) => e.kind === 'unavailable'), errors.map((e) => e.kind).join());
      assert.equal(store.synced, false);
      assert.equal(store.status().lastError?.kind, 'unavailable');
      await server.start();
      await store.flush();
      assert.equal(store.synced, true);
      assert.equal((await client.get(nodeKey('c1', 'n1')))?.value, 'v1');
      assert.ok(store.status().failures >= 3);
    } finally {
      await store.stop();
      await client.close();
    }
  });
});

test('sync store: a lost session (etcd wiped) gets every leased key and the canary rewritten', async () => {
  await withEtcd({ name: 'ss-session' }, async (server) => {
    const client = new KvClient(server.connection('apiserver', { timeoutMs: 2000 }), { sessionTtlSeconds: 1 });
    const observer = new KvClient(server.connection('root'));
    const store = new SyncStore(client, { canaryKey: canaryKey('c1'), prefix: nodesPrefix, backoff: { initialMs: 20, maxMs: 200 } });
    try {
      store.upsert(nodeKey('c1', 'a'), 'A');
      store.upsert(nodeKey('c1', 'b'), 'B');
      store.markInitialSyncDone();
      await store.flush();
      const before = store.status().puts;
      assert.equal(before, 3);
      await server.wipe();
      await server.start();
      await waitFor(async () => (await observer.list('cilium/').catch(() => ({ pairs: [] }))).pairs.length === 3, 8000, 'keys rewritten');
      const pairs = (await observer.list('cilium/')).pairs;
      assert.deepEqual(pairs.map((p) => p.key).sort(), [nodeKey('c1', 'a'), nodeKey('c1', 'b'), canaryKey('c1')].sort());
      assert.ok(pairs.every((p) => p.lease !== '0'));
      assert.equal(store.status().puts, before + 3);
    } finally {
      await store.stop();
      await Promise.all([client.close(), observer.close()]);
    }
  });
});

test('sync store: batch writes several keys per transaction (one revision each), the canary after them, a failed batch retried', async () => {
  await withEtcd({ name: 'ss-batch' }, async (server) => {
    const client = new KvClient(server.connection('apiserver', { timeoutMs: 1000 }));
    const rec = await recordWrites(server);
    let recording = true;
    const errors: KvError[] = [];
    const store = new SyncStore(client, {
      canaryKey: canaryKey('c1'), prefix: nodesPrefix, leased: false, batch: 16, concurrency: 2,
      backoff: { initialMs: 20, maxMs: 100 },
      onError: (e) => errors.push(e),
    });
    try {
      for (let i = 0; i < 100; i++) store.upsert(nodeKey('c1', `n${i}`), `v${i}`);
      store.delete(nodeKey('c1', 'gone'));
      store.markInitialSyncDone();
      await store.flush();
      assert.equal(store.synced, true);
      assert.equal(store.status().puts, 101); // 100 keys and the canary
      assert.equal(store.status().deletes, 1);
      const pairs = (await client.list(nodesPrefix)).pairs;
      assert.equal(pairs.length, 100);
      assert.ok(pairs.every((p) => p.value === `v${p.key.slice(nodeKey('c1', 'n').length)}`));
      await waitFor(() => rec.events.some((e) => e.key === canaryKey('c1')), 2000, 'the recorder to see the canary');
      const revs = new Set(rec.events.filter((e) => e.key.startsWith(nodesPrefix)).map((e) => e.modRevision));
      // 101 changes in transactions of at most 16: 7 revisions at least, far fewer than 101.
      assert.ok(revs.size >= 7 && revs.size <= 20, `revisions used: ${revs.size}`);
      const canaryRev = rec.events.find((e) => e.key === canaryKey('c1'))!.modRevision;
      assert.ok(rec.events.filter((e) => e.key.startsWith(nodesPrefix)).every((e) => BigInt(e.modRevision) < BigInt(canaryRev)), 'every entry before the canary');

      // A batch that fails (etcd down) is retried until etcd is back; nothing is lost.
      await rec.close();
      recording = false;
      await server.kill();
      for (let i = 0; i < 40; i++) store.upsert(nodeKey('c1', `n${i}`), `w${i}`);
      await waitFor(() => errors.length >= 2, 5000, 'failed batches');
      await server.start();
      await store.flush();
      const after = (await client.list(nodesPrefix)).pairs;
      for (let i = 0; i < 40; i++) assert.equal(after.find((p) => p.key === nodeKey('c1', `n${i}`))?.value, `w${i}`);
    } finally {
      await store.stop();
      if (recording) await rec.close();
      await client.close();
    }
  });
});

/**
 * A client whose session can be lost on demand and whose writes can be held
 * in flight: a fake inside a unit test of the store's bookkeeping (the real
 * etcd cannot be made to lose a lease between a write and its answer).
 */
function heldClient() {
  let session = new EventEmitter();
  const etcd = new Map<string, string>();
  const writes: string[] = [];
  let hold: Promise<void> | undefined;
  const client = {
    lease: async () => session,
    put: async (key: string, value: string) => {
      etcd.set(key, value);
      writes.push(`put ${key}=${value}`);
      await hold;
    },
    delete: async (key: string) => {
      await hold;
      etcd.delete(key);
      writes.push(`delete ${key}`);
    },
  };
  return {
    client: client as unknown as KvClient,
    etcd,
    writes,
    /** Writes started from now on are answered only after release(). */
    holdWrites(): () => void {
      let release!: () => void;
      hold = new Promise<void>((r) => (release = r));
      return () => {
        hold = undefined;
        release();
      };
    },
    /** etcd loses the session's lease: its keys are gone, the session says so. */
    loseSession(): void {
      etcd.clear();
      const old = session;
      session = new EventEmitter();
      old.emit('lost', new Error('lease not found'));
    },
  };
}

test('sync store: a delete in flight when the session is lost is not undone by the rewrite', async () => {
  const c = heldClient();
  const store = new SyncStore(c.client, { canaryKey: canaryKey('c1'), prefix: nodesPrefix, backoff: { initialMs: 5, maxMs: 20 } });
  try {
    store.upsert(nodeKey('c1', 'a'), 'A');
    store.upsert(nodeKey('c1', 'gone'), 'G');
    await store.flush();
    const release = c.holdWrites();
    store.delete(nodeKey('c1', 'gone'));
    await waitFor(() => store.status().inFlight === 1, 1000, 'the delete in flight');
    c.loseSession();
    release();
    await store.flush();
    assert.deepEqual([...c.etcd.keys()], [nodeKey('c1', 'a')], `etcd holds what is desired: ${JSON.stringify(c.writes)}`);
  } finally {
    await store.stop();
  }
});

test('sync store: a put that landed just before the session was lost is written again', async () => {
  const c = heldClient();
  const store = new SyncStore(c.client, { canaryKey: canaryKey('c1'), prefix: nodesPrefix, backoff: { initialMs: 5, maxMs: 20 } });
  try {
    store.upsert(nodeKey('c1', 'a'), 'A');
    await store.flush();
    const release = c.holdWrites();
    store.upsert(nodeKey('c1', 'b'), 'B');
    await waitFor(() => store.status().inFlight === 1, 1000, 'the put in flight');
    c.loseSession(); // b was stored, then lost with the lease before its answer came
    release();
    await store.flush();
    assert.deepEqual([...c.etcd.entries()].sort(), [[nodeKey('c1', 'a'), 'A'], [nodeKey('c1', 'b'), 'B']], `every desired key is back: ${JSON.stringify(c.writes)}`);
  } finally {
    await store.stop();
  }
});

test('sync store: a canary that landed just before the session was lost is written again', async () => {
  const c = heldClient();
  const canary = canaryKey('c1');
  const store = new SyncStore(c.client, { canaryKey: canary, prefix: nodesPrefix, backoff: { initialMs: 5, maxMs: 20 } });
  try {
    store.upsert(nodeKey('c1', 'a'), 'A');
    await store.flush();
    const release = c.holdWrites();
    store.markInitialSyncDone();
    await waitFor(() => store.status().inFlight === 1, 1000, 'the canary in flight');
    c.loseSession(); // the canary was stored, then lost with the lease before its answer came
    release();
    await store.flush();
    assert.equal(store.synced, true);
    assert.deepEqual([...c.etcd.keys()].sort(), [canary, nodeKey('c1', 'a')].sort(), `the key and the canary are back: ${JSON.stringify(c.writes)}`);
  } finally {
    await store.stop();
  }
});

// Integration: identity allocation against a real etcd (TLS + auth, user `agent`).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../util/clock.ts';
import { identityKey } from '../clustermesh/keys.ts';
import { KvClient } from '../kvstore/client.ts';
import type { EtcdServer } from '../kvstore/etcd-process.ts';
import { startMeshEtcd as startEtcd } from '../clustermesh/etcd.ts';
import { IdentityAllocator, type IdentityAllocatorOptions } from './allocator.ts';
import { identityRefKey, identityRefsPrefix, identityValueKey, identityValuePrefix } from './keys.ts';
import { identityLabels, labelString, type Label } from './labels.ts';

const labelsFor = (cluster: string, app: string): Label[] =>
  identityLabels({ cluster, namespace: 'default', serviceAccount: 'default', podLabels: { app } });

describe('identity allocator (real etcd)', () => {
  let dir: string;
  let etcd: EtcdServer;
  const clients: KvClient[] = [];
  const client = (): KvClient => {
    const c = new KvClient(etcd.connection('agent'), { sessionTtlSeconds: 5 });
    clients.push(c);
    return c;
  };
  const admin = (): KvClient => {
    const c = new KvClient(etcd.connection('apiserver'));
    clients.push(c);
    return c;
  };
  const alloc = (o: Partial<IdentityAllocatorOptions> & { user: string }): IdentityAllocator =>
    new IdentityAllocator({ kv: client(), cluster: 'c1', clusterId: 1, ...o });
  const wipe = async (): Promise<void> => {
    await admin().deletePrefix('cilium/state/identities/');
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cm-identity-'));
    etcd = await startEtcd({ dir, name: 'identity-test' });
  });
  after(async () => {
    try {
      await Promise.all(clients.map((c) => c.close({ revokeSession: true })));
    } finally {
      await etcd.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('same labels from two allocators in parallel get one number; keys hold the wire format', async () => {
    await wipe();
    for (let round = 0; round < 10; round++) {
      const a = alloc({ user: `node-a${round}` });
      const b = alloc({ user: `node-b${round}` });
      const labels = labelsFor('c1', `same-${round}`);
      const [ra, rb] = await Promise.all([a.allocate(labels), b.allocate(labels)]);
      assert.equal(ra.id, rb.id, `round ${round}`);
      assert.ok(ra.isNew !== rb.isNew, 'exactly one created it');
      assert.ok(ra.id >= 65536 && ra.id <= 131071, `id ${ra.id} in cluster 1's range`);
      const kv = admin();
      assert.equal((await kv.get(identityKey(ra.id)))?.value, labelString(labels));
      assert.equal((await kv.get(identityValueKey(labelString(labels))))?.value, String(ra.id));
      assert.ok(await kv.get(identityRefKey(ra.id, `node-a${round}`)));
      assert.ok(await kv.get(identityRefKey(ra.id, `node-b${round}`)));
    }
    const masters = await admin().list('cilium/state/identities/v1/id/');
    assert.equal(masters.pairs.length, 10, 'no orphaned numbers left by the losers');
  });

  it('different labels in parallel never share a number, even when every candidate collides', async () => {
    await wipe();
    // random() = 0: both allocators always try the same first free number.
    const a = alloc({ user: 'node-a', random: () => 0 });
    const b = alloc({ user: 'node-b', random: () => 0 });
    const sets = Array.from({ length: 20 }, (_, i) => labelsFor('c1', `app-${i}`));
    const results = await Promise.all(sets.flatMap((s, i) => [a.allocate(s), b.allocate(sets[(i + 7) % sets.length]!)]));
    const byLabels = new Map<string, number>();
    for (const r of results) {
      const prev = byLabels.get(r.labels);
      if (prev !== undefined) assert.equal(prev, r.id, `same labels, same number: ${r.labels}`);
      byLabels.set(r.labels, r.id);
    }
    assert.equal(byLabels.size, 20);
    assert.equal(new Set(byLabels.values()).size, 20, 'distinct labels, distinct numbers');
    const masters = await admin().list('cilium/state/identities/v1/id/');
    assert.equal(masters.pairs.length, 20);
    for (const p of masters.pairs) assert.equal(byLabels.get(p.value), Number(p.key.split('/').pop()));
  });

  it('allocates in the range of both layouts; cluster 0 from 256', async () => {
    await wipe();
    const r511 = await alloc({ user: 'n', cluster: 'c3', clusterId: 3, maxConnectedClusters: 511 }).allocate(labelsFor('c3', 'x'));
    assert.ok(r511.id >= 3 << 15 && r511.id <= (4 << 15) - 1, `${r511.id}`);
    const r255 = await alloc({ user: 'n', cluster: 'c3', clusterId: 3, maxConnectedClusters: 255 }).allocate(labelsFor('c3', 'y'));
    assert.ok(r255.id >= 3 << 16 && r255.id <= (4 << 16) - 1, `${r255.id}`);
    const zero = alloc({ user: 'n', cluster: 'c0', clusterId: 0, random: () => 0 });
    assert.equal((await zero.allocate(labelsFor('c0', 'z'))).id, 256);
    await assert.rejects(zero.allocate(labelsFor('c9', 'z')), /policy\.cluster=c0/);
  });

  it('references per user; unused identities go after the grace period only', async () => {
    await wipe();
    const clock = new ManualClock();
    const a = alloc({ user: 'node-a', clock, gracePeriodMs: 60_000 });
    const b = alloc({ user: 'node-b', clock, gracePeriodMs: 60_000 });
    const gcer = alloc({ user: 'operator', clock, gracePeriodMs: 60_000 });
    const labels = labelsFor('c1', 'web');
    const { id } = await a.allocate(labels);
    assert.equal((await a.allocate(labels)).id, id, 'second local use');
    assert.equal((await b.allocate(labels)).id, id);

    assert.equal(await a.release(id), false, 'a still holds one');
    assert.equal(await a.release(id), true);
    assert.equal(await admin().get(identityRefKey(id, 'node-a')), undefined);
    assert.deepEqual(await gcer.gc(), { deleted: [], pending: [] }, 'b still references it');

    assert.equal(await b.release(id), true);
    assert.deepEqual(await gcer.gc(), { deleted: [], pending: [id] });
    clock.advance(59_999);
    assert.deepEqual(await gcer.gc(), { deleted: [], pending: [id] });
    // Used again within the grace period: same number, and the clock restarts.
    assert.equal((await b.allocate(labels)).id, id);
    clock.advance(10_000);
    assert.deepEqual(await gcer.gc(), { deleted: [], pending: [] });
    await b.release(id);
    await gcer.gc();
    clock.advance(60_000);
    assert.deepEqual(await gcer.gc(), { deleted: [id], pending: [] });
    const kv = admin();
    assert.equal(await kv.get(identityKey(id)), undefined);
    assert.equal(await kv.get(identityValueKey(labelString(labels))), undefined);
    assert.equal((await kv.list(identityRefsPrefix)).pairs.length, 0);
    assert.equal((await a.allocate(labels)).isNew, true, 'allocated afresh after collection');
  });

  it('gc running with grace 0 alongside allocate/release never leaves a holder without its keys', async () => {
    await wipe();
    const users = ['n1', 'n2', 'n3'].map((user) => alloc({ user, gracePeriodMs: 0 }));
    const collector = alloc({ user: 'gc', gracePeriodMs: 0 });
    const sets = Array.from({ length: 4 }, (_, i) => labelsFor('c1', `churn-${i}`));
    let stop = false;
    const gcLoop = (async () => {
      while (!stop) await collector.gc();
    })();
    await Promise.all(
      users.map(async (u, ui) => {
        for (let i = 0; i < 15; i++) {
          const s = sets[(i + ui) % sets.length]!;
          const r = await u.allocate(s);
          if (i % 2 === 0) await u.release(r.id);
        }
      }),
    );
    stop = true;
    await gcLoop;
    const kv = admin();
    for (const u of users) {
      for (const [id, labels] of u.held()) {
        assert.equal((await kv.get(identityKey(id)))?.value, labels, `${u.user} holds ${id}`);
        assert.ok(await kv.get(identityRefKey(id, u.user)), `${u.user}'s ref on ${id}`);
      }
    }
    // Same labels, same number among current holders.
    const seen = new Map<string, number>();
    for (const u of users) for (const [id, l] of u.held()) {
      if (seen.has(l)) assert.equal(seen.get(l), id);
      seen.set(l, id);
    }
    // Label keys point at live identities.
    for (const p of (await kv.list(identityValuePrefix)).pairs) assert.ok(await kv.get(identityKey(Number(p.value))), p.key);
  });

  it('resync rewrites lost refs and keys', async () => {
    await wipe();
    const a = alloc({ user: 'node-a' });
    const labels = labelsFor('c1', 'resync');
    const { id } = await a.allocate(labels);
    await wipe();
    await a.resync();
    const kv = admin();
    assert.equal((await kv.get(identityKey(id)))?.value, labelString(labels));
    assert.equal((await kv.get(identityValueKey(labelString(labels))))?.value, String(id));
    assert.ok(await kv.get(identityRefKey(id, 'node-a')));
  });
});

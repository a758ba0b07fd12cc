// KvClient against a real etcd (mutual TLS, auth on). Each test owns its etcd.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';

import { heartbeatKey, identityKey, issueExpiredClientCert, nodeKey, rejectsKind, storePrefix, TEST_ROLES, withClients, withTestEtcd as withEtcd } from './testing.ts';
import { KvClient } from './client.ts';
import { configureEtcdAuth } from './etcd-process.ts';
import { createCA, issueCert } from './pki.ts';
import { KvError, type WatchEvent } from './types.ts';

const waitFor = async (cond: () => boolean | Promise<boolean>, ms = 5000, what = 'condition'): Promise<void> => {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

test('etcd starts fast, restarts on the same port and data, wipe empties it', async () => {
  await withEtcd({ name: 'start' }, async (server) => {
    assert.ok(server.lastStartMs < 5000, `start took ${server.lastStartMs} ms`);
    const port = server.clientPort;
    await withClients(server, ['root'], async (root) => {
      await root.put('cilium/x', '1');
      await server.stop();
      assert.equal(server.running, false);
      await server.start();
      assert.equal(server.clientPort, port);
      assert.equal((await root.get('cilium/x'))?.value, '1');
      await server.wipe();
      await server.start();
      assert.equal(await root.get('cilium/x'), undefined);
    });
    // Roles are re-created after a wipe: remote still cannot write.
    await withClients(server, ['remote'], async (remote) => {
      await rejectsKind(remote.put(heartbeatKey, 'x'), 'permission');
    });
  });
});

test('CRUD: put, get, delete, deletePrefix', async () => {
  await withEtcd({ name: 'crud' }, async (server) => {
    await withClients(server, ['apiserver'], async (c) => {
      assert.equal(await c.get(nodeKey('c1', 'n1')), undefined);
      const rev = await c.put(nodeKey('c1', 'n1'), '{"a":1}');
      const got = await c.get(nodeKey('c1', 'n1'));
      assert.deepEqual(got, { key: nodeKey('c1', 'n1'), value: '{"a":1}', modRevision: rev, lease: '0' });
      await c.put(nodeKey('c1', 'n2'), 'two');
      await c.put(nodeKey('c2', 'n1'), 'other cluster');
      assert.equal(await c.delete(nodeKey('c1', 'n1')), true);
      assert.equal(await c.delete(nodeKey('c1', 'n1')), false);
      assert.equal(await c.deletePrefix('cilium/state/nodes/v1/c1/'), 1);
      const left = await c.list('cilium/state/nodes/v1/');
      assert.deepEqual(left.pairs.map((p) => p.key), [nodeKey('c2', 'n1')]);
      // Unicode values and keys survive the round trip.
      await c.put(`${storePrefix}ns/ü`, 'wert ✓');
      assert.equal((await c.get(`${storePrefix}ns/ü`))?.value, 'wert ✓');
      await rejectsKind(c.deletePrefix(''), 'other');
    });
  });
});

test('paged list: 2,500 keys in pages of 1000 are one snapshot at the first page revision', async () => {
  await withEtcd({ name: 'paged' }, async (server) => {
    await withClients(server, ['apiserver'], async (c) => {
      const prefix = `${storePrefix}pods/`;
      const keys = Array.from({ length: 2500 }, (_, i) => `${prefix}p${String(i).padStart(5, '0')}`);
      for (let i = 0; i < keys.length; i += 250) {
        await Promise.all(keys.slice(i, i + 250).map((k) => c.put(k, `v-${k}`)));
      }
      await c.put(`${storePrefix}pods0`, 'just after the prefix range'); // prefix end must exclude it
      const pages: number[] = [];
      let written = '';
      const res = await c.list(prefix, {
        pageSize: 1000,
        onPage: async (page, n) => {
          pages.push(n);
          if (page === 1) {
            // Written between pages: a consistent snapshot must not see these.
            written = await c.put(`${prefix}zzz-late`, 'late');
            await c.delete(keys[2499]!);
          }
        },
      });
      assert.deepEqual(pages, [1000, 2000, 2500]);
      assert.equal(res.pairs.length, 2500);
      assert.deepEqual(res.pairs.map((p) => p.key), keys);
      assert.ok(BigInt(res.revision) < BigInt(written), `list revision ${res.revision} before the late write ${written}`);
      assert.equal(res.pairs[0]!.value, `v-${keys[0]}`);
      const after = await c.list(prefix, { pageSize: 7 });
      assert.equal(after.pairs.length, 2500); // one deleted, one added
      assert.equal(after.pairs.at(-1)!.key, `${prefix}zzz-late`);
    });
  });
});

test('createOnly, create, compareAndSwap, compareAndDelete', async () => {
  await withEtcd({ name: 'txn' }, async (server) => {
    await withClients(server, ['agent'], async (c) => {
      const k = identityKey(65536 + 5);
      assert.equal(await c.createOnly(k, 'labels-a'), true);
      assert.equal(await c.createOnly(k, 'labels-b'), false);
      assert.equal((await c.get(k))?.value, 'labels-a');
      const err = await rejectsKind(c.create(k, 'labels-c'), 'conflict');
      assert.match(err.message, /already exists/);
      const cur = (await c.get(k))!;
      assert.equal(await c.compareAndSwap(k, '1', 'x'), false);
      assert.equal(await c.compareAndSwap(k, cur.modRevision, 'labels-d'), true);
      assert.equal(await c.compareAndDelete(k, cur.modRevision), false);
      assert.equal(await c.compareAndDelete(k, (await c.get(k))!.modRevision), true);
      assert.equal(await c.get(k), undefined);
      assert.equal(await c.compareAndSwap(k, '0', 'created by CAS on absent'), true);
    });
  });
});

test('write fence: writes only while the fence key names this writer; a fence key that is gone is claimed again', async () => {
  await withEtcd({ name: 'fence' }, async (server) => {
    await withClients(server, ['apiserver', 'apiserver'], async (older, newer) => {
      const fence = 'cilium/.apiserver-writer/c1';
      await older.put(fence, 'older');
      older.setWriteFence(fence, 'older');
      await older.put('cilium/x', '1');
      // The fence key gone (an etcd restored empty): the next write claims it again and goes through.
      await older.delete(fence);
      await older.put('cilium/x', '2');
      assert.equal((await older.get(fence))?.value, 'older');
      assert.equal((await older.get('cilium/x'))?.value, '2');
      // A newer writer took over: every write of the older one changes nothing.
      await newer.put(fence, 'newer');
      newer.setWriteFence(fence, 'newer');
      const err = await rejectsKind(older.put('cilium/x', '3'), 'superseded');
      assert.match(err.message, /names another writer \(newer\), not older/);
      await rejectsKind(older.delete('cilium/x'), 'superseded');
      assert.equal(await older.createOnly('cilium/y', '1').catch((e: KvError) => e.kind), 'superseded');
      await newer.put('cilium/x', '4');
      assert.equal((await newer.get('cilium/x'))?.value, '4');
      assert.equal(await newer.get('cilium/y'), undefined);
    });
  });
});

test('session lease: leased keys disappear on revoke and on expiry; loss is reported', async () => {
  await withEtcd({ name: 'lease' }, async (server) => {
    const observer = new KvClient(server.connection('root'));
    try {
      // Revoke: keys go at once.
      const a = new KvClient(server.connection('apiserver'), { sessionTtlSeconds: 2 });
      await a.put(heartbeatKey, 'now', { lease: true });
      const pair = await observer.get(heartbeatKey);
      assert.notEqual(pair?.lease, '0');
      assert.equal(pair?.lease, (await a.lease()).id);
      await a.close({ revokeSession: true });
      assert.equal(await observer.get(heartbeatKey), undefined);

      // Expiry: a client that stops keeping the lease alive loses its keys after the TTL.
      const b = new KvClient(server.connection('apiserver'), { sessionTtlSeconds: 1 });
      await b.put(`${storePrefix}leased`, 'x', { lease: true });
      await b.put(`${storePrefix}plain`, 'y');
      await b.close(); // releases without revoking
      await waitFor(async () => (await observer.get(`${storePrefix}leased`)) === undefined, 6000, 'leased key to expire');
      assert.equal((await observer.get(`${storePrefix}plain`))?.value, 'y');

      // Loss: etcd comes back without the lease; the session reports 'lost' and
      // the next leased put gets a new session.
      const c = new KvClient(server.connection('apiserver'), { sessionTtlSeconds: 1 });
      try {
        const s1 = await c.lease();
        const lost = new Promise<KvError>((resolve) => s1.once('lost', resolve));
        await server.wipe();
        await server.start();
        const err = await lost;
        assert.ok(err instanceof KvError);
        assert.equal(s1.lost, true);
        await c.put(`${storePrefix}again`, 'z', { lease: true });
        const s2 = await c.lease();
        assert.notEqual(s2.id, s1.id);
        assert.equal((await observer.get(`${storePrefix}again`))?.lease, s2.id);
      } finally {
        await c.close();
      }
    } finally {
      await observer.close();
    }
  });
});

test('watch from a revision replays history, then follows live changes', async () => {
  await withEtcd({ name: 'watch' }, async (server) => {
    await withClients(server, ['apiserver'], async (c) => {
      const p = `${storePrefix}svc/`;
      await c.put(`${p}a`, '1');
      const revB = await c.put(`${p}b`, '2');
      await c.put(`${p}c`, '3');
      await c.put('cilium/outside', 'not watched');
      const events: WatchEvent[] = [];
      const errors: KvError[] = [];
      const h = c.watch(p, revB, (e) => events.push(e), (e) => errors.push(e));
      await waitFor(() => events.length >= 2, 5000, 'replayed events');
      await c.delete(`${p}a`);
      const revD = await c.put(`${p}d`, '4');
      await waitFor(() => events.length >= 4, 5000, 'live events');
      await h.cancel();
      assert.equal(h.done, true);
      await c.put(`${p}e`, 'after cancel');
      await new Promise((r) => setTimeout(r, 100));
      assert.deepEqual(
        events.map((e) => [e.kind, e.key, e.kind === 'upsert' ? e.value : null]),
        [
          ['upsert', `${p}b`, '2'],
          ['upsert', `${p}c`, '3'],
          ['delete', `${p}a`, null],
          ['upsert', `${p}d`, '4'],
        ],
      );
      assert.equal(events[0]!.modRevision, revB);
      assert.equal(events[3]!.modRevision, revD);
      assert.deepEqual(errors, []);
    });
  });
});

test('error kinds: unauthenticated and tls', async () => {
  await withEtcd({ name: 'tls' }, async (server) => {
    const other = await createCA(join(server.dir, 'other-ca'), 'other-ca');
    const otherRoot = await issueCert(other, { commonName: 'root', usage: 'client', outDir: join(server.dir, 'other-ca'), name: 'root' });
    // Client certificate from another CA: etcd rejects our credentials.
    const c1 = new KvClient({ ...server.connection('root'), certFile: otherRoot.certFile, keyFile: otherRoot.keyFile });
    // We trust another CA: the server certificate does not verify.
    const c2 = new KvClient({ ...server.connection('root'), caFile: other.certFile });
    // The server certificate does not name what we verify.
    const c3 = new KvClient({ ...server.connection('root'), serverName: 'etcd.elsewhere.example' });
    // Our own CA, our user, but the certificate expired in 2020.
    const expired = await issueExpiredClientCert(server.ca, 'root', join(server.dir, 'expired'));
    const c4 = new KvClient({ ...server.connection('root'), certFile: expired.certFile, keyFile: expired.keyFile });
    try {
      await rejectsKind(c1.get('cilium/x'), 'unauthenticated');
      await rejectsKind(c4.get('cilium/x'), 'unauthenticated');
      await rejectsKind(c4.put('cilium/x', 'written with an expired certificate'), 'unauthenticated');
      const e2 = await rejectsKind(c2.get('cilium/x'), 'tls');
      assert.match(e2.message, /verify|certificate/);
      const e3 = await rejectsKind(c3.get('cilium/x'), 'tls');
      assert.match(e3.message, /altnames/);
      const watchErr = await new Promise<KvError>((resolve) => c2.watch('cilium/', '1', () => undefined, resolve));
      assert.equal(watchErr.kind, 'tls');
    } finally {
      await Promise.all([c1.close(), c2.close(), c3.close(), c4.close()]);
    }
  });
  // An etcd whose server certificate names only another host, reached by IP.
  await withEtcd({ name: 'wrongname', serverDnsNames: ['etcd.c9.mesh.example'], serverIpAddresses: [] }, async (server) => {
    const conn = server.connection('root');
    assert.equal(conn.serverName, 'etcd.c9.mesh.example');
    const { serverName: _drop, ...byIp } = conn;
    const bad = new KvClient(byIp);
    const good = new KvClient(conn);
    try {
      const e = await rejectsKind(bad.get('cilium/x'), 'tls');
      assert.match(e.message, /127\.0\.0\.1|altnames/);
      assert.equal(await good.get('cilium/x'), undefined);
    } finally {
      await Promise.all([bad.close(), good.close()]);
    }
  });
});

test('error kinds: unavailable (etcd killed), compacted, closed', async () => {
  await withEtcd({ name: 'faults' }, async (server) => {
    const c = new KvClient(server.connection('root', { timeoutMs: 2000 }));
    try {
      // compacted: watch from a revision compaction removed.
      const first = await c.put('cilium/state/k', '1');
      for (let i = 2; i <= 5; i++) await c.put('cilium/state/k', String(i));
      await c.compact(await c.currentRevision());
      const compacted = await new Promise<KvError>((resolve) => c.watch('cilium/state/', first, () => undefined, resolve));
      assert.equal(compacted.kind, 'compacted');
      // A watch from the current revision is fine and then sees the kill.
      const events: WatchEvent[] = [];
      const from = String(BigInt(await c.currentRevision()) + 1n);
      const broken = new Promise<KvError>((resolve) => c.watch('cilium/state/', from, (e) => events.push(e), resolve));
      await c.put('cilium/state/k', 'live');
      await waitFor(() => events.length === 1, 5000, 'live event');
      // unavailable: etcd killed.
      await server.kill();
      assert.equal((await broken).kind, 'unavailable');
      await rejectsKind(c.get('cilium/state/k'), 'unavailable');
      await rejectsKind(c.put('cilium/state/k', 'x'), 'unavailable');
      const watchDown = await new Promise<KvError>((resolve) => c.watch('cilium/', '1', () => undefined, resolve));
      assert.equal(watchDown.kind, 'unavailable');
      // The same client recovers when etcd is back.
      await server.start();
      await waitFor(async () => (await c.get('cilium/state/k').catch(() => undefined))?.value === 'live', 5000, 'recovery');
    } finally {
      await c.close();
    }
    // closed
    await rejectsKind(c.get('x'), 'closed');
    assert.throws(() => c.watch('cilium/', '1', () => undefined, () => undefined), (e: unknown) => e instanceof KvError && e.kind === 'closed');
  });
});

test('configureEtcdAuth: roles, users and auth set up on an etcd that had none, and a second run changes nothing', async () => {
  await withEtcd({ name: 'authcfg', auth: false }, async (server) => {
    await server.clientCert('root');
    await server.clientCert('remote');
    await withClients(server, ['remote'], async (remote) => {
      await remote.put(heartbeatKey, 'before'); // no auth yet: anyone may write
    });
    await configureEtcdAuth(server.connection('root'), TEST_ROLES);
    await configureEtcdAuth(server.connection('root'), TEST_ROLES); // roles and users exist: kept, no error
    await withClients(server, ['remote', 'apiserver'], async (remote, api) => {
      await rejectsKind(remote.put(heartbeatKey, 'x'), 'permission');
      await api.put(nodeKey('c1', 'n1'), 'v');
      assert.equal((await remote.get(nodeKey('c1', 'n1')))?.value, 'v');
    });
  });
});

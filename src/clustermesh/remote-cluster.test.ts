// Unit tests without etcd: the observable cache, backoff on an injected clock,
// refusal of bad names.
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { Registry } from 'prom-client';
import type { KvClient } from '../kvstore/client.ts';
import { KvError } from '../kvstore/types.ts';
import { Cache, type CacheEvent } from './cache.ts';
import { ManualClock } from '../util/clock.ts';
import { clusterConfigKey, heartbeatKey } from './keys.ts';
import { backoffDelay, DEFAULT_BACKOFF, HEARTBEAT_STALE_FLOOR_MS, RemoteCluster, SyncSlots, tcpReachable, type RemoteClusterStatus } from './remote-cluster.ts';
import { recordingLogger } from './testing.ts';
import { encodeClusterConfig } from './wire.ts';

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

  /** Moves the clock in 100 ms steps, letting promise chains run between them. */
  async function tick(clock: ManualClock, ms: number): Promise<void> {
    for (let t = 0; t < ms; t += 100) {
      clock.advance(Math.min(100, ms - t));
      for (let i = 0; i < 4; i++) await flush();
    }
  }

  it('a remote that comes back after a long cut is retried within a probe interval and the spread, not at the end of the backoff', async () => {
    const clock = new ManualClock();
    let attempts = 0;
    let reachable = false;
    let probes = 0;
    const fake = {
      getWithRevision: async () => {
        attempts++;
        throw new KvError('unavailable', 'get', 'deadline exceeded');
      },
      close: async () => {},
    } as unknown as KvClient;
    const rc = new RemoteCluster({
      name: 'c2', connection: conn, local, clock, random: () => 0.5, registry: new Registry(), connect: () => fake,
      // Already at the cap, as after minutes of a cut.
      backoff: { initialMs: 30_000, maxMs: 30_000, factor: 2, jitter: 0 },
      reachability: { intervalMs: 1000, spreadMs: 2000, probe: async (eps) => (assert.deepEqual(eps, conn.endpoints), probes++, reachable) },
    });
    rc.start();
    await flush();
    assert.equal(attempts, 1);
    await tick(clock, 10_000);
    assert.equal(attempts, 1, 'still backing off while unreachable');
    assert.ok(probes >= 9 && probes <= 10, `a probe a second: ${probes}`);
    // The underlay heals: the next probe sees it, the session starts after random() * spread = 1 s.
    reachable = true;
    await tick(clock, 1900);
    assert.equal(attempts, 1, 'not before the spread');
    await tick(clock, 200);
    assert.equal(attempts, 2, 'reconnected about 2 s after the heal, not 20 s later');
    assert.equal(rc.status().reachableAgain, 1);
    // Reachable but failing (an etcd that answers TCP and then times out): no shortcut, the full backoff.
    const probesBefore = probes;
    await tick(clock, 29_700);
    assert.equal(attempts, 2, 'a reachable remote that fails keeps the whole backoff');
    assert.ok(probes > probesBefore, 'probed meanwhile');
    await tick(clock, 400);
    assert.equal(attempts, 3);
    assert.equal(rc.status().reachableAgain, 1);
    await rc.stop();
    const after = probes;
    await tick(clock, 5000);
    assert.equal(probes, after, 'no probes after stop');
    assert.equal(attempts, 3);
  });

  it('a heal while an attempt is timing out still cuts the next backoff short', async () => {
    const clock = new ManualClock();
    let attempts = 0;
    let reachable = false;
    let release: (() => void) | undefined;
    const fake = {
      // Each attempt hangs until released, then times out (as a connect during the cut does).
      getWithRevision: () => {
        attempts++;
        return new Promise((_, reject) => (release = () => reject(new KvError('unavailable', 'get', 'deadline exceeded'))));
      },
      close: async () => {},
    } as unknown as KvClient;
    const rc = new RemoteCluster({
      name: 'c2', connection: conn, local, clock, random: () => 0, registry: new Registry(), connect: () => fake,
      backoff: { initialMs: 30_000, maxMs: 30_000, factor: 2, jitter: 0 },
      reachability: { intervalMs: 1000, spreadMs: 2000, probe: async () => reachable },
    });
    rc.start();
    await flush();
    release!();
    await tick(clock, 30_500); // probes fail throughout this backoff
    assert.equal(attempts, 2);
    reachable = true; // healed while attempt 2 hangs
    release!();
    await tick(clock, 1600);
    assert.equal(attempts, 3, 'the first probe after the failed attempt finds it reachable: reconnect then, not 30 s later');
    await rc.stop();
  });

  it('reachability: false backs off only; a remote reachable all along keeps its whole backoff', async () => {
    for (const reachability of [false, { probe: async () => true }] as const) {
      const clock = new ManualClock();
      let attempts = 0;
      let probes = 0;
      const fake = { getWithRevision: async () => (attempts++, Promise.reject(new KvError('unavailable', 'get', 'refused'))), close: async () => {} } as unknown as KvClient;
      const rc = new RemoteCluster({
        name: 'c2', connection: conn, local, clock, random: () => 0, registry: new Registry(), connect: () => fake,
        backoff: { initialMs: 5000, maxMs: 5000, factor: 1, jitter: 0 },
        reachability: reachability === false ? false : { probe: async () => (probes++, true) },
      });
      rc.start();
      await tick(clock, 4900);
      assert.equal(attempts, 1);
      await tick(clock, 200);
      assert.equal(attempts, 2);
      if (reachability !== false) assert.ok(probes >= 4, 'probed, never shortcut (never saw it unreachable)');
      await rc.stop();
    }
  });

  it('tcpReachable: true for a listening port, false for a closed one or a bad endpoint, within the timeout', async () => {
    const { createServer } = await import('node:net');
    const srv = createServer((s) => s.destroy());
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    const port = (srv.address() as { port: number }).port;
    try {
      assert.equal(await tcpReachable([`https://127.0.0.1:${port}`], 2000), true);
      assert.equal(await tcpReachable(['https://127.0.0.1:1', `https://127.0.0.1:${port}`], 2000), true, 'any endpoint');
    } finally {
      await new Promise((r) => srv.close(r));
    }
    assert.equal(await tcpReachable([`https://127.0.0.1:${port}`], 2000), false);
    assert.equal(await tcpReachable(['not a url'], 2000), false);
  });

  it('a heartbeat older than 2.5 of its intervals is reported stale, with its age; the connection is kept', async () => {
    const clock = new ManualClock();
    const cfg = { key: clusterConfigKey('c2'), value: encodeClusterConfig({ id: 2 }), modRevision: '5', lease: '0' };
    const watches = new Map<string, (ev: { kind: 'upsert'; key: string; value: string; modRevision: string }) => void>();
    let closed = 0;
    let rev = 10;
    const hb = (ms: number): string => new Date(ms).toISOString();
    const fake = {
      getWithRevision: async () => ({ pair: cfg, revision: '10' }),
      list: async (prefix: string) => ({ pairs: prefix === heartbeatKey ? [{ key: heartbeatKey, value: hb(0), modRevision: '6', lease: '0' }] : [], revision: '10' }),
      watch: (prefix: string, _from: string, onEvent: (ev: { kind: 'upsert'; key: string; value: string; modRevision: string }) => void) => {
        watches.set(prefix, onEvent);
        return { cancel: async () => {} };
      },
      close: async () => void closed++,
    } as unknown as KvClient;
    const log = recordingLogger();
    const seen: RemoteClusterStatus[] = [];
    const rc = new RemoteCluster({ name: 'c2', connection: conn, local, clock, random: () => 0, registry: new Registry(), connect: () => fake, logger: log, reachability: false });
    rc.onStatus((st) => seen.push(st));
    rc.start();
    for (let i = 0; i < 20 && !rc.ready; i++) await flush();
    assert.equal(rc.status().state, 'ready');
    const beat = (ms: number): void => watches.get(heartbeatKey)!({ kind: 'upsert', key: heartbeatKey, value: hb(ms), modRevision: String(++rev) });
    // One heartbeat seen: the interval is not known, the configured limit (180 s) applies.
    assert.deepEqual([rc.status().heartbeat.intervalMs, rc.status().heartbeat.staleAfterMs], [null, 180_000]);
    await tick(clock, 15_000);
    beat(15_000);
    await tick(clock, 15_000);
    beat(30_000);
    assert.equal(rc.status().heartbeat.intervalMs, 15_000);
    assert.equal(rc.status().heartbeat.staleAfterMs, 37_500);
    // The remote goes silent (a cut shorter than the keepalive would not end the session).
    await tick(clock, 37_500);
    assert.equal(rc.status().heartbeat.stale, false);
    await tick(clock, 100);
    const st = rc.status();
    assert.equal(st.heartbeat.stale, true);
    assert.ok(st.heartbeat.ageMs! > 37_500 && st.heartbeat.ageMs! <= 37_700, `age ${st.heartbeat.ageMs}`);
    assert.deepEqual([st.state, st.connected, closed], ['ready', true, 0], 'still connected: the session is not torn down');
    assert.ok(log.records.some((r) => r.level === 'warn' && r.msg === 'remote heartbeat stale (connection kept)'), 'logged');
    assert.ok(seen.some((x) => x.heartbeat.stale), 'listeners told');
    // It speaks again: no longer stale.
    beat(90_000);
    assert.equal(rc.status().heartbeat.stale, false);
    assert.equal(rc.status().heartbeat.intervalMs, 15_000, 'the gap of a silence does not become the interval');
    // A fast remote (200 ms) is not stale before the floor.
    for (let t = 90_200; t <= 91_000; t += 200) beat(t);
    assert.equal(rc.status().heartbeat.staleAfterMs, HEARTBEAT_STALE_FLOOR_MS);
    await rc.stop();
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

// The reflector's loop against a scripted API (the HTTP layer faked; the
// integration tests in test/k8s-source.test.ts use a real server).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { ClusterObject } from '../../model/index.ts';
import { ResourceCache } from '../resource.ts';
import { KubeApiError, type KubeHttp, type RawList, type RawWatchEvent } from './http.ts';
import { Reflector } from './reflector.ts';

const ns = (name: string, labels: Record<string, string> = {}) => ({ metadata: { name, labels } });

type Step = { list: RawList | Error } | { watch: Error | RawWatchEvent[] };

/** A KubeHttp whose answers follow `script`, then stay pending (a watch that never ends). */
function scripted(script: Step[]): { http: KubeHttp; calls: string[] } {
  const calls: string[] = [];
  const next = <K extends 'list' | 'watch'>(kind: K): Step | undefined => {
    const s = script[0];
    if (s && kind in s) return script.shift();
    return undefined;
  };
  const http = {
    async list(_path: string, query: Record<string, string>): Promise<RawList> {
      calls.push(`list${query.continue ? ` continue=${query.continue}` : ''}`);
      const s = next('list') as { list: RawList | Error } | undefined;
      if (!s) return await new Promise<never>(() => undefined);
      if (s.list instanceof Error) throw s.list;
      return s.list;
    },
    async watch(_path: string, query: Record<string, string>, signal: AbortSignal, _idle: number, onEvent: (e: RawWatchEvent) => void): Promise<void> {
      calls.push(`watch rv=${query.resourceVersion}`);
      const s = next('watch') as { watch: Error | RawWatchEvent[] } | undefined;
      if (!s) return await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve()));
      if (s.watch instanceof Error) throw s.watch;
      for (const e of s.watch) onEvent(e);
      // ended by the server after the events: a failure of a watch that ends at once
      throw new Error('connection reset');
    },
  };
  return { http: http as unknown as KubeHttp, calls };
}

async function until(what: string, cond: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const page = (items: unknown[], resourceVersion: string, cont?: string): { list: RawList } => ({ list: { items, resourceVersion, continue: cont } });
const names = (c: ResourceCache<ClusterObject>) => c.list().map((o) => o.metadata.name).sort();

test('a re-list prunes only once every page arrived; a failed page prunes nothing', async () => {
  const { http, calls } = scripted([
    page([ns('a'), ns('b')], '10', 'p2'),
    page([ns('c')], '10'),
    { watch: new Error('connection refused') },
    // re-list: first page without b, then the second page fails
    page([ns('a')], '20', 'p2'),
    { list: new Error('connection reset') },
    // re-list: complete, without b and c
    page([ns('a')], '30', 'p2'),
    page([], '30'),
  ]);
  const cache = new ResourceCache<ClusterObject>('Namespace');
  const deletes: string[] = [];
  cache.watch((e) => e.kind === 'delete' && deletes.push(e.object.metadata.name));
  const errors: string[] = [];
  // Backoff 1 ms after the watch failure, then 1 s after the failed page (time to look at the cache).
  const r = new Reflector('Namespace', http, cache, { backoff: { initialMs: 1, factor: 1000, maxMs: 1000, jitter: 0 }, onError: (e) => errors.push(e.message) });
  r.start();
  try {
    await until('synced', () => cache.synced);
    assert.deepEqual(names(cache), ['a', 'b', 'c']);
    await until('the failed page', () => errors.includes('connection reset'));
    assert.deepEqual(names(cache), ['a', 'b', 'c'], 'an incomplete re-list prunes nothing');
    assert.deepEqual(deletes, []);
    await until('the complete re-list', () => r.status.lists === 2);
    assert.deepEqual(names(cache), ['a']);
    assert.deepEqual(deletes.sort(), ['b', 'c']);
    await until('the watch from the last list', () => calls.at(-1) === 'watch rv=30');
    assert.equal(r.status.resourceVersion, '30');
  } finally {
    await r.stop();
  }
});

test('watch events; 410 re-lists without backoff; an invalid object keeps its last good version', async () => {
  const { http, calls } = scripted([
    page([ns('a', { v: '1' })], '10'),
    {
      watch: [
        { type: 'MODIFIED', object: { metadata: { name: 'a', labels: { v: 'bad value!' }, resourceVersion: '11' } } },
        { type: 'ADDED', object: { metadata: { name: 'b', resourceVersion: '12' } } },
        { type: 'BOOKMARK', object: { metadata: { resourceVersion: '15' } } },
        { type: 'ERROR', object: { kind: 'Status', code: 410, reason: 'Expired', message: 'too old resource version' } },
      ],
    },
    page([ns('a', { v: '2' }), ns('b')], '20'),
  ]);
  const cache = new ResourceCache<ClusterObject>('Namespace');
  const problems: string[] = [];
  // A long backoff: a re-list that waited on it would not arrive in time.
  const r = new Reflector('Namespace', http, cache, { backoff: { initialMs: 60_000 }, onProblem: (key, err) => problems.push(`${key}: ${err.message}`) });
  r.start();
  try {
    await until('the re-list after 410', () => r.status.lists === 2);
    assert.equal(r.status.expired, 1);
    assert.deepEqual(calls.slice(0, 3), ['list', 'watch rv=10', 'list']);
    assert.equal(problems.length, 1);
    assert.match(problems[0]!, /^a: Namespace a: metadata\.labels\.v: /);
    assert.deepEqual(names(cache), ['a', 'b']);
    assert.deepEqual(cache.get({ name: 'a' })?.metadata.labels, { v: '2' });
    await until('the watch from the re-list', () => calls.at(-1) === 'watch rv=20');
  } finally {
    await r.stop();
  }
});

test('a CRD kind whose CRD is absent (404) is synced and empty, and tried again', async () => {
  const notFound = new KubeApiError(404, 'NotFound', 'the server could not find the requested resource');
  const { http, calls } = scripted([
    { list: notFound },
    { list: notFound },
    page([{ metadata: { name: 'p', namespace: 'd' }, spec: {} }], '7'),
  ]);
  const cache = new ResourceCache<ClusterObject>('CiliumNetworkPolicy');
  const r = new Reflector('CiliumNetworkPolicy', http, cache, { optionalRetryMs: 5, backoff: { initialMs: 60_000 } });
  r.start();
  try {
    await until('synced', () => cache.synced);
    await until('the CRD appears', () => cache.get({ namespace: 'd', name: 'p' }) !== undefined);
    assert.deepEqual(calls.slice(0, 4), ['list', 'list', 'list', 'watch rv=7']);
    assert.equal(r.status.absent, false);
  } finally {
    await r.stop();
  }
  // A built-in kind answering 404 is a failure, not "empty".
  const { http: h2 } = scripted([{ list: notFound }]);
  const pods = new ResourceCache<ClusterObject>('Pod');
  const errors: string[] = [];
  const r2 = new Reflector('Pod', h2, pods, { backoff: { initialMs: 5 }, onError: (e) => errors.push(e.message) });
  r2.start();
  try {
    await until('the error', () => errors.length > 0);
    assert.equal(pods.synced, false);
  } finally {
    await r2.stop();
  }
});

test('410s that keep coming right after a fresh list back off instead of looping', async () => {
  const gone: RawWatchEvent = { type: 'ERROR', object: { kind: 'Status', code: 410, reason: 'Expired', message: 'too old' } };
  const { http } = scripted([page([ns('a')], '1'), { watch: [gone] }, page([ns('a')], '2'), { watch: [gone] }, page([ns('a')], '3')]);
  const cache = new ResourceCache<ClusterObject>('Namespace');
  const r = new Reflector('Namespace', http, cache, { backoff: { initialMs: 60_000 } });
  r.start();
  try {
    await until('two 410s', () => r.status.expired === 2);
    await new Promise((res) => setTimeout(res, 300));
    assert.equal(r.status.lists, 2, 'the second quick 410 waits for the backoff');
  } finally {
    await r.stop();
  }
});

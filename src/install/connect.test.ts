// connect --connection-mode mesh by context: every pair is checked before anything is dialled or written (pure part).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { KubeConfig } from '@kubernetes/client-node';
import { connectInstalledPairs, meshPairs, REMOTE_IDS_ANNOTATION, type InstalledCluster } from './connect.ts';

/** A cluster as read; its KubeConfig is never used: every refusal comes before the first dial or write. */
const cluster = (name: string, id: number, o: { max?: number; remotes?: Record<string, number> } = {}): InstalledCluster => ({
  context: name,
  kc: undefined as unknown as KubeConfig,
  namespace: 'clustermesh-system',
  name,
  id,
  maxConnectedClusters: o.max ?? 255,
  endpoints: [`https://${name}.invalid:2379`],
  serverName: undefined,
  remote: { ca: '', cert: '', key: '' },
  remotes: {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name: 'clustermesh-remotes', annotations: { [REMOTE_IDS_ANNOTATION]: JSON.stringify(o.remotes ?? {}) } },
    data: Object.fromEntries(Object.keys(o.remotes ?? {}).map((n) => [n, 'eA=='])),
  },
});

test('meshPairs: every ordered pair once', () => {
  const cs = [cluster('c1', 1), cluster('c2', 2), cluster('c3', 3)];
  assert.deepEqual(meshPairs(cs).map(([s, d]) => `${s.name}>${d.name}`), ['c1>c2', 'c1>c3', 'c2>c1', 'c2>c3', 'c3>c1', 'c3>c2']);
});

test('connect mesh: refusals before anything is dialled', async () => {
  await assert.rejects(connectInstalledPairs(meshPairs([cluster('c1', 1), cluster('c2', 2), cluster('c3', 2)])), /clusters c2 and c3 both have cluster ID 2; IDs must be unique/);
  await assert.rejects(connectInstalledPairs(meshPairs([cluster('c1', 1), cluster('c2', 2, { max: 511 }), cluster('c3', 3)])), /different maxConnectedClusters \(255 and 511\)/);
  // c1 already imports c9 with ID 3: c3 (ID 3) cannot join c1.
  await assert.rejects(connectInstalledPairs(meshPairs([cluster('c1', 1, { remotes: { c9: 3 } }), cluster('c2', 2), cluster('c3', 3)])), /cluster c1 already imports cluster c9 with ID 3; c3 has the same ID/);
  // The same cluster twice (two contexts of one cluster).
  await assert.rejects(connectInstalledPairs(meshPairs([cluster('c1', 1), { ...cluster('c1', 1), context: 'other' }])), /contexts c1 and other both hold cluster c1/);
});

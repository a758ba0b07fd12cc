import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { V1DaemonSet } from '@kubernetes/client-node';
import { daemonSetHash, daemonSetMaxUnavailable, nodeMatches } from './daemonset.ts';

test('DaemonSet maxUnavailable: default 1, int, percentage rounded up, at least 1', () => {
  assert.equal(daemonSetMaxUnavailable(undefined, 5), 1);
  assert.equal(daemonSetMaxUnavailable(2, 5), 2);
  assert.equal(daemonSetMaxUnavailable('3', 5), 3);
  assert.equal(daemonSetMaxUnavailable('10%', 5), 1);
  assert.equal(daemonSetMaxUnavailable('50%', 5), 3);
  assert.equal(daemonSetMaxUnavailable(0, 5), 1);
  assert.throws(() => daemonSetMaxUnavailable('half', 5), /maxUnavailable 'half' is neither an integer nor a percentage/);
});

test('DaemonSet nodeSelector and template hash', () => {
  const ds: V1DaemonSet = { spec: { selector: {}, template: { spec: { nodeSelector: { role: 'edge' }, containers: [] } } } };
  assert.equal(nodeMatches(ds, { metadata: { labels: { role: 'edge', x: 'y' } } }), true);
  assert.equal(nodeMatches(ds, { metadata: { labels: { role: 'core' } } }), false);
  assert.equal(nodeMatches({ spec: { selector: {}, template: { spec: { containers: [] } } } }, { metadata: {} }), true);
  const other: V1DaemonSet = { spec: { selector: {}, template: { spec: { nodeSelector: { role: 'core' }, containers: [] } } } };
  assert.notEqual(daemonSetHash(ds), daemonSetHash(other));
  assert.equal(daemonSetHash(ds), daemonSetHash(JSON.parse(JSON.stringify(ds)) as V1DaemonSet));
});

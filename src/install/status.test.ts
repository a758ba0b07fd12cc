// status --context: what counts as ready from what the Kubernetes API serves (pure).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parsePodStatus } from '../agent/pod-status.ts';
import { formatInstalled, summarizeInstalled, type InstalledProbe } from './status.ts';

const now = new Date('2026-12-03T20:00:00Z');
const summary = (remotes: Array<[string, boolean, boolean]>, at = '2026-12-03T19:59:50Z') => ({
  at,
  node: 'node1',
  cluster: 'c1',
  phase: 'ready',
  ready: true,
  remotes: remotes.map(([name, connected, ready]) => ({ name, connected, ready, lastError: connected ? null : 'dial tcp: connection refused' })),
  configErrors: [],
});
const probe = (o: Partial<InstalledProbe> = {}): InstalledProbe => ({
  context: 'c1',
  namespace: 'clustermesh-system',
  settings: { name: 'c1', id: '1' },
  daemonSet: { desired: 1, ready: 1, updated: 1 },
  deployment: { replicas: 1, available: 1 },
  configured: ['c2', 'c3'],
  agents: [{ pod: 'clustermesh-agent-abc', uid: 'u1', node: 'node1', ready: true, restarts: 0, summary: summary([['c2', true, true], ['c3', true, true]]) }],
  errors: [],
  ...o,
});

test('status --context: ready when every agent reports every configured remote connected and synced', () => {
  const r = summarizeInstalled(probe(), now);
  assert.deepEqual(r.notReady, []);
  assert.equal(r.ready, true);
  assert.deepEqual(r.remoteClusters.map((x) => `${x.name} ${x.ready}/${x.nodes}`), ['c2 1/1', 'c3 1/1']);
  assert.match(formatInstalled(r), /remote c3: connected 1\/1, ready 1\/1/);
});

test('status --context: each missing thing is named', () => {
  const notPicked = summarizeInstalled(probe({ agents: [{ pod: 'a', uid: 'u', node: 'node1', ready: true, restarts: 0, summary: summary([['c2', true, true]]) }] }), now);
  assert.deepEqual(notPicked.notReady, ['c1: agent on node1 has not picked up remote cluster c3 yet']);
  const down = summarizeInstalled(probe({ agents: [{ pod: 'a', uid: 'u', node: 'node1', ready: true, restarts: 0, summary: summary([['c2', true, true], ['c3', false, false]]) }] }), now);
  assert.deepEqual(down.notReady, ['c1: agent on node1: remote cluster c3 not connected (last error: dial tcp: connection refused)']);
  const stale = summarizeInstalled(probe({ agents: [{ pod: 'a', uid: 'u', node: 'node1', ready: true, restarts: 0, summary: summary([['c2', true, true], ['c3', true, true]], '2026-12-03T19:58:00Z') }] }), now);
  assert.match(stale.notReady.join(), /its status is 120s old/);
  const none = summarizeInstalled(probe({ agents: [{ pod: 'a', uid: 'u', node: 'node1', ready: false, restarts: 2, summary: undefined }], daemonSet: { desired: 1, ready: 0, updated: 1 } }), now);
  assert.deepEqual(none.notReady, ['c1: daemonset/clustermesh-agent: 0/1 agent pods ready', 'c1: agent pod a on node1 is not ready', 'c1: agent pod a on node1 has written no status (annotation clustermesh.io/agent-status) yet']);
  const absent = summarizeInstalled(probe({ settings: null, daemonSet: null, deployment: null, configured: null, agents: [] }), now);
  assert.equal(absent.ready, false);
  assert.match(absent.notReady[0]!, /clustermesh is not installed there \(clustermesh install --context c1\)/);
});

test('the agent status annotation: parsed only when it is a summary', () => {
  assert.equal(parsePodStatus(undefined), undefined);
  assert.equal(parsePodStatus('not json'), undefined);
  assert.equal(parsePodStatus('{"remotes":[]}'), undefined);
  assert.deepEqual(parsePodStatus(JSON.stringify(summary([]))), summary([]));
});

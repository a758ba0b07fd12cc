import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ApiException, type CoreV1Api, type V1Node, type V1Pod } from '@kubernetes/client-node';
import { needsScheduling, pickNode, SchedulerController } from './scheduler.ts';

const node = (name: string, o: { ready?: boolean; unschedulable?: boolean; labels?: Record<string, string> } = {}): V1Node => ({
  metadata: { name, labels: o.labels ?? {} },
  spec: { unschedulable: o.unschedulable ?? false },
  status: { conditions: [{ type: 'Ready', status: o.ready === false ? 'False' : 'True' }] },
});
const pod = (name: string, nodeName?: string, o: { phase?: string; selector?: Record<string, string>; scheduler?: string } = {}): V1Pod => ({
  metadata: { name, namespace: 'default' },
  spec: { containers: [], ...(nodeName ? { nodeName } : {}), ...(o.selector ? { nodeSelector: o.selector } : {}), ...(o.scheduler ? { schedulerName: o.scheduler } : {}) },
  status: { phase: o.phase ?? 'Running' },
});

test('pickNode: the Ready node with the fewest running pods; ties by name; finished pods do not count', () => {
  const nodes = [node('b'), node('a'), node('c')];
  assert.equal(pickNode(pod('x'), nodes, []), 'a');
  assert.equal(pickNode(pod('x'), nodes, [pod('p1', 'a'), pod('p2', 'b')]), 'c');
  assert.equal(pickNode(pod('x'), nodes, [pod('p1', 'a'), pod('p2', 'b'), pod('p3', 'c'), pod('p4', 'c')]), 'a');
  assert.equal(pickNode(pod('x'), nodes, [pod('p1', 'a', { phase: 'Succeeded' }), pod('p2', 'b'), pod('p3', 'c')]), 'a');
});

test('pickNode: not Ready, unschedulable and nodeSelector mismatches are skipped; none fits: undefined', () => {
  const nodes = [node('a', { ready: false }), node('b', { unschedulable: true }), node('c', { labels: { zone: 'x' } })];
  assert.equal(pickNode(pod('x'), nodes, []), 'c');
  assert.equal(pickNode(pod('x', undefined, { selector: { zone: 'y' } }), nodes, []), undefined);
  assert.equal(pickNode(pod('x', undefined, { selector: { zone: 'x' } }), nodes, []), 'c');
  assert.equal(pickNode(pod('x'), [], []), undefined);
});

test('needsScheduling: only unbound pods of the default scheduler that are not being deleted', () => {
  assert.equal(needsScheduling(pod('x')), true);
  assert.equal(needsScheduling(pod('x', 'a')), false);
  assert.equal(needsScheduling(pod('x', undefined, { scheduler: 'other' })), false);
  assert.equal(needsScheduling(pod('x', undefined, { scheduler: 'default-scheduler' })), true);
  assert.equal(needsScheduling({ ...pod('x'), metadata: { name: 'x', deletionTimestamp: new Date() } }), false);
});

// A pass of the scheduler against a fake API: one list of nodes and pods for
// all the waiting pods, spread as if bound one by one, a failed binding named.
test('scheduleAll: one pass binds every waiting pod, counting its own bindings; failures thrown after the rest are bound', async () => {
  const calls = { listPods: 0, listNodes: 0 };
  const bound: Array<[string, string]> = [];
  const items = [pod('old', 'a'), pod('w1'), pod('w2'), pod('w3'), pod('w4'), pod('w5'), pod('other', undefined, { scheduler: 'other' })];
  const fake = {
    listNode: async () => ((calls.listNodes++, { items: [node('a'), node('b')] })),
    listPodForAllNamespaces: async () => ((calls.listPods++, { items })),
    createNamespacedPodBinding: async ({ name, body }: { name: string; body: { target: { name: string } } }) => {
      if (name === 'w3') throw Object.assign(new Error('boom'), { code: 500 });
      if (name === 'w4') throw new ApiException(404, 'gone', '', {});
      bound.push([name, body.target.name]);
    },
  };
  await assert.rejects(new SchedulerController(fake as unknown as CoreV1Api).scheduleAll(), /binding default\/w3 to [ab]: boom/);
  assert.deepEqual(calls, { listPods: 1, listNodes: 1 });
  // a holds one pod, b none: w1 b, w2 a (a tie goes to the first name), w3 b, w4 a, w5 b; w3 failed, w4 was gone.
  assert.deepEqual(bound.sort(), [['w1', 'b'], ['w2', 'a'], ['w5', 'b']]);
  assert.ok(!bound.some(([p]) => p === 'other' || p === 'old'));
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { V1Node, V1Pod } from '@kubernetes/client-node';
import { needsScheduling, pickNode } from './scheduler.ts';

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

// FlowFollower (`observe --follow`). With `resolve` (--context): the agents
// are found again while it runs, as `ui --context` does (mergeTargets): a
// node that appears in a later resolution is followed, an agent restarted
// elsewhere is dialled where it is now (at once when its stream fails) and
// goes on past the last flow printed, a node gone is let go, a resolution
// that fails keeps the agents and is said once. Without it (a lab), a stream
// that ends stays ended. Fake agents: the real API server on unix sockets,
// real AgentClients.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fakeAgent, nodeAt, targetsOf, until } from '../agent/fake-agent.test-helper.ts';
import type { Flow } from '../agent/flows.ts';
import { FlowFollower } from './observe-follow.ts';
import type { Targets } from './targets.ts';

const ago = (ms: number): Date => new Date(Date.now() - ms);

test('kept flows of every node merged by time and cut to --last, then live ones; without resolve a stream that ends stays ended', async () => {
  const a = await fakeAgent('node1', 1, [1, ago(3000)], [3, ago(1000)]);
  const b = await fakeAgent('node2', 1, [2, ago(2000)], [4, ago(500)]);
  const printed: number[] = [];
  const warnings: string[] = [];
  const f = new FlowFollower({ targets: targetsOf([nodeAt('node1', a.socket), nodeAt('node2', b.socket)]), query: {}, last: 3, reorderMs: 0, emit: (x: Flow) => printed.push(x.destination.port!), warn: (s) => warnings.push(s) });
  try {
    f.start();
    await until('the kept flows', () => printed.length === 3);
    assert.deepEqual(printed, [2, 3, 4]);
    b.add(5);
    await until('a live flow', () => printed.includes(5));
    await b.server.close();
    await until("node2's end said", () => warnings.some((w) => w.startsWith('c1/node2')));
    assert.equal(f.allEnded, false);
    await a.server.close();
    await f.done;
    assert.equal(f.allEnded, true);
    await until('both agents saw their stream end', () => a.followers() + b.followers() === 0);
  } finally {
    f.close();
  }
});

test('periodic resolution: a node added is followed from the start, a node gone let go, a failed resolution keeps the agents', async () => {
  const a = await fakeAgent('node1', 2);
  let next: () => Promise<Targets> = async () => targetsOf([nodeAt('node1', a.socket)]);
  const printed: number[] = [];
  const warnings: string[] = [];
  const notes: string[] = [];
  const f = new FlowFollower({
    targets: await next(),
    query: {},
    reorderMs: 0,
    resolveMs: 100,
    retryMs: 100,
    resolve: () => next(),
    emit: (x) => printed.push(x.destination.port!),
    warn: (s) => warnings.push(s),
    note: (s) => notes.push(s),
  });
  try {
    f.start();
    await until('node1 followed', () => a.followers() === 1);
    // node2 kept a flow from before observe started (not printed: it would come out of order) and one after.
    const b = await fakeAgent('node2', 2, [2000, ago(60_000)], [2002, new Date()]);
    next = async () => targetsOf([nodeAt('node1', a.socket), nodeAt('node2', b.socket)]);
    await until('node2 followed', () => b.followers() === 1);
    await until("node2's flow printed", () => printed.includes(2002));
    assert.ok(!printed.includes(2000), `printed ${printed.join(',')}`);
    assert.deepEqual(f.nodes.map((n) => n.key).sort(), ['c1/node1', 'c1/node2']);
    assert.ok(notes.some((n) => /^c1\/node2 .*a new node; following it/.test(n)), notes.join('\n'));
    assert.equal(a.followers(), 1, 'node1 is not dialled twice');

    // The Kubernetes API does not answer: nothing is let go, and it is said once.
    next = async () => Promise.reject(new Error('context c1: connect ECONNREFUSED'));
    await until('the warning', () => warnings.some((w) => /finding the agents again: context c1: connect ECONNREFUSED/.test(w)));
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(warnings.filter((w) => /ECONNREFUSED/.test(w)).length, 1, warnings.join('\n'));
    assert.equal(a.followers() + b.followers(), 2);

    // node1 removed from its cluster: its stream is closed.
    next = async () => targetsOf([nodeAt('node2', b.socket)]);
    await until('node1 let go', () => a.followers() === 0);
    assert.deepEqual(f.nodes.map((n) => n.key), ['c1/node2']);
    b.add(2003);
    await until('node2 still printed', () => printed.includes(2003));
    assert.ok(f.troubles > 0, 'the failed resolution counts for the exit code');
    f.stop();
    await b.server.close();
  } finally {
    f.close();
    await a.server.close();
  }
});

test('a failed stream resolves again at once: an agent restarted elsewhere is dialled there and goes on past the last flow printed', async () => {
  const old = await fakeAgent('node1', 3);
  let next = targetsOf([nodeAt('node1', old.socket)]);
  let resolutions = 0;
  const printed: number[] = [];
  const warnings: string[] = [];
  // No periodic resolution within the test: only the failed stream can trigger one.
  const f = new FlowFollower({ targets: next, query: {}, reorderMs: 0, resolveMs: 3_600_000, retryMs: 200, resolve: async () => (resolutions++, next), emit: (x) => printed.push(x.destination.port!), warn: (s) => warnings.push(s) });
  try {
    f.start();
    await until('the first agent followed', () => old.followers() === 1);
    const seen = new Date();
    old.add(1001, seen);
    await until('its flow printed', () => printed.includes(1001));
    // Let the start's own resolution time pass (a failed stream resolves at most once per retryMs).
    await new Promise((r) => setTimeout(r, 300));
    // The restarted agent has the flow printed already and one after it.
    const moved = await fakeAgent('node1', 33, [1001, seen], [1111, new Date(seen.getTime() + 1)]);
    next = targetsOf([nodeAt('node1', moved.socket)]);
    await old.server.close(); // the pod restarted: its old address answers no more
    await until('the moved agent followed', () => moved.followers() === 1);
    await until("the moved agent's flow printed", () => printed.includes(1111));
    assert.ok(resolutions >= 1);
    assert.deepEqual(f.nodes.map((n) => n.socket), [moved.socket]);
    assert.deepEqual(printed, [1001, 1111], 'nothing printed twice');
    assert.equal(f.allEnded, false);
    f.stop();
    await moved.server.close();
  } finally {
    f.close();
  }
});

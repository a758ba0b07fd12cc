// UiServer with `resolve` (ui --context): the agents are found again while it
// runs. Fake agents (the real API server on unix sockets, real AgentClients):
// a node that appears in a later resolution is followed (its flows reach the
// view); an agent restarted elsewhere is dialled where it is now, at once when
// its stream fails; a node gone is let go; a resolution that fails keeps the
// agents in use and is said once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fakeAgent, nodeAt, targetsOf, until } from '../agent/fake-agent.test-helper.ts';
import type { Targets } from '../cli/targets.ts';
import { UiServer } from './server.ts';

/** The destination ports of the view's edges ('TCP 2002' -> 2002). */
const edgePorts = async (url: string): Promise<number[]> => {
  const edges = (await (await fetch(`${url}api/edges`)).json()) as Array<{ ports: string[] }>;
  return edges.flatMap((e) => e.ports.map((p) => Number(p.split(' ').pop())));
};

test('periodic resolution: a node added is followed, a node gone let go, a failed resolution keeps the agents', async () => {
  const a = await fakeAgent('node1', 1001, [1001, new Date()]);
  const b = await fakeAgent('node2', 2002, [2002, new Date()]);
  let next: () => Promise<Targets> = async () => targetsOf([nodeAt('node1', a.socket)]);
  const warnings: string[] = [];
  const ui = new UiServer({ targets: await next(), address: '127.0.0.1', port: 0, refreshMs: 3_600_000, resolveMs: 100, retryMs: 100, resolve: () => next(), warn: (s) => warnings.push(s) });
  try {
    const url = await ui.start();
    await until('node1 followed', () => a.followers() === 1);

    next = async () => targetsOf([nodeAt('node1', a.socket), nodeAt('node2', b.socket)]);
    await until('node2 followed', () => b.followers() === 1);
    assert.deepEqual(ui.nodes.map((n) => n.key).sort(), ['c1/node1', 'c1/node2']);
    await until("node2's flow in the view", async () => (await edgePorts(url)).includes(2002));
    assert.equal(a.followers(), 1, 'node1 is not dialled twice');

    // The Kubernetes API does not answer: nothing is let go, and it is said once.
    next = async () => Promise.reject(new Error('context c1: connect ECONNREFUSED'));
    await until('the warning', () => warnings.some((w) => /finding the agents again: context c1: connect ECONNREFUSED/.test(w)));
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(warnings.filter((w) => /ECONNREFUSED/.test(w)).length, 1, warnings.join('\n'));
    assert.equal(b.followers(), 1);
    assert.equal(a.followers(), 1);

    // node1 removed from its cluster: its stream is closed.
    next = async () => targetsOf([nodeAt('node2', b.socket)]);
    await until('node1 let go', () => a.followers() === 0);
    assert.deepEqual(ui.nodes.map((n) => n.key), ['c1/node2']);
    assert.equal(b.followers(), 1);
  } finally {
    await ui.stop();
    await a.server.close();
    await b.server.close();
  }
});

test('a failed stream resolves again at once: an agent restarted elsewhere is dialled where it is now', async () => {
  const old = await fakeAgent('node1', 1001, [1001, new Date()]);
  const moved = await fakeAgent('node1', 1111, [1111, new Date()]);
  let next = targetsOf([nodeAt('node1', old.socket)]);
  let resolutions = 0;
  // No periodic resolution within the test: only the failed stream can trigger one.
  const ui = new UiServer({ targets: next, address: '127.0.0.1', port: 0, refreshMs: 3_600_000, resolveMs: 3_600_000, retryMs: 200, resolve: async () => (resolutions++, next) });
  try {
    const url = await ui.start();
    await until('the first agent followed', () => old.followers() === 1);
    // Let the start's own resolution time pass (a failed stream resolves at most once per retryMs).
    await new Promise((r) => setTimeout(r, 300));
    next = targetsOf([nodeAt('node1', moved.socket)]);
    await old.server.close(); // the pod restarted: its old address answers no more
    await until('the moved agent followed', () => moved.followers() === 1);
    assert.ok(resolutions >= 1);
    assert.equal(ui.nodes.length, 1);
    assert.equal(ui.nodes[0]!.socket, moved.socket);
    await until("the moved agent's flow in the view", async () => (await edgePorts(url)).includes(1111));
  } finally {
    await ui.stop();
    await moved.server.close();
  }
});

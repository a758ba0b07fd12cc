import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ManualClock } from '../util/clock.ts';
import { AGENT_STATUS_ANNOTATION, parsePodStatus, REFRESH_MS, runPodStatusWriter, type PodStatusInput } from './pod-status.ts';

const settle = async (): Promise<void> => {
  for (let i = 0; i < 20; i++) await Promise.resolve();
};

function writer(o: { fail?: () => string | undefined } = {}) {
  const clock = new ManualClock();
  const ctl = new AbortController();
  const patches: Array<{ method: string; path: string; value: string }> = [];
  const warnings: string[] = [];
  let reads = 0;
  const input: PodStatusInput = { node: { name: 'node1', cluster: 'c1' }, phase: 'syncing', ready: false, remoteClusters: [{ name: 'c2', connected: true, ready: false, lastError: null }], clustermesh: { configErrors: [] } };
  const http = {
    request: async (method: string, path: string, body?: unknown) => {
      const err = o.fail?.();
      if (err) throw new Error(err);
      patches.push({ method, path, value: (body as { metadata: { annotations: Record<string, string> } }).metadata.annotations[AGENT_STATUS_ANNOTATION]! });
      return {};
    },
  } as unknown as Parameters<typeof runPodStatusWriter>[0]['http'];
  const log = { info: () => undefined, warn: (_o: unknown, msg: string) => void warnings.push(msg) } as unknown as Parameters<typeof runPodStatusWriter>[0]['log'];
  const done = runPodStatusWriter({
    http,
    pod: { namespace: 'cm', name: 'agent-x' },
    status: () => {
      reads++;
      return input;
    },
    clock,
    log,
    signal: ctl.signal,
  });
  return { clock, ctl, patches, warnings, input, done, reads: () => reads };
}

test('the status annotation is written at start, again only on change or after REFRESH_MS, from the brief input alone', async () => {
  const w = writer();
  await settle();
  assert.equal(w.patches.length, 1);
  assert.equal(w.patches[0]!.method, 'PATCH');
  assert.equal(w.patches[0]!.path, '/api/v1/namespaces/cm/pods/agent-x');
  const first = parsePodStatus(w.patches[0]!.value)!;
  assert.deepEqual({ ...first, at: '' }, { at: '', node: 'node1', cluster: 'c1', phase: 'syncing', ready: false, remotes: [{ name: 'c2', connected: true, ready: false, lastError: null }], configErrors: [] });

  // Unchanged for 29 checks: read every second, not written.
  for (let i = 0; i < 29; i++) {
    w.clock.advance(1000);
    await settle();
  }
  assert.equal(w.patches.length, 1);
  assert.equal(w.reads(), 30);

  // A change is written at the next check.
  w.input.phase = 'ready';
  w.input.ready = true;
  w.input.remoteClusters = [{ name: 'c3', connected: false, ready: false, lastError: 'dial: refused' }, { name: 'c2', connected: true, ready: true, lastError: null }];
  w.input.clustermesh = { configErrors: [{ file: 'c4', error: 'no endpoints' }] };
  w.clock.advance(1000);
  await settle();
  assert.equal(w.patches.length, 2);
  const second = parsePodStatus(w.patches[1]!.value)!;
  assert.equal(second.phase, 'ready');
  assert.deepEqual(second.remotes.map((r) => `${r.name} ${r.connected} ${r.ready} ${r.lastError}`), ['c2 true true null', 'c3 false false dial: refused']);
  assert.deepEqual(second.configErrors, ['c4: no endpoints']);
  const changedAt = Date.parse(second.at);

  // Unchanged: written again once REFRESH_MS has passed since the last write, not before.
  for (let t = 1000; t < REFRESH_MS; t += 1000) {
    w.clock.advance(1000);
    await settle();
  }
  assert.equal(w.patches.length, 2);
  w.clock.advance(1000);
  await settle();
  assert.equal(w.patches.length, 3);
  assert.equal(Date.parse(parsePodStatus(w.patches[2]!.value)!.at) - changedAt, REFRESH_MS);

  w.ctl.abort();
  await w.done;
});

test('a failed write is warned about once per distinct error and tried again at the next check', async () => {
  let failing: string | undefined = 'pods "agent-x" is forbidden';
  const w = writer({ fail: () => failing });
  await settle();
  for (let i = 0; i < 3; i++) {
    w.clock.advance(1000);
    await settle();
  }
  assert.equal(w.patches.length, 0);
  assert.equal(w.warnings.length, 1);
  assert.match(w.warnings[0]!, /cannot write the status annotation clustermesh\.io\/agent-status/);
  failing = undefined;
  w.clock.advance(1000);
  await settle();
  assert.equal(w.patches.length, 1, 'the unchanged summary is written once the API takes it');
  w.ctl.abort();
  await w.done;
});

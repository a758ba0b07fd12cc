// A stand-in agent for tests of what follows agents (`observe --follow`,
// `ui`): the real agent API server on a unix socket with a real FlowStore, so
// the code under test dials it with real AgentClients. Only the flow calls
// answer; the rest are inert. Also the node targets such tests resolve to, and
// a wait. Sockets live in one temporary directory, removed after the file's tests.
import { after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NodeTarget, Targets } from '../cli/targets.ts';
import { startApiServer, type ApiHandlers, type ApiServer } from './api.ts';
import { FlowStore, toFlow } from './flows.ts';
import { event, namer } from './flows.test-helper.ts';
import type { AgentStatus } from './status.ts';

const silent = { info() {}, warn() {}, error() {}, debug() {} };

export interface FakeAgent {
  socket: string;
  /** Streams open on /flows?follow. */
  followers: () => number;
  /** A new flow to `dstPort` (to the followers, and kept). */
  add(dstPort: number, at?: Date): void;
  server: ApiServer;
}

let dir = '';
after(() => (dir ? rm(dir, { recursive: true, force: true }) : undefined));

/** An agent of node `name` (`tag` tells two of the same node apart) keeping a flow to each port of `kept`, at its time. */
export async function fakeAgent(name: string, tag: number, ...kept: Array<[number, Date]>): Promise<FakeAgent> {
  dir ||= await mkdtemp(join(tmpdir(), 'cm-fake-agent-'));
  const store = new FlowStore(16);
  const add = (dstPort: number, at = new Date()): void => store.add(toFlow(event({ dstIp: '10.102.1.12', dstPort, protocol: 6 }), namer, at));
  for (const [port, at] of kept) add(port, at);
  let followers = 0;
  const handlers: ApiHandlers = {
    addEndpoint: async () => Promise.reject(new Error('no')),
    deleteEndpoint: async () => Promise.reject(new Error('no')),
    listEndpoints: () => [],
    status: () => ({ node: { name, cluster: 'c1' } }) as unknown as AgentStatus,
    listServices: () => [],
    policy: () => ({ endpoints: [] }) as never,
    health: () => ({ ready: true, phase: 'ready' }),
    flows: (q) => store.query(q),
    followFlows: (w, q) => {
      followers++;
      const stop = store.follow(w, q);
      let done = false;
      return () => {
        if (done) return; // the API may call it on both close and error
        done = true;
        followers--;
        stop();
      };
    },
    cni: async () => ({ stdout: '{}', exitCode: 0 }),
  };
  const socket = join(dir, `${name}-${tag}.sock`);
  const server = await startApiServer(socket, handlers, silent);
  return { socket, followers: () => followers, add, server };
}

/** Node `name` of cluster c1 (context `context`) whose agent listens on `socket`. */
export const nodeAt = (name: string, socket: string, context = 'c1'): NodeTarget => ({
  key: `c1/${name}`,
  name,
  cluster: 'c1',
  socket,
  pinDir: undefined,
  netns: undefined,
  underlayIP: undefined,
  configDir: undefined,
  clusterId: 1,
  context,
});

/** Targets of cluster c1 with these nodes. */
export const targetsOf = (nodes: NodeTarget[], more: Partial<Targets> = {}): Targets => ({
  lab: undefined,
  clusters: [{ name: 'c1', id: 1, etcd: undefined, etcdSource: undefined, remoteConfigDir: undefined, lab: undefined }],
  nodes,
  ...more,
});

/** Waits until `ok` holds (checked every 25 ms), failing the test after `ms`. */
export async function until(what: string, ok: () => boolean | Promise<boolean>, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await ok()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  assert.fail(`timed out waiting for ${what}`);
}

// runCni's answers that need no namespace: VERSION, the error JSON for bad
// input, and code 11 when the agent is absent or not ready. (ADD/DEL/CHECK on
// real namespaces: test/cni.test.ts.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hostIfNameFor, runCni } from './plugin.ts';

const conf = (over: Record<string, unknown> = {}) =>
  JSON.stringify({ cniVersion: '1.0.0', name: 'cm', type: 'clustermesh', agentSocket: '/nonexistent/cmt/agent.sock', ipam: { podCIDR: '10.101.1.0/24' }, ...over });
const env = (over: Record<string, string | undefined> = {}): NodeJS.ProcessEnv => ({
  CNI_COMMAND: 'ADD',
  CNI_CONTAINERID: 'cmt-unit',
  CNI_NETNS: '/proc/self/ns/net',
  // Never a real name: these tests must fail before anything is created.
  CNI_IFNAME: 'cmtunit0',
  CNI_ARGS: 'K8S_POD_NAMESPACE=default;K8S_POD_NAME=web',
  ...over,
});

async function errorOf(e: NodeJS.ProcessEnv, stdin: string): Promise<{ cniVersion: string; code: number; msg: string; details?: string }> {
  const out = await runCni(e, stdin);
  assert.notEqual(out.exitCode, 0, 'a failure exits non-zero');
  return JSON.parse(out.stdout) as { cniVersion: string; code: number; msg: string; details?: string };
}

test('VERSION lists the supported versions, echoing the requested cniVersion', async () => {
  const out = await runCni({ CNI_COMMAND: 'VERSION' }, JSON.stringify({ cniVersion: '0.4.0' }));
  assert.equal(out.exitCode, 0);
  assert.deepEqual(JSON.parse(out.stdout), { cniVersion: '0.4.0', supportedVersions: ['1.0.0'] });
  assert.deepEqual(JSON.parse((await runCni({ CNI_COMMAND: 'VERSION' }, '')).stdout), { cniVersion: '1.0.0', supportedVersions: ['1.0.0'] });
});

test('bad environment → code 4 naming the variable; bad config → 7 naming the field; old version → 1', async () => {
  let e = await errorOf(env({ CNI_COMMAND: undefined }), conf());
  assert.equal(e.code, 4);
  assert.match(e.msg, /^CNI_COMMAND/);
  e = await errorOf(env({ CNI_IFNAME: undefined }), conf());
  assert.equal(e.code, 4);
  assert.match(e.msg, /^CNI_IFNAME/);
  e = await errorOf(env(), conf({ mtu: 'big' }));
  assert.deepEqual([e.cniVersion, e.code], ['1.0.0', 7]);
  assert.match(e.msg, /^invalid network config: mtu:/);
  e = await errorOf(env(), conf({ ipam: { podCIDR: '10.101.1.0/24', gateway: '10.1.1.1' } }));
  assert.equal(e.code, 7);
  assert.match(e.msg, /ipam\.gateway/);
  e = await errorOf(env(), conf({ cniVersion: '0.3.1' }));
  assert.deepEqual([e.cniVersion, e.code], ['0.3.1', 1]);
  e = await errorOf(env(), '{');
  assert.equal(e.code, 6);
  e = await errorOf(env({ CNI_NETNS: '/var/run/netns/cmt-no-such-ns' }), conf());
  assert.equal(e.code, 4);
  assert.match(e.msg, /^CNI_NETNS: .* does not exist/);
  e = await errorOf(env({ CNI_ARGS: 'K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;IP=10.101.2.5' }), conf());
  assert.equal(e.code, 4);
  assert.match(e.msg, /CNI_ARGS IP: 10\.101\.2\.5 is not a host address of 10\.101\.1\.0\/24/);
});

test('no agent on the socket → code 11 for ADD, CHECK and DEL', async () => {
  for (const cmd of ['ADD', 'CHECK', 'DEL']) {
    const e = await errorOf(env({ CNI_COMMAND: cmd }), conf());
    assert.equal(e.code, 11, `${cmd}: ${e.msg}`);
    assert.match(e.msg, /not reachable \(ENOENT\)/);
  }
});

test('an agent that answers but is not ready → code 11 (before anything is created)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cmt-cni-'));
  const sock = join(dir, 'agent.sock');
  const server = createServer((req, res) => {
    res.writeHead(503, { 'content-type': 'application/json' }).end(JSON.stringify({ ready: false, phase: 'syncing' }));
  });
  await new Promise<void>((r) => server.listen(sock, r));
  try {
    const e = await errorOf(env(), conf({ agentSocket: sock }));
    assert.equal(e.code, 11);
    assert.match(e.msg, /not ready yet \(phase syncing\)/);
  } finally {
    await new Promise((r) => server.close(r));
    rmSync(dir, { recursive: true, force: true });
  }
});

test('host-side device names: lxc + 11 hex digits, stable per container, at most 15 characters', () => {
  const a = hostIfNameFor('c0ffee');
  assert.match(a, /^lxc[0-9a-f]{11}$/);
  assert.equal(a, hostIfNameFor('c0ffee'));
  assert.notEqual(a, hostIfNameFor('c0ffef'));
  assert.ok(hostIfNameFor('x'.repeat(128)).length <= 15);
});

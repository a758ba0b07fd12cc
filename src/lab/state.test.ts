import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  NoSuchLabError,
  clusterKvConfig,
  etcdKvConfig,
  labDir,
  listLabs,
  processStartTime,
  readLabState,
  sameProcessAlive,
  validateLabName,
  writeLabState,
  type LabState,
} from './state.ts';

const root = mkdtempSync(join(tmpdir(), 'cmtl-state-'));
const saved = process.env.CLUSTERMESH_LAB_ROOT;
process.env.CLUSTERMESH_LAB_ROOT = root;
after(() => {
  if (saved === undefined) delete process.env.CLUSTERMESH_LAB_ROOT;
  else process.env.CLUSTERMESH_LAB_ROOT = saved;
  rmSync(root, { recursive: true, force: true });
});

const state = (name: string): LabState => ({
  version: 1,
  name,
  createdAt: new Date().toISOString(),
  pid: process.pid,
  phase: 'up',
  bpffsRoot: '/run/clustermesh/bpffs',
  router: { netns: `${name}-rtr` },
  namespaces: [`${name}-rtr`],
  pinDirs: [],
  processes: [],
  etcNetnsDirs: [],
  clusters: [
    {
      name: 'cluster1',
      id: 1,
      netns: `${name}-c1cp`,
      ip: '10.1.0.250',
      etcd: { endpoints: ['https://10.1.0.250:2379'], localEndpoints: ['unix:///x/localhost:2379'], localServerName: 'localhost', caFile: '/x/ca.crt', certFile: '/x/root.crt', keyFile: '/x/root.key', logFile: '/x/etcd.log' },
      apiserver: { logFile: '/x/apiserver.log' },
      remoteConfigDir: '/x/remote',
    },
  ],
  nodes: [],
});

test('write, read and list; the file is replaced atomically (no temp file left)', () => {
  writeLabState(state('cmtla'));
  writeLabState(state('cmtlb'));
  assert.equal(labDir('cmtla'), join(root, 'cmtla'));
  assert.deepEqual(listLabs(), ['cmtla', 'cmtlb']);
  const s = readLabState('cmtla');
  assert.equal(s.clusters[0]!.name, 'cluster1');
  assert.deepEqual(readdirSync(join(root, 'cmtla')), ['lab.json']);
  // From the root namespace the CLI reaches etcd through its unix socket, verifying 'localhost'.
  assert.deepEqual(clusterKvConfig(s.clusters[0]!, 1000), { endpoints: ['unix:///x/localhost:2379'], caFile: '/x/ca.crt', certFile: '/x/root.crt', keyFile: '/x/root.key', timeoutMs: 1000, serverName: 'localhost' });
});

test("a cluster's Kubernetes etcd is recorded beside the mesh's and reached the same way; a state without it (an older lab) still reads", () => {
  const s = state('cmtlk');
  const kubeEtcd = { endpoints: ['https://127.0.0.1:2381'], localEndpoints: ['unix:///k/localhost:2381'], localServerName: 'localhost', caFile: '/k/ca.crt', certFile: '/k/root.crt', keyFile: '/k/root.key', dir: '/k', logFile: '/k/etcd.log' };
  writeLabState({ ...s, clusters: [{ ...s.clusters[0]!, kubeEtcd }] });
  const back = readLabState('cmtlk').clusters[0]!;
  assert.deepEqual(back.kubeEtcd, kubeEtcd);
  assert.deepEqual(etcdKvConfig(back.kubeEtcd!, 1000), { endpoints: ['unix:///k/localhost:2381'], caFile: '/k/ca.crt', certFile: '/k/root.crt', keyFile: '/k/root.key', timeoutMs: 1000, serverName: 'localhost' });
  assert.equal(readLabState('cmtla').clusters[0]!.kubeEtcd, undefined);
  writeFileSync(join(root, 'cmtlk', 'lab.json'), JSON.stringify({ ...s, clusters: [{ ...s.clusters[0]!, kubeEtcd: { endpoints: [] } }] }));
  assert.throws(() => readLabState('cmtlk'), /cmtlk\/lab\.json: field clusters\.0\.kubeEtcd\.caFile: /);
});

test('a missing lab, a torn file and a bad field are each one clear error', () => {
  assert.throws(() => readLabState('cmtlnone'), (e: unknown) => e instanceof NoSuchLabError && e.message === 'no lab named cmtlnone; start one with: clustermesh lab up --lab cmtlnone');
  mkdirSync(join(root, 'cmtlbad'), { recursive: true });
  writeFileSync(join(root, 'cmtlbad', 'lab.json'), '{"version":1,');
  assert.throws(() => readLabState('cmtlbad'), /lab state .*cmtlbad\/lab\.json is not valid JSON .*clustermesh lab down --lab cmtlbad/);
  writeFileSync(join(root, 'cmtlbad', 'lab.json'), JSON.stringify({ ...state('cmtlbad'), phase: 'sleeping' }));
  assert.throws(() => readLabState('cmtlbad'), /cmtlbad\/lab\.json: field phase: /);
  assert.throws(() => validateLabName('Bad_Name'), /lab name 'Bad_Name' is invalid/);
});

test('a process is recognised by pid and start time, not by pid alone', async () => {
  const child = spawn('sleep', ['30'], { stdio: 'ignore' });
  await new Promise((r) => child.once('spawn', r));
  const pid = child.pid!;
  const startTime = processStartTime(pid);
  assert.ok(startTime);
  assert.equal(sameProcessAlive({ pid, startTime }), true);
  assert.equal(sameProcessAlive({ pid, startTime: String(Number(startTime) - 1) }), false, 'another start time: a recycled pid');
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  assert.equal(sameProcessAlive({ pid, startTime }), false);
});

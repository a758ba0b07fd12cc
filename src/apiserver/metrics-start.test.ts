// The apiserver's metrics endpoint serves from the start, before its first
// etcd listing: an etcd that is down when the apiserver starts shows as
// kvstore_connected 0 with failing heartbeats, instead of no endpoint at all.
// Aborting such a start leaves nothing listening. clustermesh_apiserver_phase
// says where the start is: claiming (waiting for etcd), or etcd-bootstrap for
// `clustermesh apiserver --etcd-bootstrap-config` (as installed), whose
// endpoint also serves before that etcd answers.
import { after, test } from 'node:test';
import { spawn } from 'node:child_process';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import pino from 'pino';
import { startMeshEtcd } from '../clustermesh/etcd.ts';
import type { KvConnectionConfig } from '../kvstore/types.ts';
import { startApiserver } from './apiserver.ts';

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

test('metrics are served while etcd is down at start; an aborted start closes them', async () => {
  // A real etcd's credentials, then the etcd stopped: the apiserver starts against a kvstore that is not there.
  const dir = await mkdtemp(join(tmpdir(), 'cmt-apiserver-metrics-'));
  after(() => rm(dir, { recursive: true, force: true }));
  const etcd = await startMeshEtcd({ dir, name: 'apiserver-metrics-start' });
  const connection: KvConnectionConfig = etcd.connection('apiserver', { timeoutMs: 500 });
  await etcd.stop();
  const port = await freePort();
  // The Kubernetes API (the cluster source) is not there either: a kubeconfig naming a closed port.
  const kubeconfig = join(dir, 'kubeconfig');
  await writeFile(
    kubeconfig,
    `apiVersion: v1\nkind: Config\nclusters: [{name: c1, cluster: {server: 'https://127.0.0.1:${await freePort()}', insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {token: x}}]\ncontexts: [{name: c1, context: {cluster: c1, user: u}}]\ncurrent-context: c1\n`,
  );
  const ctl = new AbortController();
  const started = startApiserver(
    {
      clusterName: 'c1',
      clusterId: 1,
      maxConnectedClusters: 255,
      etcdConfigFile: '/unused',
      heartbeatIntervalMs: 200,
      sessionTtlSeconds: 5,
      identityGcIntervalMs: 3_600_000,
      identityGcGraceMs: 3_600_000,
      logLevel: 'silent',
      metricsAddress: `127.0.0.1:${port}`,
      kubeconfig,
    },
    { connection, logger: pino({ level: 'silent' }), signal: ctl.signal },
  );
  let outcome: 'pending' | 'resolved' | Error = 'pending';
  started.then(
    () => (outcome = 'resolved'),
    (err: Error) => (outcome = err),
  );
  try {
    let text = '';
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      text = await fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text(), () => '');
      if (/\nclustermesh_apiserver_heartbeat_failures_total [1-9]/.test(text)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.match(text, /\nclustermesh_apiserver_kvstore_connected 0\n/, `the endpoint serves before the first listing:\n${text}`);
    assert.match(text, /\nclustermesh_apiserver_heartbeat_failures_total [1-9]/, text);
    assert.match(text, /\nclustermesh_apiserver_phase\{phase="claiming"\} 1\n/, text);
    assert.match(text, /\nclustermesh_apiserver_phase\{phase="ready"\} 0\n/, text);
    assert.equal(outcome, 'pending', 'the start is still waiting for etcd');
  } finally {
    ctl.abort();
  }
  await assert.rejects(started, 'an aborted start rejects');
  await assert.rejects(fetch(`http://127.0.0.1:${port}/metrics`), 'nothing listens after the aborted start');
});

test('clustermesh apiserver --etcd-bootstrap-config: metrics are served while that etcd cannot be reached (phase etcd-bootstrap), nothing written yet', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'cmt-apiserver-bootstrap-'));
  after(() => rm(dir, { recursive: true, force: true }));
  const etcd = await startMeshEtcd({ dir, name: 'apiserver-metrics-bootstrap' });
  const c = etcd.connection('apiserver', { timeoutMs: 500 });
  await etcd.stop();
  const etcdConfig = join(dir, 'etcd.yaml');
  await writeFile(etcdConfig, `endpoints: [${c.endpoints.map((e) => JSON.stringify(e)).join(', ')}]\ntrusted-ca-file: ${c.caFile}\ncert-file: ${c.certFile}\nkey-file: ${c.keyFile}\ntimeout-ms: 500\n`);
  const kubeconfig = join(dir, 'kubeconfig');
  await writeFile(
    kubeconfig,
    `apiVersion: v1\nkind: Config\nclusters: [{name: c1, cluster: {server: 'https://127.0.0.1:${await freePort()}', insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {token: x}}]\ncontexts: [{name: c1, context: {cluster: c1, user: u}}]\ncurrent-context: c1\n`,
  );
  const port = await freePort();
  const cli = resolve(import.meta.dirname, '..', '..', 'bin', 'clustermesh.js');
  const child = spawn(process.execPath, [cli, 'apiserver', '--cluster-name', 'c1', '--cluster-id', '1', '--etcd-config', etcdConfig, '--etcd-bootstrap-config', etcdConfig, '--kubeconfig', kubeconfig, '--metrics-address', `127.0.0.1:${port}`, '--heartbeat-interval', '200ms', '--log-level', 'warn'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  try {
    let text = '';
    const deadline = Date.now() + 90_000;
    while (Date.now() < deadline && child.exitCode === null) {
      text = await fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text(), () => '');
      if (text.includes('clustermesh_apiserver_phase')) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.match(text, /\nclustermesh_apiserver_phase\{phase="etcd-bootstrap"\} 1\n/, `served while etcd's set-up waits:\n${text}\n${stderr}`);
    assert.match(text, /\nclustermesh_apiserver_phase\{phase="claiming"\} 0\n/, text);
    assert.match(text, /\nclustermesh_apiserver_heartbeats_total 0\n/, text);
    assert.match(text, /\nclustermesh_apiserver_heartbeat_failures_total 0\n/, 'no write tried before etcd is set up');
    assert.match(text, /\nclustermesh_apiserver_kvstore_connected 0\n/, text);
    assert.equal(child.exitCode, null, 'still trying');
  } finally {
    child.kill('SIGTERM');
    await exited;
  }
});

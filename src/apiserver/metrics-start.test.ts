// The apiserver's metrics endpoint serves from the start, before its first
// etcd listing: an etcd that is down when the apiserver starts shows as
// kvstore_connected 0 with failing heartbeats, instead of no endpoint at all.
// Aborting such a start leaves nothing listening.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
    assert.equal(outcome, 'pending', 'the start is still waiting for etcd');
  } finally {
    ctl.abort();
  }
  await assert.rejects(started, 'an aborted start rejects');
  await assert.rejects(fetch(`http://127.0.0.1:${port}/metrics`), 'nothing listens after the aborted start');
});

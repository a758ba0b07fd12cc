// The MCS controller is driven by watches (issue 18): with a resync interval
// far beyond the test, a change seen on a watch still gives a round, a burst
// of changes gives one, and an EndpointSlice no headless import cares about
// gives none. The Kubernetes API is a fake here (lists of objects, watches the
// test feeds); the lab test drives the real one.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import pino from 'pino';
import type { KubeHttp, RawList, RawWatchEvent } from '../sources/kubernetes/http.ts';
import { PrefixExport, type KeySink } from './export.ts';
import { McsController } from './mcs.ts';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { tempDir, TestCluster } from '../clustermesh/testing.ts';
import { encodeExportSpec, serviceExportKey, serviceExportsSyncedKey } from '../mcs/export.ts';
import { clusterConfigKey } from '../clustermesh/keys.ts';
import { encodeClusterConfig } from '../clustermesh/wire.ts';

class FakeKube {
  readonly lists = new Map<string, unknown[]>();
  readonly watchers = new Map<string, (ev: RawWatchEvent) => void>();
  listCalls = 0;

  async list(path: string): Promise<RawList> {
    this.listCalls++;
    return { items: this.lists.get(path) ?? [], resourceVersion: '1', continue: undefined };
  }
  async request(): Promise<Record<string, unknown>> {
    return {};
  }
  watch(path: string, _q: Record<string, string>, signal: AbortSignal, _idle: number, onEvent: (ev: RawWatchEvent) => void): Promise<void> {
    this.watchers.set(path, onEvent);
    return new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
  }
  emit(path: string, ev: RawWatchEvent): void {
    const w = this.watchers.get(path);
    assert.ok(w, `a watch of ${path} (watching: ${[...this.watchers.keys()].join(', ')})`);
    w(ev);
  }
}

const sink: KeySink = { upsert: () => undefined, delete: () => undefined, markInitialSyncDone: () => undefined };

async function until(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('the MCS controller reacts to changes, with a slow resync as the safety net', () => {
  test('a watch event gives a round (resync 1 h); a burst gives one; an unrelated EndpointSlice none', async () => {
    const kube = new FakeKube();
    const c = new McsController({ cluster: 'c1', kube: kube as unknown as KubeHttp, out: new PrefixExport('serviceexports', sink), intervalMs: 3_600_000, log: pino({ level: 'silent' }) });
    c.start();
    try {
      await c.initialSyncDone;
      const exports = '/apis/multicluster.x-k8s.io/v1alpha1/serviceexports';
      const slices = '/apis/discovery.k8s.io/v1/endpointslices';
      await until('the watches', () => kube.watchers.has(exports) && kube.watchers.has(slices) && kube.watchers.has('/api/v1/services'));
      const settled = c.status().rounds;
      assert.equal(settled, 1);

      kube.emit(exports, { type: 'ADDED', object: { metadata: { namespace: 'shop', name: 'cart' } } });
      await until('a round after the export was seen', () => c.status().rounds === settled + 1);

      // A burst (an apply of several objects): one round, not one per event.
      for (let i = 0; i < 5; i++) kube.emit('/api/v1/services', { type: 'MODIFIED', object: { metadata: { namespace: 'shop', name: `s${i}` } } });
      await until('a round after the burst', () => c.status().rounds === settled + 2);
      await new Promise((r) => setTimeout(r, 400));
      assert.equal(c.status().rounds, settled + 2, 'one round for the burst');

      // A slice of a Service no headless import is about: no round.
      kube.emit(slices, { type: 'MODIFIED', object: { metadata: { namespace: 'shop', name: 'web-abc', labels: { 'kubernetes.io/service-name': 'web' } } } });
      await new Promise((r) => setTimeout(r, 400));
      assert.equal(c.status().rounds, settled + 2, 'no round for an unrelated slice');
      // One of the controller's own import slices: a round (someone changed or deleted it).
      kube.emit(slices, { type: 'DELETED', object: { metadata: { namespace: 'shop', name: 'derived-x-c2', labels: { 'endpointslice.kubernetes.io/managed-by': 'clustermesh-mcs' } } } });
      await until('a round after its own slice changed', () => c.status().rounds === settled + 3);
    } finally {
      await c.stop();
    }
  });
});

describe("the MCS controller follows a remote cluster's exports by watch, as the read-only remote user", () => {
  test('an export written in the remote etcd gives a round at once (resync 1 h)', async () => {
    const { dir, cleanup } = await tempDir('mcs-remote-watch');
    const remote = await TestCluster.start(dir, 'c2', 2);
    const configDir = join(dir, 'remote-clusters');
    await mkdir(configDir);
    await remote.writeConfigFile(configDir); // the `remote` user, as `clustermesh connect` writes it
    await remote.writer.put(clusterConfigKey('c2'), encodeClusterConfig({ id: 2, capabilities: { syncedCanaries: true, maxConnectedClusters: 255, serviceExportsEnabled: true } }));
    await remote.writer.put(serviceExportsSyncedKey('c2'), 'synced');
    const kube = new FakeKube();
    const c = new McsController({ cluster: 'c1', kube: kube as unknown as KubeHttp, out: new PrefixExport('serviceexports', sink), intervalMs: 3_600_000, log: pino({ level: 'silent' }), remoteConfigDir: configDir });
    c.start();
    try {
      await c.initialSyncDone;
      assert.deepEqual(c.status().remotes.c2, { exports: 0 }, 'c2 read, nothing exported yet');
      const spec = { cluster: 'c2', namespace: 'shop', name: 'cart', exportCreationTimestamp: '2026-12-04T00:00:00Z', ports: [{ name: 'http', protocol: 'TCP' as const, port: 80 }], type: 'ClusterSetIP' as const, sessionAffinity: 'None' as const };
      await remote.writer.put(serviceExportKey('c2', 'shop', 'cart'), encodeExportSpec(spec));
      await until("c2's export read after its watch event", () => c.status().remotes.c2?.exports === 1);
      await remote.writer.delete(serviceExportKey('c2', 'shop', 'cart'));
      await until("c2's export gone after its watch event", () => c.status().remotes.c2?.exports === 0);
    } finally {
      await c.stop();
      await remote.close();
      await cleanup();
    }
  });
});

// Integration: the store source against a real etcd — list, watch, validation, reconnect.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KvClient } from '../../kvstore/client.ts';
import type { EtcdServer } from '../../kvstore/etcd-process.ts';
import { startMeshEtcd as startEtcd } from '../../clustermesh/etcd.ts';
import { ModelError, type Pod } from '../../model/index.ts';
import type { ResourceEvent, SourceProblem } from '../types.ts';
import { storeKey, storeKindPrefix, refFromStoreKey } from './keys.ts';
import { StoreSource } from './source.ts';
import { StoreWriter } from './writer.ts';

const pod = (name: string, app: string, ip?: string) => ({
  kind: 'Pod',
  metadata: { name, namespace: 'default', labels: { app } },
  spec: { nodeName: 'node1' },
  status: { phase: 'Running', ...(ip ? { podIP: ip } : {}), conditions: [{ type: 'Ready', status: 'True' }] },
});

async function until(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('store keys', () => {
    it('one key per object; cluster-scoped kinds have no namespace segment', () => {
      assert.equal(storeKey('Pod', { namespace: 'default', name: 'web' }), 'clustermesh/store/v1/pods/default/web');
      assert.equal(storeKey('Node', { name: 'node1' }), 'clustermesh/store/v1/nodes/node1');
      assert.equal(storeKey('Endpoint', { namespace: 'a', name: 'b' }), 'clustermesh/store/v1/ciliumendpoints/a/b');
      assert.equal(storeKindPrefix('CiliumNetworkPolicy'), 'clustermesh/store/v1/ciliumnetworkpolicies/');
      assert.throws(() => storeKey('Pod', { name: 'x' }), /needs a namespace/);
      assert.throws(() => storeKey('Namespace', { namespace: 'x', name: 'y' }), /cluster-scoped/);
      assert.deepEqual(refFromStoreKey('Pod', 'clustermesh/store/v1/pods/ns/n'), { namespace: 'ns', name: 'n' });
      assert.equal(refFromStoreKey('Pod', 'clustermesh/store/v1/pods/n'), undefined);
      assert.equal(refFromStoreKey('Node', 'clustermesh/store/v1/nodes/a/b'), undefined);
  });
});

describe('store source (real etcd)', () => {
  let dir: string;
  let etcd: EtcdServer;
  const clients: KvClient[] = [];
  const sources: StoreSource[] = [];
  const kv = (user: string): KvClient => {
    const c = new KvClient(etcd.connection(user, { timeoutMs: 2000 }));
    clients.push(c);
    return c;
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cm-store-'));
    etcd = await startEtcd({ dir, name: 'store-test' });
  });
  after(async () => {
    try {
      await Promise.all(sources.map((s) => s.stop()));
      await Promise.all(clients.map((c) => c.close()));
    } finally {
      await etcd.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('lists, then watches: upserts, synced, live upsert/delete with the object', async () => {
    const writer = new StoreWriter(kv('apiserver'));
    await writer.apply({ kind: 'Namespace', metadata: { name: 'default', labels: { team: 'a' } } });
    await writer.apply(pod('web-1', 'web', '10.101.1.5'));
    await writer.apply({ kind: 'Node', metadata: { name: 'node1' }, status: { addresses: [{ type: 'InternalIP', address: '10.1.0.1' }] } });
    await writer.apply({ kind: 'CiliumNetworkPolicy', metadata: { name: 'p', namespace: 'default' }, spec: { endpointSelector: {} } });

    const problems: SourceProblem[] = [];
    const source = new StoreSource(kv('agent'), { onProblem: (p) => problems.push(p) });
    sources.push(source);
    await source.start();
    // Every kind lists on its own: wait for each one the test reads.
    await Promise.all([source.pods, source.nodes, source.namespaces, source.ciliumNetworkPolicies, source.services].map((r) => r.waitSynced()));
    assert.deepEqual(source.pods.list().map((p) => p.metadata.name), ['web-1']);
    const web1 = source.pods.get({ namespace: 'default', name: 'web-1' });
    assert.equal(web1?.status.podIP, '10.101.1.5');
    assert.ok(web1?.metadata.uid, 'uid assigned');
    assert.ok(web1?.metadata.resourceVersion, 'resourceVersion is the mod revision');
    assert.equal(source.nodes.get({ name: 'node1' })?.status.addresses[0]?.address, '10.1.0.1');
    assert.equal(source.namespaces.list()[0]?.metadata.labels.team, 'a');
    assert.deepEqual(source.ciliumNetworkPolicies.list()[0]?.spec, { endpointSelector: {} });
    assert.deepEqual(source.services.list(), [], 'an empty kind syncs too');

    const events: ResourceEvent<Pod>[] = [];
    const unsubscribe = source.pods.watch((ev) => events.push(ev));
    assert.deepEqual(events.map((e) => e.kind), ['upsert', 'synced'], 'replay, then synced');

    await writer.apply(pod('web-2', 'web', '10.101.1.6'));
    await until('web-2', () => events.length === 3);
    await writer.apply(pod('web-2', 'web2', '10.101.1.6'));
    await until('web-2 update', () => events.length === 4);
    const uid = source.pods.get({ namespace: 'default', name: 'web-2' })?.metadata.uid;
    assert.equal((await writer.get('Pod', { namespace: 'default', name: 'web-2' }))?.metadata.uid, uid, 'uid kept on update');
    assert.equal(await writer.delete('Pod', { namespace: 'default', name: 'web-2' }), true);
    await until('web-2 delete', () => events.length === 5);
    const last = events[4];
    assert.ok(last?.kind === 'delete');
    assert.equal(last.object.metadata.labels.app, 'web2', 'delete carries the last known object');
    assert.equal(source.pods.get({ namespace: 'default', name: 'web-2' }), undefined);
    assert.deepEqual(events.slice(2, 4).map((e) => e.kind), ['upsert', 'upsert']);

    // A value that fails the schema is not believed, and replaces what was there.
    await kv('apiserver').put(storeKey('Pod', { namespace: 'default', name: 'web-1' }), JSON.stringify({ ...pod('web-1', 'web'), status: { podIP: 'nope' } }));
    await until('invalid web-1 dropped', () => events.length === 6);
    assert.equal(events[5]?.kind, 'delete');
    assert.match(problems[0]?.message ?? '', /Pod default\/web-1: status\.podIP/);
    // An object at another object's key is not believed either.
    await kv('apiserver').put(storeKey('Pod', { namespace: 'default', name: 'elsewhere' }), JSON.stringify(pod('web-9', 'web')));
    await until('misplaced problem', () => problems.length === 2);
    assert.match(problems[1]?.message ?? '', /holds default\/web-9/);
    assert.equal(source.pods.list().length, 0);
    unsubscribe();
    await writer.apply(pod('web-3', 'web'));
    await until('web-3 in cache', () => source.pods.list().length === 1);
    assert.equal(events.length, 6, 'no events after unsubscribe');
  });

  it('the writer validates and names object and field', async () => {
    const writer = new StoreWriter(kv('apiserver'));
    await assert.rejects(
      writer.apply({ kind: 'Service', metadata: { name: 'svc', namespace: 'default' }, spec: { ports: [{ port: 0 }] } }, 'app.yaml'),
      (e: unknown) => e instanceof ModelError && /^app\.yaml: Service default\/svc: spec\.ports\[0\]\.port/.test(e.message),
    );
    await assert.rejects(writer.apply({ kind: 'Deployment', metadata: { name: 'x' } }), /Deployment x: kind/);
  });

  it('recovers after etcd restarts and keeps the cache meanwhile', async () => {
    const writer = new StoreWriter(kv('apiserver'));
    const source = new StoreSource(kv('agent'), { backoff: { initialMs: 50, maxMs: 300 } });
    sources.push(source);
    await source.start();
    await source.nodes.waitSynced();
    const before = source.nodes.list().length;
    await etcd.stop();
    assert.equal(source.nodes.list().length, before, 'cache kept while etcd is gone');
    await etcd.start();
    await writer.apply({ kind: 'Node', metadata: { name: 'node2' }, spec: { podCIDR: '10.101.2.0/24' } });
    await until('node2 after reconnect', () => source.nodes.get({ name: 'node2' }) !== undefined, 20_000);
  });
});

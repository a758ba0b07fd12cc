// Integration: the Endpoint objects in etcd (mesh state) against a real etcd — keys, list, watch, validation, reconnect.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KvClient } from '../../kvstore/client.ts';
import type { EtcdServer } from '../../kvstore/etcd-process.ts';
import { startMeshEtcd as startEtcd } from '../../clustermesh/etcd.ts';
import { ModelError, type Endpoint } from '../../model/index.ts';
import type { ResourceEvent, SourceProblem } from '../types.ts';
import { ENDPOINTS_PREFIX, endpointKey, refFromEndpointKey } from './keys.ts';
import { EndpointSource } from './source.ts';
import { EndpointWriter } from './writer.ts';

const endpoint = (name: string, identity: number, ip = '10.101.1.5') => ({
  kind: 'Endpoint',
  metadata: { name, namespace: 'default', labels: { app: name } },
  status: { identity: { id: identity, labels: [] }, networking: { podIP: ip, nodeName: 'node1', nodeIP: '10.1.0.1' } },
});

async function until(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('endpoint keys', () => {
  it('one key per object under ciliumendpoints/<namespace>/<name>', () => {
    assert.equal(endpointKey({ namespace: 'a', name: 'b' }), 'clustermesh/store/v1/ciliumendpoints/a/b');
    assert.equal(ENDPOINTS_PREFIX, 'clustermesh/store/v1/ciliumendpoints/');
    assert.throws(() => endpointKey({ name: 'x' }), /needs a namespace/);
    assert.deepEqual(refFromEndpointKey('clustermesh/store/v1/ciliumendpoints/ns/n'), { namespace: 'ns', name: 'n' });
    assert.equal(refFromEndpointKey('clustermesh/store/v1/ciliumendpoints/n'), undefined);
    assert.equal(refFromEndpointKey('clustermesh/store/v1/pods/ns/n'), undefined);
  });
});

describe('endpoint source (real etcd)', () => {
  let dir: string;
  let etcd: EtcdServer;
  const clients: KvClient[] = [];
  const sources: EndpointSource[] = [];
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
    const writer = new EndpointWriter(kv('agent'));
    await writer.apply(endpoint('web-1', 65_600));
    const problems: SourceProblem[] = [];
    const source = new EndpointSource(kv('apiserver'), { onProblem: (p) => problems.push(p) });
    sources.push(source);
    await source.start();
    await source.endpoints.waitSynced();
    assert.deepEqual(source.endpoints.list().map((e) => e.metadata.name), ['web-1']);
    const web1 = source.endpoints.get({ namespace: 'default', name: 'web-1' });
    assert.equal(web1?.status.identity.id, 65_600);
    assert.ok(web1?.metadata.uid, 'uid assigned');
    assert.ok(web1?.metadata.resourceVersion, 'resourceVersion is the mod revision');

    const events: ResourceEvent<Endpoint>[] = [];
    const unsubscribe = source.endpoints.watch((ev) => events.push(ev));
    assert.deepEqual(events.map((e) => e.kind), ['upsert', 'synced'], 'replay, then synced');
    await writer.apply(endpoint('web-2', 65_601, '10.101.1.6'));
    await until('web-2', () => events.length === 3);
    await writer.apply(endpoint('web-2', 65_602, '10.101.1.6'));
    await until('web-2 update', () => events.length === 4);
    const uid = source.endpoints.get({ namespace: 'default', name: 'web-2' })?.metadata.uid;
    assert.equal((await writer.get({ namespace: 'default', name: 'web-2' }))?.metadata.uid, uid, 'uid kept on update');
    assert.equal(await writer.delete({ namespace: 'default', name: 'web-2' }), true);
    await until('web-2 delete', () => events.length === 5);
    const last = events[4];
    assert.ok(last?.kind === 'delete');
    assert.equal(last.object.status.identity.id, 65_602, 'delete carries the last known object');
    assert.deepEqual((await writer.list()).map((e) => e.metadata.name), ['web-1']);

    // A value that fails the schema is not believed, and replaces what was there.
    await kv('agent').put(endpointKey({ namespace: 'default', name: 'web-1' }), JSON.stringify({ ...endpoint('web-1', 65_600), status: { identity: { id: 1 }, networking: { podIP: 'nope' } } }));
    await until('invalid web-1 dropped', () => events.length === 6);
    assert.equal(events[5]?.kind, 'delete');
    assert.match(problems[0]?.message ?? '', /Endpoint default\/web-1: status\.networking/);
    // An object at another object's key is not believed either.
    await kv('agent').put(endpointKey({ namespace: 'default', name: 'elsewhere' }), JSON.stringify(endpoint('web-9', 65_609)));
    await until('misplaced problem', () => problems.length === 2);
    assert.match(problems[1]?.message ?? '', /holds default\/web-9/);
    assert.equal(source.endpoints.list().length, 0);
    unsubscribe();
    await writer.apply(endpoint('web-3', 65_603));
    await until('web-3 in cache', () => source.endpoints.list().length === 1);
    assert.equal(events.length, 6, 'no events after unsubscribe');
  });

  it('the writer takes only Endpoint objects and names object and field', async () => {
    const writer = new EndpointWriter(kv('agent'));
    await assert.rejects(
      writer.apply({ ...endpoint('bad', 65_600), status: { identity: { id: 65_600 }, networking: { podIP: '10.101.1.500', nodeName: 'node1', nodeIP: '10.1.0.1' } } }, 'ctx'),
      (e: unknown) => e instanceof ModelError && /^ctx: Endpoint default\/bad: status\.networking\.podIP/.test(e.message),
    );
    await assert.rejects(writer.apply({ kind: 'Pod', metadata: { name: 'x', namespace: 'default' } }), /kind/);
  });

  it('recovers after etcd restarts and keeps the cache meanwhile', async () => {
    const writer = new EndpointWriter(kv('agent'));
    const source = new EndpointSource(kv('apiserver'), { backoff: { initialMs: 50, maxMs: 300 } });
    sources.push(source);
    await source.start();
    await source.endpoints.waitSynced();
    const before = source.endpoints.list().length;
    await etcd.stop();
    assert.equal(source.endpoints.list().length, before, 'cache kept while etcd is gone');
    await etcd.start();
    await writer.apply(endpoint('after-restart', 65_610));
    await until('an endpoint after reconnect', () => source.endpoints.get({ namespace: 'default', name: 'after-restart' }) !== undefined, 20_000);
  });
});

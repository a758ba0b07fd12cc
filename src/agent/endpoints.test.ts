// The endpoint manager with fakes for the datapath, the identity allocator
// and the targets: idempotent add, conflicts, delete (also unknown),
// identity references, the store object, and recovery after a restart.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type * as endpointsMap from '../datapath/maps/endpoints.ts';
import { labelString, type Label } from '../identity/labels.ts';
import type { Endpoint } from '../model/index.ts';
import { EndpointManager, type EndpointDatapath, type EndpointIdentities } from './endpoints.ts';
import { IpcacheTable, type IpcacheEntry } from './ipcache-desired.ts';
import { Reconciler, type ReconcileTarget } from './reconciler.ts';
import { ApiError } from './types.ts';

const silent = { debug() {}, info() {}, warn() {}, error() {} };

function mapTarget<V>(): ReconcileTarget<V> & { data: Map<string, V> } {
  const data = new Map<string, V>();
  return { data, list: () => [...data], update: (k, v) => void data.set(k, v), delete: (k) => data.delete(k) };
}

class FakeDatapath implements EndpointDatapath {
  devices = new Set<string>();
  pinned: Array<[string, number]> = [];
  pinnedEndpoints = () => this.pinned;
  attached = new Map<string, number>();
  attach = async (dev: string) => {
    if (!this.devices.has(dev)) throw new ApiError('device-not-found', `device ${dev} does not exist`);
    this.attached.set(dev, (this.attached.get(dev) ?? 0) + 1);
    return { ifindex: 100 + [...this.devices].indexOf(dev), hostMac: '02:00:00:00:00:fe' };
  };
  detach = (dev: string) => void this.attached.delete(dev);
  deviceExists = async (dev: string) => this.devices.has(dev);
}

class FakeIdentities implements EndpointIdentities {
  refs = new Map<number, number>();
  byLabels = new Map<string, number>();
  next = 65_800;
  down = false;
  async allocate(labels: Label[]) {
    if (this.down) throw new Error('kvstore get: unavailable');
    const s = labelString(labels);
    let id = this.byLabels.get(s);
    if (id === undefined) this.byLabels.set(s, (id = this.next++));
    this.refs.set(id, (this.refs.get(id) ?? 0) + 1);
    return { id };
  }
  async release(id: number) {
    this.refs.set(id, (this.refs.get(id) ?? 0) - 1);
    return true;
  }
}

interface WorldExtra {
  podLabels?: Map<string, Record<string, string>>;
  policySettled?: () => Promise<unknown>;
}

async function world(stateDir: string, dp = new FakeDatapath(), ids = new FakeIdentities(), nsLabels: Record<string, Record<string, string>> = {}, extra: WorldExtra = {}) {
  const eps = mapTarget<endpointsMap.Value>();
  const ipc = mapTarget<IpcacheEntry>();
  const store = mapTarget<Endpoint>();
  const endpointsMapRec = new Reconciler({ name: 'endpoints', target: eps });
  const ipcacheRec = new Reconciler({ name: 'ipcache', target: ipc });
  const publisher = new Reconciler({ name: 'store', target: store });
  const table = new IpcacheTable({ upsert: (p, v) => ipcacheRec.upsert(p, v), remove: (p) => ipcacheRec.remove(p) });
  const m = new EndpointManager({
    clusterName: 'cluster1',
    nodeName: 'node1',
    nodeIP: '10.1.0.1',
    stateDir,
    datapath: dp,
    identities: ids,
    namespaceLabels: (ns) => nsLabels[ns],
    ...(extra.podLabels ? { podLabels: (ns: string, name: string) => extra.podLabels!.get(`${ns}/${name}`) } : {}),
    ...(extra.policySettled ? { policySettled: extra.policySettled } : {}),
    endpointsMap: endpointsMapRec,
    ipcache: table,
    ipcacheMap: ipcacheRec,
    publisher,
    log: silent,
    applyTimeoutMs: 2000,
    publishWaitMs: 200,
  });
  const recovered = await m.recover();
  await Promise.all([endpointsMapRec.start(), ipcacheRec.start(), publisher.start()]);
  const settle = () => Promise.all([endpointsMapRec.settle(), ipcacheRec.settle(), publisher.settle()]);
  const stop = async () => {
    await m.stop();
    await Promise.all([endpointsMapRec.stop(), ipcacheRec.stop(), publisher.stop()]);
  };
  return { m, dp, ids, eps, ipc, store, recovered, settle, stop };
}

const req = (n: number, extra: Record<string, unknown> = {}) => ({
  namespace: 'default',
  podName: `web-${n}`,
  ip: `10.101.1.${10 + n}`,
  hostIfName: `lxc${n}`,
  podMac: `02:00:00:00:01:0${n}`.toUpperCase(),
  labels: { app: 'web' },
  ...extra,
});

describe('EndpointManager', () => {
  it('add programs maps, ipcache and store; the same body again is the same result; delete reverses it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cm-agent-ep-'));
    const w = await world(dir, undefined, undefined, { default: { team: 'a' } });
    try {
      w.dp.devices.add('lxc1');
      w.dp.devices.add('lxc2');
      const a = await w.m.add('c1', req(1));
      assert.equal(a.identity, 65_800);
      assert.equal(a.endpointID, 1);
      assert.equal(a.podMac, '02:00:00:00:01:01', 'MAC lowercased');
      assert.equal(a.state, 'ready');
      assert.equal(a.published, true);
      assert.ok(a.identityLabels.includes('k8s:io.cilium.k8s.namespace.labels.team=a'), 'namespace labels are part of the identity');
      assert.ok(a.identityLabels.includes('k8s:io.cilium.k8s.policy.cluster=cluster1'));
      assert.deepEqual(w.eps.data.get('10.101.1.11'), { ifindex: 100, identity: 65_800, endpointId: 1, flags: 0, mac: '02:00:00:00:01:01', nodeMac: '02:00:00:00:00:fe' });
      assert.deepEqual(w.ipc.data.get('10.101.1.11/32'), { identity: 65_800, tunnelEndpoint: null, flags: 0 });
      const obj = w.store.data.get('Endpoint/default/web-1') as Endpoint;
      assert.deepEqual(obj.status.networking, { podIP: '10.101.1.11', nodeName: 'node1', nodeIP: '10.1.0.1' });
      assert.equal(obj.status.identity.id, 65_800);

      const again = await w.m.add('c1', req(1));
      assert.deepEqual(again, a, 'idempotent');
      assert.equal(w.ids.refs.get(65_800), 1, 'no second identity reference for the same endpoint');

      const b = await w.m.add('c2', req(2));
      assert.equal(b.identity, 65_800, 'same labels, same identity');
      assert.equal(b.endpointID, 2);
      assert.equal(w.ids.refs.get(65_800), 2);

      await assert.rejects(w.m.add('c3', req(3, { ip: '10.101.1.11' })), (e: unknown) => e instanceof ApiError && e.code === 'conflict' && /IP 10\.101\.1\.11 belongs to endpoint c1/.test(e.message));
      await assert.rejects(w.m.add('c3', req(3)), (e: unknown) => e instanceof ApiError && e.status === 422);
      await assert.rejects(w.m.add('c3', { ...req(3), ip: 'nope' }), (e: unknown) => e instanceof ApiError && e.status === 400 && /ip: must be an IPv4 address/.test(e.message));
      await assert.rejects(w.m.add('../etc', req(3)), (e: unknown) => e instanceof ApiError && e.status === 400);
      await assert.rejects(w.m.add('c3', { ...req(3), labels: { 'bad key!': 'x' } }), (e: unknown) => e instanceof ApiError && /labels/.test(e.message));
      assert.deepEqual((await readdir(join(dir, 'endpoints'))).sort(), ['c1.json', 'c2.json'], 'failed adds leave no record');

      // relabel: a new identity, the old reference released
      const relabeled = await w.m.add('c2', req(2, { labels: { app: 'api' } }));
      assert.equal(relabeled.identity, 65_801);
      assert.equal(w.ids.refs.get(65_800), 1);
      assert.equal(w.ipc.data.get('10.101.1.12/32')?.identity, 65_801);

      assert.deepEqual(await w.m.delete('c1'), { containerID: 'c1', deleted: true });
      await w.settle();
      assert.equal(w.eps.data.has('10.101.1.11'), false);
      assert.equal(w.ipc.data.has('10.101.1.11/32'), false);
      assert.equal(w.store.data.has('Endpoint/default/web-1'), false);
      assert.equal(w.dp.attached.has('lxc1'), false);
      assert.equal(w.ids.refs.get(65_800), 0, 'identity reference released');
      assert.deepEqual(await w.m.delete('c1'), { containerID: 'c1', deleted: false }, 'DELETE is idempotent');
      assert.deepEqual(w.m.list().map((e) => e.containerID), ['c2']);
    } finally {
      await w.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a restart re-adopts endpoints whose device exists with their identity, and drops the others', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cm-agent-ep-'));
    const dp = new FakeDatapath();
    dp.devices.add('lxc1');
    dp.devices.add('lxc2');
    const first = await world(dir, dp);
    await first.m.add('c1', req(1));
    await first.m.add('c2', req(2));
    await first.stop(); // like SIGTERM: records stay
    // a crash in the middle of an add: the record is written, nothing else
    await writeFile(join(dir, 'endpoints', 'c4.json.123.tmp'), '{');
    dp.devices.delete('lxc2'); // the pod went away while the agent was down
    dp.attached.clear();

    const ids = new FakeIdentities();
    ids.down = true; // etcd unreachable at restart: traffic must flow with the persisted identity
    const second = await world(dir, dp, ids);
    try {
      assert.deepEqual(second.recovered, { adopted: ['c1'], dropped: ['c2'], refused: [] });
      await second.settle();
      assert.equal(dp.attached.get('lxc1'), 1, 'program re-attached');
      assert.equal(second.eps.data.get('10.101.1.11')?.identity, 65_800, 'programmed from the persisted identity');
      assert.equal(second.m.get('c1')?.state, 'restoring');
      assert.deepEqual(await readdir(join(dir, 'endpoints')), ['c1.json'], 'dropped record and torn temp file removed');
      ids.down = false;
      ids.next = 65_800;
      const end = Date.now() + 5000;
      while (second.m.get('c1')?.state !== 'ready' && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
      assert.equal(second.m.get('c1')?.state, 'ready', 'identity reference re-taken once etcd answers');
      assert.equal(ids.refs.get(65_800), 1);
    } finally {
      await second.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('adds running at the same time get distinct endpoint IDs; a freed ID is not handed out again at once', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cm-agent-ep-'));
    const w = await world(dir);
    try {
      for (let n = 1; n <= 30; n++) w.dp.devices.add(`lxc${n}`);
      const reqN = (n: number) => req(n, { ip: `10.101.1.${10 + n}`, hostIfName: `lxc${n}`, podMac: '02:00:00:00:01:01', podName: `web-${n}` });
      const first = await Promise.all(Array.from({ length: 20 }, (_, i) => w.m.add(`c${i + 1}`, reqN(i + 1))));
      const ids = first.map((e) => e.endpointID);
      assert.equal(new Set(ids).size, 20, `unique: ${ids.join(',')}`);
      await w.settle();
      assert.equal(new Set([...w.eps.data.values()].map((v) => v.endpointId)).size, 20, 'unique in the endpoints map');
      // Two adds of the same IP at once: one wins, the other is refused.
      const race = await Promise.allSettled([w.m.add('x1', reqN(21)), w.m.add('x2', reqN(21))]);
      assert.deepEqual(race.map((r) => r.status).sort(), ['fulfilled', 'rejected']);
      await w.m.delete('c3');
      const next = await w.m.add('c22', reqN(22));
      assert.notEqual(next.endpointID, first[2]!.endpointID, 'the ID just freed is not reused at once');
      assert.deepEqual(w.m.status().problems, []);
    } finally {
      await w.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a restart takes every ID in use (records, pinned map) first; a duplicate record is refused loudly, never overwritten', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cm-agent-ep-'));
    const dp = new FakeDatapath();
    for (const d of ['lxc1', 'lxc2', 'lxc3', 'lxc4']) dp.devices.add(d);
    const first = await world(dir, dp);
    const a = await first.m.add('c1', req(1));
    const b = await first.m.add('c2', req(2));
    await first.stop();
    // What the old allocation race left behind: a younger record with c1's endpoint ID.
    const dup = JSON.parse(await readFile(join(dir, 'endpoints', 'c2.json'), 'utf8')) as Record<string, unknown>;
    await writeFile(join(dir, 'endpoints', 'c3.json'), JSON.stringify({ ...dup, containerID: 'c3', podName: 'web-3', ip: '10.101.1.13', hostIfName: 'lxc3', endpointID: a.endpointID, createdAt: new Date(Date.now() + 1000).toISOString() }));
    dp.pinned = [['10.101.1.99', 7]]; // a stale entry of the pinned map: its ID stays taken
    const second = await world(dir, dp);
    try {
      assert.deepEqual(second.recovered.refused, ['c3']);
      assert.deepEqual(second.recovered.adopted.sort(), ['c1', 'c2']);
      const problems = second.m.status().problems;
      assert.equal(problems.length, 1);
      assert.match(problems[0]!, /endpoint c3 .* refused at restore: its endpoint ID 1 belongs to endpoint c1/);
      assert.ok((await readdir(join(dir, 'endpoints'))).includes('c3.json.duplicate'), 'record moved aside');
      await second.settle();
      assert.equal(second.eps.data.get('10.101.1.11')?.endpointId, a.endpointID, 'c1 keeps its ID');
      assert.equal(second.eps.data.has('10.101.1.13'), false, 'the refused endpoint is not programmed');
      const c4 = await second.m.add('c4', req(4));
      assert.ok(![a.endpointID, b.endpointID, 7].includes(c4.endpointID), `a new add gets an ID nobody holds: ${c4.endpointID}`);
    } finally {
      await second.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a Pod object relabelled: new identity, policy settled before the maps switch, old reference dropped after', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cm-agent-ep-'));
    const podLabels = new Map<string, Record<string, string>>();
    const seen: Array<{ identity: number | null; mapIdentity: number | undefined; heldOld: number | undefined }> = [];
    const ids = new FakeIdentities();
    const w: Awaited<ReturnType<typeof world>> = await world(dir, undefined, ids, {}, {
      podLabels,
      policySettled: async () => {
        const e = w.m.get('c1');
        seen.push({ identity: e?.identity ?? null, mapIdentity: w.eps.data.get('10.101.1.11')?.identity, heldOld: ids.refs.get(65_800) });
      },
    });
    try {
      w.dp.devices.add('lxc1');
      podLabels.set('default/web-1', { app: 'web' });
      const a = await w.m.add('c1', req(1, { labels: { app: 'from-cni' } }));
      assert.deepEqual(a.labels, { app: 'web' }, 'the Pod object\'s labels win over those of the add');
      assert.equal(a.identity, 65_800);
      await w.settle();
      seen.length = 0;

      podLabels.set('default/web-1', { app: 'web', locked: 'yes' });
      w.m.refreshPod('default', 'web-1');
      const end = Date.now() + 5000;
      while (w.eps.data.get('10.101.1.11')?.identity !== 65_801 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
      await w.settle();
      assert.equal(w.m.get('c1')?.identity, 65_801);
      assert.deepEqual(w.m.get('c1')?.labels, { app: 'web', locked: 'yes' });
      assert.deepEqual(seen, [{ identity: 65_801, mapIdentity: 65_800, heldOld: 1 }], 'policy told the new identity while the maps still held the old one and its reference was held');
      assert.equal(w.ipc.data.get('10.101.1.11/32')?.identity, 65_801);
      assert.equal((w.store.data.get('Endpoint/default/web-1') as Endpoint).status.identity.id, 65_801, 'published');
      assert.deepEqual((w.store.data.get('Endpoint/default/web-1') as Endpoint).metadata.labels, { app: 'web', locked: 'yes' });
      while (ids.refs.get(65_800) !== 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
      assert.equal(ids.refs.get(65_800), 0, 'old reference dropped');
      const rec = JSON.parse(await readFile(join(dir, 'endpoints', 'c1.json'), 'utf8')) as { labels: unknown; identity: number };
      assert.deepEqual([rec.labels, rec.identity], [{ app: 'web', locked: 'yes' }, 65_801], 'persisted');

      // Unchanged labels: nothing happens.
      seen.length = 0;
      w.m.refreshPod('default', 'web-1');
      await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual(seen, []);
    } finally {
      await w.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('store publication', () => {
  it('compares what matters: not uid, resourceVersion, annotations or key order', async () => {
    const { endpointObject, samePublished } = await import('./store-publisher.ts');
    const a = endpointObject({ namespace: 'default', podName: 'w', uid: 'u1', labels: { a: '1', b: '2' }, endpointID: 1, identity: 65_800, identityLabels: ['k8s:a=1'], ip: '10.101.1.5', nodeName: 'node1', nodeIP: '10.1.0.1' });
    const b = { ...a, metadata: { ...a.metadata, uid: 'u2', resourceVersion: '7', labels: { b: '2', a: '1' } } };
    assert.equal(samePublished(a, b), true);
    assert.equal(samePublished(a, { ...a, status: { ...a.status, identity: { id: 65_801, labels: ['k8s:a=1'] } } }), false);
    assert.equal(samePublished(a, { ...a, metadata: { ...a.metadata, labels: { a: '1' } } }), false);
  });
});

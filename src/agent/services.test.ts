import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Cache } from '../clustermesh/cache.ts';
import type { GlobalService, RemoteService } from '../clustermesh/clustermesh.ts';
import type { RemoteClusterStatus } from '../clustermesh/remote-cluster.ts';
import type { MapHandle } from '../datapath/maps/codec.ts';
import * as affinityMap from '../datapath/maps/affinity.ts';
import * as backendSlotsMap from '../datapath/maps/backend-slots.ts';
import * as backendsMap from '../datapath/maps/backends.ts';
import * as ctMap from '../datapath/maps/ct.ts';
import * as maglevMap from '../datapath/maps/maglev.ts';
import * as revnatMap from '../datapath/maps/revnat.ts';
import * as lbHintMap from '../datapath/maps/lb-hint.ts';
import * as servicesMap from '../datapath/maps/services.ts';
import { parseObject, selectorBackends, type EndpointSlice, type Pod, type Service } from '../model/index.ts';
import { ResourceCache } from '../sources/resource.ts';
import { RemoteTracker, ServiceManager, frontendSpecs, parseFrontendKey, type RemoteBackendSet, type ServiceMaps } from './services.ts';

const silent = { info: () => undefined, warn: () => undefined, debug: () => undefined };

function pod(name: string, ip: string | undefined, o: { labels?: Record<string, string>; ready?: boolean; ns?: string; ports?: Array<{ name?: string; containerPort: number; protocol?: 'TCP' | 'UDP' }> } = {}): Pod {
  return parseObject('Pod', {
    kind: 'Pod',
    metadata: { name, namespace: o.ns ?? 'default', labels: o.labels ?? { app: 'web' } },
    spec: { containers: [{ name: 'c', ports: o.ports ?? [{ name: 'http', containerPort: 8080 }] }] },
    status: { phase: 'Running', ...(ip ? { podIP: ip } : {}), conditions: [{ type: 'Ready', status: o.ready === false ? 'False' : 'True' }] },
  });
}

function service(o: { name?: string; vip?: string; annotations?: Record<string, string>; ports?: unknown[]; affinity?: boolean } = {}): Service {
  return parseObject('Service', {
    kind: 'Service',
    metadata: { name: o.name ?? 'web', namespace: 'default', annotations: o.annotations ?? {} },
    spec: {
      clusterIP: o.vip ?? '10.96.0.10',
      selector: { app: 'web' },
      ports: o.ports ?? [{ name: 'http', port: 80, targetPort: 'http' }],
      ...(o.affinity ? { sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } } } : {}),
    },
  });
}

function counterIds() {
  const s = new Map<string, number>();
  const b = new Map<string, number>();
  return {
    service: (k: string) => s.get(k) ?? (s.set(k, s.size + 1), s.size),
    backend: (k: string) => b.get(k) ?? (b.set(k, b.size + 100), b.size + 99),
  };
}

/** frontendSpecs with the local backends picked by the service's selector (the store source's path). */
const specsOf = (svc: Service, pods: Pod[], ...rest: [RemoteBackendSet[], number, ReturnType<typeof counterIds>]) => frontendSpecs(svc, selectorBackends(svc, pods), ...rest);

describe('frontendSpecs', () => {
  it('one frontend per TCP/UDP port; named target ports resolved per pod; unready pods kept, flagged; others left out', () => {
    const svc = service({
      ports: [
        { name: 'http', port: 80, targetPort: 'http' },
        { name: 'dns', port: 53, targetPort: 5353, protocol: 'UDP' },
        { name: 'sctp', port: 99, protocol: 'SCTP' },
      ],
    });
    const pods = [
      pod('a', '10.101.1.10'),
      pod('b', '10.101.1.11', { ports: [{ name: 'http', containerPort: 9090 }] }),
      pod('c', '10.101.2.10', { ports: [] }), // no port named http: only on the numeric port
      pod('d', '10.101.2.11', { ready: false }),
      pod('e', undefined),
      pod('f', '10.101.2.12', { labels: { app: 'other' } }),
      pod('g', '10.101.2.13', { ns: 'other' }),
    ];
    const specs = specsOf(svc, pods, [], 1, counterIds());
    assert.deepEqual(specs.map((s) => [s.vip, s.port, s.protocol]), [['10.96.0.10', 80, 'TCP'], ['10.96.0.10', 53, 'UDP']]);
    const http = specs[0]!.backends.map((b) => [b.ip, b.port, b.ready, b.local]);
    assert.deepEqual(http, [
      ['10.101.1.10', 8080, true, true],
      ['10.101.1.11', 9090, true, true],
      ['10.101.2.11', 8080, false, true],
    ]);
    assert.deepEqual(specs[1]!.backends.map((b) => b.ip), ['10.101.1.10', '10.101.1.11', '10.101.2.10', '10.101.2.11']);
    assert.ok(specs[1]!.backends.every((b) => b.port === 5353));
    assert.equal(specs[0]!.topologyAffinity, 'none');
    assert.equal(specs[0]!.sessionAffinity, undefined);
    assert.deepEqual(specsOf(service({ vip: 'None' }), pods, [], 1, counterIds()), [], 'headless: no frontend');
  });

  it('a global service merges remote backends by port name and protocol; a local one ignores them; shared:"false" keeps its own', () => {
    const remote: RemoteBackendSet[] = [
      { cluster: 'cluster2', clusterId: 2, ip: '10.102.1.10', ports: [{ name: 'http', protocol: 'TCP', port: 8080 }], clusterGone: false },
      { cluster: 'cluster3', clusterId: 3, ip: '10.103.1.10', ports: [{ name: 'other', protocol: 'TCP', port: 8080 }], clusterGone: false },
      { cluster: 'cluster4', clusterId: 4, ip: '10.104.1.10', ports: [{ name: 'http', protocol: 'UDP', port: 8080 }], clusterGone: false },
      { cluster: 'cluster5', clusterId: 5, ip: '10.105.1.10', ports: [{ name: 'http', protocol: 'TCP', port: 8081 }], clusterGone: true },
    ];
    const local = [pod('a', '10.101.1.10')];
    const plain = specsOf(service(), local, remote, 1, counterIds());
    assert.deepEqual(plain[0]!.backends.map((b) => b.ip), ['10.101.1.10']);
    const global = specsOf(service({ annotations: { 'service.cilium.io/global': 'true', 'service.cilium.io/affinity': 'local' } }), local, remote, 1, counterIds());
    assert.deepEqual(global[0]!.backends.map((b) => [b.ip, b.port, b.clusterId, b.local, b.clusterGone]), [
      ['10.101.1.10', 8080, 1, true, false],
      ['10.102.1.10', 8080, 2, false, false],
      ['10.105.1.10', 8081, 5, false, true],
    ]);
    assert.equal(global[0]!.topologyAffinity, 'local');
    const legacyUnshared = specsOf(service({ annotations: { 'io.cilium/global-service': 'true', 'service.cilium.io/shared': 'false' } }), local, remote, 1, counterIds());
    assert.equal(legacyUnshared[0]!.backends.length, 3, 'not shared = not offered; it still uses its own and remote backends');
    const aff = specsOf(service({ affinity: true }), local, [], 1, counterIds());
    assert.deepEqual(aff[0]!.sessionAffinity, { timeoutSeconds: 60 });
    assert.equal(aff[0]!.algorithm, 'slots');
    assert.equal(specsOf(service({ annotations: { 'service.cilium.io/lb-algorithm': 'maglev' } }), local, [], 1, counterIds())[0]!.algorithm, 'maglev');
  });
});

describe('RemoteTracker', () => {
  const st = (name: string, state: RemoteClusterStatus['state'], connected: boolean) => ({ name, state, connected });
  it('expires an unreachable cluster after the TTL, brings it back when it reconnects; TTL 0 never expires', () => {
    const t = new RemoteTracker(5000);
    assert.deepEqual(t.update([st('c2', 'ready', true)], 0), ['c2']);
    assert.deepEqual(t.update([st('c2', 'disconnected', false)], 1000), []);
    assert.equal(t.view('c2').expired, false);
    assert.deepEqual(t.update([st('c2', 'connecting', false)], 5999), []);
    assert.deepEqual(t.update([st('c2', 'connecting', false)], 6000), ['c2']);
    assert.deepEqual(t.expiredClusters(), ['c2']);
    assert.deepEqual(t.update([st('c2', 'ready', true)], 7000), ['c2']);
    assert.equal(t.view('c2').expired, false);
    const never = new RemoteTracker(0);
    never.update([st('c2', 'disconnected', false)], 0);
    never.update([st('c2', 'disconnected', false)], 1e9);
    assert.equal(never.view('c2').expired, false);
  });
  it('a reachable cluster without cluster-config announced it is gone; a removed cluster is forgotten', () => {
    const t = new RemoteTracker(0);
    t.update([st('c2', 'ready', true)], 0);
    assert.deepEqual(t.update([st('c2', 'waiting-config', true)], 1), ['c2']);
    assert.deepEqual(t.goneClusters(), ['c2']);
    assert.deepEqual(t.update([], 2), ['c2']);
    assert.deepEqual(t.view('c2'), { gone: false, expired: false });
  });
});

// ---- the manager over in-memory maps

type Op = string;

function fakeMap(name: string, log: Op[], describe: (k: Buffer) => string): MapHandle & { store: Map<string, Buffer> } {
  const store = new Map<string, Buffer>();
  return {
    store,
    lookup: (k) => store.get(k.toString('hex')),
    update: (k, v) => {
      log.push(`update ${name} ${describe(k)}`);
      store.set(k.toString('hex'), Buffer.from(v));
    },
    delete: (k) => {
      log.push(`delete ${name} ${describe(k)}`);
      return store.delete(k.toString('hex'));
    },
    *entries() {
      for (const [k, v] of store) yield [Buffer.from(k, 'hex'), v];
    },
  };
}

function fakeMaps(log: Op[]): ServiceMaps {
  const fk = (k: Buffer) => {
    const d = servicesMap.decodeKey(k);
    return `${d.vip}:${d.port}/${d.protocol}`;
  };
  const id = (k: Buffer) => String(k.readUInt32LE(0));
  const slot = (k: Buffer) => {
    const d = backendSlotsMap.decodeKey(k);
    return `${d.serviceId}/${d.slot}`;
  };
  return {
    services: fakeMap('services', log, fk),
    backends: fakeMap('backends', log, id),
    backendSlots: fakeMap('slots', log, slot),
    maglev: fakeMap('maglev', log, id),
    revnat: fakeMap('revnat', log, id),
    ct: fakeMap('ct', log, () => 'ct'),
    affinity: fakeMap('affinity', log, () => 'affinity'),
    lbHint: fakeMap('hint', log, () => 'hint'),
  };
}

class World {
  readonly log: Op[] = [];
  readonly maps = fakeMaps(this.log);
  services = new ResourceCache<Service>('Service');
  pods = new ResourceCache<Pod>('Pod');
  slices = new ResourceCache<EndpointSlice>('EndpointSlice');
  readonly global = new Cache<string, GlobalService>();
  readonly remoteServices = new Cache<string, RemoteService>();
  remotes: Array<Pick<RemoteClusterStatus, 'name' | 'state' | 'connected' | 'clusterId'>> = [];
  synced = true;

  manager(o: { ttlMs?: number; from?: 'selectors' | 'endpointslices'; pruneBlocker?: () => string | null } = {}): ServiceManager {
    // The resources the backends come from have listed; what a test holds back is canProgram (`synced`).
    this.pods.markSynced();
    this.slices.markSynced();
    return new ServiceManager({
      clusterName: 'cluster1',
      clusterId: 1,
      services: this.services,
      backends: o.from === 'endpointslices' ? { from: 'endpointslices', endpointSlices: this.slices } : { from: 'selectors', pods: this.pods },
      mesh: { globalServices: this.global, services: this.remoteServices, status: () => ({ remotes: this.remotes }) },
      maps: () => this.maps,
      canProgram: () => this.synced,
      pruneBlocker: o.pruneBlocker ?? (() => (this.synced ? null : 'not synced')),
      cacheTTLMs: o.ttlMs ?? 0,
      remotePollMs: 10,
      gcIntervalMs: 0,
      log: silent,
    });
  }

  servicesMap() {
    return new Map([...servicesMap.entries(this.maps.services)].map(([k, v]) => [`${k.vip}:${k.port}/${k.protocol}`, v]));
  }
  backends() {
    return new Map(backendsMap.entries(this.maps.backends));
  }
  slots(serviceId: number): number[] {
    return [...backendSlotsMap.entries(this.maps.backendSlots)].filter(([k]) => k.serviceId === serviceId).sort(([a], [b]) => a.slot - b.slot).map(([, v]) => v);
  }
  /** The backend IPs a frontend's slots point at. */
  slotIps(fk: string): string[] {
    const svc = this.servicesMap().get(fk);
    assert.ok(svc, `${fk} programmed`);
    const b = this.backends();
    return this.slots(svc.serviceId).map((id) => b.get(id)!.ip).sort();
  }
}

/** Index of the first op matching re (asserts there is one). */
function at(log: Op[], re: RegExp): number {
  const i = log.findIndex((l) => re.test(l));
  assert.ok(i >= 0, `no op matches ${re}:\n${log.join('\n')}`);
  return i;
}
function last(log: Op[], re: RegExp): number {
  for (let i = log.length - 1; i >= 0; i--) if (re.test(log[i]!)) return i;
  assert.fail(`no op matches ${re}:\n${log.join('\n')}`);
}

async function until(what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.fail(`timed out waiting for ${what}`);
}

describe('ServiceManager', () => {
  it('writes backends, slots and revnat before the service entry; on shrink and removal the service entry first', async () => {
    const w = new World();
    w.services.set(service());
    for (const [n, ip] of [['a', '10.101.1.10'], ['b', '10.101.1.11'], ['c', '10.101.2.10']] as const) w.pods.set(pod(n, ip));
    w.services.markSynced();
    w.pods.markSynced();
    const m = w.manager();
    const unsub = m.subscribe();
    await m.start();
    await m.flush();
    assert.deepEqual(w.slotIps('10.96.0.10:80/TCP'), ['10.101.1.10', '10.101.1.11', '10.101.2.10']);
    const svc = w.servicesMap().get('10.96.0.10:80/TCP')!;
    assert.equal(svc.backendCount, 3);
    assert.deepEqual(revnatMap.lookup(w.maps.revnat, svc.revnatId), { vip: '10.96.0.10', port: 80 });
    assert.ok(last(w.log, /update (backends|slots|revnat)/) < at(w.log, /update services/), `backends first:\n${w.log.join('\n')}`);
    assert.deepEqual(m.reconcilerList.map((r) => r.status().pruneBlocked), [null, null, null, null, null], 'programmed: pruning may run');

    // a pod becomes unready, another goes: the service shrinks first, then the slot and the backend go
    w.log.length = 0;
    w.pods.set(pod('b', '10.101.1.11', { ready: false }));
    w.pods.remove({ namespace: 'default', name: 'c' });
    await until('the shrink', () => w.servicesMap().get('10.96.0.10:80/TCP')?.backendCount === 1);
    await m.flush();
    assert.deepEqual(w.slotIps('10.96.0.10:80/TCP'), ['10.101.1.10']);
    const b = [...w.backends().values()];
    assert.deepEqual(b.map((x) => [x.ip, x.notReady]).sort(), [['10.101.1.10', false], ['10.101.1.11', true]], 'the unready pod keeps its backend entry, flagged');
    const svcUpdate = at(w.log, /update services/);
    assert.ok(svcUpdate < at(w.log, /delete slots/), `slots pruned after the count dropped:\n${w.log.join('\n')}`);
    assert.ok(svcUpdate < at(w.log, /delete backends/), 'backend deleted after the service stopped using it');
    assert.ok(last(w.log, /update backends/) < svcUpdate, 'the unready flag is written before the service changes');

    // the service goes: its entry first, then everything it pointed at
    w.log.length = 0;
    w.services.remove({ namespace: 'default', name: 'web' });
    await until('the removal', () => w.backends().size === 0);
    await m.flush();
    assert.ok(at(w.log, /delete services/) < at(w.log, /delete (backends|slots|revnat)/), w.log.join('\n'));
    assert.equal(w.servicesMap().size, 0);
    assert.equal([...backendSlotsMap.entries(w.maps.backendSlots)].length, 0);
    assert.equal([...revnatMap.entries(w.maps.revnat)].length, 0);
    assert.deepEqual(m.list(), []);
    unsub.forEach((u) => u());
    await m.stop();
  });

  it('keeps cm_lb_hint: a VIP\'s and its backends\' bits before the service entry is written, cleared once it is gone', async () => {
    const vip = '10.96.0.10';
    const pods = ['10.101.1.10', '10.101.1.11'];
    const other = '10.101.9.9'; // no service, no backend
    for (const a of [vip, ...pods]) assert.notEqual(lbHintMap.hintBit(a), lbHintMap.hintBit(other), 'the test needs addresses of other bits');
    const w = new World();
    w.services.set(service());
    pods.forEach((ip, i) => w.pods.set(pod(`p${i}`, ip)));
    w.services.markSynced();
    w.pods.markSynced();
    // what the hint held at each write or delete of a cm_services entry
    const atServiceOps: Buffer[] = [];
    const svcMap = w.maps.services;
    const { update, delete: del } = svcMap;
    svcMap.update = (k, v, f) => (atServiceOps.push(Buffer.from(lbHintMap.read(w.maps.lbHint))), update(k, v, f));
    svcMap.delete = (k) => (atServiceOps.push(Buffer.from(lbHintMap.read(w.maps.lbHint))), del(k));
    const m = w.manager();
    const unsub = m.subscribe();
    await m.start();
    await m.flush();
    assert.equal(atServiceOps.length, 1);
    assert.ok(lbHintMap.hasBit(atServiceOps[0]!, 'vip', vip), 'the VIP\'s bit is set before its entry is written');
    for (const ip of pods) assert.ok(lbHintMap.hasBit(atServiceOps[0]!, 'backend', ip), `${ip}'s bit before the entry that names it`);
    let h = lbHintMap.read(w.maps.lbHint);
    assert.ok(lbHintMap.isValid(h), 'valid once written');
    assert.ok(lbHintMap.mayBe(h, 'vip', vip));
    for (const ip of pods) assert.ok(lbHintMap.mayBe(h, 'backend', ip));
    assert.ok(!lbHintMap.mayBe(h, 'vip', other) && !lbHintMap.mayBe(h, 'backend', other), 'another address is skipped');
    assert.ok(!lbHintMap.mayBe(h, 'vip', pods[0]!), 'a backend is no VIP');

    // a change that moves no address (session affinity on) rewrites the entry, not the hint
    const hintWrites = () => w.log.filter((op) => op === 'update hint hint').length;
    const before = hintWrites();
    assert.ok(before > 0, 'the hint was written (the count sees its writes)');
    w.services.set(service({ affinity: true }));
    await until('the affinity', () => [...w.servicesMap().values()].some((v) => v.sessionAffinity));
    await m.flush();
    assert.equal(atServiceOps.length, 2, 'the entry was written again');
    assert.equal(hintWrites(), before, 'no write of the hint: no bit changed');

    // the service goes: its bits stay until its entry is deleted, then go
    w.services.remove({ namespace: 'default', name: 'web' });
    await until('the removal', () => w.servicesMap().size === 0 && w.backends().size === 0);
    await m.flush();
    assert.ok(lbHintMap.hasBit(atServiceOps.at(-1)!, 'vip', vip), 'the VIP\'s bit is still set when its entry is deleted');
    h = lbHintMap.read(w.maps.lbHint);
    assert.ok(lbHintMap.isValid(h));
    assert.ok(!lbHintMap.mayBe(h, 'vip', vip), 'the VIP\'s bit is cleared after');
    for (const ip of pods) assert.ok(!lbHintMap.mayBe(h, 'backend', ip), `${ip}'s bit is cleared after`);
    unsub.forEach((u) => u());
    await m.stop();
  });

  it('keeps the bits of what the maps hold while pruning waits (a restart, a remote cluster not synced yet)', async () => {
    const stale = { vip: '10.96.7.7', backend: '10.102.7.7' }; // programmed before a restart, unknown to this agent
    const w = new World();
    servicesMap.update(w.maps.services, { vip: stale.vip, port: 80, protocol: 'TCP' }, { serviceId: 900, revnatId: 900, backendCount: 1, sessionAffinity: false, affinityTimeout: 0, maglev: false });
    backendsMap.update(w.maps.backends, 900, { ip: stale.backend, port: 8080, clusterId: 2, terminating: false, clusterGone: false, notReady: false });
    w.services.set(service());
    w.pods.set(pod('a', '10.101.1.10'));
    w.services.markSynced();
    w.pods.markSynced();
    let blocked = true;
    const m = w.manager({ pruneBlocker: () => (blocked ? 'cluster2 not synced' : null) });
    const unsub = m.subscribe();
    await m.start();
    await m.flush();
    let h = lbHintMap.read(w.maps.lbHint);
    assert.ok(lbHintMap.mayBe(h, 'vip', '10.96.0.10') && lbHintMap.mayBe(h, 'backend', '10.101.1.10'), 'what it programmed');
    assert.ok(lbHintMap.isValid(h) && lbHintMap.mayBe(h, 'vip', stale.vip) && lbHintMap.mayBe(h, 'backend', stale.backend), 'what the maps still hold keeps its bits');

    // pruning may run: the next write of the hint is what the agent programmed
    blocked = false;
    w.pods.set(pod('b', '10.101.1.11'));
    await until('the new backend', () => w.backends().size === 3);
    await m.flush();
    h = lbHintMap.read(w.maps.lbHint);
    assert.ok(lbHintMap.mayBe(h, 'backend', '10.101.1.11'));
    assert.ok(!lbHintMap.mayBe(h, 'vip', stale.vip) && !lbHintMap.mayBe(h, 'backend', stale.backend), 'what it did not program loses its bits');
    unsub.forEach((u) => u());
    await m.stop();
  });

  it('programs nothing before the sources synced; after a restart it adopts the ids and rewrites nothing that is right', async () => {
    const w = new World();
    w.synced = false;
    w.services.set(service({ ports: [{ name: 'http', port: 80, targetPort: 'http' }, { name: 'dns', port: 53, targetPort: 53, protocol: 'UDP' }] }));
    w.services.set(service({ name: 'other', vip: '10.96.0.11', ports: [{ port: 81, targetPort: 8080 }] }));
    for (const [n, ip] of [['a', '10.101.1.10'], ['b', '10.101.1.11']] as const) w.pods.set(pod(n, ip));
    const m1 = w.manager();
    const u1 = m1.subscribe();
    await m1.start();
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(w.log.filter((l) => l.startsWith('update')), [], 'nothing written while not synced');
    w.synced = true;
    await until('programmed', () => w.servicesMap().size === 3);
    await m1.flush();
    const before = { services: w.servicesMap(), backends: w.backends() };
    u1.forEach((u) => u());
    await m1.stop();

    // a new agent: same maps, a fresh view of the same sources
    w.log.length = 0;
    const m2 = w.manager();
    assert.deepEqual(m2.adoptIds(), { services: 3, backends: 4 });
    const u2 = m2.subscribe();
    await m2.start();
    await m2.flush();
    await m2.fullSync();
    assert.deepEqual(w.servicesMap(), before.services, 'same service ids');
    assert.deepEqual(w.backends(), before.backends, 'same backend ids');
    assert.deepEqual(w.log.filter((l) => l.startsWith('delete')), [], 'nothing deleted');
    u2.forEach((u) => u());
    await m2.stop();
  });

  it('a global service: remote backends by port name; withheld after the cache TTL, flagged when the cluster is gone, withdrawn when removed', async () => {
    const w = new World();
    w.services.set(service({ annotations: { 'service.cilium.io/global': 'true' } }));
    w.pods.set(pod('a', '10.101.1.10'));
    w.remotes = [{ name: 'cluster2', state: 'ready', connected: true, clusterId: 2 }];
    w.global.set('default/web', {
      namespace: 'default',
      name: 'web',
      clusters: ['cluster2'],
      backends: [{ cluster: 'cluster2', ip: '10.102.1.10', ports: [{ name: 'http', protocol: 'TCP', port: 8080 }] }],
    });
    const m = w.manager({ ttlMs: 100 });
    const u = m.subscribe();
    await m.start();
    await until('both clusters', () => w.servicesMap().get('10.96.0.10:80/TCP')?.backendCount === 2);
    assert.deepEqual(w.slotIps('10.96.0.10:80/TCP'), ['10.101.1.10', '10.102.1.10']);
    const info = m.list()[0]!;
    assert.deepEqual(Object.keys(info.frontends[0]!.backends).sort(), ['cluster1', 'cluster2']);
    assert.equal(info.frontends[0]!.tier, 'all');
    assert.deepEqual(info.remoteClusters, ['cluster2']);
    assert.equal(m.status().remoteBackends, 1);

    // the cluster announces it is gone: kept, flagged, no new connections
    w.remotes = [{ name: 'cluster2', state: 'waiting-config', connected: true, clusterId: 2 }];
    await until('flagged', () => [...w.backends().values()].some((b) => b.clusterGone));
    await until('not chosen', () => w.servicesMap().get('10.96.0.10:80/TCP')?.backendCount === 1);
    assert.deepEqual(m.status().goneClusters, ['cluster2']);

    // unreachable: kept until the TTL, then withheld
    w.remotes = [{ name: 'cluster2', state: 'disconnected', connected: false, clusterId: 2 }];
    await until('flag cleared', () => [...w.backends().values()].every((b) => !b.clusterGone) && w.backends().size === 2);
    await until('withheld after the TTL', () => w.backends().size === 1);
    assert.deepEqual(m.status().expiredClusters, ['cluster2']);
    w.remotes = [{ name: 'cluster2', state: 'ready', connected: true, clusterId: 2 }];
    await until('back', () => w.servicesMap().get('10.96.0.10:80/TCP')?.backendCount === 2);

    // removed from the mesh: ClusterMesh drains it
    w.global.delete('default/web');
    await until('withdrawn', () => w.backends().size === 1);
    assert.deepEqual(w.slotIps('10.96.0.10:80/TCP'), ['10.101.1.10']);
    u.forEach((x) => x());
    await m.stop();
  });

  it('ClientIP affinity: entries of a backend that left are deleted; gc drops entries of frontends without affinity', async () => {
    const w = new World();
    w.services.set(service({ affinity: true }));
    w.pods.set(pod('a', '10.101.1.10'));
    w.pods.set(pod('b', '10.101.1.11'));
    const m = w.manager();
    const u = m.subscribe();
    await m.start();
    await until('programmed', () => w.servicesMap().get('10.96.0.10:80/TCP')?.backendCount === 2);
    const svc = w.servicesMap().get('10.96.0.10:80/TCP')!;
    assert.equal(svc.sessionAffinity, true);
    assert.equal(svc.affinityTimeout, 60);
    const ids = [...w.backends()].map(([id]) => id).sort();
    const now = ctMap.monotonicSeconds();
    affinityMap.update(w.maps.affinity, { client: '10.101.2.1', serviceId: svc.serviceId }, { backendId: ids[0]!, lastUsed: now });
    affinityMap.update(w.maps.affinity, { client: '10.101.2.2', serviceId: svc.serviceId }, { backendId: ids[1]!, lastUsed: now });
    affinityMap.update(w.maps.affinity, { client: '10.101.2.3', serviceId: 999 }, { backendId: ids[1]!, lastUsed: now });
    const ipOf = new Map([...w.backends()].map(([id, v]) => [id, v.ip]));
    w.pods.remove({ namespace: 'default', name: ipOf.get(ids[0]!) === '10.101.1.10' ? 'a' : 'b' });
    await until('shrunk', () => w.servicesMap().get('10.96.0.10:80/TCP')?.backendCount === 1);
    await m.flush();
    assert.deepEqual([...affinityMap.entries(w.maps.affinity)].map(([k]) => k.client).sort(), ['10.101.2.2', '10.101.2.3']);
    m.gc();
    assert.deepEqual([...affinityMap.entries(w.maps.affinity)].map(([k]) => k.client), ['10.101.2.2'], 'unknown service id collected');
    u.forEach((x) => x());
    await m.stop();
  });

  it('Maglev (annotation lb-algorithm): the table is written before the service, deleted after it; switching back to slots drops it', async () => {
    const w = new World();
    const maglev = service({ annotations: { 'service.cilium.io/lb-algorithm': 'maglev' } });
    w.services.set(maglev);
    w.pods.set(pod('a', '10.101.1.10'));
    w.pods.set(pod('b', '10.101.1.11'));
    const m = w.manager();
    const u = m.subscribe();
    await m.start();
    await until('programmed', () => w.servicesMap().get('10.96.0.10:80/TCP')?.backendCount === 2);
    await m.flush();
    const svc = w.servicesMap().get('10.96.0.10:80/TCP')!;
    assert.equal(svc.maglev, true);
    const table = maglevMap.lookup(w.maps.maglev, svc.serviceId)!;
    assert.equal(new Set(Array.from(table)).size, 2, 'both backends own entries');
    assert.deepEqual(w.slots(svc.serviceId), []);
    assert.ok(at(w.log, /update maglev/) < at(w.log, /update services/));
    w.log.length = 0;
    w.services.set(service());
    await until('slots', () => w.servicesMap().get('10.96.0.10:80/TCP')?.maglev === false);
    await m.flush();
    assert.equal(w.slots(svc.serviceId).length, 2);
    assert.equal(maglevMap.lookup(w.maps.maglev, svc.serviceId), undefined);
    assert.ok(at(w.log, /update services/) < at(w.log, /delete maglev/), w.log.join('\n'));
    u.forEach((x) => x());
    await m.stop();
  });

  it('with EndpointSlices: a selectorless Service, graceful termination in the maps, nothing before the slices listed', async () => {
    const w = new World();
    // No selector: only its (hand-written) slices give it backends; pods matching nothing are irrelevant.
    const svc = parseObject('Service', { kind: 'Service', metadata: { name: 'ext', namespace: 'default' }, spec: { clusterIP: '10.96.0.20', ports: [{ name: 'http', port: 80 }] } });
    const slice = (name: string, eps: Array<[string, Record<string, boolean>?]>): EndpointSlice =>
      parseObject('EndpointSlice', {
        kind: 'EndpointSlice',
        metadata: { name, namespace: 'default', labels: { 'kubernetes.io/service-name': 'ext' } },
        addressType: 'IPv4',
        endpoints: eps.map(([ip, conditions]) => ({ addresses: [ip], conditions: conditions ?? {} })),
        ports: [{ name: 'http', port: 8080 }],
      });
    w.services.set(svc);
    w.services.markSynced();
    w.pods.set(pod('a', '10.101.1.10', { labels: { app: 'web' } }));
    w.slices.set(slice('ext-1', [['10.101.5.1'], ['10.101.5.2', { ready: false, serving: true, terminating: true }]]));
    // The slices have not listed yet (not marked synced): nothing is programmed, even with canProgram true.
    const slices = w.slices;
    const m = new ServiceManager({
      clusterName: 'cluster1',
      clusterId: 1,
      services: w.services,
      backends: { from: 'endpointslices', endpointSlices: slices },
      mesh: { globalServices: w.global, services: w.remoteServices, status: () => ({ remotes: w.remotes }) },
      maps: () => w.maps,
      canProgram: () => true,
      pruneBlocker: () => null,
      remotePollMs: 10,
      gcIntervalMs: 0,
      log: silent,
    });
    const u = m.subscribe();
    await m.start();
    await m.flush();
    assert.equal(w.servicesMap().size, 0, 'nothing before the EndpointSlices listed');
    assert.equal(m.status().waitingForSync, true);
    slices.markSynced();
    await until('programmed', () => w.servicesMap().get('10.96.0.20:80/TCP')?.backendCount === 1);
    await m.flush();
    assert.deepEqual(w.slotIps('10.96.0.20:80/TCP'), ['10.101.5.1']);
    const flags = () => Object.fromEntries([...w.backends().values()].map((b) => [`${b.ip}:${b.port}`, [b.terminating, b.notReady]]));
    assert.deepEqual(flags(), { '10.101.5.1:8080': [false, false], '10.101.5.2:8080': [true, false] }, 'the draining endpoint keeps its connections, takes no new ones');

    // The ready endpoint goes; the draining one is all that serves: it takes new connections (graceful termination).
    slices.set(slice('ext-1', [['10.101.5.2', { ready: false, serving: true, terminating: true }]]));
    await until('the fallback', () => w.slotIps('10.96.0.20:80/TCP').join() === '10.101.5.2');
    await m.flush();
    assert.deepEqual(flags(), { '10.101.5.2:8080': [false, false] }, 'no terminating flag while it is the fallback (the datapath refuses new connections to flagged backends)');
    const info = m.list().find((x) => x.name === 'ext')!;
    assert.deepEqual(info.frontends[0]!.backends.cluster1!.map((b) => [b.ip, b.active, b.terminating]), [['10.101.5.2', true, false]]);

    // A new ready endpoint in a second slice: new connections go there only; the draining one is flagged again.
    slices.set(slice('ext-2', [['10.101.5.3', { ready: true }]]));
    await until('the new endpoint', () => w.slotIps('10.96.0.20:80/TCP').join() === '10.101.5.3');
    await m.flush();
    assert.deepEqual(flags(), { '10.101.5.2:8080': [true, false], '10.101.5.3:8080': [false, false] });
    // Pods never mattered.
    w.pods.set(pod('b', '10.101.1.11'));
    await m.flush();
    assert.deepEqual(w.slotIps('10.96.0.20:80/TCP'), ['10.101.5.3']);
    // The slices go: the frontend stays, without backends.
    slices.remove({ namespace: 'default', name: 'ext-1' });
    slices.remove({ namespace: 'default', name: 'ext-2' });
    await until('no backends', () => w.backends().size === 0);
    assert.equal(w.servicesMap().get('10.96.0.20:80/TCP')?.backendCount, 0);
    u.forEach((x) => x());
    await m.stop();
  });

  it('parseFrontendKey is the inverse of the reconciler key', () => {
    assert.deepEqual(parseFrontendKey('10.96.0.10:53/UDP'), { vip: '10.96.0.10', port: 53, protocol: 'UDP' });
    assert.throws(() => parseFrontendKey('10.96.0.10:53'), /not a frontend key/);
  });
});

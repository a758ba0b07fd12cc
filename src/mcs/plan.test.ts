import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import dnsPacket from 'dns-packet';
import { parseExportSpec, serviceExportKey, type ExportSpec } from './export.ts';
import {
  derivedServiceName,
  endpointsOfClusterService,
  endpointsOfSlices,
  importSliceName,
  MANAGED_BY,
  MANAGED_BY_LABEL,
  planImportSlices,
  planMcs,
  SERVICE_NAME_LABEL,
  SLICE_MANAGED_BY_LABEL,
  SOURCE_CLUSTER_LABEL,
  withTransitions,
  type ClusterEndpoints,
  type LocalService,
} from './plan.ts';
import { answerQuery, resolveClustersetName, staticDnsData } from '../lab/dns.ts';
import { localServiceOf } from '../apiserver/mcs.ts';
import { clusterConfigValue } from '../apiserver/heartbeat.ts';
import { exportedReadPrefixes } from '../clustermesh/keys.ts';
import { serviceExportsPrefix } from './export.ts';
import { parseObject, type Service } from '../model/index.ts';

const svc = (name: string, o: Partial<LocalService> = {}): LocalService => ({
  namespace: 'shop',
  name,
  type: 'ClusterIP',
  clusterIP: '10.96.0.40',
  ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 }],
  selector: { app: name },
  sessionAffinity: 'None',
  affinityTimeoutSeconds: undefined,
  labels: {},
  annotations: {},
  ...o,
});
const exp = (name: string, at = '2026-01-01T00:00:00Z') => ({ namespace: 'shop', name, creationTimestamp: at, conditions: [] });
const remote = (cluster: string, o: Partial<ExportSpec> = {}): ExportSpec => ({
  cluster,
  namespace: 'shop',
  name: 'cart',
  exportCreationTimestamp: '2026-01-02T00:00:00Z',
  ports: [{ name: 'http', protocol: 'TCP', port: 80 }],
  type: 'ClusterSetIP',
  sessionAffinity: 'None',
  ...o,
});
const services = (...s: LocalService[]) => new Map(s.map((x) => [`${x.namespace}/${x.name}`, x]));

describe('planMcs: what one cluster wants from its exports and the remotes', () => {
  test('a valid local export is published (Cilium layout), merged with a remote one; the import keeps both clusters, oldest first', () => {
    const p = planMcs({ cluster: 'c1', exports: [exp('cart')], services: services(svc('cart')), namespaces: new Set(['shop']), remote: [remote('c2')] });
    const key = serviceExportKey('c1', 'shop', 'cart');
    assert.deepEqual([...p.exports.keys()], [key]);
    const published = parseExportSpec(key, p.exports.get(key)!, 'c1');
    assert.deepEqual(published.ports, [{ name: 'http', protocol: 'TCP', port: 80 }]);
    const i = p.imports.get('shop/cart')!;
    assert.deepEqual(i.clusters, ['c1', 'c2']);
    assert.equal(i.type, 'ClusterSetIP');
    // The derived Service: global, shared (we export), our pods by the Service's selector, our targetPort.
    assert.equal(i.derived.name, derivedServiceName('cart'));
    assert.deepEqual(i.derived.selector, { app: 'cart' });
    assert.deepEqual(i.derived.ports, [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 }]);
    assert.deepEqual(i.derived.annotations, { 'service.cilium.io/global': 'true', 'service.cilium.io/shared': 'true' });
    const conds = p.exportConditions.get('shop/cart')!;
    assert.deepEqual(conds.map((c) => `${c.type}=${c.status}/${c.reason}`), ['Valid=True/Valid', 'Ready=True/Exported', 'Conflict=False/NoConflicts']);
  });

  test('a cluster that only imports: a derived Service without selector, not shared; nothing published', () => {
    const p = planMcs({ cluster: 'c3', exports: [], services: services(), namespaces: new Set(['shop']), remote: [remote('c1'), remote('c2', { exportCreationTimestamp: '2026-01-01T00:00:00Z' })] });
    assert.equal(p.exports.size, 0);
    const i = p.imports.get('shop/cart')!;
    assert.deepEqual(i.clusters, ['c2', 'c1']);
    assert.equal(i.derived.selector, undefined);
    assert.equal(i.derived.annotations['service.cilium.io/shared'], 'false');
    assert.deepEqual(i.derived.ports, [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 80 }]);
  });

  test('no import where the namespace does not exist; the import goes with the last export', () => {
    assert.equal(planMcs({ cluster: 'c3', exports: [], services: services(), namespaces: new Set(['other']), remote: [remote('c1')] }).imports.size, 0);
    assert.equal(planMcs({ cluster: 'c3', exports: [], services: services(), namespaces: new Set(['shop']), remote: [] }).imports.size, 0);
  });

  test('Valid is False with NoService / ServiceType; such exports are not published and import nothing', () => {
    const p = planMcs({ cluster: 'c1', exports: [exp('gone'), exp('ext')], services: services(svc('ext', { type: 'ExternalName' })), namespaces: new Set(['shop']), remote: [] });
    assert.equal(p.exports.size, 0);
    assert.equal(p.imports.size, 0);
    assert.deepEqual(p.exportConditions.get('shop/gone')!.map((c) => `${c.type}=${c.status}/${c.reason}`), ['Valid=False/NoService', 'Ready=False/NoService']);
    assert.deepEqual(p.exportConditions.get('shop/ext')!.map((c) => `${c.type}=${c.status}/${c.reason}`), ['Valid=False/ServiceType', 'Ready=False/ServiceType']);
  });

  test('a protocol clash: Conflict True (PortConflict) on the local export, the oldest definition kept', () => {
    const p = planMcs({ cluster: 'c2', exports: [exp('cart', '2026-01-03T00:00:00Z')], services: services(svc('cart', { ports: [{ name: 'http', protocol: 'UDP', port: 80, targetPort: 8080 }] })), namespaces: new Set(['shop']), remote: [remote('c1')] });
    const c = p.exportConditions.get('shop/cart')!.find((x) => x.type === 'Conflict')!;
    assert.equal(c.status, 'True');
    assert.equal(c.reason, 'PortConflict');
    assert.match(c.message, /80\/UDP in c2 but 80\/TCP in c1/);
    assert.deepEqual(p.imports.get('shop/cart')!.ports, [{ name: 'http', protocol: 'TCP', port: 80 }]);
  });

  test('a remote value claiming to be this cluster is ignored; headless exports give a headless derived Service', () => {
    const p = planMcs({ cluster: 'c1', exports: [], services: services(), namespaces: new Set(['shop']), remote: [remote('c1'), remote('c2', { type: 'Headless' })] });
    const i = p.imports.get('shop/cart')!;
    assert.deepEqual(i.clusters, ['c2']);
    assert.equal(i.derived.headless, true);
  });

  test('derivedServiceName is a DNS label, the same everywhere, different per name; withTransitions keeps an unchanged time', () => {
    assert.match(derivedServiceName('cart'), /^derived-[0-9a-f]{10}$/);
    assert.equal(derivedServiceName('cart'), derivedServiceName('cart'));
    assert.notEqual(derivedServiceName('cart'), derivedServiceName('carts'));
    const old = [{ type: 'Valid', status: 'True' as const, reason: 'Valid', message: 'x', lastTransitionTime: '2026-01-01T00:00:00Z' }];
    assert.equal(withTransitions([{ type: 'Valid', status: 'True', reason: 'Valid', message: 'y' }], old, 'now')[0]!.lastTransitionTime, '2026-01-01T00:00:00Z');
    assert.equal(withTransitions([{ type: 'Valid', status: 'False', reason: 'NoService', message: 'y' }], old, 'now')[0]!.lastTransitionTime, 'now');
  });

  test('localServiceOf reads what the API returns (ExternalName, named targetPort, affinity)', () => {
    const s = localServiceOf({ metadata: { namespace: 'a', name: 'b', labels: { x: 'y' } }, spec: { type: 'ExternalName', externalName: 'example.org' } });
    assert.equal(s.type, 'ExternalName');
    const t = localServiceOf({ metadata: { namespace: 'a', name: 'b' }, spec: { clusterIP: '10.96.0.9', ports: [{ name: 'web', port: 80, targetPort: 'http' }], selector: { app: 'b' }, sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 30 } } } });
    assert.deepEqual(t.ports, [{ name: 'web', protocol: 'TCP', port: 80, targetPort: 'http' }]);
    assert.equal(t.affinityTimeoutSeconds, 30);
  });
});

test("cluster-config says serviceExportsEnabled when the apiserver publishes exports; a remote cluster's reader may read them", () => {
  assert.equal(clusterConfigValue(3, 255, true), '{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255,"serviceExportsEnabled":true}}');
  assert.equal(clusterConfigValue(3, 255), '{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255,"serviceExportsEnabled":false}}');
  assert.ok(exportedReadPrefixes.includes(serviceExportsPrefix));
});

describe('the lab DNS answers clusterset.local from the derived Services', () => {
  const derived = (name: string, clusterIP: string, labels: Record<string, string>): Service =>
    parseObject('Service', { kind: 'Service', metadata: { namespace: 'shop', name: derivedServiceName(name), labels }, spec: { clusterIP, ports: [{ name: 'http', port: 80 }] } });
  const data = staticDnsData({
    services: [
      derived('cart', '10.96.0.77', { [MANAGED_BY_LABEL]: MANAGED_BY, [SERVICE_NAME_LABEL]: 'cart' }),
      // Someone else's Service with the derived name of "fake": not an import.
      derived('fake', '10.96.0.78', {}),
    ],
  });

  test('<svc>.<ns>.svc.clusterset.local is the import VIP; unknown names NXDOMAIN; other zones are still refused', () => {
    assert.deepEqual(resolveClustersetName(data, 'cart.shop.svc.clusterset.local.'), { kind: 'exists', a: ['10.96.0.77'] });
    assert.deepEqual(resolveClustersetName(data, 'fake.shop.svc.clusterset.local'), { kind: 'nxdomain' });
    assert.deepEqual(resolveClustersetName(data, 'shop.svc.clusterset.local'), { kind: 'exists', a: [] });
    const ask = (name: string) => answerQuery(dnsPacket.decode(dnsPacket.encode({ type: 'query', id: 1, questions: [{ type: 'A', name }] })), data);
    const r = ask('cart.shop.svc.clusterset.local');
    assert.deepEqual(r.answers?.map((a) => (a as { data: string }).data), ['10.96.0.77']);
    assert.equal((r.flags ?? 0) & 0xf, 0);
    assert.equal((ask('nope.shop.svc.clusterset.local').flags ?? 0) & 0xf, 3);
    assert.equal((ask('example.org').flags ?? 0) & 0xf, 5);
  });

  test('a headless import answers every ready endpoint of every cluster, and <hostname>.<cluster>.<svc>.<ns>.svc.clusterset.local', () => {
    const slice = (cluster: string, endpoints: unknown[], labels: Record<string, string> = { [SERVICE_NAME_LABEL]: 'db', [SOURCE_CLUSTER_LABEL]: cluster }) =>
      parseObject('EndpointSlice', { kind: 'EndpointSlice', metadata: { namespace: 'shop', name: importSliceName('db', cluster), labels }, addressType: 'IPv4', endpoints, ports: [] });
    const hd = staticDnsData({
      services: [derived('db', 'None', { [MANAGED_BY_LABEL]: MANAGED_BY, [SERVICE_NAME_LABEL]: 'db' })],
      endpointSlices: [
        slice('c1', [{ addresses: ['10.1.0.9'], hostname: 'db-0' }, { addresses: ['10.1.0.8'], conditions: { ready: false }, hostname: 'db-1' }]),
        slice('c2', [{ addresses: ['10.2.0.5'], conditions: { ready: true }, hostname: 'db-0' }, { addresses: ['10.2.0.6'] }]),
        // The derived Service's own slice (Kubernetes copies the Service's labels): no source cluster, not an import's.
        slice('x', [{ addresses: ['10.3.0.1'] }], { [SERVICE_NAME_LABEL]: 'db' }),
      ],
    });
    assert.deepEqual(resolveClustersetName(hd, 'db.shop.svc.clusterset.local'), { kind: 'exists', a: ['10.1.0.9', '10.2.0.5', '10.2.0.6'] });
    assert.deepEqual(resolveClustersetName(hd, 'db-0.c1.db.shop.svc.clusterset.local'), { kind: 'exists', a: ['10.1.0.9'] });
    assert.deepEqual(resolveClustersetName(hd, 'DB-0.c2.db.shop.svc.clusterset.local.'), { kind: 'exists', a: ['10.2.0.5'] });
    assert.deepEqual(resolveClustersetName(hd, 'db-1.c1.db.shop.svc.clusterset.local'), { kind: 'exists', a: [] }, 'not ready: the name exists with no address');
    assert.deepEqual(resolveClustersetName(hd, 'db-0.c3.db.shop.svc.clusterset.local'), { kind: 'nxdomain' });
    assert.deepEqual(resolveClustersetName(hd, 'db-9.c1.db.shop.svc.clusterset.local'), { kind: 'nxdomain' });
    assert.deepEqual(resolveClustersetName(hd, 'c1.db.shop.svc.clusterset.local'), { kind: 'exists', a: [] });
    // A ClusterSetIP import has no per-endpoint names.
    assert.deepEqual(resolveClustersetName(data, 'db-0.c1.cart.shop.svc.clusterset.local'), { kind: 'nxdomain' });
  });
});

describe('headless imports: one EndpointSlice per exporting cluster', () => {
  const plan = planMcs({
    cluster: 'c3',
    exports: [],
    services: services(),
    namespaces: new Set(['shop']),
    remote: [remote('c1', { name: 'db', type: 'Headless', ports: [{ name: 'pg', protocol: 'TCP', port: 5432 }] }), remote('c2', { name: 'db', type: 'Headless', ports: [{ name: 'pg', protocol: 'TCP', port: 5432 }], exportCreationTimestamp: '2026-01-03T00:00:00Z' }), remote('c1')],
  });

  test('the slices carry the MCS labels, the source cluster (label and annotation), hostnames and ready; no kubernetes.io/service-name', () => {
    const eps = new Map<string, ClusterEndpoints>([
      ['c1', { endpoints: [{ ip: '10.1.0.9', ready: true, hostname: 'db-1' }, { ip: '10.1.0.8', ready: true, hostname: 'db-0' }], ports: [{ name: 'pg', protocol: 'TCP', port: 5432 }] }],
      ['c2', { endpoints: [{ ip: '10.2.0.5', ready: false }, { ip: '10.2.0.5', ready: true, hostname: 'db-0' }], ports: [] }],
      ['c9', { endpoints: [{ ip: '10.9.0.1', ready: true }], ports: [] }],
    ]);
    const slices = planImportSlices(plan.imports, new Map([['shop/db', eps]]));
    assert.deepEqual([...slices.keys()].sort(), [`shop/${importSliceName('db', 'c1')}`, `shop/${importSliceName('db', 'c2')}`], 'one per exporting cluster; c9 exports nothing; cart is not headless');
    const c1 = slices.get(`shop/${importSliceName('db', 'c1')}`)!;
    assert.equal(c1.name, `${derivedServiceName('db')}-c1`);
    assert.deepEqual(c1.labels, { [SERVICE_NAME_LABEL]: 'db', [SOURCE_CLUSTER_LABEL]: 'c1', [MANAGED_BY_LABEL]: MANAGED_BY, [SLICE_MANAGED_BY_LABEL]: MANAGED_BY });
    assert.deepEqual(c1.annotations, { [SOURCE_CLUSTER_LABEL]: 'c1' });
    assert.deepEqual(c1.endpoints, [
      { addresses: ['10.1.0.8'], conditions: { ready: true }, hostname: 'db-0' },
      { addresses: ['10.1.0.9'], conditions: { ready: true }, hostname: 'db-1' },
    ]);
    assert.deepEqual(c1.ports, [{ name: 'pg', protocol: 'TCP', port: 5432 }]);
    // An address listed twice is as ready as its best listing and keeps a hostname.
    assert.deepEqual(slices.get(`shop/${importSliceName('db', 'c2')}`)!.endpoints, [{ addresses: ['10.2.0.5'], conditions: { ready: true }, hostname: 'db-0' }]);
    // A cluster whose endpoints are unknown gets no slice (not an empty one).
    assert.deepEqual([...planImportSlices(plan.imports, new Map([['shop/db', new Map([['c2', eps.get('c2')!]])]])).keys()], [`shop/${importSliceName('db', 'c2')}`]);
  });

  test("a remote's published derived Service and the local exported Service's slices, as endpoints", () => {
    const remoteEps = endpointsOfClusterService({
      backends: { '10.1.0.9': { pg: { Protocol: 'TCP', Port: 5432 } }, '10.1.0.10': { pg: { Protocol: 'TCP', Port: 5432 } }, 'fd00::1': { pg: { Protocol: 'TCP', Port: 5432 } } },
      hostnames: { '10.1.0.9': 'db-0', '10.1.0.77': 'gone' },
    });
    assert.deepEqual(remoteEps, {
      endpoints: [{ ip: '10.1.0.9', ready: true, hostname: 'db-0' }, { ip: '10.1.0.10', ready: true }],
      ports: [{ name: 'pg', protocol: 'TCP', port: 5432 }],
    });
    const local = endpointsOfSlices([
      { addressType: 'IPv4', ports: [{ name: 'pg', port: 5432, protocol: 'TCP' }], endpoints: [{ addresses: ['10.3.0.4'], conditions: { ready: true }, hostname: 'db-0' }, { addresses: ['10.3.0.5'], conditions: { ready: false } }, { addresses: ['10.3.0.6'] }] },
      { addressType: 'IPv6', endpoints: [{ addresses: ['fd00::3'] }] },
    ]);
    assert.deepEqual(local, {
      endpoints: [{ ip: '10.3.0.4', ready: true, hostname: 'db-0' }, { ip: '10.3.0.5', ready: false }, { ip: '10.3.0.6', ready: true }],
      ports: [{ name: 'pg', protocol: 'TCP', port: 5432 }],
    });
  });
});

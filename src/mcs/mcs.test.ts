import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { encodeExportSpec, ExportSpecError, exportSpecOf, parseExportSpec, remoteExportsReadiness, serviceExportKey, serviceExportsSyncedKey, type ExportSpec } from './export.ts';
import { clusterConfigValue } from '../apiserver/heartbeat.ts';
import { conflictCondition, exportValidity, mergeAll, mergeExports } from './merge.ts';
import { parseObject } from '../model/index.ts';

const spec = (cluster: string, at: string, o: Partial<ExportSpec> = {}): ExportSpec => ({
  cluster,
  namespace: 'shop',
  name: 'cart',
  exportCreationTimestamp: at,
  ports: [{ name: 'http', protocol: 'TCP', port: 80 }],
  type: 'ClusterSetIP',
  sessionAffinity: 'None',
  ...o,
});

describe('the serviceexports wire format (Cilium MCSAPIServiceSpec)', () => {
  test("a value Cilium's operator writes parses; ours round-trips under its key", () => {
    const key = serviceExportKey('foo', 'baz', 'bar');
    assert.equal(key, 'cilium/state/serviceexports/v1/foo/baz/bar');
    const cilium = '{"name": "bar", "namespace": "baz", "cluster": "foo", "exportCreationTimestamp": "2024-07-07T15:55:07.627472784+02:00", "type": "ClusterSetIP", "sessionAffinity": "None", "ipFamilies": ["IPv4"], "Labels": {}}';
    const s = parseExportSpec(key, cilium, 'foo');
    assert.deepEqual(s.ports, []);
    assert.equal(s.type, 'ClusterSetIP');
    const ours = spec('c1', '2026-01-01T00:00:00Z', { ports: [{ protocol: 'UDP', port: 53 }], sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } } });
    assert.deepEqual(parseExportSpec(serviceExportKey('c1', 'shop', 'cart'), encodeExportSpec(ours)), ours);
  });

  test('bad values are refused naming the key and the field', () => {
    const key = serviceExportKey('c1', 'shop', 'cart');
    const good = JSON.parse(encodeExportSpec(spec('c1', '2026-01-01T00:00:00Z')));
    const bad = (v: unknown, re: RegExp, expect?: string): void =>
      assert.throws(() => parseExportSpec(key, typeof v === 'string' ? v : JSON.stringify(v), expect), (e: Error) => e instanceof ExportSpecError && e.message.startsWith(`serviceexport ${key}: `) && re.test(e.message));
    bad('{', /not JSON/);
    bad({ ...good, type: 'LoadBalancer' }, /^.*: type: /);
    bad({ ...good, exportCreationTimestamp: 'yesterday' }, /exportCreationTimestamp: an RFC 3339 time/);
    bad({ ...good, ports: [{ port: 0 }] }, /ports\.0\.port/);
    bad({ ...good, sessionAffinity: 'Sticky' }, /sessionAffinity/);
    bad({ ...good, name: 'other' }, /names c1\/shop\/other, not the key's c1\/shop\/cart/);
    bad(good, /cluster is c1, expected c2/, 'c2');
  });

  test('a Service and its export time give the spec: headless, affinity, ports', () => {
    const svc = parseObject('Service', {
      kind: 'Service',
      metadata: { name: 'cart', namespace: 'shop' },
      spec: { clusterIP: 'None', ports: [{ name: 'http', port: 80 }], sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 30 } } },
    });
    const s = exportSpecOf('c2', svc, '2026-02-03T04:05:06Z');
    assert.deepEqual(s, { cluster: 'c2', namespace: 'shop', name: 'cart', exportCreationTimestamp: '2026-02-03T04:05:06Z', ports: [{ name: 'http', protocol: 'TCP', port: 80 }], type: 'Headless', sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 30 } } });
  });
});

describe('merging exports (KEP-1645 conflict resolution)', () => {
  test('agreeing exports: one import, ports as a union, no conflict', () => {
    const m = mergeExports([
      spec('c2', '2026-01-02T00:00:00Z', { ports: [{ name: 'http', protocol: 'TCP', port: 80 }, { name: 'metrics', protocol: 'TCP', port: 9090 }] }),
      spec('c1', '2026-01-01T00:00:00Z'),
    ]);
    assert.deepEqual(m.clusters, ['c1', 'c2']);
    assert.deepEqual(m.ports.map((p) => `${p.name}:${p.port}`), ['http:80', 'metrics:9090']);
    assert.deepEqual(m.conflicts, []);
    assert.deepEqual(conflictCondition(m), { type: 'Conflict', status: 'False', reason: 'NoConflicts', message: 'exported by c1, c2 without conflict' });
  });

  test('the oldest export wins a port clash; equal times fall back to the cluster name', () => {
    const older = spec('c3', '2026-01-01T00:00:00Z');
    const newer = spec('c1', '2026-01-05T00:00:00Z', { ports: [{ name: 'http', protocol: 'UDP', port: 80 }] });
    const m = mergeExports([newer, older]);
    assert.deepEqual(m.ports, [{ name: 'http', protocol: 'TCP', port: 80 }]);
    assert.deepEqual(m.conflicts, [{ reason: 'PortConflict', clusters: ['c1'], message: 'port "http" is 80/UDP in c1 but 80/TCP in c3' }]);
    const c = conflictCondition(m);
    assert.equal(c.status, 'True');
    assert.equal(c.reason, 'PortConflict');
    assert.match(c.message, /the oldest export \(c3\) decides$/);
    // A tie: cluster name decides, whatever the input order.
    const t = '2026-01-01T00:00:00Z';
    for (const input of [[spec('b', t, { ports: [{ name: 'http', protocol: 'UDP', port: 80 }] }), spec('a', t)], [spec('a', t), spec('b', t, { ports: [{ name: 'http', protocol: 'UDP', port: 80 }] })]]) {
      const r = mergeExports(input);
      assert.deepEqual(r.clusters, ['a', 'b']);
      assert.equal(r.ports[0]!.protocol, 'TCP');
    }
  });

  test('one number/protocol under two names, and a changed appProtocol, are port conflicts', () => {
    const a = mergeExports([spec('c1', '2026-01-01T00:00:00Z'), spec('c2', '2026-01-02T00:00:00Z', { ports: [{ name: 'web', protocol: 'TCP', port: 80 }] })]);
    assert.equal(a.conflicts[0]!.message, '80/TCP is named "web" in c2 but "http" in c1');
    assert.equal(a.ports.length, 1);
    const b = mergeExports([spec('c1', '2026-01-01T00:00:00Z'), spec('c2', '2026-01-02T00:00:00Z', { ports: [{ name: 'http', protocol: 'TCP', port: 80, appProtocol: 'h2c' }] })]);
    assert.equal(b.conflicts[0]!.reason, 'PortConflict');
    // Same number, other protocol, other name: both kept (a union, not a clash).
    const c = mergeExports([spec('c1', '2026-01-01T00:00:00Z'), spec('c2', '2026-01-02T00:00:00Z', { ports: [{ name: 'dns', protocol: 'UDP', port: 80 }] })]);
    assert.deepEqual(c.conflicts, []);
    assert.equal(c.ports.length, 2);
  });

  test('type, affinity and affinity timeout conflicts are reported together, comma-joined', () => {
    const m = mergeExports([
      spec('c1', '2026-01-01T00:00:00Z', { sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } } }),
      spec('c2', '2026-01-02T00:00:00Z', { type: 'Headless', sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 30 } } }),
      spec('c3', '2026-01-03T00:00:00Z', { sessionAffinity: 'None' }),
    ]);
    assert.equal(m.type, 'ClusterSetIP');
    assert.equal(m.sessionAffinity, 'ClientIP');
    assert.equal(m.affinityTimeoutSeconds, 60);
    assert.deepEqual(m.conflicts.map((c) => `${c.reason}:${c.clusters.join('+')}`), ['TypeConflict:c2', 'SessionAffinityConflict:c3', 'SessionAffinityConfigConflict:c2']);
    assert.equal(conflictCondition(m).reason, 'TypeConflict,SessionAffinityConflict,SessionAffinityConfigConflict');
  });

  test('a conflict clears when the differing export changes back or goes away', () => {
    const c1 = spec('c1', '2026-01-01T00:00:00Z');
    const bad = spec('c2', '2026-01-02T00:00:00Z', { ports: [{ name: 'http', protocol: 'UDP', port: 80 }] });
    assert.equal(conflictCondition(mergeExports([c1, bad])).status, 'True');
    assert.equal(conflictCondition(mergeExports([c1, { ...bad, ports: c1.ports }])).status, 'False');
    assert.equal(conflictCondition(mergeExports([c1])).status, 'False');
  });

  test('mergeAll groups by namespace/name; malformed groups are refused', () => {
    const all = mergeAll([spec('c1', '2026-01-01T00:00:00Z'), spec('c2', '2026-01-01T00:00:00Z'), spec('c1', '2026-01-01T00:00:00Z', { name: 'api' })]);
    assert.deepEqual([...all.keys()], ['shop/api', 'shop/cart']);
    assert.deepEqual(all.get('shop/cart')!.clusters, ['c1', 'c2']);
    assert.throws(() => mergeExports([]), /no exports/);
    assert.throws(() => mergeExports([spec('c1', '2026-01-01T00:00:00Z'), spec('c1', '2026-01-02T00:00:00Z')]), /two exports from cluster c1/);
  });

  test('validity: a missing Service, an ExternalName Service, a good one', () => {
    assert.equal(exportValidity('shop', 'cart', undefined).reason, 'NoService');
    assert.equal(exportValidity('shop', 'cart', 'ExternalName').reason, 'ServiceType');
    assert.deepEqual(exportValidity('shop', 'cart', 'ClusterIP').status, 'True');
  });

  test("a remote's exports are merged only once it advertises serviceExportsEnabled and its serviceexports canary is present", () => {
    assert.equal(serviceExportsSyncedKey('c2'), 'cilium/synced/c2/cilium/state/serviceexports/v1');
    const enabled = clusterConfigValue(2, 255, true);
    assert.deepEqual(remoteExportsReadiness('c2', enabled, true), { ready: true });
    const why = (cfg: string | undefined, canary: boolean): string => {
      const r = remoteExportsReadiness('c2', cfg, canary);
      assert.equal(r.ready, false);
      return r.ready ? '' : r.why;
    };
    assert.match(why(enabled, false), /not synced yet \(no cilium\/synced\/c2\/cilium\/state\/serviceexports\/v1\)/);
    assert.match(why(clusterConfigValue(2, 255, false), true), /does not advertise serviceExportsEnabled/);
    // A Cilium without MCS support says nothing about it (null): not merged either.
    assert.match(why('{"id":2,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}', true), /does not advertise serviceExportsEnabled/);
    assert.match(why(undefined, true), /no cluster-config \(cilium\/cluster-config\/c2\)/);
    assert.match(why('{"id":', true), /cluster-config does not parse/);
  });
});

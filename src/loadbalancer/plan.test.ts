import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
// The plan's shapes are what the map codecs take; this file fails to type-check if they drift.
import * as backendsMap from '../datapath/maps/backends.ts';
import * as maglevMap from '../datapath/maps/maglev.ts';
import * as revnatMap from '../datapath/maps/revnat.ts';
import * as servicesMap from '../datapath/maps/services.ts';
import { tableShares } from './maglev.ts';
import { type FrontendSpec, MAGLEV_TABLE_SIZE, planFrontend, serviceTables } from './plan.ts';
import type { BackendCandidate } from './select.ts';

const backend = (id: number, local: boolean, o: Partial<BackendCandidate> = {}): BackendCandidate => ({
  id, ip: `10.${local ? 101 : 102}.0.${id}`, port: 8080, clusterId: local ? 1 : 2, local, ready: true, terminating: false, clusterGone: false, ...o,
});

const spec = (o: Partial<FrontendSpec> = {}): FrontendSpec => ({
  vip: '10.96.0.10', port: 80, protocol: 'TCP', serviceId: 5,
  backends: [backend(3, true), backend(1, true), backend(2, false), backend(4, false, { terminating: true, ready: false }), backend(6, false, { clusterGone: true }), backend(7, true, { ready: false })],
  ...o,
});

describe('planFrontend', () => {
  it('slot table of the usable backends; every candidate in cm_backends, the unusable ones flagged', () => {
    const p = planFrontend(spec());
    assert.deepEqual(p.service, {
      key: { vip: '10.96.0.10', port: 80, protocol: 'TCP' },
      value: { serviceId: 5, revnatId: 5, backendCount: 3, sessionAffinity: false, affinityTimeout: 0, maglev: false },
    });
    assert.deepEqual(p.revnat, { key: 5, value: { vip: '10.96.0.10', port: 80 } });
    assert.deepEqual(p.slots, [1, 2, 3]);
    assert.equal(p.maglev, undefined);
    assert.deepEqual(p.backends.map(([id, v]) => [id, v.terminating, v.clusterGone, v.notReady]), [
      [1, false, false, false],
      [2, false, false, false],
      [3, false, false, false],
      [4, true, false, false],
      [6, false, true, false],
      [7, false, false, true],
    ]);
    assert.equal(p.selection.tier, 'all');
  });

  it('topology affinity local narrows the table; ClientIP affinity sets the flag and the timeout', () => {
    const p = planFrontend(spec({ topologyAffinity: 'local', sessionAffinity: {} }));
    assert.deepEqual(p.slots, [1, 3]);
    assert.equal(p.service.value.backendCount, 2);
    assert.equal(p.service.value.sessionAffinity, true);
    assert.equal(p.service.value.affinityTimeout, 10800);
    assert.equal(planFrontend(spec({ sessionAffinity: { timeoutSeconds: 30 } })).service.value.affinityTimeout, 30);
  });

  it('Maglev: a table of the datapath size over the usable backends, no slots', () => {
    const p = planFrontend(spec({ algorithm: 'maglev', revnatId: 9 }));
    assert.equal(MAGLEV_TABLE_SIZE, maglevMap.MAGLEV_TABLE_SIZE);
    assert.ok(p.maglev);
    assert.equal(p.maglev.length, MAGLEV_TABLE_SIZE);
    assert.deepEqual([...tableShares(p.maglev).keys()].sort(), [1, 2, 3]);
    assert.deepEqual(p.slots, []);
    assert.equal(p.service.value.maglev, true);
    assert.equal(p.service.value.backendCount, 3);
    assert.equal(p.revnat.key, 9);
    assert.equal(p.service.value.revnatId, 9);
  });

  it('no usable backend: count 0 (the datapath drops and resets), no Maglev table', () => {
    const p = planFrontend(spec({ algorithm: 'maglev', backends: [backend(4, true, { terminating: true })] }));
    assert.equal(p.service.value.backendCount, 0);
    assert.equal(p.maglev, undefined);
    assert.equal(p.selection.tier, 'none');
    assert.throws(() => planFrontend(spec({ backends: [backend(1, true), backend(1, false)] })), /listed twice/);
  });

  it('its shapes encode with the map codecs', () => {
    const p = planFrontend(spec({ algorithm: 'maglev' }));
    const key: servicesMap.Key = p.service.key;
    const value: servicesMap.Value = p.service.value;
    assert.deepEqual(servicesMap.decodeValue(servicesMap.encodeValue(value)), value);
    assert.deepEqual(servicesMap.decodeKey(servicesMap.encodeKey(key)), key);
    for (const [id, v] of p.backends) {
      const bv: backendsMap.Value = v;
      assert.deepEqual(backendsMap.decodeValue(backendsMap.encodeValue(bv)), bv);
      backendsMap.encodeKey(id);
    }
    const rv: revnatMap.Value = p.revnat.value;
    revnatMap.encodeValue(rv);
    assert.deepEqual(maglevMap.decodeValue(maglevMap.encodeValue(p.maglev!)), p.maglev);
  });
});

describe('serviceTables', () => {
  it('merges frontends; a backend shared by two frontends appears once', () => {
    const a = planFrontend(spec());
    const b = planFrontend(spec({ port: 443, serviceId: 6, algorithm: 'maglev' }));
    const t = serviceTables([a, b]);
    assert.deepEqual([...t.services.keys()], ['10.96.0.10:80/TCP', '10.96.0.10:443/TCP']);
    assert.deepEqual([...t.backends.keys()], ['1', '2', '3', '4', '6', '7']);
    assert.deepEqual([...t.slots.values()], [
      { serviceId: 5, slot: 0, backendId: 1 },
      { serviceId: 5, slot: 1, backendId: 2 },
      { serviceId: 5, slot: 2, backendId: 3 },
    ]);
    assert.deepEqual([...t.maglev.keys()], ['6']);
    assert.deepEqual([...t.revnat.keys()], ['5', '6']);
  });

  it('refuses contradictions', () => {
    const a = planFrontend(spec());
    assert.throws(() => serviceTables([a, a]), /planned twice/);
    assert.throws(() => serviceTables([a, planFrontend(spec({ port: 443 }))]), /service id 5 used by/);
    assert.throws(() => serviceTables([a, planFrontend(spec({ port: 443, serviceId: 6, revnatId: 5 }))]), /revnat id 5 means two frontends/);
    const moved = spec({ port: 443, serviceId: 6, backends: [backend(1, true, { port: 9090 })] });
    assert.throws(() => serviceTables([a, planFrontend(moved)]), /backend 1: frontends disagree/);
  });
});

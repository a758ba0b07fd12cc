// Property-based tests (fast-check) of every wire decoder of remote state
// (issue 17 §2): random and adversarial values never crash a decoder, never
// let through a value that names another cluster, a key it does not match or
// an identity out of the remote's range, and a valid value survives a round
// trip. Each property runs a few hundred cases; a failure prints the shrunk
// counterexample and the seed to replay it.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { identityKey, ipKey, nodeKey, serviceKey } from './keys.ts';
import {
  CLUSTER_LABEL_KEY,
  decodeClusterConfig,
  decodeHeartbeat,
  decodeIdentity,
  decodeIpEntry,
  decodeNode,
  decodeService,
  encodeIdentity,
  encodeIpEntry,
  encodeNode,
  encodeService,
  identityInClusterRange,
  identityRange,
  RESERVED_IDENTITY_MAX,
  type WireSource,
} from './wire.ts';

const SRC: WireSource = { cluster: 'c7', clusterId: 7, maxConnectedClusters: 255 };
const RUNS = { numRuns: 300 };

/** Anything JSON can hold, deep and wide, with unicode and huge strings now and then. */
const anyJson = fc.jsonValue({ maxDepth: 6 });
const nasty = fc.oneof(
  fc.string({ unit: 'grapheme', maxLength: 40 }),
  fc.constantFrom('', 'null', '{}', '[]', '{"a":', '\u0000', '"\ud800"', 'c7', '../../c8', 'cilium/state/nodes/v1/c8/n', '9'.repeat(400)),
  anyJson.map((v) => JSON.stringify(v)),
  fc.integer({ min: 60_000, max: 70_000 }).map((n) => JSON.stringify({ Name: 'x'.repeat(n) })),
);

/** A valid value, then one field replaced by an arbitrary JSON value. */
function mutated(valid: Record<string, unknown>): fc.Arbitrary<string> {
  const keys = Object.keys(valid);
  return fc.oneof(fc.constant(JSON.stringify(valid)), mutatedOnly(valid, keys));
}

function mutatedOnly(valid: Record<string, unknown>, keys: string[]): fc.Arbitrary<string> {
  return fc.tuple(fc.constantFrom(...keys), anyJson, fc.boolean()).map(([k, v, drop]) => {
    const o: Record<string, unknown> = { ...valid };
    if (drop) delete o[k];
    else o[k] = v;
    return JSON.stringify(o);
  });
}

const noThrow = <T>(fn: () => T): T => {
  try {
    return fn();
  } catch (err) {
    assert.fail(`decoder threw ${(err as Error).name}: ${(err as Error).message}`);
  }
};

const validNode = JSON.parse(encodeNode({ Name: 'n1', Cluster: 'c7', ClusterID: 7, IPAddresses: [{ Type: 'InternalIP', IP: '10.7.0.1' }], IPv4AllocCIDR: '10.107.1.0/24', Labels: {} }));
const validIp = JSON.parse(encodeIpEntry({ IP: '10.107.1.5', Mask: null, HostIP: '10.7.0.1', ID: identityRange(7, 255).min + 1, Key: 0, K8sNamespace: 'default', K8sPodName: 'p' }));
const validService = JSON.parse(
  encodeService({
    cluster: 'c7',
    namespace: 'default',
    name: 'web',
    frontends: { '10.96.0.10': { http: { Protocol: 'TCP', Port: 80 } } },
    backends: { '10.107.1.5': { http: { Protocol: 'TCP', Port: 8080 } } },
    labels: {},
    selector: { app: 'web' },
    shared: true,
    includeExternal: true,
    clusterID: 7,
  }),
);

describe('wire decoders under random and adversarial input (fast-check)', () => {
  test('node: never throws; accepted only when it names this cluster, its ID and its own key', () => {
    let accepted = 0;
    fc.assert(
      fc.property(fc.oneof(nasty, mutated(validNode)), fc.constantFrom(nodeKey('c7', 'n1'), nodeKey('c8', 'n1'), nodeKey('c7', 'n2'), 'cilium/state/nodes/v1/c7/'), (raw, key) => {
        const r = noThrow(() => decodeNode(SRC, key, raw));
        if (!r.ok) return;
        accepted++;
        assert.equal(r.value.Cluster, 'c7');
        assert.equal(r.value.ClusterID, 7);
        assert.equal(key, nodeKey('c7', r.value.Name));
      }),
      RUNS,
    );
    assert.ok(accepted > 0, 'some generated values are valid, so the acceptance path is exercised');
  });

  test('ip entry: never throws; accepted only under its own key, with a reserved identity or one of the remote range', () => {
    let accepted = 0;
    fc.assert(
      fc.property(fc.oneof(nasty, mutated(validIp)), fc.constantFrom(ipKey('10.107.1.5'), ipKey('10.107.1.6'), ipKey('10.107.1.5/32')), (raw, key) => {
        const r = noThrow(() => decodeIpEntry(SRC, key, raw));
        if (!r.ok) return;
        accepted++;
        assert.equal(key, ipKey(r.value.Mask === null ? r.value.IP : `${r.value.IP}/${r.value.Mask}`));
        assert.ok((r.value.ID >= 1 && r.value.ID <= RESERVED_IDENTITY_MAX) || identityInClusterRange(r.value.ID, 7, 255), `identity ${r.value.ID}`);
      }),
      RUNS,
    );
    assert.ok(accepted > 0, 'some generated values are valid, so the acceptance path is exercised');
  });

  test('identity: never throws; accepted only in the remote range with exactly its cluster label', () => {
    let accepted = 0;
    const range = identityRange(7, 255);
    const ids = fc.oneof(fc.integer({ min: range.min, max: range.max }), fc.integer({ min: 0, max: 2 ** 24 }), fc.constantFrom(range.min - 1, range.max + 1, 0));
    const labels = fc.oneof(
      nasty,
      fc.array(fc.tuple(fc.constantFrom('k8s', 'reserved', 'cidr', 'unspec', 'x'), fc.constantFrom('app', CLUSTER_LABEL_KEY, 'io.kubernetes.pod.namespace', ''), fc.constantFrom('c7', 'c8', 'web', '', 'ü')), { maxLength: 5 }).map((ls) =>
        // Written by hand (the encoder refuses bad labels): Cilium's "source:key=value;" list.
        ls.map(([source, key, value]) => `${source}:${key}=${value};`).join(''),
      ),
      fc.constant(encodeIdentity([{ source: 'k8s', key: 'app', value: 'web' }, { source: 'k8s', key: CLUSTER_LABEL_KEY, value: 'c7' }])),
    );
    fc.assert(
      fc.property(ids, labels, (id, raw) => {
        const r = noThrow(() => decodeIdentity(SRC, identityKey(id), raw));
        if (!r.ok) return;
        accepted++;
        assert.ok(identityInClusterRange(r.value.id, 7, 255));
        const cl = r.value.labels.filter((l) => l.key === CLUSTER_LABEL_KEY);
        assert.deepEqual(cl.map((l) => `${l.source}:${l.value}`), ['k8s:c7']);
      }),
      RUNS,
    );
    assert.ok(accepted > 0, 'some generated values are valid, so the acceptance path is exercised');
  });

  test('service: never throws; accepted only when it names this cluster and its own key', () => {
    let accepted = 0;
    fc.assert(
      fc.property(fc.oneof(nasty, mutated(validService)), fc.constantFrom(serviceKey('c7', 'default', 'web'), serviceKey('c8', 'default', 'web'), serviceKey('c7', 'kube-system', 'web')), (raw, key) => {
        const r = noThrow(() => decodeService(SRC, key, raw));
        if (!r.ok) return;
        accepted++;
        assert.equal(r.value.cluster, 'c7');
        assert.equal(r.value.clusterID, 7);
        assert.equal(key, serviceKey('c7', r.value.namespace, r.value.name));
      }),
      RUNS,
    );
    assert.ok(accepted > 0, 'some generated values are valid, so the acceptance path is exercised');
  });

  test('cluster config and heartbeat: never throw on anything', () => {
    fc.assert(
      fc.property(nasty, fc.constantFrom('c7', 'C7', '', 'a'.repeat(40), 'c7/..'), (raw, cluster) => {
        noThrow(() => decodeClusterConfig(cluster, `cilium/cluster-config/${cluster}`, raw));
        const hb = noThrow(() => decodeHeartbeat(raw));
        assert.ok(hb === null || Number.isFinite(hb));
      }),
      RUNS,
    );
  });

  test('valid values of random shape round-trip', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 254 }), fc.integer({ min: 0, max: 255 }), fc.stringMatching(/^[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?$/), (octet, host, name) => {
        const ip = `10.107.${octet}.${host}`;
        const raw = encodeIpEntry({ IP: ip, Mask: null, HostIP: '10.7.0.1', ID: identityRange(7, 255).min + octet, Key: 0, K8sNamespace: 'default', K8sPodName: name });
        const r = decodeIpEntry(SRC, ipKey(ip), raw);
        assert.ok(r.ok, JSON.stringify(r));
        assert.equal(r.value.IP, ip);
        const n = decodeNode(SRC, nodeKey('c7', name), encodeNode({ Name: name, Cluster: 'c7', ClusterID: 7, IPAddresses: [{ Type: 'InternalIP', IP: `10.7.0.${host}` }], IPv4AllocCIDR: `10.107.${octet}.0/24`, Labels: { a: name } }));
        assert.ok(n.ok, JSON.stringify(n));
      }),
      RUNS,
    );
  });
});

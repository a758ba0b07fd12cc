import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { clusterConfigKey, identityKey, ipKey, nodeKey, serviceKey } from './keys.ts';
import {
  clusterIdOfIdentity,
  decodeClusterConfig,
  decodeIdentity,
  decodeIpEntry,
  decodeNode,
  decodeService,
  encodeClusterConfig,
  encodeIdentity,
  encodeIpEntry,
  encodeNode,
  encodeService,
  formatLabels,
  identityRange,
  isValidClusterName,
  parseLabels,
  WireEncodeError,
  type IpEntryValue,
  type Label,
  type NodeValue,
  type ServiceValue,
  type WireSource,
} from './wire.ts';

const c2: WireSource = { cluster: 'c2', clusterId: 2, maxConnectedClusters: 255 };

const node = (over: Partial<NodeValue> = {}): NodeValue => ({
  Name: 'n1',
  Cluster: 'c2',
  ClusterID: 2,
  IPAddresses: [{ Type: 'InternalIP', IP: '10.2.0.1' }],
  IPv4AllocCIDR: '10.102.1.0/24',
  IPv6AllocCIDR: null,
  IPv4HealthIP: '',
  IPv6HealthIP: '',
  Labels: { 'kubernetes.io/hostname': 'n1' },
  Annotations: {},
  EncryptionKey: 0,
  Source: '',
  BootID: '',
  ...over,
});
const labels = (cluster: string, app = 'x'): Label[] => [
  { source: 'k8s', key: 'app', value: app },
  { source: 'k8s', key: 'io.cilium.k8s.policy.cluster', value: cluster },
  { source: 'k8s', key: 'io.kubernetes.pod.namespace', value: 'default' },
];
const ipEntry = (over: Partial<IpEntryValue> = {}): IpEntryValue => ({
  IP: '10.102.1.5',
  Mask: null,
  HostIP: '10.2.0.1',
  ID: (2 << 16) + 300,
  Key: 0,
  Metadata: '',
  K8sNamespace: 'default',
  K8sPodName: 'echo-1',
  K8sPodUID: '',
  K8sServiceAccount: '',
  NamedPorts: [],
  ...over,
});
const service = (over: Partial<ServiceValue> = {}): ServiceValue => ({
  cluster: 'c2',
  namespace: 'default',
  name: 'echo',
  frontends: { '10.96.0.10': { http: { Protocol: 'TCP', Port: 80 } } },
  backends: { '10.102.1.5': { http: { Protocol: 'TCP', Port: 8080 } } },
  hostnames: {},
  labels: {},
  selector: { app: 'echo' },
  includeExternal: true,
  shared: true,
  clusterID: 2,
  ...over,
});

describe('identity ranges', () => {
  it('255 clusters shift by 16, 511 by 15, both fill 24 bits', () => {
    assert.deepEqual(identityRange(1, 255), { min: 65536, max: 131071 });
    assert.deepEqual(identityRange(255, 255), { min: 255 << 16, max: 0xffffff });
    assert.deepEqual(identityRange(1, 511), { min: 32768, max: 65535 });
    assert.deepEqual(identityRange(511, 511), { min: 511 << 15, max: 0xffffff });
    assert.equal(clusterIdOfIdentity((7 << 16) + 5, 255), 7);
    assert.equal(clusterIdOfIdentity((7 << 15) + 5, 511), 7);
  });
  it('cluster names', () => {
    for (const ok of ['c1', 'a', 'cluster-1', 'a'.repeat(32)]) assert.ok(isValidClusterName(ok), ok);
    for (const bad of ['', '-a', 'a-', 'A', 'a_b', 'a'.repeat(33), 'a.b']) assert.ok(!isValidClusterName(bad), bad);
  });
});

describe('cluster config', () => {
  it('round-trips in the documented shape', () => {
    const raw = encodeClusterConfig({ id: 3, capabilities: { syncedCanaries: true, maxConnectedClusters: 255 } });
    assert.equal(raw, '{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}');
    const r = decodeClusterConfig('c3', clusterConfigKey('c3'), raw);
    assert.ok(r.ok);
    assert.equal(r.value.id, 3);
  });
  it('rejects an ID outside the layout, bad names and odd maxConnectedClusters', () => {
    const d = (raw: string, name = 'c3') => decodeClusterConfig(name, clusterConfigKey(name), raw);
    assert.equal(d('{"id":0,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}').ok, false);
    assert.equal(d('{"id":300,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}').ok, false);
    assert.equal(d('{"id":300,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":511}}').ok, true);
    assert.equal(d('{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":128}}').ok, false);
    assert.equal(d('{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}', 'Bad_Name').ok, false);
  });
});

describe('nodes', () => {
  it('accepts what the encoder writes', () => {
    const r = decodeNode(c2, nodeKey('c2', 'n1'), encodeNode(node()));
    assert.ok(r.ok);
    assert.deepEqual(r.value, node());
  });
  it('rejects another cluster name or ID in the value', () => {
    const r1 = decodeNode(c2, nodeKey('c2', 'n1'), encodeNode(node({ Cluster: 'c3' })));
    assert.deepEqual([r1.ok, !r1.ok && r1.reason], [false, 'cluster-mismatch']);
    const r2 = decodeNode(c2, nodeKey('c2', 'n1'), encodeNode(node({ ClusterID: 3 })));
    assert.deepEqual([r2.ok, !r2.ok && r2.reason], [false, 'cluster-mismatch']);
  });
  it('rejects a key that does not match the name', () => {
    const r = decodeNode(c2, nodeKey('c2', 'n2'), encodeNode(node()));
    assert.ok(!r.ok && r.reason === 'key-mismatch');
  });
  it('rejects malformed JSON, wrong types and oversized values', () => {
    const m = decodeNode(c2, nodeKey('c2', 'n1'), '{"Name":');
    assert.ok(!m.ok && m.reason === 'malformed-json');
    const s = decodeNode(c2, nodeKey('c2', 'n1'), JSON.stringify({ ...node(), IPAddresses: [{ Type: 'InternalIP', IP: 'nope' }] }));
    assert.ok(!s.ok && s.reason === 'invalid-schema', JSON.stringify(s));
    const big = encodeNode(node({ Labels: { pad: 'x'.repeat(200) } }));
    const t = decodeNode({ ...c2, maxValueBytes: 100 }, nodeKey('c2', 'n1'), big);
    assert.ok(!t.ok && t.reason === 'too-large');
    // multibyte characters are measured in bytes
    const u = decodeNode({ ...c2, maxValueBytes: 100 }, nodeKey('c2', 'n1'), '"' + 'é'.repeat(60) + '"');
    assert.ok(!u.ok && u.reason === 'too-large');
  });
  it('the encoder refuses an invalid node', () => {
    assert.throws(() => encodeNode(node({ Name: 'Not A Name' })), WireEncodeError);
  });
});

describe('identities', () => {
  it('formats sorted label strings and parses them back', () => {
    const s = formatLabels([...labels('c2')].reverse());
    assert.equal(s, 'k8s:app=x;k8s:io.cilium.k8s.policy.cluster=c2;k8s:io.kubernetes.pod.namespace=default;');
    const p = parseLabels(s);
    assert.ok(p.ok);
    assert.deepEqual(p.labels, labels('c2'));
    assert.ok(parseLabels('k8s:a=b;k8s:c').ok);
    assert.ok(!parseLabels('k8s:a=b;k8s:a=c;').ok);
    assert.ok(!parseLabels('nosource;').ok);
    assert.ok(!parseLabels('').ok);
  });
  it('accepts an identity of the source cluster', () => {
    const id = (2 << 16) + 300;
    const r = decodeIdentity(c2, identityKey(id), encodeIdentity(labels('c2')));
    assert.ok(r.ok);
    assert.equal(r.value.id, id);
    assert.equal(r.value.cluster, 'c2');
  });
  it('rejects an identity outside the range (both layouts)', () => {
    const r = decodeIdentity(c2, identityKey((3 << 16) + 1), encodeIdentity(labels('c2')));
    assert.ok(!r.ok && r.reason === 'identity-out-of-range');
    const r2 = decodeIdentity(c2, identityKey(300), encodeIdentity(labels('c2')));
    assert.ok(!r2.ok && r2.reason === 'identity-out-of-range');
    const s511: WireSource = { ...c2, maxConnectedClusters: 511 };
    assert.ok(decodeIdentity(s511, identityKey((2 << 15) + 1), encodeIdentity(labels('c2'))).ok);
    assert.ok(!decodeIdentity(s511, identityKey((2 << 16) + 1), encodeIdentity(labels('c2'))).ok);
  });
  it('rejects a cluster label naming another cluster, a missing one, or reserved labels', () => {
    const id = (2 << 16) + 300;
    const r = decodeIdentity(c2, identityKey(id), encodeIdentity(labels('c3')));
    assert.ok(!r.ok && r.reason === 'identity-cluster-label');
    const r2 = decodeIdentity(c2, identityKey(id), 'k8s:app=x;');
    assert.ok(!r2.ok && r2.reason === 'identity-cluster-label');
    const r3 = decodeIdentity(c2, identityKey(id), encodeIdentity([...labels('c2'), { source: 'reserved', key: 'host', value: '' }]));
    assert.ok(!r3.ok && r3.reason === 'invalid-labels');
    const r4 = decodeIdentity(c2, 'cilium/state/identities/v1/id/0123', encodeIdentity(labels('c2')));
    assert.ok(!r4.ok && r4.reason === 'key-mismatch');
  });
});

describe('ip entries', () => {
  it('accepts an entry in range, with or without a mask (the key then carries the length)', () => {
    assert.ok(decodeIpEntry(c2, ipKey('10.102.1.5'), encodeIpEntry(ipEntry())).ok);
    assert.ok(decodeIpEntry(c2, ipKey('fd00::/64'), encodeIpEntry(ipEntry({ IP: 'fd00::', Mask: 64 }))).ok);
    assert.ok(decodeIpEntry(c2, ipKey('10.102.1.5/32'), encodeIpEntry(ipEntry({ Mask: 32 }))).ok);
    const k = decodeIpEntry(c2, ipKey('10.102.1.5'), encodeIpEntry(ipEntry({ Mask: 32 })));
    assert.ok(!k.ok && k.reason === 'key-mismatch');
  });
  it('accepts reserved identities (1..255), rejects an identity out of range, a key mismatch and a bad mask', () => {
    assert.ok(decodeIpEntry(c2, ipKey('10.102.1.5'), encodeIpEntry(ipEntry({ ID: 6 }))).ok);
    const r = decodeIpEntry(c2, ipKey('10.102.1.5'), encodeIpEntry(ipEntry({ ID: 256 })));
    assert.ok(!r.ok && r.reason === 'identity-out-of-range');
    const z = decodeIpEntry(c2, ipKey('10.102.1.5'), encodeIpEntry(ipEntry({ ID: 0 })));
    assert.ok(!z.ok && z.reason === 'identity-out-of-range');
    const k = decodeIpEntry(c2, ipKey('10.102.1.6'), encodeIpEntry(ipEntry()));
    assert.ok(!k.ok && k.reason === 'key-mismatch');
    assert.throws(() => encodeIpEntry(ipEntry({ Mask: 33 })), WireEncodeError);
    assert.throws(() => encodeIpEntry(ipEntry({ IP: 'fd00::', Mask: 129 })), WireEncodeError);
    const holes = JSON.stringify({ IP: '10.102.1.0', Mask: Buffer.from([255, 0, 255, 0]).toString('base64'), HostIP: '10.2.0.1', ID: (2 << 16) + 1 });
    const h = decodeIpEntry(c2, ipKey('10.102.1.0/8'), holes);
    assert.ok(!h.ok && h.reason === 'invalid-schema' && /non-contiguous/.test(h.detail), JSON.stringify(h));
  });
});

describe('services', () => {
  it('accepts a matching service', () => {
    const r = decodeService(c2, serviceKey('c2', 'default', 'echo'), encodeService(service()));
    assert.ok(r.ok);
    assert.deepEqual(r.value, service());
    const named = service({ hostnames: { '10.102.1.5': 'echo-0' } });
    const n = decodeService(c2, serviceKey('c2', 'default', 'echo'), encodeService(named));
    assert.ok(n.ok);
    assert.deepEqual(n.value, named);
  });
  it('rejects a key that disagrees with the content', () => {
    const r = decodeService(c2, serviceKey('c2', 'other', 'echo'), encodeService(service()));
    assert.ok(!r.ok && r.reason === 'key-mismatch');
    const r2 = decodeService(c2, serviceKey('c2', 'default', 'echo'), encodeService(service({ name: 'echo2' })));
    assert.ok(!r2.ok && r2.reason === 'key-mismatch');
  });
  it('rejects another cluster', () => {
    const r = decodeService(c2, serviceKey('c2', 'default', 'echo'), encodeService(service({ cluster: 'c1', clusterID: 1 })));
    assert.ok(!r.ok && r.reason === 'cluster-mismatch');
  });
  it('rejects bad ports and addresses', () => {
    const raw = JSON.stringify({ ...service(), backends: { 'not-ip': { http: { Protocol: 'TCP', Port: 80 } } } });
    const r = decodeService(c2, serviceKey('c2', 'default', 'echo'), raw);
    assert.ok(!r.ok && r.reason === 'invalid-schema');
    const raw2 = JSON.stringify({ ...service(), backends: { '10.0.0.1': { http: { Protocol: 'TCP', Port: 0 } } } });
    assert.ok(!decodeService(c2, serviceKey('c2', 'default', 'echo'), raw2).ok);
  });
});

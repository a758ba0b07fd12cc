// Cilium interoperability of the wire layer, per family, both directions:
//   Cilium → us: values in the exact JSON a Cilium clustermesh-apiserver writes
//                (fixtures below, our own data) decode into our values;
//   us → Cilium: what we encode has exactly Cilium's field names and Go JSON
//                types (goTypeProblems) and is byte-for-byte the JSON Cilium
//                writes for the same value;
// plus forward compatibility (an unknown field is ignored) and wrong types
// (the entry is refused with an error naming the field).
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { CILIUM_TYPES, ciliumClusterConfig, ciliumIdentity, ciliumIpEntry, ciliumNode, goTypeProblems } from './cilium-format.ts';
import { clusterConfigKey, heartbeatKey, identityKey, ipKey, nodeKey, serviceKey, syncedKey, SYNCED_PREFIX_NAMES } from './keys.ts';
import {
  decodeClusterConfig,
  decodeHeartbeat,
  decodeIdentity,
  decodeIpEntry,
  decodeNode,
  decodeService,
  encodeClusterConfig,
  encodeIdentity,
  encodeIpEntry,
  encodeNode,
  encodeService,
  type Decoded,
  type IpEntryValue,
  type WireSource,
} from './wire.ts';
import { rfc3339 } from '../kvstore/sync-store.ts';

const src: WireSource = { cluster: 'cilium', clusterId: 7, maxConnectedClusters: 255 };
const ID = (7 << 16) + 1042;

/** Adds a field no reader knows (a future Cilium version's). */
const withFutureField = (raw: string): string => raw.replace(/^\{/, '{"SomeFutureField":{"nested":[1,"two",null]},');
const ok = <T>(d: Decoded<T>): T => {
  assert.ok(d.ok, `expected ok, got ${JSON.stringify(d)}`);
  return d.value;
};
const refused = <T>(d: Decoded<T>, field: RegExp): void => {
  assert.ok(!d.ok, 'expected a refusal');
  assert.equal(d.reason, 'invalid-schema');
  assert.match(d.detail, field);
};
const fitsCilium = (type: keyof typeof CILIUM_TYPES, raw: string): void => assert.deepEqual(goTypeProblems(CILIUM_TYPES[type], JSON.parse(raw)), []);

// ---- fixtures: Cilium's exact JSON (compact, as stored in etcd)

const CLUSTER_CONFIG = '{"id":7,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255,"serviceExportsEnabled":false}}';

const NODE =
  '{"Name":"worker-a","Cluster":"cilium","IPAddresses":[{"Type":"InternalIP","IP":"192.168.7.2"},{"Type":"InternalIP","IP":"fc00:7::2"},' +
  '{"Type":"CiliumInternalIP","IP":"10.207.1.1"}],"IPv4AllocCIDR":{"IP":"10.207.1.0","Mask":"////AA=="},"IPv4SecondaryAllocCIDRs":null,' +
  '"IPv6AllocCIDR":{"IP":"fd00:207:1::","Mask":"//////////8AAAAAAAAAAA=="},"IPv6SecondaryAllocCIDRs":null,"IPv4HealthIP":"10.207.1.77",' +
  '"IPv6HealthIP":"","IPv4IngressIP":"","IPv6IngressIP":"","ClusterID":7,"Source":"custom-resource","EncryptionKey":0,' +
  '"Labels":{"kubernetes.io/hostname":"worker-a","topology.kubernetes.io/zone":"z1"},"Annotations":{"network.cilium.io/wg-pub-key":"c2VjcmV0"},' +
  '"WireguardPubKey":"c2VjcmV0","BootID":"0d6f7c1e-5a3b-4f4e-9c1a-2b7d1e0f9a11"}';

const NODE_NULL_LABELS =
  '{"Name":"worker-b","Cluster":"cilium","IPAddresses":[{"Type":"InternalIP","IP":"192.168.7.3"}],"IPv4AllocCIDR":null,' +
  '"IPv4SecondaryAllocCIDRs":null,"IPv6AllocCIDR":null,"IPv6SecondaryAllocCIDRs":null,"IPv4HealthIP":"","IPv6HealthIP":"",' +
  '"IPv4IngressIP":"","IPv6IngressIP":"","ClusterID":7,"Source":"custom-resource","EncryptionKey":0,"Labels":null,"Annotations":null,' +
  '"WireguardPubKey":"","BootID":""}';

const IP_POD =
  `{"IP":"10.207.1.15","HostIP":"192.168.7.2","ID":${ID},"Key":0,"Metadata":"","K8sNamespace":"shop","K8sPodName":"cart-5d9f",` +
  '"K8sPodUID":"7f0c2b9e-1111-4a2b-8c3d-0e9f8a7b6c5d","K8sServiceAccount":"cart",' +
  '"NamedPorts":[{"Name":"http","Port":8080,"Protocol":"TCP"},{"Name":"dns","Port":53,"Protocol":"UDP"}]}';
const IP_HOST_RESERVED = '{"IP":"192.168.7.2","HostIP":"192.168.7.2","ID":6,"Key":0,"Metadata":""}';
const IP_PREFIX = `{"IP":"10.207.9.0","Mask":"////AA==","HostIP":"192.168.7.2","ID":${ID},"Key":0,"Metadata":""}`;

const IDENTITY = 'k8s:app=cart;k8s:io.cilium.k8s.policy.cluster=cilium;k8s:io.kubernetes.pod.namespace=shop;';

const SERVICE =
  '{"cluster":"cilium","namespace":"shop","name":"cart","frontends":{"10.96.7.10":{"http":{"Protocol":"TCP","Port":80}}},' +
  '"backends":{"10.207.1.15":{"http":{"Protocol":"TCP","Port":8080}}},"hostnames":{"10.207.1.15":"cart-5d9f"},' +
  '"zones":{"10.207.1.15":{"zone":"z1","forZones":[{"name":"z1"}]}},"labels":{},"selector":{"app":"cart"},' +
  '"includeExternal":true,"shared":true,"clusterID":7}';

describe('Cilium format: cluster-config', () => {
  it('Cilium → us: every capability read; missing ones take Cilium defaults (maxConnectedClusters 255)', () => {
    const c = ok(decodeClusterConfig('cilium', clusterConfigKey('cilium'), CLUSTER_CONFIG));
    assert.deepEqual(c, { id: 7, capabilities: { syncedCanaries: true, maxConnectedClusters: 255, cached: false, serviceExportsEnabled: false } });
    assert.equal(ciliumClusterConfig(7), CLUSTER_CONFIG);
    const bare = ok(decodeClusterConfig('cilium', clusterConfigKey('cilium'), '{"id":7}'));
    assert.deepEqual(bare.capabilities, { syncedCanaries: false, maxConnectedClusters: 255, cached: false, serviceExportsEnabled: null });
    const cached = ok(decodeClusterConfig('cilium', clusterConfigKey('cilium'), '{"id":7,"capabilities":{"syncedCanaries":true,"cached":true,"maxConnectedClusters":511}}'));
    assert.deepEqual(cached.capabilities, { syncedCanaries: true, maxConnectedClusters: 511, cached: true, serviceExportsEnabled: null });
  });
  it('us → Cilium: exactly what a Cilium apiserver writes', () => {
    const raw = encodeClusterConfig({ id: 7, capabilities: { syncedCanaries: true, maxConnectedClusters: 255, serviceExportsEnabled: false } });
    assert.equal(raw, CLUSTER_CONFIG);
    fitsCilium('clusterConfig', raw);
    const cached = encodeClusterConfig({ id: 7, capabilities: { syncedCanaries: true, cached: true, maxConnectedClusters: 511 } });
    assert.equal(cached, '{"id":7,"capabilities":{"syncedCanaries":true,"cached":true,"maxConnectedClusters":511}}');
    fitsCilium('clusterConfig', cached);
  });
  it('forward compatible; a wrong type is refused naming the field', () => {
    ok(decodeClusterConfig('cilium', clusterConfigKey('cilium'), withFutureField(CLUSTER_CONFIG)));
    refused(decodeClusterConfig('cilium', clusterConfigKey('cilium'), CLUSTER_CONFIG.replace('"syncedCanaries":true', '"syncedCanaries":"yes"')), /capabilities\.syncedCanaries/);
    refused(decodeClusterConfig('cilium', clusterConfigKey('cilium'), '{"id":"7"}'), /^id:/);
  });
});

describe('Cilium format: nodes', () => {
  it('Cilium → us: CIDRs from {IP, Mask}, unknown address types and fields skipped', () => {
    const n = ok(decodeNode(src, nodeKey('cilium', 'worker-a'), NODE));
    assert.deepEqual(n, {
      Name: 'worker-a',
      Cluster: 'cilium',
      ClusterID: 7,
      IPAddresses: [
        { Type: 'InternalIP', IP: '192.168.7.2' },
        { Type: 'InternalIP', IP: 'fc00:7::2' },
        { Type: 'CiliumInternalIP', IP: '10.207.1.1' },
      ],
      IPv4AllocCIDR: '10.207.1.0/24',
      IPv6AllocCIDR: 'fd00:207:1::/64',
      IPv4HealthIP: '10.207.1.77',
      IPv6HealthIP: '',
      Labels: { 'kubernetes.io/hostname': 'worker-a', 'topology.kubernetes.io/zone': 'z1' },
      Annotations: { 'network.cilium.io/wg-pub-key': 'c2VjcmV0' },
      EncryptionKey: 0,
      Source: 'custom-resource',
      BootID: '0d6f7c1e-5a3b-4f4e-9c1a-2b7d1e0f9a11',
    });
    const b = ok(decodeNode(src, nodeKey('cilium', 'worker-b'), NODE_NULL_LABELS));
    assert.deepEqual([b.Labels, b.IPv4AllocCIDR], [{}, null]);
    const hostname = NODE.replace('{"Type":"InternalIP","IP":"fc00:7::2"}', '{"Type":"Hostname","IP":"192.168.7.99"}');
    assert.equal(ok(decodeNode(src, nodeKey('cilium', 'worker-a'), hostname)).IPAddresses.length, 2);
    // The helper the integration test writes with produces the same shape.
    assert.equal(
      ciliumNode({ name: 'worker-b', cluster: 'cilium', clusterId: 7, internalIP: '192.168.7.3', ciliumInternalIP: '10.207.2.1', podCIDR: '10.207.2.0/24', labels: null }),
      NODE_NULL_LABELS.replace('[{"Type":"InternalIP","IP":"192.168.7.3"}],"IPv4AllocCIDR":null', '[{"Type":"InternalIP","IP":"192.168.7.3"},{"Type":"CiliumInternalIP","IP":"10.207.2.1"}],"IPv4AllocCIDR":{"IP":"10.207.2.0","Mask":"////AA=="}'),
    );
  });
  it('us → Cilium: Cilium field names, order and types; decodes back', () => {
    const raw = encodeNode({
      Name: 'worker-a',
      Cluster: 'cilium',
      ClusterID: 7,
      IPAddresses: [{ Type: 'InternalIP', IP: '192.168.7.2' }],
      IPv4AllocCIDR: '10.207.1.0/24',
      IPv6AllocCIDR: 'fd00:207:1::/64',
      Labels: { 'kubernetes.io/hostname': 'worker-a' },
      Source: 'custom-resource',
    });
    assert.equal(
      raw,
      '{"Name":"worker-a","Cluster":"cilium","IPAddresses":[{"Type":"InternalIP","IP":"192.168.7.2"}],"IPv4AllocCIDR":{"IP":"10.207.1.0","Mask":"////AA=="},' +
        '"IPv4SecondaryAllocCIDRs":null,"IPv6AllocCIDR":{"IP":"fd00:207:1::","Mask":"//////////8AAAAAAAAAAA=="},"IPv6SecondaryAllocCIDRs":null,' +
        '"IPv4HealthIP":"","IPv6HealthIP":"","IPv4IngressIP":"","IPv6IngressIP":"","ClusterID":7,"Source":"custom-resource","EncryptionKey":0,' +
        '"Labels":{"kubernetes.io/hostname":"worker-a"},"Annotations":null,"WireguardPubKey":"","BootID":""}',
    );
    fitsCilium('node', raw);
    assert.equal(ok(decodeNode(src, nodeKey('cilium', 'worker-a'), raw)).IPv4AllocCIDR, '10.207.1.0/24');
  });
  it('forward compatible; a wrong type is refused naming the field', () => {
    assert.deepEqual(ok(decodeNode(src, nodeKey('cilium', 'worker-a'), withFutureField(NODE))), ok(decodeNode(src, nodeKey('cilium', 'worker-a'), NODE)));
    refused(decodeNode(src, nodeKey('cilium', 'worker-a'), NODE.replace('"ClusterID":7', '"ClusterID":"7"')), /ClusterID/);
    refused(decodeNode(src, nodeKey('cilium', 'worker-a'), NODE.replace('{"IP":"10.207.1.0","Mask":"////AA=="}', '"10.207.1.0/24"')), /IPv4AllocCIDR/);
    refused(decodeNode(src, nodeKey('cilium', 'worker-a'), NODE.replace('"Mask":"////AA=="', '"Mask":"/wD/AA=="')), /IPv4AllocCIDR: a non-contiguous mask/);
    refused(decodeNode(src, nodeKey('cilium', 'worker-a'), NODE.replace('"Labels":{', '"Labels":{"n":1,')), /Labels\.n/);
  });
});

/** The pod fields of the IP_POD fixture, as we decode and encode them. */
const POD_FIELDS: Pick<IpEntryValue, 'K8sNamespace' | 'K8sPodName' | 'K8sPodUID' | 'K8sServiceAccount' | 'NamedPorts'> = {
  K8sNamespace: 'shop',
  K8sPodName: 'cart-5d9f',
  K8sPodUID: '7f0c2b9e-1111-4a2b-8c3d-0e9f8a7b6c5d',
  K8sServiceAccount: 'cart',
  NamedPorts: [
    { Name: 'http', Port: 8080, Protocol: 'TCP' },
    { Name: 'dns', Port: 53, Protocol: 'UDP' },
  ],
};

describe('Cilium format: ip entries', () => {
  it('Cilium → us: optional fields, named ports, service account, reserved IDs, prefixes keyed ip/len', () => {
    const e = ok(decodeIpEntry(src, ipKey('10.207.1.15'), IP_POD));
    assert.deepEqual(e, {
      IP: '10.207.1.15',
      Mask: null,
      HostIP: '192.168.7.2',
      ID,
      Key: 0,
      Metadata: '',
      ...POD_FIELDS,
    });
    const host = ok(decodeIpEntry(src, ipKey('192.168.7.2'), IP_HOST_RESERVED));
    assert.deepEqual([host.ID, host.K8sNamespace, host.K8sPodName, host.NamedPorts], [6, '', '', []]);
    assert.equal(ok(decodeIpEntry(src, ipKey('10.207.9.0/24'), IP_PREFIX)).Mask, 24);
    const k = decodeIpEntry(src, ipKey('10.207.9.0'), IP_PREFIX);
    assert.ok(!k.ok && k.reason === 'key-mismatch');
    assert.equal(
      ciliumIpEntry({ ip: '10.207.1.15', hostIP: '192.168.7.2', id: ID, namespace: 'shop', pod: 'cart-5d9f', podUID: '7f0c2b9e-1111-4a2b-8c3d-0e9f8a7b6c5d', serviceAccount: 'cart', namedPorts: [{ name: 'http', port: 8080, protocol: 'TCP' }, { name: 'dns', port: 53, protocol: 'UDP' }] }),
      IP_POD,
    );
    assert.equal(ciliumIpEntry({ ip: '10.207.9.0', maskLen: 24, hostIP: '192.168.7.2', id: ID }), IP_PREFIX);
  });
  it('us → Cilium: Mask omitted for a host, base64 for a prefix; empty optional fields omitted', () => {
    const raw = encodeIpEntry({
      IP: '10.207.1.15',
      HostIP: '192.168.7.2',
      ID,
      ...POD_FIELDS,
    });
    assert.equal(raw, IP_POD);
    fitsCilium('ipEntry', raw);
    const prefix = encodeIpEntry({ IP: '10.207.9.0', Mask: 24, HostIP: '192.168.7.2', ID });
    assert.equal(prefix, IP_PREFIX);
    fitsCilium('ipEntry', prefix);
    assert.equal(encodeIpEntry({ IP: '192.168.7.2', HostIP: '192.168.7.2', ID: 6 }), IP_HOST_RESERVED);
  });
  it('forward compatible; a wrong type is refused naming the field; odd named ports are skipped', () => {
    assert.deepEqual(ok(decodeIpEntry(src, ipKey('10.207.1.15'), withFutureField(IP_POD))), ok(decodeIpEntry(src, ipKey('10.207.1.15'), IP_POD)));
    refused(decodeIpEntry(src, ipKey('10.207.1.15'), IP_POD.replace(`"ID":${ID}`, `"ID":"${ID}"`)), /^ID:/);
    refused(decodeIpEntry(src, ipKey('10.207.1.15'), IP_POD.replace('"Port":8080', '"Port":"8080"')), /NamedPorts\.0\.Port/);
    refused(decodeIpEntry(src, ipKey('10.207.9.0/24'), IP_PREFIX.replace('"////AA=="', '"255.255.255.0"')), /Mask/);
    const odd = IP_POD.replace('"Protocol":"UDP"', '"Protocol":"ICMP"');
    assert.deepEqual(ok(decodeIpEntry(src, ipKey('10.207.1.15'), odd)).NamedPorts.map((p) => p.Name), ['http']);
  });
});

describe('Cilium format: identities, services, canaries, heartbeat', () => {
  it('identities: the same label string both ways', () => {
    const i = ok(decodeIdentity(src, identityKey(ID), IDENTITY));
    assert.equal(encodeIdentity(i.labels), IDENTITY);
    assert.equal(ciliumIdentity({ 'k8s:io.kubernetes.pod.namespace': 'shop', 'k8s:app': 'cart', 'k8s:io.cilium.k8s.policy.cluster': 'cilium' }), IDENTITY);
  });
  it('services: hostnames both ways, zones and unknown fields ignored; we write Cilium order; wrong types refused', () => {
    const s = ok(decodeService(src, serviceKey('cilium', 'shop', 'cart'), SERVICE));
    assert.deepEqual(s.backends, { '10.207.1.15': { http: { Protocol: 'TCP', Port: 8080 } } });
    assert.deepEqual(s.hostnames, { '10.207.1.15': 'cart-5d9f' });
    const raw = encodeService(s);
    assert.equal(raw, SERVICE.replace(',"zones":{"10.207.1.15":{"zone":"z1","forZones":[{"name":"z1"}]}}', ''));
    fitsCilium('service', raw);
    // No hostnames: the field is left out (absent and {} read the same in Go).
    const bare = encodeService({ ...s, hostnames: {} });
    assert.equal(bare, raw.replace(',"hostnames":{"10.207.1.15":"cart-5d9f"}', ''));
    assert.deepEqual(ok(decodeService(src, serviceKey('cilium', 'shop', 'cart'), bare)).hostnames, {});
    assert.deepEqual(ok(decodeService(src, serviceKey('cilium', 'shop', 'cart'), SERVICE.replace('"hostnames":{', '"hostnames":null,"x":{'))).hostnames, {});
    // A pair that is not ip → DNS label is dropped, the service kept (Go would keep the whole map).
    const odd = ok(decodeService(src, serviceKey('cilium', 'shop', 'cart'), SERVICE.replace('"hostnames":{', '"hostnames":{"not-an-ip":"a","10.207.1.16":"Not_A_Label",')));
    assert.deepEqual(odd.hostnames, { '10.207.1.15': 'cart-5d9f' });
    refused(decodeService(src, serviceKey('cilium', 'shop', 'cart'), SERVICE.replace('"cart-5d9f"', '5')), /hostnames/);
    ok(decodeService(src, serviceKey('cilium', 'shop', 'cart'), withFutureField(SERVICE)));
    const nulls = ok(decodeService(src, serviceKey('cilium', 'shop', 'cart'), SERVICE.replace('"labels":{}', '"labels":null').replace(/"backends":\{.*?\}\}\},/, '"backends":null,')));
    assert.deepEqual([nulls.labels, nulls.backends], [{}, {}]);
    refused(decodeService(src, serviceKey('cilium', 'shop', 'cart'), SERVICE.replace('"shared":true', '"shared":"true"')), /shared/);
  });
  it('synced canaries are named by the full prefix they cover; the heartbeat key and RFC3339 times', () => {
    assert.deepEqual(
      SYNCED_PREFIX_NAMES.map((p) => syncedKey('cilium', p)),
      ['cilium/synced/cilium/cilium/state/nodes/v1', 'cilium/synced/cilium/cilium/state/identities/v1', 'cilium/synced/cilium/cilium/state/ip/v1', 'cilium/synced/cilium/cilium/state/services/v1'],
    );
    assert.equal(heartbeatKey, 'cilium/.heartbeat');
    assert.equal(decodeHeartbeat('2026-12-02T17:35:02+01:00'), Date.UTC(2026, 11, 2, 16, 35, 2));
    assert.equal(decodeHeartbeat(rfc3339(Date.UTC(2026, 11, 2, 16, 35, 2))), Date.UTC(2026, 11, 2, 16, 35, 2));
    assert.equal(decodeHeartbeat('2026-12-02T16:35:02.123456789Z'), Date.UTC(2026, 11, 2, 16, 35, 2, 123));
    assert.equal(decodeHeartbeat('yesterday'), null);
  });
});

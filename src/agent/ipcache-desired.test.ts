// Desired ipcache: what each input contributes, who wins a contested prefix,
// and that incremental updates end where the whole computation ends.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { RemoteIpEntry, RemoteNode } from '../clustermesh/clustermesh.ts';
import { parseObject, type Endpoint, type Node } from '../model/index.ts';
import {
  IpcacheTable,
  clusterNodeContributions,
  computeIpcache,
  fillIpcacheTable,
  normalizePrefix,
  ownerKeys,
  remoteEndpointContributions,
  type IpcacheEntry,
  type IpcacheInputs,
} from './ipcache-desired.ts';

const self = { nodeName: 'node1', nodeIP: '10.1.0.1', podCIDR: '10.101.1.0/24' };

const endpoint = (name: string, node: number, ip: string, id: number): Endpoint =>
  parseObject('Endpoint', {
    kind: 'Endpoint',
    metadata: { name, namespace: 'default' },
    status: { identity: { id, labels: [] }, networking: { podIP: ip, nodeName: `node${node}`, nodeIP: `10.1.0.${node}` } },
  });
const node = (n: number): Node =>
  parseObject('Node', {
    kind: 'Node',
    metadata: { name: `node${n}` },
    spec: { podCIDR: `10.101.${n}.0/24` },
    status: { addresses: [{ type: 'InternalIP', address: `10.1.0.${n}` }, { type: 'Hostname', address: `node${n}` }] },
  });
const remoteIp = (ip: string, id: number, host: string): RemoteIpEntry => ({
  cluster: 'cluster2',
  ip,
  prefix: `${ip}/32`,
  identity: id,
  hostIP: host,
  encryptKey: 0,
  namespace: 'default',
  podName: `p-${ip}`,
  serviceAccount: 'default',
  namedPorts: [],
});
const remoteNode = (n: number): RemoteNode => ({
  cluster: 'cluster2',
  clusterId: 2,
  name: `node${n}`,
  addresses: [{ type: 'InternalIP', ip: `10.2.0.${n}` }],
  ipv4AllocCIDR: `10.102.${n}.0/24`,
  ipv6AllocCIDR: null,
  labels: {},
});
const e = (identity: number, tunnelEndpoint: string | null = null): IpcacheEntry => ({ identity, tunnelEndpoint, flags: 0 });

const inputs = (): IpcacheInputs => ({
  self,
  localEndpoints: [{ containerID: 'c1', ip: '10.101.1.10', identity: 65_800 }],
  clusterEndpoints: [endpoint('mine', 1, '10.101.1.10', 65_800), endpoint('other', 2, '10.101.2.10', 65_801)],
  clusterNodes: [node(1), node(2)],
  remoteEndpoints: [remoteIp('10.102.1.5', 131_400, '10.2.0.1'), remoteIp('10.102.2.5', 131_401, '10.2.0.2')],
  remoteNodes: [['cluster2/node1', remoteNode(1)], ['cluster2/node2', remoteNode(2)]],
});

describe('desired ipcache', () => {
  it('normalizes prefixes and ignores what is not IPv4', () => {
    assert.equal(normalizePrefix('10.1.2.3'), '10.1.2.3/32');
    assert.equal(normalizePrefix('10.1.2.3/24'), '10.1.2.0/24');
    assert.equal(normalizePrefix('0.0.0.0/0'), '0.0.0.0/0');
    assert.equal(normalizePrefix('fd00::1/128'), undefined);
    assert.equal(normalizePrefix('10.1.2.3/33'), undefined);
    assert.deepEqual(remoteEndpointContributions({ ...remoteIp('10.102.1.5', 1, '10.2.0.1'), ip: 'fd00::5', prefix: 'fd00::5/128' }), []);
  });

  it('local pods, pods of other nodes and clusters, node IPs, pod CIDRs', () => {
    const got = Object.fromEntries(computeIpcache(inputs()));
    assert.deepEqual(got, {
      // local pod: no tunnel (delivered by the endpoints map)
      '10.101.1.10/32': e(65_800),
      // a pod of another node of this cluster: behind that node
      '10.101.2.10/32': e(65_801, '10.1.0.2'),
      // pods of the remote cluster: behind their HostIP
      '10.102.1.5/32': e(131_400, '10.2.0.1'),
      '10.102.2.5/32': e(131_401, '10.2.0.2'),
      // this node: host; other nodes, here and remote: remote-node
      '10.1.0.1/32': e(1),
      '10.1.0.2/32': e(6),
      '10.2.0.1/32': e(6),
      '10.2.0.2/32': e(6),
      // every pod CIDR leads to its node (world: an address there that is no pod is dropped there)
      '10.101.1.0/24': e(2, '10.1.0.1'),
      '10.101.2.0/24': e(2, '10.1.0.2'),
      '10.102.1.0/24': e(2, '10.2.0.1'),
      '10.102.2.0/24': e(2, '10.2.0.2'),
    });
  });

  it('a contested prefix goes to the stronger origin, then to the first claim, and falls back when withdrawn', () => {
    const changes: string[] = [];
    const t = new IpcacheTable({ upsert: (p, v) => changes.push(`+${p}=${v.identity}@${v.tunnelEndpoint}`), remove: (p) => changes.push(`-${p}`) });
    t.setOwner(ownerKeys.remoteEndpoint('10.9.9.9'), remoteEndpointContributions(remoteIp('10.9.9.9', 131_400, '10.2.0.1')));
    // a stale Endpoint object of this cluster claims the same IP: the cluster's own claim is stronger
    t.setOwner(ownerKeys.clusterEndpoint('default', 'x'), [{ origin: 'cluster-endpoint', prefix: '10.9.9.9/32', entry: e(65_900, '10.1.0.3') }]);
    // a local endpoint beats both
    t.setOwner(ownerKeys.localEndpoint('c9'), [{ origin: 'local-endpoint', prefix: '10.9.9.9/32', entry: e(65_999) }]);
    // a second cluster-endpoint claim does not displace the first of its origin
    t.setOwner(ownerKeys.clusterEndpoint('default', 'y'), [{ origin: 'cluster-endpoint', prefix: '10.9.9.9/32', entry: e(65_901, '10.1.0.4') }]);
    t.removeOwner(ownerKeys.localEndpoint('c9'));
    t.removeOwner(ownerKeys.clusterEndpoint('default', 'x'));
    t.removeOwner(ownerKeys.clusterEndpoint('default', 'y'));
    t.removeOwner(ownerKeys.remoteEndpoint('10.9.9.9'));
    assert.deepEqual(changes, [
      '+10.9.9.9/32=131400@10.2.0.1',
      '+10.9.9.9/32=65900@10.1.0.3',
      '+10.9.9.9/32=65999@null',
      '+10.9.9.9/32=65900@10.1.0.3',
      '+10.9.9.9/32=65901@10.1.0.4',
      '+10.9.9.9/32=131400@10.2.0.1',
      '-10.9.9.9/32',
    ]);
    assert.equal(t.size, 0);
    assert.equal(t.owners, 0);
  });

  it('an owner that changes its claims withdraws the old ones; an unchanged entry is not re-announced', () => {
    const changes: string[] = [];
    const t = new IpcacheTable({ upsert: (p) => changes.push(`+${p}`), remove: (p) => changes.push(`-${p}`) });
    const n2 = node(2);
    t.setOwner(ownerKeys.clusterNode('node2'), clusterNodeContributions(n2, self));
    t.setOwner(ownerKeys.clusterNode('node2'), clusterNodeContributions(n2, self));
    const moved = parseObject('Node', { ...n2, spec: { podCIDR: '10.101.22.0/24' } });
    t.setOwner(ownerKeys.clusterNode('node2'), clusterNodeContributions(moved, self));
    assert.deepEqual(changes, ['+10.1.0.2/32', '+10.101.2.0/24', '-10.101.2.0/24', '+10.101.22.0/24']);
  });

  it('incremental changes end where the whole computation ends', () => {
    const mirror = new Map<string, IpcacheEntry>();
    const t = new IpcacheTable({ upsert: (p, v) => mirror.set(p, v), remove: (p) => mirror.delete(p) });
    const a = inputs();
    fillIpcacheTable(t, a);
    assert.deepEqual(mirror, computeIpcache(a));
    // the remote pod moves, a local pod goes away, node2 goes away
    const b: IpcacheInputs = {
      ...a,
      localEndpoints: [],
      clusterNodes: [node(1)],
      remoteEndpoints: [remoteIp('10.102.1.5', 131_400, '10.2.0.2'), remoteIp('10.102.2.5', 131_401, '10.2.0.2')],
    };
    t.removeOwner(ownerKeys.localEndpoint('c1'));
    t.removeOwner(ownerKeys.clusterNode('node2'));
    fillIpcacheTable(t, b);
    assert.deepEqual(mirror, computeIpcache(b));
    assert.equal(mirror.get('10.101.1.10/32'), undefined, "the pod's Endpoint object is of this node: not a cluster-endpoint claim");
    assert.deepEqual(mirror.get('10.102.1.5/32'), e(131_400, '10.2.0.2'));
  });
});

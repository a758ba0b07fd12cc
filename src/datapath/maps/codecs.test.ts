// Byte-level unit tests of the map codecs (no kernel needed). The layouts
// themselves are checked against the C structs in btf.test.ts.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as config from './config.ts';
import * as endpoints from './endpoints.ts';
import * as events from './events.ts';
import * as ipcache from './ipcache.ts';
import * as metrics from './metrics.ts';
import { DropReason, TraceReason, isDropReason, reasonDescription, reasonName } from './reasons.ts';
import * as settings from './settings.ts';
import type { MapHandle } from './codec.ts';
import * as affinity from './affinity.ts';
import * as backendSlots from './backend-slots.ts';
import * as backends from './backends.ts';
import * as ct from './ct.ts';
import * as maglev from './maglev.ts';
import * as policy from './policy.ts';
import * as revnat from './revnat.ts';
import * as services from './services.ts';
import * as hint from './lb-hint.ts';

/** A Map-backed stand-in for BpfMap. */
function fakeMap(): MapHandle & { store: Map<string, Buffer> } {
  const store = new Map<string, Buffer>();
  return {
    store,
    lookup: (k) => store.get(k.toString('hex')),
    update: (k, v) => void store.set(k.toString('hex'), Buffer.from(v)),
    delete: (k) => store.delete(k.toString('hex')),
    *entries() {
      for (const [k, v] of store) yield [Buffer.from(k, 'hex'), v];
    },
  };
}

describe('ipcache codec', () => {
  it('key: prefixlen host order, address network order, host bits cleared', () => {
    assert.equal(ipcache.encodeKey({ addr: '10.102.1.77', prefixLen: 24 }).toString('hex'), '18000000' + '0a660100');
    assert.equal(ipcache.encodeKey({ addr: '10.1.2.3', prefixLen: 0 }).toString('hex'), '00000000' + '00000000');
    assert.deepEqual(ipcache.decodeKey(Buffer.from('200000000a650014', 'hex')), { addr: '10.101.0.20', prefixLen: 32 });
    assert.throws(() => ipcache.encodeKey({ addr: '10.0.0.0', prefixLen: 33 }), RangeError);
  });

  it('value: identity host order, tunnel endpoint network order, 0.0.0.0 = none', () => {
    const b = ipcache.encodeValue({ identity: 0x20100, tunnelEndpoint: '10.2.0.5', flags: 0 });
    assert.equal(b.toString('hex'), '00010200' + '0a020005' + '00000000');
    assert.deepEqual(ipcache.decodeValue(b), { identity: 0x20100, tunnelEndpoint: '10.2.0.5', flags: 0 });
    assert.equal(ipcache.decodeValue(ipcache.encodeValue({ identity: 2, tunnelEndpoint: null, flags: 0 })).tunnelEndpoint, null);
    assert.throws(() => ipcache.decodeValue(Buffer.alloc(8)), RangeError);
  });

  it('parsePrefix accepts a.b.c.d[/n] only', () => {
    assert.deepEqual(ipcache.parsePrefix('10.1.0.0/16'), { addr: '10.1.0.0', prefixLen: 16 });
    assert.deepEqual(ipcache.parsePrefix('10.1.0.7'), { addr: '10.1.0.7', prefixLen: 32 });
    for (const bad of ['10.1.0.0/33', '10.1.0/8', '10.1.0.0/', '10.1.0.0/8/8', '300.1.0.0/8', 'fe80::/64']) assert.throws(() => ipcache.parsePrefix(bad), RangeError, bad);
  });

  it('typed operations go through the codecs', () => {
    const m = fakeMap();
    ipcache.updateMany(m, [
      [{ addr: '10.1.0.0', prefixLen: 16 }, { identity: 6, tunnelEndpoint: null, flags: 0 }],
      [{ addr: '10.102.0.30', prefixLen: 32 }, { identity: 0x20100, tunnelEndpoint: '10.2.0.5', flags: 0 }],
    ]);
    assert.deepEqual(ipcache.match(m, '10.102.0.30'), { identity: 0x20100, tunnelEndpoint: '10.2.0.5', flags: 0 });
    assert.deepEqual([...ipcache.entries(m)].map(([k]) => ipcache.formatPrefix(k)), ['10.1.0.0/16', '10.102.0.30/32']);
    assert.equal(ipcache.remove(m, { addr: '10.1.0.0', prefixLen: 16 }), true);
    assert.equal(ipcache.remove(m, { addr: '10.1.0.0', prefixLen: 16 }), false);
  });
});

describe('endpoints codec', () => {
  it('round-trips with the documented byte layout', () => {
    const v = { ifindex: 77, identity: 0x10101, endpointId: 513, flags: 0, mac: '0a:00:00:00:00:14', nodeMac: 'fe:ed:be:ef:00:01' };
    const b = endpoints.encodeValue(v);
    assert.equal(b.toString('hex'), '4d000000' + '01010100' + '0102' + '0000' + '0a0000000014' + 'feedbeef0001');
    assert.deepEqual(endpoints.decodeValue(b), v);
    assert.equal(endpoints.encodeKey({ ip: '10.101.0.20' }).toString('hex'), '0a650014');
    assert.throws(() => endpoints.encodeValue({ ...v, mac: '0a:00:00:00:00' }), RangeError);
    assert.throws(() => endpoints.encodeValue({ ...v, endpointId: 70000 }), RangeError);
  });
});

describe('metrics codec', () => {
  it('key: the slot reason * METRICS_DIRS + direction, as a __u32', () => {
    assert.equal(metrics.encodeKey({ reason: DropReason.DROP_TTL_EXCEEDED, direction: 'egress' }).toString('hex'), '1e020000'); // 0x87 * 4 + 2
    assert.deepEqual(metrics.decodeKey(Buffer.from('09000000', 'hex')), { reason: TraceReason.TRACE_TO_OVERLAY, direction: 'ingress' });
    assert.deepEqual(metrics.decodeKey(metrics.encodeKey({ reason: 255, direction: 'egress' })), { reason: 255, direction: 'egress' });
    assert.throws(() => metrics.decodeKey(Buffer.from('00040000', 'hex')), RangeError, 'slot 1024 is beyond the array');
    assert.throws(() => metrics.encodeKey({ reason: 256, direction: 'egress' }), RangeError);
  });

  it('value: sums the per-CPU copies', () => {
    const cpu = (p: bigint, b: bigint) => metrics.encodeValue({ packets: p, bytes: b });
    assert.deepEqual(metrics.decodeValue(Buffer.concat([cpu(1n, 100n), cpu(0n, 0n), cpu(2n, 60n)])), { packets: 3n, bytes: 160n });
    assert.throws(() => metrics.decodeValue(Buffer.alloc(20)), RangeError);
  });

  it('read() names and orders the counters that were hit, skipping zero slots', () => {
    // an array: every slot exists, most of them zero
    const m = fakeMap();
    const zero = metrics.encodeValue({ packets: 0n, bytes: 0n });
    for (let i = 0; i < metrics.MAX_ENTRIES; i++) m.update(Buffer.from(new Uint32Array([i]).buffer), zero);
    m.update(metrics.encodeKey({ reason: DropReason.DROP_FRAG_NEEDED, direction: 'egress' }), metrics.encodeValue({ packets: 1n, bytes: 1500n }));
    m.update(metrics.encodeKey({ reason: TraceReason.TRACE_TO_ENDPOINT, direction: 'ingress' }), metrics.encodeValue({ packets: 5n, bytes: 500n }));
    assert.deepEqual(metrics.read(m).map((r) => [r.reasonName, r.direction, r.drop, r.packets]), [
      ['TRACE_TO_ENDPOINT', 'ingress', false, 5n],
      ['DROP_FRAG_NEEDED', 'egress', true, 1n],
    ]);
    assert.deepEqual(metrics.get(m, { reason: 200, direction: 'egress' }), { packets: 0n, bytes: 0n });
    assert.equal(metrics.reset(m), 2);
    assert.equal(m.store.size, metrics.MAX_ENTRIES, 'reset zeroes slots, deletes none');
    assert.deepEqual(metrics.read(m), []);
  });
});

describe('events codec', () => {
  it('round-trips an event and names its reason', () => {
    const e: events.DatapathEvent = {
      timestamp: 123456789n, type: 'drop', reason: DropReason.DROP_UNKNOWN_ENDPOINT, reasonName: 'DROP_UNKNOWN_ENDPOINT', direction: 'ingress',
      srcIp: '10.102.0.30', dstIp: '10.101.0.99', srcIdentity: 0x20100, dstIdentity: 0, ifindex: 5, targetIfindex: 0,
      tunnelEndpoint: '10.2.0.5', length: 74, protocol: 6, srcPort: 5555, dstPort: 8080, tcpFlags: 0x12,
      service: { ip: '10.96.0.10', port: 80 },
    };
    const { reasonName: _n, ...raw } = e;
    const b = events.encode(raw);
    assert.equal(b.length, 56);
    assert.equal(b[48], 0x12, 'TCP flags');
    assert.equal(b.subarray(52, 56).toString('hex'), '0a60000a', 'service frontend, network order');
    assert.deepEqual(events.decode(events.encode({ ...raw, service: null })).service, null);
    assert.equal(b.subarray(8, 12).toString('hex'), '0a66001e', 'addresses network order');
    assert.equal(b.subarray(40, 42).toString('hex'), 'b315', 'ports host order (little-endian here)');
    assert.deepEqual(events.decode(b), e);
    assert.throws(() => events.decode(Buffer.alloc(40)), RangeError);
  });
});

describe('settings codec', () => {
  it('trace flags <-> bit 0 (every forward) and bit 1 (TCP connection openings); unknown bits are refused', () => {
    const m = fakeMap();
    assert.deepEqual(settings.get(m), { traceForward: false, traceNew: false });
    settings.set(m, { traceForward: true });
    assert.equal([...m.store.values()][0]!.toString('hex'), '01000000');
    assert.deepEqual(settings.get(m), { traceForward: true, traceNew: false });
    settings.set(m, { traceForward: false, traceNew: true });
    assert.equal([...m.store.values()][0]!.toString('hex'), '02000000');
    assert.deepEqual(settings.get(m), { traceForward: false, traceNew: true });
    assert.throws(() => settings.decodeValue(Buffer.from('04000000', 'hex')), RangeError);
  });
});

describe('config', () => {
  it('encodes every const volatile as 4 bytes, the node IP in network order', () => {
    const enc = new Map(config.encodeConfig({ vxlanIfindex: 9, nodeIp: '10.1.0.1', clusterId: 3, redirectPeer: true, tunnelMtu: 1450 }));
    assert.deepEqual(Object.fromEntries([...enc].map(([k, v]) => [k, v.toString('hex')])), {
      CFG_VXLAN_IFINDEX: '09000000',
      CFG_NODE_IP: '0a010001',
      CFG_CLUSTER_ID: '03000000',
      CFG_REDIRECT_PEER: '01000000',
      CFG_TUNNEL_MTU: 'aa050000',
      CFG_ROUTING_NATIVE: '00000000',
      CFG_TUNNEL_BPF: '00000000',
      CFG_TUNNEL_PORT: '18210000',
      CFG_NATIVE_CIDRS: '00'.repeat(config.NATIVE_CIDRS_SIZE),
    });
    const bpf = new Map(config.encodeConfig({ vxlanIfindex: 9, nodeIp: '10.1.0.1', clusterId: 3, redirectPeer: true, tunnelMtu: 1450, tunnelBpf: true, tunnelPort: 4789 }));
    assert.deepEqual([bpf.get('CFG_TUNNEL_BPF')!.toString('hex'), bpf.get('CFG_TUNNEL_PORT')!.readUInt32LE(0)], ['01000000', 4789]);
    const set: string[] = [];
    config.applyConfig({ setConst: (name) => void set.push(name) }, { vxlanIfindex: 0, nodeIp: '0.0.0.0', clusterId: 0, redirectPeer: false, tunnelMtu: 0 });
    assert.deepEqual(set.sort(), [...Object.values(config.CONST_NAMES), config.NATIVE_CIDRS_NAME].sort());
  });

  it('native routing: the flag and the CIDR slots (address and mask, network order, host bits cleared)', () => {
    const enc = new Map(config.encodeConfig({ vxlanIfindex: 9, nodeIp: '10.1.0.1', clusterId: 3, redirectPeer: true, tunnelMtu: 1450, routingNative: true, nativeCidrs: ['10.101.0.0/16', '10.102.3.7/24'] }));
    assert.equal(enc.get('CFG_ROUTING_NATIVE')!.toString('hex'), '01000000');
    const cidrs = enc.get('CFG_NATIVE_CIDRS')!;
    assert.equal(cidrs.length, config.NATIVE_CIDRS_SIZE);
    assert.equal(cidrs.subarray(0, 16).toString('hex'), '0a650000ffff0000' + '0a660300ffffff00');
    assert.ok(cidrs.subarray(16).equals(Buffer.alloc(config.NATIVE_CIDRS_SIZE - 16)));
    assert.throws(() => config.encodeNativeCidrs(['0.0.0.0/0']), /len 1\.\.32/);
    assert.throws(() => config.encodeNativeCidrs(Array.from({ length: 9 }, (_, i) => `10.${i}.0.0/16`)), /at most 8/);
  });
});

describe('reasons', () => {
  it('names, descriptions and the drop/trace split', () => {
    assert.equal(reasonName(135), 'DROP_TTL_EXCEEDED');
    assert.equal(reasonName(3), 'TRACE_TO_STACK');
    assert.equal(reasonName(250), 'REASON_250');
    assert.equal(reasonDescription(136), 'larger than the tunnel or route MTU');
    assert.ok(Object.values(DropReason).every(isDropReason));
    assert.ok(!Object.values(TraceReason).some(isDropReason));
  });
});

describe('service translation codecs', () => {
  it('services: key VIP and port network order, protocol number; value host order with flags', () => {
    const k = { vip: '10.96.0.10', port: 80, protocol: 'TCP' as const };
    assert.equal(services.encodeKey(k).toString('hex'), '0a60000a' + '0050' + '06' + '00');
    assert.deepEqual(services.decodeKey(services.encodeKey(k)), k);
    assert.equal(services.encodeKey({ ...k, protocol: 'UDP' })[6], 17);
    const v = { serviceId: 5, revnatId: 6, backendCount: 3, sessionAffinity: true, affinityTimeout: 10800, maglev: true };
    assert.equal(services.encodeValue(v).toString('hex'), '05000000' + '06000000' + '302a0000' + '0300' + '0300');
    assert.deepEqual(services.decodeValue(services.encodeValue(v)), v);
    assert.throws(() => services.decodeValue(Buffer.from('05000000060000000000000003000400', 'hex')), /unknown bits/);
    assert.throws(() => services.decodeKey(Buffer.from('0a60000a00500100', 'hex')), /neither TCP nor UDP/);
    assert.throws(() => services.encodeKey({ ...k, port: 70000 }), RangeError);
  });

  it('backends: id key, address and port network order, flags', () => {
    const v = { ip: '10.102.0.30', port: 8080, clusterId: 2, terminating: false, clusterGone: true, notReady: false };
    assert.equal(backends.encodeValue(v).toString('hex'), '0a66001e' + '1f90' + '0200' + '02' + '000000');
    assert.deepEqual(backends.decodeValue(backends.encodeValue(v)), v);
    assert.equal(backends.encodeValue({ ...v, clusterGone: false, terminating: true, notReady: true })[8], 5);
    assert.equal(backends.encodeKey(258).toString('hex'), '02010000');
    assert.throws(() => backends.encodeKey(0), RangeError);
  });

  it('backend slots: (service, slot) -> backend id; pruneBeyond deletes only that service\'s higher slots', () => {
    assert.equal(backendSlots.encodeKey({ serviceId: 5, slot: 2 }).toString('hex'), '05000000' + '0200' + '0000');
    const m = fakeMap();
    backendSlots.updateMany(m, [...backendSlots.tableEntries(5, [11, 12, 13]), ...backendSlots.tableEntries(6, [21, 22, 23])]);
    assert.equal(backendSlots.lookup(m, { serviceId: 5, slot: 1 }), 12);
    assert.equal(backendSlots.pruneBeyond(m, 5, 1), 2);
    assert.deepEqual([...backendSlots.entries(m)].map(([k, v]) => [k.serviceId, k.slot, v]), [[5, 0, 11], [6, 0, 21], [6, 1, 22], [6, 2, 23]]);
  });

  it('maglev: exactly the datapath table size', () => {
    const t = new Uint32Array(maglev.MAGLEV_TABLE_SIZE).map((_, i) => (i % 3) + 1);
    const b = maglev.encodeValue(t);
    assert.equal(b.length, 4 * 1021);
    assert.equal(b.subarray(0, 12).toString('hex'), '01000000' + '02000000' + '03000000');
    assert.deepEqual(maglev.decodeValue(b), t);
    assert.throws(() => maglev.encodeValue([1, 2, 3]), /1021/);
  });

  it('revnat: VIP and port network order', () => {
    assert.equal(revnat.encodeValue({ vip: '10.96.0.10', port: 53 }).toString('hex'), '0a60000a' + '0035' + '0000');
    assert.deepEqual(revnat.decodeValue(Buffer.from('0a60000a00350000', 'hex')), { vip: '10.96.0.10', port: 53 });
  });

  it('ct: key as in the packet with its direction; gc deletes expired entries only', () => {
    const k: ct.Key = { src: '10.101.0.10', dst: '10.96.0.10', sport: 40000, dport: 80, protocol: 'TCP', dir: 'service' };
    assert.equal(ct.encodeKey(k).toString('hex'), '0a65000a' + '0a60000a' + '9c40' + '0050' + '06' + '01' + '0000');
    assert.deepEqual(ct.decodeKey(ct.encodeKey(k)), k);
    assert.equal(ct.encodeKey({ ...k, dir: 'revnat' })[13], 2);
    const v = { backendId: 7, revnatId: 5, lifetime: 1000, closing: true, hairpin: true };
    assert.equal(ct.encodeValue(v).toString('hex'), '07000000' + '05000000' + 'e8030000' + '0300' + '0000');
    assert.deepEqual(ct.decodeValue(ct.encodeValue(v)), v);
    const m = fakeMap();
    ct.update(m, k, { ...v, lifetime: 99 });
    ct.update(m, { ...k, dir: 'revnat' }, { ...v, lifetime: 101 });
    assert.equal(ct.gc(m, 100), 1);
    assert.deepEqual([...ct.entries(m)].map(([key]) => key.dir), ['revnat']);
    assert.ok(Math.abs(ct.monotonicSeconds() - Number(process.hrtime.bigint() / 1_000_000_000n)) <= 1);
  });

  it('affinity: (client, service) -> backend, last use; removeForBackends', () => {
    assert.equal(affinity.encodeKey({ client: '10.101.0.10', serviceId: 5 }).toString('hex'), '0a65000a' + '05000000');
    const m = fakeMap();
    affinity.update(m, { client: '10.101.0.10', serviceId: 5 }, { backendId: 1, lastUsed: 10 });
    affinity.update(m, { client: '10.101.0.11', serviceId: 5 }, { backendId: 2, lastUsed: 10 });
    affinity.update(m, { client: '10.101.0.10', serviceId: 6 }, { backendId: 1, lastUsed: 10 });
    assert.equal(affinity.removeForBackends(m, 5, [1]), 1);
    assert.equal(affinity.removeForBackends(m, 5), 1);
    assert.deepEqual([...affinity.entries(m)], [[{ client: '10.101.0.10', serviceId: 6 }, { backendId: 1, lastUsed: 10 }]]);
  });

  it('reasons: the service drops have names and descriptions', () => {
    assert.equal(reasonName(143), 'DROP_NO_SERVICE_BACKEND');
    assert.equal(reasonDescription(DropReason.DROP_SERVICE_FRAGMENT), 'fragmented service traffic');
    assert.equal(reasonName(DropReason.DROP_CT_WRITE_FAILED), 'DROP_CT_WRITE_FAILED');
  });
});

describe('policy codecs', () => {
  it('key: prefixlen 64 + port bits, numbers host order, port network order', () => {
    const k: policy.Key = { endpointId: 0x1234, direction: 'egress', protocol: 6, identity: 0x20100, port: 8080, portPrefixLen: 14 };
    const b = policy.encodeKey(k);
    assert.equal(b.toString('hex'), '4e000000' + '3412' + '02' + '06' + '00010200' + '1f90' + '0000');
    assert.deepEqual(policy.decodeKey(b), k);
    const any = policy.encodeKey({ ...k, port: 0, portPrefixLen: 0, direction: 'ingress', protocol: 0, identity: 0 });
    assert.equal(any.toString('hex'), '40000000' + '3412' + '01' + '00' + '00000000' + '0000' + '0000');
    assert.throws(() => policy.encodeKey({ ...k, port: 8081 }), RangeError, 'bits beyond the prefix');
    assert.throws(() => policy.encodeKey({ ...k, portPrefixLen: 17 }), RangeError);
    assert.throws(() => policy.decodeKey(Buffer.from('3f000000' + '00'.repeat(12), 'hex')), RangeError);
  });

  it('values: allow/deny and enforcement bits', () => {
    assert.equal(policy.encodeValue({ allow: true, deny: true }).toString('hex'), '03000000');
    assert.deepEqual(policy.decodeValue(Buffer.from('02000000', 'hex')), { allow: false, deny: true });
    assert.equal(policy.encodeEnforceKey({ endpointId: 20 }).toString('hex'), '14000000');
    assert.equal(policy.encodeEnforceValue({ active: true, ingress: true, egress: true }).toString('hex'), '07000000');
    assert.deepEqual(policy.decodeEnforceValue(Buffer.from('05000000', 'hex')), { active: true, ingress: false, egress: true });
    const m = fakeMap();
    policy.enforce.update(m, { endpointId: 7 }, { active: true, ingress: true, egress: false });
    assert.deepEqual([...policy.enforce.entries(m)], [[{ endpointId: 7 }, { active: true, ingress: true, egress: false }]]);
    policy.clearEnforce(m, [7]);
    assert.deepEqual([...policy.enforce.entries(m)], [[{ endpointId: 7 }, { active: false, ingress: false, egress: false }]]);
  });

  it('cm_policy_conn: one key for both directions, the opener\'s way in the value, a sum over both', () => {
    const fwd: policy.Connection = { src: '10.101.0.10', dst: '10.101.0.20', sport: 40000, dport: 80, protocol: 6 };
    const rev: policy.Connection = { src: fwd.dst, dst: fwd.src, sport: fwd.dport, dport: fwd.sport, protocol: 6 };
    // the lower address first, network order
    assert.equal(policy.encodeConnKey(fwd).key.toString('hex'), '0a65000a' + '0a650014' + '9c40' + '0050' + '06' + '000000');
    assert.deepEqual(policy.encodeConnKey(rev).key, policy.encodeConnKey(fwd).key);
    assert.equal(policy.encodeConnKey(fwd).way, policy.PolicyConnWay.POLICY_CONN_A_TO_B);
    assert.equal(policy.encodeConnKey(rev).way, policy.PolicyConnWay.POLICY_CONN_B_TO_A);
    // addresses compare as numbers, not as strings or little-endian words
    assert.equal(policy.encodeConnKey({ ...fwd, src: '10.101.0.9', dst: '10.101.1.2' }).way, policy.PolicyConnWay.POLICY_CONN_A_TO_B);
    assert.equal(policy.encodeConnKey({ ...fwd, src: '9.255.255.255', dst: '10.0.0.0' }).way, policy.PolicyConnWay.POLICY_CONN_A_TO_B);
    // the same address: the lower port first; equal ends are a-to-b
    assert.equal(policy.encodeConnKey({ ...fwd, dst: fwd.src, sport: 90, dport: 80 }).way, policy.PolicyConnWay.POLICY_CONN_B_TO_A);
    assert.equal(policy.encodeConnKey({ ...fwd, dst: fwd.src, sport: 80, dport: 80 }).way, policy.PolicyConnWay.POLICY_CONN_A_TO_B);
    assert.throws(() => policy.encodeConnKey({ ...fwd, sport: 65536 }), /sport 65536/);

    const verdict: policy.Verdict = { rev: 9, egressRemote: 0, ingressRemote: 70000, egressEndpoint: 0, ingressEndpoint: 12, checks: policy.PolicyVerdictFlag.POLICY_V_INGRESS | policy.PolicyVerdictFlag.POLICY_V_PORTS };
    const [k, v] = policy.encodeConn(rev, { lifetime: 500, flags: 1, verdict });
    assert.deepEqual(policy.decodeConn(k, v), { ...rev, lifetime: 500, flags: 1, verdict, valid: true });
    const [k2, v2] = policy.encodeConn(fwd, { lifetime: 500, flags: 0 });
    assert.deepEqual(k2, k);
    assert.deepEqual(policy.decodeConn(k2, v2), { ...fwd, lifetime: 500, flags: 0, verdict: null, valid: true });
    // the sum covers the key, the opener and the verdict, not the expiry and flags (refreshed in place)
    const changed = (mut: (kb: Buffer, vb: Buffer) => void): boolean => {
      const kb = Buffer.from(k);
      const vb = Buffer.from(v);
      mut(kb, vb);
      return policy.decodeConn(kb, vb).valid;
    };
    assert.equal(changed((kb) => (kb[11] = 81)), false, 'port_b');
    assert.equal(changed((_, vb) => (vb[policy.CONN_VALUE_LAYOUT.fields.opener.offset] = 0)), false, 'opener');
    assert.equal(changed((_, vb) => (vb[policy.CONN_VALUE_LAYOUT.fields.verdict.offset] = 10)), false, 'verdict.rev');
    assert.equal(changed((_, vb) => (vb[0] = 1)), true, 'lifetime');
    assert.equal(changed((_, vb) => (vb[4] = 0)), true, 'flags');
    assert.throws(() => policy.encodeConn(fwd, { lifetime: 1, flags: 0, verdict: { ...verdict, checks: 0 } }), /at least one check/);

    const m = fakeMap();
    policy.writeConnections(m, [
      [fwd, { lifetime: 100, flags: 0 }],
      [{ ...fwd, sport: 40001 }, { lifetime: 300, flags: 0 }],
    ]);
    assert.equal(policy.removeExpiredConnections(m, 200), 1);
    assert.deepEqual([...policy.connections(m)].map((c) => c.sport), [40001]);
  });

  it('legacyConnections: the live entries of an old cm_policy_ct, one per connection', () => {
    const data: Array<[Buffer, Buffer]> = [];
    const old = (c: policy.Connection, lifetime: number, flags: number): void => {
      const kb = Buffer.alloc(16);
      kb.set(Buffer.from(c.src.split('.').map(Number)), 0);
      kb.set(Buffer.from(c.dst.split('.').map(Number)), 4);
      kb.writeUInt16BE(c.sport, 8);
      kb.writeUInt16BE(c.dport, 10);
      kb[12] = c.protocol;
      const vb = Buffer.alloc(8);
      vb.writeUInt32LE(lifetime, 0);
      vb.writeUInt32LE(flags, 4);
      data.push([kb, vb]);
    };
    const a: policy.Connection = { src: '10.101.0.20', dst: '10.101.0.10', sport: 40000, dport: 80, protocol: 6 };
    const icmpAB: policy.Connection = { src: '10.101.0.10', dst: '10.101.0.30', sport: 0, dport: 0, protocol: 1 };
    const icmpBA: policy.Connection = { src: icmpAB.dst, dst: icmpAB.src, sport: 0, dport: 0, protocol: 1 };
    old(a, 200, 1);
    old({ ...a, sport: 40001 }, 50, 0); // expired
    old(icmpAB, 150, 0);
    old(icmpBA, 180, 0); // both ways recorded: the longer-lived opener wins
    const map = { keySize: 16, valueSize: 8, *entries() { yield* data; } };
    assert.deepEqual(policy.legacyConnections(map, 100), [
      [a, { lifetime: 200, flags: 1 }],
      [icmpBA, { lifetime: 180, flags: 0 }],
    ]);
    assert.throws(() => policy.legacyConnections({ ...map, valueSize: 32 }, 100), /cm_policy_ct: key 16 and value 32 bytes/);
  });
});

/** Two addresses whose bits are the same. */
function collision(): [string, string] {
  const seen = new Map<number, string>();
  for (let i = 0; ; i++) {
    const a = `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
    const other = seen.get(hint.hintBit(a));
    if (other) return [other, a];
    seen.set(hint.hintBit(a), a);
  }
}

describe('cm_lb_hint codec and writers', () => {
  it('counts: a bit stays while any address of it is counted, and encodes as encode() of the same addresses', () => {
    const [a, b] = collision();
    const c = new hint.HintCounts();
    c.change({ vips: [a, b], backends: ['10.101.0.1'] }, 1);
    assert.ok(c.encode().equals(hint.encode({ vips: [a], backends: ['10.101.0.1'] })));
    c.change({ vips: [a], backends: [] }, -1);
    assert.ok(hint.hasBit(c.encode(), 'vip', a), 'b still needs the bit a shares with it');
    assert.ok(!hint.hasBit(c.encode(), 'backend', a), 'the sets are apart');
    c.change({ vips: [b], backends: ['10.101.0.1'] }, -1);
    assert.ok(c.encode().equals(hint.encode({ vips: [], backends: [] })), 'nothing counted: no bit, valid');
    assert.ok(hint.hasBit(c.encode({ vips: [], backends: ['10.102.0.9'] }), 'backend', '10.102.0.9'), 'extra addresses are added');
    assert.throws(() => c.change({ vips: [b], backends: [] }, -1), /removed more often than added/);
    c.change({ vips: [a], backends: ['10.101.0.1'] }, 1);
    assert.throws(() => c.change({ vips: [a, b], backends: ['10.101.0.1'] }, -1), /removed more often than added/, 'a and b share the one count there is');
    assert.ok(c.encode().equals(hint.encode({ vips: [a], backends: ['10.101.0.1'] })), 'a refused change changes nothing');
  });

  it('writeValue: nothing when the value holds, bits before valid on a hint not valid yet', () => {
    const m = fakeMap();
    const writes: Buffer[] = [];
    const update = m.update;
    m.update = (k, v, f) => (writes.push(Buffer.from(v)), update(k, v, f));
    const next = hint.encode({ vips: ['10.96.0.10'], backends: [] });
    assert.equal(hint.writeValue(m, next, hint.read(m)), true);
    assert.equal(writes.length, 2);
    assert.ok(!hint.isValid(writes[0]!) && hint.hasBit(writes[0]!, 'vip', '10.96.0.10'), 'first the bits, not valid');
    assert.ok(writes[1]!.equals(next));
    assert.equal(hint.writeValue(m, next, hint.read(m)), false);
    assert.equal(writes.length, 2, 'the same value is not written again');
    assert.equal(hint.add(m, { vips: ['10.96.0.10'], backends: [] }), false, 'a bit already set: no write');
    assert.equal(hint.add(m, { vips: [], backends: ['10.101.0.1'] }), true);
    assert.equal(writes.length, 3);
    assert.ok(hint.mayBe(hint.read(m), 'backend', '10.101.0.1') && hint.mayBe(hint.read(m), 'vip', '10.96.0.10'));
  });
});

// Network policy in the datapath (bpf/lib/policy.h) with BPF_PROG_TEST_RUN:
// frames through from_container (egress of the sender, ingress of a local
// receiver), test_from_overlay (ingress with the identity from the VNI) and
// to_container (what the node's stack routes into a pod); CIDR rules match
// addresses through cm_policy_cidr, pods included,
// against maps written by src/datapath/maps/policy-entries.ts; verdicts cross-checked
// against src/policy/decide.ts. Test-run uses lo (ifindex 1), so every
// local pod here sits behind ifindex 1 and any of them can send.
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import { removePinDir } from './bpffs.ts';
import { BpfObject } from './libbpf/object.ts';
import type { BpfMap } from './libbpf/map.ts';
import { TcAction, skbContext } from './libbpf/program.ts';
import type { RingBufferReader } from './libbpf/ringbuf.ts';
import { planFrontend } from '../loadbalancer/index.ts';
import * as backendSlots from './maps/backend-slots.ts';
import * as backends from './maps/backends.ts';
import * as config from './maps/config.ts';
import * as maglev from './maps/maglev.ts';
import * as revnat from './maps/revnat.ts';
import * as services from './maps/services.ts';
import * as endpoints from './maps/endpoints.ts';
import * as events from './maps/events.ts';
import * as ipcache from './maps/ipcache.ts';
import * as metrics from './maps/metrics.ts';
import * as policy from './maps/policy.ts';
import { monotonicSeconds } from './maps/ct.ts';
import { decide, type PacketQuery } from '../policy/decide.ts';
import { LOCAL_IDENTITY_SCOPE, isLocalIdentity } from '../policy/cidr.ts';
import { parsePolicy } from '../policy/parse.ts';
import { policyEntry } from '../policy/testing.ts';
import { PolicyResolver } from '../policy/resolver.ts';
import { identityLabels } from '../identity/labels.ts';
import { toPolicyMaps, type EnforcementState } from './maps/policy-entries.ts';
import type { Direction, PolicyMapEntry, ProtocolNumber } from '../policy/types.ts';
import { ETH_P_IP, ethernet, ipv4, tcp } from './test-packets.ts';
import { datapathSkipReason, loadDatapathObject, tempPinDir } from './testing.ts';
import { prng } from '../util/prng.ts';

const CFG: config.DatapathConfig = { vxlanIfindex: 42, nodeIp: '10.1.0.1', clusterId: 1, redirectPeer: false, tunnelMtu: 1450 };
const MAC = { pod: '0a:00:00:00:00:0a', node: '0e:00:00:00:00:0a' };
const A = { ip: '10.101.0.10', identity: 0x10100, endpointId: 10 };
const B = { ip: '10.101.0.20', identity: 0x10101, endpointId: 20 };
/** A pod on another node. */
const R = { ip: '10.102.0.30', identity: 0x20100, node: '10.2.0.5' };

type Proto = 6 | 17 | 132;

/** Ethernet + IPv4 + TCP (SYN unless flags) / UDP / SCTP common header. */
function frame(src: string, dst: string, protocol: Proto, sport: number, dport: number, tcpFlags = 0x02): Buffer {
  let l4: Buffer;
  if (protocol === 6) {
    l4 = tcp(src, dst, sport, dport, Buffer.alloc(0), tcpFlags);
  } else {
    l4 = Buffer.alloc(protocol === 17 ? 8 : 12);
    l4.writeUInt16BE(sport, 0);
    l4.writeUInt16BE(dport, 2);
    if (protocol === 17) l4.writeUInt16BE(8, 4);
  }
  return ethernet(MAC.node, MAC.pod, ETH_P_IP, ipv4({ src, dst, protocol, payload: l4 }));
}

/** Entries here name their endpoint and direction. */
const E: (p: Partial<PolicyMapEntry> & Pick<PolicyMapEntry, 'endpointId' | 'direction'>) => PolicyMapEntry = policyEntry;
const enf = (endpointId: number, direction: Direction): EnforcementState => ({ endpointId, direction, enforced: true });

describe('network policy in the datapath (BPF_PROG_TEST_RUN)', { skip: datapathSkipReason() }, () => {
  let dir: string | undefined;
  const objs: BpfObject[] = [];
  let lxc: BpfObject;
  let ovl: BpfObject;
  let policyMap: BpfMap;
  let enforceMap: BpfMap;
  let ctMap: BpfMap;
  let ipcacheMap: BpfMap;
  let cidrMap: BpfMap;
  let revMap: BpfMap;
  let metricsMap: BpfMap;
  let reader: RingBufferReader | undefined;
  const got: events.DatapathEvent[] = [];

  function load(rel: string): BpfObject {
    const o = loadDatapathObject(rel, dir!, CFG);
    objs.push(o);
    return o;
  }

  before(() => {
    dir = tempPinDir('policy');
    lxc = load('lxc.bpf.o');
    ovl = load('test/overlay_test.bpf.o');
    policyMap = lxc.map(policy.MAP_NAME);
    enforceMap = lxc.map(policy.ENFORCE_MAP_NAME);
    ctMap = lxc.map(policy.CONN_MAP_NAME);
    ipcacheMap = lxc.map(ipcache.MAP_NAME);
    cidrMap = lxc.map(policy.CIDR_MAP_NAME);
    revMap = lxc.map(policy.REV_MAP_NAME);
    metricsMap = lxc.map(metrics.MAP_NAME);
    const epMap = lxc.map(endpoints.MAP_NAME);
    for (const p of [A, B]) {
      endpoints.update(epMap, { ip: p.ip }, { ifindex: 1, identity: p.identity, endpointId: p.endpointId, flags: 0, mac: MAC.pod, nodeMac: MAC.node });
      ipcache.update(ipcacheMap, { addr: p.ip, prefixLen: 32 }, { identity: p.identity, tunnelEndpoint: null, flags: 0 });
    }
    ipcache.update(ipcacheMap, { addr: R.ip, prefixLen: 32 }, { identity: R.identity, tunnelEndpoint: R.node, flags: 0 });
    reader = events.openReader(lxc.map(events.MAP_NAME), (e) => got.push(e));
  });

  after(() => {
    reader?.close();
    for (const o of objs) o.close();
    if (dir) removePinDir(dir);
  });

  /** cm_policy_conn's connections, each the way its opener sent; every entry's sum holds. */
  function conns(): policy.Connection[] {
    return [...policy.connections(ctMap)].map(({ src, dst, sport, dport, protocol, valid }) => {
      assert.ok(valid, `the entry of ${src}:${sport} -> ${dst}:${dport} is whole`);
      return { src, dst, sport, dport, protocol };
    });
  }

  function clearPolicy(): void {
    policy.removeMany(policyMap, [...policy.entries(policyMap)].map(([k]) => k));
    policy.clearEnforce(enforceMap, [A.endpointId, B.endpointId]);
    for (const [k] of [...ctMap.entries()]) ctMap.delete(k);
    policy.bumpRevision(revMap);
  }

  function setPolicy(entries: PolicyMapEntry[], enforcement: EnforcementState[] = []): void {
    clearPolicy();
    const m = toPolicyMaps(entries, enforcement);
    policy.updateMany(policyMap, m.policy);
    policy.enforce.updateMany(enforceMap, m.enforce);
    policy.bumpRevision(revMap);
  }

  beforeEach(() => {
    clearPolicy();
    policy.cidr.removeMany(cidrMap, [...policy.cidr.entries(cidrMap)].map(([k]) => k));
    metrics.reset(metricsMap);
    reader!.consume();
    got.length = 0;
  });

  function run(obj: BpfObject, prog: string, f: Buffer): { retval: number; events: events.DatapathEvent[] } {
    const r = obj.program(prog).testRun({ data: f });
    got.length = 0;
    reader!.consume();
    return { retval: r.retval, events: [...got] };
  }

  function setTunnel(identity: number, remote: string): void {
    const v = Buffer.alloc(8);
    v.writeUInt32LE(identity, 0);
    Buffer.from(remote.split('.').map(Number)).copy(v, 4);
    ovl.map('cm_test_tunnel').update(Buffer.alloc(4), v);
  }

  /** 'pass' (redirected), or the drop reason's name. */
  function verdict(r: { retval: number; events: events.DatapathEvent[] }): string {
    if (r.retval === TcAction.redirect) return 'pass';
    assert.equal(r.retval, TcAction.shot);
    const drop = r.events.filter((e) => e.type === 'drop');
    assert.equal(drop.length, 1, 'one drop event');
    return drop[0]!.reasonName;
  }

  const fromContainer = (f: Buffer) => run(lxc, 'from_container', f);
  const fromOverlay = (identity: number, f: Buffer) => {
    setTunnel(identity, R.node);
    return run(ovl, 'test_from_overlay', f);
  };

  it('enforcedSlots(): the slots of the 65536 with a flag, read in place across batch boundaries, as a decoded copy of every slot would say', () => {
    const ids = [0, 1, 4095, 4096, 40000, 65535];
    const want = ids.map((endpointId, i): [number, policy.EnforceValue] => [endpointId, { active: i !== 2, ingress: i % 2 === 0, egress: i % 3 === 0 }]);
    policy.enforce.updateMany(enforceMap, want.map(([endpointId, v]) => [{ endpointId }, v] as const));
    const unknownBit = Buffer.alloc(4);
    unknownBit.writeUInt32LE(1 << 8);
    enforceMap.update(policy.encodeEnforceKey({ endpointId: 7 }), unknownBit);
    try {
      assert.deepEqual(policy.enforcedSlots(enforceMap), want);
      const copied = enforceMap
        .lookupBatch(4096)
        .map(([k, v]) => [policy.decodeEnforceKey(k).endpointId, policy.decodeEnforceValue(v)] as const)
        .filter(([, v]) => v.active || v.ingress || v.egress);
      assert.deepEqual(policy.enforcedSlots(enforceMap), copied);
    } finally {
      policy.clearEnforce(enforceMap, [...ids, 7]);
    }
    assert.deepEqual(policy.enforcedSlots(enforceMap), []);
  });

  it('with empty maps behaviour is as before and nothing is tracked', () => {
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40000, 80))), 'pass');
    assert.equal(verdict(fromContainer(frame(A.ip, R.ip, 17, 40000, 53))), 'pass');
    assert.equal(verdict(fromOverlay(R.identity, frame(R.ip, B.ip, 132, 5000, 9))), 'pass');
    assert.equal([...policy.connections(ctMap)].length, 0);
    // Entries of an endpoint that is not ACTIVE in cm_policy_enforce are not looked at.
    policy.update(policyMap, { endpointId: B.endpointId, direction: 'ingress', protocol: 0, identity: 0, port: 0, portPrefixLen: 0 }, { allow: false, deny: true });
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40000, 80))), 'pass');
    policy.enforce.update(enforceMap, { endpointId: B.endpointId }, { active: true, ingress: false, egress: false });
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40000, 80))), 'DROP_POLICY_DENY');
  });

  it('allow: an enforced ingress admits exactly the allowed port; the rest is DROP_POLICY, counted, with an event', () => {
    setPolicy([E({ endpointId: B.endpointId, direction: 'ingress', remoteIdentity: A.identity, protocol: 6, port: 80, portEnd: 80 })], [enf(B.endpointId, 'ingress')]);
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40000, 80))), 'pass');
    metrics.reset(metricsMap);
    const f = frame(A.ip, B.ip, 6, 40000, 81);
    const r = fromContainer(f);
    assert.equal(verdict(r), 'DROP_POLICY');
    const e = r.events[0]!;
    assert.deepEqual(
      [e.direction, e.srcIdentity, e.dstIdentity, e.srcIp, e.dstIp, e.srcPort, e.dstPort, e.protocol],
      ['ingress', A.identity, B.identity, A.ip, B.ip, 40000, 81, 6],
    );
    assert.deepEqual(
      metrics.read(metricsMap).map((m) => [m.reasonName, m.direction, m.packets, m.bytes]),
      [['DROP_POLICY', 'ingress', 1n, BigInt(f.length)]],
    );
    // From another node: the identity from the VNI is not A's.
    assert.equal(verdict(fromOverlay(R.identity, frame(R.ip, B.ip, 6, 40000, 80))), 'DROP_POLICY');
    assert.equal(verdict(fromOverlay(A.identity, frame(R.ip, B.ip, 6, 40000, 80))), 'pass');
  });

  it('a direction that is not enforced passes whatever its allow entries say', () => {
    setPolicy([E({ endpointId: B.endpointId, direction: 'ingress', remoteIdentity: A.identity, protocol: 6, port: 80, portEnd: 80 })], [enf(B.endpointId, 'egress')]);
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40000, 22))), 'pass');
    assert.equal(verdict(fromOverlay(R.identity, frame(R.ip, B.ip, 17, 1, 2))), 'pass');
  });

  it('explicit deny beats allow, and denies also where nothing is enforced', () => {
    setPolicy(
      [
        E({ endpointId: B.endpointId, direction: 'ingress', remoteIdentity: A.identity }),
        E({ endpointId: B.endpointId, direction: 'ingress', remoteIdentity: A.identity, protocol: 6, port: 80, portEnd: 80, verdict: 'deny' }),
      ],
      [enf(B.endpointId, 'ingress')],
    );
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40000, 80))), 'DROP_POLICY_DENY');
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40000, 81))), 'pass');
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 17, 40000, 80))), 'pass');
    setPolicy([E({ endpointId: B.endpointId, direction: 'ingress', remoteIdentity: 0, verdict: 'deny', protocol: 17, port: 53, portEnd: 53 })]);
    assert.equal(verdict(fromOverlay(R.identity, frame(R.ip, B.ip, 17, 999, 53))), 'DROP_POLICY_DENY');
    assert.equal(verdict(fromOverlay(R.identity, frame(R.ip, B.ip, 17, 999, 54))), 'pass');
    assert.deepEqual(metrics.read(metricsMap).filter((m) => m.reasonName === 'DROP_POLICY_DENY').map((m) => [m.direction, m.packets]), [['ingress', 2n]]);
  });

  it('port ranges: inside passes, either side outside drops', () => {
    setPolicy([E({ endpointId: B.endpointId, direction: 'ingress', protocol: 6, port: 8000, portEnd: 8099 })], [enf(B.endpointId, 'ingress')]);
    const v = (port: number) => verdict(fromOverlay(R.identity, frame(R.ip, B.ip, 6, 1234, port)));
    assert.deepEqual([7999, 8000, 8001, 8063, 8064, 8095, 8099, 8100, 0, 65535].map(v), [
      'DROP_POLICY', 'pass', 'pass', 'pass', 'pass', 'pass', 'pass', 'DROP_POLICY', 'DROP_POLICY', 'DROP_POLICY',
    ]);
  });

  it('any-identity and any-port entries', () => {
    setPolicy(
      [
        E({ endpointId: B.endpointId, direction: 'ingress', remoteIdentity: 0, protocol: 6, port: 443, portEnd: 443 }),
        E({ endpointId: B.endpointId, direction: 'ingress', remoteIdentity: A.identity, protocol: 0 }),
      ],
      [enf(B.endpointId, 'ingress')],
    );
    assert.equal(verdict(fromOverlay(R.identity, frame(R.ip, B.ip, 6, 1, 443))), 'pass');
    assert.equal(verdict(fromOverlay(0x30000, frame(R.ip, B.ip, 6, 1, 443))), 'pass');
    assert.equal(verdict(fromOverlay(R.identity, frame(R.ip, B.ip, 6, 1, 444))), 'DROP_POLICY');
    for (const [p, port] of [[6, 1], [17, 53], [132, 9]] as const) assert.equal(verdict(fromContainer(frame(A.ip, B.ip, p, 1, port))), 'pass');
  });

  it('protocol: an entry for one protocol does not admit another on the same port', () => {
    setPolicy(
      [
        E({ endpointId: B.endpointId, direction: 'ingress', protocol: 17, port: 53, portEnd: 53 }),
        E({ endpointId: B.endpointId, direction: 'ingress', protocol: 132, port: 9, portEnd: 9 }),
      ],
      [enf(B.endpointId, 'ingress')],
    );
    const v = (p: Proto, port: number) => verdict(fromOverlay(R.identity, frame(R.ip, B.ip, p, 1, port)));
    assert.deepEqual([v(17, 53), v(6, 53), v(132, 53), v(132, 9), v(6, 9), v(17, 9)], ['pass', 'DROP_POLICY', 'DROP_POLICY', 'pass', 'DROP_POLICY', 'DROP_POLICY']);
  });

  it('protocols without ports (ICMP) match only all-ports entries; echo replies pass via conntrack', () => {
    const icmp = (src: string, dst: string, type: number) => {
      const m = Buffer.from([type, 0, 0, 0, 0, 1, 0, 1]);
      return ethernet(MAC.node, MAC.pod, ETH_P_IP, ipv4({ src, dst, protocol: 1, payload: m }));
    };
    setPolicy(
      [
        E({ endpointId: B.endpointId, direction: 'ingress', protocol: 0, port: 0, portEnd: 100 }),
        E({ endpointId: A.endpointId, direction: 'egress', remoteIdentity: B.identity }),
      ],
      [enf(A.endpointId, 'ingress'), enf(A.endpointId, 'egress'), enf(B.endpointId, 'ingress')],
    );
    assert.equal(verdict(fromContainer(icmp(A.ip, B.ip, 8))), 'DROP_POLICY', 'a port range admits no ICMP');
    setPolicy(
      [
        E({ endpointId: B.endpointId, direction: 'ingress', remoteIdentity: A.identity, protocol: 0 }),
        E({ endpointId: A.endpointId, direction: 'egress', remoteIdentity: B.identity }),
      ],
      [enf(A.endpointId, 'ingress'), enf(A.endpointId, 'egress'), enf(B.endpointId, 'ingress')],
    );
    assert.equal(verdict(fromContainer(icmp(B.ip, A.ip, 8))), 'DROP_POLICY', 'A accepts nothing');
    assert.equal(verdict(fromContainer(icmp(A.ip, B.ip, 8))), 'pass');
    assert.equal(verdict(fromContainer(icmp(B.ip, A.ip, 0))), 'pass', 'the echo reply');
  });

  it('egress: enforced at the sender, before the tunnel; the destination identity from the ipcache', () => {
    setPolicy([E({ endpointId: A.endpointId, direction: 'egress', remoteIdentity: R.identity, protocol: 6, port: 443, portEnd: 443 })], [enf(A.endpointId, 'egress')]);
    assert.equal(verdict(fromContainer(frame(A.ip, R.ip, 6, 40000, 443))), 'pass');
    const r = fromContainer(frame(A.ip, R.ip, 6, 40000, 80));
    assert.equal(verdict(r), 'DROP_POLICY');
    assert.deepEqual([r.events[0]!.direction, r.events[0]!.srcIdentity, r.events[0]!.dstIdentity, r.events[0]!.dstPort], ['egress', A.identity, R.identity, 80]);
    // Local destination: egress of A is checked before ingress of B (not enforced).
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40000, 443))), 'DROP_POLICY');
    // Off the mesh (no ipcache entry): identity world (2).
    setPolicy([E({ endpointId: A.endpointId, direction: 'egress', remoteIdentity: 2 })], [enf(A.endpointId, 'egress')]);
    const w = fromContainer(frame(A.ip, '192.0.2.1', 6, 40000, 80));
    assert.equal(w.retval, TcAction.ok, 'to the stack');
  });

  it('replies of allowed connections pass via conntrack; a new connection the other way is denied', () => {
    // A may only talk to B:80 and accepts nothing; B accepts only A:80 and sends nothing.
    setPolicy(
      [
        E({ endpointId: A.endpointId, direction: 'egress', remoteIdentity: B.identity, protocol: 6, port: 80, portEnd: 80 }),
        E({ endpointId: A.endpointId, direction: 'egress', remoteIdentity: R.identity, protocol: 6, port: 443, portEnd: 443 }),
        E({ endpointId: B.endpointId, direction: 'ingress', remoteIdentity: A.identity, protocol: 6, port: 80, portEnd: 80 }),
      ],
      [enf(A.endpointId, 'ingress'), enf(A.endpointId, 'egress'), enf(B.endpointId, 'ingress'), enf(B.endpointId, 'egress')],
    );
    // Before the connection: B's "reply" is a new connection and denied (B's egress).
    assert.equal(verdict(fromContainer(frame(B.ip, A.ip, 6, 80, 40000, 0x12))), 'DROP_POLICY');
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40000, 80))), 'pass');
    assert.deepEqual(conns(), [{ src: A.ip, dst: B.ip, sport: 40000, dport: 80, protocol: 6 }]);
    assert.equal(verdict(fromContainer(frame(B.ip, A.ip, 6, 80, 40000, 0x12))), 'pass');
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40000, 80, 0x10))), 'pass');
    // A new connection from B to A, or from another port, is not a reply.
    assert.equal(verdict(fromContainer(frame(B.ip, A.ip, 6, 80, 40001))), 'DROP_POLICY');
    assert.equal(verdict(fromContainer(frame(B.ip, A.ip, 6, 33333, 22))), 'DROP_POLICY');
    // Across the tunnel: A -> R:443 allowed, R's reply comes in over the overlay (A's ingress).
    assert.equal(verdict(fromContainer(frame(A.ip, R.ip, 6, 40002, 443))), 'pass');
    assert.equal(verdict(fromOverlay(R.identity, frame(R.ip, A.ip, 6, 443, 40002, 0x12))), 'pass');
    assert.equal(verdict(fromOverlay(R.identity, frame(R.ip, A.ip, 6, 443, 40003, 0x12))), 'DROP_POLICY');
    assert.equal(verdict(fromOverlay(R.identity, frame(R.ip, A.ip, 6, 5000, 22))), 'DROP_POLICY');
  });

  it('later packets of a connection pass on its cached verdict only while the revision and the identities hold: a changed policy applies to them at once', () => {
    const cached = () => [...policy.connections(ctMap)].filter((c) => c.verdict !== null).length;
    const allowA = E({ endpointId: B.endpointId, direction: 'ingress', remoteIdentity: A.identity, protocol: 6, port: 80, portEnd: 80 });
    const allowR = E({ endpointId: B.endpointId, direction: 'ingress', remoteIdentity: R.identity, protocol: 6, port: 80, portEnd: 80 });
    setPolicy([allowA, allowR], [enf(B.endpointId, 'ingress')]);
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40000, 80))), 'pass');
    assert.equal(cached(), 1, 'the first packet caches its verdict');
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40000, 80, 0x10))), 'pass');
    // The allow of A goes, the connection stays in cm_policy_conn: with the
    // revision changed, as every writer does, its next packet is dropped.
    const m = toPolicyMaps([allowA], [enf(B.endpointId, 'ingress')]);
    policy.removeMany(policyMap, m.policy.map(([k]) => k));
    assert.equal([...policy.connections(ctMap)].length, 1);
    // (Without the bump the cached verdict would still hold: the contract of cm_policy_rev.)
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40000, 80, 0x10))), 'pass');
    policy.bumpRevision(revMap);
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40000, 80, 0x10))), 'DROP_POLICY');
    // Allowed again: passes, and caches again.
    policy.updateMany(policyMap, m.policy);
    policy.bumpRevision(revMap);
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40000, 80, 0x10))), 'pass');
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40000, 80, 0x10))), 'pass');
    // The same tuple from the tunnel with an identity the cache did not see
    // (no revision change) is checked: R is allowed, another identity is not.
    assert.equal(verdict(fromOverlay(R.identity, frame(A.ip, B.ip, 6, 40000, 80, 0x10))), 'pass');
    assert.equal(verdict(fromOverlay(R.identity + 1, frame(A.ip, B.ip, 6, 40000, 80, 0x10))), 'DROP_POLICY');
    // Replies skip the lookups too, and still pass whatever B's egress says.
    setPolicy([allowA], [enf(B.endpointId, 'ingress'), enf(B.endpointId, 'egress')]);
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40001, 80))), 'pass');
    assert.equal(verdict(fromContainer(frame(B.ip, A.ip, 6, 80, 40001, 0x12))), 'pass');
    assert.equal(verdict(fromContainer(frame(B.ip, A.ip, 6, 80, 40002, 0x12))), 'DROP_POLICY');
  });

  it('one cm_policy_conn entry per connection holds both directions and the verdict; the datapath honours only whole entries', () => {
    const allowA = E({ endpointId: B.endpointId, direction: 'ingress', remoteIdentity: A.identity, protocol: 6, port: 80, portEnd: 80 });
    setPolicy([allowA], [enf(B.endpointId, 'ingress'), enf(B.endpointId, 'egress')]);
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40000, 80))), 'pass');
    assert.equal(verdict(fromContainer(frame(B.ip, A.ip, 6, 80, 40000, 0x12))), 'pass', 'the reply');
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40000, 80, 0x10))), 'pass');
    const [c, ...more] = [...policy.connections(ctMap)];
    assert.equal(more.length, 0, 'one entry for both directions');
    assert.deepEqual(c!.verdict, {
      rev: policy.revision(revMap),
      egressRemote: B.identity,
      ingressRemote: A.identity,
      egressEndpoint: A.endpointId,
      ingressEndpoint: B.endpointId,
      checks: policy.PolicyVerdictFlag.POLICY_V_EGRESS | policy.PolicyVerdictFlag.POLICY_V_INGRESS | policy.PolicyVerdictFlag.POLICY_V_PORTS,
    }, 'from_container made both checks (A\'s egress has no policy, B\'s ingress has)');
    assert.deepEqual([c!.src, c!.sport, c!.valid], [A.ip, 40000, true], 'the opener\'s way, and the sum the datapath wrote is the one policy.ts computes');
    assert.ok(c!.lifetime > monotonicSeconds(), 'live');

    // An entry written from TypeScript (as the upgrade does) is honoured: B's reply passes on it.
    const now = monotonicSeconds();
    const clearConns = (): void => {
      for (const [k] of [...ctMap.entries()]) ctMap.delete(k);
    };
    clearConns();
    const opened: policy.Connection = { src: A.ip, dst: B.ip, sport: 40010, dport: 80, protocol: 6 };
    policy.writeConnections(ctMap, [[opened, { lifetime: now + 60, flags: 0 }]]);
    assert.equal(verdict(fromContainer(frame(B.ip, A.ip, 6, 80, 40010, 0x12))), 'pass');
    // A torn entry (its sum does not hold) is no connection: the reply meets B's egress, which admits nothing.
    const [k] = [...ctMap.entries()][0]!;
    const torn = Buffer.from(ctMap.lookup(k)!);
    torn[policy.CONN_VALUE_LAYOUT.fields.sum.offset]! ^= 1;
    ctMap.update(k, torn);
    assert.equal(verdict(fromContainer(frame(B.ip, A.ip, 6, 80, 40010, 0x12))), 'DROP_POLICY');
    // An expired connection admits no reply either.
    clearConns();
    policy.writeConnections(ctMap, [[opened, { lifetime: now - 1, flags: 0 }]]);
    assert.equal(verdict(fromContainer(frame(B.ip, A.ip, 6, 80, 40010, 0x12))), 'DROP_POLICY');
    // A cached verdict holds only for the opener's way: the same entry read as B's is a reply, which a translation would have to change first.
    clearConns();
    policy.writeConnections(ctMap, [[{ src: B.ip, dst: A.ip, sport: 80, dport: 40011, protocol: 6 }, { lifetime: now + 60, flags: 0, verdict: { ...c!.verdict! } }]]);
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40011, 80, 0x10))), 'pass', 'a reply of B\'s connection');
    assert.equal([...policy.connections(ctMap)][0]!.src, B.ip, 'the reply leaves the opener as it was');

    // The expiry: a packet refreshes it when the connection's refresh is due
    // (refresh_at 0, as written from TypeScript); within a second of a
    // refresh only a SYN, FIN or RST does.
    clearConns();
    policy.writeConnections(ctMap, [[opened, { lifetime: now + 60, flags: 0 }]]);
    assert.equal(verdict(fromContainer(frame(B.ip, A.ip, 6, 80, 40010, 0x10))), 'pass');
    const refreshed = [...policy.connections(ctMap)][0]!;
    assert.ok(refreshed.lifetime >= now + 21600, `a due refresh sets the established timeout (lifetime ${refreshed.lifetime}, now ${now})`);
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40010, 80, 0x10))), 'pass', 'the opener\'s ACK: checked (no verdict yet), and its verdict cached');
    assert.notEqual([...policy.connections(ctMap)][0]!.verdict, null);
    const notDue = (): void => {
      const [rk] = [...ctMap.entries()][0]!;
      const v = Buffer.from(ctMap.lookup(rk)!);
      v.writeUInt32LE(now + 60, policy.CONN_VALUE_LAYOUT.fields.lifetime.offset);
      v.writeUInt32LE(Number((process.hrtime.bigint() >> 24n) + 6000n) >>> 0, policy.CONN_VALUE_LAYOUT.fields.refresh_at.offset);
      ctMap.update(rk, v);
    };
    notDue();
    assert.equal(verdict(fromContainer(frame(B.ip, A.ip, 6, 80, 40010, 0x10))), 'pass', 'a reply');
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40010, 80, 0x10))), 'pass', 'on the verdict');
    assert.equal([...policy.connections(ctMap)][0]!.lifetime, now + 60, 'ACKs either way within the second leave the expiry');
    assert.equal(verdict(fromContainer(frame(A.ip, B.ip, 6, 40010, 80, 0x11))), 'pass', 'the opener\'s FIN, on the verdict');
    const closing = [...policy.connections(ctMap)][0]!;
    assert.equal(closing.flags & 1, 1, 'a FIN marks the connection closing at once (CT_F_CLOSING)');
    assert.ok(closing.lifetime <= monotonicSeconds() + 10, `closing: 10 s left at most (lifetime ${closing.lifetime})`);
  });

  it('bumpRevision(): a new map starts at a random value, then counts up, never through 0', () => {
    const set = (rev: number): void => {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(rev);
      revMap.update(Buffer.alloc(4), b);
    };
    set(0);
    const first = policy.bumpRevision(revMap);
    assert.notEqual(first, 0);
    assert.equal(policy.revision(revMap), first);
    set(41);
    assert.equal(policy.bumpRevision(revMap), 42);
    set(0xffffffff);
    assert.equal(policy.bumpRevision(revMap), 1);
  });

  it('services: policy sees the backend, and the reply passes through reverse NAT via conntrack', () => {
    const VIP = '10.96.0.10';
    const p = planFrontend({
      vip: VIP, port: 80, protocol: 'TCP', serviceId: 7,
      backends: [{ id: 100, ip: B.ip, port: 8080, clusterId: 1, local: true, ready: true, terminating: false, clusterGone: false }],
    });
    const svcMaps = [services.MAP_NAME, backends.MAP_NAME, backendSlots.MAP_NAME, maglev.MAP_NAME, revnat.MAP_NAME, 'cm_ct'].map((n) => lxc.map(n));
    backends.updateMany(svcMaps[1]!, p.backends);
    backendSlots.updateMany(svcMaps[2]!, backendSlots.tableEntries(p.service.value.serviceId, p.slots));
    if (p.maglev) maglev.update(svcMaps[3]!, p.service.value.serviceId, p.maglev);
    revnat.update(svcMaps[4]!, p.revnat.key, p.revnat.value);
    services.update(svcMaps[0]!, p.service.key, p.service.value);
    try {
      const all = [enf(A.endpointId, 'ingress'), enf(A.endpointId, 'egress'), enf(B.endpointId, 'ingress'), enf(B.endpointId, 'egress')];
      // An allow for the VIP's port does not admit the backend's.
      setPolicy([E({ endpointId: A.endpointId, direction: 'egress', remoteIdentity: B.identity, protocol: 6, port: 80, portEnd: 80 })], all);
      const r0 = fromContainer(frame(A.ip, VIP, 6, 41000, 80));
      assert.equal(verdict(r0), 'DROP_POLICY');
      assert.deepEqual([r0.events[0]!.direction, r0.events[0]!.dstIdentity, r0.events[0]!.dstIp, r0.events[0]!.dstPort], ['egress', B.identity, B.ip, 8080]);
      setPolicy(
        [
          E({ endpointId: A.endpointId, direction: 'egress', remoteIdentity: B.identity, protocol: 6, port: 8080, portEnd: 8080 }),
          E({ endpointId: B.endpointId, direction: 'ingress', remoteIdentity: A.identity, protocol: 6, port: 8080, portEnd: 8080 }),
        ],
        all,
      );
      const r = fromContainer(frame(A.ip, VIP, 6, 41001, 80));
      assert.equal(verdict(r), 'pass');
      assert.deepEqual(conns(), [{ src: A.ip, dst: B.ip, sport: 41001, dport: 8080, protocol: 6 }]);
      // B's reply: its egress and A's ingress admit nothing, the connection does.
      assert.equal(verdict(fromContainer(frame(B.ip, A.ip, 6, 8080, 41001, 0x12))), 'pass');
      assert.equal(verdict(fromContainer(frame(B.ip, A.ip, 6, 8080, 41002, 0x12))), 'DROP_POLICY');
    } finally {
      for (const map of svcMaps) for (const [k] of [...map.entries()]) map.delete(k);
    }
  });

  it('node-local (CIDR) identities: to the stack like world, never into the tunnel, policy sees the exact identity', () => {
    const local = (n: number) => LOCAL_IDENTITY_SCOPE | n;
    const prefixes: Array<[string, number, number, string | null]> = [
      // addr, prefix length, identity, tunnel endpoint
      ['198.51.100.0', 24, local(1), null],
      ['198.51.100.128', 25, local(2), null],
      // Even with a tunnel endpoint (never written by the agent) a local identity is not tunnelled.
      ['203.0.113.0', 24, local(3), R.node],
      // A global identity without a tunnel endpoint is a hole in the ipcache, as before.
      ['192.0.2.0', 24, 0x20199, null],
    ];
    for (const [addr, prefixLen, identity, tunnelEndpoint] of prefixes) ipcache.update(ipcacheMap, { addr, prefixLen }, { identity, tunnelEndpoint, flags: 0 });
    try {
      assert.equal(fromContainer(frame(A.ip, '198.51.100.5', 6, 40000, 80)).retval, TcAction.ok, 'local /24 identity: to the stack');
      assert.equal(fromContainer(frame(A.ip, '198.51.100.200', 17, 40000, 53)).retval, TcAction.ok, 'local /25 identity: to the stack');
      assert.equal(fromContainer(frame(A.ip, '203.0.113.9', 6, 40000, 80)).retval, TcAction.ok, 'local identity with a tunnel endpoint: to the stack, not redirected to the tunnel');
      assert.equal(verdict(fromContainer(frame(A.ip, '192.0.2.9', 6, 40000, 80))), 'DROP_NO_TUNNEL_ENDPOINT');
      // Egress policy by prefix: allow 443 to the /24, deny the /25 inside it.
      setPolicy(
        [
          E({ endpointId: A.endpointId, direction: 'egress', remoteIdentity: local(1), protocol: 6, port: 443, portEnd: 443 }),
          E({ endpointId: A.endpointId, direction: 'egress', remoteIdentity: local(2), protocol: 6, port: 443, portEnd: 443 }),
          E({ endpointId: A.endpointId, direction: 'egress', remoteIdentity: local(2), verdict: 'deny' }),
        ],
        [enf(A.endpointId, 'egress')],
      );
      assert.equal(fromContainer(frame(A.ip, '198.51.100.5', 6, 40001, 443)).retval, TcAction.ok, 'allowed: to the stack');
      const d = fromContainer(frame(A.ip, '198.51.100.5', 6, 40002, 80));
      assert.equal(verdict(d), 'DROP_POLICY');
      assert.deepEqual([d.events[0]!.direction, d.events[0]!.srcIdentity, d.events[0]!.dstIdentity], ['egress', A.identity, local(1)], 'the event names the exact CIDR identity');
      const x = fromContainer(frame(A.ip, '198.51.100.200', 6, 40003, 443));
      assert.equal(verdict(x), 'DROP_POLICY_DENY');
      assert.equal(x.events[0]!.dstIdentity, local(2));
      // Outside every prefix: world, which the policy does not allow.
      const w = fromContainer(frame(A.ip, '100.64.0.1', 6, 40004, 443));
      assert.equal(verdict(w), 'DROP_POLICY');
      assert.equal(w.events[0]!.dstIdentity, 2);
    } finally {
      for (const [addr, prefixLen] of prefixes) ipcache.remove(ipcacheMap, { addr, prefixLen });
    }
  });

  /** A resolver that, as the agent (src/agent/policy.ts), gives CIDR prefixes node-local numbers in cm_policy_cidr; A and B are its endpoints. */
  function cidrResolver(): PolicyResolver {
    let next = 1;
    const r = new PolicyResolver({
      clusterName: 'c1',
      allocateCidrIdentity: (prefix) => {
        const id = LOCAL_IDENTITY_SCOPE | next++;
        policy.cidr.update(cidrMap, policy.parseCidrKey(prefix), { identity: id });
        return id;
      },
      releaseCidrIdentity: (prefix) => policy.cidr.remove(cidrMap, policy.parseCidrKey(prefix)),
    });
    for (const [ep, app] of [[A, 'a'], [B, 'b']] as const) {
      const labels = identityLabels({ cluster: 'c1', namespace: 'default', serviceAccount: 'default', podLabels: { app } });
      r.upsertIdentity(ep.identity, labels);
      r.upsertEndpoint({ endpointId: ep.endpointId, identity: ep.identity, labels, namedPorts: [] });
    }
    return r;
  }

  /** Writes the resolver's entries and enforcement of A and B into the maps (cm_policy_cidr is written by its allocator). */
  function applyResolver(r: PolicyResolver): void {
    const m = toPolicyMaps(r.entries(), r.enforcement());
    policy.removeMany(policyMap, [...policy.entries(policyMap)].map(([k]) => k));
    policy.clearEnforce(enforceMap, [A.endpointId, B.endpointId]);
    policy.updateMany(policyMap, m.policy);
    policy.enforce.updateMany(enforceMap, m.enforce);
  }

  /** What decide() says for a packet of `endpointId` with the identity and the CIDR identity the maps give the peer. */
  function decided(r: PolicyResolver, endpointId: number, direction: Direction, remoteIdentity: number, peer: string, port: number): string {
    const cidrIdentity = policy.cidr.lookup(cidrMap, { addr: peer, prefixLen: 32 })?.identity ?? 0;
    const d = r.decide(endpointId, { direction, remoteIdentity, cidrIdentity, protocol: 6, port });
    return d.verdict === 'allow' ? 'pass' : d.reason === 'denied' ? 'DROP_POLICY_DENY' : 'DROP_POLICY';
  }

  it('toCIDR / toCIDRSet except / egressDeny through the resolver, with node-local identities in cm_policy_cidr', () => {
    const r = cidrResolver();
    r.upsertPolicy(
      parsePolicy({
        apiVersion: 'cilium.io/v2',
        kind: 'CiliumNetworkPolicy',
        metadata: { name: 'egress-cidr', namespace: 'default' },
        spec: {
          endpointSelector: { matchLabels: { app: 'a' } },
          egress: [
            { toCIDRSet: [{ cidr: '198.51.100.0/24', except: ['198.51.100.64/26'] }], toPorts: [{ ports: [{ port: '443', protocol: 'TCP' }] }] },
            { toCIDR: ['203.0.113.7/32'] },
          ],
          egressDeny: [{ toCIDR: ['198.51.100.128/25'] }],
        },
      }),
    );
    const cidrs = r.cidrIdentities();
    assert.ok(cidrs.length >= 3 && cidrs.every((c) => isLocalIdentity(c.identity)), JSON.stringify(cidrs));
    applyResolver(r);
    const go = (dst: string, port: number) => {
      const res = fromContainer(frame(A.ip, dst, 6, 41000 + port, port));
      return res.retval === TcAction.ok ? 'stack' : verdict(res);
    };
    const cases: Array<[string, number, string]> = [
      ['198.51.100.5', 443, 'stack'],
      ['198.51.100.5', 80, 'DROP_POLICY'],
      ['198.51.100.70', 443, 'DROP_POLICY'], // the except
      ['198.51.100.130', 443, 'DROP_POLICY_DENY'], // egressDeny wins over the /24 allow
      ['203.0.113.7', 22, 'stack'],
      ['203.0.113.8', 22, 'DROP_POLICY'], // world
    ];
    assert.deepEqual(cases.map(([dst, port]) => [dst, port, go(dst, port)]), cases);
    // The datapath agrees with decide() for the identities the maps give each address (world: no ipcache entry).
    for (const [dst, port, want] of cases) assert.equal(decided(r, A.endpointId, 'egress', 2, dst, port), want === 'stack' ? 'pass' : want, `${dst}:${port}`);
    assert.equal(ipcache.match(ipcacheMap, '198.51.100.5'), undefined, 'CIDR identities stay out of the ipcache');
    r.removePolicy({ kind: 'CiliumNetworkPolicy', namespace: 'default', name: 'egress-cidr' });
    assert.deepEqual(r.cidrIdentities(), []);
    assert.deepEqual([...policy.cidr.entries(cidrMap)], [], 'released with the policy');
  });

  describe('CIDR rules match pods and nodes by address (issue 19)', () => {
    /** Pods behind the tunnel: N* on another node of this cluster, X* in cluster 2; each pair shares one identity. */
    const N1 = { ip: '10.101.1.30', identity: 0x10105, node: '10.1.0.2' };
    const N2 = { ip: '10.101.1.31', identity: 0x10105, node: '10.1.0.2' };
    const X1 = { ip: '10.102.0.40', identity: 0x20105, node: '10.2.0.5' };
    const X2 = { ip: '10.102.0.41', identity: 0x20105, node: '10.2.0.5' };
    /** A local pod with B's identity. */
    const C = { ip: '10.101.0.21', identity: B.identity, endpointId: 21 };
    const np = (name: string, spec: Record<string, unknown>) => parsePolicy({ apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name, namespace: 'default' }, spec });
    const drops = (reason: string, direction: string) =>
      metrics.read(metricsMap).filter((m) => m.reasonName === reason && m.direction === direction).reduce((n, m) => n + m.packets, 0n);

    before(() => {
      const epMap = lxc.map(endpoints.MAP_NAME);
      endpoints.update(epMap, { ip: C.ip }, { ifindex: 1, identity: C.identity, endpointId: C.endpointId, flags: 0, mac: MAC.pod, nodeMac: MAC.node });
      ipcache.update(ipcacheMap, { addr: C.ip, prefixLen: 32 }, { identity: C.identity, tunnelEndpoint: null, flags: 0 });
      for (const p of [N1, N2, X1, X2]) ipcache.update(ipcacheMap, { addr: p.ip, prefixLen: 32 }, { identity: p.identity, tunnelEndpoint: p.node, flags: 0 });
    });
    after(() => {
      endpoints.remove(lxc.map(endpoints.MAP_NAME), { ip: C.ip });
      for (const p of [C, N1, N2, X1, X2]) ipcache.remove(ipcacheMap, { addr: p.ip, prefixLen: 32 });
    });

    it('egress to a pod /32: that pod passes (same node, other node, other cluster); pods of the same identity and the world are dropped, counted', () => {
      const r = cidrResolver();
      r.upsertPolicy(np('a-to-pods', { podSelector: { matchLabels: { app: 'a' } }, policyTypes: ['Egress'], egress: [{ to: [B, N1, X1].map((p) => ({ ipBlock: { cidr: `${p.ip}/32` } })) }] }));
      applyResolver(r);
      const cases: Array<[string, { ip: string; identity: number }, string]> = [
        ['same node', B, 'pass'],
        ['same node, same identity as the allowed pod', C, 'DROP_POLICY'],
        ['other node', N1, 'pass'],
        ['other node, same identity', N2, 'DROP_POLICY'],
        ['other cluster', X1, 'pass'],
        ['other cluster, same identity', X2, 'DROP_POLICY'],
      ];
      const got = cases.map(([what, dst]) => [what, dst, verdict(fromContainer(frame(A.ip, dst.ip, 6, 40000, 80)))]);
      assert.deepEqual(got, cases);
      assert.equal(fromContainer(frame(A.ip, '192.0.2.1', 6, 40000, 80)).retval, TcAction.shot, 'the world');
      assert.equal(drops('DROP_POLICY', 'egress'), 4n, 'three pods and the world, counted as egress drops');
      for (const [what, dst, want] of cases) assert.equal(decided(r, A.endpointId, 'egress', dst.identity, dst.ip, 80), want, `decide(): ${what}`);
      // Identity-based rules are as they were: allowing N's identity admits both of its pods.
      r.upsertPolicy(np('a-to-n', { podSelector: { matchLabels: { app: 'a' } }, policyTypes: ['Egress'], egress: [{ to: [{ podSelector: { matchLabels: { app: 'b' } } }] }] }));
      applyResolver(r);
      assert.equal(verdict(fromContainer(frame(A.ip, C.ip, 6, 40000, 80))), 'pass', 'C by its identity');
    });

    it('ingress from a wide block with an except for one pod (same node, other node, other cluster); the tunnel checks the inner source address', () => {
      const r = cidrResolver();
      r.upsertPolicy(
        np('b-from-block', {
          podSelector: { matchLabels: { app: 'b' } },
          policyTypes: ['Ingress'],
          ingress: [{ from: [{ ipBlock: { cidr: '0.0.0.0/4', except: [`${C.ip}/32`, `${N2.ip}/32`, `${X2.ip}/32`] } }] }],
        }),
      );
      applyResolver(r);
      const fromOverlayOf = (src: { ip: string; identity: number }) => fromOverlay(src.identity, frame(src.ip, B.ip, 6, 40000, 80));
      const cases: Array<[string, string]> = [
        ['same node: A', verdict(fromContainer(frame(A.ip, B.ip, 6, 40000, 80)))],
        ['same node: C (excepted)', verdict(fromContainer(frame(C.ip, B.ip, 6, 40000, 80)))],
        ['other node: N1', verdict(fromOverlayOf(N1))],
        ['other node: N2 (excepted, same identity as N1)', verdict(fromOverlayOf(N2))],
        ['other cluster: X1', verdict(fromOverlayOf(X1))],
        ['other cluster: X2 (excepted, same identity as X1)', verdict(fromOverlayOf(X2))],
      ];
      assert.deepEqual(cases, [
        ['same node: A', 'pass'],
        ['same node: C (excepted)', 'DROP_POLICY'],
        ['other node: N1', 'pass'],
        ['other node: N2 (excepted, same identity as N1)', 'DROP_POLICY'],
        ['other cluster: X1', 'pass'],
        ['other cluster: X2 (excepted, same identity as X1)', 'DROP_POLICY'],
      ]);
      assert.equal(drops('DROP_POLICY', 'ingress'), 3n, 'the three excepted pods, counted as ingress drops');
      // The VNI's identity does not help an address outside the block.
      assert.equal(verdict(fromOverlay(N1.identity, frame('100.64.0.9', B.ip, 6, 40000, 80))), 'DROP_POLICY');
      const ev = fromOverlay(X2.identity, frame(X2.ip, B.ip, 6, 40000, 81)).events[0]!;
      assert.deepEqual([ev.reasonName, ev.srcIdentity, ev.srcIp], ['DROP_POLICY', X2.identity, X2.ip], 'the event names the pod identity');
      for (const [src, want] of [[A, 'pass'], [C, 'DROP_POLICY'], [N1, 'pass'], [N2, 'DROP_POLICY'], [X1, 'pass'], [X2, 'DROP_POLICY']] as const)
        assert.equal(decided(r, B.endpointId, 'ingress', src.identity, src.ip, 80), want, `decide(): ${src.ip}`);
    });

    it('the node and the world through to_container: inside the block passes, outside is dropped, a CIDR deny covers the node too', () => {
      const r = cidrResolver();
      r.upsertPolicy(
        parsePolicy({
          apiVersion: 'cilium.io/v2',
          kind: 'CiliumNetworkPolicy',
          metadata: { name: 'b-cidr', namespace: 'default' },
          spec: {
            endpointSelector: { matchLabels: { app: 'b' } },
            ingress: [{ fromCIDRSet: [{ cidr: '0.0.0.0/4' }] }],
            ingressDeny: [{ fromCIDR: ['10.1.0.1/32'], toPorts: [{ ports: [{ port: '22', protocol: 'TCP' }] }] }],
          },
        }),
      );
      applyResolver(r);
      const to = (src: string, port: number) => {
        const res = lxc.program('to_container').testRun({ data: frame(src, B.ip, 6, 5555, port) });
        got.length = 0;
        reader!.consume();
        return res.retval === TcAction.ok ? 'pass' : verdict({ retval: res.retval, events: [...got] });
      };
      ipcache.update(ipcacheMap, { addr: '10.1.0.1', prefixLen: 32 }, { identity: 1, tunnelEndpoint: null, flags: 0 });
      try {
        assert.deepEqual(
          [to('8.8.8.8', 80), to('100.64.0.7', 80), to('10.1.0.1', 80), to('10.1.0.1', 22)],
          ['pass', 'DROP_POLICY', 'pass', 'DROP_POLICY_DENY'],
        );
      } finally {
        ipcache.remove(ipcacheMap, { addr: '10.1.0.1', prefixLen: 32 });
      }
    });
  });

  describe('to_container: what the stack routes into a pod (tc egress of its veth)', () => {
    const WORLD_IP = '100.64.0.7';
    const NODE_IP = '10.1.0.1';
    const CIDR = { addr: '198.51.100.0', prefixLen: 24, identity: LOCAL_IDENTITY_SCOPE | 7 };
    const CM_MARK_DELIVERED = 0x434d0000;
    const toContainer = (f: Buffer, mark?: number) => {
      const r = lxc.program('to_container').testRun({ data: f, ...(mark === undefined ? {} : { ctx: skbContext({ mark }) }) });
      got.length = 0;
      reader!.consume();
      return { retval: r.retval, events: [...got], mark: r.ctxOut?.readUInt32LE(8) };
    };
    /** 'pass' (TC_ACT_OK: on into the pod), or the drop reason's name. */
    const verdictTo = (r: { retval: number; events: events.DatapathEvent[] }): string => {
      if (r.retval === TcAction.ok) return 'pass';
      assert.equal(r.retval, TcAction.shot);
      const drop = r.events.filter((e) => e.type === 'drop');
      assert.equal(drop.length, 1, 'one drop event');
      return drop[0]!.reasonName;
    };

    before(() => {
      ipcache.update(ipcacheMap, { addr: NODE_IP, prefixLen: 32 }, { identity: 1, tunnelEndpoint: null, flags: 0 });
    });
    after(() => {
      ipcache.remove(ipcacheMap, { addr: NODE_IP, prefixLen: 32 });
    });

    it('an endpoint without enforcement passes anything, and nothing is tracked', () => {
      assert.equal(verdictTo(toContainer(frame(WORLD_IP, B.ip, 6, 5555, 80))), 'pass');
      assert.equal(verdictTo(toContainer(frame(CIDR.addr.replace(/0$/, '9'), A.ip, 17, 5555, 53))), 'pass');
      assert.equal(verdictTo(toContainer(frame(WORLD_IP, '10.101.0.99', 6, 5555, 80))), 'pass', 'no endpoint: nothing to enforce');
      assert.equal([...policy.connections(ctMap)].length, 0);
      assert.deepEqual(
        metrics.read(metricsMap).map((m) => [m.reasonName, m.direction, m.packets]),
        [['TRACE_TO_ENDPOINT', 'ingress', 3n]],
      );
    });

    it('world is denied by an enforced ingress without a rule, with the event; a marked (already checked) packet passes once and loses the mark', () => {
      setPolicy([], [enf(B.endpointId, 'ingress')]);
      const r = toContainer(frame(WORLD_IP, B.ip, 6, 5555, 80));
      assert.equal(verdictTo(r), 'DROP_POLICY');
      const e = r.events[0]!;
      assert.deepEqual(
        [e.direction, e.srcIdentity, e.dstIdentity, e.srcIp, e.dstIp, e.srcPort, e.dstPort, e.protocol],
        ['ingress', 2, B.identity, WORLD_IP, B.ip, 5555, 80, 6],
      );
      const m = toContainer(frame(WORLD_IP, B.ip, 6, 5555, 80), CM_MARK_DELIVERED);
      assert.equal(verdictTo(m), 'pass');
      assert.equal(m.mark, 0, 'mark cleared');
      const other = toContainer(frame(WORLD_IP, B.ip, 6, 5555, 80), 0x4000);
      assert.equal(verdictTo(other), 'DROP_POLICY', 'a foreign mark is no pass');
      // A, not enforced, still passes.
      assert.equal(verdictTo(toContainer(frame(WORLD_IP, A.ip, 6, 5555, 80))), 'pass');
      // from_container delivering A -> B with a plain redirect (redirectPeer off here) sets the mark to_container skips.
      setPolicy([E({ endpointId: B.endpointId, direction: 'ingress', remoteIdentity: A.identity })], [enf(B.endpointId, 'ingress')]);
      const local = lxc.program('from_container').testRun({ data: frame(A.ip, B.ip, 6, 40000, 80), ctx: skbContext({}) });
      assert.equal(local.retval, TcAction.redirect);
      assert.equal(local.ctxOut!.readUInt32LE(8), CM_MARK_DELIVERED);
      reader!.consume();
    });

    it('fromCIDR: the source prefix matches its node-local identity; outside it is world; the reply leaves through the enforced egress', () => {
      policy.cidr.update(cidrMap, { addr: CIDR.addr, prefixLen: CIDR.prefixLen }, { identity: CIDR.identity });
      setPolicy(
        [E({ endpointId: B.endpointId, direction: 'ingress', remoteIdentity: CIDR.identity, protocol: 6, port: 80, portEnd: 80 })],
        [enf(B.endpointId, 'ingress'), enf(B.endpointId, 'egress')],
      );
      assert.equal(verdictTo(toContainer(frame('198.51.100.9', B.ip, 6, 5555, 80))), 'pass');
      const port = toContainer(frame('198.51.100.9', B.ip, 6, 5555, 81));
      assert.equal(verdictTo(port), 'DROP_POLICY');
      assert.equal(port.events[0]!.srcIdentity, CIDR.identity, 'the event names the CIDR identity');
      assert.equal(verdictTo(toContainer(frame('198.51.101.9', B.ip, 6, 5555, 80))), 'DROP_POLICY', 'outside the prefix');
      // B answers: its egress is enforced without a rule, the connection recorded by to_container admits the reply.
      assert.equal(fromContainer(frame(B.ip, '198.51.100.9', 6, 80, 5555, 0x12)).retval, TcAction.ok);
      assert.equal(verdict(fromContainer(frame(B.ip, '198.51.100.9', 6, 80, 5556))), 'DROP_POLICY', 'not a reply');
    });

    it('replies of connections the pod opened pass via conntrack; new connections from there do not', () => {
      setPolicy([E({ endpointId: B.endpointId, direction: 'egress', remoteIdentity: 2, protocol: 6, port: 443, portEnd: 443 })], [enf(B.endpointId, 'ingress'), enf(B.endpointId, 'egress')]);
      assert.equal(verdictTo(toContainer(frame(WORLD_IP, B.ip, 6, 443, 41000, 0x12))), 'DROP_POLICY', 'before B opened it');
      assert.equal(fromContainer(frame(B.ip, WORLD_IP, 6, 41000, 443)).retval, TcAction.ok, 'B opens it: to the stack');
      assert.equal(verdictTo(toContainer(frame(WORLD_IP, B.ip, 6, 443, 41000, 0x12))), 'pass', 'the reply');
      assert.deepEqual(
        conns().map((c) => [c.src, c.dst]),
        [[B.ip, WORLD_IP]],
        'a reply refreshes the connection, it is not recorded the other way (that would turn the next packet of B into a "reply", past a deny)',
      );
      assert.equal(verdictTo(toContainer(frame(WORLD_IP, B.ip, 6, 443, 41001))), 'DROP_POLICY', 'another port of B');
      assert.equal(verdictTo(toContainer(frame('100.64.0.8', B.ip, 6, 443, 41000))), 'DROP_POLICY', 'another peer');
    });

    it('the host is exempt from default deny but not from an explicit deny', () => {
      setPolicy([E({ endpointId: B.endpointId, direction: 'ingress', remoteIdentity: B.identity })], [enf(B.endpointId, 'ingress')]);
      assert.equal(verdictTo(toContainer(frame(NODE_IP, B.ip, 6, 5555, 8080))), 'pass', 'kubelet probe');
      assert.equal(verdictTo(toContainer(frame(WORLD_IP, B.ip, 6, 5555, 8080))), 'DROP_POLICY');
      setPolicy([E({ endpointId: B.endpointId, direction: 'ingress', remoteIdentity: 1, protocol: 6, port: 8080, portEnd: 8080, verdict: 'deny' })], [enf(B.endpointId, 'ingress')]);
      const d = toContainer(frame(NODE_IP, B.ip, 6, 5555, 8080));
      assert.equal(verdictTo(d), 'DROP_POLICY_DENY');
      assert.equal(d.events[0]!.srcIdentity, 1);
      assert.equal(verdictTo(toContainer(frame(NODE_IP, B.ip, 6, 5555, 8081))), 'pass', 'other ports of the host');
    });
  });

  it('the verdicts equal decide() over a table of entries, enforcement and packets', () => {
    const rnd = prng(2026);
    const ids = [0x20100, 0x20101, 0x20102];
    // Egress destinations with those identities, behind R's node.
    const dsts = ids.map((identity, i) => ({ ip: `10.102.9.${i + 1}`, identity }));
    for (const d of dsts) ipcache.update(ipcacheMap, { addr: d.ip, prefixLen: 32 }, { identity: d.identity, tunnelEndpoint: R.node, flags: 0 });
    const ports = [0, 22, 53, 79, 80, 81, 443, 1023, 1024, 8080, 65535];
    const protos: ProtocolNumber[] = [0, 6, 17, 132];
    const expected = { denied: 'DROP_POLICY_DENY', 'default-deny': 'DROP_POLICY', allowed: 'pass', 'not-enforced': 'pass', host: 'pass' } as const;
    const tally: Record<string, number> = {};
    try {
      for (let round = 0; round < 25; round++) {
        const entries: PolicyMapEntry[] = [];
        for (let i = 1 + rnd(5); i > 0; i--) {
          const a = ports[rnd(ports.length)]!;
          const full = rnd(4) === 0;
          entries.push(
            E({
              endpointId: rnd(2) ? A.endpointId : B.endpointId,
              direction: rnd(2) ? 'ingress' : 'egress',
              remoteIdentity: rnd(3) === 0 ? 0 : ids[rnd(3)]!,
              protocol: protos[rnd(4)]!,
              port: full ? 0 : a,
              portEnd: full ? 65535 : Math.min(65535, a + [0, 1, 100, 5000][rnd(4)]!),
              verdict: rnd(4) === 0 ? 'deny' : 'allow',
            }),
          );
        }
        const enforcement = [A.endpointId, B.endpointId].flatMap((endpointId) =>
          (['ingress', 'egress'] as const).map((direction) => ({ endpointId, direction, enforced: rnd(3) !== 0 })),
        );
        setPolicy(entries, enforcement);
        for (let j = 0; j < 16; j++) {
          const ep = rnd(2) ? A : B;
          const remote = ids[rnd(3)]!;
          const q: PacketQuery = { direction: rnd(2) ? 'ingress' : 'egress', remoteIdentity: remote, protocol: ([6, 17, 132] as const)[rnd(3)]!, port: ports[rnd(ports.length)]! };
          const enforced = enforcement.find((s) => s.endpointId === ep.endpointId && s.direction === q.direction)!.enforced;
          const want = decide(entries.filter((e) => e.endpointId === ep.endpointId), enforced, q);
          let r;
          if (q.direction === 'ingress') {
            r = fromOverlay(remote, frame(R.ip, ep.ip, q.protocol as Proto, 30000 + j, q.port));
          } else {
            r = fromContainer(frame(ep.ip, dsts[ids.indexOf(remote)]!.ip, q.protocol as Proto, 30000 + j, q.port));
          }
          assert.equal(verdict(r), expected[want.reason], JSON.stringify({ entries, enforcement, endpoint: ep.endpointId, q, want }));
          tally[want.reason] = (tally[want.reason] ?? 0) + 1;
        }
      }
    } finally {
      for (const d of dsts) ipcache.remove(ipcacheMap, { addr: d.ip, prefixLen: 32 });
    }
    // The table exercises every outcome.
    for (const reason of ['denied', 'default-deny', 'allowed', 'not-enforced']) assert.ok((tally[reason] ?? 0) > 0, `${reason}: ${JSON.stringify(tally)}`);
  });
});

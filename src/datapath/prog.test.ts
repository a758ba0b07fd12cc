// Datapath program tests: crafted frames through from_container and
// from_overlay with BPF_PROG_TEST_RUN; asserts verdicts, rewritten headers,
// counters and events. BPF_PROG_TEST_RUN runs tc programs on the loopback
// device, so skb->ifindex is 1: the sending pods' endpoints use ifindex 1.
import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { removePinDir } from './bpffs.ts';
import { BpfObject } from './libbpf/object.ts';
import type { BpfMap } from './libbpf/map.ts';
import { TcAction, skbContext, type TestRunResult } from './libbpf/program.ts';
import type { RingBufferReader } from './libbpf/ringbuf.ts';
import * as config from './maps/config.ts';
import * as endpoints from './maps/endpoints.ts';
import * as events from './maps/events.ts';
import * as ipcache from './maps/ipcache.ts';
import * as metrics from './maps/metrics.ts';
import { DropReason, TraceReason, reasonName, type DirectionName } from './maps/reasons.ts';
import * as settings from './maps/settings.ts';
import {
  ARPOP_REPLY,
  ARPOP_REQUEST,
  ETH_P_IP,
  ETH_P_IPV6,
  IPPROTO_TCP,
  arpFrame,
  ethernet,
  icmpFrame,
  parseArp,
  parseEthernet,
  parseIpv4,
  tcpFrame,
  vxlanFrame,
} from './test-packets.ts';
import { datapathSkipReason, loadDatapathObject, tempPinDir } from './testing.ts';

const NODE_IP = '10.1.0.1';
const VXLAN_IFINDEX = 42;
const TUNNEL_MTU = 1450;
const CFG: config.DatapathConfig = { vxlanIfindex: VXLAN_IFINDEX, nodeIp: NODE_IP, clusterId: 1, redirectPeer: false, tunnelMtu: TUNNEL_MTU };

/** Sender: the test-run device is lo (ifindex 1). */
const POD_A = { ip: '10.101.0.10', ep: { ifindex: 1, identity: 0x10100, endpointId: 10, flags: 0, mac: '0a:00:00:00:00:0a', nodeMac: '0e:00:00:00:00:0a' } };
/** Another local pod, behind veth ifindex 77. */
const POD_B = { ip: '10.101.0.20', ep: { ifindex: 77, identity: 0x10101, endpointId: 20, flags: 0, mac: '0a:00:00:00:00:14', nodeMac: '0e:00:00:00:00:14' } };
/** A pod on another node of another cluster. */
const REMOTE_POD = { ip: '10.102.0.30', identity: 0x20100, node: '10.2.0.5' };
/** A remote pod CIDR (LPM). */
const REMOTE_CIDR = { prefix: '10.102.1.0/24', identity: 0x20101, node: '10.2.0.6' };

describe('datapath programs (BPF_PROG_TEST_RUN)', { skip: datapathSkipReason() }, () => {
  let dir: string | undefined;
  const objs: BpfObject[] = [];
  let lxc: BpfObject;
  let lxcPeer: BpfObject;
  let lxcNoTunnel: BpfObject;
  let lxcNative: BpfObject;
  let ovl: BpfObject;
  let ovlNative: BpfObject;
  let ovlBpf: BpfObject;
  let ipcacheMap: BpfMap;
  let epMap: BpfMap;
  let metricsMap: BpfMap;
  let settingsMap: BpfMap;
  let reader: RingBufferReader | undefined;
  const got: events.DatapathEvent[] = [];

  function load(rel: string, cfg: config.DatapathConfig): BpfObject {
    const o = loadDatapathObject(rel, dir!, cfg);
    objs.push(o);
    return o;
  }

  before(() => {
    dir = tempPinDir('prog');
    lxc = load('lxc.bpf.o', CFG);
    // Same pin directory: these share every cm_* map with lxc.
    lxcPeer = load('lxc.bpf.o', { ...CFG, redirectPeer: true });
    lxcNoTunnel = load('lxc.bpf.o', { ...CFG, vxlanIfindex: 0 });
    lxcNative = load('lxc.bpf.o', { ...CFG, routingNative: true, nativeCidrs: ['10.102.0.0/24', '10.103.0.0/16'] });
    ovl = load('test/overlay_test.bpf.o', CFG);
    ovlNative = load('test/overlay_test.bpf.o', { ...CFG, routingNative: true, nativeCidrs: ['10.101.0.0/16', '10.102.0.0/16'] });
    ovlBpf = load('test/overlay_test.bpf.o', { ...CFG, tunnelBpf: true });
    ipcacheMap = lxc.map(ipcache.MAP_NAME);
    epMap = lxc.map(endpoints.MAP_NAME);
    metricsMap = lxc.map(metrics.MAP_NAME);
    settingsMap = lxc.map(settings.MAP_NAME);
    reader = events.openReader(lxc.map(events.MAP_NAME), (e) => got.push(e));
  });

  after(() => {
    reader?.close();
    for (const o of objs) o.close();
    if (dir) removePinDir(dir);
  });

  beforeEach(() => {
    for (const [k] of [...ipcache.entries(ipcacheMap)]) ipcache.remove(ipcacheMap, k);
    for (const [k] of [...endpoints.entries(epMap)]) endpoints.remove(epMap, k);
    metrics.reset(metricsMap);
    settings.set(settingsMap, { traceForward: false });
    endpoints.update(epMap, { ip: POD_A.ip }, POD_A.ep);
    endpoints.update(epMap, { ip: POD_B.ip }, POD_B.ep);
    ipcache.update(ipcacheMap, { addr: POD_A.ip, prefixLen: 32 }, { identity: POD_A.ep.identity, tunnelEndpoint: null, flags: 0 });
    ipcache.update(ipcacheMap, { addr: POD_B.ip, prefixLen: 32 }, { identity: POD_B.ep.identity, tunnelEndpoint: null, flags: 0 });
    ipcache.update(ipcacheMap, { addr: REMOTE_POD.ip, prefixLen: 32 }, { identity: REMOTE_POD.identity, tunnelEndpoint: REMOTE_POD.node, flags: 0 });
    ipcache.update(ipcacheMap, ipcache.parsePrefix(REMOTE_CIDR.prefix), { identity: REMOTE_CIDR.identity, tunnelEndpoint: REMOTE_CIDR.node, flags: 0 });
    reader!.consume();
    got.length = 0;
  });

  afterEach(() => {
    got.length = 0;
  });

  function run(obj: BpfObject, prog: string, frame: Buffer, ctx?: Buffer): TestRunResult & { events: events.DatapathEvent[] } {
    const r = obj.program(prog).testRun({ data: frame, ...(ctx ? { ctx } : {}) });
    got.length = 0;
    reader!.consume();
    return { ...r, events: [...got] };
  }
  const fromContainer = (frame: Buffer, ctx?: Buffer) => run(lxc, 'from_container', frame, ctx);

  function setTunnel(identity: number, remote: string): void {
    const v = Buffer.alloc(8);
    v.writeUInt32LE(identity, 0);
    v.write(remote.split('.').map((x) => Number(x).toString(16).padStart(2, '0')).join(''), 4, 'hex');
    ovl.map('cm_test_tunnel').update(Buffer.alloc(4), v);
  }

  /** The only counter that moved is (reason, direction): one packet of the frame's length. */
  function assertCounted(reason: number, direction: DirectionName, frame: Buffer): void {
    assert.deepEqual(
      metrics.read(metricsMap).map((r) => ({ reason: r.reasonName, direction: r.direction, packets: r.packets, bytes: r.bytes })),
      [{ reason: reasonName(reason), direction, packets: 1n, bytes: BigInt(frame.length) }],
    );
  }

  function assertDrop(r: ReturnType<typeof run>, reason: number, direction: DirectionName, frame: Buffer): events.DatapathEvent {
    assert.equal(r.retval, TcAction.shot, `verdict for ${reason}`);
    assertCounted(reason, direction, frame);
    assert.equal(r.events.length, 1, 'one drop event');
    const e = r.events[0]!;
    assert.equal(e.type, 'drop');
    assert.equal(e.reason, reason);
    assert.equal(e.direction, direction);
    assert.equal(e.length, frame.length);
    assert.equal(e.ifindex, 1);
    return e;
  }

  const aToB = (ttl = 64) => tcpFrame({ srcMac: POD_A.ep.mac, dstMac: POD_A.ep.nodeMac, src: POD_A.ip, dst: POD_B.ip, sport: 40000, dport: 80, ttl });
  const aToRemote = (o: { ttl?: number; payload?: Buffer; dst?: string; df?: boolean } = {}) =>
    tcpFrame({ srcMac: POD_A.ep.mac, dstMac: POD_A.ep.nodeMac, src: POD_A.ip, dst: o.dst ?? REMOTE_POD.ip, sport: 40001, dport: 443, ...o });

  describe('from_container', () => {
    it('with only connection openings traced (SETTINGS_F_TRACE_NEW): a forwarded SYN is reported with its flags, an ACK is not', () => {
      settings.set(settingsMap, { traceForward: false, traceNew: true });
      try {
        const syn = fromContainer(aToB());
        assert.equal(syn.retval, TcAction.redirect);
        assert.deepEqual(syn.events.map((e) => [e.reasonName, e.tcpFlags]), [['TRACE_TO_ENDPOINT', 0x02]]);
        const ack = aToB();
        ack[14 + 20 + 13] = 0x10; // ACK only: a packet of an established connection
        const r = fromContainer(ack);
        assert.equal(r.retval, TcAction.redirect);
        assert.deepEqual(r.events, [], 'no event for the rest of the connection');
      } finally {
        settings.set(settingsMap, { traceForward: false });
      }
    });

    it('delivers to a local pod: MACs rewritten, TTL-1, checksum valid, redirect to its veth', () => {
      settings.set(settingsMap, { traceForward: true });
      const frame = aToB();
      const r = fromContainer(frame);
      assert.equal(r.retval, TcAction.redirect);
      assert.deepEqual(parseEthernet(r.dataOut), { dstMac: POD_B.ep.mac, srcMac: POD_B.ep.nodeMac, ethertype: ETH_P_IP });
      const ip = parseIpv4(r.dataOut);
      assert.equal(ip.ttl, 63);
      assert.ok(ip.checksumValid, 'IPv4 header checksum after TTL decrement');
      assert.equal(ip.src, POD_A.ip);
      assert.deepEqual(r.dataOut.subarray(14 + 20), frame.subarray(14 + 20), 'L4 untouched');
      assertCounted(TraceReason.TRACE_TO_ENDPOINT, 'egress', frame);
      assert.equal(r.events.length, 1);
      assert.deepEqual({ ...r.events[0]!, timestamp: 0n }, {
        timestamp: 0n, type: 'trace', reason: TraceReason.TRACE_TO_ENDPOINT, reasonName: 'TRACE_TO_ENDPOINT', direction: 'egress',
        srcIp: POD_A.ip, dstIp: POD_B.ip, srcIdentity: POD_A.ep.identity, dstIdentity: POD_B.ep.identity,
        ifindex: 1, targetIfindex: POD_B.ep.ifindex, tunnelEndpoint: null, length: frame.length, protocol: IPPROTO_TCP, srcPort: 40000, dstPort: 80, tcpFlags: 0x02, service: null,
      });
    });

    it('TTL checksum update is right across the carry (TTL 2, many headers)', () => {
      for (const ttl of [2, 3, 17, 128, 255]) {
        const r = fromContainer(aToB(ttl));
        assert.equal(r.retval, TcAction.redirect);
        const ip = parseIpv4(r.dataOut);
        assert.equal(ip.ttl, ttl - 1);
        assert.ok(ip.checksumValid, `checksum with ttl ${ttl}`);
      }
    });

    it('emits no event for a forward while the trace flag is off, but counts it', () => {
      const frame = aToB();
      const r = fromContainer(frame);
      assert.equal(r.retval, TcAction.redirect);
      assert.equal(r.events.length, 0);
      assert.equal(metrics.get(metricsMap, { reason: TraceReason.TRACE_TO_ENDPOINT, direction: 'egress' }).packets, 1n);
    });

    it('with CFG_REDIRECT_PEER the object loads and still redirects', () => {
      const r = run(lxcPeer, 'from_container', aToB());
      assert.equal(r.retval, TcAction.redirect);
      assert.equal(parseEthernet(r.dataOut).dstMac, POD_B.ep.mac);
    });

    it('sends a remote pod into the tunnel: VNI = source identity, remote node from ipcache', () => {
      settings.set(settingsMap, { traceForward: true });
      const frame = aToRemote();
      const r = fromContainer(frame);
      assert.equal(r.retval, TcAction.redirect);
      assert.deepEqual(parseEthernet(r.dataOut), parseEthernet(frame), 'inner MACs are left as sent');
      const ip = parseIpv4(r.dataOut);
      assert.equal(ip.ttl, 63);
      assert.ok(ip.checksumValid);
      assertCounted(TraceReason.TRACE_TO_OVERLAY, 'egress', frame);
      const e = r.events[0]!;
      assert.equal(e.reasonName, 'TRACE_TO_OVERLAY');
      assert.equal(e.tunnelEndpoint, REMOTE_POD.node);
      assert.equal(e.srcIdentity, POD_A.ep.identity);
      assert.equal(e.dstIdentity, REMOTE_POD.identity);
      assert.equal(e.targetIfindex, VXLAN_IFINDEX);
    });

    it('uses the longest prefix of the ipcache', () => {
      settings.set(settingsMap, { traceForward: true });
      const r = fromContainer(aToRemote({ dst: '10.102.1.77' }));
      assert.equal(r.retval, TcAction.redirect);
      assert.equal(r.events[0]!.tunnelEndpoint, REMOTE_CIDR.node);
      assert.equal(r.events[0]!.dstIdentity, REMOTE_CIDR.identity);
    });

    it('hands the world (no ipcache entry) and reserved identities without tunnel to the stack, unchanged', () => {
      settings.set(settingsMap, { traceForward: true });
      const world = aToRemote({ dst: '8.8.8.8' });
      let r = fromContainer(world);
      assert.equal(r.retval, TcAction.ok);
      assert.deepEqual(r.dataOut, world);
      assert.equal(r.events[0]!.reasonName, 'TRACE_TO_STACK');
      assert.equal(r.events[0]!.dstIdentity, 2);
      ipcache.update(ipcacheMap, { addr: '10.1.0.2', prefixLen: 32 }, { identity: 6, tunnelEndpoint: null, flags: 0 });
      r = fromContainer(aToRemote({ dst: '10.1.0.2' }));
      assert.equal(r.retval, TcAction.ok);
      assert.equal(r.events[0]!.dstIdentity, 6);
      assert.equal(metrics.get(metricsMap, { reason: TraceReason.TRACE_TO_STACK, direction: 'egress' }).packets, 2n);
    });

    it('fits the tunnel MTU exactly; GSO packets are judged by their segment size', () => {
      // IP total length = 20 + 20 + payload
      assert.equal(fromContainer(aToRemote({ payload: Buffer.alloc(TUNNEL_MTU - 40) })).retval, TcAction.redirect);
      const big = aToRemote({ payload: Buffer.alloc(3000) });
      assert.equal(fromContainer(big, skbContext({ gsoSegs: 3, gsoSize: 1000 })).retval, TcAction.redirect);
      const r = fromContainer(big, skbContext({ gsoSegs: 3, gsoSize: TUNNEL_MTU - 39 }));
      assert.equal(r.retval, TcAction.shot);
      assert.equal(r.events[0]!.reasonName, 'DROP_FRAG_NEEDED');
    });

    it('native routing: a destination inside CFG_NATIVE_CIDRS is routed by the FIB (never the tunnel), one outside still tunnelled', () => {
      settings.set(settingsMap, { traceForward: true });
      // Under test-run the FIB is the test process's: a route (redirect,
      // TRACE_TO_NETWORK) or none / forwarding off (DROP_NO_ROUTE) -- never the tunnel.
      const frame = aToRemote();
      const r = run(lxcNative, 'from_container', frame);
      const e = r.events[0]!;
      assert.ok(
        (r.retval === TcAction.redirect && e.reasonName === 'TRACE_TO_NETWORK') || (r.retval === TcAction.shot && e.reasonName === 'DROP_NO_ROUTE'),
        `${r.retval} ${e.reasonName}`,
      );
      assert.equal(e.tunnelEndpoint, null, 'no tunnel endpoint in a native forward');
      if (r.retval === TcAction.redirect) {
        assert.equal(parseIpv4(r.dataOut).ttl, 63);
        assert.ok(parseIpv4(r.dataOut).checksumValid);
      }
      const out = run(lxcNative, 'from_container', aToRemote({ dst: '10.102.1.77' }));
      assert.equal(out.retval, TcAction.redirect);
      assert.deepEqual([out.events[0]!.reasonName, out.events[0]!.tunnelEndpoint], ['TRACE_TO_OVERLAY', REMOTE_CIDR.node]);
    });

    describe('ARP', () => {
      it('answers a request from a pod with its gateway MAC, back out of the same device', () => {
        const req = arpFrame({ op: ARPOP_REQUEST, senderMac: POD_A.ep.mac, senderIp: POD_A.ip, targetIp: '10.101.0.1' });
        const r = fromContainer(req);
        assert.equal(r.retval, TcAction.redirect);
        assert.deepEqual(parseEthernet(r.dataOut), { dstMac: POD_A.ep.mac, srcMac: POD_A.ep.nodeMac, ethertype: 0x0806 });
        assert.deepEqual(parseArp(r.dataOut), { op: ARPOP_REPLY, senderMac: POD_A.ep.nodeMac, senderIp: '10.101.0.1', targetMac: POD_A.ep.mac, targetIp: POD_A.ip });
        assertCounted(TraceReason.TRACE_ARP_REPLY, 'egress', req);
      });

      it('passes replies, gratuitous ARP and DAD probes to the stack untouched', () => {
        const frames = [
          arpFrame({ op: ARPOP_REPLY, senderMac: POD_A.ep.mac, senderIp: POD_A.ip, targetIp: '10.101.0.1', targetMac: POD_A.ep.nodeMac }),
          arpFrame({ op: ARPOP_REQUEST, senderMac: POD_A.ep.mac, senderIp: POD_A.ip, targetIp: POD_A.ip }),
          arpFrame({ op: ARPOP_REQUEST, senderMac: POD_A.ep.mac, senderIp: '0.0.0.0', targetIp: POD_A.ip }),
        ];
        for (const f of frames) {
          const r = fromContainer(f);
          assert.equal(r.retval, TcAction.ok);
          assert.deepEqual(r.dataOut, f);
        }
        assert.equal(metrics.get(metricsMap, { reason: TraceReason.TRACE_TO_STACK, direction: 'egress' }).packets, 3n);
      });

      it('drops a request from an address that is no endpoint, or from the wrong device', () => {
        let req = arpFrame({ op: ARPOP_REQUEST, senderMac: POD_A.ep.mac, senderIp: '10.101.0.66', targetIp: '10.101.0.1' });
        assertDrop(fromContainer(req), DropReason.DROP_UNKNOWN_SOURCE, 'egress', req);
        metrics.reset(metricsMap);
        req = arpFrame({ op: ARPOP_REQUEST, senderMac: POD_A.ep.mac, senderIp: POD_B.ip, targetIp: '10.101.0.1' });
        assertDrop(fromContainer(req), DropReason.DROP_SOURCE_MISMATCH, 'egress', req);
      });

      it('drops a truncated ARP frame', () => {
        const req = arpFrame({ op: ARPOP_REQUEST, senderMac: POD_A.ep.mac, senderIp: POD_A.ip, targetIp: '10.101.0.1' }).subarray(0, 30);
        assertDrop(fromContainer(req), DropReason.DROP_INVALID_PACKET, 'egress', req);
      });
    });

    describe('drops, each counted under its reason with one event', () => {
      it('DROP_INVALID_PACKET: IHL < 5, wrong version, options past the end, total length < header', () => {
        // (BPF_PROG_TEST_RUN itself refuses IPv4 frames shorter than 14 + 20 bytes.)
        const good = aToB();
        const cases: Array<[string, Buffer]> = [];
        const patch = (what: string, f: Buffer, edit: (b: Buffer) => void): void => {
          const b = Buffer.from(f);
          edit(b);
          cases.push([what, b]);
        };
        patch('ihl 4', good, (b) => (b[14] = 0x44));
        patch('version 6', good, (b) => (b[14] = 0x65));
        patch('ihl 15 in a 34-byte frame', good.subarray(0, 34), (b) => (b[14] = 0x4f));
        patch('tot_len 19', good, (b) => b.writeUInt16BE(19, 16));
        for (const [what, bad] of cases) {
          metrics.reset(metricsMap);
          const e = assertDrop(fromContainer(bad), DropReason.DROP_INVALID_PACKET, 'egress', bad);
          assert.equal(e.srcIp, '0.0.0.0', what);
        }
      });

      it('DROP_UNSUPPORTED_L3: IPv6', () => {
        const f = ethernet(POD_A.ep.nodeMac, POD_A.ep.mac, ETH_P_IPV6, Buffer.alloc(60));
        const e = assertDrop(fromContainer(f), DropReason.DROP_UNSUPPORTED_L3, 'egress', f);
        assert.equal(e.protocol, 0);
      });

      it('DROP_UNKNOWN_SOURCE: source address of no local endpoint', () => {
        const f = tcpFrame({ srcMac: POD_A.ep.mac, dstMac: POD_A.ep.nodeMac, src: '10.101.0.66', dst: POD_B.ip, sport: 1, dport: 2 });
        const e = assertDrop(fromContainer(f), DropReason.DROP_UNKNOWN_SOURCE, 'egress', f);
        assert.deepEqual([e.srcIp, e.dstIp, e.protocol, e.srcPort, e.dstPort], ['10.101.0.66', POD_B.ip, IPPROTO_TCP, 1, 2]);
      });

      it('DROP_SOURCE_MISMATCH: another local pod\'s address sent from this device', () => {
        const f = tcpFrame({ srcMac: POD_A.ep.mac, dstMac: POD_A.ep.nodeMac, src: POD_B.ip, dst: REMOTE_POD.ip, sport: 1, dport: 2 });
        assertDrop(fromContainer(f), DropReason.DROP_SOURCE_MISMATCH, 'egress', f);
      });

      it('DROP_TTL_EXCEEDED: TTL 1 towards a local pod and towards the tunnel; ICMP type in the event', () => {
        let f = aToB(1);
        assertDrop(fromContainer(f), DropReason.DROP_TTL_EXCEEDED, 'egress', f);
        metrics.reset(metricsMap);
        f = icmpFrame({ srcMac: POD_A.ep.mac, dstMac: POD_A.ep.nodeMac, src: POD_A.ip, dst: REMOTE_POD.ip, ttl: 1 });
        const e = assertDrop(fromContainer(f), DropReason.DROP_TTL_EXCEEDED, 'egress', f);
        assert.deepEqual([e.protocol, e.srcPort, e.dstPort, e.tunnelEndpoint], [1, 8, 0, null]);
      });

      it('DROP_FRAG_NEEDED: one byte over the tunnel MTU, with or without DF', () => {
        for (const df of [true, false]) {
          metrics.reset(metricsMap);
          const f = aToRemote({ payload: Buffer.alloc(TUNNEL_MTU - 39), df });
          assert.equal(parseIpv4(f).totalLength, TUNNEL_MTU + 1);
          assertDrop(fromContainer(f), DropReason.DROP_FRAG_NEEDED, 'egress', f);
        }
      });

      it('DROP_NO_TUNNEL_ENDPOINT: a workload identity in the ipcache without a node', () => {
        ipcache.update(ipcacheMap, { addr: '10.102.0.40', prefixLen: 32 }, { identity: 0x20105, tunnelEndpoint: null, flags: 0 });
        const f = aToRemote({ dst: '10.102.0.40' });
        const e = assertDrop(fromContainer(f), DropReason.DROP_NO_TUNNEL_ENDPOINT, 'egress', f);
        assert.equal(e.dstIdentity, 0x20105);
      });

      it('DROP_UNKNOWN_ENDPOINT: the ipcache points at this node but the address is no endpoint', () => {
        ipcache.update(ipcacheMap, { addr: '10.101.0.99', prefixLen: 32 }, { identity: 0x10199, tunnelEndpoint: NODE_IP, flags: 0 });
        const f = aToRemote({ dst: '10.101.0.99' });
        assertDrop(fromContainer(f), DropReason.DROP_UNKNOWN_ENDPOINT, 'egress', f);
      });

      it('DROP_NO_TUNNEL_DEVICE: tunnel needed, CFG_VXLAN_IFINDEX = 0', () => {
        const f = aToRemote();
        const r = run(lxcNoTunnel, 'from_container', f);
        assertDrop(r, DropReason.DROP_NO_TUNNEL_DEVICE, 'egress', f);
      });

      it('DROP_INVALID_IDENTITY: a source identity beyond 24 bits cannot be a VNI', () => {
        endpoints.update(epMap, { ip: POD_A.ip }, { ...POD_A.ep, identity: 0x1000000 });
        const f = aToRemote();
        assertDrop(fromContainer(f), DropReason.DROP_INVALID_IDENTITY, 'egress', f);
      });
    });
  });

  describe('from_overlay', () => {
    it('without tunnel metadata (as under test-run): DROP_NO_TUNNEL_KEY, ingress', () => {
      const f = aToB();
      assertDrop(run(ovl, 'from_overlay', f), DropReason.DROP_NO_TUNNEL_KEY, 'ingress', f);
    });

    describe('handle_overlay through test_from_overlay (tunnel key from cm_test_tunnel)', () => {
      const fromNode = (dst: string, ttl = 64) =>
        tcpFrame({ srcMac: '0e:00:00:00:02:01', dstMac: '0e:00:00:00:01:01', src: REMOTE_POD.ip, dst, sport: 5555, dport: 8080, ttl });

      it('delivers to the local pod: MACs rewritten, TTL-1, source identity from the VNI', () => {
        settings.set(settingsMap, { traceForward: true });
        setTunnel(REMOTE_POD.identity, REMOTE_POD.node);
        const f = fromNode(POD_B.ip);
        const r = run(ovl, 'test_from_overlay', f);
        assert.equal(r.retval, TcAction.redirect);
        assert.deepEqual(parseEthernet(r.dataOut), { dstMac: POD_B.ep.mac, srcMac: POD_B.ep.nodeMac, ethertype: ETH_P_IP });
        const ip = parseIpv4(r.dataOut);
        assert.equal(ip.ttl, 63);
        assert.ok(ip.checksumValid);
        assertCounted(TraceReason.TRACE_TO_ENDPOINT, 'ingress', f);
        const e = r.events[0]!;
        assert.deepEqual(
          [e.reasonName, e.direction, e.srcIdentity, e.dstIdentity, e.tunnelEndpoint, e.targetIfindex],
          ['TRACE_TO_ENDPOINT', 'ingress', REMOTE_POD.identity, POD_B.ep.identity, REMOTE_POD.node, POD_B.ep.ifindex],
        );
      });

      it('DROP_UNKNOWN_ENDPOINT: destination is no pod of this node', () => {
        setTunnel(REMOTE_POD.identity, REMOTE_POD.node);
        const f = fromNode('10.101.0.99');
        const e = assertDrop(run(ovl, 'test_from_overlay', f), DropReason.DROP_UNKNOWN_ENDPOINT, 'ingress', f);
        assert.deepEqual([e.srcIdentity, e.tunnelEndpoint, e.dstIp], [REMOTE_POD.identity, REMOTE_POD.node, '10.101.0.99']);
      });

      it('from_netdev (native routing): a local pod gets it with the identity the ipcache has for the source; the rest goes to the stack uncounted', () => {
        settings.set(settingsMap, { traceForward: true });
        const f = fromNode(POD_B.ip);
        // Without native routing and BPF encapsulation the program passes everything to the stack.
        const off = run(ovl, 'from_netdev', f);
        assert.deepEqual([off.retval, off.dataOut, off.events], [TcAction.ok, f, []]);
        const r = run(ovlNative, 'from_netdev', f);
        assert.equal(r.retval, TcAction.redirect);
        assert.deepEqual(parseEthernet(r.dataOut), { dstMac: POD_B.ep.mac, srcMac: POD_B.ep.nodeMac, ethertype: ETH_P_IP });
        assertCounted(TraceReason.TRACE_TO_ENDPOINT, 'ingress', f);
        const e = r.events[0]!;
        assert.deepEqual([e.srcIdentity, e.dstIdentity, e.tunnelEndpoint, e.targetIfindex], [REMOTE_POD.identity, POD_B.ep.identity, null, POD_B.ep.ifindex]);
        metrics.reset(metricsMap);
        for (const dst of [NODE_IP, '10.2.0.9', '8.8.8.8']) {
          const other = fromNode(dst);
          const o = run(ovlNative, 'from_netdev', other);
          assert.equal(o.retval, TcAction.ok, dst);
          assert.deepEqual(o.dataOut, other);
          assert.deepEqual(o.events, []);
        }
        const arp = arpFrame({ op: ARPOP_REQUEST, senderMac: POD_A.ep.mac, senderIp: '10.1.0.2', targetIp: NODE_IP });
        assert.equal(run(ovlNative, 'from_netdev', arp).retval, TcAction.ok);
        assert.deepEqual(metrics.read(metricsMap), []);
        // An address of this node's pod range that is no pod: dropped here, as from_overlay does.
        ipcache.update(ipcacheMap, ipcache.parsePrefix('10.101.0.0/24'), { identity: 2, tunnelEndpoint: NODE_IP, flags: 0 });
        const stray = fromNode('10.101.0.99');
        assertDrop(run(ovlNative, 'from_netdev', stray), DropReason.DROP_UNKNOWN_ENDPOINT, 'ingress', stray);
      });

      it('from_netdev (tunnelEncap bpf): a VXLAN packet for the node loses its outer headers and reaches the pod with the VNI as identity; what the device must take goes to the stack untouched', () => {
        settings.set(settingsMap, { traceForward: true });
        const inner = fromNode(POD_B.ip);
        const wire = (o: { vni?: number; dst?: string; port?: number; flags?: number; udpChecksum?: number; inner?: Buffer } = {}) =>
          vxlanFrame({ srcMac: '0e:00:00:00:02:00', dstMac: '0e:00:00:00:01:00', src: REMOTE_POD.node, dst: o.dst ?? NODE_IP, vni: o.vni ?? REMOTE_POD.identity, inner: o.inner ?? inner, ...o });
        const f = wire();
        const r = run(ovlBpf, 'from_netdev', f);
        assert.equal(r.retval, TcAction.redirect);
        assert.equal(r.dataOut.length, inner.length, 'the 50 bytes of outer IPv4, UDP, VXLAN and inner Ethernet are gone');
        assert.deepEqual(parseEthernet(r.dataOut), { dstMac: POD_B.ep.mac, srcMac: POD_B.ep.nodeMac, ethertype: ETH_P_IP });
        const ip = parseIpv4(r.dataOut);
        assert.deepEqual([ip.src, ip.dst, ip.ttl, ip.checksumValid], [REMOTE_POD.ip, POD_B.ip, 63, true]);
        assert.deepEqual(r.dataOut.subarray(34), inner.subarray(34), 'the TCP segment as it was sent');
        // Counted as delivered: the inner frame's bytes, as from_overlay counts them.
        assertCounted(TraceReason.TRACE_TO_ENDPOINT, 'ingress', inner);
        const e = r.events[0]!;
        assert.deepEqual([e.srcIdentity, e.dstIdentity, e.tunnelEndpoint, e.targetIfindex], [REMOTE_POD.identity, POD_B.ep.identity, REMOTE_POD.node, POD_B.ep.ifindex]);
        metrics.reset(metricsMap);
        // Not ours to strip: another port, a UDP checksum to verify, no I flag, an inner frame that is not IPv4,
        // another node's address; and every VXLAN packet when the node sends through the device.
        const arp = arpFrame({ op: ARPOP_REQUEST, senderMac: POD_A.ep.mac, senderIp: REMOTE_POD.ip, targetIp: POD_B.ip });
        for (const [what, obj, other] of [
          ['port 4789', ovlBpf, wire({ port: 4789 })],
          ['UDP checksum', ovlBpf, wire({ udpChecksum: 0x1234 })],
          ['no I flag', ovlBpf, wire({ flags: 0 })],
          ['inner ARP', ovlBpf, wire({ inner: arp })],
          ['another node', ovlBpf, wire({ dst: '10.1.0.7' })],
          ['tunnelEncap device', ovl, f],
        ] as const) {
          const o = run(obj, 'from_netdev', other);
          assert.equal(o.retval, TcAction.ok, what);
          assert.deepEqual(o.dataOut, other, what);
          assert.deepEqual(o.events, [], what);
        }
        assert.deepEqual(metrics.read(metricsMap), []);
        // An inner destination that is no pod of this node: dropped as from_overlay drops it.
        const stray = wire({ inner: fromNode('10.101.0.99') });
        const d = run(ovlBpf, 'from_netdev', stray);
        assert.equal(d.retval, TcAction.shot);
        assert.deepEqual([d.events[0]?.reasonName, d.events[0]?.srcIdentity, d.events[0]?.tunnelEndpoint], ['DROP_UNKNOWN_ENDPOINT', REMOTE_POD.identity, REMOTE_POD.node]);
      });

      it('DROP_TTL_EXCEEDED, DROP_UNSUPPORTED_L3, DROP_INVALID_PACKET', () => {
        setTunnel(REMOTE_POD.identity, REMOTE_POD.node);
        let f = fromNode(POD_B.ip, 1);
        assertDrop(run(ovl, 'test_from_overlay', f), DropReason.DROP_TTL_EXCEEDED, 'ingress', f);
        metrics.reset(metricsMap);
        f = arpFrame({ op: ARPOP_REQUEST, senderMac: POD_A.ep.mac, senderIp: REMOTE_POD.ip, targetIp: POD_B.ip });
        assertDrop(run(ovl, 'test_from_overlay', f), DropReason.DROP_UNSUPPORTED_L3, 'ingress', f);
        metrics.reset(metricsMap);
        f = Buffer.from(fromNode(POD_B.ip).subarray(0, 34));
        f[14] = 0x4f; // 60-byte header in a 20-byte packet
        assertDrop(run(ovl, 'test_from_overlay', f), DropReason.DROP_INVALID_PACKET, 'ingress', f);
      });
    });
  });
});

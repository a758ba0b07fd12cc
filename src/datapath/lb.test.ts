// Service translation in the datapath programs (bpf/lib/lb.h, conntrack.h)
// with BPF_PROG_TEST_RUN: DNAT of the first packet to a VIP with correct
// checksums, conntrack, stickiness, reverse NAT in both places replies pass,
// no-backend drops (with a TCP reset), spread, session affinity, hairpin.
// Services are installed the way the agent will: planFrontend()
// (src/loadbalancer) -> map codecs. Test runs happen on lo (ifindex 1), so
// every local pod's endpoint uses ifindex 1; they differ by address and MAC.
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import { type BackendCandidate, type FrontendSpec, planFrontend } from '../loadbalancer/index.ts';
import { removePinDir } from './bpffs.ts';
import type { BpfMap } from './libbpf/map.ts';
import { BpfObject } from './libbpf/object.ts';
import { TcAction, type TestRunResult } from './libbpf/program.ts';
import type { RingBufferReader } from './libbpf/ringbuf.ts';
import * as affinity from './maps/affinity.ts';
import * as backendSlots from './maps/backend-slots.ts';
import * as backends from './maps/backends.ts';
import * as config from './maps/config.ts';
import * as ct from './maps/ct.ts';
import * as endpoints from './maps/endpoints.ts';
import * as events from './maps/events.ts';
import * as ipcache from './maps/ipcache.ts';
import * as lbHint from './maps/lb-hint.ts';
import * as maglev from './maps/maglev.ts';
import * as metrics from './maps/metrics.ts';
import { DropReason, TraceReason } from './maps/reasons.ts';
import * as revnat from './maps/revnat.ts';
import * as services from './maps/services.ts';
import * as settings from './maps/settings.ts';
import { ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, ethernet, internetChecksum, ipv4, parseEthernet, parseIpv4, tcp } from './test-packets.ts';
import { datapathSkipReason, loadDatapathObject, tempPinDir } from './testing.ts';

const CFG: config.DatapathConfig = { vxlanIfindex: 42, nodeIp: '10.1.0.1', clusterId: 1, redirectPeer: false, tunnelMtu: 1450 };

const GW_MAC = '0e:00:00:00:00:01';
interface Pod {
  ip: string;
  mac: string;
}
const pod = (n: number): Pod => ({ ip: `10.101.0.${n}`, mac: `0a:00:00:00:00:${n.toString(16).padStart(2, '0')}` });
const CLIENT = pod(10);
const CLIENT2 = pod(11);
const LOCAL_BACKENDS = [pod(21), pod(22), pod(23)];
const NEW_BACKEND = pod(24);
/** A backend on another node (another cluster). */
const REMOTE_BACKEND = { ip: '10.102.0.30', node: '10.2.0.5', identity: 0x20100 };
const VIP = '10.96.0.10';
const BACKEND_PORT = 8080;

const TCP_SYN = 0x02;
const TCP_ACK = 0x10;
const TCP_FIN = 0x01;
const TCP_PSH_ACK = 0x18;
const TCP_SYN_ACK = 0x12;
const TCP_RST = 0x04;

// ---- frames ----

function pseudoSum(src: string, dst: string, protocol: number, len: number): number {
  const p = Buffer.alloc(12);
  p.set(src.split('.').map(Number), 0);
  p.set(dst.split('.').map(Number), 4);
  p[9] = protocol;
  p.writeUInt16BE(len, 10);
  let s = 0;
  for (let i = 0; i < 12; i += 2) s += p.readUInt16BE(i);
  return s;
}

function udp(src: string, dst: string, sport: number, dport: number, payload: Buffer, zeroChecksum: boolean): Buffer {
  const d = Buffer.concat([Buffer.alloc(8), payload]);
  d.writeUInt16BE(sport, 0);
  d.writeUInt16BE(dport, 2);
  d.writeUInt16BE(d.length, 4);
  if (!zeroChecksum) d.writeUInt16BE(internetChecksum(d, pseudoSum(src, dst, IPPROTO_UDP, d.length)) || 0xffff, 6);
  return d;
}

interface FrameOpts {
  src: string;
  dst: string;
  sport: number;
  dport: number;
  proto?: 'TCP' | 'UDP';
  flags?: number;
  payload?: Buffer;
  zeroChecksum?: boolean;
  srcMac?: string;
  dstMac?: string;
}

function frame(o: FrameOpts): Buffer {
  const payload = o.payload ?? Buffer.from('hello, service');
  const l4 = (o.proto ?? 'TCP') === 'TCP' ? tcp(o.src, o.dst, o.sport, o.dport, payload, o.flags ?? TCP_SYN) : udp(o.src, o.dst, o.sport, o.dport, payload, o.zeroChecksum ?? false);
  const ip = ipv4({ src: o.src, dst: o.dst, protocol: (o.proto ?? 'TCP') === 'TCP' ? IPPROTO_TCP : IPPROTO_UDP, payload: l4 });
  return ethernet(o.dstMac ?? GW_MAC, o.srcMac ?? CLIENT.mac, ETH_P_IP, ip);
}

interface L4 {
  sport: number;
  dport: number;
  checksum: number;
  /** The L4 checksum verifies against the pseudo header (over IP tot_len, not the frame). */
  checksumValid: boolean;
  tcpFlags: number;
  seq: number;
  ack: number;
}

function parseL4(f: Buffer): L4 {
  const ip = parseIpv4(f);
  const ihl = (f[14]! & 0x0f) * 4;
  const seg = f.subarray(14 + ihl, 14 + ip.totalLength);
  const udpCsum = ip.protocol === IPPROTO_UDP ? seg.readUInt16BE(6) : -1;
  const valid = udpCsum === 0 ? true : internetChecksum(seg, pseudoSum(ip.src, ip.dst, ip.protocol, seg.length)) === 0;
  return {
    sport: seg.readUInt16BE(0),
    dport: seg.readUInt16BE(2),
    checksum: ip.protocol === IPPROTO_TCP ? seg.readUInt16BE(16) : udpCsum,
    checksumValid: valid,
    tcpFlags: ip.protocol === IPPROTO_TCP ? seg[13]! : 0,
    seq: ip.protocol === IPPROTO_TCP ? seg.readUInt32BE(4) : 0,
    ack: ip.protocol === IPPROTO_TCP ? seg.readUInt32BE(8) : 0,
  };
}

/** Both checksums valid and the addresses/ports as expected. */
function assertPacket(f: Buffer, want: { src: string; dst: string; sport: number; dport: number }, what: string): void {
  const ip = parseIpv4(f);
  const l4 = parseL4(f);
  assert.deepEqual({ src: ip.src, dst: ip.dst, sport: l4.sport, dport: l4.dport }, want, what);
  assert.ok(ip.checksumValid, `${what}: IPv4 header checksum`);
  assert.ok(l4.checksumValid, `${what}: L4 checksum 0x${l4.checksum.toString(16)}`);
}

describe('service translation (BPF_PROG_TEST_RUN)', { skip: datapathSkipReason() }, () => {
  let dir: string | undefined;
  const objs: BpfObject[] = [];
  let lxc: BpfObject;
  let ovl: BpfObject;
  const m = {} as Record<'ipcache' | 'endpoints' | 'metrics' | 'services' | 'backends' | 'slots' | 'maglev' | 'revnat' | 'ct' | 'affinity', BpfMap>;
  let reader: RingBufferReader | undefined;
  const got: events.DatapathEvent[] = [];

  function load(rel: string): BpfObject {
    const o = loadDatapathObject(rel, dir!, CFG);
    objs.push(o);
    return o;
  }

  before(() => {
    dir = tempPinDir('lb');
    lxc = load('lxc.bpf.o');
    ovl = load('test/overlay_test.bpf.o'); // shares every pinned cm_* map with lxc
    Object.assign(m, {
      ipcache: lxc.map(ipcache.MAP_NAME),
      endpoints: lxc.map(endpoints.MAP_NAME),
      metrics: lxc.map(metrics.MAP_NAME),
      services: lxc.map(services.MAP_NAME),
      backends: lxc.map(backends.MAP_NAME),
      slots: lxc.map(backendSlots.MAP_NAME),
      maglev: lxc.map(maglev.MAP_NAME),
      revnat: lxc.map(revnat.MAP_NAME),
      ct: ovl.map(ct.MAP_NAME), // the overlay object's handle: proves the map is shared
      affinity: lxc.map(affinity.MAP_NAME),
    });
    reader = events.openReader(lxc.map(events.MAP_NAME), (e) => got.push(e));
  });

  after(() => {
    reader?.close();
    for (const o of objs) o.close();
    if (dir) removePinDir(dir);
  });

  function clear(map: BpfMap): void {
    for (const k of [...map.keys()]) map.delete(k);
  }

  beforeEach(() => {
    for (const map of Object.values(m)) if (map !== m.metrics) clear(map);
    metrics.reset(m.metrics);
    for (const p of [CLIENT, CLIENT2, ...LOCAL_BACKENDS, NEW_BACKEND]) {
      endpoints.update(m.endpoints, { ip: p.ip }, { ifindex: 1, identity: 0x10100, endpointId: 1, flags: 0, mac: p.mac, nodeMac: GW_MAC });
    }
    ipcache.update(m.ipcache, { addr: REMOTE_BACKEND.ip, prefixLen: 32 }, { identity: REMOTE_BACKEND.identity, tunnelEndpoint: REMOTE_BACKEND.node, flags: 0 });
    lxc.map(lbHint.MAP_NAME).update(Buffer.alloc(4), Buffer.alloc(lbHint.VALUE_SIZE)); // never written: every address looked up
    reader!.consume();
    got.length = 0;
  });

  function run(obj: BpfObject, prog: string, f: Buffer): TestRunResult & { events: events.DatapathEvent[] } {
    const r = obj.program(prog).testRun({ data: f });
    got.length = 0;
    reader!.consume();
    return { ...r, events: [...got] };
  }
  const fromContainer = (f: Buffer) => run(lxc, 'from_container', f);

  let nextBackendId = 100;
  const candidate = (ip: string, o: Partial<BackendCandidate> = {}): BackendCandidate => ({
    id: nextBackendId++, ip, port: BACKEND_PORT, clusterId: ip.startsWith('10.101.') ? 1 : 2, local: ip.startsWith('10.101.'),
    ready: true, terminating: false, clusterGone: false, ...o,
  });

  /** Writes a frontend's plan into the maps (what the agent's reconciler will do). */
  function install(spec: Partial<FrontendSpec> & Pick<FrontendSpec, 'backends'>): FrontendSpec {
    const full: FrontendSpec = { vip: VIP, port: 80, protocol: 'TCP', serviceId: 7, ...spec };
    const p = planFrontend(full);
    backends.updateMany(m.backends, p.backends);
    backendSlots.updateMany(m.slots, backendSlots.tableEntries(p.service.value.serviceId, p.slots));
    if (p.maglev) maglev.update(m.maglev, p.service.value.serviceId, p.maglev);
    revnat.update(m.revnat, p.revnat.key, p.revnat.value);
    services.update(m.services, p.service.key, p.service.value);
    return full;
  }

  const toVip = (sport: number, o: Partial<FrameOpts> = {}) => frame({ src: CLIENT.ip, dst: VIP, sport, dport: 80, ...o });
  const backendOf = (r: TestRunResult) => parseIpv4(r.dataOut).dst;
  const ctKey = (sport: number, o: Partial<ct.Key> = {}): ct.Key => ({ src: CLIENT.ip, dst: VIP, sport, dport: 80, protocol: 'TCP', dir: 'service', ...o });

  describe('forward translation (from_container)', () => {
    it('TCP to VIP:port: destination and port rewritten with valid checksums, delivered to the local backend, both ct entries made', () => {
      const spec = install({ backends: [candidate(LOCAL_BACKENDS[0]!.ip)] });
      const f = toVip(40000);
      const r = fromContainer(f);
      assert.equal(r.retval, TcAction.redirect);
      assertPacket(r.dataOut, { src: CLIENT.ip, dst: LOCAL_BACKENDS[0]!.ip, sport: 40000, dport: BACKEND_PORT }, 'DNAT');
      assert.deepEqual(parseEthernet(r.dataOut), { dstMac: LOCAL_BACKENDS[0]!.mac, srcMac: GW_MAC, ethertype: ETH_P_IP });
      assert.equal(parseIpv4(r.dataOut).ttl, 63);
      assert.deepEqual(r.dataOut.subarray(14 + 40), f.subarray(14 + 40), 'payload untouched');
      const now = ct.monotonicSeconds();
      const fwd = ct.lookup(m.ct, ctKey(40000));
      assert.ok(fwd, 'CT_SERVICE entry');
      assert.deepEqual({ ...fwd, lifetime: 0 }, { backendId: spec.backends[0]!.id, revnatId: 7, lifetime: 0, closing: false, hairpin: false });
      assert.ok(Math.abs(fwd.lifetime - (now + ct.CtLifetime.CT_LIFETIME_TCP_SYN)) <= 2, 'a SYN gets the handshake lifetime');
      const rev = ct.lookup(m.ct, { src: LOCAL_BACKENDS[0]!.ip, dst: CLIENT.ip, sport: BACKEND_PORT, dport: 40000, protocol: 'TCP', dir: 'revnat' });
      assert.equal(rev?.revnatId, 7);
      assert.equal(metrics.get(m.metrics, { reason: TraceReason.TRACE_TO_ENDPOINT, direction: 'egress' }).packets, 1n);
      assert.equal(metrics.get(m.metrics, { reason: TraceReason.TRACE_SERVICE_XLATE, direction: 'egress' }).packets, 1n, 'counted as a translation besides its forward');
    });

    it('a sampled connection opening to a VIP names the service frontend and the backend it was translated to', () => {
      install({ backends: [candidate(LOCAL_BACKENDS[0]!.ip)] });
      const cfg = lxc.map(settings.MAP_NAME);
      settings.set(cfg, { traceForward: false, traceNew: true });
      try {
        const r = fromContainer(toVip(40100));
        assert.equal(r.retval, TcAction.redirect);
        assert.deepEqual(
          r.events.map((e) => [e.reasonName, e.dstIp, e.dstPort, e.service, e.tcpFlags]),
          [['TRACE_TO_ENDPOINT', LOCAL_BACKENDS[0]!.ip, BACKEND_PORT, { ip: VIP, port: 80 }, 0x02]],
        );
      } finally {
        settings.set(cfg, { traceForward: false });
      }
    });

    it('a remote backend: translated, then into the tunnel towards its node', () => {
      install({ backends: [candidate(REMOTE_BACKEND.ip)] });
      const r = fromContainer(toVip(40001));
      assert.equal(r.retval, TcAction.redirect);
      assertPacket(r.dataOut, { src: CLIENT.ip, dst: REMOTE_BACKEND.ip, sport: 40001, dport: BACKEND_PORT }, 'DNAT');
      assert.equal(metrics.get(m.metrics, { reason: TraceReason.TRACE_TO_OVERLAY, direction: 'egress' }).packets, 1n);
    });

    it('UDP with a checksum and with checksum 0 ("none", which must stay 0)', () => {
      install({ protocol: 'UDP', port: 53, backends: [candidate(LOCAL_BACKENDS[1]!.ip)] });
      for (const zero of [false, true]) {
        const f = toVip(41000, { proto: 'UDP', dport: 53, zeroChecksum: zero });
        const r = fromContainer(f);
        assert.equal(r.retval, TcAction.redirect);
        assertPacket(r.dataOut, { src: CLIENT.ip, dst: LOCAL_BACKENDS[1]!.ip, sport: 41000, dport: BACKEND_PORT }, `UDP zero=${zero}`);
        const l4 = parseL4(r.dataOut);
        if (zero) assert.equal(l4.checksum, 0);
        else assert.notEqual(l4.checksum, 0);
      }
      assert.ok(ct.lookup(m.ct, ctKey(41000, { dport: 53, protocol: 'UDP' })), 'CT_SERVICE entry');
    });

    it('a port or protocol the VIP does not serve is left alone', () => {
      install({ backends: [candidate(LOCAL_BACKENDS[0]!.ip)] });
      for (const f of [toVip(40002, { dport: 81 }), toVip(40002, { proto: 'UDP' })]) {
        const r = fromContainer(f);
        assert.equal(r.retval, TcAction.ok, 'to the stack (no ipcache entry for the VIP)');
        assert.deepEqual(r.dataOut, f);
      }
      assert.equal([...m.ct.keys()].length, 0);
      assert.equal(metrics.get(m.metrics, { reason: TraceReason.TRACE_SERVICE_XLATE, direction: 'egress' }).packets, 0n, 'no translation counted');
    });

    it('sticks: later packets follow the ct entry even when the service\'s backends change; new connections see the change', () => {
      const spec = install({ backends: LOCAL_BACKENDS.map((p) => candidate(p.ip)) });
      const first = new Map<number, string>();
      for (let sport = 42000; sport < 42030; sport++) first.set(sport, backendOf(fromContainer(toVip(sport))));
      assert.equal(new Set(first.values()).size, 3, '30 flows reach all 3 backends');
      // The service now has one new backend only; the old ones still exist (terminating, say).
      install({ backends: [...spec.backends.map((b) => ({ ...b, terminating: true, ready: false })), candidate(NEW_BACKEND.ip)] });
      for (const [sport, be] of first) {
        const r = fromContainer(toVip(sport, { flags: TCP_PSH_ACK }));
        assert.equal(backendOf(r), be, `flow ${sport} stays on ${be}`);
        assertPacket(r.dataOut, { src: CLIENT.ip, dst: be, sport, dport: BACKEND_PORT }, 'later packet');
      }
      for (let sport = 43000; sport < 43010; sport++) assert.equal(backendOf(fromContainer(toVip(sport))), NEW_BACKEND.ip);
    });

    it('a connection whose backend was withdrawn entirely is moved to a live one', () => {
      const [a, b] = [candidate(LOCAL_BACKENDS[0]!.ip), candidate(LOCAL_BACKENDS[1]!.ip)];
      install({ backends: [a] });
      assert.equal(backendOf(fromContainer(toVip(44000))), a.ip);
      backends.remove(m.backends, a.id);
      install({ backends: [b] });
      assert.equal(backendOf(fromContainer(toVip(44000, { flags: TCP_ACK }))), b.ip);
      assert.equal(ct.lookup(m.ct, ctKey(44000))?.backendId, b.id);
    });

    it('FIN marks the connection closing (short lifetime); a new SYN on that tuple chooses again', () => {
      install({ backends: [candidate(LOCAL_BACKENDS[0]!.ip)] });
      fromContainer(toVip(45000));
      fromContainer(toVip(45000, { flags: TCP_ACK }));
      const est = ct.lookup(m.ct, ctKey(45000))!;
      assert.ok(Math.abs(est.lifetime - (ct.monotonicSeconds() + ct.CtLifetime.CT_LIFETIME_TCP)) <= 2, 'established lifetime');
      fromContainer(toVip(45000, { flags: TCP_FIN | TCP_ACK }));
      const closing = ct.lookup(m.ct, ctKey(45000))!;
      assert.equal(closing.closing, true);
      assert.ok(closing.lifetime <= ct.monotonicSeconds() + ct.CtLifetime.CT_LIFETIME_TCP_CLOSE + 1);
      fromContainer(toVip(45000));
      assert.equal(ct.lookup(m.ct, ctKey(45000))!.closing, false, 'a fresh entry');
    });

    it('a backend flagged terminating, cluster-gone or not ready gets no new connection even while still in the table', () => {
      const bs = [...LOCAL_BACKENDS, NEW_BACKEND].map((p) => candidate(p.ip));
      install({ backends: bs });
      // Flags change first (as the reconciler does); the table is not yet rewritten.
      const flags = [{ terminating: true }, { clusterGone: true }, { notReady: true }];
      flags.forEach((f, i) => backends.update(m.backends, bs[i]!.id, { ip: bs[i]!.ip, port: BACKEND_PORT, clusterId: 1, terminating: false, clusterGone: false, notReady: false, ...f }));
      const seen = new Set<string>();
      for (let sport = 46000; sport < 46100; sport++) seen.add(backendOf(fromContainer(toVip(sport))));
      assert.deepEqual([...seen], [NEW_BACKEND.ip], 'every new connection probes past the flagged slots');
    });

    it('a first fragment to a VIP: DROP_SERVICE_FRAGMENT, counted with an event', () => {
      install({ protocol: 'UDP', port: 53, backends: [candidate(LOCAL_BACKENDS[0]!.ip)] });
      const f = toVip(47000, { proto: 'UDP', dport: 53 });
      f.writeUInt16BE(0x2000, 14 + 6); // MF, offset 0
      f.writeUInt16BE(0, 14 + 10);
      f.writeUInt16BE(internetChecksum(f.subarray(14, 34)), 14 + 10);
      const r = fromContainer(f);
      assert.equal(r.retval, TcAction.shot);
      assert.equal(r.events[0]?.reasonName, 'DROP_SERVICE_FRAGMENT');
      assert.equal(metrics.get(m.metrics, { reason: DropReason.DROP_SERVICE_FRAGMENT, direction: 'egress' }).packets, 1n);
    });
  });

  /** The SYN-ACK of the remote backend to the client's port @dport, as from_overlay gets it (the tunnel's source: the backend's identity and node). */
  function remoteReply(dport: number): Buffer {
    const t = Buffer.alloc(8);
    t.writeUInt32LE(REMOTE_BACKEND.identity, 0);
    t.set(REMOTE_BACKEND.node.split('.').map(Number), 4);
    ovl.map('cm_test_tunnel').update(Buffer.alloc(4), t);
    return frame({ src: REMOTE_BACKEND.ip, dst: CLIENT.ip, sport: BACKEND_PORT, dport, flags: TCP_SYN_ACK, srcMac: '0e:00:00:00:02:01', dstMac: '0e:00:00:00:01:01' });
  }

  describe('reverse translation', () => {
    it('reply of a local backend (its from_container): source back to VIP:port, checksums valid, delivered to the client; TCP and UDP', () => {
      for (const proto of ['TCP', 'UDP'] as const) {
        install({ protocol: proto, backends: [candidate(LOCAL_BACKENDS[0]!.ip)] });
        const fwd = fromContainer(toVip(48000, { proto }));
        assert.equal(backendOf(fwd), LOCAL_BACKENDS[0]!.ip);
        const reply = frame({ src: LOCAL_BACKENDS[0]!.ip, dst: CLIENT.ip, sport: BACKEND_PORT, dport: 48000, proto, flags: TCP_SYN_ACK, srcMac: LOCAL_BACKENDS[0]!.mac });
        const r = fromContainer(reply);
        assert.equal(r.retval, TcAction.redirect, proto);
        assertPacket(r.dataOut, { src: VIP, dst: CLIENT.ip, sport: 80, dport: 48000 }, `${proto} reply`);
        assert.equal(parseEthernet(r.dataOut).dstMac, CLIENT.mac);
        assert.deepEqual(r.dataOut.subarray(r.dataOut.length - 14), reply.subarray(reply.length - 14), 'payload untouched');
      }
    });

    it('reply of a remote backend arrives through from_overlay and is reverse-translated there', () => {
      install({ backends: [candidate(REMOTE_BACKEND.ip)] });
      fromContainer(toVip(48100));
      const reply = remoteReply(48100);
      const r = run(ovl, 'test_from_overlay', reply);
      assert.equal(r.retval, TcAction.redirect);
      assertPacket(r.dataOut, { src: VIP, dst: CLIENT.ip, sport: 80, dport: 48100 }, 'overlay reply');
      assert.equal(parseEthernet(r.dataOut).dstMac, CLIENT.mac);
      assert.equal(metrics.get(m.metrics, { reason: TraceReason.TRACE_TO_ENDPOINT, direction: 'ingress' }).packets, 1n);
    });

    it('traffic from a backend that is no reply (other port, other client, service gone) is not touched', () => {
      install({ backends: [candidate(LOCAL_BACKENDS[0]!.ip)] });
      fromContainer(toVip(48200));
      const notReplies = [
        frame({ src: LOCAL_BACKENDS[0]!.ip, dst: CLIENT.ip, sport: 9090, dport: 48200, srcMac: LOCAL_BACKENDS[0]!.mac }),
        frame({ src: LOCAL_BACKENDS[0]!.ip, dst: CLIENT2.ip, sport: BACKEND_PORT, dport: 48200, srcMac: LOCAL_BACKENDS[0]!.mac }),
      ];
      for (const f of notReplies) assert.equal(parseIpv4(fromContainer(f).dataOut).src, LOCAL_BACKENDS[0]!.ip);
      revnat.remove(m.revnat, 7);
      const reply = frame({ src: LOCAL_BACKENDS[0]!.ip, dst: CLIENT.ip, sport: BACKEND_PORT, dport: 48200, srcMac: LOCAL_BACKENDS[0]!.mac });
      assert.equal(parseIpv4(fromContainer(reply).dataOut).src, LOCAL_BACKENDS[0]!.ip, 'service gone: the client will reset');
    });

    it('only a packet to a local endpoint (or the hairpin address) can be a reply: one to an address elsewhere skips reverse translation', () => {
      install({ backends: [candidate(LOCAL_BACKENDS[0]!.ip)] });
      fromContainer(toVip(48250));
      const reply = frame({ src: LOCAL_BACKENDS[0]!.ip, dst: CLIENT.ip, sport: BACKEND_PORT, dport: 48250, srcMac: LOCAL_BACKENDS[0]!.mac });
      // the client's address now belongs to a pod of another node: its CT_REVNAT entry (still there) cannot apply
      endpoints.remove(m.endpoints, { ip: CLIENT.ip });
      ipcache.update(m.ipcache, { addr: CLIENT.ip, prefixLen: 32 }, { identity: REMOTE_BACKEND.identity, tunnelEndpoint: REMOTE_BACKEND.node, flags: 0 });
      assert.ok(ct.lookup(m.ct, ctKey(48250, { src: LOCAL_BACKENDS[0]!.ip, dst: CLIENT.ip, sport: BACKEND_PORT, dport: 48250, dir: 'revnat' })), 'the reply entry is there');
      const away = fromContainer(reply);
      assert.equal(away.retval, TcAction.redirect);
      assertPacket(away.dataOut, { src: LOCAL_BACKENDS[0]!.ip, dst: CLIENT.ip, sport: BACKEND_PORT, dport: 48250 }, 'untranslated, into the tunnel');
      assert.equal(metrics.get(m.metrics, { reason: TraceReason.TRACE_TO_OVERLAY, direction: 'egress' }).packets, 1n);
      // back on this node: the same entry translates again
      ipcache.remove(m.ipcache, { addr: CLIENT.ip, prefixLen: 32 });
      endpoints.update(m.endpoints, { ip: CLIENT.ip }, { ifindex: 1, identity: 0x10100, endpointId: 1, flags: 0, mac: CLIENT.mac, nodeMac: GW_MAC });
      assertPacket(fromContainer(reply).dataOut, { src: VIP, dst: CLIENT.ip, sport: 80, dport: 48250 }, 'translated');
    });

    it('hairpin: a pod reaching itself through the VIP gets source 169.254.42.1, and the reply comes back as VIP -> pod', () => {
      const self = LOCAL_BACKENDS[0]!;
      install({ backends: [candidate(self.ip)] });
      const r = fromContainer(frame({ src: self.ip, dst: VIP, sport: 48300, dport: 80, srcMac: self.mac }));
      assert.equal(r.retval, TcAction.redirect);
      assertPacket(r.dataOut, { src: ct.HAIRPIN_IP, dst: self.ip, sport: 48300, dport: BACKEND_PORT }, 'hairpin request');
      assert.equal(parseEthernet(r.dataOut).dstMac, self.mac);
      const reply = frame({ src: self.ip, dst: ct.HAIRPIN_IP, sport: BACKEND_PORT, dport: 48300, flags: TCP_SYN_ACK, srcMac: self.mac });
      const back = fromContainer(reply);
      assert.equal(back.retval, TcAction.redirect);
      assertPacket(back.dataOut, { src: VIP, dst: self.ip, sport: 80, dport: 48300 }, 'hairpin reply');
      assert.equal(parseEthernet(back.dataOut).dstMac, self.mac);
      assert.equal(ct.lookup(m.ct, { src: self.ip, dst: ct.HAIRPIN_IP, sport: BACKEND_PORT, dport: 48300, protocol: 'TCP', dir: 'revnat' })?.hairpin, true);
    });
  });

  describe('cm_lb_hint: which addresses are looked up', () => {
    const hintMap = () => lxc.map(lbHint.MAP_NAME);

    it('a VIP without its bit in a valid hint is not translated; with it, or with a hint not valid, it is', () => {
      install({ backends: [candidate(LOCAL_BACKENDS[0]!.ip)] });
      lbHint.write(hintMap(), { vips: [], backends: [LOCAL_BACKENDS[0]!.ip] });
      const skipped = fromContainer(toVip(49000));
      assert.equal(parseIpv4(skipped.dataOut).dst, VIP, 'left as addressed');
      assert.equal(ct.lookup(m.ct, ctKey(49000)), undefined, 'no conntrack entry: the service was not looked up');
      assert.equal(metrics.get(m.metrics, { reason: TraceReason.TRACE_SERVICE_XLATE, direction: 'egress' }).packets, 0n);

      lbHint.add(hintMap(), { vips: [VIP], backends: [] });
      assert.equal(backendOf(fromContainer(toVip(49001))), LOCAL_BACKENDS[0]!.ip, 'its bit set: translated');
      lbHint.write(hintMap(), { vips: [], backends: [] });
      lbHint.invalidate(hintMap());
      assert.equal(backendOf(fromContainer(toVip(49002))), LOCAL_BACKENDS[0]!.ip, 'not valid: looked up');
    });

    it('a reply from a backend without its bit in a valid hint is not reverse-translated; with it, it is', () => {
      install({ backends: [candidate(REMOTE_BACKEND.ip)] });
      lbHint.write(hintMap(), { vips: [VIP], backends: [REMOTE_BACKEND.ip] });
      fromContainer(toVip(49100));
      const reply = remoteReply(49100);
      assertPacket(run(ovl, 'test_from_overlay', reply).dataOut, { src: VIP, dst: CLIENT.ip, sport: 80, dport: 49100 }, 'with the bit: translated');
      lbHint.write(hintMap(), { vips: [VIP], backends: [] });
      assertPacket(run(ovl, 'test_from_overlay', reply).dataOut, { src: REMOTE_BACKEND.ip, dst: CLIENT.ip, sport: BACKEND_PORT, dport: 49100 }, 'without: as it came');
    });
  });

  describe('no backend', () => {
    it('TCP: DROP_NO_SERVICE_BACKEND counted with an event, and the SYN answered with a RST from the VIP', () => {
      install({ backends: [candidate(LOCAL_BACKENDS[0]!.ip, { ready: false })] });
      const f = toVip(49000);
      const r = fromContainer(f);
      assert.equal(r.retval, TcAction.redirect, 'the RST goes back to the client');
      assert.deepEqual(
        metrics.read(m.metrics).map((x) => [x.reasonName, x.direction, x.packets, x.bytes]),
        [['DROP_NO_SERVICE_BACKEND', 'egress', 1n, BigInt(f.length)]],
      );
      assert.equal(r.events.length, 1);
      const e = r.events[0]!;
      assert.deepEqual([e.type, e.reasonName, e.dstIp, e.dstPort, e.srcIp, e.srcPort, e.targetIfindex], ['drop', 'DROP_NO_SERVICE_BACKEND', VIP, 80, CLIENT.ip, 49000, 1]);
      assert.deepEqual(parseEthernet(r.dataOut), { dstMac: CLIENT.mac, srcMac: GW_MAC, ethertype: ETH_P_IP });
      const ip = parseIpv4(r.dataOut);
      assert.equal(ip.totalLength, 40);
      assertPacket(r.dataOut, { src: VIP, dst: CLIENT.ip, sport: 80, dport: 49000 }, 'RST');
      const l4 = parseL4(r.dataOut);
      assert.equal(l4.tcpFlags, TCP_RST | TCP_ACK);
      assert.equal(l4.ack, 1 + 1 + 14, 'acknowledges SYN + payload of the crafted segment (seq 1)');
      assert.equal([...m.ct.keys()].length, 0, 'no ct entry');
    });

    it('TCP with ACK: the RST takes its sequence number from the ACK; a RST is never answered', () => {
      install({ backends: [] });
      const r = fromContainer(toVip(49001, { flags: TCP_ACK }));
      assert.equal(r.retval, TcAction.redirect);
      const l4 = parseL4(r.dataOut);
      assert.equal(l4.tcpFlags, TCP_RST);
      assert.equal(l4.seq, 0, 'the crafted segment acks 0');
      const rst = fromContainer(toVip(49002, { flags: TCP_RST }));
      assert.equal(rst.retval, TcAction.shot);
      assert.equal(rst.events[0]?.reasonName, 'DROP_NO_SERVICE_BACKEND');
    });

    it('UDP: dropped, counted and reported', () => {
      install({ protocol: 'UDP', backends: [] });
      const f = toVip(49003, { proto: 'UDP' });
      const r = fromContainer(f);
      assert.equal(r.retval, TcAction.shot);
      assert.equal(metrics.get(m.metrics, { reason: DropReason.DROP_NO_SERVICE_BACKEND, direction: 'egress' }).packets, 1n);
      assert.equal(r.events[0]?.reasonName, 'DROP_NO_SERVICE_BACKEND');
      assert.deepEqual(r.events[0]?.service, { ip: VIP, port: 80 }, 'the event names the service frontend');
    });
  });

  describe('spread and affinity', () => {
    for (const algorithm of ['slots', 'maglev'] as const) {
      it(`${algorithm}: 3000 connections over 3 backends, each backend within ±15% of 1000`, () => {
        install({ algorithm, backends: LOCAL_BACKENDS.map((p) => candidate(p.ip)) });
        const counts = new Map<string, number>();
        for (let i = 0; i < 3000; i++) {
          const r = fromContainer(toVip(10000 + i));
          assert.equal(r.retval, TcAction.redirect);
          counts.set(backendOf(r), (counts.get(backendOf(r)) ?? 0) + 1);
        }
        assert.deepEqual([...counts.keys()].sort(), LOCAL_BACKENDS.map((p) => p.ip));
        for (const [be, n] of counts) assert.ok(n >= 850 && n <= 1150, `${be}: ${n} of 3000`);
      });
    }

    it('sessionAffinity ClientIP: every connection of a client goes to its first backend; the entry is refreshed; expired it is chosen anew', () => {
      const spec = install({ sessionAffinity: { timeoutSeconds: 30 }, backends: LOCAL_BACKENDS.map((p) => candidate(p.ip)) });
      const seen = new Set<string>();
      for (let sport = 50000; sport < 50060; sport++) seen.add(backendOf(fromContainer(toVip(sport))));
      assert.equal(seen.size, 1, `one backend for all 60 connections: ${[...seen]}`);
      const entry = affinity.lookup(m.affinity, { client: CLIENT.ip, serviceId: 7 });
      assert.ok(entry);
      assert.equal(spec.backends.find((b) => b.id === entry.backendId)?.ip, [...seen][0]);
      assert.ok(Math.abs(entry.lastUsed - ct.monotonicSeconds()) <= 1);
      // Another client spreads independently (over enough clients all backends are used).
      assert.ok(LOCAL_BACKENDS.map((p) => p.ip).includes(backendOf(fromContainer(toVip(50000, { src: CLIENT2.ip, srcMac: CLIENT2.mac })))));
      // An entry older than the timeout no longer binds: a fresh choice, written back with the current time.
      const other = spec.backends.find((b) => b.id !== entry.backendId)!;
      affinity.update(m.affinity, { client: CLIENT.ip, serviceId: 7 }, { backendId: other.id, lastUsed: ct.monotonicSeconds() - 31 });
      fromContainer(toVip(50100));
      const renewed = affinity.lookup(m.affinity, { client: CLIENT.ip, serviceId: 7 })!;
      assert.ok(Math.abs(renewed.lastUsed - ct.monotonicSeconds()) <= 1);
      // A fresh entry binds whatever the hash would say.
      affinity.update(m.affinity, { client: CLIENT.ip, serviceId: 7 }, { backendId: other.id, lastUsed: ct.monotonicSeconds() });
      for (let sport = 50200; sport < 50220; sport++) assert.equal(backendOf(fromContainer(toVip(sport))), other.ip);
      // ...unless that backend takes no new connections any more.
      backends.update(m.backends, other.id, { ip: other.ip, port: BACKEND_PORT, clusterId: 1, terminating: true, clusterGone: false, notReady: false });
      const moved = backendOf(fromContainer(toVip(50300)));
      assert.notEqual(moved, other.ip);
      assert.equal(spec.backends.find((b) => b.id === affinity.lookup(m.affinity, { client: CLIENT.ip, serviceId: 7 })!.backendId)?.ip, moved);
    });
  });

  describe('conntrack capacity and sweep (cm_ct is a plain hash, not an LRU)', () => {
    /** A CT_SERVICE entry of some other client, expiring at `lifetime`. */
    const filler = (i: number, lifetime: number): [ct.Key, ct.Value] => [
      { src: `10.250.${i >> 8}.${i & 255}`, dst: VIP, sport: 30000, dport: 80, protocol: 'TCP', dir: 'service' },
      { backendId: 1, revnatId: 1, lifetime, closing: false, hairpin: false },
    ];
    const count = (): number => [...m.ct.keys()].length;
    const ctWriteFailed = (): bigint => metrics.get(m.metrics, { reason: DropReason.DROP_CT_WRITE_FAILED, direction: 'egress' }).packets;

    it('full: a new connection is refused (dropped, counted as DROP_CT_WRITE_FAILED, no half entry left) and no live entry is evicted; the sweep makes room', () => {
      const backend = LOCAL_BACKENDS[0]!.ip;
      install({ backends: [candidate(backend)] });
      assert.equal(fromContainer(toVip(46000)).retval, TcAction.redirect);
      fromContainer(toVip(46000, { flags: TCP_ACK }));
      assert.equal(count(), 2, 'a connection: CT_SERVICE and CT_REVNAT');
      const now = ct.monotonicSeconds();
      const max = m.ct.maxEntries;
      // Other connections up to one free slot: 100 live, the rest expired (not yet swept).
      const fill = Array.from({ length: max - 3 }, (_, i) => filler(i, i < 100 ? now + 3600 : now - 5));
      try {
        assert.equal(ct.updateMany(m.ct, fill), max - 3);
        assert.equal(count(), max - 1);

        // One slot: the new connection's CT_SERVICE fits, its CT_REVNAT does not; the first is taken back.
        const r1 = fromContainer(toVip(46001));
        assert.equal(r1.retval, TcAction.shot, 'refused: no connection without its reply entry');
        assert.equal(ctWriteFailed(), 1n);
        assert.equal(ct.lookup(m.ct, ctKey(46001)), undefined, 'no half entry left');
        assert.equal(count(), max - 1);
        // No slot at all: refused at the first write.
        ct.update(m.ct, ...filler(max - 3, now - 5));
        assert.equal(count(), max);
        assert.equal(fromContainer(toVip(46002)).retval, TcAction.shot);
        assert.equal(ctWriteFailed(), 2n);
        assert.equal(count(), max, 'nothing evicted, nothing added');

        // An LRU would have made room by evicting; here every entry is still there,
        // and the tracked connection still goes to its backend.
        assert.ok(ct.lookup(m.ct, ctKey(46000)));
        for (const [k] of fill.slice(0, 100)) assert.ok(ct.lookup(m.ct, k), `${k.src} kept`);
        const est = fromContainer(toVip(46000, { flags: TCP_PSH_ACK }));
        assert.equal(est.retval, TcAction.redirect);
        assert.equal(backendOf(est), backend);

        // The agent's sweep deletes what expired: room again.
        assert.equal(ct.gc(m.ct, now), max - 2 - 100);
        assert.equal(count(), 102);
        const again = fromContainer(toVip(46001));
        assert.equal(again.retval, TcAction.redirect);
        assert.ok(ct.lookup(m.ct, ctKey(46001)));
        assert.ok(ct.lookup(m.ct, { src: backend, dst: CLIENT.ip, sport: BACKEND_PORT, dport: 46001, protocol: 'TCP', dir: 'revnat' }));
        assert.equal(ctWriteFailed(), 2n);
      } finally {
        ct.removeMany(m.ct, [...ct.entries(m.ct)].map(([k]) => k));
      }
    });

    it('the sweep deletes the entries past their timeout and keeps the others (TCP established 6 h, handshake 60 s, closing 10 s, UDP 60 s)', () => {
      install({ backends: [candidate(LOCAL_BACKENDS[0]!.ip)] });
      install({ serviceId: 8, protocol: 'UDP', port: 53, backends: [candidate(LOCAL_BACKENDS[1]!.ip)] });
      const now = ct.monotonicSeconds();
      fromContainer(toVip(47000)); // SYN only
      fromContainer(toVip(47001));
      fromContainer(toVip(47001, { flags: TCP_ACK })); // established
      fromContainer(toVip(47002));
      fromContainer(toVip(47002, { flags: TCP_ACK }));
      fromContainer(toVip(47002, { flags: TCP_FIN | TCP_ACK })); // closing
      fromContainer(toVip(47003, { proto: 'UDP', dport: 53 }));
      const forward = (): number[] => [...ct.entries(m.ct)].filter(([k]) => k.dir === 'service').map(([k]) => k.sport).sort();
      assert.deepEqual(forward(), [47000, 47001, 47002, 47003]);
      assert.equal(count(), 8);
      // Seconds of CLOCK_MONOTONIC as the sweep's clock; a second of margin for the packets' own clock.
      assert.equal(ct.gc(m.ct, now), 0, 'nothing expired yet');
      ct.gc(m.ct, now + ct.CtLifetime.CT_LIFETIME_TCP_CLOSE + 2);
      assert.deepEqual(forward(), [47000, 47001, 47003], 'closing gone after 10 s');
      ct.gc(m.ct, now + ct.CtLifetime.CT_LIFETIME_TCP_SYN - 2);
      assert.deepEqual(forward(), [47000, 47001, 47003], 'handshake and UDP kept before 60 s');
      ct.gc(m.ct, now + Math.max(ct.CtLifetime.CT_LIFETIME_TCP_SYN, ct.CtLifetime.CT_LIFETIME_NONTCP) + 2);
      assert.deepEqual(forward(), [47001], 'handshake and UDP gone after 60 s; the established connection kept');
      assert.ok(ct.lookup(m.ct, ctKey(47001, { dir: 'revnat', src: LOCAL_BACKENDS[0]!.ip, dst: CLIENT.ip, sport: BACKEND_PORT, dport: 47001 })), 'with its reply entry');
      ct.gc(m.ct, now + ct.CtLifetime.CT_LIFETIME_TCP + 2);
      assert.equal(count(), 0, 'everything gone after 6 h');
    });
  });
});

// Run by node.test.ts inside a test node netns: drives NodeDatapath through
// start / traffic / stop / restart / destroy and prints what it observed as
// one JSON object on stdout.
import { execFileSync } from 'node:child_process';
import { existsSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BpfMap } from './libbpf/map.ts';
import { BpfObject } from './libbpf/object.ts';
import { tcAttach, tcAttachMode, tcFind, tcQuery, tcxPrograms } from './libbpf/tc.ts';
import { applyConfig } from './maps/config.ts';
import * as settingsMap from './maps/settings.ts';
import * as policyMap from './maps/policy.ts';
import { monotonicSeconds } from './maps/ct.ts';
import type { DatapathEvent } from './maps/events.ts';
import { linkInfo } from './netdev.ts';
import { datapathStatus } from '../agent/datapath.ts';
import { FROM_CONTAINER, FROM_OVERLAY, LXC_OBJECT, NodeDatapath, TO_CONTAINER, type NodeDatapathOptions } from './node.ts';

const [nodeName, podNs] = process.argv.slice(2);
if (!nodeName || !podNs) throw new Error('usage: node.test-helper.ts NODE_NAME POD_NETNS');

const podPing = (dst: string): boolean => {
  try {
    execFileSync('ip', ['netns', 'exec', podNs, 'ping', '-c1', '-W1', '-q', dst], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};
const podMac = (JSON.parse(execFileSync('ip', ['-n', podNs, '-j', 'link', 'show', 'eth0'], { encoding: 'utf8' })) as { address: string }[])[0]!.address;

const opts: NodeDatapathOptions = { nodeName, nodeIP: '10.1.0.2', clusterID: 1, vxlanDevice: 'cm_vx' };
const out: Record<string, unknown> = {};
const dp = new NodeDatapath(opts);
await dp.start();
try {
  const vx = (await linkInfo('cm_vx'))!;
  out.vxlan = { kind: vx.kind, external: vx.data.external, port: vx.data.port, mtu: vx.mtu, up: vx.up, ifindex: vx.ifindex === dp.vxlanIfindex };
  out.overlayAttached = (tcQuery(dp.vxlanIfindex, 'ingress') ?? 0) > 0;
  out.pinDir = dp.options.pinDir;
  out.pins = ['cm_ipcache', 'cm_endpoints', 'cm_metrics', 'cm_events', 'cm_settings'].every((m) => existsSync(`${dp.options.pinDir}/${m}`));

  const events: DatapathEvent[] = [];
  const sub = dp.events((e) => events.push(e), { intervalMs: 10 });
  const lxc = dp.attachEndpoint('lxc0');
  out.lxcAttached = tcQuery(lxc.ifindex, 'ingress') === lxc.progId;
  out.lxcEgressAttached = tcQuery(lxc.ifindex, 'egress') === lxc.egressProgId && lxc.egressProgId !== lxc.progId;

  out.pingUnknownSource = podPing('10.102.0.9');
  const lxcLink = (await linkInfo('lxc0'))!;
  dp.upsertEndpoint('10.101.0.5', { ifindex: lxc.ifindex, identity: 1000, endpointId: 1, flags: 0, mac: podMac, nodeMac: lxcLink.mac! });
  dp.upsertIpcache('10.102.0.0/24', { identity: 2000, tunnelEndpoint: '10.1.0.3', flags: 0 });
  // forget the failed gateway neighbour so the pod ARPs again right away
  execFileSync('ip', ['-n', podNs, 'neigh', 'flush', 'dev', 'eth0']);
  podPing('10.102.0.9'); // goes into the tunnel towards 10.1.0.3, where nobody answers
  for (let i = 0; i < 100 && !events.some((e) => e.type === 'drop'); i++) await sleep(10);
  sub.stop();
  const counters = Object.fromEntries(dp.metrics().map((r) => [`${r.reasonName}/${r.direction}`, Number(r.packets)]));
  out.counters = counters;
  out.dropEvent = events.find((e) => e.type === 'drop' && e.reasonName === 'DROP_UNKNOWN_SOURCE') ? { srcIp: events.find((e) => e.reasonName === 'DROP_UNKNOWN_SOURCE')!.srcIp } : null;

  await dp.stop();
  out.afterStop = {
    overlayAttached: tcQuery(dp.vxlanIfindex, 'ingress') !== undefined,
    lxcAttached: tcQuery(lxc.ifindex, 'ingress') !== undefined,
    lxcEgressAttached: tcQuery(lxc.ifindex, 'egress') !== undefined,
    pinsKept: existsSync(`${dp.options.pinDir}/cm_endpoints`),
  };

  // restart: the pinned maps still hold what the first instance wrote
  const dp2 = new NodeDatapath(opts);
  await dp2.start();
  out.afterRestart = {
    endpoints: dp2.endpoints().map(([ip, v]) => `${ip}:${v.identity}`),
    ipcache: dp2.ipcache().map(([p, v]) => `${p}:${v.identity}:${v.tunnelEndpoint}`),
    metricsKept: dp2.metrics().length > 0,
  };
  dp2.attachEndpoint('lxc0');
  await dp2.stop({ detach: false });
  out.afterStopKeepAttached = { lxcAttached: tcQuery(lxc.ifindex, 'ingress') !== undefined, lxcEgressAttached: tcQuery(lxc.ifindex, 'egress') !== undefined, overlayAttached: tcQuery(dp.vxlanIfindex, 'ingress') !== undefined };

  // upgrade from an agent whose cm_events ring was smaller: an object loaded
  // with the old size pins a 256 KiB ring (the other pins reused) and its
  // from_container, on lxc0, writes a forward event into it; the next start()
  // must replace that pin only, and its first reader drain the old ring.
  const OLD_RING = 256 * 1024;
  const pinDir = dp.options.pinDir;
  unlinkSync(join(pinDir, 'cm_events'));
  const old = BpfObject.open(join(dp.options.objectsDir, LXC_OBJECT), { pinRoot: pinDir });
  applyConfig(old, { vxlanIfindex: dp.vxlanIfindex, nodeIp: '10.1.0.2', clusterId: 1, redirectPeer: dp.options.redirectPeer, tunnelMtu: 1450 });
  old.setMaxEntries('cm_events', OLD_RING);
  old.load();
  settingsMap.set(old.map(settingsMap.MAP_NAME), { traceForward: true, traceNew: false });
  // as an agent before tcx attached it: a cls_bpf filter
  tcAttach({ ifindex: lxc.ifindex, direction: 'ingress', program: old.program(FROM_CONTAINER), mode: 'cls_bpf' });
  old.close();
  const oldRingSize = BpfMap.openPinned(join(pinDir, 'cm_events'));
  const oldSize = oldRingSize.maxEntries;
  oldRingSize.close();
  podPing('10.102.0.77'); // forwarded into the tunnel: a TRACE_TO_OVERLAY event into the old ring
  const dpUp = new NodeDatapath(opts);
  await dpUp.start();
  const upEvents: DatapathEvent[] = [];
  const upSub = dpUp.events((e) => upEvents.push(e), { intervalMs: 10 });
  for (let i = 0; i < 300 && !upEvents.some((e) => e.dstIp === '10.102.0.77'); i++) await sleep(10);
  upSub.stop();
  const modeOf = (ifindex: number, dir: 'ingress' | 'egress', name: string): string | null => tcFind(ifindex, dir, { name })?.mode ?? null;
  const clsFilters = (dir: string): number => (JSON.parse(execFileSync('tc', ['-j', 'filter', 'show', 'dev', 'lxc0', dir], { encoding: 'utf8' })) as { options?: unknown }[]).filter((f) => f.options).length;
  const tcxLeft = (): number => tcxPrograms(lxc.ifindex, 'ingress').length + tcxPrograms(lxc.ifindex, 'egress').length;
  const attachBefore = modeOf(lxc.ifindex, 'ingress', FROM_CONTAINER);
  dpUp.attachEndpoint('lxc0');
  out.attachUpgrade = {
    expected: tcAttachMode('auto'),
    before: attachBefore,
    ingress: modeOf(lxc.ifindex, 'ingress', FROM_CONTAINER),
    egress: modeOf(lxc.ifindex, 'egress', TO_CONTAINER),
    overlay: modeOf(dpUp.vxlanIfindex, 'ingress', FROM_OVERLAY),
    clsFilters: clsFilters('ingress') + clsFilters('egress'),
    statusAttach: datapathStatus(dpUp, ['lxc0']).programs.map((p) => `${p.program}:${p.attach}`),
  };
  const upgrade: Record<string, unknown> = {
    oldSize,
    replaced: dpUp.replacedPins.map((r) => `${r.map}:${r.pinned.maxEntries}->${r.wanted.maxEntries}`),
    newSize: dpUp.maps.events.maxEntries,
    endpoints: dpUp.endpoints().map(([ip, v]) => `${ip}:${v.identity}`),
    ipcache: dpUp.ipcache().map(([p, v]) => `${p}:${v.identity}:${v.tunnelEndpoint}`),
    metricsKept: dpUp.metrics().length > 0,
    drainedFromOldRing: upEvents.some((e) => e.dstIp === '10.102.0.77' && e.type === 'trace'),
    retiredTakenOnce: dpUp.takeRetiredEvents() === undefined,
  };
  out.upgrade = upgrade;
  await dpUp.stop({ detach: false });

  // back to cls_bpf (asked for, as on a kernel before 6.6): the tcx programs go
  const dpSame = new NodeDatapath({ ...opts, tcAttach: 'cls_bpf' });
  await dpSame.start();
  upgrade.replacedOnNextStart = dpSame.replacedPins.length;
  dpSame.attachEndpoint('lxc0');
  out.attachDowngrade = {
    ingress: modeOf(lxc.ifindex, 'ingress', FROM_CONTAINER),
    egress: modeOf(lxc.ifindex, 'egress', TO_CONTAINER),
    overlay: modeOf(dpSame.vxlanIfindex, 'ingress', FROM_OVERLAY),
    tcxLeft: tcxLeft(),
    clsFilters: clsFilters('ingress') + clsFilters('egress'),
  };
  await dpSame.stop({ detach: false });

  // upgrade from an agent whose cm_metrics was a PERCPU_HASH (keyed by
  // struct { reason, dir, pad }): a pin of that shape, holding a counter, must
  // be replaced by the per-CPU array on start, which then counts traffic.
  unlinkSync(join(pinDir, 'cm_metrics'));
  const v1 = BpfObject.open(join(dp.options.objectsDir, 'test/metrics_v1.bpf.o'), { pinRoot: pinDir });
  v1.load();
  v1.map('cm_metrics').update(Buffer.from([1, 2, 0, 0]), Buffer.alloc(16, 1));
  const v1Type = v1.map('cm_metrics').type;
  v1.close();
  const dpMetrics = new NodeDatapath(opts);
  await dpMetrics.start();
  const metricsUpgrade: Record<string, unknown> = {
    replaced: dpMetrics.replacedPins.map((r) => `${r.map}:type ${r.pinned.type}->${r.wanted.type}`),
    fromType: v1Type,
    emptyAfter: dpMetrics.metrics().length,
  };
  dpMetrics.attachEndpoint('lxc0');
  podPing('10.102.0.77');
  metricsUpgrade.countsAfter = dpMetrics.metrics().some((r) => r.reasonName === 'TRACE_TO_OVERLAY' && r.direction === 'egress' && r.packets >= 1n);
  await dpMetrics.stop({ detach: false });
  const dpMetricsSame = new NodeDatapath(opts);
  await dpMetricsSame.start();
  metricsUpgrade.replacedOnNextStart = dpMetricsSame.replacedPins.length;
  metricsUpgrade.keptOnNextStart = dpMetricsSame.metrics().some((r) => r.reasonName === 'TRACE_TO_OVERLAY');
  await dpMetricsSame.stop({ detach: false });
  out.metricsUpgrade = metricsUpgrade;

  // upgrade from an agent with cm_policy_ct (one entry per direction) and
  // cm_policy_verdict: the live connections move into cm_policy_conn (or
  // their replies would meet the checks), both old pins go.
  const ctV1 = BpfObject.open(join(dp.options.objectsDir, 'test/policy_ct_v1.bpf.o'), { pinRoot: pinDir });
  ctV1.load();
  const oldCtKey = (src: string, dst: string, sport: number, dport: number): Buffer => {
    const k = Buffer.alloc(16);
    k.set(src.split('.').map(Number), 0);
    k.set(dst.split('.').map(Number), 4);
    k.writeUInt16BE(sport, 8);
    k.writeUInt16BE(dport, 10);
    k[12] = 6;
    return k;
  };
  const oldCtValue = (lifetime: number): Buffer => {
    const v = Buffer.alloc(8);
    v.writeUInt32LE(lifetime, 0);
    return v;
  };
  const nowS = monotonicSeconds();
  ctV1.map(policyMap.LEGACY_CT_MAP_NAME).update(oldCtKey('10.101.0.5', '10.102.0.77', 40000, 80), oldCtValue(nowS + 300));
  ctV1.map(policyMap.LEGACY_CT_MAP_NAME).update(oldCtKey('10.101.0.5', '10.102.0.77', 40001, 80), oldCtValue(nowS - 5));
  ctV1.map(policyMap.LEGACY_VERDICT_MAP_NAME).update(oldCtKey('10.101.0.5', '10.102.0.77', 40000, 80), Buffer.alloc(24, 1));
  ctV1.close();
  const dpPolicy = new NodeDatapath(opts);
  await dpPolicy.start();
  const pinsLeft = (): string[] => [policyMap.LEGACY_CT_MAP_NAME, policyMap.LEGACY_VERDICT_MAP_NAME].filter((n) => existsSync(join(pinDir, n)));
  out.policyUpgrade = {
    replaced: dpPolicy.replacedPins.map((r) => `${r.map}->${r.renamedTo}${r.carriedOver ? ` carried ${r.carriedOver.entries}, not ${r.carriedOver.notCarried}${r.carriedOver.error ? `: ${r.carriedOver.error}` : ''}` : ''}`),
    oldPinsLeft: pinsLeft(),
    conns: [...policyMap.connections(dpPolicy.maps.policyCt)].map((c) => `${c.src}:${c.sport}->${c.dst}:${c.dport}/${c.protocol} verdict ${c.verdict === null ? 'none' : 'cached'} ${c.valid ? 'whole' : 'torn'}`),
  };
  await dpPolicy.stop({ detach: false });
  const dpPolicySame = new NodeDatapath(opts);
  await dpPolicySame.start();
  (out.policyUpgrade as Record<string, unknown>).replacedOnNextStart = dpPolicySame.replacedPins.length;
  await dpPolicySame.stop({ detach: false });

  const dp3 = new NodeDatapath(opts);
  await dp3.start();
  dp3.attachEndpoint('lxc0');
  await dp3.destroy();
  out.afterDestroy = {
    lxcAttached: tcQuery(lxc.ifindex, 'ingress') !== undefined,
    lxcEgressAttached: tcQuery(lxc.ifindex, 'egress') !== undefined,
    overlayAttached: tcQuery(dp.vxlanIfindex, 'ingress') !== undefined,
    tcxLeft: tcxLeft(),
    clsFilters: clsFilters('ingress') + clsFilters('egress'),
    pinDirExists: existsSync(dp.options.pinDir),
    vxlanKept: (await linkInfo('cm_vx')) !== undefined, // dp3 did not create it
  };
} finally {
  await dp.destroy();
}
out.vxlanAfterCreatorDestroy = (await linkInfo('cm_vx')) !== undefined;
process.stdout.write(JSON.stringify(out) + '\n');

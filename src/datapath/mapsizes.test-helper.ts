// Run by mapsizes.test.ts inside a test node netns: cm_ipcache sized 64 by
// mapSizes, more entries than that through the agent's ipcache reconciler,
// then a restart with 128; cm_ct sized 64 with live and expired entries, then
// 128 (its live entries carried over), then 2 (only the longest-lived fit).
// Prints what it observed as one JSON object.
import { execFileSync } from 'node:child_process';
import { datapathStatus, ipcacheTarget, refusedByMap } from '../agent/datapath.ts';
import { Reconciler } from '../agent/reconciler.ts';
import * as ctMap from './maps/ct.ts';
import type * as ipcacheMap from './maps/ipcache.ts';
import { linkInfo } from './netdev.ts';
import { NodeDatapath, type NodeDatapathOptions } from './node.ts';

const [nodeName, podNs] = process.argv.slice(2);
if (!nodeName || !podNs) throw new Error('usage: mapsizes.test-helper.ts NODE_NAME POD_NETNS');
const podMac = (JSON.parse(execFileSync('ip', ['-n', podNs, '-j', 'link', 'show', 'eth0'], { encoding: 'utf8' })) as { address: string }[])[0]!.address;
const ping = (dst: string): void => {
  try {
    execFileSync('ip', ['netns', 'exec', podNs, 'ping', '-c1', '-W1', '-q', dst], { stdio: 'ignore' });
  } catch {
    // nobody answers behind the tunnel: the counters tell
  }
};
const toOverlay = (dp: NodeDatapath): number => dp.metrics().filter((r) => r.reasonName === 'TRACE_TO_OVERLAY').reduce((n, r) => n + Number(r.packets), 0);

// 100 remote prefixes; the first is the "old" one, written before the map fills
const OLD = '10.102.0.0/24';
const desired: Array<[string, ipcacheMap.Value]> = [[OLD, { identity: 2000, tunnelEndpoint: '10.1.0.3', flags: 0 }]];
for (let i = 1; i < 100; i++) desired.push([`10.103.${i}.0/24`, { identity: 3000 + i, tunnelEndpoint: '10.1.0.4', flags: 0 }]);

const base: NodeDatapathOptions = { nodeName, nodeIP: '10.1.0.2', clusterID: 1, vxlanDevice: 'cm_vx' };
const out: Record<string, unknown> = {};

// Tracked service connections (client sport -> seconds left), and two expired ones.
const CT_LIVE: Array<[number, number]> = [[40001, 3600], [40002, 3000], [40003, 2000]];
const CT_EXPIRED = [40004, 40005];
const ctKey = (sport: number): ctMap.Key => ({ src: '10.101.0.5', dst: '10.96.0.10', sport, dport: 80, protocol: 'TCP', dir: 'service' });
const ctValue = (lifetime: number): ctMap.Value => ({ backendId: 1, revnatId: 1, lifetime, closing: false, hairpin: false });

async function run(size: number, label: string, ctSize: number): Promise<void> {
  const dp = new NodeDatapath({ ...base, mapSizes: { ipcache: size, conntrack: ctSize } });
  await dp.start();
  const ctReplaced = dp.replacedPins.find((p) => p.map === ctMap.MAP_NAME);
  out[`${label}Ct`] = {
    replaced: ctReplaced ? `${ctReplaced.pinned.maxEntries}->${ctReplaced.wanted.maxEntries}` : null,
    carriedOver: ctReplaced?.carriedOver ?? null,
    sports: [...ctMap.entries(dp.maps.ct)].map(([k]) => k.sport).sort(),
  };
  if (label === 'small') {
    const now = ctMap.monotonicSeconds();
    ctMap.updateMany(dp.maps.ct, [...CT_LIVE.map(([s, left]) => [ctKey(s), ctValue(now + left)] as const), ...CT_EXPIRED.map((s) => [ctKey(s), ctValue(now - 5)] as const)]);
  }
  if (label === 'shrunk') return await dp.stop();
  const rec = new Reconciler<ipcacheMap.Value>({ name: 'ipcache', target: ipcacheTarget(dp), backoff: { initialMs: 50, maxMs: 200, factor: 2, jitter: 0 } });
  try {
    const lxc = dp.attachEndpoint('lxc0');
    dp.upsertEndpoint('10.101.0.5', { ifindex: lxc.ifindex, identity: 1000, endpointId: 1, flags: 0, mac: podMac, nodeMac: (await linkInfo('lxc0'))!.mac! });
    if (label === 'small') dp.upsertIpcache(OLD, desired[0]![1]); // in the map before it fills
    rec.replaceAll(desired);
    await rec.start();
    await rec.settle();
    const st = rec.status();
    const before = toOverlay(dp);
    ping('10.102.0.9');
    const maps = datapathStatus(dp, [], refusedByMap([st], dp)).maps;
    const m = maps.find((x) => x.name === 'cm_ipcache')!;
    out[label] = {
      replaced: dp.replacedPins.filter((p) => p.map !== ctMap.MAP_NAME).map((p) => `${p.map}:${p.pinned.maxEntries}->${p.wanted.maxEntries}`),
      status: { maxEntries: m.maxEntries, entries: m.entries, refused: m.refused },
      reconciler: { desired: st.desired, pending: st.pending, refused: st.refused, mapFullAtLeast: st.mapFull >= st.refused },
      oldPresent: dp.ipcache().some(([p]) => p === OLD),
      forwardedToOld: toOverlay(dp) > before,
    };
  } finally {
    await rec.stop();
    await dp.stop();
  }
}

try {
  await run(64, 'small', 64);
  await run(128, 'big', 128);
  await run(128, 'shrunk', 2);
} finally {
  await new NodeDatapath(base).destroy();
}
console.log(JSON.stringify(out));

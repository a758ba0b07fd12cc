// Makes one node's datapath hold exactly what its plan says, by difference:
// entries that are right stay untouched, wrong ones are rewritten, ones no
// longer wanted are removed after the new ones are in place — the maps are
// never flushed while traffic uses them. Programs stay attached when the
// command exits (tc keeps them; the maps are pinned).
import { NodeDatapath } from '../datapath/node.js';
import { linkInfo } from '../datapath/netdev.js';
import type * as endpointsMap from '../datapath/maps/endpoints.js';
import type * as ipcacheMap from '../datapath/maps/ipcache.js';
import type { NodePlan } from './node-plan.js';

export interface ApplySummary {
  node: string;
  endpoints: { desired: number; written: number; removed: number };
  ipcache: { desired: number; written: number; removed: number };
  attached: string[];
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** Writes desired entries that differ, then prunes the ones not desired (collect first, delete after). */
function reconcile<V>(current: Array<[string, V]>, desired: Map<string, V>, upsert: (k: string, v: V) => void, remove: (k: string) => boolean) {
  const have = new Map(current);
  let written = 0;
  for (const [k, v] of desired) {
    if (!sameJson(have.get(k), v)) {
      upsert(k, v);
      written++;
    }
  }
  const stale = [...have.keys()].filter((k) => !desired.has(k));
  for (const k of stale) remove(k);
  return { desired: desired.size, written, removed: stale.length };
}

export async function applyNodePlan(plan: NodePlan): Promise<ApplySummary> {
  const dp = new NodeDatapath({
    nodeName: plan.nodeName,
    nodeIP: plan.nodeIP,
    clusterID: plan.clusterID,
    vxlanDevice: plan.vxlanDevice,
    tunnelPort: plan.tunnelPort,
    pinDir: plan.pinDir,
    redirectPeer: plan.redirectPeer,
    traceForward: plan.traceForwards,
  });
  await dp.start();
  try {
    const endpoints = new Map<string, endpointsMap.Value>();
    const ipcache = new Map<string, ipcacheMap.Value>();
    const attached: string[] = [];
    for (const ep of plan.endpoints) {
      const host = await linkInfo(ep.hostIfName);
      if (!host?.mac) throw new Error(`endpoint ${ep.ip}: no device ${ep.hostIfName} on node ${plan.nodeName}`);
      const att = dp.attachEndpoint(ep.hostIfName);
      attached.push(att.ifName);
      endpoints.set(ep.ip, { ifindex: att.ifindex, identity: ep.identity, endpointId: ep.endpointID, flags: 0, mac: ep.podMac.toLowerCase(), nodeMac: host.mac.toLowerCase() });
      ipcache.set(`${ep.ip}/32`, { identity: ep.identity, tunnelEndpoint: null, flags: 0 });
    }
    for (const r of plan.routes) {
      if (ipcache.has(r.prefix)) throw new Error(`route ${r.prefix}: also a local endpoint of node ${plan.nodeName}`);
      ipcache.set(r.prefix, { identity: r.identity, tunnelEndpoint: r.tunnelEndpoint ?? null, flags: 0 });
    }
    return {
      node: plan.nodeName,
      endpoints: reconcile(dp.endpoints(), endpoints, (k, v) => dp.upsertEndpoint(k, v), (k) => dp.removeEndpoint(k)),
      ipcache: reconcile(dp.ipcache(), ipcache, (k, v) => dp.upsertIpcache(k, v), (k) => dp.removeIpcache(k)),
      attached,
    };
  } finally {
    await dp.stop({ detach: false });
  }
}

// `clustermesh datapath apply`: makes one node's datapath hold exactly what a
// static plan says, with the same reconciler the agent uses (one full pass:
// entries that are right stay untouched, wrong ones are rewritten, ones no
// longer wanted are pruned after the new ones are in place — the maps are
// never flushed while traffic uses them). Programs stay attached when the
// command exits (tc keeps them; the maps are pinned).
import { NodeDatapath } from '../datapath/node.ts';
import { linkInfo } from '../datapath/netdev.ts';
import type * as endpointsMap from '../datapath/maps/endpoints.ts';
import type * as ipcacheMap from '../datapath/maps/ipcache.ts';
import { endpointsTarget, ipcacheTarget } from './datapath.ts';
import { normalizePrefix } from './ipcache-desired.ts';
import { Reconciler, type FullSyncResult, type ReconcileTarget } from './reconciler.ts';
import type { NodePlan } from './node-plan.ts';

export interface ApplySummary {
  node: string;
  endpoints: { desired: number; written: number; removed: number };
  ipcache: { desired: number; written: number; removed: number };
  attached: string[];
}

/** One full pass; a failed entry fails the command (there is no later pass to retry it). */
async function applyOnce<V>(name: string, target: ReconcileTarget<V>, desired: Map<string, V>): Promise<ApplySummary['ipcache']> {
  const r = new Reconciler<V>({ name, target, defer: () => undefined });
  r.replaceAll(desired);
  let res: FullSyncResult;
  try {
    res = await r.start();
  } finally {
    await r.stop();
  }
  const st = r.status();
  if (res.failed > 0) throw new Error(`${name}: ${res.failed} entries could not be written: ${st.lastError?.key}: ${st.lastError?.message}`);
  return { desired: res.desired, written: res.written, removed: res.removed };
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
    ...(plan.objectsDir !== undefined ? { objectsDir: plan.objectsDir } : {}),
    ...(plan.socketLBCgroup !== undefined ? { socketLBCgroup: plan.socketLBCgroup } : {}),
    routingMode: plan.routingMode,
    nativeRoutingCIDRs: plan.nativeRoutingCIDRs,
    tunnelEncap: plan.tunnelEncap,
    tcAttach: plan.tcAttach,
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
      const prefix = normalizePrefix(r.prefix);
      if (prefix === undefined) throw new Error(`route ${r.prefix}: not an IPv4 prefix`);
      if (ipcache.has(prefix)) throw new Error(`route ${r.prefix}: also a local endpoint of node ${plan.nodeName}`);
      ipcache.set(prefix, { identity: r.identity, tunnelEndpoint: r.tunnelEndpoint ?? null, flags: 0 });
    }
    return {
      node: plan.nodeName,
      endpoints: await applyOnce('endpoints', endpointsTarget(dp), endpoints),
      ipcache: await applyOnce('ipcache', ipcacheTarget(dp), ipcache),
      attached,
    };
  } finally {
    await dp.stop({ detach: false });
  }
}

// The node's datapath as the agent's modules see it: reconcile targets over
// the pinned ipcache and endpoints maps, the endpoint attach/detach the
// endpoint manager needs, and the datapath part of the status.
import { readFileSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { type TcAttachMode, ifindexOf, tcFind } from '../datapath/libbpf/tc.ts';
import type * as endpointsMap from '../datapath/maps/endpoints.ts';
import type * as ipcacheMap from '../datapath/maps/ipcache.ts';
import { DropReason } from '../datapath/maps/reasons.ts';
import { linkInfo } from '../datapath/netdev.ts';
import { FROM_NETDEV_HANDLE, type NodeDatapath, type RoutingMode, type TunnelEncap, type SocketLBStatus } from '../datapath/node.ts';
import type { EndpointDatapath } from './endpoints.ts';
import type { ReconcilerStatus, ReconcileTarget } from './reconciler.ts';
import { ApiError } from './types.ts';

/** cm_ipcache, keyed by normalized prefix 'a.b.c.d/len'. */
export function ipcacheTarget(dp: NodeDatapath): ReconcileTarget<ipcacheMap.Value> {
  return {
    list: () => dp.ipcache(),
    update: (prefix, v) => dp.upsertIpcache(prefix, v),
    delete: (prefix) => dp.removeIpcache(prefix),
  };
}

/** cm_endpoints, keyed by pod IP. */
export function endpointsTarget(dp: NodeDatapath): ReconcileTarget<endpointsMap.Value> {
  return {
    list: () => dp.endpoints(),
    update: (ip, v) => dp.upsertEndpoint(ip, v),
    delete: (ip) => dp.removeEndpoint(ip),
  };
}

/**
 * MAC of a device from sysfs, when /sys shows this network namespace (as
 * under `ip netns exec`): its ifindex there must be the one the kernel gives
 * for the name here. undefined when that cannot be confirmed.
 */
function sysfsMac(name: string): string | undefined {
  try {
    const ifindex = Number(readFileSync(`/sys/class/net/${name}/ifindex`, 'utf8').trim());
    if (ifindex !== ifindexOf(name)) return undefined;
    const mac = readFileSync(`/sys/class/net/${name}/address`, 'utf8').trim().toLowerCase();
    return /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(mac) ? mac : undefined;
  } catch {
    return undefined;
  }
}

/** tunnelDevice: the node's overlay device (refused as an endpoint's device). */
export function endpointDatapath(dp: NodeDatapath, tunnelDevice?: string): EndpointDatapath {
  return {
    async attach(hostIfName) {
      // A device of the node itself (its uplink, lo, anything with an IPv4 address; the
      // overlay device) would get a pod's program: the node's own traffic taken for a pod's.
      const own = (networkInterfaces()[hostIfName] ?? []).filter((a) => a.family === 'IPv4').map((a) => a.address);
      if (own.length > 0) throw new ApiError('invalid-request', `device ${hostIfName} carries ${own.join(', ')}: a device of the node, not a pod's host-side veth`);
      if (hostIfName === tunnelDevice) throw new ApiError('invalid-request', `device ${hostIfName} is the node's overlay device, not a pod's host-side veth`);
      // sysfs is a file read; `ip link` a process: it counts when pods come in bursts
      let mac = /^[A-Za-z0-9_.:-]{1,15}$/.test(hostIfName) ? sysfsMac(hostIfName) : undefined;
      if (!mac) {
        const link = await linkInfo(hostIfName);
        if (!link) throw new ApiError('device-not-found', `device ${hostIfName} does not exist in this node's network namespace`);
        if (link.kind !== 'veth') throw new ApiError('invalid-request', `device ${hostIfName} is a ${link.kind ?? 'plain'} device, not a pod's host-side veth`);
        if (!link.mac) throw new ApiError('device-not-found', `device ${hostIfName} has no MAC address (not a veth?)`);
        mac = link.mac.toLowerCase();
      }
      const att = dp.attachEndpoint(hostIfName);
      return { ifindex: att.ifindex, hostMac: mac };
    },
    detach(hostIfName) {
      try {
        dp.detachEndpoint(hostIfName);
      } catch {
        // gone with its device
      }
    },
    pinnedEndpoints() {
      return dp.endpoints().map(([ip, v]): [string, number] => [ip, v.endpointId]);
    },
    async deviceExists(hostIfName) {
      try {
        ifindexOf(hostIfName);
        return true;
      } catch {
        return false;
      }
    },
  };
}

export interface ProgramStatus {
  program: 'from_overlay' | 'from_container' | 'from_netdev';
  device: string;
  attached: boolean;
  /** Kernel id of the attached program, or null. */
  progId: number | null;
  /** How it is attached (tcx on Linux 6.6+, else a cls_bpf filter), or null when it is not. */
  attach: TcAttachMode | null;
}

export interface MapFill {
  name: string;
  entries: number;
  maxEntries: number;
  /** entries / maxEntries */
  fill: number;
  /**
   * Entries not written for lack of room (the sized maps, else 0): for the
   * maps a reconciler writes, its keys whose last write the full map refused
   * (retried, nothing evicted for them); for cm_ct, connections the datapath
   * could not track (drops DROP_CT_WRITE_FAILED, a counter since the
   * datapath was loaded).
   */
  refused: number;
}

/** The reconciler that writes each sized map (reconciler name -> map). */
export const MAP_WRITERS: Readonly<Record<string, string>> = { ipcache: 'cm_ipcache', endpoints: 'cm_endpoints', 'lb-services': 'cm_services', 'lb-backends': 'cm_backends' };

/** Map name -> entries refused now, from the reconcilers' status (refused) and the datapath's DROP_CT_WRITE_FAILED drops. */
export function refusedByMap(reconcilers: ReadonlyArray<Pick<ReconcilerStatus, 'name' | 'refused'>>, dp: NodeDatapath): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of reconcilers) {
    const map = MAP_WRITERS[r.name];
    if (map) out[map] = (out[map] ?? 0) + r.refused;
  }
  if (dp.state === 'running') {
    let ct = 0;
    for (const row of dp.metrics()) if (row.reason === DropReason.DROP_CT_WRITE_FAILED) ct += Number(row.packets);
    out.cm_ct = ct;
  }
  return out;
}

export interface DatapathStatus {
  state: string;
  pinDir: string;
  vxlanDevice: string;
  vxlanIfindex: number;
  tunnelPort: number;
  programs: ProgramStatus[];
  programsAttached: number;
  programsExpected: number;
  maps: MapFill[];
  /** Socket-level load balancing (cgroup sock_addr programs): off unless the config names a cgroup. */
  socketLB: SocketLBStatus;
  /** 'tunnel' or 'native' (then nativeRoutingCIDRs are routed unencapsulated, from_netdev on the underlay device). */
  routingMode: RoutingMode;
  nativeRoutingCIDRs: string[];
  /** Who writes the tunnel's VXLAN headers: 'device' (the kernel's VXLAN device) or 'bpf' (the programs, from_netdev on the underlay device). */
  tunnelEncap: TunnelEncap;
  /** The device from_netdev is attached to (native mode or tunnelEncap bpf, running); null otherwise. */
  underlayDevice: string | null;
}

function probe(device: string, program: ProgramStatus['program'], ifindex?: number, handle?: number): ProgramStatus {
  try {
    const at = tcFind(ifindex ?? ifindexOf(device), 'ingress', { name: program, handle });
    return { program, device, attached: at !== undefined, progId: at?.progId ?? null, attach: at?.mode ?? null };
  } catch {
    return { program, device, attached: false, progId: null, attach: null };
  }
}

/** Programs attached (asked from the kernel) and map fill levels. */
export function datapathStatus(dp: NodeDatapath, endpointDevices: readonly string[], refused: Readonly<Record<string, number>> = {}): DatapathStatus {
  const o = dp.options;
  const running = dp.state === 'running';
  const programs: ProgramStatus[] = [];
  const maps: MapFill[] = [];
  if (running) {
    programs.push(probe(o.vxlanDevice, 'from_overlay', dp.vxlanIfindex));
    const underlay = dp.underlayDevice;
    if (underlay) programs.push(probe(underlay.name, 'from_netdev', underlay.ifindex, FROM_NETDEV_HANDLE));
    for (const d of endpointDevices) programs.push(probe(d, 'from_container'));
    const m = dp.maps;
    const fill = (name: string, entries: number, max: number): MapFill => ({ name, entries, maxEntries: max, fill: max > 0 ? Math.round((entries / max) * 10_000) / 10_000 : 0, refused: refused[name] ?? 0 });
    maps.push(fill(m.ipcache.name, dp.ipcache().length, m.ipcache.maxEntries));
    maps.push(fill(m.endpoints.name, dp.endpoints().length, m.endpoints.maxEntries));
    // Service tables and conntrack tables (service connections, policy-allowed connections): counted key by key.
    for (const t of [m.services, m.backends, m.ct, m.policyCt]) {
      let n = 0;
      for (const _ of t.keys()) n++;
      maps.push(fill(t.name, n, t.maxEntries));
    }
  }
  return {
    state: dp.state,
    pinDir: o.pinDir,
    vxlanDevice: o.vxlanDevice,
    vxlanIfindex: running ? dp.vxlanIfindex : 0,
    tunnelPort: o.tunnelPort,
    programs,
    programsAttached: programs.filter((p) => p.attached).length,
    programsExpected: running ? 1 + (o.routingMode === 'native' || o.tunnelEncap === 'bpf' ? 1 : 0) + endpointDevices.length : 0,
    maps,
    socketLB: dp.socketLB(),
    routingMode: o.routingMode,
    nativeRoutingCIDRs: [...o.nativeRoutingCIDRs],
    tunnelEncap: o.tunnelEncap,
    underlayDevice: running ? (dp.underlayDevice?.name ?? null) : null,
  };
}

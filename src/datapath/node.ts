// One node's datapath, as the agent drives it from inside the node's network
// namespace: the VXLAN device, the two tc programs, the pinned maps.
//
//   start()            VXLAN device (external, collect_md) present and up;
//                      overlay.bpf.o and lxc.bpf.o loaded with the node's
//                      settings, maps pinned in/reused from the pin dir;
//                      from_overlay on the VXLAN device's ingress.
//   (routingMode native, tunnelEncap bpf) from_netdev on the ingress of the
//                      underlay device (the one holding nodeIP), IPv4
//                      forwarding on (what bpf_fib_lookup asks of the pods'
//                      veths); native: mesh destinations inside
//                      nativeRoutingCIDRs leave unencapsulated
//                      (bpf/lib/native.h); bpf: from_container writes the
//                      tunnel's headers and from_netdev strips them
//                      (bpf/lib/encap.h). With neither (tunnel mode through
//                      the device) a from_netdev an earlier start attached
//                      is detached.
//   attachEndpoint()   from_container on a pod's host-side veth ingress,
//                      to_container on its egress (ingress policy for what
//                      the stack routes into the pod).
//   (socketLBCgroup)   sock.bpf.o loaded on the same pins, its four cgroup
//                      sock_addr programs attached to that cgroup by links
//                      pinned in the pin dir (socket-level load balancing);
//                      without the option, links a previous start left are
//                      detached.
//   stop()             programs detached (by default), fds closed, pins kept:
//                      the next start() finds every map entry again.
//   destroy()          stop() plus pins removed (and the VXLAN device, when
//                      this instance created it).
import { existsSync, mkdirSync, unlinkSync, writeFileSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULT_BPFFS_ROOT, ensureBpffs, isOnBpffs, removePinDir } from './bpffs.ts';
import { BpfObject } from './libbpf/object.ts';
import { BpfMap, type MapInfo, sameDefinition } from './libbpf/map.ts';
import { RingBufferReader } from './libbpf/ringbuf.ts';
import { type TcAttachPreference, type TcAttachment, ifindexOf, tcAttach, tcAttachMode, tcDetach } from './libbpf/tc.ts';
import { type CgroupHook, attachCgroupPinned, cgroupQuery, detachPinnedLink } from './libbpf/cgroup.ts';
import { DEFAULT_TUNNEL_ENCAP, NATIVE_CIDRS_MAX, ROUTING_MODES, VXLAN_OVERHEAD, applyConfig, encodeNativeCidrs, type RoutingMode, type TunnelEncap } from './maps/config.ts';
import * as endpointsMap from './maps/endpoints.ts';
import * as eventsMap from './maps/events.ts';
import * as ipcacheMap from './maps/ipcache.ts';
import * as metricsMap from './maps/metrics.ts';
import * as settingsMap from './maps/settings.ts';
import * as affinityMap from './maps/affinity.ts';
import * as backendSlotsMap from './maps/backend-slots.ts';
import * as backendsMap from './maps/backends.ts';
import * as ctMap from './maps/ct.ts';
import * as maglevMap from './maps/maglev.ts';
import * as policyMap from './maps/policy.ts';
import * as lbHintMap from './maps/lb-hint.ts';
import * as revnatMap from './maps/revnat.ts';
import * as servicesMap from './maps/services.ts';
import * as sockMap from './maps/sock.ts';
import { deleteLink, deviceOfAddress, ensureVxlanDevice, linkInfo } from './netdev.ts';

const REPO_ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..');

export const LXC_OBJECT = 'lxc.bpf.o';
export const OVERLAY_OBJECT = 'overlay.bpf.o';
export const FROM_CONTAINER = 'from_container';
export const TO_CONTAINER = 'to_container';
export const FROM_OVERLAY = 'from_overlay';
export const FROM_NETDEV = 'from_netdev';
/** tc filter handle of from_netdev on the underlay device ("CN"): its own, so other filters there are left alone. */
export const FROM_NETDEV_HANDLE = 0x434e;
/** Where from_netdev sits on the underlay device (tcx: by name; cls_bpf: its handle). */
export const NETDEV_SLOT = { name: FROM_NETDEV, handle: FROM_NETDEV_HANDLE } as const;
export { ROUTING_MODES, TUNNEL_ENCAPS, type RoutingMode, type TunnelEncap } from './maps/config.ts';
export const SOCK_OBJECT = 'sock.bpf.o';
/** The sock_addr programs of sock.bpf.o by hook, and the name of each one's link pin in the pin dir. */
export const SOCK_PROGRAMS: ReadonlyArray<{ hook: CgroupHook; program: string; pin: string }> = [
  { hook: 'connect4', program: 'sock4_connect', pin: 'link_sock4_connect' },
  { hook: 'sendmsg4', program: 'sock4_sendmsg', pin: 'link_sock4_sendmsg' },
  { hook: 'recvmsg4', program: 'sock4_recvmsg', pin: 'link_sock4_recvmsg' },
  { hook: 'getpeername4', program: 'sock4_getpeername', pin: 'link_sock4_getpeername' },
];

export interface NodeDatapathOptions {
  /** Unique name of the node in the mesh; names the pin directory. */
  nodeName: string;
  /** The node's underlay IPv4 address. */
  nodeIP: string;
  /** 1..511; 0 = not meshed. */
  clusterID: number;
  /** Name of the node's external VXLAN device (created when missing). */
  vxlanDevice: string;
  /** VXLAN UDP port; 8472. */
  tunnelPort?: number;
  /** Where the maps are pinned; `<bpffsRoot>/<nodeName>`. */
  pinDir?: string;
  /** The project's bpffs; DEFAULT_BPFFS_ROOT. */
  bpffsRoot?: string;
  /** Directory of lxc.bpf.o and overlay.bpf.o; 'bpf/build' (relative paths resolve against the repository root). */
  objectsDir?: string;
  /** Deliver to pods with bpf_redirect_peer; true. */
  redirectPeer?: boolean;
  /** MTU of the underlay; default: MTU of the device holding nodeIP, else 1500. Tunnel MTU = underlay − 50. */
  underlayMtu?: number;
  /** Emit a trace event per forwarded packet (cm_settings); false. */
  traceForward?: boolean;
  /** Emit a trace event per forwarded TCP connection opening (SYN without ACK; cm_settings); false. */
  traceNew?: boolean;
  /**
   * Size of the cm_events ring buffer in bytes (a power of two, at least a
   * page); undefined: EVENTS_RINGBUF_SIZE of bpf/lib/events.h (4 MiB). A
   * change replaces the pinned ring on start().
   */
  eventsRingBytes?: number;
  /**
   * max_entries of cm_ipcache, cm_endpoints, cm_services, cm_backends and
   * cm_ct (a missing key: the object's). A change replaces the pinned map on
   * start() with a new one (replacedPins): the agent's reconcilers refill
   * it; cm_ct's live entries are carried over, as many as fit.
   */
  mapSizes?: Partial<Record<keyof typeof SIZED_MAPS, number>>;
  /**
   * A cgroup v2 directory holding this node's pods: socket-level load
   * balancing for the sockets of its processes. undefined: off.
   */
  socketLBCgroup?: string;
  /**
   * 'tunnel' (default): every mesh destination through the VXLAN device.
   * 'native': destinations inside nativeRoutingCIDRs routed unencapsulated
   * by the node's FIB; the rest still through the tunnel.
   */
  routingMode?: RoutingMode;
  /** The pod address ranges the underlay routes to their nodes (1..8 prefixes); native mode only. */
  nativeRoutingCIDRs?: readonly string[];
  /**
   * Who writes and strips the VXLAN headers of tunnel traffic: 'bpf'
   * (default) from_container itself, out of the underlay device, and
   * from_netdev on that device (bpf/lib/encap.h); 'device' the kernel's VXLAN
   * device. The wire is the same either way; the device still takes what the
   * BPF path leaves.
   */
  tunnelEncap?: TunnelEncap;
  /**
   * How the tc programs are attached: 'auto' (default) tcx where the kernel
   * has it (Linux 6.6+), else cls_bpf filters on a clsact qdisc; 'tcx' or
   * 'cls_bpf' to insist (tcx on an older kernel fails start()). Either way a
   * start replaces what an earlier start attached the other way.
   */
  tcAttach?: TcAttachPreference;
}

/** mapSizes key -> the map it sizes. */
export const SIZED_MAPS = { ipcache: ipcacheMap.MAP_NAME, endpoints: endpointsMap.MAP_NAME, services: servicesMap.MAP_NAME, backends: backendsMap.MAP_NAME, conntrack: ctMap.MAP_NAME } as const;

export interface ResolvedNodeDatapathOptions extends Required<Omit<NodeDatapathOptions, 'underlayMtu' | 'socketLBCgroup' | 'eventsRingBytes' | 'nativeRoutingCIDRs'>> {
  nativeRoutingCIDRs: readonly string[];
  underlayMtu: number | undefined;
  eventsRingBytes: number | undefined;
  socketLBCgroup: string | undefined;
}

export interface SocketLBStatus {
  enabled: boolean;
  cgroup: string | null;
  programs: Array<{ hook: CgroupHook; program: string; progId: number | null; attached: boolean }>;
  /** cm_sock_stats, summed over CPUs (when enabled). */
  stats: sockMap.SockStats | null;
}

export interface EndpointAttachment {
  ifName: string;
  ifindex: number;
  /** from_container (tc ingress of the veth). */
  progId: number;
  /** to_container (tc egress of the veth). */
  egressProgId: number;
}

interface EndpointTc {
  ingress: TcAttachment;
  egress: TcAttachment;
}

/** The node's pinned maps, for the typed operations of src/datapath/maps/. */
export interface NodeMaps {
  ipcache: BpfMap;
  endpoints: BpfMap;
  metrics: BpfMap;
  events: BpfMap;
  settings: BpfMap;
  /** Service translation (bpf/lib/lb.h, conntrack.h). */
  services: BpfMap;
  backends: BpfMap;
  backendSlots: BpfMap;
  maglev: BpfMap;
  revnat: BpfMap;
  ct: BpfMap;
  affinity: BpfMap;
  /** Which addresses may be a VIP or a backend (lb-hint.ts). */
  lbHint: BpfMap;
  /** Network policy (bpf/lib/policy.h): entries, per-endpoint enforcement, reply tracking (policyCt: cm_policy_conn). */
  policy: BpfMap;
  policyEnforce: BpfMap;
  policyCt: BpfMap;
  /** Prefixes CIDR rules name -> node-local CIDR identity. */
  policyCidr: BpfMap;
  /** The revision of the three policy maps above (policyMap.bumpRevision after writes). */
  policyRev: BpfMap;
}

/** A pinned map whose definition differed from the object's: unpinned at start() and created anew. */
export interface ReplacedPin {
  map: string;
  /** What was pinned and what the object declares (type, key/value size, max_entries, flags). */
  pinned: Omit<MapInfo, 'name'>;
  wanted: Omit<MapInfo, 'name'>;
  /** cm_ct and cm_policy_ct only: entries of the old table still live, copied into the new one (longest-lived first), and those that did not fit (or why none was copied). */
  carriedOver?: { entries: number; notCarried: number; error?: string };
  /** The map that took over from this one under another name (an upgrade changed its layout): cm_policy_ct and cm_policy_verdict -> cm_policy_conn. */
  renamedTo?: string;
}

/**
 * Copies the live entries @read returns into @map through @write, longest-lived
 * first and as many as fit, and records the outcome (or the error) on @replaced.
 */
function carryLive<E extends readonly [unknown, { lifetime: number }]>(replaced: ReplacedPin, read: () => E[], map: BpfMap, write: (map: BpfMap, fit: E[]) => unknown): void {
  let live: E[] = [];
  try {
    live = read().sort(([, a], [, b]) => b.lifetime - a.lifetime);
    const fit = live.slice(0, map.maxEntries);
    write(map, fit);
    replaced.carriedOver = { entries: fit.length, notCarried: live.length - fit.length };
  } catch (err) {
    replaced.carriedOver = { entries: 0, notCarried: live.length, error: (err as Error).message };
  }
}

export interface EventSubscription {
  /** Stops reading (after handing over what is already in the ring). Idempotent. */
  stop(): void;
}

/** The routing settings of a node, or a RangeError saying what is wrong with them. */
export function checkRouting(mode: string, cidrs: readonly string[]): void {
  if (!(ROUTING_MODES as readonly string[]).includes(mode)) throw new RangeError(`routingMode ${JSON.stringify(mode)}: must be one of ${ROUTING_MODES.join(', ')}`);
  if (mode === 'tunnel') {
    if (cidrs.length > 0) throw new RangeError(`nativeRoutingCIDRs is set but routingMode is tunnel: the CIDRs only apply to routingMode native`);
    return;
  }
  if (cidrs.length === 0) throw new RangeError(`routingMode native needs nativeRoutingCIDRs: the pod address ranges the underlay routes to their nodes (1..${NATIVE_CIDRS_MAX} prefixes)`);
  encodeNativeCidrs(cidrs);
}

type State = 'stopped' | 'starting' | 'running' | 'stopping';

export class NodeDatapath {
  readonly options: ResolvedNodeDatapathOptions;
  #state: State = 'stopped';
  #lxc: BpfObject | undefined;
  #overlay: BpfObject | undefined;
  #sock: BpfObject | undefined;
  readonly #sockProgIds = new Map<CgroupHook, number>();
  #overlayAttachment: TcAttachment | undefined;
  #netdevAttachment: TcAttachment | undefined;
  #underlay: { name: string; ifindex: number } | undefined;
  #vxlanIfindex = 0;
  #createdVxlan = false;
  readonly #endpoints = new Map<string, EndpointTc>();
  readonly #readers = new Set<RingBufferReader>();
  #replacedPins: ReplacedPin[] = [];
  // The cm_events ring start() unpinned (an older size): programs attached
  // before the restart write into it until they are replaced, and it may hold
  // events from while no agent ran. The first events() subscription drains it;
  // it is closed with the others by stop().
  #retiredEvents: BpfMap | undefined;
  #retiredRead = false;
  // The cm_ct start() unpinned (resized, or the LRU of older versions): its
  // live entries are copied into the new one once that exists.
  #retiredCt: { map: BpfMap; replaced: ReplacedPin } | undefined;

  constructor(opts: NodeDatapathOptions) {
    const bpffsRoot = opts.bpffsRoot ?? DEFAULT_BPFFS_ROOT;
    const objectsDir = opts.objectsDir ?? 'bpf/build';
    this.options = {
      nodeName: opts.nodeName,
      nodeIP: opts.nodeIP,
      clusterID: opts.clusterID,
      vxlanDevice: opts.vxlanDevice,
      tunnelPort: opts.tunnelPort ?? 8472,
      bpffsRoot,
      pinDir: opts.pinDir ?? join(bpffsRoot, opts.nodeName),
      objectsDir: isAbsolute(objectsDir) ? objectsDir : join(REPO_ROOT, objectsDir),
      redirectPeer: opts.redirectPeer ?? true,
      underlayMtu: opts.underlayMtu,
      traceForward: opts.traceForward ?? false,
      traceNew: opts.traceNew ?? false,
      eventsRingBytes: opts.eventsRingBytes,
      mapSizes: { ...opts.mapSizes },
      socketLBCgroup: opts.socketLBCgroup,
      routingMode: opts.routingMode ?? 'tunnel',
      nativeRoutingCIDRs: opts.nativeRoutingCIDRs ?? [],
      tunnelEncap: opts.tunnelEncap ?? DEFAULT_TUNNEL_ENCAP,
      tcAttach: opts.tcAttach ?? 'auto',
    };
    checkRouting(this.options.routingMode, this.options.nativeRoutingCIDRs);
    for (const [key, n] of Object.entries(this.options.mapSizes)) {
      if (!(key in SIZED_MAPS)) throw new RangeError(`mapSizes.${key}: unknown map (known: ${Object.keys(SIZED_MAPS).join(', ')})`);
      if (n !== undefined && !(Number.isInteger(n) && n >= 1)) throw new RangeError(`mapSizes.${key} ${n}: must be a positive integer`);
    }
    const ring = opts.eventsRingBytes;
    if (ring !== undefined && !(Number.isInteger(ring) && ring >= 4096 && (ring & (ring - 1)) === 0)) throw new RangeError(`eventsRingBytes ${ring}: must be a power of two of at least 4096`);
    if (!Number.isInteger(this.options.clusterID) || this.options.clusterID < 0 || this.options.clusterID > 511) throw new RangeError(`clusterID ${opts.clusterID} not in 0..511`);
  }

  get state(): State {
    return this.#state;
  }

  /** ifindex of the VXLAN device (after start). */
  get vxlanIfindex(): number {
    return this.#vxlanIfindex;
  }

  /** The underlay device from_netdev is attached to (native mode, after start). */
  get underlayDevice(): { name: string; ifindex: number } | undefined {
    return this.#underlay;
  }

  /** The pinned maps (after start). */
  get maps(): NodeMaps {
    const o = this.#running('maps');
    return {
      ipcache: o.map(ipcacheMap.MAP_NAME),
      endpoints: o.map(endpointsMap.MAP_NAME),
      metrics: o.map(metricsMap.MAP_NAME),
      events: o.map(eventsMap.MAP_NAME),
      settings: o.map(settingsMap.MAP_NAME),
      services: o.map(servicesMap.MAP_NAME),
      backends: o.map(backendsMap.MAP_NAME),
      backendSlots: o.map(backendSlotsMap.MAP_NAME),
      maglev: o.map(maglevMap.MAP_NAME),
      revnat: o.map(revnatMap.MAP_NAME),
      ct: o.map(ctMap.MAP_NAME),
      affinity: o.map(affinityMap.MAP_NAME),
      lbHint: o.map(lbHintMap.MAP_NAME),
      policy: o.map(policyMap.MAP_NAME),
      policyEnforce: o.map(policyMap.ENFORCE_MAP_NAME),
      policyCt: o.map(policyMap.CONN_MAP_NAME),
      policyCidr: o.map(policyMap.CIDR_MAP_NAME),
      policyRev: o.map(policyMap.REV_MAP_NAME),
    };
  }

  /**
   * The cm_events ring start() replaced (it had another size), for one reader
   * to drain (a second would steal its events): programs attached before the
   * restart write into it until attachEndpoint()/start() replace them.
   * undefined when there is none or it was taken. stop() closes it.
   */
  takeRetiredEvents(): BpfMap | undefined {
    if (this.#retiredRead) return undefined;
    this.#retiredRead = true;
    return this.#retiredEvents;
  }

  /** The pins the last start() replaced because their definition changed (an upgrade); [] normally. */
  get replacedPins(): readonly ReplacedPin[] {
    return this.#replacedPins;
  }

  async start(): Promise<void> {
    if (this.#state !== 'stopped') throw new Error(`NodeDatapath ${this.options.nodeName}: start() while ${this.#state}`);
    this.#state = 'starting';
    this.#replacedPins = [];
    try {
      const o = this.options;
      const root = resolve(o.bpffsRoot);
      const pinDir = resolve(o.pinDir);
      // Normally the lab or the host mounted it already, from the root mount
      // namespace; a mount made here would be private to this process.
      if (pinDir.startsWith(root + '/')) ensureBpffs(root);
      mkdirSync(pinDir, { recursive: true, mode: 0o700 });
      if (!isOnBpffs(pinDir)) throw new Error(`pin directory ${pinDir} is not on a bpffs`);

      tcAttachMode(o.tcAttach); // 'tcx' on a kernel without it fails here, before anything changes
      const underlay = await deviceOfAddress(o.nodeIP);
      const underlayMtu = o.underlayMtu ?? underlay?.mtu ?? 1500;
      const native = o.routingMode === 'native';
      const bpfEncap = o.tunnelEncap === 'bpf';
      if (native && !underlay) throw new Error(`routingMode native: no device of this network namespace holds the node IP ${o.nodeIP} (from_netdev goes on the underlay device)`);
      if (bpfEncap && !underlay) throw new Error(`tunnelEncap bpf: no device of this network namespace holds the node IP ${o.nodeIP} (from_netdev goes on the underlay device)`);
      const tunnelMtu = underlayMtu - VXLAN_OVERHEAD;
      const { link, created } = await ensureVxlanDevice({ name: o.vxlanDevice, port: o.tunnelPort, mtu: tunnelMtu });
      this.#createdVxlan ||= created;
      this.#vxlanIfindex = link.ifindex;

      const config = { vxlanIfindex: link.ifindex, nodeIp: o.nodeIP, clusterId: o.clusterID, redirectPeer: o.redirectPeer, tunnelMtu, routingNative: native, nativeCidrs: o.nativeRoutingCIDRs, tunnelBpf: bpfEncap, tunnelPort: o.tunnelPort };
      // overlay first: if its maps cannot be created/reused nothing is attached yet
      this.#overlay = this.#load(OVERLAY_OBJECT, config);
      this.#lxc = this.#load(LXC_OBJECT, config);
      settingsMap.set(this.#lxc.map(settingsMap.MAP_NAME), { traceForward: o.traceForward, traceNew: o.traceNew });
      this.#overlayAttachment = tcAttach({ ifindex: link.ifindex, direction: 'ingress', program: this.#overlay.program(FROM_OVERLAY), mode: o.tcAttach });
      if (native || bpfEncap) {
        // bpf_fib_lookup answers FWD_DISABLED for a packet entering a device without forwarding.
        writeFileSync('/proc/sys/net/ipv4/ip_forward', '1');
        this.#underlay = { name: underlay!.name, ifindex: underlay!.ifindex };
        this.#netdevAttachment = tcAttach({ ifindex: underlay!.ifindex, direction: 'ingress', program: this.#overlay.program(FROM_NETDEV), handle: FROM_NETDEV_HANDLE, mode: o.tcAttach });
      } else if (underlay) {
        tcDetach(underlay.ifindex, 'ingress', NETDEV_SLOT);
      }
      this.#startSocketLB();
      this.#state = 'running';
    } catch (err) {
      try {
        this.#teardown(true);
      } catch {
        // the start error is the one to report
      }
      this.#state = 'stopped';
      throw err;
    }
  }

  /**
   * Attaches from_container to the ingress and to_container to the egress of
   * a pod's host-side veth (replacing what was there: a restart swaps the
   * programs without a gap). to_container goes first, so a pod is never
   * sending without its ingress being checked.
   */
  attachEndpoint(hostIfName: string): EndpointAttachment {
    const lxc = this.#running('attachEndpoint');
    const ifindex = ifindexOf(hostIfName);
    const mode = this.options.tcAttach;
    const egress = tcAttach({ ifindex, direction: 'egress', program: lxc.program(TO_CONTAINER), mode });
    const ingress = tcAttach({ ifindex, direction: 'ingress', program: lxc.program(FROM_CONTAINER), mode });
    this.#endpoints.set(hostIfName, { ingress, egress });
    return { ifName: hostIfName, ifindex, progId: ingress.progId, egressProgId: egress.progId };
  }

  /** Detaches both programs from a veth; false when neither was attached (or the device is gone). */
  detachEndpoint(hostIfName: string): boolean {
    const att = this.#endpoints.get(hostIfName);
    this.#endpoints.delete(hostIfName);
    if (att) {
      const i = att.ingress.detach();
      const e = att.egress.detach();
      return i || e;
    }
    let ifindex: number;
    try {
      ifindex = ifindexOf(hostIfName);
    } catch {
      return false;
    }
    const i = tcDetach(ifindex, 'ingress', { name: FROM_CONTAINER });
    const e = tcDetach(ifindex, 'egress', { name: TO_CONTAINER });
    return i || e;
  }

  /** The veths this instance attached from_container and to_container to. */
  attachedEndpoints(): EndpointAttachment[] {
    return [...this.#endpoints].map(([ifName, a]) => ({ ifName, ifindex: a.ingress.ifindex, progId: a.ingress.progId, egressProgId: a.egress.progId }));
  }

  // ---- typed map access (the reconcilers may also use src/datapath/maps/ on `maps`) ----

  upsertEndpoint(ip: string, value: endpointsMap.Value): void {
    endpointsMap.update(this.maps.endpoints, { ip }, value);
  }

  removeEndpoint(ip: string): boolean {
    return endpointsMap.remove(this.maps.endpoints, { ip });
  }

  endpoints(): Array<[ip: string, value: endpointsMap.Value]> {
    return [...endpointsMap.entries(this.maps.endpoints)].map(([k, v]) => [k.ip, v]);
  }

  /** prefix: '10.102.1.0/24' or '10.102.1.7' (/32). */
  upsertIpcache(prefix: string, value: ipcacheMap.Value): void {
    ipcacheMap.update(this.maps.ipcache, ipcacheMap.parsePrefix(prefix), value);
  }

  removeIpcache(prefix: string): boolean {
    return ipcacheMap.remove(this.maps.ipcache, ipcacheMap.parsePrefix(prefix));
  }

  ipcache(): Array<[prefix: string, value: ipcacheMap.Value]> {
    return [...ipcacheMap.entries(this.maps.ipcache)].map(([k, v]) => [ipcacheMap.formatPrefix(k), v]);
  }

  setTraceForward(on: boolean): void {
    settingsMap.set(this.maps.settings, { ...settingsMap.get(this.maps.settings), traceForward: on });
  }

  /** Every packet counter, summed over CPUs. */
  metrics(): metricsMap.Row[] {
    return metricsMap.read(this.maps.metrics);
  }

  /**
   * Decoded events from cm_events, delivered from the event loop every
   * intervalMs (never blocking it). stop()/destroy() end every subscription.
   */
  events(onEvent: (e: eventsMap.DatapathEvent) => void, opts: { intervalMs?: number; onError?: (err: unknown) => void } = {}): EventSubscription {
    const retired = this.takeRetiredEvents();
    const rings = retired ? [this.maps.events, retired] : [this.maps.events];
    const readers = rings.map((ring) => eventsMap.openReader(ring, onEvent));
    const stop = (): boolean => {
      let was = false;
      for (const r of readers) {
        if (!this.#readers.delete(r)) continue;
        was = true;
        r.stop();
        r.close();
      }
      return was;
    };
    for (const reader of readers) {
      this.#readers.add(reader);
      reader.start(opts.intervalMs ?? 50, (err) => {
        if (stop()) opts.onError?.(err);
      });
    }
    return { stop };
  }

  /**
   * Stops event readers and closes every fd; pins stay. With detach (the
   * default) the programs are removed from the VXLAN device and the veths;
   * with detach: false they keep forwarding with the pinned maps until the
   * next start() replaces them (an agent restart without traffic loss).
   */
  async stop(opts: { detach?: boolean } = {}): Promise<void> {
    if (this.#state === 'stopped') return;
    this.#state = 'stopping';
    try {
      this.#teardown(opts.detach ?? true);
    } finally {
      this.#state = 'stopped';
    }
  }

  /**
   * stop() with detach, then the pin directory removed, and the VXLAN device
   * deleted if this instance created it. Works without a prior start() too
   * (cleanup after a crash): it then detaches from_overlay from the VXLAN
   * device by name.
   */
  async destroy(): Promise<void> {
    const wasRunning = this.#state !== 'stopped';
    await this.stop({ detach: true });
    const vx = await linkInfo(this.options.vxlanDevice);
    if (vx && !wasRunning) tcDetach(vx.ifindex, 'ingress', { name: FROM_OVERLAY });
    if (!wasRunning) {
      const underlay = await deviceOfAddress(this.options.nodeIP);
      if (underlay) tcDetach(underlay.ifindex, 'ingress', NETDEV_SLOT);
    }
    if (vx && this.#createdVxlan) await deleteLink(this.options.vxlanDevice);
    this.#createdVxlan = false;
    // Removing a link's pin detaches it too, unless some process holds it: detach for sure.
    this.#detachSocketLB();
    removePinDir(this.options.pinDir);
  }

  /**
   * Socket LB on: sock.bpf.o on the node's pins, a pinned link per hook (a
   * link of an earlier start is replaced after the new one is in place).
   * Off: links an earlier start pinned are detached.
   */
  #startSocketLB(): void {
    const cgroup = this.options.socketLBCgroup;
    this.#sockProgIds.clear();
    if (cgroup === undefined) {
      this.#detachSocketLB();
      return;
    }
    try {
      this.#sock = this.#load(SOCK_OBJECT);
      for (const p of SOCK_PROGRAMS) {
        const id = attachCgroupPinned({ cgroupPath: cgroup, hook: p.hook, program: this.#sock.program(p.program), pinPath: join(this.options.pinDir, p.pin) });
        this.#sockProgIds.set(p.hook, id);
      }
    } catch (err) {
      throw new Error(`socket-level load balancing (socketLBCgroup ${cgroup}): ${(err as Error).message}`, { cause: err });
    }
  }

  #detachSocketLB(): void {
    for (const p of SOCK_PROGRAMS) detachPinnedLink(join(this.options.pinDir, p.pin));
  }

  /** Socket-level load balancing: on or off, and what the kernel has attached to the cgroup. */
  socketLB(): SocketLBStatus {
    const cgroup = this.options.socketLBCgroup;
    const enabled = cgroup !== undefined && this.#state === 'running' && this.#sock !== undefined;
    const programs = SOCK_PROGRAMS.map((p) => {
      const progId = this.#sockProgIds.get(p.hook) ?? null;
      let attached = false;
      if (enabled && progId !== null) {
        try {
          attached = cgroupQuery(cgroup, p.hook).includes(progId);
        } catch {
          attached = false;
        }
      }
      return { hook: p.hook, program: p.program, progId, attached };
    });
    return { enabled, cgroup: cgroup ?? null, programs, stats: enabled ? sockMap.readStats(this.#sock!.map(sockMap.STATS_MAP_NAME)) : null };
  }

  #load(file: string, config?: Parameters<typeof applyConfig>[1]): BpfObject {
    const obj = BpfObject.open(join(this.options.objectsDir, file), { pinRoot: this.options.pinDir });
    try {
      if (config) applyConfig(obj, config);
      const ring = this.options.eventsRingBytes;
      if (ring !== undefined && obj.mapNames().includes(eventsMap.MAP_NAME)) obj.setMaxEntries(eventsMap.MAP_NAME, ring);
      for (const [key, n] of Object.entries(this.options.mapSizes)) {
        const name = SIZED_MAPS[key as keyof typeof SIZED_MAPS];
        if (n !== undefined && obj.mapNames().includes(name)) obj.setMaxEntries(name, n);
      }
      this.#replaceStalePins(obj);
      obj.load();
      this.#carryOverCt(obj);
      this.#carryOverPolicyConns(obj);
      return obj;
    } catch (err) {
      obj.close();
      throw err;
    }
  }

  /**
   * libbpf reuses a pinned map only when type, key and value size,
   * max_entries and flags all match the object's, and fails the load
   * otherwise. A pin that differs (a map resized or restructured by an
   * upgrade) is unpinned here so that the load creates it anew; pins that
   * match are left alone (their entries kept). Programs still attached keep
   * the old map until attachEndpoint/start replace them.
   */
  #replaceStalePins(obj: BpfObject): void {
    for (const name of obj.mapNames()) {
      const path = join(this.options.pinDir, name);
      if (!existsSync(path)) continue;
      const { name: _w, ...wanted } = obj.mapDefinition(name);
      const old = BpfMap.openPinned(path);
      const pinned = { type: old.type, keySize: old.keySize, valueSize: old.valueSize, maxEntries: old.maxEntries, flags: old.flags };
      if (sameDefinition(wanted, pinned)) {
        old.close();
        continue;
      }
      unlinkSync(path);
      const replaced: ReplacedPin = { map: name, pinned, wanted };
      this.#replacedPins.push(replaced);
      if (name === eventsMap.MAP_NAME && old.type === wanted.type && !this.#retiredEvents) {
        this.#retiredEvents = old;
      } else if (name === ctMap.MAP_NAME && old.keySize === wanted.keySize && old.valueSize === wanted.valueSize && !this.#retiredCt) {
        this.#retiredCt = { map: old, replaced };
      } else {
        old.close();
      }
    }
  }

  /**
   * A replaced cm_ct (a changed mapSizes.conntrack, or the LRU of older
   * versions) would cost every tracked service connection its entries: its
   * live ones are copied into the new table, longest-lived first, as many as
   * fit (the rest are counted in replacedPins). Programs still attached write
   * into the old table until replaced; a connection opened in between picks
   * its backend again (by the same hash). Best effort: a failure is recorded,
   * never fails the start.
   */
  #carryOverCt(obj: BpfObject): void {
    const retired = this.#retiredCt;
    if (!retired || !obj.mapNames().includes(ctMap.MAP_NAME)) return;
    this.#retiredCt = undefined;
    try {
      const now = ctMap.monotonicSeconds();
      carryLive(retired.replaced, () => [...ctMap.entries(retired.map)].filter(([, v]) => v.lifetime >= now), obj.map(ctMap.MAP_NAME), (map, fit) => ctMap.updateMany(map, fit));
    } finally {
      retired.map.close();
    }
  }

  /**
   * Policy conntrack of agents before cm_policy_conn: cm_policy_ct, one
   * entry per direction, and the cached verdicts apart in cm_policy_verdict.
   * Without its live entries the replies of every connection the old
   * datapath admitted would meet the checks (and a default deny) once the
   * new programs are attached, so they are carried into cm_policy_conn,
   * longest-lived first, as many as fit; the verdicts are not (the next
   * packet of each connection is checked and caches one). Both old pins are
   * then removed. Programs still attached write into the old map until
   * replaced: a connection opened in between has its replies checked.
   * Best effort, as #carryOverCt.
   */
  #carryOverPolicyConns(obj: BpfObject): void {
    if (!obj.mapNames().includes(policyMap.CONN_MAP_NAME)) return;
    const { name: _n, ...wanted } = obj.mapDefinition(policyMap.CONN_MAP_NAME);
    for (const name of [policyMap.LEGACY_CT_MAP_NAME, policyMap.LEGACY_VERDICT_MAP_NAME]) {
      const path = join(this.options.pinDir, name);
      if (!existsSync(path)) continue;
      const old = BpfMap.openPinned(path);
      const replaced: ReplacedPin = { map: name, pinned: { type: old.type, keySize: old.keySize, valueSize: old.valueSize, maxEntries: old.maxEntries, flags: old.flags }, wanted, renamedTo: policyMap.CONN_MAP_NAME };
      this.#replacedPins.push(replaced);
      try {
        if (name !== policyMap.LEGACY_CT_MAP_NAME) continue;
        carryLive(replaced, () => policyMap.legacyConnections(old, ctMap.monotonicSeconds()), obj.map(policyMap.CONN_MAP_NAME), policyMap.writeConnections);
      } finally {
        old.close();
        unlinkSync(path);
      }
    }
  }

  #running(op: string): BpfObject {
    if (this.#state !== 'running' || !this.#lxc) throw new Error(`NodeDatapath ${this.options.nodeName}: ${op}() needs a started datapath (state ${this.#state})`);
    return this.#lxc;
  }

  #teardown(detach: boolean): void {
    for (const r of this.#readers) {
      r.stop();
      r.close();
    }
    this.#readers.clear();
    this.#retiredEvents?.close();
    this.#retiredEvents = undefined;
    this.#retiredCt?.map.close();
    this.#retiredCt = undefined;
    this.#retiredRead = false;
    const errors: unknown[] = [];
    if (detach) {
      const endpointAtts = [...this.#endpoints.values()].flatMap((a) => [a.ingress, a.egress]);
      for (const att of [...endpointAtts, ...(this.#overlayAttachment ? [this.#overlayAttachment] : []), ...(this.#netdevAttachment ? [this.#netdevAttachment] : [])]) {
        try {
          att.detach();
        } catch (err) {
          errors.push(err);
        }
      }
      if (this.#sock) {
        try {
          this.#detachSocketLB();
        } catch (err) {
          errors.push(err);
        }
      }
    }
    this.#endpoints.clear();
    this.#overlayAttachment = undefined;
    this.#netdevAttachment = undefined;
    this.#underlay = undefined;
    this.#lxc?.close();
    this.#overlay?.close();
    this.#sock?.close();
    this.#lxc = undefined;
    this.#overlay = undefined;
    this.#sock = undefined;
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, `NodeDatapath ${this.options.nodeName}: ${errors.length} detach errors`);
  }
}

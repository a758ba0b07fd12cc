// The test bed's network: clusters of node namespaces on per-cluster underlay
// segments, joined by a router namespace, and pod namespaces wired to their
// node by a veth pair. This module knows namespaces and links; it does not
// know BPF (the datapath is attached by the node's agent, inside the node).
//
// Addressing (ARCHITECTURE §2):
//   underlay of cluster c: 10.c.0.0/24, router 10.c.0.254, node n at 10.c.0.n
//   (segment = bridge br<c> in the router namespace; the router is on it by veth rt<c>)
//   pods of node n in cluster c: 10.(100+c).n.0/24, gateway 10.(100+c).n.1,
//   pod p at 10.(100+c).n.(10+p)
//
// Routing of the clustermesh wiring, per cluster (spec.routing): 'tunnel'
// (every pod packet to another node in the VXLAN tunnel) or 'native' (the
// underlay routes the cluster's pods: the router has a route for every
// node's pod CIDR via that node, the nodes of the cluster one for each other's,
// and forward; the agents send unencapsulated to the pods of every native
// cluster and tunnel to the rest). Pods get the underlay's MTU when every
// cluster is native, else the tunnel's (a packet to a tunnel cluster must fit).
import { randomBytes } from 'node:crypto';
import { DEFAULT_TUNNEL_ENCAP, TUNNEL_ENCAPS, type RoutingMode, type TunnelEncap } from '../datapath/maps/config.js';
import { createNodeCgroup, removeNodeCgroup } from './cgroup.js';
import { ipBatch, run, runIn } from './exec.js';
import { forgetTopology, orphanedTopologies, recordTopology } from './registry.js';

/** How pods of different nodes reach each other. */
export type WiringMode =
  /** eBPF overlay: the node's agent owns the VXLAN device and the programs. */
  | 'clustermesh'
  /** Plain routing through nodes and the router: no encapsulation, no BPF (the limit). */
  | 'routing'
  /** A plain Linux VXLAN overlay with static FDB, neighbours and routes, no BPF. */
  | 'kernel-vxlan';

export interface TopologySpec {
  clusters: number;
  nodesPerCluster: number;
  podsPerNode: number;
  mode: WiringMode;
  /** Prefix of every namespace name; tests use their own so leftovers are attributable. */
  prefix?: string;
  underlayMtu?: number;
  /** Names every namespace `<baseName>-…` instead of `<prefix>-<random id>-…` (the lab: its own names). */
  baseName?: string;
  /**
   * 'clustermesh' mode: how the agents reach other nodes' pods, for every
   * cluster or per cluster (index c-1). Default: CLUSTERMESH_TEST_ROUTING
   * ('tunnel' or 'native', the test rig's switch) when set, else 'tunnel'.
   */
  routing?: RoutingMode | RoutingMode[];
  /**
   * 'clustermesh' mode: who writes the tunnel's VXLAN headers in every
   * cluster (the agents' tunnelEncap). Default: CLUSTERMESH_TEST_TUNNEL_ENCAP
   * ('bpf' or 'device', the test rig's switch) when set, else the agents'
   * default (bpf).
   */
  tunnelEncap?: TunnelEncap;
}

/** The environment variable that makes topologies built without `routing` native (or tunnel): runs the datapath tests in either mode. */
export const TEST_ROUTING_ENV = 'CLUSTERMESH_TEST_ROUTING';
/** The environment variable that makes topologies built without `tunnelEncap` encapsulate in BPF (or with the device): runs the datapath tests either way. */
export const TEST_TUNNEL_ENCAP_ENV = 'CLUSTERMESH_TEST_TUNNEL_ENCAP';

export interface TopologyOptions {
  /** Record the topology in the crash registry (default true). The lab keeps its own state instead. */
  registry?: boolean;
  /** Called with every namespace name right before it is created (the lab writes its state here). */
  onNamespace?: (name: string) => void;
}

export interface NodeInfo {
  cluster: number;
  clusterName: string;
  index: number;
  name: string;
  netns: string;
  underlayDev: string;
  underlayIP: string;
  podCIDR: string;
  gatewayIP: string;
  /** The node's cgroup (src/lab/cgroup.ts), where its pods' processes run; undefined without cgroup v2. */
  cgroup: string | undefined;
}

export interface PodInfo {
  cluster: number;
  clusterName: string;
  node: NodeInfo;
  index: number;
  name: string;
  netns: string;
  ip: string;
  mac: string;
  hostIfName: string;
  hostIfIndex: number;
  hostMac: string;
}

export type ResolvedTopologySpec = Required<Omit<TopologySpec, 'routing'>> & { routing: RoutingMode[] };

export interface Topology {
  id: string;
  spec: ResolvedTopologySpec;
  routerNetns: string;
  nodes: NodeInfo[];
  pods: PodInfo[];
  /** Every namespace this topology created, in creation order. */
  namespaces: string[];
  /** `<prefix>-<id>` or the baseName: the start of every name. */
  base: string;
  options: TopologyOptions;
}

/** The start of every namespace name of a topology. */
export const topologyBase = (topo: Pick<Topology, 'id' | 'spec'>): string => topo.spec.baseName || `${topo.spec.prefix}-${topo.id}`;

export const VXLAN_OVERHEAD = 50;
const UNDERLAY_DEV = 'eth0';
const KERNEL_VXLAN_DEV = 'vx0';

export const clusterName = (c: number): string => `cluster${c}`;
export const nodeUnderlayIP = (c: number, n: number): string => `10.${c}.0.${n}`;
export const routerUnderlayIP = (c: number): string => `10.${c}.0.254`;
/** The router's interface on cluster c's underlay segment (in the router namespace; netem for geography goes here). */
export const routerPort = (c: number): string => `rt${c}`;
export const nodePodCIDR = (c: number, n: number): string => `10.${100 + c}.${n}.0/24`;
export const nodeGatewayIP = (c: number, n: number): string => `10.${100 + c}.${n}.1`;
export const podIP = (c: number, n: number, p: number): string => `10.${100 + c}.${n}.${10 + p}`;
const kernelVxlanIP = (c: number, n: number): string => `10.250.${c}.${n}`;
const kernelVxlanMac = (c: number, n: number): string =>
  `02:cc:00:${c.toString(16).padStart(2, '0')}:${n.toString(16).padStart(2, '0')}:01`;

function validateSpec(spec: TopologySpec): ResolvedTopologySpec {
  const { routing: routingIn, tunnelEncap: encapIn, ...rest } = spec;
  const full = { prefix: 'cm', underlayMtu: 1500, baseName: '', ...rest };
  const check = (field: string, v: number, max: number) => {
    if (!Number.isInteger(v) || v < 1 || v > max) throw new RangeError(`topology: ${field} must be an integer in 1..${max}, got ${v}`);
  };
  check('clusters', full.clusters, 100);
  check('nodesPerCluster', full.nodesPerCluster, 200);
  if (!Number.isInteger(full.podsPerNode) || full.podsPerNode < 0 || full.podsPerNode > 200) throw new RangeError(`topology: podsPerNode must be an integer in 0..200, got ${full.podsPerNode}`);
  if (full.baseName && !/^[a-z][a-z0-9-]{0,23}$/.test(full.baseName)) throw new RangeError(`topology: baseName must be 1-24 lowercase alphanumerics or '-', got '${full.baseName}'`);
  if (!/^[a-z][a-z0-9]{0,7}$/.test(full.prefix)) throw new RangeError(`topology: prefix must be 1-8 lowercase alphanumerics, got '${full.prefix}'`);
  if (!Number.isInteger(full.underlayMtu) || full.underlayMtu < 1280 || full.underlayMtu > 9000) throw new RangeError(`topology: underlayMtu must be in 1280..9000, got ${full.underlayMtu}`);
  return { ...full, routing: resolveRouting(full.mode, full.clusters, routingIn), tunnelEncap: resolveTunnelEncap(full.mode, encapIn) };
}

function resolveTunnelEncap(mode: WiringMode, encap: TopologySpec['tunnelEncap']): TunnelEncap {
  const env = process.env[TEST_TUNNEL_ENCAP_ENV];
  if (encap === undefined && env) {
    if (!(TUNNEL_ENCAPS as readonly string[]).includes(env)) throw new RangeError(`${TEST_TUNNEL_ENCAP_ENV}=${env}: must be ${TUNNEL_ENCAPS.join(' or ')}`);
    encap = mode === 'clustermesh' ? (env as TunnelEncap) : undefined;
  }
  if (encap !== undefined && !TUNNEL_ENCAPS.includes(encap)) throw new RangeError(`topology: tunnelEncap must be ${TUNNEL_ENCAPS.join(' or ')}, got ${JSON.stringify(encap)}`);
  if (mode !== 'clustermesh' && encap !== undefined) throw new RangeError(`topology: tunnelEncap is a setting of the clustermesh wiring, not of '${mode}'`);
  return encap ?? DEFAULT_TUNNEL_ENCAP;
}

function resolveRouting(mode: WiringMode, clusters: number, routing: TopologySpec['routing']): RoutingMode[] {
  const env = process.env[TEST_ROUTING_ENV];
  if (routing === undefined && env) {
    if (env !== 'tunnel' && env !== 'native') throw new RangeError(`${TEST_ROUTING_ENV}=${env}: must be tunnel or native`);
    routing = mode === 'clustermesh' ? env : undefined;
  }
  const list = Array.isArray(routing) ? routing : Array.from({ length: clusters }, () => routing ?? 'tunnel');
  if (list.length !== clusters) throw new RangeError(`topology: routing names ${list.length} clusters, the topology has ${clusters}`);
  list.forEach((r, i) => {
    if (r !== 'tunnel' && r !== 'native') throw new RangeError(`topology: routing of cluster ${i + 1} must be tunnel or native, got ${JSON.stringify(r)}`);
  });
  if (mode !== 'clustermesh' && list.includes('native')) throw new RangeError(`topology: routing native is a setting of the clustermesh wiring, not of '${mode}'`);
  return list;
}

/** Routing of cluster c (1-based). */
export const clusterRouting = (spec: Pick<ResolvedTopologySpec, 'routing'>, c: number): RoutingMode => spec.routing[c - 1] ?? 'tunnel';

/**
 * The pod ranges the lab's underlay routes: the /16 of every native cluster,
 * 10.(100+c).0.0/16, aggregated into as few prefixes as cover exactly those
 * (the datapath takes at most 8). [] when no cluster is native.
 */
export function nativeRoutingCIDRs(spec: Pick<ResolvedTopologySpec, 'routing'>): string[] {
  const octets = spec.routing.flatMap((r, i) => (r === 'native' ? [100 + i + 1] : []));
  const set = new Set(octets);
  const out: string[] = [];
  for (let o = octets[0]; o !== undefined && o <= octets[octets.length - 1]!; ) {
    if (!set.has(o)) {
      o++;
      continue;
    }
    let size = 1;
    while (o % (size * 2) === 0 && Array.from({ length: size * 2 }, (_, k) => o! + k).every((x) => set.has(x) && x <= 255)) size *= 2;
    out.push(`10.${o}.0.0/${16 - Math.log2(size)}`);
    o += size;
  }
  if (out.length > NATIVE_CIDR_LIMIT) throw new RangeError(`topology: the native clusters' pod ranges need ${out.length} prefixes (${out.join(', ')}); the datapath takes at most ${NATIVE_CIDR_LIMIT}: make a contiguous run of clusters native`);
  return out;
}
const NATIVE_CIDR_LIMIT = 8;

/**
 * The routing settings of cluster c's agents: {} in tunnel mode with the
 * agents' default encapsulation, else native with the lab's routed ranges,
 * and tunnelEncap where the spec names another than the default (a spec
 * written before the setting has none: the default).
 */
export function routingSettings(spec: Pick<ResolvedTopologySpec, 'routing'> & { tunnelEncap?: TunnelEncap }, c: number): { routingMode?: 'native'; nativeRoutingCIDRs?: string[]; tunnelEncap?: TunnelEncap } {
  return {
    ...(clusterRouting(spec, c) === 'native' ? { routingMode: 'native' as const, nativeRoutingCIDRs: nativeRoutingCIDRs(spec) } : {}),
    ...(spec.tunnelEncap !== undefined && spec.tunnelEncap !== DEFAULT_TUNNEL_ENCAP ? { tunnelEncap: spec.tunnelEncap } : {}),
  };
}

/** The MTU a pod gets: the underlay's, less the VXLAN header when the mode encapsulates (a native cluster meshed with a tunnel cluster too). */
export function podMtu(spec: Pick<ResolvedTopologySpec, 'mode' | 'underlayMtu' | 'routing'>): number {
  const unencapsulated = spec.mode === 'routing' || (spec.mode === 'clustermesh' && spec.routing.length > 0 && spec.routing.every((r) => r === 'native'));
  return unencapsulated ? spec.underlayMtu : spec.underlayMtu - VXLAN_OVERHEAD;
}

/**
 * Builds the whole topology. On any failure, everything created so far is
 * removed before the error is rethrown.
 */
export async function createTopology(specIn: TopologySpec, options: TopologyOptions = {}): Promise<Topology> {
  const spec = validateSpec(specIn);
  const id = randomBytes(3).toString('hex');
  const base = spec.baseName || `${spec.prefix}-${id}`;
  const topo: Topology = { id, spec, routerNetns: `${base}-rtr`, nodes: [], pods: [], namespaces: [], base, options };
  try {
    await addNamespace(topo, topo.routerNetns);
    await runIn(topo.routerNetns, ['sysctl', '-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.disable_ipv6=1']);
    // Frames switched by the segments' bridges stay out of iptables even on a
    // host that loaded br_netfilter (Docker does); per namespace, and -e because
    // the keys only exist while that module is loaded.
    await runIn(topo.routerNetns, ['sysctl', '-q', '-e', '-w', 'net.bridge.bridge-nf-call-iptables=0', 'net.bridge.bridge-nf-call-ip6tables=0', 'net.bridge.bridge-nf-call-arptables=0']);
    const rtr: string[] = ['link set lo up'];
    for (let c = 1; c <= spec.clusters; c++) {
      // Cluster c's underlay segment is the bridge br<c>, a pure L2 switch
      // (no address; `arp off` so it never answers ARP for the router's
      // address with its own MAC). The router sits on it through a veth pair,
      // like a host on a switch: rt<c> holds the router address, rt<c>sw is
      // the bridge port. The router must not route out of the bridge device
      // itself: a bridge has no hw_enc_features, so every VXLAN GSO packet
      // routed out of it would be segmented in software (one 64 KB skb into
      // ~45 frames, each then decapsulated and re-aggregated by GRO on the
      // receiving node) -- that cost the overlays 2/3 of their throughput.
      // A veth keeps the tunnel GSO packet whole up to the receiving node.
      rtr.push(
        `link add br${c} type bridge`,
        `link set br${c} mtu ${spec.underlayMtu} arp off`,
        `link set br${c} up`,
        `link add ${routerPort(c)} type veth peer name ${routerPort(c)}sw`,
        `link set ${routerPort(c)}sw mtu ${spec.underlayMtu} master br${c}`,
        `link set ${routerPort(c)}sw up`,
        `link set ${routerPort(c)} mtu ${spec.underlayMtu}`,
        `addr add ${routerUnderlayIP(c)}/24 dev ${routerPort(c)}`,
        `link set ${routerPort(c)} up`,
      );
    }
    await ipBatch(topo.routerNetns, rtr);

    for (let c = 1; c <= spec.clusters; c++) {
      for (let n = 1; n <= spec.nodesPerCluster; n++) {
        const node: NodeInfo = {
          cluster: c,
          clusterName: clusterName(c),
          index: n,
          name: `node${n}`,
          netns: `${base}-c${c}n${n}`,
          underlayDev: UNDERLAY_DEV,
          underlayIP: nodeUnderlayIP(c, n),
          podCIDR: nodePodCIDR(c, n),
          gatewayIP: nodeGatewayIP(c, n),
          cgroup: undefined,
        };
        await addNamespace(topo, node.netns);
        node.cgroup = createNodeCgroup(node.netns);
        topo.nodes.push(node);
        const routerEnd = `c${c}n${n}`;
        await ipBatch(undefined, [`link add ${routerEnd} netns ${topo.routerNetns} type veth peer name ${UNDERLAY_DEV} netns ${node.netns}`]);
        await ipBatch(topo.routerNetns, [`link set ${routerEnd} mtu ${spec.underlayMtu}`, `link set ${routerEnd} master br${c}`, `link set ${routerEnd} up`]);
        await ipBatch(node.netns, [
          'link set lo up',
          `link set ${UNDERLAY_DEV} mtu ${spec.underlayMtu}`,
          `addr add ${node.underlayIP}/24 dev ${UNDERLAY_DEV}`,
          `link set ${UNDERLAY_DEV} up`,
          `route add default via ${routerUnderlayIP(c)}`,
        ]);
        const forward = spec.mode !== 'clustermesh' || clusterRouting(spec, c) === 'native';
        await runIn(node.netns, ['sysctl', '-qw', `net.ipv4.ip_forward=${forward ? 1 : 0}`, 'net.ipv6.conf.all.disable_ipv6=1']);
        for (let p = 1; p <= spec.podsPerNode; p++) topo.pods.push(await addPod(topo, node, p));
      }
    }
    if (spec.mode === 'routing') await wireRouting(topo);
    if (spec.mode === 'clustermesh' && spec.routing.includes('native')) await wireRouting(topo, (n) => clusterRouting(spec, n.cluster) === 'native');
    if (spec.mode === 'kernel-vxlan') await wireKernelVxlan(topo);
    return topo;
  } catch (err) {
    await destroyTopology(topo).catch(() => undefined);
    throw err;
  }
}

async function addNamespace(topo: Topology, name: string): Promise<void> {
  // Recorded before it exists, so a crash between the two still leaves a trace.
  topo.namespaces.push(name);
  topo.options.onNamespace?.(name);
  if (topo.options.registry !== false) recordTopology({ name: topo.base, pid: process.pid, namespaces: topo.namespaces });
  await run(['ip', 'netns', 'add', name]);
}

async function linkInfo(netns: string, dev: string): Promise<{ ifindex: number; mac: string }> {
  const { stdout } = await run(['ip', '-n', netns, '-j', 'link', 'show', 'dev', dev]);
  const [info] = JSON.parse(stdout) as Array<{ ifindex: number; address: string }>;
  if (!info) throw new Error(`no link ${dev} in ${netns}`);
  return { ifindex: info.ifindex, mac: info.address };
}

async function addPod(topo: Topology, node: NodeInfo, p: number): Promise<PodInfo> {
  const mtu = podMtu(topo.spec);
  const netns = `${node.netns}p${p}`;
  await addNamespace(topo, netns);
  const hostIfName = `lxc${p}`;
  const ip = podIP(node.cluster, node.index, p);
  await ipBatch(undefined, [`link add ${hostIfName} netns ${node.netns} type veth peer name eth0 netns ${netns}`]);
  await ipBatch(node.netns, [
    `link set ${hostIfName} mtu ${mtu}`,
    `link set ${hostIfName} up`,
    // Lets the node's own stack (and the routing baseline) reach the pod.
    `route add ${ip}/32 dev ${hostIfName} scope link`,
  ]);
  const host = await linkInfo(node.netns, hostIfName);
  await ipBatch(netns, [
    'link set lo up',
    `link set eth0 mtu ${mtu}`,
    `addr add ${ip}/32 dev eth0`,
    'link set eth0 up',
    // The gateway is a static neighbour: pods never ARP for it.
    `neigh replace ${node.gatewayIP} lladdr ${host.mac} dev eth0 nud permanent`,
    `route add default via ${node.gatewayIP} dev eth0 onlink`,
  ]);
  await runIn(netns, ['sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1']);
  const pod = await linkInfo(netns, 'eth0');
  return {
    cluster: node.cluster,
    clusterName: node.clusterName,
    node,
    index: p,
    name: `pod-c${node.cluster}n${node.index}p${p}`,
    netns,
    ip,
    mac: pod.mac,
    hostIfName,
    hostIfIndex: host.ifindex,
    hostMac: host.mac,
  };
}

/**
 * The limit: pods routed hop by hop through their nodes and the router. With
 * `only`: the routes of those nodes' pod CIDRs (native clusters), nothing else.
 */
async function wireRouting(topo: Topology, only: (n: NodeInfo) => boolean = () => true): Promise<void> {
  const rtr: string[] = [];
  for (const node of topo.nodes.filter(only)) {
    rtr.push(`route add ${node.podCIDR} via ${node.underlayIP}`);
    const lines: string[] = [];
    for (const other of topo.nodes) {
      if (other === node || other.cluster !== node.cluster || !only(other)) continue;
      lines.push(`route add ${other.podCIDR} via ${other.underlayIP}`);
    }
    if (lines.length) await ipBatch(node.netns, lines);
  }
  await ipBatch(topo.routerNetns, rtr);
}

/** A plain Linux VXLAN overlay: one vxlan device per node, static FDB, neighbours and routes. */
async function wireKernelVxlan(topo: Topology): Promise<void> {
  const mtu = podMtu(topo.spec);
  for (const node of topo.nodes) {
    const lines = [
      `link add ${KERNEL_VXLAN_DEV} type vxlan id 1 dstport 8472 local ${node.underlayIP} dev ${UNDERLAY_DEV} nolearning`,
      `link set ${KERNEL_VXLAN_DEV} address ${kernelVxlanMac(node.cluster, node.index)} mtu ${mtu}`,
      `addr add ${kernelVxlanIP(node.cluster, node.index)}/32 dev ${KERNEL_VXLAN_DEV}`,
      `link set ${KERNEL_VXLAN_DEV} up`,
    ];
    for (const other of topo.nodes) {
      if (other === node) continue;
      const vip = kernelVxlanIP(other.cluster, other.index);
      const vmac = kernelVxlanMac(other.cluster, other.index);
      lines.push(
        `neigh replace ${vip} lladdr ${vmac} dev ${KERNEL_VXLAN_DEV} nud permanent`,
        `route add ${other.podCIDR} via ${vip} dev ${KERNEL_VXLAN_DEV} onlink`,
      );
    }
    await ipBatch(node.netns, lines);
    const fdb = topo.nodes
      .filter((o) => o !== node)
      .map((o) => `fdb append ${kernelVxlanMac(o.cluster, o.index)} dev ${KERNEL_VXLAN_DEV} dst ${o.underlayIP}`);
    await run(['bridge', '-n', node.netns, '-batch', '-'], { input: fdb.join('\n') + '\n' });
  }
}

/** Removes what topologies of crashed processes left behind; returns the names removed. */
export async function sweepOrphanedTopologies(): Promise<string[]> {
  const swept: string[] = [];
  for (const rec of orphanedTopologies()) {
    await destroyTopology(rec);
    forgetTopology(rec.name);
    swept.push(rec.name);
  }
  return swept;
}

/**
 * Removes every namespace the topology created (links inside go with them)
 * and the cgroups of its nodes (named after their namespaces). Safe to call twice.
 */
export async function destroyTopology(topo: Pick<Topology, 'namespaces'> & Partial<Pick<Topology, 'id' | 'spec'>>): Promise<void> {
  const errors: unknown[] = [];
  for (const ns of [...topo.namespaces].reverse()) {
    try {
      await run(['ip', 'netns', 'del', ns]);
    } catch (err) {
      if (!(await namespaceExists(ns))) continue;
      errors.push(err);
    }
  }
  for (const ns of topo.namespaces) {
    try {
      await removeCgroupWhenEmpty(ns);
    } catch (err) {
      errors.push(err);
    }
  }
  if (errors.length) throw new AggregateError(errors, `topology: ${errors.length} namespaces or cgroups could not be removed: ${errors.map((e) => (e as Error).message).join('; ')}`);
  if (topo.id && topo.spec) forgetTopology(topologyBase({ id: topo.id, spec: topo.spec }));
}

/** A node cgroup whose last processes are still exiting gets a moment (2 s) before it counts as busy. */
async function removeCgroupWhenEmpty(ns: string): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      removeNodeCgroup(ns);
      return;
    } catch (err) {
      if (i >= 40) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

export async function namespaceExists(name: string): Promise<boolean> {
  return (await listNamespaces()).includes(name);
}

export async function listNamespaces(): Promise<string[]> {
  const { stdout } = await run(['ip', '-j', 'netns', 'list']);
  if (!stdout.trim()) return [];
  return (JSON.parse(stdout) as Array<{ name: string }>).map((e) => e.name);
}

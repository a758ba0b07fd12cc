// The alternatives that bench/peers measures clustermesh against, each built
// in the same test bed: two clusters of two nodes with one pod per node
// (createTopology), traffic from the pod of cluster1/node2 to the pod of
// cluster2/node2. Node 1 of each cluster is the gateway where a row has one.
// Every row is made from a topology createTopology builds ('routing',
// 'kernel-vxlan' or 'clustermesh') and then reconfigured inside its
// namespaces; stop() removes everything, processes first.
//
//   limit                  'routing' as is: plain routing through nodes and the router
//   clustermesh            our datapath (lab plans) plus policy enforced on every pod
//                          in both directions, with allow rules for the given ports
//   clustermesh-native     the same with routingMode native in both clusters: the
//                          router routes every node's pod CIDR, nothing is encapsulated
//   kernel-vxlan-iptables  'kernel-vxlan' plus, on every node, the iptables a
//                          kube-proxy (iptables mode) writes, with `services`
//                          ClusterIP services, and an iptables network policy
//                          that allows the given ports (conntrack accepts replies)
//   gateway                Submariner-like: non-gateway nodes send traffic for the
//                          other cluster over VXLAN (vx0, UDP 8472) to their gateway,
//                          chosen by a fwmark set in mangle/PREROUTING and a policy
//                          route (table 100); gateways talk over a VXLAN "cable"
//                          (VNI 1000, UDP 4500); nat/POSTROUTING RETURNs remote CIDRs
//   openvpn                'routing' inside each cluster; non-gateway nodes route the
//                          other cluster's pods to their gateway; the gateways are
//                          joined by OpenVPN (UDP, TLS with self-signed certificates
//                          pinned by fingerprint, AES-256-GCM, defaults otherwise)
//   kernel-vxlan           (not a comparison row) 'kernel-vxlan' as is: the kernel's
//                          VXLAN device alone, no BPF, no iptables
// The clustermesh row may load a measurement variant of the datapath instead
// (opts.variant, bpf/lib/variant.h): the same row with one suspected cost removed.
import { DEFAULT_TUNNEL_ENCAP, type TunnelEncap } from '../datapath/maps/config.js';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { execFileSync, type ChildProcess } from 'node:child_process';
import { BpfMap, type TcAttachPreference } from '../datapath/libbpf/index.js';
import { lbHint, policy } from '../datapath/maps/index.js';
import { ipBatch, run, runIn, spawnIn, stopChild } from './exec.js';
import { labPodIdentity, startClustermeshDatapath, type LabDatapath } from './datapath.js';
import { createTopology, destroyTopology, type NodeInfo, type PodInfo, type Topology, type WiringMode } from './topology.js';
import { kubeProxyRules as kubeProxyTables, type KubeService } from './kube-proxy.ts';

export const PEER_CONFIGS = ['limit', 'clustermesh', 'clustermesh-native', 'kernel-vxlan-iptables', 'gateway', 'openvpn'] as const;
export type PeerConfig = (typeof PEER_CONFIGS)[number];
/** Beds that are no row of the comparison but help read it (bench/peers --suspects). */
export const EXTRA_PEER_CONFIGS = ['kernel-vxlan'] as const;
export type PeerBedConfig = PeerConfig | (typeof EXTRA_PEER_CONFIGS)[number];

/**
 * Measurement variants of our datapath (bpf/lib/variant.h; `make -C bpf
 * variants` builds them into bpf/build/variants/<name>/), each with what it removes.
 */
export const DATAPATH_VARIANTS = {
  nolb: 'no service lookup or reverse translation',
  nometrics: 'no per-CPU counters',
  notrace: 'no cm_settings lookup and no trace event for forwarded packets',
  peerdev: 'into the tunnel through a non-external VXLAN device per remote node (fixed remote and VNI: a cached route) instead of bpf_skb_set_tunnel_key on the external device',
  bare: 'all four removed',
  lean: 'no service lookup, no counters, no trace check (bare without the peer device: for native routing, which has no tunnel)',
} as const;
export type DatapathVariant = keyof typeof DATAPATH_VARIANTS;
/** Name of the peer devices of the peerdev/bare variants (cmpd<k>, k: index of the remote node) and the first port they listen on (one each: the kernel allows a VNI once per port); they send to the nodes' tunnel port. */
export const PEER_DEV_PREFIX = 'cmpd';
const PEER_DEV_LISTEN_PORT = 9472;
const TUNNEL_PORT = 8472;
const PEER_DEV_MAP = 'cm_variant_peer_dev';

export interface PeerBedOptions {
  /** Namespace prefix (createTopology's rules: 1-8 lowercase alphanumerics). */
  prefix: string;
  /** TCP ports of the server pod that the policy rows allow (clustermesh, kernel-vxlan-iptables). */
  allowPorts: readonly number[];
  /** ClusterIP services in the kube-proxy rules of kernel-vxlan-iptables. */
  services?: number;
  /** clustermesh only: enforce policy with the allow rules (default true); false measures the datapath without policy. */
  policy?: boolean;
  /** clustermesh only: load this measurement variant of the datapath instead of bpf/build's objects. */
  variant?: DatapathVariant;
  /** clustermesh only: how the tc programs are attached (default auto: tcx on Linux 6.6+). */
  tcAttach?: TcAttachPreference;
  /** clustermesh only: who writes the VXLAN headers (default bpf: the programs; device: the kernel's VXLAN device). */
  tunnelEncap?: TunnelEncap;
}

export interface PeerBed {
  config: PeerBedConfig;
  /** The datapath variant the clustermesh row loaded, if any. */
  variant?: DatapathVariant;
  /** clustermesh rows: who writes the VXLAN headers (bpf: the programs; device: the VXLAN device). */
  tunnelEncap?: TunnelEncap;
  topo: Topology;
  /** The pod that sends (cluster1, node2) and the pod that serves (cluster2, node2). */
  client: PodInfo;
  server: PodInfo;
  /** The gateway nodes (node1 of each cluster) of the gateway and openvpn rows. */
  gateways: NodeInfo[];
  /** Device on the gateways that carries cross-cluster traffic, for checks: 'cmbcable' / 'cmbvpn'. */
  gatewayDevice?: string;
  /** Pids of the processes the row itself runs (the openvpn daemons), for CPU accounting. */
  pids: number[];
  /** Removes everything the row made: processes, pins, temp files, namespaces. Safe to call twice. */
  stop(): Promise<void>;
}

const TOPOLOGY_MODE: Record<PeerBedConfig, WiringMode> = {
  'kernel-vxlan': 'kernel-vxlan',
  limit: 'routing',
  clustermesh: 'clustermesh',
  'clustermesh-native': 'clustermesh',
  'kernel-vxlan-iptables': 'kernel-vxlan',
  gateway: 'kernel-vxlan',
  openvpn: 'routing',
};

/** Submariner's mark for traffic to remote clusters and its routing table. */
export const GATEWAY_MARK = '0xc0000';
export const GATEWAY_TABLE = 100;
export const CABLE_DEV = 'cmbcable';
export const VPN_DEV = 'cmbvpn';
const VPN_PORT = 1194;

/** All pod addresses of cluster c (10.(100+c).0.0/16: every node's pod CIDR). */
export const clusterPodRange = (c: number): string => `10.${100 + c}.0.0/16`;
const cableIP = (c: number): string => `10.249.${c}.1`;
const cableMac = (c: number): string => `02:cb:00:00:${c.toString(16).padStart(2, '0')}:01`;
const vpnIP = (c: number): string => `10.248.0.${c}`;

export async function createPeerBed(config: PeerBedConfig, opts: PeerBedOptions): Promise<PeerBed> {
  const known: readonly string[] = [...PEER_CONFIGS, ...EXTRA_PEER_CONFIGS];
  if (!known.includes(config)) throw new RangeError(`peers: unknown config '${String(config)}'; use one of ${known.join(', ')}`);
  if (opts.variant !== undefined && !(opts.variant in DATAPATH_VARIANTS)) throw new RangeError(`peers: unknown datapath variant '${String(opts.variant)}'; use one of ${Object.keys(DATAPATH_VARIANTS).join(', ')}`);
  if (opts.variant !== undefined && config !== 'clustermesh' && config !== 'clustermesh-native') throw new RangeError(`peers: a datapath variant ('${opts.variant}') applies to the clustermesh rows only, not '${config}'`);
  if ((opts.variant === 'peerdev' || opts.variant === 'bare') && config === 'clustermesh-native') throw new RangeError(`peers: the '${opts.variant}' variant changes the tunnel, which native routing does not use; use 'lean'`);
  const objectsDir = opts.variant === undefined ? undefined : variantObjects(opts.variant);
  const routing = config === 'clustermesh-native' ? 'native' : 'tunnel';
  const topo = await createTopology({ clusters: 2, nodesPerCluster: 2, podsPerNode: 1, mode: TOPOLOGY_MODE[config], prefix: opts.prefix, routing });
  const cleanups: Array<() => Promise<void>> = [];
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    const errors: unknown[] = [];
    for (const c of cleanups.reverse()) await c().catch((e: unknown) => errors.push(e));
    await destroyTopology(topo).catch((e: unknown) => errors.push(e));
    if (errors.length) throw new AggregateError(errors, `peers: cleaning up the '${config}' row failed`);
  };
  try {
    const node = (c: number, n: number): NodeInfo => topo.nodes.find((x) => x.cluster === c && x.index === n)!;
    const podOn = (nd: NodeInfo): PodInfo => topo.pods.find((p) => p.node === nd)!;
    const bed: PeerBed = { config, topo, client: podOn(node(1, 2)), server: podOn(node(2, 2)), gateways: [node(1, 1), node(2, 1)], pids: [], stop, ...(opts.variant ? { variant: opts.variant } : {}), ...(config === 'clustermesh' || config === 'clustermesh-native' ? { tunnelEncap: opts.tunnelEncap ?? DEFAULT_TUNNEL_ENCAP } : {}) };
    switch (config) {
      case 'limit':
      case 'kernel-vxlan':
        break;
      case 'clustermesh':
      case 'clustermesh-native': {
        const dp = await startClustermeshDatapath(topo, { ...(objectsDir ? { objectsDir } : {}), ...(opts.tcAttach ? { tcAttach: opts.tcAttach } : {}), ...(opts.tunnelEncap ? { tunnelEncap: opts.tunnelEncap } : {}) });
        cleanups.push(() => dp.stop());
        writeNoServicesHint(dp);
        if (opts.policy ?? true) allowByPolicyMaps(topo, dp, opts.allowPorts);
        if (opts.variant === 'peerdev' || opts.variant === 'bare') await wirePeerDevices(topo, dp);
        break;
      }
      case 'kernel-vxlan-iptables':
        for (const nd of topo.nodes) await runIn(nd.netns, ['iptables-restore'], { input: kubeProxyRules(topo, nd, opts.services ?? 100, opts.allowPorts) });
        break;
      case 'gateway':
        await wireGateways(topo, bed.gateways);
        bed.gatewayDevice = CABLE_DEV;
        break;
      case 'openvpn': {
        const work = mkdtempSync(join(tmpdir(), `${opts.prefix}-ovpn-`));
        cleanups.push(async () => rmSync(work, { recursive: true, force: true }));
        const procs = await startOpenvpn(topo, bed.gateways, work);
        cleanups.push(async () => {
          for (const p of procs) await stopChild(p);
        });
        bed.gatewayDevice = VPN_DEV;
        bed.pids = procs.flatMap((p) => (p.pid === undefined ? [] : [p.pid]));
        break;
      }
    }
    return bed;
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
}

/** The objects of a measurement variant, built (incrementally) by `make -C bpf variants`. */
function variantObjects(variant: DatapathVariant): string {
  const bpf = resolve(import.meta.dirname, '..', '..', 'bpf');
  execFileSync('make', ['-s', '-C', bpf, 'variants'], { stdio: ['ignore', 'ignore', 'inherit'] });
  const dir = join(bpf, 'build', 'variants', variant);
  for (const f of ['lxc.bpf.o', 'overlay.bpf.o']) if (!existsSync(join(dir, f))) throw new Error(`peers: ${join(dir, f)} missing after 'make -C bpf variants' (is '${variant}' in VARIANTS of bpf/Makefile?)`);
  return dir;
}

/**
 * The peerdev variant's devices: on every node, one VXLAN device per other
 * node that is not external: VNI = the identity of the node's one pod, the
 * other node as its only destination (the all-zeros FDB entry, on the tunnel
 * port; the device itself listens on a port of its own, since the node's
 * external device has the tunnel port and a VNI may exist once per port), written into cm_variant_peer_dev for
 * from_container. The receiving node's external device and from_overlay take
 * them as any tunnel packet. Removed with the namespaces.
 */
async function wirePeerDevices(topo: Topology, dp: LabDatapath): Promise<void> {
  for (const [i, nd] of topo.nodes.entries()) {
    const pods = topo.pods.filter((p) => p.node === nd);
    if (pods.length !== 1) throw new Error(`peers: the peer-device variant needs exactly one pod per node (the device's VNI is that pod's identity); ${nd.netns} has ${pods.length}`);
    const vni = labPodIdentity(topo, pods[0]!);
    const map = BpfMap.openPinned(join(dp.pinDirs[i]!, PEER_DEV_MAP));
    try {
      for (const [k, far] of topo.nodes.filter((x) => x !== nd).entries()) {
        const dev = `${PEER_DEV_PREFIX}${k}`;
        await ipBatch(nd.netns, [
          `link add ${dev} type vxlan id ${vni} dstport ${PEER_DEV_LISTEN_PORT + k} local ${nd.underlayIP} dev ${nd.underlayDev} nolearning ttl 64 df set`,
          `link set ${dev} mtu ${topo.spec.underlayMtu - 50} up`,
        ]);
        await run(['bridge', '-n', nd.netns, 'fdb', 'append', '00:00:00:00:00:00', 'dev', dev, 'dst', far.underlayIP, 'port', String(TUNNEL_PORT), 'self', 'permanent']);
        const { stdout } = await run(['ip', '-n', nd.netns, '-j', 'link', 'show', 'dev', dev]);
        const ifindex = (JSON.parse(stdout) as Array<{ ifindex: number }>)[0]!.ifindex;
        const key = Buffer.from(far.underlayIP.split('.').map(Number));
        const value = Buffer.alloc(8);
        value.writeUInt32LE(ifindex, 0);
        value.writeUInt32LE(vni, 4);
        map.update(key, value);
      }
    } finally {
      map.close();
    }
  }
}

/** cm_lb_hint as an agent whose cluster has no Services writes it (src/agent/services.ts): no address is a VIP or a backend. */
function writeNoServicesHint(dp: LabDatapath): void {
  for (const pinDir of dp.pinDirs) {
    const m = BpfMap.openPinned(join(pinDir, lbHint.MAP_NAME));
    try {
      lbHint.write(m, { vips: [], backends: [] });
    } finally {
      m.close();
    }
  }
}

/**
 * Policy on: every pod enforces ingress and egress; each pod may send TCP to
 * the given ports of every other pod and receive TCP on them from every
 * other pod, by identity. Replies pass through the policy conntrack.
 */
function allowByPolicyMaps(topo: Topology, dp: LabDatapath, ports: readonly number[]): void {
  topo.nodes.forEach((nd, i) => {
    const pinDir = dp.pinDirs[i]!;
    const rules = BpfMap.openPinned(join(pinDir, policy.MAP_NAME));
    const enforce = BpfMap.openPinned(join(pinDir, policy.ENFORCE_MAP_NAME));
    const rev = BpfMap.openPinned(join(pinDir, policy.REV_MAP_NAME));
    try {
      for (const pod of topo.pods.filter((p) => p.node === nd)) {
        const entries: Array<[policy.Key, policy.Value]> = [];
        for (const other of topo.pods.filter((p) => p !== pod)) {
          const identity = labPodIdentity(topo, other);
          for (const port of ports) {
            for (const direction of ['egress', 'ingress'] as const) {
              entries.push([{ endpointId: pod.index, direction, protocol: 6, identity, port, portPrefixLen: 16 }, { allow: true, deny: false }]);
            }
          }
        }
        policy.updateMany(rules, entries);
        policy.enforce.update(enforce, { endpointId: pod.index }, { active: true, ingress: true, egress: true });
      }
      policy.bumpRevision(rev);
    } finally {
      rules.close();
      enforce.close();
      rev.close();
    }
  });
}

/**
 * What kube-proxy in iptables mode writes on a node (src/lab/kube-proxy.ts:
 * `services` ClusterIP services, each with one endpoint in the other cluster),
 * plus a network policy in filter/FORWARD for this node's pods: new TCP
 * connections to or from them only to the allowed ports, everything else to
 * or from them dropped; established traffic is accepted by KUBE-FORWARD's
 * conntrack rule.
 */
export function kubeProxyRules(topo: Topology, nd: NodeInfo, services: number, ports: readonly number[]): string {
  const local = topo.pods.filter((p) => p.node === nd);
  const remote = topo.pods.filter((p) => p.node !== nd);
  const dports = ports.join(',');
  const policy: string[] = [];
  for (const pod of local) {
    for (const other of remote) {
      policy.push(`-A CMB-POLICY -s ${other.ip}/32 -d ${pod.ip}/32 -p tcp -m multiport --dports ${dports} -m comment --comment "ingress of ${pod.name}" -j ACCEPT`);
      policy.push(`-A CMB-POLICY -s ${pod.ip}/32 -d ${other.ip}/32 -p tcp -m multiport --dports ${dports} -m comment --comment "egress of ${pod.name}" -j ACCEPT`);
    }
    policy.push(`-A CMB-POLICY -d ${pod.ip}/32 -j DROP`, `-A CMB-POLICY -s ${pod.ip}/32 -j DROP`);
  }
  const svcs: KubeService[] = Array.from({ length: services }, (_, i) => ({
    namespace: 'default',
    name: `svc-${i}`,
    portName: 'http',
    vip: `10.96.${((i + 1) >> 8) & 0xff}.${(i + 1) & 0xff}`,
    port: 80,
    protocol: 'TCP',
    endpoints: [{ ip: (remote[i % remote.length] ?? local[0]!).ip, port: 8080 }],
  }));
  return kubeProxyTables(svcs, '10.100.0.0/14', { forwardChain: { name: 'CMB-POLICY', rules: policy } });
}

async function ipv4Of(netns: string, dev: string): Promise<string> {
  const { stdout } = await run(['ip', '-n', netns, '-j', '-4', 'addr', 'show', 'dev', dev]);
  const ip = (JSON.parse(stdout) as Array<{ addr_info: Array<{ local: string }> }>)[0]?.addr_info[0]?.local;
  if (!ip) throw new Error(`peers: ${dev} in ${netns} has no IPv4 address`);
  return ip;
}

/** Submariner-like gateways on a 'kernel-vxlan' topology (see the header). */
async function wireGateways(topo: Topology, gateways: NodeInfo[]): Promise<void> {
  const other = (c: number): number => (c === 1 ? 2 : 1);
  const gwOf = (c: number): NodeInfo => gateways.find((g) => g.cluster === c)!;
  for (const nd of topo.nodes) {
    const o = other(nd.cluster);
    const lines: string[] = [];
    // The kernel overlay's direct routes to the other cluster's nodes go: only the gateways join clusters.
    for (const far of topo.nodes.filter((x) => x.cluster === o)) lines.push(`route del ${far.podCIDR}`);
    if (nd === gwOf(nd.cluster)) {
      const far = gwOf(o);
      lines.push(
        `link add ${CABLE_DEV} type vxlan id 1000 dstport 4500 local ${nd.underlayIP} dev ${nd.underlayDev} nolearning`,
        `link set ${CABLE_DEV} address ${cableMac(nd.cluster)} mtu ${topo.spec.underlayMtu - 50}`,
        `addr add ${cableIP(nd.cluster)}/32 dev ${CABLE_DEV}`,
        `link set ${CABLE_DEV} up`,
        `neigh replace ${cableIP(o)} lladdr ${cableMac(o)} dev ${CABLE_DEV} nud permanent`,
        `route add ${clusterPodRange(o)} via ${cableIP(o)} dev ${CABLE_DEV} onlink table ${GATEWAY_TABLE}`,
      );
      await ipBatch(nd.netns, lines);
      await run(['bridge', '-n', nd.netns, 'fdb', 'append', cableMac(o), 'dev', CABLE_DEV, 'dst', far.underlayIP]);
    } else {
      const gwVxlanIP = await ipv4Of(gwOf(nd.cluster).netns, 'vx0');
      lines.push(`route add ${clusterPodRange(o)} via ${gwVxlanIP} dev vx0 onlink table ${GATEWAY_TABLE}`);
      await ipBatch(nd.netns, lines);
    }
    await ipBatch(nd.netns, [`rule add fwmark ${GATEWAY_MARK}/${GATEWAY_MARK} table ${GATEWAY_TABLE} pref 100`]);
    await runIn(nd.netns, ['iptables-restore'], {
      input: [
        '*mangle',
        ':PREROUTING ACCEPT [0:0]',
        ':INPUT ACCEPT [0:0]',
        ':FORWARD ACCEPT [0:0]',
        ':OUTPUT ACCEPT [0:0]',
        ':POSTROUTING ACCEPT [0:0]',
        ':SUBMARINER-PREROUTING - [0:0]',
        '-A PREROUTING -j SUBMARINER-PREROUTING',
        `-A SUBMARINER-PREROUTING -d ${clusterPodRange(o)} -m comment --comment "to the remote cluster" -j MARK --set-xmark ${GATEWAY_MARK}/${GATEWAY_MARK}`,
        'COMMIT',
        '*nat',
        ':PREROUTING ACCEPT [0:0]',
        ':INPUT ACCEPT [0:0]',
        ':OUTPUT ACCEPT [0:0]',
        ':POSTROUTING ACCEPT [0:0]',
        ':SUBMARINER-POSTROUTING - [0:0]',
        '-A POSTROUTING -j SUBMARINER-POSTROUTING',
        `-A SUBMARINER-POSTROUTING -d ${clusterPodRange(o)} -m comment --comment "no SNAT to the remote cluster" -j RETURN`,
        'COMMIT',
        '',
      ].join('\n'),
    });
  }
}

async function selfSigned(dir: string, name: string): Promise<{ cert: string; key: string; fingerprint: string }> {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  await run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', `/CN=${name}`]);
  const { stdout } = await run(['openssl', 'x509', '-in', cert, '-noout', '-fingerprint', '-sha256']);
  const fingerprint = stdout.trim().split('=')[1];
  if (!fingerprint) throw new Error(`peers: cannot read the fingerprint of ${cert}: ${stdout}`);
  return { cert, key, fingerprint };
}

/** OpenVPN between the gateways (cluster2's listens, cluster1's connects); routes through the tunnel. Returns the processes. */
async function startOpenvpn(topo: Topology, gateways: NodeInfo[], work: string): Promise<ChildProcess[]> {
  const [gw1, gw2] = gateways as [NodeInfo, NodeInfo];
  const ids = [await selfSigned(work, 'gw1'), await selfSigned(work, 'gw2')] as const;
  // Nothing crosses between clusters outside the tunnel: the router forgets the pod ranges.
  await ipBatch(topo.routerNetns, topo.nodes.map((n) => `route del ${n.podCIDR}`));
  const procs: ChildProcess[] = [];
  try {
    for (const [i, gw] of [gw1, gw2].entries()) {
      const me = ids[i]!;
      const peer = ids[1 - i]!;
      const c = gw.cluster;
      const o = c === 1 ? 2 : 1;
      const argv = [
        'openvpn', '--dev', VPN_DEV, '--dev-type', 'tun', '--proto', 'udp', '--lport', String(VPN_PORT),
        '--ifconfig', vpnIP(c), vpnIP(o), '--cert', me.cert, '--key', me.key, '--peer-fingerprint', peer.fingerprint,
        '--dh', 'none', '--data-ciphers', 'AES-256-GCM', '--sndbuf', '1048576', '--rcvbuf', '1048576', '--disable-dco', '--verb', '3', '--log', join(work, `${gw.netns}.log`),
        ...(gw === gw1 ? ['--tls-client', '--remote', gw2.underlayIP, String(VPN_PORT)] : ['--tls-server']),
      ];
      const p = spawnIn(gw.netns, argv);
      procs.push(p);
    }
    for (const gw of [gw1, gw2]) await waitForLog(join(work, `${gw.netns}.log`), 'Initialization Sequence Completed', procs);
    for (const nd of topo.nodes) {
      const o = nd.cluster === 1 ? 2 : 1;
      const gw = nd.cluster === 1 ? gw1 : gw2;
      await ipBatch(nd.netns, [nd === gw ? `route add ${clusterPodRange(o)} dev ${VPN_DEV}` : `route add ${clusterPodRange(o)} via ${gw.underlayIP}`]);
    }
    return procs;
  } catch (err) {
    for (const p of procs) await stopChild(p);
    throw err;
  }
}

async function waitForLog(file: string, text: string, procs: ChildProcess[], timeoutMs = 20_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  let seen = '';
  while (Date.now() < until) {
    try {
      seen = readFileSync(file, 'utf8');
    } catch {
      seen = '';
    }
    if (seen.includes(text)) return;
    const dead = procs.find((p) => p.exitCode !== null || p.signalCode !== null);
    if (dead) throw new Error(`peers: openvpn (pid ${dead.pid}) exited with ${dead.exitCode ?? dead.signalCode} before the tunnel was up; log ${file}:\n${seen.slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`peers: no '${text}' in ${file} after ${timeoutMs} ms:\n${seen.slice(-2000)}`);
}

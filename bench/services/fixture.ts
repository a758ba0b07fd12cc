// The service sets of bench/services and how each configuration is
// programmed with them: N services, one of them (the measured one, with two
// ports: the connection probe's and sockperf's) leads to the real server pod;
// the other N-1 ("fillers", one TCP port each) lead to backend addresses in
// the server's cluster that nobody uses. Ours: cm_services and friends of the
// client's node, written as the agent writes them (planFrontend ->
// serviceTables -> the map codecs, in batches). Baseline: kube-proxy's
// iptables rules in the client node's namespace, loaded with iptables-restore.
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { BpfMap } from '../../src/datapath/libbpf/map.ts';
import { BpfObject } from '../../src/datapath/libbpf/object.ts';
import { TcAction } from '../../src/datapath/libbpf/program.ts';
import * as datapathConfig from '../../src/datapath/maps/config.ts';
import * as endpoints from '../../src/datapath/maps/endpoints.ts';
import { ETH_P_IP, IPPROTO_TCP, ethernet, ipv4, tcp } from '../../src/datapath/test-packets.ts';
import * as backendSlots from '../../src/datapath/maps/backend-slots.ts';
import * as backends from '../../src/datapath/maps/backends.ts';
import * as revnat from '../../src/datapath/maps/revnat.ts';
import * as services from '../../src/datapath/maps/services.ts';
import { runIn } from '../../src/lab/exec.ts';
import { type FrontendPlan, type FrontendSpec, planFrontend, serviceTables } from '../../src/loadbalancer/index.ts';
import { median } from '../lib/results.ts';
import { type KubeService, kubeProxyRules } from '../../src/lab/kube-proxy.ts';

export const MEASURED_VIP = '10.96.0.10';
/** The measured service's ports: [frontend port, target port]. */
export const CRR_PORT = [80, 8080] as const;
export const RR_PORT = [11111, 11111] as const;

const ipOf = (x: number): string => [x >>> 24, (x >>> 16) & 255, (x >>> 8) & 255, x & 255].join('.');
/** Filler j's VIP: 10.96.1.0 + j (in Kubernetes' default 10.96.0.0/12 service range). */
export const fillerVip = (j: number): string => ipOf(0x0a600100 + j);
/** Filler j's backend: an address of cluster 2's pod range no pod has. */
const fillerBackend = (j: number): { ip: string; port: number } => ({
  ip: `10.102.${2 + (Math.floor(j / 250) % 250)}.${1 + (j % 250)}`,
  port: 8080 + Math.floor(j / 62_500),
});

export interface ServerPod {
  ip: string;
  cluster: number;
}

// ---- ours ------------------------------------------------------------------

function measuredSpecs(server: ServerPod): FrontendSpec[] {
  return [CRR_PORT, RR_PORT].map(([port, target], i) => ({
    vip: MEASURED_VIP,
    port,
    protocol: 'TCP',
    serviceId: 1 + i,
    backends: [{ id: 1 + i, ip: server.ip, port: target, clusterId: server.cluster, local: false, ready: true, terminating: false, clusterGone: false }],
  }));
}

function fillerSpec(j: number, cluster: number): FrontendSpec {
  const b = fillerBackend(j);
  return {
    vip: fillerVip(j),
    port: 80,
    protocol: 'TCP',
    serviceId: 3 + j,
    backends: [{ id: 3 + j, ip: b.ip, port: b.port, clusterId: cluster, local: false, ready: true, terminating: false, clusterGone: false }],
  };
}

export interface ServiceMaps {
  services: BpfMap;
  backends: BpfMap;
  slots: BpfMap;
  revnat: BpfMap;
  close(): void;
}

export function openServiceMaps(pinDir: string): ServiceMaps {
  const opened: BpfMap[] = [];
  const open = (name: string): BpfMap => {
    const m = BpfMap.openPinned(join(pinDir, name));
    opened.push(m);
    return m;
  };
  try {
    return {
      services: open(services.MAP_NAME),
      backends: open(backends.MAP_NAME),
      slots: open(backendSlots.MAP_NAME),
      revnat: open(revnat.MAP_NAME),
      close: () => opened.forEach((m) => m.close()),
    };
  } catch (err) {
    opened.forEach((m) => m.close());
    throw err;
  }
}

function writePlans(maps: ServiceMaps, plans: FrontendPlan[]): void {
  const t = serviceTables(plans);
  // What a new service points to exists before the service does.
  backends.updateMany(maps.backends, [...t.backends.values()].map((b) => [b.id, b.value] as const));
  backendSlots.updateMany(maps.slots, [...t.slots.values()].map((s) => [{ serviceId: s.serviceId, slot: s.slot }, s.backendId] as const));
  revnat.updateMany(maps.revnat, [...t.revnat.values()].map((r) => [r.id, r.value] as const));
  services.updateMany(maps.services, [...t.services.values()].map((s) => [s.key, s.value] as const));
}

/** The measured service's two frontends. */
export function loadMeasuredService(maps: ServiceMaps, server: ServerPod): void {
  writePlans(maps, measuredSpecs(server).map(planFrontend));
}

/** Writes fillers [from, to) (plan and write, as one reconciler pass). */
export function addFillers(maps: ServiceMaps, from: number, to: number, cluster: number): void {
  if (to <= from) return;
  const plans: FrontendPlan[] = [];
  for (let j = from; j < to; j++) plans.push(planFrontend(fillerSpec(j, cluster)));
  writePlans(maps, plans);
}

/** Deletes fillers [from, to): services first, so nothing points to a deleted backend. */
export function removeFillers(maps: ServiceMaps, from: number, to: number): void {
  if (to <= from) return;
  const ids = Array.from({ length: to - from }, (_, i) => 3 + from + i);
  services.removeMany(maps.services, ids.map((_, i) => ({ vip: fillerVip(from + i), port: 80, protocol: 'TCP' as const })));
  revnat.removeMany(maps.revnat, ids);
  backendSlots.removeMany(maps.slots, ids.map((serviceId) => ({ serviceId, slot: 0 })));
  backends.removeMany(maps.backends, ids);
}

/**
 * from_container's cost per packet of an established connection to the
 * measured VIP (service lookup, conntrack, translation, ipcache, tunnel key),
 * by BPF_PROG_TEST_RUN on a second instance of lxc.bpf.o that shares the
 * node's pinned maps, so it sees the node's N services. The probe's source is
 * an endpoint of its own (PROBE_SRC, ifindex 1 as test runs have) that no
 * real pod uses.
 */
export const PROBE_SRC = '10.101.1.250';

export interface ProgProbe {
  /**
   * Median of the kernel-measured run time over `runs` single runs of the same
   * packet (the first makes the conntrack entries). Single runs, because a
   * test run's `repeat` feeds the program the packet it has already
   * translated (and TTL-decremented), not the original.
   */
  nsPerPacket(runs: number): number;
  close(): void;
}

export function openProgProbe(pinDir: string, node: { underlayIP: string; cluster: number }): ProgProbe {
  const obj = BpfObject.open(resolve(import.meta.dirname, '..', '..', 'bpf', 'build', 'lxc.bpf.o'), { pinRoot: pinDir });
  try {
    // Any tunnel ifindex: a test run reports the redirect without doing it.
    datapathConfig.applyConfig(obj, { vxlanIfindex: 42, nodeIp: node.underlayIP, clusterId: node.cluster, redirectPeer: false, tunnelMtu: 0 });
    obj.load();
    endpoints.update(obj.map(endpoints.MAP_NAME), { ip: PROBE_SRC }, { ifindex: 1, identity: 0x10100 + 0xff, endpointId: 0xfff0, flags: 0, mac: '0a:00:00:00:0f:f0', nodeMac: '0e:00:00:00:0f:f0' });
  } catch (err) {
    obj.close();
    throw err;
  }
  const seg = tcp(PROBE_SRC, MEASURED_VIP, 45000, CRR_PORT[0], Buffer.alloc(64, 120), 0x18);
  const frame = ethernet('0e:00:00:00:0f:f0', '0a:00:00:00:0f:f0', ETH_P_IP, ipv4({ src: PROBE_SRC, dst: MEASURED_VIP, protocol: IPPROTO_TCP, payload: seg }));
  const prog = obj.program('from_container');
  return {
    nsPerPacket(runs) {
      prog.testRun({ data: frame }); // conntrack entries
      const ns: number[] = [];
      for (let i = 0; i < runs; i++) {
        const r = prog.testRun({ data: frame });
        if (r.retval !== TcAction.redirect) throw new Error(`bench/services: the probe packet got tc verdict ${r.retval} from from_container, not a redirect into the tunnel`);
        ns.push(r.durationNs);
      }
      return median(ns);
    },
    close() {
      try {
        endpoints.remove(obj.map(endpoints.MAP_NAME), { ip: PROBE_SRC });
      } finally {
        obj.close();
      }
    },
  };
}

// ---- kube-proxy's iptables ---------------------------------------------------

/**
 * The N services as kube-proxy sees them, in KUBE-SERVICES order: the
 * measured one (two rules) in the middle, i.e. after N/2 fillers, where a
 * randomly placed service lies on average (kube-proxy writes services in Go
 * map order, i.e. in no particular order).
 */
export function kubeServices(n: number, server: ServerPod): KubeService[] {
  const fill = (j: number): KubeService => ({ namespace: 'bench', name: `svc-${j}`, portName: 'http', vip: fillerVip(j), port: 80, protocol: 'TCP', endpoints: [fillerBackend(j)] });
  const measured = [CRR_PORT, RR_PORT].map(([port, target], i): KubeService => ({
    namespace: 'bench', name: 'measured', portName: i === 0 ? 'http' : 'sockperf', vip: MEASURED_VIP, port, protocol: 'TCP', endpoints: [{ ip: server.ip, port: target }],
  }));
  const fillers = Array.from({ length: n - 1 }, (_, j) => fill(j));
  const mid = Math.floor(fillers.length / 2);
  return [...fillers.slice(0, mid), ...measured, ...fillers.slice(mid)];
}

export type IptablesBackend = 'nft' | 'legacy';

/**
 * Replaces the nat and filter tables of a namespace with kube-proxy's rules
 * for N services; returns the seconds iptables-restore took (the rules' text
 * is made before the clock starts: kube-proxy's Go makes it in a fraction of that).
 */
export async function loadKubeProxyRules(netns: string, n: number, server: ServerPod, clusterCIDR: string, backend: IptablesBackend): Promise<number> {
  const input = kubeProxyRules(kubeServices(n, server), clusterCIDR);
  const t0 = performance.now();
  await runIn(netns, [`iptables-${backend}-restore`], { input, timeoutMs: 1_800_000 });
  return (performance.now() - t0) / 1000;
}

/** The number of rules in the namespace's nat KUBE-SERVICES chain (a check that a load took). */
export async function kubeServicesRuleCount(netns: string, backend: IptablesBackend): Promise<number> {
  const { stdout } = await runIn(netns, [`iptables-${backend}`, '-w', '-t', 'nat', '-S', 'KUBE-SERVICES'], { timeoutMs: 300_000 });
  return stdout.split('\n').filter((l) => l.startsWith('-A KUBE-SERVICES')).length;
}

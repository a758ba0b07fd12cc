// The lab's cloud load balancer (test-bed code): what a cloud provider's
// controller, or MetalLB in layer-2 mode, does for Services of type
// LoadBalancer, so that `clustermesh install --service-type LoadBalancer` and
// `clustermesh connect` find an address other clusters reach.
//
// For each LoadBalancer Service it takes an address from the cluster's pool
// (on the cluster's underlay segment, where the lab's router and the other
// clusters reach it), writes it to status.loadBalancer.ingress, and puts it
// as a /32 on the underlay device of a node that holds a ready backend: the
// node answers ARP for it. There the Service's ports are translated to the
// backend's (the EndpointSlice's port of the same name: the installed etcd
// listens on 2391 behind Service port 2379) by DNAT rules in that node's
// namespace, in a chain of its own (CM-LAB-LB), as the node's kube-proxy
// would for MetalLB. This is the lab's stand-in for a cloud's load balancer,
// never in clustermesh's own datapath. The backend must listen on the node's
// addresses, so only backends on the host network (endpoint address = the
// node's InternalIP, e.g. the clustermesh apiserver's etcd) are reachable
// this way: a Service whose ready backends are all pod-network pods gets its
// address but is placed on no node, and the controller logs why. When the
// backend moves, the address and its rules move with it and the neighbour
// entries for it are flushed in the router and the nodes, so the next packet
// finds the new node.
//
// It runs in the cluster's kube-apiserver process beside the other
// controllers (src/lab/kube-apiserver.ts) and, like them, reads what it needs
// fresh at each reconcile.
import { CoreV1Api, DiscoveryV1Api, PatchStrategy, setHeaderOptions, type KubeConfig, type V1EndpointSlice, type V1Node, type V1Service } from '@kubernetes/client-node';
import { z } from 'zod';
import { run } from './exec.ts';
import { apiCode, canonicalJson, keyOf, log, splitKey, watchKind, WorkQueue } from './controllers/runtime.ts';
import { SERVICE_NAME_LABEL } from './controllers/endpointslice.ts';

export const cloudLbConfigSchema = z.object({
  /** The lab's router namespace (its neighbour entries for a moved address are flushed). */
  routerNetns: z.string(),
  /** Addresses handed out, in order (on the cluster's underlay segment). */
  pool: z.array(z.string()).min(1),
  /** Node name -> its network namespace and underlay device. */
  nodes: z.record(z.string(), z.object({ netns: z.string(), device: z.string() })),
});
export type CloudLbConfig = z.infer<typeof cloudLbConfigSchema>;

/** The pool of the lab cluster with underlay 10.<index>.0.0/24: .200 .. .249 (nodes are .<n>, the router .254). */
export function labLbPool(index: number): string[] {
  return Array.from({ length: 50 }, (_, i) => `10.${index}.0.${200 + i}`);
}

/** What one LoadBalancer Service should get. */
export interface LbPlan {
  /** undefined: the pool is exhausted. */
  vip: string | undefined;
  /** The node the address goes on (undefined: no ready host-network backend). */
  node: string | undefined;
  /** Why it is not placed, when it is not. */
  problem?: string;
  /** Service port -> the backend's port (by port name, as the EndpointSlice gives it). */
  ports: Array<{ protocol: 'TCP' | 'UDP'; port: number; target: number }>;
}

/**
 * Pure: the address and node for `svc`. Keeps the address it already has
 * (status) when that is in the pool; else spec.loadBalancerIP when free;
 * else the first free one. Keeps the node it is on while that node still
 * holds a ready host-network backend; else the first such node by name.
 */
export function planLoadBalancer(
  svc: V1Service,
  slices: readonly V1EndpointSlice[],
  nodeIPs: ReadonlyMap<string, string>,
  pool: readonly string[],
  taken: ReadonlySet<string>,
  currentNode: string | undefined,
): LbPlan {
  const inPool = (ip: string | undefined): ip is string => ip !== undefined && pool.includes(ip);
  const had = svc.status?.loadBalancer?.ingress?.map((i) => i.ip).find(inPool);
  const asked = svc.spec?.loadBalancerIP;
  const vip = had ?? (inPool(asked) && !taken.has(asked) ? asked : pool.find((ip) => !taken.has(ip)));
  const candidates = new Set<string>();
  let podNetwork = 0;
  for (const s of slices) {
    for (const e of s.endpoints ?? []) {
      if (e.conditions?.ready === false || !e.nodeName) continue;
      if (e.addresses.includes(nodeIPs.get(e.nodeName) ?? '')) candidates.add(e.nodeName);
      else podNetwork++;
    }
  }
  const node = currentNode !== undefined && candidates.has(currentNode) ? currentNode : [...candidates].sort()[0];
  const problem =
    vip === undefined
      ? `the pool (${pool[0]} .. ${pool[pool.length - 1]}) is exhausted`
      : node !== undefined
        ? undefined
        : podNetwork > 0
          ? `its ${podNetwork} ready backend(s) are on the pod network; the lab's load balancer reaches host-network backends only`
          : 'no ready backend';
  const ports: LbPlan['ports'] = [];
  for (const p of svc.spec?.ports ?? []) {
    const protocol = (p.protocol ?? 'TCP') as string;
    if (protocol !== 'TCP' && protocol !== 'UDP') continue;
    const target = slices.flatMap((x) => x.ports ?? []).find((sp) => (sp.name ?? '') === (p.name ?? '') && (sp.protocol ?? 'TCP') === protocol)?.port;
    ports.push({ protocol, port: p.port, target: target ?? (typeof p.targetPort === 'number' ? p.targetPort : p.port) });
  }
  return { vip, node, ports, ...(problem ? { problem } : {}) };
}

/** The nat chain of a node's namespace holding the translations of the addresses it holds. */
export const LB_CHAIN = 'CM-LAB-LB';

interface Placement {
  vip: string;
  node: string | undefined;
  ports: LbPlan['ports'];
}

export interface RunningCloudLb {
  stop(): Promise<void>;
}

/** Starts the load balancer controller against the API of `kc`. */
export async function startCloudLb(kc: KubeConfig, cfg: CloudLbConfig): Promise<RunningCloudLb> {
  const core = kc.makeApiClient(CoreV1Api);
  const discovery = kc.makeApiClient(DiscoveryV1Api);
  /** Service key -> where its address is now. */
  const placed = new Map<string, Placement>();
  const lbKeys = new Set<string>();

  const ip = (netns: string, args: string[]) => run(['ip', '-n', netns, ...args]).catch(() => undefined);
  const flushNeighbours = async (vip: string) => {
    await Promise.all([cfg.routerNetns, ...Object.values(cfg.nodes).map((n) => n.netns)].map((ns) => ip(ns, ['neigh', 'flush', 'to', vip])));
  };
  /** The translation rules of every Service placed on `node`, as its CM-LAB-LB chain (rewritten whole). */
  const writeRules = async (node: string) => {
    const n = cfg.nodes[node];
    if (!n) return;
    const rules = [...placed.values()]
      .filter((p) => p.node === node)
      .flatMap((p) => p.ports.filter((x) => x.port !== x.target).map((x) => `-A ${LB_CHAIN} -d ${p.vip}/32 -p ${x.protocol.toLowerCase()} --dport ${x.port} -j REDIRECT --to-ports ${x.target}`));
    await run(['ip', 'netns', 'exec', n.netns, 'iptables-restore', '--noflush'], { input: ['*nat', `:${LB_CHAIN} - [0:0]`, ...rules, 'COMMIT', ''].join('\n') });
    for (const hook of ['PREROUTING', 'OUTPUT']) {
      const iptables = (op: string) => run(['ip', 'netns', 'exec', n.netns, 'iptables', '-t', 'nat', op, hook, '-j', LB_CHAIN]);
      if (!(await iptables('-C').then(() => true, () => false))) await iptables('-A');
    }
  };
  /** Puts `vip` on `node` only (undefined: on none), with the translation rules of both nodes rewritten. */
  const place = async (key: string, next: Placement | undefined) => {
    const was = placed.get(key);
    if (next) placed.set(key, next);
    else placed.delete(key);
    const vip = (next ?? was)!.vip;
    for (const [name, n] of Object.entries(cfg.nodes)) {
      if (name !== next?.node) await ip(n.netns, ['addr', 'del', `${vip}/32`, 'dev', n.device]);
    }
    const n = next?.node !== undefined ? cfg.nodes[next.node] : undefined;
    if (n) await run(['ip', '-n', n.netns, 'addr', 'replace', `${vip}/32`, 'dev', n.device]);
    for (const node of new Set([was?.node, next?.node])) if (node !== undefined) await writeRules(node);
    await flushNeighbours(vip);
  };

  const reconcile = async (key: string): Promise<void> => {
    const { namespace, name } = splitKey(key);
    let svc: V1Service | undefined;
    try {
      svc = await core.readNamespacedService({ namespace, name });
    } catch (err) {
      if (apiCode(err) !== 404) throw err;
    }
    const was = placed.get(key);
    if (!svc || svc.spec?.type !== 'LoadBalancer') {
      lbKeys.delete(key);
      if (was) {
        await place(key, undefined);
        log('load balancer address released', { service: key, address: was.vip });
      }
      return;
    }
    lbKeys.add(key);
    const [slices, nodes] = await Promise.all([
      discovery.listNamespacedEndpointSlice({ namespace, labelSelector: `${SERVICE_NAME_LABEL}=${name}` }),
      core.listNode(),
    ]);
    const nodeIPs = new Map(nodes.items.map((n: V1Node) => [n.metadata!.name!, n.status?.addresses?.find((a) => a.type === 'InternalIP')?.address ?? '']));
    const taken = new Set([...placed].filter(([k]) => k !== key).map(([, p]) => p.vip));
    const plan = planLoadBalancer(svc, slices.items, nodeIPs, cfg.pool, taken, was?.node);
    if (plan.vip === undefined) {
      log('no load balancer address', { service: key, problem: plan.problem });
      return;
    }
    const next: Placement = { vip: plan.vip, node: plan.node, ports: plan.ports };
    if (!was || canonicalJson(was) !== canonicalJson(next)) {
      if (was && was.vip !== plan.vip) await place(key, undefined);
      await place(key, next);
      log('load balancer address placed', { service: key, address: plan.vip, node: plan.node ?? null, ...(plan.problem ? { problem: plan.problem } : {}) });
    }
    const ingress = svc.status?.loadBalancer?.ingress ?? [];
    if (ingress.length !== 1 || ingress[0]!.ip !== plan.vip) {
      await core.patchNamespacedServiceStatus(
        { namespace, name, body: { status: { loadBalancer: { ingress: [{ ip: plan.vip, ipMode: 'VIP' }] } } } },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
    }
  };

  const queue = new WorkQueue('cloud-lb', reconcile);
  // Addresses a previous run handed out stay theirs (status); placements are redone by the first reconciles.
  for (const s of (await core.listServiceForAllNamespaces()).items) {
    const vip = s.status?.loadBalancer?.ingress?.map((i) => i.ip).find((x) => x !== undefined && cfg.pool.includes(x));
    if (s.spec?.type === 'LoadBalancer' && vip) placed.set(keyOf(s.metadata?.namespace, s.metadata?.name), { vip, node: undefined, ports: [] });
  }
  const informers = [
    watchKind<V1Service>(kc, '/api/v1/services', () => core.listServiceForAllNamespaces(), (s) => queue.add(keyOf(s.metadata?.namespace, s.metadata?.name))),
    watchKind<V1EndpointSlice>(kc, '/apis/discovery.k8s.io/v1/endpointslices', () => discovery.listEndpointSliceForAllNamespaces(), (s) => {
      const svc = s.metadata?.labels?.[SERVICE_NAME_LABEL];
      if (svc) queue.add(keyOf(s.metadata?.namespace, svc));
    }),
  ];
  await Promise.all(informers.map((i) => i.start()));
  const resync = setInterval(() => {
    for (const k of lbKeys) queue.add(k);
  }, 30_000);
  resync.unref();
  log('cloud load balancer started', { pool: `${cfg.pool[0]} .. ${cfg.pool[cfg.pool.length - 1]}`, nodes: Object.keys(cfg.nodes).length });
  return {
    stop: async () => {
      clearInterval(resync);
      await Promise.all(informers.map((i) => i.stop().catch(() => undefined)));
      await queue.stop();
    },
  };
}

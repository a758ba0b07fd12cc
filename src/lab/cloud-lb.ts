// The lab's cloud load balancer (test-bed code): what a cloud provider's
// controller, or MetalLB in layer-2 mode, does for Services of type
// LoadBalancer, so that `clustermesh install --service-type LoadBalancer` and
// `clustermesh connect` find an address other clusters reach.
//
// For each LoadBalancer Service it takes an address from the cluster's pool
// (on the cluster's underlay segment, where the lab's router and the other
// clusters reach it), writes it to status.loadBalancer.ingress, and puts it
// as a /32 on the underlay device of a node that holds a ready backend: the
// node answers ARP for it and the backend, which listens on the node's
// addresses, accepts the connection. No address translation anywhere, so
// only backends on the host network (endpoint address = the node's
// InternalIP, e.g. the clustermesh apiserver's etcd) can be reached this way:
// a Service whose ready backends are all pod-network pods gets its address
// but is placed on no node, and the controller logs why. When the backend
// moves, the address moves with it and the neighbour entries for it are
// flushed in the router and the nodes, so the next packet finds the new node.
//
// It runs in the cluster's kube-apiserver process beside the other
// controllers (src/lab/kube-apiserver.ts) and, like them, reads what it needs
// fresh at each reconcile.
import { CoreV1Api, DiscoveryV1Api, PatchStrategy, setHeaderOptions, type KubeConfig, type V1EndpointSlice, type V1Node, type V1Service } from '@kubernetes/client-node';
import { z } from 'zod';
import { run } from './exec.ts';
import { apiCode, keyOf, log, splitKey, watchKind, WorkQueue } from './controllers/runtime.ts';
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
  return { vip, node, ...(problem ? { problem } : {}) };
}

export interface RunningCloudLb {
  stop(): Promise<void>;
}

/** Starts the load balancer controller against the API of `kc`. */
export async function startCloudLb(kc: KubeConfig, cfg: CloudLbConfig): Promise<RunningCloudLb> {
  const core = kc.makeApiClient(CoreV1Api);
  const discovery = kc.makeApiClient(DiscoveryV1Api);
  /** Service key -> where its address is now. */
  const placed = new Map<string, { vip: string; node: string | undefined }>();
  const lbKeys = new Set<string>();

  const ip = (netns: string, args: string[]) => run(['ip', '-n', netns, ...args]).catch(() => undefined);
  const flushNeighbours = async (vip: string) => {
    await Promise.all([cfg.routerNetns, ...Object.values(cfg.nodes).map((n) => n.netns)].map((ns) => ip(ns, ['neigh', 'flush', 'to', vip])));
  };
  /** Puts `vip` on `node` only (undefined: on none). */
  const place = async (vip: string, node: string | undefined) => {
    for (const [name, n] of Object.entries(cfg.nodes)) {
      if (name !== node) await ip(n.netns, ['addr', 'del', `${vip}/32`, 'dev', n.device]);
    }
    const n = node !== undefined ? cfg.nodes[node] : undefined;
    if (n) await run(['ip', '-n', n.netns, 'addr', 'replace', `${vip}/32`, 'dev', n.device]);
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
        await place(was.vip, undefined);
        placed.delete(key);
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
    if (was?.vip !== plan.vip || was.node !== plan.node) {
      if (was && was.vip !== plan.vip) await place(was.vip, undefined);
      await place(plan.vip, plan.node);
      placed.set(key, { vip: plan.vip, node: plan.node });
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
    if (s.spec?.type === 'LoadBalancer' && vip) placed.set(keyOf(s.metadata?.namespace, s.metadata?.name), { vip, node: '(unknown)' });
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

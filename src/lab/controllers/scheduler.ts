// The lab's scheduler (what kube-scheduler does, for the lab's needs): a pod
// without spec.nodeName (and with the default scheduler, or none named) is
// bound to a Ready, schedulable node whose labels match its nodeSelector: the
// one running the fewest pods (ties: the first by name). The bind is a POST
// of a v1 Binding to the pod's `binding` subresource, as kube-scheduler does.
// No node fits: the reconcile fails and the work queue retries with backoff;
// every Node event queues the pending pods again.
import type { CoreV1Api, V1Node, V1Pod } from '@kubernetes/client-node';
import { apiCode, log, splitKey } from './runtime.ts';

export const DEFAULT_SCHEDULER = 'default-scheduler';

export function isNodeReady(n: V1Node): boolean {
  return n.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true && n.spec?.unschedulable !== true;
}

/** Does the pod wait for this scheduler? */
export function needsScheduling(p: V1Pod): boolean {
  const s = p.spec?.schedulerName;
  return !p.spec?.nodeName && p.metadata?.deletionTimestamp === undefined && (s === undefined || s === '' || s === DEFAULT_SCHEDULER);
}

/** The node for `pod`: Ready, matching its nodeSelector, fewest pods (not finished ones) of all; undefined when none fits. */
export function pickNode(pod: V1Pod, nodes: V1Node[], pods: V1Pod[]): string | undefined {
  const selector = pod.spec?.nodeSelector ?? {};
  const fits = nodes.filter((n) => isNodeReady(n) && Object.entries(selector).every(([k, v]) => n.metadata?.labels?.[k] === v));
  const load = new Map<string, number>();
  for (const p of pods) {
    const node = p.spec?.nodeName;
    if (node && p.status?.phase !== 'Succeeded' && p.status?.phase !== 'Failed') load.set(node, (load.get(node) ?? 0) + 1);
  }
  const names = fits.map((n) => n.metadata!.name!).sort();
  let best: string | undefined;
  for (const n of names) if (best === undefined || (load.get(n) ?? 0) < (load.get(best) ?? 0)) best = n;
  return best;
}

export class SchedulerController {
  constructor(private readonly core: CoreV1Api) {}

  async reconcile(key: string): Promise<void> {
    const { namespace, name } = splitKey(key);
    let pod: V1Pod;
    try {
      pod = await this.core.readNamespacedPod({ namespace, name });
    } catch (err) {
      if (apiCode(err) === 404) return;
      throw err;
    }
    if (!needsScheduling(pod)) return;
    const [nodes, pods] = await Promise.all([this.core.listNode(), this.core.listPodForAllNamespaces()]);
    const node = pickNode(pod, nodes.items, pods.items);
    if (node === undefined) throw new Error(`0/${nodes.items.length} nodes are available for pod ${key} (none Ready and matching its nodeSelector)`);
    try {
      await this.core.createNamespacedPodBinding({
        namespace,
        name,
        body: { apiVersion: 'v1', kind: 'Binding', metadata: { name, namespace }, target: { apiVersion: 'v1', kind: 'Node', name: node } },
      });
    } catch (err) {
      // Deleted meanwhile, or bound by someone else: nothing to do.
      if (apiCode(err) === 404 || apiCode(err) === 409) return;
      throw err;
    }
    log('scheduler: bound', { pod: key, node });
  }
}

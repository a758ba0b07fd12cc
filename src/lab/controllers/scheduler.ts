// The lab's scheduler (what kube-scheduler does, for the lab's needs): a pod
// without spec.nodeName (and with the default scheduler, or none named) is
// bound to a Ready, schedulable node whose labels match its nodeSelector: the
// one running the fewest pods (ties: the first by name). The bind is a POST
// of a v1 Binding to the pod's `binding` subresource, as kube-scheduler does.
// One pass binds every waiting pod (scheduleAll). No node fits: the pass
// fails and the work queue retries with backoff; every Node event and every
// new unbound pod queues a pass again.
import type { CoreV1Api, V1Node, V1Pod } from '@kubernetes/client-node';
import { apiCode, apiMessage, keyOf, log, splitKey } from './runtime.ts';

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

/**
 * Bindings sent at once by one scheduling pass: as many as the Deployment controller creates at
 * once (kube-scheduler binds each pod on its own goroutine). With 8, a Deployment of 100 pods on a
 * loaded lab waited 13 round trips of the API for its last binding.
 */
const BIND_CONCURRENCY = 32;

export class SchedulerController {
  constructor(private readonly core: CoreV1Api) {}

  /**
   * One pass over every pod waiting for a node: nodes and pods listed once,
   * each pod given the node with the fewest pods counting the bindings made
   * earlier in this pass, the bindings sent a few at a time. A pass per pod
   * (a list of every pod for each) made scheduling quadratic: 200 pods took
   * a second each. Throws when a pod fits no node or a binding failed (the
   * work queue runs the pass again with backoff); the other pods are bound.
   */
  async scheduleAll(): Promise<void> {
    const [nodes, all] = await Promise.all([this.core.listNode(), this.core.listPodForAllNamespaces()]);
    const pods = [...all.items];
    const waiting = pods.filter(needsScheduling).sort((a, b) => String(a.metadata?.creationTimestamp ?? '').localeCompare(String(b.metadata?.creationTimestamp ?? '')));
    const bindings: Array<{ namespace: string; name: string; node: string }> = [];
    const errors: string[] = [];
    for (const pod of waiting) {
      const key = keyOf(pod.metadata?.namespace, pod.metadata?.name);
      const node = pickNode(pod, nodes.items, pods);
      if (node === undefined) {
        errors.push(`0/${nodes.items.length} nodes are available for pod ${key} (none Ready and matching its nodeSelector)`);
        continue;
      }
      pods.push({ ...pod, spec: { ...pod.spec!, nodeName: node } });
      bindings.push({ ...splitKey(key), node });
    }
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < bindings.length) {
        const { namespace, name, node } = bindings[next++]!;
        try {
          await this.core.createNamespacedPodBinding({
            namespace,
            name,
            body: { apiVersion: 'v1', kind: 'Binding', metadata: { name, namespace }, target: { apiVersion: 'v1', kind: 'Node', name: node } },
          });
          log('scheduler: bound', { pod: `${namespace}/${name}`, node });
        } catch (err) {
          // Deleted meanwhile, or bound by someone else: nothing to do.
          if (apiCode(err) !== 404 && apiCode(err) !== 409) errors.push(`binding ${namespace}/${name} to ${node}: ${apiMessage(err)}`);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(BIND_CONCURRENCY, bindings.length) }, worker));
    if (errors.length) throw new Error(errors.length === 1 ? errors[0] : `${errors.length} pods not bound: ${errors.slice(0, 3).join('; ')}${errors.length > 3 ? '; …' : ''}`);
  }
}

// The lab's DaemonSet controller: what kube-controller-manager's daemonset
// controller does, for the lab's needs.
//
// - One pod per Node whose labels match spec.template.spec.nodeSelector,
//   bound directly (spec.nodeName set, no scheduler), owned by the DaemonSet
//   (controller ownerReference), named <daemonset>-<5 random>, labelled with
//   the template's labels and controller-revision-hash (a hash of the
//   template; no ControllerRevision objects). Taints and tolerations are not
//   looked at (the lab's nodes have none).
// - A pod that is Failed or Succeeded, or deleted, is replaced; a pod on a
//   node that no longer matches (or is gone) is deleted; a node whose old pod
//   is still terminating gets its new one only once the old is gone.
// - Template change (updateStrategy RollingUpdate, the default): old pods are
//   deleted while at most maxUnavailable (default 1; a percentage of the
//   desired number, rounded up) nodes lack a ready pod; not-ready old pods go
//   at once. OnDelete: old pods stay until deleted.
// - status: desiredNumberScheduled, currentNumberScheduled, numberReady,
//   updatedNumberScheduled, numberAvailable (= ready; minReadySeconds is not
//   honoured), numberUnavailable, numberMisscheduled, observedGeneration, so
//   `kubectl rollout status daemonset/X` ends as on a real cluster.
import type { AppsV1Api, CoreV1Api, V1DaemonSet, V1Node, V1Pod } from '@kubernetes/client-node';
import { isPodReady, isTerminal, resolveIntOrPercent } from './deployment.ts';
import { apiCode, canonicalJson, log, ownedPods, randomSuffix, safeHash, selectorString, splitKey } from './runtime.ts';

export const CONTROLLER_REVISION_HASH = 'controller-revision-hash';

export function daemonSetHash(ds: V1DaemonSet): string {
  return safeHash(canonicalJson(ds.spec?.template ?? {}));
}

/** Does the node match the template's nodeSelector? */
export function nodeMatches(ds: V1DaemonSet, node: V1Node): boolean {
  const sel = ds.spec?.template?.spec?.nodeSelector ?? {};
  return Object.entries(sel).every(([k, v]) => node.metadata?.labels?.[k] === v);
}

/** maxUnavailable of a DaemonSet: an int, or a percentage of `desired` rounded up (at least 1 when desired > 0). */
export function daemonSetMaxUnavailable(v: number | string | undefined, desired: number): number {
  let n: number;
  try {
    n = resolveIntOrPercent(v, desired, 1, 'up');
  } catch (err) {
    throw new Error(`maxUnavailable ${(err as Error).message}`);
  }
  return desired > 0 ? Math.max(1, n) : n;
}

export class DaemonSetController {
  constructor(
    private readonly apps: AppsV1Api,
    private readonly core: CoreV1Api,
  ) {}

  async reconcile(key: string): Promise<void> {
    const { namespace, name } = splitKey(key);
    let ds: V1DaemonSet;
    try {
      ds = await this.apps.readNamespacedDaemonSet({ name, namespace });
    } catch (err) {
      if (apiCode(err) === 404) return; // its pods go with it (garbage collection)
      throw err;
    }
    if (ds.metadata?.deletionTimestamp) return;
    const uid = ds.metadata!.uid!;
    const hash = daemonSetHash(ds);
    const selector = selectorString(ds.spec?.selector);
    if (selector === undefined) throw new Error(`daemonset ${key}: spec.selector selects nothing`);
    const nodes = (await this.core.listNode()).items.filter((n) => !n.metadata?.deletionTimestamp);
    const eligible = new Set(nodes.filter((n) => nodeMatches(ds, n)).map((n) => n.metadata!.name!));
    const owned = await ownedPods(this.core, namespace, selector, uid);

    const toDelete: V1Pod[] = [];
    const terminating = new Set<string>();
    const byNode = new Map<string, V1Pod[]>();
    let misscheduled = 0;
    for (const p of owned) {
      const node = p.spec?.nodeName ?? '';
      if (p.metadata?.deletionTimestamp) {
        terminating.add(node);
        continue;
      }
      if (isTerminal(p)) {
        toDelete.push(p);
        terminating.add(node);
        continue;
      }
      if (!eligible.has(node)) {
        misscheduled++;
        toDelete.push(p);
        continue;
      }
      const list = byNode.get(node) ?? [];
      list.push(p);
      byNode.set(node, list);
    }
    // One pod per node: keep a current one (ready first), else the oldest.
    for (const [node, list] of byNode) {
      if (list.length < 2) continue;
      list.sort((a, b) => rank(b, hash) - rank(a, hash) || String(a.metadata?.creationTimestamp ?? '').localeCompare(String(b.metadata?.creationTimestamp ?? '')));
      toDelete.push(...list.splice(1));
      byNode.set(node, list);
    }

    const created: V1Pod[] = [];
    for (const node of eligible) {
      if (byNode.has(node) || terminating.has(node)) continue;
      created.push(await this.createPod(ds, node, hash));
    }

    // Rolling update: old pods go while few enough nodes lack a ready pod.
    const desired = eligible.size;
    if ((ds.spec?.updateStrategy?.type ?? 'RollingUpdate') === 'RollingUpdate') {
      const maxUnavailable = daemonSetMaxUnavailable(ds.spec?.updateStrategy?.rollingUpdate?.maxUnavailable, desired);
      let unavailable = [...eligible].filter((n) => !(byNode.get(n)?.some(isPodReady) ?? false)).length;
      const old = [...byNode.values()].flat().filter((p) => p.metadata?.labels?.[CONTROLLER_REVISION_HASH] !== hash);
      for (const p of old.filter((x) => !isPodReady(x))) toDelete.push(p);
      for (const p of old.filter(isPodReady)) {
        if (unavailable >= maxUnavailable) break;
        toDelete.push(p);
        unavailable++;
      }
    }
    for (const p of toDelete) {
      try {
        await this.core.deleteNamespacedPod({ name: p.metadata!.name!, namespace });
      } catch (err) {
        if (apiCode(err) !== 404) throw err;
      }
    }
    if (created.length || toDelete.length) {
      log('daemonset: pods changed', { daemonset: key, created: created.map((p) => `${p.metadata?.name}@${p.spec?.nodeName}`), deleted: toDelete.map((p) => p.metadata?.name) });
    }
    const gone = new Set(toDelete.map((p) => p.metadata?.uid));
    const live = [...byNode.values()].flat().filter((p) => !gone.has(p.metadata?.uid));
    await this.writeStatus(ds, desired, [...live, ...created], misscheduled, hash);
  }

  private async createPod(ds: V1DaemonSet, node: string, hash: string): Promise<V1Pod> {
    const namespace = ds.metadata!.namespace!;
    const t = ds.spec!.template;
    const body: V1Pod = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name: `${ds.metadata!.name}-${randomSuffix()}`,
        namespace,
        labels: { ...(t.metadata?.labels ?? {}), [CONTROLLER_REVISION_HASH]: hash },
        ...(t.metadata?.annotations ? { annotations: t.metadata.annotations } : {}),
        ownerReferences: [{ apiVersion: 'apps/v1', kind: 'DaemonSet', name: ds.metadata!.name!, uid: ds.metadata!.uid!, controller: true, blockOwnerDeletion: true }],
      },
      spec: { ...t.spec!, nodeName: node },
    };
    return await this.core.createNamespacedPod({ namespace, body });
  }

  private async writeStatus(ds: V1DaemonSet, desired: number, pods: V1Pod[], misscheduled: number, hash: string): Promise<void> {
    const ready = pods.filter(isPodReady).length;
    const status = {
      observedGeneration: ds.metadata?.generation ?? 1,
      desiredNumberScheduled: desired,
      currentNumberScheduled: pods.length,
      numberMisscheduled: misscheduled,
      numberReady: ready,
      updatedNumberScheduled: pods.filter((p) => p.metadata?.labels?.[CONTROLLER_REVISION_HASH] === hash).length,
      numberAvailable: ready,
      ...(desired - ready > 0 ? { numberUnavailable: desired - ready } : {}),
    };
    if (canonicalJson({ ...(ds.status ?? {}), conditions: undefined }) === canonicalJson(status)) return;
    await this.apps.replaceNamespacedDaemonSetStatus({ name: ds.metadata!.name!, namespace: ds.metadata!.namespace!, body: { ...ds, status } });
  }

  /** Keys to look at again when a pod changes: its controlling DaemonSet. */
  static keysOfPod(p: V1Pod): string[] {
    const ref = p.metadata?.ownerReferences?.find((r) => r.controller === true && r.kind === 'DaemonSet' && r.apiVersion === 'apps/v1');
    return ref ? [`${p.metadata?.namespace ?? ''}/${ref.name}`] : [];
  }
}

/** Which of a node's pods to keep: current and ready, current, ready old, old. */
function rank(p: V1Pod, hash: string): number {
  return (p.metadata?.labels?.[CONTROLLER_REVISION_HASH] === hash ? 2 : 0) + (isPodReady(p) ? 1 : 0);
}

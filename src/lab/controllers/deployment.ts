// The lab's Deployment controller: what kube-controller-manager's deployment
// and replicaset controllers do together, for the lab's needs, without the
// ReplicaSet in between. A Deployment owns its Pods directly (controller
// ownerReference), each named <deployment>-<pod-template-hash>-<5 random>,
// labelled with the template's labels and pod-template-hash.
//
// - Scale: pods of the current template are created up to spec.replicas (in
//   batches of 1, 2, 4, … at once: slowStart) and removed beyond it (not-ready
//   ones first, then the newest).
// - Rollout (template changed): pods of the current template are created at
//   once (unbounded surge); old pods go as new ones become ready, keeping
//   replicas - maxUnavailable ready (strategy Recreate: old pods go at once).
// - Failed or succeeded pods are deleted (and so replaced).
// - status: replicas, updatedReplicas, readyReplicas, availableReplicas
//   (= ready; minReadySeconds is not honoured), unavailableReplicas,
//   observedGeneration and the Available and Progressing conditions, so
//   `kubectl rollout status` and `kubectl scale` behave as on a real cluster.
// Deleting the Deployment deletes its pods through the API server's garbage
// collector (ownerReferences).
import type { AppsV1Api, CoreV1Api, V1Deployment, V1DeploymentCondition, V1Pod } from '@kubernetes/client-node';
import { apiCode, canonicalJson, log, ownedPods, randomSuffix, safeHash, selectorString, splitKey } from './runtime.ts';

export const POD_TEMPLATE_HASH = 'pod-template-hash';

export function podTemplateHash(d: V1Deployment): string {
  return safeHash(canonicalJson(d.spec?.template ?? {}));
}

export function isPodReady(p: V1Pod): boolean {
  return p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true;
}

export const isTerminal = (p: V1Pod): boolean => p.status?.phase === 'Succeeded' || p.status?.phase === 'Failed';

/** An int-or-percent of `total`: a percentage rounded down (a Deployment's maxUnavailable) or up (a DaemonSet's). */
export function resolveIntOrPercent(v: number | string | undefined, total: number, dflt: string | number, round: 'down' | 'up' = 'down'): number {
  const x = v ?? dflt;
  if (typeof x === 'number') return x;
  const m = /^(\d+)%$/.exec(x);
  if (m) return (round === 'up' ? Math.ceil : Math.floor)((Number(m[1]) * total) / 100);
  if (/^\d+$/.test(x)) return Number(x);
  throw new Error(`'${x}' is neither an integer nor a percentage`);
}

/** Pods to delete first: not ready before ready, then the newest. */
function deletionOrder(a: V1Pod, b: V1Pod): number {
  const ra = isPodReady(a) ? 1 : 0;
  const rb = isPodReady(b) ? 1 : 0;
  if (ra !== rb) return ra - rb;
  return String(b.metadata?.creationTimestamp ?? '').localeCompare(String(a.metadata?.creationTimestamp ?? ''));
}

/** Pod creations sent at once, at most (a batch of slowStart). */
const MAX_CREATE_BATCH = 32;

/**
 * `count` calls of `create` in batches of 1, 2, 4, … (at most
 * MAX_CREATE_BATCH), each batch at once, as kube-controller-manager's
 * replicaset controller does: one pod at a time made 100 replicas take 40 s,
 * and a create that fails (a quota, a bad template) fails in the first small
 * batch, not 100 times. A failure stops before the next batch and is thrown.
 */
export async function slowStart<T>(count: number, create: () => Promise<T>): Promise<T[]> {
  const done: T[] = [];
  for (let batch = 1; done.length < count; batch = Math.min(batch * 2, MAX_CREATE_BATCH)) {
    const settled = await Promise.allSettled(Array.from({ length: Math.min(batch, count - done.length) }, create));
    for (const r of settled) if (r.status === 'fulfilled') done.push(r.value);
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }
  return done;
}

export class DeploymentController {
  constructor(
    private readonly apps: AppsV1Api,
    private readonly core: CoreV1Api,
  ) {}

  async reconcile(key: string): Promise<void> {
    const { namespace, name } = splitKey(key);
    let d: V1Deployment;
    try {
      d = await this.apps.readNamespacedDeployment({ name, namespace });
    } catch (err) {
      if (apiCode(err) === 404) return; // its pods go with it (garbage collection)
      throw err;
    }
    if (d.metadata?.deletionTimestamp) return;
    const uid = d.metadata!.uid!;
    const replicas = d.spec?.replicas ?? 1;
    const hash = podTemplateHash(d);
    const selector = selectorString(d.spec?.selector);
    if (selector === undefined) throw new Error(`deployment ${key}: spec.selector selects nothing`);

    const owned = await ownedPods(this.core, namespace, selector, uid);
    const live = owned.filter((p) => !p.metadata?.deletionTimestamp);
    const toDelete: V1Pod[] = live.filter(isTerminal);
    const active = live.filter((p) => !isTerminal(p));
    const current = active.filter((p) => p.metadata?.labels?.[POD_TEMPLATE_HASH] === hash).sort(deletionOrder);
    let old = active.filter((p) => p.metadata?.labels?.[POD_TEMPLATE_HASH] !== hash).sort(deletionOrder);

    // Scale the current template's pods to replicas.
    const created = await slowStart(replicas - current.length, () => this.createPod(d, hash));
    const excess = current.length > replicas ? current.splice(0, current.length - replicas) : [];
    toDelete.push(...excess);

    // Old pods go as the new ones become ready.
    const readyCurrent = current.filter(isPodReady).length;
    let keepOld = 0;
    if (d.spec?.strategy?.type !== 'Recreate') {
      const maxUnavailable = resolveIntOrPercent(d.spec?.strategy?.rollingUpdate?.maxUnavailable, replicas, '25%');
      keepOld = Math.max(0, replicas - maxUnavailable - readyCurrent);
    }
    // Keep the ready old pods (the end of the sorted list) up to keepOld.
    if (old.length > keepOld) {
      toDelete.push(...old.slice(0, old.length - keepOld));
      old = old.slice(old.length - keepOld);
    }
    for (const p of toDelete) {
      try {
        await this.core.deleteNamespacedPod({ name: p.metadata!.name!, namespace });
      } catch (err) {
        if (apiCode(err) !== 404) throw err;
      }
    }
    if (created.length || toDelete.length) {
      log('deployment: pods changed', { deployment: key, created: created.map((p) => p.metadata?.name), deleted: toDelete.map((p) => p.metadata?.name) });
    }
    await this.writeStatus(d, [...current, ...created], old, replicas);
  }

  private async createPod(d: V1Deployment, hash: string): Promise<V1Pod> {
    const namespace = d.metadata!.namespace!;
    const t = d.spec!.template;
    const body: V1Pod = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name: `${d.metadata!.name}-${hash}-${randomSuffix()}`,
        namespace,
        labels: { ...(t.metadata?.labels ?? {}), [POD_TEMPLATE_HASH]: hash },
        ...(t.metadata?.annotations ? { annotations: t.metadata.annotations } : {}),
        ownerReferences: [{ apiVersion: 'apps/v1', kind: 'Deployment', name: d.metadata!.name!, uid: d.metadata!.uid!, controller: true, blockOwnerDeletion: true }],
      },
      spec: t.spec!,
    };
    return await this.core.createNamespacedPod({ namespace, body });
  }

  private async writeStatus(d: V1Deployment, current: V1Pod[], old: V1Pod[], replicas: number): Promise<void> {
    const ready = [...current, ...old].filter(isPodReady).length;
    const total = current.length + old.length;
    const maxUnavailable = d.spec?.strategy?.type === 'Recreate' ? replicas : resolveIntOrPercent(d.spec?.strategy?.rollingUpdate?.maxUnavailable, replicas, '25%');
    const complete = current.length === replicas && old.length === 0 && current.filter(isPodReady).length === replicas;
    const now = new Date();
    const prev = d.status?.conditions ?? [];
    const condition = (type: string, status: 'True' | 'False', reason: string, message: string): V1DeploymentCondition => {
      const was = prev.find((c) => c.type === type);
      const same = was?.status === status && was.reason === reason;
      return {
        type,
        status,
        reason,
        message,
        lastUpdateTime: same ? was.lastUpdateTime! : now,
        lastTransitionTime: was?.status === status ? was.lastTransitionTime! : now,
      };
    };
    const name = d.metadata!.name!;
    const status = {
      observedGeneration: d.metadata?.generation ?? 1,
      replicas: total,
      updatedReplicas: current.length,
      readyReplicas: ready,
      availableReplicas: ready,
      ...(replicas - ready > 0 ? { unavailableReplicas: replicas - ready } : {}),
      conditions: [
        ready >= replicas - maxUnavailable
          ? condition('Available', 'True', 'MinimumReplicasAvailable', 'Deployment has minimum availability.')
          : condition('Available', 'False', 'MinimumReplicasUnavailable', 'Deployment does not have minimum availability.'),
        complete
          ? condition('Progressing', 'True', 'NewReplicaSetAvailable', `Deployment "${name}" has successfully progressed.`)
          : condition('Progressing', 'True', 'ReplicaSetUpdated', `Deployment "${name}" is progressing.`),
      ],
    };
    // Unchanged (timestamps aside): no write, so a reconcile does not trigger itself forever.
    const strip = (s: unknown): string => canonicalJson({ ...(s as object), conditions: ((s as { conditions?: V1DeploymentCondition[] }).conditions ?? []).map((c) => ({ type: c.type, status: c.status, reason: c.reason })) });
    if (strip(d.status ?? {}) === strip(status)) return;
    await this.apps.replaceNamespacedDeploymentStatus({ name, namespace: d.metadata!.namespace!, body: { ...d, status } });
  }

  /** Keys to look at again when a pod changes: its controlling Deployment. */
  static keysOfPod(p: V1Pod): string[] {
    const ref = p.metadata?.ownerReferences?.find((r) => r.controller === true && r.kind === 'Deployment' && r.apiVersion === 'apps/v1');
    return ref ? [`${p.metadata?.namespace ?? ''}/${ref.name}`] : [];
  }
}

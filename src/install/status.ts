// `clustermesh status --context C`: an installed cluster's status read only
// through its Kubernetes API (what a user with a kubeconfig can read):
// - the agent DaemonSet's and the apiserver Deployment's readiness;
// - the remote clusters configured: the keys of the Secret clustermesh-remotes
//   (connect writes one per remote cluster, connect.ts);
// - each agent's connection state: the summary every agent keeps in its own
//   Pod's annotation (src/agent/pod-status.ts), with the Pod's readiness and
//   restart count.
// Ready when every agent pod is ready, reports every configured remote cluster
// connected and ready, and has written its summary recently; the apiserver
// available. `summarizeInstalled` is pure.
import { AppsV1Api, CoreV1Api, type KubeConfig, type V1Pod } from '@kubernetes/client-node';
import { AGENT_STATUS_ANNOTATION, parsePodStatus, REFRESH_MS, type PodStatusSummary } from '../agent/pod-status.ts';
import { apiMessage, statusOf } from './apply.ts';
import { NAMES } from './manifests.ts';

export interface InstalledProbe {
  context: string;
  namespace: string;
  /** The install's ConfigMap: null when absent (not installed). */
  settings: { name: string; id: string } | null;
  daemonSet: { desired: number; ready: number; updated: number } | null;
  deployment: { replicas: number; available: number } | null;
  /** Remote clusters of the Secret clustermesh-remotes (null: no Secret). */
  configured: string[] | null;
  agents: Array<{ pod: string; uid: string; node: string; ready: boolean; restarts: number; summary: PodStatusSummary | undefined }>;
  /** Why something could not be read (the API refused, or is unreachable). */
  errors: string[];
}

export interface InstalledReport {
  context: string;
  namespace: string;
  cluster: string | null;
  id: number | null;
  ready: boolean;
  agents: { desired: number; ready: number };
  apiserver: { available: number; replicas: number };
  remoteClusters: Array<{ name: string; connected: number; ready: number; nodes: number; lastError: string | null }>;
  nodes: Array<{ node: string; pod: string; uid: string; podReady: boolean; restarts: number; phase: string | null; statusAgeSeconds: number | null; remotes: Array<{ name: string; connected: boolean; ready: boolean; lastError: string | null }> }>;
  notReady: string[];
}

const podReady = (p: V1Pod): boolean => (p.status?.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True');

/** Reads the install of `namespace` through `kc`. Never throws for what it cannot read: that goes into `errors`. */
export async function probeInstalled(kc: KubeConfig, namespace: string): Promise<InstalledProbe> {
  const core = kc.makeApiClient(CoreV1Api);
  const apps = kc.makeApiClient(AppsV1Api);
  const errors: string[] = [];
  const get = async <T>(what: string, f: () => Promise<T>): Promise<T | null> => {
    try {
      return await f();
    } catch (err) {
      if (statusOf(err) !== 404) errors.push(`${what}: ${apiMessage(err)}`);
      return null;
    }
  };
  const [cm, ds, dep, secret, pods] = await Promise.all([
    get(`configmap/${NAMES.config}`, () => core.readNamespacedConfigMap({ name: NAMES.config, namespace })),
    get(`daemonset/${NAMES.agent}`, () => apps.readNamespacedDaemonSet({ name: NAMES.agent, namespace })),
    get(`deployment/${NAMES.apiserver}`, () => apps.readNamespacedDeployment({ name: NAMES.apiserver, namespace })),
    get(`secret/${NAMES.remotes}`, () => core.readNamespacedSecret({ name: NAMES.remotes, namespace })),
    get('agent pods', () => core.listNamespacedPod({ namespace, labelSelector: `app.kubernetes.io/name=${NAMES.agent}` })),
  ]);
  return {
    context: kc.getCurrentContext(),
    namespace,
    settings: cm ? { name: cm.data?.['cluster-name'] ?? '', id: cm.data?.['cluster-id'] ?? '' } : null,
    daemonSet: ds ? { desired: ds.status?.desiredNumberScheduled ?? 0, ready: ds.status?.numberReady ?? 0, updated: ds.status?.updatedNumberScheduled ?? 0 } : null,
    deployment: dep ? { replicas: dep.spec?.replicas ?? 1, available: dep.status?.availableReplicas ?? 0 } : null,
    // Cilium's layout: one key per remote cluster, its certificates beside it under names with a '.'.
    configured: secret ? Object.keys(secret.data ?? {}).filter((k) => !k.includes('.')).sort() : null,
    agents: (pods?.items ?? [])
      .filter((p) => !p.metadata?.deletionTimestamp)
      .map((p) => ({
        pod: p.metadata?.name ?? '',
        uid: p.metadata?.uid ?? '',
        node: p.spec?.nodeName ?? '',
        ready: podReady(p),
        restarts: (p.status?.containerStatuses ?? []).reduce((a, c) => a + (c.restartCount ?? 0), 0),
        summary: parsePodStatus(p.metadata?.annotations?.[AGENT_STATUS_ANNOTATION]),
      }))
      .sort((a, b) => a.node.localeCompare(b.node)),
    errors,
  };
}

/** What is ready and what is not, each not-ready thing as one sentence naming it. */
export function summarizeInstalled(p: InstalledProbe, now: Date = new Date()): InstalledReport {
  const notReady: string[] = [...p.errors];
  const where = p.context;
  if (!p.settings) notReady.push(`${where}: no configmap/${NAMES.config} in namespace ${p.namespace}: clustermesh is not installed there (clustermesh install --context ${where})`);
  const ds = p.daemonSet ?? { desired: 0, ready: 0, updated: 0 };
  if (!p.daemonSet) notReady.push(`${where}: no daemonset/${NAMES.agent}`);
  else if (ds.desired === 0 || ds.ready < ds.desired) notReady.push(`${where}: daemonset/${NAMES.agent}: ${ds.ready}/${ds.desired} agent pods ready`);
  const dep = p.deployment ?? { replicas: 0, available: 0 };
  if (!p.deployment) notReady.push(`${where}: no deployment/${NAMES.apiserver}`);
  else if (dep.available < 1) notReady.push(`${where}: deployment/${NAMES.apiserver}: ${dep.available}/${dep.replicas} available`);
  const configured = p.configured ?? [];
  if (p.settings && p.configured === null) notReady.push(`${where}: no secret/${NAMES.remotes} (re-run clustermesh install)`);
  const nodes: InstalledReport['nodes'] = p.agents.map((a) => {
    const age = a.summary ? Math.max(0, Math.round((now.getTime() - Date.parse(a.summary.at)) / 1000)) : null;
    return { node: a.node, pod: a.pod, uid: a.uid, podReady: a.ready, restarts: a.restarts, phase: a.summary?.phase ?? null, statusAgeSeconds: age, remotes: a.summary?.remotes ?? [] };
  });
  for (const [i, n] of nodes.entries()) {
    const a = p.agents[i]!;
    if (!n.podReady) notReady.push(`${where}: agent pod ${n.pod} on ${n.node} is not ready`);
    if (!a.summary) {
      notReady.push(`${where}: agent pod ${n.pod} on ${n.node} has written no status (annotation ${AGENT_STATUS_ANNOTATION}) yet`);
      continue;
    }
    if (n.statusAgeSeconds !== null && n.statusAgeSeconds * 1000 > 3 * REFRESH_MS) notReady.push(`${where}: agent on ${n.node}: its status is ${n.statusAgeSeconds}s old (it writes at least every ${REFRESH_MS / 1000}s: not running, or cannot reach the Kubernetes API)`);
    for (const e of a.summary.configErrors) notReady.push(`${where}: agent on ${n.node} cannot use ${e}`);
    for (const name of configured) {
      const r = n.remotes.find((x) => x.name === name);
      if (!r) notReady.push(`${where}: agent on ${n.node} has not picked up remote cluster ${name} yet`);
      else if (!r.connected || !r.ready) notReady.push(`${where}: agent on ${n.node}: remote cluster ${name} ${r.connected ? 'connected, not ready (first sync)' : 'not connected'}${r.lastError ? ` (last error: ${r.lastError})` : ''}`);
    }
  }
  const remoteClusters = configured.map((name) => {
    const per = nodes.map((n) => n.remotes.find((r) => r.name === name));
    return {
      name,
      nodes: nodes.length,
      connected: per.filter((r) => r?.connected).length,
      ready: per.filter((r) => r?.connected && r.ready).length,
      lastError: per.find((r) => r?.lastError)?.lastError ?? null,
    };
  });
  const id = Number(p.settings?.id);
  return {
    context: p.context,
    namespace: p.namespace,
    cluster: p.settings?.name || null,
    id: Number.isInteger(id) && p.settings?.id ? id : null,
    ready: notReady.length === 0,
    agents: { desired: ds.desired, ready: ds.ready },
    apiserver: { available: dep.available, replicas: dep.replicas },
    remoteClusters,
    nodes,
    notReady,
  };
}

export function formatInstalled(r: InstalledReport): string {
  const out: string[] = [];
  out.push(`${r.cluster ?? '?'}${r.id !== null ? ` (id ${r.id})` : ''} in context ${r.context}, namespace ${r.namespace}: ${r.ready ? 'ready' : 'NOT READY'}`);
  out.push(`  agents:      ${r.agents.ready}/${r.agents.desired} pods ready (daemonset/${NAMES.agent})`);
  out.push(`  apiserver:   ${r.apiserver.available}/${r.apiserver.replicas} available (deployment/${NAMES.apiserver})`);
  if (r.remoteClusters.length === 0) out.push(`  clustermesh: no remote clusters configured (secret/${NAMES.remotes}; connect one with: clustermesh connect --context ${r.context} --destination-context ...)`);
  for (const rc of r.remoteClusters) out.push(`  remote ${rc.name}: connected ${rc.connected}/${rc.nodes}, ready ${rc.ready}/${rc.nodes}${rc.lastError ? `, last error: ${rc.lastError}` : ''}`);
  for (const n of r.nodes) {
    out.push(`  node ${n.node}: pod ${n.pod} ${n.podReady ? 'ready' : 'NOT ready'}, restarts ${n.restarts}, agent ${n.phase ?? 'no status'}${n.statusAgeSeconds !== null ? ` (status ${n.statusAgeSeconds}s ago)` : ''}${n.remotes.length ? `; remotes: ${n.remotes.map((x) => `${x.name} ${x.connected && x.ready ? 'ok' : x.connected ? 'syncing' : 'down'}`).join(', ')}` : ''}`);
  }
  out.push(r.ready ? 'ready: yes' : `ready: no\n${r.notReady.map((s) => `  - ${s}`).join('\n')}`);
  return out.join('\n');
}

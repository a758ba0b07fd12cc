// The agent's status, where the Kubernetes API serves it: a small summary in
// an annotation of the agent's own Pod (config `statusPod`, set by the
// install from the downward API). `clustermesh status --context` reads every
// agent pod of an install through the API and needs nothing else: the agent's
// full status (GET /v1/status) is on a unix socket of the node, which a user
// with only a kubeconfig cannot reach, and the lab's and a real cluster's API
// both serve pods.
//
// Why a Pod annotation and not a ConfigMap or a custom resource: the Pod
// exists for exactly as long as the agent does (a replaced agent's summary
// goes with its Pod, uninstall leaves nothing behind), and the agent needs
// only `patch` on pods of its own namespace (a namespaced Role; the namespace
// holds only the install's pods), where a ConfigMap per node would need
// `create` on every ConfigMap of the namespace, the cluster's settings included,
// and a CRD one more kind to install and remove.
//
// Written when the summary changes (checked every second) and at least every
// REFRESH_MS, so a reader can tell a stale one (`at`) from a current one. A
// failed write is logged (once per distinct error) and tried again. The check
// reads only what the summary shows (the agent's phase, each remote cluster's
// brief state: ClusterMesh.brief()), never the agent's full status (datapath
// maps, endpoints, policy), and compares the summary's JSON, a few hundred bytes.
import type { Logger } from 'pino';
import type { KubeHttp } from '../sources/kubernetes/http.ts';
import { sleep, type Clock } from '../util/clock.ts';
import type { AgentStatus, RemoteSummary } from './status.ts';

export const AGENT_STATUS_ANNOTATION = 'clustermesh.io/agent-status';
/** A summary is rewritten at least this often (its `at` older than twice this: the agent is not writing). */
export const REFRESH_MS = 30_000;

/** What the annotation holds (JSON). */
export interface PodStatusSummary {
  /** When it was written (RFC 3339). */
  at: string;
  node: string;
  cluster: string;
  phase: string;
  ready: boolean;
  /** Every remote cluster the agent has configured (its files in the remote-cluster Secret). */
  remotes: Array<{ name: string; connected: boolean; ready: boolean; lastError: string | null }>;
  /** Remote-cluster files the agent cannot use. */
  configErrors: string[];
}

/** What a summary is made of: the fields of an AgentStatus it shows (a full status is one; the agent hands the writer just these). */
export interface PodStatusInput {
  node: Pick<AgentStatus['node'], 'name' | 'cluster'>;
  phase: string;
  ready: boolean;
  remoteClusters: ReadonlyArray<Pick<RemoteSummary, 'name' | 'connected' | 'ready' | 'lastError'>>;
  clustermesh: { configErrors: ReadonlyArray<{ file: string; error: string }> };
}

/** The summary of a status (without `at`, which the writer sets). */
export function podStatusSummary(s: PodStatusInput): Omit<PodStatusSummary, 'at'> {
  return {
    node: s.node.name,
    cluster: s.node.cluster,
    phase: s.phase,
    ready: s.ready,
    remotes: s.remoteClusters.map((r) => ({ name: r.name, connected: r.connected, ready: r.ready, lastError: r.lastError })).sort((a, b) => a.name.localeCompare(b.name)),
    configErrors: s.clustermesh.configErrors.map((e) => `${e.file}: ${e.error}`),
  };
}

/** Parses an annotation's value; undefined when it is absent or not a summary. */
export function parsePodStatus(value: string | undefined): PodStatusSummary | undefined {
  if (value === undefined) return undefined;
  try {
    const v = JSON.parse(value) as PodStatusSummary;
    return typeof v.at === 'string' && Array.isArray(v.remotes) ? v : undefined;
  } catch {
    return undefined;
  }
}

/** Keeps the summary of `status()` in the Pod's annotation until `signal` aborts; `status` is called every `checkMs` (1 s): give it only what PodStatusInput needs. */
export async function runPodStatusWriter(o: {
  http: Pick<KubeHttp, 'request'>;
  pod: { namespace: string; name: string };
  status: () => PodStatusInput;
  clock: Clock;
  log: Pick<Logger, 'info' | 'warn'>;
  signal: AbortSignal;
  checkMs?: number;
}): Promise<void> {
  const path = `/api/v1/namespaces/${encodeURIComponent(o.pod.namespace)}/pods/${encodeURIComponent(o.pod.name)}`;
  let last = '';
  let lastAt = 0;
  let lastError = '';
  do {
    const body = JSON.stringify(podStatusSummary(o.status()));
    const now = o.clock.now();
    if (body !== last || now - lastAt >= REFRESH_MS) {
      const value = JSON.stringify({ at: new Date(now).toISOString(), ...(JSON.parse(body) as object) });
      try {
        await o.http.request('PATCH', path, { metadata: { annotations: { [AGENT_STATUS_ANNOTATION]: value } } }, { timeoutMs: 10_000 });
        if (lastError !== '') o.log.info({ pod: `${o.pod.namespace}/${o.pod.name}` }, 'status annotation written again');
        last = body;
        lastAt = now;
        lastError = '';
      } catch (err) {
        const msg = (err as Error).message;
        if (msg !== lastError) o.log.warn({ pod: `${o.pod.namespace}/${o.pod.name}`, err: msg }, `cannot write the status annotation ${AGENT_STATUS_ANNOTATION}; retrying`);
        lastError = msg;
      }
    }
  } while (await sleep(o.clock, o.checkMs ?? 1000, o.signal));
}

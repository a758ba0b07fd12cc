// The agents of an install, found through a kube context: what `observe
// --context` and `ui --context` dial. Read with the user's own credentials:
//   - configmap/clustermesh-config: the cluster's name and ID;
//   - secret/clustermesh-observer: the client certificate the agents admit and
//     the install's CA (so who may read that Secret may read the flows);
//   - the agent pods (app.kubernetes.io/name=clustermesh-agent): each one's
//     node, its hostIP and the container port `remote-api` it serves on.
// Every agent shares one server certificate, verified by the name
// agentApiServerName(cluster) (manifests.ts). Errors name the context and
// what is missing; a pod that cannot be dialled is a problem of its node, not
// of the context.
import { CoreV1Api, KubernetesObjectApi, type KubeConfig, type KubernetesObject, type V1Pod } from '@kubernetes/client-node';
import type { RemoteAgentAddress } from '../agent/client.ts';
import { loadKubeConnection } from '../sources/kubernetes/kubeconfig.ts';
import { apiMessage, statusOf } from './apply.ts';
import { agentApiServerName, NAMES, REMOTE_API_PORT_NAME } from './manifests.ts';

export interface InstalledAgent {
  node: string;
  pod: string;
  /** Where its remote API answers; undefined when `problem` says why it cannot be dialled. */
  address: RemoteAgentAddress | undefined;
  problem: string | undefined;
}

export interface InstalledAgents {
  /** The context's name (the current one when none was given). */
  context: string;
  cluster: string;
  id: number;
  agents: InstalledAgent[];
}

/** A context that cannot be read: the message names it. */
export class ContextError extends Error {
  constructor(
    readonly context: string,
    message: string,
  ) {
    super(`context ${context}: ${message}`);
    this.name = 'ContextError';
  }
}

const decode = (s: string | undefined): string => Buffer.from(s ?? '', 'base64').toString('utf8');

/** The Kubernetes API calls of one context, bounded (a server that never answers is named, not waited for). */
function bounded<T>(p: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(what())), ms)))]).finally(() => clearTimeout(timer));
}

/** The agent pods of an install and how to reach each one's remote API. */
export async function readInstalledAgents(o: { kubeconfig?: string | undefined; context?: string | undefined; namespace: string; timeoutMs?: number }): Promise<InstalledAgents> {
  let kc: KubeConfig;
  let server: string;
  try {
    const conn = loadKubeConnection({ kubeconfig: o.kubeconfig, context: o.context });
    kc = conn.kubeConfig;
    server = conn.server;
  } catch (err) {
    throw new ContextError(o.context ?? '(current)', (err as Error).message);
  }
  const context = kc.getCurrentContext();
  const ns = o.namespace;
  const fail = (msg: string): never => {
    throw new ContextError(context, msg);
  };
  const timeoutMs = o.timeoutMs ?? 15_000;
  const call = <T>(what: string, p: Promise<T>): Promise<T> =>
    bounded(p, timeoutMs, () => `${what}: the Kubernetes API at ${server} did not answer within ${timeoutMs / 1000} s`).catch((err: unknown) => {
      const code = statusOf(err);
      if (code === 401 || code === 403) fail(`${what}: ${apiMessage(err)} (observe needs get on configmap/${NAMES.config} and secret/${NAMES.observer}, and list on pods, in namespace ${ns})`);
      return fail(`${what}: ${code !== undefined ? apiMessage(err) : `${(err as Error).message} (Kubernetes API ${server})`}`);
    });
  const objects = KubernetesObjectApi.makeApiClient(kc);
  const get = async (kind: 'ConfigMap' | 'Secret', name: string) => {
    const what = `reading ${kind.toLowerCase()}/${name} in namespace ${ns}`;
    const obj = await call(what, objects.read({ apiVersion: 'v1', kind, metadata: { name, namespace: ns } }).catch((err: unknown) => (statusOf(err) === 404 ? undefined : Promise.reject(err))));
    if (!obj) fail(`no ${kind.toLowerCase()}/${name} in namespace ${ns}: clustermesh is not installed there${name === NAMES.observer ? ' or was installed before the agents served their API remotely (re-run clustermesh install)' : ''} (another namespace: --install-namespace)`);
    return obj as KubernetesObject & { data?: Record<string, string> };
  };
  const [cm, secret, pods] = await Promise.all([
    get('ConfigMap', NAMES.config),
    get('Secret', NAMES.observer),
    call(`listing the agent pods in namespace ${ns}`, kc.makeApiClient(CoreV1Api).listNamespacedPod({ namespace: ns, labelSelector: `app.kubernetes.io/name=${NAMES.agent}` })),
  ]);
  const cluster = cm.data?.['cluster-name'];
  const id = Number(cm.data?.['cluster-id']);
  if (!cluster || !Number.isInteger(id)) fail(`configmap/${NAMES.config} lacks cluster-name or cluster-id (re-run clustermesh install)`);
  const tls = { ca: decode(secret.data?.['ca.crt']), cert: decode(secret.data?.['tls.crt']), key: decode(secret.data?.['tls.key']) };
  if (!tls.ca || !tls.cert || !tls.key) fail(`secret/${NAMES.observer} lacks ca.crt, tls.crt or tls.key`);
  if (cm.data?.['remote-api-port'] === '0') fail(`the agents do not serve their API remotely (installed with --remote-api-port 0; re-run clustermesh install with a port)`);
  if (pods.items.length === 0) fail(`no agent pods (app.kubernetes.io/name=${NAMES.agent}) in namespace ${ns}`);
  const agents = pods.items.map((p) => agentOf(p, cluster!, tls)).sort((a, b) => a.node.localeCompare(b.node));
  return { context, cluster: cluster!, id, agents };
}

function agentOf(p: V1Pod, cluster: string, tls: { ca: string; cert: string; key: string }): InstalledAgent {
  const pod = p.metadata?.name ?? '?';
  const node = p.spec?.nodeName ?? '';
  const port = p.spec?.containers.flatMap((c) => c.ports ?? []).find((x) => x.name === REMOTE_API_PORT_NAME)?.containerPort;
  const hostIP = p.status?.hostIP;
  const base = { node: node || pod, pod };
  if (!node) return { ...base, address: undefined, problem: `agent pod ${pod} is not scheduled on a node yet (phase ${p.status?.phase ?? 'unknown'})` };
  if (port === undefined) return { ...base, address: undefined, problem: `agent pod ${pod} has no container port ${REMOTE_API_PORT_NAME}: it runs without the remote API (an older install or --remote-api-port 0; re-run clustermesh install)` };
  if (!hostIP) return { ...base, address: undefined, problem: `agent pod ${pod} has no host IP yet (phase ${p.status?.phase ?? 'unknown'})` };
  return { ...base, address: { host: hostIP, port, ...tls, serverName: agentApiServerName(cluster) }, problem: undefined };
}

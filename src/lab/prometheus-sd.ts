// `clustermesh lab prometheus-sd`: Prometheus' HTTP service discovery
// (http_sd_configs) for the lab's Prometheus on an installed lab. Debian's
// prometheus is built without the Kubernetes discovery, so this small server,
// in the router namespace beside it, answers what that discovery would find:
// the install's agent and apiserver pods, listed from each cluster's Kubernetes
// API at every request (Prometheus asks every 5 s), each at its host-network
// address and its container port named `metrics`. A replaced or moved pod is
// followed; a cluster whose API does not answer fails the request, and
// Prometheus keeps the targets it had.
import { renameSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { METRICS_PORT_NAME, NAMES } from '../install/manifests.ts';
import { KubeHttp } from '../sources/kubernetes/http.ts';
import { readKubeAccess } from '../sources/kubernetes/kube-access.ts';

/** One entry of an HTTP service discovery answer. */
export interface TargetGroup {
  targets: string[];
  labels: Record<string, string>;
}

interface PodLike {
  spec?: { nodeName?: string; containers?: Array<{ ports?: Array<{ name?: string; containerPort?: number }> }> };
  status?: { phase?: string; podIP?: string };
}

/** The target groups of `app`'s running pods of one cluster: `podIP:metrics port`, labelled with the cluster (and the node, for agents). */
export function podTargets(cluster: string, app: string, pods: readonly unknown[]): TargetGroup[] {
  const out: TargetGroup[] = [];
  for (const p of pods as PodLike[]) {
    const ip = p.status?.podIP;
    const port = p.spec?.containers?.flatMap((c) => c.ports ?? []).find((x) => x.name === METRICS_PORT_NAME)?.containerPort;
    if (p.status?.phase !== 'Running' || !ip || !port) continue;
    out.push({ targets: [`${ip}:${port}`], labels: { cluster, ...(app === NAMES.agent && p.spec?.nodeName ? { node: p.spec.nodeName } : {}) } });
  }
  return out;
}

/** Paths the server answers, per job of prometheus.yml. */
export const SD_PATHS = { agents: '/targets/agents', apiservers: '/targets/apiservers' } as const;

/** Serves SD_PATHS on `listen` (host:port) for the clusters (kubeconfig contexts) and the install's namespace. */
export async function runPrometheusSd(o: { kubeconfig: string; contexts: string[]; namespace: string; listen: string; readyFile?: string | undefined }): Promise<Server> {
  const kube = new Map(o.contexts.map((c) => [c, new KubeHttp(readKubeAccess({ kubeconfig: o.kubeconfig, context: c }).access)] as const));
  const apps: Record<string, string> = { [SD_PATHS.agents]: NAMES.agent, [SD_PATHS.apiservers]: NAMES.apiserver };
  const server = createServer((req, res) => {
    const app = apps[new URL(req.url ?? '/', 'http://x').pathname];
    if (req.method !== 'GET' || !app) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end(`not found; ask ${Object.keys(apps).join(' or ')}\n`);
      return;
    }
    void Promise.all(
      [...kube].map(async ([cluster, k]) => {
        const list = await k.list(`/api/v1/namespaces/${encodeURIComponent(o.namespace)}/pods`, { labelSelector: `app.kubernetes.io/name=${app}` }, AbortSignal.timeout(10_000), 10_000);
        return podTargets(cluster, app, list.items);
      }),
    ).then(
      (groups) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(groups.flat())),
      (err: unknown) => res.writeHead(502, { 'content-type': 'text/plain' }).end(`${(err as Error).message}\n`),
    );
  });
  const i = o.listen.lastIndexOf(':');
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(o.listen.slice(i + 1)), o.listen.slice(0, i), () => resolve());
  });
  if (o.readyFile !== undefined) {
    writeFileSync(`${o.readyFile}.tmp`, `${process.pid}\n`);
    renameSync(`${o.readyFile}.tmp`, o.readyFile);
  }
  return server;
}

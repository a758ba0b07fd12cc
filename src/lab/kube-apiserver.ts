// The lab's per-cluster Kubernetes API process (`clustermesh lab kube-apiserver
// --config FILE`, started by `lab up`, one per cluster): the Kubernetes-API-
// compatible server of src/lab/kube-api over the cluster's Kubernetes etcd (its
// own, separate from the mesh's etcd), as the etcd user `kube` (readwrite on
// clustermesh/kube/ only), and the lab's controllers
// (src/lab/controllers) as its clients over HTTPS -- the lab's
// kube-apiserver and kube-controller-manager in one process (with the lab's
// cloud load balancer, src/lab/cloud-lb.ts, when configured).
//
// It listens in the machine's network namespace on 127.0.0.1 (where kubectl
// runs), reaching etcd through the etcd's TLS unix socket; with `socketPath`
// also on a TLS unix socket, which the node-local endpoints of a
// lab forward to (src/lab/kube-api-endpoint.ts). When it listens it
// writes `readyFile` ({url, pid}); `lab up` reads the URL from there into the
// lab state and the kubeconfig.
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { KvClient } from '../kvstore/client.ts';
import { KUBE_PREFIX, KubeApiServer } from './kube-api/index.ts';
import { kubeConfigFor, startControllers } from './controllers/index.ts';
import { cloudLbConfigSchema, startCloudLb } from './cloud-lb.ts';
import { log } from './controllers/runtime.ts';
import { reuseConnections } from '../sources/kubernetes/http.ts';

const fileSchema = z.object({ certFile: z.string(), keyFile: z.string(), caFile: z.string() });

export const kubeApiServerConfigSchema = z.object({
  cluster: z.string(),
  /** The cluster's Kubernetes etcd as user `kube`. */
  etcd: fileSchema.extend({ endpoints: z.array(z.string()).min(1), serverName: z.string().optional() }),
  /** Server certificate and key; caFile verifies client certificates. */
  tls: fileSchema,
  host: z.string().default('127.0.0.1'),
  /** 0: any free port (the URL is in readyFile). */
  port: z.number().int().min(0).max(65535).default(0),
  /** Also serve on this TLS unix socket (the node-local endpoints forward to it). */
  socketPath: z.string().optional(),
  serviceCidr: z.string().optional(),
  /** The service-account token signing key (PEM): tokens are issued and accepted only with it. */
  serviceAccountKeyFile: z.string().optional(),
  /** Written ({url, pid}) once the server listens. */
  readyFile: z.string(),
  /** The lab's controllers run in this process as clients of the server, with this client certificate. */
  controllers: fileSchema.optional(),
  /** Run the lab's scheduler with the controllers (the lab; tests of the controllers alone leave it off). */
  scheduler: z.boolean().default(false),
  /** Run the lab's cloud load balancer for LoadBalancer Services (src/lab/cloud-lb.ts). */
  loadBalancer: cloudLbConfigSchema.optional(),
});
export type KubeApiServerConfig = z.infer<typeof kubeApiServerConfigSchema>;

export interface KubeApiReady {
  url: string;
  pid: number;
}

export function readKubeApiServerConfig(file: string): KubeApiServerConfig {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new Error(`kube-apiserver config ${file}: ${(err as Error).message}`);
  }
  const parsed = kubeApiServerConfigSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new Error(`kube-apiserver config ${file}: field ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  return parsed.data;
}

/** `clustermesh lab kube-apiserver --config FILE`: serves until SIGTERM/SIGINT. */
export async function runKubeApiServer(configFile: string): Promise<void> {
  const cfg = readKubeApiServerConfig(configFile);
  const kv = new KvClient({ ...cfg.etcd, timeoutMs: 10_000 });
  const server = new KubeApiServer({
    kv,
    prefix: KUBE_PREFIX,
    tls: cfg.tls,
    host: cfg.host,
    port: cfg.port,
    ...(cfg.serviceCidr !== undefined ? { serviceCidr: cfg.serviceCidr } : {}),
    ...(cfg.socketPath !== undefined ? { socketPath: cfg.socketPath } : {}),
    ...(cfg.serviceAccountKeyFile !== undefined ? { serviceAccountKeyFile: cfg.serviceAccountKeyFile } : {}),
  });
  // The Kubernetes etcd answers before this starts (the mesh starts it first); a loaded machine may still be slow.
  for (let attempt = 1; ; attempt++) {
    try {
      await server.start();
      break;
    } catch (err) {
      if (attempt >= 20) throw err;
      log('cannot start yet; retrying', { error: (err as Error).message });
      await sleep(250 * attempt);
    }
  }
  const ready: KubeApiReady = { url: server.url, pid: process.pid };
  writeFileSync(`${cfg.readyFile}.tmp`, JSON.stringify(ready) + '\n');
  renameSync(`${cfg.readyFile}.tmp`, cfg.readyFile);
  log('serving the Kubernetes API', { cluster: cfg.cluster, url: server.url });
  // The controllers in this process (one process per cluster for both: fewer
  // processes on a small machine, one lifetime), still as HTTPS clients of the
  // server like any other, so they could as well run elsewhere.
  // Their connections kept alive (client-node opens one per request: a TLS handshake on both ends each time).
  const controllers = cfg.controllers ? await startControllers(reuseConnections(kubeConfigFor(server.url, cfg.controllers)), { scheduler: cfg.scheduler }) : undefined;
  const cloudLb = cfg.controllers && cfg.loadBalancer ? await startCloudLb(reuseConnections(kubeConfigFor(server.url, cfg.controllers)), cfg.loadBalancer) : undefined;
  await new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  log('stopping');
  await cloudLb?.stop();
  await controllers?.stop();
  await server.stop();
  await kv.close();
  process.exit(0);
}

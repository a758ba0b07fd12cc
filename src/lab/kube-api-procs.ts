// Starting each cluster's Kubernetes API (the lab's kube-apiserver process,
// src/lab/kube-apiserver.ts), the local source of the cluster's components, and a node-local
// endpoint (src/lab/kube-api-endpoint.ts) in the control-plane namespace and
// in every node namespace of the cluster. The API keeps its objects in the
// cluster's Kubernetes etcd, not in the mesh's etcd: as in a real cluster, the
// two are separate processes (the mesh starts both, src/lab/mesh.ts), so losing
// the mesh's kvstore leaves the Kubernetes objects alone. One code path for the lab's `up`
// and the test rig (src/lab/mesh.ts): the caller is told about each process
// after its spawn and before its program runs (`record`: the lab's state, see
// src/util/held-start.ts) and once it started (`onStarted`: the rig stops it).
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { issueCert } from '../kvstore/pki.ts';
import type { EtcdRoles, EtcdServer } from '../kvstore/etcd-process.ts';
import { createKubeApiPki, KUBE_PREFIX, writeKubeconfig } from './kube-api/index.ts';
import { NODE_LOCAL_API_HOST, NODE_LOCAL_API_PORT } from './kube-api-endpoint.ts';
import type { CloudLbConfig } from './cloud-lb.ts';
import type { KubeApiReady, KubeApiServerConfig } from './kube-apiserver.ts';
import { ManagedProcess, childEnv, type ManagedProcessSpec } from './process.ts';

const CLI = resolve(import.meta.dirname, '..', '..', 'bin', 'clustermesh.js');

/** The lab's service CIDR (cluster IPs the Kubernetes API allocates). */
export const SERVICE_CIDR = '10.96.0.0/16';

export type KubeApiRole = 'kube-apiserver' | 'kube-api-endpoint';

/** The Kubernetes etcd's one role besides root: `kube`, the API server's user, readwrite on its prefix only. */
export const KUBE_ETCD_ROLES: EtcdRoles = { kube: [{ permission: 'Readwrite', key: KUBE_PREFIX }] };
/**
 * Its client port, on 127.0.0.1 of the control-plane namespace (beside the mesh's etcd on
 * 10.c.0.250:2379 and 127.0.0.1:2380): no node or other cluster reaches it; the API server reaches
 * it through its TLS unix socket. Its peer port is the next one.
 */
export const KUBE_ETCD_PORT = 2381;

/** What starting the Kubernetes API of a cluster needs to know about it. */
export interface KubeApiCluster {
  index: number;
  name: string;
  /** The control-plane namespace. */
  netns: string;
  dir: string;
  /** The cluster's Kubernetes etcd (KUBE_ETCD_ROLES), not the mesh's. */
  kubeEtcd: EtcdServer;
}

/** A node namespace that gets a node-local endpoint. */
export interface KubeApiNode {
  cluster: number;
  name: string;
  netns: string;
}

/** A cluster's Kubernetes API process while it starts (and after). */
export interface KubeApiStart {
  cluster: string;
  /** <cluster dir>/kube-api: PKI, config, log, ready file. */
  dir: string;
  proc: ManagedProcess;
  readyFile: string;
}

export interface KubeApiStartOptions {
  /** Processes outlive this one (the lab's up). */
  detached?: boolean;
  /** Told about each process after its spawn, before its program runs (a throw kills it and fails the start). */
  record?: (p: { role: KubeApiRole; cluster: string; node?: string; name: string; pid: number; logFile: string }) => void;
  /** Told right after each process started. */
  onStarted?: (p: { role: KubeApiRole; cluster: string; node?: string; proc: ManagedProcess }) => void;
  /** The cloud load balancer a cluster's process runs (src/lab/cloud-lb.ts); none when undefined. */
  loadBalancer?: (c: KubeApiCluster) => CloudLbConfig | undefined;
}

/** The kubeconfig of a cluster's own components (apiserver, agents, kubelets, DNS): the node-local endpoint. */
export const localKubeconfig = (clusterDir: string): string => join(clusterDir, 'kube-api', 'local.kubeconfig');

/** The kube-apiserver's TLS unix socket (what the node-local endpoints forward to). */
export const kubeApiSocket = (clusterDir: string): string => join(clusterDir, 'kube-api', 'api.sock');

/** The admin client certificate of a cluster's API (kubeconfigs of this machine: the lab's, the rig's). */
export const kubeApiAdminPki = (kubeApiDir: string): { caFile: string; certFile: string; keyFile: string } => ({
  caFile: join(kubeApiDir, 'pki', 'ca.crt'),
  certFile: join(kubeApiDir, 'pki', 'admin.crt'),
  keyFile: join(kubeApiDir, 'pki', 'admin.key'),
});

/**
 * Per cluster: the Kubernetes API server's PKI (CA, server, admin,
 * controller-manager and node certificates), its config and the components'
 * kubeconfig (localKubeconfig) under <cluster dir>/kube-api/, and its process
 * (serving on its unix socket too, running the scheduler). Returns without waiting for them to listen (waitKubeApiServers).
 */
export async function startKubeApiServers(clusters: readonly KubeApiCluster[], o: KubeApiStartOptions): Promise<KubeApiStart[]> {
  const out: KubeApiStart[] = [];
  // openssl runs for every cluster at once; the processes start one by one, each reported before the next.
  const pkis = await Promise.all(
    clusters.map(async (c) => {
      const pki = await createKubeApiPki(join(c.dir, 'kube-api', 'pki'), { clusterName: c.name });
      const controller = await issueCert(pki.ca, { commonName: 'system:kube-controller-manager', usage: 'client', outDir: join(c.dir, 'kube-api', 'pki'), name: 'controller-manager' });
      // The cluster's own components (apiserver, agents, kubelets) reach the API at the node-local endpoint of their namespace.
      const node = await issueCert(pki.ca, { commonName: 'system:node', usage: 'client', outDir: join(c.dir, 'kube-api', 'pki'), name: 'node' });
      await writeKubeconfig(localKubeconfig(c.dir), [{ name: c.name, server: `https://${NODE_LOCAL_API_HOST}:${NODE_LOCAL_API_PORT}`, caFile: pki.ca.certFile, certFile: node.certFile, keyFile: node.keyFile }]);
      return { pki, controller };
    }),
  );
  for (const [i, c] of clusters.entries()) {
    const dir = join(c.dir, 'kube-api');
    const { pki, controller } = pkis[i]!;
    const readyFile = join(dir, 'ready.json');
    rmSync(readyFile, { force: true });
    const cfg: KubeApiServerConfig = {
      cluster: c.name,
      etcd: c.kubeEtcd.connection('kube'),
      tls: { certFile: pki.server.certFile, keyFile: pki.server.keyFile, caFile: pki.ca.certFile },
      host: '127.0.0.1',
      port: 0,
      serviceCidr: SERVICE_CIDR,
      readyFile,
      controllers: { caFile: pki.ca.certFile, certFile: controller.certFile, keyFile: controller.keyFile },
      scheduler: true,
      socketPath: kubeApiSocket(c.dir),
      serviceAccountKeyFile: pki.serviceAccountKeyFile,
    };
    const lb = o.loadBalancer?.(c);
    if (lb) cfg.loadBalancer = lb;
    const configFile = join(dir, 'kube-apiserver.json');
    writeFileSync(configFile, JSON.stringify(cfg, null, 2) + '\n');
    const proc = new ManagedProcess({
      name: `kube-apiserver ${c.name}`,
      logFile: join(dir, 'kube-apiserver.log'),
      argv: [process.execPath, CLI, 'lab', 'kube-apiserver', '--config', configFile],
      env: childEnv(),
      ...(o.detached ? { detached: true } : {}),
      ...(o.record ? { beforeRun: (pid: number, spec: ManagedProcessSpec) => o.record!({ role: 'kube-apiserver', cluster: c.name, name: spec.name, pid, logFile: spec.logFile }) } : {}),
    });
    await proc.start();
    o.onStarted?.({ role: 'kube-apiserver', cluster: c.name, proc });
    out.push({ cluster: c.name, dir, proc, readyFile });
  }
  return out;
}

/** Waits (up to timeoutMs) for every `readyFile` of `procs`; a process that exits fails at once. */
export async function waitReadyFiles(procs: ReadonlyArray<{ proc: ManagedProcess; readyFile: string }>, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (const k of procs) {
    while (!existsSync(k.readyFile)) {
      if (!k.proc.running) throw new Error(k.proc.describe(10));
      if (Date.now() > end) throw new Error(`${k.proc.spec.name} not ready after ${Math.round(timeoutMs / 1000)} s; log ${k.proc.spec.logFile}`);
      await sleep(50);
    }
  }
}

/** What a listening API server wrote to its ready file (its URL). */
export const kubeApiReady = (k: KubeApiStart): KubeApiReady => JSON.parse(readFileSync(k.readyFile, 'utf8')) as KubeApiReady;

/**
 * The Kubernetes API as the local source, before the apiservers and agents
 * start: every cluster's API server (on its unix socket too), then a
 * node-local endpoint in the control-plane namespace and in every node
 * namespace of the cluster (started at once: they forward to the API server's
 * socket, which need not listen yet). Resolves when all of them listen.
 */
export async function startKubeApiForComponents(clusters: readonly KubeApiCluster[], nodes: readonly KubeApiNode[], o: KubeApiStartOptions & { timeoutMs?: number }): Promise<KubeApiStart[]> {
  const timeoutMs = o.timeoutMs ?? 60_000;
  const apis = await startKubeApiServers(clusters, o);
  // The endpoints only forward to the socket: they start while the API servers still start (and listen before them).
  const endpoints: Array<{ proc: ManagedProcess; readyFile: string }> = [];
  for (const c of clusters) {
    const where = [{ node: 'control-plane', netns: c.netns, dir: c.dir }, ...nodes.filter((n) => n.cluster === c.index).map((n) => ({ node: n.name, netns: n.netns, dir: join(c.dir, n.name) }))];
    for (const w of where) {
      mkdirSync(w.dir, { recursive: true });
      const readyFile = join(w.dir, 'kube-api-endpoint.ready');
      rmSync(readyFile, { force: true });
      const proc = new ManagedProcess({
        name: `kube-api-endpoint ${c.name}/${w.node}`,
        netns: w.netns,
        logFile: join(w.dir, 'kube-api-endpoint.log'),
        argv: [process.execPath, CLI, 'lab', 'kube-api-endpoint', '--socket', kubeApiSocket(c.dir), '--ready-file', readyFile],
        env: childEnv(),
        ...(o.detached ? { detached: true } : {}),
        ...(o.record ? { beforeRun: (pid: number, spec: ManagedProcessSpec) => o.record!({ role: 'kube-api-endpoint', cluster: c.name, node: w.node, name: spec.name, pid, logFile: spec.logFile }) } : {}),
      });
      await proc.start();
      o.onStarted?.({ role: 'kube-api-endpoint', cluster: c.name, node: w.node, proc });
      endpoints.push({ proc, readyFile });
    }
  }
  await waitReadyFiles([...endpoints, ...apis], timeoutMs);
  return apis;
}

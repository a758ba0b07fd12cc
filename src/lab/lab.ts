// `lab up` and `lab down`: a whole mesh on this machine whose processes outlive
// the command that started them, with everything it creates written to the
// lab's state file (src/lab/state.ts) before or right after it is created, so
// that `down` removes exactly that -- also after an `up` that was killed.
import type { RoutingMode } from '../datapath/maps/config.ts';
import { copyFileSync, existsSync, readdirSync, readFileSync, rmSync, writeFileSync, chmodSync, mkdirSync, symlinkSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CNI_PLUGIN_PATH } from '../cni/main.ts';
import { DEFAULT_BPFFS_ROOT, removePinDir } from '../datapath/bpffs.ts';
import { removeNodeCgroup } from './cgroup.ts';
import { run } from './exec.ts';
import { startMesh, type ClusterEtcdRole, type Mesh, type MeshCreated } from './mesh.ts';
import type { EtcdServer } from '../kvstore/etcd-process.ts';
import { SERVICE_CIDR, kubeApiAdminPki, kubeApiReady, kubeApiSocket, localKubeconfig, waitReadyFiles, type KubeApiStart } from './kube-api-procs.ts';
import { ManagedProcess, childEnv } from './process.ts';
import { createTopology, destroyTopology, listNamespaces, routerPort, type Topology } from './topology.ts';
import {
  LAB_STATE_VERSION,
  labDir,
  labRoot,
  processStartTime,
  readLabState,
  sameProcessAlive,
  validateLabName,
  writeLabState,
  NoSuchLabError,
  type LabEtcd,
  type LabState,
} from './state.ts';
import { stopGroup } from './kubelet.ts';
import { clusterDnsObjects, DNS_NAMESPACE } from './dns.ts';
import { kubeletConfigFile, kubeletConfigOverrides, podRecordsOf, unmountUnder, type KubeletConfig, type PodRecord } from './kubelet-config.ts';
import { writeKubeconfig } from './kube-api/index.ts';
import { ECHO_BIN, requireEchoBin, WORKLOAD_NODE_FLAGS } from './workload-main.ts';
import { PODSTART_BIN } from './pod-spec.ts';
import { installedAgentPaths, installedKubeletFields, installMesh, LAB_INSTALL_IMAGE } from './lab-install.ts';
import { DEFAULT_NAMESPACE } from '../install/settings.ts';
import { AGENT_METRICS_PORT, APISERVER_METRICS_PORT, openUiSocket, prometheusBinary, startLabPrometheus, waitPrometheusReady } from './prometheus.ts';

export const CLI = resolve(import.meta.dirname, '..', '..', 'bin', 'clustermesh.js');
/** What lab pods run for `lab workload echo|client` when dist/ is current (src/lab/workload-pod.ts). */
export const WORKLOAD_POD_ENTRY = resolve(import.meta.dirname, '..', '..', 'dist', 'js', 'workload-pod.cjs');
/** The Service CIDR of every cluster (ARCHITECTURE §2); .10 is the cluster DNS. */
export { SERVICE_CIDR };
export const DNS_SERVICE_IP = '10.96.0.10';

/** Namespaces of a lab are named `<prefix>-…`: the lab's name when it starts with 'cm' (tests: cmt…), else `cm-<name>`. */
export function labNetnsPrefix(name: string): string {
  return name.startsWith('cm') ? name : `cm-${name}`;
}

export interface LabUpOptions {
  name: string;
  clusters: number;
  nodes: number;
  /** One-way delay added between clusters (netem on each router port), e.g. '20ms'. */
  latency?: string;
  /** Loss between clusters, e.g. '0.1%'. */
  loss?: string;
  progress?: (line: string) => void;
  readyTimeoutMs?: number;
  /** Socket-level load balancing: each agent attaches to its node's cgroup, where the kubelet runs the pods (default false). */
  socketLB?: boolean;
  /** Routing of each cluster (index c-1): tunnel (default) or native (topology.ts routes the pod CIDRs on the router). */
  routing?: RoutingMode[];
  /** Run Debian's prometheus scraping every agent and apiserver (src/lab/prometheus.ts), its UI on 127.0.0.1:prometheusPort of this namespace. */
  prometheus?: boolean;
  /** Default 9090; 0 = any free port. */
  prometheusPort?: number;
  /** How the mesh gets onto the clusters (default 'install'; labMeshMode decides from the flags):
   * - install: bare clusters, then `clustermesh install` and `connect` by kube context (src/lab/lab-install.ts): the
   *   agents and apiservers are pods of the install's manifests, as on real clusters;
   * - direct: the agents and apiservers are lab processes started on the nodes (no manifests): cheaper, what
   *   `clustermesh connect --lab` works on, and what lets a test reach into the mesh's processes (pids, config files);
   * - bare: bare clusters only (as install's first half): `clustermesh install` and `connect` are left to the user. */
  direct?: boolean;
  bare?: boolean;
}

export interface LabUpResult {
  state: LabState;
  readyMs: number;
  totalMs: number;
}

const LATENCY_RE = /^\d+(\.\d+)?(us|ms|s)$/;
const LOSS_RE = /^\d+(\.\d+)?%$/;

export function validateLatency(v: string): string {
  if (!LATENCY_RE.test(v)) throw new Error(`--latency must be a duration like 20ms, 500us or 1s, got '${v}'`);
  return v;
}
export function validateLoss(v: string): string {
  if (!LOSS_RE.test(v) || Number(v.slice(0, -1)) > 100) throw new Error(`--loss must be a percentage like 0.1% (at most 100%), got '${v}'`);
  return v;
}

/**
 * Is the lab in use? While starting: as long as its `up` runs. Once up: while
 * any of its processes runs. A lab whose `up` died mid-way, that failed, or
 * whose processes are all gone (a reboot) is dead: the next `up` removes it.
 */
export function labAlive(state: LabState): boolean {
  if (state.phase === 'starting') return sameProcessAlive({ pid: state.pid, startTime: state.startTime });
  if (state.phase === 'failed') return false;
  return state.processes.some((r) => sameProcessAlive(r));
}

/** The cluster DNS objects, applied to each cluster's Kubernetes API at once (the DNS pods read that API; the kubelets, still starting, run them). */
async function applyClusterDns(state: LabState): Promise<void> {
  const { applyToApi } = await import('./kube-apply.ts');
  const { loadKubeConnection } = await import('../sources/kubernetes/kubeconfig.ts');
  const { reuseConnections } = await import('../sources/kubernetes/http.ts');
  await Promise.all(
    state.clusters.map(async (c) => {
      const kc = reuseConnections(loadKubeConnection({ kubeconfig: state.kubeconfig!, context: c.name }).kubeConfig);
      const dir = c.dir!;
      await applyToApi(kc, clusterDnsObjects({ kube: { kubeconfig: localKubeconfig(dir), socket: kubeApiSocket(dir) } }) as Array<{ apiVersion: string; kind: string; metadata: { name: string } }>);
      c.dnsIP = DNS_SERVICE_IP;
    }),
  );
}

/** Waits up to 60 s for the cluster DNS pods of every cluster (applied at t0) to be ready: a DNS that does not come up is a warning, not a failed up. */
async function waitClusterDns(state: LabState, t0: number, progress: (l: string) => void): Promise<void> {
  const { CoreV1Api } = await import('@kubernetes/client-node');
  const { loadKubeConnection } = await import('../sources/kubernetes/kubeconfig.ts');
  const { reuseConnections } = await import('../sources/kubernetes/http.ts');
  // Polled every 250 ms: over kept-alive connections, not a TLS handshake each.
  const pending = new Map(state.clusters.map((c) => [c.name, reuseConnections(loadKubeConnection({ kubeconfig: state.kubeconfig!, context: c.name }).kubeConfig).makeApiClient(CoreV1Api)]));
  const end = Date.now() + 60_000;
  while (pending.size && Date.now() < end) {
    await Promise.all(
      [...pending].map(async ([name, core]) => {
        const pods = await core.listNamespacedPod({ namespace: DNS_NAMESPACE, labelSelector: 'k8s-app=kube-dns' }).catch(() => undefined);
        if (pods?.items.length && pods.items.every((p) => p.status?.conditions?.some((x) => x.type === 'Ready' && x.status === 'True'))) pending.delete(name);
      }),
    );
    if (pending.size) await sleep(250);
  }
  if (pending.size) progress(`      warning: the cluster DNS of ${[...pending.keys()].join(', ')} is not ready after 60 s; see: kubectl -n ${DNS_NAMESPACE} get pods and the kubelet logs`);
  else progress(`      cluster DNS ready in every cluster (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
}

/**
 * Records a process `up` started in the state and saves it: the beforeRun of
 * every detached process (src/lab/process.ts), which runs its program only
 * after this, so a killed `up` leaves no process that `down` cannot find.
 */
function recordProcess(state: LabState, save: () => void, name: string, pid: number, logFile: string): LabState['processes'][number] {
  const ref = { name, pid, startTime: processStartTime(pid), logFile };
  state.processes.push(ref);
  save();
  return ref;
}

/** Waits (up to timeoutMs) until every Kubernetes API server listens; records their URLs and writes the lab's kubeconfig (one context per cluster). */
async function waitKubeApiServers(starts: readonly KubeApiStart[], state: LabState, timeoutMs: number): Promise<string> {
  await waitReadyFiles(starts, timeoutMs);
  for (const k of starts) {
    const ready = kubeApiReady(k);
    const c = state.clusters.find((x) => x.name === k.cluster);
    const startTime = processStartTime(ready.pid);
    if (c) c.kubeApi = { url: ready.url, pid: ready.pid, ...(startTime !== undefined ? { startTime } : {}), logFile: k.proc.spec.logFile, dir: k.dir };
  }
  const kubeconfig = join(state.dir ?? labDir(state.name), 'kubeconfig');
  await writeKubeconfig(kubeconfig, state.clusters.flatMap((c) => (c.kubeApi ? [{ name: c.name, server: c.kubeApi.url, ...kubeApiAdminPki(c.kubeApi.dir) }] : [])));
  state.kubeconfig = kubeconfig;
  return kubeconfig;
}

class StepError extends Error {
  constructor(
    readonly step: string,
    cause: unknown,
  ) {
    super(`lab up failed at step '${step}': ${(cause as Error).message ?? String(cause)}`);
    this.name = 'StepError';
  }
}

export type LabMeshMode = 'install' | 'direct' | 'bare';

/** The lab's mesh mode from up's flags: install unless direct or bare; two of them together are refused. */
export function labMeshMode(o: Pick<LabUpOptions, 'direct' | 'bare'>): LabMeshMode {
  const given = (['direct', 'bare'] as const).filter((k) => o[k] === true);
  if (given.length > 1) throw new Error(`--${given[0]} and --${given[1]} do not go together: a lab's mesh is installed (the default), --direct or --bare`);
  return given[0] ?? 'install';
}

/** Builds the lab; on failure removes what it made (as `down` would) and throws naming the step. */
export async function labUp(o: LabUpOptions): Promise<LabUpResult> {
  const name = validateLabName(o.name);
  if (o.latency) validateLatency(o.latency);
  if (o.loss) validateLoss(o.loss);
  if (o.prometheus) prometheusBinary(); // not installed: say so before building anything
  const mode = labMeshMode(o);
  const install = mode === 'install';
  const bare = mode !== 'direct'; // no lab agents or apiservers: the install's pods (or none yet)
  // An install is given them (lab-install.ts); a bare lab has no mesh they could apply to yet.
  if (mode === 'bare' && (o.prometheus || o.socketLB || o.routing?.some((r) => r !== 'tunnel'))) {
    throw new Error(`--bare goes with none of --prometheus, --socket-lb, --routing native (they are settings of the mesh; give them to clustermesh install, or leave out --bare)`);
  }
  const progress = o.progress ?? (() => undefined);
  const t0 = Date.now();
  const dir = labDir(name);
  if (existsSync(join(dir, 'lab.json'))) {
    let old: LabState | undefined;
    try {
      old = readLabState(name);
    } catch (err) {
      if (!(err instanceof NoSuchLabError)) throw new Error(`${(err as Error).message}`);
    }
    if (old && labAlive(old)) {
      throw new Error(`a lab named ${name} is already ${old.phase === 'up' ? 'up' : 'being started'} (since ${old.createdAt}); use it, or remove it first with: clustermesh lab down --lab ${name}`);
    }
    progress(`removing what a dead lab named ${name} left behind`);
    await labDown(name, { progress });
  } else if (existsSync(dir)) {
    // A directory without state: nothing of ours can be in it that we could remove exactly.
    throw new Error(`${dir} exists but holds no lab state; remove it by hand or pick another --lab`);
  }

  // The UI's port taken: say so before building anything, too.
  const ui = o.prometheus ? await openUiSocket(o.prometheusPort ?? 9090) : undefined;

  const prefix = labNetnsPrefix(name);
  const state: LabState = {
    version: LAB_STATE_VERSION,
    name,
    source: 'kubernetes',
    createdAt: new Date().toISOString(),
    pid: process.pid,
    startTime: processStartTime(process.pid),
    phase: 'starting',
    spec: { clusters: o.clusters, nodes: o.nodes, ...(o.latency ? { latency: o.latency } : {}), ...(o.loss ? { loss: o.loss } : {}) },
    dir,
    bpffsRoot: DEFAULT_BPFFS_ROOT,
    router: { netns: `${prefix}-rtr` },
    namespaces: [],
    pinDirs: [],
    processes: [],
    etcNetnsDirs: [],
    clusters: [],
    nodes: [],
  };
  const save = (): void => writeLabState(state);
  save();

  let step = 'topology';
  let topo: Topology | undefined;
  let mesh: Mesh | undefined;
  try {
    progress(`[1/6] network: router, ${o.clusters} cluster underlays, ${o.clusters * o.nodes} node namespaces`);
    topo = await createTopology(
      { clusters: o.clusters, nodesPerCluster: o.nodes, podsPerNode: 0, mode: 'clustermesh', baseName: prefix, routing: o.routing ?? 'tunnel' },
      { registry: false, onNamespace: (ns) => { state.namespaces.push(ns); save(); } },
    );
    if (o.latency || o.loss) {
      step = 'netem';
      const args = [...(o.latency ? ['delay', o.latency] : []), ...(o.loss ? ['loss', o.loss] : [])];
      for (let c = 1; c <= o.clusters; c++) {
        await run(['tc', '-n', topo.routerNetns, 'qdisc', 'replace', 'dev', routerPort(c), 'root', 'netem', ...args]).catch((err: unknown) => {
          if (/qdisc kind is unknown/i.test((err as Error).message)) {
            throw new Error(`this kernel has no netem qdisc (module sch_netem), which --latency and --loss need; load it (modprobe sch_netem) or run without them`);
          }
          throw err;
        });
      }
      progress(`      netem ${args.join(' ')} on the router's ports ${Array.from({ length: o.clusters }, (_, i) => routerPort(i + 1)).join(' ')}`);
    }

    // The node runtime: a kubelet per node, in the node's network namespace.
    const kubelets: Array<{ proc: ManagedProcess; ready: string; node: string; ref: LabState['processes'][number] }> = [];
    const startKubelets = async (m: Mesh): Promise<void> => {
      step = 'node runtime';
      progress(`[${bare ? 3 : 4}/6] node runtime: a kubelet per node (pods: netns, CNI ADD, the container's command)`);
      const cniBin = join(dir, 'cni', 'bin');
      // What a kubelet finds in CNI_PATH under the config's `type`, and `clustermesh` on the PATH of pods.
      // The plugin is the C executable (cni/build/clustermesh-cni, no Node.js): it relays to the node's agent.
      // The echo workload is the C program ECHO_BIN (anything it does not take, such as --help, goes on to
      // the full CLI); the client runs with lighter node flags (WORKLOAD_NODE_FLAGS).
      if (!existsSync(CNI_PLUGIN_PATH)) throw new Error(`the CNI plugin executable ${CNI_PLUGIN_PATH} is not built; run ./scripts/setup.sh`);
      requireEchoBin();
      if (!existsSync(PODSTART_BIN)) throw new Error(`the container start executable ${PODSTART_BIN} is not built; run ./scripts/setup.sh`);
      mkdirSync(cniBin, { recursive: true });
      rmSync(join(cniBin, 'clustermesh'), { force: true });
      symlinkSync(CNI_PLUGIN_PATH, join(cniBin, 'clustermesh'));
      // From a current dist/ (this process runs from it), pods run the workloads' CommonJS build directly.
      const podEntry = import.meta.url.includes('/dist/js/') && existsSync(WORKLOAD_POD_ENTRY) ? WORKLOAD_POD_ENTRY : CLI;
      const workload =
        `case "$1 $2 $3" in\n` +
        `  'lab workload echo') exec '${ECHO_BIN}' --or '${process.execPath}' '${CLI}' -- "$@" ;;\n` +
        `  'lab workload client') exec '${process.execPath}' ${WORKLOAD_NODE_FLAGS.join(' ')} '${podEntry}' "$@" ;;\n` +
        `esac\n`;
      mkdirSync(join(dir, 'bin'), { recursive: true });
      writeFileSync(join(dir, 'bin', 'clustermesh'), `#!/bin/sh\n# clustermesh of lab ${name}\n${workload}exec '${process.execPath}' '${CLI}' "$@"\n`);
      chmodSync(join(dir, 'bin', 'clustermesh'), 0o755);
      // Installed or --bare: no lab agents; a kubelet per node of the topology, the CNI config from what the installed agent writes.
      const nodes = bare
        ? m.topo.nodes.map((node) => ({ node, cluster: m.clusters.find((c) => c.index === node.cluster)!, dir: join(m.clusters.find((c) => c.index === node.cluster)!.dir, node.name), socket: undefined }))
        : m.agents.map((a) => ({ node: a.node, cluster: a.cluster, dir: a.dir, socket: a.socket }));
      for (const a of nodes) {
        mkdirSync(a.dir, { recursive: true });
        const cfg: KubeletConfig = {
          lab: name,
          cluster: a.cluster.name,
          clusterID: a.cluster.id,
          node: a.node.name,
          nodeNetns: a.node.netns,
          netnsPrefix: `${prefix}-c${a.cluster.id}`,
          nodeDir: a.dir,
          cniPath: cniBin,
          netconf: {
            cniVersion: '1.0.0',
            name: 'clustermesh',
            type: 'clustermesh',
            agentSocket: a.socket,
            underlayMtu: m.topo.spec.underlayMtu,
            ipam: { podCIDR: a.node.podCIDR, gateway: a.node.gatewayIP, rangeStart: a.node.podCIDR.replace(/0\/24$/, '10') },
          },
          dnsIP: DNS_SERVICE_IP,
          ...(a.node.cgroup !== undefined ? { cgroup: a.node.cgroup } : {}),
          kubeconfig: localKubeconfig(a.cluster.dir),
          nodeIP: a.node.underlayIP,
          ...(bare ? { ...installedKubeletFields(a.dir), podCIDR: a.node.podCIDR } : {}),
          ...kubeletConfigOverrides(process.env.CLUSTERMESH_LAB_KUBELET_CONFIG, { nodeDir: a.dir, node: a.node.name }),
        };
        const cfgFile = kubeletConfigFile(a.dir);
        writeFileSync(cfgFile, JSON.stringify(cfg, null, 2) + '\n');
        const ready = join(a.dir, 'kubelet.ready');
        rmSync(ready, { force: true });
        const logFile = join(a.dir, 'kubelet.log');
        const kname = `kubelet ${a.cluster.name}/${a.node.name}`;
        let ref: LabState['processes'][number] | undefined;
        // In the node's network namespace, but in this mount namespace (nsenter, not
        // `ip netns exec`), so the pod namespaces it adds are visible to everyone.
        const proc = new ManagedProcess({
          name: kname,
          logFile,
          argv: ['nsenter', `--net=/var/run/netns/${a.node.netns}`, process.execPath, CLI, 'lab', 'kubelet', '--config', cfgFile],
          env: childEnv(),
          detached: true,
          beforeRun: (pid) => {
            ref = recordProcess(state, save, kname, pid, logFile);
          },
        });
        await proc.start();
        kubelets.push({ proc, ready, node: `${a.cluster.name}/${a.node.name}`, ref: ref! });
      }
    };

    step = 'control plane';
    progress(
      bare
        ? `[2/6] control plane: the Kubernetes API per cluster over its own etcd (mutual TLS; with a node-local endpoint 127.0.0.1:6443 in every node and control-plane namespace); no mesh yet`
        : `[2/6] control plane: per cluster the mesh's etcd and, separate, the Kubernetes etcd (both mutual TLS), the Kubernetes API (the one local source, with a node-local endpoint 127.0.0.1:6443 in every node and control-plane namespace) and apiserver`,
    );
    const onCreated = (ev: MeshCreated): void => {
      if (ev.kind === 'netns') state.namespaces.push(ev.name);
      else if (ev.kind === 'pinDir') state.pinDirs.push(ev.path);
      else {
        state.processes.push({ name: `${ev.role} ${ev.cluster}${ev.node ? `/${ev.node}` : ''}`, pid: ev.pid, startTime: processStartTime(ev.pid), logFile: ev.logFile });
      }
      save();
    };
    mesh = await startMesh(topo, {
      dir,
      detached: true,
      registry: false,
      keepDir: true,
      onCreated,
      readyTimeoutMs: o.readyTimeoutMs ?? 90_000,
      ...(o.socketLB ? { agent: { socketLB: true } } : {}),
      ...(bare ? { apiservers: false } : {}),
      // The mesh starts the Kubernetes API (and its node-local endpoints) before the apiservers; the kubelets register the Nodes.
      registerNodes: false,
      progress: (l) => {
        if (/apiservers synced/.test(l)) {
          step = 'agents';
          progress(`      ${l}`);
          progress(`[3/6] agents: one per node, each in its node's namespace, connecting to every cluster`);
        } else progress(`      ${l}`);
      },
    });
    let readyMs = Date.now() - t0;
    // Kubelets after the agents: started beside them they compete for the CPU and delay all-connected by
    // more than they save (measured on 2 vCPUs: 16 s vs 21-27 s to all-connected, the same total).
    if (!bare) progress(`      every agent ready and connected to every other cluster: ${(readyMs / 1000).toFixed(1)} s after start`);
    await startKubelets(mesh);

    step = 'state';
    const etcdRecord = (e: EtcdServer): LabEtcd => {
      const root = e.connection('root');
      return {
        endpoints: [e.endpoint],
        localEndpoints: [e.localEndpoint],
        localServerName: 'localhost',
        caFile: root.caFile,
        certFile: root.certFile,
        keyFile: root.keyFile,
        dir: e.dir,
        ...(e.pid !== undefined ? { pid: e.pid, startTime: processStartTime(e.pid) } : {}),
        logFile: e.logFile,
      };
    };
    for (const c of mesh.clusters) {
      state.clusters.push({
        name: c.name,
        id: c.id,
        netns: c.netns,
        ip: c.ip,
        dir: c.dir,
        // Bare: the one etcd is the Kubernetes etcd (the install's etcd is a pod).
        etcd: etcdRecord(c.etcd),
        kubeEtcd: etcdRecord(c.kubeEtcd),
        // Installed: the apiserver is the install's Deployment (kubectl logs); this records where a lab one would log.
        apiserver: {
          ...(c.apiserver.pid !== undefined ? { pid: c.apiserver.pid, startTime: processStartTime(c.apiserver.pid) } : {}),
          logFile: c.apiserver.spec.logFile,
          ...(bare ? {} : { etcdConfig: c.apiserverEtcdConfig }),
        },
        remoteConfigDir: c.remoteConfigDir,
        serviceCIDR: SERVICE_CIDR,
      });
    }
    // A bare lab is one an install is expected on (by the user): its nodes are recorded where the install's agents will be.
    if (bare) state.install = { namespace: DEFAULT_NAMESPACE, image: LAB_INSTALL_IMAGE };
    for (const node of bare ? mesh.topo.nodes : []) {
      const cluster = mesh.clusters.find((c) => c.index === node.cluster)!;
      const nodeDir = join(cluster.dir, node.name);
      const paths = installedAgentPaths(nodeDir, cluster.name, node.name);
      state.nodes.push({
        name: node.name,
        cluster: cluster.name,
        netns: node.netns,
        underlayIP: node.underlayIP,
        podCIDR: node.podCIDR,
        gatewayIP: node.gatewayIP,
        ...paths,
        // The agent's config is the install's ConfigMap, its log the agent pod's (clustermesh lab logs node/NAME).
        configFile: '',
        logFile: '',
        dir: nodeDir,
      });
    }
    for (const a of mesh.agents) {
      state.nodes.push({
        name: a.node.name,
        cluster: a.cluster.name,
        netns: a.node.netns,
        underlayIP: a.node.underlayIP,
        podCIDR: a.node.podCIDR,
        gatewayIP: a.node.gatewayIP,
        pinDir: a.pinDir,
        socket: a.socket,
        stateDir: a.stateDir,
        configFile: a.configFile,
        logFile: a.logFile,
        ...(a.process.pid !== undefined ? { pid: a.process.pid, startTime: processStartTime(a.process.pid) } : {}),
        dir: a.dir,
      });
    }
    save();

    // The Kubernetes API servers have listened since the mesh started: the kubeconfig now, and the cluster DNS
    // objects applied while the kubelets start (its pods are created and wait for the Nodes the kubelets register).
    step = 'Kubernetes API';
    const kubeconfig = await waitKubeApiServers(mesh.kubeApis, state, 60_000);
    save();
    progress(`      Kubernetes API per cluster: ${state.clusters.map((c) => `${c.name} ${c.kubeApi?.url ?? '-'}`).join(', ')}; kubeconfig ${kubeconfig} (a context per cluster)`);
    if (bare) {
      // The lab's workstation (`clustermesh lab run`): the router namespace reaches every cluster's underlay
      // (load balancer addresses included, which this host must not dial: they are not its networks), and gets
      // each cluster's Kubernetes API on the very 127.0.0.1 port of the lab's kubeconfig.
      const endpoints: Array<{ proc: ManagedProcess; readyFile: string }> = [];
      for (const c of state.clusters) {
        const readyFile = join(c.dir!, 'workstation-api.ready');
        rmSync(readyFile, { force: true });
        const logFile = join(c.dir!, 'workstation-api.log');
        const pname = `kube-api-endpoint ${c.name}/workstation`;
        const proc = new ManagedProcess({
          name: pname,
          netns: topo.routerNetns,
          logFile,
          argv: [process.execPath, CLI, 'lab', 'kube-api-endpoint', '--socket', kubeApiSocket(c.dir!), '--listen', new URL(c.kubeApi!.url).host, '--ready-file', readyFile],
          env: childEnv(),
          detached: true,
          beforeRun: (pid) => void recordProcess(state, save, pname, pid, logFile),
        });
        await proc.start();
        endpoints.push({ proc, readyFile });
      }
      await waitReadyFiles(endpoints, 60_000);
    }
    step = 'cluster DNS';
    const dnsT0 = Date.now();
    await applyClusterDns(state);
    save();

    step = 'node runtime';
    const end = Date.now() + 60_000;
    for (const k of kubelets) {
      while (!existsSync(k.ready)) {
        if (!k.proc.running) throw new Error(`${k.proc.describe(10)}`);
        if (Date.now() > end) throw new Error(`kubelet ${k.node} not ready after 60 s; log ${k.proc.spec.logFile}`);
        await sleep(50);
      }
      const node = state.nodes.find((n) => `${n.cluster}/${n.name}` === k.node);
      if (node) node.kubelet = { pid: k.ref.pid, startTime: k.ref.startTime, logFile: k.ref.logFile };
    }
    save();

    if (install) {
      step = 'install';
      progress(`[4/6] the mesh, installed as on any Kubernetes cluster: clustermesh install and connect by kube context (the lab's kubeconfig)`);
      await installMesh({
        state,
        cli: [process.execPath, CLI],
        progress,
        timeoutMs: Math.max(240_000, o.readyTimeoutMs ?? 0),
        routing: topo.spec.routing,
        tunnelEncap: topo.spec.tunnelEncap,
        ...(o.socketLB ? { socketLB: true } : {}),
        ...(o.prometheus ? { metrics: true } : {}),
      });
      readyMs = Date.now() - t0;
      state.readyMs = readyMs;
      save();
      progress(`      every agent ready and connected to every other cluster: ${(readyMs / 1000).toFixed(1)} s after start`);
    }

    step = 'cluster DNS';
    progress(`[5/6] cluster DNS: Deployment kube-system/cluster-dns behind Service kube-system/kube-dns (${DNS_SERVICE_IP}) in every cluster, applied to and reading the Kubernetes API`);
    if (mode === 'bare') progress(`      the DNS pods wait for a CNI configuration (NetworkNotReady): they start once the mesh is installed`);
    else await waitClusterDns(state, dnsT0, progress);
    save();

    if (o.prometheus) {
      step = 'prometheus';
      const p = await startLabPrometheus({
        dir: join(dir, 'prometheus'),
        routerNetns: topo.routerNetns,
        ui: ui!,
        cli: CLI,
        // Installed: `lab prometheus-sd` lists the install's pods from each cluster's API at every refresh.
        targets: install
          ? { kubeconfig: state.kubeconfig!, contexts: state.clusters.map((c) => c.name), namespace: state.install!.namespace }
          : {
              agents: state.nodes.map((n) => ({ cluster: n.cluster, node: n.name, address: `${n.underlayIP}:${AGENT_METRICS_PORT}` })),
              apiservers: state.clusters.map((c) => ({ cluster: c.name, address: `${c.ip}:${APISERVER_METRICS_PORT}` })),
            },
        record: (procName, pid, logFile) => void recordProcess(state, save, procName, pid, logFile),
      });
      state.prometheus = { url: p.url, configFile: p.configFile, logFile: p.prometheus.spec.logFile };
      save();
      await waitPrometheusReady(p.url, p.prometheus, 60_000);
      progress(`      prometheus (Debian's, in the router namespace) scrapes ${state.nodes.length} agents and ${state.clusters.length} apiservers every 5 s; open ${p.url}/`);
    }

    step = 'finish';
    state.phase = 'up';
    state.readyMs = readyMs;
    save();
    await mesh.release();
    const totalMs = Date.now() - t0;
    progress(`[6/6] lab ${name} is up: ${o.clusters} clusters x ${o.nodes} nodes in ${(totalMs / 1000).toFixed(1)} s (${mode === 'bare' ? 'no mesh: install it with clustermesh install and connect, by context' : `all connected after ${(readyMs / 1000).toFixed(1)} s`}); state in ${dir}; export KUBECONFIG=${kubeconfig}`);
    return { state, readyMs, totalMs };
  } catch (err) {
    ui?.close();
    state.phase = 'failed';
    state.error = `${step}: ${(err as Error).message}`;
    try {
      save();
    } catch {
      /* the dir may be gone */
    }
    // The logs outlive the cleanup: copied to <labRoot>/.failed/<name>-<time>/, and the error names them there.
    let kept: string | undefined;
    try {
      kept = keepLogs(dir, join(labRoot(), '.failed', `${name}-${new Date().toISOString().replace(/[:.]/g, '-')}`));
    } catch {
      kept = undefined;
    }
    const failure = new StepError(step, kept ? new Error((err as Error).message.split(dir).join(kept)) : err);
    progress(`${failure.message.split('\n')[0]}`);
    progress(`cleaning up what was made${kept ? `; the logs are kept in ${kept}` : ''}`);
    try {
      if (mesh) await mesh.stop().catch(() => undefined);
      else if (topo) await destroyTopology(topo).catch(() => undefined);
    } finally {
      await labDown(name, { progress: () => undefined }).catch((e: unknown) => {
        if (!(e instanceof NoSuchLabError)) progress(`cleanup: ${(e as Error).message}`);
      });
    }
    throw failure;
  }
}

/** Copies every *.log under `from` to the same relative path under `to`; returns `to`, or undefined when there was none. */
function keepLogs(from: string, to: string): string | undefined {
  let copied = 0;
  const walk = (rel: string): void => {
    for (const e of readdirSync(join(from, rel), { withFileTypes: true })) {
      const r = join(rel, e.name);
      if (e.isDirectory()) walk(r);
      else if (e.isFile() && e.name.endsWith('.log')) {
        mkdirSync(join(to, rel), { recursive: true });
        copyFileSync(join(from, r), join(to, r));
        copied++;
      }
    }
  };
  if (existsSync(from)) walk('');
  return copied ? to : undefined;
}

export interface LabDownOptions {
  progress?: (line: string) => void;
  /** Keep the lab dir (logs) -- for a failed up under KEEP_LAB_LOGS. */
  keepDir?: boolean;
}

export interface LabDownResult {
  killed: string[];
  namespaces: string[];
  pinDirs: string[];
  /** Mounts under the lab dir (the nodes' host filesystems) that were unmounted. */
  unmounted: string[];
  errors: string[];
}

/** Does /proc/<pid>/cmdline still mention `needle` (the lab dir)? Guards against signalling a recycled pid. */
function cmdlineMentions(pid: number, needle: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(needle);
  } catch {
    return false;
  }
}

/** SIGTERM, then SIGKILL after graceMs; only when (pid, start time) is still the process we recorded. */
export async function stopRecordedProcess(ref: { pid: number; startTime?: string | undefined }, graceMs = 3000): Promise<boolean> {
  if (!sameProcessAlive(ref)) return false;
  try {
    process.kill(ref.pid, 'SIGTERM');
  } catch {
    return false;
  }
  const end = Date.now() + graceMs;
  while (Date.now() < end) {
    if (!sameProcessAlive(ref)) return true;
    await sleep(25);
  }
  try {
    if (sameProcessAlive(ref)) process.kill(ref.pid, 'SIGKILL');
  } catch {
    /* gone */
  }
  for (let i = 0; i < 200 && sameProcessAlive(ref); i++) await sleep(10);
  return true;
}

/**
 * Removes what the state file of lab `name` records: pod processes, pod
 * namespaces and their /etc/netns dirs (from the kubelets' pod records),
 * kubelets, agents, apiservers and Kubernetes API servers, etcds, pin dirs, namespaces, the lab dir.
 * Every step is attempted; errors are collected and thrown at the end.
 */
export function labDown(name: string, o: LabDownOptions = {}): Promise<LabDownResult> {
  // One at a time in this process (an interrupted up and its own failure path may both ask).
  const next = downQueue.then(() => labDownNow(name, o));
  downQueue = next.catch(() => undefined);
  return next;
}
let downQueue: Promise<unknown> = Promise.resolve();

async function labDownNow(name: string, o: LabDownOptions): Promise<LabDownResult> {
  const progress = o.progress ?? (() => undefined);
  const state = readLabState(name);
  const dir = state.dir ?? labDir(name);
  const out: LabDownResult = { killed: [], namespaces: [], pinDirs: [], unmounted: [], errors: [] };
  const attempt = async (what: string, fn: () => Promise<unknown> | unknown): Promise<void> => {
    try {
      await fn();
    } catch (err) {
      out.errors.push(`${what}: ${(err as Error).message}`);
    }
  };
  if (state.phase === 'starting' && state.pid !== process.pid && sameProcessAlive({ pid: state.pid, startTime: state.startTime })) {
    throw new Error(`lab ${name} is still being started by pid ${state.pid}; wait for it, or stop it (kill ${state.pid}) and run down again`);
  }

  // 1. kubelets first, so nothing recreates pods while we remove them.
  const byRole = (re: RegExp) => state.processes.filter((p) => re.test(p.name));
  const stopAll = async (refs: LabState['processes'], graceMs: number): Promise<void> => {
    await Promise.all(
      refs.map((p) =>
        attempt(`stop ${p.name} (pid ${p.pid})`, async () => {
          // Without a recorded start time the command line must name this lab's dir.
          if (p.startTime === undefined && !cmdlineMentions(p.pid, dir)) return;
          if (await stopRecordedProcess(p, graceMs)) out.killed.push(`${p.name} (pid ${p.pid})`);
        }),
      ),
    );
  };
  await stopAll(byRole(/^kubelet /), 1000);

  // 2. pods: processes, namespaces, resolv.conf dirs.
  const pods = podRecordsOf(dir);
  await Promise.all(
    pods.flatMap((r: PodRecord) =>
      r.containers.map((c) =>
        attempt(`stop pod ${r.namespace}/${r.name} container ${c.name}`, async () => {
          if (c.pid !== undefined && sameProcessAlive({ pid: c.pid, startTime: c.startTime })) {
            await stopGroup({ pid: c.pid, startTime: c.startTime }, 1000);
            out.killed.push(`pod ${r.namespace}/${r.name}/${c.name} (pid ${c.pid})`);
          }
        }),
      ),
    ),
  );
  const present = new Set(await listNamespaces().catch(() => [] as string[]));
  for (const r of pods) {
    if (present.has(r.netns)) await attempt(`delete pod namespace ${r.netns}`, async () => {
      try {
        await run(['ip', 'netns', 'del', r.netns]);
      } catch (err) {
        if ((await listNamespaces()).includes(r.netns)) throw err;
        return;
      }
      out.namespaces.push(r.netns);
    });
    await attempt(`remove /etc/netns/${r.netns}`, () => rmSync(join('/etc/netns', r.netns), { recursive: true, force: true }));
  }
  for (const d of state.etcNetnsDirs) await attempt(`remove ${d}`, () => rmSync(d, { recursive: true, force: true }));
  // Mounts of the nodes' host filesystems (hostPath mount propagation, an agent pod's bpffs): none may stay.
  await attempt('unmount the nodes\' host filesystems', () => {
    if (existsSync(dir)) for (const t of unmountUnder(dir)) out.unmounted.push(t);
  });

  // 3. agents, apiservers and Kubernetes API servers, then the etcds (which they talk to); then anything else recorded.
  await stopAll(byRole(/^agent /), 3000);
  await stopAll(byRole(/^(apiserver|kube-apiserver) /), 3000);
  await stopAll(byRole(/^(etcd|kube-etcd) /), 5000);
  await stopAll(state.processes.filter((p) => !/^(kubelet|agent|apiserver|kube-apiserver|etcd|kube-etcd) /.test(p.name)), 3000);
  // An etcd whose pid was not recorded yet (up killed while it started) left its pid file: the mesh's and the Kubernetes etcd.
  await attempt('stop unrecorded etcds', async () => {
    for (const c of existsSync(dir) ? readdirSync(dir) : []) {
      for (const role of ['etcd', 'kube-etcd'] satisfies ClusterEtcdRole[]) {
        const pidFile = join(dir, c, role, 'etcd.pid');
        if (!existsSync(pidFile)) continue;
        const pid = Number(readFileSync(pidFile, 'utf8').trim());
        if (Number.isInteger(pid) && pid > 0 && cmdlineMentions(pid, dir) && (await stopRecordedProcess({ pid }, 5000))) out.killed.push(`${role} ${c} (pid ${pid}, from its pid file)`);
      }
    }
  });

  // 4. pins, then namespaces (links, netem and routes go with them).
  for (const p of state.pinDirs) {
    if (!existsSync(p)) continue;
    await attempt(`remove pins ${p}`, () => {
      removePinDir(p);
      out.pinDirs.push(p);
    });
  }
  const nowPresent = new Set(await listNamespaces().catch(() => [] as string[]));
  for (const ns of [...state.namespaces].reverse()) {
    if (!nowPresent.has(ns)) continue;
    await attempt(`delete namespace ${ns}`, async () => {
      try {
        await run(['ip', 'netns', 'del', ns]);
      } catch (err) {
        // Removed by someone else meanwhile (e.g. a concurrent down): done.
        if ((await listNamespaces()).includes(ns)) throw err;
        return;
      }
      out.namespaces.push(ns);
    });
  }
  // 4b. the node cgroups, named after the node namespaces (their processes are gone by now).
  for (const ns of state.namespaces) {
    await attempt(`remove cgroup of ${ns}`, () => removeNodeCgroup(ns));
  }
  // 5. the lab dir (state, PKI, logs), unless something could not be removed: then the state stays for another try.
  if (out.errors.length === 0 && !o.keepDir) {
    await attempt(`remove ${dir}`, () => rmSync(dir, { recursive: true, force: true }));
  }
  progress(
    `lab ${name} removed: ${out.killed.length} processes stopped, ${out.namespaces.length} namespaces and ${out.pinDirs.length} pin dirs removed` +
      (out.errors.length ? `; ${out.errors.length} steps failed:\n  ${out.errors.join('\n  ')}` : ''),
  );
  if (out.errors.length) throw new Error(`lab down ${name}: ${out.errors.length} steps failed (state kept in ${dir}; run down again): ${out.errors[0]}`);
  return out;
}

/** For `up` progress and tests: the namespaces named with a lab's prefix that exist now. */
export async function namespacesOfLab(name: string): Promise<string[]> {
  const prefix = `${labNetnsPrefix(name)}-`;
  return (await listNamespaces()).filter((n) => n.startsWith(prefix));
}

// The control plane of the test bed: on a topology built in 'clustermesh'
// mode, each cluster gets a control-plane namespace on its underlay with two
// real etcds (mutual TLS, one launcher: startClusterEtcd): the mesh's kvstore
// (the mesh's roles) and, separate as in a real cluster, the Kubernetes etcd
// that stores its Kubernetes API's objects (user `kube`; a bare cluster has
// only this one, the install brings the mesh's); its Kubernetes API (the one
// local source: src/lab/kube-api-procs.ts, with a node-local endpoint
// 127.0.0.1:6443 in the control-plane and every node namespace; seeded with
// Cilium's policy CRDs, the MCS API CRDs, the namespaces and a Ready Node per
// node; tests write objects with mesh.kube(c), kubectl with
// mesh.kubeconfig(c)) and its apiserver, and every node gets its agent,
// running inside the node's namespace as its own process with its own
// config, log, state and pin directory. Remote-cluster config
// directories connect every cluster to every other.
//
// Addressing: the control plane of cluster c sits at 10.c.0.250 on br<c>
// (default route via the router, like a node), the mesh's etcd listens on
// https://10.c.0.250:2379 there, the Kubernetes etcd on https://127.0.0.1:2381
// (that namespace's loopback: nothing else in the lab reaches it). This process
// reaches each etcd through the TLS unix socket in its dir (see
// etcd-process.ts), and each agent through the unix socket in its state dir.
//
// Everything started here is tracked by its handle (pid) and stopped by
// mesh.stop(), which is safe after a partial start and safe to call twice.
import { existsSync, rmSync } from 'node:fs';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { stringify as toYaml } from 'yaml';
import { ensureBpffs, removePinDir, DEFAULT_BPFFS_ROOT } from '../datapath/bpffs.ts';
import { BpfMap } from '../datapath/libbpf/index.ts';
import * as ipcache from '../datapath/maps/ipcache.ts';
import { clusterConfigKey, syncedKey, SYNCED_PREFIX_NAMES } from '../clustermesh/keys.ts';
import { KvClient } from '../kvstore/client.ts';
import { validateClusterId } from '../model/cluster.ts';
import { startEtcd as launchEtcd, type EtcdServer } from '../kvstore/etcd-process.ts';
import { MESH_ROLES } from '../clustermesh/etcd.ts';
import { meshCrds } from '../install/manifests.ts';
import { kubeConfigFor } from './controllers/index.ts';
import { writeKubeconfig } from './kube-api/index.ts';
import { KUBE_ETCD_PORT, KUBE_ETCD_ROLES, kubeApiAdminPki, kubeApiReady, localKubeconfig, startKubeApiForComponents, waitReadyFiles, type KubeApiStart } from './kube-api-procs.ts';
import { KubeObjects } from './kube-objects.ts';
import { AgentClient } from '../agent/client.ts';
import type { LogLevel } from '../agent/config.ts';
import type { AgentStatus } from '../agent/status.ts';
import type { EndpointDeleteResult, EndpointInfo, EndpointRequest } from '../agent/types.ts';
import { readNodeMetrics } from './datapath.ts';
import { ipBatch, run, runIn } from './exec.ts';
import { PollAbort, PollTimeoutError, pollUntil } from '../util/poll.ts';
import { ManagedProcess, childEnv } from './process.ts';
import { AGENT_METRICS_PORT, APISERVER_METRICS_PORT } from './prometheus.ts';
import { recordTopology } from './registry.ts';
import { labLbPool } from './cloud-lb.ts';
import { clusterName, routerUnderlayIP, routingSettings, topologyBase, type NodeInfo, type PodInfo, type Topology } from './topology.ts';

const CLI = resolve(import.meta.dirname, '..', '..', 'bin', 'clustermesh.js');
export const ETCD_PORT = 2379;
export const TUNNEL_PORT = 8472;
export const VXLAN_DEVICE = 'cm_vxlan';

/** The control-plane address of cluster c on its underlay. */
export const controlPlaneIP = (c: number): string => `10.${c}.0.250`;

export interface MeshOptions {
  /** Directory for everything of this mesh: etcd data and PKI, configs, logs, agent state.
   * Created when missing; stop() removes what the mesh created in it (all of it when it made the dir). */
  dir: string;
  /** Start an agent per node (default true). Without, the mesh is etcd + apiserver per cluster. */
  agents?: boolean;
  /** Start the clustermesh apiserver per cluster (default true). Without (and then without agents): bare
   * Kubernetes-shaped clusters, with no mesh etcd either (only the Kubernetes etcd, the store of each
   * cluster's Kubernetes API), on which `clustermesh install` puts the mesh (lab up's default). */
  apiservers?: boolean;
  /** The clusters (1-based) that get a control plane and agents (default: all). The nodes of the
   * others are left to the caller, e.g. to stand in for a foreign (Cilium) cluster. */
  clusters?: number[];
  /** Settings of every agent's config file. */
  agent?: {
    syncTimeoutSeconds?: number;
    fullSyncIntervalSeconds?: number;
    logLevel?: LogLevel;
    maxConnectedClusters?: 255 | 511;
    /** Socket-level load balancing on each node's cgroup (topology NodeInfo.cgroup); default false. */
    socketLB?: boolean;
    /** Merged into every agent config last (settings the contract does not name yet). */
    extra?: Record<string, unknown>;
  };
  apiserver?: { logLevel?: LogLevel; extraArgs?: string[] };
  /** Cluster ID of each cluster, in topology order (default: cluster c has ID c). Names and
   * addresses still follow the index; e.g. [1, 2, 255, 511] with agent.maxConnectedClusters 511. */
  clusterIds?: number[];
  /** Namespaces created in every cluster's Kubernetes API before agents start (default ['default']). */
  namespaces?: string[];
  /** How long start and restarts wait for readiness (default 60 s). */
  readyTimeoutMs?: number;
  /** Root of the project's bpffs (default /run/clustermesh/bpffs). */
  bpffsRoot?: string;
  /** Keep `dir` after stop() (default: only when KEEP_MESH_DIR is set). */
  keepDir?: boolean;
  /** Progress lines (default: none). */
  progress?: (line: string) => void;
  /** Let etcd, apiservers and agents outlive this process (the lab's `up`; default false:
   * they die with it). stop() still stops them while this process runs. */
  detached?: boolean;
  /** Record control-plane namespaces in the crash registry (default true; the lab keeps its own state). */
  registry?: boolean;
  /** Told about every namespace and pin dir right before it is created, and every process after its spawn but before its program runs (the lab's state; see src/util/held-start.ts). etcd and kube-etcd: right after it serves, its pid file before. */
  onCreated?: (ev: MeshCreated) => void;
  /** Register a Ready Node per node in the Kubernetes API (default true; a lab's kubelets register their own). */
  registerNodes?: boolean;
}

export { localKubeconfig };

export type MeshCreated =
  | { kind: 'netns'; name: string }
  | { kind: 'pinDir'; path: string }
  | { kind: 'process'; role: ClusterEtcdRole | 'apiserver' | 'agent' | 'kube-apiserver' | 'kube-api-endpoint'; cluster: string; node?: string; pid: number; logFile: string };

/** The two etcds of a cluster: 'etcd' the mesh's kvstore, 'kube-etcd' the store of its Kubernetes API. */
export type ClusterEtcdRole = 'etcd' | 'kube-etcd';

export interface MeshCluster {
  /** 1-based, as in the topology. */
  index: number;
  name: string;
  id: number;
  /** The control-plane namespace (etcds, apiserver). */
  netns: string;
  ip: string;
  dir: string;
  /** The mesh's etcd (the clustermesh kvstore). A bare cluster (apiservers: false) has none: this is then its kubeEtcd. */
  etcd: EtcdServer;
  /** The Kubernetes etcd: only the cluster's Kubernetes API uses it (user `kube`); the mesh's etcd holds no Kubernetes object. */
  kubeEtcd: EtcdServer;
  /** etcd client config (YAML) of the apiserver, user apiserver (not written in a bare cluster). */
  apiserverEtcdConfig: string;
  apiserver: ManagedProcess;
  /** One file per other cluster: endpoint, CA and a `remote`-user certificate of that cluster. */
  remoteConfigDir: string;
}

export interface MeshAgent {
  node: NodeInfo;
  cluster: MeshCluster;
  dir: string;
  configFile: string;
  logFile: string;
  stateDir: string;
  socket: string;
  pinDir: string;
  process: ManagedProcess;
  /** The agent's local API (src/agent/client.ts). */
  api: AgentClient;
}

export interface AddPodOptions {
  labels?: Record<string, string>;
  namespace?: string;
  podName?: string;
  containerID?: string;
  serviceAccount?: string;
}

/** One ipcache entry as read from a pinned map. */
export interface IpcacheEntry extends ipcache.Value {
  prefix: string;
}

export interface Mesh {
  readonly topo: Topology;
  readonly dir: string;
  readonly clusters: readonly MeshCluster[];
  readonly agents: readonly MeshAgent[];
  /** The Kubernetes API server of each cluster (its process, dir and ready file). */
  readonly kubeApis: readonly KubeApiStart[];
  cluster(c: number | string): MeshCluster;
  agent(node: NodeInfo | string): MeshAgent;
  /** A client of the cluster's Kubernetes API (admin). */
  kube(cluster: number | string): KubeObjects;
  /** A kubeconfig file for the cluster's Kubernetes API (admin, context named like the cluster). */
  kubeconfig(cluster: number | string): string;
  /** A client of the cluster's etcd for this process (cached; closed by stop()). */
  kv(cluster: number | string, user?: 'root' | 'apiserver' | 'agent' | 'remote'): KvClient;
  /** Resolves when every agent is healthy and sees every other cluster, and every apiserver has synced. */
  waitReady(timeoutMs?: number): Promise<void>;
  /** Resolves when the cluster's apiserver has written cluster-config and every synced canary. */
  waitApiserverSynced(cluster: number | string, timeoutMs?: number): Promise<void>;
  /** SIGKILL the node's agent. */
  killAgent(node: NodeInfo | string): Promise<void>;
  /** SIGTERM the node's agent (SIGKILL after a grace period). */
  stopAgent(node: NodeInfo | string): Promise<void>;
  /** Starts the node's agent again (stopping it first if it runs) and waits until it is healthy. */
  restartAgent(node: NodeInfo | string, opts?: { waitReady?: boolean; timeoutMs?: number }): Promise<void>;
  /** SIGKILL the cluster's (mesh) etcd. */
  killEtcd(cluster: number | string): Promise<void>;
  /** Starts the cluster's (mesh) etcd again; `empty` wipes its data first (roles are re-created). The Kubernetes etcd
   * and the objects of the cluster's Kubernetes API are not touched (as a real cluster's lost kvstore). */
  startEtcd(cluster: number | string, opts?: { empty?: boolean }): Promise<void>;
  /** Stops (SIGTERM, or SIGKILL with kill) a cluster's Kubernetes API process; its node-local endpoints stay. */
  stopKubeApi(cluster: number | string, opts?: { kill?: boolean }): Promise<void>;
  /** Starts it again on its data and waits until it listens. */
  startKubeApi(cluster: number | string): Promise<void>;
  /** A second apiserver process for a cluster, the same settings as its own (an upgrade overlap); stopped with the mesh. */
  startSecondApiserver(cluster: number | string): Promise<ManagedProcess>;
  /** Stops the cluster's apiserver and makes `next` (from startSecondApiserver) its apiserver. */
  replaceApiserver(cluster: number | string, next: ManagedProcess): Promise<void>;
  /** Registers a pod of the topology with its node's agent (its veth, MAC and IP). */
  addPod(pod: PodInfo, opts?: AddPodOptions): Promise<EndpointInfo>;
  /** Registers any endpoint with an agent (e.g. a bench's veth that has no pod namespace). */
  addEndpoint(node: NodeInfo | string, containerID: string, req: EndpointRequest): Promise<EndpointInfo>;
  deletePod(pod: PodInfo, opts?: { containerID?: string }): Promise<EndpointDeleteResult>;
  deleteEndpoint(node: NodeInfo | string, containerID: string): Promise<EndpointDeleteResult>;
  agentStatus(node: NodeInfo | string): Promise<AgentStatus>;
  /** The node's ipcache map, read from its pin. */
  readIpcache(node: NodeInfo | string): Map<string, IpcacheEntry>;
  /** Deletes one ipcache entry behind the agent's back (drift tests); true when it was there. */
  deleteIpcacheEntry(node: NodeInfo | string, prefix: string): boolean;
  /** The node's drop counters (packets per reason name, both directions, summed over CPUs). */
  readDrops(node: NodeInfo | string): Map<string, number>;
  /** Stops everything this mesh started, removes its pins, namespaces and (unless kept) its dir. */
  stop(): Promise<void>;
  /** Closes this process's clients and leaves everything running (detached meshes: the lab's `up`). */
  release(): Promise<void>;
}


/**
 * Waits until `cond` holds (checked after 20 ms, then up to every 250 ms); a
 * PollAbort from it (the process awaited died) ends the wait at once. On
 * timeout, the error names what was awaited, the last error, and `explain()`
 * (e.g. the process's state and log tail).
 */
async function waitUntil(what: string, timeoutMs: number, cond: () => Promise<boolean> | boolean, explain?: () => Promise<string> | string): Promise<void> {
  try {
    await pollUntil(async () => (await cond()) || undefined, { timeoutMs, intervalMs: 20, maxIntervalMs: 250, describe: what });
  } catch (err) {
    if (err instanceof PollAbort) throw new Error(`mesh: gave up waiting for ${what}: ${err.message}`);
    if (!(err instanceof PollTimeoutError)) throw err;
    const more = explain ? await Promise.resolve(explain()).catch(() => '') : '';
    throw new Error(`mesh: ${err.message}${more ? `\n${more}` : ''}`);
  }
}

/** Waits for every promise; then rethrows the first failure. */
async function settleAll(promises: Array<Promise<unknown>>): Promise<void> {
  const results = await Promise.allSettled(promises);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

export async function startMesh(topo: Topology, opts: MeshOptions): Promise<Mesh> {
  if (topo.spec.mode !== 'clustermesh') throw new Error(`mesh: topology ${topo.id} is wired as '${topo.spec.mode}', not 'clustermesh'`);
  if (opts.clusterIds !== undefined) {
    const ids = opts.clusterIds;
    if (ids.length !== topo.spec.clusters) throw new Error(`mesh: clusterIds has ${ids.length} IDs for ${topo.spec.clusters} clusters`);
    if (new Set(ids).size !== ids.length) throw new Error(`mesh: clusterIds repeats an ID: ${ids.join(', ')}`);
    for (const id of ids) {
      const problem = id === 0 ? 'cluster ID 0 is not in a mesh' : validateClusterId(id, opts.agent?.maxConnectedClusters ?? 255);
      if (problem) throw new Error(`mesh: clusterIds: ${problem}`);
    }
  }
  const mesh = new LabMesh(topo, opts);
  try {
    await mesh.start();
  } catch (err) {
    await mesh.stop().catch((e: unknown) => opts.progress?.(`mesh: cleanup after failed start: ${(e as Error).message}`));
    throw err;
  }
  return mesh;
}

class LabMesh implements Mesh {
  readonly dir: string;
  readonly clusters: MeshCluster[] = [];
  readonly agents: MeshAgent[] = [];
  private readonly readyTimeoutMs: number;
  private readonly bpffsRoot: string;
  private readonly kvs = new Map<string, KvClient>();
  private readonly etcds: EtcdServer[] = [];
  private readonly cpNamespaces: string[] = [];
  private readonly pinDirs: string[] = [];
  /** The Kubernetes API server per cluster, and every process started for it (endpoints too). */
  kubeApis: KubeApiStart[] = [];
  private readonly kubeProcs: ManagedProcess[] = [];
  /** Apiservers started beside a cluster's own (startSecondApiserver), or replaced by one: stopped with the mesh. */
  private readonly extraApiservers: ManagedProcess[] = [];
  private readonly kubeClients = new Map<string, KubeObjects>();
  private createdDir = false;
  private stopping: Promise<void> | undefined;
  private readonly progress: (line: string) => void;

  constructor(
    readonly topo: Topology,
    private readonly opts: MeshOptions,
  ) {
    this.dir = resolve(opts.dir);
    this.readyTimeoutMs = opts.readyTimeoutMs ?? 60_000;
    this.bpffsRoot = opts.bpffsRoot ?? DEFAULT_BPFFS_ROOT;
    this.progress = opts.progress ?? (() => undefined);
  }

  // ---- start -----------------------------------------------------------

  async start(): Promise<void> {
    // A dir that is missing or empty (a fresh mkdtemp) is the mesh's own: stop() removes it whole.
    this.createdDir = !existsSync(this.dir) || (await readdir(this.dir)).length === 0;
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const which = this.opts.clusters ?? Array.from({ length: this.topo.spec.clusters }, (_, i) => i + 1);
    // Control planes of all clusters in parallel: namespace, etcd, store namespaces.
    // Settled, not raced: a failure must not let stop() run while a sibling still starts things.
    await settleAll(which.map((c) => this.startControlPlane(c)));
    this.clusters.sort((a, b) => a.index - b.index);
    // A bare cluster has no mesh etcd: `clustermesh connect` writes what its install needs.
    if (this.opts.apiservers !== false) for (const c of this.clusters) await this.writeRemoteConfigs(c);
    await this.startKubeApis(which);
    if (this.opts.apiservers === false) return;
    await settleAll(this.clusters.map((c) => c.apiserver.start()));
    this.progress(`apiservers started (${this.clusters.map((c) => `${c.name} pid ${c.apiserver.pid}`).join(', ')})`);
    await Promise.all(this.clusters.map((c) => this.waitApiserverSynced(c.index)));
    this.progress('apiservers synced');
    if (this.opts.agents === false) return;
    ensureBpffs(this.bpffsRoot);
    for (const node of this.topo.nodes) if (which.includes(node.cluster)) this.agents.push(await this.prepareAgent(node));
    await settleAll(this.agents.map((a) => a.process.start()));
    this.progress(`agents started (${this.agents.length})`);
    await this.waitReady();
  }

  private async startControlPlane(c: number): Promise<void> {
    const name = clusterName(c);
    const dir = join(this.dir, name);
    const netns = `${topologyBase(this.topo)}-c${c}cp`;
    const ip = controlPlaneIP(c);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await this.addControlPlaneNamespace(c, netns, ip);
    const id = this.opts.clusterIds?.[c - 1] ?? c;
    const bare = this.opts.apiservers === false;
    // Both at once (settled: a failure must not let stop() run while the other still starts).
    const roles: ClusterEtcdRole[] = bare ? ['kube-etcd'] : ['etcd', 'kube-etcd'];
    const started = new Map<ClusterEtcdRole, EtcdServer>();
    await settleAll(roles.map(async (role) => started.set(role, await this.startClusterEtcd(role, name, dir, netns, ip))));
    const kubeEtcd = started.get('kube-etcd')!;
    const etcd = started.get('etcd') ?? kubeEtcd;
    const kubeLine = `Kubernetes etcd on ${kubeEtcd.endpoint} (pid ${kubeEtcd.pid})`;
    this.progress(`${name}: ${bare ? `${kubeLine}, no mesh etcd (the install brings its own)` : `etcd on ${etcd.endpoint} (pid ${etcd.pid}), ${kubeLine}`} in ${netns}`);

    const apiserverEtcdConfig = join(dir, 'apiserver-etcd.yaml');
    if (!bare) {
      const conn = etcd.connection('apiserver', { via: 'network' });
      await writeFile(
        apiserverEtcdConfig,
        toYaml({ endpoints: conn.endpoints, 'trusted-ca-file': conn.caFile, 'cert-file': conn.certFile, 'key-file': conn.keyFile }),
      );
    }
    const a = this.opts.apiserver ?? {};
    const apiserverLog = join(dir, 'apiserver.log');
    const apiserver = new ManagedProcess({
      name: `apiserver ${name}`,
      netns,
      logFile: apiserverLog,
      argv: [
        process.execPath, CLI, 'apiserver',
        '--cluster-name', name,
        '--cluster-id', String(id),
        '--max-connected-clusters', String(this.opts.agent?.maxConnectedClusters ?? 255),
        '--etcd-config', apiserverEtcdConfig,
        '--log-level', a.logLevel ?? 'info',
        // Metrics on the control-plane address: reachable from the router (lab up --prometheus).
        '--metrics-address', `${ip}:${APISERVER_METRICS_PORT}`,
        // The MCS controller reads the other clusters' ServiceExports with the agents' remote-cluster files.
        '--kubeconfig', localKubeconfig(dir),
        '--clustermesh-config-dir', join(dir, 'remote-clusters'),
        ...(a.extraArgs ?? []),
      ],
      env: childEnv(),
      ...(this.opts.detached ? { detached: true } : {}),
      ...this.recordedBeforeRun((pid) => ({ kind: 'process', role: 'apiserver', cluster: name, pid, logFile: apiserverLog })),
    });
    const remoteConfigDir = join(dir, 'remote-clusters');
    await mkdir(remoteConfigDir, { recursive: true });
    this.clusters.push({ index: c, name, id, netns, ip, dir, etcd, kubeEtcd, apiserverEtcdConfig, apiserver, remoteConfigDir });
  }

  /**
   * One of the cluster's two etcds, in its control-plane namespace, each with its own CA, roles and dir:
   * 'etcd' (the mesh's kvstore: <cluster dir>/etcd, https://10.c.0.250:2379, the mesh's roles) or
   * 'kube-etcd' (the Kubernetes API's store: <cluster dir>/kube-etcd, https://127.0.0.1:2381 in that
   * namespace, user `kube`). Recorded (onCreated) once it serves.
   */
  private async startClusterEtcd(role: ClusterEtcdRole, name: string, dir: string, netns: string, ip: string): Promise<EtcdServer> {
    const mesh = role === 'etcd';
    const etcd = await launchEtcd({
      dir: join(dir, role),
      name: `${role}-${name}`,
      // Names the CA (clustermesh-<clusterName>-ca) and the initial-cluster-token.
      clusterName: mesh ? name : `${name}-kube`,
      roles: mesh ? MESH_ROLES : KUBE_ETCD_ROLES,
      netns,
      listenAddress: mesh ? ip : '127.0.0.1',
      // Both in one namespace: the peer ports must differ too (the mesh's keeps etcd's default 2380).
      ...(mesh ? { clientPort: ETCD_PORT } : { clientPort: KUBE_ETCD_PORT, peerPort: KUBE_ETCD_PORT + 1 }),
      // A loaded machine (a lab up beside other work) can take longer than etcd's default 20 s.
      startTimeoutMs: Math.max(20_000, this.readyTimeoutMs),
      ...(this.opts.detached ? { detached: true } : {}),
    });
    this.etcds.push(etcd);
    this.created({ kind: 'process', role, cluster: name, pid: etcd.pid!, logFile: etcd.logFile });
    return etcd;
  }

  /** A namespace joined to br<c> like a node, at `ip`; recorded with the topology so a sweep removes it. */
  private async addControlPlaneNamespace(c: number, netns: string, ip: string): Promise<void> {
    this.cpNamespaces.push(netns);
    this.topo.namespaces.push(netns);
    this.created({ kind: 'netns', name: netns });
    if (this.opts.registry !== false) recordTopology({ name: topologyBase(this.topo), pid: process.pid, namespaces: this.topo.namespaces });
    await run(['ip', 'netns', 'add', netns]);
    const routerEnd = `c${c}cp`;
    const mtu = this.topo.spec.underlayMtu;
    await ipBatch(undefined, [`link add ${routerEnd} netns ${this.topo.routerNetns} type veth peer name eth0 netns ${netns}`]);
    await ipBatch(this.topo.routerNetns, [`link set ${routerEnd} mtu ${mtu}`, `link set ${routerEnd} master br${c}`, `link set ${routerEnd} up`]);
    await ipBatch(netns, ['link set lo up', `link set eth0 mtu ${mtu}`, `addr add ${ip}/24 dev eth0`, 'link set eth0 up', `route add default via ${routerUnderlayIP(c)}`]);
    await runIn(netns, ['sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1']);
  }

  /** For cluster `c`: one file per other cluster with its endpoint, its CA and a `remote`-user certificate it issued. */
  private async writeRemoteConfigs(c: MeshCluster): Promise<void> {
    for (const other of this.clusters) {
      if (other === c) continue;
      const cert = await other.etcd.clientCert('remote');
      await writeFile(
        join(c.remoteConfigDir, other.name),
        toYaml({ endpoints: [other.etcd.endpoint], 'trusted-ca-file': cert.caFile, 'cert-file': cert.certFile, 'key-file': cert.keyFile }),
      );
    }
  }

  private async prepareAgent(node: NodeInfo): Promise<MeshAgent> {
    const cluster = this.cluster(node.cluster);
    const dir = join(cluster.dir, node.name);
    const stateDir = join(dir, 'state');
    await mkdir(stateDir, { recursive: true, mode: 0o700 });
    const pinDir = join(this.bpffsRoot, node.netns);
    this.pinDirs.push(pinDir);
    this.created({ kind: 'pinDir', path: pinDir });
    const conn = cluster.etcd.connection('agent', { via: 'network' });
    const a = this.opts.agent ?? {};
    const config = {
      clusterName: cluster.name,
      clusterID: cluster.id,
      maxConnectedClusters: a.maxConnectedClusters ?? 255,
      nodeName: node.name,
      nodeIP: node.underlayIP,
      podCIDR: node.podCIDR,
      tunnelPort: TUNNEL_PORT,
      vxlanDevice: VXLAN_DEVICE,
      etcd: { endpoints: conn.endpoints, caFile: conn.caFile, certFile: conn.certFile, keyFile: conn.keyFile },
      clustermeshConfigDir: cluster.remoteConfigDir,
      stateDir,
      pinDir,
      syncTimeoutSeconds: a.syncTimeoutSeconds ?? 30,
      fullSyncIntervalSeconds: a.fullSyncIntervalSeconds ?? 30,
      logLevel: a.logLevel ?? 'info',
      // Metrics on the node's underlay address: reachable from the router (lab up --prometheus).
      metricsAddress: `${node.underlayIP}:${AGENT_METRICS_PORT}`,
      ...(a.socketLB && node.cgroup !== undefined ? { socketLBCgroup: node.cgroup } : {}),
      ...routingSettings(this.topo.spec, node.cluster),
      kubeconfig: localKubeconfig(cluster.dir),
      ...(a.extra ?? {}),
    };
    const configFile = join(dir, 'agent.yaml');
    await writeFile(configFile, toYaml(config));
    const logFile = join(dir, 'agent.log');
    const socket = join(stateDir, 'agent.sock');
    const proc = new ManagedProcess({
      name: `agent ${cluster.name}/${node.name}`,
      netns: node.netns,
      logFile,
      argv: [process.execPath, CLI, 'agent', '--config', configFile],
      env: childEnv(),
      ...(this.opts.detached ? { detached: true } : {}),
      ...this.recordedBeforeRun((pid) => ({ kind: 'process', role: 'agent', cluster: cluster.name, node: node.name, pid, logFile })),
    });
    return { node, cluster, dir, configFile, logFile, stateDir, socket, pinDir, process: proc, api: new AgentClient(socket, { timeoutMs: 30_000 }) };
  }

  /** The Kubernetes API of every cluster, reachable from its namespaces, seeded (CRDs, namespaces, Nodes). */
  private async startKubeApis(which: number[]): Promise<void> {
    const nodes = this.topo.nodes.filter((n) => which.includes(n.cluster));
    this.kubeApis = await startKubeApiForComponents(this.clusters, nodes.map((n) => ({ cluster: n.cluster, name: n.name, netns: n.netns })), {
      ...(this.opts.detached ? { detached: true } : {}),
      timeoutMs: this.readyTimeoutMs,
      record: (p) => this.created({ kind: 'process', role: p.role, cluster: p.cluster, ...(p.node !== undefined ? { node: p.node } : {}), pid: p.pid, logFile: p.logFile }),
      onStarted: (p) => void this.kubeProcs.push(p.proc),
      loadBalancer: (c) => ({
        routerNetns: this.topo.routerNetns,
        pool: labLbPool(c.index),
        nodes: Object.fromEntries(this.topo.nodes.filter((n) => n.cluster === c.index).map((n) => [n.name, { netns: n.netns, device: n.underlayDev }])),
      }),
    });
    for (const k of this.kubeApis) await writeKubeconfig(this.kubeconfig(k.cluster), [{ name: k.cluster, server: kubeApiReady(k).url, ...kubeApiAdminPki(k.dir) }]);
    await settleAll(this.clusters.map((c) => this.seedKube(c)));
    this.progress(`Kubernetes API per cluster (${this.kubeApis.map((k) => `${k.cluster} ${kubeApiReady(k).url}`).join(', ')}), a node-local endpoint in every namespace`);
  }

  /** What the cluster's API holds before any component reads it: Cilium's CRDs, the namespaces, the Nodes (with agents). */
  private async seedKube(c: MeshCluster): Promise<void> {
    const kube = this.kube(c.index);
    // A bare cluster (apiservers: false) gets them from `clustermesh install`, which creates them where absent.
    if (this.opts.apiservers !== false) await kube.applyAll(meshCrds());
    for (const ns of this.opts.namespaces ?? ['default']) if ((await kube.getRaw('Namespace', { name: ns })) === undefined) await kube.apply({ kind: 'Namespace', metadata: { name: ns } });
    if (this.opts.agents === false || this.opts.apiservers === false || this.opts.registerNodes === false) return;
    for (const n of this.topo.nodes.filter((x) => x.cluster === c.index)) {
      await kube.apply({
        kind: 'Node',
        metadata: { name: n.name, labels: { 'kubernetes.io/hostname': n.name, 'kubernetes.io/os': 'linux' } },
        spec: { podCIDR: n.podCIDR, podCIDRs: [n.podCIDR] },
        status: {
          addresses: [{ type: 'InternalIP', address: n.underlayIP }, { type: 'Hostname', address: n.name }],
          conditions: [{ type: 'Ready', status: 'True', reason: 'KubeletReady', message: 'registered by the test rig' }],
        },
      });
    }
  }

  kube(cluster: number | string): KubeObjects {
    const c = this.cluster(cluster);
    const k = this.kubeApis.find((x) => x.cluster === c.name);
    if (!k) throw new Error(`mesh: ${c.name} has no Kubernetes API (not started yet)`);
    let client = this.kubeClients.get(c.name);
    if (!client) {
      client = new KubeObjects(kubeConfigFor(kubeApiReady(k).url, kubeApiAdminPki(k.dir), 'admin'));
      this.kubeClients.set(c.name, client);
    }
    return client;
  }

  kubeconfig(cluster: number | string): string {
    return join(this.cluster(cluster).dir, 'kube-api', 'admin.kubeconfig');
  }

  private created(ev: MeshCreated): void {
    this.opts.onCreated?.(ev);
  }

  /** With onCreated: a process is told about before its program runs (held until then), so a killed starter leaves none unrecorded. */
  private recordedBeforeRun(ev: (pid: number) => MeshCreated): { beforeRun?: (pid: number) => void } {
    const onCreated = this.opts.onCreated;
    return onCreated ? { beforeRun: (pid) => onCreated(ev(pid)) } : {};
  }

  /** Lets this process exit while detached processes keep running: closes every client it holds. */
  async release(): Promise<void> {
    for (const a of this.agents) a.api.close();
    await Promise.all([...this.kvs.values()].map((kv) => kv.close().catch(() => undefined)));
    this.kvs.clear();
  }

  // ---- lookups ---------------------------------------------------------

  cluster(c: number | string): MeshCluster {
    const found = this.clusters.find((x) => x.index === c || x.name === c);
    if (!found) throw new Error(`mesh: no cluster ${c}`);
    return found;
  }

  agent(node: NodeInfo | string): MeshAgent {
    const found = this.agents.find((a) => (typeof node === 'string' ? a.node.netns === node || `${a.cluster.name}/${a.node.name}` === node : a.node === node || a.node.netns === node.netns));
    if (!found) throw new Error(`mesh: no agent for node ${typeof node === 'string' ? node : node.netns}${this.opts.agents === false ? ' (mesh started without agents)' : ''}`);
    return found;
  }

  kv(cluster: number | string, user: 'root' | 'apiserver' | 'agent' | 'remote' = 'root'): KvClient {
    return this.kvFor(this.cluster(cluster).etcd, user);
  }

  private kvFor(server: EtcdServer, user: string): KvClient {
    const key = `${server.dir}|${user}`;
    let kv = this.kvs.get(key);
    if (!kv) {
      kv = new KvClient(server.connection(user, { timeoutMs: 5000 }));
      this.kvs.set(key, kv);
    }
    return kv;
  }

  // ---- readiness -------------------------------------------------------

  async waitApiserverSynced(cluster: number | string, timeoutMs = this.readyTimeoutMs): Promise<void> {
    const c = this.cluster(cluster);
    const kv = this.kv(c.index);
    const keys = [clusterConfigKey(c.name), ...SYNCED_PREFIX_NAMES.map((p) => syncedKey(c.name, p))];
    await waitUntil(
      `${c.name}'s apiserver to write cluster-config and its synced canaries`,
      timeoutMs,
      async () => {
        if (!c.apiserver.running) throw new PollAbort(c.apiserver.describe(10));
        for (const k of keys) if ((await kv.get(k)) === undefined) return false;
        return true;
      },
      () => c.apiserver.describe(10),
    );
  }

  async waitReady(timeoutMs = this.readyTimeoutMs): Promise<void> {
    const t0 = Date.now();
    await Promise.all(this.clusters.map((c) => this.waitApiserverSynced(c.index, timeoutMs)));
    const others = (a: MeshAgent) => this.clusters.filter((c) => c !== a.cluster).map((c) => c.name);
    await Promise.all(
      this.agents.map(async (a) => {
        await this.waitAgentHealthy(a, Math.max(1000, timeoutMs - (Date.now() - t0)));
        let last: AgentStatus | undefined;
        await waitUntil(
          `${a.process.spec.name} to see every other cluster connected and ready`,
          Math.max(1000, timeoutMs - (Date.now() - t0)),
          async () => {
            if (!a.process.running) throw new PollAbort(a.process.describe(10));
            last = await this.agentStatus(a.node);
            return others(a).every((name) => last!.remoteClusters.some((r) => r.name === name && r.connected && r.ready));
          },
          () => `${a.process.describe(10)}\nremote clusters: ${JSON.stringify(last?.remoteClusters ?? null).slice(0, 2000)}`,
        );
      }),
    );
    this.progress(`mesh ready in ${Date.now() - t0} ms`);
  }

  private async waitAgentHealthy(a: MeshAgent, timeoutMs: number): Promise<void> {
    await waitUntil(
      `${a.process.spec.name} to answer /healthz`,
      timeoutMs,
      async () => {
        if (!a.process.running) throw new PollAbort(a.process.describe(10));
        return (await a.api.health()).ready === true;
      },
      () => a.process.describe(10),
    );
  }

  // ---- faults ----------------------------------------------------------

  async killAgent(node: NodeInfo | string): Promise<void> {
    await this.agent(node).process.kill();
  }

  async stopAgent(node: NodeInfo | string): Promise<void> {
    await this.agent(node).process.stop();
  }

  async restartAgent(node: NodeInfo | string, o: { waitReady?: boolean; timeoutMs?: number } = {}): Promise<void> {
    const a = this.agent(node);
    await a.process.stop();
    await a.process.start();
    if (o.waitReady !== false) await this.waitAgentHealthy(a, o.timeoutMs ?? this.readyTimeoutMs);
  }

  async killEtcd(cluster: number | string): Promise<void> {
    await this.cluster(cluster).etcd.kill();
  }

  async startEtcd(cluster: number | string, o: { empty?: boolean } = {}): Promise<void> {
    const c = this.cluster(cluster);
    if (c.etcd === c.kubeEtcd && o.empty) throw new Error(`mesh: ${c.name} is a bare cluster: its only etcd is its Kubernetes API's; not wiping it`);
    // Only the mesh's etcd: the Kubernetes objects are in the Kubernetes etcd and stay, as in a real
    // cluster whose clustermesh kvstore is lost; the apiserver and the agents refill the mesh's keys.
    if (o.empty) await c.etcd.wipe();
    await c.etcd.start();
  }

  async stopKubeApi(cluster: number | string, o: { kill?: boolean } = {}): Promise<void> {
    const k = this.kubeApiOf(cluster);
    if (o.kill) await k.proc.kill();
    else await k.proc.stop();
  }

  async startKubeApi(cluster: number | string): Promise<void> {
    const c = this.cluster(cluster);
    const k = this.kubeApiOf(c.index);
    rmSync(k.readyFile, { force: true });
    await k.proc.start();
    this.created({ kind: 'process', role: 'kube-apiserver', cluster: c.name, pid: k.proc.pid!, logFile: k.proc.spec.logFile });
    await waitReadyFiles([k], this.readyTimeoutMs);
    // It listens on a new port: this process's kubeconfig follows (components use the node-local endpoint).
    await writeKubeconfig(this.kubeconfig(c.name), [{ name: c.name, server: kubeApiReady(k).url, ...kubeApiAdminPki(k.dir) }]);
    this.kubeClients.delete(c.name);
  }

  private kubeApiOf(cluster: number | string): KubeApiStart {
    const c = this.cluster(cluster);
    const k = this.kubeApis.find((x) => x.cluster === c.name);
    if (!k) throw new Error(`${c.name}: no Kubernetes API in this mesh`);
    return k;
  }

  async startSecondApiserver(cluster: number | string): Promise<ManagedProcess> {
    const c = this.cluster(cluster);
    const n = this.extraApiservers.length + 2;
    const logFile = join(c.dir, `apiserver-${n}.log`);
    const proc = new ManagedProcess({
      ...c.apiserver.spec,
      name: `${c.apiserver.spec.name} (#${n})`,
      logFile,
      beforeRun: undefined,
      ...this.recordedBeforeRun((pid) => ({ kind: 'process', role: 'apiserver', cluster: c.name, pid, logFile })),
    });
    this.extraApiservers.push(proc);
    await proc.start();
    return proc;
  }

  async replaceApiserver(cluster: number | string, next: ManagedProcess): Promise<void> {
    const c = this.cluster(cluster);
    const old = c.apiserver;
    await old.stop();
    c.apiserver = next;
    this.extraApiservers.splice(this.extraApiservers.indexOf(next), 1, old);
  }

  // ---- endpoints -------------------------------------------------------

  async addPod(pod: PodInfo, o: AddPodOptions = {}): Promise<EndpointInfo> {
    return await this.addEndpoint(pod.node, o.containerID ?? pod.name, {
      namespace: o.namespace ?? 'default',
      podName: o.podName ?? pod.name,
      ip: pod.ip,
      hostIfName: pod.hostIfName,
      podMac: pod.mac,
      labels: o.labels ?? { app: pod.name },
      ...(o.serviceAccount !== undefined ? { serviceAccount: o.serviceAccount } : {}),
    });
  }

  async addEndpoint(node: NodeInfo | string, containerID: string, req: EndpointRequest): Promise<EndpointInfo> {
    return await this.agent(node).api.putEndpoint(containerID, req);
  }

  async deletePod(pod: PodInfo, o: { containerID?: string } = {}): Promise<EndpointDeleteResult> {
    return await this.deleteEndpoint(pod.node, o.containerID ?? pod.name);
  }

  async deleteEndpoint(node: NodeInfo | string, containerID: string): Promise<EndpointDeleteResult> {
    return await this.agent(node).api.deleteEndpoint(containerID);
  }

  async agentStatus(node: NodeInfo | string): Promise<AgentStatus> {
    return await this.agent(node).api.status();
  }

  // ---- datapath --------------------------------------------------------

  private withIpcache<T>(node: NodeInfo | string, fn: (m: BpfMap) => T): T {
    const map = BpfMap.openPinned(join(this.agent(node).pinDir, ipcache.MAP_NAME));
    try {
      return fn(map);
    } finally {
      map.close();
    }
  }

  readIpcache(node: NodeInfo | string): Map<string, IpcacheEntry> {
    return this.withIpcache(node, (m) => {
      const out = new Map<string, IpcacheEntry>();
      for (const [k, v] of ipcache.entries(m)) {
        const prefix = ipcache.formatPrefix(k);
        out.set(prefix, { prefix, ...v });
      }
      return out;
    });
  }

  deleteIpcacheEntry(node: NodeInfo | string, prefix: string): boolean {
    return this.withIpcache(node, (m) => ipcache.remove(m, ipcache.parsePrefix(prefix)));
  }

  readDrops(node: NodeInfo | string): Map<string, number> {
    const out = new Map<string, number>();
    for (const r of readNodeMetrics(this.agent(node).pinDir)) {
      if (r.drop) out.set(r.reasonName, (out.get(r.reasonName) ?? 0) + Number(r.packets));
    }
    return out;
  }

  // ---- stop ------------------------------------------------------------

  stop(): Promise<void> {
    return (this.stopping ??= this.doStop());
  }

  private async doStop(): Promise<void> {
    const errors: unknown[] = [];
    const attempt = async (what: string, fn: () => Promise<unknown> | unknown): Promise<void> => {
      try {
        await fn();
      } catch (err) {
        errors.push(new Error(`${what}: ${(err as Error).message}`));
      }
    };
    await Promise.all(this.agents.map((a) => attempt(`stop ${a.process.spec.name}`, () => a.process.stop(3000))));
    for (const a of this.agents) a.api.close();
    await Promise.all([...this.clusters.map((c) => c.apiserver), ...this.extraApiservers].map((p) => attempt(`stop ${p.spec.name}`, () => p.stop(3000))));
    await Promise.all([...this.kubeProcs].reverse().map((p) => attempt(`stop ${p.spec.name}`, () => p.stop(3000))));
    await Promise.all([...this.kvs.values()].map((kv) => attempt('close etcd client', () => kv.close())));
    this.kvs.clear();
    await Promise.all(this.etcds.map((e) => attempt(`stop etcd ${e.name}`, () => e.stop(3000))));
    for (const d of this.pinDirs) await attempt(`remove pins ${d}`, () => removePinDir(d));
    for (const ns of [...this.cpNamespaces].reverse()) {
      await attempt(`delete namespace ${ns}`, async () => {
        await run(['ip', 'netns', 'del', ns]).catch(async (err: unknown) => {
          const { stdout } = await run(['ip', '-j', 'netns', 'list']);
          if (stdout.includes(`"${ns}"`)) throw err;
        });
        const i = this.topo.namespaces.indexOf(ns);
        if (i >= 0) this.topo.namespaces.splice(i, 1);
      });
    }
    if (this.cpNamespaces.length && this.opts.registry !== false) {
      await attempt('update topology record', () => recordTopology({ name: topologyBase(this.topo), pid: process.pid, namespaces: this.topo.namespaces }));
    }
    const keep = this.opts.keepDir ?? process.env.KEEP_MESH_DIR !== undefined;
    if (!keep) {
      if (this.createdDir) await attempt(`remove ${this.dir}`, () => rm(this.dir, { recursive: true, force: true }));
      else for (const c of this.clusters) await attempt(`remove ${c.dir}`, () => rm(c.dir, { recursive: true, force: true }));
    }
    if (errors.length) throw new AggregateError(errors, `mesh: ${errors.length} cleanup steps failed: ${errors.map((e) => (e as Error).message).join('; ')}`);
  }
}
